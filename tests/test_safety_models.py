"""Safety of what ``profile`` and ``dump`` read and write.

A crafted ``.pt2`` never runs code; files in the working folder never shadow installed
packages; weights of a wrong dtype are refused; an input shape too large for the machine is
refused before allocating; concurrent ``dump --append`` runs lose no row; a sharded dump
removes only part files an eenet dump recorded; ``--append`` to a foreign Parquet file says so.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, SAMPLE, invoke

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from eenet_cli.artifacts.predictions import read_predictions  # noqa: E402
from eenet_cli.errors import InputError  # noqa: E402

T = "fixtures_models.tiny_models"
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]))
DIGITS = ["digits-cnn", "--weights", str(SAMPLE / "digits_model.safetensors"), "--data", "digits:val", "--split", "val"]


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("eenet: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


# --------------------------------------------------------------------------- 1. crafted .pt2 archives


class Payload:
    """Unpickling this creates ``marker`` (a stand-in for any code the pickle could run)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def torch_saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def rewrite(src: Path, dst: Path, change) -> Path:
    """Copy the archive ``src`` to ``dst`` with ``change(members) -> members`` applied to the
    members under its top folder (name -> bytes, in order)."""
    with zipfile.ZipFile(src) as zin:
        top = zin.namelist()[0].split("/")[0]
        members = {i.filename.split("/", 1)[1]: zin.read(i) for i in zin.infolist()}
    members = change(members)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for rel, data in (members.items() if isinstance(members, dict) else members):
            zout.writestr(f"{top}/{rel}", data)
    return dst


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A real torch.export.save archive of a tiny all-exits model (dynamic batch), and data for it."""
    from fixtures_models.tiny_models import arrays, tiny_all_exits

    d = tmp_path_factory.mktemp("pt2")
    ep = torch.export.export(tiny_all_exits(), (torch.zeros(2, 6),), dynamic_shapes=({0: torch.export.Dim("b")},))
    torch.export.save(ep, str(d / "m.pt2"))
    x, y = arrays(9)
    np.savez(d / "d.npz", x=x, y=y)
    return d / "m.pt2"


def _json(members: dict, rel: str, edit) -> dict:
    doc = json.loads(members[rel])
    edit(doc)
    members[rel] = json.dumps(doc).encode()
    return members


def _pickled_weight(marker):
    def change(m):
        m["data/weights/weight_0"] = torch_saved(Payload(marker))
        return _json(m, "data/weights/model_weights_config.json", lambda d: next(iter(d["config"].values())).update(use_pickle=True))

    return change


def _opaque_constant(marker):
    def change(m):
        m["data/constants/opaque_obj_0"] = pickle.dumps(Payload(marker))
        entry = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
        return _json(m, "data/constants/model_constants_config.json", lambda d: d["config"].update(evil=entry))

    return change


def _sym_expr(marker):
    def edit(doc):
        sizes = doc["graph_module"]["graph"]["tensor_values"]["x"]["sizes"]
        sym = sizes[0]["as_expr"]["expr_str"]
        sizes[0]["as_expr"]["expr_str"] = f"{sym} if __import__('builtins').open({marker!r}, 'w') else 0"

    return lambda m: _json(m, "models/model.json", edit)


def _guard(marker):
    return lambda m: _json(m, "models/model.json", lambda d: d.update(guards_code=[f"__import__('builtins').open({marker!r}, 'w') is not None"]))


def _node_target(marker):
    node = {"target": "torch.os.system", "inputs": [{"name": "command", "arg": {"as_string": f"touch {marker}"}, "kind": 1}],
            "outputs": [], "metadata": {}, "is_hop_single_tensor_return": None, "name": "evil"}
    return lambda m: _json(m, "models/model.json", lambda d: d["graph_module"]["graph"]["nodes"].insert(0, node))


def _duplicate_sample_inputs(marker):
    def change(m):
        items = list(m.items())
        items.append(("data/sample_inputs/model.pt", pickle.dumps(Payload(marker))))  # zipfile warns: the point
        return items

    return change


CRAFTED = {
    # torch.load(weights_only=True) fails on these, and torch falls back to weights_only=False
    "sample inputs: a bare pickle": lambda mk: lambda m: {**m, "data/sample_inputs/model.pt": pickle.dumps(Payload(mk))},
    "sample inputs: torch.save of an object": lambda mk: lambda m: {**m, "data/sample_inputs/model.pt": torch_saved(Payload(mk))},
    "sample inputs: a second copy": _duplicate_sample_inputs,
    # members torch unpickles with weights_only=False outright
    "weight stored with use_pickle": _pickled_weight,
    "opaque object constant": _opaque_constant,
    "legacy weights file": lambda mk: lambda m: {**m, "data/weights/model.pt": torch_saved(Payload(mk))},
    "extra data.pkl member": lambda mk: lambda m: {**m, "data/data.pkl": pickle.dumps(Payload(mk))},
    # text torch evaluates: sympy.sympify (eval), guards_code (exec), node targets (called)
    "shape expression": _sym_expr,
    "guards code": _guard,
    "graph node calling torch.os.system": _node_target,
    "AOTInductor shared library": lambda mk: lambda m: {**m, "data/aotinductor/model/model.so": b"\x7fELF" + b"\0" * 60},
}


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_pt2_is_refused_before_anything_runs(case, exported, tmp_path, runner):
    marker = tmp_path / "PWNED"
    evil = rewrite(exported, tmp_path / "evil.pt2", CRAFTED[case](str(marker)))
    out = tmp_path / "p.parquet"
    r = invoke(runner, "dump", evil, "--data", exported.parent / "d.npz", "-o", out)
    line = one_error_line(r.stderr)
    assert r.exit_code == 2 and ": refused: " in line and "evil.pt2" in line, line
    assert not marker.exists(), f"{case}: the payload ran"
    assert not out.exists()


def test_crafted_pt2_through_a_real_process(exported, tmp_path):
    """``eenet profile evil.pt2`` as a user runs it: exit 2, one line, the payload never runs."""
    marker = tmp_path / "PWNED"
    rewrite(exported, tmp_path / "evil.pt2", CRAFTED["sample inputs: a bare pickle"](str(marker)))
    for cmd in (["profile", "evil.pt2", "--input-shape", "6", "-o", "c.json"], ["dump", "evil.pt2", "--data", str(exported.parent / "d.npz"), "-o", "p.parquet"]):
        r = subprocess.run([sys.executable, "-m", "eenet_cli", *cmd], capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120)
        assert r.returncode == 2, r.stderr
        assert ": refused: " in one_error_line(r.stderr)
        assert not marker.exists() and not (tmp_path / "c.json").exists() and not (tmp_path / "p.parquet").exists()


def test_legitimate_pt2_archives_still_load(exported, tmp_path, runner):
    """What torch.export.save writes passes the checks: buffers, constants, derived shapes, guards."""
    from eenet_cli.runtime.load import load_model
    from eenet_cli.runtime.pt2 import check_pt2_bytes

    class WithEverything(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(6, 3)
            self.bn = torch.nn.BatchNorm1d(6)
            self.register_buffer("shift", torch.arange(3, dtype=torch.float32))
            self.const = torch.ones(3)  # a tensor constant

        def forward(self, x):
            h = self.bn(x)
            if x.shape[0] > 3:  # a guard on the batch size
                h = h * 2
            y = torch.cat([h, h], 0)[: (2 * x.shape[0]) // 2]  # derived symbolic sizes
            return [self.lin(y) + self.shift, self.lin(y) + self.const]

    m = WithEverything().eval()
    ep = torch.export.export(m, (torch.zeros(5, 6),), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    torch.export.save(ep, str(tmp_path / "w.pt2"))
    with zipfile.ZipFile(tmp_path / "w.pt2") as z:
        doc = json.loads(next(z.read(n) for n in z.namelist() if n.endswith("models/model.json")))
    assert doc["guards_code"], "the guard the test means to cover is not there"
    check_pt2_bytes((tmp_path / "w.pt2").read_bytes())
    loaded = load_model(str(tmp_path / "w.pt2"))
    x = torch.randn(7, 6)
    with torch.no_grad():
        got, want = loaded.module(x), m(x)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, want))
    # and the plain archive dumps through the command line
    out = tmp_path / "p.parquet"
    r = invoke(runner, "dump", exported, "--data", exported.parent / "d.npz", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    assert read_predictions(out).num_samples == 9


def test_pickle_scan_and_member_rules():
    """The checks one by one, on bytes (no torch.export involved)."""
    from eenet_cli.runtime.pt2 import (
        _check_guard,
        _check_pickle,
        _check_sym_expr,
        _Refused,
        check_pt2_bytes,
    )

    with zipfile.ZipFile(io.BytesIO(torch_saved({"x": torch.zeros(2), "y": torch.nn.Parameter(torch.ones(1))}))) as z:
        _check_pickle(z.read(next(n for n in z.namelist() if n.endswith("data.pkl"))), "ok")
    for data in (pickle.dumps(Payload("/nonexistent/x"), protocol=p) for p in (0, 2, 4, 5)):
        with pytest.raises(_Refused, match=r"calls \w+\.open|INST"):
            _check_pickle(data, "x")
    for good in ("Symbol('s0', positive=True, integer=True)", "FloorDiv(Mul(Integer(2), Symbol('s77', integer=True)), Integer(3))", "s0*2 + 1"):
        _check_sym_expr(good, "m")
    for bad in ("__import__('os')", "Symbol('s0').__class__", "lambdify(s0, s0)", "Symbol('a b')", "[s0 for s0 in ()]", "preview(s0)"):
        with pytest.raises(_Refused):
            _check_sym_expr(bad, "m")
    for good in ("L['x'].size()[0] > 3", "((2*L['x'].size()[0]) // 3) != 1", "L['x'].size()[0] == L['y'].size()[0]", "L['args'][0].stride()[1] <= math.inf"):
        _check_guard(good, "m")
    for bad in ("L['x'].size.__self__", "print(1)", "L['x'].numpy()", 'L["a\\"b"].size()[0] > 1', "(lambda: 0)()", "L[L['x']].size()[0] > 1"):
        with pytest.raises(_Refused):
            _check_guard(bad, "m")
    with pytest.raises(_Refused, match="zip"):
        check_pt2_bytes(b"not a zip")


# --------------------------------------------------------------------------- 2. the working folder shadows nothing


def test_working_folder_modules_do_not_shadow_installed_packages(tmp_path):
    """``python -m eenet_cli`` in a folder holding ``numpy.py`` and ``safetensors.py``: the user's
    ``mymodel.py`` is found, the look-alikes are never imported."""
    from safetensors.torch import save_file

    for name in ("numpy", "safetensors", "typer", "yaml"):
        (tmp_path / f"{name}.py").write_text(f"open({str(tmp_path / ('SHADOWED-' + name))!r}, 'w').close()\nraise ImportError('shadow')\n")
    (tmp_path / "mymodel.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class Staged(nn.Module):
            def __init__(self):
                super().__init__()
                self.stages = nn.ModuleList([nn.Linear(6, 16), nn.Linear(16, 16)])
                self.heads = nn.ModuleList([nn.Linear(16, 3), nn.Linear(16, 3)])

        def build():
            torch.manual_seed(0)
            return Staged()
    """))
    from torch import nn

    class Staged(nn.Module):  # the same layout, for a weights file
        def __init__(self):
            super().__init__()
            self.stages = nn.ModuleList([nn.Linear(6, 16), nn.Linear(16, 16)])
            self.heads = nn.ModuleList([nn.Linear(16, 3), nn.Linear(16, 3)])

    save_file(Staged().state_dict(), str(tmp_path / "w.safetensors"))
    r = subprocess.run(
        [sys.executable, "-m", "eenet_cli", "profile", "mymodel:build", "--weights", "w.safetensors", "--input-shape", "6",
         "--repeats", "2", "--warmup", "0", "--unit", "flops", "-o", "c.json"],
        capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "c.json").read_text())["costs"]
    assert not list(tmp_path.glob("SHADOWED-*")), r.stderr


