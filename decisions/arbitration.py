"""Arbitration: which action a customer gets, and why (Pega's priority P x V x L, Salesforce's filter-sort-limit).

For one customer: eligibility (channel, minors, consent for the action's purpose, products held, contact
caps, cool-downs, the champion's score being there, service-recovery rules) -> candidates scored from the
champions (the retention offer by predicted uplift, so persuadable customers win over merely risky ones;
cross-sell by propensity x margin; service recovery from rules, overriding sales offers) -> priority
P x V x L -> the chosen action with its reasons and an agent prompt. A share `exploration` of decisions
picks a uniformly random eligible action; the probability of the logged action under that exploring
policy, and the whole distribution, travel with the decision for off-policy evaluation.

For a batch (a campaign): the same per customer, then the channel's daily capacity and the equity floor
are solved over the whole batch, and the value given up against the unconstrained choice is reported.

Everything here is pure: states in, decisions out; the randomness comes only from `seed`.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from decisions.policy import CHANNELS, SALES_KINDS, ActionSpec, DecisionPolicy, Purpose

JUDGED_KINDS = ("retention_offer", "cross_sell", "service_recovery")


@dataclass(frozen=True)
class CustomerState:
    """What arbitration knows about one customer at decision time (a missing champion: None or empty)."""

    customer_key: str
    consent: Mapping[Purpose, bool] = field(default_factory=dict)
    is_minor: bool = False
    group: str | None = None
    products_held: frozenset[str] = frozenset()
    churn_risk: float | None = None
    uplift: float | None = None
    propensity: Mapping[str, float] = field(default_factory=dict)
    margin: Mapping[str, float] = field(default_factory=dict)
    signals: Mapping[str, float] = field(default_factory=dict)
    history: Sequence[tuple[str, dt.date]] = ()


@dataclass
class Candidate:
    """An eligible action scored for one customer: priority = p x v x l."""

    action: str
    channel: str
    p: float
    v: float
    l: float  # noqa: E741 - the lever's letter in P x V x L
    priority: float
    reasons: list[str]
    kind: str = ""
    cost: float = 0.0
    product: str | None = None


@dataclass
class Decision:
    """The chosen action(s) for one customer on one channel, with what the log and the agent need."""

    customer_key: str
    channel: str
    actions: list[Candidate]
    probability: float
    explored: bool
    fallback: bool
    fallback_reason: str | None
    reasons: list[str]
    prompt: str
    policy_version: str | None
    action_probabilities: dict[str, float]


@dataclass
class BatchDecision:
    """A campaign's decisions with their allocation against capacity, value and equity."""

    decisions: list[Decision]
    allocation: pd.DataFrame
    value: float
    unconstrained_value: float
    value_given_up: float
    equity: pd.DataFrame


def expected_value(candidate: Candidate) -> float:
    """Expected net value of making the offer: p x v - cost (levers weigh priority, not value)."""
    return candidate.p * candidate.v - candidate.cost


# ---------------------------------------------------------------------------------------------- eligibility


@dataclass(frozen=True)
class _Plan:
    """A policy compiled for one channel: what every customer's arbitration on it reads."""

    on_channel: tuple[ActionSpec, ...]
    off_channel: dict[str, str]
    offered: dict[str, tuple[tuple[str, float], ...]]
    minors_reason: str


_PLANS: dict[tuple[int, str], tuple[DecisionPolicy, _Plan]] = {}


def _plan(policy: DecisionPolicy, channel: str) -> _Plan:
    """The policy compiled for `channel` (kept for the few policies in use; the policy is immutable)."""
    key = (id(policy), channel)
    hit = _PLANS.get(key)
    if hit is not None and hit[0] is policy:
        return hit[1]
    plan = _Plan(
        on_channel=tuple(a for a in policy.actions if channel in a.channels),
        off_channel={a.name: f"not offered on {channel}" for a in policy.actions if channel not in a.channels},
        offered={a.name: tuple(a.offered().items()) for a in policy.actions if a.kind == "cross_sell"},
        minors_reason=f"suppressed for minors (under {policy.minors.age_below})",
    )
    if len(_PLANS) >= 64:
        _PLANS.clear()
    _PLANS[key] = (policy, plan)
    return plan


