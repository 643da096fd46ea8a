"""Budget lists and inclusive ``start:stop:step`` ranges (eenet_cli/budgets.py).

Every expectation here is written out by hand. The ranges are chosen so that the
floating-point quotient ``(stop - start) / step`` lands just *below* the whole number
it should be (``(0.3 - 0.1) / 0.1 == 1.9999999999999996``): a range that counts its
values with a plain ``floor`` loses its last, inclusive value there.
"""

from __future__ import annotations

import numpy as np
import pytest

from eenet_cli.artifacts.costs import (
    Costs,
    default_budgets,
    parse_budget,
    parse_budgets,
)
from eenet_cli.errors import BudgetError


def costs(*values: float, unit: str = "ms") -> Costs:
    return Costs(np.array(values, dtype=np.float64), unit, "test")


MS = costs(0.1, 0.2, 0.4)  # c_1 = 0.1ms, c_K = 0.4ms
WIDE = costs(1.0, 2.0, 4.0, 8.0)  # c_1 = 1ms, c_K = 8ms


@pytest.mark.parametrize(
    "text, cost, expected",
    [
        # the examples
        ("0.1:0.3:0.1", MS, [0.1, 0.2, 0.3]),
        ("4ms:8ms:0.5ms", WIDE, [4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5, 8.0]),
        # quotients just below a whole number: 5.999999999999999, 9.999999999999998, 2.9999999999999996
        ("0.1:0.7:0.1", MS, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]),
        ("1:2:0.1", WIDE, [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0]),
        ("1.1:1.7:0.2", WIDE, [1.1, 1.3, 1.5, 1.7]),
        # the range in docs/lookahead.md: 11 budgets
        ("0.45ms:1.45ms:0.1ms", costs(0.35, 0.7, 1.03, 1.6),
         [0.45, 0.55, 0.65, 0.75, 0.85, 0.95, 1.05, 1.15, 1.25, 1.35, 1.45]),
        # quotient just above a whole number: still exactly the values up to stop
        ("0.3:0.4:0.1", MS, [0.3, 0.4]),
        # the docstring's example and test_io's
        ("1:2:0.25", WIDE, [1.0, 1.25, 1.5, 1.75, 2.0]),
        # a step that does not divide the span stops at the last value <= stop
        ("1:2:0.3", WIDE, [1.0, 1.3, 1.6, 1.9]),
        ("0.1:0.35:0.1", MS, [0.1, 0.2, 0.3]),
        # a one-value range
        ("2:2:0.5", WIDE, [2.0]),
        # units: every part converted to the costs' unit (ms) first
        ("100us:300us:100us", MS, [0.1, 0.2, 0.3]),
        ("0.0001s:0.0003s:0.0001s", MS, [0.1, 0.2, 0.3]),
        ("4000us:8ms:0.0005s", WIDE, [4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5, 8.0]),
        ("0.1:0.3:0.1ms", MS, [0.1, 0.2, 0.3]),
        # percentages of the full model (c_K = 0.4ms and 8ms)
        ("25%:100%:25%", MS, [0.1, 0.2, 0.3, 0.4]),
        ("50%:100%:12.5%", WIDE, [4.0, 5.0, 6.0, 7.0, 8.0]),
        # above c_K is allowed
        ("8:12:2", WIDE, [8.0, 10.0, 12.0]),
        # spaces around the parts
        (" 4ms : 6ms : 1ms ", WIDE, [4.0, 5.0, 6.0]),
    ],
)
def test_inclusive_ranges(text, cost, expected):
    got = parse_budgets(text, cost)
    assert len(got) == len(expected), got
    assert got == pytest.approx(expected, rel=1e-12, abs=0)
    assert all(type(b) is float for b in got)


def test_range_values_are_clean_decimals():
    """0.1 + 2 * 0.1 is 0.30000000000000004 in floating point; the range holds 0.3."""
    assert parse_budgets("0.1:0.3:0.1", MS) == [0.1, 0.2, 0.3]
    assert parse_budgets("1:2:0.1", WIDE)[7] == 1.7


def test_a_range_of_10000_values_is_allowed_and_one_more_is_not():
    got = parse_budgets("1:10000.9:1", costs(1.0, 2.0))
    assert len(got) == 10000 and got[0] == 1.0 and got[-1] == 10000.0
    with pytest.raises(BudgetError, match="10001 budgets; at most 10000"):
        parse_budgets("1:10001:1", costs(1.0, 2.0))


@pytest.mark.parametrize(
    "text, message",
    [
        ("1:2", "start:stop:step"),
        ("1:2:0.5:3", "start:stop:step"),
        ("3:2:0.5", "ends before it starts"),
        ("1:2:0", "must be positive"),
        ("1:2:-0.5", "must be positive"),
        ("1:2:fast", "cannot read 'fast'"),
        ("0.5:2:0.5", r"below the cost of the first exit \(1ms\)"),  # the first value is under c_1
        ("1:2:2GFLOPs", "FLOP"),
    ],
)
def test_bad_ranges(text, message):
    with pytest.raises(BudgetError, match=message):
        parse_budgets(text, WIDE)


def test_lists():
    assert parse_budgets("2ms,3ms", WIDE) == [2.0, 3.0]
    assert parse_budgets("3, 1500us ,50%", WIDE) == [3.0, 1.5, 4.0]  # order kept, units converted
    assert parse_budgets("2ms,", WIDE) == [2.0]  # a trailing comma is not a budget
    with pytest.raises(BudgetError, match="no budgets given"):
        parse_budgets(" , ", WIDE)
    with pytest.raises(BudgetError, match=r"below the cost of the first exit \(1ms\)"):
        parse_budgets("2ms,0.5ms", WIDE)


def test_single_budgets():
    assert parse_budget("1500us", costs(1.0, 2.0, 4.0)) == 1.5
    assert parse_budget("50%", costs(1.0, 2.0, 4.0)) == 2.0
    assert parse_budget("0.25%", costs(1.0, 400.0)) == 1.0
    assert parse_budget("1", costs(1.0, 2.0)) == 1.0  # exactly c_1 is feasible
    assert parse_budget("3GFLOPs", costs(1e9, 2e9, unit="flops")) == 3e9
    with pytest.raises(BudgetError, match="1e999ms"):  # no float holds it
        parse_budget("1e999ms", WIDE)


def test_default_budgets_span_the_cost_range():
    assert default_budgets(costs(2.0, 4.0, 8.0), 3) == [2.0, 5.0, 8.0]
    assert default_budgets(costs(1.0, 2.0, 11.0), 11) == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0])
    assert len(default_budgets(costs(1.0, 2.0))) == 10


def test_evaluate_runs_every_budget_of_a_range(runner, tmp_path):
    """Through the CLI: a range over the digits sample gives one record per budget, stop included."""
    import json

    from conftest import SAMPLE, invoke

    out = tmp_path / "r.json"
    r = invoke(runner, "evaluate", SAMPLE / "digits.parquet", "--methods", "maxprob",
               "--budgets", "0.4ms:0.7ms:0.1ms", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    budgets = [rec["budget"] for rec in json.loads(out.read_text())["results"]]
    assert budgets == pytest.approx([0.4, 0.5, 0.6, 0.7], rel=1e-12, abs=0)
