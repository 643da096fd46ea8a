"""``eenet fit``: learn an exit policy for a budget and write it as JSON."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

from eenet_cli.app import app
from eenet_cli.commands.options import (
    ConfidenceOpt,
    CostsOpt,
    EENetInputsOpt,
    OutputOpt,
    OutputsOpt,
    QuietOpt,
    SeedOpt,
    certificate_line,
    check_outputs,
    check_seed,
    eenet_hyper,
    parse_share,
)
from eenet_cli.core.methods import POLICY_METHODS, methods_help
from eenet_cli.render import plan_streams, progress_bar, summary

FIT_HELP = f"""Learn an exit policy for an average per-sample budget; write it as JSON.

The policy is fitted on the rows whose split is 'val' (every row when there is no split
column). Without -o the policy JSON goes to stdout once it is complete, so
`eenet fit ... > policy.json` and `eenet fit ... | jq .` work; a one-line summary goes to
stderr (progress bars too, on a terminal).

The realised validation cost of every policy is at most the budget; the policy records
what it realised. Methods (--method, default eenet; see docs/lookahead.md, docs/eenet.md):

\b
{methods_help(POLICY_METHODS)}

EENet's scorer reads a few measures per exit by default (--eenet-inputs compact: its size
does not grow with the number of classes and it runs on compact predictions); --eenet-inputs
full is the paper's scorer on every class probability.

With --outputs combined (or auto) exit k may predict with a weighted geometric mean of
the class probabilities of exits 1..k, weights fitted on validation (auto: only where
held-out folds show it is more accurate); the policy carries the weights, and applying it
needs the full score vectors (docs/outputs.md).

Budgets: 6ms, 250us, 1.5s, 2GFLOPs, 60% (of the full model's cost), or a bare number in
the costs' unit. A budget under the first exit's cost is an error.

Examples:

\b
  eenet fit sample_data/digits.parquet --budget 60% -o policy.json
  eenet fit sample_data/digits.parquet --budget 0.9ms --method maxprob > policy.json
  eenet fit sample_data/digits.parquet --budget 1ms --costs sample_data/digits_costs.json --method lookahead -o policy.json
  eenet fit sample_data/digits.parquet --budget 60% --method maxprob --confidence 0.9 -o certified.json
  eenet fit sample_data/digits.parquet --budget 60% --eenet-inputs full -o paper.json
  eenet fit sample_data/digits.parquet --budget 60% --method lookahead --outputs auto -o pooled.json

With --confidence 0.9 the policy's expected cost on new data from the same distribution
is at most the budget with probability 0.9 (and its accuracy drop at most --max-drop):
it is fitted on part of the validation rows and its thresholds shifted on the rest, and
it carries a certificate (docs/certify.md; `eenet certify` checks one on new data).
"""


@app.command("fit", help=FIT_HELP)
def fit_command(
    predictions: Annotated[str, typer.Argument(help="Predictions Parquet file or folder ('-' for stdin).", show_default=False)],
    budget: Annotated[Optional[str], typer.Option("--budget", "-b", help="Average per-sample budget, e.g. 6ms or 60%.", show_default=False)] = None,
    costs: CostsOpt = None,
    method: Annotated[str, typer.Option("--method", "-m", help="One of: " + ", ".join(POLICY_METHODS) + " (described above).")] = "eenet",
    output: OutputOpt = None,
    seed: SeedOpt = 0,
    eenet_inputs: EENetInputsOpt = None,
    outputs: OutputsOpt = None,
    confidence: ConfidenceOpt = None,
    max_drop: Annotated[Optional[str], typer.Option("--max-drop", help="Largest accuracy drop against the last exit, e.g. 1% or 0.01: the cheapest policy within it (certified with --confidence).", show_default=False)] = None,
    max_disagreement: Annotated[Optional[str], typer.Option("--max-disagreement", help="Largest share of predictions that differ from the last exit's (needs no labels), e.g. 2%.", show_default=False)] = None,
    deploy_batch: Annotated[Optional[int], typer.Option("--deploy-batch", help="With --confidence: certify the mean cost of the next N deployed samples, not only the expected cost.", show_default=False)] = None,
    calibration_share: Annotated[float | None, typer.Option("--calibration-share", help="With --confidence: share of the validation rows held out to certify on [default: half; up to 3/4 for a loss limit alone on few rows].", show_default=False)] = None,
    record_time: Annotated[bool, typer.Option("--record-time", help="Store the fit's wall-clock seconds in the policy (makes the file differ between runs).")] = False,
    quiet: QuietOpt = False,
) -> None:
    from eenet_cli import api
    from eenet_cli.artifacts.costs import parse_budget
    from eenet_cli.artifacts.files import dumps
    from eenet_cli.core.methods import POLICY_METHODS, check_method
    from eenet_cli.errors import InputError

    check_method(method, POLICY_METHODS)
    check_seed(seed)
    hyper = eenet_hyper(eenet_inputs)
    outputs_mode = check_outputs(outputs)
    streams = plan_streams(
        output, what="policy", terminal_view=False, quiet=quiet, inputs=[("predictions", predictions), ("costs file", costs)]
    )
    conf = parse_share(confidence, "--confidence")
    drop = parse_share(max_drop, "--max-drop")
    disagree = parse_share(max_disagreement, "--max-disagreement")
    if budget is None and drop is None and disagree is None:
        raise InputError("give --budget (and/or --max-drop or --max-disagreement); see eenet fit --help", field="--budget")
    preds = api.load_predictions(predictions)
    cost = api.resolve_costs(preds, costs)
    b = parse_budget(budget, cost) if budget is not None else None
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

        policy = api.fit_policy(
            preds, b, method=method, costs=cost, seed=seed, hyper=hyper, progress=progress, confidence=conf, max_drop=drop,
            max_disagreement=disagree, deploy_batch=deploy_batch, calibration_share=calibration_share,
            outputs=outputs_mode,
        )
    seconds = time.perf_counter() - start
    if record_time:
        policy["training"]["seconds"] = round(seconds, 3)
    streams.write_text_artifact(dumps(policy))
    # said once the inputs have passed every check, so bad input gets exactly one line
    summary(f"costs: {cost.source} ({', '.join(f'{c:g}' for c in cost.values)} {cost.unit})", quiet)
    v = policy["validation"]
    where = "stdout" if streams.artifact == "-" else streams.artifact
    at = f"{b:g}{cost.unit}" if b is not None else "no budget"
    summary(
        f"{method} @ {at}: validation accuracy {100 * v['accuracy']:.2f}%, average cost "
        f"{v['avg_cost']:.4g}{cost.unit} (n={v['n']}), exits {'/'.join(f'{x:.2f}' for x in v['exit_fractions'])}, "
        f"fitted in {seconds:.1f}s; policy written to {where}",
        quiet,
    )
    if "certificate" in policy:
        summary(certificate_line(policy["certificate"]), quiet)
