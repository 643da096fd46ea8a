"""Regenerate the golden files the tests compare against. Run only on purpose, after a
change that is meant to alter results, and say why in the commit message:

    python scripts/update_golden.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"

RUNS = {
    "digits_results.json": ["evaluate", "sample_data/digits.parquet", "--methods",
                            "maxprob,entropy,vote,patience,eenet,lookahead,oracle", "--budgets", "0.5,0.8,1.1,1.4",
                            "-q", "--json", "-o", "-"],
    "digits_policy_eenet.json": ["fit", "sample_data/digits.parquet", "--budget", "50%", "-q"],
    "digits_policy_maxprob.json": ["fit", "sample_data/digits.parquet", "--budget", "50%", "--method", "maxprob", "-q"],
}


def main() -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name, args in RUNS.items():
        out = subprocess.run([sys.executable, "-m", "eenet_cli", *args], cwd=ROOT, capture_output=True, text=True, check=True)
        (GOLDEN / name).write_text(out.stdout)
        print("wrote", GOLDEN / name)


if __name__ == "__main__":
    main()
