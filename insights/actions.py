"""What the decision service chose, per action and channel, and what came back: the operations page's view.

Plain frames in (the decision log's decisions and outcomes, as `serving.decision_log` reads them), rows out;
the flow reads the log, so this package needs no serving code. The response rate counts the decisions
shown (an impression) that got a positive response (`responses`, e.g. accept or conversion); the expected
rate is the mean logged probability of the chosen action over the same shown decisions, as monitoring's
outcome check compares them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from insights.report import ActionRow


def _first_p(actions: Any) -> float | None:
    if isinstance(actions, list) and actions and isinstance(actions[0], dict) and actions[0].get("p") is not None:
        return float(actions[0]["p"])
    return None


def action_rows(decisions: pd.DataFrame, outcomes: pd.DataFrame, responses: Sequence[str]) -> list[ActionRow]:
    """One row per (action, channel): decisions, outcome counts by event, realised and expected response."""
    if decisions.empty:
        return []
    events = outcomes.groupby("decision_id")["event"].agg(set) if not outcomes.empty else pd.Series(dtype=object)
    frame = decisions[["decision_id", "action", "channel", "actions"]].copy()
    frame["p"] = [_first_p(a) for a in frame["actions"]]
    frame["events"] = [events.get(d, set()) for d in frame["decision_id"]]
    frame["shown"] = [("impression" in e) for e in frame["events"]]
    frame["responded"] = [bool(e & set(responses)) for e in frame["events"]]
    counts: dict[tuple[str, str], dict[str, int]] = {}
    if not outcomes.empty:
        keyed = outcomes.groupby(["action", "channel", "event"]).size().reset_index(name="n")
        for chosen, where, event, n in keyed.itertuples(index=False):
            counts.setdefault((str(chosen), str(where)), {})[str(event)] = int(n)
    rows = []
    for (action, channel), group in frame.groupby(["action", "channel"], sort=True):
        shown = group[group["shown"]]
        ps = shown["p"].dropna()
        rows.append(
            ActionRow(
                action=str(action),
                channel=str(channel),
                decisions=len(group),
                outcomes=counts.get((str(action), str(channel)), {}),
                response_rate=float(shown["responded"].mean()) if len(shown) else None,
                expected_rate=float(ps.mean()) if len(ps) else None,
            )
        )
    return rows
