"""The decision and outcome logs: writes from several processes, the outcome rules, the readers, retention, and the
logs as a personal store (found by an access request, erased, nothing left in the file's bytes)."""

from __future__ import annotations

import datetime as dt
import multiprocessing
from pathlib import Path

import pytest

from custintel.personal import Subject
from custintel.settings import Settings
from serving.decision_log import (
    DecisionLog,
    LoggedDecision,
    check_outcome,
    decision_log_path,
    expire,
    history,
    new_decision_id,
    now_iso,
    read_decisions,
    read_outcomes,
    seed_of,
)
from serving.errors import ServingError
from serving.inference_log import log_key
from serving.personal import DecisionLogStore


def _decision(customer: str | None, action: str = "retention_offer", at: str | None = None,
              log: DecisionLog | None = None) -> LoggedDecision:  # fmt: skip
    key = log.key(customer) if log is not None else customer
    return LoggedDecision(
        decision_id=new_decision_id(), customer_key=key, channel="call_centre", policy_name="default",
        policy_version="3", action=action, actions=[{"action": action, "kind": "retention_offer", "p": 0.1,
                                                     "v": 300.0, "l": 1.0, "priority": 30.0}],
        probability=0.9, action_probabilities={action: 0.9, "no_action": 0.1}, explored=False, fallback=False,
        fallback_reason=None, reasons=["uplift 0.1 x value 300 x lever 1"], context={"reason": "billing"},
        decided_at=at or now_iso(), expected_value=30.0, models={"custintel-uplift": "1"},
    )  # fmt: skip


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture
def log(settings: Settings) -> DecisionLog:
    return DecisionLog(decision_log_path(settings), "hash", "salty")


def test_decisions_are_written_keyed_like_the_inference_log_and_read_back(settings: Settings,
                                                                           log: DecisionLog) -> None:  # fmt: skip
    one = _decision("CK1", log=log)
    batch = [_decision(f"CK{i}", "cross_sell_savings", log=log) for i in range(2, 6)]
    log.write([one])
    log.write(batch)
    raw = decision_log_path(settings).read_bytes() + decision_log_path(settings).with_suffix(".db-wal").read_bytes()
    assert b"CK1" not in raw and log_key("hash", "salty", "CK1") == one.customer_key  # hashed, never plain
    frame = read_decisions(settings)
    assert len(frame) == 5 and set(frame["decision_id"]) == {one.decision_id, *(d.decision_id for d in batch)}
    row = frame.set_index("decision_id").loc[one.decision_id]
    assert row["action_probabilities"] == {"retention_offer": 0.9, "no_action": 0.1}
    assert row["context"] == {"reason": "billing"} and not row["explored"]
    assert read_decisions(settings, since=dt.date.today() + dt.timedelta(days=1)).empty
    assert seed_of(one.decision_id) == seed_of(one.decision_id) and seed_of(one.decision_id) >= 0


def test_history_counts_every_chosen_action_per_customer(settings: Settings, log: DecisionLog) -> None:
    log.write([_decision("CK1", at="2026-01-02T10:00:00.000000+00:00", log=log),
               _decision("CK1", "callback", at="2026-01-05T10:00:00.000000+00:00", log=log),
               _decision("CK2", log=log)])  # fmt: skip
    found = log.history(["CK1", "CK9"])
    assert sorted(found["CK1"]) == [("callback", dt.date(2026, 1, 5)), ("retention_offer", dt.date(2026, 1, 2))]
    assert found["CK9"] == []
    assert log.history(["CK1"], since=dt.date(2026, 1, 3))["CK1"] == [("callback", dt.date(2026, 1, 5))]
    assert history(settings, "CK1") == []  # the module reader uses the settings' salt (custintel): another key


