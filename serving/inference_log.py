"""The inference log: one JSON line per answer, a file per UTC day; its format, its writer and its layout.

Layout: `<settings.inference_log_dir>/<YYYY-MM-DD>.jsonl` (`day_file`), appended to by every
worker process of the service. Each line is one `InferenceEntry`: when (`at`, Unix seconds),
who (`caller`), the `endpoint`, the `model` and `version`, the customer key as the serving
policy lets the log keep it (`log_key`), the `answer`, and, when the policy logs inputs, the
model `inputs` the answer was computed from with the stored features' cutoff (`as_of`). A
suppressed answer is one entry with `status` "suppressed" and no customer or answer.

The service writes it (`InferenceLog`, fed by `audit_entry` and `audit_entries`); monitoring
reads it (`day_files`, `entries_sql`, `ENTRY_TYPES`, `SUPPRESSED`, `log_key` to join outcomes
to answers), so the format is defined here once.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import os
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import orjson

from custintel.sql import text_list as sql_text_list
from features.featurestore.online import AS_OF
from serving.policy import ServingPolicy

if TYPE_CHECKING:
    from serving.champions import ServedModel


class InferenceEntry(TypedDict, total=False):
    """One line of the log (keys absent when the policy or the answer leaves them out)."""

    at: float  # Unix seconds
    caller: str  # the API key's fingerprint, or "anonymous"
    endpoint: str
    model: str  # the registered name
    version: str
    status: str  # SUPPRESSED, or absent: the answer was given
    customer: str | None  # `log_key` of the customer key (None: masked, omitted, or no key)
    answer: dict[str, Any]
    as_of: str | None  # the stored features' cutoff
    inputs: Any  # the model's inputs by name (JSON object)


SUPPRESSED = "suppressed"  # `status` of an answer withheld by consent or age
# Each field's DuckDB type, for a reader (`entries_sql`); `inputs` and `answer` stay JSON to unpack as needed.
ENTRY_TYPES: dict[str, str] = {
    "at": "DOUBLE",
    "caller": "VARCHAR",
    "endpoint": "VARCHAR",
    "model": "VARCHAR",
    "version": "VARCHAR",
    "status": "VARCHAR",
    "customer": "VARCHAR",
    "answer": "JSON",
    "as_of": "VARCHAR",
    "inputs": "JSON",
}


def log_key(rule: str, salt: str, customer_key: str | None) -> str | None:
    """A customer key as the inference log keeps it: salted sha256 (`hash`), as is (`plain`), or not (`omit`).

    Monitoring hashes label tables the same way to join outcomes to logged answers.
    """
    if customer_key is None or rule == "omit":
        return None
    if rule == "plain":
        return customer_key
    return hashlib.sha256(f"{salt}:{customer_key}".encode()).hexdigest()[:24]


def subject_log_keys(salt: str, customer_keys: Sequence[str], given: Sequence[str] = ()) -> set[str]:
    """Every form the log can hold these customer keys in (hashed with `salt`, plain), plus log keys `given`.

    An access or erasure request looks a person up by all of them: a home whose key rule changed holds both.
    """
    keys = {k for k in given if k}
    for customer_key in customer_keys:
        keys |= {v for v in (log_key("hash", salt, customer_key), log_key("plain", salt, customer_key)) if v}
    return keys


def day_file(folder: Path, day: dt.date) -> Path:
    """The file holding one UTC day's entries."""
    return folder / f"{day.isoformat()}.jsonl"


def day_files(folder: Path, start: dt.datetime, end: dt.datetime) -> list[Path]:
    """The day files that can hold entries of [start, end) (one day of slack each side for clock skew)."""
    first, last = (start - dt.timedelta(days=1)).date(), (end + dt.timedelta(days=1)).date()
    out = []
    for path in sorted(folder.glob("*.jsonl")):
        try:
            day = dt.date.fromisoformat(path.stem)
        except ValueError:
            continue
        if first <= day <= last:
            out.append(path)
    return out


def entries_sql(files: Sequence[Path], fields: Sequence[str], inputs_type: str = "JSON") -> str:
    """A DuckDB table expression reading these day files: one row per entry, with these fields typed.

    `inputs_type` replaces `inputs`' JSON type, e.g. with a STRUCT of the model's inputs so the
    reader casts them while it parses.
    """
    types = {name: inputs_type if name == "inputs" else ENTRY_TYPES[name] for name in fields}
    columns = "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in types.items()) + "}"
    return f"read_json({sql_text_list(files)}, format='newline_delimited', columns={columns})"


def _append_locked(path: Path, data: bytes) -> None:
    """Append under the day file's lock, to the file the path names once the lock is held.

    Several worker processes append to the same day file: one locked write per flush keeps each
    one's lines whole. An erasure replaces a day file (rename) under the same lock: a writer that
    opened the old file before that finds, once it holds the lock, that the path names another
    file, and opens it again, so no line goes to the replaced file.
    """
    while True:
        with path.open("ab", buffering=0) as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                if os.fstat(fh.fileno()).st_ino != os.stat(path).st_ino:
                    continue  # replaced while this writer waited: append to the new file
                view = memoryview(data)
                while view:
                    view = view[fh.write(view) or 0 :]
                return
            except FileNotFoundError:
                continue
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


