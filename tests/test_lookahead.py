"""Lookahead policy: budget guarantee, determinism, causality, exact reproduction, cache,
the loose-budget fallback, the scorer validator, and a win over max-prob where it should win."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from eenet_cli.core import lookahead as la
from eenet_cli.core.lookahead import (
    fit_lookahead,
    lookahead_scores,
    validate_lookahead_scorer,
)
from eenet_cli.core.measures import exit_features
from eenet_cli.core.thresholds import Ranking, apply_thresholds, fit_geometric
from eenet_cli.synthetic import make_predictions

COSTS = np.array([1.0, 2.0, 3.0, 4.0])
RTOL = 1e-9  # a realised average cost may exceed its budget by this share (floating-point sums), no more


def fits_budget(cost: float, budget: float) -> bool:
    return cost <= budget * (1 + RTOL)


def split(n=2400, k=4, c=10, seed=3, miscalibration=1.0):
    d = make_predictions(n, k, c, seed=seed, miscalibration=miscalibration)
    val = d.split == "val"
    fv = exit_features(d.logits[val], "logits", d.labels[val])
    ft = exit_features(d.logits[~val], "logits", d.labels[~val])
    return d, fv, ft


@pytest.fixture(scope="module")
def data():
    return split()


@pytest.fixture(scope="module")
def cache():
    return {}


@pytest.fixture(scope="module")
def fits(data, cache):
    _, fv, _ = data
    budgets = [1.0, 1.1, 1.4, 1.8, 2.3, 3.0, 3.6, 4.0, 5.0]
    return {b: fit_lookahead(fv, COSTS, b, seed=0, cache=cache) for b in budgets}


def test_budget_respected_on_validation_across_the_range(data, fits):
    _, fv, _ = data
    for b, pol in fits.items():
        v = pol["validation"]
        assert fits_budget(v["avg_cost"], b), (b, v)
        assert v["n"] == fv.num_samples
        assert pol["thresholds"][-1] is None and len(pol["thresholds"]) == 4
        assert abs(sum(v["exit_fractions"]) - 1) < 1e-12
        assert pol["exit_distribution"] == v["exit_fractions"]
    # at c_1 everyone stops at the first exit
    assert fits[1.0]["validation"]["exit_fractions"][0] == 1.0
    # more budget never hurts validation accuracy by much (different rules may be chosen)
    accs = [fits[b]["validation"]["accuracy"] for b in sorted(fits)]
    assert accs[-1] > accs[0] + 0.3


# --------------------------------------------------------------------------- an independent reference
# The scorer JSON as docs/lookahead.md defines it, evaluated here with plain numpy and loops,
# without any helper of eenet_cli.core.lookahead or eenet_cli.core.thresholds.


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def reference_estimates(scorer: dict, features) -> np.ndarray:
    """``[N, K', K]`` P̂[k, j] (NaN for j < k) from the scorer JSON, per the documented format:
    logit = bias + x_k·weight + class_bias[y_k] + class_slope[y_k]·margin_k."""
    probs = np.asarray(features.probs, dtype=np.float64)
    n, k_seen, c = probs.shape
    k_all = len(scorer["exits"])
    floor, clip = float(scorer["log_floor"]), float(scorer["margin_clip"])

    def log(x):
        with np.errstate(divide="ignore"):
            return np.maximum(np.log(x), floor)

    preds = probs.argmax(axis=2)
    ordered = np.sort(probs, axis=2)
    margin = np.clip(log(ordered[:, :, -1]) - log(ordered[:, :, -2]), 0.0, clip)
    scale = np.asarray(scorer["class_scale"], dtype=np.float64)
    rows = np.arange(n)
    out = np.full((n, k_seen, k_all), np.nan)
    for k in range(k_seen):
        yk = preds[:, k]
        columns = []
        for name in scorer["exits"][k]["inputs"]:
            if name == "vote":  # share of exits 0..k agreeing with the most common prediction
                counts = (preds[:, : k + 1, None] == preds[:, None, : k + 1]).sum(axis=2)
                columns.append(counts.max(axis=1) / (k + 1))
                continue
            what, i = name.rsplit("_", 1)
            i = int(i)
            columns.append({
                "margin": lambda: margin[:, i],
                "log_max_prob": lambda: log(ordered[:, i, -1]),
                "entropy": lambda: np.asarray(features.entropy[:, i], dtype=np.float64),  # eq. 6 (test_measures)
                "relative_margin": lambda: margin[:, i] / scale[i, preds[:, i]],
                "agree": lambda: (preds[:, i] == yk).astype(np.float64),
                "support": lambda: log(probs[rows, i, yk]),
            }[what]())
        x = np.stack(columns, axis=1)
        for t in scorer["exits"][k]["targets"]:
            if t.get("model") == "trees":
                xt = np.concatenate([yk[:, None].astype(np.float64), x], axis=1) if c <= 255 else x
                z = np.array([reference_forest(t["trees"], row, int(cls)) for row, cls in zip(xt, yk)])
            else:
                z = (float(t["bias"]) + x @ np.asarray(t["weight"], dtype=np.float64)
                     + np.asarray(t["class_bias"])[yk] + np.asarray(t["class_slope"])[yk] * margin[:, k])
            out[:, k, int(t["exit"])] = _sigmoid(z)
    return out


def reference_forest(forest: dict, row: np.ndarray, cls: int) -> float:
    """A forest's raw score for one row, walking each tree node by node (docs/lookahead.md)."""
    going_left = {node: set(cats) for node, cats in forest["categorical"]}
    total = float(forest["baseline"])
    for root in forest["roots"]:
        node = root
        while forest["feature"][node] >= 0:
            if node in going_left:
                left = cls in going_left[node]
            else:
                left = row[forest["feature"][node]] <= forest["threshold"][node]
            node = forest["left"][node] if left else forest["right"][node]
        total += forest["value"][node]
    return total


def reference_rule(p: np.ndarray, costs, lam: float, skip=None) -> np.ndarray:
    """-gain_k = (P̂[k,k] - λ c_k) - max over every later exit j of (P̂[k,j] - λ c_j); 0 at the
    last exit. A plain loop over samples, exits and later exits."""
    n, k_seen, k_all = p.shape
    out = np.zeros((n, k_seen))
    for s in range(n):
        for k in range(min(k_seen, k_all - 1)):
            best = max(p[s, k, j] - lam * costs[j] for j in range(k + 1, k_all) if not (skip and skip[j]))
            out[s, k] = (p[s, k, k] - lam * costs[k]) - best
    return out


def reference_scores(scorer: dict, features) -> np.ndarray:
    if "measure" in scorer:  # a baseline's own measure (test_baselines checks those)
        from eenet_cli.core.policy import SIMPLE_SCORERS

        return SIMPLE_SCORERS[scorer["measure"]](features)
    p = reference_estimates(scorer, features)
    if scorer["rule"] == "quota":
        return np.stack([p[:, k, k] for k in range(p.shape[1])], axis=1)
    return reference_rule(p, scorer["costs"], float(scorer["lambda"]), scorer.get("skip"))


def plain_exits(scores: np.ndarray, thresholds) -> list[int]:
    """The first exit whose score reaches its threshold (None: never), else the last."""
    out = []
    last = len(thresholds) - 1
    for row in scores:
        out.append(next(k for k in range(last + 1) if k == last or (thresholds[k] is not None and row[k] >= thresholds[k])))
    return out


def test_fitted_policies_match_the_independent_reference(data, fits):
    """The policy's numpy scores are the documented formula, and its validation figures are
    those of its thresholds on them (exits, accuracy and cost recomputed by hand)."""
    _, fv, ft = data
    rules = set()
    for b, pol in fits.items():
        pol = json.loads(json.dumps(pol))  # what a policy file holds
        scorer, thr = pol["scorer"], pol["thresholds"]
        rules.add((scorer["rule"], scorer["lambda"] > 0))
        for feats in (fv, ft):
            got = lookahead_scores(scorer, feats)
            want = reference_scores(scorer, feats)
            assert got.shape == want.shape == (feats.num_samples, 4) and got.dtype == np.float64
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-9, err_msg=f"budget {b}")
        exits = plain_exits(lookahead_scores(scorer, fv), thr)
        # the reference's own decisions differ at most where a score sits on its threshold
        ref_exits = plain_exits(reference_scores(scorer, fv), thr)
        differ = [i for i, (a, r) in enumerate(zip(exits, ref_exits)) if a != r]
        assert len(differ) <= 2, (b, differ)
        n = fv.num_samples
        labels = fv.labels
        preds = fv.probs.argmax(axis=2)
        v = pol["validation"]
        assert v["n"] == n
        assert v["accuracy"] == pytest.approx(sum(int(preds[i, e] == labels[i]) for i, e in enumerate(exits)) / n, abs=1e-12)
        assert v["avg_cost"] == pytest.approx(sum(COSTS[e] for e in exits) / n, rel=1e-12)
        assert v["exit_fractions"] == pytest.approx([exits.count(k) / n for k in range(4)], abs=1e-12)
        assert sum(COSTS[e] for e in exits) / n <= b * (1 + RTOL)
    # the fits cover the priced rule (λ > 0), where the cost term matters
    assert ("lookahead", True) in rules, rules