@pytest.mark.parametrize(
    ("event", "seen", "reason", "status", "field"),
    [
        ("click", [], None, 409, "event"),  # click before impression
        ("conversion", ["impression", "decline"], None, 409, "event"),  # conversion after decline
        ("decline", ["impression", "accept"], None, 409, "event"),
        ("accept", ["impression", "decline"], None, 409, "event"),
        ("complaint", [], None, 409, "event"),
        ("impression", ["impression"], None, 409, "event"),  # duplicate
        ("feedback", [], "  ", 422, "reason"),
        ("bogus", [], None, 422, "event"),
    ],
)
def test_outcome_rules_refuse_with_the_field(event: str, seen: list[str], reason: str | None, status: int,
                                             field: str) -> None:  # fmt: skip
    with pytest.raises(ServingError) as err:
        check_outcome(event, seen, reason)
    assert err.value.status == status and err.value.field == field


@pytest.mark.parametrize(
    ("event", "seen"),
    [("impression", []), ("click", ["impression"]), ("accept", ["impression", "click"]),
     ("conversion", ["impression", "accept"]), ("decline", ["impression", "click"]), ("feedback", []),
     ("complaint", ["impression", "decline"])],
)  # fmt: skip
def test_outcomes_in_order_are_accepted(event: str, seen: list[str]) -> None:
    check_outcome(event, seen, "the offer does not fit" if event == "feedback" else None)


def test_outcomes_are_recorded_against_their_decision(settings: Settings, log: DecisionLog) -> None:
    decision = _decision("CK1", log=log)
    log.write([decision])
    with pytest.raises(ServingError) as unknown:
        log.record_outcome("0" * 32, "impression", "CK1", None)
    assert (unknown.value.status, unknown.value.field) == (404, "decision_id")
    with pytest.raises(ServingError) as other:
        log.record_outcome(decision.decision_id, "impression", "CK2", None)
    assert (other.value.status, other.value.field) == (422, "customer_key")
    first = log.record_outcome(decision.decision_id, "impression", "CK1", None)
    assert first["action"] == "retention_offer"
    with pytest.raises(ServingError) as twice:
        log.record_outcome(decision.decision_id, "impression", "CK1", None)
    assert twice.value.status == 409
    log.record_outcome(decision.decision_id, "accept", "CK1", None)
    log.record_outcome(decision.decision_id, "feedback", "CK1", "offered to a customer who just complained")
    outcomes = read_outcomes(settings)
    assert list(outcomes["event"]) == ["impression", "accept", "feedback"]
    assert set(outcomes["action"]) == {"retention_offer"} and outcomes["expected_value"].iloc[0] == 30.0


def _write_many(path: str, worker: int, n: int) -> None:
    log = DecisionLog(Path(path), "hash", "salty")
    for i in range(n):
        pair = [_decision(f"W{worker}-{i}b", log=log), _decision(f"W{worker}-{i}c", log=log)]
        log.write([_decision(f"W{worker}-{i}", log=log)] if i % 2 else pair)
    log.close()


def test_several_processes_write_at_once_and_lose_nothing(settings: Settings) -> None:
    path = decision_log_path(settings)
    DecisionLog(path).close()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_many, args=(str(path), w, 40)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    assert len(read_decisions(settings)) == 4 * (20 * 1 + 20 * 2)


def test_retention_removes_old_decisions_with_their_outcomes(settings: Settings, log: DecisionLog) -> None:
    old = _decision("CK1", at="2025-01-01T10:00:00.000000+00:00", log=log)
    new = _decision("CK1", log=log)
    log.write([old, new])
    log.record_outcome(old.decision_id, "impression", "CK1", None)
    log.record_outcome(new.decision_id, "impression", "CK1", None)
    dry = expire(decision_log_path(settings), dt.date(2026, 1, 1), dry_run=True)
    assert dry.removed_count >= 1 and len(read_decisions(settings)) == 2
    done = expire(decision_log_path(settings), dt.date(2026, 1, 1))
    assert [i.dated for i in done.removed] == [dt.date(2025, 1, 1)] and done.removed_count == 1
    assert list(read_decisions(settings)["decision_id"]) == [new.decision_id]
    # the old decision's impression was recorded today: it goes with its decision all the same
    assert list(read_outcomes(settings)["decision_id"]) == [new.decision_id]


