"""``eenet fit`` (learn a policy for a budget) and ``eenet apply`` (run one over predictions)."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

from eenet_cli.cli import app
from eenet_cli.commands.common import (
    CostsOpt,
    JsonOpt,
    OutputOpt,
    QuietOpt,
    SeedOpt,
    check_seed,
    plan_streams,
    select_split,
    progress_bar,
    summary,
    write_stdout_bytes,
)

FIT_HELP = """Learn an exit policy for an average per-sample budget; write it as JSON.

The policy is fitted on the rows whose split is 'val' (every row when there is no split
column). Without -o the policy JSON goes to stdout once it is complete, so
`eenet fit ... > policy.json` and `eenet fit ... | jq .` work; a one-line summary goes to
stderr (progress bars too, on a terminal).

Methods: eenet (default; the learned utility network of the paper with Algorithm 1
thresholds), eenet-search (the same scores with thresholds searched on validation
accuracy), eenet-geometric, eenet-maxprob (the paper's ablations), lookahead (a
cost-aware stopping rule: stop when the estimated gain of running on is worth less than
its extra cost; see docs/lookahead.md), and the baselines maxprob, entropy, vote,
patience. The realised validation cost of every policy is at
most the budget; the policy records what it realised.

Budgets: 6ms, 250us, 1.5s, 2GFLOPs, 60% (of the full model's cost), or a bare number in
the costs' unit. A budget under the first exit's cost is an error.

Examples:

\b
  eenet fit sample_data/digits.parquet --budget 60% -o policy.json
  eenet fit sample_data/digits.parquet --budget 0.9ms --method maxprob > policy.json
  eenet fit sample_data/digits.parquet --budget 1ms --costs sample_data/digits_costs.json --method lookahead -o policy.json
"""


def _hyper_from_options(**kw):
    given = {k: v for k, v in kw.items() if v is not None}
    if not given:
        return None
    from eenet_cli.core.eenet_train import EENetHyper

    return EENetHyper(**given)


@app.command("fit", help=FIT_HELP)
def fit_command(
    predictions: Annotated[str, typer.Argument(help="Predictions Parquet file or folder ('-' for stdin).", show_default=False)],
    budget: Annotated[str, typer.Option("--budget", "-b", help="Average per-sample budget, e.g. 6ms or 60%.", show_default=False)],
    costs: CostsOpt = None,
    method: Annotated[str, typer.Option("--method", "-m", help="eenet, eenet-search, eenet-geometric, eenet-maxprob, lookahead, maxprob, entropy, vote or patience.")] = "eenet",
    output: OutputOpt = None,
    seed: SeedOpt = 0,
    record_time: Annotated[bool, typer.Option("--record-time", help="Store the fit's wall-clock seconds in the policy (makes the file differ between runs).")] = False,
    quiet: QuietOpt = False,
) -> None:
    from eenet_cli import api
    from eenet_cli.budgets import parse_budget
    from eenet_cli.core.methods import POLICY_METHODS, check_method
    from eenet_cli.io import dumps, write_text

    check_method(method, POLICY_METHODS)
    check_seed(seed)
    streams = plan_streams(
        output, what="policy", terminal_view=False, quiet=quiet, inputs=[("predictions", predictions), ("costs file", costs)]
    )
    preds = api.load_predictions(predictions)
    cost = api.resolve_costs(preds, costs)
    b = parse_budget(budget, cost)
    start = time.perf_counter()
    with progress_bar(f"fitting {method}", None, quiet, fields={"loss": "loss", "cost": "E[cost]"}) as update:

        def progress(step: int, total: int, info: dict) -> None:
            update(
                0,
                completed=step,
                total=total,
                loss=f"{info.get('loss', float('nan')):.4f}",
                cost=f"{info.get('expected_cost', float('nan')):.4g}",
            )

        policy = api.fit_policy(preds, b, method=method, costs=cost, seed=seed, progress=progress)
    seconds = time.perf_counter() - start
    if record_time:
        policy["training"]["seconds"] = round(seconds, 3)
    text = dumps(policy)
    if streams.artifact == "-":
        write_stdout_bytes(text.encode("utf-8"))
    else:
        write_text(streams.artifact, text)
    # said once the inputs have passed every check, so bad input gets exactly one line
    summary(f"costs: {cost.source} ({', '.join(f'{c:g}' for c in cost.values)} {cost.unit})", quiet)
    v = policy["validation"]
    where = "stdout" if streams.artifact == "-" else streams.artifact
    summary(
        f"{method} @ {b:g}{cost.unit}: validation accuracy {100 * v['accuracy']:.2f}%, average cost "
        f"{v['avg_cost']:.4g}{cost.unit} (n={v['n']}), exits {'/'.join(f'{x:.2f}' for x in v['exit_fractions'])}, "
        f"fitted in {seconds:.1f}s; policy written to {where}",
        quiet,
    )


APPLY_HELP = """Run a policy over predictions with numpy alone (Algorithm 2, offline).

Writes, per sample, the exit taken (the file's 0-based exit index, as in the exit_k
columns), its score, the prediction and whether it is right, as Parquet (or CSV by the
extension of -o). Rows: the test split when the predictions have a split column
(--split val, or --split all for every row), else every row. A one-line summary
(accuracy, average cost, exit fractions, budget met) goes to stderr; --json prints it as
JSON on stdout instead of the per-sample table.

Examples:

\b
  eenet fit sample_data/digits.parquet --budget 60% -o policy.json
  eenet apply policy.json sample_data/digits.parquet --json
  eenet apply policy.json sample_data/digits.parquet --split all -o exits.parquet
"""


@app.command("apply", help=APPLY_HELP)
def apply_command(
    policy_path: Annotated[str, typer.Argument(metavar="POLICY", help="Policy JSON from `eenet fit`.", show_default=False)],
    predictions: Annotated[str, typer.Argument(help="Predictions Parquet file or folder ('-' for stdin).", show_default=False)],
    output: OutputOpt = None,
    split: Annotated[Optional[str], typer.Option("--split", help="Rows of this split (val, test, ...) or all. Default: test when there is a split column.")] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from eenet_cli import api
    from eenet_cli.errors import InputError
    from eenet_cli.io import dumps, read_policy

    if output is not None and output != "-" and not output.lower().endswith((".parquet", ".csv")):
        raise InputError("use a .parquet or .csv file name for the per-sample output", source=output, field="--output")
    streams = plan_streams(
        output,
        what="per-sample exits",
        binary=True,
        json_out=json_out,
        quiet=quiet,
        inputs=[("policy", policy_path), ("predictions", predictions)],
    )
    policy = read_policy(policy_path, role="POLICY")
    preds = api.load_predictions(predictions)
    preds, _ = select_split(preds, split)
    result = api.apply_policy(policy, preds, source=policy_path)
    if streams.artifact is not None:
        _write_exits(streams.artifact, preds, result)
    s = result.summary
    if json_out:
        write_stdout_bytes(dumps(s).encode("utf-8"))
    acc = "n/a" if s["accuracy"] is None else f"{100 * s['accuracy']:.2f}%"
    met = "" if s["budget"] is None else f" (budget {s['budget']:g}{s['unit']}: {'met' if s['budget_met'] else 'OVERRUN'})"
    rows = "every row" if preds.split is None else f"split {', '.join(sorted(set(preds.split.tolist())))}"
    summary(
        f"{s['method']}: {s['n']} samples ({rows}), accuracy {acc}, average cost {s['avg_cost']:.4g}{s['unit']}{met}, "
        f"exits {'/'.join(f'{x:.3f}' for x in s['exit_fractions'])}",
        quiet,
    )


def _write_exits(path: str, preds, result) -> None:
    import numpy as np
    import pyarrow as pa

    from eenet_cli.io import atomic_path

    cols = {}
    if preds.sample_id is not None:
        cols["sample_id"] = pa.array(preds.sample_id)
    if preds.split is not None:
        cols["split"] = pa.array(preds.split, type=pa.string())
    cols["exit"] = pa.array(result.exits.astype(np.int64))
    cols["score"] = pa.array(result.exit_scores.astype(np.float64))
    cols["prediction"] = pa.array(result.preds.astype(np.int64))
    if preds.labels is not None:
        cols["label"] = pa.array(preds.labels)
        cols["correct"] = pa.array(result.correct)
    table = pa.table(cols)
    import pyarrow.parquet as pq

    if path == "-":
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        write_stdout_bytes(sink.getvalue().to_pybytes())
        return
    with atomic_path(path) as tmp:
        if path.lower().endswith(".csv"):
            table.to_pandas().to_csv(tmp, index=False)
        else:
            pq.write_table(table, tmp)
