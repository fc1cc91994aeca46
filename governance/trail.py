"""A tamper-evident audit trail: append-only, hash-chained JSON Lines.

Every line of a chained log carries `seq` (1, 2, ...), `prev_hash` (the previous line's `hash`;
64 zeros for the first) and `hash`, the SHA-256 of the line's canonical JSON without `hash`
(sorted keys, compact separators, ASCII). Editing a line breaks its hash; rewriting its hash
breaks the next line's `prev_hash`; deleting or inserting a line breaks `seq` and `prev_hash`.
`verify` reads a log and names every such line.

Two logs are chained: the audit trail (`<home>/governance/audit_trail.jsonl`: promotions,
rollbacks, waivers, policy changes, exports, access and erasure requests, written with
`record`) and the gate's decision log (`decisions.jsonl`, written by
`governance.store.append_decision` through `append_chained`). Lines written before a log was
chained are kept as they are: the first chained line's `prev_hash` is the SHA-256 of every
byte before it, so they are sealed too.

Appends hold an exclusive `fcntl.flock` on `<log>.lock` while they read the last line's hash,
write the new line (one `write`, fsynced) and update `<log>.head` (the last seq and hash). The
head file catches a tail cut off after the fact. A chain cannot stop someone who rewrites the
whole file and its head: publish the head hash `verify` prints (a ticket, a release note) and
check it later with `verify(..., anchor=...)`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import hashlib
import json
import os
import re
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from custintel.atomic_files import write_text_atomically
from custintel.file_lock import exclusive_lock
from custintel.settings import Settings

GENESIS = "0" * 64
CHAIN_FIELDS = ("seq", "prev_hash", "hash")
_ACTION = re.compile(r"^[a-z][a-z0-9_]*$")
_SEQ_IN_TEXT = re.compile(r'"seq"\s*:\s*(\d+)')
_TAIL_CHUNK = 1 << 16


class TrailError(ValueError):
    """An audit-trail entry cannot be written as asked (bad action, details not a mapping)."""


def default_actor() -> str:
    """Who is acting: CUSTINTEL_ACTOR when set (e.g. a CI job), else user@host."""
    return os.environ.get("CUSTINTEL_ACTOR") or f"{getpass.getuser()}@{socket.gethostname()}"


def trail_path(settings: Settings) -> Path:
    """The audit trail of a custintel home."""
    return settings.governance_dir / "audit_trail.jsonl"


def canonical(record: Mapping[str, Any]) -> bytes:
    """The bytes a line's hash is taken over: sorted keys, no spaces, ASCII."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True).encode()


def entry_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the record's canonical JSON without its `hash` field."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with exclusive_lock(path.with_name(path.name + ".lock")):
        yield


