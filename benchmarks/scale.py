"""eenet at scale: files larger than memory and a 50,000-class vocabulary.

    python benchmarks/scale.py            # both workloads; writes benchmarks/SCALE.md
    python benchmarks/scale.py --only full --keep

Two workloads, generated chunk by chunk under $EENET_BENCH_DIR (default /tmp/eenet-bench)
without ever holding a whole file in memory, and deleted at the end unless --keep:

- **full**: 500,000 rows x 5 exits x 1,000 classes of float32 logits (10 GB before
  compression), in row groups of 8,192 rows. Rows: `eenet evaluate --methods
  maxprob,entropy,vote,patience,oracle` (peak memory, target < 4 GB; time against
  pyarrow's raw read of the same file, target within 5x). pyarrow's raw read decodes every
  row group of every column (``ParquetFile.read_row_group``, all threads) and drops it: a
  10 GB ``read_table`` would not fit beside the rest of this machine's work, and decoding
  is the part of reading that scales.
- **compact**: 1,000,000 rows, 5 exits, a 50,000-class vocabulary, top 5 classes kept per
  exit (docs/spec.md §2.1.1), its compact columns generated directly and consistently
  (the log-sum-exp and entropy are those of the top 5 plus a flat tail over the other
  49,995 classes). Rows: `fit --method maxprob`, `apply`, `evaluate --methods
  maxprob,entropy,vote,patience,oracle`, `certify`, and `fit --method eenet` (its compact
  scorer) with `apply` of that policy, each under 2 minutes.

Every command runs as a real `eenet` subprocess; its peak memory is the process's peak RSS
(``ru_maxrss``, the whole process, imports included).
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from run import BENCH_DIR, Table, cli_time, machine, run_code

FULL = (500_000, 5, 1_000)
COMPACT = (1_000_000, 5, 50_000, 5)
CHUNK = 8_192  # rows generated and written at a time (one row group)


def make_full(path: Path, n: int, k: int, c: int) -> None:
    """Synthetic logits like eenet_cli.synthetic's, generated and written one row group at a time."""
    run_code(f"""
        import json
        import numpy as np
        from eenet_cli.artifacts.predictions import PredictionsWriter
        n, k, c, chunk = {n}, {k}, {c}, {CHUNK}
        costs = {{"format": "costs", "version": 1, "unit": "ms", "costs": [1.0 + 3.0 * j / (k - 1) for j in range(k)]}}
        depth = np.linspace(0.35, 1.0, k) ** 1.2
        temps = np.exp(np.random.default_rng(0).uniform(-1, 1, size=c) * 0.5 * np.log(4.0)).astype(np.float32)
        with PredictionsWriter({str(path)!r}, num_exits=k, num_classes=c, costs=costs) as w:
            for s in range(0, n, chunk):
                rng = np.random.default_rng(1 + s // chunk)
                m = min(chunk, n - s)
                labels = rng.integers(0, c, size=m)
                hard = rng.beta(2.0, 2.0, size=m)
                common = rng.standard_normal((m, c), dtype=np.float32)
                block = np.empty((m, k, c), np.float32)
                for j in range(k):
                    z = np.sqrt(0.6) * common + np.sqrt(0.4) * rng.standard_normal((m, c), dtype=np.float32)
                    z[np.arange(m), labels] += (4.0 * depth[j] * (1.5 - hard)).astype(np.float32)
                    z *= temps[z.argmax(axis=1)][:, None]
                    block[:, j] = z
                w.write(block, labels, split=np.where(rng.random(m) < 0.5, "val", "test"))
        print(json.dumps({{"rows": n}}))
    """)


