"""Budgets (docs/spec.md §2.3): ``6ms``, ``250us``, ``2GFLOPs``, ``60%`` of the full model, bare
numbers in the costs' unit, lists ``4ms,5ms`` and inclusive ranges ``4ms:8ms:0.5ms``.

>>> import numpy as np
>>> from eenet_cli.io import Costs
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
import re
from decimal import Decimal

import numpy as np

from eenet_cli.errors import BudgetError
from eenet_cli.io import Costs, normalise_unit, unit_factor

# one unambiguous pattern (no nested repeats), so a long bad value fails in linear time
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_RE = re.compile(rf"\s*({_NUM})\s*(%|[A-Za-zµμ]+)?\s*")
MAX_VALUE_CHARS = 64  # one budget value; longer is refused before parsing
MAX_BUDGETS = 10000


def _parse_decimal(text: str, costs: Costs, option: str) -> Decimal:
    """A budget as an exact decimal in the costs' unit (``120us`` in ms is exactly 0.12)."""
    if len(text) > MAX_VALUE_CHARS:
        raise BudgetError(f"a budget value is at most {MAX_VALUE_CHARS} characters, got {len(text)}", source=option)
    m = _RE.fullmatch(text)
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
