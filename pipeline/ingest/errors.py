"""The one-line, user-facing error of a file or mapping that cannot be read (the command line exits 2)."""

from __future__ import annotations


class ExtractError(Exception):
    """An extract that cannot be read or lacks required columns (one-line, user-facing)."""


class MappingError(ExtractError):
    """A mapping profile that cannot be used (one-line, user-facing; the CLI exits 2)."""