def test_online_decisions_match_the_reference(data, fits):
    """Sample by sample (one exit at a time, later exits never shown), the runtime stops where
    the reference formula says."""
    from eenet_cli.core.online import OnlinePolicy

    d, _, ft = data
    logits = d.logits[d.split != "val"][:120]
    for b in (1.4, 2.3):
        pol = fits[b]
        want = plain_exits(reference_scores(pol["scorer"], exit_features(logits, "logits")), pol["thresholds"])
        op = OnlinePolicy({**pol, "num_exits": 4, "num_classes": 10})
        got = [op.run(row)[0] for row in logits]
        assert got == want


def test_rule_by_hand():
    """A worked example: estimators that are constants per predicted class, through the
    public scorer path. K = 3, costs 1, 2, 4, λ = 0.1.

    exit 0, predicted class 0: P̂ = .5, .55, .9  -> net .4, .35, .5 -> -gain = .4 - .5 = -0.10
             (one exit ahead would give .4 - .35 = +0.05: it must look at exit 2)
            predicted class 1: P̂ = .6, .9, .85  -> net .5, .7, .45  -> -0.20
            predicted class 2: P̂ = .7, .75, .85 -> net .6, .55, .45 -> +0.05
             (without the price it would go on: .7 - .85 = -0.15)
    exit 1, predicted class 0: P̂ = .6, .75      -> net .4, .35      -> +0.05
            predicted class 1: P̂ = .3, .9       -> net .1, .5       -> -0.40
            predicted class 2: P̂ = .5, .5       -> net .3, .1       -> +0.20
    exit 2: always 0.
    """
    table = {  # (k, j) -> P̂ for predicted class 0, 1, 2 at exit k
        (0, 0): [0.5, 0.6, 0.7], (0, 1): [0.55, 0.9, 0.75], (0, 2): [0.9, 0.85, 0.85],
        (1, 1): [0.6, 0.3, 0.5], (1, 2): [0.75, 0.9, 0.5],
        (2, 2): [0.8, 0.8, 0.8],
    }
    scorer = constant_scorer(table, costs=[1.0, 2.0, 4.0], lam=0.1, num_classes=3)
    pairs = [(a, b) for a in range(3) for b in range(3)]  # predicted class at exit 0 and exit 1
    feats = features_predicting([(a, b, 0) for a, b in pairs], num_classes=3)
    scores = lookahead_scores(scorer, feats)
    exit0 = {0: -0.10, 1: -0.20, 2: 0.05}
    exit1 = {0: 0.05, 1: -0.40, 2: 0.20}
    want = np.array([[exit0[a], exit1[b], 0.0] for a, b in pairs])
    np.testing.assert_allclose(scores, want, rtol=0, atol=1e-12)
    # thresholds [0, 0, None]: stop at exit 0 when predicting class 2 there, else at exit 1
    # unless exit 1 predicts class 1
    exits = apply_thresholds(scores, [0.0, 0.0, None]).tolist()
    assert exits == [0 if a == 2 else (2 if b == 1 else 1) for a, b in pairs]
    # the quota rule scores P̂[k, k] itself
    quota = lookahead_scores(dict(scorer, rule="quota"), feats)
    np.testing.assert_allclose(quota, [[table[0, 0][a], table[1, 1][b], 0.8] for a, b in pairs], rtol=0, atol=1e-12)
    # λ = 0: pure accuracy gains; exit 0 class 0 -> .5 - .9, exit 1 class 2 -> .5 - .5
    free = lookahead_scores(dict(scorer, **{"lambda": 0.0}), feats)
    assert free[0, 0] == pytest.approx(-0.4, abs=1e-12) and free[pairs.index((0, 2)), 1] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_rule_against_brute_force(seed):
    """Random per-class estimators, costs and prices, K = 2..5: the scores equal a plain
    loop over every later exit, and the stopping decision equals a brute-force search for
    the first exit from which no later exit is worth its extra cost."""
    rng = np.random.default_rng(seed)
    k_all = 2 + seed % 4
    c = 4
    costs = np.cumsum(rng.uniform(0.2, 2.0, k_all))
    lam = [0.0, 0.05, 0.3][seed % 3]
    table = {(k, j): rng.uniform(0.05, 0.95, c).tolist() for k in range(k_all) for j in range(k, k_all)}
    scorer = constant_scorer(table, costs=costs.tolist(), lam=lam, num_classes=c)
    classes = rng.integers(0, c, (40, k_all))
    feats = features_predicting(classes.tolist(), num_classes=c)
    got = lookahead_scores(scorer, feats)
    for s in range(40):
        stopped = None
        for k in range(k_all):
            if k == k_all - 1:
                assert got[s, k] == 0.0
                stopped = k if stopped is None else stopped
                continue
            here = table[k, k][classes[s, k]] - lam * costs[k]
            later = [table[k, j][classes[s, k]] - lam * costs[j] for j in range(k + 1, k_all)]
            assert got[s, k] == pytest.approx(here - max(later), abs=1e-12)
            if stopped is None and all(v <= here for v in later):
                stopped = k
        assert apply_thresholds(got[s : s + 1], [0.0] * (k_all - 1) + [None])[0] == stopped


