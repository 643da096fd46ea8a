"""Realised latency of fitted policies against the offline estimate, on CPU.

    python scripts/measure_realised_latency.py            # from the repository root, ~4 minutes

For two models it runs the whole pipeline through the real command line, single-threaded:

1. ``eenet profile`` the model at batch size 1 -> costs.json (the "profiled costs");
2. ``eenet dump`` a val and a test split with those costs -> preds.parquet;
3. ``eenet fit --method maxprob`` and ``--method eenet`` at a few budgets -> policy.json;
4. ``eenet profile MODEL --policy policy.json --data TEST`` -> the realised latency
   (each sample's median over --repeats passes, averaged over the samples) beside the
   offline estimate sum_k f_k c_k from costs.json and from the costs re-measured in the
   same run (docs/runtime.md).

Models: the shipped digits CNN (sample_data/digits_model.safetensors) on the built-in
digits data (val 450 / test 450), and the built-in ResNet-56 with seeded random weights
(batch-norm statistics set on random data) on random 3x32x32 inputs with random labels
(accuracy is meaningless there; the latency is what is measured).

Prints one table row per (model, budget, method): the estimate from the profiled costs,
the realised latency, their ratio and whether it is within 15%; then the same against the
in-run costs; "drift" = in-run estimate / profiled estimate, how much the machine's speed
moved between step 1 and the run (ratio = drift x in-run ratio); and the plain mean
(outliers included) for reference. Timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TOLERANCE = 0.15
METHODS = ("maxprob", "eenet")


def eenet(*args: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "eenet_cli", *map(str, args)]
    if not quiet:
        print("$ eenet " + " ".join(map(str, args)), flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.stderr.write(r.stderr)
        raise SystemExit(f"failed: eenet {' '.join(map(str, args))}")
    return r


def profile_costs(model_args: list[str], out: Path, repeats: int, tries: int = 3) -> None:
    """``eenet profile`` -> costs.json; on a busy machine the medians can come out not
    increasing (exit 1, nothing written): try again with more repeats."""
    for t in range(tries):
        r = eenet("profile", *model_args, "--batch-size", "1", "--threads", "1", "--repeats", repeats * (t + 1), "--warmup", "20",
                  "-o", out, "-q", check=False)
        if r.returncode == 0:
            return
        print(f"  (try {t + 1}: {r.stderr.strip()})")
    raise SystemExit(f"could not profile {model_args[0]}: costs never came out increasing")


def resnet_files(folder: Path, n_val: int, n_test: int, seed: int = 0) -> tuple[Path, Path, Path]:
    """Seeded random ResNet-56 weights (batch-norm statistics set on random inputs) and
    random 3x32x32 val/test data with random labels."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from eenet_cli.runtime.models import ResNet56

    torch.manual_seed(seed)
    model = ResNet56()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(64, 3, 32, 32, generator=gen))
    model.eval()
    weights = folder / "resnet56.safetensors"
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(weights))
    rng = np.random.default_rng(seed)
    paths = []
    for name, n in (("val", n_val), ("test", n_test)):
        p = folder / f"random_{name}.npz"
        np.savez(p, x=rng.standard_normal((n, 3, 32, 32)).astype(np.float32), y=rng.integers(0, 10, n).astype(np.int64))
        paths.append(p)
    return weights, paths[0], paths[1]


