"""Results files (docs/spec.md §2.5): what ``evaluate`` writes, as JSON, Parquet or CSV."""

from __future__ import annotations

import json
import os
from pathlib import Path

from eenet_cli.artifacts.files import (
    atomic_path,
    check_schema,
    check_version,
    display,
    finite_number,
    loads_strict,
    read_json,
    write_json,
    write_text,
)
from eenet_cli.artifacts.predictions import _decode_meta, _open_parquet
from eenet_cli.errors import InputError

RESULT_LIST_FIELDS = ("exit_fractions", "val_exit_fractions")
REQUIRED_RESULT_FIELDS = ("method", "budget", "accuracy", "avg_cost", "budget_met")


def results_format(path: str | os.PathLike | None) -> str:
    if path is None or str(path) == "-":
        return "json"
    suffix = Path(path).suffix.lower()
    return {".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(suffix, "")


def write_results(path: str | os.PathLike | None, doc: dict) -> None:
    """Results as JSON, Parquet or CSV chosen by the extension (docs/spec.md §2.5)."""
    fmt = results_format(path)
    if fmt == "json":
        write_json(path, doc)
        return
    if not fmt:
        raise InputError("unknown results format; use a .json, .parquet or .csv file name", source=str(path))
    import pandas as pd

    df = pd.DataFrame(doc["results"])
    header = {k: v for k, v in doc.items() if k != "results"}
    if fmt == "csv":
        for col in RESULT_LIST_FIELDS:
            if col in df:
                df[col] = df[col].map(lambda v: json.dumps(v))
        text = df.to_csv(index=False, lineterminator="\n")
        write_text(path, text)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({f"eenet.{k}".encode(): json.dumps(v).encode() for k, v in header.items()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _results_from_records(records: list[dict], header: dict, source: str) -> dict:
    if not records:
        raise InputError("has no result records", source=source)
    check_schema({**header, "format": "results", "version": header.get("version", 1), "results": records}, "results", source)
    for i, r in enumerate(records):
        for key in REQUIRED_RESULT_FIELDS:
            if key not in r:
                raise InputError(f"record {i} has no {key!r}", source=source, field=key)
        for key in ("budget", "accuracy", "avg_cost"):
            v = r[key]
            if not finite_number(v):
                raise InputError(f"record {i}: expected a finite number, got {v!r}", source=source, field=key)
        if not isinstance(r["method"], str):
            raise InputError(f"record {i}: expected a method name, got {r['method']!r}", source=source, field="method")
        if not isinstance(r["budget_met"], bool):
            raise InputError(f"record {i}: expected true or false, got {r['budget_met']!r}", source=source, field="budget_met")
    return {**header, "results": records}


def read_results(path: str | os.PathLike) -> dict:
    """Read a results file written by ``evaluate`` in any of its three formats."""
    source = display(path)
    fmt = results_format(path) if str(path) != "-" else "json"
    if fmt == "json" or not fmt:
        doc = read_json(path)
        if not isinstance(doc, dict) or doc.get("format") != "results":
            got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise InputError(f"expected an eenet results file (format 'results'), got {got!r}", source=source, field="format")
        check_version("results", doc.get("version"), source)
        recs = doc.get("results")
        if not isinstance(recs, list) or not all(isinstance(r, dict) for r in recs):
            raise InputError("expected a list of records", source=source, field="results")
        return _results_from_records(recs, {k: v for k, v in doc.items() if k != "results"}, source)
    if fmt == "csv":
        import pandas as pd

        if Path(path).is_dir():
            raise InputError("is a directory, expected a file", source=source)
        try:
            df = pd.read_csv(path)
        except FileNotFoundError:
            raise InputError("no such file", source=source) from None
        except Exception as e:  # pandas raises many types for malformed CSV
            raise InputError(f"not a readable CSV file ({str(e).splitlines()[0]})", source=source) from None
        for col in RESULT_LIST_FIELDS:
            if col in df:
                df[col] = df[col].map(lambda s: loads_strict(s, source) if isinstance(s, str) else s)
        header = {"format": "results", "version": 1}
    else:
        if not Path(path).exists():
            raise InputError("no such file", source=source)
        pf = _open_parquet(Path(path), source)
        header = _decode_meta(pf.schema_arrow.metadata, source)
        if header.get("format", "results") != "results":
            raise InputError(f"expected an eenet results file, got format {header.get('format')!r}", source=source, field="eenet.format")
        if "version" in header:
            check_version("results", header["version"], source)
        df = pf.read().to_pandas()
        for col in RESULT_LIST_FIELDS:
            if col in df:
                df[col] = df[col].map(lambda v: [float(x) for x in v])
    records = json.loads(df.to_json(orient="records"))
    for r in records:
        for col in RESULT_LIST_FIELDS:
            if col in r and isinstance(r[col], str):
                r[col] = loads_strict(r[col], source)
    return _results_from_records(records, header, source)