def test_an_access_request_finds_the_logs_and_erasure_leaves_nothing(settings: Settings) -> None:
    log = DecisionLog(decision_log_path(settings), "hash", settings.serving_log_salt or "custintel")
    mine, theirs = _decision("CK1", log=log), _decision("CK2", log=log)
    log.write([mine, theirs])
    log.record_outcome(mine.decision_id, "impression", "CK1", None)
    log.record_outcome(theirs.decision_id, "impression", "CK2", None)
    log.close()
    store = DecisionLogStore(settings)
    subject = Subject("CK1", customer_keys=("CK1",))
    found = store.find([subject])
    assert len(found) == 1 and sorted(r["table"] for r in found[0].rows) == ["decisions", "outcomes"]
    assert found[0].rows[0]["context"] == {"reason": "billing"}
    erased = store.erase([subject])
    assert erased and erased[0].removed == 2
    assert store.find([subject]) == [] and store.erase([subject]) == []  # idempotent
    hashed = log_key("hash", settings.serving_log_salt or "custintel", "CK1")
    assert hashed is not None
    for path in decision_log_path(settings).parent.glob("decisions.db*"):
        assert hashed.encode() not in path.read_bytes() and mine.decision_id.encode() not in path.read_bytes()
    assert list(read_decisions(settings)["decision_id"]) == [theirs.decision_id]
    assert list(read_outcomes(settings)["decision_id"]) == [theirs.decision_id]


def test_contacts_since_counts_todays_contacts_on_a_channel_not_fallbacks(settings: Settings, log: DecisionLog) -> None:
    log.write([_decision("CK1", log=log), _decision("CK2", log=log), _decision("CK3", "no_action", log=log),
               _decision("CK4", at="2025-01-01T10:00:00.000000+00:00", log=log)])  # fmt: skip
    assert log.contacts_since("call_centre", "no_action", dt.datetime.now(dt.UTC).date()) == 2
    assert log.contacts_since("email", "no_action", dt.date(2020, 1, 1)) == 0


def test_a_capacity_hold_counts_until_its_rows_are_written_or_it_is_released(settings: Settings,
                                                                              log: DecisionLog) -> None:  # fmt: skip
    today = dt.datetime.now(dt.UTC).date()
    log.write([_decision("CK1", log=log)])  # one contact logged today on call_centre
    first, left = log.hold_capacity("call_centre", "no_action", today, 10, 6, 60)
    assert first is not None and left == 9  # 10 less the logged contact
    second, left = log.hold_capacity("call_centre", "no_action", today, 10, 6, 60)
    assert second is not None and left == 3  # the first campaign's 6 are held
    third, left = log.hold_capacity("call_centre", "no_action", today, 10, 6, 60)
    assert third is None and left == 0  # nothing left: no hold
    other, left = log.hold_capacity("email", "no_action", today, 10, 6, 60)
    assert left == 10  # holds are per channel
    log.release(other)
    # the first campaign logs 2 contacts and gives its hold back in the same transaction
    log.write_rows([_decision("CK2", log=log).row(), _decision("CK3", log=log).row()], release=first)
    assert log.hold_capacity("call_centre", "no_action", today, 10, 1, 60)[1] == 10 - 3 - 3  # 3 logged, 3 held
    log.release(second)
    # a hold older than the stale limit (its worker died mid-campaign) no longer counts
    log.hold_capacity("call_centre", "no_action", today, 10, 5, 60)
    assert log.hold_capacity("call_centre", "no_action", today, 10, 1, 0)[1] == 10 - 3


