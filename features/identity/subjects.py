"""Who an access or erasure request is about: from what the person gave to every identifier the platform holds.

A request names a person by whatever they know: a customer key, an email (as they write it), a
phone number, a source record id (`crm_accounts:C000000123`, or a bare `C000000123` found in one
table), or `name|birth-date` (`Jane Doe|1970-01-31`). `resolve_subject` normalises it the way
identity resolution does (`features.identity.normalise`), finds the identity records that hold it
(the identity outputs, plus lake records no resolution has keyed yet), and expands them through the
crosswalk to the whole customer: every customer key, every source record of every source (the
acquired company's too), every email and phone as held (raw, from the lake) and normalised, every
name with its birth date. That `Subject` is what each personal store looks the person up by.

A request that matches nobody is an `UnknownSubject`; one that matches several customers (a family
email) is an `AmbiguousSubject` that lists them (masked) and asks for `--customer KEY`.
Messages never repeat the raw identifier: they show it masked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from custintel.personal import Subject
from custintel.settings import Settings
from features.identity.config import SourceMapping
from features.identity.normalise import normalise_birth_dates, normalise_emails, normalise_phones, split_full_names
from features.identity.records import assemble_identity_records
from features.identity.store import identity_config
from features.lake import IngestError, read_lake_table, read_manifest

_PHONE_LIKE = re.compile(r"^\+?[\d\s().\-/]+$")
_MIN_PHONE_DIGITS = 7


class SubjectError(ValueError):
    """A request cannot be turned into exactly one person (nobody, several, or a malformed request)."""


class UnknownSubject(SubjectError):
    """No customer or record holds what the request names."""


class AmbiguousSubject(SubjectError):
    """Several customers hold what the request names: one must be chosen with `--customer KEY`."""

    def __init__(self, message: str, candidates: Sequence[Candidate]) -> None:
        super().__init__(message)
        self.candidates = list(candidates)


@dataclass(frozen=True)
class Candidate:
    """One customer (or one record no resolution has keyed yet) a request may mean, described without its data."""

    key: str  # the customer key, or `record:<table>:<id>` for an unkeyed record
    sources: tuple[str, ...]
    records: int
    hint: str  # initials and birth year, masked

    def describe(self) -> str:
        """`KEY (3 records: billing_accounts, crm_accounts; J. D., born 1970)`."""
        plural = "record" if self.records == 1 else "records"
        hint = f"; {self.hint}" if self.hint else ""
        return f"{self.key} ({self.records} {plural}: {', '.join(self.sources)}{hint})"


_FIELDS = ("record_id", "first_name", "last_name", "email", "phone", "birth_date")


@dataclass(frozen=True)
class _Grouped:
    """A column's distinct values (text) and the row positions holding each: `find` is one dictionary hit."""

    code_of: dict[str, int]
    positions: np.ndarray  # row positions, grouped by value
    starts: np.ndarray  # value code -> its first slot in `positions` (and the next code's start ends it)

    @classmethod
    def of(cls, by: pd.Series) -> _Grouped:
        codes, uniques = pd.factorize(by.to_numpy(dtype=object), use_na_sentinel=True)
        keep = np.flatnonzero(codes >= 0)
        order = keep[np.argsort(codes[keep], kind="stable")]
        starts = np.concatenate([[0], np.cumsum(np.bincount(codes[keep], minlength=len(uniques)))])
        return cls(dict(zip(uniques.tolist(), range(len(uniques)), strict=True)), order, starts)

    def find(self, value: str) -> np.ndarray:
        """Positions of the rows holding `value`."""
        code = self.code_of.get(value)
        return self.positions[self.starts[code] : self.starts[code + 1]] if code is not None else self.positions[:0]

    def values(self) -> list[str]:
        """The distinct values."""
        return list(self.code_of)


