"""Does the certificate hold? Redraw the validation rows many times from a large population.

    python benchmarks/certify_validity.py                 # 100 draws, every method (~1 h on 2 cores)
    python benchmarks/certify_validity.py --draws 20 --methods maxprob,lookahead   # a quicker look
    # two processes (one per core), then one table from both:
    python benchmarks/certify_validity.py --methods lookahead --first 0 --draws 50 --records a.json --out a.md &
    python benchmarks/certify_validity.py --methods lookahead --first 50 --draws 100 --records b.json --out b.md
    python benchmarks/certify_validity.py --methods lookahead --from-records a.json,b.json --out table.md

A population of synthetic predictions (``--population`` rows) stands in for "new data from
the same distribution": a policy's expected cost, harm rate and disagreement rate are its
means over the whole population. Each draw takes ``--rows`` validation rows at random
(without replacement), fits a certified policy of every method for

* a budget B (halfway up the costs),
* an accuracy drop (harm) of at most ``--max-drop``,
* a disagreement with the last exit of at most ``--max-disagreement``,

at confidence 1 − δ for each δ in ``--deltas``, and records the population figures. The
table gives, per method, δ and guarantee, how many draws broke it, against the most a
valid procedure allows at 95% (the binomial quantile of δ·draws). For the budget it also
gives the median slack (B − expected cost) / (c_K − c_1): how tight the bound is. The
table is written to ``benchmarks/CERTIFY_VALIDITY.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from eenet_cli import api  # noqa: E402
from eenet_cli.certified import fit_certified  # noqa: E402
from eenet_cli.core.certify import binomial_cdf  # noqa: E402
from eenet_cli.core.methods import POLICY_METHODS  # noqa: E402
from eenet_cli.core.policy import apply_to_features  # noqa: E402
from eenet_cli.errors import WorkFailed  # noqa: E402
from eenet_cli.synthetic import make_predictions  # noqa: E402


def allowed(draws: int, delta: float, level: float = 0.95) -> int:
    """The largest number of broken draws a valid procedure reaches with probability >= level."""
    k = np.arange(draws + 1)
    cdf = np.asarray(binomial_cdf(k, draws, delta))
    return int(k[np.argmax(cdf >= level)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--rows", type=int, default=5000, help="validation rows per draw")
    ap.add_argument("--population", type=int, default=200_000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--methods", default=",".join(POLICY_METHODS))
    ap.add_argument("--deltas", default="0.1,0.05")
    ap.add_argument("--asks", default="cost,drop,disagreement", help="which guarantees to fit (comma-separated); e.g. cost alone for a tightness run")
    ap.add_argument("--max-drop", type=float, default=0.02)
    ap.add_argument("--max-disagreement", type=float, default=0.05)
    ap.add_argument("--out", default=str(HERE / "CERTIFY_VALIDITY.md"))
    ap.add_argument("--first", type=int, default=0, help="first draw to run (the earlier draws' rows are still drawn, so draw i is the same rows in every run)")
    ap.add_argument("--records", help="also write every draw's figures to this JSON file")
    ap.add_argument("--from-records", help="comma-separated record files: write the table from them, run nothing")
    args = ap.parse_args()
    methods = args.methods.split(",")
    deltas = [float(d) for d in args.deltas.split(",")]

    syn = make_predictions(args.population, 4, args.classes, seed=5, miscalibration=0.7, val_fraction=1.0)
    pop = api.predictions_from_arrays(syn.logits, syn.labels, costs=syn.costs, unit="ms").features()
    costs = np.asarray(syn.costs, dtype=np.float64)
    budget = float(costs[0] + 0.5 * (costs[-1] - costs[0]))
    span = costs[-1] - costs[0]
    last_right, last_pred = pop.correct[:, -1], pop.preds[:, -1]
    from eenet_cli.learn.eenet_torch import train_eenet

    asks = {"cost": dict(budget=budget), "drop": dict(max_drop=args.max_drop),
            "disagreement": dict(max_disagreement=args.max_disagreement)}
    asks = {a: kw for a, kw in asks.items() if a in args.asks.split(",")}
    broke = {(m, d, a): [] for m in methods for d in deltas for a in asks}
    slack = {(m, d): [] for m in methods for d in deltas}
    infeasible = {(m, d, a): 0 for m in methods for d in deltas for a in asks}
    records: list[dict] = []

    def record(draw: int, m: str, d: float, a: str, *, broken: bool | None = None, value_slack: float | None = None) -> None:
        records.append({"draw": draw, "method": m, "delta": d, "ask": a, "broke": broken, "slack": value_slack})
        if broken is None:
            infeasible[(m, d, a)] += 1
            return
        broke[(m, d, a)].append(broken)
        if value_slack is not None:
            slack[(m, d)].append(value_slack)

    def write(done: int) -> None:
        lines = [
            "# Certified policies over redrawn validation sets", "",
            f"{done} draws of {args.rows} validation rows from a synthetic population of {args.population:,} rows "
            f"(K=4, C={args.classes}, per-class miscalibration 0.7). Guarantees: "
            + ", ".join(g for a, g in (("cost", f"expected cost <= {budget:.4g} ms (halfway up the costs)"),
                                       ("drop", f"harm rate <= {args.max_drop:g}"),
                                       ("disagreement", f"disagreement with the last exit <= {args.max_disagreement:g}")) if a in asks)
            + "; each fitted on its own, at confidence 1 - δ. \"broke\" counts draws whose "
            "population figure exceeds the level; \"allowed\" is the 95% binomial quantile of δ·draws (a valid "
            "procedure stays within it 95% of the time); \"infeasible\" counts draws where the request was refused. "
            "Slack is (B − expected cost) / (c_K − c_1), median over draws. Regenerate with "
            "`python benchmarks/certify_validity.py`.", "",
            "| method | δ | " + " | ".join(f"{a} broke" + (" / draws" if i == 0 else "") for i, a in enumerate(asks))
            + f" | allowed | infeasible ({'/'.join(a[:4] for a in asks)}) | median slack | met |",
            "|---|---:|" + "---:|" * len(asks) + "---:|---:|---:|:---:|",
        ]
        for m in methods:
            for d in deltas:
                ok = True
                cells = []
                for a in asks:
                    b = broke[(m, d, a)]
                    cells.append(f"{sum(b)} / {len(b)}")
                    ok &= sum(b) <= allowed(len(b), d) if b else True
                s = np.median(slack[(m, d)]) if slack[(m, d)] else float("nan")
                inf = "/".join(str(infeasible[(m, d, a)]) for a in asks)
                lines.append(f"| {m} | {d:g} | {' | '.join(cells)} | {allowed(done, d)} | {inf} | {100 * s:.2f}% | {'yes' if ok else 'NO'} |")
        lines += ["", f"Total time {time.perf_counter() - t0:.0f} s."]
        Path(args.out).write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        if args.records:
            import json

            Path(args.records).write_text(json.dumps(records))

    t0 = time.perf_counter()
    if args.from_records:
        import json

        for f in args.from_records.split(","):
            for r in json.loads(Path(f).read_text()):
                if r["method"] in methods and r["delta"] in deltas:
                    record(r["draw"], r["method"], r["delta"], r["ask"], broken=r["broke"], value_slack=r["slack"])
        draws = {r["draw"] for r in records}
        write(len(draws))
        return
    rng = np.random.default_rng(2026)
    for draw in range(args.draws):
        rows = rng.choice(args.population, size=args.rows, replace=False)
        if draw < args.first:
            continue
        feats = pop.subset(rows)
        for m in methods:
            caches: dict = {}
            for d in deltas:
                for a, kw in asks.items():
                    try:
                        pol = fit_certified(m, feats, costs, "ms", budget=kw.get("budget"), confidence=1 - d,
                                            max_drop=kw.get("max_drop"), max_disagreement=kw.get("max_disagreement"),
                                            seed=draw, learner=train_eenet, caches=caches)
                    except WorkFailed:
                        record(draw, m, d, a)
                        continue
                    applied = apply_to_features(pol, pop)
                    if a == "cost":
                        value = float(costs[applied.exits].mean())
                        record(draw, m, d, a, broken=bool(value > budget), value_slack=(budget - value) / span)
                    elif a == "drop":
                        record(draw, m, d, a, broken=bool(float((~applied.correct & last_right).mean()) > args.max_drop))
                    else:
                        record(draw, m, d, a, broken=bool(float((applied.preds != last_pred).mean()) > args.max_disagreement))
        print(f"draw {draw + 1}/{args.draws} done, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        if (draw + 1) % 5 == 0 or draw + 1 == args.draws:
            write(draw + 1 - args.first)


if __name__ == "__main__":
    main()