def run_model(name: str, model_args: list[str], val: str, test: str, budgets: list[str], folder: Path, *, profile_repeats: int,
              repeats: int) -> list[dict]:
    costs = folder / "costs.json"
    preds = folder / "preds.parquet"
    profile_costs(model_args, costs, profile_repeats)
    c = json.loads(costs.read_text())["costs"]
    print(f"  profiled costs: {', '.join(f'{v:.4g}' for v in c)} ms")
    eenet("dump", *model_args, "--data", val, "--split", "val", "--costs", costs, "-o", preds, "-q")
    eenet("dump", *model_args, "--data", test, "--split", "test", "-o", preds, "--append", "-q")
    rows = []
    for budget in budgets:
        for method in METHODS:
            pol = folder / f"policy_{method}_{budget.rstrip('%')}.json"
            run = folder / f"run_{method}_{budget.rstrip('%')}.json"
            eenet("fit", preds, "--budget", budget, "--method", method, "-o", pol, "-q")
            eenet("profile", *model_args, "--threads", "1", "--policy", pol, "--data", test, "--repeats", repeats, "-o", run, "-q")
            d = json.loads(run.read_text())
            row = {
                "model": name,
                "budget": budget,
                "budget_ms": d["budget"]["value"],
                "method": method,
                "estimate": d["offline_estimate"]["value_ms"],
                "realised": d["realised"]["ms_per_sample"],
                "ratio": d["offline_estimate"]["ratio"],
                "estimate_run": d["estimate_measured"]["value"],
                "ratio_run": d["estimate_measured"]["ratio"],
                "ratio_run_same": d["estimate_measured"]["ratio_same_statistic"],
                "raw_mean": d["realised"]["raw_mean_ms_per_sample"],
                "p10": d["realised"]["p10_ms"],
                "p90": d["realised"]["p90_ms"],
                "fractions": d["exit_fractions"],
                "accuracy": d["accuracy"],
            }
            rows.append(row)
            print(f"    {method:8s} {budget:>4s}: estimate {row['estimate']:.4g} ms, realised {row['realised']:.4g} ms "
                  f"(ratio {row['ratio']:.3f}); in-run estimate {row['estimate_run']:.4g} ms (ratio {row['ratio_run']:.3f}); "
                  f"raw mean {row['raw_mean']:.4g} ms", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    head = ("model", "budget", "method", "estimate ms", "realised ms", "ratio", "within 15%", "in-run est. ms", "ratio", "within 15%",
            "drift", "raw mean ms")
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(" --- " for _ in head) + "|",
    ]
    for r in rows:
        ok = abs(r["ratio"] - 1) <= TOLERANCE
        ok_run = abs(r["ratio_run"] - 1) <= TOLERANCE
        lines.append(
            f"| {r['model']} | {r['budget']} ({r['budget_ms']:.3g} ms) | {r['method']} | {r['estimate']:.4g} | {r['realised']:.4g} | "
            f"{r['ratio']:.3f} | {'yes' if ok else 'NO'} | {r['estimate_run']:.4g} | {r['ratio_run']:.3f} | {'yes' if ok_run else 'NO'} | "
            f"{r['estimate_run'] / r['estimate']:.3f} | {r['raw_mean']:.4g} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="keep the files here (default: a temporary folder)")
    ap.add_argument("--repeats", type=int, default=5, help="passes over the test data per policy run (default 5)")
    ap.add_argument("--resnet-val", type=int, default=200, help="random val samples for ResNet-56 (fit)")
    ap.add_argument("--resnet-test", type=int, default=100, help="random test samples for ResNet-56 (runtime)")
    ap.add_argument("--models", default="digits,resnet56", help="comma-separated: digits, resnet56")
    ap.add_argument("--json", help="also write the rows as JSON here")
    a = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(a.out) if a.out else Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        rows: list[dict] = []
        models = [m.strip() for m in a.models.split(",") if m.strip()]
        if "digits" in models:
            print("digits-cnn (shipped weights) on digits:val / digits:test")
            folder = base / "digits"
            folder.mkdir(exist_ok=True)
            args = ["digits-cnn", "--weights", ROOT / "sample_data" / "digits_model.safetensors"]
            rows += run_model("digits-cnn", args, "digits:val", "digits:test", ["40%", "60%", "80%"], folder, profile_repeats=1500,
                              repeats=a.repeats)
        if "resnet56" in models:
            print(f"resnet56 (seeded random weights) on random 3x32x32 data (val {a.resnet_val}, test {a.resnet_test})")
            folder = base / "resnet56"
            folder.mkdir(exist_ok=True)
            weights, val, test = resnet_files(folder, a.resnet_val, a.resnet_test)
            args = ["resnet56", "--weights", weights]
            rows += run_model("resnet56", args, str(val), str(test), ["50%", "65%", "80%"], folder, profile_repeats=200,
                              repeats=a.repeats)
        print()
        print(table(rows))
        n_ok = sum(abs(r["ratio"] - 1) <= TOLERANCE for r in rows)
        n_ok_run = sum(abs(r["ratio_run"] - 1) <= TOLERANCE for r in rows)
        print(f"\nwithin {TOLERANCE:.0%}: {n_ok}/{len(rows)} against the profiled costs, {n_ok_run}/{len(rows)} against the in-run "
              f"costs ({time.perf_counter() - t0:.0f} s)")
        if a.json:
            Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
