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
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from custintel.personal import Subject
from custintel.settings import Settings
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


@dataclass
class SubjectIndex:
    """The identity records (normalised fields), their raw emails and phones as held, and their customer keys.

    Built once per command (`load_subject_index`) and then asked many requests, so a file of a
    thousand requests reads the identity outputs and the lake once; lookups are dictionary hits.
    """

    rows: dict[str, dict[str, str]]  # record_key -> its normalised identity fields that hold a value
    customer_of: dict[str, str]  # record_key -> customer_key (the crosswalk)
    raw_emails: dict[str, set[str]] = field(default_factory=dict)  # record_key -> emails as held
    raw_phones: dict[str, set[str]] = field(default_factory=dict)
    tables: tuple[str, ...] = ()  # the identity source tables

    def __post_init__(self) -> None:
        self._by: dict[str, dict[str, set[str]]] = {}
        self._normalised: dict[str, dict[str, str | None]] = {}
        self._records_of: dict[str, list[str]] = defaultdict(list)
        for record_key, customer_key in self.customer_of.items():
            self._records_of[customer_key].append(record_key)

    def lookup(self, column: str, value: str) -> set[str]:
        """Record keys whose normalised `column` equals `value`."""
        if column not in self._by:
            index: dict[str, set[str]] = defaultdict(set)
            for record_key, fields in self.rows.items():
                if column in fields:
                    index[fields[column]].add(record_key)
            self._by[column] = index
        return set(self._by[column].get(value, set()))

    def lookup_raw(self, kind: str, value: str) -> set[str]:
        """Record keys holding `value` exactly as written (any case): what normalisation rejected is still held."""
        name = f"raw_{kind}"
        if name not in self._by:
            index: dict[str, set[str]] = defaultdict(set)
            for record_key, values in (self.raw_emails if kind == "email" else self.raw_phones).items():
                for held in values:
                    index[held.lower()].add(record_key)
            self._by[name] = index
        return set(self._by[name].get(value.strip().lower(), set()))

    def records_of(self, customer_key: str) -> list[str]:
        """Every record key the crosswalk gives the customer."""
        return list(self._records_of.get(customer_key, []))

    def is_customer(self, key: str) -> bool:
        """Whether the crosswalk knows this customer key."""
        return key in self._records_of

    def row(self, record_key: str) -> dict[str, str] | None:
        """The normalised identity fields of one record (None when only the crosswalk names it)."""
        return self.rows.get(record_key)

    def normalised(self, kind: str, requests: Sequence[str]) -> list[str | None]:
        """Requests as `kind` ('email' or 'phone') normalises them, batch-normalised and remembered."""
        known = self._normalised.setdefault(kind, {})
        todo = sorted({r for r in requests if r not in known})
        if todo:
            normalise = normalise_emails if kind == "email" else normalise_phones
            for request, value in zip(todo, normalise(pd.Series(todo, dtype="string")).tolist(), strict=True):
                known[request] = value if isinstance(value, str) else None
        return [known[r] for r in requests]


def _field_rows(frame: pd.DataFrame) -> dict[str, dict[str, str]]:
    """record_key -> the identity fields that hold a value, from a frame of identity records."""
    columns = {c: frame[c].astype("string").tolist() for c in _FIELDS if c in frame.columns}
    out: dict[str, dict[str, str]] = {}
    for i, record_key in enumerate(frame["record_key"].astype("string").tolist()):
        if isinstance(record_key, str):
            out[record_key] = {c: v[i] for c, v in columns.items() if isinstance(v[i], str) and v[i]}
    return out


def load_subject_index(settings: Settings) -> SubjectIndex:
    """The identity outputs (records, crosswalk) and the lake's identity tables, read once.

    Lake records that no resolution has keyed yet (ingested since the last `resolve`) are
    included without a customer key; identity records whose lake rows are gone still count.
    """
    config = identity_config(settings)
    tables = tuple(s.table for s in config.sources)
    records_path = settings.identity_dir / "records.parquet"
    rows = (
        _field_rows(pd.read_parquet(records_path, columns=["record_key", *_FIELDS])) if records_path.is_file() else {}
    )
    raw_emails: dict[str, set[str]] = defaultdict(set)
    raw_phones: dict[str, set[str]] = defaultdict(set)
    lake = _read_identity_tables(settings, tables)
    unresolved: dict[str, pd.DataFrame] = {}
    for source in (s for s in config.sources if s.table in lake):
        frame = lake[source.table]
        ids = frame[source.id]
        if pd.api.types.is_float_dtype(ids):  # integer ids with gaps arrive as floats (as identity reads them)
            ids = ids.astype("Int64")
        keys = [f"{source.table}:{i.strip()}" if isinstance(i, str) else None for i in ids.astype("string").tolist()]
        for kind, out in (("email", raw_emails), ("phone", raw_phones)):
            if (column := source.columns.get(kind)) is not None:
                for key, value in zip(keys, frame[column].astype("string").tolist(), strict=True):
                    if key and isinstance(value, str) and value.strip():
                        out[key].add(value.strip())
        new = [k is not None and k not in rows for k in keys]
        if any(new):  # normalise only what no resolution has seen
            unresolved[source.table] = frame.loc[new]
    if unresolved:
        sources = [s for s in config.sources if s.table in unresolved]
        rows.update(
            {k: v for k, v in _field_rows(assemble_identity_records(unresolved, sources)).items() if k not in rows}
        )
    customer_of: dict[str, str] = {}
    crosswalk_path = settings.identity_dir / "crosswalk.parquet"
    if crosswalk_path.is_file():
        crosswalk = pd.read_parquet(crosswalk_path, columns=["record_key", "customer_key"])
        customer_of = dict(zip(crosswalk["record_key"].astype(str), crosswalk["customer_key"].astype(str), strict=True))
    return SubjectIndex(rows, customer_of, dict(raw_emails), dict(raw_phones), tables)


def _read_identity_tables(settings: Settings, tables: Iterable[str]) -> dict[str, pd.DataFrame]:
    """The identity source tables the lake holds (a table never ingested is left out)."""
    try:
        committed = read_manifest(settings).tables
    except IngestError:
        return {}
    return {t: read_lake_table(settings, t) for t in tables if committed.get(t)}


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
                if index.row(key) is not None or key in index.customer_of:
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
    return index.customer_of.get(record_key) or f"record:{record_key}"


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
        emails.update(index.raw_emails.get(record_key, ()))
        phones.update(index.raw_phones.get(record_key, ()))
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