def test_resolve_import_appends_the_working_folder(tmp_path, monkeypatch):
    """In-process: the working folder goes to the end of sys.path, never the front."""
    from eenet_cli.runtime.load import resolve_import

    (tmp_path / "zz_user_mod.py").write_text("VALUE = 41\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert resolve_import("zz_user_mod:VALUE", "model", "MODEL") == 41
    assert sys.path[-1] == str(tmp_path) and sys.path.index(str(tmp_path)) == len(sys.path) - 1
    sys.modules.pop("zz_user_mod", None)


# --------------------------------------------------------------------------- 3. weight dtypes


@pytest.fixture
def digits_state() -> dict:
    from safetensors.torch import load_file

    return load_file(str(SAMPLE / "digits_model.safetensors"))


@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.int8, torch.complex64])
def test_weights_of_a_non_float_dtype_are_refused(dtype, digits_state, tmp_path, runner):
    from safetensors.torch import save_file

    from eenet_cli.runtime.load import load_model

    name = next(k for k, v in digits_state.items() if v.dtype == torch.float32 and v.ndim > 1)
    state = dict(digits_state)
    state[name] = (state[name] > 0) if dtype == torch.bool else state[name].to(dtype)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    with pytest.raises(InputError) as e:
        load_model("digits-cnn", weights=str(path))
    msg = str(e.value)
    assert name in msg and str(dtype).removeprefix("torch.") in msg and "float32" in msg, msg
    r = invoke(runner, "dump", "digits-cnn", "--weights", path, "--data", "digits:val", "-o", tmp_path / "p.parquet")
    assert r.exit_code == 2 and name in one_error_line(r.stderr)
    assert not (tmp_path / "p.parquet").exists()


