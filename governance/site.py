"""The governance reviewers' static site (`custintel report`).

One page per registered model (its versions, aliases, gate results and reasons, model
cards with their bias audits and plots, and its gate decisions), the whole decision log,
and the drift reports, written as plain HTML under `settings.site_dir`. The site is
self-contained: cards and drift reports are copied in, every link is relative, and
nothing refers to an outside URL (no CDN, no web font, no script), so it can be opened
offline, copied elsewhere, or served with `serve_site`.

Reading (the MLflow registry, `decisions.jsonl`, card and report folders) is kept apart
from rendering: the `render_*` functions are pure and take what the readers return.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from custintel.settings import Settings
from governance.html import EXPERIMENTS_PAGE, FAVICON, OPERATIONS_PAGE
from governance.html import escape as _e
from governance.html import href as _href
from governance.html import page as _page
from governance.html import table as _table
from governance.html import when as _time
from governance.operations import copy_operations, render_operations_page
from governance.store import GATE_TAG_PREFIX, decision_log
from governance.trail import Verification, trail_path, verify
from insights.report import latest_dir, read_report

GATE_RESULT_TAG = GATE_TAG_PREFIX + "result"
GATE_REASONS_TAG = GATE_TAG_PREFIX + "reasons"
GATE_DECISION_TAG = GATE_TAG_PREFIX + "decision"
GATE_POLICY_TAG = GATE_TAG_PREFIX + "policy_hash"
# Aliases shown in their own columns, in this order; any other alias is listed after them.
MAIN_ALIASES = ("champion", "challenger", "previous")
CARD_PAGES = ("card.html", "card.md")
# At the site root: browsers ask for /favicon.ico on pages that name no icon (the copied cards), and a 404
# there is a console error.

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$")


class SiteError(RuntimeError):
    """The site cannot be built (e.g. the MLflow registry is unreachable)."""


@dataclass
class VersionSummary:
    """One registered model version as the site shows it."""

    version: str
    created: dt.datetime | None
    run_id: str
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def gate_result(self) -> str | None:
        """The gate's verdict on this version (promoted, blocked, waived, rolled_back), if gated."""
        return self.tags.get(GATE_RESULT_TAG)

    @property
    def gate_reasons(self) -> list[str]:
        """The gate's reasons: the tag's JSON list, or its raw text when it is not one."""
        raw = self.tags.get(GATE_REASONS_TAG)
        if not raw:
            return []
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            return [raw]
        return [str(r) for r in parsed] if isinstance(parsed, list) else [str(parsed)]


@dataclass
class ModelSummary:
    """A registered model (or one only named by decisions or cards) with its versions, newest first."""

    name: str
    versions: list[VersionSummary] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> version
    in_registry: bool = True


@dataclass
class DecisionEntry:
    """One line of the decision log: its record, or why it could not be read."""

    line: int
    record: dict[str, Any] | None
    raw: str
    error: str | None = None

    def get(self, key: str) -> str:
        """A field as text ('' when absent, null or unreadable)."""
        if self.record is None or self.record.get(key) is None:
            return ""
        return str(self.record[key])


@dataclass
class CardFiles:
    """A version's model card folder, as copied into the site (paths relative to the site root)."""

    model: str
    version: str
    folder: str
    pages: list[str] = field(default_factory=list)  # card.html / card.md, when present
    audit: str | None = None
    plots: list[str] = field(default_factory=list)


@dataclass
class DriftReport:
    """A drift report copied into the site."""

    title: str
    href: str  # relative to the site root
    modified: dt.datetime


# --- reading ----------------------------------------------------------------------------------------------------------


