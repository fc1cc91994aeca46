"""The serving stores of personal data: the inference log, the frequency caps and the consent file.

- "inference_log": the JSON lines per day under `settings.inference_log_dir`. An entry's
  `customer` is the customer key as the serving policy's key rule keeps it (`log_key`: salted
  sha256 by default, or plain); the subject's log keys are computed here from their customer keys
  and the settings' salt, under both rules (a home whose rule changed holds both), plus any
  `Subject.log_keys` given. An entry of theirs holds their answer and, when the policy logs inputs,
  their features. Erasure rewrites each day file that holds a hit once for the whole batch:
  written beside it, flushed, then renamed over it (atomic), under the same file lock the service's
  writer takes; a writer that waited on the lock appends to the new file (it checks, once it holds
  the lock, that its file is still the one the path names), so no line is lost to the replaced file.
- "serving.caps": the frequency-cap impressions by customer key (SQLite or Redis, `serving.caps`).
- "decision_log": the decisions served, their outcomes and the experiment exposures (`serving/decisions.db`,
  `serving.decision_log`), keyed like the inference log (the subject's log keys, both rules); erasure deletes
  their decisions, every outcome of those decisions (and outcomes keyed to them) and their exposures (which arm
  of which experiment they were in) in one transaction. An erased customer is then in no experiment's
  exposures, so an analysis simply counts one customer fewer.
- "serving.consent": the consent snapshot the service reads (`consent.sqlite`: decisions and birth
  date per customer key); rows are deleted in one transaction. (The in-memory batch snapshots of
  `serving.snapshot` are not on disk: they are rebuilt from the online store, which the feature
  stores erase.)
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from custintel.personal import Erased, Holding, PersonalStore, Subject
from custintel.settings import Settings
from serving.caps import open_frequency_caps
from serving.consent import consent_store_path
from serving.decision_log import JSON_COLUMNS, connect, decision_log_path
from serving.inference_log import subject_log_keys
from serving.policy import load_serving_policy

_CUSTOMER = re.compile(rb'"customer"\s*:\s*"([^"]*)"')


def _relative(settings: Settings, path: Path) -> str:
    try:
        return str(path.relative_to(settings.home_dir))
    except ValueError:
        return str(path)


class InferenceLogStore:
    """The inference log's day files."""

    name = "inference_log"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _owners(self, subjects: Sequence[Subject]) -> dict[bytes, str]:
        """Log key (bytes) -> the subject request it belongs to."""
        salt = self.settings.serving_log_salt or "custintel"
        return {k.encode(): s.request for s in subjects for k in subject_log_keys(salt, s.customer_keys, s.log_keys)}

    def _files(self) -> list[Path]:
        folder = self.settings.inference_log_dir
        return sorted(folder.glob("*.jsonl")) if folder.is_dir() else []

    @staticmethod
    def _hits(lines: Sequence[bytes], owners: dict[bytes, str]) -> list[tuple[int, str]]:
        """(line index, subject request) of every line whose customer is one of the subjects' log keys.

        One pass over the file whatever the number of subjects: each line's customer is looked up in a set.
        """
        search = _CUSTOMER.search
        out = []
        for i, line in enumerate(lines):
            match = search(line)
            if match is not None and match.group(1) in owners:
                out.append((i, owners[match.group(1)]))
        return out

    def find(self, subjects: Sequence[Subject]) -> list[Holding]:
        """Each day file's entries of each subject."""
        owners = self._owners(subjects)
        out: list[Holding] = []
        if not owners:
            return out
        for path in self._files():
            lines = path.read_bytes().split(b"\n")
            found: dict[str, list[dict[str, Any]]] = {}
            for i, request in self._hits(lines, owners):
                found.setdefault(request, []).append(json.loads(lines[i]))
            out += [Holding(self.name, _relative(self.settings, path), r, rows) for r, rows in found.items()]
        return out

    def erase(self, subjects: Sequence[Subject]) -> list[Erased]:
        """Rewrite each day file holding a subject's entry once, atomically, without those entries."""
        owners = self._owners(subjects)
        out: list[Erased] = []
        if not owners:
            return out
        for path in self._files():
            removed = self._rewrite(path, owners)
            if not removed:
                continue
            out.append(Erased(self.name, _relative(self.settings, path), removed, "day file rewritten without them"))
        return out

    def _rewrite(self, path: Path, owners: dict[bytes, str]) -> int:
        """Replace the day file by its lines without the subjects', under the lock the service's writer takes.

        A writer waiting on the lock appends to the new file once it holds it (`inference_log._append_locked`).
        """
        with path.open("rb") as old:
            fcntl.flock(old, fcntl.LOCK_EX)
            try:
                kept, removed = self._filtered(old.read(), owners)
                if not removed:
                    return 0  # nothing of theirs: the file is left as it is
                tmp = path.with_name(f".{path.name}.erasing-{os.getpid()}")
                with tmp.open("wb") as fh:
                    fh.write(kept)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            finally:
                fcntl.flock(old, fcntl.LOCK_UN)
        return removed

    def _filtered(self, data: bytes, owners: dict[bytes, str]) -> tuple[bytes, int]:
        lines = data.split(b"\n")
        drop = {i for i, _ in self._hits(lines, owners)}
        if not drop:
            return data, 0
        return b"\n".join(line for i, line in enumerate(lines) if i not in drop), len(drop)