def _contacts(history: Sequence[tuple[str, dt.date]]) -> dict[str, list[dt.date]]:
    """Past contact dates per action."""
    by_action: dict[str, list[dt.date]] = {}
    for action, day in history:
        by_action.setdefault(action, []).append(day)
    return by_action


def _rule_reason(
    plan: _Plan,
    action: ActionSpec,
    state: CustomerState,
    today: dt.date,
    contacts: Mapping[str, list[dt.date]],
) -> str | None:
    """Why `action` (on the channel) may not be offered; None when the rules allow it."""
    if action.kind == "none":
        return None
    if action.purpose is not None:
        if state.is_minor:
            return plan.minors_reason
        if not state.consent.get(action.purpose, False):
            return f"no consent for {action.purpose}"
    if action.kind == "cross_sell" and state.products_held:
        offered = plan.offered[action.name]
        if all(product in state.products_held for product, _ in offered):
            return f"already holds {offered[0][0]}" if len(offered) == 1 else "already holds every product offered"
    past = contacts.get(action.name)
    if past:
        since = today - dt.timedelta(days=action.window_days)
        recent = sum(1 for d in past if d > since)
        if recent >= action.max_per_customer:
            return f"contact cap: {recent} of {action.max_per_customer} in {action.window_days} days"
        if action.cooldown_days:
            last = max(past)
            if (today - last).days < action.cooldown_days:
                return f"cool-down: last on {last.isoformat()}, {action.cooldown_days} days between contacts"
    return None


def _fired(action: ActionSpec, state: CustomerState, context: Mapping[str, str] | None) -> list[str]:
    """The service-recovery triggers that fire for this customer (signal thresholds or the contact's reason)."""
    fired = []
    for signal, threshold in action.triggers.items():
        value = state.signals.get(signal)
        if value is not None and value >= threshold:
            fired.append(f"{signal.replace('_', ' ')} {value:g} >= {threshold:g}")
    if context and context.get("reason") in action.context_reasons:
        fired.append(f"contact reason {context['reason']!r}")
    return fired


def _eligible(plan: _Plan, state: CustomerState, today: dt.date) -> tuple[list[ActionSpec], dict[str, str]]:
    contacts = _contacts(state.history) if state.history else {}
    allowed: list[ActionSpec] = []
    refused = dict(plan.off_channel)
    for action in plan.on_channel:
        reason = _rule_reason(plan, action, state, today, contacts)
        if reason is None:
            allowed.append(action)
        else:
            refused[action.name] = reason
    return allowed, refused


def eligible(
    policy: DecisionPolicy, state: CustomerState, channel: str, today: dt.date
) -> tuple[list[ActionSpec], dict[str, str]]:
    """The actions the rules allow for this customer on `channel` today, and each other action's reason.

    Rules: the action runs on the channel; minors get no consent-based action; consent for the action's
    purpose (unknown consent arrives resolved by the caller); no cross-sell of what is held; the contact
    cap over `window_days` and the cool-down since the last contact. Scores and triggers are judged by
    `candidates`.
    """
    return _eligible(_plan(policy, channel), state, today)


def _best_product(offered: tuple[tuple[str, float], ...], state: CustomerState) -> tuple[str, float, float] | None:
    """The customer's best product of a cross-sell (not held, with a propensity): (product, p, v)."""
    best: tuple[str, float, float] | None = None
    top = -1.0
    held, propensity, margin = state.products_held, state.propensity, state.margin
    for product, value in offered:
        if product in held:
            continue
        p = propensity.get(product)
        if p is None:
            continue
        v = margin.get(product, value)
        if p * v > top:
            top, best = p * v, (product, float(p), float(v))
    return best


