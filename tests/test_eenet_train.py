"""EENet policy learning: loss, determinism, export, budgets, and that it learns something."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from eenet_cli.core import eenet as core_eenet
from eenet_cli.core.eenet import (
    EENetHyper,
    assignment_distribution,
    eenet_utilities,
    targets,
    tilted_distribution,
)
from eenet_cli.learn.eenet_torch import train_eenet


def fit_eenet_policy(*args, **kwargs):
    """The core fitter with the torch learner plugged in (as api does)."""
    return core_eenet.fit_eenet_policy(*args, learner=train_eenet, **kwargs)


def fit_eenet_maxprob(*args, **kwargs):
    return core_eenet.fit_eenet_maxprob(*args, learner=train_eenet, **kwargs)
from eenet_cli.core.measures import exit_features
from eenet_cli.core.policy import apply_to_features
from eenet_cli.core.thresholds import (
    Ranking,
    apply_thresholds,
    fit_distribution,
    fit_geometric,
    search_thresholds,
)
from eenet_cli.errors import BudgetError, InputError
from eenet_cli.synthetic import make_predictions


def _split(num_samples, num_classes, seed, miscalibration=0.0, num_exits=4):
    d = make_predictions(num_samples, num_exits, num_classes, seed=seed, miscalibration=miscalibration)
    val, test = d.split == "val", d.split == "test"
    fv = exit_features(d.logits[val], labels=d.labels[val])
    ft = exit_features(d.logits[test], labels=d.labels[test])
    return fv, ft, np.asarray(d.costs, dtype=np.float64)


@pytest.fixture(scope="module")
def small():
    return _split(1600, 10, seed=3)


@pytest.fixture(scope="module")
def trained(small):
    fv, _, costs = small
    steps = []
    result = train_eenet(fv, costs, 2.2, seed=0, progress=lambda s, t, m: steps.append((s, t, m)))
    return result, steps


def test_targets_follow_eq_3_and_4():
    correct = np.array([[True, False, True, True], [False] * 4, [False, False, False, True]])
    q, r = targets(correct)
    assert q.tolist() == correct.astype(float).tolist()
    np.testing.assert_allclose(r.sum(axis=1), 1.0)
    np.testing.assert_allclose(r[0], [1 / 3, 0, 1 / 3, 1 / 3])
    np.testing.assert_allclose(r[1], [0.25] * 4)
    np.testing.assert_allclose(r[2], [0, 0, 0, 1])


def test_tilted_distribution_meets_the_budget():
    costs = np.array([1.0, 2.0, 3.0, 4.0])
    for budget in (1.0, 1.7, 2.5, 3.9, 4.0, 7.0):
        p = tilted_distribution(np.array([0.1, 0.2, 0.3, 0.4]), costs, budget)
        assert p.sum() == pytest.approx(1.0)
        assert p @ costs == pytest.approx(min(max(budget, 1.0), 4.0), abs=1e-6)


def test_loss_is_finite_from_the_first_step(trained):
    result, steps = trained
    first, final = result.history["first"], result.history["final"]
    assert set(first) >= {"loss", "loss_g", "loss_budget", "loss_ce", "expected_cost"}
    assert all(math.isfinite(v) for v in first.values())
    assert all(math.isfinite(v) for v in final.values())
    assert steps, "progress was never reported"
    assert all(math.isfinite(m["loss"]) and math.isfinite(m["expected_cost"]) for _, _, m in steps)
    assert [s for s, _, _ in steps] == sorted(s for s, _, _ in steps)
    # the budget term is near zero: the expected cost is the budget
    assert abs(result.history["expected_cost"] - 2.2) < 0.05


@pytest.mark.parametrize("init", ["torch", "prior"])
def test_loss_is_finite_with_other_initialisations(small, init):
    fv, _, costs = small
    res = train_eenet(fv, costs, 1.5, hyper=EENetHyper(init=init, max_steps=30, min_steps=30))
    assert all(math.isfinite(v) for v in res.history["first"].values())
    assert all(math.isfinite(v) for v in res.history["final"].values())


def test_exported_scorer_has_the_fixed_format(small, trained):
    fv, _, _ = small
    result, _ = trained
    s = result.scorer
    assert s["type"] == "eenet"
    assert s["negative_slope"] == 0.01
    assert s["features"] == ["max_prob", "entropy", "vote", "second_prob", "earlier_pred_probs", "previous_utilities"]
    k = fv.num_exits
    assert len(s["exits"]) == k
    for j, e in enumerate(s["exits"]):
        d = 4 + 2 * j  # compact inputs: no dependence on the number of classes
        h = max(8, math.ceil(0.5 * d))
        assert np.asarray(e["shared_weight"]).shape == (h, d)
        assert len(e["shared_bias"]) == h
        assert len(e["utility_weight"]) == h and len(e["assign_weight"]) == h
        assert type(e["utility_bias"]) is float and type(e["assign_bias"]) is float
        assert all(type(x) is float for row in e["shared_weight"] for x in row)
    json.loads(json.dumps(s))  # plain JSON
    np.testing.assert_allclose(result.distribution, assignment_distribution(s, fv))
    assert result.distribution.shape == (k,)
    json.dumps(result.hyperparameters)


def test_numpy_scorer_matches_the_torch_model(small, trained):
    fv, _, costs = small
    result, _ = trained
    u_np = eenet_utilities(result.scorer, fv)
    u_torch = result.extras["torch_utilities"]
    assert np.abs(u_np - u_torch).max() < 1e-4
    pol = fit_eenet_policy(fv, costs, 2.2, trained=result)
    thr = pol["thresholds"]
    ex_np, ex_torch = apply_thresholds(u_np, thr), apply_thresholds(u_torch, thr)
    differ = ex_np != ex_torch
    if differ.any():  # only samples whose score sits within 1e-4 of a threshold may differ
        t = np.array([np.inf if x is None else x for x in thr])
        near = (np.abs(u_np - t[None, :]) < 1e-4).any(axis=1)
        assert near[differ].all()


def test_same_seed_gives_identical_weights(small, trained):
    fv, _, costs = small
    result, _ = trained
    again = train_eenet(fv, costs, 2.2, seed=0)
    assert json.dumps(again.scorer) == json.dumps(result.scorer)
    assert again.distribution.tolist() == result.distribution.tolist()


def test_other_seed_gives_other_weights(small, trained):
    fv, _, costs = small
    result, _ = trained
    other = train_eenet(fv, costs, 2.2, seed=1)
    assert json.dumps(other.scorer) != json.dumps(result.scorer)


def test_training_leaves_torch_threads_as_they_were(small):
    fv, _, costs = small
    before = torch.get_num_threads()
    train_eenet(fv, costs, 2.0, hyper=EENetHyper(max_steps=5, min_steps=5, num_threads=1))
    assert torch.get_num_threads() == before


def test_mini_batches_train_too(small):
    fv, _, costs = small
    res = train_eenet(fv, costs, 2.0, hyper=EENetHyper(batch_size=128, max_steps=60, min_steps=60))
    assert res.history["batch_size"] == 128
    assert all(math.isfinite(v) for v in res.history["final"].values())
    again = train_eenet(fv, costs, 2.0, hyper=EENetHyper(batch_size=128, max_steps=60, min_steps=60))
    assert json.dumps(again.scorer) == json.dumps(res.scorer)


def test_realised_validation_cost_never_exceeds_the_budget(small):
    fv, _, costs = small
    fast = EENetHyper(max_steps=60, min_steps=20)
    budgets = [costs[0], 1.3, 2.0, 2.75, 3.6, costs[-1], costs[-1] + 1.0]
    for b in budgets:
        trained = train_eenet(fv, costs, b, hyper=fast)
        variants = [fit_eenet_policy(fv, costs, b, trained=trained, thresholds=m) for m in ("quota", "search", "geometric")]
        variants.append(fit_eenet_maxprob(fv, costs, b, trained=trained))
        for pol in variants:
            assert pol["validation"]["avg_cost"] <= b + 1e-12, (b, pol["threshold_fit"])
            assert pol["thresholds"][-1] is None
            assert len(pol["thresholds"]) == fv.num_exits
            # applying the policy reproduces the validation figures exactly
            applied = apply_to_features(pol, fv)
            assert float(applied.correct.mean()) == pol["validation"]["accuracy"]
            assert applied.exit_fractions(fv.num_exits) == pol["validation"]["exit_fractions"]
            json.dumps(pol)
    at_c1 = fit_eenet_policy(fv, costs, costs[0], hyper=fast)
    assert at_c1["validation"]["exit_fractions"][0] == 1.0


def test_policy_pieces(small, trained):
    fv, _, costs = small
    result, _ = trained
    pol = fit_eenet_policy(fv, costs, 2.2, trained=result)
    assert set(pol) == {"scorer", "thresholds", "exit_distribution", "validation", "training", "threshold_fit"}
    assert pol["scorer"] is result.scorer
    assert sum(pol["exit_distribution"]) == pytest.approx(1.0)
    assert pol["training"]["seed"] == 0
    assert pol["training"]["steps"] == result.history["steps"]
    assert set(pol["validation"]) == {"accuracy", "avg_cost", "n", "exit_fractions"}
    mp = fit_eenet_maxprob(fv, costs, 2.2, trained=result)
    assert mp["scorer"] == {"type": "maxprob"}
    again = fit_eenet_maxprob(fv, costs, 2.2, trained=result, ranking=Ranking(fv.max_prob))
    assert again == mp
    assert "seconds" not in pol["training"]  # the policy is deterministic; wall-clock time is not
    json.dumps(pol["training"])
    with pytest.raises(InputError, match="budget"):
        fit_eenet_policy(fv, costs, 3.0, trained=result)
    with pytest.raises(InputError, match="threshold method"):
        fit_eenet_policy(fv, costs, 2.2, trained=result, thresholds="nope")


def test_bad_inputs_are_refused(small):
    fv, _, costs = small
    with pytest.raises(BudgetError, match="below the cost of the first exit"):
        train_eenet(fv, costs, 0.5)
    with pytest.raises(InputError, match="costs"):
        train_eenet(fv, costs[:3], 2.0)
    with pytest.raises(InputError, match="increasing"):
        train_eenet(fv, costs[::-1], 2.0)
    unlabeled = exit_features(fv.probs, kind="probs")
    with pytest.raises(InputError, match="labels"):
        train_eenet(unlabeled, costs, 2.0)


def test_eenet_beats_maxprob_on_miscalibrated_predictions():
    fv, ft, costs = _split(4000, 10, seed=11, miscalibration=1.0)
    budget = 2.0
    pol = fit_eenet_policy(fv, costs, budget, seed=0)
    eenet_acc = float(apply_to_features(pol, ft).correct.mean())
    fit = fit_geometric(Ranking(fv.max_prob), costs, budget)
    exits = apply_thresholds(ft.max_prob, fit.thresholds)
    maxprob_acc = float(ft.correct[np.arange(ft.num_samples), exits].mean())
    assert eenet_acc > maxprob_acc + 0.01, (eenet_acc, maxprob_acc)
    # and the test cost stays close to the budget (it is only guaranteed on validation)
    test_cost = float(costs[apply_to_features(pol, ft).exits].mean())
    assert test_cost <= budget + 0.1


def test_exits_that_are_always_wrong_or_always_right_stay_finite():
    d = make_predictions(600, 3, 4, seed=2)
    logits, labels = d.logits.copy(), d.labels
    rows = np.arange(labels.size)
    logits[:, 0, :] = 0.0
    logits[rows, 0, (labels + 1) % 4] = 5.0  # exit 0 never right
    logits[:, 2, :] = 0.0
    logits[rows, 2, labels] = 5.0  # exit 2 always right
    fv = exit_features(logits, labels=labels)
    for budget in (1.0, 1.5, 2.5, 3.0):
        trained = train_eenet(fv, [1.0, 2.0, 3.0], budget, hyper=EENetHyper(max_steps=60))
        for method in ("quota", "search", "geometric"):
            pol = fit_eenet_policy(fv, [1.0, 2.0, 3.0], budget, trained=trained, thresholds=method)
            json.dumps(pol, allow_nan=False)
            assert pol["validation"]["avg_cost"] <= budget
        if budget >= 2.5:  # enough budget to skip the useless exit: everything is right
            assert fit_eenet_policy(fv, [1.0, 2.0, 3.0], budget, trained=trained)["validation"]["accuracy"] > 0.99


@pytest.mark.parametrize("decoupled", [True, False])
def test_written_out_adam_matches_torch_optim(decoupled):
    """The trainer's optimiser takes the same steps as torch.optim.AdamW / Adam."""
    import torch

    from eenet_cli.learn.eenet_torch import _Adam

    gen = torch.Generator().manual_seed(3)
    w0 = torch.randn(7, 5, generator=gen)
    b0 = torch.randn(7, generator=gen)
    x = torch.randn(64, 5, generator=gen)
    y = torch.randn(64, 7, generator=gen)

    def run(make):
        w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
        opt = make(w, b)
        for _ in range(25):
            loss = ((x @ w.T + b - y) ** 2).mean() + (w.abs().sum() * 1e-3)
            for p in (w, b):
                p.grad = None
            loss.backward()
            opt.step()
        return w.detach(), b.detach()

    groups = lambda w, b: [{"params": [w], "weight_decay": 0.05}, {"params": [b], "weight_decay": 0.0}]
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    ref = run(lambda w, b: cls(groups(w, b), lr=1e-2))
    ours = run(lambda w, b: _Adam(torch, [([w], 0.05), ([b], 0.0)], lr=1e-2, decoupled=decoupled))
    for a, r in zip(ours, ref):
        assert torch.allclose(a, r, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ours[0], w0)  # it moved


