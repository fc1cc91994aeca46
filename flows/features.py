"""Prefect flow `build_features`: lake + identity -> point-in-time feature sets, labels, stores.

The steps are plain functions (`features.featurestore.steps`); `run_feature_build` wires
them once, and is called either with the steps as Prefect tasks (the flow; I/O tasks retry)
or as they are (`custintel features --engine local`).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pyarrow as pa
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from custintel.settings import Settings
from features.featurestore.build import (
    FeatureBuildError,
    SqlConnection,
    build_feature_set,
    build_interactions,
    build_labels,
    build_purchase_labels,
    create_spine,
)
from features.featurestore.config import FeatureConfig
from features.featurestore.definitions import (
    INTERACTION_FEATURES,
    INTERACTIONS_VERSION,
    LABELS_VERSION,
    OFFLINE_ONLY,
    PURCHASE_LABELS_VERSION,
    Feature,
    check_exclusions,
    feature_sets,
)
from features.featurestore.inputs import InputSummary
from features.featurestore.offline import read_manifest
from features.featurestore.steps import (
    BuiltSet,
    build_one,
    check_cutoffs,
    load_inputs,
    materialize,
    on_engine,
    write_set,
)
from features.featurestore.store import feature_config, offline_root, write_build_report
from flows.retries import io_task
from insights.anomalies import check_sources, raise_if_stopped, save_anomaly_report


@dataclass(frozen=True)
class Steps:
    """The build's steps, plain or wrapped as Prefect tasks."""

    load_inputs: Callable[..., Any]
    build_one: Callable[..., Any]
    write_set: Callable[..., Any]
    materialize: Callable[..., Any]
    write_report: Callable[..., Any]


PLAIN_STEPS = Steps(load_inputs, build_one, write_set, materialize, write_build_report)


TASK_STEPS = Steps(
    io_task("load-feature-inputs", load_inputs),
    task(name="build-feature-set", cache_policy=NO_CACHE, task_run_name="build-{key}")(build_one),
    io_task("write-offline", write_set),
    io_task("materialize-online", materialize),
    io_task("write-feature-manifest", write_build_report),
)


