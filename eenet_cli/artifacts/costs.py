"""Costs and budgets (docs/spec.md §2.2, §2.3): units, the costs artifact and inline cost
lists, and budgets such as ``6ms``, ``250us``, ``2GFLOPs``, ``60%`` of the full model, bare
numbers in the costs' unit, lists ``4ms,5ms`` and inclusive ranges ``4ms:8ms:0.5ms``.

>>> import numpy as np
>>> c = Costs(np.array([1.0, 2.0, 4.0]), "ms", "test")
>>> parse_budget("1500us", c)
1.5
>>> parse_budget("50%", c)
2.0
>>> parse_budgets("1:2:0.25", c)
[1.0, 1.25, 1.5, 1.75, 2.0]
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from eenet_cli.artifacts.files import (
    MAX_COST,
    _exists,
    check_version,
    display,
    finite_number,
    read_json,
)
from eenet_cli.errors import BudgetError, InputError, shorten

# one unambiguous number pattern (no nested repeats), shared by budgets and inline cost
# lists, so a long bad value fails in linear time
NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"

# --------------------------------------------------------------------------- units

TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
WORK_UNITS = {"flops": 1.0, "kflops": 1e3, "mflops": 1e6, "gflops": 1e9, "tflops": 1e12}
_CANONICAL = {"us": "us", "µs": "us", "ms": "ms", "s": "s", "flops": "flops", "kflops": "KFLOPs", "mflops": "MFLOPs", "gflops": "GFLOPs", "tflops": "TFLOPs"}


def normalise_unit(unit: str, source: str = "unit") -> str:
    key = unit.strip().lower()
    if key in ("µs", "μs"):
        key = "us"
    if key in ("flop",):
        key = "flops"
    if key not in TIME_UNITS and key not in WORK_UNITS:
        raise InputError(
            f"unknown unit {unit!r}; expected one of us, ms, s, FLOPs, MFLOPs, GFLOPs", source=source, field="unit"
        )
    return _CANONICAL[key]


def unit_scale(unit: str) -> tuple[str, float]:
    """(dimension, factor to SI) for a canonical unit."""
    key = unit.lower()
    if key in TIME_UNITS:
        return "time", TIME_UNITS[key]
    return "work", WORK_UNITS[key]


def unit_factor(from_unit: str, to_unit: str, source: str = "budget"):
    """The exact decimal factor from one canonical unit to another of the same dimension."""
    d1, f1 = unit_scale(from_unit)
    d2, f2 = unit_scale(to_unit)
    if d1 != d2:
        what = {"time": "a time", "work": "a FLOP count"}
        raise BudgetError(
            f"a value in {from_unit} is {what[d1]} but the costs are {what[d2]} in {to_unit}; "
            f"give the budget in {to_unit} (or as a percentage)",
            source=source,
        )
    return Decimal(repr(f1)) / Decimal(repr(f2))


def convert(value: float, from_unit: str, to_unit: str, source: str = "budget") -> float:
    return float(Decimal(repr(float(value))) * unit_factor(from_unit, to_unit, source))


@dataclass
class Costs:
    """Cumulative per-exit costs (docs/spec.md §2.2)."""

    values: np.ndarray  # [K] float64, positive, strictly increasing
    unit: str
    source: str
    extra: dict = field(default_factory=dict)

    @property
    def num_exits(self) -> int:
        return int(self.values.size)

    def to_json(self) -> dict:
        out = {"format": "costs", "version": 1, "unit": self.unit, "costs": [float(v) for v in self.values]}
        for k, v in self.extra.items():
            if k not in out:
                out[k] = v
        return out

    def brief(self) -> dict:
        return {"unit": self.unit, "costs": [float(v) for v in self.values]}


def _brief(values: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:limit])
    return f"[{shown}]" if values.size <= limit else f"[{shown}, … {values.size} values]"


def validate_costs(values: Any, unit: Any, source: str, field_name: str = "costs") -> Costs:
    if not isinstance(unit, str):
        raise InputError(f"expected a unit string, got {unit!r}", source=source, field="unit")
    unit = normalise_unit(unit, source)
    if not isinstance(values, list) or not values:
        raise InputError("expected a non-empty list of numbers", source=source, field=field_name)
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise InputError(f"expected numbers, got {shorten(repr(values))}", source=source, field=field_name)
    if not all(finite_number(v) for v in values):
        raise InputError("costs must be finite", source=source, field=field_name)
    arr = np.asarray(values, dtype=np.float64)
    if np.any(arr <= 0):
        raise InputError(f"costs must be positive, got {_brief(arr)}", source=source, field=field_name)
    if np.any(arr > MAX_COST):
        raise InputError(f"costs must be at most {MAX_COST:g} (sums of many would overflow), got {arr.max():g}", source=source, field=field_name)
    if np.any(np.diff(arr) <= 0):
        raise InputError(
            f"costs must be strictly increasing (cumulative cost to each exit), got {_brief(arr)}",
            source=source,
            field=field_name,
        )
    return Costs(arr, unit, source)


def parse_costs_json(obj: Any, source: str) -> Costs:
    if not isinstance(obj, dict):
        raise InputError("expected a JSON object with format, version, unit and costs", source=source)
    fmt = obj.get("format")
    if fmt is not None and fmt != "costs":
        raise InputError(f"expected format 'costs', got {fmt!r}", source=source, field="format")
    if "version" in obj:
        check_version("costs", obj["version"], source)
    for key in ("unit", "costs"):
        if key not in obj:
            raise InputError(f"missing field {key!r}", source=source, field=key)
    costs = validate_costs(obj["costs"], obj["unit"], source)
    costs.extra = {k: v for k, v in obj.items() if k not in ("format", "version", "unit", "costs")}
    return costs


_INLINE_COST = re.compile(rf"({NUMBER})\s*([A-Za-zµμ]*)")  # one item of an inline cost list


def parse_inline_costs(text: str) -> Costs:
    """``1.2,2.5,3.7ms`` (one unit at the end, or on every number)."""
    if len(text) > 10_000:
        raise InputError(f"an inline cost list is at most 10000 characters, got {len(text)}", field="--costs")
    parts = [p.strip() for p in text.split(",") if p.strip()]
    src = f"--costs {text}"
    if not parts:
        raise InputError("expected numbers like 1.2,2.5,3.7ms", source=src)
    vals: list[float] = []
    units: set[str] = set()
    for p in parts:
        m = _INLINE_COST.fullmatch(p)
        if not m:
            raise InputError(f"cannot read {p!r} as a cost", source=src)
        vals.append(float(m.group(1)))
        if m.group(2):
            units.add(normalise_unit(m.group(2), src))
    if len(units) > 1:
        raise InputError(f"mixed units {sorted(units)}", source=src)
    unit = units.pop() if units else "ms"
    return validate_costs(vals, unit, src)


def load_costs(spec: str | None, predictions_meta: dict | None = None, predictions_source: str = "") -> Costs | None:
    """Costs by the precedence of docs/spec.md §2.2: ``--costs FILE``, ``--costs 1,2,3ms``, the predictions' metadata."""
    if spec is not None and not spec.strip():
        raise InputError("is empty: give a costs file or an inline list like 1.2,2.5,3.7ms", field="--costs")
    if spec:
        path = Path(spec)
        if spec == "-" and predictions_source == "<stdin>":
            raise InputError("stdin already carries the predictions; give the costs as a file or inline", field="--costs")
        if spec == "-" or path.suffix.lower() == ".json" or _exists(path) or os.path.islink(spec):
            return parse_costs_json(read_json(spec), display(spec))
        if any(ch.isdigit() for ch in spec) and "," in spec or spec.replace(".", "", 1).rstrip("smuµμ").isdigit():
            return parse_inline_costs(spec)
        raise InputError("no such file (and not an inline list like 1.2,2.5,3.7ms)", source=spec, field="--costs")
    if predictions_meta and predictions_meta.get("costs") is not None:
        src = f"{predictions_source} (metadata eenet.costs)"
        return parse_costs_json(predictions_meta["costs"], src)
    return None


