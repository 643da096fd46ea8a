"""Online (one exit at a time) decisions equal the offline ones for every scorer."""

from pathlib import Path

import numpy as np
import pytest

from eenet_cli.api import apply_policy, load_predictions, predictions_from_arrays
from eenet_cli.core.measures import exit_features, softmax
from eenet_cli.core.methods import BASELINES, POLICY_METHODS, FitCache, fit_method
from eenet_cli.core.online import OnlinePolicy
from eenet_cli.core.policy import apply_to_features, compute_scores
from eenet_cli.learn.eenet_torch import train_eenet
from eenet_cli.synthetic import make_predictions

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"


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


# ---------------------------------------------------------------------------------------------
# every policy method, sample by sample, on the shipped digits predictions and on C = 100


@pytest.fixture(scope="module")
def datasets():
    digits = load_predictions(str(SAMPLE / "digits.parquet"))
    d = make_predictions(1600, 4, 100, seed=3, miscalibration=0.5)
    synth = predictions_from_arrays(d.logits, d.labels, split=d.split, costs=d.costs, unit="ms")
    out = {}
    for name, preds in (("digits", digits), ("synthetic-c100", synth)):
        costs = np.asarray(preds.meta["costs"]["costs"], dtype=np.float64)
        val = preds.rows(preds.split == "val")
        out[name] = (preds, costs, FitCache(val.features()))
    return out


def _check_sample_by_sample(policy: dict, preds) -> None:
    """``run`` and ``OnlineSample.step`` agree with ``apply_policy`` on every row, val and
    test. The val rows include the samples whose scores are the thresholds: a score one ulp
    off there flips the decision, so this checks the arithmetic, not only the logic."""
    off = apply_policy(policy, preds)
    offline_scores = compute_scores(policy["scorer"], preds.features())
    scores = preds.scores
    op = OnlinePolicy(policy)
    thr = policy["thresholds"]
    k = preds.num_exits
    sample = op.sample()
    bad = []
    for i in range(scores.shape[0]):
        exit_, pred = op.run(scores[i])
        sample.reset()
        for j in range(k):
            stop = sample.step(scores[i, j])
            if sample.score is not None:  # the exit's score, as the offline path computes it
                np.testing.assert_allclose(sample.score, offline_scores[i, j], rtol=1e-12, atol=1e-12)
            if stop:
                break
        if (exit_, pred) != (off.exits[i], off.preds[i]) or (sample.exit, sample.prediction) != (exit_, pred):
            bad.append((i, exit_, pred, sample.exit, int(off.exits[i]), int(off.preds[i])))
    assert not bad, f"{len(bad)} samples differ (row, online exit, pred, step exit, offline exit, pred): {bad[:5]}; thresholds {thr}"


@pytest.mark.parametrize("method", POLICY_METHODS)
@pytest.mark.parametrize("data", ["digits", "synthetic-c100"])
def test_every_method_sample_by_sample(datasets, data, method):
    preds, costs, cache = datasets[data]
    for share in (0.35, 0.6):
        budget = float(costs[0] + share * (costs[-1] - costs[0]))
        policy = fit_method(method, cache, costs, budget, "ms", learner=train_eenet)
        assert any(t is not None for t in policy["thresholds"][:-1]) or method == "patience"
        _check_sample_by_sample(policy, preds)


@pytest.mark.parametrize("kind", ["maxprob", "entropy", "vote", "patience", "eenet", "lookahead"])
def test_probabilities_input(datasets, kind):
    """Heads that output probabilities: the same decisions as offline on ``probs`` scores."""
    preds, costs, cache = datasets["synthetic-c100"]
    method = "eenet" if kind == "eenet" else kind
    policy = fit_method(method, cache, costs, float(costs.mean()), "ms", learner=train_eenet)
    probs = softmax(preds.scores.reshape(-1, preds.num_classes)).reshape(preds.scores.shape)
    off = apply_to_features(policy, exit_features(probs, "probs"))
    op = OnlinePolicy(policy)
    single = np.array([op.run(probs[i], probs=True) for i in range(probs.shape[0])])
    np.testing.assert_array_equal(single[:, 0], off.exits)
    np.testing.assert_array_equal(single[:, 1], off.preds)