def _input_names(k: int) -> list[str]:
    """The documented inputs of exit k: 4 per exit 0..k, 2 per earlier exit, the vote after exit 0."""
    names = [f"{what}_{i}" for i in range(k + 1) for what in ("margin", "log_max_prob", "entropy", "relative_margin")]
    names += [f"{what}_{i}" for i in range(k) for what in ("agree", "support")]
    return names + (["vote"] if k else [])


def constant_scorer(table: dict, *, costs, lam: float, num_classes: int) -> dict:
    """A lookahead scorer whose P̂[k, j] depends only on exit k's predicted class:
    ``table[k, j][y]`` (zero weights; the class intercept carries the logit)."""
    k_all = len(costs)
    exits = []
    for k in range(k_all):
        d = len(_input_names(k))
        targets = []
        for j in range(k, k_all):
            p = np.asarray(table[k, j], dtype=np.float64)
            targets.append({"exit": j, "bias": 0.0, "weight": [0.0] * d,
                            "class_bias": np.log(p / (1 - p)).tolist(), "class_slope": [0.0] * num_classes})
        exits.append({"inputs": _input_names(k), "targets": targets})
    scorer = {"type": "lookahead", "version": 1, "rule": "lookahead", "lambda": float(lam),
              "costs": [float(x) for x in costs], "num_classes": num_classes, "margin_clip": 30.0,
              "log_floor": -30.0, "class_scale": [[1.0] * num_classes for _ in range(k_all)], "exits": exits}
    assert validate_lookahead_scorer(scorer, k_all, num_classes) is None  # the format as the module reads it
    return scorer