def read_registry(settings: Settings) -> list[ModelSummary]:
    """Every registered model with its versions (newest first), aliases and tags, sorted by name.

    A SQLite store whose file does not exist yet is read as an empty registry rather than
    created (MLflow would create and migrate it).
    """
    from models.registry import Registry, RegistryError

    try:
        listings = Registry(settings).list_models()
    except RegistryError as exc:
        raise SiteError(f"cannot read the MLflow registry: {exc}") from exc
    models = []
    for listing in listings:
        model = ModelSummary(listing.name, aliases=dict(listing.aliases))
        for v in listing.versions:
            aliases = sorted((a for a, n in model.aliases.items() if n == v.version), key=_alias_key)
            model.versions.append(VersionSummary(v.version, v.created, v.run_id or "", aliases, dict(v.tags)))
        model.versions.sort(key=lambda v: _version_key(v.version), reverse=True)
        models.append(model)
    return sorted(models, key=lambda m: m.name)


def read_decisions(path: Path) -> list[DecisionEntry]:
    """The decision log in file (append) order; an absent file is an empty log.

    A line that is not a JSON object is kept as a malformed entry so the site shows it.
    """
    if not path.exists():
        return []
    entries = []
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, raw in enumerate(lines, start=1):
            text = raw.rstrip("\n")
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                entries.append(DecisionEntry(number, None, text, f"not JSON: {exc.msg} (column {exc.colno})"))
                continue
            if not isinstance(record, dict):
                entries.append(DecisionEntry(number, None, text, "not a JSON object"))
                continue
            entries.append(DecisionEntry(number, record, text))
    return entries


def safe_name(name: str) -> str:
    """A file-name-safe, URL-safe form of a model name or version; distinct names stay distinct."""
    if _SAFE_NAME.match(name) and name not in {".", ".."}:
        return name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:80] or "model"
    return f"{cleaned}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def copy_cards(cards_dir: Path, site: Path) -> list[CardFiles]:
    """Copy every card folder (`<model>/<version>/`) into `site/cards/`, renaming unsafe names."""
    if not cards_dir.is_dir():
        return []
    copied = []
    for model_dir in sorted(p for p in cards_dir.iterdir() if p.is_dir()):
        for version_dir in sorted((p for p in model_dir.iterdir() if p.is_dir()), key=lambda p: _version_key(p.name)):
            folder = f"cards/{safe_name(model_dir.name)}/{safe_name(version_dir.name)}"
            shutil.copytree(version_dir, site / folder, symlinks=False)
            names = {p.name for p in (site / folder).iterdir() if p.is_file()}
            copied.append(
                CardFiles(
                    model=model_dir.name,
                    version=version_dir.name,
                    folder=folder,
                    pages=[f"{folder}/{n}" for n in CARD_PAGES if n in names],
                    audit=f"{folder}/audit.json" if "audit.json" in names else None,
                    plots=[f"{folder}/{n}" for n in sorted(names) if n.lower().endswith(".png")],
                )
            )
    return copied


def copy_drift_reports(monitoring_dir: Path, site: Path) -> list[DriftReport]:
    """Copy the drift reports (`*.html` in `monitoring_dir`) into `site/drift/`, newest first."""
    if not monitoring_dir.is_dir():
        return []
    reports = []
    for source in monitoring_dir.glob("*.html"):
        href = f"drift/{safe_name(source.name)}"
        (site / "drift").mkdir(exist_ok=True)
        shutil.copy2(source, site / href)
        modified = dt.datetime.fromtimestamp(source.stat().st_mtime, tz=dt.UTC)
        reports.append(DriftReport(source.stem, href, modified))
    return sorted(reports, key=lambda r: (r.modified, r.title), reverse=True)


@dataclass(frozen=True)
class ExperimentReport:
    """The latest analysis of one experiment, copied into the site (`experiments/<name>/`)."""

    name: str
    version: str
    source: str
    mode: str
    verdict: str
    verdict_line: str
    written_at: str
    href: str
    reports: int  # analyses kept for it (the site shows the latest)