def _score(
    policy: DecisionPolicy,
    state: CustomerState,
    channel: str,
    today: dt.date,
    context: Mapping[str, str] | None,
) -> tuple[list[Candidate], list[ActionSpec], dict[str, str], dict[str, str]]:
    """Candidates (sorted), the no-action arms, every dropped action's reason, and prompt fields."""
    plan = _plan(policy, channel)
    allowed, dropped = _eligible(plan, state, today)
    found: list[Candidate] = []
    idle: list[ActionSpec] = []
    fields: dict[str, str] = {}
    product: str | None = None
    for action in allowed:
        kind = action.kind
        if kind == "none":
            idle.append(action)
            continue
        product = None
        if kind == "retention_offer":
            if state.uplift is None:
                dropped[action.name] = "no uplift score (the retention champion is missing)"
                continue
            p = max(float(state.uplift), 0.0)
            v = _value(action, state)
            if p <= 0:
                dropped[action.name] = f"uplift {state.uplift:.3f} <= 0: not persuadable"
                continue
            reasons = [f"uplift {p:.3f} x value {v:.0f} x lever {action.lever:g}"]
            if state.churn_risk is not None:
                reasons.append(f"churn risk {state.churn_risk:.2f}")
        elif kind == "cross_sell":
            best = _best_product(plan.offered[action.name], state)
            if best is None:
                dropped[action.name] = "no propensity score (the propensity champion is missing)"
                continue
            product, p, v = best
            reasons = [f"{product}: propensity {p:.3f} x margin {v:.0f} x lever {action.lever:g}"]
        else:  # service_recovery
            fired = _fired(action, state, context)
            if not fired:
                dropped[action.name] = "service-recovery rules not met"
                continue
            p, v = 1.0, action.value
            reasons = [f"service recovery: {'; '.join(fired)}"]
            fields[action.name] = "; ".join(fired)
        if p * v - action.cost <= 0:
            dropped[action.name] = f"expected value {p * v:.2f} does not cover the cost {action.cost:g}"
            continue
        priority = p * v * action.lever
        found.append(Candidate(action.name, channel, p, v, action.lever, priority, reasons, kind, action.cost, product))
    if len(found) > 1 and any(c.kind == "service_recovery" for c in found):
        for c in found:
            if c.kind in SALES_KINDS:
                dropped[c.action] = "service recovery overrides sales offers"
        found = [c for c in found if c.kind not in SALES_KINDS]
    found.sort(key=lambda c: (-c.priority, c.action))
    return found, idle, dropped, fields


def _value(action: ActionSpec, state: CustomerState) -> float:
    """V: the customer's own value of one success when the policy names a signal for it, else the fixed value."""
    if action.value_signal is not None:
        own = state.signals.get(action.value_signal)
        if own is not None and own > 0 and math.isfinite(own):
            return float(own)
    return action.value


def candidates(
    policy: DecisionPolicy,
    state: CustomerState,
    channel: str,
    today: dt.date,
    context: Mapping[str, str] | None = None,
) -> list[Candidate]:
    """Eligible actions scored P x V x L, best first; a fired service-recovery rule removes the sales offers."""
    return _score(policy, state, channel, today, context)[0]


# ------------------------------------------------------------------------------------------------- deciding


@dataclass
class _Evaluated:
    """One customer's arbitration before exploration and batch constraints."""

    state: CustomerState
    found: list[Candidate]
    idle: list[ActionSpec]
    dropped: dict[str, str]
    fields: dict[str, str]

    def idle_arms(self, fallback: str) -> list[str]:
        """The no-contact arms (the fallback always among them)."""
        arms = [a.name for a in self.idle]
        if fallback not in arms:
            arms.append(fallback)
        return arms

    def arms(self, fallback: str) -> list[str]:
        """Every action exploration may pick: candidates, then the no-contact arms."""
        return [c.action for c in self.found] + self.idle_arms(fallback)