def test_float_weights_of_another_width_and_integer_counters_load(digits_state, tmp_path):
    """float16/float64 weights are cast; num_batches_tracked stays int64, or comes back from float16 exactly."""
    from safetensors.torch import save_file

    from eenet_cli.runtime.load import load_model

    ref = load_model("digits-cnn", weights=str(SAMPLE / "digits_model.safetensors"))
    for dtype in (torch.float16, torch.float64):
        half = {k: (v.to(dtype) if v.dtype == torch.float32 else v) for k, v in digits_state.items()}
        save_file(half, str(tmp_path / "h.safetensors"))
        m = load_model("digits-cnn", weights=str(tmp_path / "h.safetensors"))
        assert all(v.dtype == ref.module.state_dict()[k].dtype for k, v in m.module.state_dict().items())
    everything_half = {k: v.to(torch.float16) for k, v in digits_state.items()}  # counters too (whole numbers)
    save_file(everything_half, str(tmp_path / "all.safetensors"))
    load_model("digits-cnn", weights=str(tmp_path / "all.safetensors"))
    counter = next(k for k, v in digits_state.items() if k.endswith("num_batches_tracked"))
    bad = dict(digits_state)
    bad[counter] = torch.tensor(2.5)
    save_file(bad, str(tmp_path / "frac.safetensors"))
    with pytest.raises(InputError, match=counter.replace(".", r"\.")):
        load_model("digits-cnn", weights=str(tmp_path / "frac.safetensors"))


