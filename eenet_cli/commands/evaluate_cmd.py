"""``eenet evaluate``: accuracy vs budget for every method, with an optional regression check."""

from __future__ import annotations

import math
from typing import Annotated, Optional

import typer

from eenet_cli.cli import app
from eenet_cli.commands.common import CostsOpt, JsonOpt, OutputOpt, QuietOpt, SeedOpt, log, progress_bar, report, stderr_console, stdout_console

EVALUATE_HELP = """Report test accuracy and realised cost per (method, budget).

Each policy is fitted on the validation rows and applied to the test rows; the oracle
(the exact ceiling when correctness is known) is its own method. Budgets default to 10
evenly spaced over [c_1, c_K]; methods default to maxprob, entropy, vote, patience,
eenet, lookahead and oracle (also: eenet-maxprob, eenet-geometric, eenet-search; or all).

With --check, compare with a stored results file and exit 1 naming every
(method, budget) whose accuracy fell by more than --tolerance, whose test cost now
overruns a budget it used to meet, or that is missing.

\b
Examples:
  eenet evaluate sample_data/digits.parquet --methods maxprob,oracle --budgets 50%,75%
  eenet evaluate preds.parquet --costs costs.json --budgets 4ms:8ms:0.5ms -o results.json
  eenet evaluate preds.parquet --check results.json --tolerance 0.005
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
            check_method(m)
            if m not in out:
                out.append(m)
    return out or None


def _key(method: str, budget: float) -> tuple[str, float]:
    return method, round(float(budget), 9)


def check_regressions(current: dict, expected: dict, tolerance: float) -> list[str]:
    """Lines describing each regression of ``current`` against ``expected``."""
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


def render_table(doc: dict, console) -> None:
    from rich.table import Table

    unit = doc["costs"]["unit"]
    t = Table(title=f"accuracy vs budget ({doc['split']})", title_style="bold")
    for col, just in (("budget", "right"), ("method", "left"), ("test acc", "right"), ("test cost", "right"),
                      ("met", "center"), ("val acc", "right"), ("val cost", "right"), ("test exits", "left")):
        t.add_column(col, justify=just, no_wrap=True)
    last = None
    for r in doc["results"]:
        b = f"{r['budget']:.4g}{unit}" if r["budget"] != last else ""
        if r["budget"] != last and last is not None:
            t.add_section()
        last = r["budget"]
        t.add_row(
            b,
            r["method"],
            f"{100 * r['accuracy']:.2f}%",
            f"{r['avg_cost']:.4g}",
            "yes" if r["budget_met"] else "[red]NO[/red]",
            f"{100 * r['val_accuracy']:.2f}%",
            f"{r['val_avg_cost']:.4g}",
            "/".join(f"{x:.2f}" for x in r["exit_fractions"]),
        )
    console.print(t)


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
    val: Annotated[Optional[str], typer.Option("--val", help="Validation predictions (with --test), instead of a split column.")] = None,
    test: Annotated[Optional[str], typer.Option("--test", help="Test predictions (with --val).")] = None,
    val_fraction: Annotated[Optional[float], typer.Option("--val-fraction", help="Without a split column: seeded stratified share of rows used for validation.")] = None,
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    from eenet_cli import api
    from eenet_cli.errors import CheckFailed, InputError
    from eenet_cli.io import check_output_path, read_results, results_format, write_results

    if (val is None) != (test is None):
        raise InputError("--val and --test go together", field="--val/--test")
    if val is not None and predictions is not None:
        raise InputError("give either PREDICTIONS or --val/--test, not both", field="PREDICTIONS")
    if val is None and predictions is None:
        raise InputError("missing PREDICTIONS (or --val A --test B); see eenet evaluate --help", field="PREDICTIONS")
    if not math.isfinite(tolerance) or tolerance < 0:
        raise InputError(f"must be a non-negative number, got {tolerance}", field="--tolerance")
    if output is not None and output != "-" and not results_format(output):
        raise InputError("unknown results format; use a .json, .parquet or .csv file name", source=output, field="--output")
    check_output_path(output)
    method_list = _parse_methods(methods)
    expected = read_results(check) if check else None

    preds = api.load_predictions(val if val is not None else predictions)
    test_preds = api.load_predictions(test) if test is not None else None
    cost = api.resolve_costs(preds, costs)
    from eenet_cli.budgets import default_budgets, parse_budgets

    budget_values = parse_budgets(budgets, cost) if budgets is not None else default_budgets(cost)
    n_methods = len(method_list) if method_list else 7
    with progress_bar("evaluating", len(budget_values) * n_methods, quiet) as update:
        doc = api.evaluate(
            preds,
            budgets=budget_values,
            methods=method_list,
            costs=cost,
            test=test_preds,
            val_fraction=val_fraction,
            seed=seed,
            on_step=lambda m, b: update(1),
        )
    # logged once the inputs have passed every check, so bad input gets exactly one line
    log(f"costs: {cost.source} ({', '.join(f'{c:g}' for c in cost.values)} {cost.unit})", quiet)
    log(f"split: {doc['split']}", quiet)
    if output is not None:
        write_results(output, doc)
    to_stdout = json_out or output == "-"
    if json_out and output != "-":
        from eenet_cli.io import dumps

        typer.echo(dumps(doc), nl=False)
    if not quiet or not to_stdout:
        console = stderr_console(quiet) if to_stdout else stdout_console()
        render_table(doc, console)
    if expected is not None:
        problems = check_regressions(doc, expected, tolerance)
        if problems:
            raise CheckFailed(f"{len(problems)} regression(s) against {check}:\n  " + "\n  ".join(problems))
        report(f"check passed: {len(expected['results'])} (method, budget) pairs within tolerance {tolerance:g} of {check}", quiet)
