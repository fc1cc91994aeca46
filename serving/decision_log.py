"""The decision and outcome logs: which action each customer was given, under which policy, and what happened next.

One SQLite file, `<home>/serving/decisions.db`, in WAL mode so every worker process of the
service writes to it and monitoring reads it at the same time. Two tables:

- `decisions`: one row per decision served (`/decide`, `/decide/batch`): its id, the customer
  key as the serving policy's audit rule keeps keys (`inference_log.log_key`: salted sha256
  by default), channel, policy name and version, the first chosen action and every chosen
  action (JSON), the logged probability of the chosen action and the full distribution over the
  eligible ones (what off-policy evaluation needs), explored / fallback flags, reasons,
  the caller's context, when (UTC ISO), the expected value and the model versions.
- `outcomes`: what happened after a decision (`/outcomes`): impression, click, accept,
  decline, conversion, complaint, or frontline feedback with a reason. Each event at most once
  per decision, in the order `check_outcome` enforces (`EVENT_RULES`).
- `exposures`: a customer's first exposure to each experiment (`experiments.assignment`): experiment,
  version, arm, customer key (the same key rule), the decision that exposed them, channel, when. One
  row per (experiment, customer): a later decision for the same customer is not a new exposure.

A decision is written before its answer leaves (a synchronous insert: an outcome may follow at
once), with WAL's `synchronous=NORMAL` (no fsync per transaction), in the same transaction as its
exposures. All three tables hold personal data: `serving.personal.DecisionLogStore` finds and erases
a person's rows, `expire` applies retention. A log written before exposures existed gets the table
when it is next opened for writing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from custintel.retention import Expiry, Item
from custintel.settings import Settings
from serving.errors import ServingError
from serving.inference_log import log_key

log = logging.getLogger(__name__)

EVENTS = ("impression", "click", "accept", "decline", "conversion", "complaint", "feedback")
# Per event: the events that must come before it, and those after which it is out of order.
#   impression  first of the funnel: the action was shown or said to the customer
#   click       after an impression
#   accept      after an impression; not after a decline
#   decline     after an impression; not after an accept or a conversion
#   conversion  after an impression; not after a decline
#   complaint   after an impression (the customer saw the action)
#   feedback    any time (frontline staff judge the output itself); a reason is required
EVENT_RULES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "impression": (frozenset(), frozenset()),
    "click": (frozenset({"impression"}), frozenset()),
    "accept": (frozenset({"impression"}), frozenset({"decline"})),
    "decline": (frozenset({"impression"}), frozenset({"accept", "conversion"})),
    "conversion": (frozenset({"impression"}), frozenset({"decline"})),
    "complaint": (frozenset({"impression"}), frozenset()),
    "feedback": (frozenset(), frozenset()),
}
RESPONSES = ("accept", "conversion")  # events counted as a positive response to an action

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    decision_id TEXT PRIMARY KEY,
    customer_key TEXT,
    channel TEXT NOT NULL,
    policy_name TEXT NOT NULL,
    policy_version TEXT,
    action TEXT NOT NULL,
    actions TEXT NOT NULL,
    probability REAL NOT NULL,
    action_probabilities TEXT NOT NULL,
    explored INTEGER NOT NULL,
    fallback INTEGER NOT NULL,
    fallback_reason TEXT,
    reasons TEXT NOT NULL,
    context TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    expected_value REAL NOT NULL,
    models TEXT NOT NULL,
    action_names TEXT
);
CREATE INDEX IF NOT EXISTS decisions_at ON decisions (decided_at);
-- capacity is read from channel_contacts (below), no longer counted from an index of today's decisions
DROP INDEX IF EXISTS decisions_channel_at;
CREATE TABLE IF NOT EXISTS outcomes (
    outcome_id TEXT PRIMARY KEY,
    decision_id TEXT NOT NULL REFERENCES decisions (decision_id) ON DELETE CASCADE,
    customer_key TEXT,
    event TEXT NOT NULL,
    reason TEXT,
    at TEXT NOT NULL,
    UNIQUE (decision_id, event)
);
CREATE INDEX IF NOT EXISTS outcomes_customer ON outcomes (customer_key);
CREATE INDEX IF NOT EXISTS outcomes_at ON outcomes (at);
CREATE TABLE IF NOT EXISTS exposures (
    experiment TEXT NOT NULL,
    version INTEGER NOT NULL,
    arm TEXT NOT NULL,
    customer_key TEXT,
    decision_id TEXT,
    channel TEXT NOT NULL,
    exposed_at TEXT NOT NULL,
    UNIQUE (experiment, customer_key)
);
CREATE INDEX IF NOT EXISTS exposures_customer ON exposures (customer_key);
-- contacts a campaign being decided holds of its channel's capacity (no personal data): `DecisionLog.hold_capacity`
CREATE TABLE IF NOT EXISTS capacity_holds (
    hold_id TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    contacts INTEGER NOT NULL,
    held_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS exposures_at ON exposures (exposed_at);
"""
DECISION_COLUMNS = (
    "decision_id", "customer_key", "channel", "policy_name", "policy_version", "action", "actions", "probability",
    "action_probabilities", "explored", "fallback", "fallback_reason", "reasons", "context", "decided_at",
    "expected_value", "models",
)  # fmt: skip
JSON_COLUMNS = ("actions", "action_probabilities", "reasons", "context", "models")
_COUNT = (
    "INSERT INTO channel_contacts VALUES (?, ?, ?, ?) "
    "ON CONFLICT (channel, day, action) DO UPDATE SET contacts = contacts + excluded.contacts"
)
_CHANNEL, _ACTION, _FALLBACK, _AT = (DECISION_COLUMNS.index(c) for c in ("channel", "action", "fallback", "decided_at"))
# The chosen actions' names, comma-joined ("cross_sell_lines" or "a,b"), made by SQLite from the row's `actions`
# as it is inserted: a customer's contact history is then read from an index alone (`decisions_history`).
_NAMES = "(SELECT group_concat(json_extract(value, '$.action'), ',') FROM json_each({actions}))"
_ACTIONS_PARAM = f"?{DECISION_COLUMNS.index('actions') + 1}"
_INSERT = (
    f"INSERT INTO decisions ({', '.join(DECISION_COLUMNS)}, action_names) "
    f"VALUES ({', '.join(f'?{i + 1}' for i in range(len(DECISION_COLUMNS)))}, {_NAMES.format(actions=_ACTIONS_PARAM)})"
)
EXPOSURE_COLUMNS = ("experiment", "version", "arm", "customer_key", "decision_id", "channel", "exposed_at")
# the first exposure of a customer to an experiment is kept; a later one is ignored
_EXPOSE = f"INSERT OR IGNORE INTO exposures ({', '.join(EXPOSURE_COLUMNS)}) VALUES ({', '.join('?' * 7)})"


