"""Touches and conversions from the platform's own data, in the shape `attribution.build_journeys` takes.

Two sources:

- the decision log: every decision that gave an action is a touch, its channel `<channel>/<action kind>`
  (e.g. `email/retention_offer`); a conversion is a decision's first positive response (outcome 'accept'
  or 'conversion'), worth the logged value of one success. `experiments` may not import `serving`, so the
  frames come in as arguments (`flows` reads them with `serving.decision_log.read_decisions`/`read_outcomes`).
- the lake's digital events: each event is a touch, its channel the page for a page view (pricing,
  cancellation, ...) or else the canonical event type (micro_conversion, self_service_failed; sessions are
  left out by default: every journey has them); a conversion is a purchase in the billing transactions, worth its
  amount. Records reach customers through the identity crosswalk exactly as the feature build does
  (`features.featurestore.store.open_feature_inputs`: configured sources, suppression applied).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from custintel.settings import Settings
from experiments.attribution import RESPONSE_EVENTS
from experiments.errors import ExperimentError

TOUCH_COLUMNS = ["customer", "time", "channel"]
CONVERSION_COLUMNS = ["customer", "time", "value"]


def _first_action(logged: Any) -> Mapping[str, Any]:
    if isinstance(logged, list | tuple) and logged and isinstance(logged[0], Mapping):
        return logged[0]
    return {}


def decision_touches(decisions: pd.DataFrame, outcomes: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(touches, conversions) from the decision and outcome logs (frames as `read_decisions`/`read_outcomes` give)."""
    for name, frame, needed in (
        ("decisions", decisions, ("decision_id", "customer_key", "channel", "actions", "decided_at")),
        ("outcomes", outcomes, ("decision_id", "customer_key", "event", "at")),
    ):
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ExperimentError(f"{name}: column(s) {missing} are not in the data")
    first = [_first_action(a) for a in decisions["actions"]]
    kinds = [str(a.get("kind") or "none") for a in first]
    acted = pd.Series([k != "none" for k in kinds], index=decisions.index) & decisions["customer_key"].notna()
    touches = pd.DataFrame({
        "customer": decisions["customer_key"], "time": decisions["decided_at"],
        "channel": [f"{c}/{k}" for c, k in zip(decisions["channel"], kinds, strict=True)],
    })[acted.to_numpy()].reset_index(drop=True)  # fmt: skip
    value = {d: float(a.get("v") or 0.0) for d, a in zip(decisions["decision_id"], first, strict=True)}
    hits = outcomes[outcomes["event"].isin(RESPONSE_EVENTS) & outcomes["customer_key"].notna()]
    hits = hits.sort_values("at", kind="stable").drop_duplicates("decision_id")
    conversions = pd.DataFrame({
        "customer": hits["customer_key"], "time": hits["at"], "value": [value.get(d, 0.0) for d in hits["decision_id"]],
    }).reset_index(drop=True)  # fmt: skip
    return touches, conversions


def digital_touches(
    settings: Settings,
    since: dt.date | dt.datetime | None = None,
    until: dt.date | dt.datetime | None = None,
    *,
    skip_event_types: Sequence[str] = ("session",),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(touches, conversions) from the lake's digital events and billing purchases, by customer, in [since, until)."""
    from features.featurestore.inputs import FeatureInputError
    from features.featurestore.store import feature_config, open_feature_inputs

    try:
        con, _ = open_feature_inputs(settings, feature_config(settings))
    except FeatureInputError as exc:
        raise ExperimentError(f"source: digital journeys need the lake and the identity crosswalk ({exc})") from None
    bounds, params = [], []
    if since is not None:
        bounds.append("{t} >= ?")
        params.append(pd.Timestamp(since).tz_localize(None).to_pydatetime())
    if until is not None:
        bounds.append("{t} < ?")
        params.append(pd.Timestamp(until).tz_localize(None).to_pydatetime())
    where = "".join(f" AND {b.format(t='e.event_time')}" for b in bounds)
    skip = ", ".join("?" for _ in skip_event_types) or "NULL"
    try:
        touches = con.execute(
            "SELECT c.customer_key AS customer, e.event_time AS time, "
            "CASE WHEN e.event_type = 'page_view' THEN coalesce(e.page, 'page_view') ELSE e.event_type END AS channel "
            f"FROM web e JOIN customers c USING (cid) WHERE e.event_time IS NOT NULL "  # noqa: S608
            f"AND coalesce(e.event_type, '') NOT IN ({skip}){where} ORDER BY 1, 2",
            [*skip_event_types, *params],
        ).df()
        conversions = con.execute(
            "SELECT c.customer_key AS customer, e.event_time AS time, coalesce(e.amount, 0) AS value "
            "FROM transactions e JOIN customers c USING (cid) WHERE e.kind = 'purchase' "  # noqa: S608
            f"AND e.event_time IS NOT NULL{where} ORDER BY 1, 2",
            params,
        ).df()
    finally:
        con.close()
    touches = touches[touches["channel"].notna()]
    return touches[TOUCH_COLUMNS].reset_index(drop=True), conversions[CONVERSION_COLUMNS].reset_index(drop=True)
