"""Prefect flow `monitor_models`: watch every served model, and retrain, audit and promote where the policy says.

For each family with a @champion: one task compares the served window of the inference log
with the champion's training rows (`monitoring.monitor.monitor_family`), writes the reports
and records the trigger decision with its numbers. For each family whose decision is
`retrain`, the flow starts `train_model` (on cutoffs moved forward by the new labelled
months) and then `audit_and_promote` as **deployment runs** linked to this flow run, so the
run history shows monitor -> train -> audit. A retrained model that fails the gate stays
@challenger; the champion keeps serving, and the service picks up a promoted one by itself.

Deployments: `register_deployments()` upserts `train_model/custintel` and
`audit_and_promote/custintel` (module-path entrypoints: no storage, no pull steps). A run of
a deployment is created with `run_deployment(..., timeout=0)`, which links it to the calling
flow run, and then executed here, in this process (`executor="inprocess"`, the default: no
worker needed, so it works on Prefect's ephemeral API), or left to whatever serves the
deployments (`executor="external"`: a worker or `prefect deploy`ed pool) while this flow
waits for it. Without a reachable deployment it falls back to an in-process subflow, which
Prefect links to the parent too.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, State
from prefect.context import FlowRunContext
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from custintel.settings import Settings
from monitoring.decisions import decision_entry, retrain_outcome, window_bounds
from monitoring.monitor import MonitoringRun, append_decision, monitor_family
from monitoring.policy import MONITORED, MonitoringPolicy, load_policy

DEPLOYMENT_NAME = "custintel"
TRAIN_DEPLOYMENT = f"train_model/{DEPLOYMENT_NAME}"
PROMOTE_DEPLOYMENT = f"audit_and_promote/{DEPLOYMENT_NAME}"
Executor = Literal["inprocess", "external"]


def register_deployments() -> dict[str, str]:
    """Upsert the deployments the monitor starts (idempotent); returns name -> deployment id."""
    from prefect.deployments.runner import EntrypointType

    from flows.promote import audit_and_promote
    from flows.train import train_model

    ids = {}
    for fl in (train_model, audit_and_promote):
        deployment = fl.to_deployment(name=DEPLOYMENT_NAME, entrypoint_type=EntrypointType.MODULE_PATH)
        ids[f"{fl.name}/{DEPLOYMENT_NAME}"] = str(deployment.apply())  # type: ignore[union-attr]
    return ids


def _deployment_exists(name: str) -> bool:
    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(name)
    except ObjectNotFound:
        return False
    return True


def launch(deployment: str, parameters: dict[str, Any], executor: Executor, fallback: Any) -> tuple[str | None, Any]:
    """Run a deployment as a child of the current flow run and wait; (child flow run id, its result).

    Raises when the child does not complete.
    """
    if not _deployment_exists(deployment):
        get_run_logger().warning(f"no deployment {deployment}: running {fallback.name} as a subflow")
        return None, fallback(**parameters, return_state=True).result()
    run: FlowRun
    if executor == "external":
        run = run_deployment(deployment, parameters=parameters, poll_interval=2, timeout=None)  # type: ignore[assignment]
    else:
        from prefect.flow_engine import run_flow
        from prefect.flows import load_flow_from_flow_run
        from prefect.utilities.asyncutils import run_coro_as_sync

        created: FlowRun = run_deployment(deployment, parameters=parameters, timeout=0)  # type: ignore[assignment]
        # The child's flow from its own deployment's entrypoint. Not prefect.flow_engine.load_flow: inside a worker's
        # flow-run process it reads PREFECT__FLOW_ENTRYPOINT, which names this (the monitor's) flow.
        child = run_coro_as_sync(load_flow_from_flow_run(created, use_placeholder_flow=False))
        state: State[Any] = run_flow(child, flow_run=created, return_type="state")  # type: ignore[assignment]
        if not state.is_completed():
            raise RuntimeError(f"{deployment} run {created.name} did not complete: {state.message}")
        return str(created.id), state.result()
    if run.state is None or not run.state.is_completed():
        message = run.state.message if run.state else "no state"
        raise RuntimeError(f"{deployment} run {run.name} did not complete: {message}")
    return str(run.id), run.state.result()  # persisted by the flow (persist_result=True)


def serving_log_rule(settings: Settings) -> tuple[str, str]:
    """How the inference log keeps customer keys (rule, salt), so labels can be joined to it."""
    from serving.policy import load_serving_policy

    rule = load_serving_policy(settings.serving_policy).audit.customer_key
    return rule, settings.serving_log_salt or "custintel"


def announce(entry: dict[str, Any]) -> None:
    """Emit the decision as a Prefect event (`custintel.monitoring.<action>`), for automations to act on.

    An alert (a data-quality failure) or a retrain can then notify a channel, open a ticket or page
    someone through a Prefect automation, without the monitor knowing who listens.
    """
    from prefect.events import emit_event

    emit_event(
        event=f"custintel.monitoring.{entry['action']}",
        resource={
            "prefect.resource.id": f"custintel.model.{entry['model']}",
            "custintel.version": entry["version"],
            "custintel.family": entry["family"],
        },  # fmt: skip
        payload={k: entry[k] for k in ("why", "fired", "alerts", "rows", "window", "report")},
    )


@task(name="monitor-family", cache_policy=NO_CACHE)
def monitor_one(
    settings: Settings, policy: MonitoringPolicy, family: str, start: dt.datetime, end: dt.datetime, now: dt.datetime
) -> MonitoringRun | None:
    """One family's pass (reports written, decision made, not yet recorded)."""
    return monitor_family(settings, policy, family, start, end, now, serving_log_rule(settings))