def _evaluate(
    policy: DecisionPolicy,
    state: CustomerState,
    channel: str,
    today: dt.date,
    context: Mapping[str, str] | None,
) -> _Evaluated:
    found, idle, dropped, fields = _score(policy, state, channel, today, context)
    return _Evaluated(state, found, idle, dropped, fields)


def _fallback_reason(ev: _Evaluated) -> str:
    """Why nothing is left: a missing champion is said as such."""
    missing = sorted({r.split("(")[1].rstrip(")") for r in ev.dropped.values() if "champion is missing" in r})
    if missing:
        return f"{' and '.join(missing)}; no other action eligible"
    return "no eligible action"


class _SafeFields(dict[str, Any]):
    """Prompt fields: an unknown {placeholder} stays as written rather than failing the decision."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


_FORMATTER = string.Formatter()


def _prompt(
    policy: DecisionPolicy, action: str, ev: _Evaluated, channel: str, context: Mapping[str, str] | None
) -> str:
    """The chosen action's agent prompt with its placeholders filled (unknown ones left as written)."""
    spec = policy.action(action)
    if "{" not in spec.prompt:
        return spec.prompt
    state = ev.state
    values = _SafeFields(dict(context or {}))
    values.update(
        customer_key=state.customer_key,
        channel=channel,
        action=action,
        product=next((c.product or "" for c in ev.found if c.action == action), spec.product or ""),
        uplift="unknown" if state.uplift is None else f"{state.uplift:.2f}",
        churn_risk="unknown" if state.churn_risk is None else f"{state.churn_risk:.2f}",
        trigger=ev.fields.get(action, (context or {}).get("reason", "")),
    )
    try:
        return _FORMATTER.vformat(spec.prompt, (), values)
    except (ValueError, IndexError, AttributeError, KeyError):  # a malformed placeholder: the text as written
        return spec.prompt


def _idle_candidate(policy: DecisionPolicy, action: str, channel: str) -> Candidate:
    kind = policy.action(action).kind
    return Candidate(action, channel, 0.0, 0.0, 1.0, 0.0, [], kind, 0.0)


def _distribution(arms: list[str], target: str, epsilon: float) -> dict[str, float]:
    """Epsilon-greedy: (1 - eps) on the target plus eps spread evenly over every arm."""
    share = epsilon / len(arms)
    probs = dict.fromkeys(arms, share)
    probs[target] = probs.get(target, 0.0) + (1.0 - epsilon)
    return probs


def _build(
    policy: DecisionPolicy,
    ev: _Evaluated,
    channel: str,
    arms: list[str],
    target: str,
    explore_draw: float,
    arm_draw: float,
    *,
    fallback_reason: str | None,
    extra: Sequence[str],
    context: Mapping[str, str] | None,
    policy_version: str | None,
) -> Decision:
    """One decision from its arms, its target action and two uniform draws (explore?, which arm?)."""
    epsilon = policy.exploration if len(arms) > 1 else 0.0
    probs = _distribution(arms, target, epsilon)
    explored = explore_draw < epsilon
    chosen = arms[min(int(arm_draw * len(arms)), len(arms) - 1)] if explored else target
    by_name = {c.action: c for c in ev.found}
    first = by_name.get(chosen) or _idle_candidate(policy, chosen, channel)
    actions = [first]
    if first.kind not in ("none", "") and policy.max_actions > 1:
        actions += [c for c in ev.found if c.action != chosen][: policy.max_actions - 1]
    is_fallback = not explored and fallback_reason is not None
    reasons = list(first.reasons)
    if explored:
        reasons.append(f"explored: uniformly random among {len(arms)} eligible actions")
    if is_fallback:
        reasons.append(f"fallback {chosen}: {fallback_reason}")
    reasons += extra
    reasons += [f"{name}: {why}" for name, why in ev.dropped.items()]
    return Decision(
        customer_key=ev.state.customer_key,
        channel=channel,
        actions=actions,
        probability=probs[chosen],
        explored=explored,
        fallback=is_fallback,
        fallback_reason=fallback_reason if is_fallback else None,
        reasons=reasons,
        prompt=_prompt(policy, chosen, ev, channel, context),
        policy_version=policy_version,
        action_probabilities=probs,
    )


