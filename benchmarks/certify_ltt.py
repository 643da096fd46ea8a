"""Certified accuracy drop: eenet's certified policies against one Learn-then-Test threshold.

    python benchmarks/certify_ltt.py            # writes benchmarks/CERTIFY_LTT.md (~10 min on 2 cores)

For each data set, every method is fitted with ``--max-drop 1% --confidence 0.9`` on the
validation rows (a share held out to certify on, docs/certify.md) and applied to the test
rows. The reference is Learn-then-Test on one max-prob threshold shared by every exit, on
*all* validation rows: thresholds walked from the dearest end, each tested with the exact
binomial bound on the harm count (the same bound eenet uses), the cheapest one reached
before the first failure. The table gives the test cost of each policy (lower is better)
and its test drop against the last exit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from eenet_cli import api  # noqa: E402
from eenet_cli.core.certify import binomial_upper_bound  # noqa: E402
from eenet_cli.synthetic import make_predictions  # noqa: E402

METHODS = ["maxprob", "entropy", "eenet", "eenet-search", "lookahead"]


def ltt_cost(val, test, costs: np.ndarray, eps: float, delta: float) -> tuple[float, float]:
    mp, correct = val.max_prob, val.correct
    n, k = mp.shape
    taus = np.unique(np.quantile(mp[:, :-1], np.linspace(0, 1, 1001)))[::-1]
    chosen = None
    for tau in taus:
        stop = mp[:, :-1] >= tau
        ex = np.where(stop.any(axis=1), stop.argmax(axis=1), k - 1)
        harm = int((~correct[np.arange(n), ex] & correct[:, -1]).sum())
        if binomial_upper_bound(harm, n, delta) > eps:
            break
        chosen = tau
    if chosen is None:
        return float(costs[-1]), 0.0
    stop = test.max_prob[:, :-1] >= chosen
    ex = np.where(stop.any(axis=1), stop.argmax(axis=1), k - 1)
    drop = test.correct[:, -1].mean() - test.correct[np.arange(ex.size), ex].mean()
    return float(costs[ex].mean()), float(drop)


def datasets(rows: int):
    yield "digits CNN (real, K=4, C=10)", api.load_predictions(str(ROOT / "sample_data" / "digits.parquet"))
    text = ROOT / "sample_data" / "text" / "rotten_tomatoes.parquet"
    if text.exists():
        yield "MiniLM text (real, K=6, C=2)", api.load_predictions(str(text))
    for name, mis, c in (("synthetic calibrated (K=4, C=100)", 0.0, 100), ("synthetic miscalibrated (K=4, C=10)", 1.0, 10)):
        d = make_predictions(2 * rows, 4, c, seed=11, miscalibration=mis)
        yield f"{name}, {rows} val rows", api.predictions_from_arrays(d.logits, d.labels, split=d.split, costs=d.costs, unit="ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eps", type=float, default=0.01)
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--rows", type=int, default=5000, help="validation rows of the synthetic sets")
    ap.add_argument("--out", default=str(HERE / "CERTIFY_LTT.md"))
    args = ap.parse_args()
    lines = ["# Certified accuracy drop: learned policies vs one Learn-then-Test threshold", "",
             f"Every method fitted with `--max-drop {args.eps:g} --confidence {1 - args.delta:g}`; test cost "
             "(test drop against the last exit, points). LTT: one max-prob threshold shared by every exit, "
             "Learn-then-Test with the exact binomial bound on harm, on all validation rows. "
             "Regenerate with `python benchmarks/certify_ltt.py`.", "",
             "| data set | val rows | c_1 .. c_K | LTT | " + " | ".join(METHODS) + " | best learned < LTT |",
             "|---|---:|---|---:|" + "---:|" * len(METHODS) + ":---:|"]
    t0 = time.perf_counter()
    for name, preds in datasets(args.rows):
        costs = api.resolve_costs(preds, None)
        c = np.asarray(costs.values, dtype=np.float64)
        val, test, _ = api.split_for_evaluation(preds)
        vp = api.validation_rows(preds) if preds.split is not None else preds
        lc, ld = ltt_cost(val, test, c, args.eps, args.delta)
        cells, learned = [], []
        for m in METHODS:
            try:
                pol = api.fit_policy(vp, None, method=m, max_drop=args.eps, confidence=1 - args.delta)
            except Exception as e:  # an infeasible request is a result here
                cells.append(f"refused ({str(e)[:40]})")
                continue
            a = api.apply_policy(pol, test_preds(preds))
            cost = float(a.summary["avg_cost"])
            drop = float(test.correct[:, -1].mean() - a.correct.mean())
            cells.append(f"{cost:.4g} ({100 * drop:+.2f})")
            if m in ("eenet", "eenet-search", "lookahead"):
                learned.append(cost)
        best = min(learned) if learned else float("inf")
        lines.append(f"| {name} | {val.num_samples} | {c[0]:.3g} .. {c[-1]:.3g} | {lc:.4g} ({100 * ld:+.2f}) | "
                     + " | ".join(cells) + f" | {'yes' if best < lc else 'NO'} |")
        print(lines[-1], flush=True)
    lines += ["", f"Total time {time.perf_counter() - t0:.0f} s."]
    Path(args.out).write_text("\n".join(lines) + "\n")


def test_preds(preds):
    return preds.rows(preds.split == "test")


if __name__ == "__main__":
    main()
