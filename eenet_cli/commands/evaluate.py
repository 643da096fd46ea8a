"""``eenet evaluate``: accuracy vs budget for every method, with an optional regression check."""

from __future__ import annotations

import math
from typing import Annotated, Optional

import typer

from eenet_cli.app import app
from eenet_cli.commands.options import (
    ConfidenceOpt,
    CostsOpt,
    EENetInputsOpt,
    JsonOpt,
    OutputOpt,
    OutputsOpt,
    QuietOpt,
    check_outputs,
    check_seed,
    eenet_hyper,
    parse_share,
)
from eenet_cli.core.methods import ALL_METHODS, DEFAULT_EVALUATE_METHODS
from eenet_cli.render import fit_table_columns, plan_streams, progress_bar, summary, write_stdout_bytes

EVALUATE_HELP = f"""Report test accuracy and realised cost per (method, budget).

Each policy is fitted on the validation rows and applied to the test rows; the oracle
(the exact ceiling when correctness is known) is its own method. Budgets default to 10
evenly spaced over [c_1, c_K]; methods default to {", ".join(DEFAULT_EVALUATE_METHODS)}
(also: {", ".join(m for m in ALL_METHODS if m not in DEFAULT_EVALUATE_METHODS)}; or all).

The results go to -o (.json, .parquet or .csv), or as JSON to stdout with --json, -o -,
or no -o when stdout is not a terminal; the table goes to stdout on a terminal, else to
stderr.

With --check, compare with a stored results file and exit 1 naming every
(method, budget) whose accuracy fell by more than --tolerance, whose test cost now
overruns a budget it used to meet, or that is missing. Budgets, methods, costs, seed and
split default to the stored file's; a file made from other predictions, another cost
unit or another number of exits or classes is refused unless --check-other-inputs is
given. A failed check writes nothing.

With --outputs combined (or auto) the learned methods may predict with a weighted
geometric mean of exits 1..k (docs/outputs.md); the baselines keep the model's own
outputs, and the oracle counts a sample right where either output is, so it stays a
ceiling. Each record says which outputs it used.

Examples:

\b
  eenet evaluate sample_data/digits.parquet --methods maxprob,oracle --budgets 50%,75%
  eenet evaluate sample_data/digits.parquet --budgets 0.5ms:1.5ms:0.5ms -o results.json
  eenet evaluate sample_data/digits.parquet --check results.json --tolerance 0.005
  eenet evaluate sample_data/digits.parquet --methods maxprob,lookahead,oracle --outputs auto
"""


def _parse_methods(text: str | None) -> list[str] | None:
    if not text:
        return None
    from eenet_cli.core.methods import ALL_METHODS, check_method

    out = []
    for m in (t.strip() for t in text.split(",")):
        if m == "all":
            out.extend(x for x in ALL_METHODS if x not in out)
        elif m:
            check_method(m, field="--methods")
            if m not in out:
                out.append(m)
    return out or None


def _key(method: str, budget: float) -> tuple[str, float]:
    return method, round(float(budget), 9)


def check_regressions(current: dict, expected: dict, tolerance: float) -> list[str]:
    """Lines describing each regression of ``current`` against ``expected``: an accuracy
    that fell by more than ``tolerance`` (a rise is never one), a budget met before and
    overrun now, a (method, budget) pair that is missing from ``current``."""
    now = {_key(r["method"], r["budget"]): r for r in current["results"]}
    problems = []
    for r in expected["results"]:
        key = _key(r["method"], r["budget"])
        unit = r.get("unit", "")
        label = f"{r['method']} @ {r['budget']:g}{unit}"
        got = now.get(key)
        if got is None:
            problems.append(f"{label}: missing from the new results")
            continue
        drop = float(r["accuracy"]) - float(got["accuracy"])
        if drop > tolerance + 1e-12:
            problems.append(f"{label}: accuracy {got['accuracy']:.4f} < expected {r['accuracy']:.4f} (drop {drop:.4f} > tolerance {tolerance:g})")
        if r.get("budget_met", True) and not got["budget_met"]:
            problems.append(f"{label}: average cost {got['avg_cost']:.6g}{unit} now overruns the budget")
    return problems


