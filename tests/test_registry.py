"""Every registered method, end to end: fit → apply → the early-exit runtime →
``profile --policy`` → ``plot``. The registry is the one list of methods; a method added
there and missing anywhere along this path fails here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import ROOT, invoke

from eenet_cli.api import (
    apply_policy,
    fit_policy,
    load_predictions,
    predictions_from_arrays,
)
from eenet_cli.core.methods import ALL_METHODS, METHODS, POLICY_METHODS
from eenet_cli.core.policy import SCORERS
from eenet_cli.runtime import EarlyExitModel
from eenet_cli.runtime.load import load_model
from eenet_cli.runtime.models import load_digits_split
from eenet_cli.runtime.run import run_exits

WEIGHTS = ROOT / "sample_data" / "digits_model.safetensors"
PREDS = ROOT / "sample_data" / "digits.parquet"


@pytest.fixture(scope="module")
def digits():
    """The sample model, its validation predictions, and the test inputs with the
    predictions computed here from the full model (independently of the runtime)."""
    loaded = load_model("digits-cnn", {}, str(WEIGHTS))
    x, y = load_digits_split("test")
    x = torch.as_tensor(x, dtype=torch.float32)
    with torch.inference_mode():
        logits = torch.stack([o.float() for o in run_exits(loaded, x)], dim=1).numpy()
    test = predictions_from_arrays(logits, labels=np.asarray(y), costs=json.loads((ROOT / "sample_data" / "digits_costs.json").read_text())["costs"])
    return loaded, load_predictions(PREDS), x, test


def test_the_registry_is_consistent():
    assert set(POLICY_METHODS) <= set(ALL_METHODS)
    for name, m in METHODS.items():
        assert m.summary and m.family in ("baseline", "learned", "ceiling")
        assert (m.scorer is None) == (m.fit is None), name
        assert m.scorer is None or m.scorer in SCORERS, name
        assert len(m.style) == 3
    assert len({m.style for m in METHODS.values()}) == len(METHODS)  # every method is told apart on a plot


@pytest.mark.slow
@pytest.mark.parametrize("method", POLICY_METHODS)
def test_every_method_from_fit_to_plot(method, digits, runner, tmp_path):
    loaded, val_preds, x, test = digits
    policy = fit_policy(val_preds, "60%", method=method)
    assert policy["method"] == method and policy["scorer"]["type"] == METHODS[method].scorer

    offline = apply_policy(policy, test)  # numpy, on the full model's outputs
    online = EarlyExitModel(loaded.module, policy).run(x)  # the runtime really stops early
    assert np.array_equal(online.exits.numpy(), offline.exits), method
    assert np.array_equal(online.preds.numpy(), offline.preds), method

    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    r = invoke(runner, "profile", "digits-cnn", "--weights", WEIGHTS, "--policy", path, "--data", "digits:test",
               "--repeats", "1", "--warmup", "1", "-o", tmp_path / "run.json", "-q")
    assert r.exit_code == 0, r.output
    run = json.loads((tmp_path / "run.json").read_text())
    fractions = np.bincount(offline.exits, minlength=4) / len(offline.exits)
    assert np.allclose(run["exit_fractions"], fractions), (run["exit_fractions"], fractions)

    r = invoke(runner, "plot", path, PREDS, "-o", tmp_path / "scores.png", "-q")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "scores.png").read_bytes()[:4] == b"\x89PNG"
