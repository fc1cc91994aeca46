"""Commands on source data: `generate` a synthetic world, `ingest` a drop, read the `quarantine`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flows.cli import views
from flows.cli.app import Engine, app, console, fail, run_engine, settings


@app.command()
def generate(
    customers: Annotated[int, typer.Option(help="True persons in the world.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed and knobs give the same bytes.")] = 7,
    out: Annotated[Path | None, typer.Option(help="Folder for the drop (default: <home>/data/world).")] = None,
    duplicate_rate: Annotated[float, typer.Option(help="Share of persons with extra CRM records.")] = 0.2,
    typo_rate: Annotated[float, typer.Option(help="Chance of a typo in a secondary record's field.")] = 0.08,
    missing_rate: Annotated[float, typer.Option(help="Base chance an optional field is empty.")] = 0.05,
    malformed_rate: Annotated[float, typer.Option(help="Share of rows per table deliberately broken.")] = 0.003,
    acquired_share: Annotated[float, typer.Option(help="Share of persons from the acquired company.")] = 0.15,
    bias_strength: Annotated[
        float,
        typer.Option(
            help="Skew of the protected group's outcome (higher churn) and features (under-recorded "
            "service signals); 0 = none."
        ),
    ] = 0.0,
    bias_attribute: Annotated[
        str, typer.Option(help="Attribute defining the protected group: gender, age_band or region.")
    ] = "gender",
    bias_group: Annotated[str, typer.Option(help="The protected group's value of that attribute.")] = "F",
    drift_date: Annotated[
        str | None, typer.Option(help="YYYY-MM-DD after which the population and behaviour shift.")
    ] = None,
    drift_strength: Annotated[float, typer.Option(help="How far they shift; 0 = none.")] = 0.0,
    chunk_size: Annotated[
        int, typer.Option(help="Persons simulated per chunk (bounds memory; part of the world's identity).")
    ] = 50_000,
    outbreak_topic: Annotated[
        str | None,
        typer.Option(help="A planted ticket topic surging from --outbreak-start (e.g. technical_app_update_login)."),
    ] = None,
    outbreak_start: Annotated[str | None, typer.Option(help="YYYY-MM-DD: the first day of the outbreak.")] = None,
    outbreak_strength: Annotated[
        float, typer.Option(help="Extra outbreak tickets per day, as a share of the normal daily ticket volume.")
    ] = 0.25,
) -> None:
    """Write a synthetic multi-source customer world and its hidden truth."""
    from features.synthetic import WorldConfig, generate_world

    try:
        cfg = WorldConfig(
            customers=customers,
            seed=seed,
            duplicate_rate=duplicate_rate,
            typo_rate=typo_rate,
            missing_rate=missing_rate,
            malformed_rate=malformed_rate,
            acquired_share=acquired_share,
            bias_strength=bias_strength,
            bias_attribute=bias_attribute,
            bias_group=bias_group,
            drift_date=dt.date.fromisoformat(drift_date) if drift_date else None,
            drift_strength=drift_strength,
            chunk_size=chunk_size,
            outbreak_topic=outbreak_topic,
            outbreak_start=dt.date.fromisoformat(outbreak_start) if outbreak_start else None,
            outbreak_strength=outbreak_strength,
        )
    except (ValidationError, ValueError) as exc:
        raise fail(f"invalid generator settings: {exc}") from None
    target = out or settings().default_data_dir / "world"
    with Progress(
        TextColumn("[bold]generating[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("chunks"),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    ) as progress:
        bar = progress.add_task("generate", total=-(-cfg.customers // cfg.chunk_size))
        summary = generate_world(cfg, target, on_chunk=lambda done, total: progress.update(bar, completed=done))
    views.print_world(cfg, summary.rows, summary.not_yet_arrived, target)


@app.command()
def ingest(
    source: Annotated[Path, typer.Option(help="Folder of the source drop to ingest.")],
    contracts: Annotated[
        Path | None, typer.Option(help="Folder of contract YAML files (default: the contracts shipped with custintel).")
    ] = None,
    engine: Annotated[
        Engine,
        typer.Option(help="prefect: run as the Prefect flow ingest_sources (tracked); local: call the step directly."),
    ] = "prefect",
    export_date: Annotated[
        dt.datetime | None,
        typer.Option(
            formats=["%Y-%m-%d"],
            help="The day the data was exported (default: export_date in the drop's manifest.json; required "
            "without one: files' modification times are never used).",
        ),
    ] = None,
) -> None:
    """Check a drop against its data contracts and land it in the lake; rejects go to quarantine."""
    from features.contracts import load_contracts
    from features.lake import IngestError, IngestionReport, export_time, ingest_drop

    config = settings()
    exported = export_date.date() if export_date else None
    if source.is_dir():
        try:
            export_time(source, exported)  # before anything slow starts
        except IngestError as exc:
            raise fail(str(exc)) from None

    def under_prefect() -> IngestionReport:
        from flows.ingest import ingest_sources

        return ingest_sources(
            str(source), config.to_flow(), str(contracts) if contracts else None, str(exported) if exported else None
        )

    def locally(say: Callable[[str], None]) -> IngestionReport:
        return ingest_drop(source, config, load_contracts(contracts) if contracts else None,
                           progress=lambda t, n: say(f"Ingesting {t}: {n:,} rows read"),
                           export_date=exported)  # fmt: skip

    report = run_engine(engine, "Ingesting", "ingest_sources", under_prefect, locally, (IngestError, ValueError))
    views.print_ingestion(report)
    console.print(
        f"Lake: [bold]{config.lake_dir}[/]  quarantine: [bold]{config.quarantine_dir}[/]  "
        f"report: [bold]{config.reports_dir / 'ingest' / (report.drop_id + '.json')}[/]"
    )
    emptied = [name for name, t in report.tables.items() if t.read > 0 and t.accepted == 0]
    if emptied:  # landed and kept whole in quarantine, but nothing of the table reached the lake
        reasons = {name: next(iter(report.tables[name].reasons), "see the quarantine") for name in emptied}
        raise fail(
            "every row was quarantined in "
            + "; ".join(f"{name} ({report.tables[name].read:,} rows, mostly {reasons[name]})" for name in emptied)
            + f": `custintel quarantine {emptied[0]}` shows why"
        )


@app.command()
def quarantine(
    table: Annotated[str, typer.Argument(help="Source table, e.g. crm_accounts.")],
    limit: Annotated[int, typer.Option(help="How many example rows to show.")] = 10,
) -> None:
    """Show why rows of a table were quarantined (for data stewards)."""
    from features.lake import read_quarantine

    config = settings()
    issues = read_quarantine(config, table)
    if issues.empty:
        console.print(f"No quarantined rows or issues for {table}.")
        return
    views.print_quarantine(table, issues, limit)
    console.print(f"Quarantine: [bold]{config.quarantine_dir}[/]")
