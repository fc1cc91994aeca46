"""Property tests: no decision, single or batch, ever breaks channel capacity, a contact cap, a cool-down,
consent, the minors rule or a held product; exploration is a proper distribution; batch = single when free."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decisions.arbitration import CustomerState, Decision, decide, decide_batch
from decisions.policy import CHANNELS, DecisionPolicy, load_policy
from tests.test_decisions_arbitration import POLICY_TEXT

TODAY = dt.date(2026, 12, 1)
TEST_POLICY = load_policy(POLICY_TEXT)
DEFAULT_POLICY = load_policy()
PRODUCTS = ["TV1", "TV2", "ADD-STREAM", "ADD-MUSIC", "ADD-CLOUD", "BST-DATA"]


def _names(policy: DecisionPolicy) -> list[str]:
    return [a.name for a in policy.actions]


@st.composite
def states(draw: st.DrawFn, policy: DecisionPolicy, key: str) -> CustomerState:
    maybe = st.none() | st.floats(-0.3, 0.5, allow_nan=False)
    scores = st.dictionaries(st.sampled_from(PRODUCTS), st.floats(0, 1, allow_nan=False), max_size=len(PRODUCTS))
    history = st.lists(
        st.tuples(st.sampled_from(_names(policy)), st.integers(-2, 120).map(lambda d: TODAY - dt.timedelta(days=d))),
        max_size=6,
    )
    return CustomerState(
        customer_key=key,
        consent=draw(st.dictionaries(st.sampled_from(["profiling", "marketing", "analytics"]), st.booleans())),
        is_minor=draw(st.booleans()),
        group=draw(st.sampled_from(["F", "M", "X", None])),
        products_held=frozenset(draw(st.sets(st.sampled_from(PRODUCTS)))),
        churn_risk=draw(maybe),
        uplift=draw(maybe),
        propensity=draw(st.none() | scores) or {},
        margin=draw(st.dictionaries(st.sampled_from(PRODUCTS), st.floats(0, 200, allow_nan=False), max_size=2)),
        signals=draw(
            st.dictionaries(
                st.sampled_from(["failed_self_service", "repeat_contacts", "billing_tickets", "yearly_value"]),
                st.floats(0, 1000, allow_nan=False),
            )
        ),
        history=draw(history),
    )


@st.composite
def worlds(draw: st.DrawFn) -> tuple[DecisionPolicy, list[CustomerState], str, int, float]:
    base = draw(st.sampled_from([TEST_POLICY, DEFAULT_POLICY]))
    target = draw(st.sampled_from(["uplift", "churn_risk"]))
    actions = [a.model_copy(update={"target": target}) if a.kind == "retention_offer" else a for a in base.actions]
    policy = base.model_copy(
        update={
            "actions": actions,
            "exploration": draw(st.sampled_from([0.0, 0.1, 0.5])),
            "max_actions": draw(st.integers(1, 3)),
        }
    )
    n = draw(st.integers(0, 16))
    batch = [draw(states(policy, f"c{i}")) for i in range(n)]
    return policy, batch, draw(st.sampled_from(CHANNELS)), draw(st.integers(0, 2**32)), draw(st.floats(0.3, 1.0))


def assert_allowed(policy: DecisionPolicy, state: CustomerState, d: Decision, channel: str) -> None:
    """Every action the decision makes respects the customer's rules."""
    assert d.customer_key == state.customer_key and d.channel == channel
    assert math.isclose(sum(d.action_probabilities.values()), 1.0)
    assert all(p >= 0 for p in d.action_probabilities.values()) and d.probability > 0
    if policy.exploration > 0:  # exploring: every eligible action has a chance (OPE needs the support)
        assert all(p > 0 for p in d.action_probabilities.values())
    assert d.probability == d.action_probabilities[d.actions[0].action]
    assert len(d.actions) <= policy.max_actions
    for c in d.actions:
        spec = policy.action(c.action)
        assert channel in spec.channels, (c.action, channel)
        if spec.kind == "none":
            continue
        if spec.purpose is not None:
            assert state.consent.get(spec.purpose) is True, (c.action, state.consent)
            assert not state.is_minor
        if spec.kind == "cross_sell":
            assert c.product is not None and c.product not in state.products_held
            assert c.product in spec.offered()
        past = [day for name, day in state.history if name == c.action]
        in_window = [day for day in past if (TODAY - day).days < spec.window_days]
        assert len(in_window) < spec.max_per_customer, (c.action, state.history)
        assert all((TODAY - day).days >= spec.cooldown_days for day in past), (c.action, state.history)
        assert c.priority > 0 and c.p * c.v - c.cost > 0
        if spec.kind == "retention_offer":
            score = state.uplift if spec.target == "uplift" else state.churn_risk
            assert score is not None and score > 0


