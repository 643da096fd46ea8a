"""Careless hands and hostile files on the artifact side: an output never destroys a
device, a link or an input; a failed write is one line; hostile Parquet and JSON get one
line each (exit 2), never a traceback."""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, invoke

EENET = [sys.executable, "-m", "eenet_cli"]


def one_line_error(r, code: int = 2) -> str:
    assert r.exit_code == code, r.output
    assert r.stderr.startswith("eenet: error: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.output
    return r.stderr


# --------------------------------------------------------------------------- where outputs land


def test_output_to_a_character_device_writes_through_it(runner, synth, tmp_path):
    """`-o /dev/null` as root turned /dev/null into a regular file for the whole machine;
    a private device node with the same numbers stands in for it here."""
    if os.geteuid() == 0:
        dev = tmp_path / "null"
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    else:
        dev = Path("/dev/null")
    r = invoke(runner, "fit", synth, "--budget", "2", "-m", "maxprob", "-o", dev, "-q")
    assert r.exit_code == 0, r.output
    assert stat.S_ISCHR(os.stat(dev).st_mode)
    assert not [p for p in dev.parent.iterdir() if p.name.startswith(".eenet-")]


def test_output_to_a_fifo_streams_into_it(runner, synth, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    r = invoke(runner, "fit", synth, "--budget", "2", "-m", "maxprob", "-o", fifo, "-q")
    reader.join(timeout=30)
    assert r.exit_code == 0, r.output
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert json.loads(got[0])["format"] == "policy"


def test_output_through_a_symlink_replaces_the_target_and_keeps_the_link(runner, synth, tmp_path):
    target = tmp_path / "real.json"
    target.write_text("{}")
    os.chmod(target, 0o640)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    r = invoke(runner, "fit", synth, "--budget", "2", "-m", "maxprob", "-o", link, "-q")
    assert r.exit_code == 0, r.output
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text())["format"] == "policy"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640  # a replaced file keeps its mode


@pytest.mark.parametrize("name, message", [
    ("p.json/", "ends with a slash"),
    ("sub", "is a directory"),
])
def test_output_that_names_a_folder_is_refused(runner, synth, tmp_path, name, message):
    (tmp_path / "sub").mkdir()
    r = invoke(runner, "fit", synth, "--budget", "2", "-m", "maxprob", "-o", f"{tmp_path}/{name}")
    assert message in one_line_error(r)


def test_a_legal_long_output_name_works_and_an_illegal_one_is_one_line(runner, synth, tmp_path):
    ok = tmp_path / ("a" * 250 + ".json")
    assert invoke(runner, "fit", synth, "--budget", "2", "-m", "maxprob", "-o", ok, "-q").exit_code == 0
    assert json.loads(ok.read_text())["format"] == "policy"
    bad = tmp_path / ("b" * 300 + ".json")
    assert "file name is 305 bytes long" in one_line_error(invoke(runner, "fit", synth, "--budget", "2", "-o", bad))


def test_a_long_inline_cost_list_is_one_short_line(runner, synth):
    text = ",".join(str(i) for i in range(1, 1501)) + "ms"
    err = one_line_error(invoke(runner, "fit", synth, "--budget", "2", "--costs", text))
    assert "has 1500 costs but the predictions have 4 exits" in err and len(err) < 400
    err = one_line_error(invoke(runner, "fit", synth, "--budget", "2", "--costs", "1," * 6000 + "2"))
    assert "at most 10000 characters" in err and len(err) < 400


def test_file_size_limit_is_one_line_and_the_old_file_survives(synth, tmp_path):
    out = tmp_path / "r.json"
    out.write_text("old results")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))

    p = subprocess.run([*EENET, "evaluate", str(synth), "-m", "maxprob", "--budgets", "2", "-o", str(out), "-q"],
                       capture_output=True, text=True, preexec_fn=limit)
    assert p.returncode == 1, p.stderr
    assert p.stderr.startswith("eenet: error: ") and "cannot write" in p.stderr and p.stderr.count("\n") == 1
    assert out.read_text() == "old results"
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".eenet-")]