def _campaigns(path: str, worker: int, capacity: int, rounds: int) -> None:
    """Campaigns of 5 customers on email, each contacting everyone its hold allows (what decide_many does)."""
    log = DecisionLog(Path(path), "hash", "salty")
    today = dt.datetime.now(dt.UTC).date()
    for i in range(rounds):
        hold, left = log.hold_capacity("email", "no_action", today, capacity, 5, 60)
        rows = []
        for k in range(5):
            row = list(_decision(f"W{worker}-{i}-{k}", log=log).row())
            row[2] = "email"
            if k >= left:  # capacity taken: the fallback
                row[5], row[10] = "no_action", 1
            rows.append(tuple(row))
        log.write_rows(rows, release=hold)
    log.close()


def test_campaigns_decided_at_once_in_several_processes_never_break_capacity(settings: Settings) -> None:
    """Four processes decide campaigns at the same time: the contacts logged never exceed the channel's capacity."""
    path = decision_log_path(settings)
    DecisionLog(path).close()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_campaigns, args=(str(path), w, 37, 6)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    logged = read_decisions(settings)
    assert len(logged) == 4 * 6 * 5
    contacts = logged[(logged["channel"] == "email") & (logged["action"] != "no_action")]
    assert len(contacts) == 37  # 120 customers wanted a contact: exactly the capacity got one


