"""eenet benchmark suite: one command, one table.

    python benchmarks/run.py            # full suite, ImageNet-sized workload included
    python benchmarks/run.py --quick    # small sizes, for a smoke run

Prints a table (median of repeats, peak memory) and, unless --no-write, writes it to
benchmarks/README.md with the machine it ran on. Every workload comes from the package's
seeded synthetic generator; files are cached under $EENET_BENCH_DIR (default
/tmp/eenet-bench). Peak memory is each measurement's own process's max RSS minus the RSS
after imports, measured in a fresh subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCH_DIR = Path(os.environ.get("EENET_BENCH_DIR", "/tmp/eenet-bench"))


def dataset(name: str, n: int, k: int, c: int, seed: int = 0, miscalibration: float = 0.5) -> Path:
    """A cached synthetic predictions file (half val, half test) with costs 1..k ms."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    path = BENCH_DIR / f"{name}-{n}x{k}x{c}-s{seed}.parquet"
    if not path.exists():
        code = textwrap.dedent(f"""
            from eenet_cli.synthetic import make_predictions
            from eenet_cli.artifacts.predictions import write_predictions
            d = make_predictions({n}, {k}, {c}, seed={seed}, miscalibration={miscalibration})
            write_predictions({str(path)!r}, d.logits, d.labels, split=d.split,
                              costs={{"format": "costs", "version": 1, "unit": "ms", "costs": d.costs}})
        """)
        subprocess.run([sys.executable, "-c", code], check=True)
    return path


# Each probe runs in a fresh interpreter: it imports what it needs (setup), records the RSS,
# runs the work `repeats` times and prints JSON {"times": [...], "peak_mb": ...}.
PROBE_HEAD = """
import gc, json, time
def _status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
"""

PROBE_TAIL = """
gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS counter
base = _status("VmRSS:")
times = []
for _ in range({repeats}):
    t = time.perf_counter()
    _work()
    times.append(time.perf_counter() - t)
print(json.dumps({{"times": times, "peak_mb": _status("VmHWM:") - base}}))
"""


def probe(setup: str, work: str, repeats: int = 3) -> dict:
    body = (PROBE_HEAD + textwrap.dedent(setup).strip() + "\n\ndef _work():\n"
            + textwrap.indent(textwrap.dedent(work).strip(), "    ") + "\n" + PROBE_TAIL.format(repeats=repeats))
    out = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def cli_time(args: list[str], repeats: int = 3) -> tuple[float, float]:
    """Median wall seconds and peak RSS (MB) of a real `eenet` subprocess."""
    times, peaks = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        p = subprocess.run(
            [sys.executable, "-c", "import resource, runpy, sys; sys.argv=['eenet']+sys.argv[1:]\n"
             "try:\n  runpy.run_module('eenet_cli', run_name='__main__')\n"
             "finally:\n  print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)", *args],
            capture_output=True, text=True, cwd=ROOT,
        )
        times.append(time.perf_counter() - t)
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-2000:])
        peaks.append(int(p.stderr.strip().splitlines()[-1].split()[1]) / 1024)
    return statistics.median(times), max(peaks)


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(self, what: str, measured: str, target: str, ok: bool | None, note: str = "") -> None:
        mark = "" if ok is None else ("yes" if ok else "NO")
        self.rows.append((what, measured, target, mark, note))
        print(f"  {what:<58} {measured:>18}   target {target:<14} {mark:<3} {note}", flush=True)

    def markdown(self) -> str:
        lines = ["| workload | measured | target | met | note |", "| --- | ---: | --- | :---: | --- |"]
        lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in self.rows]
        return "\n".join(lines)


def machine() -> str:
    import numpy
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Python {platform.python_version()}, "
            f"numpy {numpy.__version__}, torch {torch.__version__}")


SECTIONS = ("read", "evaluate", "fit", "fit-big", "fit-long", "certify", "apply", "decision", "startup")


