"""The command line end to end: CliRunner for most, one real subprocess."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, invoke, write_synthetic


def test_evaluate_writes_results_and_json(runner, synth, tmp_path):
    out = tmp_path / "r.json"
    r = invoke(runner, "evaluate", synth, "--methods", "maxprob,entropy,vote,patience,oracle", "--budgets", "1.5ms,2.5ms", "-o", out, "--json", "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # stdout holds nothing but the JSON
    assert doc == json.loads(out.read_text())
    assert [(x["method"], x["budget"]) for x in doc["results"]][:5] == [
        ("maxprob", 1.5), ("entropy", 1.5), ("vote", 1.5), ("patience", 1.5), ("oracle", 1.5)]
    for rec in doc["results"]:
        assert rec["val_avg_cost"] <= rec["budget"] * (1 + 1e-9)
        assert 0 <= rec["accuracy"] <= 1 and abs(sum(rec["exit_fractions"]) - 1) < 1e-9
    oracle = {x["budget"]: x["accuracy"] for x in doc["results"] if x["method"] == "oracle"}
    assert all(x["accuracy"] <= oracle[x["budget"]] + 1e-12 for x in doc["results"])


def test_evaluate_default_budgets_span_the_cost_range(runner, synth):
    r = invoke(runner, "evaluate", synth, "--methods", "maxprob", "--json", "-q")
    assert r.exit_code == 0, r.output
    budgets = [x["budget"] for x in json.loads(r.stdout)["results"]]
    assert len(budgets) == 10 and budgets[0] == 1.0 and budgets[-1] == 4.0


def test_evaluate_piped_results_on_stdout_table_on_stderr(runner, synth):
    r = invoke(runner, "evaluate", synth, "--methods", "maxprob,oracle", "--budgets", "2ms")
    assert r.exit_code == 0
    doc = json.loads(r.stdout)  # stdout is not a terminal: the results, as JSON
    assert [x["method"] for x in doc["results"]] == ["maxprob", "oracle"]
    assert "maxprob" in r.stderr and "oracle" in r.stderr and "test acc" in r.stderr


def test_evaluate_val_test_files_and_val_fraction(runner, tmp_path):
    a = write_synthetic(tmp_path / "a.parquet", seed=1)
    b = write_synthetic(tmp_path / "b.parquet", seed=2)
    r = invoke(runner, "evaluate", "--val", a, "--test", b, "--methods", "maxprob", "--budgets", "2", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["results"][0]["n"] == 1200
    r = invoke(runner, "evaluate", a, "--val-fraction", "0.3", "--methods", "maxprob", "--budgets", "2", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert "stratified" in doc["split"]
    assert doc["results"][0]["val_n"] == pytest.approx(360, abs=10)


def test_check_passes_when_unchanged_and_fails_on_regression(runner, synth, tmp_path):
    base = tmp_path / "base.json"
    r = invoke(runner, "evaluate", synth, "--methods", "maxprob,entropy", "--budgets", "2,3", "-o", base, "-q")
    assert r.exit_code == 0
    r = invoke(runner, "evaluate", synth, "--methods", "maxprob,entropy", "--budgets", "2,3", "--check", base, "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads(base.read_text())
    doc["results"][1]["accuracy"] += 0.02  # stored entropy@2 better than what we get now
    doc["results"][2]["accuracy"] += 0.002  # maxprob@3: within the tolerance below
    base.write_text(json.dumps(doc))
    r = invoke(runner, "evaluate", synth, "--methods", "maxprob,entropy", "--budgets", "2,3", "--check", base, "--tolerance", "0.005", "-q")
    assert r.exit_code == 1
    assert "1 regression(s)" in r.stderr and "entropy @ 2ms" in r.stderr and "maxprob @ 3ms" not in r.stderr


def test_check_flags_a_budget_now_overrun(runner, synth, tmp_path):
    base = tmp_path / "base.json"
    invoke(runner, "evaluate", synth, "--methods", "maxprob", "--budgets", "2", "-o", base, "-q")
    doc = json.loads(base.read_text())
    assert not doc["results"][0]["budget_met"]  # on this small test split maxprob overruns 2ms
    r = invoke(runner, "evaluate", synth, "--methods", "maxprob", "--budgets", "2", "--check", base, "-q")
    assert r.exit_code == 0  # it overran before too: not a regression
    doc["results"][0]["budget_met"] = True  # pretend the stored run met it
    base.write_text(json.dumps(doc))
    r = invoke(runner, "evaluate", synth, "--methods", "maxprob", "--budgets", "2", "--check", base, "-q")
    assert r.exit_code == 1
    assert "maxprob @ 2ms: average cost" in r.stderr and "now overruns the budget" in r.stderr


def test_fit_to_stdout_and_apply_reproduce_validation_figures(runner, synth, tmp_path):
    r = invoke(runner, "fit", synth, "--budget", "2.5ms", "--method", "entropy", "-q")
    assert r.exit_code == 0, r.output
    policy = json.loads(r.stdout)
    assert policy["format"] == "policy" and policy["method"] == "entropy" and policy["thresholds"][-1] is None
    assert policy["validation"]["avg_cost"] <= 2.5
    path = tmp_path / "policy.json"
    path.write_text(r.stdout)
    r = invoke(runner, "apply", path, synth, "--split", "val", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["accuracy"] == policy["validation"]["accuracy"]
    assert s["avg_cost"] == policy["validation"]["avg_cost"]
    assert s["exit_fractions"] == policy["validation"]["exit_fractions"]
    out = tmp_path / "exits.parquet"
    r = invoke(runner, "apply", path, synth, "--split", "all", "-o", out, "-q")
    assert r.exit_code == 0
    import pandas as pd

    df = pd.read_parquet(out)
    assert list(df.columns) == ["sample_id", "split", "exit", "score", "prediction", "label", "correct"]
    assert len(df) == 1200 and df["exit"].between(0, 3).all()


def test_fit_is_deterministic(runner, synth):
    a = invoke(runner, "fit", synth, "--budget", "60%", "--method", "vote", "-q").stdout
    b = invoke(runner, "fit", synth, "--budget", "60%", "--method", "vote", "-q").stdout
    assert a == b


def test_apply_refuses_policy_for_other_shape(runner, synth, tmp_path):
    other = write_synthetic(tmp_path / "other.parquet", k=3, costs=(1, 2, 3))
    pol = tmp_path / "p.json"
    pol.write_text(invoke(runner, "fit", other, "--budget", "2", "--method", "maxprob", "-q").stdout)
    r = invoke(runner, "apply", pol, synth)
    assert r.exit_code == 2
    assert "policy is for 3 exits but the predictions have 4" in r.stderr


def test_schema_command_prints_valid_schemas(runner, synth):
    import jsonschema

    for name in ("predictions", "costs", "policy", "results"):
        r = invoke(runner, "schema", name)
        assert r.exit_code == 0
        jsonschema.Draft202012Validator.check_schema(json.loads(r.stdout))
    policy = json.loads(invoke(runner, "fit", synth, "--budget", "2", "--method", "maxprob", "-q").stdout)
    jsonschema.validate(policy, json.loads(invoke(runner, "schema", "policy").stdout))
    res = json.loads(invoke(runner, "evaluate", synth, "--methods", "maxprob,oracle", "--budgets", "2", "--json", "-q").stdout)
    jsonschema.validate(res, json.loads(invoke(runner, "schema", "results").stdout))
    assert invoke(runner, "schema", "nope").exit_code == 2


@pytest.mark.parametrize("args, expected", [
    (["fit", "{p}", "--budget", "0.5ms"], "below the cost of the first exit (1ms)"),
    (["fit", "{p}", "--budget", "3GFLOPs"], "FLOP count but the costs are a time"),
    (["fit", "{p}", "--budget", "soon"], "cannot read 'soon' as a budget"),
    (["fit", "{p}", "--budget", "2", "--costs", "1,2,3ms"], "has 3 costs but the predictions have 4 exits"),
    (["fit", "{p}", "--budget", "2", "--costs", "3,2,4,5ms"], "strictly increasing"),
    (["fit", "{p}", "--budget", "2", "--method", "magic"], "unknown method 'magic'"),
    (["evaluate", "{p}", "-o", "{d}/missing/r.json"], "does not exist"),
    (["evaluate", "{d}/nothing.parquet"], "no such file"),
    (["evaluate", "{p}", "--methods", "maxprob", "--budgets", "2:1:0.5"], "ends before it starts"),
])
def test_bad_input_exits_2_with_one_line(runner, synth, tmp_path, args, expected):
    args = [a.format(p=synth, d=tmp_path) for a in args]
    r = invoke(runner, *args)
    assert r.exit_code == 2, r.output
    assert expected in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "missing").exists()


def test_not_parquet(runner, tmp_path):
    bad = tmp_path / "x.parquet"
    bad.write_text("this is not parquet")
    r = invoke(runner, "evaluate", bad)
    assert r.exit_code == 2 and "not a readable Parquet file" in r.stderr


def test_real_subprocess_and_help_does_not_import_torch(synth, tmp_path):
    code = "import sys, eenet_cli.cli as c; sys.argv=['eenet','--help']\ntry:\n c.main()\nexcept SystemExit: pass\nprint('torch' in sys.modules, 'pandas' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False False False")
    out = tmp_path / "policy.json"
    p = subprocess.run([sys.executable, "-m", "eenet_cli", "fit", str(synth), "--budget", "2ms", "--method", "maxprob", "-o", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert json.loads(out.read_text())["validation"]["avg_cost"] <= 2
    p = subprocess.run([sys.executable, "-m", "eenet_cli", "fit", str(synth), "--budget", "0.1ms"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("eenet: error:") and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "-m", "eenet_cli", "--version"], capture_output=True, text=True)
    assert p.stdout.startswith("eenet ")


def test_every_command_help_has_an_example(runner):
    import typer

    from eenet_cli.cli import app

    names = typer.main.get_command(app).list_commands(None)
    assert {"fit", "apply", "evaluate", "schema"} <= set(names)
    for name in names:
        r = invoke(runner, name, "--help")
        assert r.exit_code == 0 and "eenet " + name in r.stdout, name
