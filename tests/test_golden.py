"""The shipped sample data gives exactly the stored results and policies.

A failure means behaviour changed. If the change is intended, regenerate with
``python scripts/update_golden.py`` and say why in the commit.
"""

import json
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from update_golden import GOLDEN, RUNS  # noqa: E402


@pytest.mark.parametrize("name", sorted(RUNS))
def test_sample_data_matches_golden(name):
    expected = (GOLDEN / name).read_text()
    out = subprocess.run([sys.executable, "-m", "eenet_cli", *RUNS[name]], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    if out.stdout != expected:  # show what moved, not a wall of JSON
        got, want = json.loads(out.stdout), json.loads(expected)
        if "results" in want:
            moved = [(w["method"], w["budget"], w["accuracy"], g["accuracy"])
                     for w, g in zip(want["results"], got["results"]) if w != g]
            pytest.fail(f"{name}: records changed (method, budget, expected acc, got acc): {moved}")
        pytest.fail(f"{name}: policy changed; keys differing: {[k for k in want if want[k] != got.get(k)]}")
