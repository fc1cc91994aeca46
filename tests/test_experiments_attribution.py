"""Attribution: journeys, Markov removal effects and Shapley values computed by hand, a simulated driver channel,
and the ROI report of a decision log."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from experiments.attribution import (
    attribute,
    build_journeys,
    control_rates,
    markov_removal_effects,
    roi_report,
    shapley_values,
)
from experiments.errors import ExperimentError


def journeys(*rows: tuple[tuple[str, ...], int]) -> pd.DataFrame:
    return pd.DataFrame({"path": [r[0] for r in rows], "converted": [r[1] for r in rows]})


def test_two_channel_markov_by_hand() -> None:
    # start -> A (2/3), B (1/3); A -> B (1/2), null (1/2); B -> conversion (1).
    # P(conv) = 2/3 * 1/2 + 1/3 = 2/3. Without A: 1/3 (RE 1/2). Without B: 0 (RE 1).
    # 2 conversions shared 1/2 : 1 -> A 2/3, B 4/3.
    data = journeys((("A", "B"), 1), (("A",), 0), (("B",), 1))
    assert markov_removal_effects(data["path"].tolist(), data["converted"].tolist()) == pytest.approx(
        {"A": 0.5, "B": 1.0}
    )
    table = attribute(data).set_index("channel")
    assert table["markov"].to_dict() == pytest.approx({"A": 2 / 3, "B": 4 / 3})
    assert table["last_touch"].to_dict() == {"A": 0.0, "B": 2.0}
    assert table["first_touch"].to_dict() == {"A": 1.0, "B": 1.0}
    assert table["journeys"].to_dict() == {"A": 2, "B": 2}


def test_three_channel_shapley_by_hand() -> None:
    # channel sets: {A} x2 (1 conversion), {B} x2 (0), {A,B} x1 (1), {C} x1 (1): 6 journeys, 3 conversions.
    # v(A)=1/2 v(B)=0 v(C)=1 v(AB)=2/5 v(AC)=2/3 v(BC)=1/3 v(ABC)=1/2
    # phi_A = 1/3*1/2 + 1/6*(2/5-0) + 1/6*(2/3-1) + 1/3*(1/2-1/3) = 7/30
    # phi_B = 0 + 1/6*(2/5-1/2) + 1/6*(1/3-1) + 1/3*(1/2-2/3) = -11/60
    # phi_C = 1/3*1 + 1/6*(2/3-1/2) + 1/6*(1/3-0) + 1/3*(1/2-2/5) = 9/20      (sum 1/2 = v(ABC))
    data = journeys((("A",), 1), (("A",), 0), (("B",), 0), (("B",), 0), (("A", "B"), 1), (("C",), 1))
    values = shapley_values(data["path"].tolist(), data["converted"].tolist())
    assert values == pytest.approx({"A": 7 / 30, "B": -11 / 60, "C": 9 / 20})
    table = attribute(data).set_index("channel")
    # scaled by the 6 journeys: credits add up to the 3 conversions
    assert table["shapley"].to_dict() == pytest.approx({"A": 1.4, "B": -1.1, "C": 2.7})
    for column in ("last_touch", "first_touch", "markov", "shapley"):
        assert table[column].sum() == pytest.approx(3.0)


def test_too_many_channels_for_exact_shapley() -> None:
    data = journeys(*[((f"c{i}",), i % 2) for i in range(13)])
    with pytest.raises(ExperimentError, match="journeys: 13 channels; exact Shapley values need at most 12"):
        attribute(data)


def test_a_channel_that_drives_conversions_early_gets_more_than_last_touch() -> None:
    rng = np.random.default_rng(7)
    rows = []
    for _ in range(4000):
        search = rng.random() < 0.4
        path = (["search"] if search else []) + list(rng.choice(["display", "social", "email"], rng.integers(1, 4)))
        if rng.random() < 0.7:
            path.append("email")  # the usual last touch, which does nothing
        rows.append((tuple(path), int(rng.random() < (0.30 if search else 0.05))))
    table = attribute(journeys(*rows)).set_index("channel")
    share = table[["last_touch", "markov", "shapley"]] / table[["last_touch", "markov", "shapley"]].sum()
    assert share.loc["search", "last_touch"] == 0.0  # never last
    # measured: search 0.18 (Markov), 0.49 (Shapley); a first-order chain forgets that the display or email
    # before a conversion came after a search, so it still credits the ubiquitous email most (0.38)
    assert share.loc["search", "markov"] > 0.15
    assert share.loc["search", "shapley"] > 0.45
    assert table["shapley"].idxmax() == "search"
    assert share.loc["email", "last_touch"] > 0.7
    assert share.loc["email", "markov"] < share.loc["email", "last_touch"] / 1.5
    assert share.loc["email", "shapley"] < share.loc["email", "last_touch"] / 4


def test_build_journeys_windows_and_splits_at_conversions() -> None:
    touches = pd.DataFrame({
        "customer": ["a", "a", "a", "a", "b", "c"],
        "time": ["2026-01-01", "2026-02-20", "2026-03-01", "2026-03-10", "2026-03-05", "2025-01-01"],
        "channel": ["email", "web", "app", "email", "web", "app"],
    })  # fmt: skip
    conversions = pd.DataFrame({"customer": ["a", "b"], "time": ["2026-03-02", "2026-03-06"], "value": [50.0, 20]})
    out = build_journeys(touches, conversions, window_days=30).set_index("customer")
    a = out.loc["a"]
    # a: the January email is outside the 30 days before 2 March; the touch after the conversion starts a new journey
    assert a["path"].tolist() == [("web", "app"), ("email",)]
    assert a["converted"].tolist() == [1, 0]
    assert out.loc["b", "path"] == ("web",) and out.loc["b", "value"] == 20.0
    assert "c" not in out.index  # its only touch is more than 30 days before the end (10 March)


def test_build_journeys_bad_input() -> None:
    with pytest.raises(ExperimentError, match=r"touches: column\(s\) \['channel'\]"):
        build_journeys(pd.DataFrame({"customer": [], "time": []}), pd.DataFrame({"customer": [], "time": []}))
    with pytest.raises(ExperimentError, match="touches: column 'time' holds values that are not times"):
        build_journeys(pd.DataFrame({"customer": ["a"], "time": ["soon"], "channel": ["x"]}),
                       pd.DataFrame({"customer": [], "time": []}))  # fmt: skip


def decision_log() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    def action(name: str, kind: str, v: float) -> list[dict[str, object]]:
        return [{"action": name, "kind": kind, "v": v}]

    decisions = pd.DataFrame({
        "decision_id": [f"d{i}" for i in range(10)],
        "action": ["retention_offer"] * 4 + ["service_recovery_callback"] * 3 + ["no_action"] * 3,
        "actions": [action("retention_offer", "retention_offer", 300)] * 4
        + [action("service_recovery_callback", "service_recovery", 150)] * 3 + [[]] * 3,
    })  # fmt: skip
    outcomes = pd.DataFrame({
        "decision_id": ["d0", "d0", "d1", "d2", "d4", "d5", "d7", "d8"],
        "event": ["impression", "accept", "conversion", "decline", "accept", "impression", "conversion", "click"],
    })  # fmt: skip
    exposures = pd.DataFrame({
        "experiment": ["offer"] * 7, "arm": ["treatment"] * 4 + ["control"] * 3,
        "decision_id": ["d0", "d1", "d2", "d3", "d7", "d8", "d9"],
    })  # fmt: skip
    return decisions, outcomes, exposures


def test_roi_report_per_action_kind() -> None:
    decisions, outcomes, exposures = decision_log()
    rates = control_rates(decisions, outcomes, exposures)
    assert rates == pytest.approx({"retention_offer": 1 / 3})  # d7 of the three control decisions responded
    costs = {"retention_offer": 20.0, "service_recovery_callback": 15.0}
    table = roi_report(decisions, outcomes, costs=costs, control=rates).set_index("kind")
    offer = table.loc["retention_offer"]
    assert (offer["decisions"], offer["responses"]) == (4, 2)  # d0 accept, d1 conversion; d2 declined
    assert offer["incremental_responses"] == pytest.approx(2 - 4 / 3)
    assert offer["incremental_revenue"] == pytest.approx((2 - 4 / 3) * 300)
    assert (offer["revenue"], offer["cost"]) == (600.0, 80.0)
    assert offer["revenue_per_decision"] == 150.0
    assert math.isnan(offer["cost_per_resolved_issue"])
    recovery = table.loc["service_recovery"]
    assert recovery["responses"] == 1  # d4 accepted
    assert recovery["cost_per_resolved_issue"] == 45.0  # 3 callbacks x 15 for one resolved issue
    assert recovery["note"] == "no control" and math.isnan(recovery["incremental_responses"])
    assert table.loc["none", "responses"] == 1
    assert table.loc["all", "decisions"] == 10 and table.loc["all", "revenue"] == 750.0
    assert table.loc["all", "note"] == "no control"


def test_roi_report_needs_decisions() -> None:
    decisions, outcomes, _ = decision_log()
    with pytest.raises(ExperimentError, match="decisions: the decision log has no decisions"):
        roi_report(decisions.iloc[:0], outcomes, costs={})
    with pytest.raises(ExperimentError, match=r"outcomes: column\(s\) \['event'\]"):
        roi_report(decisions, outcomes.drop(columns="event"), costs={})


def test_decision_touches_from_the_decision_log_frames() -> None:
    from experiments.journeys import decision_touches

    decisions, outcomes, _ = decision_log()
    decisions["customer_key"] = [f"k{i % 4}" for i in range(10)]
    decisions["channel"] = ["email", "app"] * 5
    decisions["decided_at"] = [f"2026-03-01T0{i}:00:00+00:00" for i in range(10)]
    key_of = dict(zip(decisions["decision_id"], decisions["customer_key"], strict=True))
    outcomes["customer_key"] = outcomes["decision_id"].map(key_of)
    outcomes["at"] = "2026-03-02T00:00:00+00:00"
    extra = pd.DataFrame({"decision_id": ["d0"], "event": ["conversion"], "customer_key": ["k0"],
                          "at": ["2026-03-03T00:00:00+00:00"]})  # fmt: skip
    touches, conversions = decision_touches(decisions, pd.concat([outcomes, extra], ignore_index=True))
    assert len(touches) == 7  # the three no-action decisions are no touch
    assert (
        touches["channel"].iloc[0] == "email/retention_offer" and touches["channel"].iloc[4] == "email/service_recovery"
    )
    # d0 (accept, then conversion) converts once; d1, d4 and d7 (no action: no value) respond; values: the logged v
    assert sorted(conversions["value"].tolist()) == [0.0, 150.0, 300.0, 300.0]
    journeys = build_journeys(touches, conversions)
    assert journeys["converted"].sum() == 4
