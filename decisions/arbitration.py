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
A decision is one contact whatever its number of actions. Customers the capacity leaves out get the
fallback with probability 1 (they do not explore: an explored contact would break the capacity), so
off-policy estimates over a campaign's log speak for the contacted customers' choices.

Everything here is pure: states in, decisions out; the randomness comes only from `seed`.
"""

from __future__ import annotations

import datetime as dt
import functools
import heapq
import itertools
import math
import random
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from decisions.policy import CHANNELS, SALES_KINDS, ActionSpec, DecisionPolicy, Purpose

JUDGED_KINDS = ("retention_offer", "cross_sell", "service_recovery")


@dataclass(frozen=True, slots=True)
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


@dataclass(slots=True)
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


@dataclass(slots=True)
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

MISSING_UPLIFT = "no uplift score (the retention champion is missing)"
MISSING_CHURN = "no churn score (the churn champion is missing)"
MISSING_PROPENSITY = "no propensity score (the propensity champion is missing)"
RULES_NOT_MET = "service-recovery rules not met"
OVERRIDDEN = "service recovery overrides sales offers"
NOTHING_ELIGIBLE = "no eligible action"


@dataclass(frozen=True)
class _Plan:
    """A policy compiled for one channel: what every customer's arbitration on it reads."""

    channel: str
    on_channel: tuple[ActionSpec, ...]  # policy order
    off_channel: dict[str, str]
    offered: dict[str, tuple[tuple[str, float], ...]]
    order: dict[str, int]  # action name -> position in the policy (reasons are listed in this order)
    idle: tuple[str, ...]  # no-contact arms: the channel's 'none' actions, the fallback always among them
    specs: dict[str, ActionSpec]
    minors_reason: str


_PLANS: dict[tuple[int, str], tuple[DecisionPolicy, _Plan]] = {}