def make_compact(path: Path, n: int, k: int, c: int, top_k: int) -> None:
    """Compact columns of a 50,000-class model, generated directly, one row group at a time."""
    run_code(f"""
        import json
        import numpy as np
        from eenet_cli.artifacts.predictions import CompactWriter
        n, k, c, top_k, chunk = {n}, {k}, {c}, {top_k}, {CHUNK * 8}
        costs = {{"format": "costs", "version": 1, "unit": "ms", "costs": [1.0 + 3.0 * j / (k - 1) for j in range(k)]}}
        with CompactWriter({str(path)!r}, num_exits=k, num_classes=c, top_k=top_k, costs=costs) as w:
            for s in range(0, n, chunk):
                rng = np.random.default_rng(1 + s // chunk)
                m = min(chunk, n - s)
                labels = rng.integers(0, c, size=m)
                hard = rng.beta(2.0, 2.0, size=m)[:, None]
                right = rng.random((m, k)) < np.linspace(0.3, 0.8, k)[None, :] * (1.6 - hard)
                pred = np.where(right, labels[:, None], rng.integers(0, c, size=(m, k)))
                cls = (pred[..., None] + np.arange(top_k)) % c  # distinct classes, the prediction first
                gaps = rng.exponential(1.0, size=(m, k, top_k)) * (0.3 + hard[..., None])
                gaps[..., 0] = 0.0
                top = (8.0 - np.cumsum(gaps, axis=-1)).astype(np.float32)
                tail = (top[..., -1] - 1.0 - rng.exponential(1.0, size=(m, k))).astype(np.float64)  # every other class
                t64 = top.astype(np.float64)
                mx = t64[..., 0]
                total = np.exp(t64 - mx[..., None]).sum(-1) + (c - top_k) * np.exp(tail - mx)
                lse = mx + np.log(total)
                p = np.exp(t64 - lse[..., None])
                q = np.exp(tail - lse)
                ent = -(p * np.log(p)).sum(-1) - (c - top_k) * q * np.log(q)
                def score_of(classes):  # [m, k] per exit i: exit i's score of classes[:, i or j]
                    hit = cls == classes[..., None]
                    return np.where(hit.any(-1), np.take_along_axis(top, hit.argmax(-1)[..., None], -1)[..., 0], tail).astype(np.float32)
                pred_scores = np.stack([score_of(np.broadcast_to(pred[:, j, None], (m, k))) for j in range(k)], axis=-1)
                label_score = score_of(np.broadcast_to(labels[:, None], (m, k)))
                cols = {{"top_scores": top, "top_classes": cls.astype(np.int32), "logsumexp": lse, "entropy": ent,
                         "pred_scores": pred_scores, "label_score": label_score}}
                w.write(cols, labels, split=np.where(rng.random(m) < 0.5, "val", "test"))
        print(json.dumps({{"rows": n}}))
    """)


def pyarrow_raw_read(path: Path) -> float:
    """Seconds pyarrow takes to decode every row group of the file (each dropped after)."""
    res = run_code(f"""
        import json, time
        import pyarrow.parquet as pq
        t = time.perf_counter()
        pf = pq.ParquetFile({str(path)!r})
        for g in range(pf.num_row_groups):
            pf.read_row_group(g, use_threads=True)
        print(json.dumps({{"seconds": time.perf_counter() - t}}))
    """)
    return float(res["seconds"])


def full_rows(table: Table, keep: bool) -> None:
    n, k, c = FULL
    path = BENCH_DIR / f"scale-full-{n}x{k}x{c}.parquet"
    if not path.exists():
        t = time.perf_counter()
        make_full(path, n, k, c)
        print(f"  wrote {path} in {time.perf_counter() - t:.0f} s", flush=True)
    size_gb = n * k * c * 4 / 1e9
    try:
        raw = pyarrow_raw_read(path)
        table.add(f"pyarrow raw read, {n:,} x {k} x {c:,} float32 ({size_gb:.0f} GB)", f"{raw:.1f} s", "reference", None,
                  f"file {path.stat().st_size / 1e9:.1f} GB on disk")
        out = BENCH_DIR / "scale-full-results.json"
        secs, peak = cli_time(["evaluate", str(path), "--methods", "maxprob,entropy,vote,patience,oracle", "-q", "-o", str(out)], repeats=1)
        table.add("evaluate 4 baselines + oracle, 10 budgets (CLI)", f"{secs:.1f} s ({secs / raw:.2f}x)", "<= 5x pyarrow",
                  secs <= 5 * raw, "")
        table.add("  peak memory of that evaluate", f"{peak:,.0f} MB", "< 4096 MB", peak < 4096,
                  f"logits {size_gb * 1e3 / 1.048576:,.0f} MB")
        out.unlink(missing_ok=True)
    finally:
        if not keep:
            path.unlink(missing_ok=True)