def _check_channel(channel: str) -> None:
    if channel not in CHANNELS:
        raise ValueError(f"channel: {channel!r} is not a channel (one of {', '.join(CHANNELS)})")


def decide(
    policy: DecisionPolicy,
    state: CustomerState,
    channel: str,
    today: dt.date,
    *,
    seed: int,
    context: Mapping[str, str] | None = None,
    policy_version: str | None = None,
    capacity_left: int | None = None,
) -> Decision:
    """Decide one customer's next best action on `channel` (deterministic given `seed`).

    `capacity_left` is the channel's remaining contacts today when the caller counts them: at 0 only
    no-contact actions remain. Nothing eligible (or a missing champion) -> the policy's fallback, said
    in `fallback_reason`.
    """
    _check_channel(channel)
    ev = _evaluate(policy, state, channel, today, context)
    if capacity_left is not None and capacity_left <= 0 and ev.found:
        ev.dropped.update({c.action: f"{channel} capacity reached for today" for c in ev.found})
        ev.found = []
        reason: str | None = f"{channel} capacity reached for today"
        arms = ev.idle_arms(policy.fallback)
    else:
        reason = None if ev.found else _fallback_reason(ev)
        arms = ev.arms(policy.fallback)
    target = ev.found[0].action if ev.found else policy.fallback
    draws = random.Random(seed)
    explore_draw, arm_draw = draws.random(), draws.random()
    return _build(
        policy,
        ev,
        channel,
        arms,
        target,
        explore_draw,
        arm_draw,
        fallback_reason=reason,
        extra=[],
        context=context,
        policy_version=policy_version,
    )


# -------------------------------------------------------------------------------------------------- batches


def _batch_capacity(policy: DecisionPolicy, channel: str, capacity: Mapping[str, int] | None) -> int:
    """The channel's contacts for this batch: the caller's figure when given, else the policy's daily capacity."""
    if capacity:
        for key, value in capacity.items():
            if key not in CHANNELS:
                raise ValueError(f"capacity: {key!r} is not a channel (one of {', '.join(CHANNELS)})")
            if value < 0:
                raise ValueError(f"capacity.{key}: {value} is negative")
        if channel in capacity:
            return int(capacity[channel])
    limits = {str(k): v for k, v in policy.capacity.items()}
    return int(limits.get(channel, 0))


def _test_floor(rate_low: float, n_low: int, rate_high: float, n_high: int, floor: float) -> float:
    """One-sided p-value of 'the low group's rate is below floor x the high group's' (a two-proportion z-test)."""
    gap = floor * rate_high - rate_low
    se = math.sqrt(floor**2 * rate_high * (1 - rate_high) / n_high + rate_low * (1 - rate_low) / n_low)
    if se == 0:
        return 0.0 if gap > 0 else 1.0
    return 0.5 * math.erfc((gap / se) / math.sqrt(2))


