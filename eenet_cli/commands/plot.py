"""``eenet plot``: pictures of results files and of policies applied to predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from eenet_cli.app import app
from eenet_cli.commands.options import QuietOpt
from eenet_cli.render import plan_streams, summary, write_stdout_bytes

KINDS = ("tradeoff", "exits", "scores", "separation")
RESULT_KINDS = ("tradeoff", "exits")
POLICY_KINDS = ("scores", "separation")
IMAGE_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}

PLOT_HELP = """Draw a figure from a results file, or from a policy and predictions.

What is drawn follows from the inputs (or --kind):

\b
  tradeoff    results file (from `eenet evaluate`): accuracy vs realised average
              cost, a line per method, the oracle as a dashed ceiling, the full
              model as a reference line, hollow red X where a budget was overrun.
  exits       results file: stacked bars of the share of samples leaving at each
              exit, per method, at one budget (--budget picks the nearest one;
              default the median budget).
  scores      policy JSON + predictions: one panel per exit, each sample's exit
              score against its class, right/wrong at that exit, samples that
              already left in grey, the threshold as a line (paper Figures 6-9).
  separation  policy JSON + predictions: max-prob vs the policy's score at exit 1
              for the --classes most frequent classes (paper Figure 3).

The image format follows the extension of -o: .png, .svg or .pdf. With -o -, or no
-o when stdout is not a terminal, PNG bytes go to stdout; a terminal is refused (give -o
FILE). One line on stderr says what was written (-q drops it). The same inputs give the same bytes. The default title names the data, the
kind and the split; --title replaces it (drawn as plain text). --split picks the rows of
the predictions (default: test when there is a split column, else every row), or the
figures of a results file (default test; val uses the validation columns).

\b
Examples:
  eenet evaluate sample_data/digits.parquet --methods maxprob,entropy,oracle -o results.json
  eenet plot results.json -o tradeoff.png
  eenet plot results.json --kind exits --budget 0.8ms -o exits.svg
  eenet fit sample_data/digits.parquet --budget 60% --method maxprob -o policy.json
  eenet plot policy.json sample_data/digits.parquet -o scores.png
  eenet plot policy.json sample_data/digits.parquet --kind separation --classes 6 -o separation.pdf
