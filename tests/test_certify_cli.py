"""Certified policies through the command line and the API: fit --confidence writes a
certificate, certify reproduces it on the calibration rows, infeasible requests are one
line, and the guarantee holds over redrawn splits (the product's own check)."""

from __future__ import annotations

import json

import numpy as np

import pytest

from conftest import ROOT, invoke, write_synthetic
from eenet_cli.api import apply_policy, evaluate, fit_policy, load_predictions
from eenet_cli.core.methods import BASELINES

SAMPLE = ROOT / "sample_data" / "digits.parquet"


@pytest.fixture(scope="module")
def digits():
    return load_predictions(SAMPLE)


def test_fit_with_confidence_writes_a_certificate_and_certify_reproduces_it(runner, tmp_path):
    pol = tmp_path / "p.json"
    r = invoke(runner, "fit", SAMPLE, "--budget", "60%", "-m", "maxprob", "--confidence", "90%", "-o", pol)
    assert r.exit_code == 0, r.output
    assert "certified with 90% confidence on 225 calibration rows" in r.stderr
    cert = json.loads(pol.read_text())["certificate"]
    assert cert["confidence"] == 0.9 and cert["calibration"]["rows"] == 225 and cert["calibration"]["fit_rows"] == 225
    (g,) = cert["guarantees"]
    assert g["what"] == "expected cost" and g["upper_bound"] <= g["at_most"] == pytest.approx(0.6 * 1.6028)
    r = invoke(runner, "certify", pol, SAMPLE, "--calibration-rows", "--json", "-q")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["expected_cost_at_most"] == g["upper_bound"]  # exactly the certificate's bound
    r = invoke(runner, "certify", pol, SAMPLE, "--confidence", "0.95", "--json")
    doc = json.loads(r.stdout)
    assert doc["n"] == 450 and doc["rows"] == "split test" and 0 < doc["accuracy_drop_at_most"] < 1
    assert "with 95% confidence" in r.stderr


def test_certify_refuses_other_predictions_for_calibration_rows(runner, tmp_path):
    pol = tmp_path / "p.json"
    invoke(runner, "fit", SAMPLE, "--budget", "60%", "-m", "entropy", "--confidence", "0.9", "-o", pol, "-q")
    other = tmp_path / "other.parquet"
    other.write_bytes(SAMPLE.read_bytes()[:-8] + SAMPLE.read_bytes()[-8:])  # same bytes: accepted
    assert invoke(runner, "certify", pol, other, "--calibration-rows", "-q", "--json").exit_code == 0
    plain = tmp_path / "plain.json"
    invoke(runner, "fit", SAMPLE, "--budget", "60%", "-m", "entropy", "-o", plain, "-q")
    r = invoke(runner, "certify", plain, SAMPLE, "--calibration-rows")
    assert r.exit_code == 2 and "has no certificate" in r.stderr


def test_an_infeasible_request_exits_1_with_one_line_and_the_best_values(runner, tmp_path):
    r = invoke(runner, "fit", SAMPLE, "--budget", "30%", "-m", "maxprob", "--confidence", "0.9", "--max-drop", "0.1%", "-o", tmp_path / "p.json")
    assert r.exit_code == 1
    assert r.stderr.count("\n") == 1 and "smallest certifiable budget is" in r.stderr and "certified accuracy drop is" in r.stderr
    assert not (tmp_path / "p.json").exists()


def test_disagreement_needs_no_labels_and_max_drop_alone_is_empirical(digits):
    pol = fit_policy(digits, None, method="maxprob", max_disagreement=0.05, confidence=0.9)
    (g,) = pol["certificate"]["guarantees"]
    assert g["what"].startswith("disagreement") and g["upper_bound"] <= 0.05
    emp = fit_policy(digits, None, method="maxprob", max_drop=0.02)
    assert "certificate" not in emp
    val = digits.rows(digits.split == "val")
    a = apply_policy(emp, val)
    last_right = val.features().correct[:, -1]
    harm = (~a.correct & last_right).mean()
    assert harm <= 0.02