def equity_table(
    policy: DecisionPolicy, groups: Sequence[str | None], eligible_kinds: Sequence[set[str]], given_kinds: Sequence[str]
) -> pd.DataFrame:
    """Allocation rate per group and action kind (allocated / eligible), the min/max ratio, and the floor test.

    A kind passes when the ratio reaches the floor, or its shortfall is within sampling noise (the one-sided
    test's p-value >= alpha). Groups with fewer eligible customers than `min_group_size` are shown, not judged.
    """
    spec = policy.equity
    rows = []
    for kind in JUDGED_KINDS:
        counts: dict[str, list[int]] = {}
        for g, kinds, given in zip(groups, eligible_kinds, given_kinds, strict=True):
            if g is None or kind not in kinds:
                continue
            c = counts.setdefault(g, [0, 0])
            c[0] += 1
            c[1] += given == kind
        judged = {g: c for g, c in counts.items() if c[0] >= spec.min_group_size}
        rates = {g: c[1] / c[0] for g, c in judged.items()}
        ratio, p_value = float("nan"), float("nan")
        if len(rates) >= 2 and max(rates.values()) > 0:
            low = min(rates, key=lambda g: rates[g])
            high = max(rates, key=lambda g: rates[g])
            ratio = rates[low] / rates[high]
            p_value = _test_floor(rates[low], judged[low][0], rates[high], judged[high][0], spec.floor)
        passed = bool(math.isnan(ratio) or ratio >= spec.floor or p_value >= spec.alpha)
        for g in sorted(counts):
            n, k = counts[g]
            rows.append(
                {
                    "kind": kind,
                    "group": g,
                    "eligible": n,
                    "allocated": k,
                    "rate": k / n,
                    "judged": g in judged,
                    "ratio": ratio,
                    "floor": spec.floor,
                    "p_value": p_value,
                    "passed": passed,
                }
            )
    columns = ["kind", "group", "eligible", "allocated", "rate", "judged", "ratio", "floor", "p_value", "passed"]
    return pd.DataFrame(rows, columns=columns)


def _repair_equity(
    policy: DecisionPolicy,
    evs: Sequence[_Evaluated],
    target: list[Candidate | None],
    capacity: int,
) -> dict[int, str]:
    """Swap customers so each action kind's allocation-rate ratio across groups reaches the floor.

    The best-priority uncontacted customer of the under-served group takes the slot of the lowest-priority
    contacted customer of that kind in the best-served group (capacity stays whole). Returns the customers
    moved out, with why. Stops when no such swap exists (the equity table then shows the kind failing).
    """
    spec = policy.equity
    moved_out: dict[int, str] = {}
    contacted = sum(t is not None for t in target)
    for kind in JUDGED_KINDS:
        best: dict[int, Candidate] = {}
        for i, ev in enumerate(evs):
            if ev.state.group is None:
                continue
            for c in ev.found:
                if c.kind == kind:
                    best[i] = c
                    break
        size: dict[str, int] = {}
        for i in best:
            g = str(evs[i].state.group)
            size[g] = size.get(g, 0) + 1
        judged = {g for g, n in size.items() if n >= spec.min_group_size}
        if len(judged) < 2:
            continue
        given = dict.fromkeys(judged, 0)
        for i in best:
            t = target[i]
            g = str(evs[i].state.group)
            if g in judged and t is not None and t.kind == kind:
                given[g] += 1
        waiting: dict[str, list[int]] = {g: [] for g in judged}  # uncontacted, best kind-priority last
        for i in best:
            g = str(evs[i].state.group)
            if g in judged and target[i] is None:
                waiting[g].append(i)
        for g in waiting:
            waiting[g].sort(key=lambda i: (best[i].priority, -i))
        while True:
            rates = {g: given[g] / size[g] for g in judged}
            high = max(sorted(rates), key=lambda g: rates[g])
            low = min(sorted(rates), key=lambda g: rates[g])
            if rates[high] == 0 or rates[low] / rates[high] >= spec.floor:
                break
            while waiting[low] and target[waiting[low][-1]] is not None:
                waiting[low].pop()
            if not waiting[low]:
                break
            newcomer = waiting[low].pop()
            if contacted >= capacity:
                out = [
                    i
                    for i in best
                    if str(evs[i].state.group) == high and (t := target[i]) is not None and t.kind == kind
                ]
                if not out:
                    break
                leaving = min(out, key=lambda i: (target[i].priority, -i))  # type: ignore[union-attr]
                target[leaving] = None
                moved_out[leaving] = f"equity floor for {kind}: slot given to an under-served group"
                given[high] -= 1
                contacted -= 1
            target[newcomer] = best[newcomer]
            given[low] += 1
            contacted += 1
    return moved_out


