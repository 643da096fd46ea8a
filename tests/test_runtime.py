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
    from eenet_cli.artifacts.predictions import read_predictions

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
               "--data", "digits:test", "--json", "-q", "--warmup", "2", "--threads", "1", "--repeats", "2")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["n"] == 450 and doc["batch_size"] == 1
    assert doc["accuracy"] == pytest.approx(float(offline.correct.mean()))
    assert doc["exit_fractions"] == pytest.approx(offline.exit_fractions(4))
    est = float(np.dot(offline.exit_fractions(4), costs["costs"]))
    assert doc["offline_estimate"]["value"] == pytest.approx(est)
    assert doc["measured_ms_per_sample"] > 0
    assert doc["repeats"] == 2 and doc["realised"]["ms_per_sample"] > 0


# --------------------------------------------------------------------------- realised vs estimate


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Predictions of the tiny staged model dumped by the CLI (val and test), with inline costs."""
    from fixtures_models.tiny_models import arrays
    from typer.testing import CliRunner

    d = tmp_path_factory.mktemp("pipeline")
    for split, n, seed in (("val", 240, 11), ("test", 60, 12)):
        x, y = arrays(n, seed=seed)
        np.savez(d / f"{split}.npz", x=x, y=y)
    runner = CliRunner()
    preds = d / "preds.parquet"
    r = invoke(runner, "dump", f"{T}:tiny_staged", "--data", d / "val.npz", "--split", "val", "--costs", "1,2,3ms", "-o", preds, "-q")
    assert r.exit_code == 0, r.output
    r = invoke(runner, "dump", f"{T}:tiny_staged", "--data", d / "test.npz", "--split", "test", "-o", preds, "--append", "-q")
    assert r.exit_code == 0, r.output
    return d, preds


def _fit_apply(runner, d: Path, preds: Path, method: str) -> tuple[Path, dict]:
    pol = d / f"policy_{method}.json"
    r = invoke(runner, "fit", preds, "--budget", "2ms", "--method", method, "-o", pol, "-q")
    assert r.exit_code == 0, r.output
    r = invoke(runner, "apply", pol, preds, "--split", "test", "--json", "-q")
    assert r.exit_code == 0, r.output
    return pol, json.loads(r.stdout)


@pytest.mark.parametrize("method", ["maxprob", "eenet"])
def test_profile_policy_realised_and_estimates_are_consistent(runner, pipeline, method):
    d, preds = pipeline
    pol, applied = _fit_apply(runner, d, preds, method)
    r = invoke(runner, "profile", f"{T}:tiny_staged", "--policy", pol, "--data", d / "test.npz", "--batch-size", "1",
               "--repeats", "3", "--warmup", "1", "--threads", "1", "--json", "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    n, k = 60, 3
    assert doc["n"] == n and doc["batch_size"] == 1 and doc["repeats"] == 3 and doc["warmup"] == 1 and doc["threads"] == 1
    # the runtime takes the exits the offline policy takes on the dumped logits
    assert doc["exit_fractions"] == pytest.approx(applied["exit_fractions"])
    assert doc["accuracy"] == pytest.approx(applied["accuracy"])
    real = doc["realised"]
    med = np.array(real["per_call_median_ms"])
    assert med.shape == (n,) and (med > 0).all() and real["call_sizes"] == [1] * n
    assert real["ms_per_sample"] == pytest.approx(med.mean(), rel=1e-4)  # the mean of the per-sample medians
    assert real["statistic"].startswith("mean over samples of each sample's median")
    assert real["raw_mean_ms_per_sample"] == doc["measured_ms_per_sample"] > 0
    assert 0 < real["p10_ms"] <= real["p50_ms"] <= real["p90_ms"]
    assert real["decisions_stable"] is True
    by_exit = real["mean_of_medians_ms_by_exit"]
    assert len(by_exit) == k and all((v is None) == (f == 0) for v, f in zip(by_exit, doc["exit_fractions"]))
    assert len(doc["measured_median_ms_by_exit"]) == k
    # costs re-measured in the same run, with the policy's own decision, and the estimate from them
    cm = doc["costs_measured"]
    assert cm["unit"] == "ms" and cm["statistic"] == "median" and cm["batch_size"] == 1 and cm["decision"] == method
    assert len(cm["costs"]) == k and all(c > 0 for c in cm["costs"])
    assert all(t >= 3 * 10 for t in cm["timings"])  # every exit, at least 10 slots x 3 passes
    for key in ("p10", "p90", "mean", "mean_of_medians"):
        assert len(cm[key]) == k
    em = doc["estimate_measured"]
    assert em["value"] == pytest.approx(float(np.dot(doc["exit_fractions"], cm["costs"])), rel=1e-4)
    assert em["value_same_statistic"] == pytest.approx(float(np.dot(doc["exit_fractions"], cm["mean_of_medians"])), rel=1e-4)
    assert em["ratio"] == pytest.approx(real["ms_per_sample"] / em["value"])
    assert em["ratio_same_statistic"] == pytest.approx(real["ms_per_sample"] / em["value_same_statistic"])
    # the estimate from the given costs (the predictions' 1,2,3 ms, carried by the policy)
    off = doc["offline_estimate"]
    assert doc["costs"] == {"unit": "ms", "costs": [1.0, 2.0, 3.0]}
    assert off["value"] == pytest.approx(float(np.dot(doc["exit_fractions"], [1, 2, 3]))) == pytest.approx(applied["avg_cost"])
    assert off["value_ms"] == pytest.approx(off["value"]) and off["ratio"] == pytest.approx(real["ms_per_sample"] / off["value"])
    assert doc["budget"]["value"] == pytest.approx(2.0)


def test_profile_policy_given_costs_in_another_unit_and_batched(runner, pipeline, tmp_path):
    d, preds = pipeline
    pol, applied = _fit_apply(runner, d, preds, "maxprob")
    out = tmp_path / "run.json"
    r = invoke(runner, "profile", f"{T}:tiny_staged", "--policy", pol, "--data", d / "test.npz", "--batch-size", "8",
               "--repeats", "2", "--warmup", "0", "--threads", "1", "--costs", "1000,2000,3000us", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["batch_size"] == 8 and doc["exit_fractions"] == pytest.approx(applied["exit_fractions"])
    real = doc["realised"]
    assert real["call_sizes"] == [8] * 7 + [4]
    assert real["ms_per_sample"] == pytest.approx(sum(real["per_call_median_ms"]) / 60, rel=1e-4)
    assert "mean_of_medians_ms_by_exit" not in real and "measured_median_ms_by_exit" not in doc
    cm = doc["costs_measured"]
    assert cm["batch_size"] == 8 and all(t >= 2 * 10 for t in cm["timings"])
    # per sample: a prefix call runs a full batch of 8
    assert doc["estimate_measured"]["value"] == pytest.approx(float(np.dot(doc["exit_fractions"], cm["costs"])) / 8, rel=1e-4)
    off = doc["offline_estimate"]
    assert off["unit"] == "us" and off["value"] == pytest.approx(1000 * applied["avg_cost"])
    assert off["value_ms"] == pytest.approx(applied["avg_cost"]) and off["ratio"] == pytest.approx(real["ms_per_sample"] / off["value_ms"])


@pytest.mark.parametrize(
    "args, field, message",
    [
        (["--repeats", "0"], "--repeats", "must be at least 1, got 0"),
        (["--repeats", "-3"], "--repeats", "must be at least 1, got -3"),
        (["--warmup", "-1"], "--warmup", "must be 0 or more, got -1"),
    ],
)
@pytest.mark.parametrize("with_policy", [True, False])
def test_profile_repeats_and_warmup_are_checked(runner, pipeline, tmp_path, args, field, message, with_policy):
    d, preds = pipeline
    out = tmp_path / "out.json"
    extra = ["--policy", d / "never_read.json", "--data", d / "test.npz"] if with_policy else ["--input-shape", "6"]
    r = invoke(runner, "profile", f"{T}:tiny_staged", *extra, *args, "-o", out)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert lines == [f"eenet: error: {field}: {message}"], r.stderr
    assert not out.exists()


def test_repeats_typed_wrong_is_a_usage_error(runner, pipeline):
    d, _ = pipeline
    r = invoke(runner, "profile", f"{T}:tiny_staged", "--policy", d / "p.json", "--data", d / "test.npz", "--repeats", "many")
    assert r.exit_code == 2 and "--repeats" in r.stderr


def test_forced_exit_prefix_decides_at_every_head_like_the_policy():
    """A prefix makes the exit decision at each head up to its exit (a null threshold would
    let the runtime skip a max-prob decision); under a policy it keeps that policy's nulls."""
    from eenet_cli.runtime.profile import ALWAYS, NEVER, forced_exit_policy

    assert forced_exit_policy(4, 0)["thresholds"] == [ALWAYS, None, None, None]
    assert forced_exit_policy(4, 2)["thresholds"] == [NEVER, NEVER, ALWAYS, None]
    assert forced_exit_policy(4, 3)["thresholds"] == [NEVER, NEVER, NEVER, None]
    like = {"scorer": {"type": "entropy"}, "thresholds": [0.5, None, 0.7, None], "num_classes": 3}
    f = forced_exit_policy(4, 2, like)
    assert f["thresholds"] == [NEVER, None, ALWAYS, None] and f["scorer"] == {"type": "entropy"} and f["num_classes"] == 3


