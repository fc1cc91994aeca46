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
import pyarrow.compute as pc

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
from features.suppression import load_suppression, suppressed_rows


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
        summary = load_lake_inputs(
            con, settings, config, str(crosswalk), str(golden) if golden.is_file() else None, load_suppression(settings)
        )
    except BaseException:
        con.close()
        raise
    return con, summary


def write_offline(
    settings: Settings, set_key: str, definition: dict[str, Any], digest: str, table: pa.Table, stats: dict[str, Any]
) -> list[str]:
    """Write a built set's partitions (with their features' data classes) to the offline store; return their paths.

    A suppressed customer's row is never written.
    """
    from features.data_classes import feature_classes

    classes = feature_classes(feature_config(settings))
    table = without_suppressed(settings, table)
    root = offline_root(settings)
    return [str(p) for p in write_partitions(root, set_key, definition, digest, table, stats, classes)]


def open_online_store(settings: Settings) -> OnlineStore:
    """Redis when CUSTINTEL_REDIS_URL is set, else SQLite under home."""
    if settings.redis_url:
        return RedisOnlineStore(settings.redis_url, settings.online_namespace)
    return SQLiteOnlineStore(settings.features_dir / "online.sqlite")


def without_suppressed(settings: Settings, table: pa.Table) -> pa.Table:
    """The rows of a feature table whose `customer_key` is not on the suppression list.

    A customer key is matched as a key and as a record id (a user's own table is keyed by
    its own ids, e.g. the CRM's).
    """
    suppression = load_suppression(settings)
    if not suppression or "customer_key" not in table.column_names or table.num_rows == 0:
        return table
    keys = pa.table({"customer_key": pc.unique(table.column("customer_key"))}).to_pandas()
    gone = keys.loc[suppressed_rows(keys, suppression, record_ids=("customer_key",)).to_numpy(), "customer_key"]
    if gone.empty:
        return table
    column = table.column("customer_key")
    return table.filter(pc.invert(pc.is_in(column, pa.array(gone.tolist()).cast(column.type))))


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
        table = without_suppressed(settings, table)
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
