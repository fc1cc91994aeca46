"""The suppression list: people erased from the platform, whose data must never come back.

An erasure removes a person's rows from every store; the suppression list keeps them out
afterwards, when the same drop is ingested again or late rows arrive. It holds only keyed
hashes (HMAC-SHA256) of the person's identifiers, never the identifiers: normalised emails
and phones, (lake table, record id), bare record ids, customer keys, and (folded first name,
folded last name, birth date). Ingestion, identity resolution and feature builds ask
`suppressed_rows` which of their rows match.

Layout under the custintel home::

    governance/suppression.parquet   kind, digest, added_at (one row per hashed identifier)
    governance/privacy.key           the HMAC key, when CUSTINTEL_PRIVACY_KEY is not set (mode 0600)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from custintel.atomic_files import replace_atomically
from custintel.file_lock import exclusive_lock
from custintel.personal import Subject
from custintel.settings import Settings
from features.identity.normalise import fold_names, normalise_birth_dates, normalise_emails, normalise_phones

SUPPRESSION_FILE = "suppression.parquet"
KEY_FILE = "privacy.key"
KINDS = ("email", "phone", "record", "record_id", "customer_key", "name_birth")
KEY_CHECK = "key_check"
SCHEMA = pa.schema([("kind", pa.string()), ("digest", pa.string()), ("added_at", pa.timestamp("s", tz="UTC"))])
_SEP = "\x1f"


class SuppressionError(RuntimeError):
    """The suppression list or its key cannot be read; the message names the file."""


def suppression_path(settings: Settings) -> Path:
    """Where the suppression list is kept."""
    return settings.governance_dir / SUPPRESSION_FILE


def existing_privacy_key(settings: Settings) -> bytes | None:
    """The HMAC key if one is configured or its file exists; None otherwise (nothing is written)."""
    if settings.privacy_key is not None or (settings.governance_dir / KEY_FILE).is_file():
        return privacy_key(settings, create=False)
    return None


def privacy_key(settings: Settings, create: bool = True) -> bytes:
    """The HMAC key: CUSTINTEL_PRIVACY_KEY, else the home's key file (created once, readable by its owner only).

    With `create` False a missing key file is an error: a list written under a lost key cannot be matched.
    """
    if settings.privacy_key is not None:
        return settings.privacy_key.get_secret_value().encode("utf-8")
    path = settings.governance_dir / KEY_FILE
    if not path.is_file() and not create:
        raise SuppressionError(
            f"{path} is missing, and CUSTINTEL_PRIVACY_KEY is not set: the suppression list was written under that "
            "key; restore the file (or set the variable to the key) so erased people stay out"
        )
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if another process created it first: theirs is the key
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    key = path.read_text(encoding="utf-8").strip()
    if not key:
        raise SuppressionError(f"{path} is empty: restore the key file (without it the suppression list is useless)")
    return key.encode("utf-8")


def _check(key: bytes) -> str:
    """The digest a list keeps of its own key: a list read under another key is refused, not silently useless."""
    return digest(key, KEY_CHECK, "custintel suppression list")


def digest(key: bytes, kind: str, value: str) -> str:
    """The keyed hash of one identifier of one kind (the kind is part of the message)."""
    return hmac.new(key, f"{kind}{_SEP}{value}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Suppression:
    """The loaded suppression list: its key and the digests it holds."""

    key: bytes = field(repr=False)
    digests: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.digests)

    def __len__(self) -> int:
        return len(self.digests)

    def holds(self, kind: str, values: Iterable[str]) -> set[str]:
        """The values (of one kind, already normalised) that are suppressed."""
        return {v for v in values if digest(self.key, kind, v) in self.digests}


def identifiers(subject: Subject) -> list[tuple[str, str]]:
    """(kind, normalised value) of every identifier of a subject the list keeps."""
    return sorted(identifiers_of([subject])[0])


def identifiers_of(subjects: Sequence[Subject]) -> list[set[tuple[str, str]]]:
    """Each subject's identifiers (as `identifiers`), normalised for the whole batch at once."""
    out: list[set[tuple[str, str]]] = [set() for _ in subjects]
    emails = [(i, e) for i, s in enumerate(subjects) for e in s.emails]
    phones = [(i, p) for i, s in enumerate(subjects) for p in s.phones]
    names = [(i, *n) for i, s in enumerate(subjects) for n in s.names]
    for kind, held, normalise in (("email", emails, normalise_emails), ("phone", phones, normalise_phones)):
        if held:
            values = normalise(pd.Series([v for _, v in held], dtype="string"))
            for (i, _), v in zip(held, values.tolist(), strict=True):
                if isinstance(v, str) and v:
                    out[i].add((kind, v))
    if names:
        frame = pd.DataFrame(names, columns=["s", "first_name", "last_name", "birth_date"])
        joined = _name_birth(frame["first_name"], frame["last_name"], frame["birth_date"])
        for i, v in zip(frame["s"], joined.tolist(), strict=True):
            if isinstance(v, str) and v:
                out[int(i)].add(("name_birth", v))
    for i, s in enumerate(subjects):
        for table, record_id in s.source_records:
            out[i] |= {("record", f"{table}{_SEP}{record_id}"), ("record_id", record_id)}
        out[i] |= {("customer_key", k) for k in s.customer_keys if k}
    return out