def copy_experiment_reports(experiments_dir: Path, site: Path) -> list[ExperimentReport]:
    """Copy each experiment's latest report folder (`<name>/reports/<stamp>/`) into `site/experiments/<name>/`.

    A report is its `analysis.json` (aggregates only), `report.html` and plots; folders without both are skipped.
    """
    if not experiments_dir.is_dir():
        return []
    copied = []
    for folder in sorted(p for p in experiments_dir.iterdir() if (p / "reports").is_dir()):
        written = sorted(
            p
            for p in (folder / "reports").iterdir()
            if (p / "analysis.json").is_file() and (p / "report.html").is_file()
        )
        if not written:
            continue
        latest = written[-1]
        try:
            data = json.loads((latest / "analysis.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        target = f"experiments/{safe_name(folder.name)}"
        shutil.copytree(latest, site / target, symlinks=False)
        copied.append(
            ExperimentReport(
                name=folder.name,
                version=str(data.get("version", "")),
                source=str(data.get("source", "")),
                mode=str((data.get("analysis") or {}).get("mode", "")),
                verdict=str(data.get("verdict", "")),
                verdict_line=str(data.get("verdict_line", "")),
                written_at=str(data.get("written_at", latest.name)),
                href=f"{target}/report.html",
                reports=len(written),
            )  # fmt: skip
        )
    return copied


# --- rendering (pure) -------------------------------------------------------------------------------------------------


def _version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)


def _alias_key(alias: str) -> tuple[int, str]:
    return (MAIN_ALIASES.index(alias) if alias in MAIN_ALIASES else len(MAIN_ALIASES), alias)


def model_page_path(name: str) -> str:
    """Where a model's page is, relative to the site root."""
    return f"models/{safe_name(name)}.html"


def decision_anchor(decision_id: str) -> str:
    """The element id of a decision's row on the decision pages."""
    return "d-" + re.sub(r"[^A-Za-z0-9_-]", "_", decision_id)


def _badge(result: str | None) -> str:
    if not result:
        return '<span class="muted">not gated</span>'
    kind = result if result in {"promoted", "blocked", "waived", "rolled_back"} else "unknown"
    return f'<span class="badge {kind}">{_e(result)}</span>'


def _list(items: Iterable[object]) -> str:
    shown = [f"<li>{_e(i)}</li>" for i in items]
    return f"<ul>{''.join(shown)}</ul>" if shown else '<span class="muted">—</span>'


def _logged_time(value: str) -> str:
    """A decision's ISO time shown in UTC to the minute, or as written when it is not ISO."""
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return value
    return _time(parsed.astimezone(dt.UTC) if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC))


def render_decision_rows(
    entries: Sequence[DecisionEntry], cards: dict[tuple[str, str], CardFiles], depth: int, show_model: bool = True
) -> list[str]:
    """Table rows for decisions (in the order given), waivers and malformed lines visibly marked."""
    rows = []
    for entry in entries:
        if entry.record is None:
            span = 11 if show_model else 10
            rows.append(
                f'<tr class="malformed"><td colspan="{span}">line {entry.line}: malformed entry ({_e(entry.error)}): '
                f"<code>{_e(entry.raw[:500])}</code></td></tr>"
            )
            continue
        model, version = entry.get("model"), entry.get("version")
        waiver = entry.record.get("waiver")
        if isinstance(waiver, dict):
            approver, reason = waiver.get("approver", "?"), waiver.get("reason", "")
            waiver_cell = f'<span class="waiver">WAIVED by {_e(approver)}</span>: {_e(reason)}'
        elif waiver:
            waiver_cell = f'<span class="waiver">WAIVED</span>: {_e(waiver)}'
        else:
            waiver_cell = '<span class="muted">—</span>'
        checks = entry.record.get("checks")
        check_items = []
        if isinstance(checks, list):
            for check in checks:
                if isinstance(check, dict):
                    state = "passed" if check.get("passed") else "FAILED"
                    check_items.append(f"{check.get('name', '?')}: {state}")
        reasons = entry.record.get("reasons")
        reason_items = reasons if isinstance(reasons, list) else ([reasons] if reasons else [])
        card = cards.get((model, version))
        card_cell = f'<a href="{_href(card.pages[0], depth)}">card</a>' if card and card.pages else "—"
        champion = f"{entry.get('champion_before') or '—'} → {entry.get('champion_after') or '—'}"
        policy = f"policy v{entry.get('policy_version') or '?'} {entry.get('policy_hash')[:12] or '?'}"
        model_cell = f'<td><a href="{_href(model_page_path(model), depth)}">{_e(model)}</a></td>' if show_model else ""
        row_class = ' class="waived-row"' if waiver else ""
        anchor = f' id="{decision_anchor(entry.get("id"))}"' if entry.get("id") else ""
        rows.append(
            f"<tr{row_class}{anchor}><td>{_e(_logged_time(entry.get('time')))}</td>{model_cell}<td>{_e(version)}</td>"
            f"<td>{_e(entry.get('action'))}</td><td>{_badge(entry.get('result'))}</td><td>{_list(reason_items)}</td>"
            f"<td>{_list(check_items)}</td><td>{waiver_cell}</td><td>{_e(champion)}</td>"
            f"<td>{_e(entry.get('actor'))}<br><code>{_e(policy)}</code></td><td>{card_cell}</td></tr>"
        )
    return rows


