"""Combined exit outputs (`--outputs auto`): per-exit test accuracy with the model's own
heads and with the combination chosen on validation, on the data sets of results.py, the
share of rows some exit gets right (the oracle's ceiling) with each, and the fit time,
including the largest case of benchmarks/SCALE.md (25,000 rows, 5 exits, 1,000 classes).

    python benchmarks/outputs.py        # writes benchmarks/OUTPUTS.md and prints it
"""

from __future__ import annotations

import time
from pathlib import Path


from eenet_cli import api
from eenet_cli.core.measures import exit_features
from eenet_cli.core.outputs import combine, describe, fit_outputs
from eenet_cli.synthetic import make_predictions
from results import datasets

HERE = Path(__file__).resolve().parent


def main() -> None:
    lines = ["# Combined exit outputs", "",
             "`--outputs auto` fitted on the validation rows; accuracy (%) on the test rows. `any right` is the share of "
             "test rows that at least one exit gets right with those outputs (the oracle's ceiling at the full budget); "
             "`either` counts a row right at an exit where the own or the combined output is right (the ceiling "
             "`evaluate --outputs auto` reports). Regenerate with `python benchmarks/outputs.py`.", "",
             "| data set | chosen | own, per exit | combined, per exit | any right: own | combined | either | fit (s) |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for name, preds in datasets():
        val, test, _ = api.split_for_evaluation(preds)
        t = time.perf_counter()
        block = fit_outputs(val, "auto")
        seconds = time.perf_counter() - t
        comb = combine(test, block)
        own_acc = " / ".join(f"{100 * v:.1f}" for v in test.correct.mean(axis=0))
        comb_acc = " / ".join(f"{100 * v:.1f}" for v in comb.correct.mean(axis=0))
        either = (test.correct | comb.correct).any(axis=1).mean()
        lines.append(f"| {name} | {describe(block)} | {own_acc} | {comb_acc} | {100 * test.correct.any(axis=1).mean():.1f} "
                     f"| {100 * comb.correct.any(axis=1).mean():.1f} | {100 * either:.1f} | {seconds:.2f} |")
    lines += ["", "## Fit time at scale", "", "| rows × exits × classes | mode | exits combined | seconds |", "|---|---|---|---:|"]
    for n, k, c in ((25_000, 5, 1000), (25_000, 5, 10)):
        d = make_predictions(n, k, c, seed=1)
        f = exit_features(d.logits, "logits", d.labels)
        for mode in ("auto", "combined"):
            t = time.perf_counter()
            block = fit_outputs(f, mode)
            lines.append(f"| {n:,} × {k} × {c:,} | {mode} | {describe(block)} | {time.perf_counter() - t:.1f} |")
    lines.append("")
    text = "\n".join(lines)
    (HERE / "OUTPUTS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