def test_forced_exit_prefix_stops_where_it_is_told(setup):
    model, x, _, _ = setup
    from eenet_cli.runtime.profile import forced_exit_policy

    for scorer in ({"type": "maxprob"}, {"type": "patience"}, _eenet_scorer(4, 3)):
        like = {"scorer": scorer, "thresholds": [0.1, 0.1, 0.1, None]}
        for k in range(4):
            ee = EarlyExitModel(model, forced_exit_policy(4, k, like))
            assert int(ee.run(x[:1]).exits) == k and ee.run(x[:5]).exits.tolist() == [k] * 5


def test_policy_run_statistics():
    """The statistics of a run, on hand-made timings."""
    from eenet_cli.runtime.profile import PolicyRun

    call_ms = np.array([[1.0, 2.0, 10.0], [1.2, 2.2, 3.0], [50.0, 2.1, 3.2]])  # 3 passes x 3 samples, outliers in two
    slot_ms = np.array([[1.0, 2.0, 3.0, 1.1], [1.1, 9.0, 3.1, 1.3], [0.9, 2.2, 3.3, 1.2]])
    run = PolicyRun(
        n=3, correct=2, exit_counts=np.array([1, 1, 1]), batch_size=1, repeats=3, warmup=0, call_ms=call_ms,
        call_sizes=np.array([1, 1, 1]), call_exits=[np.array([0]), np.array([1]), np.array([2])], slot_ms=slot_ms,
        slot_exits=np.array([0, 1, 2, 0]), prefix_batch_size=1, scorer="maxprob",
    )
    assert run.call_median_ms.tolist() == [1.2, 2.1, 3.2]
    assert run.realised_ms_per_sample == pytest.approx((1.2 + 2.1 + 3.2) / 3)
    assert run.raw_mean_ms_per_sample == pytest.approx(call_ms.sum() / 9)
    assert run.by_exit_mean_of_medians() == pytest.approx([1.2, 2.1, 3.2])
    assert run.measured_costs == pytest.approx([1.1, 2.2, 3.1])  # medians of every timing of each exit
    assert run.prefix_mean_of_medians() == pytest.approx([(1.0 + 1.2) / 2, 2.2, 3.1])
    assert run.estimate_ms_per_sample == pytest.approx((1.1 + 2.2 + 3.1) / 3)
    assert run.estimate_same_statistic_ms_per_sample == pytest.approx((1.1 + 2.2 + 3.1) / 3)
    assert run.per_sample_percentiles((50,)) == [2.2]
    assert run.accuracy == pytest.approx(2 / 3) and run.exit_fractions == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize("kind", ["maxprob", "vote"])
