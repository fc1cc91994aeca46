"""Retention of monitoring's stores: the report files and the Evidently workspace's snapshots.

Both hold samples of served model inputs and predictions (Evidently's pages embed them), so
they age out like the inference log they were drawn from. A report's date is its stamp (the
monitoring pass's UTC time, in its file name, see `monitoring.reports.stamp`); a workspace
snapshot's is the time Evidently recorded when the report ran. File times are never read.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from custintel.retention import Expiry, Item

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