def compact_rows(table: Table, keep: bool) -> None:
    n, k, c, top_k = COMPACT
    path = BENCH_DIR / f"scale-compact-{n}x{k}x{c}-top{top_k}.parquet"
    if not path.exists():
        t = time.perf_counter()
        make_compact(path, n, k, c, top_k)
        print(f"  wrote {path} in {time.perf_counter() - t:.0f} s", flush=True)
    policy = BENCH_DIR / "scale-compact-policy.json"
    certified = BENCH_DIR / "scale-compact-certified.json"
    eenet_policy = BENCH_DIR / "scale-compact-eenet.json"
    outs = [policy, certified, BENCH_DIR / "scale-compact-apply.parquet", BENCH_DIR / "scale-compact-results.json",
            BENCH_DIR / "scale-compact-bounds.json", eenet_policy, BENCH_DIR / "scale-compact-eenet-apply.parquet"]
    what = f"{n:,} rows x {k} exits, top {top_k} of {c:,} classes"
    try:
        table.add(f"compact file: {what}", f"{path.stat().st_size / 1e6:,.0f} MB", "reference", None,
                  f"full float32 scores would be {n * k * c * 4 / 1e12:.1f} TB")
        steps = [
            ("fit --method maxprob --budget 50%", ["fit", str(path), "--method", "maxprob", "--budget", "50%", "-q", "-o", str(policy)]),
            ("apply (test split)", ["apply", str(policy), str(path), "-q", "-o", str(outs[2])]),
            ("evaluate 4 baselines + oracle, 10 budgets", ["evaluate", str(path), "--methods", "maxprob,entropy,vote,patience,oracle", "-q", "-o", str(outs[3])]),
            ("fit --method maxprob --confidence 0.9 (for certify)", ["fit", str(path), "--method", "maxprob", "--budget", "50%", "--confidence", "0.9", "-q", "-o", str(certified)]),
            ("certify (test split)", ["certify", str(certified), str(path), "-q", "-o", str(outs[4])]),
            ("fit --method eenet --budget 50% (compact scorer)", ["fit", str(path), "--method", "eenet", "--budget", "50%", "-q", "-o", str(eenet_policy)]),
            ("apply the EENet policy (test split)", ["apply", str(eenet_policy), str(path), "-q", "-o", str(outs[6])]),
        ]
        for label, args in steps:
            secs, peak = cli_time(args, repeats=1)
            table.add(f"{label} (CLI)", f"{secs:.1f} s", "< 120 s", secs < 120, f"peak {peak:,.0f} MB")
    finally:
        for p in outs:
            p.unlink(missing_ok=True)
        if not keep:
            path.unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("full", "compact"), action="append", help="run one workload (repeatable); never rewrites SCALE.md")
    ap.add_argument("--keep", action="store_true", help="keep the generated files (they are large) for another run")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/SCALE.md")
    args = ap.parse_args()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    table = Table()
    which = args.only or ["full", "compact"]
    print(machine(), flush=True)
    if "full" in which:
        full_rows(table, args.keep)
    if "compact" in which:
        compact_rows(table, args.keep)
    print(table.markdown())
    if args.only or args.no_write:
        return
    load = os.getloadavg()
    head = textwrap.dedent(f"""\
        # eenet at scale

        Written by `python benchmarks/scale.py` (see its docstring for how each row is measured).
        Measured {time.strftime('%Y-%m-%d')} on {machine()}; load average {load[0]:.1f} at the end of the run
        (the machine is shared, so times are those of a loaded machine, not a quiet one).

        """)
    (HERE / "SCALE.md").write_text(head + table.markdown() + "\n", encoding="utf-8")
    print(f"wrote {HERE / 'SCALE.md'}")


if __name__ == "__main__":
    main()
