"""eenet's artifacts: the only code that opens or writes one (docs/spec.md §2).

Modules, in import order (each imports only those before it, plus ``eenet_cli.errors``,
``eenet_cli.memory``, ``eenet_cli._version`` and ``eenet_cli.core``):

- ``files``: strict JSON reading, limits, format versions, atomic writes, the shipped
  JSON Schemas (:func:`schema_text`, :func:`~eenet_cli.artifacts.files.check_schema`);
- ``costs``: units, the costs artifact, inline cost lists and budgets;
- ``predictions``: the predictions Parquet (reader, writer, ``dump --append`` support);
- ``policy``: policy JSON;
- ``results``: results as JSON, Parquet or CSV;
- ``exits``: the per-sample exits of ``apply``;
- ``tables``: text data tables (CSV/TSV/Parquet) read as data;
- ``kinds``: which kind of artifact a file is.

Importing this package imports none of them (nor numpy, pyarrow or pandas).
"""

from __future__ import annotations


def schema_text(name: str) -> str:
    """The shipped JSON Schema of artifact ``name`` (predictions, costs, policy or results)."""
    from eenet_cli.artifacts.files import schema_text as text

    return text(name)