def check_settings(expected: dict, source: str) -> dict:
    """What a --check run takes from the stored results when not given: budgets, methods,
    costs, seed, validation fraction and EENet's scorer inputs (results written before
    they were recorded used the full inputs, the default then)."""
    from eenet_cli.artifacts.costs import validate_costs

    out: dict = {}
    recs = expected["results"]
    out["methods"] = list(dict.fromkeys(r["method"] for r in recs))
    out["budgets"] = list(dict.fromkeys(float(r["budget"]) for r in recs))
    c = expected.get("costs")
    if isinstance(c, dict) and "costs" in c and "unit" in c:
        out["costs"] = validate_costs(c["costs"], c["unit"], f"{source} (costs)")
    if isinstance(expected.get("seed"), int) and not isinstance(expected.get("seed"), bool):
        out["seed"] = expected["seed"]
    if expected.get("val_fraction") is not None:
        out["val_fraction"] = float(expected["val_fraction"])
    out["eenet_inputs"] = expected.get("eenet_inputs", "full") if isinstance(expected.get("eenet_inputs", "full"), str) else "full"
    out["outputs"] = expected.get("outputs", "own") if isinstance(expected.get("outputs", "own"), str) else "own"
    return out


def check_compatible(expected: dict, source: str, *, unit: str, num_exits: int, num_classes: int, sha256) -> None:
    """Refuse (exit 2) a --check against results of other predictions, another cost unit,
    or another number of exits or classes; the comparison would be meaningless."""
    from eenet_cli.errors import InputError

    units = {r.get("unit") for r in expected["results"] if r.get("unit")}
    if isinstance(expected.get("costs"), dict) and expected["costs"].get("unit"):
        units.add(expected["costs"]["unit"])
    hint = "; pass --check-other-inputs to compare anyway"
    if units and units != {unit}:
        raise InputError(f"was made with costs in {', '.join(sorted(units))}, these are in {unit}{hint}", source=source, field="unit")
    for name, have in (("num_exits", num_exits), ("num_classes", num_classes)):
        want = expected.get(name)
        if want is not None and want != have:
            raise InputError(f"was made for {want} {name[4:]}, these predictions have {have}{hint}", source=source, field=name)
    if expected.get("predictions_sha256") is not None and expected["predictions_sha256"] != sha256:
        raise InputError(f"was made from other predictions (predictions_sha256 differs){hint}", source=source, field="predictions_sha256")


def render_table(doc: dict, console) -> None:
    """The results as a table that fits the console: at a narrow width the least important
    columns go first (test exits, validation cost, validation accuracy, test cost); the
    budget, method, test accuracy and budget-met columns always stay."""
    unit = doc["costs"]["unit"]
    recs = doc["results"]
    budget_cells, last = [], None
    for r in recs:
        budget_cells.append(f"{r['budget']:.4g}{unit}" if r["budget"] != last else "")
        last = r["budget"]
    columns = [
        ("budget", "right", 0, budget_cells),
        ("method", "left", 0, [r["method"] for r in recs]),
        ("test acc", "right", 0, [f"{100 * r['accuracy']:.2f}%" for r in recs]),
        ("test cost", "right", 1, [f"{r['avg_cost']:.4g}" for r in recs]),
        ("met", "center", 0, ["yes" if r["budget_met"] else "NO" for r in recs]),
        ("val acc", "right", 3, [f"{100 * r['val_accuracy']:.2f}%" for r in recs]),
        ("val cost", "right", 4, [f"{r['val_avg_cost']:.4g}" for r in recs]),
        ("test exits", "left", 5, ["/".join(f"{x:.2f}" for x in r["exit_fractions"]) for r in recs]),
    ]
    if any("uncertified_avg_cost" in r for r in recs):  # evaluate --confidence: the fit before calibration
        columns.insert(5, ("uncert. cost", "right", 2, [
            f"{r['uncertified_avg_cost']:.4g}" + ("" if r["uncertified_budget_met"] else " NO") if "uncertified_avg_cost" in r else ""
            for r in recs]))
        columns.insert(5, ("uncert. acc", "right", 2, [
            f"{100 * r['uncertified_accuracy']:.2f}%" if "uncertified_accuracy" in r else "" for r in recs]))
    table, keep = fit_table_columns(console, columns)
    table.title = f"accuracy vs budget: {doc['split']}"
    for i, r in enumerate(recs):
        if i and budget_cells[i]:
            table.add_section()
        cells = [columns[j][3][i] for j in keep]
        if 4 in keep and not r["budget_met"]:
            cells[keep.index(4)] = "[red]NO[/red]"
        table.add_row(*cells)
    console.print(table)


