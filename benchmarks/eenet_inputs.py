"""EENet's compact scorer against the paper's full-vector scorer: accuracy and policy size.

    python benchmarks/eenet_inputs.py          # from the repository root; writes benchmarks/EENET_INPUTS.md
    python benchmarks/eenet_inputs.py --quick  # fewer sets and seeds, prints only

The compact scorer (the default, ``--eenet-inputs compact``) reads a few numbers per exit
(max-prob, entropy, vote, the second-largest probability, the exit's probability of each
earlier exit's prediction, earlier utilities), so its size does not depend on the number
of classes C and it runs on compact prediction files. The full-vector scorer
(``--eenet-inputs full``, the paper's) reads every class probability.

For each data set of benchmarks/results.py (the shipped digits and text predictions, the
tabular MLP, two synthetic sets) and a synthetic set with C = 1,000: both scorers are
fitted on the validation rows with the same seeds at five budgets strictly inside
[c_1, c_K] and scored on the test rows. The table gives the mean test accuracy over
budgets and seeds of each, their difference (compact - full) with its paired standard
error over the test rows, the worst budget, and the policy file size. The target: the
compact scorer no worse than 0.3 points than the full one on each set, and a policy file
under 1 MB at C = 1,000.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from eenet_cli import api  # noqa: E402
from eenet_cli.core.eenet import EENetHyper  # noqa: E402
from eenet_cli.core.evaluate import evaluate_features  # noqa: E402
from eenet_cli.core.policy import apply_to_features  # noqa: E402
from eenet_cli.learn.eenet_torch import train_eenet  # noqa: E402
from eenet_cli.synthetic import make_predictions  # noqa: E402

OUT = HERE / "EENET_INPUTS.md"
TARGET_POINTS = 0.3
TARGET_BYTES = 1_000_000


def sets(quick: bool):
    from results import datasets

    for i, (name, preds) in enumerate(datasets()):
        if quick and i not in (0, 4):
            continue
        yield name, preds
    d = make_predictions(6000, 5, 1000, seed=21, miscalibration=0.5)
    yield "synthetic (K=5, C=1,000)", api.predictions_from_arrays(d.logits, d.labels, split=d.split, costs=d.costs, unit="ms")


def run(quick: bool) -> tuple[list[dict], float]:
    seeds = [0] if quick else [0, 1, 2]
    rows = []
    t0 = time.perf_counter()
    for name, preds in sets(quick):
        costs = api.resolve_costs(preds, None)
        budgets = list(np.linspace(costs.values[0], costs.values[-1], 7)[1:-1])
        val, test, _ = api.split_for_evaluation(preds)
        right = {}
        size = {}
        seconds = {}
        for inputs in ("compact", "full"):
            hyper = EENetHyper(inputs=inputs)
            per = []
            t = time.perf_counter()
            for seed in seeds:
                _, policies = evaluate_features(val, test, costs.values, costs.unit, budgets, ["eenet"], seed=seed, hyper=hyper,
                                                keep_policies=True, learner=train_eenet)
                per.append(np.stack([apply_to_features(p, test).correct for p in policies]))  # [budgets, n]
                size[inputs] = max(len(json.dumps(p)) for p in policies)
            seconds[inputs] = (time.perf_counter() - t) / (len(seeds) * len(budgets))
            right[inputs] = np.stack(per)  # [seeds, budgets, n]
        acc = {k: 100 * v.mean() for k, v in right.items()}
        by_budget = 100 * (right["compact"].mean(axis=(0, 2)) - right["full"].mean(axis=(0, 2)))
        d = (right["compact"].astype(np.float64) - right["full"]).mean(axis=(0, 1))  # per test row
        se = float(100 * d.std(ddof=1) / np.sqrt(d.size))
        rows.append({"set": name, "n_val": val.num_samples, "n_test": test.num_samples, "C": val.num_classes,
                     "compact": acc["compact"], "full": acc["full"], "diff": acc["compact"] - acc["full"], "se": se,
                     "worst_budget": float(by_budget.min()), "bytes_compact": size["compact"], "bytes_full": size["full"],
                     "fit_s_compact": seconds["compact"], "fit_s_full": seconds["full"]})
        print(f"{name}: compact {acc['compact']:.2f}  full {acc['full']:.2f}  diff {acc['compact'] - acc['full']:+.2f} ± {se:.2f}  "
              f"policy {size['compact']:,} vs {size['full']:,} bytes", flush=True)
    return rows, time.perf_counter() - t0


def table(rows: list[dict], seeds: int) -> str:
    head = ("| data set | val / test rows | C | compact acc % | full acc % | compact − full | ± paired SE | worst budget | "
            "policy bytes compact | full | fit s compact | full | target |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ok = r["diff"] >= -TARGET_POINTS and r["bytes_compact"] < TARGET_BYTES
        lines.append(f"| {r['set']} | {r['n_val']} / {r['n_test']} | {r['C']} | {r['compact']:.2f} | {r['full']:.2f} | "
                     f"{r['diff']:+.2f} | {r['se']:.2f} | {r['worst_budget']:+.2f} | {r['bytes_compact']:,} | {r['bytes_full']:,} | "
                     f"{r['fit_s_compact']:.2f} | {r['fit_s_full']:.2f} | {'met' if ok else 'MISSED'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two sets and the C = 1,000 set, one seed; print only")
    args = ap.parse_args()
    rows, seconds = run(args.quick)
    seeds = 1 if args.quick else 3
    text = table(rows, seeds)
    print(text)
    if args.quick:
        return
    OUT.write_text(
        "# EENet's compact scorer vs the full-vector scorer (`python benchmarks/eenet_inputs.py`)\n\n"
        f"Test accuracy (%) of `eenet` fitted on validation with each scorer, averaged over five budgets strictly inside "
        f"[c_1, c_K] and {seeds} seeds; `compact − full` with the paired standard error over the test rows; `worst budget` is "
        f"the lowest per-budget difference; policy bytes = the largest policy JSON; fit s = seconds per fitted policy. "
        f"Target: compact no worse than {TARGET_POINTS} points than full on each set, and under 1 MB at C = 1,000. "
        f"Run time {seconds / 60:.1f} min on a 2-core machine.\n\n" + text + "\n"
    )
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