def features_predicting(classes: list, num_classes: int):
    """Features whose exit k predicts ``classes[s][k]`` for sample s."""
    classes = np.asarray(classes)
    logits = np.zeros((*classes.shape, num_classes), dtype=np.float32)
    np.put_along_axis(logits, classes[..., None], 4.0, axis=2)
    return exit_features(logits, "logits", classes[:, -1])


def test_deterministic_and_cache_does_not_change_the_result(data, fits):
    _, fv, _ = data
    fresh = fit_lookahead(fv, COSTS, 1.8, seed=0)  # no cache: estimators refitted
    assert json.dumps(fresh) == json.dumps(fits[1.8])
    again = fit_lookahead(fv, COSTS, 1.8, seed=0)
    assert json.dumps(again) == json.dumps(fresh)


def test_cache_reuses_the_estimators(data, cache, fits, monkeypatch):
    _, fv, _ = data
    assert len(cache) == 1  # one set of estimators served every budget

    def boom(*a, **k):
        raise AssertionError("estimators refitted despite the cache")

    monkeypatch.setattr(la, "fit_estimators", boom)
    pol = fit_lookahead(fv, COSTS, 2.7, seed=0, cache=cache)
    assert fits_budget(pol["validation"]["avg_cost"], 2.7)
    # other data or another seed do not hit the cache
    with pytest.raises(AssertionError, match="refitted"):
        fit_lookahead(fv.subset(np.arange(500)), COSTS, 2.7, seed=0, cache=cache)
    with pytest.raises(AssertionError, match="refitted"):
        fit_lookahead(fv, COSTS, 2.7, seed=1, cache=cache)


