"""The offline store: Parquet partitioned by feature-set version and cutoff, queried with DuckDB.

Layout under `<home>/features/offline/`:
    <set>/v<version>/manifest.json                 definitions, digest, and per cutoff: rows,
                                                   null rates and profiles, the data's time range
    <set>/v<version>/as_of=<YYYY-MM-DD>/data.parquet
for the feature sets, `interactions` and `labels`. A version's definitions are fixed:
writing other definitions under an existing version is refused (bump the version).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from custintel.atomic_files import replace_atomically, write_text_atomically
from custintel.sql import text as sql_text
from custintel.sql import text_list as sql_text_list


class OfflineStoreError(RuntimeError):
    """The offline store is missing a partition, or a write would mix definitions."""


def set_dir(root: Path, set_key: str) -> Path:
    """Folder of one feature-set version (`name@version`)."""
    name, _, version = set_key.partition("@")
    return root / name / f"v{version}"


def read_manifest(root: Path, set_key: str) -> dict[str, Any] | None:
    """The manifest of a feature-set version, or None if it was never written."""
    path = set_dir(root, set_key) / "manifest.json"
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def write_partitions(
    root: Path,
    set_key: str,
    definition: dict[str, Any],
    digest: str,
    table: pa.Table,
    stats: dict[str, dict[str, Any]],
    data_classes: dict[str, str] | None = None,
) -> list[Path]:
    """Write one partition per as-of date in `table`, and merge their statistics into the manifest.

    `stats` maps each as-of date (ISO) to what the manifest records for it; `data_classes` each
    feature's class as built (recorded so a run's lineage says what it trained on; None keeps the recorded).
    """
    folder = set_dir(root, set_key)
    manifest = read_manifest(root, set_key)
    if manifest is not None and manifest["digest"] != digest:
        raise OfflineStoreError(
            f"feature set {set_key} already holds data built from other definitions "
            f"(digest {manifest['digest']}, now {digest}): give the changed set a new version"
        )
    columns = [{"name": f.name, "type": str(f.type)} for f in table.schema]
    if manifest is not None and manifest.get("columns") != columns:
        raise OfflineStoreError(
            f"feature set {set_key} already holds partitions with other columns "
            f"({_column_change(manifest.get('columns', []), columns)}): give the changed set a new version"
        )
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with duckdb.connect() as con:
        con.register("t", table)
        for day in sorted(stats):
            part = folder / f"as_of={day}"
            part.mkdir(exist_ok=True)
            rows = con.sql(f"SELECT * FROM t WHERE as_of = DATE '{day}'").to_arrow_table()
            replace_atomically(part / "data.parquet", partial(pq.write_table, rows, compression="zstd"))
            written.append(part / "data.parquet")
    partitions = dict((manifest or {}).get("partitions", {}))
    partitions.update(stats)
    new_manifest = {
        "set": set_key,
        "digest": digest,
        "definition": definition,
        "columns": columns,
        "partitions": dict(sorted(partitions.items())),
        "updated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    classes = (manifest or {}).get("data_classes") if data_classes is None else data_classes
    if classes is not None:
        new_manifest["data_classes"] = {c["name"]: classes[c["name"]] for c in columns if c["name"] in classes}
    write_text_atomically(folder / "manifest.json", json.dumps(new_manifest, indent=2, default=str))
    return written


def _column_change(old: list[dict[str, str]], new: list[dict[str, str]]) -> str:
    before = {c["name"]: c["type"] for c in old}
    after = {c["name"]: c["type"] for c in new}
    parts = [f"added {sorted(set(after) - set(before))}"] if set(after) - set(before) else []
    parts += [f"removed {sorted(set(before) - set(after))}"] if set(before) - set(after) else []
    parts += [f"{n}: {before[n]} -> {after[n]}" for n in sorted(set(before) & set(after)) if before[n] != after[n]]
    return "; ".join(parts) or "their order changed"


def partition_glob(root: Path, set_key: str) -> str:
    """Glob over every partition of a feature-set version."""
    return str(set_dir(root, set_key) / "as_of=*" / "data.parquet")


def available_as_of(root: Path, set_key: str) -> list[dt.date]:
    """The cutoffs stored for a feature-set version, oldest first."""
    folder = set_dir(root, set_key)
    days = [dt.date.fromisoformat(p.parent.name.removeprefix("as_of=")) for p in folder.glob("as_of=*/data.parquet")]
    return sorted(days)


def read_offline(root: Path, set_key: str, as_of: Sequence[dt.date] | None = None) -> pa.Table:
    """Rows of a feature-set version for the given cutoffs (all stored ones when None)."""
    stored = available_as_of(root, set_key)
    if not stored:
        raise OfflineStoreError(f"no partition of {set_key} under {root}: run `custintel features` first")
    wanted = stored if as_of is None else sorted(set(as_of))
    read_offline_check(root, set_key, wanted)
    files = [str(set_dir(root, set_key) / f"as_of={d}" / "data.parquet") for d in wanted]
    with duckdb.connect() as con:
        return con.sql(
            f"SELECT * FROM read_parquet({sql_text_list(files)}) ORDER BY as_of, customer_key"
        ).to_arrow_table()


def read_training_table(root: Path, set_keys: Sequence[str], labels_key: str, as_of: Sequence[dt.date]) -> pa.Table:
    """Labels joined to the feature sets on (customer_key, as_of), from the stored partitions."""
    for key in (labels_key, *set_keys):
        read_offline_check(root, key, as_of)
    days = ", ".join(f"DATE '{d}'" for d in sorted(set(as_of)))
    sql = f"SELECT * FROM read_parquet({sql_text(partition_glob(root, labels_key))}) l WHERE l.as_of IN ({days})"
    for i, key in enumerate(set_keys):
        sql = (
            f"SELECT * FROM ({sql}) JOIN (SELECT * FROM read_parquet({sql_text(partition_glob(root, key))}) "
            f"WHERE as_of IN ({days})) f{i} USING (customer_key, as_of)"
        )
    with duckdb.connect() as con:
        return con.sql(f"SELECT * FROM ({sql}) ORDER BY as_of, customer_key").to_arrow_table()


SAMPLE_WEIGHT = "_sample_weight"


def read_item_training_table(
    root: Path,
    set_keys: Sequence[str],
    labels_key: str,
    item_set_keys: Sequence[str],
    as_of: Sequence[dt.date],
    label: str,
    keep_negatives: Mapping[dt.date, float] | None = None,
    exclude_flag: str | None = None,
) -> pa.Table:
    """Per-(customer, product) labels joined to customer sets and to customer x product sets, sampled in DuckDB.

    Customer sets join on (customer_key, as_of); item sets (interactions) on
    (customer_key, as_of, product_id), left-joined: a pair with no history has nulls there.
    Rows whose item-set column `exclude_flag` is true are left out (e.g. products already
    held). At a cutoff listed in `keep_negatives`, only that share of the rows whose `label`
    is false is kept, chosen by a hash of the pair (the same rows every run), and
    `_sample_weight` (1 / share for them, else 1) restores the population's proportions.
    Sampling before the join keeps memory proportional to what is kept.
    """
    for key in (labels_key, *set_keys, *item_set_keys):
        read_offline_check(root, key, as_of)
    days = ", ".join(f"DATE '{d}'" for d in sorted(set(as_of)))
    keep = {d: float(k) for d, k in (keep_negatives or {}).items() if d in set(as_of)}
    share = "CASE " + " ".join(f"WHEN l.as_of = DATE '{d}' THEN {k!r}" for d, k in keep.items()) + " ELSE 1.0 END"
    if not keep:
        share = "1.0"
    bucket = "(hash(l.customer_key, l.product_id, l.as_of) % 1000000) / 1000000.0"
    negative = f"NOT coalesce(l.{label}, false)"
    sql = (
        f"SELECT l.*, CASE WHEN {negative} THEN 1.0 / ({share}) ELSE 1.0 END AS {SAMPLE_WEIGHT} "
        f"FROM read_parquet({sql_text(partition_glob(root, labels_key))}) l "
        f"WHERE l.as_of IN ({days}) AND (NOT ({negative}) OR {bucket} < {share})"
    )
    for i, key in enumerate(item_set_keys):
        sql = (
            f"SELECT * FROM ({sql}) LEFT JOIN (SELECT * FROM read_parquet({sql_text(partition_glob(root, key))}) "
            f"WHERE as_of IN ({days})) i{i} USING (customer_key, as_of, product_id)"
        )
    if exclude_flag:
        sql = f"SELECT * EXCLUDE ({exclude_flag}) FROM ({sql}) WHERE NOT coalesce({exclude_flag}, false)"
    for i, key in enumerate(set_keys):
        sql = (
            f"SELECT * FROM ({sql}) JOIN (SELECT * FROM read_parquet({sql_text(partition_glob(root, key))}) "
            f"WHERE as_of IN ({days})) f{i} USING (customer_key, as_of)"
        )
    with duckdb.connect() as con:
        return con.sql(f"SELECT * FROM ({sql}) ORDER BY as_of, customer_key, product_id").to_arrow_table()


def read_offline_check(root: Path, set_key: str, as_of: Sequence[dt.date]) -> None:
    """Raise OfflineStoreError unless every cutoff of `as_of` is stored for the set."""
    stored = set(available_as_of(root, set_key))
    missing = sorted(set(as_of) - stored)
    if missing:
        raise OfflineStoreError(
            f"{set_key} has no partition for {', '.join(map(str, missing))} under {root}: "
            f"run `custintel features --as-of ...` for them"
        )
