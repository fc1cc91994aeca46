"""Access and erasure requests (GDPR art. 15 and 17) across every personal store: bundles, journals, receipts.

The stores (`custintel.personal.PersonalStore`, one per place personal data is written) are handed
in by the caller (`flows.personal.catalogue`); this module walks them:

- **export**: every store's `find` for the subjects, written as a bundle: `bundle.json` (everything),
  one CSV per store, and `index.html`, a self-contained page a person can read (per store and place
  what is held, consent history, the model versions their rows went into);
- **erase**: a journal (`<home>/governance/dsar/<request id>/journal.json`: the subjects' keyed
  hashes, each store planned or done with what it removed) written before anything changes, the
  suppression list first (so no ingestion or build re-adds them half-way), then each store's
  `erase`, the journal updated after each. A rerun of the same request resumes from the journal and
  finishes; the subjects it needs are kept in `pending.json` beside it only until the erasure is done
  (the stores may already have lost the identifiers resolution needs);
- **verify**: every store's `find` plus a raw search of the home's files for the subjects' tokens; the
  report (`<home>/governance/dsar/<request id>/verify.json`) lists each hit's store, place and row count,
  never the data.

Each writes a receipt to the audit trail (`governance.trail.record`, actions `dsar_export`,
`dsar_erase`, `dsar_verify`) holding keyed hashes of the subjects (HMAC-SHA256 with the privacy
key, never a raw identifier) and per-store counts.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import fcntl
import hashlib
import hmac
import html
import io
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from custintel.atomic_files import replace_atomically, write_text_atomically
from custintel.personal import Erased, Holding, PersonalStore, Subject
from custintel.settings import Settings
from features.suppression import privacy_key
from governance.trail import record

EXPORT_STORE = "dsar.exports"
RAW_SEARCH = "raw search"
_ROWS_SHOWN = 200  # rows per place shown on the HTML page (the CSV and JSON hold them all)
_RAW_SKIP_SUFFIXES = (".parquet",)  # columnar and compressed: their stores search them by value
_WORD = "A-Za-z0-9"
_CHUNK = 8 << 20  # bytes the raw search reads at a time

Progress = Callable[[str], None]
Suppress = Callable[[Settings, Sequence[Subject]], int]


class DsarError(RuntimeError):
    """A request could not be completed (a store failed, a journal is unreadable); the message says what to do."""


# --- hashes (the key is features.suppression's) -----------------------------------------------------------------------


def keyed_hash(key: bytes, value: str) -> str:
    """HMAC-SHA256 (hex) of a value: the same value gives the same hash, and nobody without the key can test one."""
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()


def subject_hashes(key: bytes, subject: Subject) -> dict[str, Any]:
    """What a journal or receipt keeps of a subject: keyed hashes of the request and keys, and counts."""
    return {
        "request": keyed_hash(key, subject.request),
        "customer_keys": [keyed_hash(key, k) for k in subject.customer_keys],
        "source_records": len(subject.source_records),
        "emails": len(subject.emails),
        "phones": len(subject.phones),
    }


def request_id(key: bytes, kind: str, requests: Iterable[tuple[str, str | None]]) -> str:
    """A stable id for a request (the same requests give the same id, so a rerun finds its journal)."""
    lines = sorted(f"{request.strip()}\t{customer or ''}" for request, customer in requests)
    return f"{kind}-{keyed_hash(key, kind + chr(10) + chr(10).join(lines))[:16]}"


def dsar_dir(settings: Settings, request: str) -> Path:
    """The folder of one request: its journal, and an export's default bundle."""
    return settings.governance_dir / "dsar" / request


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _relative(settings: Settings, path: Path) -> str:
    try:
        return str(path.resolve().relative_to(settings.home_dir))
    except ValueError:
        return str(path.resolve())


def _counts(holdings: Iterable[Holding]) -> dict[str, int]:
    """Rows per store."""
    out: dict[str, int] = {}
    for h in holdings:
        out[h.store] = out.get(h.store, 0) + max(len(h.rows), 1)
    return out


