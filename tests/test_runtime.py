"""The real early-exit runtime (Algorithm 2) agrees with the offline policy on dumped logits."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SAMPLE, invoke

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from eenet_cli.core.measures import exit_features  # noqa: E402
from eenet_cli.core.policy import apply_to_features, compute_scores  # noqa: E402
from eenet_cli.errors import InputError  # noqa: E402
from eenet_cli.runtime import EarlyExitModel  # noqa: E402

T = "fixtures_models.tiny_models"


def _eenet_scorer(k: int, c: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    exits = []
    for j in range(k):
        d, h = c + 3 + j, 4
        exits.append(
            {
                "shared_weight": rng.normal(size=(h, d)).tolist(),
                "shared_bias": rng.normal(size=h).tolist(),
                "utility_weight": rng.normal(size=h).tolist(),
                "utility_bias": float(rng.normal()),
                "assign_weight": rng.normal(size=h).tolist(),
                "assign_bias": 0.0,
            }
        )
    return {"type": "eenet", "features": ["class_probs", "max_prob", "entropy", "vote", "previous_utilities"], "negative_slope": 0.01, "exits": exits}


def _policy(scorer: dict, features, k: int, c: int, quantile: float = 0.5, skip: int | None = None) -> dict:
    """Thresholds half-way between two distinct scores near the quantile, so no score sits on one."""
    scores = compute_scores(scorer, features)
    thr: list = []
    for j in range(k - 1):
        u = np.unique(scores[:, j])
        i = min(int(quantile * len(u)), len(u) - 2)
        thr.append(float((u[i] + u[i + 1]) / 2) if len(u) > 1 else None)
    thr.append(None)
    if skip is not None:
        thr[skip] = None
    return {"format": "policy", "version": 1, "num_exits": k, "num_classes": c, "thresholds": thr, "scorer": scorer}


@pytest.fixture(scope="module")
def setup():
    from fixtures_models.tiny_models import arrays, tiny_staged

    model = tiny_staged(num_exits=4, hidden=16).eval()
    x, y = arrays(300, seed=5)
    x = torch.from_numpy(x)
    with torch.no_grad():
        logits = torch.stack(model(x), 1).numpy()  # what dump writes
    return model, x, y, logits


@pytest.mark.parametrize("kind", ["maxprob", "entropy", "vote", "patience", "eenet"])
def test_runtime_equals_offline_decisions(setup, kind):
    model, x, y, logits = setup
    n, k, c = logits.shape
    feats = exit_features(logits, "logits", y)
    scorer = _eenet_scorer(k, c) if kind == "eenet" else {"type": kind}
    policy = _policy(scorer, feats, k, c, quantile=0.4, skip=1 if kind == "maxprob" else None)
    offline = apply_to_features(policy, feats)
    assert 0 < (offline.exits < k - 1).sum() < n or kind == "patience"  # some samples exit early, some do not
    ee = EarlyExitModel(model, policy)
    batched = ee.run(x)
    assert np.array_equal(batched.exits.numpy(), offline.exits)
    assert np.array_equal(batched.preds.numpy(), offline.preds)
    rows = np.arange(n)
    assert np.abs(batched.logits.numpy() - logits[rows, offline.exits]).max() <= 1e-5
    one = [ee.run(x[i : i + 1]) for i in range(0, n, 3)]  # batch size 1
    assert [int(r.exits) for r in one] == offline.exits[::3].tolist()
    assert [int(r.preds) for r in one] == offline.preds[::3].tolist()
    preds, exits = ee(x[:10])  # nn.Module call
    assert exits.tolist() == offline.exits[:10].tolist()


def test_batch_size_one_stops_computing_at_the_accepted_exit(setup):
    model, x, y, logits = setup
    calls = [0] * len(model.stages)
    hooks = [s.register_forward_hook(lambda m, i, o, j=j: calls.__setitem__(j, calls[j] + 1)) for j, s in enumerate(model.stages)]
    try:
        policy = {"num_exits": 4, "num_classes": 3, "thresholds": [0.0, None, None, None], "scorer": {"type": "maxprob"}}
        r = EarlyExitModel(model, policy).run(x[:1])
        assert int(r.exits) == 0 and calls == [1, 0, 0, 0]
        calls[:] = [0] * 4
        policy["thresholds"] = [2.0, 2.0, 0.0, None]  # max-prob never reaches 2: stop at exit 2
        r = EarlyExitModel(model, policy).run(x[:8])
        assert r.exits.tolist() == [2] * 8 and calls == [1, 1, 1, 0]
    finally:
        for h in hooks:
            h.remove()


def test_runtime_refuses_policies_that_do_not_fit(setup):
    model = setup[0]
    with pytest.raises(InputError, match="has 2 thresholds but the model has 4 exits"):
        EarlyExitModel(model, {"thresholds": [0.5, None], "scorer": {"type": "maxprob"}})
    with pytest.raises(InputError, match="unknown scorer"):
        EarlyExitModel(model, {"thresholds": [0.5, None, None, None], "scorer": {"type": "magic"}})


def test_profile_policy_on_the_sample_model(runner, tmp_path):
    """Real adaptive inference of a policy on the shipped digits model, beside the offline figures."""
    from eenet_cli.io import read_predictions

    p = read_predictions(SAMPLE / "digits.parquet")
    test = p.rows(p.split == "test")
    feats = exit_features(test.scores, "logits", test.labels)
    policy = _policy({"type": "maxprob"}, feats, 4, 10, quantile=0.3)
    costs = p.meta["costs"]
    policy["costs"] = {"unit": costs["unit"], "costs": costs["costs"]}
    policy["budget"] = {"value": costs["costs"][2], "unit": "ms"}
    policy.update({"format": "policy", "version": 1, "method": "maxprob", "num_exits": 4, "num_classes": 10})
    offline = apply_to_features(policy, feats)
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    r = invoke(runner, "profile", "digits-cnn", "--weights", SAMPLE / "digits_model.safetensors", "--policy", tmp_path / "policy.json",
               "--data", "digits:test", "--json", "-q", "--warmup", "2", "--threads", "1")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["n"] == 450 and doc["batch_size"] == 1
    assert doc["accuracy"] == pytest.approx(float(offline.correct.mean()))
    assert doc["exit_fractions"] == pytest.approx(offline.exit_fractions(4))
    est = float(np.dot(offline.exit_fractions(4), costs["costs"]))
    assert doc["offline_estimate"]["value"] == pytest.approx(est)
    assert doc["measured_ms_per_sample"] > 0