_SETTINGS = settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_FEWER = settings(_SETTINGS, max_examples=30)  # equality with single decisions: each example decides twice


@_SETTINGS
@given(worlds(), st.sampled_from([None, {"reason": "complaint"}, {"reason": "billing_error"}]))
def test_a_single_decision_never_breaks_a_rule(world: tuple, context: dict | None) -> None:
    policy, batch, channel, seed, _ = world
    for state in batch[:5]:
        d = decide(policy, state, channel, TODAY, seed=seed, context=context)
        assert_allowed(policy, state, d, channel)
        none_left = decide(policy, state, channel, TODAY, seed=seed, context=context, capacity_left=0)
        assert_allowed(policy, state, none_left, channel)
        assert all(policy.action(c.action).kind == "none" for c in none_left.actions)


@_SETTINGS
@given(worlds())
def test_a_batch_never_breaks_capacity_or_a_rule(world: tuple) -> None:
    policy, batch, channel, seed, share = world
    capacity = int(len(batch) * share * 0.5)
    result = decide_batch(policy, batch, channel, TODAY, seed=seed, capacity={channel: capacity})
    assert len(result.decisions) == len(batch)
    contacts = [d for d in result.decisions if policy.action(d.actions[0].action).kind != "none"]
    assert len(contacts) <= capacity
    for state, d in zip(batch, result.decisions, strict=True):
        assert_allowed(policy, state, d, channel)
    assert int(result.allocation["count"].sum()) == len(batch)
    assert math.isclose(result.value_given_up, result.unconstrained_value - result.value, abs_tol=1e-9)


@_FEWER
@given(worlds())
def test_an_unconstrained_greedy_batch_is_the_single_decisions(world: tuple) -> None:
    policy, batch, channel, seed, _ = world
    greedy = policy.model_copy(update={"exploration": 0.0})
    result = decide_batch(greedy, batch, channel, TODAY, seed=seed, capacity={channel: len(batch)})
    for state, d in zip(batch, result.decisions, strict=True):
        single = decide(greedy, state, channel, TODAY, seed=seed)
        assert dataclasses.asdict(d) == dataclasses.asdict(single)


@_SETTINGS
@given(worlds())
def test_capacity_goes_to_the_best_priorities(world: tuple) -> None:
    """Without equity groups and exploration, the contacted set maximises the total priority (unit weights)."""
    policy, batch, channel, seed, share = world
    greedy = policy.model_copy(update={"exploration": 0.0})
    batch = [dataclasses.replace(s, group=None) for s in batch]
    capacity = int(len(batch) * share * 0.5)
    result = decide_batch(greedy, batch, channel, TODAY, seed=seed, capacity={channel: capacity})
    contacted, waiting = [], []
    for state, d in zip(batch, result.decisions, strict=True):
        best = decide(greedy, state, channel, TODAY, seed=seed)
        if d.actions[0].kind != "none":
            assert d.actions[0] == best.actions[0]
            contacted.append(d.actions[0].priority)
        elif best.actions[0].kind != "none":
            waiting.append(best.actions[0].priority)
            assert d.fallback and "capacity" in (d.fallback_reason or "")
    assert len(contacted) == min(capacity, len(contacted) + len(waiting))
    if contacted and waiting:
        assert min(contacted) >= max(waiting)


@_FEWER
@given(worlds())
def test_a_batch_with_a_seed_per_customer_replays_each_decision(world: tuple) -> None:
    policy, batch, channel, seed, _ = world
    seeds = [seed + i for i in range(len(batch))]
    result = decide_batch(policy, batch, channel, TODAY, seed=0, seeds=seeds, capacity={channel: len(batch)})
    for state, d, s in zip(batch, result.decisions, seeds, strict=True):
        assert dataclasses.asdict(d) == dataclasses.asdict(decide(policy, state, channel, TODAY, seed=s))
