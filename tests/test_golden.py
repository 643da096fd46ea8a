"""The shipped sample data gives the stored results and policies.

What must not move is compared exactly: structure, strings and integers, each sample's
exit and prediction under a golden policy, and every accuracy or exit fraction as a
count of samples. Other floats (weights, thresholds, costs, losses) are compared within
the tolerance stated in ``scripts/update_golden.py`` (``REL_TOL``, ``ABS_TOL``), because
float32 torch training rounds differently on another CPU. On one machine, reruns are
byte-identical (:func:`test_reruns_are_byte_identical`).

A failure means behaviour changed and names the JSON path (or the sample) that moved. If
the change is intended, regenerate with ``python scripts/update_golden.py`` and say why
in the commit.
"""

import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from update_golden import GOLDEN, RUNS, check, run_cli  # noqa: E402

_FIRST: dict[str, str] = {}


def _fresh(name: str) -> str:
    """The CLI's output for golden ``name``, run once per test session."""
    if name not in _FIRST:
        _FIRST[name] = run_cli(RUNS[name])
    return _FIRST[name]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_sample_data_matches_golden(name):
    problems = check(name, _fresh(name), (GOLDEN / name).read_text())
    if problems:
        shown = "\n  ".join(problems[:30])
        more = f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else ""
        pytest.fail(f"{name}: {len(problems)} difference(s) from the golden file:\n  {shown}{more}", pytrace=False)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_reruns_are_byte_identical(name):
    """On one machine a second run gives the same bytes: fits are pure functions of the data and seed."""
    again = run_cli(RUNS[name])
    assert again == _fresh(name), f"{name}: a second run in the same session gave other bytes"