@pytest.mark.parametrize("kind", ["logits", "probs"])
def test_lookahead_builds_one_samples_inputs_exit_by_exit_as_the_batch_does(datasets, kind):
    """One sample's lookahead inputs are built as its exits arrive (each exit's summaries
    once), not recomputed from every exit seen; they equal the offline design matrix, value
    for value, at every exit, and so do the scores."""
    from eenet_cli.core.lookahead import LookaheadScorer, OnlineInputs, _Inputs
    from eenet_cli.core.online import _LOOKAHEAD

    preds, costs, cache = datasets["synthetic-c100"]
    policy = fit_method("lookahead", cache, costs, float(costs[0] + 0.4 * (costs[-1] - costs[0])), "ms")
    policy["scorer"].pop("measure", None)  # the learned estimators, whatever the fit chose
    scores = preds.scores[:300]
    if kind == "probs":
        scores = softmax(scores.reshape(-1, preds.num_classes)).reshape(scores.shape)
    feats = exit_features(scores, kind)
    op = OnlinePolicy(policy)
    assert op.code == _LOOKAHEAD
    scorer = LookaheadScorer(policy["scorer"])
    batch = _Inputs(feats, scorer.k_all, scorer.class_scale)
    offline = scorer.scores(feats)
    sample = op.sample(probs=kind == "probs")
    for i in range(scores.shape[0]):
        sample.reset()
        for j in range(preds.num_exits - 1):
            sample.step(scores[i, j])
            x, cls, m = sample._la.design(j)
            bx, bcls, bm = batch.design(j)
            assert x.shape[0] == OnlineInputs.ROWS and (x == bx[i]).all() and (cls == bcls[i]).all() and (m == bm[i]).all()
            if sample.score is not None:
                assert sample.score == offline[i, j]


