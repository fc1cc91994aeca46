"""`custintel insights`: the operations report (KPIs, topics, segments, anomalies, actions, alerts) and its page."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any

import typer

from flows.cli.app import Engine, app, console, run_engine, settings


@app.command("insights")
def insights(
    as_of: Annotated[
        dt.datetime | None,
        typer.Option("--as-of", formats=["%Y-%m-%d"], help="The date the report is as of (default: today)."),
    ] = None,
    engine: Annotated[
        Engine,
        typer.Option(help="prefect: run as the Prefect flow operations_insights (tracked); local: call the steps."),
    ] = "prefect",
) -> None:
    """KPIs, ticket topics and emerging issues, knowledge-base gaps, segments, source anomalies: the operations page."""
    from insights.errors import InsightsError

    config = settings()
    day = as_of.date() if as_of else None

    def under_prefect() -> dict[str, Any]:
        from flows.insights import operations_insights

        return operations_insights(config.to_flow(), str(day) if day else None)

    def locally(say: Callable[[str], None]) -> dict[str, Any]:
        from flows.insights import run_insights

        return run_insights(config, day, say)

    result = run_engine(engine, "Computing the operations report", "operations_insights", under_prefect, locally,
                        (InsightsError,))  # fmt: skip
    for warning in result["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True, highlight=False)
    console.print(
        f"operations report as of {result['as_of']}: {result['kpis']} KPIs, {result['topics']} topics "
        f"({result['emerging']} rising), {result['suggestions']} article suggestions, {result['segments']} segments, "
        f"{result['anomalies']} source anomalies, {result['alerts']} open alerts in {result['seconds']} s",
        soft_wrap=True,
        highlight=False,
    )
    console.print(f"page: {result['page']}\nreport: {result['report']}", soft_wrap=True, highlight=False)
