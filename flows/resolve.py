"""Prefect flow `resolve_identities`: ingested sources -> customers with stable keys and golden records."""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from custintel.settings import Settings
from features.identity.config import IdentityConfig
from features.identity.resolve import Resolution, ResolveOptions, resolve_records
from features.identity.store import (
    PreviousRun,
    identity_config,
    load_identity_records,
    read_previous_run,
    resolve_options,
    write_resolution,
)


@task(name="load-identity-records", cache_policy=NO_CACHE)
def load_records(settings: Settings, config: IdentityConfig) -> pd.DataFrame:
    """Normalised identity records of every configured source, from the lake."""
    records = load_identity_records(settings, config)
    get_run_logger().info("%s identity records from %s sources", f"{len(records):,}", len(config.sources))
    return records


@task(name="load-previous-run", cache_policy=NO_CACHE)
def load_previous(settings: Settings, reuse_model: bool) -> PreviousRun:
    """The last run's crosswalk and issued keys, and its model when it is to be reused."""
    return read_previous_run(settings, reuse_model)


@task(name="resolve", cache_policy=NO_CACHE)
def resolve(
    records: pd.DataFrame, config: IdentityConfig, options: ResolveOptions, previous: PreviousRun
) -> Resolution:
    """Deterministic pass, probabilistic pass, clusters, stable keys, golden records."""
    return resolve_records(
        records,
        config,
        options,
        previous.crosswalk,
        model=previous.model,
        progress=get_run_logger().info,
        reserved_keys=previous.issued_keys,
    )


@task(name="write-identity-outputs", cache_policy=NO_CACHE)
def write_outputs(
    settings: Settings, records: pd.DataFrame, resolution: Resolution, options: ResolveOptions
) -> dict[str, Any]:
    """Replace the crosswalk, golden records, conflicts and links; append the key events."""
    return write_resolution(settings, records, resolution, options)


@task(name="publish-identity-report", cache_policy=NO_CACHE)
def publish_report(run: dict[str, Any]) -> None:
    """Counts and timings beside the flow run in the Prefect UI."""
    stats = run["stats"]
    rows = [{"source": k, "records": v} for k, v in stats["records_by_source"].items()]
    create_table_artifact(rows, key="identity-records", description=f"Identity run {run['run_id']}")
    lines = [
        f"# Identity resolution `{run['run_id']}`",
        "",
        f"{stats['records']:,} records resolved into {stats['customers']:,} customers "
        f"({stats['single_record_customers']:,} with one record).",
        "",
        "| links by rule | count |",
        "|---|---|",
        *[f"| {k} | {v:,} |" for k, v in stats["links_by_rule"].items()],
        "",
        "| key events | count |",
        "|---|---|",
        *[f"| {k} | {v:,} |" for k, v in stats["key_events"].items()],
        "",
        "| conflicts by attribute | count |",
        "|---|---|",
        *[f"| {k} | {v:,} |" for k, v in stats["conflicts_by_attribute"].items()],
    ]
    create_markdown_artifact("\n".join(lines), key="identity-report")


@flow(name="resolve_identities", log_prints=False)
def resolve_identities(settings: dict[str, Any] | None = None, reuse_model: bool = False) -> dict[str, Any]:
    """Resolve the lake's identity records into customers; returns the run summary."""
    return _resolve(Settings.from_flow(settings), reuse_model)


def _resolve(settings: Settings, reuse_model: bool) -> dict[str, Any]:
    config = identity_config(settings)
    options = resolve_options(settings)
    records = load_records(settings, config)
    resolution = resolve(records, config, options, load_previous(settings, reuse_model))
    run = write_outputs(settings, records, resolution, options)
    publish_report(run)
    return run
