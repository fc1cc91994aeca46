"""The gate's I/O: the registry's versions and aliases, the per-model lock, the decision log, card files.

Paths come from settings. The decision log is append-only, hash-chained JSON lines (`governance.trail`); each
append holds an exclusive lock and is flushed to disk before the lock is released.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from custintel.json_lines import json_lines
from custintel.settings import Settings
from governance import trail
from models.registry import CHALLENGER, CHAMPION, PREVIOUS, Registry, UnknownModelError

GATE_TAG_PREFIX = "custintel.gate."  # model-version tags: result, reasons, decision, policy_hash, card


class GateError(RuntimeError):
    """A promotion or rollback cannot go ahead (unknown model or version, nothing to roll back to)."""


def actor() -> str:
    """Who is acting: CUSTINTEL_ACTOR when set (e.g. a CI job), else user@host."""
    return trail.default_actor()


def decision_log(settings: Settings) -> Path:
    """The append-only decision log."""
    return settings.governance_dir / "decisions.jsonl"


def append_decision(settings: Settings, record: dict[str, Any]) -> dict[str, Any]:
    """Append one decision to the hash-chained decision log and its entry to the audit trail.

    The decision log never rewrites earlier lines; each record gains seq, prev_hash and hash
    (readers ignore them, `custintel audit verify --decisions` checks them). A policy whose
    digest differs from the previous decision's is recorded as a policy change first. Returns
    the line written.
    """
    written, previous = trail.append_chained(decision_log(settings), record)
    who = str(record.get("actor") or actor())
    old_policy, new_policy = (previous or {}).get("policy_hash"), record.get("policy_hash")
    if previous is not None and new_policy and old_policy != new_policy:
        details = {"from": old_policy, "to": new_policy, "policy_version": record.get("policy_version")}
        trail.record(settings, "policy_change", "governance policy", details, who)
    action = {"promoted": "promotion", "waived": "waiver", "blocked": "promotion", "rolled_back": "rollback"}
    trail.record(
        settings,
        action.get(str(record.get("result")), str(record.get("action") or "decision")),
        f"{record.get('model')} v{record.get('version')}",
        {
            "decision": record.get("id"),
            "decision_seq": written["seq"],
            "decision_hash": written["hash"],
            "result": record.get("result"),
            "champion_before": record.get("champion_before"),
            "champion_after": record.get("champion_after"),
            "policy_hash": new_policy,
            "waiver": record.get("waiver"),
            "reasons": record.get("reasons"),
        },
        who,
    )
    return written


def read_decisions(settings: Settings, model: str | None = None) -> list[dict[str, Any]]:
    """Decisions, oldest first (optionally of one model); unreadable lines are skipped."""
    path = decision_log(settings)
    if not path.is_file():
        return []
    out = []
    for line in json_lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and (model is None or record.get("model") == model):
            out.append(record)
    return out


@contextlib.contextmanager
def model_lock(settings: Settings, name: str) -> Iterator[None]:
    """Serialise promotions and rollbacks of one model.

    A file lock under the custintel home covers processes on this machine; with a
    PostgreSQL-backed MLflow the same key is also taken as a PostgreSQL advisory lock, so
    gates running on several machines against one registry queue up too.
    """
    locks = settings.governance_dir / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with (locks / f"{hashlib.sha256(name.encode()).hexdigest()[:16]}.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            with _advisory_lock(settings.tracking_uri, name):
                yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _advisory_lock(tracking_uri: str, name: str) -> Iterator[None]:
    if not tracking_uri.startswith("postgresql"):
        yield
        return
    import psycopg  # only with a PostgreSQL registry

    url = tracking_uri.replace("postgresql+psycopg2://", "postgresql://").replace(
        "postgresql+psycopg://", "postgresql://"
    )
    key = int.from_bytes(hashlib.sha256(f"custintel-gate:{name}".encode()).digest()[:8], "big", signed=True)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def resolve_model(registry: Registry, model: str) -> str:
    """A registered model's name from its name or family; GateError when there is none."""
    try:
        return registry.resolve_model(model)
    except UnknownModelError as exc:
        raise GateError(str(exc)) from None


def move_champion(
    registry: Registry, name: str, version: str, reason: str, decision: str | None = None, actor: str | None = None
) -> tuple[str | None, str]:
    """Point champion at `version`, the former champion -> previous. Returns (before, after).

    Every move is recorded by the registry with the gate decision behind it, so
    `custintel registry history` can say which version held an alias at any date, and why.
    """
    before = registry.alias_version(name, CHAMPION)
    if before is not None and before != version:
        registry.set_alias(name, PREVIOUS, before, f"replaced as champion by version {version}", decision, actor)
    registry.set_alias(name, CHAMPION, version, reason, decision, actor)
    if registry.alias_version(name, CHALLENGER) == version:
        registry.remove_alias(name, CHALLENGER, f"promoted to champion: {reason}", decision, actor)
    return before, version


def tag_version(registry: Registry, name: str, version: str, tags: dict[str, str]) -> None:
    """Record the gate's outcome on the model version."""
    registry.set_version_tags(name, version, {GATE_TAG_PREFIX + key: value for key, value in tags.items()})


def read_golden_records(settings: Settings) -> pd.DataFrame:
    """The identity store's golden records (sensitive attributes for the audit), empty when there are none."""
    path = settings.identity_dir / "golden_records.parquet"
    if not path.is_file():
        return pd.DataFrame({"customer_key": pd.Series(dtype=str)})
    return pd.read_parquet(path)


def card_dir(settings: Settings, name: str, version: str) -> Path:
    """Where a version's model card and audit files live."""
    return settings.governance_dir / "cards" / name / version


def write_card_files(settings: Settings, name: str, version: str, files: dict[str, bytes | str]) -> Path:
    """Write the card's files and attach them to the version's run (`cards/v<version>/`)."""
    folder = card_dir(settings, name, version)
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, content in files.items():
        target = folder / file_name
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
    return folder


def attach_card(registry: Registry, run_id: str, folder: Path, version: str) -> str:
    """Log the card folder as artifacts of the version's run; returns the artifact path."""
    return registry.log_artifacts(run_id, folder, f"cards/v{version}")


def record_verdict(
    settings: Settings,
    name: str,
    version: str,
    run_id: str,
    decision: dict[str, Any],
    card: dict[str, bytes | str],
    metrics: dict[str, float] | None = None,
    max_reasons_chars: int | None = None,
) -> dict[str, Any]:
    """A gate's verdict on one version, for models and decision policies alike.

    Moves `champion` when it passed (promoted or waived), writes and attaches the card, logs the
    run's metrics when given, tags the version and appends the decision to the log.
    """
    registry = Registry(settings)
    if decision["result"] in ("promoted", "waived"):
        why = f"gate {decision['result']} (decision {decision['id']})"
        before, _ = move_champion(registry, name, version, why, decision["id"], decision["actor"])
        decision["champion_before"] = before
    folder = write_card_files(settings, name, version, card)
    attach_card(registry, run_id, folder, version)
    if metrics is not None:
        registry.log_run_metrics(run_id, metrics)
    reasons = json.dumps(decision["reasons"])
    tag_version(registry, name, version, {
        "result": decision["result"],
        "reasons": reasons[:max_reasons_chars] if max_reasons_chars is not None else reasons,
        "decision": decision["id"],
        "policy_hash": decision["policy_hash"],
        "card": f"cards/v{version}/card.html",
    })  # fmt: skip
    append_decision(settings, decision)
    return decision