def test_runtime_pools_exit_outputs_as_the_offline_policy_does(setup, kind):
    from eenet_cli.core.outputs import combine

    model, x, y, logits = setup
    n, k, c = logits.shape
    block = {"type": "geometric", "version": 1,
             "exits": [None, {"weights": [0.6, 1.0]}, None, {"weights": [0.2, 0.4, 0.5, 1.0]}]}
    pooled = combine(exit_features(logits, "logits", y), block)
    assert (pooled.preds[:, 1] != logits[:, 1].argmax(-1)).any()  # the pooling changes some predictions
    policy = {**_policy({"type": kind}, pooled, k, c, quantile=0.4), "version": 3, "outputs": block}
    offline = apply_to_features(policy, exit_features(logits, "logits", y))
    np.testing.assert_array_equal(offline.preds, pooled.preds[np.arange(n), offline.exits])
    assert 0 < (offline.exits < k - 1).sum() < n
    ee = EarlyExitModel(model, policy)
    batched = ee.run(x)
    assert np.array_equal(batched.exits.numpy(), offline.exits)
    assert np.array_equal(batched.preds.numpy(), offline.preds)
    one = [ee.run(x[i : i + 1]) for i in range(0, n, 3)]
    assert [int(r.exits) for r in one] == offline.exits[::3].tolist()
    assert [int(r.preds) for r in one] == offline.preds[::3].tolist()


def test_runtime_refuses_an_outputs_block_for_other_exits(setup):
    model, *_ = setup
    policy = {"num_exits": 4, "num_classes": 3, "thresholds": [0.5, 0.5, 0.5, None], "scorer": {"type": "maxprob"},
              "outputs": {"type": "geometric", "version": 1, "exits": [None, {"weights": [1.0, 1.0]}]}}
    with pytest.raises(InputError, match="4 exits"):
        EarlyExitModel(model, policy)
