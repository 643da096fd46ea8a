"""Train the exit heads of a Hugging Face text encoder with the paper's multi-exit loss.

    python scripts/train_text_exits.py --model MODEL_DIR --train train.csv \\
        --exits 2,4,6 -o heads.safetensors                       # heads only, encoder frozen
    python scripts/train_text_exits.py --model MODEL_DIR --train train.csv \\
        --exits 2,4,6 --finetune-encoder --epochs 3 -o model.safetensors   # everything

The model is :func:`eenet_cli.runtime.text_model.build_text_model` over the encoder in ``MODEL_DIR`` (a
local Hugging Face folder: config.json, weights and tokenizer; nothing is downloaded):
exits after the ``--exits`` layers, each one linear layer on the masked mean of the
tokens (``--pooling cls``: the first token). The loss is the paper's (§3.1)

    L = sum_k gamma_k * CE_k,   gamma_k = k / (K (K + 1)),  k = 1..K

so later exits weigh more. Training data is a .csv/.tsv/.parquet file with a text column
and an integer label column (``--text-column``, ``--label-column``), tokenised with the
model folder's tokenizer (or ``--tokenizer``), truncated at ``--max-length`` tokens.

* Default (heads only): the encoder is frozen, so every exit's pooled features are
  computed once (inference, texts batched by length) and the K linear heads are trained
  on them with Adam for ``--epochs`` epochs; this is exact (a head sees exactly those
  features) and takes seconds after the one encoder pass. The output holds only the
  heads (keys ``heads.*``, a few kB), loadable with ``eenet ... --weights``: the encoder
  stays the pretrained one.
* ``--finetune-encoder``: the whole model (encoder in train mode, with its dropout) is
  trained with AdamW, ``--encoder-lr`` for the encoder (3e-5 as in the paper's BERT runs)
  and ``--lr`` for the heads. The output is a full state dict (as large as the encoder).

Seeded (``--seed``: heads' initialisation, data order) and, with ``--threads``,
deterministic on one machine (torch.use_deterministic_algorithms). The file's safetensors
metadata records the exits, pooling and classes (so ``eenet`` needs no ``--exits``) and
how it was trained.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def gammas(k: int) -> list[float]:
    """The paper's exit loss weights gamma_k = k / (K (K + 1)) for k = 1..K."""
    return [j / (k * (k + 1)) for j in range(1, k + 1)]


def multi_exit_loss(logits: list, y) -> "torch.Tensor":  # noqa: F821
    import torch.nn.functional as F

    g = gammas(len(logits))
    return sum(w * F.cross_entropy(z, y) for w, z in zip(g, logits))


def length_batches(lengths, batch_size: int) -> list:
    """Index batches of texts of similar length (less padding), in a fixed order."""
    import numpy as np

    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pooled_features(model, texts: list[str], options, batch_size: int = 128, log=print):
    """[N, K, H] pooled hidden states at every exit (frozen encoder, eval mode)."""
    import torch

    from eenet_cli.runtime.text_model import pool

    tok = options.get_tokenizer()
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=options.length)["input_ids"]]
    n, k, h = len(texts), len(model.stages), model.hidden_size
    feats = torch.empty((n, k, h), dtype=torch.float32)
    t0 = time.perf_counter()
    model.eval()
    with torch.inference_mode():
        for b, idx in enumerate(length_batches(lengths, batch_size)):
            x = options.tokenize([texts[i] for i in idx])
            s = x
            for j, stage in enumerate(model.stages):
                s = stage(s)
                feats[torch.as_tensor(idx), j] = pool(s, model.pooling)
    log(f"encoded {n} texts at {k} exits in {time.perf_counter() - t0:.1f}s")
    return feats, lengths


def accuracies(logits: list, y) -> list[float]:
    return [float((z.argmax(1) == y).float().mean()) for z in logits]


