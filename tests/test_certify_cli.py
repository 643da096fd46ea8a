"""Certified policies through the command line and the API: fit --confidence writes a
certificate, certify reproduces it on the calibration rows, infeasible requests are one
line, and the guarantee holds over redrawn splits (the product's own check)."""

from __future__ import annotations

import json

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
    and plain policies, which sit on the budget, overrun more often."""
    path = write_synthetic(tmp_path / "p.parquet", n=10_000, costs=(1.0, 2.0, 3.0, 4.0, 5.0), k=5)
    preds = load_predictions(str(path))
    (r,) = evaluate(preds, budgets=[2.0, 3.0], methods=[method], confidence=0.9, resplits=25)["resplits"]
    assert r["draws"] == 50 and r["overruns"] <= 12, r  # 0.1 * 50 = 5; the 99.9th percentile of Bin(50, 0.1) is 12
    (plain,) = evaluate(preds, budgets=[2.0, 3.0], methods=[method], resplits=25)["resplits"]
    assert plain["overruns"] >= r["overruns"], (plain, r)