class SubjectIndex:
    """The identity records (normalised fields), their raw emails and phones as held, and their customer keys.

    Built once per command (`load_subject_index`) and then asked many requests, so a file of a
    thousand requests reads the identity outputs and the lake once. It holds frames, not a Python
    object per record: each lookup table (a field's values, the raw spellings, a customer's records)
    is grouped on first use, so a request file pays for the fields its requests name, and a home of
    hundreds of thousands of records loads in about a second.
    """

    def __init__(
        self,
        records: pd.DataFrame,
        crosswalk: pd.DataFrame,
        raw: pd.DataFrame | None = None,
        tables: tuple[str, ...] = (),
    ) -> None:
        """An index over frames.

        `records`: record_key + identity fields (text, <NA> when empty); `crosswalk`: record_key,
        customer_key; `raw`: record_key, kind ('email' or 'phone'), value (as held, trimmed).
        """
        self.records = records.reset_index(drop=True)
        self.crosswalk = crosswalk.reset_index(drop=True)
        self.raw = (raw if raw is not None else pd.DataFrame(columns=["record_key", "kind", "value"])).reset_index(
            drop=True
        )
        self.tables = tables
        self._by: dict[str, _Grouped] = {}
        self._arrays: dict[str, np.ndarray] = {}
        self._normalised: dict[str, dict[str, str | None]] = {}

    @classmethod
    def from_mappings(
        cls,
        rows: Mapping[str, Mapping[str, str]],
        customer_of: Mapping[str, str],
        raw_emails: Mapping[str, Iterable[str]] | None = None,
        raw_phones: Mapping[str, Iterable[str]] | None = None,
        tables: tuple[str, ...] = (),
    ) -> SubjectIndex:
        """An index from plain mappings (record_key -> fields, record_key -> customer key, raw spellings)."""
        records = pd.DataFrame(
            [{"record_key": k, **{c: v.get(c) for c in _FIELDS}} for k, v in rows.items()],
            columns=["record_key", *_FIELDS],
        ).astype("string")
        crosswalk = pd.DataFrame(list(customer_of.items()), columns=["record_key", "customer_key"]).astype("string")
        raw = pd.DataFrame(
            [
                (k, kind, v)
                for kind, held in (("email", raw_emails or {}), ("phone", raw_phones or {}))
                for k, values in held.items()
                for v in values
            ],
            columns=["record_key", "kind", "value"],
        ).astype("string")
        return cls(records, crosswalk, raw, tables)

    def _array(self, frame: str, column: str) -> np.ndarray:
        """One column of `records`, `crosswalk` or `raw` as an object array (None for missing), made once."""
        name = f"{frame}.{column}"
        if name not in self._arrays:
            values: pd.Series = getattr(self, frame)[column]
            self._arrays[name] = values.astype(object).where(values.notna(), None).to_numpy(dtype=object)
        return self._arrays[name]

    def _sorted(self, name: str, by: Callable[[], pd.Series]) -> _Grouped:
        """The values `by` gives, sorted once per name, with their positions (binary search, no object per row)."""
        if name not in self._by:
            self._by[name] = _Grouped.of(by())
        return self._by[name]

    def lookup(self, column: str, value: str) -> set[str]:
        """Record keys whose normalised `column` equals `value`."""
        if column not in self.records.columns:
            return set()
        found = self._sorted(column, lambda: self.records[column]).find(value)
        return set(self._array("records", "record_key")[found].tolist())

    def lookup_raw(self, kind: str, value: str) -> set[str]:
        """Record keys holding `value` exactly as written (any case): what normalisation rejected is still held."""

        def held() -> pd.Series:
            return self.raw["value"].where(self.raw["kind"] == kind).str.lower()

        found = self._sorted(f"raw_{kind}", held).find(value.strip().lower())
        return set(self._array("raw", "record_key")[found].tolist())

    def raw_values(self, kind: str, record_key: str) -> set[str]:
        """The `kind` ('email' or 'phone') values one record holds as written."""
        found = self._sorted("raw_of", lambda: self.raw["record_key"]).find(record_key)
        kinds, values = self._array("raw", "kind")[found], self._array("raw", "value")[found]
        return {str(v) for k, v in zip(kinds, values, strict=True) if k == kind}

    @cached_property
    def customer_of(self) -> dict[str, str]:
        """record_key -> customer_key (the crosswalk)."""
        return dict(zip(self.crosswalk["record_key"].tolist(), self.crosswalk["customer_key"].tolist(), strict=True))

    def records_of(self, customer_key: str) -> list[str]:
        """Every record key the crosswalk gives the customer."""
        found = self._sorted("records_of", lambda: self.crosswalk["customer_key"]).find(customer_key)
        return [str(k) for k in self._array("crosswalk", "record_key")[found]]

    def customer_of_record(self, record_key: str) -> str | None:
        """The customer key the crosswalk gives one record (None when no resolution keyed it)."""
        found = self._sorted("crosswalk", lambda: self.crosswalk["record_key"]).find(record_key)
        return str(self._array("crosswalk", "customer_key")[found[0]]) if len(found) else None

    def customer_keys(self) -> list[str]:
        """Every customer key the crosswalk knows, sorted."""
        return sorted(set(self._sorted("records_of", lambda: self.crosswalk["customer_key"]).values()))

    def is_customer(self, key: str) -> bool:
        """Whether the crosswalk knows this customer key."""
        return len(self._sorted("records_of", lambda: self.crosswalk["customer_key"]).find(key)) > 0

    def row(self, record_key: str) -> dict[str, str] | None:
        """The normalised identity fields of one record (None when only the crosswalk names it)."""
        found = self._sorted("record_key", lambda: self.records["record_key"]).find(record_key)
        if not len(found):
            return None
        at = int(found[0])
        fields = (c for c in _FIELDS if c in self.records.columns)
        return {c: v for c in fields if isinstance(v := self._array("records", c)[at], str) and v}

    def normalised(self, kind: str, requests: Sequence[str]) -> list[str | None]:
        """Requests as `kind` ('email' or 'phone') normalises them, batch-normalised and remembered."""
        known = self._normalised.setdefault(kind, {})
        todo = sorted({r for r in requests if r not in known})
        if todo:
            normalise = normalise_emails if kind == "email" else normalise_phones
            for request, value in zip(todo, normalise(pd.Series(todo, dtype="string")).tolist(), strict=True):
                known[request] = value if isinstance(value, str) else None
        return [known[r] for r in requests]