def test_the_services_log_checkpoints_on_its_own_thread(settings: Settings, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """With a checkpoint thread the requests' commits leave the WAL alone; the thread copies it into the file."""
    import shutil
    import sqlite3
    import time

    import serving.decision_log as decision_log

    monkeypatch.setattr(decision_log, "CHECKPOINT_BYTES", 1)
    path = decision_log_path(settings)
    log = DecisionLog(path, "hash", "salty", checkpoint_seconds=0.1)
    log.write([_decision(f"CK{i}", log=log) for i in range(50)])
    assert log._con().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == decision_log.BACKSTOP_PAGES
    deadline = time.monotonic() + 20
    copied = tmp_path / "copy.db"
    while True:  # the main file alone (no WAL beside it) holds the rows once the thread has checkpointed
        shutil.copyfile(path, copied)
        with sqlite3.connect(copied) as con:
            found = con.execute("SELECT count(*) FROM decisions").fetchone()[0]
        if found == 50 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    log.close()
    assert found == 50
    assert log._checkpointer is not None and not log._checkpointer.is_alive()


def _counted(path: Path, channel: str, fallback: str, day: str) -> int:
    import sqlite3

    with sqlite3.connect(path) as con:
        return con.execute("SELECT count(*) FROM decisions WHERE channel = ? AND decided_at >= ? AND action != ? "
                           "AND fallback = 0", (channel, day, fallback)).fetchone()[0]  # fmt: skip


def test_contact_counts_reconcile_with_the_log_through_erasure_and_retention(settings: Settings) -> None:
    """The capacity check's counts (added by the writes, taken off by a trigger) equal a count of the log's rows
    after writes, an erasure and retention; a log written before the counts existed gets them filled from its rows."""
    import sqlite3

    path = decision_log_path(settings)
    log = DecisionLog(path, "hash", settings.serving_log_salt or "custintel")
    today = dt.datetime.now(dt.UTC).date()
    old = "2025-01-01T10:00:00.000000+00:00"
    fallback_row = _decision("CK4", "no_action", log=log)
    log.write([_decision("CK1", log=log), _decision("CK2", log=log), _decision("CK2", "cross_sell", log=log),
               fallback_row, _decision("CK3", at=old, log=log)])  # fmt: skip
    assert log.contacts_since("call_centre", "no_action", today) == 3 == _counted(path, "call_centre", "no_action",
                                                                                   today.isoformat())  # fmt: skip
    assert log.contacts_since("call_centre", "no_action", dt.date(2025, 1, 1)) == 4
    DecisionLogStore(settings).erase([Subject("CK2", customer_keys=("CK2",))])
    assert log.contacts_since("call_centre", "no_action", today) == 1 == _counted(path, "call_centre", "no_action",
                                                                                   today.isoformat())  # fmt: skip
    expire(path, dt.date(2025, 6, 1))
    assert log.contacts_since("call_centre", "no_action", dt.date(2020, 1, 1)) == 1
    log.close()
    # a log from before the counts: its rows are counted when it is next opened for writing
    with sqlite3.connect(path) as con:
        con.execute("DROP TRIGGER decisions_uncounted")
        con.execute("DROP TABLE channel_contacts")
    fresh = DecisionLog(path, "hash", settings.serving_log_salt or "custintel")
    assert fresh.contacts_since("call_centre", "no_action", today) == 1
    fresh.write([_decision("CK5", log=fresh)])
    assert fresh.contacts_since("call_centre", "no_action", today) == 2
    fresh.close()


def test_a_log_from_before_action_names_gets_them_and_its_history_reads_the_same(settings: Settings) -> None:
    """An older log (no `action_names` column, the narrow customer index) is given the column, filled from each
    row's actions, and the history index when next opened for writing; caps then count the same actions."""
    import sqlite3

    path = decision_log_path(settings)
    log = DecisionLog(path, "hash", "salty")
    two = _decision("CK1", log=log)
    two = LoggedDecision(**{**two.__dict__, "actions": [*two.actions, {**two.actions[0], "action": "cross_sell"}]})
    log.write([two, _decision("CK1", "no_action", log=log), _decision("CK2", log=log)])
    want = log.history(["CK1", "CK2"])
    log.close()
    with sqlite3.connect(path) as con:  # back to the layout before: no column, no history index
        con.execute("DROP INDEX decisions_history")
        con.execute("ALTER TABLE decisions DROP COLUMN action_names")
        con.execute("CREATE INDEX decisions_customer ON decisions (customer_key, decided_at)")
    reopened = DecisionLog(path, "hash", "salty")
    assert reopened.history(["CK1", "CK2"]) == want
    assert sorted(a for a, _ in want["CK1"]) == ["cross_sell", "no_action", "retention_offer"]
    with sqlite3.connect(path) as con:
        indexes = {r[1] for r in con.execute("PRAGMA index_list(decisions)")}
        plan = " ".join(r[3] for r in con.execute(
            "EXPLAIN QUERY PLAN SELECT customer_key, action_names, decided_at FROM decisions "
            "WHERE customer_key IN ('a') AND decided_at >= '2020'"))  # fmt: skip
    assert "decisions_history" in indexes and "decisions_customer" not in indexes
    assert "COVERING INDEX decisions_history" in plan
    reopened.close()


def test_history_can_leave_out_decisions_of_no_contact_actions_alone(settings: Settings, log: DecisionLog) -> None:
    """`skip` leaves out a decision that chose only skipped actions (a fallback's no_action), read from the index."""
    import sqlite3

    two = _decision("CK1", log=log)
    two = LoggedDecision(**{**two.__dict__, "actions": [*two.actions, {**two.actions[0], "action": "no_action"}]})
    log.write([two, _decision("CK1", "no_action", log=log), _decision("CK1", "cross_sell", log=log)])
    everything = sorted(a for a, _ in log.history(["CK1"])["CK1"])
    assert everything == ["cross_sell", "no_action", "no_action", "retention_offer"]
    kept = sorted(a for a, _ in log.history(["CK1"], skip=["no_action"])["CK1"])
    assert kept == ["cross_sell", "no_action", "retention_offer"]  # the two-action decision is read whole
    with sqlite3.connect(decision_log_path(settings)) as con:
        plan = " ".join(r[3] for r in con.execute(
            "EXPLAIN QUERY PLAN SELECT customer_key, action_names, decided_at FROM decisions WHERE customer_key IN "
            "(SELECT value FROM json_each('[]')) AND decided_at >= '2020' "
            "AND coalesce(action_names, '') NOT IN (SELECT value FROM json_each('[]'))"))  # fmt: skip
    assert "COVERING INDEX decisions_history" in plan
