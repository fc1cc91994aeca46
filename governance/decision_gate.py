"""The promotion gate for a decision policy: simulated, checked for equity, estimated off-policy, carded, recorded.

A decision policy is promoted like a model. `judge_policy` is pure: the simulation of the
policy on the latest customers (`decisions.simulation`), an off-policy estimate of its value
from the decision log when there is one, and the comparison with the generator's truth when
the home has one, in; checks, a verdict and a card out. `record_policy` writes: the
`champion` alias (through `governance.store.move_champion`, so the move is recorded), the
version's gate tags, the card beside the version's run, the metrics on that run, and the
decision in the hash-chained decision log and the audit trail.

Checks: `equity` (per action kind, each group's allocation rate over the best-served
group's at least the policy's floor, beyond sampling noise; waivable by a named approver),
`capacity` (no channel given more than its daily capacity; never waived), and three
informational ones that never block: `value` (expected value, and what the constraints
give up), `off_policy` (the estimate, or why it was skipped) and `truth`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import pandas as pd

from custintel.settings import Settings
from decisions.policy import DecisionPolicy
from decisions.simulation import UNKNOWN_GROUP, Simulation
from decisions.truth import TruthComparison
from governance import cards, store
from governance.gate import Check, Verdict, Waiver, decide

FAMILY = "decision_policy"
MIN_GROUP = 30  # eligible customers of a group below which its rate is reported, not judged (policy's own first)
MIN_EXPECTED = 5  # ... and chosen customers expected at the best group's rate below which a ratio is noise


@dataclass
class PolicyCandidate:
    """A registered policy version and what the gate needs about it."""

    name: str
    version: str
    run_id: str
    policy: DecisionPolicy
    digest: str
    champion_version: str | None


@dataclass
class OffPolicy:
    """The off-policy estimates of the policy's value from the decision log, or why there are none."""

    estimates: list[Any] = field(default_factory=list)  # decisions.ope.Estimate
    skipped: str | None = None
    logged: int = 0


@dataclass
class PolicyJudgement:
    """The verdict, the decision-log record and the card."""

    verdict: Verdict
    decision: dict[str, Any]
    card: dict[str, bytes | str]
    metrics: dict[str, float]


def _ratio_upper(chosen: int, size: int, ref_chosen: int, ref_size: int, z: float) -> tuple[float, float]:
    """A group's rate over the reference group's, and the one-sided upper confidence bound of that ratio.

    The log of a ratio of two proportions has standard error sqrt((1-p1)/x1 + (1-p2)/x2)
    (delta method); a group nobody was chosen from counts half a customer (continuity).
    """
    p1, p2 = chosen / size, ref_chosen / ref_size
    x1, q1 = max(chosen, 0.5), max(p1, 0.5 / size)
    se = math.sqrt(max(1 - q1, 0.0) / x1 + max(1 - p2, 0.0) / ref_chosen)
    return p1 / p2, math.exp(math.log(q1 / p2) + z * se)


def check_equity(
    exposure: pd.DataFrame, attribute: str, floor: float, alpha: float, min_group: int = MIN_GROUP
) -> Check:
    """Per action kind, every judged group's allocation rate over the best-served group's >= floor, beyond noise.

    A group breaches only when the upper one-sided (1 - alpha) bound of its ratio is below the
    floor. Groups under `MIN_GROUP` customers, the unknown group, and groups whose expected
    chosen count at the best rate is under `MIN_EXPECTED` are reported as too few to judge.
    """
    z = float(NormalDist().inv_cdf(1 - alpha))
    details: list[str] = []
    numbers: dict[str, float] = {}
    passed = True
    judged_any = False
    for kind in dict.fromkeys(exposure["kind"].astype(str)):
        rows = [r for r in exposure.to_dict("records") if str(r["kind"]) == kind and int(r["eligible"]) > 0]
        known = [r for r in rows if r["group"] != UNKNOWN_GROUP and int(r["eligible"]) >= min_group]
        small = sorted({str(r["group"]) for r in rows} - {str(r["group"]) for r in known})
        if len(known) < 2:
            details.append(f"{kind}: too few to judge (under two groups of {attribute} with {min_group}+ eligible)")
            continue
        for r in known:
            numbers[f"{kind}.{r['group']}.rate"] = int(r["allocated"]) / int(r["eligible"])
        ref = max(known, key=lambda r: int(r["allocated"]) / int(r["eligible"]))
        ref_chosen, ref_size = int(ref["allocated"]), int(ref["eligible"])
        if ref_chosen == 0:
            details.append(f"{kind}: given to no one, nothing to compare")
            continue
        ref_rate = ref_chosen / ref_size
        for r in known:
            group, chosen, size = str(r["group"]), int(r["allocated"]), int(r["eligible"])
            if r is ref:
                continue
            if size * ref_rate < MIN_EXPECTED:
                small.append(group)
                continue
            judged_any = True
            ratio, upper = _ratio_upper(chosen, size, ref_chosen, ref_size, z)
            numbers[f"{kind}.{group}.ratio"] = ratio
            numbers[f"{kind}.{group}.ratio_upper"] = upper
            if upper < floor:
                passed = False
                details.append(
                    f"{kind}: {attribute}={group} is allocated at {ratio:.2f}x the rate of {attribute}={ref['group']} "
                    f"({chosen / size:.4f} vs {ref_rate:.4f}); even its upper {1 - alpha:.0%} bound "
                    f"{upper:.2f} is below the floor {floor:g}"
                )
        if small:
            names = ", ".join(sorted(set(small)))
            details.append(f"{kind}: too few to judge (reported, not gated): {attribute}={names}")
    if passed:
        summary = (
            f"every judged ratio meets the floor {floor:g} beyond noise (alpha {alpha:g})"
            if judged_any
            else ("nothing could be judged: too few customers per group")
        )
        details.insert(0, summary)
    return Check("equity", passed, details, True, numbers)