def train_heads(model, feats, y, *, epochs: int, lr: float, batch_size: int, weight_decay: float, seed: int, log=print) -> None:
    """Train the K linear heads on cached features [N, K, H] with the multi-exit loss."""
    import torch

    heads = model.heads
    k = len(heads)
    opt = torch.optim.Adam(heads.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs, 1))
    gen = torch.Generator().manual_seed(seed)
    heads.train()
    n = len(y)
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, batch_size):
            b = perm[i : i + batch_size]
            logits = [heads[j].linear(feats[b, j]) for j in range(k)]  # features are already pooled
            loss = multi_exit_loss(logits, y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        sched.step()
        if epoch == epochs - 1 or (epoch + 1) % max(1, epochs // 5) == 0:
            with torch.no_grad():
                acc = accuracies([heads[j].linear(feats[:, j]) for j in range(k)], y)
            log(f"epoch {epoch + 1}/{epochs}: loss {total / n:.4f}, train exit accuracies {[round(a, 3) for a in acc]}")
    heads.eval()


def head_logits(model, feats) -> list:
    import torch

    with torch.no_grad():
        return [model.heads[j].linear(feats[:, j]) for j in range(len(model.heads))]


def finetune(model, texts: list[str], y, options, *, epochs: int, lr: float, encoder_lr: float, batch_size: int,
             weight_decay: float, seed: int, log=print) -> None:
    """Train encoder and heads together (dropout on) with the multi-exit loss."""
    import torch

    head_params = list(model.heads.parameters())
    ids = {id(p) for p in head_params}
    enc_params = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": enc_params, "lr": encoder_lr}, {"params": head_params, "lr": lr}], weight_decay=weight_decay
    )
    steps = epochs * ((len(texts) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / max(steps, 1)))  # linear decay
    gen = torch.Generator().manual_seed(seed)
    model.train()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(len(texts), generator=gen).tolist()
        total = 0.0
        for i in range(0, len(texts), batch_size):
            b = perm[i : i + batch_size]
            x = options.tokenize([texts[j] for j in b])
            loss = multi_exit_loss(model(x), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(b)
        log(f"epoch {epoch + 1}/{epochs}: loss {total / len(texts):.4f} ({time.perf_counter() - t0:.0f}s)")
    model.eval()


def evaluate_texts(model, texts: list[str], y, options, batch_size: int = 128) -> list[float]:
    import torch

    correct = None
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            outs = model(options.tokenize(texts[i : i + batch_size]))
            c = torch.stack([(o.argmax(1) == y[i : i + batch_size]).sum() for o in outs])
            correct = c if correct is None else correct + c
    return [float(v) / len(texts) for v in correct]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="local Hugging Face model folder (config.json, weights, tokenizer)")
    ap.add_argument("--train", required=True, help="training data: .csv/.tsv/.parquet with a text and a label column")
    ap.add_argument("--val", help="optional held-out data of the same form: exit accuracies are reported on it")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--tokenizer", help="tokenizer folder (default: --model)")
    ap.add_argument("--max-length", type=int, default=128, help="truncate texts to this many tokens (default 128)")
    ap.add_argument("--exits", help="1-based encoder layers to put exits after, e.g. 3,6,9,12 (default: 4 evenly spaced)")
    ap.add_argument("--pooling", choices=["mean", "cls"], default="mean")
    ap.add_argument("--num-classes", type=int, help="default: 1 + the largest training label")
    ap.add_argument("--epochs", type=int, default=None, help="default 40 (heads only) or 3 (--finetune-encoder)")
    ap.add_argument("--lr", type=float, default=2e-3, help="heads' learning rate (default 2e-3)")
    ap.add_argument("--encoder-lr", type=float, default=3e-5, help="--finetune-encoder: the encoder's learning rate (default 3e-5)")
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--batch-size", type=int, default=None, help="default 64 (heads only) or 16 (--finetune-encoder)")
    ap.add_argument("--finetune-encoder", action="store_true", help="train the encoder too (the output is then a full state dict)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (set it for bit-for-bit repeatable weights)")
    ap.add_argument("-o", "--output", required=True, help="output .safetensors file")
    ap.add_argument("--report", help="also write the exit accuracies and settings as JSON here")
    a = ap.parse_args(argv)

    import numpy as np
    import torch
    from safetensors.torch import save_file

    from eenet_cli.errors import EenetError
    from eenet_cli.runtime.text_data import TextOptions, read_text_table
    from eenet_cli.runtime.text_model import build_text_model

    try:
        torch.manual_seed(a.seed)
        np.random.seed(a.seed)
        if a.threads:
            torch.set_num_threads(a.threads)
        torch.use_deterministic_algorithms(True)
        epochs = a.epochs if a.epochs is not None else (3 if a.finetune_encoder else 40)
        batch_size = a.batch_size or (16 if a.finetune_encoder else 64)
        texts, labels = read_text_table(a.train, a.text_column, a.label_column)
        num_classes = a.num_classes or int(labels.max()) + 1
        if labels.max() >= num_classes:
            raise SystemExit(f"{a.train}: label {labels.max()} >= --num-classes {num_classes}")
        model = build_text_model(a.model, num_classes, exits=a.exits, pooling=a.pooling, seed=a.seed, max_length=a.max_length)
        options = TextOptions(tokenizer=a.tokenizer, max_length=a.max_length, model=model)
        options.check(a.train)
        y = torch.from_numpy(labels)
        print(f"{a.model}: {model.num_layers} layers, exits after layers {model.exits}, {num_classes} classes, "
              f"{len(texts)} training texts, gamma = {[round(g, 4) for g in gammas(len(model.exits))]}")
        t0 = time.perf_counter()
        val = None
        if a.val:
            vt, vl = read_text_table(a.val, a.text_column, a.label_column)
            val = (vt, torch.from_numpy(vl))
        if a.finetune_encoder:
            finetune(model, texts, y, options, epochs=epochs, lr=a.lr, encoder_lr=a.encoder_lr, batch_size=batch_size,
                     weight_decay=a.weight_decay, seed=a.seed)
            state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
            val_acc = evaluate_texts(model, val[0], val[1], options) if val else None
        else:
            for p in model.parameters():
                p.requires_grad_(False)
            for p in model.heads.parameters():
                p.requires_grad_(True)
            feats, _ = pooled_features(model, texts, options)
            train_heads(model, feats, y, epochs=epochs, lr=a.lr, batch_size=batch_size, weight_decay=a.weight_decay, seed=a.seed)
            state = {k: v.detach().contiguous() for k, v in model.heads_state_dict().items()}
            val_acc = None
            if val:
                vf, _ = pooled_features(model, val[0], options)
                val_acc = accuracies(head_logits(model, vf), val[1])
        seconds = time.perf_counter() - t0
        if val_acc is not None:
            print(f"validation exit accuracies {[round(v, 4) for v in val_acc]}")
        settings = {
            "model": Path(a.model).name, "train": Path(a.train).name, "rows": len(texts), "epochs": epochs, "lr": a.lr,
            "batch_size": batch_size, "weight_decay": a.weight_decay, "seed": a.seed, "max_length": a.max_length,
            "finetune_encoder": a.finetune_encoder, "loss": "sum_k k/(K(K+1)) CE_k",
        }
        if a.finetune_encoder:
            settings["encoder_lr"] = a.encoder_lr
        meta = {**model.weights_metadata(), "eenet.training": json.dumps(settings)}
        out = Path(a.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        save_file(state, str(tmp), metadata=meta)
        tmp.replace(out)
        print(f"wrote {out} ({'full model' if a.finetune_encoder else 'heads only'}, {len(state)} tensors) in {seconds:.1f}s")
        if a.report:
            Path(a.report).write_text(json.dumps({**settings, "exits": model.exits, "val_accuracy": val_acc, "seconds": seconds}, indent=2) + "\n")
    except EenetError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
