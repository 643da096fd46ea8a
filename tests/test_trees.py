"""Gradient-boosted trees as policy data: exported from scikit-learn, applied with numpy.

The numpy evaluation must give scikit-learn's own scores (decision_function and
predict_proba) on real fitted models, including the categorical class input, unseen
categories and missing values; policy files are user input, so malformed forests are
rejected.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from eenet_cli.core.lookahead import LookaheadScorer, fit_lookahead, validate_lookahead_scorer
from eenet_cli.core.measures import exit_features
from eenet_cli.core.online import OnlinePolicy
from eenet_cli.core.thresholds import apply_thresholds
from eenet_cli.core.trees import Forest, export_forest, fit_forest, trim_categories, validate_forest
from eenet_cli.synthetic import make_predictions

pytest.importorskip("sklearn")


def _data(n, c, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5))
    cls = rng.integers(0, c, n)
    x[:, 0] = cls
    y = ((x[:, 1] + 1.5 * (cls % 3 == 0) - 0.7 * x[:, 2] * x[:, 3] + rng.normal(size=n)) > 0.3).astype(np.int64)
    return x, cls, y


@pytest.mark.parametrize("c", [2, 12, 40])
def test_numpy_forest_equals_scikit_learn(c):
    x, cls, y = _data(3000, c, seed=c)
    model = fit_forest(x, y, iterations=60, categorical=0, seed=0)
    forest = json.loads(json.dumps(trim_categories(export_forest(model), c)))  # through JSON, as a policy file
    assert validate_forest(forest, 5, "f", 0, c) is None
    xt, ct, _ = _data(2500, c + 3, seed=100 + c)  # categories c..c+2 never seen in training
    xt[:5, 2] = np.nan  # missing values follow the learned direction
    xt[:, 0] = ct
    raw = Forest(forest, num_categories=c).raw(xt, ct)[:, 0]
    ref = model.decision_function(xt)
    assert np.max(np.abs(raw - ref)) <= 1e-9
    proba = 1.0 / (1.0 + np.exp(-raw))
    assert np.max(np.abs(proba - model.predict_proba(xt)[:, 1])) <= 1e-9
    assert np.array_equal(raw > 0, model.predict(xt) == 1)  # decisions exactly
    # a few rows at a time (the online path decides every node's branch up front): the same
    # leaves, so the same raw scores, to the last bit
    f = Forest(forest, num_categories=c)
    assert 2500 * f.feature.size > (1 << 16)  # the whole batch takes the level-by-level path
    small = np.concatenate([f.raw(xt[i : i + 4], ct[i : i + 4])[:, 0] for i in range(0, 400, 4)])
    assert np.array_equal(small, raw[:400])
    one = np.concatenate([f.raw(xt[i : i + 1], ct[i : i + 1])[:, 0] for i in range(60)])  # one row: sums in Python
    assert np.array_equal(one, raw[:60])


def test_several_forests_evaluate_together_as_each_alone():
    x, cls, y = _data(2000, 6, seed=3)
    forests = [trim_categories(export_forest(fit_forest(x, (y + s) % 2, iterations=10 + 15 * s, categorical=0, seed=s)), 6)
               for s in range(3)]
    together = Forest(forests, num_categories=6).raw(x, cls)
    for i, f in enumerate(forests):
        assert np.array_equal(together[:, i], Forest(f, num_categories=6).raw(x, cls)[:, 0])


def _forest():
    x, cls, y = _data(1500, 5, seed=7)
    return trim_categories(export_forest(fit_forest(x, y, iterations=5, categorical=0, seed=0)), 5)


@pytest.mark.parametrize("mutate, message", [
    (lambda f: f.__setitem__("baseline", float("nan")), "baseline"),
    (lambda f: f["threshold"].__setitem__(0, float("inf")), "non-finite"),
    (lambda f: f["left"].__setitem__(0, 0), "after its node"),
    (lambda f: f["right"].__setitem__(0, 10**6), "after its node"),
    (lambda f: f["feature"].__setitem__(0, 99), "feature index"),
    (lambda f: f["roots"].__setitem__(0, 1), "roots"),
    (lambda f: f["value"].pop(), "one per node"),
    (lambda f: f.__setitem__("roots", list(range(2000))), "at most"),
    (lambda f: f["categorical"].append([0, [1]]) if f["feature"][0] != 0 else f["categorical"].append([0, [1]]), "categorical"),
    (lambda f: f["missing_left"].__setitem__(0, 2), "0 or 1"),
    (lambda f: f["feature"].__setitem__(0, True), "numbers"),
])
def test_malformed_forests_are_rejected(mutate, message):
    f = _forest()
    assert validate_forest(f, 5, "f", 0, 5) is None
    bad = copy.deepcopy(f)
    mutate(bad)
    err = validate_forest(bad, 5, "f", 0, 5)
    assert err is not None and message in err, err


@pytest.fixture(scope="module")
def tree_fit():
    """Lookahead on data where the class matters (per-class miscalibration) and rows are plenty."""
    d = make_predictions(4400, 4, 10, seed=3, miscalibration=1.0)
    val = d.split == "val"
    fv = exit_features(d.logits[val], "logits", d.labels[val])
    ft = exit_features(d.logits[~val], "logits", d.labels[~val])
    costs = np.asarray(d.costs, dtype=np.float64)
    fit = fit_lookahead(fv, costs, float(costs[0] + 0.3 * (costs[-1] - costs[0])), seed=0)
    return fv, ft, d.logits[~val], fit


def test_lookahead_chooses_trees_where_they_fit_better_and_applies_them_with_numpy(tree_fit):
    fv, ft, logits, fit = tree_fit
    kinds = [m for row in fit["training"]["model"] for m in row]
    assert any(m.startswith("trees") for m in kinds), kinds
    # the chosen model has the lower cross-fitted log loss
    for lrow, trow, mrow in zip(fit["training"]["cv_log_loss_logistic"], fit["training"]["cv_log_loss_trees"], fit["training"]["model"]):
        for lo, tr, m in zip(lrow, trow, mrow):
            if m.startswith("trees"):
                assert tr < lo
    scorer = json.loads(json.dumps(fit["scorer"]))
    assert validate_lookahead_scorer(scorer, fv.num_exits, fv.num_classes) is None
    assert fit["validation"]["avg_cost"] <= float(fit["scorer"]["costs"][0] + 0.3 * (fit["scorer"]["costs"][-1] - fit["scorer"]["costs"][0])) * (1 + 1e-9)
    # offline and online decisions agree, sample by sample
    policy = {"num_exits": fv.num_exits, "num_classes": fv.num_classes, "thresholds": fit["thresholds"], "scorer": scorer}
    offline = apply_thresholds(LookaheadScorer(scorer).scores(ft), fit["thresholds"])
    op = OnlinePolicy(policy)
    online = [op.run(logits[i])[0] for i in range(300)]
    assert online == offline[:300].tolist()


def test_small_validation_sets_keep_the_logistic_estimators():
    d = make_predictions(600, 3, 5, seed=2)
    val = d.split == "val"
    fv = exit_features(d.logits[val], "logits", d.labels[val])
    fit = fit_lookahead(fv, np.asarray(d.costs, dtype=np.float64), float(np.mean(d.costs)), seed=0)
    assert all(m == "logistic" for row in fit["training"]["model"] for m in row)
    assert all(t.get("model", "logistic") == "logistic" for e in fit["scorer"]["exits"] for t in e["targets"])
