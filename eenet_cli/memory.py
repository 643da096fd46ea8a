"""Refusing work that would need more memory than the machine has, before allocating it.

:func:`check_memory` compares an estimate in bytes with the machine's physical memory
(``os.sysconf``) and raises :class:`~eenet_cli.errors.InputError` with both numbers in one
line, instead of a traceback from the allocator (or the OOM killer) later. Where the total
is unknown (no ``sysconf``) nothing is refused.
"""

from __future__ import annotations

import os

from eenet_cli.errors import InputError

#: refuse an estimate above this fraction of the machine's physical memory
MEMORY_FRACTION = 0.8


def total_memory() -> int | None:
    """Physical memory in bytes, or None where the platform does not say."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page = os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    if not isinstance(pages, int) or not isinstance(page, int) or pages <= 0 or page <= 0:
        return None
    return pages * page


def format_bytes(n: float) -> str:
    """``120.0 GB`` (decimal units, as people read memory sizes)."""
    if n >= 1e15:
        return f"{n / 1e12:.3g} TB"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def check_memory(nbytes: int | float, what: str, *, source: str | None = None, field: str | None = None) -> None:
    """Refuse (exit 2) when ``nbytes`` exceeds :data:`MEMORY_FRACTION` of the machine's memory.

    ``what`` says what needs the memory: ``"--input-shape 3,100000,100000 (batch 1, float32)"``
    -> ``--input-shape 3,100000,100000 (batch 1, float32) needs 120.0 GB; this machine has 23.4 GB``.
    """
    total = total_memory()
    if total is None or nbytes <= MEMORY_FRACTION * total:
        return
    raise InputError(f"{what} needs {format_bytes(nbytes)}; this machine has {format_bytes(total)}", source=source, field=field)