@pytest.mark.parametrize("bad, message", [("1.5", "between 0 and 1"), ("0", "between 0 and 1"), ("high", "a share like 0.9")])
def test_bad_confidence_is_one_line(runner, bad, message):
    r = invoke(runner, "fit", SAMPLE, "--budget", "60%", "--confidence", bad)
    assert r.exit_code == 2 and message in r.stderr and r.stderr.count("\n") == 1


def test_certified_budgets_are_monotone_in_confidence_and_budget(digits):
    def bound(budget, conf):
        pol = fit_policy(digits, budget, method="entropy", confidence=conf)
        return pol["certificate"]["guarantees"][0]["upper_bound"], apply_policy(pol, digits.rows(digits.split == "val")).summary["avg_cost"]

    loose, tight = bound("60%", 0.8), bound("60%", 0.99)
    assert tight[1] <= loose[1] + 1e-12  # more confidence: a cheaper (more careful) policy
    low, high = bound("50%", 0.9), bound("70%", 0.9)
    assert low[1] <= high[1] + 1e-12


@pytest.mark.slow
@pytest.mark.parametrize("method", BASELINES)
def test_the_guarantee_holds_over_redrawn_splits(tmp_path, method):
    """On a synthetic population (10,000 rows), 25 redrawn halves x 2 budgets: the test cost
    of certified policies overruns the budget in at most δ of draws plus binomial slack
    (test cost is itself noisy, so this is stricter than the promise on expected cost),
    and plain policies, which sit on the budget, overrun more often (plain patience sits
    below it: a whole run length rarely lands on B)."""
    path = write_synthetic(tmp_path / "p.parquet", n=10_000, costs=(1.0, 2.0, 3.0, 4.0, 5.0), k=5)
    preds = load_predictions(str(path))
    (r,) = evaluate(preds, budgets=[2.0, 3.0], methods=[method], confidence=0.9, resplits=25)["resplits"]
    assert r["draws"] == 50 and r["overruns"] <= 12, r  # 0.1 * 50 = 5; the 99.9th percentile of Bin(50, 0.1) is 12
    (plain,) = evaluate(preds, budgets=[2.0, 3.0], methods=[method], resplits=25)["resplits"]
    if method != "patience":  # PABEE's plain fit takes whole run lengths, so it sits below the budget, not on it
        assert plain["overruns"] >= r["overruns"], (plain, r)


def _one_threshold_ltt(feats, costs, eps: float, delta: float):
    """Learn-then-Test on one max-prob threshold shared by every exit, on *every*
    validation row (an independent reference written here, not the package's code): walk
    the thresholds from the dearest end, each tested with the exact binomial bound on the
    harm count, and keep the cheapest one reached before the first failure."""
    from scipy.stats import beta

    mp, correct = feats.max_prob, feats.correct
    n, k = mp.shape
    taus = np.unique(np.quantile(mp[:, :-1], np.linspace(0, 1, 401)))[::-1]
    chosen = None
    for tau in taus:
        stop = mp[:, :-1] >= tau
        ex = np.where(stop.any(axis=1), stop.argmax(axis=1), k - 1)
        harm = int((~correct[np.arange(n), ex] & correct[:, -1]).sum())
        if beta.ppf(1 - delta, harm + 1, n - harm) > eps:  # Clopper-Pearson upper bound
            break
        chosen = tau
    return chosen


def _cost_of_one_threshold(feats, costs, tau) -> float:
    k = feats.num_exits
    if tau is None:
        return float(costs[-1])
    stop = feats.max_prob[:, :-1] >= tau
    ex = np.where(stop.any(axis=1), stop.argmax(axis=1), k - 1)
    return float(np.asarray(costs)[ex].mean())


