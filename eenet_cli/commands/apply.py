"""``eenet apply``: run a policy over predictions with numpy alone; per-sample exits."""

from __future__ import annotations

from eenet_cli.app import app
from eenet_cli.commands.options import JsonOpt, OutputOpt, PolicyArg, PredictionsArg, QuietOpt, RowsOpt, certificate_line, select_split
from eenet_cli.render import plan_streams, summary, write_stdout_bytes

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
    policy_path: PolicyArg,
    predictions: PredictionsArg,
    output: OutputOpt = None,
    split: RowsOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from eenet_cli import api
    from eenet_cli.artifacts.files import dumps
    from eenet_cli.artifacts.policy import read_policy
    from eenet_cli.errors import InputError

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
        from eenet_cli.artifacts.exits import write_exits

        write_exits(streams.artifact, preds, result, write_stdout_bytes)
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
    if "certificate" in policy:
        summary(certificate_line(policy["certificate"]), quiet)