# --------------------------------------------------------------------------- budgets

_BUDGET = re.compile(rf"\s*({NUMBER})\s*(%|[A-Za-zµμ]+)?\s*")  # one budget value
MAX_VALUE_CHARS = 64  # one budget value; longer is refused before parsing
MAX_BUDGETS = 10000


def _parse_decimal(text: str, costs: Costs, option: str) -> Decimal:
    """A budget as an exact decimal in the costs' unit (``120us`` in ms is exactly 0.12)."""
    if len(text) > MAX_VALUE_CHARS:
        raise BudgetError(f"a budget value is at most {MAX_VALUE_CHARS} characters, got {len(text)}", source=option)
    m = _BUDGET.fullmatch(text)
    if not m:
        raise BudgetError(f"cannot read {text!r} as a budget; expected e.g. 6ms, 250us, 2GFLOPs or 60%", source=option)
    value = Decimal(m.group(1))
    unit = m.group(2)
    if unit == "%":
        value = value / 100 * Decimal(repr(float(costs.values[-1])))
    elif unit:
        value = value * unit_factor(normalise_unit(unit, option), costs.unit, source=option)
    if value <= 0:
        raise BudgetError(f"budget {text!r} must be positive", source=option)
    if not math.isfinite(float(value)):
        raise BudgetError(f"budget {text!r} is too large", source=option)
    return value