class InferenceLog:
    """Append-only JSON lines per day, written by a background thread off the request path.

    A request only appends to a queue; the writer wakes every `flush_seconds` and writes
    what has gathered in one go (waking it per entry cost the request path more than the
    write itself).
    """

    def __init__(self, folder: Path, key_rule: str, salt: str, flush_seconds: float = 0.25) -> None:
        self.folder, self.key_rule, self.salt = folder, key_rule, salt
        self.flush_seconds = flush_seconds
        self._queue: queue.SimpleQueue[Mapping[str, Any] | list[Mapping[str, Any]]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, name="inference-log", daemon=True)
        self._thread.start()

    def key(self, customer_key: str | None) -> str | None:
        """The customer key as the policy lets the log keep it."""
        return log_key(self.key_rule, self.salt, customer_key)

    def record(self, entry: Mapping[str, Any]) -> None:
        """Queue one entry (never blocks the answer)."""
        self._queue.put(entry)

    def record_many(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Queue many entries at once (a batch call's: one queue operation)."""
        if entries:
            self._queue.put(entries if isinstance(entries, list) else list(entries))

    def _write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        dumps, option = orjson.dumps, orjson.OPT_SERIALIZE_NUMPY
        while True:
            stopping = self._stop.wait(self.flush_seconds)
            lines = []
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, list):
                    lines.extend([dumps(e, default=str, option=option) for e in item])
                else:
                    lines.append(dumps(item, default=str, option=option))
            if lines:
                lines.append(b"")
                _append_locked(day_file(self.folder, dt.datetime.now(dt.UTC).date()), b"\n".join(lines))
            if stopping:
                return

    def close(self, timeout: float = 5) -> None:
        """Write what is queued and stop."""
        self._stop.set()
        self._thread.join(timeout)


def audit_entry(policy: ServingPolicy, log: InferenceLog, caller: str, endpoint: str, model: ServedModel,
                customer_key: str | None, answer: dict[str, Any], suppressed: bool, masked: bool,
                inputs: Mapping[str, Any] | None = None) -> InferenceEntry:  # fmt: skip
    """The entry of one answer, as the policy allows.

    `inputs`: the mapping the model read its columns from; the entry keeps the model's
    columns of it (and the stored features' cutoff) when the policy logs inputs.
    """
    entry: InferenceEntry
    if suppressed and not policy.audit.log_suppressed:
        entry = {"at": time.time(), "caller": caller, "endpoint": endpoint, "model": model.name,
                 "version": model.version, "status": SUPPRESSED}  # fmt: skip
    else:
        entry = {"at": time.time(), "caller": caller, "endpoint": endpoint, "model": model.name,
                 "version": model.version, "customer": None if masked else log.key(customer_key),
                 "answer": answer}  # fmt: skip
        if inputs is not None and not masked and policy.audit.log_inputs:
            entry["as_of"] = inputs.get(AS_OF)
            # NaN, infinities and NumPy numbers are the writer's to convert (orjson: null, numbers).
            entry["inputs"] = model.input_values(inputs)
    return entry


def audit_entries(policy: ServingPolicy, log: InferenceLog, caller: str, endpoint: str, model: ServedModel,
                  customer_keys: Sequence[str | None], answers: Sequence[dict[str, Any]], masked: Sequence[bool],
                  inputs: Sequence[Mapping[str, Any]], ready: Sequence[Any] | None = None,
                  cutoffs: Sequence[str | None] | None = None) -> list[InferenceEntry]:  # fmt: skip
    """The entries of answers given (not suppressed), as `audit_entry` makes them one by one.

    `inputs`: per answer, the mapping the model read its columns from (with the cutoff under
    AS_OF unless `cutoffs` gives them). `ready`: per answer, those columns already as the log
    keeps them, when the caller has them: JSON text (`StoredFeatures.texts`, written as it is)
    or a mapping of exactly the model's inputs (a snapshot's); None: taken from `inputs`.
    """
    at, key, log_inputs = time.time(), log.key, policy.audit.log_inputs
    take, fragment = model.input_values, orjson.Fragment
    entries = []
    for i, (customer_key, answer, hidden, row) in enumerate(zip(customer_keys, answers, masked, inputs, strict=True)):
        entry: InferenceEntry = {"at": at, "caller": caller, "endpoint": endpoint, "model": model.name,
                                 "version": model.version, "customer": None if hidden else key(customer_key),
                                 "answer": answer}  # fmt: skip
        if log_inputs and not hidden:
            entry["as_of"] = row.get(AS_OF) if cutoffs is None else cutoffs[i]
            given = ready[i] if ready is not None else None
            entry["inputs"] = take(row) if given is None else fragment(given) if type(given) is str else given
        entries.append(entry)
    return entries
