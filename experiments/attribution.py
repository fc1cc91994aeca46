"""Multi-touch attribution of conversions over customer journeys, and the ROI report of the decisions.

A journey is one customer's touches (channels in time order) ending in a conversion or in the end of the
data (`build_journeys`). `attribute` credits the conversions to channels four ways:

- last touch / first touch: each converted journey's last / first channel gets the conversion;
- Markov chain (first order): states start, the channels, conversion and null; transition probabilities
  counted from every journey (start -> c1 -> ... -> cn -> conversion or null). A channel's removal effect
  is 1 - P(conversion without it) / P(conversion), where removing it sends every transition into it to
  null; conversions are shared in proportion to the removal effects (normalised to the total);
- Shapley values ("simplified" Shapley, Zhao et al. 2018): the value of a channel set S is the conversion
  rate of the journeys whose channel set is a subset of S (0 for the empty set, or when no journey
  qualifies); exact Shapley values over every subset, scaled to conversions (x the number of journeys,
  so they add up to the converted journeys). A channel that appears mostly in journeys that do not
  convert can get negative credit. Exact enumeration: at most `MAX_SHAPLEY_CHANNELS` channels.

Journeys without a touch (a conversion nobody touched) are counted, never credited.

`roi_report` sums the decision log per action kind: decisions, responses (outcome 'accept' or
'conversion', once per decision), incremental responses against a control rate when an experiment or
holdout gives one, revenue (each response's logged value of one success), cost, revenue per decision and,
for service recovery, cost per resolved issue (an issue is resolved when its decision got a response).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd

from experiments.errors import ExperimentError

MAX_SHAPLEY_CHANNELS = 12
RESPONSE_EVENTS = ("accept", "conversion")  # an action's positive response (serving.decision_log.RESPONSES)
_START, _CONVERSION, _NULL = "(start)", "(conversion)", "(null)"


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise ExperimentError(f"{what}: expected a data frame")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ExperimentError(f"{what}: column(s) {missing} are not in the data (have {list(frame.columns)})")


def _times(frame: pd.DataFrame, what: str) -> pd.Series:
    try:
        times = pd.to_datetime(frame["time"], utc=True, format="mixed")
    except (ValueError, TypeError) as exc:
        raise ExperimentError(f"{what}: column 'time' holds values that are not times ({exc})") from None
    if times.isna().any():
        raise ExperimentError(f"{what}: column 'time' has {int(times.isna().sum())} missing value(s)")
    return times


def build_journeys(
    touches: pd.DataFrame, conversions: pd.DataFrame, *, window_days: int = 30, end: Any = None
) -> pd.DataFrame:
    """One row per journey: customer, path (channels in time order), converted (0/1), value, ended.

    A converted journey holds the customer's touches in the `window_days` before the conversion, after
    their previous conversion (a touch is credited once). Each customer's touches after their last
    conversion make one unconverted journey, limited to the `window_days` before `end` (default: the
    latest time in either frame). Touches at the same instant as a conversion count before it.
    """
    if window_days <= 0:
        raise ExperimentError(f"window_days: {window_days} must be positive")
    _require(touches, ("customer", "time", "channel"), "touches")
    _require(conversions, ("customer", "time"), "conversions")
    t = pd.DataFrame({"customer": touches["customer"].astype(str), "time": _times(touches, "touches"),
                      "channel": touches["channel"].astype(str)})  # fmt: skip
    c = pd.DataFrame({"customer": conversions["customer"].astype(str), "time": _times(conversions, "conversions"),
                      "value": pd.to_numeric(conversions["value"], errors="coerce").fillna(0.0)
                      if "value" in conversions.columns else 0.0})  # fmt: skip
    if touches["channel"].isna().any():
        raise ExperimentError("touches: column 'channel' has missing values")
    window = pd.Timedelta(days=window_days)
    latest = max([x.max() for x in (t["time"], c["time"]) if len(x)], default=pd.Timestamp.now(tz="UTC"))
    stop = pd.Timestamp(end) if end is not None else latest
    if stop.tzinfo is None:
        stop = stop.tz_localize("UTC")
    t = t.sort_values(["customer", "time"], kind="stable")
    c = c.sort_values(["customer", "time"], kind="stable")
    by_customer = {k: g for k, g in t.groupby("customer", sort=False)}
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for customer, group in c.groupby("customer", sort=False):
        seen.add(str(customer))
        own = by_customer.get(str(customer))
        previous = pd.Timestamp.min.tz_localize("UTC")
        for at, value in zip(group["time"], group["value"], strict=True):
            path: list[str] = []
            if own is not None:
                mask = (own["time"] > previous) & (own["time"] <= at) & (own["time"] >= at - window)
                path = own.loc[mask, "channel"].tolist()
            rows.append({"customer": customer, "path": tuple(path), "converted": 1, "value": float(value), "ended": at})
            previous = at
        if own is not None:
            rest = own[(own["time"] > previous) & (own["time"] >= stop - window) & (own["time"] <= stop)]
            if len(rest):
                rows.append({"customer": customer, "path": tuple(rest["channel"]), "converted": 0, "value": 0.0,
                             "ended": stop})  # fmt: skip
    for customer, own in by_customer.items():
        if customer in seen:
            continue
        rest = own[(own["time"] >= stop - window) & (own["time"] <= stop)]
        if len(rest):
            rows.append({"customer": customer, "path": tuple(rest["channel"]), "converted": 0, "value": 0.0,
                         "ended": stop})  # fmt: skip
    return pd.DataFrame(rows, columns=["customer", "path", "converted", "value", "ended"])


def _paths(journeys: pd.DataFrame) -> tuple[list[tuple[str, ...]], np.ndarray, np.ndarray]:
    _require(journeys, ("path", "converted"), "journeys")
    paths = [tuple(str(c) for c in p) if isinstance(p, list | tuple | np.ndarray) else () for p in journeys["path"]]
    converted = pd.to_numeric(journeys["converted"], errors="coerce")
    if converted.isna().any() or not set(converted.unique()) <= {0, 1}:
        raise ExperimentError("journeys: column 'converted' must hold 0/1")
    value = pd.to_numeric(journeys["value"], errors="coerce").fillna(0.0).to_numpy() if "value" in journeys \
        else np.zeros(len(journeys))  # fmt: skip
    return paths, converted.to_numpy(dtype=int), value


def markov_removal_effects(paths: Sequence[Sequence[str]], converted: Sequence[int]) -> dict[str, float]:
    """Each channel's removal effect: 1 - P(conversion | channel removed) / P(conversion), first-order chain."""
    counts: Counter[tuple[str, str]] = Counter()
    for path, conv in zip(paths, converted, strict=True):
        if not path:
            continue
        states = [_START, *path, _CONVERSION if conv else _NULL]
        counts.update(pairwise(states))
    channels = sorted({c for p in paths for c in p})
    transient = [_START, *channels]
    index = {s: i for i, s in enumerate(transient)}
    q = np.zeros((len(transient), len(transient)))
    to_conversion = np.zeros(len(transient))
    for (a, b), n in counts.items():
        if b == _CONVERSION:
            to_conversion[index[a]] += n
        elif b != _NULL:
            q[index[a], index[b]] += n
    totals = q.sum(axis=1) + to_conversion + np.array([counts.get((s, _NULL), 0) for s in transient])
    totals[totals == 0] = 1.0
    q, r = q / totals[:, None], to_conversion / totals

    def p_conversion(removed: str | None) -> float:
        keep = [i for s, i in index.items() if s != removed]
        sub_q = q[np.ix_(keep, keep)]  # transitions into the removed channel now go nowhere: to null
        absorbed = np.linalg.solve(np.eye(len(keep)) - sub_q, r[keep])
        return float(absorbed[0])  # from start

    base = p_conversion(None)
    if base <= 0:
        return dict.fromkeys(channels, 0.0)
    return {c: 1.0 - p_conversion(c) / base for c in channels}


