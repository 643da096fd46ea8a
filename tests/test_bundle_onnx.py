"""``eenet export --onnx`` bundles: the built-in ``digits-cnn`` with the shipped weights, exported
with its ONNX graphs, loaded with ``backend="onnx"`` in a fresh process: every ONNX stage and
head gives the torch bundle's output within 1e-4 on the real test images at batch sizes 1, 8
and 64, and the runtime decides as ``eenet apply`` on the dumped predictions for the maxprob and
eenet policies; ONNX members are hashed, never pickles, and refused when they keep data
outside the model (never opened), call non-standard operators or define functions; a dict
hidden state cannot go to ONNX; ``profile --backend onnx`` runs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, SAMPLE, invoke

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from eenet_cli.errors import InputError  # noqa: E402

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

WEIGHTS = SAMPLE / "digits_model.safetensors"
METHODS = ("maxprob", "eenet")
BATCH_SIZES = (1, 8, 64)
TOLERANCE = 1e-4


def _env() -> dict:
    # one thread: on a busy 2-core machine torch's thread pool at batch size 1 is ~30x slower oversubscribed
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """torch (and so onnxruntime's sessions, which take torch's thread count) on one thread in this module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _rewrite(path: Path, members: dict[str, bytes], rehash: tuple[str, ...] = ()) -> Path:
    """The bundle with ``members``; the manifest's sha256 and size of ``rehash`` updated, so that
    only the content checks can catch what was changed."""
    if rehash:
        manifest = json.loads(members["manifest.json"])
        for name in rehash:
            manifest["members"][name] = {"sha256": hashlib.sha256(members[name]).hexdigest(), "bytes": len(members[name])}
        members = {**members, "manifest.json": json.dumps(manifest).encode()}
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _reads_as_pickle(data: bytes) -> bool:
    """Whether ``data`` parses as a pickle stream up to its STOP opcode (without running it)."""
    import pickletools

    try:
        return any(op.name == "STOP" for op, _, _ in pickletools.genops(data))
    except Exception:  # noqa: BLE001 - any parse error: not a pickle
        return False


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def onnx_deployed(tmp_path_factory):
    """The digits-cnn test predictions (dumped from the eager model), a maxprob and an eenet
    policy fitted on the shipped val predictions, and an ``--onnx`` bundle per policy."""
    from typer.testing import CliRunner

    from eenet_cli import api
    from eenet_cli.runtime.models import load_digits_split

    d = tmp_path_factory.mktemp("onnx_deployed")
    runner = CliRunner()
    x, y = load_digits_split("test")
    np.savez(d / "test.npz", x=x, y=y)
    np.savez(d / "small.npz", x=x[:48], y=y[:48])
    r = invoke(runner, "dump", "digits-cnn", "--weights", WEIGHTS, "--data", d / "test.npz", "--split", "test", "-o", d / "preds.parquet", "-q")
    assert r.exit_code == 0, r.output
    shipped = api.load_predictions(str(SAMPLE / "digits.parquet"))
    val = shipped.rows(shipped.split == "val")
    for method in METHODS:
        (d / f"{method}.json").write_text(json.dumps(api.fit_policy(val, "60%", method=method)))
        r = invoke(runner, "export", "digits-cnn", "--weights", WEIGHTS, "--policy", d / f"{method}.json", "--data", d / "test.npz",
                   "--onnx", "-o", d / f"{method}.eenet", "--json", "-q")
        assert r.exit_code == 0, r.output
        summary = json.loads(r.stdout)
        assert summary["onnx"]["opset"] >= 17 and summary["onnx"]["max_abs_diff"] <= TOLERANCE
        assert sum(n.endswith(".onnx") for n in summary["members"]) == 2 * 4
    return d


