"""One-line messages for failures in code eenet does not own (user factories, torch, files).

>>> first_line(ValueError("bad shape\\nmore detail"))
'ValueError: bad shape'
>>> first_line(KeyError())
'KeyError'
"""

from __future__ import annotations


def first_line(e: BaseException) -> str:
    """``TypeName: first line of the message`` (just the type name when there is no message)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
