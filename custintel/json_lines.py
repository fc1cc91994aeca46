"""Reading JSON Lines files (decision logs, the ingest log): one record per newline-ended line."""

from __future__ import annotations

from pathlib import Path


def json_lines(path: Path) -> list[str]:
    """The non-blank lines of a JSON Lines file, split on newlines (LF) only.

    `str.splitlines` also splits on U+2028, U+0085 and other separators that JSON keeps raw
    inside strings, cutting a record in two (a category value from a request did).
    """
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