def _decision_headers(show_model: bool) -> list[str]:
    headers = [
        "time",
        "version",
        "action",
        "result",
        "reasons",
        "checks",
        "waiver",
        "champion",
        "actor / policy",
        "card",
    ]
    return headers[:1] + ["model"] + headers[1:] if show_model else headers


def _latest_decision(entries: Sequence[DecisionEntry], model: str) -> DecisionEntry | None:
    for entry in reversed(entries):
        if entry.record is not None and entry.get("model") == model:
            return entry
    return None


def render_chains(chains: Sequence[Verification]) -> str:
    """The hash chains' state (`custintel audit verify`): intact with the head hash, or every problem named."""
    if not chains:
        return ""
    items = []
    for chain in chains:
        name = _e(chain.path.name)
        if chain.ok:
            head = f"head seq {chain.head_seq} <code>{_e(chain.head_hash)}</code>" if chain.head_hash else "empty"
            items.append(f"<li>{name}: intact, {chain.entries} entries; {head}</li>")
        else:
            problems = "".join(f'<li class="malformed">{_e(p)}</li>' for p in chain.problems)
            items.append(f'<li>{name}: <span class="waiver">TAMPERED</span><ul>{problems}</ul></li>')
    command = "<code>custintel audit verify --decisions</code>"
    return f'<p>Hash chains ({command}):</p><ul class="chains">{"".join(items)}</ul>'


