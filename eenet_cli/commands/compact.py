"""``eenet compact``: convert full-score predictions into compact predictions (top-k per exit)."""

from __future__ import annotations

from typing import Annotated

import typer

from eenet_cli.app import app
from eenet_cli.commands.options import JsonOpt, OutputOpt, PredictionsArg, QuietOpt

COMPACT_HELP = """Convert a full-score predictions file into compact predictions (docs/spec.md §2.1.1).

Per exit, the compact file keeps the top-k scores and their classes, the log-sum-exp of the
full scores, the entropy of the full distribution, each exit's score of every exit's
predicted class, and the label's score: a few numbers per exit instead of C. fit, apply,
evaluate, certify and plot read it as they read the full file, and every method except
EENet's full-vector scorer makes exactly the same decisions on it. Reads batch by batch
(a folder of part files too); writes one file, atomically. A one-line summary goes to
stderr; --json prints it as JSON on stdout.

Examples:

\b
  eenet compact sample_data/digits.parquet -o digits-compact.parquet
  eenet compact sample_data/digits.parquet --top-k 3 -o digits-top3.parquet --json
  eenet evaluate digits-compact.parquet --methods maxprob,entropy,oracle --budgets 50%
"""


@app.command("compact", help=COMPACT_HELP)
def compact_command(
    predictions: PredictionsArg,
    output: OutputOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Classes kept per exit (at least 2).")] = 5,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    import os
    import tempfile

    from eenet_cli.artifacts.files import dumps
    from eenet_cli.artifacts.predictions import compact_predictions
    from eenet_cli.errors import InputError
    from eenet_cli.render import plan_streams, summary, write_stdout_bytes

    if predictions == "-":
        raise InputError("compact reads a file or folder, not stdin (it streams the file batch by batch)", field="PREDICTIONS")
    streams = plan_streams(
        output, what="compact predictions", binary=True, json_out=json_out, terminal_view=False, quiet=quiet,
        inputs=[("predictions", predictions)],
    )
    if streams.artifact is None:
        raise InputError("--json prints a summary; give the compact file with -o FILE", field="--output")
    if top_k < 2:
        raise InputError(f"must be at least 2 (the top two classes give the margin), got {top_k}", field="--top-k")
    if streams.artifact == "-":
        with tempfile.TemporaryDirectory(prefix="eenet-compact-") as spool:
            path = os.path.join(spool, "compact.parquet")
            info = compact_predictions(predictions, path, top_k=top_k)
            with open(path, "rb") as fh:
                data = fh.read()
        write_stdout_bytes(data)
        info["output"] = "-"
    else:
        info = compact_predictions(predictions, streams.artifact, top_k=top_k)
    summary(
        f"wrote {'stdout' if info['output'] == '-' else info['output']}: {info['rows']:,} rows, {info['num_exits']} exits, "
        f"top {info['top_k']} of {info['num_classes']} classes ({info['scores']})",
        quiet,
    )
    if json_out:
        write_stdout_bytes(dumps(info).encode("utf-8"))