def _head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def _last_chained(path: Path) -> tuple[dict[str, Any] | None, bool, int]:
    """The last line that is a chained entry (read backwards), whether the file ends in a newline, its size."""
    if not path.is_file():
        return None, True, 0
    with path.open("rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return None, True, 0
        fh.seek(size - 1)
        ends_clean = fh.read(1) == b"\n"
        end, buffer = size, b""
        while end > 0:
            start = max(0, end - _TAIL_CHUNK)
            fh.seek(start)
            buffer = fh.read(end - start) + buffer
            end = start
            lines = buffer.split(b"\n")
            complete = lines if start == 0 else lines[1:]  # the first piece may be part of a longer line
            for raw in reversed(complete):
                record = _parse(raw)
                if isinstance(record, dict) and _is_chained(record):
                    return record, ends_clean, size
            buffer = lines[0] if start > 0 else b""
    return None, ends_clean, size


def _read_head(path: Path) -> tuple[int, str] | None:
    try:
        head = json.loads(_head_path(path).read_text(encoding="utf-8"))
        return int(head["seq"]), str(head["hash"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError):
        return None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        duplicated = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"duplicate key {', '.join(duplicated)}")
    return dict(pairs)


def _is_chained(record: Mapping[str, Any]) -> bool:
    return isinstance(record.get("hash"), str) and isinstance(record.get("seq"), int)


def _prefix_hash(path: Path, size: int) -> str:
    """SHA-256 of the first `size` bytes: what seals unchained lines before the first chained one."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        remaining = size
        while remaining > 0:
            chunk = fh.read(min(remaining, 1 << 20))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def append_chained(path: Path, record: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Append `record` with seq, prev_hash and hash under the log's lock; returns (written, previous entry).

    Values JSON cannot hold are written as strings (as `json.dumps(default=str)` would), and the
    hash is taken over what is written, so a reader recomputes the same hash.
    """
    clean = json.loads(json.dumps({k: v for k, v in record.items() if k not in CHAIN_FIELDS}, default=str))
    with _locked(path):
        last, ends_clean, size = _last_chained(path)
        if last is not None:
            seq, prev = int(last["seq"]) + 1, str(last["hash"])
        else:
            seq, prev = 1, GENESIS if size == 0 else _prefix_hash(path, size)
        head = _read_head(path)
        if head is not None and head[0] >= seq:
            # The tail was cut off since the last append: chain on from the head the log should end at,
            # so the gap stays visible to `verify` instead of being papered over.
            seq, prev = head[0] + 1, head[1]
        entry = {**clean, "seq": seq, "prev_hash": prev}
        entry["hash"] = entry_hash(entry)
        line = json.dumps(entry, sort_keys=True, ensure_ascii=True) + "\n"
        # A cut-off last line stays as it is (verify names it); the new entry starts on a line of its own.
        with path.open("a", encoding="ascii") as fh:
            fh.write(line if ends_clean else "\n" + line)
            fh.flush()
            os.fsync(fh.fileno())
        write_text_atomically(_head_path(path), json.dumps({"seq": seq, "hash": entry["hash"]}) + "\n")
    return entry, last


def record(
    settings: Settings,
    action: str,
    subject: str,
    details: Mapping[str, Any] | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """Append one entry to the home's audit trail: who did what to what, when; returns the entry written.

    `action` names the kind of event (promotion, rollback, waiver, policy_change, export,
    access_request, erasure, ...): lowercase letters, digits and underscores.
    """
    if not _ACTION.match(action):
        raise TrailError(f"audit trail: action {action!r} must be lowercase letters, digits and underscores")
    if details is not None and not isinstance(details, Mapping):
        raise TrailError(f"audit trail: details of {action!r} must be a mapping, not {type(details).__name__}")
    entry = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
        "actor": actor or default_actor(),
        "action": action,
        "subject": subject,
        "details": dict(details or {}),
    }
    written, _ = append_chained(trail_path(settings), entry)
    return written


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a chained log, at a line (1-based) and, when readable, a seq."""

    line: int | None
    seq: int | None
    message: str

    def __str__(self) -> str:
        where = "end of file" if self.line is None else f"line {self.line}"
        return f"{where}{'' if self.seq is None else f' (seq {self.seq})'}: {self.message}"


@dataclass
class Verification:
    """What `verify` found: the chained entries, the head hash, unchained lines before them, every problem."""

    path: Path
    entries: int = 0
    head_seq: int | None = None
    head_hash: str | None = None
    sealed_lines: int = 0  # lines written before the log was chained, sealed by the first entry's prev_hash
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems

    def summary(self) -> str:
        """One line: intact with its size and head, or how many problems."""
        if not self.ok:
            return f"{self.path}: {len(self.problems)} problem(s) in {self.entries} chained entries"
        sealed = f", {self.sealed_lines} earlier unchained line(s) sealed" if self.sealed_lines else ""
        head = f"head seq {self.head_seq} {self.head_hash}" if self.head_hash else "empty"
        return f"{self.path}: intact, {self.entries} entries{sealed}; {head}"


def verify(path: Path, anchor: str | None = None) -> Verification:
    """Check a chained log line by line; name every edited, inserted, deleted or cut-off line.

    `anchor`: a head hash published earlier; the trail must still contain it.
    """
    result = Verification(path)
    if not path.is_file():
        _check_head(path, result, {})
        if anchor:
            result.problems.append(Problem(None, None, f"the log does not exist, so anchor {anchor} is not in it"))
        return result
    data = path.read_bytes()
    pieces = data.split(b"\n")
    torn = pieces[-1] != b""  # bytes after the last newline: a line cut off (or a write that never finished)
    offset = 0
    expected_seq: int | None = None
    expected_prev: str | None = None
    prev_where = ""
    hashes: dict[int, str] = {}
    for number, raw in enumerate(pieces, start=1):
        start, offset = offset, offset + len(raw) + 1
        if not raw.strip():
            continue
        is_tail = torn and number == len(pieces)
        record = _parse(raw)
        text_seq = _SEQ_IN_TEXT.search(raw.decode("utf-8", errors="replace"))
        seq_guess = int(text_seq.group(1)) if text_seq else None
        if not isinstance(record, dict):
            why = "cut off (the file ends inside this line): the tail was truncated" if is_tail else "not a JSON object"
            reason = _why_unreadable(raw)
            result.problems.append(Problem(number, seq_guess, why if is_tail else f"{why} ({reason})"))
            expected_seq, expected_prev = None, None  # resynchronise on the next readable entry
            continue
        if not _is_chained(record):
            if expected_seq is None and expected_prev is None and result.entries == 0:
                result.sealed_lines += 1  # written before chaining; checked through the first entry's prev_hash
            else:
                result.problems.append(Problem(number, seq_guess, "not chained (no seq/hash): inserted after chaining"))
            continue
        seq, stored = int(record["seq"]), str(record["hash"])
        wrong = []
        if entry_hash(record) != stored:
            wrong.append("edited: its content does not match its hash")
        if result.entries == 0 and expected_seq is None and not result.problems:
            first_prev = GENESIS if start == 0 else hashlib.sha256(data[:start]).hexdigest()
            if record.get("prev_hash") != first_prev:
                sealed = "the lines before it" if start else "nothing (64 zeros)"
                wrong.append(f"prev_hash should seal {sealed}: lines before it were inserted, edited or deleted")
            if seq != 1:
                gone = "seq 1" if seq == 2 else f"seq 1..{seq - 1}"
                wrong.append(f"the first entry has seq {seq}, not 1: {gone} deleted")
        elif expected_seq is not None:
            if seq > expected_seq:
                gone = f"seq {expected_seq}" if seq == expected_seq + 1 else f"seq {expected_seq}..{seq - 1}"
                wrong.append(f"seq jumps from {expected_seq - 1} to {seq}: {gone} deleted")
            elif seq < expected_seq:
                wrong.append(f"seq {seq} after seq {expected_seq - 1}: a line was inserted or moved here")
            if record.get("prev_hash") != expected_prev:
                wrong.append(f"prev_hash does not match the hash of {prev_where}: a line was inserted or deleted")
        if is_tail:
            wrong.append("no newline at its end: the file was cut off or a write did not finish")
        if wrong:
            result.problems.append(Problem(number, seq, "; ".join(wrong)))
        result.entries += 1
        hashes[seq] = stored
        result.head_seq, result.head_hash = seq, stored
        expected_seq, expected_prev, prev_where = seq + 1, stored, f"line {number} (seq {seq})"
    _check_head(path, result, hashes)
    if anchor and anchor not in hashes.values():
        result.problems.append(Problem(None, None, f"anchor {anchor} is not the hash of any entry: history rewritten"))
    return result


def _why_unreadable(raw: bytes) -> str:
    try:
        json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        return "not UTF-8"
    except json.JSONDecodeError as exc:
        return f"{exc.msg} at column {exc.colno}"
    except ValueError as exc:
        return str(exc)
    return "a JSON value that is not an object"


def _check_head(path: Path, result: Verification, hashes: Mapping[int, str]) -> None:
    """Compare the chain's end with the head file written by the last append (tail deletions)."""
    head_file = _head_path(path)
    if not head_file.is_file():
        return
    try:
        head = json.loads(head_file.read_text(encoding="utf-8"))
        seq, digest = int(head["seq"]), str(head["hash"])
    except (ValueError, KeyError, TypeError):
        result.problems.append(Problem(None, None, f"{head_file.name} is unreadable: it was edited"))
        return
    last = result.head_seq or 0
    if result.head_seq is None and seq > 0:
        gone = "missing" if not path.is_file() else "without entries"
        result.problems.append(Problem(None, None, f"the log is {gone} but {head_file.name} records seq {seq}: "
                                       f"all {seq} entries were removed"))  # fmt: skip
    elif seq > last:
        result.problems.append(
            Problem(None, result.head_seq, f"the log ends at seq {last} but {head_file.name} records seq {seq}: "
                    f"the last {seq - last} entr{'y was' if seq - last == 1 else 'ies were'} removed")
        )  # fmt: skip
    elif seq in hashes and hashes[seq] != digest:
        result.problems.append(Problem(None, seq, f"seq {seq} is not the entry {head_file.name} records: rewritten"))


def read_entries(path: Path, last: int | None = None) -> list[dict[str, Any]]:
    """The log's readable entries, oldest first (the last `last` of them when given)."""
    if not path.is_file():
        return []
    entries = [r for r in (_parse(raw) for raw in path.read_bytes().split(b"\n") if raw.strip()) if isinstance(r, dict)]
    return entries[-last:] if last else entries