def check_capacity(simulation: Simulation, policy: DecisionPolicy) -> Check:
    """No channel was given more actions than its daily capacity (arbitration's own guarantee, checked here)."""
    problems, numbers = [], {}
    channels = simulation.channels.to_dict("records")
    for row in channels:
        channel, allocated = str(row["channel"]), int(row["allocated"])
        numbers[f"{channel}.allocated"] = float(allocated)
        cap = policy.capacity.get(channel)  # type: ignore[call-overload]
        if cap is not None and allocated > cap:
            problems.append(f"{channel}: {allocated} actions > capacity {cap}")
    ok = ", ".join(f"{r['channel']} {r['allocated']}/{r['capacity']}" for r in channels)
    return Check("capacity", not problems, problems or [f"within capacity: {ok}"], False, numbers)


def check_value(simulation: Simulation) -> Check:
    """Informational: the day's expected value, and what the constraints cost against the unconstrained choice."""
    share = simulation.value_given_up / simulation.unconstrained_value if simulation.unconstrained_value else 0.0
    return Check(
        "value",
        True,
        [
            f"informational: expected value {simulation.value:,.2f} over {simulation.customers:,} customers "
            f"({len(simulation.chosen):,} actions); the constraints give up {simulation.value_given_up:,.2f} "
            f"({share:.1%}) of the unconstrained {simulation.unconstrained_value:,.2f}"
        ],
        True,
        {
            "expected_value": simulation.value,
            "unconstrained_value": simulation.unconstrained_value,
            "value_given_up": simulation.value_given_up,
        },  # fmt: skip
    )


def check_off_policy(off: OffPolicy) -> Check:
    """Informational: the off-policy estimates of the policy's value from the decision log, or why there are none."""
    if off.skipped is not None or not off.estimates:
        return Check("off_policy", True, [f"skipped: {off.skipped or 'no estimate'}"], True)
    details, numbers = [], {}
    for e in off.estimates:
        details.append(
            f"{e.estimator}: {e.value:.4f} [{e.low:.4f}, {e.high:.4f}] from {e.n:,} logged decisions "
            f"(effective n {e.effective_n:,.0f})"
        )
        numbers.update({f"{e.estimator}.value": e.value, f"{e.estimator}.low": e.low, f"{e.estimator}.high": e.high})
    return Check("off_policy", True, [f"informational: {d}" for d in details], True, numbers)


def check_truth(truth: TruthComparison | None) -> Check:
    """Informational: the retention offer against the generator's truth (a synthetic world only)."""
    if truth is None:
        return Check("truth", True, ["skipped: no generator truth for this home"], True)
    return Check("truth", True, [f"informational: {line}" for line in truth.summary()], True, truth.metrics())