@contextlib.contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    with exclusive_lock(settings.governance_dir / ".suppression.lock"):
        yield


def _read_list(path: Path) -> pa.Table:
    if not path.is_file():
        return SCHEMA.empty_table()
    try:
        return pq.read_table(path).cast(SCHEMA)
    except (OSError, pa.ArrowException) as exc:
        raise SuppressionError(f"{path} is not a readable suppression list: {exc}") from exc


def shared_identifiers(settings: Settings, subjects: Sequence[Subject]) -> set[tuple[str, str]]:
    """(kind, value) of the subjects' emails, phones and names with birth dates that other customers hold too.

    A family's shared email, a switchboard phone: the identity records (when resolution has run)
    give them to a customer who is not one of the subjects. Suppressing them would keep that
    other person's rows out of the lake, so `suppress` leaves them out; the subjects' own
    records stay suppressed by their ids.
    """
    records_path = settings.identity_dir / "records.parquet"
    crosswalk_path = settings.identity_dir / "crosswalk.parquet"
    if not records_path.is_file() or not crosswalk_path.is_file():
        return set()
    columns = ["record_key", "email", "phone", "first_name", "last_name", "birth_date"]
    present = set(pq.read_schema(records_path).names)
    records = pd.read_parquet(records_path, columns=[c for c in columns if c in present])
    crosswalk = pd.read_parquet(crosswalk_path, columns=["record_key", "customer_key"])
    theirs_keys = {k for s in subjects for k in s.customer_keys}
    theirs_records = {f"{t}:{r}" for s in subjects for t, r in s.source_records}
    owner = records["record_key"].map(crosswalk.set_index("record_key")["customer_key"])
    others = records[~records["record_key"].isin(theirs_records) & ~owner.isin(theirs_keys)]
    held: set[tuple[str, str]] = set()
    for kind in ("email", "phone"):
        if kind in others:
            held |= {(kind, str(v)) for v in others[kind].dropna().unique()}
    if {"first_name", "last_name", "birth_date"} <= set(others.columns):
        names = _name_birth(others["first_name"], others["last_name"], others["birth_date"])
        held |= {("name_birth", str(v)) for v in names.dropna().unique()}
    return set().union(*identifiers_of(subjects)) & held


def suppress(settings: Settings, subjects: Sequence[Subject]) -> int:
    """Add the subjects' identifiers, keyed-hashed, to the suppression list; return how many were new.

    Identifiers another customer holds too (`shared_identifiers`) are not added. Safe to call
    again with the same subjects (nothing is added twice) and from several processes (one
    writer at a time; the list is replaced atomically).
    """
    path = suppression_path(settings)
    key = privacy_key(settings, create=not path.is_file())
    shared = shared_identifiers(settings, subjects)
    wanted = {(kind, digest(key, kind, value)) for kind, value in set().union(*identifiers_of(subjects)) - shared}
    with _locked(settings):
        current = _read_list(path)
        if current.num_rows:
            _verify_key(current, key, path)
        else:
            wanted.add((KEY_CHECK, _check(key)))
        held = set(zip(current.column("kind").to_pylist(), current.column("digest").to_pylist(), strict=True))
        new = sorted(wanted - held)
        if not new:
            return 0
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        added = pa.table(
            {"kind": [k for k, _ in new], "digest": [d for _, d in new], "added_at": [now] * len(new)}, schema=SCHEMA
        )
        table = pa.concat_tables([current, added])
        replace_atomically(path, partial(pq.write_table, table, compression="zstd"))
    return len(new)


def load_suppression(settings: Settings) -> Suppression:
    """The suppression list (empty, with no key file created, when nothing was ever suppressed)."""
    path = suppression_path(settings)
    table = _read_list(path)
    if table.num_rows == 0:
        return Suppression(b"")
    key = privacy_key(settings, create=False)
    _verify_key(table, key, path)
    kinds = table.column("kind").to_pylist()
    digests = [d for k, d in zip(kinds, table.column("digest").to_pylist(), strict=True) if k != KEY_CHECK]
    return Suppression(key, frozenset(digests))