MMAP_BYTES = 256 * 2**20  # the log's pages read through a memory map (up to this much of the file)
CHECKPOINT_BYTES = 4 * 2**20  # the service's checkpoint thread copies the WAL back once it is this large
BACKSTOP_PAGES = 25_000  # the requests' own automatic checkpoint then (about 100 MiB of WAL; SQLite's: 1,000 pages)
KEYS_KEPT = 200_000  # customer keys whose logged form `DecisionLog.key` remembers before it starts over


def decision_log_path(settings: Settings) -> Path:
    """The decision and outcome log's file."""
    return settings.home_dir / "serving" / "decisions.db"


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    """A connection in WAL mode (readers never block the writers), creating the tables unless read-only."""
    if readonly:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False)
        con.execute("PRAGMA busy_timeout = 30000")
        return con
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA busy_timeout = 30000")
    # reads (a campaign's contact history) through a memory map, not a read call per page: half the time
    con.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoints, never corrupt; no fsync per request
    con.execute("PRAGMA foreign_keys = ON")
    con.executescript(_SCHEMA)
    _name_actions(con)
    _count_contacts(con)
    return con


@contextlib.contextmanager
def _transaction(con: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
    """One transaction on an autocommit connection: committed at the end, rolled back on any exception."""
    con.execute(begin)
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def _name_actions(con: sqlite3.Connection) -> None:
    """Give a log written before `action_names` existed the column, filled from its rows, and its index; once."""
    if con.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'decisions_history'").fetchone():
        return
    with _transaction(con):
        if "action_names" not in [r[1] for r in con.execute("PRAGMA table_info(decisions)")]:
            con.execute("ALTER TABLE decisions ADD COLUMN action_names TEXT")
        con.execute(f"UPDATE decisions SET action_names = {_NAMES.format(actions='actions')} "  # noqa: S608
                    "WHERE action_names IS NULL")  # fmt: skip
        # (customer, time, actions' names): caps and cool-downs read a customer's history from the index alone
        con.execute("CREATE INDEX IF NOT EXISTS decisions_history ON decisions "
                    "(customer_key, decided_at, action_names)")  # fmt: skip
        con.execute("DROP INDEX IF EXISTS decisions_customer")


# Contacts per (channel, UTC day, action): what a campaign's capacity check reads, one row per action, instead of
# counting today's decisions (22 ms at 200,000 of them). Added by the writes, a batch's counts in one statement in
# its transaction (a trigger per inserted row doubled a campaign's insert); taken off by a trigger when decisions
# are deleted (erasure, retention: rare). Aggregates only: no customer in them. Made, and filled from the log, once.
_COUNTS = (
    "CREATE TABLE channel_contacts (channel TEXT NOT NULL, day TEXT NOT NULL, action TEXT NOT NULL, "
    "contacts INTEGER NOT NULL, PRIMARY KEY (channel, day, action)) WITHOUT ROWID",
    "INSERT INTO channel_contacts SELECT channel, substr(decided_at, 1, 10), action, count(*) FROM decisions "
    "WHERE fallback = 0 GROUP BY 1, 2, 3",
    "CREATE TRIGGER decisions_uncounted AFTER DELETE ON decisions WHEN OLD.fallback = 0 BEGIN "
    "UPDATE channel_contacts SET contacts = contacts - 1 WHERE channel = OLD.channel "
    "AND day = substr(OLD.decided_at, 1, 10) AND action = OLD.action; END",
)


def _count_contacts(con: sqlite3.Connection) -> None:
    """Give a log its contact counts (`_COUNTS`) if it has none: in one write transaction, so no row is missed."""
    exists = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'channel_contacts'"
    if con.execute(exists).fetchone():
        return
    with _transaction(con):
        if not con.execute(exists).fetchone():  # another process may have made them meanwhile
            for statement in _COUNTS:
                con.execute(statement)


def new_decision_id() -> str:
    """A decision's id: random (a caller cannot guess another's), 32 hex digits."""
    return uuid.uuid4().hex


def new_decision_ids(n: int) -> list[str]:
    """`n` decision ids at once, each exactly as `new_decision_id` makes one (a random UUID4's 32 hex digits).

    One read of the system's random source for a whole campaign, the UUID4 version and variant bits set
    as `uuid.uuid4` sets them, instead of a `UUID` object per decision.
    """
    if n <= 0:
        return []
    raw = bytearray(os.urandom(16 * n))
    for at in range(0, 16 * n, 16):
        raw[at + 6] = (raw[at + 6] & 0x0F) | 0x40  # version 4
        raw[at + 8] = (raw[at + 8] & 0x3F) | 0x80  # RFC 4122 variant
    text = raw.hex()
    return [text[i : i + 32] for i in range(0, 32 * n, 32)]


def seed_of(decision_id: str) -> int:
    """The arbitration's seed for a decision, derived from its id (replaying the id replays the draw)."""
    return int(decision_id[:15], 16)


@dataclass(frozen=True)
class LoggedDecision:
    """One row of `decisions`, as the service writes it (customer_key already as the log keeps it)."""

    decision_id: str
    customer_key: str | None
    channel: str
    policy_name: str
    policy_version: str | None
    action: str
    actions: list[dict[str, Any]]
    probability: float
    action_probabilities: dict[str, float]
    explored: bool
    fallback: bool
    fallback_reason: str | None
    reasons: list[str]
    context: Mapping[str, Any]
    decided_at: str
    expected_value: float
    models: Mapping[str, str]

    def row(self) -> tuple[Any, ...]:
        """The values in `DECISION_COLUMNS` order, JSON columns serialised."""
        dumps = orjson.dumps
        return (
            self.decision_id, self.customer_key, self.channel, self.policy_name, self.policy_version, self.action,
            dumps(self.actions).decode(), float(self.probability), dumps(self.action_probabilities).decode(),
            int(self.explored), int(self.fallback), self.fallback_reason, dumps(self.reasons).decode(),
            dumps(dict(self.context)).decode(), self.decided_at, float(self.expected_value),
            dumps(dict(self.models)).decode(),
        )  # fmt: skip


@dataclass(frozen=True)
class Exposure:
    """A customer exposed to an experiment's arm by a decision (customer_key already as the log keeps it)."""

    experiment: str
    version: int
    arm: str
    customer_key: str | None
    decision_id: str
    channel: str
    exposed_at: str

    def row(self) -> tuple[Any, ...]:
        """The values in `EXPOSURE_COLUMNS` order."""
        return (self.experiment, int(self.version), self.arm, self.customer_key, self.decision_id, self.channel,
                self.exposed_at)  # fmt: skip


def now_iso() -> str:
    """The current UTC time as the logs keep it (ISO, microseconds: the order of events on one decision)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


class DecisionLog:
    """The service's handle on the log: one connection per thread, a prepared insert, outcome checks.

    `key_rule` and `salt` are the serving policy's audit rule: the log keeps customer keys as the
    inference log does, so an access request finds them by the same hashed key.
    """

    def __init__(self, path: Path, key_rule: str = "hash", salt: str = "custintel",
                 checkpoint_seconds: float | None = None) -> None:  # fmt: skip
        self.path, self.key_rule, self.salt = path, key_rule, salt
        self._local = threading.local()
        self._keys: dict[str | None, str | None] = {}  # customer key -> as logged (a campaign asks twice per customer)
        connect(path).close()  # the tables exist before the first request
        # The service's log: WAL checkpoints on a thread of their own every `checkpoint_seconds`, not in the
        # request that happens to cross SQLite's threshold (a campaign's commit then waited for the copy and its
        # fsync: 20-25 ms of a 1,000-customer campaign measured on a loaded machine). The requests' own
        # automatic checkpoint stays as a backstop far above the thread's threshold.
        self._stop = threading.Event()
        self._checkpointer: threading.Thread | None = None
        if checkpoint_seconds:
            self._checkpointer = threading.Thread(target=self._checkpoints, args=(checkpoint_seconds,),
                                                  name="decision-log-checkpoint", daemon=True)  # fmt: skip
            self._checkpointer.start()

    def _checkpoints(self, every: float) -> None:
        """Checkpoint the WAL (passive: writers never wait) whenever it has grown past `CHECKPOINT_BYTES`."""
        wal = Path(f"{self.path}-wal")
        con: sqlite3.Connection | None = None
        while not self._stop.wait(every):
            try:
                if wal.is_file() and wal.stat().st_size >= CHECKPOINT_BYTES:
                    con = con or connect(self.path)
                    con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except (OSError, sqlite3.Error) as exc:  # the requests' backstop checkpoints meanwhile; say why
                log.warning("decision log checkpoint failed: %s: %s", type(exc).__name__, exc)
        if con is not None:
            con.close()

    def key(self, customer_key: str | None) -> str | None:
        """A customer key as the log keeps it."""
        keys = self._keys
        logged = keys.get(customer_key)
        if logged is None:
            logged = log_key(self.key_rule, self.salt, customer_key)
            if len(keys) >= KEYS_KEPT:
                keys.clear()
            keys[customer_key] = logged
        return logged

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = connect(self.path)
            if self._checkpointer is not None:
                con.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES}")
        return con

    def write(self, decisions: Sequence[LoggedDecision], exposures: Sequence[Exposure] = ()) -> None:
        """Insert decisions and their exposures in one transaction (a batch call's: one commit).

        An exposure of a customer already exposed to that experiment is ignored (the first one counts).
        """
        self.write_rows([d.row() for d in decisions], [e.row() for e in exposures])

    def write_rows(self, rows: Sequence[tuple[Any, ...]], exposures: Sequence[tuple[Any, ...]] = (),
                   release: str | None = None) -> None:  # fmt: skip
        """Insert decision rows and exposure rows in one transaction: a campaign's log, one commit.

        Rows in `DECISION_COLUMNS` order, JSON columns serialised (as `LoggedDecision.row` makes them); exposures
        in `EXPOSURE_COLUMNS` order. The contacts among them are added to `channel_contacts` in the same
        transaction. `release`: the campaign's capacity hold (`hold_capacity`), given back in the same
        transaction, so its contacts are counted either as held or as logged, never both or neither.
        """
        if not rows and not exposures and release is None:
            return
        counts = Counter((r[_CHANNEL], r[_AT][:10], r[_ACTION]) for r in rows if not r[_FALLBACK])
        con = self._con()
        if len(rows) == 1 and not counts and not exposures and release is None:
            con.execute(_INSERT, rows[0])  # autocommit: one statement, one transaction (a fallback: no contact)
            return
        with _transaction(con, "BEGIN"):
            con.executemany(_INSERT, rows)
            if counts:
                con.executemany(_COUNT, [(*key, n) for key, n in counts.items()])
            if exposures:
                con.executemany(_EXPOSE, exposures)
            if release is not None:
                con.execute("DELETE FROM capacity_holds WHERE hold_id = ?", (release,))

    def history(
        self, customer_keys: Iterable[str], since: dt.date | None = None, skip: Iterable[str] = ()
    ) -> dict[str, list[tuple[str, dt.date]]]:
        """Per customer key (as given), the actions decided for them and when: what caps and cool-downs count.

        Every chosen action of a decision counts (not only the first); a fallback's "no action" too,
        which the policy's caps may ignore. `since`: only decisions from that day on. `skip`: actions no rule
        counts (a policy's no-contact actions): a decision that chose one of them alone is not read.
        """
        keys = list(dict.fromkeys(customer_keys))
        by_log = {self.key(k): k for k in keys}
        out: dict[str, list[tuple[str, dt.date]]] = {k: [] for k in keys}
        logged = [k for k in by_log if k is not None]
        if not logged:
            return out
        query = (
            "SELECT customer_key, action_names, decided_at FROM decisions WHERE customer_key IN "
            "(SELECT value FROM json_each(?1)) AND decided_at >= ?2 "
            "AND coalesce(action_names, '') NOT IN (SELECT value FROM json_each(?3))"
        )  # fmt: skip  (from decisions_history alone)
        start = (since or dt.date.min).isoformat()
        days: dict[str, dt.date] = {}
        for logged_key, names, at in self._con().execute(query, (json.dumps(logged), start, json.dumps(list(skip)))):
            day = days.get(at[:10])
            if day is None:
                day = days[at[:10]] = dt.date.fromisoformat(at[:10])
            out[by_log[logged_key]].extend((name, day) for name in (names.split(",") if names else ()))
        return out

    def contacts_since(self, channel: str, fallback: str, day: dt.date) -> int:
        """Contacts decided on a channel from `day` on (UTC): decisions whose first action is not the fallback.

        What a campaign's channel capacity has left today.
        """
        row = (
            self._con()
            .execute(
                "SELECT coalesce(sum(contacts), 0) FROM channel_contacts "
                "WHERE channel = ? AND day >= ? AND action != ?",
                (channel, day.isoformat(), fallback),
            )
            .fetchone()
        )  # the counts the writes keep (`_COUNTS`): decisions not a fallback, by UTC day
        return int(row[0])

    def hold_capacity(self, channel: str, fallback: str, day: dt.date, capacity: int, wanted: int,
                      stale_seconds: float) -> tuple[str | None, int]:  # fmt: skip
        """Hold up to `wanted` of a channel's contacts left today for one campaign: (the hold's id, contacts left).

        Left = the daily capacity less today's logged contacts (`contacts_since`) and what campaigns being
        decided hold, read and held in one write transaction: two campaigns decided at once (threads of a
        worker, or several workers) never both count the same contacts as free. The hold is given back when
        the campaign's rows are written (`write_rows(release=...)`) or it fails (`release`); a hold older than
        `stale_seconds` (its worker died mid-campaign) no longer counts. No hold (None) when nothing is left.
        """
        con = self._con()
        with _transaction(con):
            now = time.time()
            con.execute("DELETE FROM capacity_holds WHERE held_at < ?", (now - stale_seconds,))
            (held,) = con.execute(
                "SELECT coalesce(sum(contacts), 0) FROM capacity_holds WHERE channel = ?", (channel,)
            ).fetchone()
            left = max(0, capacity - self.contacts_since(channel, fallback, day) - int(held))
            hold_id, taken = None, min(left, wanted)
            if taken > 0:
                hold_id = uuid.uuid4().hex
                con.execute("INSERT INTO capacity_holds VALUES (?, ?, ?, ?)", (hold_id, channel, taken, now))
        return hold_id, left

    def release(self, hold_id: str | None) -> None:
        """Give back a campaign's capacity hold without logging anything (the campaign failed)."""
        if hold_id is not None:
            self._con().execute("DELETE FROM capacity_holds WHERE hold_id = ?", (hold_id,))

    def record_outcome(self, decision_id: str, event: str, customer_key: str, reason: str | None) -> dict[str, Any]:
        """Append one outcome after `check_outcome` allows it, atomically (a concurrent duplicate gets 409).

        Returns the stored outcome (outcome_id, decision_id, event, at, and the decision's action).
        """
        con = self._con()
        with _transaction(con):  # the check and the insert see and change the same state
            found = con.execute(
                "SELECT customer_key, action FROM decisions WHERE decision_id = ?", (decision_id,)
            ).fetchone()
            if found is None:
                raise ServingError(404, "decision_id", f"no decision {decision_id!r} in the decision log")
            logged_key, action = found
            if self.key_rule != "omit" and logged_key != self.key(customer_key):
                raise ServingError(422, "customer_key", "this decision was made for another customer")
            seen = [e for (e,) in con.execute("SELECT event FROM outcomes WHERE decision_id = ?", (decision_id,))]
            check_outcome(event, seen, reason)
            outcome = {"outcome_id": uuid.uuid4().hex, "decision_id": decision_id, "event": event, "at": now_iso(),
                       "action": action}  # fmt: skip
            con.execute(
                "INSERT INTO outcomes (outcome_id, decision_id, customer_key, event, reason, at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (outcome["outcome_id"], decision_id, logged_key, event, reason, outcome["at"]),
            )
        return outcome

    def close(self) -> None:
        """Close this thread's connection (others close with their threads) and stop the checkpoints' thread."""
        self._stop.set()
        if self._checkpointer is not None and self._checkpointer is not threading.current_thread():
            self._checkpointer.join(5)
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None


def check_outcome(event: str, seen: Sequence[str], reason: str | None) -> None:
    """Refuse an outcome that is a duplicate (409), out of order (409) or feedback without a reason (422).

    `seen`: the decision's events so far. The order is `EVENT_RULES`'.
    """
    if event not in EVENT_RULES:
        raise ServingError(422, "event", f"{event!r} is not an event; events are {', '.join(EVENTS)}")
    if event == "feedback" and not (reason or "").strip():
        raise ServingError(422, "reason", "feedback needs a reason: what is wrong with this output")
    if event in seen:
        raise ServingError(409, "event", f"this decision already has a {event} outcome")
    needs, not_after = EVENT_RULES[event]
    missing = sorted(needs - set(seen))
    if missing:
        raise ServingError(409, "event", f"{event} before {' and '.join(missing)}: out of order")
    clash = sorted(not_after & set(seen))
    if clash:
        raise ServingError(409, "event", f"{event} after {' and '.join(clash)}: out of order")


# --- readers (monitoring, off-policy evaluation, access requests) ------------------------------------------------


def _bounds(since: dt.datetime | dt.date | None, until: dt.datetime | dt.date | None) -> tuple[str, str]:
    def text(value: dt.datetime | dt.date | None, default: str) -> str:
        if value is None:
            return default
        if isinstance(value, dt.datetime):
            return (value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)).isoformat()
        return dt.datetime.combine(value, dt.time(), dt.UTC).isoformat()

    return text(since, ""), text(until, "9999")


def _read(settings: Settings, query: str, params: Sequence[Any], json_columns: Sequence[str]) -> pd.DataFrame:
    path = decision_log_path(settings)
    if not path.is_file():
        return pd.DataFrame()
    con = connect(path, readonly=True)
    try:
        frame = pd.read_sql_query(query, con, params=list(params))
    finally:
        con.close()
    for column in json_columns:
        if column in frame.columns:
            frame[column] = [orjson.loads(v) if v is not None else None for v in frame[column]]
    return frame


def read_decisions(
    settings: Settings, since: dt.datetime | dt.date | None = None, until: dt.datetime | dt.date | None = None
) -> pd.DataFrame:
    """Decisions made in [since, until) (UTC), one row each; JSON columns parsed; empty when there is no log.

    `action_probabilities` stays a mapping (off-policy evaluation reads it); `explored` and
    `fallback` are booleans.
    """
    start, end = _bounds(since, until)
    frame = _read(settings, f"SELECT {', '.join(DECISION_COLUMNS)} FROM decisions "  # noqa: S608
                            "WHERE decided_at >= ? AND decided_at < ? ORDER BY decided_at", (start, end),
                  JSON_COLUMNS)  # fmt: skip
    if frame.empty:
        return pd.DataFrame(columns=list(DECISION_COLUMNS))
    return frame.astype({"explored": bool, "fallback": bool})


def read_outcomes(
    settings: Settings, since: dt.datetime | dt.date | None = None, until: dt.datetime | dt.date | None = None
) -> pd.DataFrame:
    """Outcomes recorded in [since, until), each with its decision's action, channel, policy and expected value."""
    start, end = _bounds(since, until)
    columns = ["outcome_id", "decision_id", "customer_key", "event", "reason", "at", "action", "channel",
               "policy_name", "policy_version", "probability", "expected_value", "models"]  # fmt: skip
    frame = _read(
        settings,
        "SELECT o.outcome_id, o.decision_id, o.customer_key, o.event, o.reason, o.at, d.action, d.channel, "
        "d.policy_name, d.policy_version, d.probability, d.expected_value, d.models FROM outcomes o "
        "JOIN decisions d USING (decision_id) WHERE o.at >= ? AND o.at < ? ORDER BY o.at",
        (start, end),
        ("models",),
    )
    return frame if not frame.empty else pd.DataFrame(columns=columns)


def read_exposures(settings: Settings, experiment: str | None = None) -> pd.DataFrame:
    """Exposures (first per customer and experiment), oldest first; one experiment's when named; empty when none.

    Columns `EXPOSURE_COLUMNS`; `customer_key` as the log keeps it (hashed by default: join the
    outcomes on it, or hash a units file's keys with `DecisionLog.key`).
    """
    query = f"SELECT {', '.join(EXPOSURE_COLUMNS)} FROM exposures"  # noqa: S608
    params: list[Any] = []
    if experiment is not None:
        query += " WHERE experiment = ?"
        params.append(experiment)
    path = decision_log_path(settings)
    frame = pd.DataFrame()
    if path.is_file():
        con = connect(path, readonly=True)
        try:
            has = con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'exposures'").fetchone()
            if has:
                frame = pd.read_sql_query(query + " ORDER BY exposed_at", con, params=params)
        finally:
            con.close()
    if frame.empty:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c == "version" else object) for c in EXPOSURE_COLUMNS})
    return frame.astype({"version": "int64"})