def publish_summary(entries: list[dict[str, Any]], retrains: list[dict[str, Any]]) -> None:
    """The decisions beside the flow run in the Prefect UI."""
    lines = ["# Monitoring", "", "| model | version | rows | action | why |", "|---|---|---|---|---|"]
    lines += [f"| {e['model']} | {e['version']} | {e['rows']:,} | {e['action']} | {e['why']} |" for e in entries]
    if retrains:
        lines += ["", "## Retraining", ""]
        lines += [f"- {r['family']}: {r['outcome']}" for r in retrains]
    create_markdown_artifact("\n".join(lines), key="monitoring")


@flow(name="monitor_models", log_prints=False)
def monitor_models(
    settings: dict[str, Any] | None = None,
    families: list[str] | None = None,
    start: str | None = None,
    end: str | None = None,
    retrain: bool = True,
    trials: int | None = None,
    executor: Executor = "inprocess",
) -> dict[str, Any]:
    """Monitor each served model over the window; retrain, audit and promote where a trigger fires."""
    from flows.promote import audit_and_promote
    from flows.train import train_model

    config = Settings.from_flow(settings)
    passed_on = config.to_flow()  # the same settings, whole, for the retrain and gate runs
    logger = get_run_logger()
    policy = load_policy(config.monitoring_policy)
    now = dt.datetime.now(dt.UTC)
    since, until = window_bounds(policy, start, end, now)
    context = FlowRunContext.get()
    flow_run_id = str(context.flow_run.id) if context and context.flow_run else None
    decisions_path = config.monitoring_dir / "decisions.jsonl"
    wanted = [f for f in (families or MONITORED) if f in policy.families]
    entries, runs = [], {}
    for family in wanted:
        run = monitor_one(config, policy, family, since, until, now)
        if run is None:
            logger.info(f"{family}: no @champion, nothing to monitor")
            continue
        runs[family] = run
        entry = decision_entry(run, flow_run_id, retrain)
        append_decision(decisions_path, entry)
        entries.append(entry)
        announce(entry)
        logger.info(f"{family}: {entry['action']}: {entry['why']}")
    retrains = []
    for entry in entries:
        if entry["action"] != "retrain":
            continue
        family = entry["family"]
        result: dict[str, Any] = {
            "at": dt.datetime.now(dt.UTC).isoformat(),
            "kind": "retrain",
            "family": family,
            "shift_months": entry["new_labelled_months"],
            "monitor_flow_run_id": flow_run_id,
        }
        t = time.perf_counter()
        try:
            params = {"settings": passed_on, "family": family, "trials": trials or policy.retrain.trials,
                      "shift_months": entry["new_labelled_months"]}  # fmt: skip
            result["train_flow_run_id"], outcomes = launch(TRAIN_DEPLOYMENT, params, executor, train_model)
            result["trained"] = [f"{r['name']} v{r['version']}" for o in outcomes for r in o["registered"]]
            if policy.retrain.promote:
                gated = []
                for o in outcomes:
                    for r in o["registered"]:
                        args = {"model": r["name"], "settings": passed_on, "version": str(r["version"]),
                                "actor": "custintel monitor"}  # fmt: skip
                        run_id, decision = launch(PROMOTE_DEPLOYMENT, args, executor, audit_and_promote)
                        gated.append({"model": r["name"], "version": str(r["version"]), "result": decision["result"],
                                      "reasons": decision["reasons"], "flow_run_id": run_id})  # fmt: skip
                result["gate"] = gated
            result["outcome"] = retrain_outcome(result["trained"], result.get("gate", []))
        except Exception as exc:  # noqa: BLE001 - the champion keeps serving; the failure is recorded
            result["outcome"] = f"failed: {type(exc).__name__}: {exc}"[:1000]
            logger.error(f"{family}: retraining {result['outcome']}")
        result["seconds"] = round(time.perf_counter() - t, 1)
        append_decision(decisions_path, result)
        retrains.append(result)
    task(name="publish-monitoring-summary", cache_policy=NO_CACHE)(publish_summary)(entries, retrains)
    return {
        "window": {"start": since.isoformat(), "end": until.isoformat()},
        "decisions": entries,
        "retrains": retrains,
    }