"""


# --------------------------------------------------------------------------- inputs


def classify(inputs: list[str]) -> dict[str, str]:
    """Map each input to its role ({'results': path} or {'policy': p, 'predictions': q})."""
    from eenet_cli.artifacts.kinds import sniff
    from eenet_cli.errors import InputError

    if not inputs:
        raise InputError("give a results file, or a policy and predictions; see eenet plot --help", field="INPUT")
    if len(inputs) > 2:
        raise InputError(f"expected one results file, or a policy and a predictions file; got {len(inputs)} inputs", field="INPUT")
    roles: dict[str, str] = {}
    for path in inputs:
        role = sniff(path)
        if role in roles:
            raise InputError(f"two {role} files given ({roles[role]} and {path}); plot takes one", source=path)
        roles[role] = path
    if "results" in roles and len(roles) > 1:
        other = next(p for r, p in roles.items() if r != "results")
        raise InputError("a results file is plotted on its own; give it without other inputs", source=other)
    return roles


def _choose_kind(kind: str | None, roles: dict[str, str]) -> str:
    from eenet_cli.errors import InputError

    if kind is not None and kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}", field="--kind")
    if "results" in roles:
        kind = kind or "tradeoff"
        if kind not in RESULT_KINDS:
            raise InputError(
                f"--kind {kind} needs a policy JSON and predictions; a results file gives {' or '.join(RESULT_KINDS)}",
                source=roles["results"],
            )
        return kind
    if "policy" in roles and "predictions" in roles:
        kind = kind or "scores"
        if kind not in POLICY_KINDS:
            raise InputError(
                f"--kind {kind} needs a results file (from `eenet evaluate`); a policy and predictions give "
                f"{' or '.join(POLICY_KINDS)}",
                source=roles["policy"],
            )
        return kind
    if "policy" in roles:
        raise InputError(
            "a policy alone cannot be plotted: add the predictions to apply it to (scores, separation), "
            "or plot a results file (tradeoff, exits)",
            source=roles["policy"],
        )
    raise InputError(
        "predictions alone cannot be plotted: add a policy JSON from `eenet fit` (scores, separation), "
        "or plot a results file from `eenet evaluate` (tradeoff, exits)",
        source=roles["predictions"],
    )


def _output_format(output: str | None) -> str:
    from eenet_cli.errors import InputError

    if output is None or output == "-":
        return "png"
    fmt = IMAGE_FORMATS.get(Path(output).suffix.lower())
    if fmt is None:
        raise InputError("unknown image format; use a .png, .svg or .pdf file name", source=output, field="--output")
    return fmt


# --------------------------------------------------------------------------- figures


def _results_costs(doc: dict) -> tuple[list[float] | None, str]:
    """(cumulative costs or None, unit) from a results header (CSV files carry none)."""
    import math

    unit = ""
    costs = None
    c = doc.get("costs")
    if isinstance(c, dict):
        values = c.get("costs")
        if isinstance(values, list) and values and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            costs = [float(v) for v in values]
        if isinstance(c.get("unit"), str):
            unit = c["unit"]
    if not unit:
        units = {r.get("unit") for r in doc["results"] if isinstance(r.get("unit"), str)}
        unit = units.pop() if len(units) == 1 else ""
    return costs, unit


def _parse_plot_budget(text: str, costs: list[float] | None, unit: str, source: str) -> float:
    import numpy as np

    from eenet_cli.artifacts.costs import Costs, normalise_unit, parse_budget
    from eenet_cli.errors import InputError

    if text.strip().endswith("%") and not costs:
        raise InputError("has no costs in its header, so a budget in % cannot be read; give it with a unit, e.g. 2ms", source=source, field="--budget")
    if not unit:
        raise InputError("records name no single cost unit", source=source, field="unit")
    values = np.asarray(costs if costs else [1e-300], dtype=np.float64)
    return parse_budget(text, Costs(values, normalise_unit(unit, source), source), "--budget")


def _check_result_split(doc: dict, split: str, source: str) -> None:
    from eenet_cli.errors import InputError

    if split == "val" and not all("val_accuracy" in r and "val_avg_cost" in r for r in doc["results"]):
        raise InputError("records have no validation figures (val_accuracy, val_avg_cost) for --split val", source=source, field="val_accuracy")


def data_name(path: str) -> str:
    """A short name for the data in ``path``: the file (or folder) name without its extension."""
    p = Path(path.rstrip("/\\") or path)
    return p.stem or p.name or path


def _results_data_name(doc: dict, path: str) -> str:
    """The predictions a results file was made from, when its header says so; else its own name."""
    source = doc.get("costs_source")
    tail = " (metadata eenet.costs)"  # evaluate took the costs from the predictions' metadata
    if isinstance(source, str) and source.endswith(tail) and source[: -len(tail)].strip():
        return data_name(source[: -len(tail)].strip())
    return data_name(path)


def _count(n: int, what: str, plural: str | None = None) -> str:
    """``1 method``, ``7 methods``."""
    return f"{n} {what}" if n == 1 else f"{n} {plural or what + 's'}"


MAX_METHODS = 40  # more lines or bars than this are unreadable, and slow to draw
MAX_EXITS = 64


def _results_figure(kind: str, path: str, *, title, budget_text, split):
    """(figure, summary) for a results file; the summary goes in the line on stderr."""
    from eenet_cli import plotting
    from eenet_cli.artifacts.results import read_results
    from eenet_cli.errors import InputError

    doc = read_results(path)
    if split == "all":
        raise InputError("a results file holds val or test figures; use --split val or --split test", source=path, field="--split")
    split = split or "test"
    methods = {r["method"] for r in doc["results"]}
    exits = max(len(r.get("exit_fractions") or []) for r in doc["results"])
    if len(methods) > MAX_METHODS or exits > MAX_EXITS:
        raise InputError(
            f"{len(methods)} methods and {exits} exits: too many to draw (at most {MAX_METHODS} methods and {MAX_EXITS} exits)",
            source=path,
        )
    _check_result_split(doc, split, path)
    costs, unit = _results_costs(doc)
    target = _parse_plot_budget(budget_text, costs, unit, path) if budget_text else None
    data = _results_data_name(doc, path)
    which = "validation" if split == "val" else "test"
    records = doc["results"]
    if kind == "tradeoff":
        head = title if title is not None else f"{data}: accuracy vs. average cost ({which})"
        fig = plotting.tradeoff_figure(records, unit=unit, costs=costs, split=split, title=head, budget=target)
        methods = {str(r["method"]) for r in records}
        return fig, f"tradeoff, {_count(len(methods), 'method')}, {which}"
    chosen = plotting.nearest_budget(records, target)
    how = "median budget" if target is None else f"nearest to {target:g}{unit}"
    at = f"{chosen:.4g} {unit}".strip()
    head = title if title is not None else f"{data}: exits taken at a budget of {at} ({which})"
    fig = plotting.exits_figure(records, chosen, unit=unit, split=split, title=head)
    methods = {str(r["method"]) for r in records if float(r["budget"]) == chosen}
    return fig, f"exits, {_count(len(methods), 'method')}, {which}, budget {chosen:g}{unit} ({how})"


def _select_rows(preds, split: str | None):
    from eenet_cli.commands.options import select_split
    from eenet_cli.errors import InputError

    if preds.labels is None:
        raise InputError("has no label column; right and wrong predictions cannot be told apart", source=preds.source, field="label")
    return select_split(preds, split)


def _policy_figure(kind: str, policy_path: str, preds_path: str, *, title, split, classes):
    """(figure, summary) for a policy applied to predictions."""
    import numpy as np

    from eenet_cli import api, plotting
    from eenet_cli.artifacts.policy import read_policy
    from eenet_cli.core.policy import compute_scores, policy_features
    from eenet_cli.core.thresholds import apply_thresholds

    policy = read_policy(policy_path)
    preds = api.load_predictions(preds_path)
    api.check_policy_fits(policy, preds, source=policy_path)
    preds, which = _select_rows(preds, split)
    feats = policy_features(policy, preds.features())
    scores = np.asarray(compute_scores(policy["scorer"], feats), dtype=np.float64)
    thresholds = policy["thresholds"]
    exits = apply_thresholds(scores, thresholds)
    correct = feats.correct
    names = preds.meta.get("class_names")
    names = [str(x) for x in names] if isinstance(names, list) and len(names) == preds.num_classes else None
    scorer_type = str(policy["scorer"]["type"])
    budget = policy.get("budget") or {}
    where = f"{policy.get('method', scorer_type)} policy"
    if isinstance(budget, dict) and isinstance(budget.get("value"), (int, float)):
        where += f" at {budget['value']:.4g} {budget.get('unit', '')}".rstrip()
    n = preds.num_samples
    data = data_name(preds_path)
    summary = f"{kind}, {where}, {_count(n, 'sample')}, {which} of {data}"
    if kind == "scores":
        head = title if title is not None else f"{data}: exit scores per class, {where} ({which}, n={n})"
        fig = plotting.scores_figure(
            scores, preds.labels, correct, exits, thresholds, scorer_type=scorer_type, num_classes=preds.num_classes,
            class_names=names, title=head,
        )
        return fig, summary
    counts = np.bincount(preds.labels, minlength=preds.num_classes)
    top = np.lexsort((np.arange(preds.num_classes), -counts))[: min(classes, preds.num_classes)]
    top = top[counts[top] > 0]
    hits = np.bincount(preds.labels, weights=correct[:, -1].astype(np.float64), minlength=preds.num_classes)
    class_acc = hits / np.maximum(counts, 1)
    shown = sorted(top.tolist(), key=lambda c: (class_acc[c], c))
    head = title if title is not None else f"{data}: right vs. wrong at exit 1, max-prob vs. {where} ({which})"
    fig = plotting.separation_figure(
        feats.max_prob[:, 0], scores[:, 0], preds.labels, correct[:, 0], shown, class_acc=class_acc,
        scorer_type=scorer_type, threshold=thresholds[0] if preds.num_exits > 1 else None, class_names=names, title=head,
    )
    return fig, f"{summary}, {_count(len(shown), 'class', 'classes')}"


@app.command("plot", help=PLOT_HELP)
def plot_command(
    inputs: Annotated[Optional[list[str]], typer.Argument(metavar="INPUT", help="A results file, or a policy JSON and a predictions file.", show_default=False)] = None,
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="Image file: .png, .svg or .pdf; '-' for PNG on stdout (the default when stdout is not a terminal).", show_default=False)] = None,
    kind: Annotated[Optional[str], typer.Option("--kind", "-k", help="tradeoff or exits (results); scores or separation (policy + predictions).", show_default=False)] = None,
    title: Annotated[Optional[str], typer.Option("--title", help="Figure title, drawn as plain text (default: the data, kind and split).", show_default=False)] = None,
    dpi: Annotated[int, typer.Option("--dpi", help="Resolution of PNG output (and of dense point clouds in SVG/PDF).")] = 150,
    budget: Annotated[Optional[str], typer.Option("--budget", "-b", help="exits: show the budget nearest this (e.g. 2ms, 60%); tradeoff: draw it as a vertical line.", show_default=False)] = None,
    split: Annotated[Optional[str], typer.Option("--split", help="val, test or all: predictions rows to use (default test when there are any), or which figures of a results file.", show_default=False)] = None,
    classes: Annotated[int, typer.Option("--classes", help="separation: how many classes (the most frequent).")] = 8,
    quiet: QuietOpt = False,
) -> None:
    from eenet_cli.artifacts.files import atomic_path
    from eenet_cli.errors import InputError

    fmt = _output_format(output)
    # the image goes to -o FILE, else to stdout; a terminal gets no binary (one line, exit 2)
    streams = plan_streams(output, what="PNG image", binary=True, terminal_view=False, quiet=quiet,
                           inputs=[("input", path) for path in inputs or []])
    if not 20 <= dpi <= 1200:
        raise InputError(f"must be between 20 and 1200, got {dpi}", field="--dpi")
    if classes < 1:
        raise InputError(f"must be at least 1, got {classes}", field="--classes")
    if split is not None and split not in ("val", "test", "all"):
        raise InputError(f"expected val, test or all, got {split!r}", field="--split")
    roles = classify(list(inputs or []))
    chosen = _choose_kind(kind, roles)
    if chosen in RESULT_KINDS:
        fig, what = _results_figure(chosen, roles["results"], title=title, budget_text=budget, split=split)
    else:
        fig, what = _policy_figure(chosen, roles["policy"], roles["predictions"], title=title, split=split, classes=classes)

    from eenet_cli.plotting import save_figure

    if streams.artifact == "-":
        import io

        buf = io.BytesIO()
        save_figure(fig, buf, fmt, dpi)
        write_stdout_bytes(buf.getvalue())  # nothing else ever goes to stdout
        where = "PNG to stdout"
    else:
        with atomic_path(streams.artifact) as tmp:
            save_figure(fig, str(tmp), fmt, dpi)
        where = streams.artifact
    summary(f"wrote {where} ({what})", quiet)  # the one line on stderr (sys.stderr.write), unless -q