def test_sigterm_during_a_write_leaves_no_temporary_file(tmp_path):
    """SIGINT cleaned up; SIGTERM and SIGHUP left a `.tmp` beside the output."""
    data = tmp_path.parent / f"{tmp_path.name}-images.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.normal(size=(3000, 3, 32, 32)).astype(np.float32), y=rng.integers(0, 10, 3000))
    out = tmp_path / "preds.parquet"
    cmd = [*EENET, "dump", "resnet56", "--data", str(data), "--batch-size", "16", "--split", "val", "-o", str(out), "-q"]
    for sig in (signal.SIGTERM, signal.SIGHUP):
        proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not [q for q in tmp_path.iterdir() if q.name.startswith(".eenet-")]:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(sig)
        err = proc.communicate(timeout=60)[1]
        assert proc.returncode == 128 + sig, err
        assert f"stopped by {signal.Signals(sig).name}" in err and "Traceback" not in err
        assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- hostile Parquet


def _table(n=8, k=2, c=3, **replace):
    rng = np.random.default_rng(0)
    cols = {f"exit_{j}": pa.FixedSizeListArray.from_arrays(pa.array(rng.normal(size=n * c).astype(np.float32)), c) for j in range(k)}
    cols["label"] = pa.array(np.arange(n) % c, pa.int64())
    cols["split"] = pa.array(["val", "test"] * (n // 2))
    cols.update(replace)
    meta = {b"eenet.format": b'"predictions"', b"eenet.version": b"1", b"eenet.num_exits": str(k).encode(),
            b"eenet.num_classes": str(c).encode(), b"eenet.costs": b'{"format": "costs", "version": 1, "unit": "ms", "costs": [1, 2]}'}
    return pa.table(cols).replace_schema_metadata(meta)


@pytest.mark.parametrize("column, values, message", [
    ("sample_id", pa.array([0, 1, None, 3, 4, 5, 6, 7], pa.int64()), "row 2 has no value (null)"),
    ("label", pa.array([0, 1, 2, None, 1, 2, 0, 1], pa.int64()), "row 3 has no value (null)"),
    ("label", pa.array([0, 1, 2, 2**64 - 1, 1, 2, 0, 1], pa.uint64()), "value 18446744073709551615 at row 3"),
    ("sample_id", pa.array([[i] for i in range(8)]), "expected integers or strings"),
    ("sample_id", pa.array([{"a": i} for i in range(8)]), "expected integers or strings"),
])
def test_bad_label_and_sample_id_columns_name_the_row(runner, tmp_path, column, values, message):
    path = tmp_path / "p.parquet"
    pq.write_table(_table(**{column: values}), path)
    r = invoke(runner, "evaluate", path, "-m", "maxprob", "--budgets", "1.5")
    err = one_line_error(r)
    assert message in err and column in err


def test_float64_scores_beyond_float32_are_refused(runner, tmp_path):
    n, c = 8, 3
    big = np.zeros(n * c)
    big[4] = 1e300
    path = tmp_path / "p.parquet"
    pq.write_table(_table(exit_1=pa.FixedSizeListArray.from_arrays(pa.array(big, pa.float64()), c)), path)
    for args in (["evaluate", path, "-m", "maxprob", "--budgets", "1.5"], ["fit", path, "--budget", "1.5"]):
        err = one_line_error(invoke(runner, *args))
        assert "non-finite score" in err and "row 1" in err and "exit_1" in err


def test_every_part_file_declares_the_same_format(runner, tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    pq.write_table(_table(), folder / "part-00000.parquet")
    later = _table()
    meta = dict(later.schema.metadata)
    meta[b"eenet.version"] = b"99"
    pq.write_table(later.replace_schema_metadata(meta), folder / "part-00001.parquet")
    err = one_line_error(invoke(runner, "evaluate", folder, "-m", "maxprob", "--budgets", "1.5"))
    assert "part-00001.parquet" in err and "version" in err


def test_predictions_from_stdin_leave_nothing_on_disk(tmp_path):
    import tempfile

    before = set(os.listdir(tempfile.gettempdir()))
    data = (ROOT / "sample_data" / "digits.parquet").read_bytes()
    p = subprocess.run([*EENET, "fit", "-", "--budget", "60%", "-m", "maxprob", "-q"], input=data, capture_output=True)
    assert p.returncode == 0, p.stderr
    q = subprocess.run([*EENET, "fit", "-", "--budget", "60%", "--costs", "-"], input=data, capture_output=True, text=False)
    assert q.returncode == 2 and b"stdin already carries the predictions" in q.stderr
    assert set(os.listdir(tempfile.gettempdir())) - before == set()


# --------------------------------------------------------------------------- hostile JSON and numbers


@pytest.mark.parametrize("kind", ["costs", "policy", "results"])
def test_deeply_nested_json_is_refused_before_parsing(runner, synth, tmp_path, kind):
    deep = tmp_path / f"{kind}.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    args = {"costs": ["fit", synth, "--budget", "2", "--costs", deep],
            "policy": ["apply", deep, synth],
            "results": ["evaluate", synth, "--check", deep]}[kind]
    assert "nested 100000 levels deep" in one_line_error(invoke(runner, *args))


def test_json_depth_ignores_brackets_inside_strings():
    from eenet_cli.artifacts.files import json_depth

    assert json_depth('{"a": "[[[[[[", "b": [[1]], "c": "\\"]]]"}') == 3
    assert json_depth("[" * 70 + "]" * 70) == 70
    assert json_depth("12") == 0


@pytest.mark.parametrize("args, message", [
    (["fit", "{p}", "--budget", "1e308s"], "too large"),
    (["fit", "{p}", "--budget", "2", "--costs", "1e308,1.5e308,1.7e308,1.8e308"], "finite"),
    (["fit", "{p}", "--budget", "2", "--costs", "1e200,2e200,3e200,4e200"], "at most 1e+100"),
    (["fit", "{p}", "--budget", "1" * 20000], "at most 64 characters"),
])
def test_overflowing_numbers_are_one_line(runner, synth, args, message):
    assert message in one_line_error(invoke(runner, *[a.format(p=synth) for a in args]))


def test_a_symlink_loop_is_named_as_such(runner, tmp_path):
    (tmp_path / "a.parquet").symlink_to(tmp_path / "b.parquet")
    (tmp_path / "b.parquet").symlink_to(tmp_path / "a.parquet")
    assert "symbolic link loop" in one_line_error(invoke(runner, "evaluate", tmp_path / "a.parquet"))
    assert "symbolic link loop" in one_line_error(invoke(runner, "fit", ROOT / "sample_data" / "digits.parquet", "--budget", "60%", "--costs", tmp_path / "a.parquet"))


# --------------------------------------------------------------------------- results files are checked before use


@pytest.fixture
def results_doc(runner, synth, tmp_path) -> dict:
    out = tmp_path / "ok.json"
    assert invoke(runner, "evaluate", synth, "-m", "maxprob,entropy", "--budgets", "2,3", "-o", out, "-q").exit_code == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["results"][0].update(exit_fractions=["a", "b", "c", "d"]), "results[0].exit_fractions["),
    (lambda d: d["results"][1].update(val_accuracy=None), "results[1].val_accuracy"),
    (lambda d: d["results"][0].update(budget=1e308), "results[0].budget"),
    (lambda d: d["results"][0].update(method=""), "results[0].method"),
    (lambda d: d["results"][0].update(exit_fractions=[0.1] * 20000), "results[0].exit_fractions"),
])
def test_results_are_checked_against_the_schema_before_plot_and_check(runner, synth, tmp_path, results_doc, mutate, field):
    mutate(results_doc)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(results_doc))
    for args in (["plot", bad, "-o", tmp_path / "x.png"], ["evaluate", synth, "--check", bad]):
        err = one_line_error(invoke(runner, *args))
        assert "does not match the results schema" in err and field in err
    assert not (tmp_path / "x.png").exists()