def run_feature_build(
    settings: Settings,
    as_of: list[dt.date] | None,
    online: bool,
    steps: Steps,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Build every feature set, the interactions and the labels for the cutoffs; store them; report."""
    started = time.perf_counter()
    sources = check_sources(settings)  # source anomalies, before anything is built (insights/anomalies.yaml)
    save_anomaly_report(settings, sources)
    for line in sources.lines():
        log(line)
    raise_if_stopped(sources)
    config = feature_config(settings)
    con, inputs = steps.load_inputs(settings, config)
    try:
        engine = on_engine(settings, con)
        try:
            if settings.engine == "spark":
                log(
                    f"building on Spark ({settings.spark_master}): the lake read and the same definitions, transpiled "
                    "from DuckDB SQL"
                )
            return _build(settings, config, engine, inputs, as_of, online, steps, log, started, sources.lines())
        finally:
            if engine is not con:
                engine.close()
    finally:
        con.close()


def _build(
    settings: Settings,
    config: FeatureConfig,
    con: SqlConnection,
    inputs: InputSummary,
    as_of: list[dt.date] | None,
    online: bool,
    steps: Steps,
    log: Callable[[str], None],
    started: float,
    source_anomalies: list[str],
) -> dict[str, Any]:
    seconds: dict[str, float] = {"load_inputs": round(time.perf_counter() - started, 2)}
    cutoffs = check_cutoffs(as_of, inputs.observed_until)
    observed_until = inputs.observed_until
    assert observed_until is not None  # checked with the cutoffs
    rows = create_spine(con, cutoffs)
    if rows == 0:
        known = "a transaction before" if "accounts" in inputs.derived else "an open account at"
        raise FeatureBuildError(f"no customer has {known} {', '.join(map(str, cutoffs))}")
    log(f"{inputs.customers:,} customers; {rows:,} (customer, cutoff) rows for {', '.join(map(str, cutoffs))}")
    time_range = {k: [None if v is None else str(v) for v in r] for k, r in inputs.time_range.items()}
    absent = set(inputs.absent)
    missing = inputs.missing()
    for kind, how in inputs.derived.items():
        log(f"{kind}: {how}")
    sets = feature_sets(config)
    check_exclusions(sets, config.exclude_features)
    report: dict[str, Any] = {
        "build_id": f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{'-'.join(map(str, cutoffs))}"[:80],
        "as_of": [str(d) for d in cutoffs],
        "engine": settings.engine if settings.engine == "duckdb" else f"{settings.engine} ({settings.spark_master})",
        "observed_until": str(observed_until),
        "inputs": {
            "rows": inputs.rows,
            "unlinked_rows": inputs.unlinked,
            "absent_sources": sorted(absent),
            "derived_sources": inputs.derived,
            "unmapped_columns": inputs.unmapped,
            "customers": inputs.customers,
            "time_range": time_range,
        },  # fmt: skip
        "sets": {},
        "online": {},
    }
    built: list[BuiltSet] = []  # everything written offline, in build order
    online_sets: list[tuple[BuiltSet, bool]] = []  # (set, grouped): what is served

    def build(key: str, fn: Callable[[SqlConnection], pa.Table], features: tuple[Feature, ...],
              definition: dict[str, Any], min_rows: int | None, **policy: Any) -> BuiltSet:  # fmt: skip
        t = time.perf_counter()
        b = steps.build_one(con, key, fn, features, definition, min_rows, **policy)
        seconds[key] = round(time.perf_counter() - t, 2)
        built.append(b)
        return b

    for fs in sets:
        usable, dropped = fs.without(missing, config.exclude_features)
        if usable is None:
            lacking = sorted(set(fs.sources) & absent)
            why = f"needs absent source(s) {lacking}" if lacking else "every feature was dropped"
            report["sets"][fs.key] = {"skipped": why, "dropped_features": dropped}
            continue
        fn = partial(build_feature_set, feature_set=usable)
        stored = read_manifest(offline_root(settings), usable.key)
        stored_columns = [c["name"] for c in stored["columns"]] if stored and "columns" in stored else None
        b = build(usable.key, fn, usable.features, usable.definition(), config.quality.min_rows,
                  collapsed=config.quality.collapsed, stored_columns=stored_columns)  # fmt: skip
        for name, why in b.dropped.items():
            log(f"WARNING {usable.key}.{name} dropped: {why}")
        dropped |= b.dropped
        if len(b.dropped) == len(usable.features):  # nothing left to store or serve
            built.remove(b)
            report["sets"][fs.key] = {"skipped": "every feature was dropped", "dropped_features": dropped}
            continue
        report["sets"][usable.key] = {"digest": b.digest, "features": len(usable.features) - len(b.dropped),
                                      "dropped_features": dropped}  # fmt: skip
        if usable.name not in OFFLINE_ONLY:
            online_sets.append((b, False))
        log(f"{usable.key}: {b.table.num_rows:,} rows x {len(usable.features) - len(b.dropped)} features")
    inter_def = {"name": "interactions", "version": INTERACTIONS_VERSION, "grain": "customer x product",
                 "features": [f.name for f in INTERACTION_FEATURES] + ["holds"]}  # fmt: skip
    b = build(f"interactions@{INTERACTIONS_VERSION}", build_interactions, INTERACTION_FEATURES, inter_def, None)
    online_sets.append((b, True))
    if b.table.num_rows == 0:
        report["sets"][b.key] = {"empty": "no purchase of a catalogue product before any cutoff"}
        log(f"{b.key}: empty (no purchase of a catalogue product before any cutoff)")
    label_def = {"name": "labels", "version": LABELS_VERSION, **config.labels.definition()}
    build(f"labels@{LABELS_VERSION}", lambda c: build_labels(c, config.labels, observed_until), (), label_def, None)
    purchase_def = {"name": "purchase_labels", "version": PURCHASE_LABELS_VERSION,
                    "horizon_days": config.labels.purchase_horizon_days}  # fmt: skip
    build(f"purchase_labels@{PURCHASE_LABELS_VERSION}",
          lambda c: build_purchase_labels(c, config.labels, observed_until), (), purchase_def, None)  # fmt: skip
    t = time.perf_counter()
    for b in built:
        steps.write_set(settings, b, time_range)
        report["sets"].setdefault(b.key, {}).update(
            {"digest": b.digest, "partitions": {d: {"rows": s["rows"]} for d, s in b.stats.items()},
             "null_rates": {d: {c: v["null_rate"] for c, v in s["columns"].items()} for d, s in b.stats.items()}}
        )  # fmt: skip
    seconds["write_offline"] = round(time.perf_counter() - t, 2)
    if online:
        t = time.perf_counter()
        for b, grouped in online_sets:
            report["online"][b.key] = steps.materialize(settings, b, grouped)
        seconds["materialize_online"] = round(time.perf_counter() - t, 2)
        log(f"online store ({'redis' if settings.redis_url else 'sqlite'}): {len(online_sets)} sets materialised")
    seconds["total"] = round(time.perf_counter() - started, 2)
    report["seconds"] = seconds
    report["source_anomalies"] = source_anomalies  # what the check before the build found (insights.anomalies)
    report["offline_root"] = str(settings.features_dir / "offline")
    report["report_path"] = str(steps.write_report(settings, report))
    return report


@task(name="publish-feature-report", cache_policy=NO_CACHE)
def publish_report(report: dict[str, Any]) -> None:
    """Rows and null rates beside the flow run in the Prefect UI."""
    rows = [
        {"set": k, "as_of": d, "rows": p["rows"]}
        for k, v in report["sets"].items()
        for d, p in v.get("partitions", {}).items()
    ]
    create_table_artifact(rows, key="feature-partitions", description=f"Feature build {report['build_id']}")
    lines = [f"# Feature build `{report['build_id']}`", "", f"as of {', '.join(report['as_of'])}", ""]
    lines += ["| set | digest | skipped or dropped |", "|---|---|---|"]
    for k, v in report["sets"].items():
        lines.append(
            f"| {k} | {v.get('digest', '')} | {v.get('skipped', '') or ', '.join(v.get('dropped_features', {}))} |"
        )
    create_markdown_artifact("\n".join(lines), key="feature-build")


@flow(name="build_features", log_prints=False)
def build_features(
    settings: dict[str, Any] | None = None, as_of: list[str] | None = None, online: bool = True
) -> dict[str, Any]:
    """Build the point-in-time feature sets and labels as of each date; materialise the latest online."""
    return _build_flow(Settings.from_flow(settings), as_of, online)


def _build_flow(settings: Settings, as_of: list[str] | None, online: bool) -> dict[str, Any]:
    days = [dt.date.fromisoformat(d) for d in as_of] if as_of else None
    logger = get_run_logger()
    report = run_feature_build(settings, days, online, TASK_STEPS, logger.info)
    publish_report(report)
    return report
