"""Text data read as a table (``dump --data texts.csv``): a text column and an integer label
column from a ``.csv``, ``.tsv`` or ``.parquet`` file."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from eenet_cli.errors import InputError


def read_text_table(path: str | Path, text_column: str | None = "text", label_column: str | None = "label") -> tuple[list[str], np.ndarray]:
    """Texts and int64 labels from a ``.csv``, ``.tsv`` or ``.parquet`` file.

    One clear :class:`InputError` for a missing file or column, a missing or non-string
    text, or a label that is not a non-negative integer (whole floats are accepted).
    """
    text_column = text_column or "text"
    label_column = label_column or "label"
    p = Path(path)
    src = str(path)
    if not p.is_file():
        raise InputError("no such file", source=src, field="--data")
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(p).names
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"not a readable Parquet file ({str(e).splitlines()[0] if str(e) else type(e).__name__})", source=src, field="--data") from None
        _check_columns(names, text_column, label_column, src)
        table = pq.read_table(p, columns=[text_column, label_column])
        texts_raw = table.column(text_column).to_pylist()
        label_col = table.column(label_column)
        if pa.types.is_integer(label_col.type) or pa.types.is_floating(label_col.type) or pa.types.is_boolean(label_col.type):
            labels_raw: Any = label_col.to_numpy(zero_copy_only=False)
            if label_col.null_count:
                labels_raw = np.asarray(label_col.to_pylist(), dtype=object)
        else:
            labels_raw = np.asarray(label_col.to_pylist(), dtype=object)
    elif suffix in (".csv", ".tsv"):
        import pandas as pd

        try:
            header = pd.read_csv(p, sep="\t" if suffix == ".tsv" else ",", nrows=0)
        except Exception as e:  # noqa: BLE001
            raise InputError(f"not a readable {suffix[1:].upper()} file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})", source=src, field="--data") from None
        _check_columns(list(map(str, header.columns)), text_column, label_column, src)
        try:
            df = pd.read_csv(
                p,
                sep="\t" if suffix == ".tsv" else ",",
                usecols=[text_column, label_column],
                dtype={text_column: str},
                keep_default_na=False,
                na_values={label_column: [""]},
            )
        except Exception as e:  # noqa: BLE001
            raise InputError(f"not a readable {suffix[1:].upper()} file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})", source=src, field="--data") from None
        texts_raw = df[text_column].tolist()
        labels_raw = df[label_column].to_numpy()
    else:
        raise InputError(f"unknown text data file type {suffix!r}; expected .csv, .tsv or .parquet", source=src, field="--data")
    if len(texts_raw) == 0:
        raise InputError("holds no rows", source=src, field="--data")
    texts: list[str] = []
    for i, t in enumerate(texts_raw):
        if not isinstance(t, str):
            got = "missing" if t is None or (isinstance(t, float) and math.isnan(t)) else f"a {type(t).__name__} ({t!r})"
            raise InputError(f"row {i}: the text is {got}, expected a string", source=src, field=text_column)
        texts.append(t)
    labels = _integer_labels(labels_raw, src, label_column)
    return texts, labels


def _check_columns(names: list[str], text_column: str, label_column: str, src: str) -> None:
    have = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
    for col, opt in ((text_column, "--text-column"), (label_column, "--label-column")):
        if col not in names:
            raise InputError(f"no column {col!r} (columns: {have}); choose one with {opt}", source=src, field=opt)
    if text_column == label_column:
        raise InputError(f"the text and label columns are both {text_column!r}", source=src, field="--label-column")


def _integer_labels(raw: Any, src: str, column: str) -> np.ndarray:
    a = np.asarray(raw)
    if a.dtype.kind in "iu":
        labels = a.astype(np.int64)
    elif a.dtype.kind == "f":
        bad = ~np.isfinite(a) | (a != np.round(a))
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"row {i}: label {a[i].item()!r} is not an integer class id", source=src, field=column)
        labels = a.astype(np.int64)
    else:
        labels = np.empty(len(a), dtype=np.int64)
        for i, v in enumerate(a.tolist()):
            if isinstance(v, (bool, np.bool_)) or v is None:
                raise InputError(f"row {i}: label {v!r} is not an integer class id", source=src, field=column)
            if isinstance(v, (int, np.integer)):
                labels[i] = int(v)
                continue
            if isinstance(v, float) and v.is_integer():
                labels[i] = int(v)
                continue
            raise InputError(f"row {i}: label {v!r} is not an integer class id (map the classes to 0..C-1 first)", source=src, field=column)
    neg = labels < 0
    if neg.any():
        i = int(np.argmax(neg))
        raise InputError(f"row {i}: label {labels[i]} is negative; expected class ids 0..C-1", source=src, field=column)
    return labels
