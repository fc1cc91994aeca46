"""Which version held each alias of a model at any date, and why: the registry's moves joined to the gate's decisions.

MLflow keeps no history of alias moves (mlflow #2169). The registry records every move
(`models.registry.Registry.alias_moves`), with the id of the gate decision behind it; the
gate's append-only decision log (`governance.store.read_decisions`) says what that decision
was: result, reasons, actor, policy. This module is pure: it takes both and builds the spans.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from models.registry import AliasMove

_DECISION_IN_REASON = re.compile(r"decision ([0-9a-f]{32})")


@dataclass(frozen=True)
class AliasSpan:
    """One version's time under one alias: from `start` until `end` (None: it still holds it)."""

    alias: str
    version: str
    start: dt.datetime
    end: dt.datetime | None
    reason: str  # why the alias moved to this version
    actor: str | None
    decision: Mapping[str, Any] | None  # the gate decision behind the move, from the decision log
    ended_by: str | None = None  # why it moved on

    def holds_at(self, when: dt.datetime) -> bool:
        """True when this version held the alias at `when`."""
        return self.start <= when and (self.end is None or when < self.end)

    def why(self) -> str:
        """The reason in one line, with the gate's result and reasons when a decision is behind it."""
        if not self.decision:
            return self.reason
        d = self.decision
        reasons = "; ".join(str(r) for r in d.get("reasons") or []) or "every check passed"
        waiver = d.get("waiver") or {}
        waived = f", waived by {waiver.get('approver')}: {waiver.get('reason')}" if waiver else ""
        return (
            f"{self.reason} [{d.get('action', 'promote')} {d.get('result')} by {d.get('actor')} at {d.get('time')}, "
            f"decision {d.get('id')}, policy {str(d.get('policy_hash', ''))[:12]}: {reasons}{waived}]"
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "alias": self.alias,
            "version": self.version,
            "from": self.start.isoformat(timespec="seconds"),
            "until": None if self.end is None else self.end.isoformat(timespec="seconds"),
            "reason": self.reason,
            "actor": self.actor,
            "decision": None if self.decision is None else self.decision.get("id"),
            "ended_by": self.ended_by,
            "why": self.why(),
        }


def _decision_id(move: AliasMove) -> str | None:
    if move.decision:
        return move.decision
    found = _DECISION_IN_REASON.search(move.reason)  # moves recorded before decisions were linked by id
    return found.group(1) if found else None


def alias_spans(moves: Iterable[AliasMove], decisions: Iterable[Mapping[str, Any]]) -> list[AliasSpan]:
    """Every alias's spans, oldest first per alias, each with the decision behind the move that began it."""
    by_id = {str(d.get("id")): d for d in decisions if d.get("id")}
    spans: list[AliasSpan] = []
    open_span: dict[str, AliasSpan] = {}
    for move in sorted(moves, key=lambda m: m.at):
        current = open_span.pop(move.alias, None)
        if current is not None:
            spans.append(_closed(current, move))
        if move.version is not None:
            decision_id = _decision_id(move)
            open_span[move.alias] = AliasSpan(
                move.alias, move.version, move.at, None, move.reason, move.actor,
                by_id.get(decision_id) if decision_id else None,
            )  # fmt: skip
    spans.extend(open_span.values())
    return sorted(spans, key=lambda s: (s.alias, s.start))


def _closed(span: AliasSpan, move: AliasMove) -> AliasSpan:
    return AliasSpan(span.alias, span.version, span.start, move.at, span.reason, span.actor, span.decision,
                     move.reason)  # fmt: skip


def holders_at(spans: Iterable[AliasSpan], when: dt.datetime) -> dict[str, AliasSpan]:
    """The span of each alias that was in force at `when` (aliases not set then are absent)."""
    return {s.alias: s for s in spans if s.holds_at(when)}
