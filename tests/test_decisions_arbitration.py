"""Arbitration rules on hand-built customers: eligibility, scoring, override, fallback, exploration, batches."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import pytest

from decisions.arbitration import (
    Candidate,
    CustomerState,
    candidates,
    decide,
    decide_batch,
    eligible,
    expected_value,
)
from decisions.policy import DecisionPolicy, load_policy

TODAY = dt.date(2026, 12, 1)

POLICY_TEXT = """
name: test-nba
signals: {failed_self_service: self_service_failed_90d, repeat_contacts: repeat_contacts_90d,
          yearly_value: monetary_365d}
capacity: {call_centre: 2, email: 100, web: 100}
exploration: 0.1
fallback: no_action
equity: {attribute: gender, floor: 0.8, alpha: 0.05, min_group_size: 3}
minors: {age_below: 18, action: suppress}
actions:
  - name: retention_offer
    kind: retention_offer
    purpose: profiling
    channels: [call_centre, email]
    value: 100
    value_signal: yearly_value
    cost: 5
    prompt: "Offer {customer_key} the discount (uplift {uplift}, {unknown_field})."
    max_per_customer: 1
    window_days: 30
    cooldown_days: 60
  - name: cross_sell_tv
    kind: cross_sell
    purpose: marketing
    channels: [web, email, call_centre]
    products: {TV1: 50, TV2: 80}
    cost: 1
    prompt: "Suggest {product}."
    max_per_customer: 2
    window_days: 30
    cooldown_days: 7
  - name: callback
    kind: service_recovery
    channels: [call_centre, web, email]
    triggers: {failed_self_service: 3, repeat_contacts: 2}
    context_reasons: [complaint]
    value: 40
    cost: 5
    prompt: "Book a callback: {trigger}."
    max_per_customer: 1
    window_days: 30
  - name: no_action
    kind: none
    channels: [web, app, call_centre, email]
    prompt: "Nothing to offer."