def shapley_values(paths: Sequence[Sequence[str]], converted: Sequence[int]) -> dict[str, float]:
    """Exact Shapley values of the channels; v(S) = conversion rate of journeys whose channel set is within S."""
    channels = sorted({c for p in paths for c in p})
    n = len(channels)
    if n > MAX_SHAPLEY_CHANNELS:
        raise ExperimentError(
            f"journeys: {n} channels; exact Shapley values need at most {MAX_SHAPLEY_CHANNELS} "
            "(group channels, e.g. by kind, or drop rare ones)"
        )
    if n == 0:
        return {}
    bit = {c: 1 << i for i, c in enumerate(channels)}
    size = 1 << n
    journeys_in, conversions_in = np.zeros(size), np.zeros(size)
    for path, conv in zip(paths, converted, strict=True):
        if path:
            mask = 0
            for c in set(path):
                mask |= bit[c]
            journeys_in[mask] += 1
            conversions_in[mask] += conv
    for i in range(n):  # subset sums (zeta transform): totals over every channel set within S
        step = 1 << i
        for mask in range(size):
            if mask & step:
                journeys_in[mask] += journeys_in[mask ^ step]
                conversions_in[mask] += conversions_in[mask ^ step]
    value = np.divide(conversions_in, journeys_in, out=np.zeros(size), where=journeys_in > 0)
    popcount = np.array([bin(m).count("1") for m in range(size)])
    weight = np.array([math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n) for k in range(n)])
    out = {}
    for c, b in bit.items():
        without = np.array([m for m in range(size) if not m & b])
        out[c] = float(np.sum(weight[popcount[without]] * (value[without | b] - value[without])))
    return out