def test_scores_are_causal(data, fits):
    d, fv, ft = data
    scorer = fits[1.8]["scorer"]
    base = lookahead_scores(scorer, ft)
    val = d.split == "val"
    logits = d.logits[~val]
    rng = np.random.default_rng(0)
    for k in range(3):
        pert = logits.copy()
        pert[:, k + 1 :] = rng.standard_normal(pert[:, k + 1 :].shape).astype(np.float32) * 5
        s = lookahead_scores(scorer, exit_features(pert, "logits", d.labels[~val]))
        np.testing.assert_array_equal(s[:, : k + 1], base[:, : k + 1])
        assert not np.array_equal(s[:, k + 1 : 3], base[:, k + 1 : 3]) or k == 2
        # the first k+1 exits alone give the same first k+1 columns (the online case)
        prefix = lookahead_scores(scorer, exit_features(logits[:, : k + 1], "logits"))
        np.testing.assert_array_equal(prefix, base[:, : k + 1])


def test_quota_rule_is_causal_too(data, fits):
    d, fv, ft = data
    scorer = dict(fits[1.8]["scorer"], rule="quota")
    base = lookahead_scores(scorer, ft)
    prefix = lookahead_scores(scorer, exit_features(d.logits[d.split != "val"][:, :2], "logits"))
    np.testing.assert_array_equal(prefix, base[:, :2])


def test_loose_budget_fallback_never_worse_than_quota_on_the_same_scores():
    # calibrated data: at loose budgets the estimates say "stop" early (λ = 0), and a quota
    # rule that spends the whole budget can be more accurate
    _, fv, _ = split(n=2400, seed=5, miscalibration=0.0)
    cache: dict = {}
    seen_zero = False
    for b in [2.5, 3.0, 3.5, 3.8, 4.0]:
        pol = fit_lookahead(fv, COSTS, b, seed=0, cache=cache)
        cands = {c["rule"]: c for c in pol["threshold_fit"]["candidates"]}
        chosen = cands[pol["threshold_fit"]["rule"]]
        look = cands["lookahead"]
        if look["lambda"] == 0.0:
            seen_zero = True
            for name in ("quota-geometric", "quota-lookahead-distribution"):
                assert chosen["cv_accuracy"] >= cands[name]["cv_accuracy"]
        # and on the policy's own (refitted) scores, against geometric quotas on P̂[k, k]
        est = next(iter(cache.values()))
        rank = Ranking(np.stack([est["final"][:, k, k] for k in range(4)], axis=1))
        quota = fit_geometric(rank, COSTS, b)
        rows = np.arange(fv.num_samples)
        quota_acc = float(fv.correct[rows, apply_thresholds(rank.scores, quota.thresholds)].mean())
        assert pol["validation"]["accuracy"] >= quota_acc - 0.01
    assert seen_zero


def test_beats_maxprob_at_a_tight_budget_on_miscalibrated_data():
    _, fv, ft = split(n=4000, seed=7, miscalibration=1.0)
    rows = np.arange(ft.num_samples)
    cache: dict = {}
    for b in (1.5, 2.0):
        pol = fit_lookahead(fv, COSTS, b, seed=0, cache=cache)
        ex = apply_thresholds(lookahead_scores(pol["scorer"], ft), pol["thresholds"])
        acc = ft.correct[rows, ex].mean()
        geo = fit_geometric(Ranking(fv.max_prob), COSTS, b)
        acc_mp = ft.correct[rows, apply_thresholds(ft.max_prob, geo.thresholds)].mean()
        assert acc > acc_mp + 0.02, (b, acc, acc_mp)
        assert COSTS[ex].mean() <= b + 0.1  # test cost close to the budget