"""


@pytest.fixture(scope="module")
def policy() -> DecisionPolicy:
    return load_policy(POLICY_TEXT)


@pytest.fixture(scope="module")
def greedy(policy: DecisionPolicy) -> DecisionPolicy:
    return policy.model_copy(update={"exploration": 0.0})


def customer(key: str = "c1", **kw: object) -> CustomerState:
    base: dict = {
        "consent": {"profiling": True, "marketing": True},
        "group": "F",
        "churn_risk": 0.3,
        "uplift": 0.2,
        "propensity": {"TV1": 0.1, "TV2": 0.05},
        "signals": {"yearly_value": 500.0},
    }
    base.update(kw)
    return CustomerState(key, **base)


def names(found: list[Candidate]) -> list[str]:
    return [c.action for c in found]


# --------------------------------------------------------------------------------------- eligibility rules


def test_priority_is_p_x_v_x_l_best_first_with_readable_reasons(greedy: DecisionPolicy) -> None:
    found = candidates(greedy, customer(), "call_centre", TODAY)
    assert names(found) == ["retention_offer", "cross_sell_tv"]
    retention, cross = found
    assert (retention.p, retention.v, retention.l) == (0.2, 500.0, 1.0) and retention.priority == pytest.approx(100)
    assert retention.reasons[0] == "uplift 0.200 x value 500 x lever 1"
    # The cross-sell offers the customer's best product: TV1 (0.1 x 50 = 5) beats TV2 (0.05 x 80 = 4).
    assert cross.product == "TV1" and cross.priority == pytest.approx(5.0)
    assert expected_value(retention) == pytest.approx(0.2 * 500 - 5)
    d = decide(greedy, customer(), "call_centre", TODAY, seed=1)
    assert d.actions[0].action == "retention_offer" and not d.fallback and not d.explored
    assert d.prompt == "Offer c1 the discount (uplift 0.20, {unknown_field})."


def test_value_falls_back_to_the_fixed_value_without_the_signal(greedy: DecisionPolicy) -> None:
    found = candidates(greedy, customer(signals={}), "email", TODAY)
    assert found[0].action == "retention_offer" and found[0].v == 100


def test_uplift_targets_the_persuadable_not_the_merely_risky(greedy: DecisionPolicy) -> None:
    persuadable = customer("p", churn_risk=0.2, uplift=0.15, propensity={})
    risky = customer("r", churn_risk=0.9, uplift=-0.05, propensity={})
    assert names(candidates(greedy, persuadable, "email", TODAY)) == ["retention_offer"]
    assert candidates(greedy, risky, "email", TODAY) == []
    d = decide(greedy, risky, "email", TODAY, seed=0)
    assert d.fallback and "retention_offer: uplift -0.050 <= 0: not persuadable" in d.reasons
    tiny = customer("t", uplift=0.005, propensity={})  # 0.005 x 500 = 2.5 < cost 5
    d = decide(greedy, tiny, "email", TODAY, seed=0)
    assert d.fallback and any("does not cover the cost 5" in r for r in d.reasons)


def test_churn_risk_targeting_is_one_field_away(greedy: DecisionPolicy) -> None:
    spec = greedy.action("retention_offer").model_copy(update={"target": "churn_risk"})
    by_risk = greedy.model_copy(update={"actions": [spec, *greedy.actions[1:]]})
    persuadable = customer("p", churn_risk=0.2, uplift=0.15, propensity={})
    risky = customer("r", churn_risk=0.9, uplift=-0.05, propensity={})
    batch = decide_batch(by_risk, [persuadable, risky], "call_centre", TODAY, seed=0, capacity={"call_centre": 1})
    assert [d.actions[0].action for d in batch.decisions] == ["no_action", "retention_offer"]
    assert batch.decisions[1].reasons[0] == "churn risk 0.900 x value 500 x lever 1"
    by_uplift = decide_batch(greedy, [persuadable, risky], "call_centre", TODAY, seed=0, capacity={"call_centre": 1})
    assert [d.actions[0].action for d in by_uplift.decisions] == ["retention_offer", "no_action"]
    d = decide(by_risk, customer(churn_risk=None), "email", TODAY, seed=0)
    assert "retention_offer: no churn score (the churn champion is missing)" in d.reasons


@pytest.mark.parametrize(
    ("consent", "allowed"),
    [
        ({"profiling": True, "marketing": True}, {"retention_offer", "cross_sell_tv"}),
        ({"profiling": False, "marketing": True}, {"cross_sell_tv"}),
        ({"marketing": True}, {"cross_sell_tv"}),  # unknown consent arrives resolved: absent = no
        ({"profiling": True, "marketing": False}, {"retention_offer"}),
        ({}, set()),
    ],
)
def test_consent_per_purpose(greedy: DecisionPolicy, consent: dict, allowed: set[str]) -> None:
    ok, refused = eligible(greedy, customer(consent=consent), "email", TODAY)
    sales = {a.name for a in ok if a.kind in ("retention_offer", "cross_sell")}
    assert sales == allowed
    for name in {"retention_offer", "cross_sell_tv"} - allowed:
        assert refused[name].startswith("no consent for ")


def test_minors_get_no_consent_based_action_but_service_recovery(greedy: DecisionPolicy) -> None:
    minor = customer(is_minor=True, signals={"failed_self_service": 5})
    ok, refused = eligible(greedy, minor, "email", TODAY)
    assert {a.name for a in ok} == {"callback", "no_action"}
    assert refused["retention_offer"] == refused["cross_sell_tv"] == "suppressed for minors (under 18)"
    assert decide(greedy, minor, "email", TODAY, seed=0).actions[0].action == "callback"
    quiet = customer(is_minor=True)
    assert decide(greedy, quiet, "email", TODAY, seed=0).actions[0].action == "no_action"


def test_no_cross_sell_of_what_is_held(greedy: DecisionPolicy) -> None:
    one = candidates(greedy, customer(products_held=frozenset({"TV1"}), uplift=None), "web", TODAY)
    assert one[0].product == "TV2"
    _, refused = eligible(greedy, customer(products_held=frozenset({"TV1", "TV2"})), "web", TODAY)
    assert refused["cross_sell_tv"] == "already holds every product offered"


@pytest.mark.parametrize(
    ("history", "reason"),
    [
        ([("retention_offer", TODAY - dt.timedelta(days=5))], "contact cap: 1 of 1 in 30 days"),
        ([("retention_offer", TODAY - dt.timedelta(days=40))], "cool-down: last on 2026-10-22, 60 days"),
        ([("retention_offer", TODAY - dt.timedelta(days=61))], None),
        ([("cross_sell_tv", TODAY - dt.timedelta(days=3))], "cool-down: last on 2026-11-28, 7 days"),
        ([("cross_sell_tv", TODAY - dt.timedelta(days=d)) for d in (10, 20)], "contact cap: 2 of 2 in 30 days"),
        ([("cross_sell_tv", TODAY - dt.timedelta(days=d)) for d in (10, 40)], None),
    ],
)
def test_contact_caps_and_cool_downs(greedy: DecisionPolicy, history: list, reason: str | None) -> None:
    action = history[0][0]
    _, refused = eligible(greedy, customer(history=history), "email", TODAY)
    if reason is None:
        assert action not in refused
    else:
        assert refused[action].startswith(reason)


def test_history_may_hold_timestamps(greedy: DecisionPolicy) -> None:
    stamp = dt.datetime(2026, 11, 28, 15, 30)
    state = customer(history=[("cross_sell_tv", stamp)])
    _, refused = eligible(greedy, state, "email", TODAY)
    assert refused["cross_sell_tv"].startswith("cool-down: last on 2026-11-28")
    batch = decide_batch(greedy, [state], "email", TODAY, seed=0)
    assert "cross_sell_tv: " + refused["cross_sell_tv"] in batch.decisions[0].reasons


def test_channel_decides_what_is_offered(greedy: DecisionPolicy) -> None:
    _, refused = eligible(greedy, customer(), "web", TODAY)
    assert refused["retention_offer"] == "not offered on web"
    assert decide(greedy, customer(), "web", TODAY, seed=0).actions[0].action == "cross_sell_tv"
    app = decide(greedy, customer(), "app", TODAY, seed=0)
    assert app.actions[0].action == "no_action" and app.fallback and app.fallback_reason == "no eligible action"
    with pytest.raises(ValueError, match="channel: 'fax' is not a channel"):
        decide(greedy, customer(), "fax", TODAY, seed=0)


@pytest.mark.parametrize(
    ("signals", "context", "fires"),
    [
        ({"failed_self_service": 3}, None, "failed self service 3 >= 3"),
        ({"repeat_contacts": 2}, None, "repeat contacts 2 >= 2"),
        ({"failed_self_service": 2, "repeat_contacts": 1}, None, None),
        ({}, {"reason": "complaint"}, "contact reason 'complaint'"),
        ({}, {"reason": "billing"}, None),
    ],
)
def test_service_recovery_fires_on_its_rules_and_overrides_sales(
    greedy: DecisionPolicy, signals: dict, context: dict | None, fires: str | None
) -> None:
    state = customer(signals={"yearly_value": 500.0, **signals})
    d = decide(greedy, state, "call_centre", TODAY, seed=0, context=context)
    if fires is None:
        assert d.actions[0].action == "retention_offer"
        assert "callback: service-recovery rules not met" in d.reasons
    else:
        # The callback (priority 40) beats nothing: the retention offer (priority 100) is overridden.
        assert d.actions[0].action == "callback" and d.actions[0].kind == "service_recovery"
        assert fires in d.reasons[0] and fires in d.prompt
        assert "retention_offer: service recovery overrides sales offers" in d.reasons
        assert "cross_sell_tv: service recovery overrides sales offers" in d.reasons


def test_a_missing_champion_degrades_to_the_fallback_said_in_the_answer(greedy: DecisionPolicy) -> None:
    no_models = customer(uplift=None, churn_risk=None, propensity={})
    d = decide(greedy, no_models, "email", TODAY, seed=0, policy_version="3")
    assert d.fallback and d.actions[0].action == "no_action" and d.probability == 1.0
    assert d.fallback_reason is not None
    assert "retention champion is missing" in d.fallback_reason and "propensity champion" in d.fallback_reason
    assert d.policy_version == "3" and d.prompt == "Nothing to offer."
    # Only the retention champion missing: cross-sell still decides, and says why retention dropped out.
    d = decide(greedy, customer(uplift=None), "email", TODAY, seed=0)
    assert d.actions[0].action == "cross_sell_tv" and not d.fallback
    assert "retention_offer: no uplift score (the retention champion is missing)" in d.reasons


def test_no_capacity_left_means_no_contact(greedy: DecisionPolicy) -> None:
    d = decide(greedy, customer(), "call_centre", TODAY, seed=0, capacity_left=0)
    assert d.fallback and d.actions[0].action == "no_action" and d.fallback_reason is not None
    assert "capacity" in d.fallback_reason and d.action_probabilities == {"no_action": 1.0}


def test_a_channel_without_daily_capacity_makes_no_contact(greedy: DecisionPolicy) -> None:
    closed = greedy.model_copy(update={"capacity": {**greedy.capacity, "email": 0}})
    d = decide(closed, customer(), "email", TODAY, seed=0)
    assert d.actions[0].action == "no_action" and d.fallback_reason == "email capacity reached for today"
    assert decide(closed, customer(), "email", TODAY, seed=0, capacity_left=3).actions[0].action == "retention_offer"


def test_max_actions_returns_the_next_best(policy: DecisionPolicy) -> None:
    two = policy.model_copy(update={"exploration": 0.0, "max_actions": 2})
    d = decide(two, customer(), "email", TODAY, seed=0)
    assert [c.action for c in d.actions] == ["retention_offer", "cross_sell_tv"]


# ------------------------------------------------------------------------------------------- exploration


def test_exploration_probabilities_sum_to_one_and_match_frequencies(policy: DecisionPolicy) -> None:
    state = customer()
    first = decide(policy, state, "email", TODAY, seed=0)
    probs = first.action_probabilities
    arms = ["retention_offer", "cross_sell_tv", "no_action"]
    assert set(probs) == set(arms) and math.isclose(sum(probs.values()), 1.0)
    assert probs["retention_offer"] == pytest.approx(0.9 + 0.1 / 3)
    assert probs["cross_sell_tv"] == probs["no_action"] == pytest.approx(0.1 / 3)
    n = 6000
    counts = dict.fromkeys(arms, 0)
    explored = 0
    for seed in range(n):
        d = decide(policy, state, "email", TODAY, seed=seed)
        counts[d.actions[0].action] += 1
        explored += d.explored
        assert d.probability == d.action_probabilities[d.actions[0].action]
        assert d.explored or d.actions[0].action == "retention_offer"
    for arm in arms:
        p = probs[arm]
        assert abs(counts[arm] / n - p) < 5 * math.sqrt(p * (1 - p) / n), (arm, counts)
    assert abs(explored / n - 0.1) < 5 * math.sqrt(0.1 * 0.9 / n)


def test_decisions_are_deterministic_given_the_seed(policy: DecisionPolicy) -> None:
    runs = [decide(policy, customer(), "email", TODAY, seed=s) for s in range(200)]
    again = [decide(policy, customer(), "email", TODAY, seed=s) for s in range(200)]
    assert runs == again
    assert len({r.actions[0].action for r in runs}) > 1  # some seeds explore


# ----------------------------------------------------------------------------------------------- batches


def test_batch_fills_capacity_with_the_best_priorities(greedy: DecisionPolicy) -> None:
    states = [customer(f"c{i}", uplift=0.05 * (i + 1), propensity={}) for i in range(5)]
    batch = decide_batch(greedy, states, "call_centre", TODAY, seed=0)
    chosen = {d.customer_key: d.actions[0].action for d in batch.decisions}
    assert chosen == {"c4": "retention_offer", "c3": "retention_offer", "c2": "no_action", "c1": "no_action",
                      "c0": "no_action"}  # fmt: skip
    left = [d for d in batch.decisions if d.actions[0].action == "no_action"]
    assert all(d.fallback and "capacity (2) taken" in (d.fallback_reason or "") for d in left)
    ev = [0.05 * (i + 1) * 500 - 5 for i in range(5)]
    assert batch.unconstrained_value == pytest.approx(sum(ev))
    assert batch.value == pytest.approx(ev[3] + ev[4])
    assert batch.value_given_up == pytest.approx(sum(ev[:3]))
    row = batch.allocation.set_index("action").loc["retention_offer"]
    assert int(row["count"]) == 2 and int(row["capacity"]) == 2 and row["channel"] == "call_centre"
    # The caller's remaining capacity wins over the policy's.
    more = decide_batch(greedy, states, "call_centre", TODAY, seed=0, capacity={"call_centre": 4})
    assert sum(d.actions[0].action == "retention_offer" for d in more.decisions) == 4


def test_batch_repairs_the_equity_floor_by_swapping(greedy: DecisionPolicy) -> None:
    # Men have the higher uplifts: unconstrained, capacity 4 goes to men only.
    states = [customer(f"m{i}", group="M", uplift=0.3 + 0.01 * i, propensity={}) for i in range(5)]
    states += [customer(f"f{i}", group="F", uplift=0.1 + 0.01 * i, propensity={}) for i in range(5)]
    batch = decide_batch(greedy, states, "call_centre", TODAY, seed=0, capacity={"call_centre": 4})
    given = {d.customer_key for d in batch.decisions if d.actions[0].action == "retention_offer"}
    assert len(given) == 4
    eq = batch.equity[batch.equity["kind"] == "retention_offer"].set_index("group")
    assert eq.loc["F", "allocated"] == 2 and eq.loc["M", "allocated"] == 2  # 2/5 vs 2/5 >= floor 0.8
    assert bool(eq["passed"].all()) and eq["ratio"].iloc[0] >= 0.8
    assert given == {"m4", "m3", "f4", "f3"}  # best of each group
    moved_in = [d for d in batch.decisions if d.customer_key in ("f4", "f3")]
    assert all("chosen to meet the equity floor" in d.reasons for d in moved_in)
    moved = [d for d in batch.decisions if d.customer_key in ("m2", "m1")]
    assert any("equity floor" in (d.fallback_reason or "") for d in moved)
    assert batch.value_given_up > 0


def test_equity_shortfall_within_noise_passes_and_beyond_fails(greedy: DecisionPolicy) -> None:
    from decisions.arbitration import equity_table

    groups = ["F"] * 10 + ["M"] * 10
    kinds = [{"retention_offer"}] * 20
    given = ["retention_offer"] * 5 + [""] * 5 + ["retention_offer"] * 7 + [""] * 3  # 0.5 vs 0.7: ratio 0.71
    eq = equity_table(greedy, groups, kinds, given)
    r = eq[eq["kind"] == "retention_offer"]
    assert r["ratio"].iloc[0] == pytest.approx(5 / 7) and bool(r["passed"].iloc[0])  # small groups: noise
    big_groups = ["F"] * 1000 + ["M"] * 1000
    big_given = ["retention_offer"] * 500 + [""] * 500 + ["retention_offer"] * 700 + [""] * 300
    eq = equity_table(greedy, big_groups, [{"retention_offer"}] * 2000, big_given)
    r = eq[eq["kind"] == "retention_offer"]
    assert r["p_value"].iloc[0] < 0.05 and not bool(r["passed"].iloc[0])


def test_batch_agrees_with_single_decisions(greedy: DecisionPolicy) -> None:
    states = [
        customer("a"),
        customer("b", uplift=None),
        customer("c", signals={"failed_self_service": 4}),
        customer("d", consent={}),
        customer("e", is_minor=True),
        customer("f", history=[("retention_offer", TODAY - dt.timedelta(days=3))]),
    ]
    batch = decide_batch(greedy, states, "email", TODAY, seed=0)
    for state, d in zip(states, batch.decisions, strict=True):
        single = decide(greedy, state, "email", TODAY, seed=0)
        assert dataclasses.asdict(d) == dataclasses.asdict(single), state.customer_key


def test_batch_refuses_a_customer_twice_and_bad_capacity(greedy: DecisionPolicy) -> None:
    with pytest.raises(ValueError, match=r"states\[1\]\.customer_key: 'a' appears twice"):
        decide_batch(greedy, [customer("a"), customer("a")], "email", TODAY, seed=0)
    with pytest.raises(ValueError, match="capacity: 'fax' is not a channel"):
        decide_batch(greedy, [customer("a")], "email", TODAY, seed=0, capacity={"fax": 1})
    with pytest.raises(ValueError, match="capacity.email: -1 is negative"):
        decide_batch(greedy, [customer("a")], "email", TODAY, seed=0, capacity={"email": -1})
    with pytest.raises(ValueError, match="seeds: 1 seeds for 2 customers"):
        decide_batch(greedy, [customer("a"), customer("b")], "email", TODAY, seed=0, seeds=[1])
    empty = decide_batch(greedy, [], "email", TODAY, seed=0)
    assert empty.decisions == [] and empty.value == 0 and empty.allocation.empty


def test_the_default_policy_decides_on_every_channel() -> None:
    policy = load_policy()
    state = customer(propensity={"ADD-STREAM": 0.3}, signals={"yearly_value": 400.0})
    for channel in ("web", "app", "call_centre", "email"):
        d = decide(policy, state, channel, TODAY, seed=0)
        assert math.isclose(sum(d.action_probabilities.values()), 1.0)
        assert d.actions[0].action in {a.name for a in policy.actions}


def _allocation_by_pandas(batch_decisions: list, groups: list, channel: str, limit: int):  # type: ignore[no-untyped-def]
    """The allocation table as `decide_batch` made it before it counted with dicts (a pandas group-by)."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            "action": [d.actions[0].action for d in batch_decisions],
            "kind": [d.actions[0].kind for d in batch_decisions],
            "group": ["unknown" if g is None else str(g) for g in groups],
        }
    )
    allocation = frame.groupby(["action", "kind", "group"], sort=True).size().rename("count").reset_index()
    allocation.insert(1, "channel", channel)
    allocation["capacity"] = limit
    return allocation


