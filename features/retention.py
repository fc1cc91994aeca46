"""Retention of the feature layer's stores: lake drops, quarantine, offline feature snapshots, identity run reports.

Each function removes what is dated before `before` and returns an `Expiry` (what went, what
stays, with the data's own date). The dates are the data's: a drop's export date (the first
eight digits of its id in the lake manifest, which ingestion takes from the drop's
`manifest.json` or `--export-date`), a cutoff's date, an identity run's id (its UTC time).
File modification times are never read.

Lake and quarantine changes are commits like a landing's: under the landing lock, one atomic
replace of `lake/_manifest.json`, then the folders the manifest no longer names are removed (a
pass killed in between leaves folders that the next ingestion or retention pass removes).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path

from custintel.atomic_files import write_text_atomically
from custintel.retention import Expiry, Item
from custintel.settings import Settings
from features.featurestore.store import offline_root
from features.lake import (
    LakeManifest,
    Partition,
    _landing_lock,
    _remove_unreferenced,
    _write_manifest,
    read_manifest,
)

_RUN_ID = re.compile(r"^(\d{8})T\d{6}\d*Z$")


def drop_date(drop_id: str) -> dt.date | None:
    """A drop's export date, from its id (`YYYYMMDD-<content hash>`, see `features.lake`); None when not one."""
    try:
        return dt.datetime.strptime(drop_id[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _commit(settings: Settings, old: LakeManifest, tables: dict[str, list[Partition]]) -> None:
    """Commit the lake with `tables` as its partitions (the landing and contracts kept), then remove orphans."""
    new = replace(
        old,
        generation=old.generation + 1,
        committed_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        tables={t: parts for t, parts in sorted(tables.items()) if parts},
    )
    _write_manifest(settings, new)
    _remove_unreferenced(settings, new)


def _rows(folder: Path, patterns: tuple[str, ...] = ("*.parquet",)) -> int:
    """Rows held in a partition folder's Parquet files (from their footers: no data read)."""
    import pyarrow.parquet as pq

    if not folder.is_dir():
        return 0
    files = sorted({p for pattern in patterns for p in folder.glob(pattern)})
    return sum(pq.ParquetFile(p).metadata.num_rows for p in files)


def _rejected(folder: Path) -> int:
    """Rows a quarantine partition holds: rejected rows as read and later copies of a key (not the issue list)."""
    return _rows(folder, ("rows-*.parquet", "duplicates.parquet"))


def expire_lake(
    settings: Settings, drops_before: dt.date | None, quarantine_before: dt.date | None, dry_run: bool = False
) -> tuple[Expiry, Expiry]:
    """Remove lake drops exported before `drops_before` and quarantined rows of drops before `quarantine_before`.

    One commit for both (None: that store keeps everything). A drop that goes takes its
    quarantine with it (reported under the lake). Each table's latest drop always stays:
    identity resolution and the features read a table's current rows through it, so removing
    it would empty the table. A table delivered whole in every drop loses nothing current; one
    delivered in increments (only new events per drop) loses the old drops' rows, which is
    what the retention period asks for. A quarantine going leaves its drop's accepted rows.
    """
    lake, quarantine = Expiry("lake"), Expiry("quarantine")
    if not settings.lake_dir.is_dir():
        return lake, quarantine
    with _landing_lock(settings):
        manifest = read_manifest(settings)
        tables: dict[str, list[Partition]] = {}
        for table, parts in manifest.tables.items():
            latest = max(parts, key=lambda p: p.drop_id) if parts else None
            tables[table] = []
            for part in parts:
                day = drop_date(part.drop_id)
                dated = day or dt.date.min
                undated = "the drop id holds no export date"
                q_place = f"quarantine/{table}/{part.quarantine}"
                q_folder = settings.quarantine_dir / table / str(part.quarantine)
                if drops_before is not None:
                    folder = settings.lake_dir / table / part.lake
                    item = Item(f"lake/{table}/{part.lake}", dated, _rows(folder) if folder.is_dir() else 0)
                    if day is None:
                        item.reason = undated
                    elif day < drops_before and part is latest:
                        item.reason = f"the latest drop of {table}: the features read its current rows through it"
                    elif day < drops_before:
                        lake.removed.append(item)
                        if part.quarantine:
                            lake.removed.append(Item(q_place, day, _rejected(q_folder), "with its drop"))
                        continue
                    lake.kept.append(item)
                if part.quarantine and quarantine_before is not None:
                    if day is not None and day < quarantine_before:
                        quarantine.removed.append(Item(q_place, day, _rejected(q_folder)))
                        part = replace(part, quarantine=None)
                    else:
                        quarantine.kept.append(Item(q_place, dated, reason="" if day else undated))
                tables[table].append(part)
        if (lake.removed or quarantine.removed) and not dry_run:
            _commit(settings, manifest, tables)
        elif not dry_run:  # a pass killed after its commit left folders the manifest no longer names
            lake.notes += [
                f"removed {name}: left by an earlier pass" for name in _remove_unreferenced(settings, manifest)
            ]
    return lake, quarantine


def expire_offline(
    settings: Settings, before: dt.date, keep: Collection[dt.date] = (), dry_run: bool = False
) -> Expiry:
    """Remove offline feature and label partitions whose cutoff is before `before`, except the cutoffs in `keep`.

    `keep`: cutoffs a live model version's lineage names (the flow reads them from the registry),
    kept in every set so its training table can still be rebuilt. Each set version's manifest
    loses the removed cutoffs first, then their folders go (a rerun finishes a killed pass).
    """
    expiry = Expiry("offline_features")
    root = offline_root(settings)
    if not root.is_dir():
        return expiry
    for version_dir in sorted(p for p in root.glob("*/v*") if p.is_dir()):
        manifest_path = version_dir / "manifest.json"
        manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else None
        listed = set((manifest or {}).get("partitions", {}))
        folders = {p.name.removeprefix("as_of="): p for p in version_dir.glob("as_of=*") if p.is_dir()}
        due = []
        for day_text in sorted(listed | set(folders)):
            try:
                day = dt.date.fromisoformat(day_text)
            except ValueError:
                continue
            folder = folders.get(day_text)
            rows = int(((manifest or {}).get("partitions", {}).get(day_text) or {}).get("rows", 0) or 0)
            if not rows and folder is not None:
                rows = _rows(folder)
            item = Item(f"{version_dir.relative_to(root)}/as_of={day_text}", day, rows)
            if day < before and day in keep:
                item.reason = "a live model version's lineage names this cutoff"
            if day < before and day not in keep:
                expiry.removed.append(item)
                due.append(day_text)
            else:
                expiry.kept.append(item)
        if due and not dry_run:
            if manifest is not None and listed & set(due):
                manifest["partitions"] = {d: s for d, s in manifest["partitions"].items() if d not in due}
                write_text_atomically(manifest_path, json.dumps(manifest, indent=2, default=str))
            for day_text in due:
                if day_text in folders:
                    shutil.rmtree(folders[day_text], ignore_errors=True)
    return expiry


def expire_identity_reports(settings: Settings, before: dt.date, dry_run: bool = False) -> Expiry:
    """Remove identity resolution's run reports (`reports/identity/<run id>.json`) of runs before `before`.

    The run id is the run's UTC time. The newest run's report stays: it describes the identity
    outputs in use. `evaluation.json` (against a truth, not a run) is left alone.
    """
    expiry = Expiry("identity_reports")
    folder = settings.reports_dir / "identity"
    runs = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        match = _RUN_ID.match(path.stem)
        if match:
            runs.append((path, dt.datetime.strptime(match.group(1), "%Y%m%d").date()))
    newest = max(runs, key=lambda r: r[0].stem)[0] if runs else None
    for path, day in runs:
        item = Item(path.name, day)
        if day < before and path != newest:
            if not dry_run:
                path.unlink(missing_ok=True)
            expiry.removed.append(item)
        else:
            item.reason = "the newest run's report: it describes the identity outputs in use" if day < before else ""
            expiry.kept.append(item)
    return expiry
