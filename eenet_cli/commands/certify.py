"""``eenet certify``: upper confidence bounds for an existing policy on fresh rows."""

from __future__ import annotations

from typing import Annotated

import typer

from eenet_cli.app import app
from eenet_cli.commands.options import ConfidenceOpt, JsonOpt, OutputOpt, PolicyArg, PredictionsArg, QuietOpt, RowsOpt, SeedOpt, check_seed, parse_share, select_split
from eenet_cli.render import plan_streams, summary

CERTIFY_HELP = """Bound a policy's expected cost, accuracy drop and disagreement on fresh rows.

For CI and for production traffic: with the given confidence, the policy's expected
per-sample cost on data like these rows is at most the cost bound, its accuracy drop
against the last exit at most the drop bound (needs labels), and the share of its
predictions that differ from the last exit's at most the disagreement bound (needs no
labels). The rows must not be the ones the policy was fitted on; on its own calibration
rows (--calibration-rows) the bounds reproduce the policy's certificate. Rows: the test
split when the predictions have one (--split val|test|all), else every row. The bounds
are written as JSON (to -o, or stdout when it is not a terminal); one line per bound goes
to stderr. See docs/certify.md.

Examples:

\b
  eenet fit sample_data/digits.parquet --budget 60% --method maxprob --confidence 0.9 -o certified.json
  eenet certify certified.json sample_data/digits.parquet --confidence 0.95 -o bounds.json
  eenet certify certified.json sample_data/digits.parquet --calibration-rows
"""


@app.command("certify", help=CERTIFY_HELP)
def certify_command(
    policy_path: PolicyArg,
    predictions: PredictionsArg,
    calibration_rows: Annotated[bool, typer.Option("--calibration-rows", help="Use the policy's own calibration rows (reproduces its certificate).")] = False,
    split: RowsOpt = None,
    confidence: ConfidenceOpt = None,
    seed: SeedOpt = 0,
    output: OutputOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:

    from eenet_cli import api
    from eenet_cli.artifacts.files import dumps
    from eenet_cli.artifacts.policy import read_policy
    from eenet_cli.certified import calibration_split, certify_existing, rows_digest
    from eenet_cli.errors import InputError

    check_seed(seed)
    streams = plan_streams(output, what="bounds", json_out=json_out, json_is_artifact=True, quiet=quiet,
                           inputs=[("policy", policy_path), ("predictions", predictions)])
    policy = read_policy(policy_path, role="POLICY")
    cert = policy.get("certificate")
    conf = parse_share(confidence, "--confidence")
    preds = api.load_predictions(predictions)
    api.check_policy_fits(policy, preds, source=policy_path)
    deltas, run_seed, batch = None, seed, None
    if calibration_rows:
        if cert is None:
            raise InputError("has no certificate, so it has no calibration rows", source=policy_path, field="certificate")
        if split is not None:
            raise InputError("--calibration-rows takes the policy's own rows; drop --split", field="--split")
        val = api.validation_rows(preds)
        cal = cert["calibration"]
        mask = calibration_split(val.num_samples, cal["share"], cal["seed"])
        if rows_digest(mask, preds.sha256) != cal["rows_sha256"]:
            raise InputError("these are not the predictions the policy was certified on (calibration rows differ)", source=predictions,
                             field="certificate.calibration.rows_sha256")
        rows, where = val.rows(mask), f"its {int(mask.sum())} calibration rows"
        conf = conf if conf is not None else cert["confidence"]
        deltas = {k: g["delta"] for g in cert["guarantees"] for k in [_metric(g["what"])] if g.get("delta") is not None}
        run_seed, batch = cal["seed"], cert.get("deploy_batch")
    else:
        rows, where = select_split(preds, split)
    if conf is None:
        conf = 0.9
    feats = rows.features()
    bounds = certify_existing(policy, feats, confidence=conf, seed=run_seed, deploy_batch=batch, deltas=deltas)
    unit = policy["costs"]["unit"]
    doc = {
        "format": "certify",
        "policy": str(policy_path),
        "predictions_sha256": preds.sha256,
        "rows": where,
        "n": int(bounds["n"]),
        "confidence": conf,
        "deltas": bounds["deltas"],
        "unit": unit,
        "expected_cost_at_most": bounds["cost_bound"],
        "accuracy_drop_at_most": bounds["drop_bound"],
        "disagreement_at_most": bounds["disagreement_bound"],
        "empirical": bounds["empirical"],
        "budget": (policy.get("budget") or {}).get("value"),
    }
    streams.write_text_artifact(dumps(doc))
    pct = f"{100 * conf:.4g}%"
    lines = [f"with {pct} confidence ({where} of {predictions}): expected cost <= {bounds['cost_bound']:.4g}{unit}"]
    if doc["budget"] is not None:
        lines[0] += f" (budget {doc['budget']:g}{unit}: {'within' if bounds['cost_bound'] <= doc['budget'] else 'NOT certified'})"
    if bounds["drop_bound"] is not None:
        lines.append(f"with {pct} confidence: accuracy drop against the last exit <= {100 * bounds['drop_bound']:.2f}%")
    if bounds["disagreement_bound"] is not None:
        lines.append(f"with {pct} confidence: disagreement with the last exit <= {100 * bounds['disagreement_bound']:.2f}%")
    for line in lines:
        summary(line, quiet)


def _metric(what: str) -> str:
    return "cost" if "cost" in what else ("drop" if "drop" in what else "disagreement")
