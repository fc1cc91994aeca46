"""Retention of monitoring's stores: the report files and the Evidently workspace's snapshots.

The same pages are logged to the champion's MLflow run under `monitoring/<stamp>/`
(`expire_mlflow_reports`). All hold samples of served model inputs and predictions (Evidently's pages embed them), so
they age out like the inference log they were drawn from. A report's date is its stamp (the
monitoring pass's UTC time, in its file name, see `monitoring.reports.stamp`); a workspace
snapshot's is the time Evidently recorded when the report ran. File times are never read.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from custintel.retention import Expiry, Item
from models.registry import Registry

_STAMP = re.compile(r"^\d{8}T\d{6}Z$")
# <model>-v<version>-<stamp>[-evidently|-performance].(html|json), as monitoring.monitor names them
_REPORT = re.compile(r"^(?P<stem>.+-v[^-]+-(?P<stamp>\d{8}T\d{6}Z))(?:-evidently|-performance)?\.(?:html|json)$")


def expire_reports(folder: Path, before: dt.date, dry_run: bool = False) -> Expiry:
    """Remove the monitoring passes' reports (decision page, Evidently pages, their JSON) stamped before `before`.

    One item per pass (all its files); files named otherwise are left alone.
    """
    expiry = Expiry("monitoring_reports")
    passes: dict[str, list[Path]] = {}
    stamps: dict[str, dt.date] = {}
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
        match = _REPORT.match(path.name)
        if not match or not path.is_file():
            continue
        passes.setdefault(match["stem"], []).append(path)
        stamps[match["stem"]] = dt.datetime.strptime(match["stamp"], "%Y%m%dT%H%M%SZ").date()
    for stem, files in sorted(passes.items()):
        item = Item(stem, stamps[stem], len(files))
        if stamps[stem] < before:
            if not dry_run:
                for path in files:
                    path.unlink(missing_ok=True)
            expiry.removed.append(item)
        else:
            expiry.kept.append(item)
    return expiry


def expire_workspace(workspace_dir: Path, before: dt.date, dry_run: bool = False) -> Expiry:
    """Remove the Evidently workspace's snapshots (runs) whose report ran before `before`, through its own API."""
    expiry = Expiry("evidently_workspace")
    if not workspace_dir.is_dir():
        return expiry
    from evidently.ui.workspace import Workspace

    workspace = Workspace(str(workspace_dir))
    for project in workspace.list_projects():
        if project is None:
            continue
        for run_id in workspace.list_runs(project.id):
            snapshot = workspace.get_run(project.id, run_id)
            if snapshot is None:
                continue
            stamp = snapshot.timestamp
            day = (stamp.astimezone(dt.UTC) if stamp.tzinfo else stamp).date()
            item = Item(f"{project.name}/{snapshot.name or run_id}", day)
            if day < before:
                if not dry_run:
                    workspace.delete_run(project.id, run_id)
                expiry.removed.append(item)
            else:
                expiry.kept.append(item)
    return expiry


def expire_mlflow_reports(registry: Registry, before: dt.date, dry_run: bool = False) -> Expiry:
    """Remove the monitoring pages logged to registered versions' runs (`monitoring/<stamp>/`) stamped before `before`.

    Only stamped folders go: the run's training reference (`monitoring/reference.parquet`) is the
    model's, not a report's. Raises `models.registry.RegistryError` when the registry cannot be read.
    """
    expiry = Expiry("mlflow_monitoring_reports")
    runs = sorted({(m.name, v.version, v.run_id) for m in registry.list_models() for v in m.versions if v.run_id})
    seen: set[str] = set()
    for name, version, run_id in runs:
        if run_id in seen or run_id is None:
            continue
        seen.add(run_id)
        for folder in registry.artifact_folders(run_id, "monitoring"):
            stamp = folder.rsplit("/", 1)[-1]
            if not _STAMP.match(stamp):
                continue
            item = Item(
                f"{name} v{version} (run {run_id[:12]}): {folder}", dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").date()
            )
            if item.dated < before:
                if not dry_run:
                    registry.delete_artifacts(run_id, folder)
                expiry.removed.append(item)
            else:
                expiry.kept.append(item)
    return expiry