def test_validator_accepts_fits_and_rejects_malformed_scorers(fits):
    scorer = json.loads(json.dumps(fits[1.8]["scorer"]))
    assert validate_lookahead_scorer(scorer, 4, 10) is None
    assert validate_lookahead_scorer(scorer, 3, 10) is not None
    assert validate_lookahead_scorer(scorer, 4, 11) is not None

    def broken(mutate):
        s = copy.deepcopy(scorer)
        mutate(s)
        return validate_lookahead_scorer(s, 4, 10)

    cases = {
        "type": lambda s: s.update(type="eenet"),
        "rule": lambda s: s.update(rule="greedy"),
        "lambda": lambda s: s.update(**{"lambda": float("nan")}),
        "lambda_str": lambda s: s.update(**{"lambda": "1"}),
        "costs": lambda s: s.update(costs=[1.0, 2.0, 2.0, 3.0]),
        "exits": lambda s: s["exits"].pop(),
        "targets": lambda s: s["exits"][1]["targets"].pop(),
        "exit index": lambda s: s["exits"][1]["targets"][0].update(exit=2),
        "weight len": lambda s: s["exits"][2]["targets"][0]["weight"].append(0.0),
        "weight nan": lambda s: s["exits"][2]["targets"][0]["weight"].__setitem__(0, float("inf")),
        "weight nested": lambda s: s["exits"][0]["targets"][0].update(weight=[[0.0]] * 3),
        "class_bias": lambda s: s["exits"][0]["targets"][1].update(class_bias=[0.0] * 9),
        "class_slope": lambda s: s["exits"][3]["targets"][0].update(class_slope=None),
        "bias": lambda s: s["exits"][0]["targets"][0].update(bias=None),
        "inputs": lambda s: s["exits"][1].update(inputs=["margin_0"]),
        "not dict": lambda s: s["exits"].__setitem__(0, []),
        "class_scale rows": lambda s: s["class_scale"].pop(),
        "class_scale zero": lambda s: s["class_scale"][1].__setitem__(3, 0.0),
        "class_scale nan": lambda s: s["class_scale"][0].__setitem__(0, float("nan")),
        "margin_clip": lambda s: s.update(margin_clip=10.0),
    }
    for name, mutate in cases.items():
        assert isinstance(broken(mutate), str), name
    assert validate_lookahead_scorer([], 4, 10) is not None


def test_bad_inputs():
    _, fv, _ = split(n=400)
    with pytest.raises(ValueError, match="below the cost of the first exit"):
        fit_lookahead(fv, COSTS, 0.5)
    with pytest.raises(ValueError, match="costs"):
        fit_lookahead(fv, COSTS[:3], 2.0)
    with pytest.raises(ValueError, match="increasing"):
        fit_lookahead(fv, np.array([1.0, 3.0, 2.0, 4.0]), 2.0)
    d = make_predictions(100, 4, 10, seed=0)
    with pytest.raises(ValueError, match="labels"):
        fit_lookahead(exit_features(d.logits, "logits"), COSTS, 2.0)


@pytest.mark.parametrize("k", [1, 2])
def test_few_exits_and_few_rows(k):
    d = make_predictions(60, k, 3, seed=0, miscalibration=0.5)
    fv = exit_features(d.logits, "logits", d.labels)
    costs = COSTS[:k]
    for b in (costs[0], (costs[0] + costs[-1]) / 2, costs[-1]):
        pol = fit_lookahead(fv, costs, b, seed=0)
        assert fits_budget(pol["validation"]["avg_cost"], b)
        assert pol["thresholds"][-1] is None and len(pol["thresholds"]) == k
        assert validate_lookahead_scorer(json.loads(json.dumps(pol["scorer"])), k, 3) is None
        ex = apply_thresholds(lookahead_scores(pol["scorer"], fv), pol["thresholds"])
        assert float(costs[ex].mean()) == pol["validation"]["avg_cost"]


def test_probability_inputs_work():
    d = make_predictions(600, 3, 5, seed=2, miscalibration=1.0)
    z = d.logits - d.logits.max(axis=-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    p[:, :, 0] = 0.0  # exact zeros must not break the log features
    p /= p.sum(axis=-1, keepdims=True)
    fv = exit_features(p.astype(np.float32), "probs", d.labels)
    pol = fit_lookahead(fv, COSTS[:3], 1.7, seed=0)
    assert np.all(np.isfinite(lookahead_scores(pol["scorer"], fv)))
    assert validate_lookahead_scorer(pol["scorer"], 3, 5) is None