def _text_column(values: pd.Series) -> pd.Series:
    """Values as trimmed text, <NA> when missing or blank."""
    text = values.astype("string").str.strip()
    return text.mask(text == "")


def load_subject_index(settings: Settings) -> SubjectIndex:
    """The identity outputs (records, crosswalk) and the lake's identity tables, read once.

    Lake records that no resolution has keyed yet (ingested since the last `resolve`) are
    included without a customer key; identity records whose lake rows are gone still count.
    """
    config = identity_config(settings)
    tables = tuple(s.table for s in config.sources)
    records_path = settings.identity_dir / "records.parquet"
    columns = ["record_key", *_FIELDS]
    if records_path.is_file():  # identity's own output: normalised text already, blanks made missing here
        records = pd.read_parquet(records_path, columns=columns).astype("string")
        records = records.mask(records == "")
    else:
        records = pd.DataFrame({c: pd.Series(dtype="string") for c in columns})
    lake = _read_identity_tables(settings, config.sources)
    raw_parts: list[pd.DataFrame] = []
    unresolved: dict[str, pd.DataFrame] = {}
    known = set(records["record_key"].dropna().tolist())
    for source in (s for s in config.sources if s.table in lake):
        frame = lake[source.table]
        ids = frame[source.id]
        if pd.api.types.is_float_dtype(ids):  # integer ids with gaps arrive as floats (as identity reads them)
            ids = ids.astype("Int64")
        keys = source.table + ":" + _text_column(ids)
        for kind in ("email", "phone"):
            if (column := source.columns.get(kind)) is not None:
                raw_parts.append(
                    pd.DataFrame({"record_key": keys, "kind": kind, "value": _text_column(frame[column])}).dropna()
                )
        new = (keys.notna() & ~keys.isin(known)).to_numpy()
        if new.any():  # normalise only what no resolution has seen
            unresolved[source.table] = frame.loc[new]
    if unresolved:
        sources = [s for s in config.sources if s.table in unresolved]
        late = assemble_identity_records(unresolved, sources)
        late = pd.DataFrame(
            {
                c: _text_column(late[c]) if c in late else pd.Series(pd.NA, index=late.index, dtype="string")
                for c in columns
            }
        )
        records = pd.concat([records, late[~late["record_key"].isin(known)]], ignore_index=True)
    raw = (
        pd.concat(raw_parts, ignore_index=True).drop_duplicates()
        if raw_parts
        else pd.DataFrame({c: pd.Series(dtype="string") for c in ("record_key", "kind", "value")})
    )
    crosswalk_path = settings.identity_dir / "crosswalk.parquet"
    if crosswalk_path.is_file():
        crosswalk = pd.read_parquet(crosswalk_path, columns=["record_key", "customer_key"]).astype("string")
    else:
        crosswalk = pd.DataFrame({c: pd.Series(dtype="string") for c in ("record_key", "customer_key")})
    return SubjectIndex(records, crosswalk, raw, tables)


