"""`custintel deploy`: every flow as a Prefect deployment on the stack's work pool, with the config's schedules.

Each deployment is named `custintel` (so `monitor_models` finds `train_model/custintel` and
`audit_and_promote/custintel`), with a module-path entrypoint (`flows.train.train_model`): a
process worker imports the installed package, so there is no storage, image or pull step
(Prefect's `deploy(..., build=False, push=False)` does the same `apply` for a process pool). The
deploying command's settings become each deployment's default `settings` parameter
(`Settings.to_flow`: no secrets, a worker reads those from its own environment); when the stack is
up under the home, its tracking server and Spark master fill what the environment leaves unset.
Applying again updates each deployment in place (idempotent).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from custintel.settings import Settings
from custintel.yaml_config import load_yaml_model

DEPLOYMENT_NAME = "custintel"
# flow name -> module and attribute of the flow object
FLOWS = {
    "ingest_sources": "flows.ingest:ingest_sources",
    "resolve_identities": "flows.resolve:resolve_identities",
    "build_features": "flows.features:build_features",
    "train_model": "flows.train:train_model",
    "audit_and_promote": "flows.promote:audit_and_promote",
    "monitor_models": "flows.monitor:monitor_models",
    "retention_apply": "flows.retention:retention_apply",
    "promote_decision_policy": "flows.decisions:promote_decision_policy",
    "analyse_experiment": "flows.experiments:analyse_experiment_flow",
}


class DeploymentsError(ValueError):
    """The deployments config, or the Prefect API it is applied to, cannot be used; the message says why."""


class FlowDeployment(BaseModel):
    """One flow's deployment: an optional cron schedule and default parameters."""

    model_config = ConfigDict(extra="forbid")
    cron: str | None = Field(None, pattern=r"^\S+( \S+){4}$")
    parameters: dict[str, Any] = Field(default_factory=dict)
    paused: bool = False


class DeploymentsConfig(BaseModel):
    """`flows/deployments.yaml`, or a user's copy."""

    model_config = ConfigDict(extra="forbid")
    work_pool: str = Field("custintel", pattern=r"^[A-Za-z0-9_-]+$")
    timezone: str = "UTC"
    flows: dict[str, FlowDeployment]


def load_deployments_config(path: Path | None) -> DeploymentsConfig:
    """The deployments config: `path`, or the packaged flows/deployments.yaml; unknown flows and time zones named."""
    import zoneinfo

    config = load_yaml_model(
        DeploymentsConfig, path, ("flows", "deployments.yaml"), DeploymentsError, "deployments config",
        "work_pool, timezone and flows",
    )  # fmt: skip
    unknown = sorted(set(config.flows) - set(FLOWS))
    if unknown:
        raise DeploymentsError(f"flows: unknown flow {', '.join(unknown)} (known: {', '.join(FLOWS)})")
    try:
        zoneinfo.ZoneInfo(config.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise DeploymentsError(f"timezone: {config.timezone!r} is not an IANA time zone") from None
    return config


def flow_object(name: str) -> Any:
    """The flow object behind a flow name."""
    module, attribute = FLOWS[name].split(":")
    return getattr(importlib.import_module(module), attribute)


def deployed_settings(settings: Settings) -> dict[str, Any]:
    """The settings parameter deployments get: this command's, the running stack's services where unset."""
    from flows.stack import read_state

    state = read_state(settings)
    if state is not None:
        env = state["env"]
        updates: dict[str, Any] = {}
        if settings.mlflow_tracking_uri is None and "CUSTINTEL_MLFLOW_TRACKING_URI" in env:
            updates["mlflow_tracking_uri"] = env["CUSTINTEL_MLFLOW_TRACKING_URI"]
        if "CUSTINTEL_SPARK_MASTER" in env and "spark_master" not in settings.model_fields_set:
            updates["spark_master"] = env["CUSTINTEL_SPARK_MASTER"]
        settings = settings.model_copy(update=updates)
    return settings.to_flow()


def deploy_flows(settings: Settings, config_path: Path | None, work_pool: str | None = None) -> list[dict[str, Any]]:
    """Upsert every configured flow's deployment on the work pool; one row per deployment."""
    from prefect.client.orchestration import get_client
    from prefect.deployments.runner import EntrypointType
    from prefect.exceptions import ObjectNotFound
    from prefect.schedules import Cron

    config = load_deployments_config(config_path)
    pool = work_pool
    if pool is None:
        from flows.stack import read_state

        state = read_state(settings)
        pool = state["work_pool"] if state else config.work_pool
    try:
        with get_client(sync_client=True) as client:
            client.read_work_pool(pool)
    except ObjectNotFound:
        raise DeploymentsError(
            f"work pool {pool!r} does not exist on the Prefect API: run `custintel stack up`"
        ) from None
    except Exception as exc:  # noqa: BLE001 - the API is unreachable: one line naming it
        from prefect.settings import PREFECT_API_URL

        raise DeploymentsError(f"cannot reach the Prefect API {PREFECT_API_URL.value()}: {exc}") from None
    passed = deployed_settings(settings)
    rows = []
    for name, spec in config.flows.items():
        fl = flow_object(name)
        schedules = [Cron(spec.cron, timezone=config.timezone)] if spec.cron else None
        deployment = fl.to_deployment(
            name=DEPLOYMENT_NAME,
            schedules=schedules,
            paused=spec.paused,
            parameters={"settings": passed, **spec.parameters},
            work_pool_name=pool,
            entrypoint_type=EntrypointType.MODULE_PATH,
            description=(fl.description or "").split("\n")[0] or None,
            tags=["custintel"],
        )
        deployment_id = deployment.apply(work_pool_name=pool)
        rows.append({
            "name": f"{fl.name}/{DEPLOYMENT_NAME}",
            "id": str(deployment_id),
            "work_pool": pool,
            "schedule": f"{spec.cron} ({config.timezone})" if spec.cron else "on demand",
        })  # fmt: skip
    return rows