class CapsStore:
    """The frequency caps' impressions (SQLite under the home, or Redis)."""

    name = "serving.caps"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _open(self) -> Any:
        cap = load_serving_policy(self.settings.serving_policy).frequency_cap
        return open_frequency_caps(self.settings, cap.max_impressions, cap.window_days)

    def _place(self) -> str:
        if self.settings.redis_url:
            return f"redis:{self.settings.online_namespace}:cap:*"
        return "serving/caps.sqlite"

    def _exists(self) -> bool:
        return bool(self.settings.redis_url) or (self.settings.home_dir / "serving" / "caps.sqlite").is_file()

    def find(self, subjects: Sequence[Subject]) -> list[Holding]:
        """Each subject's impressions (product, time)."""
        if not self._exists():
            return []
        caps = self._open()
        out = []
        for subject in subjects:
            held = caps.impressions(subject.customer_keys)
            rows = [{"customer_key": k, "product_id": p, "at": at} for k, p, at in held]
            if rows:
                out.append(Holding(self.name, self._place(), subject.request, rows))
        return out

    def erase(self, subjects: Sequence[Subject]) -> list[Erased]:
        """Delete every impression of the subjects (one statement in SQLite)."""
        if not self._exists():
            return []
        keys = sorted({k for s in subjects for k in s.customer_keys})
        removed = self._open().delete(keys) if keys else 0
        return [Erased(self.name, self._place(), removed, "impressions deleted")] if removed else []


class ConsentSnapshotStore:
    """The service's consent file: each customer's latest decision per purpose and birth date."""

    name = "serving.consent"
    TABLES = ("consent", "customers")

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = consent_store_path(settings)

    def find(self, subjects: Sequence[Subject]) -> list[Holding]:
        """Each subject's rows of the consent file."""
        if not self.path.is_file():
            return []
        out = []
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True) as con:
            con.row_factory = sqlite3.Row
            for subject in subjects:
                asked = json.dumps(list(subject.customer_keys))
                rows = []
                for table in self.TABLES:
                    query = f"SELECT * FROM {table} WHERE customer_key IN (SELECT value FROM json_each(?))"  # noqa: S608
                    rows += [{"table": table, **dict(r)} for r in con.execute(query, (asked,))]
                if rows:
                    out.append(Holding(self.name, _relative(self.settings, self.path), subject.request, rows))
        return out

    def erase(self, subjects: Sequence[Subject]) -> list[Erased]:
        """Delete the subjects' rows from both tables in one transaction."""
        if not self.path.is_file():
            return []
        asked = json.dumps(sorted({k for s in subjects for k in s.customer_keys}))
        removed = 0
        con = sqlite3.connect(self.path, timeout=60)
        try:
            with con:
                for table in self.TABLES:
                    query = f"DELETE FROM {table} WHERE customer_key IN (SELECT value FROM json_each(?))"  # noqa: S608
                    removed += max(con.execute(query, (asked,)).rowcount, 0)
        finally:
            con.close()
        return [Erased(self.name, _relative(self.settings, self.path), removed, "rows deleted")] if removed else []