def render_index(
    models: Sequence[ModelSummary],
    decisions: Sequence[DecisionEntry],
    drift: Sequence[DriftReport],
    built: dt.datetime,
    chains: Sequence[Verification] = (),
) -> str:
    """The landing page: every model with its aliases and latest decision, a link to the log, drift reports."""
    rows = []
    for model in models:
        cells = [f'<td><a href="{_href(model_page_path(model.name), 0)}">{_e(model.name)}</a></td>']
        cells += [f"<td>{_e(model.aliases.get(a, '—'))}</td>" for a in MAIN_ALIASES]
        others = [f"{a}: {v}" for a, v in sorted(model.aliases.items()) if a not in MAIN_ALIASES]
        cells.append(f"<td>{_e(', '.join(others) or '—')}</td><td>{len(model.versions)}</td>")
        latest = _latest_decision(decisions, model.name)
        if latest is None:
            cells.append('<td><span class="muted">no decision yet</span></td>')
        else:
            when = _logged_time(latest.get("time"))
            cells.append(f"<td>{_badge(latest.get('result'))} v{_e(latest.get('version'))}, {_e(when)}</td>")
        if not model.in_registry:
            cells[0] = cells[0].replace("</td>", ' <span class="muted">(not in the registry)</span></td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    malformed = sum(1 for d in decisions if d.record is None)
    log_note = f"{len(decisions)} entries" + (f", {malformed} malformed" if malformed else "")
    drift_rows = [
        f'<tr><td><a href="{_href(r.href, 0)}">{_e(r.title)}</a></td><td>{_e(_time(r.modified))}</td></tr>'
        for r in drift
    ]
    body = (
        "<h1>Models</h1>"
        + _table(
            ["model", *MAIN_ALIASES, "other aliases", "versions", "latest decision"], rows, "No registered model yet."
        )
        + f'<h2>Decisions</h2><p><a href="decisions.html">The decision log</a> ({_e(log_note)}), newest first.</p>'
        + render_chains(chains)
        + f'<h2>Experiments</h2><p><a href="{EXPERIMENTS_PAGE}">The experiments</a>: their latest analyses.</p>'
        + f'<h2>Operations</h2><p><a href="{OPERATIONS_PAGE}">The operations page</a>: KPIs, ticket topics, '
        "segments, actions and outcomes, source anomalies and open alerts.</p>"
        + '<h2 id="drift">Drift reports</h2>'
        + _table(["report", "written"], drift_rows, "No drift report yet.")
    )
    return _page("custintel governance: models", body, 0, built)


def render_experiments_page(reports: Sequence[ExperimentReport], built: dt.datetime) -> str:
    """Every analysed experiment: its latest verdict (blocked ones say why) and a link to its report."""
    badge = {"significant": "badge promoted", "not_significant": "muted", "blocked": "badge blocked"}
    rows = [
        f'<tr><td><a href="{_href(r.href, 0)}">{_e(r.name)}</a></td><td>v{_e(r.version)}</td><td>{_e(r.source)}</td>'
        f'<td>{_e(r.mode)}</td><td><span class="{badge.get(r.verdict, "muted")}">{_e(r.verdict_line)}</span></td>'
        f"<td>{_e(r.written_at)}</td><td>{r.reports}</td></tr>"
        for r in reports
    ]
    body = (
        "<h1>Experiments</h1><p>The latest analysis of each experiment (<code>custintel experiment analyse</code>): "
        "differences and lifts with their intervals, CUPED, the sample-ratio check and the plots.</p>"
        + _table(
            ["experiment", "version", "source", "mode", "verdict", "written (UTC)", "analyses"],
            rows,
            "No experiment has been analysed yet.",
        )  # fmt: skip
    )
    return _page("custintel governance: experiments", body, 0, built)


def render_model_page(
    model: ModelSummary, decisions: Sequence[DecisionEntry], cards: dict[tuple[str, str], CardFiles], built: dt.datetime
) -> str:
    """A model's page: versions with aliases and gate results, cards and bias audits, its decisions newest first."""
    known_ids = {d.get("id") for d in decisions if d.record is not None}
    rows = []
    for v in model.versions:
        aliases = " ".join(f'<span class="badge alias">@{_e(a)}</span>' for a in v.aliases) or "—"
        decision_id = v.tags.get(GATE_DECISION_TAG, "")
        if decision_id and decision_id in known_ids:
            decision = (
                f'<a href="{_href("decisions.html", 1)}#{decision_anchor(decision_id)}">{_e(decision_id[:12])}</a>'
            )
        else:
            decision = _e(decision_id[:12]) or "—"
        card = cards.get((model.name, v.version))
        card_links = (
            " ".join(f'<a href="{_href(p, 1)}">{_e(p.rsplit("/", 1)[-1])}</a>' for p in card.pages) if card else ""
        )
        if card and card.audit:
            card_links += f' <a href="{_href(card.audit, 1)}">audit.json</a>'
        rows.append(
            f'<tr id="v-{_e(safe_name(v.version))}"><td>{_e(v.version)}</td>'
            f'<td class="when">{_e(_time(v.created))}</td>'
            f"<td><code>{_e(v.run_id)}</code></td><td>{aliases}</td><td>{_badge(v.gate_result)}</td>"
            f"<td>{_list(v.gate_reasons)}</td><td>{decision}</td><td>{card_links or '—'}</td></tr>"
        )
    card_sections = []
    for card in sorted(
        (c for (name, _), c in cards.items() if name == model.name), key=lambda c: _version_key(c.version), reverse=True
    ):
        links = [f'<a href="{_href(p, 1)}">{_e(p.rsplit("/", 1)[-1])}</a>' for p in card.pages]
        if card.audit:
            links.append(f'<a href="{_href(card.audit, 1)}">bias audit (audit.json)</a>')
        plots = "".join(
            f'<figure><a href="{_href(p, 1)}"><img src="{_href(p, 1)}" alt="{_e(p.rsplit("/", 1)[-1])}"></a>'
            f"<figcaption>{_e(p.rsplit('/', 1)[-1])}</figcaption></figure>"
            for p in card.plots
        )
        card_sections.append(f"<h3>Version {_e(card.version)}</h3><p>{' · '.join(links) or '—'}</p>{plots}")
    mine = [d for d in reversed(decisions) if d.record is not None and d.get("model") == model.name]
    alias_text = ", ".join(f"@{a} = v{v}" for a, v in sorted(model.aliases.items(), key=lambda kv: _alias_key(kv[0])))
    note = (
        ""
        if model.in_registry
        else '<p class="muted">Not in the MLflow registry (named by decisions or cards only).</p>'
    )
    body = (
        f"<h1>{_e(model.name)}</h1>{note}<p>{_e(alias_text or 'No alias set.')}</p>"
        "<h2>Versions</h2>"
        + _table(
            ["version", "created", "run id", "aliases", "gate result", "reasons", "decision", "card"],
            rows,
            "No registered version.",
        )
        + "<h2>Model cards and bias audits</h2>"
        + ("".join(card_sections) or '<p class="muted">No model card yet.</p>')
        + "<h2>Gate decisions</h2>"
        + _table(_decision_headers(False), render_decision_rows(mine, cards, 1, show_model=False), "No decision yet.")
    )
    return _page(f"{model.name}: custintel governance", body, 1, built)


def render_decisions_page(
    decisions: Sequence[DecisionEntry],
    cards: dict[tuple[str, str], CardFiles],
    built: dt.datetime,
    chains: Sequence[Verification] = (),
) -> str:
    """The whole decision log, newest (last appended) first, malformed lines shown where they are."""
    rows = render_decision_rows(list(reversed(decisions)), cards, 0)
    table = _table(_decision_headers(True), rows, "No gate decision yet.")
    body = "<h1>Decision log</h1>" + render_chains(chains) + table
    return _page("Decision log: custintel governance", body, 0, built)


# --- building and serving ---------------------------------------------------------------------------------------------


def _with_unregistered(
    models: list[ModelSummary], decisions: Sequence[DecisionEntry], cards: Iterable[CardFiles]
) -> list[ModelSummary]:
    """Add models only the decision log or the cards name (e.g. deleted from the registry) so nothing is hidden."""
    known = {m.name for m in models}
    extra = {d.get("model") for d in decisions if d.record is not None and d.get("model")} | {c.model for c in cards}
    added = [ModelSummary(name, in_registry=False) for name in sorted(extra - known)]
    return sorted(models + added, key=lambda m: m.name)


def build_site(settings: Settings) -> Path:
    """(Re)write the reviewers' site under `settings.site_dir`; returns its index.html.

    The site is built in a temporary folder beside the old one, which it then replaces, so
    a reader (or `serve_site`) never sees a half-written site.
    """
    models = read_registry(settings)
    decisions = read_decisions(settings.governance_dir / "decisions.jsonl")
    chains = [verify(decision_log(settings)), verify(trail_path(settings))]
    built = dt.datetime.now(dt.UTC)
    target = settings.site_dir
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-new-", dir=target.parent))
    try:
        card_files = copy_cards(settings.governance_dir / "cards", staging)
        cards = {(c.model, c.version): c for c in card_files}
        drift = copy_drift_reports(settings.reports_dir / "monitoring", staging)
        experiments = copy_experiment_reports(settings.home_dir / "experiments", staging)
        operations = read_report(latest_dir(settings))
        copy_operations(latest_dir(settings), operations, staging)
        models = _with_unregistered(models, decisions, card_files)
        (staging / "models").mkdir()
        pages = {
            "index.html": render_index(models, decisions, drift, built, chains),
            "decisions.html": render_decisions_page(decisions, cards, built, chains),
            EXPERIMENTS_PAGE: render_experiments_page(experiments, built),
            OPERATIONS_PAGE: render_operations_page(operations, built),
        }
        for model in models:
            pages[model_page_path(model.name)] = render_model_page(model, decisions, cards, built)
        for path, text in pages.items():
            (staging / path).write_text(text, encoding="utf-8")
        (staging / FAVICON).write_bytes(favicon_ico())
        _replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target / "index.html"


def favicon_ico(rgb: tuple[int, int, int] = (0x1F, 0x3A, 0x5F)) -> bytes:
    """A 16x16 one-colour icon: an ICO file holding one PNG, made here so the site needs no asset files."""
    width = 16

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(width))  # filter byte 0, then RGB pixels
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, width, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    header = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", width, width, 0, 0, 1, 32, len(png), 22)
    return header + png