def _parse_value(text: str, costs: Costs, option: str) -> float:
    return float(_parse_decimal(text, costs, option))


def check_feasible(budget: float, costs: Costs, option: str = "--budget") -> None:
    c1 = float(costs.values[0])
    if budget < c1 * (1 - 1e-12):
        raise BudgetError(
            f"budget {budget:g}{costs.unit} is below the cost of the first exit ({c1:g}{costs.unit}); "
            f"no policy can spend less. Use a budget >= {c1:g}{costs.unit}",
            source=option,
        )


def parse_budget(text: str, costs: Costs, option: str = "--budget") -> float:
    """One budget in the costs' unit; a budget under c_1 is an error naming c_1."""
    b = _parse_value(text, costs, option)
    check_feasible(b, costs, option)
    return b


def parse_budgets(text: str, costs: Costs, option: str = "--budgets") -> list[float]:
    """A comma list or an inclusive ``start:stop:step`` range, in the costs' unit."""
    text = text.strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise BudgetError(f"a range is start:stop:step, got {text!r}", source=option)
        start, stop, step = (_parse_decimal(p, costs, option) for p in parts)
        if stop < start:
            raise BudgetError(f"range {text!r} ends before it starts", source=option)
        count = int((stop - start) // step) + 1  # exact decimal arithmetic: the stop is kept when it is on the grid
        if count > MAX_BUDGETS:
            raise BudgetError(f"range {text!r} gives {count} budgets; at most {MAX_BUDGETS}", source=option)
        out = [float(start + i * step) for i in range(count)]
    else:
        items = [t for t in text.split(",") if t.strip()]
        if not items:
            raise BudgetError("no budgets given", source=option)
        if len(items) > MAX_BUDGETS:
            raise BudgetError(f"{len(items)} budgets given; at most {MAX_BUDGETS}", source=option)
        out = [_parse_value(t, costs, option) for t in items]
    for b in out:
        check_feasible(b, costs, option)
    return out


def default_budgets(costs: Costs, count: int = 10) -> list[float]:
    """``count`` budgets evenly spaced over [c_1, c_K]."""
    c = costs.values
    return [float(v) for v in np.linspace(c[0], c[-1], count)]