@app.command("evaluate", help=EVALUATE_HELP)
def evaluate_command(
    predictions: Annotated[Optional[str], typer.Argument(help="Predictions Parquet file or folder ('-' for stdin).", show_default=False)] = None,
    costs: CostsOpt = None,
    budgets: Annotated[Optional[str], typer.Option("--budgets", "-b", help="Budgets: 4ms,5ms,6ms or start:stop:step (stop included) or 50%,75%.")] = None,
    methods: Annotated[Optional[str], typer.Option("--methods", "-m", help="Comma-separated methods, or 'all'.")] = None,
    output: OutputOpt = None,
    json_out: JsonOpt = False,
    check: Annotated[Optional[str], typer.Option("--check", help="Stored results file to compare with; exit 1 on regression.")] = None,
    tolerance: Annotated[float, typer.Option("--tolerance", help="Allowed accuracy drop for --check, as a fraction (0.005 = half a point).")] = 0.0,
    check_other_inputs: Annotated[bool, typer.Option("--check-other-inputs", help="Compare with --check results made from other predictions, costs unit, exits or classes.")] = False,
    update_reference: Annotated[bool, typer.Option("--update-reference", help="Allow -o to be the --check file; it is replaced only when the check passes.")] = False,
    val: Annotated[Optional[str], typer.Option("--val", help="Validation predictions (with --test), instead of a split column.")] = None,
    test: Annotated[Optional[str], typer.Option("--test", help="Test predictions (with --val).")] = None,
    val_fraction: Annotated[Optional[float], typer.Option("--val-fraction", help="Without a split column: seeded stratified share of rows used for validation.")] = None,
    confidence: ConfidenceOpt = None,
    resplits: Annotated[int, typer.Option("--resplits", help="Redraw the validation/test split N times and report how often each method's test cost overran the budget (certified with --confidence).")] = 0,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed, 0 to 2**32-1 (default 0, or the --check file's).", show_default=False)] = None,
    eenet_inputs: EENetInputsOpt = None,
    outputs: OutputsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    from eenet_cli import api
    from eenet_cli.artifacts.files import dumps
    from eenet_cli.artifacts.results import read_results, results_format, write_results
    from eenet_cli.errors import CheckFailed, InputError

    if (val is None) != (test is None):
        raise InputError("--val and --test go together", field="--val/--test")
    if val is not None and predictions is not None:
        raise InputError("give either PREDICTIONS or --val/--test, not both", field="PREDICTIONS")
    if val is None and predictions is None:
        raise InputError("missing PREDICTIONS (or --val A --test B); see eenet evaluate --help", field="PREDICTIONS")
    if not math.isfinite(tolerance) or tolerance < 0:
        raise InputError(f"must be a non-negative number, got {tolerance}", field="--tolerance")
    if update_reference and check is None:
        raise InputError("goes with --check", field="--update-reference")
    if output is not None and output != "-" and not results_format(output):
        raise InputError("unknown results format; use a .json, .parquet or .csv file name", source=output, field="--output")
    if seed is not None:
        check_seed(seed)
    inputs = [("predictions", predictions), ("validation predictions", val), ("test predictions", test), ("costs file", costs)]
    if check is not None and not update_reference:
        inputs.append(("--check reference (pass --update-reference to replace it when the check passes)", check))
    streams = plan_streams(output, what="results", json_out=json_out, json_is_artifact=True, quiet=quiet, inputs=inputs)
    method_list = _parse_methods(methods)
    expected = read_results(check) if check else None
    settings = check_settings(expected, check) if expected is not None else {}

    preds = api.load_predictions(val if val is not None else predictions)
    test_preds = api.load_predictions(test) if test is not None else None
    cost = api.resolve_costs(preds, costs if costs is not None else settings.get("costs"))
    if expected is not None and not check_other_inputs:
        sha = preds.sha256 if test_preds is None else [preds.sha256, test_preds.sha256]
        check_compatible(expected, check, unit=cost.unit, num_exits=preds.num_exits, num_classes=preds.num_classes, sha256=sha)
    from eenet_cli.artifacts.costs import default_budgets, parse_budgets

    if budgets is not None:
        budget_values = parse_budgets(budgets, cost)
    elif "budgets" in settings:
        budget_values = settings["budgets"]
    else:
        budget_values = default_budgets(cost)
    method_list = method_list or settings.get("methods") or list(api.DEFAULT_METHODS)
    seed = seed if seed is not None else settings.get("seed", 0)
    hyper = eenet_hyper(eenet_inputs if eenet_inputs is not None else settings.get("eenet_inputs"),
                        "--eenet-inputs" if eenet_inputs is not None else f"{check} (eenet_inputs)")
    if val_fraction is None:
        val_fraction = settings.get("val_fraction")
    outputs_mode = check_outputs(outputs if outputs is not None else settings.get("outputs"),
                                 "--outputs" if outputs is not None else f"{check} (outputs)")
    with progress_bar("evaluating", len(budget_values) * len(method_list), quiet) as update:
        doc = api.evaluate(
            preds,
            budgets=budget_values,
            methods=method_list,
            costs=cost,
            test=test_preds,
            val_fraction=val_fraction,
            seed=seed,
            hyper=hyper,
            on_step=lambda m, b: update(1),
            confidence=parse_share(confidence, "--confidence"),
            resplits=resplits,
            outputs=outputs_mode,
        )
    problems = check_regressions(doc, expected, tolerance) if expected is not None else []
    console = streams.view_console()
    if console is not None:
        render_table(doc, console)
    # said once the inputs have passed every check, so bad input gets exactly one line
    summary(f"costs: {cost.source} ({', '.join(f'{c:g}' for c in cost.values)} {cost.unit})", quiet)
    n_val, n_test = doc["results"][0]["val_n"], doc["results"][0]["n"]
    if not problems and streams.artifact is not None:
        write_results(streams.artifact, doc)
    where = {None: "", "-": "; results written to stdout"}.get(streams.artifact, f"; results written to {streams.artifact}")
    if problems:
        where = "; nothing written (the check failed)"
    summary(
        f"evaluated {len(method_list)} method(s) at {len(budget_values)} budget(s): {doc['split']}, "
        f"{n_val} validation and {n_test} test rows{where}",
        quiet,
    )
    for r in doc.get("resplits", []):
        promise = f" (a certified policy promises at most {100 * r['delta']:.3g}%)" if r["delta"] is not None else ""
        summary(f"{r['method']}: test cost over the budget in {r['overruns']} of {r['draws']} redrawn splits "
                f"({100 * r['overrun_share']:.1f}%){promise}", quiet)
    if json_out:
        out = dict(doc)
        if expected is not None:
            out["check"] = {"against": check, "passed": not problems, "tolerance": tolerance, "compared": len(expected["results"]), "regressions": problems}
        write_stdout_bytes(dumps(out).encode("utf-8"))
    if expected is not None:
        if problems:
            raise CheckFailed(f"{len(problems)} regression(s) against {check}:\n  " + "\n  ".join(problems))
        summary(f"check passed: {len(expected['results'])} (method, budget) pairs within tolerance {tolerance:g} of {check}", quiet)