def decide_batch(
    policy: DecisionPolicy,
    states: Sequence[CustomerState],
    channel: str,
    today: dt.date,
    *,
    seed: int,
    capacity: Mapping[str, int] | None = None,
    context: Mapping[str, str] | None = None,
    policy_version: str | None = None,
) -> BatchDecision:
    """Decide a campaign: per-customer arbitration, then channel capacity and equity floors over the batch.

    The best-priority customers take the channel's capacity (greedy by priority is optimal for one channel
    with one contact each); the equity floor is repaired by swaps; the rest get the fallback, said in each
    decision. Only contacted customers explore, and only among their own eligible actions, so exploration
    never breaks capacity, caps, cool-downs or consent. A customer may appear once per batch.
    """
    _check_channel(channel)
    limit = _batch_capacity(policy, channel, capacity)
    seen: set[str] = set()
    for i, s in enumerate(states):
        if s.customer_key in seen:
            raise ValueError(f"states[{i}].customer_key: {s.customer_key!r} appears twice in the batch")
        seen.add(s.customer_key)
    evs = [_evaluate(policy, s, channel, today, context) for s in states]
    n = len(evs)
    wanting = [i for i, ev in enumerate(evs) if ev.found]
    wanting.sort(key=lambda i: (-evs[i].found[0].priority, i))
    target: list[Candidate | None] = [None] * n
    for i in wanting[:limit]:
        target[i] = evs[i].found[0]
    moved = _repair_equity(policy, evs, target, limit)
    unconstrained = sum(expected_value(evs[i].found[0]) for i in wanting)

    draws = np.random.default_rng(seed).random((n, 2))
    decisions: list[Decision] = []
    for i, ev in enumerate(evs):
        t = target[i]
        if t is not None:
            arms = ev.arms(policy.fallback)
            extra = [] if t is ev.found[0] else ["chosen to meet the equity floor"]
            reason = None
            name = t.action
        else:
            arms = ev.idle_arms(policy.fallback)
            name = policy.fallback
            extra = []
            if i in moved:
                reason = moved[i]
            elif ev.found:
                reason = f"{channel} capacity ({limit}) taken by higher-priority customers"
            else:
                reason = _fallback_reason(ev)
        decisions.append(
            _build(
                policy,
                ev,
                channel,
                arms,
                name,
                float(draws[i, 0]),
                float(draws[i, 1]),
                fallback_reason=reason,
                extra=extra,
                context=context,
                policy_version=policy_version,
            )
        )
    value = sum(expected_value(c) for d in decisions for c in d.actions if c.kind not in ("none", ""))
    groups = [s.group for s in states]
    frame = pd.DataFrame(
        {
            "action": [d.actions[0].action for d in decisions],
            "kind": [d.actions[0].kind for d in decisions],
            "group": [g if g is not None else "unknown" for g in groups],
        }
    )
    allocation = (
        frame.groupby(["action", "kind", "group"], sort=True).size().rename("count").reset_index()
        if n
        else pd.DataFrame(columns=["action", "kind", "group", "count"])
    )
    allocation.insert(1, "channel", channel)
    allocation["capacity"] = limit
    equity = equity_table(
        policy,
        groups,
        [{c.kind for c in ev.found} for ev in evs],
        [d.actions[0].kind for d in decisions],
    )
    return BatchDecision(
        decisions=decisions,
        allocation=allocation,
        value=float(value),
        unconstrained_value=float(unconstrained),
        value_given_up=float(unconstrained - value),
        equity=equity,
    )
