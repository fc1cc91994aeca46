"""placeholder: replaced by the stores helper's module."""

from __future__ import annotations

from custintel.personal import PersonalStore
from custintel.settings import Settings


def personal_stores(settings: Settings) -> list[PersonalStore]:
    """placeholder: replaced by the stores helper's module."""
    return []