def _plan(policy: DecisionPolicy, channel: str) -> _Plan:
    """The policy compiled for `channel` (kept for the few policies in use; a policy is immutable)."""
    key = (id(policy), channel)
    hit = _PLANS.get(key)
    if hit is not None and hit[0] is policy:
        return hit[1]
    idle = [a.name for a in policy.actions if a.kind == "none" and channel in a.channels]
    if policy.fallback not in idle:
        idle.append(policy.fallback)
    plan = _Plan(
        channel=channel,
        on_channel=tuple(a for a in policy.actions if channel in a.channels),
        off_channel={a.name: f"not offered on {channel}" for a in policy.actions if channel not in a.channels},
        offered={a.name: tuple(a.offered().items()) for a in policy.actions if a.kind == "cross_sell"},
        order={a.name: i for i, a in enumerate(policy.actions)},
        idle=tuple(idle),
        specs={a.name: a for a in policy.actions},
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
        by_action.setdefault(action, []).append(day.date() if isinstance(day, dt.datetime) else day)
    return by_action


def _cap_reason(recent: int, action: ActionSpec) -> str:
    return f"contact cap: {recent} of {action.max_per_customer} in {action.window_days} days"


def _cooldown_reason(last: dt.date, action: ActionSpec) -> str:
    return f"cool-down: last on {last.isoformat()}, {action.cooldown_days} days between contacts"


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
            return _cap_reason(recent, action)
        if action.cooldown_days:
            last = max(past)
            if (today - last).days < action.cooldown_days:
                return _cooldown_reason(last, action)
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


def _eligible(
    plan: _Plan, state: CustomerState, today: dt.date, withheld: Mapping[str, str] | None = None
) -> tuple[list[ActionSpec], dict[str, str]]:
    contacts = _contacts(state.history) if state.history else {}
    allowed: list[ActionSpec] = []
    refused = dict(plan.off_channel)
    for action in plan.on_channel:
        if withheld and action.name in withheld and action.kind != "none":
            refused[action.name] = withheld[action.name]
            continue
        reason = _rule_reason(plan, action, state, today, contacts)
        if reason is None:
            allowed.append(action)
        else:
            refused[action.name] = reason
    return allowed, refused


def eligible(
    policy: DecisionPolicy,
    state: CustomerState,
    channel: str,
    today: dt.date,
    withheld: Mapping[str, str] | None = None,
) -> tuple[list[ActionSpec], dict[str, str]]:
    """The actions the rules allow for this customer on `channel` today, and each other action's reason.

    Rules: the action runs on the channel; minors get no consent-based action; consent for the action's
    purpose (unknown consent arrives resolved by the caller); no cross-sell of what is held; the contact
    cap over `window_days` and the cool-down since the last contact. Scores and triggers are judged by
    `candidates`. `withheld`: actions the caller withholds from this customer (e.g. an experiment's
    control arm), each with the reason to say; a no-action arm is never withheld.
    """
    return _eligible(_plan(policy, channel), state, today, withheld)


def _best_product(offered: tuple[tuple[str, float], ...], state: CustomerState) -> tuple[str, float, float] | None:
    """The customer's best product of a cross-sell (not held, with a propensity): (product, p, v)."""
    best: tuple[str, float, float] | None = None
    top = -math.inf
    held, propensity, margin = state.products_held, state.propensity, state.margin
    for product, value in offered:
        if product in held:
            continue
        p = propensity.get(product)
        if p is None or p != p:  # absent or NaN: no score for it
            continue
        v = margin.get(product)
        if v is None or v != v:  # no margin given for it: the policy's value
            v = value
        if p * v > top:
            top, best = p * v, (product, float(p), float(v))
    return best


def _value(action: ActionSpec, state: CustomerState) -> float:
    """V: the customer's own value of one success when the policy names a signal for it, else the fixed value."""
    if action.value_signal is not None:
        own = state.signals.get(action.value_signal)
        if own is not None and own > 0 and math.isfinite(own):
            return float(own)
    return action.value


def _retention_reasons(action: ActionSpec, p: float, v: float, churn_risk: float | None) -> list[str]:
    if action.target == "churn_risk":
        return [f"churn risk {p:.3f} x value {v:.0f} x lever {action.lever:g}"]
    reasons = [f"uplift {p:.3f} x value {v:.0f} x lever {action.lever:g}"]
    if churn_risk is not None:
        reasons.append(f"churn risk {churn_risk:.2f}")
    return reasons


def _not_persuadable(action: ActionSpec, score: float) -> str:
    if action.target == "churn_risk":
        return f"churn risk {score:.3f} <= 0"
    return f"uplift {score:.3f} <= 0: not persuadable"


def _cross_sell_reasons(product: str, p: float, v: float, lever: float) -> list[str]:
    return [f"{product}: propensity {p:.3f} x margin {v:.0f} x lever {lever:g}"]


def _cost_reason(p: float, v: float, action: ActionSpec) -> str:
    return _cost_text(p * v, action)


def _cost_text(value: float, action: ActionSpec) -> str:
    return f"expected value {value:.2f} does not cover the cost {action.cost:g}"


@dataclass
class _Scored:
    """One customer's arbitration before exploration and batch constraints (the one-customer path)."""

    found: list[Candidate]  # best first
    dropped: dict[str, str]  # in policy order


def _score(
    policy: DecisionPolicy,
    state: CustomerState,
    channel: str,
    today: dt.date,
    context: Mapping[str, str] | None,
    withheld: Mapping[str, str] | None = None,
) -> _Scored:
    """Eligible actions scored P x V x L (best first), and every other action's reason (in policy order)."""
    plan = _plan(policy, channel)
    allowed, dropped = _eligible(plan, state, today, withheld)
    found: list[Candidate] = []
    for action in allowed:
        kind = action.kind
        product: str | None = None
        if kind == "none":
            continue
        if kind == "retention_offer":
            score = state.uplift if action.target == "uplift" else state.churn_risk
            if score is None or score != score:
                dropped[action.name] = MISSING_UPLIFT if action.target == "uplift" else MISSING_CHURN
                continue
            p = max(float(score), 0.0)
            v = _value(action, state)
            if p <= 0:
                dropped[action.name] = _not_persuadable(action, score)
                continue
            reasons = _retention_reasons(action, p, v, state.churn_risk)
        elif kind == "cross_sell":
            best = _best_product(plan.offered[action.name], state)
            if best is None:
                dropped[action.name] = MISSING_PROPENSITY
                continue
            product, p, v = best
            reasons = _cross_sell_reasons(product, p, v, action.lever)
        else:  # service_recovery
            fired = _fired(action, state, context)
            if not fired:
                dropped[action.name] = RULES_NOT_MET
                continue
            p, v = 1.0, action.value
            reasons = [f"service recovery: {'; '.join(fired)}"]
        if p * v - action.cost <= 0:
            dropped[action.name] = _cost_reason(p, v, action)
            continue
        priority = p * v * action.lever
        found.append(Candidate(action.name, channel, p, v, action.lever, priority, reasons, kind, action.cost, product))
    if len(found) > 1 and any(c.kind == "service_recovery" for c in found):
        for c in found:
            if c.kind in SALES_KINDS:
                dropped[c.action] = OVERRIDDEN
        found = [c for c in found if c.kind not in SALES_KINDS]
    found.sort(key=lambda c: (-c.priority, c.action))
    ordered = {name: dropped[name] for name in sorted(dropped, key=plan.order.__getitem__)}
    return _Scored(found, ordered)


def candidates(
    policy: DecisionPolicy,
    state: CustomerState,
    channel: str,
    today: dt.date,
    context: Mapping[str, str] | None = None,
) -> list[Candidate]:
    """Eligible actions scored P x V x L, best first; a fired service-recovery rule removes the sales offers."""
    return _score(policy, state, channel, today, context).found


# ------------------------------------------------------------------------------------------------- deciding


def _fallback_reason(dropped: Mapping[str, str] | Sequence[str]) -> str:
    """Why nothing is left: a missing champion is said as such."""
    texts = dropped.values() if isinstance(dropped, Mapping) else dropped
    missing = sorted({t.split("(", 1)[1].split(")", 1)[0] for t in texts if "champion is missing" in t})
    if missing:
        return f"{' and '.join(missing)}; no other action eligible"
    return NOTHING_ELIGIBLE


class _SafeFields(dict[str, Any]):
    """Prompt fields: an unknown {placeholder} stays as written rather than failing the decision."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


@functools.lru_cache(maxsize=256)
def _placeholders(text: str) -> frozenset[str]:
    """The {placeholder} names a prompt's text uses (none for a malformed one: it is shown as written)."""
    try:
        return frozenset(name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(text) if name)
    except ValueError:
        return frozenset()


def _prompt(
    spec: ActionSpec,
    chosen: Candidate,
    state: CustomerState,
    channel: str,
    context: Mapping[str, str] | None,
) -> str:
    """The chosen action's agent prompt with its placeholders filled (unknown ones left as written)."""
    if "{" not in spec.prompt:
        return spec.prompt
    values = _SafeFields(context or {})
    used = _placeholders(spec.prompt)  # only what the text names is made (a campaign fills thousands)
    if "trigger" in used:
        trigger = chosen.reasons[0].removeprefix("service recovery: ") if chosen.kind == "service_recovery" else ""
        values["trigger"] = trigger or (context or {}).get("reason", "")
    if "uplift" in used:
        values["uplift"] = "unknown" if state.uplift is None else f"{state.uplift:.2f}"
    if "churn_risk" in used:
        values["churn_risk"] = "unknown" if state.churn_risk is None else f"{state.churn_risk:.2f}"
    values.update(
        customer_key=state.customer_key,
        channel=channel,
        action=chosen.action,
        product=chosen.product or spec.product or "",
    )
    try:
        return spec.prompt.format_map(values)
    except (ValueError, IndexError, AttributeError, KeyError):  # a malformed placeholder: the text as written
        return spec.prompt


def _distribution(arms: Sequence[str], target: str, epsilon: float) -> dict[str, float]:
    """Epsilon-greedy: (1 - eps) on the target plus eps spread evenly over every arm."""
    share = epsilon / len(arms)
    probs = dict.fromkeys(arms, share)
    probs[target] = probs.get(target, 0.0) + (1.0 - epsilon)
    return probs


def _decision(
    policy: DecisionPolicy,
    plan: _Plan,
    state: CustomerState,
    ranked: Sequence[str],
    target: str,
    draws: tuple[float, float],
    candidate: Callable[[str], Candidate],
    dropped: list[str],
    *,
    fallback_reason: str | None,
    extra: Sequence[str],
    context: Mapping[str, str] | None,
    policy_version: str | None,
) -> Decision:
    """One decision: explore with the policy's share among `ranked` + `idle` arms, else take `target`.

    `draws` are two uniforms (explore?, which arm?); `candidate(name)` scores a ranked arm on demand; the
    no-contact arms are the plan's (`plan.idle`).
    """
    channel, idle = plan.channel, plan.idle
    arms = [*ranked, *idle]
    epsilon = policy.exploration if len(arms) > 1 else 0.0
    probs = _distribution(arms, target, epsilon)
    explored = draws[0] < epsilon
    chosen = arms[min(int(draws[1] * len(arms)), len(arms) - 1)] if explored else target
    spec = plan.specs[chosen]
    if chosen in idle:
        first = Candidate(chosen, channel, 0.0, 0.0, 1.0, 0.0, [], spec.kind, 0.0)
        actions = [first]
    else:
        first = candidate(chosen)
        if policy.max_actions > 1:
            more = itertools.islice((a for a in ranked if a != chosen), policy.max_actions - 1)
            actions = [first, *map(candidate, more)]
        else:
            actions = [first]
    is_fallback = not explored and fallback_reason is not None
    reasons = list(first.reasons)
    if explored:
        reasons.append(f"explored: uniformly random among {len(arms)} eligible actions")
    if is_fallback:
        reasons.append(f"fallback {chosen}: {fallback_reason}")
    reasons += extra
    reasons += dropped
    return Decision(
        customer_key=state.customer_key,
        channel=channel,
        actions=actions,
        probability=probs[chosen],
        explored=explored,
        fallback=is_fallback,
        fallback_reason=fallback_reason if is_fallback else None,
        reasons=reasons,
        prompt=_prompt(spec, first, state, channel, context),
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
    withheld: Mapping[str, str] | None = None,
) -> Decision:
    """Decide one customer's next best action on `channel` (deterministic given `seed`).

    `capacity_left` is the channel's remaining contacts today when the caller counts them (else the
    policy's daily capacity): at 0 only no-contact actions remain. Nothing eligible (or a missing
    champion) -> the policy's fallback, said in `fallback_reason`. `withheld`: action -> reason, actions
    this customer may not get (an experiment arm's suppressions); never chosen, not even by exploration,
    each listed among the reasons.
    """
    _check_channel(channel)
    plan = _plan(policy, channel)
    scored = _score(policy, state, channel, today, context, withheld)
    found, dropped = scored.found, scored.dropped
    reason: str | None = None
    if capacity_left is None:  # the caller does not count today's contacts: a channel without capacity has none
        capacity_left = _batch_capacity(policy, channel, None)
    if capacity_left <= 0 and found:
        full = f"{channel} capacity reached for today"
        dropped = {**dropped, **{c.action: full for c in found}}
        dropped = {name: dropped[name] for name in sorted(dropped, key=plan.order.__getitem__)}
        found, reason = [], full
    elif not found:
        reason = _fallback_reason(dropped)
    by_name = {c.action: c for c in found}
    draws = random.Random(seed)
    return _decision(
        policy,
        plan,
        state,
        [c.action for c in found],
        found[0].action if found else policy.fallback,
        (draws.random(), draws.random()),
        by_name.__getitem__,
        [f"{name}: {why}" for name, why in dropped.items()],
        fallback_reason=reason,
        extra=(),
        context=context,
        policy_version=policy_version,
    )


# -------------------------------------------------------------------------------------------------- batches

_OK, _MINOR, _CONSENT, _HELD, _CAP, _COOL, _MISSING, _NOT_PERSUADABLE, _RULES, _COST, _OVER, _IDLE, _WITHHELD = range(
    13
)


@dataclass
class _Matrix:
    """A batch's arbitration as arrays: a reason code, P, V and priority per (customer, action on the channel)."""

    plan: _Plan
    actions: tuple[ActionSpec, ...]
    states: Sequence[CustomerState]
    today: dt.date
    context: Mapping[str, str] | None
    code: np.ndarray  # (n, A) reason codes, _OK for a candidate
    p: np.ndarray
    v: np.ndarray
    priority: np.ndarray  # NaN unless a candidate
    product: np.ndarray  # (n, A) index into products for a cross-sell, else -1
    products: list[str]
    recent: np.ndarray
    last_ago: np.ndarray
    ranked: np.ndarray  # (n, A) column order, best candidate first
    n_candidates: np.ndarray
    withheld: Sequence[Mapping[str, str] | None] = ()  # per customer: action -> why it is withheld

    def candidate(self, i: int, j: int) -> Candidate:
        """Customer i's candidate for action column j, with its reasons."""
        a, state = self.actions[j], self.states[i]
        p, v = float(self.p[i, j]), float(self.v[i, j])
        product: str | None = None
        if a.kind == "retention_offer":
            reasons = _retention_reasons(a, p, v, state.churn_risk)
        elif a.kind == "cross_sell":
            product = self.products[int(self.product[i, j])]
            reasons = _cross_sell_reasons(product, p, v, a.lever)
        else:
            reasons = [f"service recovery: {'; '.join(_fired(a, state, self.context))}"]
        return Candidate(a.name, self.plan.channel, p, v, a.lever, p * v * a.lever, reasons, a.kind, a.cost, product)

    def dropped_all(self) -> list[list[str]]:
        """Per customer, the 'action: reason' lines of every action that is not a candidate, in policy order.

        Column by column (an action at a time over the batch): the fixed texts shared, the expected-value
        texts formatted in one pass per action, the rest (caps, cool-downs, withheld, not persuadable)
        made per customer.
        """
        lines: list[list[str]] = [[] for _ in range(len(self.states))]
        for j, texts in self._layout:
            if j < 0:
                for row in lines:
                    row.append(texts[0])
                continue
            codes = self.code[:, j]
            shown = np.flatnonzero((codes != _OK) & (codes != _IDLE))
            if not len(shown):
                continue
            a = self.actions[j]
            costs: dict[int, str] = {}
            is_cost = codes[shown] == _COST
            if is_cost.any():  # `_cost_reason`'s text, its product p x v in one array operation
                at = shown[is_cost]
                values = (self.p[at, j] * self.v[at, j]).tolist()
                costs = {i: f"{a.name}: {_cost_text(x, a)}" for i, x in zip(at.tolist(), values, strict=True)}
            for i, c in zip(shown.tolist(), codes[shown].tolist(), strict=True):
                text = texts[c]
                if not text:
                    text = costs[i] if c == _COST else f"{a.name}: {self._reason(i, j, c)}"
                lines[i].append(text)
        return lines

    def _reason(self, i: int, j: int, c: int) -> str:
        """The reason text that needs customer i's numbers (`dropped_all` makes the expected-value ones itself)."""
        a = self.actions[j]
        if c == _CAP:
            return _cap_reason(int(self.recent[i, j]), a)
        if c == _COOL:
            return _cooldown_reason(self.today - dt.timedelta(days=int(self.last_ago[i, j])), a)
        if c == _WITHHELD:
            return self.withheld[i][a.name]  # type: ignore[index]
        state = self.states[i]  # _NOT_PERSUADABLE
        score = state.uplift if a.target == "uplift" else state.churn_risk
        return _not_persuadable(a, 0.0 if score is None else float(score))  # -0.0 as `decide` says it

    def __post_init__(self) -> None:
        col = {a.name: j for j, a in enumerate(self.actions)}
        # Per action in policy order: (column, reason text per code; "" where the text needs the customer's
        # numbers) or (-1, [the off-channel line]).
        self._layout: list[tuple[int, list[str]]] = []
        for name in sorted([*self.plan.off_channel, *col], key=self.plan.order.__getitem__):
            if name not in col:
                self._layout.append((-1, [f"{name}: {self.plan.off_channel[name]}"]))
                continue
            a = self.actions[col[name]]
            offered = self.plan.offered.get(a.name, ())
            held = f"already holds {offered[0][0]}" if len(offered) == 1 else "already holds every product offered"
            fixed = {
                _MINOR: self.plan.minors_reason,
                _CONSENT: f"no consent for {a.purpose}",
                _HELD: held,
                _MISSING: MISSING_PROPENSITY
                if a.kind != "retention_offer"
                else (MISSING_UPLIFT if a.target == "uplift" else MISSING_CHURN),
                _RULES: RULES_NOT_MET,
                _OVER: OVERRIDDEN,
            }
            texts = [f"{a.name}: {fixed[c]}" if c in fixed else "" for c in range(_WITHHELD + 1)]
            self._layout.append((col[name], texts))


def _matrix(
    plan: _Plan,
    states: Sequence[CustomerState],
    today: dt.date,
    context: Mapping[str, str] | None,
    withheld: Sequence[Mapping[str, str] | None] = (),
) -> _Matrix:
    """Score a whole batch at once: the same rules and numbers as `_score`, as array operations."""
    n, actions = len(states), plan.on_channel
    width = len(actions)
    col = {a.name: j for j, a in enumerate(actions)}
    code = np.zeros((n, width), dtype=np.int8)
    p = np.full((n, width), np.nan)
    v = np.full((n, width), np.nan)
    product = np.full((n, width), -1, dtype=np.int64)

    products = list(dict.fromkeys(q for a in actions if a.kind == "cross_sell" for q, _ in plan.offered[a.name]))
    where = {q: k for k, q in enumerate(products)}
    nan = math.nan
    blank = (nan,) * len(products)
    rows: list[tuple[float, ...]] = []
    if products:
        for s in states:
            scores = s.propensity
            # a product without a score (held, or not offered) reads None, NaN in the float array; one `get` per
            # product costs half what an itemgetter does once a missing product raises
            rows.append(tuple(map(scores.get, products)) if scores else blank)  # type: ignore[arg-type]
    propensity = np.array(rows, dtype=float).reshape(n, len(products))
    margin = np.full((n, len(products)), np.nan)
    held = np.zeros((n, len(products)), dtype=bool)
    recent = np.zeros((n, width), dtype=np.int64)
    last_ago = np.full((n, width), 10**9, dtype=np.int64)
    shared: dict[int, tuple[Mapping[str, float], list[int]]] = {}  # a margin table is usually everyone's
    held_i: list[int] = []  # (customer, product column) of each product held
    held_k: list[int] = []
    contact_i: list[int] = []  # (customer, action column, days ago) of each past contact
    contact_j: list[int] = []
    contact_ago: list[int] = []
    agos: dict[Any, int] = {}  # days ago per date seen (a batch's history holds a few distinct days)
    for i, s in enumerate(states):
        if s.margin:
            entry = shared.get(id(s.margin))
            if entry is None:
                shared[id(s.margin)] = (s.margin, [i])
            else:
                entry[1].append(i)
        if s.products_held:
            for k in map(where.get, s.products_held):
                if k is not None:
                    held_i.append(i)
                    held_k.append(k)
        if s.history:
            for name, day in s.history:
                j = col.get(name)
                if j is not None:
                    ago = agos.get(day)
                    if ago is None:
                        ago = agos[day] = (today - (day.date() if isinstance(day, dt.datetime) else day)).days
                    contact_i.append(i)
                    contact_j.append(j)
                    contact_ago.append(ago)
    if contact_i:  # counted and the latest found with array operations, not an array element at a time
        who_i, who_j = np.array(contact_i, dtype=np.int64), np.array(contact_j, dtype=np.int64)
        ago_days = np.array(contact_ago, dtype=np.int64)
        windows = np.array([a.window_days for a in actions], dtype=np.int64)
        np.add.at(recent, (who_i, who_j), (ago_days < windows[who_j]).astype(np.int64))
        np.minimum.at(last_ago, (who_i, who_j), ago_days)
    for table, who in shared.values():
        margin[who] = np.array([table.get(q, nan) for q in products], dtype=float)
    if held_i:
        held[np.array(held_i, dtype=np.int64), np.array(held_k, dtype=np.int64)] = True

    # None reads as NaN in a float array.
    minor = np.array([bool(s.is_minor) for s in states], dtype=bool).reshape(n)
    consent = {
        purpose: np.array([bool(s.consent.get(purpose)) for s in states], dtype=bool).reshape(n)
        for purpose in {a.purpose for a in actions if a.purpose is not None}
    }
    retention_scores = {
        "uplift": np.array([s.uplift for s in states], dtype=float).reshape(n),
        "churn_risk": np.array([s.churn_risk for s in states], dtype=float).reshape(n),
    }
    signal_names = {sig for a in actions for sig in [*a.triggers, *([a.value_signal] if a.value_signal else [])]}
    signals = {sig: np.array([s.signals.get(sig) for s in states], dtype=float).reshape(n) for sig in signal_names}
    rows_idx = np.arange(n)

    for j, a in enumerate(actions):
        c = code[:, j]
        if a.kind == "none":
            c[:] = _IDLE
            continue
        if a.purpose is not None:
            c[minor] = _MINOR
            c[(c == _OK) & ~consent[a.purpose]] = _CONSENT
        cols = np.array([where[q] for q, _ in plan.offered.get(a.name, ())], dtype=np.int64)
        if a.kind == "cross_sell":
            c[(c == _OK) & held[:, cols].all(axis=1)] = _HELD
        c[(c == _OK) & (recent[:, j] >= a.max_per_customer)] = _CAP
        if a.cooldown_days:
            c[(c == _OK) & (last_ago[:, j] < a.cooldown_days)] = _COOL
        if a.kind == "retention_offer":
            score = retention_scores[a.target]
            missing = np.isnan(score)
            pj = np.maximum(np.nan_to_num(score, nan=0.0), 0.0)
            vj = np.full(n, a.value)
            if a.value_signal is not None:
                own = signals[a.value_signal]
                good = np.isfinite(own) & (own > 0)
                vj[good] = own[good]
            c[(c == _OK) & missing] = _MISSING
            c[(c == _OK) & (pj <= 0)] = _NOT_PERSUADABLE
        elif a.kind == "cross_sell":
            sub = propensity[:, cols]
            defaults = np.array([value for _, value in plan.offered[a.name]])
            values = np.where(np.isnan(margin[:, cols]), defaults, margin[:, cols])
            valid = ~np.isnan(sub) & ~held[:, cols]
            best = np.argmax(np.where(valid, sub * values, -np.inf), axis=1)
            pj, vj = sub[rows_idx, best], values[rows_idx, best]
            product[:, j] = cols[best]
            c[(c == _OK) & ~valid.any(axis=1)] = _MISSING
        else:  # service_recovery
            fired = np.zeros(n, dtype=bool)
            for sig, threshold in a.triggers.items():
                with np.errstate(invalid="ignore"):
                    fired |= signals[sig] >= threshold
            if context and context.get("reason") in a.context_reasons:
                fired[:] = True
            pj, vj = np.ones(n), np.full(n, a.value)
            c[(c == _OK) & ~fired] = _RULES
        with np.errstate(invalid="ignore"):
            c[(c == _OK) & (pj * vj - a.cost <= 0)] = _COST
        p[:, j], v[:, j] = pj, vj

    for i, held_back in enumerate(withheld):
        for name in held_back or ():
            j = col.get(name)
            if j is not None and actions[j].kind != "none":
                code[i, j] = _WITHHELD
    recovery = [j for j, a in enumerate(actions) if a.kind == "service_recovery"]
    if recovery:
        overridden = (code[:, recovery] == _OK).any(axis=1)
        for j, a in enumerate(actions):
            if a.kind in SALES_KINDS:
                code[overridden & (code[:, j] == _OK), j] = _OVER
    is_candidate = code == _OK
    levers = np.array([a.lever for a in actions])
    priority = np.where(is_candidate, p * v * levers, np.nan)
    by_name = np.argsort(np.array([a.name for a in actions], dtype=object), kind="stable").astype(np.int64)
    key = np.where(is_candidate, -np.nan_to_num(priority), np.inf)[:, by_name]
    ranked = by_name[np.argsort(key, axis=1, kind="stable")] if width else np.zeros((n, 0), dtype=np.int64)
    return _Matrix(
        plan=plan,
        actions=actions,
        states=states,
        today=today,
        context=context,
        code=code,
        p=p,
        v=v,
        priority=priority,
        product=product,
        products=products,
        recent=recent,
        last_ago=last_ago,
        ranked=ranked,
        n_candidates=is_candidate.sum(axis=1),
        withheld=withheld,
    )


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


_EQUITY_COLUMNS = ["kind", "group", "eligible", "allocated", "rate", "judged", "ratio", "floor", "p_value", "passed"]


def _equity(
    policy: DecisionPolicy, groups: np.ndarray, eligible_by_kind: Mapping[str, np.ndarray], given: np.ndarray
) -> pd.DataFrame:
    """The equity table from arrays: group labels (None: not judged), eligibility per kind, the kind given.

    Counted per group with plain dicts, groups in sorted order (what a pandas group-by gave, at a fraction of
    its fixed cost per kind).
    """
    spec = policy.equity
    known = np.array([g is not None for g in groups], dtype=bool)
    labels = [str(g) for g in groups]
    rows = []
    for kind in JUDGED_KINDS:
        mask = eligible_by_kind.get(kind, np.zeros(len(groups), dtype=bool)) & known
        if not mask.any():
            continue
        counted: dict[str, list[int]] = {}
        for i, hit in zip(np.flatnonzero(mask).tolist(), (given[mask] == kind).tolist(), strict=True):
            tally = counted.get(labels[i])
            if tally is None:
                counted[labels[i]] = [1, int(hit)]
            else:
                tally[0] += 1
                tally[1] += hit
        sizes = {g: counted[g][0] for g in sorted(counted)}
        sums = {g: counted[g][1] for g in sizes}
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


def equity_table(
    policy: DecisionPolicy, groups: Sequence[str | None], eligible_kinds: Sequence[set[str]], given_kinds: Sequence[str]
) -> pd.DataFrame:
    """Allocation rate per group and action kind (allocated / eligible), the min/max ratio, and the floor test.

    A kind passes when the ratio reaches the floor, or its shortfall is within sampling noise (the one-sided
    two-proportion test's p-value >= alpha). Groups with fewer eligible customers than `min_group_size` are
    shown, not judged.
    """
    eligible_by_kind = {k: np.array([k in kinds for kinds in eligible_kinds], dtype=bool) for k in JUDGED_KINDS}
    return _equity(policy, np.array(list(groups), dtype=object), eligible_by_kind, np.array(list(given_kinds)))


def _repair_equity(
    policy: DecisionPolicy, m: _Matrix, groups: np.ndarray, target: np.ndarray, capacity: int
) -> tuple[dict[int, str], set[int]]:
    """Swap customers so each action kind's allocation-rate ratio across groups reaches the floor.

    The best-priority uncontacted customer of the under-served group takes the slot of the lowest-priority
    contacted customer of that kind in the best-served group (capacity stays whole). Returns the customers
    moved out (with why) and those moved in. Stops when no such swap exists (the equity table then shows the
    kind failing). Only uncontacted customers move in, so a swap never changes another kind's allocation.
    """
    spec = policy.equity
    moved_out: dict[int, str] = {}
    moved_in: set[int] = set()
    kinds = np.array([a.kind for a in m.actions], dtype=object)
    contacted = int((target >= 0).sum())
    known = np.array([g is not None for g in groups], dtype=bool)
    for kind in JUDGED_KINDS:
        cols = np.flatnonzero(kinds == kind)
        if not len(cols):
            continue
        sub = np.where(np.isnan(m.priority[:, cols]), -np.inf, m.priority[:, cols])
        best_col = cols[np.argmax(sub, axis=1)]
        best_priority = sub.max(axis=1)
        has = np.isfinite(best_priority) & known
        size: dict[str, int] = {}
        for g in groups[has]:
            size[g] = size.get(g, 0) + 1
        judged = {g for g, k in size.items() if k >= spec.min_group_size}
        if len(judged) < 2:
            continue
        given = dict.fromkeys(judged, 0)
        waiting: dict[str, list[tuple[float, int]]] = {g: [] for g in judged}  # (-priority, i): best first
        serving: dict[str, list[tuple[float, int]]] = {g: [] for g in judged}  # (priority, -i): worst first
        for i in np.flatnonzero(has):
            g = groups[i]
            if g not in judged:
                continue
            t = target[i]
            if t < 0:
                waiting[g].append((-best_priority[i], int(i)))
            elif kinds[t] == kind:
                given[g] += 1
                serving[g].append((float(m.priority[i, t]), -int(i)))
        for heap in (*waiting.values(), *serving.values()):
            heapq.heapify(heap)
        for _ in range(len(target) + 1):
            rates = {g: given[g] / size[g] for g in sorted(judged)}
            high = max(rates, key=rates.__getitem__)
            low = min(rates, key=rates.__getitem__)
            if rates[high] == 0 or rates[low] / rates[high] >= spec.floor or not waiting[low]:
                break
            if contacted >= capacity:
                if not serving[high]:
                    break
                _, neg = heapq.heappop(serving[high])
                leaving = -neg
                target[leaving] = -1
                moved_out[leaving] = f"equity floor for {kind}: slot given to an under-served group"
                given[high] -= 1
                contacted -= 1
                moved_in.discard(leaving)
                heapq.heappush(waiting[high], (-best_priority[leaving], leaving))
            _, newcomer = heapq.heappop(waiting[low])
            target[newcomer] = best_col[newcomer]
            moved_out.pop(newcomer, None)
            moved_in.add(newcomer)
            given[low] += 1
            contacted += 1
            heapq.heappush(serving[low], (float(best_priority[newcomer]), -newcomer))
    return moved_out, moved_in


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
    seeds: Sequence[int] | None = None,
    withheld: Mapping[str, Mapping[str, str]] | None = None,
) -> BatchDecision:
    """Decide a campaign: per-customer arbitration, then channel capacity and equity floors over the batch.

    The best-priority customers take the channel's capacity (greedy by priority is optimal for one channel
    with one contact each); the equity floor is repaired by swaps; the rest get the fallback, said in each
    decision. Only contacted customers explore, and only among their own eligible actions, so exploration
    never breaks capacity, caps, cool-downs or consent. A customer may appear once per batch.

    The exploration draws come from `seed`, or, when `seeds` gives one per customer (e.g. from each
    decision's id), from each customer's own seed exactly as `decide` draws them, so a logged decision can
    be replayed on its own.

    `withheld`: per customer key, action -> reason: actions that customer may not get (an experiment arm's
    suppressions), as in `decide`.
    """
    _check_channel(channel)
    limit = _batch_capacity(policy, channel, capacity)
    seen: set[str] = set()
    for i, s in enumerate(states):
        if s.customer_key in seen:
            raise ValueError(f"states[{i}].customer_key: {s.customer_key!r} appears twice in the batch")
        seen.add(s.customer_key)
    plan = _plan(policy, channel)
    held_back = [withheld.get(s.customer_key) for s in states] if withheld else ()
    m = _matrix(plan, states, today, context, held_back)
    n = len(states)
    names = [a.name for a in m.actions]
    column = {a: j for j, a in enumerate(names)}
    top = m.ranked[:, 0] if m.actions else np.zeros(n, dtype=np.int64)
    top_priority = np.where(m.n_candidates > 0, m.priority[np.arange(n), top] if m.actions else 0.0, -np.inf)
    wanting = np.flatnonzero(m.n_candidates > 0)
    by_priority = wanting[np.lexsort((wanting, -top_priority[wanting]))]
    target = np.full(n, -1, dtype=np.int64)
    target[by_priority[:limit]] = top[by_priority[:limit]]
    groups = np.array([s.group for s in states], dtype=object)
    moved, moved_in = _repair_equity(policy, m, groups, target, limit)
    costs = np.array([a.cost for a in m.actions])
    net = m.p * m.v - costs if m.actions else np.zeros((n, 0))
    unconstrained = float(net[wanting, top[wanting]].sum()) if len(wanting) else 0.0

    if seeds is not None:
        if len(seeds) != n:
            raise ValueError(f"seeds: {len(seeds)} seeds for {n} customers")
        draws = [[r.random(), r.random()] for r in map(random.Random, seeds)]
    else:
        draws = np.random.default_rng(seed).random((n, 2)).tolist()
    dropped_lines = m.dropped_all()
    missing = (m.code == _MISSING).any(axis=1).tolist()  # a fallback names a missing champion only when one is
    ranked_rows = m.ranked.tolist()
    n_candidates = m.n_candidates.tolist()
    targets = target.tolist()
    decisions: list[Decision] = []
    for i, state in enumerate(states):
        t = targets[i]
        dropped = dropped_lines[i]
        if t >= 0:
            row = ranked_rows[i][: n_candidates[i]]
            ranked = [names[j] for j in row]
            extra: list[str] = ["chosen to meet the equity floor"] if i in moved_in else []
            reason: str | None = None
            name = names[t]
        else:
            ranked, extra, name = [], [], policy.fallback
            if i in moved:
                reason = moved[i]
            elif n_candidates[i]:
                reason = f"{channel} capacity ({limit}) taken by higher-priority customers"
            else:
                reason = _fallback_reason(dropped) if missing[i] else NOTHING_ELIGIBLE
        decisions.append(
            _decision(
                policy,
                plan,
                state,
                ranked,
                name,
                (draws[i][0], draws[i][1]),
                lambda a, i=i: m.candidate(i, column[a]),  # type: ignore[misc]
                dropped,
                fallback_reason=reason,
                extra=extra,
                context=context,
                policy_version=policy_version,
            )
        )
    value = float(sum(expected_value(c) for d in decisions for c in d.actions if c.kind != "none"))
    first_kind = np.array([d.actions[0].kind for d in decisions], dtype=object)
    # counted per (action, kind, group), sorted as a pandas group-by sorts them
    counts = Counter(
        zip([d.actions[0].action for d in decisions], first_kind.tolist(),
            ["unknown" if g is None else str(g) for g in groups.tolist()], strict=True)
    )  # fmt: skip
    cells = sorted(counts)
    allocation = pd.DataFrame(
        {
            "action": [c[0] for c in cells],
            "kind": [c[1] for c in cells],
            "group": [c[2] for c in cells],
            "count": np.array([counts[c] for c in cells], dtype=np.int64),
        }
        if n
        else {"action": [], "kind": [], "group": [], "count": []}
    )
    allocation.insert(1, "channel", channel)
    allocation["capacity"] = limit
    eligible_by_kind = {
        kind: (m.code[:, [j for j, a in enumerate(m.actions) if a.kind == kind]] == _OK).any(axis=1)
        for kind in JUDGED_KINDS
    }
    return BatchDecision(
        decisions=decisions,
        allocation=allocation,
        value=value,
        unconstrained_value=unconstrained,
        value_given_up=unconstrained - value,
        equity=_equity(policy, groups, eligible_by_kind, first_kind),
    )
