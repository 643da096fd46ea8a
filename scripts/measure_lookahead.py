"""Measure the lookahead policy against EENet (quota), max-prob (geometric) and the oracle.

Every policy is fitted on the validation split and applied to the test split; the table
reports TEST accuracy. Budgets: the cheapest third of [c_1, c_K] ("tight") and the rest of
the range. Also checks that every fit's realised validation cost is within its budget, and
times the lookahead fit (first budget, then further budgets reusing the estimators).

    python scripts/measure_lookahead.py                 # all data sets, markdown table
    python scripts/measure_lookahead.py --quick         # fewer budgets, smaller data
    python scripts/measure_lookahead.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from eenet_cli.core.lookahead import fit_lookahead, lookahead_scores  # noqa: E402
from eenet_cli.core.measures import exit_features  # noqa: E402
from eenet_cli.core.oracle import oracle  # noqa: E402
from eenet_cli.core.policy import compute_scores  # noqa: E402
from eenet_cli.core.thresholds import (  # noqa: E402
    Ranking,
    apply_thresholds,
    fit_geometric,
    within_budget,
)
from eenet_cli.synthetic import make_predictions  # noqa: E402

TIGHT_FRACTIONS = [0.05, 0.1, 1 / 6, 0.25, 1 / 3]
WIDE_FRACTIONS = [0.5, 2 / 3, 5 / 6, 1.0]


def datasets(quick: bool):
    n10 = 6000 if quick else 10000
    for name, n, c, mis in [
        ("synthetic C=10 calibrated", n10, 10, 0.0),
        ("synthetic C=10 miscalibrated", n10, 10, 1.0),
        ("synthetic C=100 miscalibrated", n10, 100, 1.0),
    ]:
        d = make_predictions(n, 4, c, seed=1, miscalibration=mis)
        val = d.split == "val"
        yield (name, exit_features(d.logits[val], "logits", d.labels[val]),
               exit_features(d.logits[~val], "logits", d.labels[~val]), np.asarray(d.costs, dtype=np.float64))
    from eenet_cli.artifacts.predictions import read_predictions

    p = read_predictions(ROOT / "sample_data" / "digits.parquet")
    val = p.split == "val"
    yield "digits (sample_data)", p.rows(val).features(), p.rows(~val).features(), np.asarray(p.meta["costs"]["costs"], dtype=np.float64)


def test_figures(exits: np.ndarray, feats, costs: np.ndarray) -> tuple[float, float]:
    rows = np.arange(feats.num_samples)
    return float(feats.correct[rows, exits].mean()), float(costs[exits].mean())


def fit_eenet(fv, costs, budget, seed):
    """EENet with Algorithm 1's quota thresholds; returns (scorer, thresholds, val_cost, how)."""
    from eenet_cli.core.eenet import fit_eenet_policy
    from eenet_cli.learn.eenet_torch import train_eenet

    pol = fit_eenet_policy(fv, costs, budget, seed=seed, thresholds="quota", learner=train_eenet)
    return pol["scorer"], pol["thresholds"], float(pol["validation"]["avg_cost"]), "fit_eenet_policy"