def _verify_key(table: pa.Table, key: bytes, path: Path) -> None:
    """Refuse a list written under another key (its hashes would match nobody)."""
    checks = {d for k, d in zip(table.column("kind").to_pylist(), table.column("digest").to_pylist(), strict=True)
              if k == KEY_CHECK}  # fmt: skip
    if checks and _check(key) not in checks:
        raise SuppressionError(
            f"{path} was written under another privacy key than the one set now (CUSTINTEL_PRIVACY_KEY or "
            f"{path.with_name(KEY_FILE)}): use the key it was written with"
        )


def _name_birth(first: pd.Series, last: pd.Series, birth: pd.Series) -> pd.Series:
    """`first|last|birth` (folded names, ISO birth date); <NA> where any part is missing."""
    first, last = fold_names(first.reset_index(drop=True)), fold_names(last.reset_index(drop=True))
    born = normalise_birth_dates(birth.reset_index(drop=True))
    joined = first + _SEP + last + _SEP + born
    return joined.set_axis(birth.index)


def _matches(suppression: Suppression, kind: str, values: pd.Series) -> pd.Series:
    """Which values (already normalised, <NA> for none) are suppressed: each distinct value hashed once."""
    distinct = values.dropna().unique()
    hit = suppression.holds(kind, (str(v) for v in distinct))
    return values.isin(hit).fillna(False).astype(bool)


def suppressed_rows(
    frame: pd.DataFrame,
    suppression: Suppression,
    links: Mapping[str, str] | None = None,
    emails: Sequence[str] = ("email",),
    phones: Sequence[str] = ("phone",),
    names: tuple[str, str, str] | None = ("first_name", "last_name", "birth_date"),
    full_name: tuple[str, str] | None = None,
    customer_keys: Sequence[str] = ("customer_key",),
    record_ids: Sequence[str] = (),
) -> pd.Series:
    """Which rows of a frame of identity-like columns belong to a suppressed person (pure).

    Columns absent from the frame are skipped. `links` maps a column to the identity record
    table whose ids it holds; a frame with `source_table` and `record_id` (identity records)
    is matched on both. Emails and phones are normalised, names folded and birth dates made
    ISO here, so raw and normalised frames match alike. `record_ids`: columns holding a record
    id of no known table (a user's own table's ids), matched against every table's ids.
    """
    hit = pd.Series(False, index=frame.index)
    if not suppression or frame.empty:
        return hit
    for column, table in (links or {}).items():
        if column in frame:
            ids = _text(frame[column])
            hit |= _matches(suppression, "record", (table + _SEP + ids).astype("string"))
    if "source_table" in frame and "record_id" in frame:
        both = _text(frame["source_table"]) + _SEP + _text(frame["record_id"])
        hit |= _matches(suppression, "record", both)
    for column in emails:
        if column in frame:
            hit |= _by_distinct(frame[column], suppression, "email", normalise_emails)
    for column in phones:
        if column in frame:
            hit |= _by_distinct(frame[column], suppression, "phone", normalise_phones)
    for column in customer_keys:
        if column in frame:
            hit |= _matches(suppression, "customer_key", _text(frame[column]))
    for column in record_ids:
        if column in frame:
            hit |= _matches(suppression, "record_id", _text(frame[column]))
    birth: pd.Series | None = None
    first = last = None
    if names is not None and all(c in frame for c in names):
        first, last, birth = frame[names[0]], frame[names[1]], frame[names[2]]
    elif full_name is not None and all(c in frame for c in full_name):
        from features.identity.normalise import split_full_names

        split = split_full_names(frame[full_name[0]])
        first, last, birth = split["first_name"], split["last_name"], frame[full_name[1]]
    if first is not None and last is not None and birth is not None:
        hit |= _matches(suppression, "name_birth", _name_birth(first, last, birth))
    return hit


def _text(values: pd.Series) -> pd.Series:
    """Values as trimmed text (<NA> for missing or blank); integer ids without a trailing '.0'."""
    if pd.api.types.is_float_dtype(values):
        values = values.astype("Int64")
    text = values.astype("string").str.strip()
    return text.mask(text == "")


def _by_distinct(values: pd.Series, suppression: Suppression, kind: str, normalise: object) -> pd.Series:
    """Normalise each distinct raw value once, hash it, and mark the rows holding a suppressed one."""
    raw = _text(values)
    distinct = pd.Series(raw.dropna().unique(), dtype="string")
    if distinct.empty:
        return pd.Series(False, index=values.index)
    normalised = normalise(distinct)  # type: ignore[operator]
    hit = _matches(suppression, kind, normalised)
    return raw.isin(set(distinct[hit.to_numpy()])).fillna(False).astype(bool)
