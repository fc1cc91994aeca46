"""What a retention pass over one store found: what it removed and what it kept, each with its own date.

Each package that writes personal data expires its own stores (the format knowledge stays with
the code that writes it) and answers with an `Expiry`; `governance.retention` says how old is
too old, `flows.retention` wires the stores together. Dates are always the data's own (a day
file's day, a drop's export date, a report's stamp), never a file's modification time: a copy
or a restore would otherwise make old data look new.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field


@dataclass
class Item:
    """One place of a store (a file, a folder, a partition) and the date of the data it holds.

    `count` is what the place holds or held in the store's unit (entries, rows, files);
    `reason` says why a place that is due stays (the latest drop of a table, a live model's
    cutoff, the file the service is writing), or what was removed from a place that stays.
    """

    place: str
    dated: dt.date
    count: int = 1
    reason: str = ""


@dataclass
class Expiry:
    """One store's pass: the places removed (or, in a dry run, that would be), those kept."""

    store: str
    removed: list[Item] = field(default_factory=list)
    kept: list[Item] = field(default_factory=list)
    # places that lost part of their content (fields of a data class) but stay
    trimmed: list[Item] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def removed_count(self) -> int:
        """How much was removed, in the store's unit (entries, rows, files)."""
        return sum(i.count for i in self.removed)


def day_before(as_of: dt.date, max_age_days: int) -> dt.date:
    """The first date whose data is still young enough: data dated before it is due."""
    return as_of - dt.timedelta(days=max_age_days)