def _read_identity_tables(settings: Settings, sources: Iterable[SourceMapping]) -> dict[str, pd.DataFrame]:
    """The identity source tables the lake holds, the columns identity reads only (a table never ingested: left out)."""
    try:
        committed = read_manifest(settings).tables
    except IngestError:
        return {}
    return {
        s.table: read_lake_table(settings, s.table, columns=[s.id, *dict.fromkeys(s.columns.values())])
        for s in sources
        if committed.get(s.table)
    }


# --- requests ------------------------------------------------------------------------------------------------------


def mask_request(request: str) -> str:
    """The request with most of it hidden, for messages and logs: `j***@g***.com`, `+*********66`."""
    text = request.strip()
    if "|" in text:
        name, _, _ = text.partition("|")
        initials = " ".join(f"{w[0]}." for w in name.split() if w)
        return f"{initials}|****-**-**"
    if "@" in text:
        local, _, domain = text.rpartition("@")
        host, dot, tld = domain.rpartition(".")
        return f"{local[:1]}***@{host[:1]}***{dot}{tld}" if dot else f"{local[:1]}***@***"
    if ":" in text:  # table:id keeps its table
        table, _, record_id = text.partition(":")
        return f"{table}:{mask_request(record_id)}"
    digits = re.sub(r"\D", "", text)
    if _PHONE_LIKE.match(text) and len(digits) >= _MIN_PHONE_DIGITS:
        return ("+" if text.startswith("+") else "") + "*" * (len(digits) - 2) + digits[-2:]
    if len(text) <= 6:
        return "*" * len(text)
    return f"{text[:2]}{'*' * (len(text) - 4)}{text[-2:]}"


def _request_kinds(request: str) -> list[str]:
    """Which kinds of identifier a request can be (a run of digits is a phone or a bare record id)."""
    if "|" in request:
        return ["name_birth"]
    if "@" in request:
        return ["email"]
    kinds = ["customer_key", "record_key", "record_id"]
    digits = re.sub(r"\D", "", request)
    if _PHONE_LIKE.match(request) and len(digits) >= _MIN_PHONE_DIGITS:
        kinds.append("phone")
    return kinds


def _name_and_birth(request: str) -> tuple[str | None, str | None, str | None]:
    """Folded first and last name and ISO birth date of a `name|birth-date` request."""
    name, _, birth = request.partition("|")
    names = split_full_names(pd.Series([name]))
    first, last = names["first_name"].iloc[0], names["last_name"].iloc[0]
    born = normalise_birth_dates(pd.Series([birth.strip()])).iloc[0]
    return (
        None if pd.isna(first) else str(first),
        None if pd.isna(last) else str(last),
        None if pd.isna(born) else str(born),
    )


def _matching_records(index: SubjectIndex, request: str) -> set[str]:
    """Record keys that hold what the request names."""
    found: set[str] = set()
    for kind in _request_kinds(request):
        if kind == "customer_key" and index.is_customer(request):
            found.update(index.records_of(request))
        elif kind == "record_key" and ":" in request:
            table, _, record_id = request.partition(":")
            if table in index.tables:
                key = f"{table}:{record_id.strip()}"
                if index.row(key) is not None or index.customer_of_record(key) is not None:
                    found.add(key)
        elif kind == "record_id":
            found.update(index.lookup("record_id", request))
        elif kind in ("email", "phone"):
            found.update(index.lookup_raw(kind, request))
            if normalised := index.normalised(kind, [request])[0]:
                found.update(index.lookup(kind, normalised))
        elif kind == "name_birth":
            first, last, born = _name_and_birth(request)
            if last and born:
                born_then = index.lookup("birth_date", born)
                if first:  # names written last-first without a comma: either way round
                    same = index.lookup("first_name", first) & index.lookup("last_name", last)
                    same |= index.lookup("first_name", last) & index.lookup("last_name", first)
                else:
                    same = index.lookup("last_name", last)
                found.update(same & born_then)
    return found


def _group_of(index: SubjectIndex, record_key: str) -> str:
    return index.customer_of_record(record_key) or f"record:{record_key}"