def test_dtype_rules():
    from eenet_cli.runtime.weights import dtype_problem

    f32 = torch.zeros(3)
    assert dtype_problem(torch.zeros(3, dtype=torch.float64), f32) is None
    assert dtype_problem(torch.zeros(3, dtype=torch.bfloat16), f32) is None
    for src in (torch.zeros(3, dtype=torch.int32), torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.complex64)):
        assert dtype_problem(src, f32)
    counter = torch.tensor(7)
    assert dtype_problem(torch.tensor(7, dtype=torch.int32), counter) is None
    assert dtype_problem(torch.tensor(7.0), counter) is None
    assert dtype_problem(torch.tensor(7.5), counter)
    assert dtype_problem(torch.tensor(2**40), torch.tensor(1, dtype=torch.int32))
    assert dtype_problem(torch.tensor([0, 1]), torch.tensor([True, False])) is None
    assert dtype_problem(torch.tensor([0, 2]), torch.tensor([True, False]))


# --------------------------------------------------------------------------- 4. memory


def test_huge_input_shape_is_refused_with_the_sizes(runner, tmp_path):
    from eenet_cli.memory import total_memory
    from eenet_cli.runtime.load import parse_shape

    if total_memory() is None or total_memory() > 100e9:
        pytest.skip("needs a machine with a known memory under 100 GB")
    with pytest.raises(InputError, match=r"3,100000,100000 at batch size 1 needs 120\.0 GB; this machine has [0-9.]+ GB"):
        parse_shape("3,100000,100000")
    r = invoke(runner, "profile", "mlp", "--input-shape", "3,100000,100000", "-o", tmp_path / "c.json")
    assert r.exit_code == 2 and "needs 120.0 GB" in one_error_line(r.stderr)
    assert not (tmp_path / "c.json").exists()