def run(quick: bool, seed: int, skip_eenet: bool) -> dict:
    out = {"datasets": [], "timing": None}
    tight = TIGHT_FRACTIONS[1::2] if quick else TIGHT_FRACTIONS
    wide = WIDE_FRACTIONS[::2] if quick else WIDE_FRACTIONS
    for name, fv, ft, costs in datasets(quick):
        cache: dict = {}
        rows = []
        maxprob_rank = Ranking(fv.max_prob)
        for frac, band in [(f, "tight") for f in tight] + [(f, "wide") for f in wide]:
            b = float(costs[0] + frac * (costs[-1] - costs[0]))
            t0 = time.perf_counter()
            pol = fit_lookahead(fv, costs, b, seed=seed, cache=cache)
            t_fit = time.perf_counter() - t0
            ex = apply_thresholds(lookahead_scores(pol["scorer"], ft), pol["thresholds"])
            la_acc, la_cost = test_figures(ex, ft, costs)
            row = {
                "budget": b, "fraction": frac, "band": band, "fit_seconds": t_fit,
                "lookahead": la_acc, "lookahead_test_cost": la_cost,
                "lookahead_val_cost": pol["validation"]["avg_cost"], "lookahead_rule": pol["threshold_fit"]["rule"],
                "lookahead_lambda": pol["scorer"]["lambda"],
                "val_ok": {"lookahead": within_budget(pol["validation"]["avg_cost"], b)},
            }
            # the parts of the fit on their own: the lookahead rule alone (no fallback), and
            # geometric quotas on the same estimates P̂[k, k] (the fallback's main candidate)
            cands = {c["rule"]: c for c in pol["threshold_fit"]["candidates"]}
            lam = pol["scorer"]["lambda"] if pol["scorer"]["rule"] == "lookahead" else cands["lookahead"]["lambda"]
            only = dict(pol["scorer"], rule="lookahead", **{"lambda": lam})
            thr0 = [0.0] * (len(costs) - 1) + [None]
            row["rule_only"] = test_figures(apply_thresholds(lookahead_scores(only, ft), thr0), ft, costs)[0]
            row["rule_only_cv"] = cands["lookahead"]["cv_accuracy"]
            quota = dict(pol["scorer"], rule="quota")
            qrank = Ranking(lookahead_scores(quota, fv))
            qfit = fit_geometric(qrank, costs, b)
            row["quota_only"] = test_figures(apply_thresholds(lookahead_scores(quota, ft), qfit.thresholds), ft, costs)[0]
            row["quota_only_cv"] = cands["quota-geometric"]["cv_accuracy"]
            row["chosen_cv"] = cands[pol["threshold_fit"]["rule"]]["cv_accuracy"]
            row["lambda_cv_zero"] = cands["lookahead"]["lambda"] == 0.0
            g = fit_geometric(maxprob_rank, costs, b)
            row["maxprob"], row["maxprob_test_cost"] = test_figures(apply_thresholds(ft.max_prob, g.thresholds), ft, costs)
            row["val_ok"]["maxprob"] = within_budget(g.avg_cost, b)
            if not skip_eenet:
                t0 = time.perf_counter()
                scorer, thr, vcost, how = fit_eenet(fv, costs, b, seed)
                row["eenet_seconds"] = time.perf_counter() - t0
                row["eenet"], row["eenet_test_cost"] = test_figures(apply_thresholds(compute_scores(scorer, ft), thr), ft, costs)
                row["val_ok"]["eenet"] = within_budget(vcost, b)
                row["eenet_how"] = how
            row["oracle"] = oracle(ft.correct, costs, b).accuracy
            rows.append(row)
            print(f"  {name:32s} B={b:8.4f} lookahead={la_acc:.4f} ({row['lookahead_rule']}) "
                  f"eenet={row.get('eenet', float('nan')):.4f} maxprob={row['maxprob']:.4f} oracle={row['oracle']:.4f} "
                  f"fit={t_fit:.2f}s", file=sys.stderr, flush=True)
        out["datasets"].append({"name": name, "n_val": fv.num_samples, "n_test": ft.num_samples,
                                "num_classes": fv.num_classes, "costs": costs.tolist(), "rows": rows})
    # timing at the size the brief names: 10,000 validation rows x 4 exits x 10 classes
    d = make_predictions(20000, 4, 10, seed=2, miscalibration=1.0, val_fraction=0.5)
    val = d.split == "val"
    fv = exit_features(d.logits[val][:10000], "logits", d.labels[val][:10000])
    costs = np.asarray(d.costs)
    cache = {}
    t0 = time.perf_counter()
    fit_lookahead(fv, costs, 1.5, seed=seed, cache=cache)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for b in (1.25, 2.0, 2.5, 3.0, 3.5):
        fit_lookahead(fv, costs, b, seed=seed, cache=cache)
    further = (time.perf_counter() - t0) / 5
    out["timing"] = {"n_val": fv.num_samples, "first_budget_seconds": first, "further_budget_seconds": further}
    return out


