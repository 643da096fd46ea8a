"""Accuracy of every exit policy at several budgets, on the shipped real predictions and on
two synthetic cases (one calibrated, one with per-class miscalibration), plus fit time.

    python benchmarks/results.py        # writes benchmarks/RESULTS.md and prints it

Each method is fitted on the validation rows and scored on the test rows, through the
same `evaluate` the command line uses. Budgets: five evenly spaced strictly inside
[c_1, c_K] (the endpoints leave no choice to make).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from eenet_cli import api
from eenet_cli.core.evaluate import evaluate_features
from eenet_cli.core.policy import apply_to_features
from eenet_cli.learn.eenet_torch import train_eenet
from eenet_cli.synthetic import make_predictions

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LEARNED = ["eenet", "eenet-search", "lookahead"]
METHODS = ["maxprob", "entropy", "vote", "patience", "eenet", "eenet-search", "lookahead", "oracle"]
BASELINES = ["maxprob", "entropy", "vote", "patience"]


def tabular_mlp():
    """Poorly calibrated real tabular exits: a 4-exit MultiExitMLP trained briefly (a few
    epochs, exits weighted unevenly so the third exit is weaker than the second) on an
    8-class generated tabular task; logits of held-out rows, half validation, half test."""
    import torch
    from sklearn.datasets import make_classification

    from eenet_cli.runtime.models import MultiExitMLP

    x, y = make_classification(n_samples=16000, n_features=24, n_informative=16, n_redundant=4, n_classes=8,
                               n_clusters_per_class=3, class_sep=1.2, random_state=5)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    torch.manual_seed(0)
    net = MultiExitMLP(in_features=24, hidden=48, num_exits=4, num_classes=8)
    train = np.arange(8000)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    weights = [0.3, 0.6, 0.03, 1.0]  # the third head barely trained: weaker than the second
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train]).long()
    for epoch in range(8):
        for b in torch.randperm(train.size).split(128):
            h, loss = xt[b], 0.0
            for stage, head, w in zip(net.stages, net.heads, weights):
                h = stage(h)
                loss = loss + w * torch.nn.functional.cross_entropy(3.0 * head(h), yt[b])  # overconfident heads
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        h, outs = torch.from_numpy(x[8000:]), []
        for stage, head in zip(net.stages, net.heads):
            h = stage(h)
            outs.append(3.0 * head(h))
    logits = torch.stack(outs, 1).numpy()
    labels = y[8000:]
    split = np.where(np.arange(labels.size) % 2 == 0, "val", "test")
    return api.predictions_from_arrays(logits, labels, split=split, costs=[1.0, 2.0, 3.0, 4.0], unit="ms")


def datasets():
    yield "digits CNN (real, K=4, C=10)", api.load_predictions(str(ROOT / "sample_data" / "digits.parquet"))
    text = ROOT / "sample_data" / "text" / "rotten_tomatoes.parquet"
    if text.exists():
        yield "MiniLM text (real, K=6, C=2)", api.load_predictions(str(text))
    yield "tabular MLP, uneven exits (real training, K=4, C=8)", tabular_mlp()
    for name, mis in (("synthetic calibrated (K=4, C=100)", 0.0), ("synthetic miscalibrated (K=4, C=10)", 1.0)):
        d = make_predictions(8000, 4, 100 if mis == 0 else 10, seed=11, miscalibration=mis)
        yield name, api.predictions_from_arrays(d.logits, d.labels, split=d.split, costs=d.costs, unit="ms")


def paired_se(a: np.ndarray, b: np.ndarray) -> float:
    """Standard error (points) of the difference in accuracy of two policies on the same rows."""
    d = a.astype(np.float64) - b.astype(np.float64)
    return float(100 * d.std(ddof=1) / np.sqrt(d.size))


def gap_share(best: float, oracle: float, learned: float) -> float | None:
    """Share of the best-baseline -> oracle gap a method closes (None where the gap is < 0.1 point)."""
    gap = oracle - best
    return None if gap < 0.1 else (learned - best) / gap


def gap_tables(gaps: list, names: list[str]) -> list[str]:
    """Share of the best-baseline -> oracle gap closed, per method and data set (all budgets
    and the tight ones, the cheapest third of [c_1, c_K]), and the best learned method's."""
    out = ["## Share of the best-baseline → oracle gap closed", "",
           "(learned − best baseline) / (oracle − best baseline), averaged over the budgets where the gap is at "
           "least 0.1 point; tight = budgets in the cheapest third of [c_1, c_K]. `best learned` takes, per data "
           "set, the learned method with the highest average.", "",
           "| data set | " + " | ".join(LEARNED) + " | best learned | " + " | ".join(f"{m} (tight)" for m in LEARNED) + " |",
           "|---|" + "---:|" * (2 * len(LEARNED) + 1)]
    best_all = []
    for name in names:
        rows = [g for g in gaps if g[0] == name]
        tight = rows[:2]
        def mean_share(rs, m):
            v = [gap_share(r[2], r[3], r[4][m]) for r in rs]
            v = [x for x in v if x is not None]
            return float(np.mean(v)) if v else float("nan")
        alls = {m: mean_share(rows, m) for m in LEARNED}
        tights = {m: mean_share(tight, m) for m in LEARNED}
        best = max(alls.values())
        best_all.append(best)
        out.append(f"| {name} | " + " | ".join(f"{alls[m]:+.2f}" for m in LEARNED) + f" | {best:+.2f} | "
                   + " | ".join(f"{tights[m]:+.2f}" for m in LEARNED) + " |")
    out += ["", f"Best learned method, mean over data sets: {np.nanmean(best_all):+.2f}.", "",
            "## Tight budgets (cheapest third): accuracy (%)", "",
            "| data set | budget | best base | " + " | ".join(LEARNED) + " | oracle | lookahead − eenet |",
            "|---|---:|---:|" + "---:|" * (len(LEARNED) + 2)]
    for name in names:
        for g in [g for g in gaps if g[0] == name][:2]:
            out.append(f"| {name} | {g[1]:.4g} | {g[2]:.2f} | " + " | ".join(f"{g[4][m]:.2f}" for m in LEARNED)
                       + f" | {g[3]:.2f} | {g[4]['lookahead'] - g[4]['eenet']:+.2f} |")
    out.append("")
    return out


