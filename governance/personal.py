"""The governance store of personal data: model cards and audits, the reviewers' site, and the legal records.

- Cards and audits (`governance_dir/cards/<model>/<version>/`: card.html, card.md, audit JSON,
  plots) and the reviewers' site (`settings.site_dir`) are searched for the subject's identifiers
  (`Subject.tokens()`). They hold aggregates by design; a text file that names a subject has each
  identifier replaced by `[erased]` (an atomic rewrite), and the site is rebuilt from what remains
  (`governance.site.build_site`), which also drops its copies of monitoring reports that the
  monitoring store deleted.
- Model versions that the MLflow store flagged (`custintel.erasure.subjects`) get
  `custintel.erasure.retrain` from the policy's `erasure.retrain`, and their written cards a note
  under the title (`erasure_notes.with_erasure_note`); a card written later states it too.
- The audit trail and the gate's decision log (`audit_trail.jsonl`, `decisions.jsonl`) are the
  legal record of what was done: they are NOT erased (a hash chain would break, and the record of
  an erasure must outlive it). They must hold no raw identifier: `find` reports any line that does,
  and `erase` says for each whether it was checked clean.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from custintel.personal import Erased, Holding, PersonalStore, Subject
from custintel.settings import Settings
from custintel.token_search import occurrences, scrub
from governance import erasure_notes
from governance.policy import load_policy
from models.registry import Registry

STORE = "governance"
ERASED = "[erased]"
TEXT_SUFFIXES = (".html", ".md", ".json", ".jsonl", ".txt", ".csv", ".svg")
LEGAL_RECORDS = ("audit_trail.jsonl", "decisions.jsonl")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.erasing-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class GovernanceStore:
    """Cards, the reviewers' site, and a check of the legal records."""

    name = STORE

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cards_dir = settings.governance_dir / "cards"

    def _relative(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.settings.home_dir))
        except ValueError:
            return str(path)

    @staticmethod
    def _texts(folder: Path) -> list[Path]:
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)

    def _legal(self) -> list[Path]:
        return [p for p in (self.settings.governance_dir / n for n in LEGAL_RECORDS) if p.is_file()]

    def _hits(self, files: Sequence[Path], subjects: Sequence[Subject]) -> dict[Path, dict[str, int]]:
        """File -> subject request -> occurrences of their identifiers."""
        out: dict[Path, dict[str, int]] = {}
        tokens = {s.request: s.tokens() for s in subjects}
        for path in files:
            found = occurrences(path.read_text(encoding="utf-8", errors="replace"), tokens)
            if found:
                out[path] = found
        return out

    def find(self, subjects: Sequence[Subject]) -> list[Holding]:
        """Every card, site page and legal-record file naming a subject, with how often."""
        if not subjects:
            return []
        files = self._texts(self.cards_dir) + self._texts(self.settings.site_dir) + self._legal()
        out = []
        for path, found in self._hits(files, subjects).items():
            legal = path.name in LEGAL_RECORDS and path.parent == self.settings.governance_dir
            for request, count in found.items():
                row = {"identifier_occurrences": count}
                if legal:
                    row["note"] = "legal record: never erased, and must hold no raw identifier"  # type: ignore[assignment]
                out.append(Holding(STORE, self._relative(path), request, [row]))
        return out

    def erase(self, subjects: Sequence[Subject]) -> list[Erased]:
        """Scrub cards, flag retrains, rebuild the site; check (never rewrite) the legal records."""
        done: list[Erased] = []
        tokens = {t for s in subjects for t in s.tokens()}
        for path in self._hits(self._texts(self.cards_dir), subjects):
            text, removed = scrub(path.read_text(encoding="utf-8", errors="replace"), tokens, ERASED)
            _atomic_write(path, text)
            done.append(Erased(STORE, self._relative(path), removed, "identifiers replaced by [erased]"))
        done += self._flag_versions()
        site_hits = self._hits(self._texts(self.settings.site_dir), subjects)
        if self.settings.site_dir.is_dir() and (done or site_hits or self._stale_site_reports()):
            from governance.site import build_site

            build_site(self.settings)
            removed = sum(sum(v.values()) for v in site_hits.values())
            done.append(Erased(STORE, self._relative(self.settings.site_dir), removed,
                               "the reviewers' site rebuilt from what remains"))  # fmt: skip
        legal_hits = self._hits(self._legal(), subjects)
        for path in self._legal():
            count = sum(legal_hits.get(path, {}).values())
            detail = (
                "legal record, not erased: checked, it holds no identifier of the subjects"
                if not count
                else f"legal record, not erased: {count} occurrence(s) of the subjects' identifiers (it must hold "
                "none: report this)"
            )
            done.append(Erased(STORE, self._relative(path), 0, detail))
        return done

    def _stale_site_reports(self) -> bool:
        """The site holds a copy of a monitoring report that no longer exists (an erasure deleted it)."""
        copies = self.settings.site_dir / "drift"
        if not copies.is_dir():
            return False
        sources = self.settings.reports_dir / "monitoring"
        present = {p.name for p in sources.glob("*.html")} if sources.is_dir() else set()
        return any(p.name not in present for p in copies.glob("*.html"))

    def _flag_versions(self) -> list[Erased]:
        """Versions flagged by the MLflow store: the policy's retrain rule as a tag, and a note on their cards."""
        registry = Registry(self.settings)
        if not registry.exists():
            return []
        retrain = load_policy(self.settings.governance_policy).erasure.retrain
        done = []
        for listing in registry.list_models():
            for version in listing.versions:
                if not version.tags.get(erasure_notes.ERASURE_SUBJECTS):
                    continue
                tags = dict(version.tags)
                if tags.get(erasure_notes.ERASURE_RETRAIN) != retrain:
                    registry.set_version_tags(version.name, version.version, {erasure_notes.ERASURE_RETRAIN: retrain})
                    tags[erasure_notes.ERASURE_RETRAIN] = retrain
                line = erasure_notes.erasure_line(tags)
                folder = self.cards_dir / version.name / version.version
                changed = False
                for name, markdown in (("card.html", False), ("card.md", True)):
                    path = folder / name
                    if line is None or not path.is_file():
                        continue
                    text = path.read_text(encoding="utf-8")
                    noted = erasure_notes.with_erasure_note(text, line, markdown)
                    if noted != text:
                        _atomic_write(path, noted)
                        changed = True
                if changed:
                    done.append(Erased(STORE, self._relative(folder), 0, f"card notes the erasure: {line}"))
        return done


def personal_stores(settings: Settings) -> list[PersonalStore]:
    """The stores of this package that can hold a person's data."""
    return [GovernanceStore(settings)]
