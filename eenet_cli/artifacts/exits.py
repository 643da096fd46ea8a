"""The per-sample exits of ``eenet apply``: Parquet, CSV, or Parquet bytes for stdout."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from eenet_cli.artifacts.files import atomic_path


def exits_table(preds, result):
    """The per-sample table: sample_id and split (when the predictions have them), the exit
    taken, its score, the prediction, and the label and whether it is right (with labels)."""
    import pyarrow as pa

    cols = {}
    if preds.sample_id is not None:
        cols["sample_id"] = pa.array(preds.sample_id)
    if preds.split is not None:
        cols["split"] = pa.array(preds.split, type=pa.string())
    cols["exit"] = pa.array(result.exits.astype(np.int64))
    cols["score"] = pa.array(result.exit_scores.astype(np.float64))
    cols["prediction"] = pa.array(result.preds.astype(np.int64))
    if preds.labels is not None:
        cols["label"] = pa.array(preds.labels)
        cols["correct"] = pa.array(result.correct)
    return pa.table(cols)


def write_exits(path: str, preds, result, write_stdout: Callable[[bytes], None] | None = None) -> bytes | None:
    """Write the per-sample exits to ``path``: CSV for a ``.csv`` name, else Parquet (atomically).

    For ``path == "-"`` the Parquet bytes are made in memory, handed to ``write_stdout``
    when given (the command's stdout writer), and returned; otherwise returns None.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = exits_table(preds, result)
    if path == "-":
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        data = sink.getvalue().to_pybytes()
        if write_stdout is not None:
            write_stdout(data)
        return data
    with atomic_path(path) as tmp:
        if path.lower().endswith(".csv"):
            table.to_pandas().to_csv(tmp, index=False)
        else:
            pq.write_table(table, tmp)
    return None