def _candidate(index: SubjectIndex, group: str) -> Candidate:
    keys = [group.removeprefix("record:")] if group.startswith("record:") else index.records_of(group)
    sources = sorted({k.partition(":")[0] for k in keys})
    hint = ""
    for record_key in sorted(keys):
        row = index.row(record_key)
        if row is None:
            continue
        first, last, born = row.get("first_name"), row.get("last_name"), row.get("birth_date")
        initials = " ".join(f"{n[0].upper()}." for n in (first, last) if n)
        year = f"born {born[:4]}" if born else ""
        hint = ", ".join(p for p in (initials, year) if p)
        if hint:
            break
    return Candidate(group, tuple(sources), len(keys), hint)


def resolve_request(index: SubjectIndex, request: str, customer: str | None = None) -> Subject:
    """The one person a request names, expanded to every identifier held (see the module docstring).

    `customer` chooses among several customers holding the identifier (a shared family email).
    """
    text = request.strip()
    if not text:
        raise SubjectError(
            "subject: the request is empty (give a customer key, email, phone, record id or name|birth-date)"
        )
    masked = mask_request(text)
    groups = sorted({_group_of(index, k) for k in _matching_records(index, text)})
    if not groups:
        raise UnknownSubject(f"no customer matches {masked}")
    if customer is not None:
        if customer not in groups:
            listed = "; ".join(_candidate(index, g).describe() for g in groups)
            raise SubjectError(f"--customer {customer} does not hold {masked}; the customers that do: {listed}")
        groups = [customer]
    if len(groups) > 1:
        candidates = [_candidate(index, g) for g in groups]
        listed = "; ".join(c.describe() for c in candidates)
        raise AmbiguousSubject(
            f"{masked} is held by {len(groups)} customers: {listed}; add --customer KEY to choose one", candidates
        )
    return subject_of(index, text, groups[0])


def subject_of(index: SubjectIndex, request: str, group: str) -> Subject:
    """The Subject of one customer key (or one unkeyed record), with every identifier its records hold."""
    customer_keys: tuple[str, ...] = ()
    if group.startswith("record:"):
        record_keys = [group.removeprefix("record:")]
    else:
        record_keys, customer_keys = index.records_of(group), (group,)
    emails: set[str] = set()
    phones: set[str] = set()
    names: set[tuple[str, str, str]] = set()
    for record_key in record_keys:
        emails.update(index.raw_values("email", record_key))
        phones.update(index.raw_values("phone", record_key))
        row = index.row(record_key)
        if row is None:
            continue
        if "email" in row:
            emails.add(row["email"])
        if "phone" in row:
            phones.add(row["phone"])
        first, last, born = (row.get(c, "") for c in ("first_name", "last_name", "birth_date"))
        if first and last and born:  # a name alone, or half of one, names nobody
            names.add((first.lower(), last.lower(), born))
    source_records = sorted(tuple(k.split(":", 1)) for k in record_keys)  # (table, id)
    return Subject(
        request=request,
        customer_keys=customer_keys,
        source_records=tuple((t, i) for t, i in source_records),
        emails=tuple(sorted(emails)),
        phones=tuple(sorted(phones)),
        names=tuple(sorted(names)),
    )


def request_subject(index: SubjectIndex, request: str, customer: str | None = None) -> Subject:
    """A Subject for searching (verify): what resolution still finds, plus the request itself as an identifier.

    After an erasure the crosswalk no longer knows the person, so an unknown request is not an
    error here: the Subject is built from the request string alone (an email is searched raw and
    normalised, a phone raw and in E.164, a record id in every identity table, a key as a key).
    A `--customer` that no longer exists is searched for as a key, with the request.
    """
    text = request.strip()
    bare = _bare_subject(index, text, customer)
    try:
        found = resolve_request(index, text, customer)
    except AmbiguousSubject:
        raise
    except UnknownSubject:
        return bare
    except SubjectError:
        if customer is None or index.is_customer(customer):
            raise
        return bare  # the chosen customer is gone: search for the request and the key
    # Resolved: the request as given (an email's raw spelling) is searched too; a bare id is not
    # also guessed as a key of every table, since resolution placed it.
    as_given = Subject(request=text, emails=bare.emails, phones=bare.phones, names=bare.names)
    return merge_subjects(text, [found, as_given])