def _table(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for column in out.columns:
        if pd.api.types.is_float_dtype(out[column]):
            out[column] = out[column].map(lambda v: "" if pd.isna(v) else f"{v:,.4f}")
    return out


def card_sections(
    candidate: PolicyCandidate,
    simulation: Simulation,
    truth: TruthComparison | None,
    verdict: Verdict,
    decision: Mapping[str, Any],
    context: Mapping[str, Any],
    truth_curve: pd.DataFrame | None = None,
) -> list[tuple[str, list[cards.Block]]]:
    """The policy card's content, in reading order."""
    policy = candidate.policy
    actions = pd.DataFrame(
        [{"action": a.name, "kind": a.kind, "purpose": a.purpose or "", "channels": ", ".join(a.channels),
          "value": a.value, "cost": a.cost, "lever": a.lever, "product": a.product or ""} for a in policy.actions]
    )  # fmt: skip
    exposure = simulation.exposure.assign(
        rate=lambda f: (f["allocated"] / f["eligible"].where(f["eligible"] > 0)).astype(float)
    )
    checks = pd.DataFrame(
        [{"check": c.name, "passed": "yes" if c.passed else "NO", "details": "; ".join(c.details)}
         for c in verdict.checks]
    )  # fmt: skip
    sections: list[tuple[str, list[cards.Block]]] = [
        (
            "Policy",
            [
                [
                    f"Registered policy {candidate.name}, version {candidate.version} ({policy.name})",
                    f"sha256 {candidate.digest}",
                    f"MLflow run {candidate.run_id}",
                    f"Description: {policy.description or 'none'}",
                    f"Exploration share {policy.exploration:g}; fallback action {policy.fallback}; "
                    f"at most {policy.max_actions} action(s) per decision",
                    f"Equity: by {policy.equity.attribute}, floor {policy.equity.floor:g}, "
                    f"alpha {policy.equity.alpha:g}",
                ]
            ],
        ),  # fmt: skip
        ("Actions", [_table(actions)]),
        (
            "Simulation",
            [
                [f"{k}: {v}" for k, v in context.items()],
                "Allocation per action and channel against the channel's daily capacity:",
                _table(simulation.allocation),
                _table(simulation.channels),
            ],
        ),
        (
            "Equity",
            [
                "Per action kind and group: eligible contacts, allocations and their rate (all channels):",
                _table(exposure),
            ],
        ),  # fmt: skip
    ]
    if truth is not None:
        blocks: list[cards.Block] = [truth.summary(), _table(truth.table())]
        if truth_curve is not None and len(truth_curve):
            blocks += ["The same comparison at other capacities (share of the customers offered):", _table(truth_curve)]
        sections.append(("Against the generator's truth (retention offer)", blocks))
    sections.append(
        (
            "Gate decision",
            [
                [
                    f"Result: **{verdict.result}** on {decision['time']} by {decision['actor']} "
                    f"(decision {decision['id']}).",
                    f"Champion before: {decision['champion_before'] or 'none'}; after: "
                    f"{decision['champion_after'] or 'unchanged'}.",
                ]
                + ([f"Waived by {verdict.waiver.approver}: {verdict.waiver.reason}"] if verdict.waiver else []),
                checks,
                *([verdict.reasons] if verdict.reasons else []),
            ],
        )  # fmt: skip
    )
    return sections


def judge_policy(
    candidate: PolicyCandidate,
    simulation: Simulation,
    off: OffPolicy,
    truth: TruthComparison | None,
    *,
    governance_digest: str,
    actor: str,
    waiver: Waiver | None = None,
    context: Mapping[str, Any] | None = None,
    truth_curve: pd.DataFrame | None = None,
) -> PolicyJudgement:
    """Check, decide and card a policy version (no I/O)."""
    policy = candidate.policy
    checks = [
        check_equity(
            simulation.exposure,
            policy.equity.attribute,
            policy.equity.floor,
            policy.equity.alpha,
            int(getattr(policy.equity, "min_group_size", MIN_GROUP)),
        ),  # fmt: skip
        check_capacity(simulation, policy),
        check_value(simulation),
        check_off_policy(off),
        check_truth(truth),
    ]
    verdict = decide(checks, "waiver", waiver)
    moves = verdict.result in ("promoted", "waived")
    metrics = {**simulation.metrics(), **(truth.metrics() if truth is not None else {})}
    for check in checks:
        if check.name in ("equity", "off_policy"):
            metrics.update({f"gate.{check.name}.{k}": v for k, v in check.numbers.items() if math.isfinite(v)})
    metrics["gate.passed"] = float(moves)
    decision: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "actor": actor,
        "action": "promote",
        "model": candidate.name,
        "version": candidate.version,
        "family": FAMILY,
        "run_id": candidate.run_id,
        "result": verdict.result,
        "reasons": verdict.reasons,
        "checks": verdict.checks_as_dicts(),
        "policy_hash": governance_digest,  # the governance policy's, as every gate decision records
        "decision_policy": policy.name,
        "decision_policy_digest": candidate.digest,
        "waiver": None
        if verdict.waiver is None
        else {"approver": verdict.waiver.approver, "reason": verdict.waiver.reason},  # fmt: skip
        "champion_before": candidate.champion_version,
        "champion_after": candidate.version if moves else candidate.champion_version,
        "metrics": {k: v for k, v in metrics.items() if k.startswith(("simulation.expected", "truth.uplift"))},
        "card": f"cards/{candidate.name}/{candidate.version}/card.html",
    }
    sections = card_sections(candidate, simulation, truth, verdict, decision, dict(context or {}), truth_curve)
    title = f"Decision policy card: {candidate.name} v{candidate.version}"
    files: dict[str, bytes | str] = {
        "card.md": cards.render_sections_markdown(title, sections),
        "card.html": cards.render_sections_html(title, verdict.result, sections),
        "simulation.json": json.dumps(
            {
                "metrics": metrics,
                "allocation": simulation.allocation.to_dict("records"),
                "exposure": simulation.exposure.to_dict("records"),
                "truth": None if truth is None else truth.table().to_dict("records"),
            },
            indent=2,
            default=str,
        ),  # fmt: skip
    }
    return PolicyJudgement(verdict, decision, files, metrics)


def record_policy(settings: Settings, candidate: PolicyCandidate, judgement: PolicyJudgement) -> dict[str, Any]:
    """Move `champion` (when it passed), tag the version, attach the card and metrics, append the decision."""
    return store.record_verdict(
        settings, candidate.name, candidate.version, candidate.run_id, judgement.decision, judgement.card,
        metrics=judgement.metrics, max_reasons_chars=4000,
    )  # fmt: skip
