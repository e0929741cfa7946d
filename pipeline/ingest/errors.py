"""The one-line, user-facing error of a file or mapping that cannot be read (the command line exits 2)."""

from __future__ import annotations

import re


class ExtractError(Exception):
    """An extract that cannot be read or lacks required columns (one-line, user-facing)."""


class MappingError(ExtractError):
    """A mapping profile that cannot be used (one-line, user-facing; the CLI exits 2)."""


_QUOTED = re.compile(r"`[^`]*`")
_OFFSET = re.compile(r"current offset in the file is (\d+) bytes")


def parse_error_message(exc: BaseException) -> str:
    """What a reader's parse error says, in one line and without the file's content.

    Polars quotes the offending field (a patient's row) in its message; the line names the problem and
    the byte offset instead, so the error can go to a terminal, a cron mail or a log.
    """
    text = str(exc)
    offset = _OFFSET.search(text)
    where = f" (near byte {offset.group(1)})" if offset else ""
    if "not properly escaped" in text:
        return f"a quoted field is not closed: check the file for an unmatched double quote{where}"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    first = _QUOTED.sub("a field", lines[0]) if lines else type(exc).__name__
    return first + where
