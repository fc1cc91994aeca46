"""Retention: how long each store keeps personal data, per store and data class, and the report of a pass.

The policy is the `retention:` section of the governance policy (`governance/policy.yaml`):

    retention:
      classes: {direct_identifier: 400}        # optional: every store holding the class, unless it says otherwise
      stores:
        inference_log: {max_age_days: 90, classes: {behavioural: 30}}
        quarantine: {max_age_days: 30}
        ...

A store's items (day files, drops, partitions, reports, snapshots, bundles) go when their own
date is more than `max_age_days` before the pass's as-of date. A data class's age shortens that
for every store holding the class; the inference log alone keeps its classes in separate
fields, so there a class's age strips that class's fields from older entries and the whole day
file goes at `max_age_days`. A store not listed keeps everything.

The deletions live with the code that writes each store (`serving.inference_log.expire`,
`monitoring.retention`, `features.retention`, `models.scores.expire_scores`, `expire_dsar_exports`
here); `flows.retention` runs them and `retention_report` turns their answers into the report and
the audit-trail counts.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from custintel.retention import Expiry, Item, day_before
from custintel.settings import Settings
from features.data_classes import DATA_CLASSES

_ALL = frozenset(DATA_CLASSES)
# Every store retention covers: what it is, and the data classes it holds (a class age applies to these only).
STORES: dict[str, tuple[str, frozenset[str]]] = {
    "inference_log": ("serving/inference/<day>.jsonl: one entry per answer", frozenset(
        {"quasi_identifier", "behavioural", "inferred"})),
    "decision_log": ("serving/decisions.db: the decisions served (with their context) and their outcomes", frozenset(
        {"quasi_identifier", "behavioural", "inferred"})),
    "lake": ("lake/<table>/drop=<id>/: accepted rows (each table's latest drop always stays)", _ALL),
    "quarantine": ("quarantine/<table>/drop=<id>/: rejected rows as read", _ALL),
    "offline_features": ("features/offline/<set>/v<n>/as_of=<date>/: features and labels per cutoff", frozenset(
        {"quasi_identifier", "sensitive", "behavioural", "inferred"})),
    "batch_scores": ("scores/<model>/as_of=<date>/: every customer's score per model and cutoff (each model's "
                     "latest cutoff stays unless keep_latest is false)", frozenset({"inferred"})),
    "monitoring_reports": ("reports/monitoring/<model>-v<n>-<stamp>*: decision pages, Evidently pages (samples)",
                           frozenset({"behavioural", "inferred"})),
    "evidently_workspace": ("monitoring/workspace/: Evidently snapshots (samples)", frozenset(
        {"behavioural", "inferred"})),
    "mlflow_monitoring_reports": ("the registered versions' runs' monitoring/<stamp>/: copies of the pages",
                                  frozenset({"behavioural", "inferred"})),
    "identity_reports": ("reports/identity/<run id>.json: resolution runs' counts and timings", frozenset()),
    "dsar_exports": ("governance/dsar/<request>/export/: access-request bundles", _ALL),
    "spark_leftovers": ("spark/runs/<pid>-<id>/ of dead Spark runs: staged inputs, Splink checkpoints, scratch "
                        "(removed on every pass, whatever the policy says)", _ALL),
}  # fmt: skip
_STAMP = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})")
_BUNDLE_DATES = ("written_at", "created_at", "exported_at", "at")


class RetentionPolicyError(ValueError):
    """The retention policy is missing or invalid; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_classes(where: str, classes: dict[str, int], held: frozenset[str] | None = None) -> None:
    for name, days in classes.items():
        if name not in _ALL:
            raise ValueError(f"{where}.{name}: unknown data class; known: {', '.join(DATA_CLASSES)}")
        if held is not None and name not in held:
            kinds = ", ".join(sorted(held)) or "none"
            raise ValueError(f"{where}.{name}: this store holds no {name} data (it holds: {kinds})")
        if days < 0:
            raise ValueError(f"{where}.{name}: {days} days: an age cannot be negative")


