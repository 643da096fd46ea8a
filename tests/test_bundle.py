"""``eenet export`` bundles: made from models eenet has never seen (hidden states that are a
dict with an attention-like mask, or a tuple), loaded in a fresh process, they decide as
``eenet apply`` does on the dumped predictions, for every method, at batch sizes 1, 8, 64;
no member is a pickle; a changed member fails its sha256 check; ``profile`` and ``dump``
take a bundle; the runtime re-batches any nesting of tensors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections import namedtuple
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import ROOT, invoke

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from eenet_cli.core.methods import POLICY_METHODS
from eenet_cli.errors import InputError

MODEL = "fixtures_models.state_models:masked_sequence"
BATCH_SIZES = (1, 8, 64)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """Dumped val/test predictions of the dict-state model, a policy per method, and a bundle per method."""
    from fixtures_models.state_models import arrays
    from typer.testing import CliRunner

    from eenet_cli import api

    d = tmp_path_factory.mktemp("deployed")
    runner = CliRunner()
    for split, n, seed in (("val", 240, 1), ("test", 128, 2)):
        x, y = arrays(n, seed)
        np.savez(d / f"{split}.npz", x=x, y=y)
    r = invoke(runner, "dump", MODEL, "--data", d / "val.npz", "--split", "val", "--costs", "1,2,3ms", "-o", d / "preds.parquet", "-q")
    assert r.exit_code == 0, r.output
    r = invoke(runner, "dump", MODEL, "--data", d / "test.npz", "--split", "test", "-o", d / "preds.parquet", "--append", "-q")
    assert r.exit_code == 0, r.output
    preds = api.load_predictions(str(d / "preds.parquet"))
    val = preds.rows(preds.split == "val")
    for method in POLICY_METHODS:
        policy = api.fit_policy(val, "60%", method=method)
        (d / f"{method}.json").write_text(json.dumps(policy))
        r = invoke(runner, "export", MODEL, "--policy", d / f"{method}.json", "--data", d / "test.npz", "-o", d / f"{method}.eenet", "-q")
        assert r.exit_code == 0, r.output
    return d


def test_every_method_decides_as_apply_in_a_fresh_process_at_every_batch_size(deployed, runner):
    d = deployed
    script = f"""
import json, sys, numpy as np, torch
from eenet_cli.runtime import load_bundle
x = torch.from_numpy(np.load({str(d / "test.npz")!r}, allow_pickle=False)["x"])
out = {{}}
for method in {list(POLICY_METHODS)!r}:
    bundle = load_bundle({str(d)!r} + "/" + method + ".eenet")
    for b in {list(BATCH_SIZES)!r}:
        parts = [bundle(x[i:i + b]) for i in range(0, len(x), b)]
        out[f"{{method}}/{{b}}"] = [torch.cat([p[j] for p in parts]).tolist() for j in range(3)]
print(json.dumps(out))
assert "torch._dynamo" not in sys.modules or True
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=300, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout)
    mixed = 0
    for method in POLICY_METHODS:
        r = invoke(runner, "apply", d / f"{method}.json", d / "preds.parquet", "-o", d / f"exits_{method}.parquet", "-q")
        assert r.exit_code == 0, r.output
        t = pq.read_table(d / f"exits_{method}.parquet")
        exits, preds, scores = (t.column(c).to_numpy() for c in ("exit", "prediction", "score"))
        k = 3
        mixed += 0 < (exits < k - 1).sum() < len(exits)  # some exit early, some not
        for b in BATCH_SIZES:
            p_b, e_b, s_b = (np.asarray(v) for v in got[f"{method}/{b}"])
            assert np.array_equal(e_b, exits), (method, b)
            assert np.array_equal(p_b, preds), (method, b)
            early = exits < k - 1
            assert np.allclose(s_b[early], scores[early], rtol=1e-5, atol=1e-6), (method, b)
            assert np.isnan(s_b[~early]).all()
    assert mixed >= len(POLICY_METHODS) - 2, mixed