def _equity_by_pandas(policy: DecisionPolicy, groups: list, eligible_kinds: list, given: list):  # type: ignore[no-untyped-def]
    """The equity table as `_equity` made it before it counted with dicts (a pandas group-by per kind)."""
    import numpy as np
    import pandas as pd

    from decisions.arbitration import _EQUITY_COLUMNS, JUDGED_KINDS, _test_floor

    spec = policy.equity
    labels = np.array([str(g) for g in groups], dtype=object)
    known = np.array([g is not None for g in groups], dtype=bool)
    given_array = np.array(given, dtype=object)
    rows = []
    for kind in JUDGED_KINDS:
        mask = np.array([kind in kinds for kinds in eligible_kinds], dtype=bool) & known
        if not mask.any():
            continue
        counts = (
            pd.DataFrame({"group": labels[mask], "given": given_array[mask] == kind})
            .groupby("group", sort=True)["given"]
            .agg(["size", "sum"])
        )
        sizes = {str(g): int(k) for g, k in counts["size"].items()}
        sums = {str(g): int(k) for g, k in counts["sum"].items()}
        rates = {g: sums[g] / sizes[g] for g in sizes if sizes[g] >= spec.min_group_size}
        ratio, p_value = math.nan, math.nan
        if len(rates) >= 2 and max(rates.values()) > 0:
            low, high = min(rates, key=rates.__getitem__), max(rates, key=rates.__getitem__)
            ratio = rates[low] / rates[high]
            p_value = _test_floor(rates[low], sizes[low], rates[high], sizes[high], spec.floor)
        passed = bool(math.isnan(ratio) or ratio >= spec.floor or p_value >= spec.alpha)
        for g in sizes:
            size, k = sizes[g], sums[g]
            rows.append([kind, g, size, k, k / size, g in rates, ratio, spec.floor, p_value, passed])
    return pd.DataFrame(rows, columns=_EQUITY_COLUMNS)