class StoreRetention(_Strict):
    """How long one store keeps its items."""

    max_age_days: int | None = Field(
        default=None, description="Items dated more than this many days before the as-of date go; None: kept."
    )
    classes: dict[str, int] = Field(
        default_factory=dict, description="Per data class held here, a shorter age for that class's data."
    )
    keep_model_cutoffs: bool = Field(
        default=True,
        description="offline_features only: keep the cutoffs a live (@champion/@challenger) version's lineage names.",
    )
    keep_latest: bool = Field(
        default=True,
        description="batch_scores only: keep each model's latest cutoff although due (the table its consumers read).",
    )


class RetentionPolicy(_Strict):
    """Every store's retention, and class ages for all stores holding a class."""

    classes: dict[str, int] = Field(default_factory=dict)
    stores: dict[str, StoreRetention] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> RetentionPolicy:
        _check_classes("classes", self.classes)
        for name, store in self.stores.items():
            if name not in STORES:
                raise ValueError(f"stores.{name}: unknown store; known: {', '.join(STORES)}")
            if store.max_age_days is not None and store.max_age_days < 0:
                raise ValueError(f"stores.{name}.max_age_days: {store.max_age_days} days: an age cannot be negative")
            _check_classes(f"stores.{name}.classes", store.classes, STORES[name][1])
            if not store.keep_model_cutoffs and name != "offline_features":
                raise ValueError(f"stores.{name}.keep_model_cutoffs: only offline_features keeps model cutoffs")
            if not store.keep_latest and name != "batch_scores":
                raise ValueError(f"stores.{name}.keep_latest: only batch_scores has this choice")
        return self

    def class_ages(self, store: str) -> dict[str, int]:
        """The data-class ages that apply to a store: its own, else the policy-wide ones, for classes it holds."""
        held = STORES[store][1]
        own = self.stores[store].classes if store in self.stores else {}
        return {c: own.get(c, self.classes.get(c)) for c in sorted(held) if c in own or c in self.classes}  # type: ignore[misc]

    def max_age(self, store: str) -> int | None:
        """Days a store keeps its items whole: its max age, shortened by its classes' ages.

        Not the inference log's class ages: there a class's fields are stripped instead.
        """
        own = self.stores[store].max_age_days if store in self.stores else None
        ages = [] if store == "inference_log" else list(self.class_ages(store).values())
        candidates = [a for a in (own, *ages) if a is not None]
        return min(candidates) if candidates else None

    def before(self, store: str, as_of: dt.date) -> dt.date | None:
        """Items of a store dated before this day are due on `as_of` (None: the store keeps everything)."""
        age = self.max_age(store)
        return None if age is None else day_before(as_of, age)

    def strip_before(self, store: str, as_of: dt.date) -> dict[str, dt.date]:
        """Per data class, the day before which the class's fields leave the inference log's entries."""
        if store != "inference_log":
            return {}
        return {c: day_before(as_of, days) for c, days in self.class_ages(store).items()}


def parse_as_of(text: str | None, today: dt.date | None = None) -> dt.date:
    """The pass's as-of date: an ISO date, or today (UTC) when None; a bad one names the option."""
    if text is None:
        return today or dt.datetime.now(dt.UTC).date()
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise RetentionPolicyError(f"--as-of: {text!r} is not a date (YYYY-MM-DD)") from None


# --- DSAR export bundles (written by the access requests, under the governance folder) ---------------------------


def dsar_dir(settings: Settings) -> Path:
    """Where access and erasure requests keep their bundles and journals."""
    return settings.governance_dir / "dsar"


