from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from eenet_cli.artifacts.predictions import write_predictions
from eenet_cli.synthetic import make_predictions

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"

os.environ.setdefault("COLUMNS", "160")


def write_synthetic(path: Path, *, n=1200, k=4, c=10, seed=0, miscalibration=0.0, costs=(1.0, 2.0, 3.0, 4.0), with_costs=True, **kw) -> Path:
    d = make_predictions(n, k, c, seed=seed, miscalibration=miscalibration, costs=list(costs)[:k] if costs else None)
    meta = {"format": "costs", "version": 1, "unit": "ms", "costs": d.costs} if with_costs else None
    write_predictions(path, d.logits, d.labels, split=d.split, costs=meta, **kw)
    return path


@pytest.fixture
def synth(tmp_path: Path) -> Path:
    """A small real predictions file: 1200 rows, 4 exits, 10 classes, costs 1..4 ms embedded."""
    return write_synthetic(tmp_path / "preds.parquet")


@pytest.fixture
def runner():
    from typer.testing import CliRunner

    return CliRunner()


def invoke(runner, *args, input=None):
    from eenet_cli.cli import app

    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