def _chosen_scores(name, features, utilities):
    """The scores a rule thresholds: a baseline rule's own measure, else EENet's utilities."""
    from eenet_cli.core.policy import SIMPLE_SCORERS

    if name.startswith("baseline-"):
        return np.asarray(SIMPLE_SCORERS[name.split("-", 1)[1]](features), dtype=np.float64)
    return utilities


def _rule_thresholds(name, ranking, costs, budget, correct, p):
    """eenet-search's candidate rules, rebuilt here from the documented recipe (Algorithm 1
    quotas with rounding, the geometric fit, coordinate ascent from either on a 64-quantile
    grid with 4 rounds or a 16-quantile grid with 2, and the baselines' geometric quotas on
    their own measures) out of the threshold building blocks."""
    if name.startswith("baseline-") and name != "baseline-patience":
        return fit_geometric(ranking, costs, budget).thresholds
    starts = {
        "quota": lambda: fit_distribution(ranking, costs, budget, p, rounding="round").thresholds,
        "geometric": lambda: fit_geometric(ranking, costs, budget).thresholds,
    }
    if name in starts:
        return starts[name]()
    coarse = name.startswith("coarse-")
    start = starts[name.rsplit("-from-", 1)[1]]()
    return search_thresholds(ranking, costs, budget, correct, start, grid=16 if coarse else 64, rounds=2 if coarse else 4)