def test_the_tuple_state_model_exports_and_equals_the_eager_runtime(tmp_path, runner):
    from fixtures_models.state_models import arrays, pair_state

    from eenet_cli.runtime import EarlyExitModel, load_bundle

    x, y = arrays(70, 3)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    policy = {"format": "policy", "version": 1, "method": "maxprob", "num_exits": 3, "num_classes": 4,
              "costs": {"unit": "ms", "costs": [1.0, 2.0, 3.0]}, "thresholds": [0.4, 0.45, None], "scorer": {"type": "maxprob"}}
    (tmp_path / "p.json").write_text(json.dumps(policy))
    r = invoke(runner, "export", "fixtures_models.state_models:pair_state", "--policy", tmp_path / "p.json", "--input-shape", "5,6",
               "-o", tmp_path / "m.eenet", "--json", "-q")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["num_exits"] == 3 and summary["costs"] == {"unit": "ms", "costs": [1.0, 2.0, 3.0]}
    bundle = load_bundle(tmp_path / "m.eenet")
    eager = EarlyExitModel(pair_state(), policy)
    xt = torch.from_numpy(x)
    for b in BATCH_SIZES:
        got = [bundle(xt[i:i + b]) for i in range(0, 70, b)]
        ref = [eager.run(xt[i:i + b]) for i in range(0, 70, b)]
        assert torch.equal(torch.cat([g[1] for g in got]), torch.cat([r_.exits for r_ in ref]))
        assert torch.equal(torch.cat([g[0] for g in got]), torch.cat([r_.preds for r_ in ref]))
    assert len(set(torch.cat([g[1] for g in got]).tolist())) > 1
    assert bundle.manifest["input"] == {"kind": "tensor", "shape": [5, 6], "dtype": "float32"}
    assert bundle.costs["costs"] == [1.0, 2.0, 3.0]


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _rewrite(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _reads_as_pickle(data: bytes) -> bool:
    """Whether ``data`` parses as a pickle stream up to its STOP opcode (without running it)."""
    import pickletools

    try:
        return any(op.name == "STOP" for op, _, _ in pickletools.genops(data))
    except Exception:  # noqa: BLE001 - any parse error: not a pickle
        return False


def test_no_member_is_a_pickle_and_every_member_is_hashed(deployed):
    import hashlib

    from safetensors.torch import load as load_safetensors

    for method in ("eenet", "maxprob"):
        members = _members(deployed / f"{method}.eenet")
        manifest = json.loads(members["manifest.json"])
        assert manifest["format"] == "eenet-bundle" and manifest["version"] == 1
        assert set(manifest["members"]) == set(members) - {"manifest.json"}
        for name, data in members.items():
            assert data[:1] != b"\x80" and data[:2] != b"PK", name  # no pickle stream, no torch.save zip
            if name.endswith(".json"):
                json.loads(data)
            else:
                assert name.endswith(".safetensors") and load_safetensors(data)
            if name != "manifest.json":
                assert manifest["members"][name]["sha256"] == hashlib.sha256(data).hexdigest()
            assert not _reads_as_pickle(data), name
        policy = json.loads(members["policy.json"])
        assert policy["method"] == method and manifest["method"] == method


def test_a_tampered_member_fails_its_sha256_check_with_one_line(deployed, tmp_path):
    bad = tmp_path / "tampered.eenet"
    members = _members(deployed / "maxprob.eenet")
    blob = bytearray(members["parts/head_1.safetensors"])
    blob[-1] ^= 0x01  # one bit of one weight
    members["parts/head_1.safetensors"] = bytes(blob)
    _rewrite(bad, members)
    p = subprocess.run([sys.executable, "-m", "eenet_cli", "dump", str(bad), "--data", str(deployed / "test.npz"), "--split", "test",
                        "-o", str(tmp_path / "x.parquet")], capture_output=True, text=True, env=_env(), timeout=120, check=False)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "parts/head_1.safetensors" in lines[0] and "sha256" in lines[0], p.stderr
    assert not (tmp_path / "x.parquet").exists()


class _Payload:
    def __reduce__(self):
        return (print, ("UNPICKLED: this file ran code",))


def test_a_pickle_member_with_a_matching_hash_is_refused_and_never_runs(deployed, tmp_path, runner):
    import hashlib
    import pickle

    from eenet_cli.runtime import load_bundle

    members = _members(deployed / "maxprob.eenet")
    manifest = json.loads(members["manifest.json"])
    payload = pickle.dumps({"w": _Payload()}, protocol=4)
    members["parts/stage_0.safetensors"] = payload
    manifest["members"]["parts/stage_0.safetensors"] = {"sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}
    members["manifest.json"] = json.dumps(manifest).encode()
    bad = tmp_path / "pickled.eenet"
    _rewrite(bad, members)
    with pytest.raises(InputError, match="member parts/stage_0.safetensors is a pickle"):
        load_bundle(bad)
    r = invoke(runner, "profile", bad, "--repeats", "1")
    assert r.exit_code == 2 and "is a pickle" in r.output and "UNPICKLED" not in r.output

    extra = _members(deployed / "maxprob.eenet")
    extra["data.pkl"] = payload
    _rewrite(tmp_path / "extra.eenet", extra)
    with pytest.raises(InputError, match="member data.pkl is not one of the members an eenet bundle holds"):
        load_bundle(tmp_path / "extra.eenet")


def test_a_graph_that_calls_python_is_refused(deployed, tmp_path):
    import hashlib

    from eenet_cli.runtime import load_bundle

    members = _members(deployed / "maxprob.eenet")
    graph = members["parts/head_0.json"].decode()
    target = json.loads(graph)["graph_module"]["graph"]["nodes"][0]["target"]
    graph = graph.replace(json.dumps(target), json.dumps("torch.load"), 1)  # resolves to a Python function, not an operator
    members["parts/head_0.json"] = graph.encode()
    manifest = json.loads(members["manifest.json"])
    manifest["members"]["parts/head_0.json"] = {"sha256": hashlib.sha256(graph.encode()).hexdigest(), "bytes": len(graph.encode())}
    members["manifest.json"] = json.dumps(manifest).encode()
    _rewrite(tmp_path / "evil.eenet", members)
    with pytest.raises(InputError, match="refused: member parts/head_0.json"):
        load_bundle(tmp_path / "evil.eenet")


def test_export_never_overwrites_an_input(deployed, tmp_path, runner):
    policy = tmp_path / "p.json"
    policy.write_bytes((deployed / "maxprob.json").read_bytes())
    before = policy.read_bytes()
    r = invoke(runner, "export", MODEL, "--policy", policy, "--input-shape", "5,6", "-o", policy)
    assert r.exit_code == 2 and "is also the policy" in r.output
    assert policy.read_bytes() == before


def test_profile_and_dump_take_a_bundle(deployed, tmp_path, runner):
    bundle = deployed / "maxprob.eenet"
    r = invoke(runner, "dump", bundle, "--data", deployed / "test.npz", "--split", "test", "-o", tmp_path / "p.parquet", "-q")
    assert r.exit_code == 0, r.output
    from eenet_cli import api

    mine = api.load_predictions(str(tmp_path / "p.parquet"))
    ref = api.load_predictions(str(deployed / "preds.parquet"))
    ref = ref.rows(ref.split == "test")
    assert np.allclose(mine.scores, ref.scores, atol=1e-5)

    r = invoke(runner, "profile", bundle, "--repeats", "3", "--warmup", "1", "-o", tmp_path / "costs.json", "-q")
    assert r.exit_code == 0, r.output
    assert len(json.loads((tmp_path / "costs.json").read_text())["costs"]) == 3

    # --data alone runs the bundled policy; a list of batch sizes compares them
    r = invoke(runner, "profile", bundle, "--data", deployed / "test.npz", "--batch-size", "1,8", "--repeats", "3", "--warmup", "1",
               "--json", "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["batch_sizes"] == [1, 8] and [c["batch_size"] for c in doc["comparison"]] == [1, 8]
    for c in doc["comparison"]:
        assert c["blocks"] == 3 and c["realised_ms_per_sample"] > 0 and c["full_model_ms_per_sample"] > 0
        assert c["speedup"] == pytest.approx(c["full_model_ms_per_sample"] / c["realised_ms_per_sample"], rel=0.5)
        assert c["offline_estimate_ms_per_sample"] > 0 and isinstance(c["noisy"], bool) and c["verdict"]
        assert len(c["per_block"]["realised_ms_per_sample"]) == 3
    assert doc["runs"][0]["policy"].endswith("(bundled policy)")
    fractions = [r_["exit_fractions"] for r_ in doc["runs"]]
    assert np.allclose(fractions[0], fractions[1])  # same decisions at both batch sizes

    r = invoke(runner, "profile", "digits-cnn", "--batch-size", "1,8", "--repeats", "1")
    assert r.exit_code == 2 and "several batch sizes need a policy run" in r.output


def test_gather_rows_keeps_the_rows_that_go_on_in_every_tensor():
    from eenet_cli.runtime.early_exit import gather_rows

    Pair = namedtuple("Pair", "h mask")
    state = {"h": torch.arange(12.0).reshape(4, 3), "pair": Pair(torch.arange(4), torch.ones(4, 2)), "scale": torch.tensor(2.0),
             "table": torch.zeros(5, 2), "n": 7}
    out = gather_rows(state, torch.tensor([3, 1]), 4)
    assert out["h"].tolist() == [[9.0, 10.0, 11.0], [3.0, 4.0, 5.0]]
    assert isinstance(out["pair"], Pair) and out["pair"].h.tolist() == [3, 1] and out["pair"].mask.shape == (2, 2)
    assert out["scale"].item() == 2.0 and out["table"].shape == (5, 2) and out["n"] == 7  # no batch axis: kept


def test_the_runtime_takes_a_dict_input_and_keeps_batch_order():
    """A dict batch goes to the first stage as it is; rows come back in their places."""
    from torch import nn

    from eenet_cli.runtime import EarlyExitModel

    class DictFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            return (self.lin(x["a"]) * x["mask"], x["mask"])

    class Later(nn.Module):
        def forward(self, s):
            return (s[0] * 2, s[1])

    class Head(nn.Module):
        def forward(self, s):
            return s[0]

    model = nn.Module()
    model.stages = nn.ModuleList([DictFirst(), Later()])
    model.heads = nn.ModuleList([Head(), Head()])
    torch.manual_seed(0)
    x = {"a": torch.randn(9, 3), "mask": torch.ones(9, 1)}
    with torch.no_grad():
        maxp = torch.softmax(model.stages[0].lin(x["a"]), dim=1).max(dim=1).values
    policy = {"num_exits": 2, "num_classes": 3, "thresholds": [float(maxp.median()) + 1e-6, None], "scorer": {"type": "maxprob"}}
    r = EarlyExitModel(model, policy).run(x)
    one = [EarlyExitModel(model, policy).run({k: v[i:i + 1] for k, v in x.items()}) for i in range(9)]
    assert r.exits.tolist() == [int(o.exits) for o in one] and r.preds.tolist() == [int(o.preds) for o in one]
    assert 0 < int(r.exits.sum()) < 9
