"""Commands that run the served models: `monitor`, `report` (the reviewers' site), `serve`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from custintel.settings import Settings
from flows.cli import views
from flows.cli.app import app, console, expected, fail, settings


@app.command()
def monitor(
    family: Annotated[
        list[str] | None, typer.Option(help="A family to monitor (churn, propensity, recommendation); repeatable.")
    ] = None,
    start: Annotated[
        str | None, typer.Option(help="Window start, ISO date or time, UTC (default: end - window_days).")
    ] = None,
    end: Annotated[str | None, typer.Option(help="Window end, ISO date or time, UTC (default: now).")] = None,
    retrain: Annotated[
        bool, typer.Option(help="Start retraining where a trigger fires (--no-retrain: report only).")
    ] = True,
    trials: Annotated[int | None, typer.Option(min=1, help="Optuna trials per study for a retrain.")] = None,
    executor: Annotated[
        Literal["inprocess", "external"],
        typer.Option(help="inprocess: run the train/audit deployment runs here; external: a worker runs them."),
    ] = "inprocess",
) -> None:
    """Drift, data-quality and performance reports of the served models; retrain where a trigger fires.

    Runs the Prefect flow monitor_models, which starts train_model and audit_and_promote as deployment runs.
    """
    from monitoring.policy import MONITORED

    config = settings()
    unknown = sorted(set(family or []) - set(MONITORED))
    if unknown:
        raise fail(f"unknown family {unknown}; choose from {', '.join(MONITORED)}")
    result = run_monitoring(config, family or None, start, end, retrain, trials, executor)
    views.print_monitoring(config, result)
    if any(d["action"] == "alert" for d in result["decisions"]):
        raise typer.Exit(code=3)  # a data-quality alert: a scheduler's failure, someone must look


def run_monitoring(
    config: Settings,
    families: list[str] | None,
    start: str | None,
    end: str | None,
    retrain: bool,
    trials: int | None,
    executor: Literal["inprocess", "external"],
) -> dict[str, Any]:
    """The Prefect flow monitor_models (its deployments registered first); expected errors are one line."""
    from flows.monitor import monitor_models, register_deployments
    from monitoring.monitor import MonitoringError
    from monitoring.policy import MonitoringPolicyError
    from monitoring.served import ServedLogError

    with expected(MonitoringPolicyError, MonitoringError, ServedLogError, ValueError, prefect=True):
        with console.status("Registering the train and audit deployments…"):
            register_deployments()
        with console.status("Monitoring the served models…"):
            return monitor_models(config.to_flow(), families, start, end, retrain, trials, executor)


@app.command()
def report(
    serve: Annotated[bool, typer.Option(help="Serve the site over HTTP after building it (Ctrl-C stops).")] = False,
    host: Annotated[str, typer.Option(help="Address to serve on (with --serve).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve on (with --serve).")] = 8090,
) -> None:
    """Build the governance reviewers' site: models, versions, aliases, decisions, waivers, model cards."""
    from governance.site import SiteError, build_site, serve_site

    config = settings()
    with expected(SiteError):
        index = build_site(config)
    console.print(f"reviewers' site: {index}  (open it, or `custintel report --serve`)")
    if serve:
        console.print(f"serving {config.site_dir} at http://{host}:{port}/ (Ctrl-C stops)")
        try:
            serve_site(config, host, port)
        except OSError as exc:
            raise fail(f"cannot serve on {host}:{port}: {exc}") from None


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 3000,
    refresh_consent: Annotated[
        bool, typer.Option(help="Rebuild the consent snapshot from the lake and identity store first.")
    ] = True,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, max=64, help="Worker processes (default CUSTINTEL_SERVING_WORKERS, else 1); one per core for bulk."
        ),
    ] = None,
) -> None:
    """Serve the champions with BentoML (`bentoml serve serving.service:Custintel`): scores, recommendations."""
    config = settings()
    env = serving_environment(config)
    if workers is not None:
        env["CUSTINTEL_SERVING_WORKERS"] = str(workers)
    if not config.api_keys and not config.serving_allow_anonymous:
        raise fail("set CUSTINTEL_SERVING_API_KEYS (comma-separated), or CUSTINTEL_SERVING_ALLOW_ANONYMOUS=true")
    from serving.keys import ApiKeysError, parse_api_keys

    try:
        parse_api_keys(config.serving_api_keys)
    except ApiKeysError as exc:
        raise fail(str(exc)) from None
    if refresh_consent:
        from serving.consent import build_consent_store
        from serving.policy import ServingPolicyError, load_serving_policy

        try:
            customers = build_consent_store(config, load_serving_policy(config.serving_policy))
        except (ServingPolicyError, FileNotFoundError) as exc:
            raise fail(f"cannot build the consent snapshot: {exc}") from None
        console.print(f"consent snapshot: {customers:,} customers with a recorded decision")
        if not (config.identity_dir / "crosswalk.parquet").is_file():
            unknown = load_serving_policy(config.serving_policy).unknown_consent
            console.print("  no identity crosswalk (no `custintel resolve` in this home): every customer's consent is "
                          f"unknown and follows the serving policy's unknown_consent {dict(unknown)}")  # fmt: skip
    console.print(f"serving on http://{host}:{port}  (OpenAPI: /docs.json; health: /livez, /readyz; metrics: /metrics)")
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    os.execvpe(bentoml, [bentoml, "serve", "serving.service:Custintel", "--host", host, "--port", str(port)], env)


def serving_environment(config: Settings) -> dict[str, str]:
    """The service's environment: this home, BentoML's state under it, no usage tracking."""
    env = dict(os.environ)
    env["CUSTINTEL_HOME"] = str(config.home_dir.resolve())
    env.setdefault("BENTOML_HOME", str((config.home_dir / "serving" / "bentoml").resolve()))
    env["BENTOML_DO_NOT_TRACK"] = "true"
    return env