def _bare_subject(index: SubjectIndex, request: str, customer: str | None) -> Subject:
    """The request string itself as identifiers of each kind it can be."""
    keys: set[str] = {customer} if customer else set()
    records: set[tuple[str, str]] = set()
    emails: set[str] = set()
    phones: set[str] = set()
    names: set[tuple[str, str, str]] = set()
    for kind in _request_kinds(request):
        if kind == "customer_key":
            keys.add(request)
        elif kind == "record_key" and ":" in request and request.partition(":")[0] in index.tables:
            table, _, record_id = request.partition(":")
            records.add((table, record_id.strip()))
        elif kind == "record_id":
            records.update((table, request) for table in index.tables)
        elif kind == "email":
            emails.add(request)
            if email := index.normalised("email", [request])[0]:
                emails.add(email)
        elif kind == "phone":
            phones.add(request)
            if phone := index.normalised("phone", [request])[0]:
                phones.add(phone)
        elif kind == "name_birth":
            first, last, born = _name_and_birth(request)
            names.add((first or "", last or "", born or ""))
    return Subject(
        request=request,
        customer_keys=tuple(sorted(keys)),
        source_records=tuple(sorted(records)),
        emails=tuple(sorted(emails)),
        phones=tuple(sorted(phones)),
        names=tuple(sorted(names)),
    )


def merge_subjects(request: str, subjects: Sequence[Subject]) -> Subject:
    """One Subject holding every identifier of `subjects` (sorted, without repeats)."""

    def union(name: str) -> tuple[object, ...]:
        return tuple(sorted({v for s in subjects for v in getattr(s, name)}))

    return Subject(
        request=request,
        customer_keys=union("customer_keys"),  # type: ignore[arg-type]
        source_records=union("source_records"),  # type: ignore[arg-type]
        emails=union("emails"),  # type: ignore[arg-type]
        phones=union("phones"),  # type: ignore[arg-type]
        names=union("names"),  # type: ignore[arg-type]
        log_keys=union("log_keys"),  # type: ignore[arg-type]
    )


def resolve_subject(settings: Settings, request: str, customer: str | None = None) -> Subject:
    """The one person `request` names, with every identifier the platform holds for them (see `resolve_request`)."""
    return resolve_request(load_subject_index(settings), request, customer)


@dataclass(frozen=True)
class SubjectLine:
    """One request of a requests file: the request, the customer chosen for it (if any), its line number."""

    line: int
    request: str
    customer: str | None = None


def read_requests_file(path: Path) -> list[SubjectLine]:
    """The requests of a file: one per line, optionally `<TAB>CUSTOMER_KEY` after it; `#` comments, blanks skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SubjectError(f"--file {path}: cannot be read ({exc})") from exc
    lines: list[SubjectLine] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        request, _, customer = raw.partition("\t")
        request = request.strip()
        if not request or request.startswith("#"):
            continue
        lines.append(SubjectLine(number, request, customer.strip() or None))
    if not lines:
        raise SubjectError(f"--file {path}: holds no request (one per line)")
    return lines


def resolve_lines(index: SubjectIndex, lines: Sequence[SubjectLine], where: str) -> list[Subject]:
    """Resolve every line; any bad line fails the whole batch, naming each bad line (nothing is changed)."""
    subjects: list[Subject] = []
    problems: list[str] = []
    seen: dict[tuple[str, ...], int] = {}
    for kind in ("email", "phone"):  # one vectorised pass over the file, not one per line
        index.normalised(kind, [line.request for line in lines if kind in _request_kinds(line.request)])
    for line in lines:
        try:
            subject = resolve_request(index, line.request, line.customer)
        except SubjectError as exc:
            problems.append(f"line {line.line}: {exc}")
            continue
        identity = subject.customer_keys or tuple(f"{t}:{i}" for t, i in subject.source_records)
        if identity in seen:  # two lines naming one person: erase once
            continue
        seen[identity] = line.line
        subjects.append(subject)
    if problems:
        raise SubjectError(f"{where}: {len(problems)} bad request(s), nothing changed: " + " | ".join(problems))
    return subjects


def resolve_subjects_file(settings: Settings, path: Path) -> list[Subject]:
    """Every request of a file (one per line), resolved; a bad line is reported with its line number."""
    lines = read_requests_file(path)
    return resolve_lines(load_subject_index(settings), lines, f"--file {path}")