class DecisionLogStore:
    """The decision log: a person's decisions (with their context), the outcomes recorded on them, their exposures."""

    name = "decision_log"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = decision_log_path(settings)

    def _keys(self, subject: Subject) -> list[str]:
        salt = self.settings.serving_log_salt or "custintel"
        return sorted(subject_log_keys(salt, subject.customer_keys, subject.log_keys))

    def find(self, subjects: Sequence[Subject]) -> list[Holding]:
        """Each subject's decisions, outcomes and experiment exposures (rows tagged with their table)."""
        if not self.path.is_file():
            return []
        out = []
        con = connect(self.path, readonly=True)
        con.row_factory = sqlite3.Row
        try:
            # a log written before exposures existed has no such table (until the service next opens it)
            exposures = con.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'exposures'"
            ).fetchone()
            for subject in subjects:
                asked = json.dumps(self._keys(subject))
                rows: list[dict[str, Any]] = []
                for row in con.execute(
                    "SELECT * FROM decisions WHERE customer_key IN (SELECT value FROM json_each(?))", (asked,)
                ):
                    item = {"table": "decisions", **dict(row)}
                    for column in JSON_COLUMNS:
                        item[column] = json.loads(item[column]) if item.get(column) else item.get(column)
                    rows.append(item)
                query = (
                    "SELECT * FROM outcomes WHERE customer_key IN (SELECT value FROM json_each(?1)) OR decision_id "
                    "IN (SELECT decision_id FROM decisions WHERE customer_key IN (SELECT value FROM json_each(?1)))"
                )
                rows += [{"table": "outcomes", **dict(r)} for r in con.execute(query, (asked,))]
                if exposures:
                    query = "SELECT * FROM exposures WHERE customer_key IN (SELECT value FROM json_each(?))"
                    rows += [{"table": "exposures", **dict(r)} for r in con.execute(query, (asked,))]
                if rows:
                    out.append(Holding(self.name, _relative(self.settings, self.path), subject.request, rows))
        finally:
            con.close()
        return out

    def erase(self, subjects: Sequence[Subject]) -> list[Erased]:
        """Delete the subjects' decisions, their outcomes and their exposures in one transaction (idempotent)."""
        if not self.path.is_file():
            return []
        asked = json.dumps(sorted({k for s in subjects for k in self._keys(s)}))
        con = connect(self.path)
        try:
            con.execute("BEGIN IMMEDIATE")
            outcomes = con.execute(
                "DELETE FROM outcomes WHERE customer_key IN (SELECT value FROM json_each(?1)) OR decision_id IN "
                "(SELECT decision_id FROM decisions WHERE customer_key IN (SELECT value FROM json_each(?1)))",
                (asked,),
            ).rowcount
            decisions = con.execute(
                "DELETE FROM decisions WHERE customer_key IN (SELECT value FROM json_each(?))", (asked,)
            ).rowcount
            exposures = con.execute(
                "DELETE FROM exposures WHERE customer_key IN (SELECT value FROM json_each(?))", (asked,)
            ).rowcount
            con.execute("COMMIT")
            # the deleted rows' pages may linger in the WAL and free pages: checkpoint and vacuum them away
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            if decisions or outcomes or exposures:
                con.execute("VACUUM")
        finally:
            con.close()
        removed = max(decisions, 0) + max(outcomes, 0) + max(exposures, 0)
        place = _relative(self.settings, self.path)
        what = f"{decisions} decisions, {outcomes} outcomes, {exposures} exposures deleted"
        return [Erased(self.name, place, removed, what)] if removed else []


def personal_stores(settings: Settings) -> list[PersonalStore]:
    """The stores of this package that can hold a person's data."""
    return [
        InferenceLogStore(settings),
        CapsStore(settings),
        ConsentSnapshotStore(settings),
        DecisionLogStore(settings),
    ]
