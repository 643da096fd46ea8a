"""``profile --policy --batch-size B`` runs the policy at batch size B, whatever batches the
data gives (a DataLoader of 64 included), and says whether the policy's budget was met."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import invoke

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from eenet_cli.runtime.data import DataSource, rebatch  # noqa: E402

T = "fixtures_models.tiny_models"
HERE = "test_profile_policy_batch"
N = 150


def loader64():
    """A DataLoader with its own batch size, 64 (150 samples: 64, 64, 22)."""
    from fixtures_models.tiny_models import arrays
    from torch.utils.data import DataLoader, TensorDataset

    x, y = arrays(N, seed=7)
    return DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=64, shuffle=False)


def _policy(tmp_path: Path, budget_ms: float) -> Path:
    pol = {
        "format": "policy", "version": 1, "method": "maxprob", "num_exits": 3, "num_classes": 3,
        "budget": {"value": budget_ms, "unit": "ms"},
        "costs": {"unit": "ms", "costs": [0.001, 0.002, 0.003]},
        "thresholds": [0.6, 0.5, None],
        "scorer": {"type": "maxprob"},
    }
    path = tmp_path / f"policy_{budget_ms:g}.json"
    path.write_text(json.dumps(pol))
    return path


def _profile(runner, policy: Path, *extra: str):
    r = invoke(runner, "profile", f"{T}:tiny_staged", "--policy", policy, "--data", f"{HERE}:loader64",
               "--repeats", "1", "--warmup", "0", "--threads", "1", *extra)
    assert r.exit_code == 0, r.output
    return r


@pytest.mark.parametrize("given", [["--batch-size", "1"], []], ids=["batch-size-1", "default"])
def test_a_loader_of_64_runs_at_batch_size_1(runner, tmp_path, given):
    r = _profile(runner, _policy(tmp_path, 1e-6), *given, "--json", "-q")
    doc = json.loads(r.stdout)
    assert doc["n"] == N and doc["batch_size"] == 1
    assert doc["realised"]["call_sizes"] == [1] * N  # one runtime call per sample
    assert len(doc["realised"]["per_call_median_ms"]) == N
    assert doc["costs_measured"]["batch_size"] == 1
    assert "measured_median_ms_by_exit" in doc  # the batch-size-1 figures are there


def test_batches_are_joined_to_a_larger_batch_size(runner, tmp_path):
    doc = json.loads(_profile(runner, _policy(tmp_path, 1e-6), "--batch-size", "100", "--json", "-q").stdout)
    assert doc["batch_size"] == 100 and doc["realised"]["call_sizes"] == [100, 50]


def test_a_missed_budget_says_missed_with_the_ratios(runner, tmp_path):
    r = _profile(runner, _policy(tmp_path, 1e-6), "--batch-size", "1", "--json")
    doc = json.loads(r.stdout)
    realised = doc["realised"]["ms_per_sample"]
    assert doc["budget_met"] is False
    assert doc["realised_over_budget"] == pytest.approx(realised / 1e-6)
    assert doc["realised_over_estimate"] == pytest.approx(realised / doc["offline_estimate"]["value_ms"])
    assert doc["realised_over_estimate"] == doc["offline_estimate"]["ratio"]
    table = r.stderr
    assert "MISSED" in table and "policy's budget" in table and "realised / offline estimate" in table


def test_a_met_budget_says_met(runner, tmp_path):
    r = _profile(runner, _policy(tmp_path, 1e6), "--json")
    doc = json.loads(r.stdout)
    assert doc["budget_met"] is True and doc["realised_over_budget"] < 1
    assert "met:" in r.stderr and "MISSED" not in r.stderr


def test_no_budget_or_a_flop_budget_gives_null(runner, tmp_path):
    pol = json.loads(_policy(tmp_path, 1.0).read_text())
    del pol["budget"]
    path = tmp_path / "nobudget.json"
    path.write_text(json.dumps(pol))
    doc = json.loads(_profile(runner, path, "--json", "-q").stdout)
    assert doc["budget_met"] is None and "realised_over_budget" not in doc
    assert doc["realised_over_estimate"] is not None
    pol["budget"] = {"value": 5.0, "unit": "MFLOPs"}
    pol["costs"] = {"unit": "MFLOPs", "costs": [1.0, 2.0, 3.0]}
    path.write_text(json.dumps(pol))
    doc = json.loads(_profile(runner, path, "--json", "-q").stdout)
    assert doc["budget_met"] is None and doc["realised_over_estimate"] is None


# --------------------------------------------------------------------------- rebatch itself


def _collect(batches, size):
    src = rebatch(DataSource("test", batches), size)
    return list(src)


def test_rebatch_splits_and_joins_tensors_in_order():
    x = torch.arange(30, dtype=torch.float32).reshape(10, 3)
    y = torch.arange(10)
    batches = [(x[:4], y[:4]), (x[4:5], y[4:5]), (x[5:], y[5:])]
    for size in (1, 3, 4, 7, 10, 64):
        out = _collect(batches, size)
        sizes = [int(b[1].shape[0]) for b in out]
        full, rest = divmod(10, size)
        assert sizes == [size] * full + ([rest] if rest else [])
        assert torch.equal(torch.cat([b[0] for b in out]), x) and torch.equal(torch.cat([b[1] for b in out]), y)


def test_rebatch_pads_tokenised_dicts_on_the_right_when_joining():
    a = {"input_ids": torch.tensor([[5, 6, 0], [7, 0, 0]]), "attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]])}
    b = {"input_ids": torch.tensor([[8, 9, 10, 11]]), "attention_mask": torch.tensor([[1, 1, 1, 1]])}
    (x, y), = _collect([(a, torch.tensor([0, 1])), (b, torch.tensor([2]))], 3)
    assert x["input_ids"].tolist() == [[5, 6, 0, 0], [7, 0, 0, 0], [8, 9, 10, 11]]
    assert x["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert y.tolist() == [0, 1, 2]
    singles = _collect([(a, torch.tensor([0, 1]))], 1)  # split: each sample keeps its padding
    assert [s[0]["input_ids"].tolist() for s in singles] == [[[5, 6, 0]], [[7, 0, 0]]]


def test_rebatch_refuses_to_join_tensors_of_other_shapes():
    from eenet_cli.errors import InputError

    batches = [(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)), (torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))]
    with pytest.raises(InputError, match="cannot join samples of shapes"):
        _collect(batches, 4)
    assert [b[0].shape[1] for b in _collect(batches, 1)] == [3, 3, 4, 4]  # splitting needs no joining


class _FakeText:
    """Tokenises by word, padding to the longest text of the batch it is given."""

    def tokenize(self, texts):
        ids = [[len(w) for w in t.split()] for t in texts]
        width = max(len(i) for i in ids)
        return {"input_ids": torch.tensor([i + [0] * (width - len(i)) for i in ids]),
                "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])}


def test_rebatch_regroups_texts_before_tokenising_so_padding_is_per_new_batch():
    texts = ["a bb ccc dddd eeeee", "f", "gg hh"]
    src = rebatch(DataSource("test", [(texts, np.array([0, 1, 2]))], text=_FakeText()), 1)
    out = list(src)
    assert [b[0]["input_ids"].shape[1] for b in out] == [5, 1, 2]  # no padding from the loader's batch of 3
    assert [int(b[1][0]) for b in out] == [0, 1, 2]
