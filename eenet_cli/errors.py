"""The one exception family of eenet.

Library code raises these; the command line turns them into one line on stderr and an
exit code (docs/spec.md §4): 2 for bad usage or bad input, 1 for a failed check or failed work.
"""

from __future__ import annotations


def shorten(text: str, limit: int = 120) -> str:
    """A long name or value cut in the middle, so that an error stays one readable line."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 30]}…{text[-20:]} ({len(text)} characters)"


class EenetError(Exception):
    """Base class: something the user can fix. ``exit_code`` is what the CLI returns.

    The message reads ``source: field: message`` when a file (source) or an option or
    column (field) is named."""

    exit_code = 2

    def __init__(self, message: str = "", *, source: str | None = None, field: str | None = None):
        self.source = source
        self.field = field
        parts = []
        if source:
            parts.append(shorten(str(source)))
        if field:
            parts.append(field)
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class InputError(EenetError):
    """A file, field or option is not what was expected (exit 2)."""


class VersionError(InputError):
    """An artifact of a newer major version than this release understands."""


class BudgetError(InputError):
    """A budget that cannot be met or parsed, or whose unit does not match the costs."""


class CheckFailed(EenetError):
    """A regression check failed (exit 1)."""

    exit_code = 1


class WorkFailed(EenetError):
    """The work itself failed, not the input (exit 1)."""

    exit_code = 1
