"""Prefect flow `ingest_sources`: land a source drop in the lake behind its contracts."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from custintel.settings import Settings
from features.contracts import load_contracts
from features.lake import IngestionReport, ingest_drop


@task(name="check-and-land-drop")
def land_drop(
    source_dir: Path, settings: Settings, contracts_dir: Path | None, export_date: dt.date | None = None
) -> IngestionReport:
    """Check every table of the drop and swap it into the lake (all or nothing)."""
    logger = get_run_logger()
    last: dict[str, int] = {}

    def log_progress(table: str, rows: int) -> None:
        if rows - last.get(table, 0) >= 1_000_000 or table not in last:
            logger.info("%s: %s rows read", table, f"{rows:,}")
            last[table] = rows

    contracts = load_contracts(contracts_dir) if contracts_dir else None
    return ingest_drop(source_dir, settings, contracts=contracts, progress=log_progress, export_date=export_date)


@task(name="publish-ingestion-report")
def publish_report(report: IngestionReport) -> None:
    """Show the counts per table in the Prefect UI, beside the flow run."""
    rows = [
        {
            "table": t,
            "read": r.read,
            "accepted": r.accepted,
            "quarantined": r.quarantined,
            "suppressed": r.suppressed,
            "nulled values": r.nulled_values,
            "reconciles": r.reconciles,
            "skipped": r.skipped or "",
        }
        for t, r in report.tables.items()
    ]
    create_table_artifact(rows, key="ingestion-counts", description=f"Drop {report.drop_id}")
    lines = [
        f"# Ingestion of drop `{report.drop_id}`",
        "",
        f"Source: `{report.drop_dir}`  ",
        f"Export time: {report.as_of}  ",
        f"Replaced an earlier ingestion of this drop: {report.replaced_existing}",
        "",
        "| table | top reasons for quarantine |",
        "|---|---|",
    ]
    for t, r in report.tables.items():
        top = "; ".join(f"{k} ({n})" for k, n in list(r.reasons.items())[:4]) or "none"
        lines.append(f"| {t} | {top} |")
    create_markdown_artifact("\n".join(lines), key="ingestion-report")


@flow(name="ingest_sources", log_prints=False)
def ingest_sources(
    source_dir: str,
    settings: dict[str, Any] | None = None,
    contracts_dir: str | None = None,
    export_date: str | None = None,
) -> IngestionReport:
    """Ingest one drop folder: contracts checked, rejects quarantined with reasons, counts reconciled.

    `settings`: the starting command's settings (`Settings.to_flow`); this process's environment when None.
    """
    exported = dt.date.fromisoformat(export_date) if export_date else None
    report = land_drop(
        Path(source_dir), Settings.from_flow(settings), Path(contracts_dir) if contracts_dir else None, exported
    )
    publish_report(report)
    return report
