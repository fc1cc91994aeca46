"""Identity resolution, end to end, as one pure step: records in, customers out.

deterministic pass -> probabilistic pass on the rest -> clusters -> stable keys
-> golden records and conflicts. No file is read or written here; `store` does that.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

from custintel.settings import Settings
from features.identity.config import IdentityConfig
from features.identity.deterministic import cluster_records, deterministic_links
from features.identity.golden import build_golden_records
from features.identity.keys import assign_customer_keys
from features.identity.privacy import FIELD_COLUMNS, HASHED_RULES, PrivacyError, hash_identifiers, restrict_fields
from features.identity.probabilistic import ProbabilisticConfig, TrainingDataError, predict_links, train_model

log = logging.getLogger("custintel.identity")
LINK_COLUMNS = ["record_key_l", "record_key_r", "rule", "value", "match_weight", "match_probability"]


class NoRecordsError(ValueError):
    """Nothing to resolve."""


@dataclass(frozen=True)
class ResolveOptions:
    """The run-time knobs of a resolution (from settings).

    Attributes:
        threshold: Match probability at or above which the probabilistic pass links a pair.
        fields: Fields whose purpose allows identity matching.
        hashed: Match on salted hashes of identifiers only (deterministic rules only).
        salt: The secret salt for the hashed mode.
        u_max_pairs: Random pairs sampled to estimate Splink's u parameters.
        seed: Seed of that sample.
        spark_settings: Settings whose Spark session (master, memory, checkpoints) runs the probabilistic pass;
            None: Splink on DuckDB in this process.
    """

    threshold: float = 0.95
    fields: tuple[str, ...] = (
        "name", "birth_date", "email", "phone", "address", "postcode", "national_id", "billing_key",
    )  # fmt: skip
    hashed: bool = False
    salt: str | None = field(default=None, repr=False)
    u_max_pairs: float = 1e7
    seed: int = 42
    spark_settings: Settings | None = field(default=None, repr=False, compare=False)

    @property
    def engine(self) -> Literal["duckdb", "spark"]:
        """Where the probabilistic pass runs: Spark when its settings are given, else DuckDB."""
        return "duckdb" if self.spark_settings is None else "spark"


@dataclass
class Resolution:
    """Everything one resolution run produces."""

    match_records: pd.DataFrame  # what the matcher saw (clear but restricted, or hashes)
    links: pd.DataFrame
    crosswalk: pd.DataFrame
    key_events: pd.DataFrame
    golden: pd.DataFrame
    conflicts: pd.DataFrame
    model: dict[str, Any] | None
    stats: dict[str, Any]


def _deterministic(
    match_records: pd.DataFrame, rules: tuple[str, ...], max_group: int
) -> tuple[pd.DataFrame, pd.Series]:
    links = deterministic_links(match_records, rules=rules, max_group=max_group)
    links = links.assign(match_weight=float("nan"), match_probability=1.0)
    return links, cluster_records(match_records["record_key"], links)


def log_step(message: str) -> None:
    """A resolution step's start on the `custintel.identity` logger ("identity: deterministic pass")."""
    log.info("identity: %s", message)


