"""Writing a file so that readers see the old version or the new one, never half of it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Let `write` fill a hidden temporary file beside `path`, then move it over `path` in one step."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_text_atomically(path: Path, text: str) -> None:
    """`path.write_text(text)`, atomically (see `replace_atomically`)."""
    replace_atomically(path, lambda p: p.write_text(text, encoding="utf-8"))
