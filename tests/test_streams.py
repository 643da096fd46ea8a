"""The stream rule, `--check`, outputs that would destroy an input, and the small
first-hour fixes (docs/spec.md §4). Expectations are written out here, not computed with
the code under test."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import ROOT, invoke, write_synthetic

SAMPLE = ROOT / "sample_data" / "digits.parquet"


# --------------------------------------------------------------------------- stdout / stderr


def test_fit_piped_prints_the_policy_and_one_summary_line(runner, synth):
    r = invoke(runner, "fit", synth, "--budget", "2.5ms", "-m", "entropy")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["method"] == "entropy"
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("costs: ") and "1, 2, 3, 4 ms" in lines[0]  # which costs were used
    assert lines[1].startswith("entropy @ 2.5ms: validation accuracy") and lines[1].endswith("policy written to stdout")


def test_quiet_leaves_stderr_empty_and_still_writes(runner, synth, tmp_path):
    for args in (["fit", synth, "--budget", "2", "-m", "maxprob", "-o", tmp_path / "p.json"],
                 ["evaluate", synth, "-m", "maxprob", "--budgets", "2", "-o", tmp_path / "r.json"]):
        r = invoke(runner, *args, "-q")
        assert r.exit_code == 0 and r.stderr == "" and r.stdout == ""
    assert json.loads((tmp_path / "p.json").read_text())["format"] == "policy"
    assert json.loads((tmp_path / "r.json").read_text())["format"] == "results"


def test_evaluate_says_which_costs_it_used(runner, synth, tmp_path):
    r = invoke(runner, "evaluate", synth, "-m", "maxprob", "--budgets", "2", "-o", tmp_path / "r.json")
    assert "costs: " in r.stderr and "(metadata eenet.costs)" in r.stderr and "1, 2, 3, 4 ms" in r.stderr
    r = invoke(runner, "evaluate", synth, "-m", "maxprob", "--budgets", "2", "--costs", "1,2,3,5ms", "-o", tmp_path / "r.json")
    assert "costs: --costs 1,2,3,5ms" in r.stderr and "1, 2, 3, 5 ms" in r.stderr


def test_apply_parquet_to_stdout_and_json_summary(runner, synth, tmp_path):
    pol = tmp_path / "p.json"
    assert invoke(runner, "fit", synth, "--budget", "2", "-m", "maxprob", "-o", pol, "-q").exit_code == 0
    r = invoke(runner, "apply", pol, synth, "-o", "-")
    assert r.exit_code == 0
    table = pq.read_table(io.BytesIO(r.stdout_bytes))
    assert table.num_rows == 615 and set(table.column("split").to_pylist()) == {"test"}  # default: the test rows
    r = invoke(runner, "apply", pol, synth, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["n"] == 615  # the summary, no Parquet
    r = invoke(runner, "apply", pol, synth, "-o", "-", "--json")
    assert r.exit_code == 2 and "both write to stdout" in r.stderr and r.stdout == ""
    r = invoke(runner, "apply", pol, synth, "--split", "all", "--json")
    assert json.loads(r.stdout)["n"] == 1200


def test_apply_with_swapped_arguments_says_which_comes_first(runner, synth, tmp_path):
    pol = tmp_path / "p.json"
    invoke(runner, "fit", synth, "--budget", "2", "-m", "maxprob", "-o", pol, "-q")
    r = invoke(runner, "apply", synth, pol)
    assert r.exit_code == 2
    assert "looks like a predictions file" in r.stderr and "POLICY comes first" in r.stderr
    assert "utf-8" not in r.stderr


def test_dump_to_stdout_feeds_fit_from_stdin(tmp_path):
    import subprocess
    import sys

    eenet = f"{sys.executable} -m eenet_cli"
    cmd = (
        f"{eenet} dump digits-cnn --weights {ROOT}/sample_data/digits_model.safetensors --data digits:val --split val "
        f"--costs {ROOT}/sample_data/digits_costs.json -q | {eenet} fit - --budget 60% -m maxprob -o p.json"
    )
    p = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["validation"]["n"] == 450 and doc["costs"]["costs"][0] == pytest.approx(0.351173)


def test_dump_help_does_not_promise_what_it_refuses(runner):
    r = invoke(runner, "dump", "--help")
    assert "-b," not in r.stdout and "--batch-size" in r.stdout  # -b is a budget elsewhere
    r = invoke(runner, "fit", "--help")
    assert "-b, --budget" in r.stdout


@pytest.mark.parametrize("name", ["fit", "apply"])
def test_help_examples_one_per_line_without_a_literal_backslash_b(runner, name):
    r = invoke(runner, name, "--help")
    assert "\\b" not in r.stdout and "\b" not in r.stdout
    examples = [line for line in r.stdout.splitlines() if line.strip().startswith("eenet ")]
    assert len(examples) >= 2 and all(line.strip().count("eenet ") == 1 for line in examples)


# --------------------------------------------------------------------------- --check


@pytest.fixture
def reference(runner, synth, tmp_path) -> Path:
    ref = tmp_path / "ref.json"
    r = invoke(runner, "evaluate", synth, "-m", "maxprob,entropy", "--budgets", "1.5ms:2.5ms:0.5ms", "-o", ref, "-q")
    assert r.exit_code == 0, r.output
    return ref


def test_check_takes_budgets_and_methods_from_the_reference(runner, synth, reference):
    r = invoke(runner, "evaluate", synth, "--check", reference, "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [(x["method"], x["budget"]) for x in doc["results"]] == [
        ("maxprob", 1.5), ("entropy", 1.5), ("maxprob", 2.0), ("entropy", 2.0), ("maxprob", 2.5), ("entropy", 2.5)]
    assert doc["check"] == {"against": str(reference), "passed": True, "tolerance": 0.0, "compared": 6, "regressions": []}
    assert "missing" not in r.stderr


def test_check_is_one_sided_an_improvement_passes(runner, synth, reference):
    doc = json.loads(reference.read_text())
    for rec in doc["results"]:
        rec["accuracy"] -= 0.05  # the stored run was worse: today is an improvement
    reference.write_text(json.dumps(doc))
    r = invoke(runner, "evaluate", synth, "--check", reference, "-q")
    assert r.exit_code == 0, r.stderr


def test_check_counts_a_missing_record_as_a_regression(runner, synth, reference):
    r = invoke(runner, "evaluate", synth, "--check", reference, "-m", "maxprob", "--json")
    assert r.exit_code == 1
    out = json.loads(r.stdout)["check"]
    assert out["passed"] is False and len(out["regressions"]) == 3
    assert all(line.startswith("entropy @ ") and line.endswith("missing from the new results") for line in out["regressions"])


def test_check_drop_just_over_tolerance_fails_just_under_passes(runner, synth, reference):
    doc = json.loads(reference.read_text())
    acc = doc["results"][0]["accuracy"]
    doc["results"][0]["accuracy"] = acc + 0.0101
    reference.write_text(json.dumps(doc))
    assert invoke(runner, "evaluate", synth, "--check", reference, "--tolerance", "0.01", "-q").exit_code == 1
    assert invoke(runner, "evaluate", synth, "--check", reference, "--tolerance", "0.0102", "-q").exit_code == 0


@pytest.mark.parametrize("field, value, message", [
    ("num_exits", 5, "was made for 5 exits"),
    ("num_classes", 7, "was made for 7 classes"),
    ("predictions_sha256", "0" * 64, "other predictions"),
])
def test_check_refuses_a_reference_of_other_inputs(runner, synth, reference, field, value, message):
    doc = json.loads(reference.read_text())
    doc[field] = value
    reference.write_text(json.dumps(doc))
    r = invoke(runner, "evaluate", synth, "--check", reference)
    assert r.exit_code == 2 and message in r.stderr and "--check-other-inputs" in r.stderr
    assert r.stderr.count("\n") == 1
    assert invoke(runner, "evaluate", synth, "--check", reference, "--check-other-inputs", "-q").exit_code == 0


def test_check_refuses_another_cost_unit(runner, synth, reference):
    doc = json.loads(reference.read_text())
    for rec in doc["results"]:
        rec["unit"] = "us"
    doc["costs"]["unit"] = "us"
    reference.write_text(json.dumps(doc))
    r = invoke(runner, "evaluate", synth, "--check", reference, "--costs", "1,2,3,4ms")
    assert r.exit_code == 2 and "costs in us" in r.stderr


def test_failed_check_writes_nothing_and_never_replaces_its_reference(runner, synth, reference, tmp_path):
    before = reference.read_bytes()
    doc = json.loads(before)
    doc["results"][0]["accuracy"] = 1.0
    reference.write_text(json.dumps(doc))
    regressed = reference.read_bytes()
    r = invoke(runner, "evaluate", synth, "--check", reference, "-o", reference)
    assert r.exit_code == 2 and "--update-reference" in r.stderr
    assert reference.read_bytes() == regressed
    r = invoke(runner, "evaluate", synth, "--check", reference, "-o", reference, "--update-reference")
    assert r.exit_code == 1 and "nothing written" in r.stderr
    assert reference.read_bytes() == regressed  # a failed check never replaces its reference
    other = tmp_path / "new.json"
    r = invoke(runner, "evaluate", synth, "--check", reference, "-o", other, "-q")
    assert r.exit_code == 1 and not other.exists()
    reference.write_bytes(before)
    r = invoke(runner, "evaluate", synth, "--check", reference, "-o", reference, "--update-reference", "-q")
    assert r.exit_code == 0


# --------------------------------------------------------------------------- outputs onto inputs


def test_output_onto_an_input_is_refused(runner, synth, tmp_path):
    before = synth.read_bytes()
    pol = tmp_path / "p.json"
    invoke(runner, "fit", synth, "--budget", "2", "-m", "maxprob", "-o", pol, "-q")
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({"format": "costs", "version": 1, "unit": "ms", "costs": [1, 2, 3, 4]}))
    link = tmp_path / "link.parquet"
    link.symlink_to(synth)
    cases = [
        ["evaluate", synth, "-m", "maxprob", "--budgets", "2", "-o", synth],
        ["evaluate", synth, "-m", "maxprob", "--budgets", "2", "-o", link],
        ["apply", pol, synth, "-o", link],
        ["fit", synth, "--budget", "2", "--costs", costs, "-o", costs],
        ["apply", pol, synth, "--split", "all", "-o", tmp_path / "p.json.parquet"],  # a new name: allowed
    ]
    for args in cases[:-1]:
        r = invoke(runner, *args)
        assert r.exit_code == 2 and "would destroy it" in r.stderr, (args, r.stderr)
    assert synth.read_bytes() == before and json.loads(costs.read_text())["costs"] == [1, 2, 3, 4]
    assert invoke(runner, *cases[-1], "-q").exit_code == 0


# --------------------------------------------------------------------------- small fixes


def test_budget_in_microseconds_is_stored_exactly(runner, tmp_path):
    preds = write_synthetic(tmp_path / "p.parquet", costs=(0.1, 0.2, 0.3, 0.4))
    r = invoke(runner, "fit", preds, "--budget", "120us", "-m", "maxprob", "-q")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["budget"]["value"] == 0.12


def test_methods_error_names_the_methods_option(runner, synth):
    r = invoke(runner, "evaluate", synth, "--methods", "maxprob,foo")
    assert r.exit_code == 2 and "--methods:" in r.stderr and "unknown method 'foo'" in r.stderr


def test_evaluate_table_title_reads_plainly(runner, synth):
    r = invoke(runner, "evaluate", synth, "-m", "maxprob", "--budgets", "2")
    assert "accuracy vs budget: split column (val / test)" in r.stderr
    assert "budget (split column" not in r.stderr


def test_noisy_timing_advice_does_not_repeat_the_given_threads(monkeypatch, tmp_path):
    """The warning suggested --threads 1 when --threads 1 was given."""
    from eenet_cli.runtime import profile as profiling

    monkeypatch.setattr(profiling.ProfileResult, "noisy_exits", lambda self: [0])
    args = ["profile", "digits-cnn", "--weights", ROOT / "sample_data" / "digits_model.safetensors", "--repeats", "3", "--warmup", "1",
            "-o", tmp_path / "c.json"]
    from typer.testing import CliRunner

    r = invoke(CliRunner(), *args, "--threads", "1")
    assert r.exit_code == 0, r.output
    assert "exit 1 timing is noisy" in r.stderr and "--threads 1" not in r.stderr
    from eenet_cli.commands.profile import noise_advice

    assert noise_advice(2) == "consider --threads 1, more --repeats or a quieter machine"
    assert noise_advice(None).startswith("consider --threads 1")


def test_profile_table_numbers_exits_from_one(runner, tmp_path):
    r = invoke(runner, "profile", "digits-cnn", "--weights", ROOT / "sample_data" / "digits_model.safetensors", "--repeats", "3",
               "--warmup", "1", "-o", tmp_path / "c.json")
    assert r.exit_code == 0, r.output
    rows = [line.split("│")[1].strip() for line in r.stderr.splitlines() if line.startswith("│")]
    assert rows == ["1", "2", "3", "4"]


@pytest.mark.parametrize("seed", ["-1", str(2**32), "1000000000000000000000"])
def test_seed_out_of_range_is_one_line(runner, synth, seed):
    r = invoke(runner, "fit", synth, "--budget", "2", "-m", "maxprob", "--seed", seed)
    assert r.exit_code == 2 and "--seed" in r.stderr and "Traceback" not in r.output
