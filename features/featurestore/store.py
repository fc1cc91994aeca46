"""The feature layer's I/O: configuration, inputs from the lake, the stores and the build report.

Layout under `<home>/features/`:
    offline/<set>/v<version>/...   the offline store (see `offline.py`)
    online.sqlite                  the embedded online store (Redis when CUSTINTEL_REDIS_URL is set)
    manifest.json                  the last build: sets, versions, rows, null rates, time range, inputs
and `<home>/reports/features/<build_id>.json` per build.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from custintel.atomic_files import write_text_atomically
from custintel.settings import Settings
from features.featurestore.config import FeatureConfig, load_feature_config
from features.featurestore.inputs import FeatureInputError, InputSummary, load_lake_inputs
from features.featurestore.offline import write_partitions
from features.featurestore.online import (
    OnlineStore,
    RedisOnlineStore,
    SQLiteOnlineStore,
    online_documents,
    set_layout,
)


def feature_config(settings: Settings) -> FeatureConfig:
    """The configured feature layer (CUSTINTEL_FEATURES_CONFIG, else the shipped default)."""
    return load_feature_config(settings.features_config)


def offline_root(settings: Settings) -> Path:
    """Root of the offline store."""
    return settings.features_dir / "offline"


def open_feature_inputs(settings: Settings, config: FeatureConfig) -> tuple[duckdb.DuckDBPyConnection, InputSummary]:
    """A DuckDB connection holding the canonical inputs read from the lake and the identity crosswalk."""
    crosswalk = settings.identity_dir / "crosswalk.parquet"
    if not crosswalk.is_file():
        raise FeatureInputError(f"no identity crosswalk at {crosswalk}: run `custintel resolve` first")
    spill = settings.features_dir / "duckdb-spill"
    spill.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(
        config={
            "memory_limit": settings.features_memory_limit,
            "temp_directory": str(spill),
            "preserve_insertion_order": False,
        }
    )
    try:
        golden = settings.identity_dir / "golden_records.parquet"
        summary = load_lake_inputs(con, settings, config, str(crosswalk), str(golden) if golden.is_file() else None)
    except BaseException:
        con.close()
        raise
    return con, summary


def write_offline(
    settings: Settings, set_key: str, definition: dict[str, Any], digest: str, table: pa.Table, stats: dict[str, Any]
) -> list[str]:
    """Write a built set's partitions to the offline store, with its features' data classes; return their paths."""
    from features.data_classes import feature_classes

    classes = feature_classes(feature_config(settings))
    root = offline_root(settings)
    return [str(p) for p in write_partitions(root, set_key, definition, digest, table, stats, classes)]


def open_online_store(settings: Settings) -> OnlineStore:
    """Redis when CUSTINTEL_REDIS_URL is set, else SQLite under home."""
    if settings.redis_url:
        return RedisOnlineStore(settings.redis_url, settings.online_namespace)
    return SQLiteOnlineStore(settings.features_dir / "online.sqlite")


def materialize_online(
    settings: Settings, set_key: str, table: pa.Table, meta: dict[str, Any], grouped: bool = False
) -> int | None:
    """Replace a set in the online store with one cutoff's rows; return the customers written.

    The set's metadata records its features (`columns`), which of them are numbers in every
    document (`numeric`: a JSON number or null) and whether it is `grouped`; a reader uses
    them to fetch only the sets it needs. A backfill never moves serving back in time: when
    the store already holds the set as of a later date, nothing is written and None is returned.
    """
    with open_online_store(settings) as store:
        online_as_of = store.sets().get(set_key, {}).get("as_of")
        if online_as_of is not None and str(online_as_of) > str(meta["as_of"]):
            return None
        layout = set_layout(table, grouped)
        return store.replace_set(set_key, online_documents(table, grouped=grouped), {**meta, **layout})


def write_build_report(settings: Settings, report: dict[str, Any]) -> Path:
    """The build's manifest beside the stores, and a copy under reports/features/."""
    text = json.dumps(report, indent=2, default=str)
    settings.features_dir.mkdir(parents=True, exist_ok=True)
    reports = settings.reports_dir / "features"
    reports.mkdir(parents=True, exist_ok=True)
    for path in (settings.features_dir / "manifest.json", reports / f"{report['build_id']}.json"):
        write_text_atomically(path, text)
    return reports / f"{report['build_id']}.json"