def _bundle_date(folder: Path) -> dt.date | None:
    """An export bundle's date: the time its bundle.json records, else a date its folder name starts with."""
    try:
        data = json.loads((folder / "bundle.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict):
        for key in _BUNDLE_DATES:
            value = data.get(key)
            if isinstance(value, str):
                try:
                    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).date()
                except ValueError:
                    continue
    match = _STAMP.match(folder.name)
    if match:
        try:
            return dt.date(int(match[1]), int(match[2]), int(match[3]))
        except ValueError:
            return None
    return None


def expire_dsar_exports(folder: Path, before: dt.date, dry_run: bool = False) -> Expiry:
    """Remove access-request export bundles made before `before`; a request folder left empty goes too.

    A bundle is `<request>/export/` as `custintel dsar export` writes it (or any folder holding a
    `bundle.json`), dated by the `written_at` its bundle.json records. Erasure journals
    (`<request>/journal.json`, no bundle) stay: they hold keyed hashes only, and a rerun of an
    unfinished erasure needs them. A bundle without a readable date stays, with the reason.
    """
    expiry = Expiry("dsar_exports")
    found = {*folder.glob("*/bundle.json"), *folder.glob("*/export/bundle.json")} if folder.is_dir() else set()
    for bundle in sorted(p.parent for p in found):
        day = _bundle_date(bundle)
        files = sum(1 for p in bundle.rglob("*") if p.is_file())
        item = Item(str(bundle.relative_to(folder)), day or dt.date.min, files)
        if day is None:
            item.reason = "no date in bundle.json nor in the folder name"
            expiry.kept.append(item)
        elif day < before:
            if not dry_run:
                shutil.rmtree(bundle, ignore_errors=True)
                if bundle.parent != folder and not any(bundle.parent.iterdir()):
                    bundle.parent.rmdir()
            expiry.removed.append(item)
        else:
            expiry.kept.append(item)
    return expiry


# --- the report ---------------------------------------------------------------------------------------------------


def _item(item: Item, due: dt.date | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"place": item.place, "dated": item.dated.isoformat(), "count": item.count}
    if due is not None:
        out["due"] = due.isoformat()
    if item.reason:
        out["reason"] = item.reason
    return out


def retention_report(
    policy: RetentionPolicy, expiries: Sequence[Expiry], as_of: dt.date, dry_run: bool, skipped: dict[str, str]
) -> dict[str, Any]:
    """What a pass removed and kept per store, each kept item with the day it becomes due (JSON-ready).

    `skipped`: stores the pass did not touch, with why (not in the policy, a registry that
    could not be read). An item's `due` is the first as-of date on which it goes.
    """
    stores: dict[str, Any] = {}
    for expiry in expiries:
        age = policy.max_age(expiry.store)
        kept = []
        for item in expiry.kept:
            due = None if age is None or item.reason else item.dated + dt.timedelta(days=age + 1)
            kept.append(_item(item, due))
        dues = [k["due"] for k in kept if "due" in k]
        stores[expiry.store] = {
            "max_age_days": age,
            "class_ages_days": policy.class_ages(expiry.store),
            "before": None if age is None else day_before(as_of, age).isoformat(),
            "removed": [_item(i) for i in expiry.removed],
            "removed_count": expiry.removed_count,
            "trimmed": [_item(i) for i in expiry.trimmed],
            "kept": kept,
            "next_due": min(dues) if dues else None,
            "notes": list(expiry.notes),
        }
    return {
        "as_of": as_of.isoformat(),
        "dry_run": dry_run,
        "stores": stores,
        "skipped": dict(skipped),
        "counts": counts(stores),
    }


def counts(stores: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per store: places removed, what they held (entries, rows, files), places trimmed, places kept."""
    return {
        name: {
            "removed": len(s["removed"]),
            "removed_count": int(s["removed_count"]),
            "trimmed": len(s["trimmed"]),
            "kept": len(s["kept"]),
        }
        for name, s in stores.items()
    }


def write_report(settings: Settings, report: dict[str, Any], now: dt.datetime) -> Path:
    """Write the pass's report to `reports/retention/<stamp>.json` (place names and counts: no personal data)."""
    folder = settings.reports_dir / "retention"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{now.strftime('%Y%m%dT%H%M%S%fZ')}.json"
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
