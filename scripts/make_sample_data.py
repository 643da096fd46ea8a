"""Regenerate the shipped sample data (sample_data/digits*.{safetensors,json,parquet}).

    python scripts/make_sample_data.py            # from the repository root

1. Train the built-in ``digits-cnn`` (4 exits) on the train part of the built-in ``digits``
   dataset (scikit-learn's bundled 8x8 digits, split 897/450/450, stratified, seed 0) with
   the paper's multi-exit loss sum_k gamma_k CE_k, gamma_k = k / (K (K + 1)); seeded and
   single-threaded, so the weights are the same on every run on the same machine.
2. Save the weights to ``sample_data/digits_model.safetensors``.
3. ``eenet profile`` the model at batch size 1 -> ``sample_data/digits_costs.json``.
4. ``eenet dump`` the val split, then ``--append`` the test split ->
   ``sample_data/digits.parquet`` (costs embedded in its ``eenet.costs`` metadata).

Steps 3 and 4 run the real command line, so the shipped files come from the tool itself.
Latencies depend on the machine: costs measured elsewhere differ, logits do not.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

EPOCHS = 30
BATCH = 64
LR = 3e-3
SEED = 0


def train(out: Path, epochs: int = EPOCHS, seed: int = SEED) -> None:
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from torch import nn

    from eenet_cli.runtime.models import DigitsCNN, load_digits_split

    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    x_train, y_train = load_digits_split("train")
    x_val, y_val = load_digits_split("val")
    model = DigitsCNN()
    k = len(model.heads)
    gammas = [j / (k * (k + 1)) for j in range(1, k + 1)]  # paper §3.1, j is 1-based
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    x = torch.from_numpy(x_train)
    y = torch.from_numpy(y_train)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), BATCH):
            b = perm[i : i + BATCH]
            outs = model(x[b])
            loss = sum(g * nn.functional.cross_entropy(o, y[b]) for g, o in zip(gammas, outs))
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        outs = model(torch.from_numpy(x_val))
    accs = [float((o.argmax(1).numpy() == y_val).mean()) for o in outs]
    print(f"trained {epochs} epochs in {time.perf_counter() - t0:.1f}s; val exit accuracies {[round(a, 3) for a in accs]}")
    state = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    save_file(state, str(out), metadata={"model": "digits-cnn (scripts/make_sample_data.py)"})


def eenet(*args: str) -> None:
    cmd = [sys.executable, "-m", "eenet_cli", *args]
    print("$ eenet " + " ".join(args))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "sample_data"), help="output folder (default: sample_data/)")
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--repeats", type=int, default=1000, help="profile repeats per exit")
    ap.add_argument("--skip-train", action="store_true", help="reuse the existing weights")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "digits_model.safetensors"
    costs = out / "digits_costs.json"
    preds = out / "digits.parquet"
    if not a.skip_train:
        train(weights, a.epochs)
    def rel(p: Path) -> str:
        try:
            return str(p.resolve().relative_to(ROOT))
        except ValueError:
            return str(p.resolve())

    weights_s, costs_s, preds_s = rel(weights), rel(costs), rel(preds)
    common = ["digits-cnn", "--weights", weights_s]
    eenet("profile", *common, "--input-shape", "1,8,8", "--batch-size", "1", "--threads", "1",
          "--repeats", str(a.repeats), "--warmup", "50", "-o", costs_s)
    eenet("dump", *common, "--data", "digits:val", "--split", "val", "--costs", costs_s, "-o", preds_s)
    eenet("dump", *common, "--data", "digits:test", "--split", "test", "--costs", costs_s, "-o", preds_s, "--append")


if __name__ == "__main__":
    main()
