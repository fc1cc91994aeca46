"""Prefect flow `score_customers`: every customer scored by a model's champion as of a cutoff, on DuckDB or Spark.

The champion is loaded through the registry (the one module that talks to MLflow); its inputs
are the offline feature sets its training run read, as of the cutoff. On DuckDB the sets'
partitions are joined in this process and scored in one pass; on Spark (`engine: spark`) they
are joined by Spark and scored with `mapInPandas`, the scorer shipped once per partition. Both
write the same table (`models.scores`). Customers who withdrew the model's purpose are not
scored (the governance policy names the purpose; the consent history says who withdrew).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb
import pandas as pd
from prefect import flow, get_run_logger

from custintel.settings import Settings
from custintel.sql import text_list as sql_text_list
from features.featurestore.offline import available_as_of, partition_glob
from features.featurestore.store import offline_root
from flows.retries import io_task
from governance.policy import Purpose
from models.registry import CHAMPION, Registry
from models.scores import BatchScorer, BatchScoringError, check_inputs, score_on_spark, scores_table, write_scores

LABEL_SETS = ("labels@", "purchase_labels@", "interactions@")


def _champion(settings: Settings, model: str) -> tuple[str, str, str, BatchScorer, list[str]]:
    """(family, registered name, version, scorer, feature sets its run read) of the model's champion."""
    registry = Registry(settings)
    name = registry.resolve_model(model)
    family = next((f for f, n in registry.registered_names().items() if n == name), name)
    if family not in ("churn",):
        raise BatchScoringError(
            f"--model {model}: batch scoring scores one row per customer (churn); {family} is scored per product "
            "or per request by the service"
        )
    version = registry.alias_version(name, CHAMPION)
    if version is None:
        raise BatchScoringError(f"--model {model}: {name} has no @{CHAMPION} yet (promote a version first)")
    run_id = registry.version(name, version).run_id
    lineage = registry.read_run_json(run_id, "lineage/lineage.json") if run_id else {}
    sets = [k for k in (lineage.get("feature_sets") or {}) if not k.startswith(LABEL_SETS)]
    if not sets:
        raise BatchScoringError(f"{name} v{version}: its run records no offline feature set it was trained on")
    columns = [c for c, _ in registry.model_inputs(name, version) or []]
    if not columns:
        raise BatchScoringError(f"{name} v{version}: the registered model has no input signature")
    fitted = registry.load_model(name, version, "sklearn")
    return family, name, version, BatchScorer(fitted, tuple(columns)), sets


def _cutoff(settings: Settings, sets: list[str], as_of: dt.date | None) -> dt.date:
    root = offline_root(settings)
    stored = [set(available_as_of(root, key)) for key in sets]
    common = set.intersection(*stored) if stored else set()
    if as_of is None:
        if not common:
            raise BatchScoringError(f"no cutoff is stored for every one of {', '.join(sets)}: run `custintel features`")
        return max(common)
    if as_of not in common:
        lacking = [k for k, s in zip(sets, stored, strict=True) if as_of not in s]
        raise BatchScoringError(
            f"--as-of {as_of}: {', '.join(lacking)} has no partition for it (run `custintel features --as-of {as_of}`)"
        )
    return as_of


def _partitions(settings: Settings, sets: list[str], as_of: dt.date) -> list[str]:
    root = offline_root(settings)
    return [partition_glob(root, key).replace("as_of=*", f"as_of={as_of.isoformat()}") for key in sets]


@dataclass(frozen=True)
class ConsentFilter:
    """Who may be scored: everyone but `keys` (withdrawn), or, when unknown consent excludes, only `keys` (granted)."""

    keys: frozenset[str] = frozenset()
    only: bool = False

    def allowed(self, customer_keys: pd.Series) -> pd.Series:
        """Per customer key, whether it may be scored."""
        found = customer_keys.astype(str).isin(self.keys)
        return found if self.only else ~found


def consent_filter(settings: Settings, family: str) -> ConsentFilter:
    """The family's purpose (governance policy) against each customer's latest consent decision recorded before now."""
    from governance.policy import load_policy

    policy = load_policy(settings.governance_policy)
    purpose = policy.families[family].purpose if family in policy.families else None
    return purpose_filter(settings, purpose) if purpose is not None else ConsentFilter()


