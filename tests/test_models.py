"""Built-in models, the built-in digits data, and loading models/weights/data from specs (docs/spec.md §5)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLE, invoke

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from eenet_cli.core.splits import stratified_split  # noqa: E402
from eenet_cli.errors import InputError  # noqa: E402
from eenet_cli.runtime import models  # noqa: E402
from eenet_cli.runtime.data import load_data  # noqa: E402
from eenet_cli.runtime.load import load_model, parse_model_args  # noqa: E402
from eenet_cli.runtime.weights import read_state_dict  # noqa: E402

T = "fixtures_models.tiny_models"


# --------------------------------------------------------------------------- built-in models


@pytest.mark.parametrize(
    "name, shape, k",
    [("digits-cnn", (1, 8, 8), 4), ("resnet56", (3, 32, 32), 3), ("mlp", (64,), 3)],
)
def test_builtin_models_are_staged(name, shape, k):
    m = load_model(name)
    assert m.staged and m.num_exits == k and m.input_shape == shape
    x = torch.randn(2, *shape)
    with torch.no_grad():
        outs = m.module(x)
        h, staged = x, []
        for s, hd in zip(m.module.stages, m.module.heads):
            h = s(h)
            staged.append(hd(h))
    assert [tuple(o.shape) for o in outs] == [(2, 10)] * k
    for a, b in zip(outs, staged):
        assert torch.equal(a, b)


def test_resnet56_has_56_layers_and_paper_exits():
    m = models.ResNet56()
    convs = [mod for s in m.stages for mod in s.modules() if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (3, 3)]
    assert len(convs) == 1 + 2 * 27  # stem + 27 blocks of two 3x3 convs (+ the final linear = 56)
    assert [len(s) for s in m.stages] == [3 + 9, 9, 9]
    head0_convs = [mod for mod in m.heads[0].modules() if isinstance(mod, torch.nn.Conv2d)]
    assert len(head0_convs) == 3  # three 3x3 conv layers + linear, as in the paper


def test_model_args_parse_types():
    assert parse_model_args(["a=3", "b=0.5", "c=true", "d=relu", "e=False"]) == {"a": 3, "b": 0.5, "c": True, "d": "relu", "e": False}
    with pytest.raises(InputError, match="key=value"):
        parse_model_args(["novalue"])
    m = load_model("mlp", parse_model_args(["in_features=5", "num_exits=2", "num_classes=4"]))
    assert m.num_exits == 2 and m.input_shape == (5,)


# --------------------------------------------------------------------------- digits data + sample data


def test_digits_split_is_stratified_seeded_and_disjoint():
    from sklearn.datasets import load_digits

    y_all = load_digits().target
    parts = stratified_split(y_all, models.DIGITS_SPLIT_SIZES, 0)
    assert {k: len(v) for k, v in parts.items()} == {"train": 897, "val": 450, "test": 450}
    allidx = np.concatenate(list(parts.values()))
    assert np.array_equal(np.sort(allidx), np.arange(len(y_all)))
    for name, idx in parts.items():  # every class in proportion (within one sample)
        share = np.bincount(y_all[idx], minlength=10) / len(idx)
        assert np.abs(share - np.bincount(y_all, minlength=10) / len(y_all)).max() < 0.01
    again = stratified_split(y_all, models.DIGITS_SPLIT_SIZES, 0)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    x, y = models.load_digits_split("val")
    assert x.shape == (450, 1, 8, 8) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1


def test_sample_data_comes_from_the_shipped_weights():
    """The shipped logits are exactly what the shipped weights give on the built-in split."""
    from eenet_cli.artifacts.predictions import read_predictions

    p = read_predictions(SAMPLE / "digits.parquet")
    m = load_model("digits-cnn", weights=str(SAMPLE / "digits_model.safetensors"))
    assert p.num_exits == 4 and p.num_classes == 10 and p.meta["costs"]["unit"] == "ms"
    costs = p.meta["costs"]["costs"]
    assert all(b > a for a, b in zip(costs, costs[1:]))
    for split in ("val", "test"):
        x, y = models.load_digits_split(split)
        with torch.no_grad():
            got = torch.stack(m.module(torch.from_numpy(x)), 1).numpy()
        rows = p.split == split
        assert np.array_equal(p.labels[rows], y)
        assert np.abs(p.scores[rows] - got).max() <= 1e-5
        acc = (got.argmax(-1) == y[:, None]).mean(0)
        assert acc[0] < acc[1] < acc[3] and acc[3] > 0.95 and acc[0] < 0.75  # early exits clearly weaker


# --------------------------------------------------------------------------- specs: library level


def test_import_string_factory_with_args():
    m = load_model(f"{T}:tiny_staged", {"num_exits": 2, "hidden": 4})
    assert m.staged and m.num_exits == 2
    assert load_model(f"{T}:tiny_all_exits").kind == "all-exits"


@pytest.mark.parametrize(
    "spec, args, message",
    [
        (f"{T}:nope", {}, "has no attribute 'nope'"),
        ("fixtures_models.no_such_module:x", {}, "no module named 'fixtures_models.no_such_module'"),
        ("no_such_pkg_xyz.mod:x", {}, "no module named 'no_such_pkg_xyz'"),
        (f"{T}:not_callable", {}, "is not callable"),
        (f"{T}:returns_int", {}, "expected a torch.nn.Module"),
        (f"{T}:needs_arg", {}, "check --model-arg"),
        (f"{T}:tiny_staged", {"bogus": 1}, "check --model-arg"),
        (f"{T}:raises", {}, "boom from the factory"),
        ("not-a-model", {}, "unknown model"),
    ],
)
def test_bad_model_specs(spec, args, message):
    with pytest.raises(InputError, match=message) as e:
        load_model(spec, args)
    assert "\n" not in str(e.value)


def test_weights_state_dict_checkpoint_and_safetensors(tmp_path):
    from fixtures_models.tiny_models import tiny_staged
    from safetensors.torch import save_file

    src = tiny_staged(seed=3)
    torch.save(src.state_dict(), tmp_path / "sd.pt")
    torch.save({"state_dict": src.state_dict(), "epoch": 7}, tmp_path / "ckpt.pth")
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    x = torch.randn(3, 6)
    for name in ("sd.pt", "ckpt.pth", "w.safetensors"):
        m = load_model(f"{T}:tiny_staged", weights=str(tmp_path / name))
        with torch.no_grad():
            assert torch.equal(m.module(x)[-1], src(x)[-1])


def test_weights_refuse_pickles_and_other_models(tmp_path):
    from fixtures_models.tiny_models import tiny_staged

    torch.save(tiny_staged(), tmp_path / "full.pt")  # a pickled nn.Module, not a state dict
    with pytest.raises(InputError, match="pickled Python objects"):
        read_state_dict(str(tmp_path / "full.pt"))
    torch.save(tiny_staged(hidden=8).state_dict(), tmp_path / "other.pt")
    with pytest.raises(InputError, match="shape mismatch"):
        load_model(f"{T}:tiny_staged", weights=str(tmp_path / "other.pt"))
    torch.save(tiny_staged(num_exits=2).state_dict(), tmp_path / "fewer.pt")
    with pytest.raises(InputError, match="missing key"):
        load_model(f"{T}:tiny_staged", weights=str(tmp_path / "fewer.pt"))
    torch.save(tiny_staged(num_exits=4).state_dict(), tmp_path / "more.pt")
    with pytest.raises(InputError, match="unexpected key"):
        load_model(f"{T}:tiny_staged", weights=str(tmp_path / "more.pt"))
    (tmp_path / "junk.safetensors").write_bytes(b"nope")
    with pytest.raises(InputError, match="not a readable safetensors"):
        read_state_dict(str(tmp_path / "junk.safetensors"))


def test_data_specs(tmp_path):
    from fixtures_models.tiny_models import arrays

    x, y = arrays(10)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, tmp_path / "d.pt")
    for spec in (str(tmp_path / "d.npz"), str(tmp_path / "d.pt"), f"{T}:tiny_batches", f"{T}:tiny_loader"):
        src = load_data(spec, batch_size=4)
        got_y = torch.cat([b[1] for b in src]).numpy()
        assert got_y.shape[0] in (10, 40)
    assert sum(len(b[1]) for b in load_data("digits:test")) == 450
    assert load_data("digits", split_hint="val").num_samples == 450
    np.savez(tmp_path / "obj.npz", x=np.array([{}, {}], dtype=object), y=np.zeros(2))
    with pytest.raises(InputError, match="pickled object arrays"):
        load_data(str(tmp_path / "obj.npz"))
    torch.save({"x": [object()], "y": 1}, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="pickled Python objects"):
        load_data(str(tmp_path / "bad.pt"))
    np.savez(tmp_path / "nox.npz", a=x)
    with pytest.raises(InputError, match="expected arrays 'x' and 'y'"):
        load_data(str(tmp_path / "nox.npz"))
    with pytest.raises(InputError, match="needs a split"):
        load_data("digits")
    with pytest.raises(InputError, match="no such file"):
        load_data(str(tmp_path / "missing.npz"))
    with pytest.raises(InputError, match="expected an \\(x, y\\) pair"):
        list(load_data(f"{T}:not_pairs"))


def test_exported_pt2_model_dumps(tmp_path, runner):
    from fixtures_models.tiny_models import arrays, tiny_all_exits

    m = tiny_all_exits()
    ep = torch.export.export(m, (torch.zeros(2, 6),), dynamic_shapes=({0: torch.export.Dim("b")},))
    torch.export.save(ep, str(tmp_path / "m.pt2"))
    x, y = arrays(9)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    r = invoke(runner, "dump", tmp_path / "m.pt2", "--data", tmp_path / "d.npz", "-o", tmp_path / "p.parquet", "-q")
    assert r.exit_code == 0, r.output
    from eenet_cli.artifacts.predictions import read_predictions

    p = read_predictions(tmp_path / "p.parquet")
    with torch.no_grad():
        want = torch.stack(m(torch.from_numpy(x)), 1).numpy()
    assert np.abs(p.scores - want).max() <= 1e-5
    r = invoke(runner, "profile", tmp_path / "m.pt2", "--input-shape", "6")
    assert r.exit_code == 2 and "staged model" in r.stderr
    (tmp_path / "bad.pt2").write_bytes(b"garbage")
    r = invoke(runner, "dump", tmp_path / "bad.pt2", "--data", tmp_path / "d.npz", "-o", tmp_path / "q.parquet")
    assert r.exit_code == 2 and "not a torch.export file" in r.stderr
    assert not (tmp_path / "q.parquet").exists()