def main() -> None:
    lines = ["# Policy accuracy by budget", "",
             "Test accuracy (%) of each method fitted on validation, at five budgets inside [c_1, c_K];",
             "`best base` is the best of maxprob, entropy, vote and patience at that budget. "
             "`± x` is the paired standard error of the difference on the test rows: a best-of-four "
             "baseline on a few hundred test rows sits above each of its members by about that much "
             "by chance alone. Regenerate with `python benchmarks/results.py`.", ""]
    summary = []
    gaps = []
    for name, preds in datasets():
        costs = api.resolve_costs(preds, None)
        budgets = list(np.linspace(costs.values[0], costs.values[-1], 7)[1:-1])
        val, test, _ = api.split_for_evaluation(preds)
        t = time.perf_counter()
        records, policies = evaluate_features(val, test, costs.values, costs.unit, budgets, METHODS, keep_policies=True, learner=train_eenet)
        seconds = time.perf_counter() - t
        by = {(r["method"], round(r["budget"], 9)): r for r in records}
        right = {(p["method"], round(p["budget"]["value"], 9)): apply_to_features(p, test).correct for p in policies}
        lines += [f"## {name}", "", f"evaluate with {len(METHODS)} methods at 5 budgets: {seconds:.1f} s "
                  f"({val.num_samples} validation, {test.num_samples} test rows)", "",
                  "| budget | " + " | ".join(METHODS) + " | best base | eenet − best base | eenet-search − best base "
                  "| lookahead − eenet |",
                  "|---:|" + "---:|" * (len(METHODS) + 4)]
        for b in budgets:
            key = round(b, 9)
            acc = {m: 100 * by[(m, key)]["accuracy"] for m in METHODS}
            best_name = max(BASELINES, key=lambda m: acc[m])
            best = acc[best_name]
            lines.append(f"| {b:.4g}{costs.unit} | " + " | ".join(f"{acc[m]:.2f}" for m in METHODS)
                         + f" | {best:.2f} | {acc['eenet'] - best:+.2f} "
                         + f"| {acc['eenet-search'] - best:+.2f} ± {paired_se(right[('eenet-search', key)], right[(best_name, key)]):.2f} "
                         + f"| {acc['lookahead'] - acc['eenet']:+.2f} |")
            summary.append((name, acc["eenet"] - best, acc["eenet-search"] - best, acc["lookahead"] - acc["eenet"], acc["lookahead"] - best))
            gaps.append((name, b, best, acc["oracle"], {m: acc[m] for m in LEARNED}))
        lines.append("")
    arr = np.array([s[1:] for s in summary])
    lines += ["## Summary over all data sets and budgets", "",
              "| | mean | min |", "|---|---:|---:|",
              f"| eenet − best baseline (points) | {arr[:, 0].mean():+.2f} | {arr[:, 0].min():+.2f} |",
              f"| eenet-search − best baseline | {arr[:, 1].mean():+.2f} | {arr[:, 1].min():+.2f} |",
              f"| lookahead − eenet | {arr[:, 2].mean():+.2f} | {arr[:, 2].min():+.2f} |",
              f"| lookahead − best baseline | {arr[:, 3].mean():+.2f} | {arr[:, 3].min():+.2f} |", "",
              "## Lookahead − eenet by data set", "",
              "Tight budgets are the two in the cheapest third of [c_1, c_K].", "",
              "| data set | tight budgets | all budgets |", "|---|---:|---:|"]
    names = list(dict.fromkeys(s[0] for s in summary))
    tight = []
    for name in names:
        d = np.array([s[3] for s in summary if s[0] == name])
        tight.append(d[:2].mean())
        lines.append(f"| {name} | {d[:2].mean():+.2f} | {d.mean():+.2f} |")
    lines += ["", f"Mean over data sets at tight budgets: {np.mean(tight):+.2f}.", ""]
    lines += gap_tables(gaps, names)
    text = "\n".join(lines)
    (HERE / "RESULTS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