def purpose_filter(settings: Settings, purpose: Purpose) -> ConsentFilter:
    """Who may be used for `purpose`: each customer's latest consent decision for it recorded before now.

    Customers with no decision are allowed unless the governance policy's `unknown_consent` excludes them.
    """
    return purpose_filters(settings, purpose)[purpose]


def purpose_filters(settings: Settings, *purposes: Purpose) -> dict[Purpose, ConsentFilter]:
    """`purpose_filter` for several purposes, the consent history read once."""
    from features.consent import ConsentTable, read_consent_history
    from governance.policy import load_policy
    from models.consent import status_before
    from serving.policy import load_serving_policy

    policy = load_policy(settings.governance_policy)
    sources = load_serving_policy(settings.serving_policy).consent_sources
    tables = [ConsentTable(s.table, s.record_table, s.record_id, s.purpose, s.status, s.recorded_at) for s in sources]
    history = read_consent_history(settings, tables)
    keys = pd.Series(history["customer_key"].astype(str).unique())
    now = pd.Series([pd.Timestamp(dt.datetime.now(dt.UTC).replace(tzinfo=None))] * len(keys))
    out = {}
    for purpose in purposes:
        status = status_before(keys, now, history, purpose)
        if policy.unknown_consent.get(purpose, "allow") == "exclude":
            out[purpose] = ConsentFilter(frozenset(keys[(status == "granted").to_numpy()]), only=True)
        else:
            out[purpose] = ConsentFilter(frozenset(keys[(status == "withdrawn").to_numpy()]))
    return out


def score_on_duckdb(scorer: BatchScorer, files: list[str], consent: ConsentFilter) -> pd.DataFrame:
    """Join the sets' partitions in DuckDB and score every allowed customer in one pass."""
    with duckdb.connect() as con:
        sql = f"SELECT * FROM read_parquet({sql_text_list([files[0]])}) f0"
        for i, path in enumerate(files[1:], start=1):
            sql += f" JOIN read_parquet({sql_text_list([path])}) f{i} USING (customer_key, as_of)"
        frame = con.sql(f"SELECT * FROM ({sql}) ORDER BY customer_key").to_arrow_table().to_pandas()
    check_inputs(scorer.columns, list(frame.columns))
    frame = frame[consent.allowed(frame["customer_key"]).to_numpy()]
    return scorer.score(frame[["customer_key", *scorer.columns]])


def run_batch_scoring(
    settings: Settings, model: str, as_of: dt.date | None, log: Callable[[str], None]
) -> dict[str, Any]:
    """Score every customer with the model's champion as of the cutoff; write and describe the scores table."""
    started = time.perf_counter()
    family, name, version, scorer, sets = _champion(settings, model)
    cutoff = _cutoff(settings, sets, as_of)
    files = _partitions(settings, sets, cutoff)
    consent = consent_filter(settings, family)
    log(f"scoring with {name} v{version} (@{CHAMPION}) as of {cutoff} on {settings.engine}")
    if settings.engine == "spark":
        from features.spark_engine import spark_session

        scored = score_on_spark(spark_session(settings), scorer, files, consent.keys, consent.only)
    else:
        scored = score_on_duckdb(scorer, files, consent)
    table = scores_table(scored, name, version, cutoff)
    path = write_scores(settings, table, name, cutoff)
    scores = table.column("score").to_numpy()
    return {
        "model": name,
        "version": version,
        "as_of": str(cutoff),
        "engine": settings.engine,
        "customers": table.num_rows,
        "mean_score": float(scores.mean()) if len(scores) else None,
        "path": str(path),
        "feature_sets": sets,
        "seconds": round(time.perf_counter() - started, 2),
    }


_scoring_task = io_task("score-customers", run_batch_scoring)


@flow(name="score_customers", log_prints=False)
def score_customers(
    settings: dict[str, Any] | None = None, model: str = "churn", as_of: str | None = None
) -> dict[str, Any]:
    """Score every customer with the model's champion as of a cutoff (default: the latest stored)."""
    config = Settings.from_flow(settings)
    logger = get_run_logger()
    day = dt.date.fromisoformat(as_of) if as_of else None
    result: dict[str, Any] = _scoring_task(config, model, day, logger.info)
    return result