def run_code(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def small_policy(small: Path) -> Path:
    """The EENet policy the apply and decision rows use (written by the small fit row)."""
    pol = BENCH_DIR / "p.json"
    if not pol.exists() or pol.stat().st_mtime < small.stat().st_mtime:
        cli_time(["fit", str(small), "--budget", "50%", "-q", "-o", str(pol)], 1)
    return pol


# The apply row: OnlinePolicy.run over 500 samples (whole samples, as many exits as each
# needs), timed in `blocks` blocks of `repeats` rounds in one process, per sample.
APPLY_CODE = """
import json, time
from eenet_cli.artifacts.policy import read_policy
from eenet_cli.artifacts.predictions import read_predictions
from eenet_cli.core.online import OnlinePolicy
policy = read_policy({pol!r}); preds = read_predictions({data!r})
x = preds.scores[:500]
op = OnlinePolicy(policy)
for i in range(500):  # warm-up
    op.run(x[i])
blocks = []
for _ in range({blocks}):
    times = []
    for _ in range({repeats}):
        t = time.perf_counter()
        for i in range(500):
            op.run(x[i])
        times.append((time.perf_counter() - t) / 500)
    blocks.append(times)
exits = [op.run(x[i])[0] for i in range(500)]
print(json.dumps({{"blocks": blocks, "exits_per_sample": sum(e + 1 for e in exits) / 500}}))
"""


# One lookahead exit decision at C = 100: OnlineSample.step at every exit a sample reaches
# but the last (which decides nothing), per call, timed in blocks of rounds in one process.
LOOKAHEAD_STEP_CODE = """
import json, time
from eenet_cli.artifacts.policy import read_policy
from eenet_cli.artifacts.predictions import read_predictions
from eenet_cli.core.online import OnlinePolicy
policy = read_policy({pol!r}); preds = read_predictions({data!r})
x = preds.scores[:200]
sample = OnlinePolicy(policy).sample()
k = policy["num_exits"]
def round_():
    steps, t0 = 0, time.perf_counter()
    for i in range(200):
        sample.reset()
        for j in range(k - 1):
            steps += 1
            if sample.step(x[i, j]):
                break
    return (time.perf_counter() - t0) / steps
round_()  # warm-up
blocks = [[round_() for _ in range({repeats})] for _ in range({blocks})]
print(json.dumps({{"blocks": blocks, "measure": policy["scorer"].get("measure")}}))
"""


def min_of_medians(blocks: list[list[float]]) -> float:
    """The smallest block median: for a per-call cost on a shared machine, the block least
    disturbed by other work (each block's median already drops its own outliers)."""
    return min(statistics.median(b) for b in blocks)


def blocks_of(values: list[float], n: int) -> list[list[float]]:
    size = max(1, len(values) // n)
    return [values[i : i + size] for i in range(0, size * n, size)]


# One exit decision against the ResNet-56 exit-1 latency, in the same process, interleaved.
# Every round times the exit-1 prefix once (stage 1, head 1 and its max-prob decision, as
# `eenet profile` does; torch on 1 thread as the profile row uses; 100 classes, to match the
# decision's C), then one EENet decision at exit 1 (OnlineSample.step on real C = 100
# logits) right after it, as a deployed model makes it ("in situ": the model's work has
# just evicted the decision's code and weights from the caches), then 20 decisions back to
# back ("warm", per call: what a tight loop of decisions measures).
DECISION_CODE = """
import json, time
import numpy as np, torch
from eenet_cli.artifacts.policy import read_policy
from eenet_cli.artifacts.predictions import read_predictions
from eenet_cli.core.online import OnlinePolicy
from eenet_cli.runtime.models import ResNet56
from eenet_cli.runtime.profile import make_prefix
torch.set_num_threads(1)
policy = read_policy({pol!r}); preds = read_predictions({data!r})
rows = [np.ascontiguousarray(preds.scores[i, 0]) for i in range(200)]
batch = [rows[20 * b : 20 * b + 20] for b in range(10)]
sample = OnlinePolicy(policy).sample()
net = ResNet56(num_classes=100).eval()
prefix = make_prefix(net, 0)
x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
clock = time.perf_counter
z = rows[0].copy()
def softmax():  # a plain 100-class softmax: the least numpy work any decision does
    e = np.exp(z - z.max())
    return e / e.sum()
model_s, situ_s, warm_s, soft_s = [], [], [], []
with torch.inference_mode():
    for i in range(20):  # warm-up
        prefix(x)
        sample.reset(); sample.step(rows[i])
    for i in range({repeats}):
        t = clock()
        prefix(x)
        model_s.append(clock() - t)
        t = clock()
        sample.reset(); sample.step(rows[i % 200])
        situ_s.append(clock() - t)
        t = clock()
        for r in batch[i % 10]:
            sample.reset(); sample.step(r)
        warm_s.append((clock() - t) / len(batch[0]))
        prefix(x)
        t = clock()
        softmax()
        soft_s.append(clock() - t)
print(json.dumps({{"model": model_s, "in_situ": situ_s, "warm": warm_s, "softmax_in_situ": soft_s, "threads": torch.get_num_threads()}}))
"""

# Default EENet training against a much longer one (5x the steps and 5x the early-stopping
# patience), same seed and budget, both applied to the test split.
FIT_LONG_CODE = """
import json, time
from dataclasses import replace
from eenet_cli.api import apply_policy, fit_policy, load_predictions, validation_rows
from eenet_cli.core.eenet_train import EENetHyper
preds = load_predictions({data!r})
test = preds.rows(preds.split == "test")
val_features = validation_rows(preds).features()
default = EENetHyper()
long = replace(default, max_steps={factor} * default.max_steps, patience={factor} * default.patience)
out = {{}}
for name, hyper in (("default", None), ("long", long)):
    t = time.perf_counter()
    policy = fit_policy(preds, {budget!r}, method="eenet", seed=0, hyper=hyper, features=val_features)
    seconds = time.perf_counter() - t
    s = apply_policy(policy, test).summary
    out[name] = {{"seconds": seconds, "accuracy": s["accuracy"], "avg_cost": s["avg_cost"], "budget": s["budget"],
                 "budget_met": s["budget_met"], "unit": s["unit"], "steps": policy["training"].get("steps"),
                 "best_step": policy["training"].get("best_step"), "max_steps": (hyper or default).max_steps}}
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--no-write", action="store_true", help="do not update benchmarks/README.md")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", action="append", choices=SECTIONS, metavar="NAME",
                    help=f"run only this group of rows (repeatable; one of {', '.join(SECTIONS)}); never writes README.md")
    args = ap.parse_args()
    r = args.repeats
    only = set(args.only or SECTIONS)
    big_n, big_c = (4000, 100) if args.quick else (50_000, 1000)
    t = Table()
    print(f"eenet benchmarks on {machine()}\n")

    big = dataset("imagenet", big_n, 5, big_c)
    small = dataset("fit", 10_000, 4, 100)  # 5,000 validation rows

    # 1. reading predictions ---------------------------------------------------------
    if "read" in only:
        logits_mb = big_n * 5 * big_c * 4 / 2**20
        arrow = probe("import pyarrow.parquet as pq", f"tbl = pq.read_table({str(big)!r})\ndel tbl", r)
        ours = probe("from eenet_cli.artifacts.predictions import read_predictions", f"p = read_predictions({str(big)!r})\ndel p", r)
        a, o = statistics.median(arrow["times"]), statistics.median(ours["times"])
        t.add(f"read {big_n}x5x{big_c} predictions (pyarrow read_table)", f"{a:.2f} s", "reference", None, f"peak {arrow['peak_mb']:.0f} MB")
        t.add(f"read {big_n}x5x{big_c} predictions (eenet, validated)", f"{o:.2f} s ({o / a:.2f}x)", "<= 1.5x pyarrow", o <= 1.5 * a)
        t.add("  peak memory of the eenet read / logits size", f"{ours['peak_mb']:.0f} MB ({ours['peak_mb'] / logits_mb:.2f}x)", "< 1.5x", ours["peak_mb"] < 1.5 * logits_mb, f"logits {logits_mb:.0f} MB")
        naive = probe("import pandas as pd, numpy as np", f"df = pd.read_parquet({str(big)!r})\nx = np.stack([np.stack(df[f'exit_{{j}}'].to_list()) for j in range(5)], 1)\ndel df, x", 1)
        nv = statistics.median(naive["times"])
        t.add("  naive read (pandas rows of Python lists, np.stack)", f"{nv:.2f} s", "ratio", None, f"eenet is {nv / o:.1f}x faster, peak {naive['peak_mb']:.0f} MB")

    # 2. evaluate ----------------------------------------------------------------------
    if "evaluate" in only:
        sec, peak = cli_time(["evaluate", str(big), "--methods", "maxprob,entropy,vote,patience,oracle", "--budgets", "1:5:0.2105263", "-q", "-o", str(BENCH_DIR / "r.json")], 1 if not args.quick else r)
        t.add(f"evaluate 4 baselines + oracle, 20 budgets, {big_n}x5x{big_c}", f"{sec:.1f} s", "< 15 s", sec < 15, f"peak {peak:.0f} MB")
        mid = dataset("mid", 4000, 4, 100)
        sec, peak = cli_time(["evaluate", str(mid), "--methods", "maxprob,entropy,vote,patience,oracle", "-q", "-o", str(BENCH_DIR / "r2.json")], r)
        t.add("evaluate 4 baselines + oracle, 10 budgets, 4000x4x100 (CLI)", f"{sec:.2f} s", "< 3 s", sec < 3, f"peak {peak:.0f} MB")

    # 3./4. fit ---------------------------------------------------------------------------
    if "fit" in only:
        sec, peak = cli_time(["fit", str(small), "--budget", "50%", "-q", "-o", str(BENCH_DIR / "p.json")], r)
        t.add("fit eenet, 5000 val rows x 4 exits x 100 classes (CLI)", f"{sec:.1f} s", "< 10 s", sec < 10, f"peak {peak:.0f} MB")
    if "fit-big" in only:
        sec, peak = cli_time(["fit", str(big), "--budget", "50%", "-q", "-o", str(BENCH_DIR / "pbig.json")], 1)
        t.add(f"fit eenet, {big_n // 2} val rows x 5 x {big_c} (CLI)", f"{sec:.1f} s", "< 120 s", sec < 120, f"peak {peak:.0f} MB (target < 4096)")
    if "fit-long" in only:
        factor = 5
        res = run_code(FIT_LONG_CODE.format(data=str(big), budget="50%", factor=factor))
        d, lg = res["default"], res["long"]
        gap = (d["accuracy"] - lg["accuracy"]) * 100  # > 0: the default fit is the more accurate
        t.add(
            f"  test accuracy: default fit vs {factor}x longer training",
            f"{d['accuracy'] * 100:.2f}% vs {lg['accuracy'] * 100:.2f}% ({gap:+.2f} pts)",
            "default >= long - 0.2 pts",
            gap >= -0.2,
            f"{big_n // 2} test rows, budget 50% = {d['budget']:.3g} {d['unit']}; default {d['seconds']:.0f} s, {d['steps']}/{d['max_steps']} steps; "
            f"long {lg['seconds']:.0f} s, {lg['steps']}/{lg['max_steps']} steps (Python API, same seed; fit times exclude the features)",
        )

    # certification's overhead: the same command with and without --confidence, interleaved --
    if "certify" in only:
        out = BENCH_DIR / "c.json"
        pairs = [
            ("fit maxprob", ["fit", str(big), "--method", "maxprob", "--budget", "50%"]),
            ("fit lookahead", ["fit", str(big), "--method", "lookahead", "--budget", "50%"]),
            ("fit eenet", ["fit", str(big), "--method", "eenet", "--budget", "50%"]),
            ("evaluate 4 baselines, 5 budgets", ["evaluate", str(big), "--methods", "maxprob,entropy,vote,patience", "--budgets", "1.5,2,2.5,3,3.5"]),
        ]
        for name, base in pairs:
            plain, cert = [], []
            for _ in range(1 if name == "fit eenet" else r):  # interleaved, so drift hits both alike
                plain.append(cli_time(base + ["-q", "-o", str(out)], 1)[0])
                cert.append(cli_time(base + ["--confidence", "0.9", "-q", "-o", str(out)], 1)[0])
            a, b = statistics.median(plain), statistics.median(cert)
            t.add(f"{name} --confidence 0.9, {big_n // 2} val rows x 5 x {big_c}", f"{b:.1f} s (+{100 * (b / a - 1):.0f}%)",
                  "< +20%", b < 1.2 * a, f"without: {a:.1f} s")
        pol = BENCH_DIR / "cert-policy.json"
        subprocess.run([sys.executable, "-m", "eenet_cli", "fit", str(big), "--method", "maxprob", "--budget", "50%",
                        "--confidence", "0.9", "-q", "-o", str(pol)], check=True, cwd=ROOT)
        plain, cert = [], []
        for _ in range(r):
            plain.append(cli_time(["apply", str(pol), str(big), "-q", "-o", str(BENCH_DIR / "a.parquet")], 1)[0])
            cert.append(cli_time(["certify", str(pol), str(big), "--confidence", "0.95", "-q", "-o", str(out)], 1)[0])
        a, b = statistics.median(plain), statistics.median(cert)
        t.add(f"certify a policy on {big_n} rows x 5 x {big_c} (vs apply)", f"{b:.1f} s (+{100 * (b / a - 1):.0f}%)",
              "< +20%", b < 1.2 * a, f"apply: {a:.1f} s")

    # 5. applying a policy at batch size 1 -------------------------------------------------
    if "apply" in only:
        pol = small_policy(small)
        blocks = 7
        reps = max(9, 3 * r)
        one = run_code(APPLY_CODE.format(pol=str(pol), data=str(small), blocks=blocks, repeats=reps))
        us = min_of_medians(one["blocks"]) * 1e6
        overall = statistics.median([v for b in one["blocks"] for v in b]) * 1e6
        t.add("apply eenet policy, batch size 1, C=100 (numpy, per sample)", f"{us:.0f} us", "< 100 us", us < 100,
              f"min over {blocks} blocks of the median of {reps} x 500 samples (median of all {overall:.0f} us); "
              f"{one['exits_per_sample']:.2f} exits per sample (K=4)")
        vec = probe(
            f"""
            from eenet_cli.artifacts.policy import read_policy
            from eenet_cli.artifacts.predictions import read_predictions
            from eenet_cli.core.policy import apply_to_features
            policy = read_policy({str(pol)!r}); preds = read_predictions({str(small)!r})
            """,
            "apply_to_features(policy, preds.features())",
            r,
        )
        n_small = 10_000
        vus = statistics.median(vec["times"]) / n_small * 1e6
        t.add("  same policy vectorised over 10,000 samples (per sample)", f"{vus:.1f} us", "ratio", None, f"{us / vus:.1f}x faster than the per-sample loop")
        la_pol = BENCH_DIR / "lookahead.json"
        if not la_pol.exists() or la_pol.stat().st_mtime < small.stat().st_mtime:
            cli_time(["fit", str(small), "--method", "lookahead", "--budget", "40%", "-q", "-o", str(la_pol)], 1)
        la = run_code(LOOKAHEAD_STEP_CODE.format(pol=str(la_pol), data=str(small), blocks=blocks, repeats=reps))
        la_us = min_of_medians(la["blocks"]) * 1e6
        t.add("one lookahead exit decision, C=100 (numpy, per OnlineSample.step)", f"{la_us:.0f} us", "< 100 us", la_us < 100,
              f"min over {blocks} blocks of the median of {reps} rounds of 200 samples, every exit but the last"
              + (f" (this fit stops on the {la['measure']} measure, not its estimators)" if la["measure"] else ""))
    if "decision" in only:
        pol = small_policy(small)
        reps = 300 if args.quick else 1000
        res = run_code(DECISION_CODE.format(pol=str(pol), data=str(small), repeats=reps))
        parts = {key: blocks_of(res[key], 5) for key in ("model", "in_situ", "warm")}
        c1_ms = min_of_medians(parts["model"]) * 1e3
        situ = min_of_medians(parts["in_situ"]) * 1e6
        warm = min_of_medians(parts["warm"]) * 1e6
        soft = min_of_medians(blocks_of(res["softmax_in_situ"], 5)) * 1e6
        share = situ / (c1_ms * 1000) * 100
        all_situ, all_c1 = statistics.median(res["in_situ"]) * 1e6, statistics.median(res["model"]) * 1e3
        warm_share = warm / (c1_ms * 1000) * 100
        t.add("one exit decision (eenet, C=100) vs ResNet-56 exit-1 latency", f"{warm:.0f} us / {c1_ms:.2f} ms = {warm_share:.2f}%", "< 1%",
              warm_share < 1, f"decisions back to back (20 per round), as the per-sample apply row; min over 5 blocks of the medians of "
              f"{reps // 5} interleaved rounds, one process, torch {res['threads']} thread")
        t.add("  the same decision right after the exit-1 forward (in situ)", f"{situ:.0f} us / {c1_ms:.2f} ms = {share:.2f}%", "< 1%", share < 1,
              f"the first code to run after the forward pays for cold caches: a plain 100-class numpy softmax in the same "
              f"place takes {soft:.0f} us (medians of all rounds: {all_situ:.0f} us / {all_c1:.2f} ms = {all_situ / (all_c1 * 10):.2f}%)")

    # 6. start-up ---------------------------------------------------------------------------
    if "startup" in only:
        times = []
        for _ in range(5):
            s = time.perf_counter()
            subprocess.run([sys.executable, "-m", "eenet_cli", "--help"], capture_output=True, check=True, cwd=ROOT)
            times.append(time.perf_counter() - s)
        heavy = subprocess.run([sys.executable, "-c", "import sys, eenet_cli.cli as c\ntry:\n c.main(['--help'])\nexcept SystemExit: pass\nprint([m for m in ('torch','pandas','matplotlib') if m in sys.modules])"],
                               capture_output=True, text=True, cwd=ROOT).stdout.strip().splitlines()[-1]
        st = statistics.median(times)
        t.add("eenet --help start-up", f"{st:.2f} s", "< 0.5 s", st < 0.5, f"heavy imports: {heavy}")

    if not args.no_write and not args.quick and args.only is None:
        text = (HERE / "README.md").read_text() if (HERE / "README.md").exists() else ""
        marker = "<!-- table -->"
        table = f"{marker}\nMeasured {time.strftime('%Y-%m-%d')} on {machine()}.\n\n{t.markdown()}\n{marker}"
        if marker in text:
            pre, _, rest = text.partition(marker)
            _, _, post = rest.partition(marker)
            text = pre + table + post
        else:
            text = text + "\n" + table + "\n"
        (HERE / "README.md").write_text(text)
        print("\nwrote benchmarks/README.md")


if __name__ == "__main__":
    main()
