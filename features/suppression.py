"""placeholder: replaced by the stores helper's module."""

from __future__ import annotations

from collections.abc import Sequence

from custintel.personal import Subject
from custintel.settings import Settings


def suppress(settings: Settings, subjects: Sequence[Subject]) -> int:
    """placeholder: replaced by the stores helper's module."""
    return 0
