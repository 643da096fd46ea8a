"""Combined exit outputs (--outputs): fitting the weights, choosing exits, applying them
offline and online, the policy file, and the commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eenet_cli import api
from eenet_cli.artifacts.policy import validate_policy
from eenet_cli.artifacts.predictions import write_predictions
from eenet_cli.core.measures import exit_features
from eenet_cli.core.online import OnlinePolicy
from eenet_cli.core.outputs import _fit_weights, combine, fit_outputs, log_probs
from eenet_cli.core.policy import apply_to_features
from eenet_cli.errors import InputError
from tests.conftest import invoke


def noisy_exits(n=3000, k=3, c=5, seed=0, copies=False):
    """Exits that see the true class through independent noise (so pooling them helps),
    or, with ``copies``, every later exit a copy of the first (so pooling cannot help)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    onehot = np.eye(c)[y]
    logits = np.stack([1.2 * onehot + rng.normal(0, 1.0, (n, c)) for _ in range(k)], axis=1)
    if copies:
        logits[:, 1:] = logits[:, :1]
    split = np.where(np.arange(n) % 2 == 0, "val", "test")
    return logits.astype(np.float32), y, split


def preds_of(logits, y, split):
    return api.predictions_from_arrays(logits, y, split=split, costs=[1.0, 2.0, 3.0][: logits.shape[1]], unit="ms")


def test_weights_minimise_the_log_loss_as_torch_does():
    logits, y, _ = noisy_exits(n=1500, k=3)
    lp = log_probs(logits, "logits")
    w = _fit_weights(np.ascontiguousarray(lp.transpose(1, 0, 2)), y)
    assert w.shape == (3,) and (w >= 0).all()

    def nll(weights):
        z = torch.einsum("nmc,m->nc", torch.as_tensor(lp), torch.as_tensor(weights, dtype=torch.float64))
        return torch.nn.functional.cross_entropy(z, torch.as_tensor(y)).item()

    # an independent fit with torch's L-BFGS on w = softplus(u) (so w >= 0)
    u = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([u], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe")
    lpt, yt = torch.as_tensor(lp), torch.as_tensor(y)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(torch.einsum("nmc,m->nc", lpt, torch.nn.functional.softplus(u)), yt)
        loss.backward()
        return loss

    opt.step(closure)
    reference = nll(torch.nn.functional.softplus(u).detach().numpy())
    assert nll(w) <= reference + 1e-7
    assert nll(w) < nll(np.array([0.0, 0.0, 1.0])) - 0.05  # far better than the last exit alone
    # the exits are alike, so the weights are too (within the noise of 1500 rows)
    assert np.ptp(w) < 0.35 * w.mean()


def test_auto_combines_where_pooling_helps_and_keeps_exact_copies_own():
    logits, y, split = noisy_exits()
    val = preds_of(logits, y, split).features()
    block = fit_outputs(val.subset(split == "val"), "auto")
    assert block is not None and block["exits"][0] is None
    assert all(e is not None for e in block["exits"][1:])
    for entry in block["fit"]["exits"][1:]:
        assert entry["heldout_combined_accuracy"] > entry["heldout_own_accuracy"] + 0.03

    logits, y, split = noisy_exits(copies=True)
    val = preds_of(logits, y, split).features().subset(split == "val")
    assert fit_outputs(val, "auto") is None  # the same prediction everywhere: nothing gained
    forced = fit_outputs(val, "combined")
    assert all(e is not None for e in forced["exits"][1:])
    assert fit_outputs(val, "own") is None


def test_combined_outputs_are_more_accurate_on_new_rows_and_leave_own_exits_untouched():
    logits, y, split = noisy_exits(k=3)
    feats = preds_of(logits, y, split).features()
    val, test = feats.subset(split == "val"), feats.subset(split == "test")
    block = fit_outputs(val, "combined")
    block["exits"][1] = None  # exit 2 keeps its own output
    out = combine(test, block)
    own = test.correct.mean(axis=0)
    pooled = out.correct.mean(axis=0)
    assert pooled[2] > own[2] + 0.05
    # exits left null keep their stored scores bit for bit
    for k in (0, 1):
        np.testing.assert_array_equal(out.preds[:, k], test.preds[:, k])
        np.testing.assert_array_equal(out.max_prob[:, k], test.max_prob[:, k])
        np.testing.assert_array_equal(out.entropy[:, k], test.entropy[:, k])
    # the pooled exit is softmax(sum w_i log p_i), checked against torch
    w = torch.as_tensor(block["exits"][2]["weights"], dtype=torch.float64)
    lp = torch.log_softmax(torch.as_tensor(logits[split == "test"], dtype=torch.float64), dim=-1)
    want = torch.einsum("nmc,m->nc", lp, w).argmax(dim=-1).numpy()
    np.testing.assert_array_equal(out.preds[:, 2], want)


def test_probabilities_files_combine_like_logits_files():
    logits, y, split = noisy_exits(n=1000)
    probs = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=-1).numpy().astype(np.float32)
    block = fit_outputs(exit_features(logits, "logits", y), "combined")
    a = combine(exit_features(logits, "logits", y), block)
    b = combine(exit_features(probs, "probs", y), block)
    assert (a.preds == b.preds).mean() > 0.995  # float32 rounding of the stored probabilities aside
    np.testing.assert_allclose(a.max_prob, b.max_prob, atol=1e-4)