def table(res: dict) -> str:
    lines = ["| data set | budgets | lookahead | EENet (quota) | max-prob (geometric) | oracle | lookahead − EENet |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for ds in res["datasets"]:
        for band, label in [("tight", "cheapest third"), (None, "whole range")]:
            rs = [r for r in ds["rows"] if band is None or r["band"] == band]
            la = np.mean([r["lookahead"] for r in rs]) * 100
            mp = np.mean([r["maxprob"] for r in rs]) * 100
            orc = np.mean([r["oracle"] for r in rs]) * 100
            if "eenet" in rs[0]:
                ee = np.mean([r["eenet"] for r in rs]) * 100
                ee_s, d_s = f"{ee:.2f}", f"{la - ee:+.2f}"
            else:
                ee_s = d_s = "n/a"
            lines.append(f"| {ds['name']} | {label} ({len(rs)}) | {la:.2f} | {ee_s} | {mp:.2f} | {orc:.2f} | {d_s} |")
    return "\n".join(lines)


def fallback_table(res: dict) -> str:
    lines = ["| data set | budgets | rule only (test) | quota on P̂ only (test) | chosen (test) | rule only (cv) | quota on P̂ only (cv) | chosen (cv) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for ds in res["datasets"]:
        for sel, label in [(lambda r: r["lambda_cv_zero"], "loose (λ = 0)"), (lambda r: not r["lambda_cv_zero"], "binding (λ > 0)")]:
            rs = [r for r in ds["rows"] if sel(r)]
            if not rs:
                continue
            m = lambda key: np.mean([r[key] for r in rs]) * 100  # noqa: E731
            lines.append(f"| {ds['name']} | {label} ({len(rs)}) | {m('rule_only'):.2f} | {m('quota_only'):.2f} | {m('lookahead'):.2f} | "
                         f"{m('rule_only_cv'):.2f} | {m('quota_only_cv'):.2f} | {m('chosen_cv'):.2f} |")
    return "\n".join(lines)


def per_budget(res: dict) -> str:
    lines = ["| data set | budget | lookahead | rule | EENet | max-prob | oracle | lookahead val cost | test cost |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for ds in res["datasets"]:
        for r in ds["rows"]:
            ee = f"{r['eenet'] * 100:.2f}" if "eenet" in r else "n/a"
            lines.append(f"| {ds['name']} | {r['budget']:.4g} | {r['lookahead'] * 100:.2f} | {r['lookahead_rule']} | {ee} | "
                         f"{r['maxprob'] * 100:.2f} | {r['oracle'] * 100:.2f} | {r['lookahead_val_cost']:.4g} | {r['lookahead_test_cost']:.4g} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller data, fewer budgets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-eenet", action="store_true", help="skip EENet (torch training)")
    ap.add_argument("--per-budget", action="store_true", help="also print one row per budget")
    ap.add_argument("--json", help="write the raw results here")
    args = ap.parse_args(argv)
    res = run(args.quick, args.seed, args.no_eenet)
    print("Test accuracy (%), fitted on val, averaged over budgets:\n")
    print(table(res))
    print("\nThe fallback: the lookahead rule alone, geometric quotas on the same estimates P̂[k, k] alone, and the "
          "rule the fit chose, on test and on the cross-fitted validation scores the choice is made on "
          "(accuracy %, averaged over budgets):\n")
    print(fallback_table(res))
    if args.per_budget:
        print()
        print(per_budget(res))
    t = res["timing"]
    print(f"\nlookahead fit time, {t['n_val']} val rows x 4 exits x 10 classes: first budget {t['first_budget_seconds']:.2f} s, "
          f"each further budget (cached estimators) {t['further_budget_seconds']:.3f} s")
    fit_times = [r["fit_seconds"] for ds in res["datasets"] for r in ds["rows"]]
    bad = [(ds["name"], r["budget"], m) for ds in res["datasets"] for r in ds["rows"] for m, ok in r["val_ok"].items() if not ok]
    print(f"validation cost within budget for every fit: {'yes' if not bad else 'NO: ' + repr(bad)}")
    ee_times = [r["eenet_seconds"] for ds in res["datasets"] for r in ds["rows"] if "eenet_seconds" in r]
    if ee_times:
        how = {r.get("eenet_how") for ds in res["datasets"] for r in ds["rows"]}
        print(f"EENet via {', '.join(sorted(h for h in how if h))}: mean fit {np.mean(ee_times):.1f} s per budget; "
              f"lookahead mean fit {np.mean(fit_times):.2f} s per budget (first budget per data set included)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0 if not bad else 1


if __name__ == "__main__":
    raise SystemExit(main())