def test_lone_surrogates_in_results_are_refused(runner, synth, tmp_path, results_doc):
    text = json.dumps(results_doc).replace('"maxprob"', '"max\\udc80prob"', 1)
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    for args in (["plot", bad, "-o", tmp_path / "x.png"], ["evaluate", synth, "--check", bad]):
        assert "not valid Unicode" in one_line_error(invoke(runner, *args))


def test_mathtext_in_method_names_and_units_is_drawn_as_text(runner, tmp_path, results_doc):
    for rec in results_doc["results"]:
        rec["method"] = "$\\frac{$" + rec["method"]
    path = tmp_path / "math.json"
    path.write_text(json.dumps(results_doc))
    r = invoke(runner, "plot", path, "-o", tmp_path / "m.png", "--title", "$\\frac{$", "-q")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_refuses_more_methods_than_it_can_draw(runner, tmp_path, results_doc):
    rec = results_doc["results"][0]
    results_doc["results"] = [dict(rec, method=f"m{i}") for i in range(3000)]
    path = tmp_path / "many.json"
    path.write_text(json.dumps(results_doc))
    err = one_line_error(invoke(runner, "plot", path, "-o", tmp_path / "m.png"))
    assert "3000 methods" in err and "too many to draw" in err


# --------------------------------------------------------------------------- memory before allocation