def test_compact_predictions_refuse_combined_and_keep_own_with_auto(tmp_path):
    from eenet_cli.artifacts.predictions import compact_predictions

    logits, y, split = noisy_exits(n=600)
    full = tmp_path / "full.parquet"
    write_predictions(full, logits, y, split=split, costs={"format": "costs", "version": 1, "unit": "ms", "costs": [1.0, 2.0, 3.0]})
    small = tmp_path / "compact.parquet"
    compact_predictions(str(full), str(small))
    preds = api.load_predictions(str(small))
    with pytest.raises(InputError, match="compact"):
        api.fit_policy(preds, "2ms", method="maxprob", outputs="combined")
    policy = api.fit_policy(preds, "2ms", method="maxprob", outputs="auto")
    assert "outputs" not in policy and policy["version"] == 1
    # a pooled policy fitted on the full file cannot be applied to the compact one
    pooled = api.fit_policy(api.load_predictions(str(full)), "2ms", method="maxprob", outputs="combined")
    with pytest.raises(InputError, match="compact"):
        api.apply_policy(pooled, preds)


@pytest.mark.parametrize("method", ["lookahead", "maxprob", "patience", "eenet"])
def test_online_decisions_equal_offline_with_combined_outputs(method):
    logits, y, split = noisy_exits(n=1600, k=3)
    preds = preds_of(logits, y, split)
    policy = api.fit_policy(preds, "2.6ms", method=method, outputs="combined")
    assert policy["version"] == 3 and policy["outputs"]["exits"][0] is None
    feats = preds.features()
    off = apply_to_features(policy, feats)
    online = OnlinePolicy(policy)
    one = [online.run(logits[i]) for i in range(logits.shape[0])]
    np.testing.assert_array_equal([e for e, _ in one], off.exits)
    np.testing.assert_array_equal([p for _, p in one], off.preds)
    state, rows = online.begin(logits.shape[0]), np.arange(logits.shape[0])
    exits, got = np.full(rows.size, -1), np.full(rows.size, -1)
    for j in range(3):
        stop, pred, _ = online.step(state, j, logits[rows, j], rows)
        exits[rows[stop]], got[rows[stop]] = j, pred[stop]
        rows = rows[~stop]
    np.testing.assert_array_equal(exits, off.exits)
    np.testing.assert_array_equal(got, off.preds)
    # the pooled predictions are what the policy reports, and they beat the own ones here
    own = apply_to_features({k: v for k, v in policy.items() if k != "outputs"}, feats)
    assert off.correct.mean() > own.correct.mean()


def _policy_with(**outputs):
    logits, y, split = noisy_exits(n=600)
    policy = api.fit_policy(preds_of(logits, y, split), "2ms", method="maxprob", outputs="combined")
    policy["outputs"].update(outputs)
    return policy


@pytest.mark.parametrize("change, words", [
    ({"type": "mean"}, "unknown outputs type"),
    ({"version": 2}, "outputs version"),
    ({"exits": [None, None]}, "list 3 exits"),
    ({"exits": [{"weights": [1.0]}, None, None]}, "exit 1 has nothing"),
    ({"exits": [None, {"weights": [1.0]}, None]}, "2 weights"),
    ({"exits": [None, {"weights": [1.0, -0.5]}, None]}, ">= 0"),
    ({"exits": [None, {"weights": [0.0, 0.0]}, None]}, "all 0"),
    ({"exits": [None, {"weights": [1.0, "x"]}, None]}, "finite numbers"),
    ({"extra": 1}, "unknown outputs key"),
])
def test_bad_outputs_blocks_are_refused(change, words):
    with pytest.raises(InputError, match=words):
        validate_policy(_policy_with(**change), "policy.json")


