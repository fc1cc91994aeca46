"""The promotion gate as a flow: audit a challenger, judge it against the policy and the champion, record it.

The steps are `governance.promotion`'s: `gather` reads everything (registry, run artifacts,
golden records) and loads the two models; `judge` is pure (scores, audit, checks, verdict,
card); `record` writes (aliases, version tags, the card, the decision log). The whole of
one model's promotion holds that model's lock, so two gates racing on one model run one
after the other and never leave two champions, none, or a `previous` that was never champion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from custintel.settings import Settings
from flows.retries import io_task
from governance import gate, store
from governance.policy import load_policy
from governance.promotion import Candidate, Judgement, gather, judge, record, rollback
from models.registry import Registry

__all__ = ["PLAIN_STEPS", "TASK_STEPS", "GateSteps", "audit_and_promote", "rollback", "run_gate"]


@dataclass(frozen=True)
class GateSteps:
    """The gate's steps, plain or wrapped as Prefect tasks."""

    gather: Callable[..., Candidate]
    judge: Callable[..., Judgement]
    record: Callable[..., dict[str, Any]]


PLAIN_STEPS = GateSteps(gather, judge, record)
TASK_STEPS = GateSteps(
    io_task("gather-challenger", gather),
    task(name="audit-and-judge", cache_policy=NO_CACHE)(judge),
    io_task("record-decision", record),
)


def run_gate(
    settings: Settings, model: str, version: str | None, waiver: gate.Waiver | None, actor: str, steps: GateSteps
) -> dict[str, Any]:
    """One model's promotion, under its lock: gather, judge, record."""
    policy = load_policy(settings.governance_policy)
    name = store.resolve_model(Registry(settings), model)
    with store.model_lock(settings, name):
        candidate = steps.gather(settings, name, version)
        judgement = steps.judge(candidate, policy, waiver, actor)
        return steps.record(settings, candidate, judgement)


def publish_decision(decision: dict[str, Any]) -> None:
    """The decision beside the flow run in the Prefect UI."""
    lines = [f"# {decision['model']} v{decision['version']}: {decision['result']}", ""]
    lines += [f"- {r}" for r in decision["reasons"]] or ["- every check passed"]
    create_markdown_artifact("\n".join(lines), key="gate-decision")


@flow(name="audit_and_promote", log_prints=False, persist_result=True)  # read back by a monitor
def audit_and_promote(
    model: str,
    settings: dict[str, Any] | None = None,
    version: str | None = None,
    approver: str | None = None,
    reason: str | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """Audit a challenger and promote it to @champion if the policy's checks pass (or a waiver covers them)."""
    waiver = gate.Waiver(approver, reason or "") if approver else None
    decision = run_gate(Settings.from_flow(settings), model, version, waiver, actor or store.actor(), TASK_STEPS)
    task(name="publish-decision", cache_policy=NO_CACHE)(publish_decision)(decision)
    return decision