# --- export --------------------------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    """Where a bundle went and what it holds."""

    request_id: str
    folder: Path
    holdings: list[Holding]
    receipt: dict[str, Any]

    @property
    def counts(self) -> dict[str, int]:
        """Rows per store."""
        return _counts(self.holdings)


def find_everywhere(stores: Sequence[PersonalStore], subjects: Sequence[Subject], progress: Progress) -> list[Holding]:
    """Every store's holdings of the subjects, store by store."""
    holdings: list[Holding] = []
    for store in stores:
        found = store.find(subjects)
        progress(f"{store.name}: {sum(len(h.rows) for h in found)} row(s) in {len(found)} place(s)")
        holdings.extend(found)
    return holdings


def export_request(
    settings: Settings,
    stores: Sequence[PersonalStore],
    subjects: Sequence[Subject],
    request: str,
    out: Path | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Find the subjects in every store, write the bundle (JSON, CSV per store, HTML) and the receipt."""
    report = progress or (lambda _: None)
    holdings = find_everywhere(stores, subjects, report)
    folder = out or dsar_dir(settings, request) / "export"
    written_at = _now()
    write_bundle(folder, request, subjects, holdings, written_at)
    key = privacy_key(settings)
    receipt = record(
        settings,
        "dsar_export",
        request,
        {
            "subjects": [subject_hashes(key, s) for s in subjects],
            "stores": _counts(holdings),
            "stores_searched": len(stores),
            "places": len(holdings),
            "bundle": _relative(settings, folder),
        },
    )
    return ExportResult(request, folder, holdings, receipt)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str | int | float | bool):
        return str(value)
    return json.dumps(value, sort_keys=True, default=str)


def store_csv(holdings: Sequence[Holding]) -> str:
    """One store's holdings as CSV: `subject`, `place`, then the union of the rows' columns."""
    columns: list[str] = []
    for h in holdings:
        for row in h.rows:
            columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["subject", "place", *columns])
    for h in holdings:
        for row in h.rows or [{}]:
            writer.writerow([h.subject, h.place, *(_cell(row.get(c)) for c in columns)])
    return buffer.getvalue()


def safe_file_name(name: str) -> str:
    """A store name as a file name (`features.online` stays, odd characters become `_`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "store"


def write_bundle(
    folder: Path, request: str, subjects: Sequence[Subject], holdings: Sequence[Holding], written_at: str
) -> list[Path]:
    """Write `bundle.json`, `<store>.csv` per store and `index.html` under `folder`; returns the files."""
    folder.mkdir(parents=True, exist_ok=True)
    by_store: dict[str, list[Holding]] = {}
    for h in holdings:
        by_store.setdefault(h.store, []).append(h)
    bundle = {
        "request_id": request,
        "written_at": written_at,
        "subjects": [asdict(s) for s in subjects],
        "stores": {name: [asdict(h) for h in found] for name, found in by_store.items()},
        "counts": _counts(holdings),
    }
    files = [folder / "bundle.json"]
    write_text_atomically(files[0], json.dumps(bundle, indent=2, sort_keys=True, default=str) + "\n")
    for name, found in by_store.items():
        files.append(folder / f"{safe_file_name(name)}.csv")
        write_text_atomically(files[-1], store_csv(found))
    files.append(folder / "index.html")
    write_text_atomically(files[-1], render_bundle_html(request, subjects, holdings, written_at))
    return files


# What each store is, in words a person can read on the bundle's page.
STORE_DESCRIPTIONS = {
    "lake": "your records from each source system (CRM, billing, support, web, consent, the acquired company), "
    "as they were received",
    "quarantine": "records of yours a data check rejected on arrival, kept with the reason",
    "identity": "how your records in different systems were recognised as one person, and the combined record",
    "features.offline": "figures computed about you at each date the models learn from (e.g. spend, tickets)",
    "features.online": "the latest of those figures, used when a score is asked for",
    "mlflow": "model training and test data that included you, and the model versions built from them",
    "inference_log": "scores and recommendations served about you",
    "serving.caps": "how often you were shown an offer (frequency limits)",
    "serving.consent": "the consent decisions the scoring service checks",
    "decision_log": "the actions decided for you (offers, service recovery), why, and what happened next",
    "monitoring": "samples of served data used to check the models still work",
    "governance": "model cards and reviewers' pages that showed your data",
    EXPORT_STORE: "earlier copies of an export like this one",
}

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d232a;background:#fafbfc}
header{background:#1f3a5f;color:#fff;padding:.8rem 1.5rem}main{padding:1rem 1.5rem 2rem;max-width:1400px}
h1{font-size:1.4rem;margin:0}h2{font-size:1.2rem;margin-top:1.8rem}h3{font-size:1.02rem;margin-bottom:.2rem}
table{border-collapse:collapse;width:100%;background:#fff;margin:.4rem 0}
th,td{border:1px solid #d5dbe1;padding:.25rem .45rem;text-align:left;vertical-align:top;font-size:.9em}
th{background:#eef1f4}code{font-size:.85em}.note{color:#5f6b76}.wide{overflow-x:auto}
"""


def _e(value: Any) -> str:
    return html.escape(_cell(value), quote=True)


def _rows_table(rows: Sequence[Mapping[str, Any]], limit: int = _ROWS_SHOWN) -> str:
    if not rows:
        return '<p class="note">held (no row detail)</p>'
    columns: list[str] = []
    for row in rows[:limit]:
        columns += [c for c in row if c not in columns]
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows[:limit])
    more = f'<p class="note">{len(rows) - limit} more row(s) in the CSV and JSON.</p>' if len(rows) > limit else ""
    return f'<div class="wide"><table><tr>{head}</tr>{body}</table></div>{more}'


def render_bundle_html(request: str, subjects: Sequence[Subject], holdings: Sequence[Holding], written_at: str) -> str:
    """The bundle's readable summary: who, what each store holds where, consent history, models. Pure."""
    counts = _counts(holdings)
    parts = [f"<p>Written {_e(written_at)} for request <code>{_e(request)}</code>. Everything below is also in "
             "<code>bundle.json</code> and in one CSV file per store.</p>"]  # fmt: skip
    parts.append("<h2>Who</h2><table><tr><th>request</th><th>customer keys</th><th>source records</th>"
                 "<th>emails</th><th>phones</th><th>names and birth dates</th></tr>")  # fmt: skip
    for s in subjects:
        records = ", ".join(f"{t}:{i}" for t, i in s.source_records)
        names = "; ".join(" ".join(p for p in n if p) for n in s.names)
        parts.append(
            f"<tr><td>{_e(s.request)}</td><td>{_e(', '.join(s.customer_keys))}</td><td>{_e(records)}</td>"
            f"<td>{_e(', '.join(s.emails))}</td><td>{_e(', '.join(s.phones))}</td><td>{_e(names)}</td></tr>"
        )
    parts.append("</table>")
    parts.append("<h2>Where your data is</h2>")
    if not holdings:
        parts.append('<p class="note">No store holds anything about this request.</p>')
    else:
        parts.append("<table><tr><th>store</th><th>what it is</th><th>places</th><th>rows</th></tr>")
        for name in sorted(counts):
            places = sorted({h.place for h in holdings if h.store == name})
            what = STORE_DESCRIPTIONS.get(name, "")
            parts.append(f"<tr><td>{_e(name)}</td><td>{_e(what)}</td><td>{_e(len(places))}</td>"
                         f"<td>{_e(counts[name])}</td></tr>")  # fmt: skip
        parts.append("</table>")
    consent = [h for h in holdings if "consent" in h.place.lower()]
    parts.append("<h2>Consent history</h2>")
    if consent:
        for h in consent:
            parts.append(f"<h3>{_e(h.store)}: <code>{_e(h.place)}</code></h3>{_rows_table(h.rows)}")
    else:
        parts.append('<p class="note">No consent record is held.</p>')
    models = [h for h in holdings if h.store == "mlflow"]
    parts.append("<h2>Models your data went into</h2>")
    if models:
        versions = sorted(
            {
                f"{r['model']} version {r['version']}"
                for h in models
                for r in h.rows
                if r.get("model") and r.get("version")
            }
        )
        if versions:
            parts.append("<ul>" + "".join(f"<li>{_e(v)}</li>" for v in versions) + "</ul>")
        parts.append("<ul>" + "".join(f"<li><code>{_e(h.place)}</code>: {len(h.rows)} row(s)</li>" for h in models))
        parts.append("</ul>")
    else:
        parts.append('<p class="note">No model run holds rows of yours.</p>')
    parts.append("<h2>Every place, row by row</h2>")
    for h in sorted(holdings, key=lambda h: (h.store, h.place)):
        parts.append(f"<h3>{_e(h.store)}: <code>{_e(h.place)}</code> ({len(h.rows)} row(s))</h3>{_rows_table(h.rows)}")
    body = "\n".join(parts)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
        f"<title>Personal data held: {_e(request)}</title><style>{_CSS}</style></head>\n"
        f"<body><header><h1>Personal data held: {_e(request)}</h1></header><main>\n{body}\n</main></body></html>\n"
    )


class ExportBundleStore:
    """Earlier export bundles kept under the home (`governance/dsar/<id>/export/`): they hold the person too."""

    name = EXPORT_STORE

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _bundles(self) -> list[Path]:
        return sorted((self.settings.governance_dir / "dsar").glob("*/export/bundle.json"))

    def _holding(self, path: Path, subjects: Sequence[Subject]) -> list[Holding]:
        text = path.read_text(encoding="utf-8", errors="replace")
        out = []
        for s in subjects:
            pattern = _token_pattern(s.tokens())
            if pattern is not None and pattern.search(text.encode("utf-8")):
                files = sorted(p.name for p in path.parent.iterdir() if p.is_file())
                out.append(Holding(self.name, _relative(self.settings, path.parent), s.request, [{"files": files}]))
        return out

    def find(self, subjects: Sequence[Subject]) -> list[Holding]:
        """Each bundle that names one of the subjects."""
        return [h for path in self._bundles() for h in self._holding(path, subjects)]

    def erase(self, subjects: Sequence[Subject]) -> list[Erased]:
        """Delete each bundle that names one of the subjects (the person was sent their copy)."""
        erased = []
        for path in self._bundles():
            if self._holding(path, subjects):
                files = sum(1 for p in path.parent.iterdir() if p.is_file())
                shutil.rmtree(path.parent)
                with contextlib.suppress(OSError):  # the request's folder, when nothing else is in it
                    path.parent.parent.rmdir()
                erased.append(Erased(self.name, _relative(self.settings, path.parent), files, "bundle deleted"))
        return erased


# --- erase ---------------------------------------------------------------------------------------------------------


@dataclass
class Journal:
    """An erasure's progress: subjects (keyed hashes), suppression, each store planned or done."""

    request_id: str
    subjects: list[dict[str, Any]]
    stores: list[dict[str, Any]]
    started_at: str = field(default_factory=_now)
    status: str = "in_progress"
    suppressed: dict[str, Any] | None = None
    finished_at: str | None = None
    runs: int = 1
    receipt: dict[str, Any] | None = None

    def store(self, name: str) -> dict[str, Any]:
        """A store's entry, added as planned when the catalogue gained it since the journal was written."""
        for entry in self.stores:
            if entry["name"] == name:
                return entry
        entry = {"name": name, "status": "planned", "erased": [], "removed": 0}
        self.stores.append(entry)
        return entry

    def save(self, path: Path) -> None:
        """Replace the journal file atomically."""
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(path, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> Journal:
        """A journal written by `save`."""
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            raise DsarError(f"{path} is not a readable erasure journal ({exc}); move it away to start over") from exc


def _write_private(text: str, path: Path) -> None:
    """Write a file only its owner can read (the pending subjects hold raw identifiers)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def journal_path(settings: Settings, request: str) -> Path:
    """`<home>/governance/dsar/<request id>/journal.json`."""
    return dsar_dir(settings, request) / "journal.json"


def pending_path(settings: Settings, request: str) -> Path:
    """The subjects of an unfinished erasure (removed when it completes)."""
    return dsar_dir(settings, request) / "pending.json"


def read_journal(settings: Settings, request: str) -> Journal | None:
    """The request's journal, or None before its first run."""
    path = journal_path(settings, request)
    return Journal.load(path) if path.is_file() else None


def pending_subjects(settings: Settings, request: str) -> list[Subject] | None:
    """The subjects an unfinished erasure was started with, or None."""
    path = pending_path(settings, request)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [_subject_from_json(d) for d in data]
    except (ValueError, TypeError, KeyError) as exc:
        raise DsarError(f"{path} is unreadable ({exc}): rerun cannot resume; restore it or start over") from exc


def _subject_from_json(data: Mapping[str, Any]) -> Subject:
    return Subject(
        request=str(data["request"]),
        customer_keys=tuple(data.get("customer_keys", ())),
        source_records=tuple((str(t), str(i)) for t, i in data.get("source_records", ())),
        emails=tuple(data.get("emails", ())),
        phones=tuple(data.get("phones", ())),
        names=tuple((str(a), str(b), str(c)) for a, b, c in data.get("names", ())),
        log_keys=tuple(data.get("log_keys", ())),
    )


@dataclass
class EraseResult:
    """What an erasure did (or found already done)."""

    request_id: str
    journal: Journal
    journal_file: Path
    already_done: bool = False

    @property
    def removed(self) -> dict[str, int]:
        """Removed rows (or files) per store."""
        return {s["name"]: int(s["removed"]) for s in self.journal.stores}


def erase_request(
    settings: Settings,
    stores: Sequence[PersonalStore],
    subjects: Sequence[Subject],
    request: str,
    suppress: Suppress,
    progress: Progress | None = None,
) -> EraseResult:
    """Erase the subjects from every store, journalled so a rerun resumes; the receipt goes to the audit trail.

    Order: journal (and pending subjects) written -> suppression list -> each store's erase, the
    journal saved after each -> receipt -> pending subjects removed. A store that raises leaves the
    journal at that store: the same command again continues from there.
    """
    report = progress or (lambda _: None)
    with _erasure_lock(settings, report):
        return _erase_locked(settings, stores, subjects, request, suppress, report)


@contextlib.contextmanager
def _erasure_lock(settings: Settings, report: Progress) -> Iterator[None]:
    """One erasure at a time per home: two rewriting the same file would each put back what the other removed."""
    path = settings.governance_dir / "dsar" / ".erase.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report("waiting for another erasure in this home to finish")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _erase_locked(
    settings: Settings,
    stores: Sequence[PersonalStore],
    subjects: Sequence[Subject],
    request: str,
    suppress: Suppress,
    report: Progress,
) -> EraseResult:
    path, pending = journal_path(settings, request), pending_path(settings, request)
    key = privacy_key(settings)
    journal = read_journal(settings, request)
    if journal is not None and journal.status == "done":
        return EraseResult(request, journal, path, already_done=True)
    if journal is None:
        journal = Journal(request, [subject_hashes(key, s) for s in subjects], [])
        for store in stores:
            journal.store(store.name)
        pending.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(pending, partial(_write_private, json.dumps([asdict(s) for s in subjects]) + "\n"))
    else:
        journal.runs += 1
        report(f"resuming: {sum(s['status'] == 'done' for s in journal.stores)} of {len(journal.stores)} stores done")
    journal.save(path)
    if journal.suppressed is None:
        started = time.perf_counter()
        added = suppress(settings, subjects)
        journal.suppressed = {"added": added, "at": _now(), "seconds": round(time.perf_counter() - started, 3)}
        journal.save(path)
        report(f"suppression list: {added} identifier(s) added")
    for store in stores:
        entry = journal.store(store.name)
        if entry["status"] == "done":
            report(f"{store.name}: done earlier ({entry['removed']} removed)")
            continue
        started = time.perf_counter()
        try:
            erased = store.erase(subjects)
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"[:300]
            journal.save(path)
            # The trail records the partial change too (the store and the error's kind, never its message).
            _erase_receipt(settings, journal, path, "incomplete", {"failed_store": store.name,
                                                                   "error": type(exc).__name__})  # fmt: skip
            raise DsarError(
                f"erasure {request}: store {store.name} failed ({type(exc).__name__}: {exc}); run the same command "
                f"again to finish it (journal {path})"
            ) from exc
        entry.pop("error", None)
        entry["erased"] += [asdict(e) for e in erased]
        entry["removed"] = int(entry["removed"]) + sum(e.removed for e in erased)
        seconds = round(time.perf_counter() - started, 3)
        entry["status"], entry["finished_at"], entry["seconds"] = "done", _now(), seconds
        journal.save(path)
        report(f"{store.name}: {sum(e.removed for e in erased)} removed in {len(erased)} place(s) ({seconds:.1f} s)")
    receipt = _erase_receipt(settings, journal, path, "complete")
    journal.status, journal.finished_at = "done", _now()
    journal.receipt = {"seq": receipt["seq"], "hash": receipt["hash"]}
    journal.save(path)
    pending.unlink(missing_ok=True)  # the identifiers were needed only to finish
    return EraseResult(request, journal, path)


def _erase_receipt(
    settings: Settings, journal: Journal, path: Path, status: str, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The erasure's entry in the audit trail: keyed hashes of the subjects, counts per store, the journal."""
    return record(
        settings,
        "dsar_erase",
        journal.request_id,
        {
            "status": status,
            "subjects": journal.subjects,
            "stores": {s["name"]: int(s["removed"]) for s in journal.stores if s["status"] == "done"},
            "places": sum(len(s["erased"]) for s in journal.stores),
            "suppressed": (journal.suppressed or {}).get("added", 0),
            "runs": journal.runs,
            "journal": _relative(settings, path),
            **(extra or {}),
        },
    )


# --- verify --------------------------------------------------------------------------------------------------------


def _token_pattern(tokens: Iterable[str]) -> re.Pattern[bytes] | None:
    """One case-insensitive pattern for every token, matching whole identifiers only (C0001 is not in C00012)."""
    words = sorted({t for t in tokens if t}, key=len, reverse=True)
    if not words:
        return None
    alternatives = b"|".join(re.escape(w.encode("utf-8")) for w in words)
    return re.compile(rb"(?<![" + _WORD.encode() + rb"])(?:" + alternatives + rb")(?![" + _WORD.encode() + rb"])",
                      re.IGNORECASE)  # fmt: skip


def mask_token(token: str) -> str:
    """A found token shown masked (`tr***om`), so a verify report does not spread it further."""
    return token[:2] + "*" * max(len(token) - 4, 1) + token[-2:] if len(token) > 4 else "*" * len(token)


def raw_token_hits(
    root: Path, subjects: Sequence[Subject], skip: Iterable[Path] = (), relative_to: Path | None = None
) -> list[Holding]:
    """Files under `root` whose bytes hold one of a subject's tokens (keys, ids, emails, phones).

    Parquet files are skipped (columnar and compressed, so a byte search cannot see into them:
    the store that owns each searches it by value); SQLite files, JSON, CSV, HTML and the rest are
    searched as bytes, free pages included, so a deleted-but-not-vacuumed row is still a hit.
    One pattern covers every subject, so a file is read and scanned once however many there are.
    """
    skipped = {p.resolve() for p in skip}
    owners: dict[str, list[int]] = {}
    for i, subject in enumerate(subjects):
        for token in subject.tokens():
            owners.setdefault(token.lower(), []).append(i)
    pattern = _token_pattern(owners)
    if pattern is None:
        return []
    base = relative_to or root
    overlap = max(len(t.encode("utf-8")) for t in owners) + 2  # a token cut by a chunk edge is whole in the next
    hits: list[Holding] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if (here / d).resolve() not in skipped)
        for name in sorted(files):
            path = here / name
            if path.suffix in _RAW_SKIP_SUFFIXES or path.is_symlink() or path.resolve() in skipped:
                continue
            found: dict[int, set[str]] = {}
            try:
                for token in _tokens_in(path, pattern, overlap):
                    for i in owners.get(token.lower(), []):
                        found.setdefault(i, set()).add(token)
            except OSError:
                continue
            place = str(path.relative_to(base)) if path.is_relative_to(base) else str(path)
            for i, tokens in sorted(found.items()):
                rows = [{"token": mask_token(t)} for t in sorted(tokens)]
                hits.append(Holding(RAW_SEARCH, place, subjects[i].request, rows))
    return hits


def _tokens_in(path: Path, pattern: re.Pattern[bytes], overlap: int) -> set[str]:
    """Every token `pattern` finds in a file, read in chunks (an MLflow database or a log can be large)."""
    found: set[str] = set()
    tail = b""
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            data = tail + chunk
            found.update(m.group(0).decode("utf-8", errors="replace") for m in pattern.finditer(data))
            tail = data[-overlap:]
    return found


@dataclass
class VerifyResult:
    """Every hit of a verify, and how many stores it searched."""

    request_id: str
    hits: list[Holding]
    stores_searched: int
    receipt: dict[str, Any]
    report: Path | None = None

    @property
    def clean(self) -> bool:
        """Nothing found anywhere."""
        return not self.hits


def verify_report(key: bytes, request: str, subjects: Sequence[Subject], hits: Sequence[Holding],
                  stores: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    """What a verify found, without the data: per hit its store, place, subject (keyed hash) and row count. Pure."""
    return {
        "request_id": request,
        "at": _now(),
        "stores_searched": [*stores, RAW_SEARCH],
        "subjects": [subject_hashes(key, s) for s in subjects],
        "clean": not hits,
        "hits": [
            {"store": h.store, "place": h.place, "subject": keyed_hash(key, h.subject), "rows": len(h.rows)}
            for h in hits
        ],
    }


def verify_request(
    settings: Settings,
    stores: Sequence[PersonalStore],
    subjects: Sequence[Subject],
    request: str,
    progress: Progress | None = None,
    skip: Iterable[Path] = (),
) -> VerifyResult:
    """Search every store and the home's files for the subjects; the receipt lists hits per store (counts only)."""
    report = progress or (lambda _: None)
    hits = find_everywhere(stores, subjects, report)
    reported = {h.place.split("#", 1)[0].rstrip("/") for h in hits}  # `file#table` names the file

    def already(place: str) -> bool:  # a store named the file, or the folder it is in
        return any(place == p or place.startswith(p + "/") for p in reported)

    raw = [h for h in raw_token_hits(settings.home_dir, subjects, skip) if not already(h.place)]
    report(f"{RAW_SEARCH}: {len(raw)} file(s) under {settings.home_dir}")
    hits += raw
    key = privacy_key(settings)
    report_path = dsar_dir(settings, request) / "verify.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    document = verify_report(key, request, subjects, hits, [s.name for s in stores])
    write_text_atomically(report_path, json.dumps(document, indent=2, sort_keys=True) + "\n")
    receipt = record(
        settings,
        "dsar_verify",
        request,
        {
            "subjects": document["subjects"],
            "hits": _counts(hits),
            "stores_searched": len(stores) + 1,
            "clean": not hits,
            "report": _relative(settings, report_path),
        },
    )
    return VerifyResult(request, hits, len(stores) + 1, receipt, report_path)
