"""``eenet schema``: print the JSON Schema of an artifact."""

from __future__ import annotations

from typing import Annotated

import typer

from eenet_cli.app import app

SCHEMAS = ("predictions", "costs", "policy", "results")


@app.command(
    "schema",
    help="Print the JSON Schema of an artifact: predictions (file metadata), costs, policy or results.\n\n"
    "Example:\n\n  eenet schema policy > policy.schema.json",
)
def schema_command(name: Annotated[str, typer.Argument(help="One of: " + ", ".join(SCHEMAS), show_default=False)]) -> None:
    from eenet_cli.artifacts import schema_text
    from eenet_cli.errors import InputError

    if name not in SCHEMAS:
        raise InputError(f"unknown artifact {name!r}; expected one of {', '.join(SCHEMAS)}", field="NAME")
    typer.echo(schema_text(name), nl=False)
