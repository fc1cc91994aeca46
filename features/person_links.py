"""Which columns of each lake table say whose row it is.

A lake row belongs to a person through a record id (the identity sources' own ids, and the
columns the feature configuration joins on: `support_tickets.crm_id` holds a
`crm_accounts` id) or through an identifier it holds (an email, a phone, a name with a
birth date). Erasure finds a person's rows by these columns, and the suppression list
keeps rows out of the lake by them. Nothing here reads data: it reads the identity and
feature configurations.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from custintel.settings import Settings
from features.featurestore.config import load_feature_config
from features.identity.config import load_identity_config


@dataclass(frozen=True)
class PersonColumns:
    """The columns of one lake table that identify a person (lake column names)."""

    table: str
    links: dict[str, str] = field(default_factory=dict)  # column -> the identity record table its ids belong to
    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    first_name: str | None = None
    last_name: str | None = None
    full_name: str | None = None
    birth_date: str | None = None

    @property
    def empty(self) -> bool:
        """True when nothing in the table says whose row it is (a product catalogue)."""
        return not (self.links or self.emails or self.phones or self.full_name or self.first_name)


def person_columns(settings: Settings, tables: Mapping[str, Iterable[str]]) -> dict[str, PersonColumns]:
    """Per table (given with its lake column names), the columns that identify a person.

    Links come from the identity configuration (each source's own id column), the feature
    configuration (`ref` columns and the record table they refer to) and, for tables that
    are not identity sources, a column named like an identity source's id (`consent_events.crm_id`).
    Emails and phones come from the identity mapping, and any column named like one.
    """
    identity = load_identity_config(settings.identity_config)
    features = load_feature_config(settings.features_config)
    sources = {s.table: s for s in identity.sources}
    id_columns = {s.id: s.table for s in identity.sources}
    refs: dict[str, dict[str, str]] = {}
    for configured in features.sources.values():
        for source in configured:
            if source.ref and source.record_table:
                refs.setdefault(source.table, {})[source.ref] = source.record_table
    out = {}
    for table, names in tables.items():
        columns = list(names)
        links: dict[str, str] = {}
        mapped: dict[str, str] = {}
        if table in sources:
            links[sources[table].id] = table
            mapped = dict(sources[table].columns)
        else:  # an event table: a column named like a source's id holds that source's ids
            links.update({c: id_columns[c] for c in columns if c in id_columns})
        links.update({c: t for c, t in refs.get(table, {}).items() if c in columns and table not in sources})
        emails = {c for c in columns if "email" in c.lower()} | ({mapped["email"]} if "email" in mapped else set())
        phones = {c for c in columns if "phone" in c.lower()} | ({mapped["phone"]} if "phone" in mapped else set())
        out[table] = PersonColumns(
            table=table,
            links={c: t for c, t in links.items() if c in columns},
            emails=tuple(sorted(c for c in emails if c in columns)),
            phones=tuple(sorted(c for c in phones if c in columns)),
            first_name=mapped.get("first_name"),
            last_name=mapped.get("last_name"),
            full_name=mapped.get("full_name"),
            birth_date=mapped.get("birth_date"),
        )
    return out