@pytest.mark.slow
def test_certified_learned_policies_cost_less_than_one_ltt_threshold_at_the_same_certified_drop(tmp_path):
    """At a certified accuracy drop of 1% (δ = 0.1), on a set whose exits differ and are
    miscalibrated (5,000 validation rows), the certified learned policies cost less on the
    test rows than one max-prob threshold chosen by Learn-then-Test on all validation rows,
    and both keep the drop on the test rows near 1%."""
    path = write_synthetic(tmp_path / "p.parquet", n=10_000, c=10, seed=11, miscalibration=1.0)
    preds = load_predictions(str(path))
    val, test = preds.rows(preds.split == "val"), preds.rows(preds.split == "test")
    costs = np.array([1.0, 2.0, 3.0, 4.0])
    vf, tf = val.features(), test.features()
    ltt = _cost_of_one_threshold(tf, costs, _one_threshold_ltt(vf, costs, 0.01, 0.1))
    for method in ("lookahead", "eenet"):
        pol = fit_policy(preds, None, method=method, max_drop=0.01, confidence=0.9)
        assert pol["certificate"]["guarantees"][0]["upper_bound"] <= 0.01
        a = apply_policy(pol, test)
        cost = a.summary["avg_cost"]
        drop = tf.correct[:, -1].mean() - a.correct.mean()
        assert cost < ltt, (method, cost, ltt)
        assert drop <= 0.02, (method, drop)


def test_a_loss_limit_alone_calibrates_over_a_family_chosen_on_the_fit_rows(digits):
    """The family and its members are fixed by the fit rows: changing the calibration
    rows' labels never changes which policies are candidates, only which one is chosen."""
    from eenet_cli.certified import calibration_split, default_share, fit_certified

    feats = digits.rows(digits.split == "val").features()
    costs = np.array(digits.meta["costs"]["costs"]) if digits.meta.get("costs") else None
    costs = costs if costs is not None else np.array([0.35, 0.7, 1.03, 1.6])
    pol = fit_certified("maxprob", feats, costs, "ms", budget=None, confidence=0.9, max_drop=0.05)
    info = pol["threshold_fit"]["calibrated_over"]
    assert info["family"] in ("budget path", "threshold shift", "one threshold") and 0 <= info["chosen"] < info["size"]
    share = default_share(feats.num_samples, 0.1, None, 0.05, None)
    assert pol["certificate"]["calibration"]["share"] == share and 0.5 <= share <= 0.75
    assert default_share(feats.num_samples, 0.1, 1.0, 0.05, None) == 0.5  # with a budget: half
    # the certificate is about the calibration rows alone: recomputing it there agrees
    cal = calibration_split(feats.num_samples, share, 0)
    from eenet_cli.certified import certify_existing

    again = certify_existing(pol, feats.subset(cal), confidence=0.9, deltas=pol["certificate"] and {"drop": 0.1})
    assert again["drop_bound"] == pytest.approx(pol["certificate"]["guarantees"][0]["upper_bound"], rel=0, abs=1e-12)


def test_evaluate_with_confidence_reports_the_uncertified_fit_beside_and_plots_mark_certified_points(digits, tmp_path):
    doc = evaluate(digits, budgets=[0.8, 1.2], methods=["maxprob"], confidence=0.9)
    for r in doc["results"]:
        assert r["certified_confidence"] == 0.9
        assert {"uncertified_accuracy", "uncertified_avg_cost", "uncertified_budget_met"} <= set(r)
        # the calibration only makes exits harder to take at this budget or easier; either way it moved from the fit
        assert r["certified_cost_bound"] <= r["budget"] + 1e-12
    from eenet_cli.plotting import tradeoff_figure

    fig = tradeoff_figure(doc["results"], unit="ms")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(lbl.startswith("certified") for lbl in labels) and "the same fits before certification" in labels
    plain = tradeoff_figure(evaluate(digits, budgets=[0.8, 1.2], methods=["maxprob"])["results"], unit="ms")
    assert not any(t.get_text().startswith("certified") for t in plain.axes[0].get_legend().get_texts())