def test_check_memory_uses_the_machines_total(monkeypatch):
    from eenet_cli import memory
    from eenet_cli.runtime.load import parse_shape

    monkeypatch.setattr(memory, "total_memory", lambda: 10 * 10**9)
    memory.check_memory(7.9e9, "x")  # under 80%
    with pytest.raises(InputError, match=r"the thing needs 8\.1 GB; this machine has 10\.0 GB"):
        memory.check_memory(8.1e9, "the thing")
    assert parse_shape("3,1000,1000", batch_size=200) == (3, 1000, 1000)  # 2.4 GB
    with pytest.raises(InputError, match="at batch size 5000 needs 60.0 GB"):
        parse_shape("3,1000,1000", batch_size=5000)
    with pytest.raises(InputError, match="needs"):
        parse_shape("10" + "0" * 30)
    monkeypatch.setattr(memory, "total_memory", lambda: None)
    memory.check_memory(1e30, "unknown total: nothing refused")


# --------------------------------------------------------------------------- 5. concurrent appends


def _run_parallel(cmds: list[list[str]], cwd: Path, env: dict) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen(c, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    out = []
    for p, c in zip(procs, cmds):
        so, se = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(c, p.returncode, so, se))
    return out


def test_concurrent_appends_lose_no_rows(tmp_path):
    """Two ``dump --append`` at the same moment: both exit 0, the file has every row once."""
    out = tmp_path / "preds.parquet"
    base = [sys.executable, "-m", "eenet_cli", "dump", *DIGITS, "-o", str(out), "-q"]
    r = subprocess.run(base, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    initial = read_predictions(out).num_samples
    done = _run_parallel([base + ["--append"]] * 2, tmp_path, ENV)
    assert all(d.returncode == 0 for d in done), [d.stderr for d in done]
    p = read_predictions(out)
    assert p.num_samples == 3 * initial
    assert sorted(p.sample_id.tolist()) == list(range(3 * initial))
    assert not list(tmp_path.glob(".preds.parquet.lock")) and not list(tmp_path.glob(".eenet-*"))


def test_concurrent_appends_with_slow_data_take_turns(tmp_path, runner, monkeypatch):
    """Three appenders whose data takes a second to arrive: each waits for the lock, none is lost."""
    (tmp_path / "slowdigits.py").write_text(textwrap.dedent("""
        import time
        import torch
        from eenet_cli.runtime.models import load_digits_split

        def val():  # a generator: the sleep happens while dump iterates, after it read the old file
            time.sleep(0.8)
            x, y = load_digits_split("val")
            yield torch.from_numpy(x[:60]), torch.from_numpy(y[:60])
    """))
    out = tmp_path / "preds.parquet"
    env = dict(ENV, PYTHONPATH=os.pathsep.join([str(tmp_path), ENV["PYTHONPATH"]]))
    base = [sys.executable, "-m", "eenet_cli", "dump", "digits-cnn", "--weights", str(SAMPLE / "digits_model.safetensors"),
            "--data", "slowdigits:val", "--split", "val", "-o", str(out)]
    monkeypatch.syspath_prepend(str(tmp_path))
    r = invoke(runner, *base[3:], "-q")  # the first rows, in-process
    assert r.exit_code == 0, r.output
    done = _run_parallel([base + ["--append"]] * 3, tmp_path, env)
    assert all(d.returncode == 0 for d in done), [d.stderr for d in done]
    assert any("waiting for another eenet dump" in d.stderr for d in done), [d.stderr for d in done]
    p = read_predictions(out)
    assert p.num_samples == 4 * 60 and sorted(p.sample_id.tolist()) == list(range(240))


def test_lock_is_exclusive_and_times_out(tmp_path):
    from eenet_cli.errors import WorkFailed
    from eenet_cli.runtime.dump import lock_file, output_lock

    target = tmp_path / "p.parquet"
    code = f"from pathlib import Path; from eenet_cli.runtime.dump import output_lock\nwith output_lock(Path({str(target)!r}), timeout=0.3): pass\n"
    with output_lock(target):
        assert lock_file(target).exists()
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
        assert r.returncode != 0 and "WorkFailed" in r.stderr
        with pytest.raises(WorkFailed, match="another eenet dump"):
            with output_lock(target, timeout=0.1):  # flock locks are per open file: a second open waits too
                pass
    assert not lock_file(target).exists()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------- 6. part files of sharded dumps


def _sharded(runner, monkeypatch, out: Path, world: int, ranks, *extra) -> list:
    results = []
    for rank in ranks:
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        r = invoke(runner, "dump", f"{T}:tiny_staged", "--data", f"{T}:tiny_batches", "--split", "val", "-o", out, *extra)
        assert r.exit_code == 0, r.output
        results.append(r)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    return results


def test_sharded_dump_leaves_part_files_it_did_not_write(runner, tmp_path, monkeypatch):
    from conftest import write_synthetic

    out = tmp_path / "shards"
    out.mkdir()
    foreign = write_synthetic(out / "part-00005.parquet", n=10, k=3, c=3, costs=None, with_costs=False)
    before = foreign.read_bytes()
    results = _sharded(runner, monkeypatch, out, 2, (1, 0))
    assert foreign.read_bytes() == before
    err = results[-1].stderr
    assert "part-00005.parquet" in err and "left in place" in err, err
    assert json.loads((out / ".eenet-dump.json").read_text())["parts"] == ["part-00000.parquet", "part-00001.parquet"]


def test_sharded_dump_removes_stale_parts_its_manifest_lists_and_says_so(runner, tmp_path, monkeypatch):
    out = tmp_path / "shards"
    _sharded(runner, monkeypatch, out, 3, (0, 1, 2))
    assert len(json.loads((out / ".eenet-dump.json").read_text())["parts"]) == 3
    results = _sharded(runner, monkeypatch, out, 2, (1, 0))
    err = results[-1].stderr
    assert "removed" in err and "part-00002.parquet" in err, err
    assert sorted(p.name for p in out.glob("*.parquet")) == ["part-00000.parquet", "part-00001.parquet"]
    assert read_predictions(out).num_samples == 40


def test_update_manifest_removes_only_listed_parts(tmp_path):
    from eenet_cli.runtime.dump import MANIFEST, update_manifest

    for n in range(6):
        (tmp_path / f"part-{n:05d}.parquet").write_bytes(b"x")
    (tmp_path / "other.parquet").write_bytes(b"x")
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "eenet-dump-parts", "version": 1, "world": 4,
                                                 "parts": [f"part-{n:05d}.parquet" for n in range(4)]}))
    logged: list[str] = []
    removed = update_manifest(tmp_path, 2, append=False, log=logged.append)
    assert removed == ["part-00002.parquet", "part-00003.parquet"]
    assert sorted(p.name for p in tmp_path.glob("*.parquet")) == ["other.parquet", "part-00000.parquet", "part-00001.parquet",
                                                                  "part-00004.parquet", "part-00005.parquet"]
    assert sum("removed" in m for m in logged) == 2 and any("part-00004.parquet" in m and "other.parquet" in m for m in logged)
    (tmp_path / MANIFEST).write_text("{ not json")
    assert update_manifest(tmp_path, 1, append=False, log=logged.append) == []
    assert (tmp_path / "part-00001.parquet").exists()


# --------------------------------------------------------------------------- 7. --append to a foreign Parquet file


def test_append_to_a_parquet_file_without_eenet_metadata(runner, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"exit_0": [[0.1, 0.9]], "label": [1], "split": ["val"]}), target)
    before = target.read_bytes()
    r = invoke(runner, "dump", *DIGITS, "-o", target, "--append")
    line = one_error_line(r.stderr)
    assert r.exit_code == 2 and "not an eenet predictions file (no eenet.num_exits metadata)" in line, line
    assert "None" not in line
    assert target.read_bytes() == before
