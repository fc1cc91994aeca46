"""Alias history: the registry's recorded moves joined to the gate's decisions (pure, no registry)."""

from __future__ import annotations

import datetime as dt

from governance.history import alias_spans, holders_at
from models.registry import AliasMove

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _at(days: float) -> dt.datetime:
    return T0 + dt.timedelta(days=days)


def _move(alias: str, version: str | None, previous: str | None, days: float, reason: str, decision: str | None = None):
    return AliasMove("m", alias, version, previous, _at(days), reason, decision, "tester")


DECISIONS = [
    {"id": "d1" * 16, "action": "promote", "result": "promoted", "actor": "ci", "time": "2026-01-02",
     "reasons": [], "policy_hash": "abc"},
    {"id": "d2" * 16, "action": "promote", "result": "waived", "actor": "dana", "time": "2026-01-05",
     "reasons": ["fairness: x"], "policy_hash": "abc", "waiver": {"approver": "Dana", "reason": "pilot"}},
    {"id": "d3" * 16, "action": "rollback", "result": "rolled_back", "actor": "ops", "time": "2026-01-09",
     "reasons": ["complaints"], "policy_hash": "abc"},
]  # fmt: skip

MOVES = [
    _move("challenger", "1", None, 0, "trained in run r1"),
    _move("champion", "1", None, 1, "gate promoted", "d1" * 16),
    _move("challenger", None, "1", 1, "promoted to champion", "d1" * 16),
    _move("challenger", "2", None, 3, "trained in run r2"),
    _move("previous", "1", None, 4, "replaced as champion by version 2", "d2" * 16),
    _move("champion", "2", "1", 4, "gate waived", "d2" * 16),
    _move("challenger", None, "2", 4, "promoted to champion", "d2" * 16),
    _move("previous", "2", "1", 8, "replaced as champion by version 1", "d3" * 16),
    # a move recorded before moves carried the decision id: found in the reason
    _move("champion", "1", "2", 8, f"rollback: complaints (decision {'d3' * 16})"),
]


def test_spans_follow_every_move_and_carry_the_decision_behind_them() -> None:
    spans = alias_spans(MOVES, DECISIONS)
    champion = [s for s in spans if s.alias == "champion"]
    assert [(s.version, s.start, s.end) for s in champion] == [("1", _at(1), _at(4)), ("2", _at(4), _at(8)),
                                                                 ("1", _at(8), None)]  # fmt: skip
    assert champion[0].decision is not None and champion[0].decision["result"] == "promoted"
    assert "waived by Dana: pilot" in champion[1].why() and champion[1].ended_by.startswith("rollback")
    assert champion[2].decision is not None and champion[2].decision["action"] == "rollback"
    challenger = [(s.version, s.end) for s in spans if s.alias == "challenger"]
    assert challenger == [("1", _at(1)), ("2", _at(4))]  # removed when promoted: no open challenger


def test_holders_at_any_date() -> None:
    spans = alias_spans(MOVES, DECISIONS)
    assert holders_at(spans, _at(0.5)).keys() == {"challenger"}
    mid = holders_at(spans, _at(5))
    assert {a: s.version for a, s in mid.items()} == {"champion": "2", "previous": "1"}
    assert "fairness: x" in mid["champion"].why()
    now = holders_at(spans, _at(30))
    assert {a: s.version for a, s in now.items()} == {"champion": "1", "previous": "2"}
    assert holders_at(spans, _at(-1)) == {}


def test_moves_out_of_order_and_unknown_decisions() -> None:
    moves = list(reversed(MOVES)) + [_move("champion", "9", "1", 10, "gate promoted", "ff" * 16)]
    spans = alias_spans(moves, DECISIONS)
    last = holders_at(spans, _at(11))["champion"]
    assert last.version == "9" and last.decision is None and last.why() == "gate promoted"
    assert last.as_dict()["until"] is None and last.as_dict()["from"].startswith("2026-01-11")