def test_sample_api():
    policy = {"num_exits": 3, "num_classes": 3, "thresholds": [None, 0.9, None], "scorer": {"type": "maxprob"}}
    op = OnlinePolicy(policy)
    s = op.sample()
    assert s.step(np.array([9.0, 0.0, 0.0])) is False  # a null threshold never stops
    assert s.step(np.array([0.0, 9.0, 0.0])) is True and (s.exit, s.prediction) == (1, 1)
    s.reset()
    assert [s.step(np.array([1.0, 0.0, 0.0])) for _ in range(3)] == [False, False, True]
    with pytest.raises(ValueError, match="reset"):
        s.step(np.array([1.0, 0.0, 0.0]))
    # float64 and float16 scores are cast to float32 first, as the offline path does
    assert op.run(np.array([[0, 0, 0], [0, 9, 0], [0, 0, 9]], dtype=np.float16)) == (1, 1)
    assert op.run([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) == (2, 2)


def test_eenet_wide_scorer_matches_offline():
    """A wider EENet scorer (C = 300: products big enough for OpenBLAS to block and thread
    them) gives the offline scores and decisions, exit by exit."""
    k, c = 3, 300
    d = make_predictions(400, k, c, seed=11, miscalibration=0.5)
    rng = np.random.default_rng(2)
    exits = []
    for j in range(k):
        h = (c + 3 + j) // 2
        exits.append({"shared_weight": (0.05 * rng.normal(size=(h, c + 3 + j))).tolist(), "shared_bias": (0.1 * rng.normal(size=h)).tolist(),
                      "utility_weight": (0.1 * rng.normal(size=h)).tolist(), "utility_bias": 0.1,
                      "assign_weight": [0.0] * h, "assign_bias": 0.0})
    scorer = {"type": "eenet", "negative_slope": 0.01, "exits": exits}
    f = exit_features(d.logits, "logits", d.labels)
    offline = compute_scores(scorer, f)
    thr = []
    for j in range(k - 1):  # half-way between two scores near the median: no score sits on one
        u = np.unique(offline[:, j])
        thr.append(float((u[len(u) // 2] + u[len(u) // 2 + 1]) / 2))
    policy = {"num_exits": k, "num_classes": c, "thresholds": thr + [None], "scorer": scorer}
    off = apply_to_features(policy, f)
    op = OnlinePolicy(policy)
    s = op.sample()
    for i in range(400):
        s.reset()
        for j in range(k):
            stop = s.step(d.logits[i, j])
            if s.score is not None:
                np.testing.assert_allclose(s.score, offline[i, j], rtol=1e-12, atol=1e-12)
            if stop:
                break
        assert (s.exit, s.prediction) == (off.exits[i], off.preds[i]) == op.run(d.logits[i])


def _uneven(n=3000, seed=6):
    """Four exits whose third is much weaker than the second (its logits are mostly noise)."""
    d = make_predictions(n, 4, 10, seed=seed, miscalibration=0.5)
    logits = d.logits.copy()
    rng = np.random.default_rng(seed)
    logits[:, 2] = 0.3 * logits[:, 2] + rng.normal(scale=2.0, size=logits[:, 2].shape).astype(logits.dtype)
    val = d.split == "val"
    return d, logits, val


@pytest.mark.parametrize("measure_or_skip", ["skip", "measure-eenet", "measure-lookahead"])
def test_switched_off_exits_and_measures_decide_the_same_online(measure_or_skip):
    """A lookahead policy with an exit switched off, and learned scorers that stop on a
    baseline measure, decide the same online (one sample, and a batch) as offline."""
    from eenet_cli.core.lookahead import fit_lookahead

    d, logits, val = _uneven()
    fv = exit_features(logits[val], "logits", d.labels[val])
    ft = exit_features(logits[~val], "logits", d.labels[~val])
    costs = np.asarray(d.costs, dtype=np.float64)
    fit = fit_lookahead(fv, costs, 2.2, seed=0)
    scorer = dict(fit["scorer"])
    thresholds = list(fit["thresholds"])
    if measure_or_skip == "skip":
        scorer.update(rule="lookahead", skip=[False, False, True, False])
        scorer.pop("measure", None)
        thresholds = [0.0, 0.0, None, None]
    elif measure_or_skip == "measure-lookahead":
        scorer.update(measure="vote", rule="quota")
        thresholds = [0.9, 0.8, 0.7, None]
    else:
        scorer = {"type": "eenet", "measure": "vote", "exits": []}
        thresholds = [0.9, 0.8, 0.7, None]
    policy = {"num_exits": 4, "num_classes": 10, "thresholds": thresholds, "scorer": scorer}
    offline = apply_to_features(policy, ft).exits
    if measure_or_skip == "skip":
        assert not np.any(offline == 2)  # nobody stops at the switched-off exit
    op = OnlinePolicy(policy)
    test_logits = logits[~val][:200]
    assert [op.run(row)[0] for row in test_logits] == offline[:200].tolist()
    state = op.begin(len(test_logits))
    running = np.arange(len(test_logits))
    exits = np.full(len(test_logits), -1)
    for j in range(4):
        stop, _, _ = op.step(state, j, test_logits[running, j], rows=running)
        exits[running[stop]] = j
        running = running[~stop]
    assert exits.tolist() == offline[:200].tolist()


def test_lookahead_switches_off_an_exit_that_never_pays():
    """On exits with a weak third exit, the fit switches it off when cross-fitting says so,
    and its validation cost stays within the budget."""
    from eenet_cli.core.lookahead import fit_lookahead

    d, logits, val = _uneven(4000)
    fv = exit_features(logits[val], "logits", d.labels[val])
    costs = np.asarray(d.costs, dtype=np.float64)
    budget = 2.5
    fit = fit_lookahead(fv, costs, budget, seed=0)
    cands = {c["rule"]: c for c in fit["threshold_fit"]["candidates"]}
    assert fit["validation"]["avg_cost"] <= budget * (1 + 1e-9)
    if "lookahead-skip" in cands:
        assert cands["lookahead-skip"]["skip"][2]
        assert cands["lookahead-skip"]["cv_accuracy"] >= cands["lookahead"]["cv_accuracy"] + 0.002
    # whatever was chosen, the weak exit takes (almost) nobody
    assert fit["validation"]["exit_fractions"][2] < 0.05
