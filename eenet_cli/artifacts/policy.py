"""Policy files (docs/spec.md §2.4): what ``fit`` writes and ``apply`` reads."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from eenet_cli.artifacts.costs import validate_costs
from eenet_cli.artifacts.files import check_version, display, finite_number, read_json
from eenet_cli.errors import InputError

POLICY_KEYS = {
    "format", "version", "method", "num_exits", "num_classes", "budget", "costs", "thresholds",
    "exit_distribution", "scorer", "validation", "training", "provenance", "threshold_fit", "certificate", "outputs",
}


def read_policy(path: str | os.PathLike, *, role: str | None = None) -> dict:
    """Read and check a policy JSON (docs/spec.md §2.4): version, keys, thresholds, scorer.

    ``role`` names the command-line argument, for the hint when the arguments are swapped."""
    source = display(path)
    doc = read_json(path, what="policy JSON", hint=f"; {role} comes first" if role else "")
    validate_policy(doc, source)
    return doc


def validate_policy(doc: Any, source: str) -> None:
    if not isinstance(doc, dict):
        raise InputError("expected a JSON object", source=source)
    if doc.get("format") != "policy":
        raise InputError(f"expected format 'policy', got {doc.get('format')!r}", source=source, field="format")
    check_version("policy", doc.get("version"), source)
    unknown = sorted(set(doc) - POLICY_KEYS)
    if unknown:
        raise InputError(f"unknown key(s) {unknown}", source=source)
    for key in ("method", "num_exits", "num_classes", "costs", "thresholds", "scorer"):
        if key not in doc:
            raise InputError(f"missing field {key!r}", source=source, field=key)
    k = doc["num_exits"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"expected a positive integer, got {k!r}", source=source, field="num_exits")
    c = doc["num_classes"]
    if isinstance(c, bool) or not isinstance(c, int) or c < 2:
        raise InputError(f"expected an integer >= 2, got {c!r}", source=source, field="num_classes")
    thr = doc["thresholds"]
    if not isinstance(thr, list) or len(thr) != k:
        raise InputError(f"expected a list of {k} thresholds", source=source, field="thresholds")
    for i, t in enumerate(thr):
        if t is not None and not finite_number(t):
            raise InputError(f"threshold {i} must be a finite number or null, got {t!r}", source=source, field="thresholds")
    if thr[-1] is not None:
        raise InputError("the last exit accepts every sample: its threshold must be null", source=source, field="thresholds")
    costs = doc["costs"]
    if not isinstance(costs, dict):
        raise InputError("expected an object with unit and costs", source=source, field="costs")
    cst = validate_costs(costs.get("costs"), costs.get("unit"), source, "costs.costs")
    if cst.num_exits != k:
        raise InputError(f"has {cst.num_exits} costs for {k} exits", source=source, field="costs")
    scorer = doc["scorer"]
    if not isinstance(scorer, dict) or not isinstance(scorer.get("type"), str):
        raise InputError("expected an object with a 'type'", source=source, field="scorer")
    from eenet_cli.core.policy import check_scorer

    check_scorer(scorer["type"], source=source)
    if "tie_break" in scorer:
        from eenet_cli.core.policy import TIE_BREAK_SCORERS, TIE_BREAKS

        if scorer["type"] not in TIE_BREAK_SCORERS:
            raise InputError(f"a {scorer['type']} scorer takes no tie_break (only {', '.join(TIE_BREAK_SCORERS)} does)",
                             source=source, field="scorer.tie_break")
        if scorer["tie_break"] not in TIE_BREAKS:
            raise InputError(f"unknown tie_break {scorer['tie_break']!r}; expected one of {', '.join(TIE_BREAKS)}",
                             source=source, field="scorer.tie_break")
    if scorer["type"] == "eenet":
        _validate_eenet_scorer(scorer, k, c, source)
    elif scorer["type"] == "lookahead":
        from eenet_cli.core.lookahead import validate_lookahead_scorer

        problem = validate_lookahead_scorer(scorer, k, c)
        if problem:
            raise InputError(problem, source=source, field="scorer")
    if doc.get("outputs") is not None:
        from eenet_cli.core.outputs import validate_outputs

        problem = validate_outputs(doc["outputs"], k)
        if problem:
            raise InputError(problem, source=source, field="outputs")
    budget = doc.get("budget")
    if budget is not None:
        value = budget.get("value") if isinstance(budget, dict) else None
        if not isinstance(budget, dict) or (value is not None and not _positive_number(value)):
            raise InputError(f"expected an object with a positive number 'value', got {budget!r}", source=source, field="budget")


def _positive_number(v: Any) -> bool:
    return finite_number(v) and v > 0


def _validate_eenet_scorer(scorer: dict, k: int, c: int, source: str) -> None:
    exits = scorer.get("exits")
    if not isinstance(exits, list) or len(exits) != k:
        raise InputError(f"expected weights for {k} exits", source=source, field="scorer.exits")
    from eenet_cli.core.policy import SIMPLE_SCORERS

    measure = scorer.get("measure")
    if "measure" in scorer and measure not in SIMPLE_SCORERS:
        raise InputError(f"expected one of {', '.join(SIMPLE_SCORERS)}, got {measure!r}", source=source,
                         field="scorer.measure")
    from eenet_cli.core.eenet import COMPACT_FEATURES, FEATURES, INPUTS, input_width

    feats = scorer.get("features", FEATURES)
    inputs = next((name for name, names in INPUTS.items() if feats == names), None) if isinstance(feats, list) else None
    if inputs is None:
        raise InputError(f"expected {COMPACT_FEATURES} (compact) or {FEATURES} (full), got {feats!r}", source=source,
                         field="scorer.features")
    slope = scorer.get("negative_slope", 0.01)
    if not finite_number(slope):
        raise InputError(f"expected a number, got {slope!r}", source=source, field="scorer.negative_slope")
    for j, e in enumerate(exits):
        fld = f"scorer.exits[{j}]"
        if not isinstance(e, dict):
            raise InputError("expected an object of weights", source=source, field=fld)
        try:
            w = np.asarray(e["shared_weight"], dtype=np.float64)
            arrays = [np.asarray(e[n], dtype=np.float64) for n in ("shared_bias", "utility_weight", "assign_weight")]
            scalars = [e["utility_bias"], e["assign_bias"]]
        except KeyError as ex:
            raise InputError(f"missing {ex.args[0]!r}", source=source, field=fld) from None
        except (TypeError, ValueError, OverflowError):
            raise InputError("weights must be numeric nested lists", source=source, field=fld) from None
        h = w.shape[0] if w.ndim == 2 else -1
        want = input_width(inputs, j, c)
        if w.ndim != 2 or w.shape[1] != want:
            raise InputError(f"shared_weight must be [H, {want}] ({inputs} inputs), got {list(w.shape)}", source=source, field=fld)
        if any(a.shape != (h,) for a in arrays):
            raise InputError(f"bias and head weights must have {h} entries", source=source, field=fld)
        if any(isinstance(s, bool) or not isinstance(s, (int, float)) for s in scalars):
            raise InputError("utility_bias and assign_bias must be numbers", source=source, field=fld)
        if not (np.isfinite(w).all() and all(np.isfinite(a).all() for a in arrays) and all(finite_number(s) for s in scalars)):
            raise InputError("weights must be finite", source=source, field=fld)