def test_fit_apply_and_evaluate_commands(runner, tmp_path):
    logits, y, split = noisy_exits(n=1600, k=3)
    path = tmp_path / "preds.parquet"
    write_predictions(path, logits, y, split=split, costs={"format": "costs", "version": 1, "unit": "ms", "costs": [1.0, 2.0, 3.0]})
    pol = tmp_path / "policy.json"
    r = invoke(runner, "fit", path, "--budget", "2ms", "--method", "lookahead", "--outputs", "auto", "-o", pol)
    assert r.exit_code == 0, r.output
    doc = json.loads(pol.read_text())
    assert doc["version"] == 3 and doc["outputs"]["fit"]["mode"] == "auto"
    r = invoke(runner, "apply", pol, path, "--split", "test", "--json")
    assert r.exit_code == 0, r.output

    res = tmp_path / "results.json"
    r = invoke(runner, "evaluate", path, "--methods", "maxprob,lookahead,oracle", "--budgets", "1.3ms,2ms,2.6ms",
               "--outputs", "auto", "-o", res)
    assert r.exit_code == 0, r.output
    out = json.loads(res.read_text())
    assert out["outputs"] == "auto"
    by = {(x["method"], x["budget"]): x for x in out["results"]}
    for b in (1.3, 2.0, 2.6):
        assert by[("maxprob", b)]["outputs"] == "own"
        assert by[("lookahead", b)]["outputs"] == "combined: exits 2, 3"
        assert by[("oracle", b)]["outputs"].startswith("own or combined")
        # the oracle knows either output: a ceiling for the baselines and the pooled policy alike
        assert by[("oracle", b)]["accuracy"] >= max(by[(m, b)]["accuracy"] for m in ("maxprob", "lookahead"))
    # --check reads the outputs the reference used
    r = invoke(runner, "evaluate", path, "--check", res)
    assert r.exit_code == 0, r.output

    r = invoke(runner, "fit", path, "--budget", "2ms", "--outputs", "mean")
    assert r.exit_code == 2 and "--outputs" in r.output and "own, combined, auto" in r.output
    r = invoke(runner, "evaluate", path, "--methods", "lookahead", "--budgets", "2ms", "--outputs", "auto", "--confidence", "0.9")
    assert r.exit_code == 2 and "--outputs" in r.output and "fit --confidence --outputs" in r.output


def test_a_certified_policy_pools_with_weights_from_its_fit_rows_only(runner, tmp_path):
    logits, y, split = noisy_exits(n=4000, k=3)
    path = tmp_path / "preds.parquet"
    write_predictions(path, logits, y, split=split, costs={"format": "costs", "version": 1, "unit": "ms", "costs": [1.0, 2.0, 3.0]})
    pol = tmp_path / "certified.json"
    r = invoke(runner, "fit", path, "--budget", "2ms", "--method", "lookahead", "--outputs", "combined",
               "--confidence", "0.9", "-o", pol)
    assert r.exit_code == 0, r.output
    doc = json.loads(pol.read_text())
    assert doc["version"] == 3 and doc["certificate"]["confidence"] == 0.9
    fit_rows = doc["certificate"]["calibration"]["fit_rows"]
    assert doc["outputs"]["fit"]["rows"] == fit_rows < 2000  # pooled on the fit rows, not the calibration rows
    # on its calibration rows, `certify` reproduces the certificate: it pools as the fit did
    bounds = tmp_path / "bounds.json"
    r = invoke(runner, "certify", pol, path, "--calibration-rows", "--confidence", "0.9", "-o", bounds)
    assert r.exit_code == 0, r.output
    got = json.loads(bounds.read_text())
    assert got["n"] == 2000 - fit_rows
    assert got["expected_cost_at_most"] == pytest.approx(doc["certificate"]["guarantees"][0]["upper_bound"], rel=1e-12)
    # the pooled policy is more accurate on the test rows than the same fit on the own outputs
    plain = tmp_path / "plain.json"
    assert invoke(runner, "fit", path, "--budget", "2ms", "--method", "lookahead", "--confidence", "0.9", "-o", plain).exit_code == 0
    preds = api.load_predictions(str(path))
    test = preds.features().subset(split == "test")
    pooled_acc = apply_to_features(doc, test).correct.mean()
    plain_acc = apply_to_features(json.loads(plain.read_text()), test).correct.mean()
    assert pooled_acc > plain_acc


def test_a_policy_with_outputs_is_refused_by_an_eenet_that_predates_it(tmp_path):
    from eenet_cli.artifacts import files

    policy = _policy_with()
    assert policy["version"] == 3 > 2  # an eenet that read version 2 at most refuses it
    path = Path(tmp_path / "p.json")
    path.write_text(json.dumps({**policy, "version": files.SUPPORTED_VERSIONS["policy"] + 1}))
    from eenet_cli.artifacts.policy import read_policy
    from eenet_cli.errors import VersionError

    with pytest.raises(VersionError, match="upgrade"):
        read_policy(path)
