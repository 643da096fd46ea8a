"""What kind of eenet artifact a file is (results, policy or predictions), from its name,
its Parquet schema and metadata, or its JSON ``format``."""

from __future__ import annotations

from pathlib import Path

from eenet_cli.artifacts.files import read_json
from eenet_cli.errors import InputError


def sniff(path: str) -> str:
    """What kind of eenet file ``path`` is: results, policy or predictions (else InputError)."""
    p = Path(path)
    if path == "-":
        raise InputError("plot reads files by name; stdin is not supported", source="<stdin>")
    if not p.exists():
        raise InputError("no such file", source=path)
    suffix = p.suffix.lower()
    if p.is_dir():
        if any(q.suffix == ".parquet" for q in p.iterdir()):
            return "predictions"
        raise InputError("is a directory without .parquet part files", source=path)
    if suffix == ".csv":
        return "results"
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(p)
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"not a readable Parquet file ({str(e).splitlines()[0] if str(e) else type(e).__name__})", source=path) from None
        meta = {k.decode("utf-8", "replace"): v for k, v in (schema.metadata or {}).items()}
        fmt = meta.get("eenet.format", b"").decode("utf-8", "replace").strip('"')
        if fmt == "results" or (not fmt and "accuracy" in schema.names and "method" in schema.names):
            return "results"
        if fmt in ("", "predictions") and any(n.startswith("exit_") for n in schema.names):
            return "predictions"
        raise InputError(
            f"is neither predictions nor results (eenet.format {fmt or 'missing'!s}, columns {schema.names[:6]})",
            source=path,
        )
    doc = read_json(path)  # every other file must be JSON; a non-JSON file fails here with one line
    fmt = doc.get("format") if isinstance(doc, dict) else None
    if fmt in ("results", "policy"):
        return fmt
    if fmt == "costs":
        raise InputError(
            "is a costs file; plot takes a results file (from `eenet evaluate`), or a policy (from `eenet fit`) "
            "and predictions",
            source=path,
            field="format",
        )
    raise InputError(
        f"expected an eenet results or policy file, got format {fmt!r}" if isinstance(doc, dict) else
        f"expected an eenet results or policy JSON object, got {type(doc).__name__}",
        source=path,
        field="format",
    )