def test_eenet_full_inputs_at_a_million_classes_are_refused_with_the_figure():
    """The paper's full-vector scorer grows with C and is refused with the figure; the
    compact scorer (the default) fits the same file with a policy of a few kB."""
    import json

    from eenet_cli.api import fit_policy, predictions_from_arrays
    from eenet_cli.core.eenet import EENetHyper
    from eenet_cli.errors import InputError

    rng = np.random.default_rng(0)
    preds = predictions_from_arrays(rng.normal(size=(20, 2, 1_000_000)).astype(np.float32), labels=np.arange(20) % 3, costs=[1.0, 2.0])
    with pytest.raises(InputError, match=r"EENet training on 20 rows x 2 exits x 1000000 classes needs [\d.]+ TB; this machine has"):
        fit_policy(preds, 1.5, method="eenet", hyper=EENetHyper(inputs="full"))
    policy = fit_policy(preds, 1.5, method="eenet")
    assert policy["num_classes"] == 1_000_000 and len(json.dumps(policy)) < 20_000


def test_profile_batch_beyond_memory_is_refused(runner):
    r = invoke(runner, "profile", "digits-cnn", "--batch-size", "100000000000", "--repeats", "1")
    err = one_line_error(r)
    assert "--batch-size" in err and "needs" in err and "this machine has" in err


def test_a_policy_with_a_very_wide_network_runs_in_bounded_memory():
    """8,192 rows at once through 100,000 hidden units would need 6.5 GB; blocks keep it small."""
    import tracemalloc

    from eenet_cli.api import apply_policy, predictions_from_arrays

    rng = np.random.default_rng(0)
    n, c, h = 3000, 3, 100_000
    preds = predictions_from_arrays(rng.normal(size=(n, 2, c)).astype(np.float32), labels=rng.integers(0, c, n), costs=[1.0, 2.0])
    exits = [{"shared_weight": (rng.normal(size=(h, c + 3 + j)) * 0.01).tolist(), "shared_bias": [0.0] * h,
              "utility_weight": (rng.normal(size=h) * 0.01).tolist(), "utility_bias": 0.0,
              "assign_weight": [0.0] * h, "assign_bias": 0.0} for j in range(2)]
    policy = {"format": "policy", "version": 1, "method": "eenet", "num_exits": 2, "num_classes": c,
              "budget": {"value": 1.5, "unit": "ms"}, "costs": {"unit": "ms", "costs": [1.0, 2.0]},
              "thresholds": [0.0, None], "scorer": {"type": "eenet", "negative_slope": 0.01, "exits": exits}}
    tracemalloc.start()
    applied = apply_policy(policy, preds)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert applied.exits.shape == (n,)
    assert peak < 1.5e9, f"peak {peak / 1e9:.2f} GB"


def test_a_budget_list_is_capped_like_a_range(runner, synth):
    err = one_line_error(invoke(runner, "evaluate", synth, "--budgets", ",".join(["2"] * 10001)))
    assert "10001 budgets given; at most 10000" in err
