"""Reading and writing identity resolution's inputs and outputs (the only I/O of the package).

Layout under `<home>/identity/`:
    records.parquet         normalised identity records (clear; keep it in the restricted zone)
    match_records.parquet   what the matcher saw (restricted fields, or salted hashes)
    links.parquet           every link with its rule, shared value or match probability
    crosswalk.parquet       record_key -> customer_key (what downstream joins on)
    golden_records.parquet  one row per customer_key, with the winning record and rule per attribute
    conflicts.parquet       attributes on which a customer's records disagree
    key_events.parquet      new / merged / split / retired keys, per run (appended)
    model.json              the trained Splink model (for `explain` and `--reuse-model`)
    run.json                the last run's options and statistics
and `<home>/reports/identity/<run_id>.json` per run.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pandas as pd

from custintel.atomic_files import replace_atomically, write_text_atomically
from custintel.settings import Settings
from features.identity.config import IdentityConfig, load_identity_config
from features.identity.privacy import check_fields
from features.identity.records import assemble_identity_records
from features.identity.resolve import Resolution, ResolveOptions, log_step, resolve_records
from features.lake import read_lake_table
from features.suppression import load_suppression, suppressed_rows

_TABLES = ("records", "match_records", "links", "crosswalk", "golden_records", "conflicts")


class IdentityStoreError(RuntimeError):
    """Identity outputs are missing (resolve has not run) or unreadable."""


def identity_config(settings: Settings) -> IdentityConfig:
    """The configured identity rules (settings.identity_config, else the shipped default)."""
    return load_identity_config(settings.identity_config)


def resolve_options(settings: Settings) -> ResolveOptions:
    """Run-time options of a resolution, from settings."""
    salt = settings.identity_hash_salt.get_secret_value() if settings.identity_hash_salt else None
    return ResolveOptions(
        threshold=settings.identity_match_threshold,
        fields=check_fields(settings.identity_match_fields),
        hashed=settings.identity_hashed,
        salt=salt,
        u_max_pairs=settings.identity_u_max_pairs,
        spark_settings=settings if settings.engine == "spark" else None,
    )


def load_identity_records(settings: Settings, config: IdentityConfig) -> pd.DataFrame:
    """Identity records of every configured source, read from the lake, without those of suppressed people.

    A record on the suppression list (by its id, email, phone, name and birth date, or the
    customer key the last run gave it) never reaches the crosswalk or a golden record.
    """
    tables = {s.table: read_lake_table(settings, s.table) for s in config.sources}
    records = assemble_identity_records(tables, config.sources)
    suppression = load_suppression(settings)
    if not suppression:
        return records
    gone = suppressed_rows(records, suppression, customer_keys=())
    previous = read_previous_crosswalk(settings)
    if previous is not None and not previous.empty:
        keys = previous.set_index("record_key")["customer_key"]
        keyed = pd.DataFrame({"customer_key": records["record_key"].map(keys)}, index=records.index)
        gone |= suppressed_rows(keyed, suppression)
    return records.loc[~gone.to_numpy()].reset_index(drop=True)


def read_identity_table(settings: Settings, name: str) -> pd.DataFrame:
    """One of the identity outputs, e.g. 'crosswalk' or 'golden_records'."""
    path = settings.identity_dir / f"{name}.parquet"
    if not path.is_file():
        raise IdentityStoreError(f"{path} does not exist: run `custintel resolve` first")
    return pd.read_parquet(path)


def read_previous_crosswalk(settings: Settings) -> pd.DataFrame | None:
    """The last run's crosswalk, or None before the first run."""
    path = settings.identity_dir / "crosswalk.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def read_issued_keys(settings: Settings) -> set[str]:
    """Every customer key any run has issued (new or split), retired ones included."""
    path = settings.identity_dir / "key_events.parquet"
    if not path.is_file():
        return set()
    return set(pd.read_parquet(path, columns=["customer_key"])["customer_key"].astype(str))


@dataclass(frozen=True)
class PreviousRun:
    """What a resolution carries over from the last one."""

    crosswalk: pd.DataFrame | None  # keys to keep
    model: dict[str, Any] | None  # the trained model, when it is to be reused
    issued_keys: set[str]  # keys never to issue again


def read_previous_run(settings: Settings, reuse_model: bool) -> PreviousRun:
    """The last run's crosswalk, issued keys and (if `reuse_model`) its model."""
    return PreviousRun(
        crosswalk=read_previous_crosswalk(settings),
        model=read_model(settings) if reuse_model else None,
        issued_keys=read_issued_keys(settings),
    )


def read_model(settings: Settings) -> dict[str, Any] | None:
    """The last trained Splink model, or None."""
    path = settings.identity_dir / "model.json"
    if not path.is_file():
        return None
    model: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return model


def read_run(settings: Settings) -> dict[str, Any]:
    """The last run's options and statistics."""
    path = settings.identity_dir / "run.json"
    if not path.is_file():
        raise IdentityStoreError(f"{path} does not exist: run `custintel resolve` first")
    run: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return run


def write_resolution(
    settings: Settings, records: pd.DataFrame, resolution: Resolution, options: ResolveOptions
) -> dict[str, Any]:
    """Write a run's outputs (each file replaced whole) and its report; returns the run summary."""
    out = settings.identity_dir
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    run_id = now.strftime("%Y%m%dT%H%M%S%fZ")
    frames = {
        "records": records,
        "match_records": resolution.match_records,
        "links": resolution.links,
        "crosswalk": resolution.crosswalk,
        "golden_records": resolution.golden,
        "conflicts": resolution.conflicts,
    }
    for name in _TABLES:
        replace_atomically(out / f"{name}.parquet", partial(frames[name].to_parquet, index=False))
    events = resolution.key_events.assign(run_id=run_id)
    log_path = out / "key_events.parquet"
    if log_path.is_file():
        events = pd.concat([pd.read_parquet(log_path), events], ignore_index=True)
    replace_atomically(log_path, lambda p: events.to_parquet(p, index=False))
    if resolution.model is not None:
        text = json.dumps(resolution.model, indent=2, sort_keys=True)
        write_text_atomically(out / "model.json", text)
    run = {
        "run_id": run_id,
        "finished_at": now.isoformat(),
        "options": {
            "threshold": options.threshold,
            "fields": list(options.fields),
            "hashed": options.hashed,
            "u_max_pairs": options.u_max_pairs,
            "engine": options.engine,
            "probabilistic": resolution.model is not None,
        },
        "stats": resolution.stats,
        "outputs": {name: str(out / f"{name}.parquet") for name in (*_TABLES, "key_events")},
    }
    text = json.dumps(run, indent=2)
    write_text_atomically(out / "run.json", text)
    reports = settings.reports_dir / "identity"
    reports.mkdir(parents=True, exist_ok=True)
    (reports / f"{run_id}.json").write_text(text, encoding="utf-8")
    return run


def resolve_from_lake(
    settings: Settings, reuse_model: bool, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """The whole resolution without Prefect: read the records and the previous run, resolve, write.

    Returns the run summary (as `write_resolution`). The Prefect flow runs the same steps as tasks.
    """
    config, options = identity_config(settings), resolve_options(settings)
    report = progress or log_step
    report("reading identity records from the lake")
    records = load_identity_records(settings, config)
    previous = read_previous_run(settings, reuse_model)
    resolution = resolve_records(
        records,
        config,
        options,
        previous.crosswalk,
        model=previous.model,
        progress=report,
        reserved_keys=previous.issued_keys,
    )
    return write_resolution(settings, records, resolution, options)