def _plain_figures(scores, thresholds, correct, costs):
    """Accuracy and average cost of thresholds, by a plain loop over the samples."""
    hits, spent = 0, 0.0
    for n in range(scores.shape[0]):
        for k, t in enumerate(thresholds):
            if k == len(thresholds) - 1 or (t is not None and scores[n, k] >= t):
                hits += bool(correct[n, k])
                spent += float(costs[k])
                break
    return hits / scores.shape[0], spent / scores.shape[0]


def test_search_keeps_the_cross_validated_best_rule(small, trained):
    fv, _, costs = small
    result, _ = trained
    pol = fit_eenet_policy(fv, costs, 2.2, trained=result, thresholds="search")
    fit = pol["threshold_fit"]
    cv = fit["cross_validated_accuracy"]
    from eenet_cli.core.policy import SIMPLE_SCORERS

    skips = {f"quota-skip-exit-{k}" for k in range(2, fv.num_exits)}
    assert set(cv) == {"quota", "geometric", "search-from-quota", "search-from-geometric",
                       "coarse-search-from-quota", "coarse-search-from-geometric"} | {f"baseline-{m}" for m in SIMPLE_SCORERS} | skips
    # the best held-out count among the plain rules, unless a switched-off exit beats it by
    # more than the noise (then it has the higher count)
    plain_best = max(v for r, v in cv.items() if r not in skips)
    assert fit["chosen_rule"] in cv
    assert cv[fit["chosen_rule"]] == plain_best or (fit["chosen_rule"] in skips and cv[fit["chosen_rule"]] > plain_best)
    # the chosen rule refitted on every validation row is what the policy holds, whichever it is
    if fit["chosen_rule"].startswith("baseline-"):  # a baseline's own rule won: the policy stops on its measure
        assert pol["scorer"]["measure"] == fit["chosen_rule"].split("-", 1)[1]
    else:
        scores = eenet_utilities(result.scorer, fv)
        want = _rule_thresholds(fit["chosen_rule"], Ranking(scores), costs, 2.2, fv.correct, result.distribution)
        assert pol["thresholds"] == [None if t is None else float(t) for t in want]
    assert pol["validation"]["avg_cost"] <= 2.2 + 1e-12
    assert fit_eenet_policy(fv, costs, 2.2, trained=result, thresholds="search") == pol  # deterministic


