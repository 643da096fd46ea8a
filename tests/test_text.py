"""Hugging Face text encoders as staged multi-exit models (eenet_cli.runtime.text_model) and text data in
``eenet profile`` / ``eenet dump``.

Everything runs offline on a tiny randomly initialised BERT (hidden 32, 4 layers) and a
tokenizer built from a vocabulary file written here; nothing is downloaded. transformers
is part of the ``dev`` extra the suite runs with, so it is a plain import: a missing or
broken install fails these tests instead of skipping them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import transformers
from conftest import ROOT, invoke

from eenet_cli.artifacts.predictions import read_predictions
from eenet_cli.errors import InputError
from eenet_cli.runtime.text_data import TextOptions, read_text_table
from eenet_cli.runtime.text_model import (
    build_text_model,
    evenly_spaced_exits,
    pack_inputs,
    parse_exits,
)

WORDS = "the a movie film good bad great awful fun boring love hate plot actor story not very dull funny sad".split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
C = 3


def tiny_config(**kw):
    return transformers.BertConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, vocab_size=len(VOCAB),
        max_position_embeddings=64, **kw
    )


def make_texts(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 14)))) for _ in range(n)]
    return texts, rng.integers(0, C, size=n).astype(np.int64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny BERT folder (config, weights, tokenizer) and text data as CSV and Parquet."""
    import pandas as pd

    d = tmp_path_factory.mktemp("text")
    model_dir = d / "tiny-bert"
    model_dir.mkdir()
    (model_dir / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tok = transformers.BertTokenizerFast(vocab_file=str(model_dir / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(str(model_dir))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformers.BertModel(tiny_config()).save_pretrained(str(model_dir))
    texts, labels = make_texts(37)
    df = pd.DataFrame({"text": texts, "label": labels})
    df.to_csv(d / "data.csv", index=False)
    df.rename(columns={"text": "review", "label": "stars"}).to_parquet(d / "data.parquet")
    return {"dir": d, "model": model_dir, "csv": d / "data.csv", "parquet": d / "data.parquet", "texts": texts, "labels": labels, "tok": tok}


def direct_scores(model, tok, texts, batch_size, max_length=128) -> np.ndarray:
    """What the wrapper itself gives, batch by batch as dump tokenises (padding to the longest)."""
    out = []
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            x = tok(texts[s : s + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            out.append(torch.stack(model({"input_ids": x["input_ids"], "attention_mask": x["attention_mask"]}), 1).numpy())
    return np.concatenate(out)


def one_error_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eenet: error: "), r.stderr
    assert "Traceback" not in r.output
    return lines[0]


# --------------------------------------------------------------------------- the wrapper


def test_config_becomes_staged_model_in_one_call():
    m = build_text_model(tiny_config(), num_classes=C)
    assert m.exits == [1, 2, 3, 4] and len(m.stages) == 4 and len(m.heads) == 4
    assert not m.training
    from eenet_cli.runtime.load import staged_parts

    assert staged_parts(m, "tiny") == 4
    # same call, same model (seeded, without touching the global random state)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    m2 = build_text_model(tiny_config(), num_classes=C)
    assert torch.equal(torch.rand(1), before)
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    m3 = build_text_model(tiny_config(), num_classes=C, exits="2,4", pooling="cls")
    assert m3.exits == [2, 4] and len(m3.stages[0].layers) == 2 and m3.heads[0].pooling == "cls"


@pytest.mark.parametrize("arch", ["Bert", "Roberta", "Electra"])
def test_stages_equal_the_encoder_with_padding(arch):
    """Running the stages reproduces the Hugging Face encoder's hidden states (mask carried along)."""
    kw = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, vocab_size=len(VOCAB),
              max_position_embeddings=64)
    if arch == "Electra":
        kw["embedding_size"] = 16  # projected up to the hidden size inside stage 0
    torch.manual_seed(0)
    enc = getattr(transformers, f"{arch}Model")(getattr(transformers, f"{arch}Config")(**kw)).eval()
    m = build_text_model(enc, num_classes=C, exits=[1, 3, 4])
    ids = torch.randint(5, len(VOCAB), (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    with torch.no_grad():
        ref = enc(input_ids=ids, attention_mask=mask).last_hidden_state
        h = pack_inputs({"input_ids": ids, "attention_mask": mask})
        for stage in m.stages:
            h = stage(h)
        assert h.shape == (3, 9, 33)
        diff = ((h[..., :-1] - ref) * mask[..., None]).abs().max()
        assert float(diff) <= 1e-5
        assert torch.equal(h[..., -1], mask.float())
        # every accepted input form gives the same exits
        outs = [torch.stack(m(x), 1) for x in (
            {"input_ids": ids, "attention_mask": mask}, (ids, mask), pack_inputs((ids, mask)), pack_inputs((ids, mask)).float(),
        )]
        for o in outs[1:]:
            assert torch.allclose(o, outs[0], atol=1e-6)
        # padding does not change a text's scores (masked mean pooling)
        short = torch.stack(m({"input_ids": ids[2:, :2], "attention_mask": mask[2:, :2]}), 1)
        assert torch.allclose(short, outs[0][2:], atol=1e-5)


def test_exit_layers():
    assert evenly_spaced_exits(12, 4) == [3, 6, 9, 12]
    assert parse_exits(None, 6) == [2, 3, 5, 6] and parse_exits(None, 6, 3) == [2, 4, 6]
    assert parse_exits("3, 6,9", 12) == [3, 6, 9] and parse_exits(5, 12) == [5] and parse_exits((1, 2), 4) == [1, 2]
    for bad in ("3,3", "0,2", "2,13", "a,b", [2.5], True):
        with pytest.raises(InputError):
            parse_exits(bad, 12)
    with pytest.raises(InputError, match="num_exits=2 but 3"):
        parse_exits("1,2,3", 12, 2)


def test_heads_only_weights_round_trip(tmp_path, tiny):
    from safetensors.torch import save_file

    m1 = build_text_model(tiny["model"], num_classes=C, exits="2,4", seed=1)
    f = tmp_path / "heads.safetensors"
    save_file(m1.heads_state_dict(), str(f), metadata=m1.weights_metadata())
    # exits, classes and pooling come from the file's metadata
    m2 = build_text_model(tiny["model"], weights=str(f))
    assert m2.exits == [2, 4] and m2.num_classes == C
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    with pytest.raises(InputError, match="2 exit heads but the model has 4 exits.*--exits 2,4"):
        build_text_model(tiny["model"], num_classes=C, exits="1,2,3,4", weights=str(f))


# --------------------------------------------------------------------------- the command line


def test_profile_text_model(runner, tmp_path, tiny):
    out = tmp_path / "costs.json"
    r = invoke(runner, "profile", tiny["model"], "--model-arg", "num_classes=3", "--input-shape", "12", "--unit", "flops",
               "--repeats", "3", "--warmup", "1", "--threads", "1", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["format"] == "costs" and len(doc["costs"]) == 4 and doc["input_shape"] == [12]
    steps = np.diff(doc["flops"])
    assert all(s > 0 for s in steps) and len(set(steps.tolist())) == 1  # one identical layer per later stage
    assert doc["params"][-1] == sum(p.numel() for p in build_text_model(tiny["model"], num_classes=C).parameters())
    # a text model needs the token count
    r = invoke(runner, "profile", tiny["model"], "--model-arg", "num_classes=3", "-o", tmp_path / "c.json")
    assert r.exit_code == 2 and "number of tokens" in one_error_line(r)
    r = invoke(runner, "profile", tiny["model"], "--model-arg", "num_classes=3", "--input-shape", "3,32,32", "-o", tmp_path / "c.json")
    assert r.exit_code == 2 and "number of tokens" in one_error_line(r)


def test_a_text_bundle_from_packed_token_ids_profiles_with_its_own_inputs(runner, tmp_path, tiny):
    """Packed token ids [N, 2, T] in an .npz reach the stages as the data loader gives them
    (float32), so the bundle's stages are exported for float input; ``profile BUNDLE``
    must make its random token ids in that dtype (it used to hand the graphs int64 ids
    and fail with a dtype mismatch)."""
    rng = np.random.default_rng(0)
    n, t = 40, 12
    ids = rng.integers(5, len(VOCAB), (n, t))
    mask = (np.arange(t)[None, :] < rng.integers(4, t + 1, n)[:, None]).astype(np.int64)
    np.savez(tmp_path / "d.npz", x=np.stack([ids * mask, mask], axis=1).astype(np.int64), y=rng.integers(0, C, n))
    model = [str(tiny["model"]), "--model-arg", "num_classes=3"]
    r = invoke(runner, "dump", *model, "--data", tmp_path / "d.npz", "--split", "val", "--costs", "1,2,3,4ms",
               "-o", tmp_path / "p.parquet", "-q")
    assert r.exit_code == 0, r.output
    r = invoke(runner, "fit", tmp_path / "p.parquet", "--budget", "50%", "--method", "maxprob", "-o", tmp_path / "policy.json", "-q")
    assert r.exit_code == 0, r.output
    r = invoke(runner, "export", *model, "--policy", tmp_path / "policy.json", "--data", tmp_path / "d.npz",
               "-o", tmp_path / "m.eenet", "-q")
    assert r.exit_code == 0, r.output
    r = invoke(runner, "profile", tmp_path / "m.eenet", "--unit", "flops", "--repeats", "2", "--warmup", "1", "--threads", "1",
               "-o", tmp_path / "costs.json", "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "costs.json").read_text())
    assert doc["input_shape"] == [2, t] and len(doc["costs"]) == 4 and all(np.diff(doc["flops"]) > 0)


def test_dump_csv_equals_the_wrapper(runner, tmp_path, tiny):
    out = tmp_path / "preds.parquet"
    r = invoke(runner, "dump", tiny["model"], "--model-arg", "num_classes=3", "--exits", "1,3,4", "--data", tiny["csv"],
               "--text-column", "text", "--label-column", "label", "--split", "val", "--batch-size", "8", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    p = read_predictions(out)
    assert p.num_exits == 3 and p.num_classes == C and len(p.labels) == 37
    np.testing.assert_array_equal(p.labels, tiny["labels"])
    m = build_text_model(tiny["model"], num_classes=C, exits="1,3,4")
    want = direct_scores(m, tiny["tok"], tiny["texts"], 8)
    assert np.abs(p.scores - want).max() <= 1e-5


def test_dump_parquet_with_import_string_factory_and_heads(runner, tmp_path, tiny):
    from safetensors.torch import save_file

    m = build_text_model(tiny["model"], num_classes=C, seed=7)
    heads = tmp_path / "heads.safetensors"
    save_file(m.heads_state_dict(), str(heads), metadata=m.weights_metadata())
    out = tmp_path / "preds.parquet"
    r = invoke(runner, "dump", "eenet_cli.runtime.text_model:text_model", "--model-arg", f"path={tiny['model']}", "--model-arg", "num_classes=3",
               "--weights", heads, "--data", tiny["parquet"], "--text-column", "review", "--label-column", "stars",
               "--tokenizer", tiny["model"], "--max-length", "6", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    p = read_predictions(out)
    want = direct_scores(m, tiny["tok"], tiny["texts"], 256, max_length=6)
    assert np.abs(p.scores - want).max() <= 1e-5


def test_dump_import_string_of_texts_and_of_dicts(runner, tmp_path, tiny, monkeypatch):
    mod = tmp_path / "text_batches_mod.py"
    mod.write_text(textwrap.dedent(f"""
        import torch
        TEXTS = {tiny['texts']!r}
        LABELS = {tiny['labels'].tolist()!r}

        def texts():
            return [(TEXTS[s:s + 10], torch.tensor(LABELS[s:s + 10])) for s in range(0, len(TEXTS), 10)]

        def dicts():
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained({str(tiny['model'])!r}, local_files_only=True)
            for s in range(0, len(TEXTS), 10):
                enc = tok(TEXTS[s:s + 10], padding=True, return_tensors="pt")
                yield dict(enc), torch.tensor(LABELS[s:s + 10])
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    m = build_text_model(tiny["model"], num_classes=C)
    want = direct_scores(m, tiny["tok"], tiny["texts"], 10)
    for fn in ("texts", "dicts"):
        out = tmp_path / f"{fn}.parquet"
        r = invoke(runner, "dump", tiny["model"], "--model-arg", "num_classes=3", "--data", f"text_batches_mod:{fn}", "-o", out, "-q")
        assert r.exit_code == 0, r.output
        assert np.abs(read_predictions(out).scores - want).max() <= 1e-5, fn


def test_runtime_on_text_batches(tiny):
    """EarlyExitModel runs a text model on packed input, in batches and one by one, alike."""
    from eenet_cli.runtime import EarlyExitModel

    m = build_text_model(tiny["model"], num_classes=C)
    enc = tiny["tok"](tiny["texts"][:12], padding=True, return_tensors="pt")
    x = m.eenet_pack_inputs(dict(enc))
    with torch.no_grad():
        full = torch.stack(m(x), 1)
    p = torch.softmax(full, -1).amax(-1)
    srt = p[:, :-1].sort(0).values  # thresholds halfway between two samples' scores: no sample sits on one
    thresholds = [float(v) for v in (srt[5] + srt[6]) / 2] + [None]
    ee = EarlyExitModel(m, {"num_exits": 4, "num_classes": C, "thresholds": thresholds, "scorer": {"type": "maxprob"}})
    r = ee.run(x)
    assert len(set(r.exits.tolist())) > 1  # the thresholds stop some samples early and not others
    for i in range(12):
        one = ee.run(x[i : i + 1])
        assert int(one.exits[0]) == int(r.exits[i]) and int(one.preds[0]) == int(r.preds[i])
        assert torch.allclose(r.logits[i], full[i, int(r.exits[i])], atol=1e-5)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--text-column", "body"], "no column 'body' (columns: text, label); choose one with --text-column"),
        (["--label-column", "stars"], "no column 'stars'"),
        (["@words"], "row 0: label 'pos' is not an integer class id"),
        (["@halves"], "row 1: label 0.5 is not an integer class id"),
        (["@missing_text"], "row 1: the text is missing"),
        (["@big_label"], "label 7 is outside [0, 3)"),
        (["@no_tokenizer"], "text data needs a tokenizer"),
        (["@npz_columns"], "apply to .csv, .tsv or .parquet data only"),
        (["@no_classes"], "give the number of classes"),
    ],
)
def test_bad_text_inputs_exit_2_with_one_line(runner, tmp_path, tiny, monkeypatch, args, message):
    import pandas as pd

    data = tiny["csv"]
    model = [str(tiny["model"]), "--model-arg", "num_classes=3"]
    extra = list(args)
    if args == ["@words"]:
        data = tmp_path / "words.csv"
        pd.DataFrame({"text": ["good", "bad"], "label": ["pos", "neg"]}).to_csv(data, index=False)
        extra = []
    elif args == ["@halves"]:
        data = tmp_path / "halves.parquet"
        pd.DataFrame({"text": ["good", "bad"], "label": [1.0, 0.5]}).to_parquet(data)
        extra = []
    elif args == ["@missing_text"]:
        data = tmp_path / "missing.parquet"
        pd.DataFrame({"text": ["good", None], "label": [1, 0]}).to_parquet(data)
        extra = []
    elif args == ["@big_label"]:
        data = tmp_path / "big.csv"
        pd.DataFrame({"text": ["good", "bad"], "label": [1, 7]}).to_csv(data, index=False)
        extra = []
    elif args == ["@no_tokenizer"]:
        # a model built from a config has no folder, so no tokenizer to fall back on
        (tmp_path / "cfg_model_mod.py").write_text(
            "from transformers import BertConfig\nfrom eenet_cli.runtime.text_model import build_text_model\n"
            "def build():\n    return build_text_model(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,"
            " intermediate_size=64, vocab_size=30), num_classes=3)\n"
        )
        monkeypatch.syspath_prepend(str(tmp_path))
        model, extra = ["cfg_model_mod:build"], []
    elif args == ["@npz_columns"]:
        data = tmp_path / "d.npz"
        np.savez(data, x=np.zeros((2, 2, 4), dtype=np.int64), y=np.zeros(2, dtype=np.int64))
        extra = ["--text-column", "text"]
    elif args == ["@no_classes"]:
        model = [str(tiny["model"])]
        extra = []
    out = tmp_path / "out.parquet"
    r = invoke(runner, "dump", *model, "--data", data, *extra, "-o", out)
    assert r.exit_code == 2, r.output
    assert message in one_error_line(r)
    assert not out.exists()


def test_read_text_table_accepts_whole_float_labels_and_tsv(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text("label\ttext\n1.0\tgood movie\n0\tNA\n")
    texts, labels = read_text_table(p)
    assert texts == ["good movie", "NA"] and labels.tolist() == [1, 0] and labels.dtype == np.int64
    with pytest.raises(InputError, match="no such file"):
        read_text_table(tmp_path / "none.csv")
    opts = TextOptions()
    with pytest.raises(InputError, match="needs a tokenizer"):
        opts.check("x.csv")


def test_help_and_import_do_not_import_transformers():
    code = (
        "import sys, eenet_cli.cli as c, eenet_cli.runtime.text_model\nsys.argv=['eenet','dump','--help']\ntry:\n c.main()\n"
        "except SystemExit: pass\nprint('transformers' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--text-column" in r.stdout and r.stdout.strip().splitlines()[-1] == "False"
