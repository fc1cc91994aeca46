"""A decision policy run over a whole population for one day: what the gate judges before promotion.

`simulate` arbitrates every customer on every channel that has capacity, one channel after
the other, as a day's campaign would: an action given on one channel enters the customer's
history, so the contact caps and cool-downs hold across channels. It returns the allocation
per action, channel and group against each channel's capacity, the expected value against
the unconstrained choice, and per action kind how many customers of each group were chosen
(the equity check's counts). Pure: policy and states in, numbers out.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from decisions.arbitration import CustomerState, decide_batch, expected_value
from decisions.policy import Channel, DecisionPolicy

UNKNOWN_GROUP = "unknown"


@dataclass
class Simulation:
    """One simulated day of a policy over a population."""

    today: dt.date
    customers: int
    chosen: pd.DataFrame  # customer_key, channel, action, kind, group, expected_value: one row per action given
    allocation: pd.DataFrame  # action, kind, channel, count, capacity
    channels: pd.DataFrame  # channel, capacity, allocated, value, unconstrained_value, value_given_up
    exposure: pd.DataFrame  # kind, group, eligible, allocated: per action kind, summed over the channels
    value: float
    unconstrained_value: float
    fallbacks: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def value_given_up(self) -> float:
        """Expected value the constraints cost against the unconstrained choice."""
        return self.unconstrained_value - self.value

    def metrics(self) -> dict[str, float]:
        """Flat metrics for MLflow (`simulation.*`)."""
        out = {
            "simulation.customers": float(self.customers),
            "simulation.actions": float(len(self.chosen)),
            "simulation.expected_value": self.value,
            "simulation.unconstrained_value": self.unconstrained_value,
            "simulation.value_given_up": self.value_given_up,
            "simulation.fallbacks": float(self.fallbacks),
        }
        for action, channel, count in self.allocation[["action", "channel", "count"]].itertuples(index=False):
            out[f"simulation.allocated.{action}.{channel}"] = float(count)
        return out


def _channels(policy: DecisionPolicy) -> list[Channel]:
    """Channels in the policy's capacity order, then any other channel an action uses."""
    order: list[Channel] = list(policy.capacity)
    for action in policy.actions:
        order += [c for c in action.channels if c not in order]
    return order


def simulate(
    policy: DecisionPolicy,
    states: Sequence[CustomerState],
    today: dt.date,
    *,
    seed: int,
    channels: Sequence[Channel] | None = None,
) -> Simulation:
    """Arbitrate every customer on each channel in turn under the policy's capacities (see the module)."""
    kinds = {a.name: a.kind for a in policy.actions}
    current = list(states)
    given: list[dict[str, object]] = []
    per_channel: list[dict[str, object]] = []
    equity: list[pd.DataFrame] = []
    value = unconstrained = 0.0
    fallbacks = 0
    for i, channel in enumerate(channels or _channels(policy)):
        batch = decide_batch(policy, current, channel, today, seed=seed + i)
        equity.append(batch.equity)
        value += batch.value
        unconstrained += batch.unconstrained_value
        allocated = 0
        updated = list(current)
        for j, decision in enumerate(batch.decisions):
            fallbacks += int(decision.fallback)
            real = [c for c in decision.actions if kinds.get(c.action) not in (None, "none")]
            if not real:
                continue
            state = current[j]
            for candidate in real:
                allocated += 1
                given.append(
                    {
                        "customer_key": state.customer_key,
                        "channel": channel,
                        "action": candidate.action,
                        "kind": kinds[candidate.action],
                        "group": state.group if state.group is not None else UNKNOWN_GROUP,
                        "expected_value": expected_value(candidate),
                    }
                )
            history = (*state.history, *((c.action, today) for c in real))
            updated[j] = dataclasses.replace(state, history=history)
        current = updated
        per_channel.append(
            {
                "channel": channel,
                "capacity": policy.capacity.get(channel),
                "allocated": allocated,
                "value": batch.value,
                "unconstrained_value": batch.unconstrained_value,
                "value_given_up": batch.value_given_up,
            }
        )
    chosen = pd.DataFrame(given, columns=["customer_key", "channel", "action", "kind", "group", "expected_value"])
    allocation = (
        chosen.groupby(["action", "kind", "channel"], as_index=False).size().rename(columns={"size": "count"})
        if len(chosen)
        else pd.DataFrame(columns=["action", "kind", "channel", "count"])
    )
    allocation["capacity"] = allocation["channel"].map(lambda c: policy.capacity.get(c))
    return Simulation(
        today=today,
        customers=len(states),
        chosen=chosen,
        allocation=allocation,
        channels=pd.DataFrame(per_channel),
        exposure=exposure(equity),
        value=value,
        unconstrained_value=unconstrained,
        fallbacks=fallbacks,
    )


def exposure(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Per action kind and group: eligible customers and allocations, summed over the channels' equity tables.

    A customer eligible on two channels counts twice, as two chances to be given the action:
    the rate is allocations per eligible contact, the same on every channel as in the sum.
    """
    columns = ["kind", "group", "eligible", "allocated"]
    parts = [t[columns] for t in tables if len(t)]
    if not parts:
        return pd.DataFrame(columns=columns)
    summed = pd.concat(parts, ignore_index=True).groupby(["kind", "group"], sort=False, as_index=False).sum()
    return summed.astype({"eligible": int, "allocated": int})