def _replace_dir(new: Path, target: Path) -> None:
    """Put `new` where `target` is: two renames, so the site is missing only between them."""
    new.chmod(0o755)  # mkdtemp creates 0700; the site is meant to be read by whoever serves it
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
        old.rmdir()
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(target)


def make_site_server(directory: Path, host: str = "127.0.0.1", port: int = 8090) -> ThreadingHTTPServer:
    """An HTTP server for a built site (port 0 picks a free port; see `server_address`)."""
    if not (directory / "index.html").is_file():
        raise SiteError(f"no site at {directory}: run `custintel report` first")
    handler = partial(_QuietHandler, directory=str(directory))
    return ThreadingHTTPServer((host, port), handler)


class _QuietHandler(SimpleHTTPRequestHandler):
    """Serves files without writing a line to stderr per request."""

    def log_message(self, format: str, *args: Any) -> None:
        """Drop access logs (the CLI prints where the site is served instead)."""


def serve_site(settings: Settings, host: str = "127.0.0.1", port: int = 8090) -> None:
    """Serve `settings.site_dir` over HTTP until interrupted (blocking)."""
    with make_site_server(settings.site_dir, host, port) as server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


# --- checking ---------------------------------------------------------------------------------------------------------


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.refs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key == "id" and value:
                self.ids.add(value)
            if key in {"href", "src"} and value is not None:
                self.refs.append(value)


def find_site_problems(site: Path) -> list[str]:
    """Broken local links and outside references in every HTML page under `site` (empty when all is well).

    Checks every `href` and `src`: an absolute URL (http, https, protocol-relative) is a
    problem (the site must work offline); a relative one must name an existing file inside
    the site, and its `#fragment`, if any, an element id of that page.
    """
    problems = []
    root = site.resolve()
    pages = sorted(site.rglob("*.html"))
    parsed: dict[Path, _References] = {}
    for page in pages:
        parser = _References()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        parsed[page.resolve()] = parser
    for page in pages:
        where = page.relative_to(site)
        for ref in parsed[page.resolve()].refs:
            parts = urlsplit(ref)
            if parts.scheme in {"data", "mailto"}:
                continue
            if parts.scheme or parts.netloc or ref.startswith("//"):
                problems.append(f"{where}: outside reference {ref}")
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page.resolve()
            if not target.is_relative_to(root):
                problems.append(f"{where}: {ref} points outside the site")
            elif not target.is_file():
                problems.append(f"{where}: {ref} does not exist")
            elif parts.fragment and target in parsed and parts.fragment not in parsed[target].ids:
                problems.append(f"{where}: {ref} names no element on that page")
    return problems