def attribute(journeys: pd.DataFrame) -> pd.DataFrame:
    """Conversions credited per channel four ways, and the same shares of the conversions' value.

    Columns last_touch, first_touch, markov, shapley each add up to the converted journeys with a touch;
    `*_value` columns share the conversions' value in the same proportions.
    """
    paths, converted, value = _paths(journeys)
    touched = np.array([bool(p) for p in paths])
    if not touched.any():
        raise ExperimentError("journeys: no journey has a touch to credit")
    total = float(converted[touched].sum())
    channels = sorted({c for p in paths for c in p})
    last = Counter(p[-1] for p, conv in zip(paths, converted, strict=True) if p and conv)
    first = Counter(p[0] for p, conv in zip(paths, converted, strict=True) if p and conv)
    effects = markov_removal_effects(paths, converted.tolist())
    effect_sum = sum(effects.values())
    shapley = shapley_values(paths, converted.tolist())
    journeys_touched = int(touched.sum())
    table = pd.DataFrame({
        "channel": channels,
        "journeys": [sum(1 for p in paths if c in p) for c in channels],
        "last_touch": [float(last.get(c, 0)) for c in channels],
        "first_touch": [float(first.get(c, 0)) for c in channels],
        "markov": [total * effects[c] / effect_sum if effect_sum > 0 else 0.0 for c in channels],
        "removal_effect": [effects[c] for c in channels],
        "shapley": [shapley[c] * journeys_touched for c in channels],
    })  # fmt: skip
    mean_value = float(value[touched & (converted == 1)].sum()) / total if total else 0.0
    for column in ("last_touch", "first_touch", "markov", "shapley"):
        table[f"{column}_value"] = table[column] * mean_value
    return table.sort_values("markov", ascending=False, kind="stable").reset_index(drop=True)


# --- ROI ---------------------------------------------------------------------------------------------------


def _kind_and_value(decisions: pd.DataFrame, kinds: Mapping[str, str] | None) -> tuple[pd.Series, pd.Series]:
    kind, value = [], []
    for action, logged in zip(decisions["action"], decisions.get("actions", [None] * len(decisions)), strict=True):
        first = logged[0] if isinstance(logged, list | tuple) and logged and isinstance(logged[0], Mapping) else {}
        kind.append(str(first.get("kind") or (kinds or {}).get(str(action)) or "none"))
        v = first.get("v")
        value.append(float(v) if isinstance(v, int | float) and math.isfinite(v) else 0.0)
    return pd.Series(kind, index=decisions.index), pd.Series(value, index=decisions.index)


def responded_decisions(outcomes: pd.DataFrame) -> set[str]:
    """Ids of the decisions with a positive response (outcome 'accept' or 'conversion')."""
    _require(outcomes, ("decision_id", "event"), "outcomes")
    return set(outcomes.loc[outcomes["event"].isin(RESPONSE_EVENTS), "decision_id"].astype(str))


