"""Prefect flow `train_model`: offline features (or a user's own table) -> tuned, tracked, registered models.

Per family: load the labelled rows (building any missing feature cutoffs first), tune
and fit (`models.training`, `models.own_tables`), log the run to MLflow and register the
model as `@challenger`, check that the registered model scores like the in-memory one, and,
when the generator's truth is given, log how close the model comes to the oracle. Only the
wiring is here, with the monitoring reference (it needs `monitoring`, which `models` may not
import): `run_training` wires the steps once; the flow passes them as Prefect tasks,
`--engine local` as they are.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from custintel.settings import Settings
from features.consent import ConsentTable, read_consent_history
from flows.retries import io_task
from models.baselines import add_baselines, add_uplift_baseline
from models.config import TrainingConfig, TrainingConfigError, load_training_config, with_tuning_workers
from models.consent import ConsentRule, not_applied
from models.leakage import LeakReport, annotate_schema, guard_own_table
from models.own_families import OwnPropensity, OwnUplift, own_propensity_table, own_uplift_table
from models.own_tables import OwnInteractions, OwnTable, check_own_interactions, own_churn_table, own_interactions
from models.registry import Registry, RunRecord
from models.result import TrainedModel
from models.splits import LabelledTable
from models.training import (
    Loaded,
    OwnInput,
    TrainingOutcome,
    Unit,
    apply_consent,
    compare_with_truth,
    ensure_features,
    fit_unit,
    lineage_of,
    load_unit,
    plan_units,
    run_tags,
    shifted,
    split_record,
    split_seed,
    with_budget,
)
from models.tuning import storage_kind
from monitoring.baseline import labelled_reference
from monitoring.policy import load_policy as load_monitoring_policy


def monitoring_reference(settings: Settings, data: Loaded, trained: TrainedModel) -> pd.DataFrame | None:
    """What monitoring will compare this model's served traffic with (see `monitoring.baseline`).

    Its inputs at the newest cutoff it learned from, plus a sample of the earlier cutoffs (their
    movement sets each input's allowance). Only the labelled tables of sklearn models have one (the
    recommender's inputs are interactions).
    """
    primary = trained.primary
    if not isinstance(data, LabelledTable) or primary.flavor != "sklearn":
        return None
    columns = [c for c in primary.input_example.columns if c in data.frame.columns and c != "product_id"]
    policy = load_monitoring_policy(settings.monitoring_policy)
    return labelled_reference(data, columns, policy.reference_rows, policy.history_rows)


def consent_rules(settings: Settings, units: list[Unit]) -> dict[str, ConsentRule]:
    """Per unit, its family's consent purpose and unknown-consent rule (governance policy), with the lake's history.

    The history is read once for the run, from the consent tables the serving policy names; a
    unit whose family names no purpose is not filtered.
    """
    from governance.policy import load_policy as load_governance_policy
    from serving.policy import load_serving_policy

    policy = load_governance_policy(settings.governance_policy)
    purposes = {u.name: policy.families[u.name].purpose for u in units if u.name in policy.families}
    if not any(purposes.values()):
        return {}
    sources = load_serving_policy(settings.serving_policy).consent_sources
    tables = [ConsentTable(s.table, s.record_table, s.record_id, s.purpose, s.status, s.recorded_at) for s in sources]
    history = read_consent_history(settings, tables)
    return {
        name: ConsentRule(purpose, policy.unknown_consent.get(purpose, "allow"), history)
        for name, purpose in purposes.items()
        if purpose is not None
    }


def register_unit(
    settings: Settings, config: TrainingConfig, unit: Unit, trained: TrainedModel, lineage: dict[str, Any]
) -> RunRecord:
    """Log the run and register its models as @challenger (I/O: retried by the flow)."""
    from governance.store import actor

    registry = Registry(settings)
    experiment_id = registry.ensure_experiment(config.experiment)
    tags = run_tags(unit, lineage)
    return registry.log_training_run(trained, experiment_id, tags, lineage, lineage.get("source", ""), actor=actor())


def verify_unit(settings: Settings, trained: TrainedModel, record: RunRecord) -> float:
    """Load each registered model back by alias and compare its scores with the in-memory model's."""
    registry = Registry(settings)
    return max(
        (registry.verify_round_trip(m, m.registered_model) for m in trained.models if m.registered_model), default=0.0
    )


def record_oracle(settings: Settings, record: RunRecord, scores: dict[str, float]) -> None:
    """Add the oracle comparison to the run (I/O: retried by the flow)."""
    Registry(settings).log_run_metrics(record.run_id, scores)


@dataclass(frozen=True)
class Steps:
    """The training steps, plain or wrapped as Prefect tasks."""

    load: Callable[..., Any]
    fit: Callable[..., Any]
    register: Callable[..., Any]
    verify: Callable[..., Any]
    record_oracle: Callable[..., Any]


PLAIN_STEPS = Steps(load_unit, fit_unit, register_unit, verify_unit, record_oracle)


TASK_STEPS = Steps(
    io_task("load-training-data", load_unit),
    task(name="tune-and-fit", cache_policy=NO_CACHE, task_run_name="fit-{unit.name}")(fit_unit),
    io_task("log-and-register", register_unit),
    task(name="verify-registered-model", cache_policy=NO_CACHE)(verify_unit),
    io_task("record-oracle-scores", record_oracle),
)


def run_training(
    settings: Settings,
    family: str,
    steps: Steps,
    log: Callable[[str], None],
    build_features: Callable[[list[dt.date]], Any] | None = None,
    own: OwnInput | None = None,
    truth: Path | None = None,
    trials: int | None = None,
    timeout: float | None = None,
    shift_months: int = 0,
) -> list[TrainingOutcome]:
    """Train, log, register (@challenger) and verify each unit of `family`; compare with the truth when given.

    `shift_months` moves every cutoff later (a retrain on newer data, see `shifted`).
    """
    config = with_budget(load_training_config(settings.training_config), trials, timeout)
    config = shifted(with_tuning_workers(config, settings.tuning_workers), shift_months)
    if own is not None:  # the family's own unit only (uplift is planned under the propensity section)
        units = [u for u in plan_units(config, "propensity" if family == "uplift" else family) if u.name == family]
        if not units:
            raise TrainingConfigError(
                "the training config's propensity section has no uplift section: `train uplift --table` takes the "
                "learner and its LightGBM parameters from there"
            )
    else:
        units = plan_units(config, family)
    if own is None and build_features is not None:
        cutoffs = sorted({d for u in units for d in u.as_of})
        sets = sorted({s for u in units for s in u.feature_sets})
        built = ensure_features(settings, sets, cutoffs, build_features)
        if built:
            log(f"built the missing feature cutoffs {', '.join(map(str, built))}")
    fit_settings = settings
    if isinstance(own, OwnTable):  # the store's weekly capacity is its customers'; a user's table has its own
        fit_settings = settings.model_copy(
            update={"retention_calls_per_week": own.capacity or settings.retention_calls_per_week}
        )
        units = [replace(u, config=u.config.model_copy(update={"weekly_capacity": None})) for u in units]
    prefix = f"{config.experiment}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
    rules = consent_rules(settings, units) if own is None else {}
    outcomes = []
    schema: list[dict[str, str]] = []
    for unit in units:
        seconds: dict[str, float] = {}
        t = time.perf_counter()
        seed = split_seed(unit)
        data: Loaded
        extra: dict[str, Any] = {}
        notes: list[str] = []
        leaks: LeakReport | None = None
        if isinstance(own, OwnTable):
            data = own_churn_table(own, seed=seed)
            data, leaks = guard_own_table(data, config.leakage, own.keep, own.horizon_days, seed)
            extra["leakage"] = leaks.as_dict()
            notes += leaks.lines(own.label, own.duration)
            log(f"{own.path}: {len(data.frame):,} rows; stages {data.stage.value_counts().to_dict()}")
        elif isinstance(own, OwnUplift):
            data = own_uplift_table(own, seed=seed)
            log(f"{own.path}: {len(data.frame):,} participants; treated share {data.frame['treated'].mean():.1%}")
        elif isinstance(own, OwnPropensity):
            data = own_propensity_table(own, seed=seed)
            stages = data.stage.value_counts().to_dict()
            log(f"{own.path}: {len(data.frame):,} (customer, product) pairs; stages {stages}")
        elif isinstance(own, OwnInteractions):
            checked = check_own_interactions(own)
            schema = checked.describe()
            data = own_interactions(own, seed=seed, checked=checked)
        else:
            data = steps.load(settings, config, unit)
        consent: dict[str, Any] = not_applied("own table" if own is not None else "the policy names no purpose")
        consent_figures: dict[str, float] = {}
        rule = rules.get(unit.name)
        if rule is not None:
            data, excluded = apply_consent(unit, data, rule)
            consent, consent_figures = excluded.as_dict(), excluded.metrics()
        log(f"{unit.name}: consent {consent['summary']}")
        extra["consent"] = consent
        notes.append(f"consent: {consent['summary']}")
        seconds["load"] = time.perf_counter() - t
        log(f"{unit.name}: tuning and fitting")
        t = time.perf_counter()
        trained = steps.fit(unit, data, fit_settings, prefix)
        if isinstance(own, OwnInteractions):  # the churn table's schema travels in its LabelledTable
            trained.info["schema"] = schema
            trained.tables["schema"] = pd.DataFrame(schema)
        if leaks is not None and "schema" in trained.info:
            trained.info["schema"] = annotate_schema(trained.info["schema"], leaks)
        trained.reference = monitoring_reference(settings, data, trained)
        seconds["fit_total"] = time.perf_counter() - t
        seconds["fit_models"] = trained.fit_seconds
        split = split_record(data, seed, own)
        trained.params.update({"split_method": split["method"], "split_seed": seed})
        if unit.tuning is not None:  # which study, where (never the URL: it may hold a password), how many workers
            trained.params.update({"tuning_study": f"{prefix}-{unit.name}",
                                   "tuning_storage": storage_kind(settings.optuna_storage),
                                   "tuning_workers": unit.tuning.workers})  # fmt: skip
        trained.params.update({"consent": consent["summary"][:500]} if rule is None else excluded.params())
        trained.metrics.update(consent_figures)
        trained.metrics.update({f"split_rows_{k}": float(v) for k, v in split["sizes"].items()})
        if isinstance(own, OwnUplift) and isinstance(data, LabelledTable):
            log("uplift: cross-fitting the response-model baseline (untuned LightGBM of the outcome)")
            t = time.perf_counter()
            notes.append(f"baseline: {add_uplift_baseline(data, trained, seed)}")
            seconds["baselines"] = time.perf_counter() - t
            extra["baselines"] = trained.info["baselines"]
        if isinstance(own, OwnTable | OwnPropensity) and isinstance(data, LabelledTable):
            log(f"{unit.name}: fitting the baselines (logistic regression, untuned LightGBM)")
            t = time.perf_counter()
            comparison = add_baselines(data, trained, seed)
            seconds["baselines"] = time.perf_counter() - t
            extra["baselines"] = comparison.as_dict()
            notes.append(f"baselines: {comparison.summary()}")
        t = time.perf_counter()
        lineage = lineage_of(settings, unit, data, own, trained, seed, extra)
        record = steps.register(settings, config, unit, trained, lineage)
        seconds["log_and_register"] = time.perf_counter() - t
        t = time.perf_counter()
        steps.verify(settings, trained, record)
        seconds["verify"] = time.perf_counter() - t
        scores: dict[str, float] = {}
        if truth is not None and own is None:
            scores = compare_with_truth(settings, truth, unit, trained, data)
            if scores:
                steps.record_oracle(settings, record, scores)
        outcome = TrainingOutcome(
            family=unit.name,
            run_id=record.run_id,
            registered=[
                {"name": m.registered_model, "version": m.version, "uri": m.model_uri}
                for m in record.models
                if m.registered_model
            ],  # fmt: skip
            metrics=trained.metrics,
            oracle=scores,
            seconds={k: round(v, 3) for k, v in seconds.items()},
            schema=list(trained.info.get("schema", [])) if own is not None else [],  # printed for own tables
            notes=notes,
        )
        log(f"{unit.name}: run {record.run_id}, " + ", ".join(_version_names(outcome)))
        outcomes.append(outcome)
    return outcomes


def _version_names(outcome: TrainingOutcome) -> list[str]:
    return [f"{r['name']} v{r['version']}" for r in outcome.registered]


def publish_summary(outcomes: list[TrainingOutcome]) -> None:
    """The runs and their headline scores beside the flow run in the Prefect UI."""
    lines = ["# Training", "", "| model | run | registered | headline |", "|---|---|---|---|"]
    for o in outcomes:
        head = {k: v for k, v in o.metrics.items() if k in HEADLINE}
        lines.append(
            f"| {o.family} | `{o.run_id}` | {', '.join(_version_names(o))} | "
            + ", ".join(f"{k} {v:.4f}" for k, v in head.items())
            + " |"
        )
    create_markdown_artifact("\n".join(lines), key="training")


HEADLINE = ("test_auc", "test_pr_auc", "test_concordance", "test_qini", "crossfit_qini", "test_ndcg_at_10",
            "test_ndcg_at_10_vs_popularity")  # fmt: skip


@flow(name="train_model", log_prints=False, persist_result=True)  # a monitor reads the result of a deployment run
def train_model(
    settings: dict[str, Any] | None = None,
    family: str = "all",
    truth: str | None = None,
    trials: int | None = None,
    timeout: float | None = None,
    own_table: dict[str, Any] | None = None,
    own_interactions: dict[str, Any] | None = None,
    shift_months: int = 0,
    own_uplift: dict[str, Any] | None = None,
    own_propensity: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Tune, fit, track and register the models of a family (or all), as @challenger.

    `shift_months`: train on cutoffs that many months later than the config's (a retrain).
    """
    from flows.features import TASK_STEPS as FEATURE_STEPS
    from flows.features import run_feature_build

    config = Settings.from_flow(settings)
    logger = get_run_logger()
    own: OwnInput | None = None
    if own_uplift:
        own = OwnUplift(**{**own_uplift, "path": Path(own_uplift["path"])})
    elif own_propensity:
        own = OwnPropensity(**{**own_propensity, "path": Path(own_propensity["path"])})
    elif own_table:
        own = OwnTable(**{**own_table, "path": Path(own_table["path"]), "keep": tuple(own_table.get("keep") or ())})
    elif own_interactions:
        own = OwnInteractions(**{**own_interactions, "path": Path(own_interactions["path"])})

    def build(days: list[dt.date]) -> Any:
        return run_feature_build(config, days, False, FEATURE_STEPS, logger.info)

    outcomes = run_training(config, family, TASK_STEPS, logger.info, build, own,
                            Path(truth) if truth else None, trials, timeout, shift_months)  # fmt: skip
    # As a task, the artifact is attached to a task run too (Prefect 3.8's artifact filter joins on task runs).
    task(name="publish-training-summary", cache_policy=NO_CACHE)(publish_summary)(outcomes)
    return [o.as_dict() for o in outcomes]
