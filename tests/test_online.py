"""Online (one exit at a time) decisions equal the offline ones for every scorer."""

import numpy as np
import pytest

from eenet_cli.core.measures import exit_features
from eenet_cli.core.methods import BASELINES, FitCache, fit_method
from eenet_cli.core.online import OnlinePolicy
from eenet_cli.core.policy import apply_to_features
from eenet_cli.synthetic import make_predictions


@pytest.mark.parametrize("method", BASELINES)
def test_online_matches_offline(method):
    d = make_predictions(600, 4, 20, seed=7, miscalibration=0.5)
    f = exit_features(d.logits, "logits", d.labels)
    costs = np.array([1.0, 2.0, 3.0, 4.0])
    cache = FitCache(f)
    for budget in (1.4, 2.2, 3.1):
        pol = fit_method(method, cache, costs, budget, "ms")
        off = apply_to_features(pol, f)
        op = OnlinePolicy(pol)
        single = np.array([op.run(d.logits[i]) for i in range(600)])
        np.testing.assert_array_equal(single[:, 0], off.exits)
        np.testing.assert_array_equal(single[:, 1], off.preds)
        # batched: samples that stopped are not fed to later exits
        state = op.begin(600)
        exits = np.full(600, -1)
        active = np.arange(600)
        for j in range(4):
            stop, pred, _ = op.step(state, j, d.logits[active, j], active)
            exits[active[stop]] = j
            active = active[~stop]
        np.testing.assert_array_equal(exits, off.exits)