def resolve_records(
    records: pd.DataFrame,
    config: IdentityConfig,
    options: ResolveOptions,
    previous_crosswalk: pd.DataFrame | None = None,
    model: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
    reserved_keys: set[str] | None = None,
) -> Resolution:
    """Resolve identity records into customers with stable keys and golden records.

    Args:
        records: identity records from every source (`assemble_identity_records`).
        config: sources' trust order, deterministic rules, survivorship rules.
        options: threshold, privacy constraints, sampling.
        previous_crosswalk: the last run's record_key -> customer_key, so keys are kept.
        model: a trained Splink model to reuse; trained on these records when None.
        progress: called with a short message as each step starts (logged on `custintel.identity` when None).
        reserved_keys: every customer key issued before, so a retired key is never reissued.
    """
    say = progress or log_step
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal started
        now = time.perf_counter()
        timings[name] = round(now - started, 3)
        started = now

    if records.empty:
        raise NoRecordsError("there are no identity records to resolve: ingest the configured source tables first")
    # A canonical order makes every later step independent of the input's row order.
    records = records.sort_values("record_key", kind="stable").reset_index(drop=True)
    allowed = restrict_fields(records, options.fields)
    det_rules: tuple[str, ...] = tuple(r for r in config.deterministic_rules if r in options.fields)
    if options.hashed:
        if not options.salt:
            raise PrivacyError("the hashed mode needs a secret salt (CUSTINTEL_IDENTITY_HASH_SALT)")
        say("hashing identifiers")
        match_records = hash_identifiers(records, options.salt, options.fields)
        det_rules = tuple(r for r in HASHED_RULES if match_records[r].notna().any())
        if config.mode == "ids_only":
            det_rules = tuple(r for r in det_rules if r in config.deterministic_rules)
    else:
        match_records = allowed
    lap("prepare")
    say("deterministic pass")
    det_links, det_cluster = _deterministic(match_records, det_rules, config.deterministic.max_group)
    lap("deterministic")
    links = [det_links]
    prob_fields = tuple(f for f in options.fields if f != "billing_key")
    if config.mode == "match" and not options.hashed and prob_fields and len(records) >= 2:
        pconf = ProbabilisticConfig(
            threshold=options.threshold,
            fields=prob_fields,
            u_max_pairs=options.u_max_pairs,
            seed=options.seed,
            spark_settings=options.spark_settings,
        )
        if model is None:
            _check_something_to_compare(match_records, prob_fields)
            on = " on Spark" if options.engine == "spark" else ""
            say(f"training the probabilistic model{on} (u by random sampling, m by EM)")
            model = train_model(match_records, det_cluster, pconf)
            lap("train")
        say("probabilistic pass" + (" on Spark" if options.engine == "spark" else ""))
        prob = predict_links(match_records, det_cluster, model, pconf)
        links.append(prob.assign(rule="probabilistic", value=None))
        lap("predict")
    else:
        model = None
    all_links = _stack_links(links)
    say("clustering and keys")
    cluster = cluster_records(records["record_key"], all_links)
    crosswalk, key_events = assign_customer_keys(
        pd.DataFrame({"record_key": records["record_key"], "cluster": cluster}), previous_crosswalk, reserved_keys
    )
    lap("cluster_and_key")
    say("golden records")
    golden, conflicts = build_golden_records(records, crosswalk, config)
    lap("golden")
    stats = _stats(records, all_links, crosswalk, key_events, conflicts, timings)
    stats["mode"] = config.mode
    stats["engine"] = options.engine
    stats["deterministic_rules"] = list(det_rules)
    stats["max_group"] = config.deterministic.max_group
    return Resolution(match_records, all_links, crosswalk, key_events, golden, conflicts, model, stats)


def _check_something_to_compare(records: pd.DataFrame, fields: tuple[str, ...]) -> None:
    """Fail at once, naming the way out, when no record holds any field the model compares (ids only)."""
    columns = [c for f in fields for c in FIELD_COLUMNS.get(f, ()) if c in records]
    if not records[columns].notna().any().any():
        raise TrainingDataError(
            f"the probabilistic model cannot be trained: no record has any of the fields {list(fields)} "
            "(the sources map ids only); set 'mode: ids_only' in the identity config (each id a customer)"
        )


def _stack_links(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """All links in one typed frame (also when a pass found none)."""
    types = {
        "record_key_l": "string",
        "record_key_r": "string",
        "rule": "string",
        "value": "string",
        "match_weight": "float64",
        "match_probability": "float64",
    }
    typed = [p[LINK_COLUMNS].astype(types) for p in parts if not p.empty]
    if not typed:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in types.items()})
    return pd.concat(typed, ignore_index=True)


def _stats(
    records: pd.DataFrame,
    links: pd.DataFrame,
    crosswalk: pd.DataFrame,
    key_events: pd.DataFrame,
    conflicts: pd.DataFrame,
    timings: dict[str, float],
) -> dict[str, Any]:
    sizes = crosswalk.groupby("customer_key").size()
    return {
        "records": len(records),
        "records_by_source": {str(k): int(v) for k, v in records["source_table"].value_counts().sort_index().items()},
        "links_by_rule": {str(k): int(v) for k, v in links["rule"].value_counts().sort_index().items()},
        "customers": len(sizes),
        "single_record_customers": int((sizes == 1).sum()),
        "largest_customer_records": int(sizes.max()) if len(sizes) else 0,
        "key_events": {str(k): int(v) for k, v in key_events["event"].value_counts().sort_index().items()},
        "conflicts_by_attribute": {
            str(k): int(v) for k, v in conflicts["attribute"].value_counts().sort_index().items()
        },
        "seconds": timings,
    }