@pytest.mark.parametrize(("channel", "capacity"), [("email", 10_000), ("call_centre", 150), ("web", 40)])
def test_batch_tables_equal_the_pandas_group_by_they_replace(channel: str, capacity: int) -> None:
    """The allocation and equity tables, counted with dicts, equal the pandas group-by's on a large synthetic batch.

    The packaged policy on 3,000 customers shaped like the default world's (benchmarks.bench_decide), some without
    a group; capacity binding on two channels, so the equity repair runs.
    """
    import pandas as pd

    from benchmarks.bench_decide import synthetic_states
    from decisions.arbitration import _OK, JUDGED_KINDS, _matrix, _plan

    policy = load_policy()
    states = [dataclasses.replace(s, group=None) if i % 9 == 0 else s for i, s in enumerate(synthetic_states(3000))]
    batch = decide_batch(policy, states, channel, TODAY, seed=3, capacity={channel: capacity})
    groups = [s.group for s in states]
    pd.testing.assert_frame_equal(batch.allocation, _allocation_by_pandas(batch.decisions, groups, channel, capacity))
    m = _matrix(_plan(policy, channel), states, TODAY, None)
    kinds = [a.kind for a in m.actions]
    codes = m.code.tolist()
    eligible_kinds = [{kinds[j] for j, c in enumerate(row) if c == _OK and kinds[j] in JUDGED_KINDS} for row in codes]
    given = [d.actions[0].kind for d in batch.decisions]
    want = _equity_by_pandas(policy, groups, eligible_kinds, given)
    pd.testing.assert_frame_equal(batch.equity, want)
    assert len(want) >= 4 and "cross_sell" in set(want["kind"])  # the tables are not empty