def control_rates(
    decisions: pd.DataFrame, outcomes: pd.DataFrame, exposures: pd.DataFrame, *, control: str = "control"
) -> dict[str, float]:
    """Per action kind, the response rate of the control arms of the experiments that tested it.

    Exposures (experiment, arm, decision_id) link decisions to arms. For each experiment the control arm's
    response rate (its decisions with a response / its decisions) is the rate the treated arms' action
    kinds would have had without the action; several experiments on one kind pool their control decisions.
    """
    _require(decisions, ("decision_id", "action"), "decisions")
    _require(exposures, ("experiment", "arm", "decision_id"), "exposures")
    responded = responded_decisions(outcomes)
    kind, _ = _kind_and_value(decisions, None)
    kind_of = dict(zip(decisions["decision_id"].astype(str), kind, strict=True))
    pooled: dict[str, list[int]] = {}
    for _, arms in exposures.groupby("experiment"):
        ids = arms["decision_id"].astype(str)
        in_control = ids[arms["arm"] == control]
        if in_control.empty:
            continue
        hits = sum(1 for d in in_control if d in responded)
        tested = {kind_of[d] for d in ids[arms["arm"] != control] if d in kind_of} - {"none"}
        for k in tested:
            acc = pooled.setdefault(k, [0, 0])
            acc[0] += hits
            acc[1] += len(in_control)
    return {k: hits / n for k, (hits, n) in pooled.items() if n}


def roi_report(
    decisions: pd.DataFrame,
    outcomes: pd.DataFrame,
    *,
    costs: Mapping[str, float],
    kinds: Mapping[str, str] | None = None,
    control: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Per action kind (and `all`): decisions, responses, incremental responses and revenue, cost, ROI figures.

    `costs` maps an action name to the cost of making it once (the policy's `cost`); `kinds` maps action names
    to kinds when the log's actions do not say; `control` maps a kind to the response rate without the action
    (see `control_rates`): incremental = responses - decisions x that rate, else NaN with the note
    "no control". Revenue is each response's logged value of one success (`actions[0].v`).
    """
    _require(decisions, ("decision_id", "action"), "decisions")
    responded = responded_decisions(outcomes)
    if decisions.empty:
        raise ExperimentError("decisions: the decision log has no decisions in this period")
    kind, value = _kind_and_value(decisions, kinds)
    frame = pd.DataFrame({
        "kind": kind, "action": decisions["action"].astype(str),
        "responded": decisions["decision_id"].astype(str).isin(responded).astype(int), "value": value,
    })  # fmt: skip
    frame["revenue"] = frame["value"] * frame["responded"]
    frame["cost"] = frame["action"].map(lambda a: float(costs.get(a, 0.0)))
    rows = []
    for name, group in [*frame.groupby("kind", sort=True), ("all", frame)]:
        n, hits = len(group), int(group["responded"].sum())
        revenue, cost = float(group["revenue"].sum()), float(group["cost"].sum())
        rate = (control or {}).get(str(name))
        incremental = hits - n * rate if rate is not None else math.nan
        value_each = revenue / hits if hits else math.nan
        rows.append({
            "kind": name, "decisions": n, "responses": hits, "response_rate": hits / n,
            "control_rate": rate if rate is not None else math.nan, "incremental_responses": incremental,
            "incremental_revenue": incremental * value_each if hits else math.nan, "revenue": revenue, "cost": cost,
            "revenue_per_decision": revenue / n, "net_per_decision": (revenue - cost) / n,
            "cost_per_resolved_issue": (cost / hits if hits else math.nan) if name == "service_recovery" else math.nan,
            "note": None if rate is not None else ("no control" if name != "none" else "no action taken"),
        })  # fmt: skip
    if control:  # the total's incremental is the sum of its kinds' where every kind has a control
        kinds_incremental = [r["incremental_responses"] for r in rows[:-1] if r["kind"] != "none"]
        if kinds_incremental and all(not math.isnan(x) for x in kinds_incremental):
            rows[-1]["incremental_responses"] = float(sum(kinds_incremental))
            rows[-1]["incremental_revenue"] = float(sum(r["incremental_revenue"] for r in rows[:-1]
                                                        if r["kind"] != "none"))  # fmt: skip
            rows[-1]["note"] = None
    return pd.DataFrame(rows)