def test_search_refits_the_rule_cross_validation_chose_not_the_quota_rule(small, trained):
    """With an exit distribution that Algorithm 1's quotas serve badly (everything planned at
    the last exit, so the quota fit can only shift mass back to exit 1), cross-validation
    picks another rule; the policy must hold that rule refitted on all rows."""
    fv, _, costs = small
    result, _ = trained
    budget = 2.2
    skewed = dataclasses.replace(result, distribution=np.array([0.0, 0.0, 0.0, 1.0]))
    pol = fit_eenet_policy(fv, costs, budget, trained=skewed, thresholds="search")
    fit = pol["threshold_fit"]
    cv = fit["cross_validated_accuracy"]
    chosen = fit["chosen_rule"]
    assert chosen != "quota", cv
    assert cv[chosen] == max(cv.values()) and cv[chosen] > cv["quota"] + 0.02, cv

    assert chosen != "baseline-patience", cv  # patience's rule has its own test
    utilities = eenet_utilities(result.scorer, fv)
    scores = _chosen_scores(chosen, fv, utilities)
    assert pol["scorer"].get("measure") == (chosen.split("-", 1)[1] if chosen.startswith("baseline-") else None)
    want = [None if t is None else float(t) for t in _rule_thresholds(chosen, Ranking(scores), costs, budget, fv.correct, skewed.distribution)]
    quota = [None if t is None else float(t) for t in _rule_thresholds("quota", Ranking(utilities), costs, budget, fv.correct, skewed.distribution)]
    assert want != quota  # so a refit with the wrong rule cannot pass unnoticed
    assert pol["thresholds"] == want
    # the figures the policy reports are those of its thresholds, recomputed by hand
    acc, cost = _plain_figures(scores, pol["thresholds"], fv.correct, costs)
    assert pol["validation"]["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert pol["validation"]["avg_cost"] == pytest.approx(cost, abs=1e-12)
    assert cost <= budget * (1 + 1e-9)
    # the choice is worth it on these rows too: the refitted rule beats the refitted quotas
    assert acc > _plain_figures(utilities, quota, fv.correct, costs)[0]


def test_evaluate_methods_all_runs_every_method_through_the_cli(runner, tmp_path):
    """`eenet evaluate --methods all` on the digits sample: every method once per budget, in
    the documented order, each policy within its budget on validation; and the maxprob
    record agrees with `eenet fit` + `eenet apply --split test` run separately."""
    from conftest import SAMPLE, invoke

    digits = SAMPLE / "digits.parquet"
    out = tmp_path / "all.json"
    r = invoke(runner, "evaluate", digits, "--methods", "all", "--budgets", "0.7ms,1.2ms", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    records = json.loads(out.read_text())["results"]
    every = ["maxprob", "entropy", "vote", "patience", "eenet", "eenet-maxprob", "eenet-geometric",
             "eenet-search", "lookahead", "oracle"]
    assert [(x["method"], x["budget"]) for x in records] == [(m, b) for b in (0.7, 1.2) for m in every]
    for x in records:
        assert x["n"] == 450 and x["val_n"] == 450  # the test and validation splits of the sample
        assert x["val_avg_cost"] <= x["budget"] * (1 + 1e-9), x
        assert sum(x["exit_fractions"]) == pytest.approx(1.0, abs=1e-12)
        assert 0.0 <= x["accuracy"] <= 1.0
        assert x["budget_met"] == (x["avg_cost"] <= x["budget"] * (1 + 1e-9))
    oracle = {x["budget"]: x for x in records if x["method"] == "oracle"}
    assert all(oracle[b]["avg_cost"] <= b * (1 + 1e-9) for b in oracle)
    # "all" may be combined with names, each method still once, in first-seen order
    out2 = tmp_path / "two.json"
    r = invoke(runner, "evaluate", digits, "--methods", "oracle,all,maxprob", "--budgets", "0.7ms", "-o", out2, "-q")
    assert r.exit_code == 0, r.output
    assert [x["method"] for x in json.loads(out2.read_text())["results"]] == ["oracle"] + every[:-1]

    r = invoke(runner, "fit", digits, "--budget", "0.7ms", "--method", "maxprob", "-o", tmp_path / "mp.json", "-q")
    assert r.exit_code == 0, r.output
    r = invoke(runner, "apply", tmp_path / "mp.json", digits, "--split", "test", "--json", "-q")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    mp = records[0]
    assert summary["n"] == 450
    assert summary["accuracy"] == pytest.approx(mp["accuracy"], abs=1e-12)
    assert summary["avg_cost"] == pytest.approx(mp["avg_cost"], rel=1e-12)
