"""The monitoring store of personal data: the reports of each monitoring pass and the Evidently workspace.

A pass of one model writes, under `settings.reports_dir / "monitoring"`, the stem
`<model>-v<version>-<stamp>`: the decision page and its JSON (aggregates only), Evidently's drift
and performance reports (HTML and JSON; Evidently draws them on samples of the reference and the
served rows, so a page can embed a person's model inputs), and `-members.parquet`, the keys of the
rows those samples held (`monitoring.reports.write_members`). Each Evidently snapshot is also a run
of the local Evidently workspace (`settings.monitoring_dir / "workspace"`) and a copy under the
model run's `monitoring/<stamp>/` in MLflow.

A pass holds a subject when its members name them (their customer key among the reference rows,
their inference-log key among the served or labelled rows), or, for a pass written before members
were kept, when the inference log holds a served row of theirs for that model inside the pass's
window or the model run's reference holds their rows, or when any file of the pass holds one of
their identifiers (`Subject.tokens()`, log keys included). Erasing it: the members file is
rewritten without them; Evidently's reports of the pass (a distribution drawn on a sample cannot be
recomputed without the person, so they go whole) are deleted, with their workspace runs (through
Evidently's API: no dangling entry) and their MLflow copies; the decision page is re-rendered
without the links to them and says why. Monitoring can be run again to draw new reports. The
trigger decision log (`decisions.jsonl`) holds aggregates only; it is searched, never rewritten.

Erase the inference log and the MLflow store after this store (the flows catalogue orders it so):
a pass without a members file is recognised through them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from custintel.personal import Erased, Holding, PersonalStore, Subject
from custintel.settings import Settings
from custintel.token_search import occurrences, scrub
from models.registry import Registry
from monitoring import reports
from serving.inference_log import day_files, subject_log_keys

STORE = "monitoring"
EVIDENTLY_PARTS = ("-evidently", "-performance")
ERASED_NOTE = "erased"  # the summary's key saying which reports an erasure removed
_CUSTOMER = re.compile(rb'"customer"\s*:\s*"([^"]*)"')


@dataclass
class _Pass:
    """One monitoring pass: its stem, summary and files."""

    stem: str
    folder: Path
    summary: dict[str, Any]
    files: list[Path] = field(default_factory=list)

    @property
    def members_path(self) -> Path:
        return self.folder / f"{self.stem}{reports.MEMBERS_SUFFIX}"

    @property
    def evidently_files(self) -> list[Path]:
        return [f for f in self.files if any(f.name.startswith(self.stem + p + ".") for p in EVIDENTLY_PARTS)]


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace a file's content in one rename, keeping its modification time (the site orders reports by it)."""
    stat = path.stat() if path.exists() else None
    tmp = path.with_name(f".{path.name}.erasing-{os.getpid()}")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    if stat is not None:
        os.utime(tmp, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(tmp, path)


class MonitoringStore:
    """Monitoring reports, their members and the Evidently workspace."""

    name = STORE

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.folder = settings.reports_dir / "monitoring"
        self.workspace = settings.monitoring_dir / "workspace"
        self.salt = settings.serving_log_salt or "custintel"

    def _relative(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.settings.home_dir))
        except ValueError:
            return str(path)

    def _passes(self) -> list[_Pass]:
        if not self.folder.is_dir():
            return []
        passes = []
        for summary_path in sorted(self.folder.glob("*.json")):
            if summary_path.stem.endswith(EVIDENTLY_PARTS):
                continue
            try:
                summary = json.loads(summary_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if not isinstance(summary, dict) or "decision" not in summary:
                continue
            stem = summary_path.stem
            files = sorted(p for p in self.folder.iterdir() if p.name.startswith(stem) and p.is_file()
                           and (p.name[len(stem):].startswith((".", *EVIDENTLY_PARTS, "-members"))))  # fmt: skip
            passes.append(_Pass(stem, self.folder, summary, files))
        return passes

    # -- who is in a pass -------------------------------------------------------------------------------------
    def _keys(self, subject: Subject) -> tuple[set[str], set[str]]:
        """(customer keys, inference-log keys) of a subject."""
        return set(subject.customer_keys), subject_log_keys(self.salt, subject.customer_keys, subject.log_keys)

    def _in_pass(self, one: _Pass, subjects: Sequence[Subject], registry: Registry | None) -> dict[str, list[str]]:
        """Subject request -> why the pass's Evidently reports hold their rows (sides, or 'identifier in <file>')."""
        out: dict[str, list[str]] = {}
        if not one.evidently_files:
            return out
        if one.members_path.is_file():
            members = pd.read_parquet(one.members_path)
            for subject in subjects:
                customer, logged = self._keys(subject)
                hit = members[(members["side"].eq("reference") & members["key"].isin(customer))
                              | (members["side"].ne("reference") & members["key"].isin(logged))]  # fmt: skip
                if len(hit):
                    out[subject.request] = sorted(set(hit["side"]))
        else:
            out = self._legacy_members(one, subjects, registry)
        return out

    def _legacy_members(
        self, one: _Pass, subjects: Sequence[Subject], registry: Registry | None
    ) -> dict[str, list[str]]:
        """A pass written before members were kept: the inference log's window and the model run's reference."""
        out: dict[str, list[str]] = {}
        summary = one.summary
        window = summary.get("window") or {}
        try:
            start, end = dt.datetime.fromisoformat(window["start"]), dt.datetime.fromisoformat(window["end"])
        except (KeyError, TypeError, ValueError):
            return out
        owners = {k.encode(): s.request for s in subjects for k in self._keys(s)[1]}
        log_dir = self.settings.inference_log_dir
        for path in day_files(log_dir, start, end) if log_dir.is_dir() else []:
            for line in path.read_bytes().split(b"\n"):
                match = _CUSTOMER.search(line)
                if match is None or match.group(1) not in owners:
                    continue
                entry = json.loads(line)
                at = dt.datetime.fromtimestamp(float(entry.get("at", 0)), tz=dt.UTC)
                if entry.get("model") == summary.get("model") and start <= at < end:
                    out.setdefault(owners[match.group(1)], []).append("served")
        run_id = summary.get("run_id")
        if registry is not None and run_id:
            reference = registry.read_reference(str(run_id))
            if reference is not None and "customer_key" in reference.columns:
                held = set(reference["customer_key"].astype(str))
                for subject in subjects:
                    if held & set(subject.customer_keys):
                        out.setdefault(subject.request, []).append("reference")
        return {k: sorted(set(v)) for k, v in out.items()}

    def _token_hits(self, files: Sequence[Path], subjects: Sequence[Subject]) -> dict[str, dict[str, int]]:
        """Subject request -> file -> occurrences of their identifiers (log keys included)."""
        out: dict[str, dict[str, int]] = {}
        texts = {}
        for path in files:
            if path.suffix in (".html", ".json", ".jsonl"):
                texts[path] = path.read_text(encoding="utf-8", errors="replace")
        tokens = {s.request: s.tokens() | self._keys(s)[1] for s in subjects}
        for path, text in texts.items():
            for request, count in occurrences(text, tokens).items():
                out.setdefault(request, {})[self._relative(path)] = count
        return out

    def _workspace_files(self) -> list[Path]:
        return sorted(p for p in self.workspace.rglob("*.json") if p.is_file()) if self.workspace.is_dir() else []

    def _registry(self) -> Registry | None:
        registry = Registry(self.settings)
        return registry if registry.exists() else None

    # -- the protocol -----------------------------------------------------------------------------------------
    def find(self, subjects: Sequence[Subject]) -> list[Holding]:
        """Per pass, the members rows and the reports that embed each subject's rows; any identifier in a file."""
        out: list[Holding] = []
        if not subjects:
            return out
        registry = self._registry() if self._needs_registry() else None
        for one in self._passes():
            for request, sides in self._in_pass(one, subjects, registry).items():
                rows: list[dict[str, Any]] = [{"pass": one.stem, "rows_in": sides}]
                if one.members_path.is_file():
                    members = pd.read_parquet(one.members_path)
                    subject = next(s for s in subjects if s.request == request)
                    customer, logged = self._keys(subject)
                    held = members[members["key"].isin(customer | logged)]
                    rows += [{"side": str(r.side), "key": str(r.key)} for r in held.itertuples(index=False)]
                for path in one.evidently_files:
                    rows.append({"report": self._relative(path), "embeds": "a sample holding their rows"})
                out.append(Holding(STORE, self._relative(one.folder / one.stem), request, rows))
        decisions = self.settings.monitoring_dir / "decisions.jsonl"
        extra = [f for one in self._passes() for f in one.files] + self._workspace_files()
        if decisions.is_file():
            extra.append(decisions)
        for request, files in self._token_hits(extra, subjects).items():
            for place, count in files.items():
                out.append(Holding(STORE, place, request, [{"identifier_occurrences": count}]))
        return out

    def _needs_registry(self) -> bool:
        return any(not one.members_path.is_file() and one.evidently_files for one in self._passes())

    def erase(self, subjects: Sequence[Subject]) -> list[Erased]:
        """Members rewritten without the subjects; the reports that embedded them deleted with their workspace runs."""
        done: list[Erased] = []
        if not subjects:
            return done
        registry = self._registry()
        keys = [k for s in subjects for k in (self._keys(s)[0] | self._keys(s)[1])]
        tokens = {t for s in subjects for t in s.tokens()} | set(keys)
        for one in self._passes():
            affected = bool(self._in_pass(one, subjects, registry if not one.members_path.is_file() else None))
            affected |= bool(self._token_hits(one.files, subjects))
            if one.members_path.is_file():
                members = pd.read_parquet(one.members_path)
                kept = members[~members["key"].isin(keys)]
                if len(kept) < len(members):
                    path = one.members_path
                    tmp = path.with_name(f".{path.name}.erasing-{os.getpid()}")
                    kept.to_parquet(tmp, index=False)
                    os.replace(tmp, path)
                    done.append(Erased(STORE, self._relative(path), len(members) - len(kept), "members rewritten"))
            if affected:
                done += self._drop_reports(one, registry, tokens)
        done += self._drop_workspace_hits(subjects)
        return done

    def _drop_reports(self, one: _Pass, registry: Registry | None, tokens: set[str]) -> list[Erased]:
        """Delete the pass's Evidently reports (local, workspace, MLflow) and re-render its page without them.

        The summary holds aggregates; an identifier in it all the same is replaced by `[erased]`.
        """
        done = []
        text, scrubbed = scrub(json.dumps(one.summary, default=str), tokens)
        summary = dict(json.loads(text))
        stamp = str(summary.get("stamp", ""))
        run_id = summary.get("run_id")
        for path in one.evidently_files:
            path.unlink(missing_ok=True)
            if registry is not None and run_id and stamp:
                registry.delete_run_file(str(run_id), f"monitoring/{stamp}/{path.name}")
            done.append(Erased(STORE, self._relative(path), 1, "Evidently report deleted: it drew on a sample "
                               "holding the subject's rows (run monitoring again to draw a new one); its MLflow "
                               "copy deleted"))  # fmt: skip
        runs = [str(r) for r in summary.get("workspace_runs") or []]
        if runs:
            removed = self._delete_workspace_runs(str(summary.get("model", "")), runs)
            if removed:
                done.append(Erased(STORE, self._relative(self.workspace), removed, "Evidently workspace runs of "
                                   f"pass {one.stem} deleted through Evidently's API"))  # fmt: skip
        if summary.get("links") or runs or scrubbed:
            summary["links"] = {}
            summary["workspace_runs"] = []
            summary[ERASED_NOTE] = (
                "Evidently's reports of this pass were deleted by an erasure request (they drew on rows of an "
                "erased person); the decision and its figures stand."
            )
            page = one.folder / f"{one.stem}.html"
            text = reports.render_page(summary) + ""
            text = text.replace("</body>", f"<p><em>{summary[ERASED_NOTE]}</em></p></body>")
            _atomic_write(one.folder / f"{one.stem}.json", json.dumps(summary, indent=2, default=str).encode())
            _atomic_write(page, text.encode())
            # Summaries and decision pages hold aggregates; their MLflow copies are replaced too.
            if registry is not None and run_id and stamp:
                for path in (one.folder / f"{one.stem}.json", page):
                    registry.replace_run_file(str(run_id), f"monitoring/{stamp}/{path.name}", path)
        return done

    def _delete_workspace_runs(self, project_name: str, runs: Sequence[str]) -> int:
        if not self.workspace.is_dir():
            return 0
        from evidently.ui.workspace import Workspace

        workspace = Workspace(str(self.workspace))
        removed = 0
        for project in workspace.search_project(project_name) if project_name else workspace.list_projects():
            known = {str(r) for r in workspace.list_runs(project.id)}
            for run in runs:
                if run in known:
                    workspace.delete_run(project.id, run)
                    removed += 1
        return removed

    def _drop_workspace_hits(self, subjects: Sequence[Subject]) -> list[Erased]:
        """A workspace snapshot file holding an identifier: its run deleted through the API."""
        hits = self._token_hits(self._workspace_files(), subjects)
        paths = {self.settings.home_dir / p for files in hits.values() for p in files}
        done: list[Erased] = []
        if not paths:
            return done
        from evidently.ui.workspace import Workspace

        workspace = Workspace(str(self.workspace))
        for project in workspace.list_projects():
            for run in workspace.list_runs(project.id):
                if any(str(run) in p.name for p in paths):
                    workspace.delete_run(project.id, run)
                    done.append(Erased(STORE, self._relative(self.workspace), 1, f"workspace run {run} deleted"))
        return done


def personal_stores(settings: Settings) -> list[PersonalStore]:
    """The stores of this package that can hold a person's data."""
    return [MonitoringStore(settings)]
