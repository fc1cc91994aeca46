"""What every store that can hold a person's data offers to access, erasure and retention requests.

Each package that writes personal data (the lake and quarantine, identity, the feature stores,
MLflow, the inference log, monitoring, governance) implements `PersonalStore` for its own
stores, in its own module, so the format knowledge stays with the code that writes it.
`flows` wires them into one catalogue; `governance.dsar` walks it. This module only names
the shapes, so every package may import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Subject:
    """One person, as every store might hold them: each identifier they are known by.

    Built by `features.identity.subjects` from a request (a customer key, an email, a phone,
    a source record id) through the identity crosswalk. A store looks a person up by
    whichever of these it holds: the lake by source record ids, the feature stores by
    customer key, the inference log by its hashed key, a raw search by emails and phones.
    """

    request: str
    customer_keys: tuple[str, ...] = ()
    # (lake table, record id in that table), e.g. ("crm_accounts", "C000123")
    source_records: tuple[tuple[str, str], ...] = ()
    emails: tuple[str, ...] = ()  # raw as held and normalised
    phones: tuple[str, ...] = ()  # raw as held and normalised (E.164)
    # (first name, last name, birth date ISO) as held, normalised lower-case
    names: tuple[tuple[str, str, str], ...] = ()
    log_keys: tuple[str, ...] = ()  # the inference log's hashed customer keys

    @property
    def record_ids(self) -> dict[str, set[str]]:
        """Source record ids per lake table."""
        out: dict[str, set[str]] = {}
        for table, record_id in self.source_records:
            out.setdefault(table, set()).add(record_id)
        return out

    def tokens(self) -> set[str]:
        """Every raw string a verify search looks for in a store's text (keys, ids, emails, phones)."""
        found = {*self.customer_keys, *self.emails, *self.phones, *self.log_keys}
        found.update(record_id for _, record_id in self.source_records)
        return {t for t in found if t and len(t) >= 4}


@dataclass
class Holding:
    """What one place of a store holds about some subject.

    `store` names the store ("lake", "quarantine", "identity", "features.offline",
    "features.online", "mlflow", "inference_log", "monitoring", "governance", ...); `place`
    the file, table, key or artifact; `rows` the records held (JSON-able values).
    `subject` is the request of the subject the rows belong to.
    """

    store: str
    place: str
    subject: str
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Erased:
    """What an erasure removed from one place of a store (counts only: it never keeps the data)."""

    store: str
    place: str
    removed: int
    detail: str = ""


@runtime_checkable
class PersonalStore(Protocol):
    """A store a person's data can be in."""

    name: str

    def find(self, subjects: Sequence[Subject]) -> list[Holding]:
        """Everything held about each subject, place by place (empty when nothing)."""
        ...

    def erase(self, subjects: Sequence[Subject]) -> list[Erased]:
        """Remove the subjects' data; idempotent (a rerun after a kill finishes the job, removes 0 twice)."""
        ...