def test_onnx_parts_equal_torch_and_decide_as_apply_in_a_fresh_process(onnx_deployed, runner):
    """Per part (each fed the torch bundle's hidden state) and chained, the ONNX outputs are
    within 1e-4 of the torch bundle's on the 450 test images at batch sizes 1, 8, 64; the
    onnx-backed runtime takes the exits and predictions `eenet apply` takes on the dumped
    logits, for maxprob and eenet, at every batch size."""
    d = onnx_deployed
    script = f"""
import json, numpy as np, torch
torch.set_num_threads(1)
from eenet_cli.runtime import load_bundle
x = torch.from_numpy(np.load({str(d / "test.npz")!r}, allow_pickle=False)["x"])
ref = load_bundle({str(d / "maxprob.eenet")!r})  # its torch.export graphs
onx = load_bundle({str(d / "maxprob.eenet")!r}, backend="onnx")
assert type(onx.model.stages[0]).__name__ == "OnnxPart" and type(ref.model.stages[0]).__name__ != "OnnxPart"
out = {{"part_diff": {{}}, "chain_diff": {{}}}}
with torch.no_grad():
    for b in {list(BATCH_SIZES)!r}:
        part = chain = 0.0
        for i in range(0, len(x), b):
            h = g = x[i:i + b]
            for s_t, h_t, s_o, h_o in zip(ref.model.stages, ref.model.heads, onx.model.stages, onx.model.heads):
                h_next = s_t(h)
                part = max(part, float((s_o(h) - h_next).abs().max()), float((h_o(h_next) - h_t(h_next)).abs().max()))
                g = s_o(g)
                chain = max(chain, float((h_o(g) - h_t(h_next)).abs().max()))
                h = h_next
        out["part_diff"][str(b)], out["chain_diff"][str(b)] = part, chain
for method in {list(METHODS)!r}:
    bundle = load_bundle({str(d)!r} + "/" + method + ".eenet", backend="onnx")
    for b in {list(BATCH_SIZES)!r}:
        parts = [bundle(x[i:i + b]) for i in range(0, len(x), b)]
        out[f"{{method}}/{{b}}"] = [torch.cat([p[j] for p in parts]).tolist() for j in range(3)]
print(json.dumps(out))
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=300, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout)
    for b in BATCH_SIZES:
        assert got["part_diff"][str(b)] <= TOLERANCE, got["part_diff"]
        assert got["chain_diff"][str(b)] <= TOLERANCE, got["chain_diff"]
    k = 4
    for method in METHODS:
        r = invoke(runner, "apply", d / f"{method}.json", d / "preds.parquet", "-o", d / f"exits_{method}.parquet", "-q")
        assert r.exit_code == 0, r.output
        t = pq.read_table(d / f"exits_{method}.parquet")
        exits, preds, scores = (t.column(c).to_numpy() for c in ("exit", "prediction", "score"))
        assert 0 < (exits < k - 1).sum() < len(exits)  # some samples exit early, some do not
        for b in BATCH_SIZES:
            p_b, e_b, s_b = (np.asarray(v) for v in got[f"{method}/{b}"])
            # Exact: the ONNX logits differ from the dumped torch logits by < 1e-5, and on these
            # 450 images no decision of either policy is that close to a threshold (adding
            # uniform noise of +-1e-3 to every dumped logit flips no exit, checked when this test
            # was written), so no sample can exit one step apart on a tie.
            assert np.array_equal(e_b, exits), (method, b, np.flatnonzero(e_b != exits))
            assert np.array_equal(p_b, preds), (method, b)
            early = exits < k - 1
            assert np.allclose(s_b[early], scores[early], rtol=1e-4, atol=1e-5), (method, b)
            assert np.isnan(s_b[~early]).all()


def test_onnx_members_are_hashed_embedded_and_never_pickles(onnx_deployed):
    import onnx

    members = _members(onnx_deployed / "maxprob.eenet")
    manifest = json.loads(members["manifest.json"])
    onnx_names = sorted(n for n in members if n.endswith(".onnx"))
    assert onnx_names == sorted(f"parts/{kind}_{j}.onnx" for kind in ("stage", "head") for j in range(4))
    assert manifest["onnx"]["exporter"] == "torch.onnx dynamo" and isinstance(manifest["onnx"]["opset"], int)
    for j, part in enumerate(manifest["parts"]):
        for kind in ("stage", "head"):
            assert part[kind] == {"graph": f"parts/{kind}_{j}.json", "weights": f"parts/{kind}_{j}.safetensors", "onnx": f"parts/{kind}_{j}.onnx"}
    for name in onnx_names:
        data = members[name]
        assert manifest["members"][name] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        assert data[:1] != b"\x80" and data[:2] != b"PK", name  # no pickle stream, no zip
        assert not _reads_as_pickle(data), name
        model = onnx.load_model_from_string(data)
        assert len(model.graph.initializer) > 0 or name.startswith("parts/head")  # weights inside the model
        for t in model.graph.initializer:
            assert t.data_location != onnx.TensorProto.EXTERNAL and not len(t.external_data), (name, t.name)
        assert not len(model.functions)
        assert {o.domain for o in model.opset_import} <= {"", "ai.onnx", "ai.onnx.ml"}


def test_a_tampered_onnx_member_fails_its_sha256_check_with_one_line(onnx_deployed, tmp_path, runner):
    members = _members(onnx_deployed / "maxprob.eenet")
    blob = bytearray(members["parts/stage_3.onnx"])
    blob[len(blob) // 2] ^= 0x01  # one bit inside the weights
    members["parts/stage_3.onnx"] = bytes(blob)
    bad = _rewrite(tmp_path / "tampered.eenet", members)
    r = invoke(runner, "profile", bad, "--backend", "onnx", "--repeats", "1", "--warmup", "0")
    assert r.exit_code == 2, r.output
    lines = _lines(r.output)
    assert len(lines) == 1 and "parts/stage_3.onnx" in lines[0] and "sha256" in lines[0], r.output


def _with_external_data(blob: bytes, location: str) -> bytes:
    """The model with its largest initializer moved to 'external data' at ``location``."""
    import onnx

    model = onnx.load_model_from_string(blob)
    t = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    size = len(t.raw_data)
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(size))):
        e = t.external_data.add()
        e.key, e.value = key, value
    return model.SerializeToString()


def test_an_onnx_member_with_external_data_is_refused_and_the_file_never_opened(onnx_deployed, tmp_path, runner):
    """The manifest is re-hashed, so only the content check can catch it. In a fresh process an
    audit hook records every file opened, and onnxruntime's session constructor is watched."""
    members = _members(onnx_deployed / "maxprob.eenet")
    members["parts/head_3.onnx"] = _with_external_data(members["parts/head_3.onnx"], "../../etc/passwd")
    bad = _rewrite(tmp_path / "external.eenet", members, rehash=("parts/head_3.onnx",))
    script = f"""
import sys
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" and "passwd" in str(args[0]) else None)
import onnxruntime
sessions = []
real = onnxruntime.InferenceSession
class Watched(real):
    def __init__(self, *a, **kw):
        sessions.append(a[0] if isinstance(a[0], str) else "bytes")
        super().__init__(*a, **kw)
onnxruntime.InferenceSession = Watched
from eenet_cli.errors import InputError
from eenet_cli.runtime import load_bundle
for backend in ("onnx", "torch"):  # with onnx installed, the torch backend checks the ONNX members too
    try:
        load_bundle({str(bad)!r}, backend=backend)
        print("LOADED")
    except InputError as e:
        print("REFUSED", e)
print("OPENED", opened, "SESSIONS", sessions)
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=120, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    out = _lines(p.stdout)
    assert len(out) == 3 and "LOADED" not in p.stdout, p.stdout
    for line in out[:2]:
        assert line.startswith("REFUSED") and "refused: member parts/head_3.onnx keeps tensor" in line and "external data" in line, line
    assert out[2] == "OPENED [] SESSIONS []", p.stdout
    r = invoke(runner, "profile", bad, "--backend", "onnx", "--repeats", "1", "--warmup", "0")
    assert r.exit_code == 2 and len(_lines(r.output)) == 1 and "external data" in r.output, r.output


def _custom_domain(blob: bytes) -> bytes:
    import onnx

    model = onnx.load_model_from_string(blob)
    model.graph.node[0].domain = "com.example.evil"
    model.opset_import.append(onnx.helper.make_opsetid("com.example.evil", 1))
    return model.SerializeToString()


def _local_function(blob: bytes) -> bytes:
    import onnx

    model = onnx.load_model_from_string(blob)
    node = model.graph.node[0]
    fn = onnx.helper.make_function("", "Shadow", list(node.input), list(node.output), [onnx.helper.make_node("Identity", [node.input[0]], [node.output[0]])],
                                   [onnx.helper.make_opsetid("", 17)])
    model.functions.append(fn)
    return model.SerializeToString()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_custom_domain, "refused: member parts/stage_0.onnx imports operator set 'com.example.evil'"),
        (_local_function, "refused: member parts/stage_0.onnx defines model-local functions"),
        (lambda blob: __import__("pickle").dumps({"w": [1, 2]}, protocol=4), "refused: member parts/stage_0.onnx is a pickle"),
        (lambda blob: b"PK\x03\x04" + blob, "refused: member parts/stage_0.onnx is a zip archive"),
    ],
    ids=["custom-domain", "local-function", "pickle", "zip"],
)
def test_an_onnx_member_outside_the_allowlist_is_refused_with_one_line(onnx_deployed, tmp_path, change, message):
    from eenet_cli.runtime import load_bundle

    members = _members(onnx_deployed / "maxprob.eenet")
    members["parts/stage_0.onnx"] = change(members["parts/stage_0.onnx"])
    bad = _rewrite(tmp_path / "bad.eenet", members, rehash=("parts/stage_0.onnx",))
    with pytest.raises(InputError) as err:
        load_bundle(bad, backend="onnx")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_bundle_without_onnx_graphs_and_missing_extras_are_one_line(onnx_deployed, tmp_path, runner, monkeypatch):
    from eenet_cli.runtime import load_bundle

    members = {n: b for n, b in _members(onnx_deployed / "maxprob.eenet").items() if not n.endswith(".onnx")}
    manifest = json.loads(members["manifest.json"])
    del manifest["onnx"]
    for part in manifest["parts"]:
        for kind in ("stage", "head"):
            del part[kind]["onnx"]
    manifest["members"] = {n: e for n, e in manifest["members"].items() if not n.endswith(".onnx")}
    members["manifest.json"] = json.dumps(manifest).encode()
    plain = _rewrite(tmp_path / "plain.eenet", members)
    assert load_bundle(plain).manifest.get("onnx") is None  # the torch graphs load as before
    with pytest.raises(InputError, match="this bundle has no ONNX graphs; re-export with --onnx"):
        load_bundle(plain, backend="onnx")
    r = invoke(runner, "profile", "digits-cnn", "--backend", "onnx", "--repeats", "1")
    assert r.exit_code == 2 and len(_lines(r.output)) == 1 and "--backend" in r.output and "bundle" in r.output, r.output

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the onnx extra were not installed
    with pytest.raises(InputError, match=r"pip install 'eenet\[onnx\]'"):
        load_bundle(onnx_deployed / "maxprob.eenet", backend="onnx")
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    r = invoke(runner, "export", "digits-cnn", "--policy", onnx_deployed / "maxprob.json", "--onnx", "-o", tmp_path / "never.eenet")
    assert r.exit_code == 2 and len(_lines(r.output)) == 1, r.output
    assert "--onnx needs the onnx extra: pip install 'eenet[onnx]'" in r.output
    assert not (tmp_path / "never.eenet").exists()


def test_onnx_on_a_dict_hidden_state_exits_2_with_one_line_and_writes_nothing(tmp_path, runner):
    policy = {"format": "policy", "version": 1, "method": "maxprob", "num_exits": 3, "num_classes": 4,
              "costs": {"unit": "ms", "costs": [1.0, 2.0, 3.0]}, "thresholds": [0.4, 0.45, None], "scorer": {"type": "maxprob"}}
    (tmp_path / "p.json").write_text(json.dumps(policy))
    r = invoke(runner, "export", "fixtures_models.state_models:masked_sequence", "--policy", tmp_path / "p.json", "--input-shape", "5,6",
               "--onnx", "-o", tmp_path / "m.eenet")
    assert r.exit_code == 2, r.output
    lines = _lines(r.output)
    assert len(lines) == 1 and "--onnx needs tensor hidden states; stage 1 of 3 passes a dict" in lines[0], r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]


def test_profile_runs_the_onnx_graphs(onnx_deployed, tmp_path, runner):
    d = onnx_deployed
    r = invoke(runner, "profile", d / "maxprob.eenet", "--backend", "onnx", "--data", d / "small.npz", "--batch-size", "1,8",
               "--repeats", "3", "--warmup", "1", "--json", "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["backend"].startswith("onnxruntime") and doc["batch_sizes"] == [1, 8]
    for c in doc["comparison"]:
        assert c["blocks"] == 3 and c["realised_ms_per_sample"] > 0 and c["full_model_ms_per_sample"] > 0
    assert np.allclose(doc["runs"][0]["exit_fractions"], doc["runs"][1]["exit_fractions"])
    assert all(run["backend"] == doc["backend"] for run in doc["runs"])

    # the per-exit costs too; FLOPs and parameters are counted on the bundle's torch graphs
    # (in MFLOPs, so three timed rounds on a busy machine cannot make the costs non-increasing)
    r = invoke(runner, "profile", d / "maxprob.eenet", "--backend", "onnx", "--unit", "MFLOPs", "--repeats", "3", "--warmup", "1", "--json", "-q")
    assert r.exit_code == 0, r.output
    costs = json.loads(r.stdout)
    assert len(costs["costs"]) == 4 and costs["backend"].startswith("onnxruntime")
    assert len(costs["latency_ms"]["median"]) == 4 and min(costs["latency_ms"]["median"]) > 0
    assert costs["flops"][0] > 0 and costs["flops"] == sorted(costs["flops"]) and costs["params"][-1] > 60_000