def history(settings: Settings, customer_key: str) -> list[tuple[str, dt.date]]:
    """The actions decided for one customer and their days (oldest first), under the serving policy's key rule."""
    from serving.policy import load_serving_policy

    path = decision_log_path(settings)
    if not path.is_file():
        return []
    rule = load_serving_policy(settings.serving_policy).audit.customer_key
    log = DecisionLog(path, rule, settings.serving_log_salt or "custintel")
    try:
        return sorted(log.history([customer_key])[customer_key], key=lambda x: x[1])
    finally:
        log.close()


# --- retention ---------------------------------------------------------------------------------------------------


def expire(path: Path, before: dt.date, dry_run: bool = False) -> Expiry:
    """Delete decisions made before `before` with their outcomes, outcomes recorded and exposures made before it.

    One item per day removed or kept (the day's decisions, outcomes and exposures counted), dated
    by the rows' own timestamps. One transaction.
    """
    expiry = Expiry("decision_log")
    if not path.is_file():
        return expiry
    con = connect(path)
    try:
        counts: dict[str, int] = {}
        for day, n in con.execute("SELECT substr(decided_at, 1, 10), count(*) FROM decisions GROUP BY 1"):
            counts[day] = counts.get(day, 0) + int(n)
        for day, n in con.execute("SELECT substr(at, 1, 10), count(*) FROM outcomes GROUP BY 1"):
            counts[day] = counts.get(day, 0) + int(n)
        for day, n in con.execute("SELECT substr(exposed_at, 1, 10), count(*) FROM exposures GROUP BY 1"):
            counts[day] = counts.get(day, 0) + int(n)
        cut = before.isoformat()
        for day, n in sorted(counts.items()):
            item = Item(f"decisions, outcomes and exposures of {day}", dt.date.fromisoformat(day), n)
            (expiry.removed if day < cut else expiry.kept).append(item)
        if not dry_run and expiry.removed:
            con.execute("BEGIN IMMEDIATE")
            con.execute("DELETE FROM outcomes WHERE at < ? OR decision_id IN "
                        "(SELECT decision_id FROM decisions WHERE decided_at < ?)", (cut, cut))  # fmt: skip
            con.execute("DELETE FROM decisions WHERE decided_at < ?", (cut,))
            con.execute("DELETE FROM exposures WHERE exposed_at < ?", (cut,))
            con.execute("COMMIT")
    finally:
        con.close()
    return expiry
