"""Measure EENet against the geometric baselines on synthetic predictions.

For each dataset (C=10 / C=100, calibrated / miscalibrated) and five budgets evenly
spaced inside (c_1, c_K), fit every method on the validation split and report its TEST
accuracy: eenet (Algorithm 1 quotas), eenet-search (thresholds searched from the quota
start), and the max-prob / entropy baselines with geometric exit distributions, plus the
EENet training time. Differences are in accuracy points (percent).

    python scripts/tune_eenet.py                     # the table in the module docstring of eenet_train
    python scripts/tune_eenet.py --data-seed 1 --samples 10000 --set lr=3e-3 --set beta=1e-3

Targets: EENet on average over datasets >= +0.5 points over the best baseline at every
budget and never below it by more than 1 point; eenet-search never below by more than 0.3.
"""

from __future__ import annotations

import argparse
import ast
import time

import numpy as np

from eenet_cli.core import eenet as core_eenet
from eenet_cli.core.eenet import EENetHyper
from eenet_cli.core.measures import exit_features
from eenet_cli.core.policy import apply_to_features
from eenet_cli.core.thresholds import Ranking, apply_thresholds, fit_geometric
from eenet_cli.learn.eenet_torch import train_eenet
from eenet_cli.synthetic import make_predictions


def fit_eenet_policy(*args, **kwargs):
    return core_eenet.fit_eenet_policy(*args, learner=train_eenet, **kwargs)

DATASETS = [(10, 0.0), (10, 1.0), (100, 0.0), (100, 1.0)]


def _test_accuracy(scores_test: np.ndarray, thresholds, test) -> tuple[float, float]:
    exits = apply_thresholds(scores_test, thresholds)
    rows = np.arange(test.num_samples)
    return float(test.correct[rows, exits].mean()), exits


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=10000, help="rows per dataset (half val, half test)")
    ap.add_argument("--exits", type=int, default=4)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0, help="EENet training seed")
    ap.add_argument("--budgets", type=int, default=5)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override an EENetHyper field")
    args = ap.parse_args(argv)

    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        try:
            overrides[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[name] = value
    hyper = EENetHyper(**overrides)
    import torch  # noqa: F401  (imported here so the first fit time is not the import's)

    print(f"EENetHyper: {hyper}")
    print(f"samples={args.samples} exits={args.exits} data_seed={args.data_seed} train_seed={args.seed}\n")

    header = f"{'dataset':<16}{'budget':>7}{'eenet':>8}{'search':>8}{'maxprob':>9}{'entropy':>9}{'best':>8}{'Δeenet':>8}{'Δsearch':>9}{'fit s':>7}"
    print(header)
    print("-" * len(header))
    d_eenet = np.zeros((len(DATASETS), args.budgets))
    d_search = np.zeros_like(d_eenet)
    times = []
    for di, (c, m) in enumerate(DATASETS):
        data = make_predictions(args.samples, args.exits, c, seed=args.data_seed, miscalibration=m)
        val, test = data.split == "val", data.split == "test"
        fv = exit_features(data.logits[val], labels=data.labels[val])
        ft = exit_features(data.logits[test], labels=data.labels[test])
        costs = np.asarray(data.costs, dtype=np.float64)
        name = f"C={c} {'miscal' if m else 'calib'}"
        for bi, budget in enumerate(np.linspace(costs[0], costs[-1], args.budgets + 2)[1:-1]):
            t0 = time.perf_counter()
            trained = train_eenet(fv, costs, budget, seed=args.seed, hyper=hyper)
            quota = fit_eenet_policy(fv, costs, budget, trained=trained, thresholds="quota")
            fit_s = time.perf_counter() - t0
            search = fit_eenet_policy(fv, costs, budget, trained=trained, thresholds="search")
            times.append(fit_s)
            acc = {}
            for label, pol in (("eenet", quota), ("search", search)):
                applied = apply_to_features(pol, ft)
                acc[label] = float(applied.correct.mean())
            for label, attr in (("maxprob", "max_prob"), ("entropy", "entropy")):
                fit = fit_geometric(Ranking(getattr(fv, attr)), costs, budget)
                acc[label], _ = _test_accuracy(getattr(ft, attr), fit.thresholds, ft)
            best = max(acc["maxprob"], acc["entropy"])
            d_eenet[di, bi] = 100 * (acc["eenet"] - best)
            d_search[di, bi] = 100 * (acc["search"] - best)
            print(
                f"{name:<16}{budget:>7.2f}{100 * acc['eenet']:>8.2f}{100 * acc['search']:>8.2f}"
                f"{100 * acc['maxprob']:>9.2f}{100 * acc['entropy']:>9.2f}{100 * best:>8.2f}"
                f"{d_eenet[di, bi]:>+8.2f}{d_search[di, bi]:>+9.2f}{fit_s:>7.1f}",
                flush=True,
            )
    print()
    per_budget = d_eenet.mean(axis=0)
    print("mean Δeenet per budget (over datasets):", " ".join(f"{x:+.2f}" for x in per_budget))
    print(f"mean Δeenet overall: {d_eenet.mean():+.2f}   worst cell: {d_eenet.min():+.2f}")
    print(f"mean Δsearch overall: {d_search.mean():+.2f}   worst cell: {d_search.min():+.2f}")
    print(f"EENet fit time: mean {np.mean(times):.1f}s, max {np.max(times):.1f}s")
    ok = [
        ("eenet +0.5 per budget (mean over datasets)", bool((per_budget >= 0.5).all())),
        ("eenet never < -1 in a cell", bool(d_eenet.min() >= -1.0)),
        ("eenet-search never < -0.3 in a cell", bool(d_search.min() >= -0.3)),
    ]
    for label, passed in ok:
        print(f"  [{'x' if passed else ' '}] {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
