"""Prefect flow `train_model`: offline features (or a user's own table) -> tuned, tracked, registered models.

Per family: load the labelled rows (building any missing feature cutoffs first), tune
and fit (steps in `models/`), log the run to MLflow and register the model as
`@challenger`, check that the registered model scores like the in-memory one, and,
when the generator's truth is given, log how close the model comes to the oracle.
`run_training` wires the steps once; the flow passes them as Prefect tasks,
`--engine local` as they are.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from custintel.settings import Settings
from features.featurestore.offline import (
    available_as_of,
    read_item_training_table,
    read_manifest,
    read_offline,
    read_training_table,
)
from features.featurestore.store import offline_root
from flows.retries import io_task
from models import oracle
from models.churn import churn_table, labelled_rows, train_churn
from models.config import FAMILIES, Family, TrainingConfig, TuningConfig, load_training_config
from models.propensity import HELD, negative_shares, propensity_table, train_propensity, train_uplift, uplift_table
from models.recommendation import Interactions, check_interactions, train_recommendation
from models.registry import Registry, RunRecord
from models.result import TrainedModel
from models.splits import LabelledTable, stage_at_random, stage_by_time
from models.tuning import FitClock, create_study
from monitoring.baseline import labelled_reference
from monitoring.policy import load_policy as load_monitoring_policy

LABELS = "labels@1"
PURCHASE_LABELS = "purchase_labels@1"
INTERACTIONS = "interactions@1"
RELATIONSHIP = "relationship@1"


class TrainingInputError(ValueError):
    """A user's own table cannot be trained on; the message names the file, column and reason."""


@dataclass(frozen=True)
class OwnTable:
    """A user's snapshot table for churn: one row per customer (and snapshot), a binary label."""

    path: Path
    id_column: str
    label: str
    split_by: str | None = None  # a date column: earlier rows train, later ones test
    duration: str | None = None  # time to the event or censoring: also fit the survival model


@dataclass(frozen=True)
class OwnInteractions:
    """A user's interactions table for recommendation."""

    path: Path
    user: str
    item: str
    weight: str | None = None
    time: str | None = None  # with it the holdout is the latest interactions; without, a random share


@dataclass
class TrainingOutcome:
    """One family's run: where it is logged and what it scored."""

    family: str
    run_id: str
    registered: list[dict[str, Any]]
    metrics: dict[str, float]
    oracle: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    schema: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "family": self.family,
            "run_id": self.run_id,
            "registered": self.registered,
            "metrics": self.metrics,
            "oracle": self.oracle,
            "seconds": self.seconds,
            "schema": self.schema,
        }


# ---------------------------------------------------------------- data (I/O)


def _label_columns(root: Path, key: str) -> list[str]:
    manifest = read_manifest(root, key) or {}
    return [c["name"] for c in manifest.get("columns", []) if c["name"] not in ("customer_key", "as_of")]


def ensure_features(
    settings: Settings, set_keys: Sequence[str], as_of: Sequence[dt.date], build: Callable[[list[dt.date]], Any]
) -> list[dt.date]:
    """Build the cutoffs any of the sets lacks (all sets, once); returns the cutoffs that were built."""
    root = offline_root(settings)
    missing = sorted({d for key in set_keys for d in as_of if d not in set(available_as_of(root, key))})
    if missing:
        build(missing)
    return missing


def load_churn(settings: Settings, config: TrainingConfig) -> LabelledTable:
    """Churn rows from the offline store: the configured sets joined to labels@ at the split's cutoffs."""
    root, cfg = offline_root(settings), config.churn
    frame = read_training_table(root, cfg.feature_sets, LABELS, cfg.split.all_as_of()).to_pandas()
    return churn_table(frame, cfg, _label_columns(root, LABELS), lineage=str(root))


def load_propensity(settings: Settings, config: TrainingConfig) -> LabelledTable:
    """(customer, product) rows: purchase labels joined to the customer sets and the interactions."""
    root, cfg = offline_root(settings), config.propensity
    frame = read_item_training_table(
        root, cfg.feature_sets, PURCHASE_LABELS, [INTERACTIONS], cfg.split.all_as_of(), "bought",
        keep_negatives=negative_shares(cfg), exclude_flag=HELD,
    ).to_pandas()  # fmt: skip
    return propensity_table(frame, cfg, _label_columns(root, PURCHASE_LABELS), lineage=str(root))


def load_uplift(settings: Settings, config: TrainingConfig) -> LabelledTable:
    """The offer test's participants with their features at the test's cutoff."""
    root, cfg = offline_root(settings), config.propensity
    assert cfg.uplift is not None
    frame = read_training_table(root, cfg.feature_sets, LABELS, [cfg.uplift.as_of]).to_pandas()
    return uplift_table(frame, cfg.uplift, _label_columns(root, LABELS), lineage=str(root))


def load_interactions(settings: Settings, as_of: dt.date) -> Interactions:
    """Purchase history before a cutoff, purchases after it, and segments, from the offline store."""
    root = offline_root(settings)
    history = read_offline(root, INTERACTIONS, [as_of]).to_pandas()
    labels = read_offline(root, PURCHASE_LABELS, [as_of]).to_pandas()
    relationship = read_offline(root, RELATIONSHIP, [as_of]).to_pandas()
    bought = labels[labels["bought"].astype("boolean").fillna(False).to_numpy(dtype=bool)]
    return Interactions(
        history=pd.DataFrame(
            {
                "user": history["customer_key"].astype(str),
                "item": history["product_id"].astype(str),
                "weight": history["purchases"].astype(float),
                "held": history["holds"],
            }
        ),
        holdout=pd.DataFrame({"user": bought["customer_key"].astype(str), "item": bought["product_id"].astype(str)}),
        segments=relationship.set_index("customer_key")["segment"] if "segment" in relationship.columns else None,
        catalogue=tuple(sorted(labels["product_id"].astype(str).unique())),
    )


def read_own_table(path: Path) -> pd.DataFrame:
    """A CSV or Parquet file as a frame (column types inferred)."""
    if not path.is_file():
        raise TrainingInputError(f"{path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".txt", ".tsv", ".inter"):
            return pd.read_csv(path, sep=None, engine="python")
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise TrainingInputError(f"{path} cannot be read: {exc}") from exc
    raise TrainingInputError(f"{path}: expected a .csv or .parquet file, not {suffix or 'no extension'}")


def own_churn_table(own: OwnTable, seed: int) -> LabelledTable:
    """A user's table as labelled rows: label checked to be binary, split by time or at random."""
    frame = read_own_table(own.path)
    for role, col in (("--id", own.id_column), ("--label", own.label), ("--split-by", own.split_by),
                      ("--duration", own.duration)):  # fmt: skip
        if col and col not in frame.columns:
            raise TrainingInputError(
                f"{own.path}: {role} column {col!r} is not in the table; it has {list(frame.columns)}"
            )
    label = frame[own.label]
    known = label.dropna()
    values = set(known.astype(str).str.lower().unique())
    truthy, falsy = {"1", "true", "yes", "y", "t", "1.0"}, {"0", "false", "no", "n", "f", "0.0"}
    if not values <= truthy | falsy or len(values) < 2:
        raise TrainingInputError(
            f"{own.path}: label column {own.label!r} must be binary (0/1, true/false, yes/no) with both classes; "
            f"found {sorted(values)[:10]}"
        )
    frame = frame.assign(**{own.label: label.map(lambda v: None if pd.isna(v) else str(v).lower() in truthy)})
    if frame[own.id_column].duplicated().any() and not own.split_by:
        raise TrainingInputError(
            f"{own.path}: ids in {own.id_column!r} repeat; give --split-by <date column> for repeated snapshots"
        )
    stage = stage_by_time(frame[own.split_by]) if own.split_by else stage_at_random(frame[own.label], seed)
    return LabelledTable(
        frame=frame,
        id_column=own.id_column,
        label=own.label,
        stage=stage,
        snapshot=own.split_by,
        duration=own.duration,
        event=own.label if own.duration else None,
        lineage=str(own.path.resolve()),
    )


def own_interactions(own: OwnInteractions, seed: int) -> tuple[Interactions, Interactions]:
    """(validation, test) splits of a user's interactions: by time when a time column is given, else at random per user.

    The test history is everything before the test holdout (train + validation rows); the
    validation history is the train rows only. Items a user already interacted with are
    not recommended again.
    """
    frame = read_own_table(own.path)
    try:
        rows = check_interactions(frame, own.user, own.item, own.weight)
    except ValueError as exc:
        raise TrainingInputError(f"{own.path}: {exc}") from exc
    if own.time:
        if own.time not in frame.columns:
            raise TrainingInputError(f"{own.path}: --time column {own.time!r} is not in the table")
        times = frame[own.time]
        if pd.api.types.is_numeric_dtype(times):  # epoch seconds, as most interaction logs store them
            times = pd.to_datetime(times, unit="s", errors="coerce")
        stage = stage_by_time(times, (0.8, 0.1, 0.1))
    else:
        # Each user's interactions split 80/10/10 at random (RecBole's 'RS' split grouped by user).
        stage = stage_at_random(rows["user"], seed, (0.8, 0.1, 0.1))
    st = stage.to_numpy()
    catalogue = tuple(sorted(rows["item"].unique()))

    def part(history: pd.Series, holdout: str) -> Interactions:
        return Interactions(rows[history.to_numpy()].assign(held=True), rows[st == holdout][["user", "item"]],
                            None, catalogue)  # fmt: skip

    return part(stage == "train", "valid"), part(stage.isin(["train", "valid"]), "test")


# ---------------------------------------------------------------- the steps


Loaded = LabelledTable | tuple[Interactions, Interactions]


@dataclass(frozen=True)
class Unit:
    """One model to train: a family's main model, or the propensity family's uplift model."""

    name: str  # churn | propensity | uplift | recommendation
    feature_sets: tuple[str, ...]  # offline sets read (lineage)
    as_of: tuple[dt.date, ...]  # cutoffs read
    config: Any  # the unit's pydantic config
    tuning: TuningConfig | None


def plan_units(config: TrainingConfig, family: Family | str) -> list[Unit]:
    """The units a family name stands for ('all': every family), in training order."""
    families = list(FAMILIES) if family == "all" else [family]
    units: list[Unit] = []
    for f in families:
        if f == "churn":
            c = config.churn
            units.append(Unit("churn", (*c.feature_sets, LABELS), tuple(c.split.all_as_of()), c, c.tuning))
        elif f == "propensity":
            p = config.propensity
            sets = (*p.feature_sets, PURCHASE_LABELS, INTERACTIONS)
            units.append(Unit("propensity", sets, tuple(p.split.all_as_of()), p, p.tuning))
            if p.uplift is not None:
                units.append(Unit("uplift", (*p.feature_sets, LABELS), (p.uplift.as_of,), p.uplift, None))
        elif f == "recommendation":
            r = config.recommendation
            sets = (INTERACTIONS, PURCHASE_LABELS, RELATIONSHIP)
            units.append(Unit("recommendation", sets, (r.valid_as_of, r.train_as_of), r, r.tuning))
        else:
            raise ValueError(f"unknown model family {f!r}; choose one of {', '.join(FAMILIES)} or all")
    return units


def with_budget(config: TrainingConfig, trials: int | None, timeout: float | None) -> TrainingConfig:
    """The config with every study's trial count and/or time budget replaced."""
    update: dict[str, Any] = {}
    if trials is not None:
        update["trials"] = trials
    if timeout is not None:
        update["timeout_seconds"] = timeout
    if not update:
        return config
    families = {name: getattr(config, name) for name in FAMILIES}
    return config.model_copy(
        update={
            name: cfg.model_copy(update={"tuning": cfg.tuning.model_copy(update=update)})
            for name, cfg in families.items()
        }
    )


def add_months(day: dt.date, months: int) -> dt.date:
    """The same day `months` later (clamped to the month's last day)."""
    total = day.year * 12 + day.month - 1 + months
    year, month = divmod(total, 12)
    for d in (day.day, 30, 29, 28):
        try:
            return dt.date(year, month + 1, d)
        except ValueError:
            continue
    raise AssertionError("unreachable")


def shifted(config: TrainingConfig, months: int) -> TrainingConfig:
    """The config with every training, validation and test cutoff moved `months` later.

    A retrain keeps the recipe and reads newer data. The uplift model's cutoff stays: it is
    the start of the offer experiment, not a window that moves.
    """
    if months == 0:
        return config

    def move(split: Any) -> Any:
        return split.model_copy(
            update={
                k: [add_months(d, months) for d in getattr(split, k)]
                for k in ("train_as_of", "valid_as_of", "test_as_of")
            }
        )

    r = config.recommendation
    return config.model_copy(
        update={
            "churn": config.churn.model_copy(update={"split": move(config.churn.split)}),
            "propensity": config.propensity.model_copy(update={"split": move(config.propensity.split)}),
            "recommendation": r.model_copy(
                update={
                    "train_as_of": add_months(r.train_as_of, months),
                    "valid_as_of": add_months(r.valid_as_of, months),
                }
            ),
        }
    )


def load_unit(settings: Settings, config: TrainingConfig, unit: Unit) -> Loaded:
    """The unit's rows from the offline store (I/O: retried by the flow)."""
    if unit.name == "churn":
        return load_churn(settings, config)
    if unit.name == "propensity":
        return load_propensity(settings, config)
    if unit.name == "uplift":
        return load_uplift(settings, config)
    r = config.recommendation
    return load_interactions(settings, r.valid_as_of), load_interactions(settings, r.train_as_of)


def fit_unit(unit: Unit, data: Loaded, settings: Settings, study_prefix: str) -> TrainedModel:
    """Tune and fit one unit (its Optuna study in memory or in the configured RDB)."""
    clock = FitClock()
    study = create_study(f"{study_prefix}-{unit.name}", unit.tuning, settings.optuna_storage) if unit.tuning else None
    if unit.name == "churn":
        assert isinstance(data, LabelledTable) and study is not None
        return train_churn(data, unit.config, settings.retention_calls_per_week, study, clock)
    if unit.name == "propensity":
        assert isinstance(data, LabelledTable) and study is not None
        return train_propensity(data, unit.config, study, clock)
    if unit.name == "uplift":
        assert isinstance(data, LabelledTable)
        return train_uplift(data, unit.config, clock)
    assert isinstance(data, tuple) and study is not None and unit.tuning is not None
    return train_recommendation(data[0], data[1], unit.config, unit.tuning, study, clock)


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


def register_unit(
    settings: Settings, config: TrainingConfig, unit: Unit, trained: TrainedModel, lineage: dict[str, Any]
) -> RunRecord:
    """Log the run and register its models as @challenger (I/O: retried by the flow)."""
    from governance.store import actor

    registry = Registry(settings)
    experiment_id = registry.ensure_experiment(config.experiment)
    tags = {"custintel.unit": unit.name, "custintel.feature_sets": ",".join(unit.feature_sets)}
    return registry.log_training_run(trained, experiment_id, tags, lineage, lineage.get("source", ""), actor=actor())


def verify_unit(settings: Settings, trained: TrainedModel, record: RunRecord) -> float:
    """Load each registered model back by alias and compare its scores with the in-memory model's."""
    registry = Registry(settings)
    return max(
        (registry.verify_round_trip(m, m.registered_model) for m in trained.models if m.registered_model), default=0.0
    )


def lineage_of(settings: Settings, unit: Unit, data: Loaded, own: OwnTable | OwnInteractions | None) -> dict[str, Any]:
    """What the run was trained on: sets, versions, digests and cutoffs (or the user's file), and the config."""
    config = unit.config.model_dump(mode="json")
    if own is not None:
        return {"source": str(own.path.resolve()), "own_table": {k: str(v) for k, v in vars(own).items()},
                "config": config}  # fmt: skip
    root = offline_root(settings)
    sets = {}
    for key in unit.feature_sets:
        manifest = read_manifest(root, key) or {}
        parts = manifest.get("partitions", {})
        sets[key] = {
            "digest": manifest.get("digest"),
            "columns": manifest.get("columns"),
            "partitions": {str(d): parts.get(str(d)) for d in unit.as_of},
        }
    return {"source": str(root), "feature_sets": sets, "as_of": [str(d) for d in unit.as_of], "config": config}


def compare_with_truth(
    settings: Settings, truth: Path, unit: Unit, trained: TrainedModel, data: Loaded | None = None
) -> dict[str, float]:
    """The model's score as a fraction of the oracle's, from the generator's truth (evaluation only).

    With the unit's rows (`data`), churn and uplift also get the feature ceiling (see models.oracle).
    """
    persons = oracle.customer_persons(
        pd.read_parquet(settings.identity_dir / "crosswalk.parquet", columns=["customer_key", "record_key"]),
        pd.read_parquet(truth / "source_records.parquet", columns=["source_table", "record_id", "person_id"]),
    )
    if unit.name == "churn":
        risk_file = truth / "churn_risk.parquet"
        if not risk_file.is_file():
            return {}
        assert trained.predictions is not None
        test = labelled_rows(data, "test")[0] if isinstance(data, LabelledTable) else None
        excluded = data.excluded if isinstance(data, LabelledTable) else []
        return oracle.churn_oracle(
            trained.predictions, persons, pd.read_parquet(risk_file), unit.config.horizon_days, test, excluded
        )
    if unit.name == "propensity":
        assert trained.predictions is not None
        affinity = pd.read_parquet(truth / "product_affinity.parquet")
        return oracle.propensity_oracle(trained.predictions, persons, affinity, unit.config.horizon_days)
    if unit.name == "uplift":
        assert trained.predictions is not None
        effect = pd.read_parquet(truth / "treatment_effect.parquet")
        if isinstance(data, LabelledTable):
            return oracle.uplift_oracle(trained.predictions, persons, effect, data.frame, data.excluded)
        return oracle.uplift_oracle(trained.predictions, persons, effect)
    model, test = trained.evaluation
    affinity = pd.read_parquet(truth / "product_affinity.parquet")
    return oracle.recommendation_oracle(model, test, persons, affinity, unit.config.k)


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
    own: OwnTable | OwnInteractions | None = None,
    truth: Path | None = None,
    trials: int | None = None,
    timeout: float | None = None,
    shift_months: int = 0,
) -> list[TrainingOutcome]:
    """Train, log, register (@challenger) and verify each unit of `family`; compare with the truth when given.

    `shift_months` moves every cutoff later (a retrain on newer data, see `shifted`).
    """
    config = shifted(with_budget(load_training_config(settings.training_config), trials, timeout), shift_months)
    units = plan_units(config, family)
    if own is not None:
        units = [u for u in units if u.name == family]
    elif build_features is not None:
        cutoffs = sorted({d for u in units for d in u.as_of})
        sets = sorted({s for u in units for s in u.feature_sets})
        built = ensure_features(settings, sets, cutoffs, build_features)
        if built:
            log(f"built the missing feature cutoffs {', '.join(map(str, built))}")
    prefix = f"{config.experiment}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
    outcomes = []
    for unit in units:
        seconds: dict[str, float] = {}
        t = time.perf_counter()
        data: Loaded
        if isinstance(own, OwnTable):
            data = own_churn_table(own, seed=unit.tuning.seed if unit.tuning else 0)
            log(f"{own.path}: {len(data.frame):,} rows; stages {data.stage.value_counts().to_dict()}")
        elif isinstance(own, OwnInteractions):
            data = own_interactions(own, seed=unit.tuning.seed if unit.tuning else 0)
        else:
            data = steps.load(settings, config, unit)
        seconds["load"] = time.perf_counter() - t
        log(f"{unit.name}: tuning and fitting")
        t = time.perf_counter()
        trained = steps.fit(unit, data, settings, prefix)
        trained.reference = monitoring_reference(settings, data, trained)
        seconds["fit_total"] = time.perf_counter() - t
        seconds["fit_models"] = trained.fit_seconds
        t = time.perf_counter()
        record = steps.register(settings, config, unit, trained, lineage_of(settings, unit, data, own))
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
) -> list[dict[str, Any]]:
    """Tune, fit, track and register the models of a family (or all), as @challenger.

    `shift_months`: train on cutoffs that many months later than the config's (a retrain).
    """
    from flows.features import TASK_STEPS as FEATURE_STEPS
    from flows.features import run_feature_build

    config = Settings.from_flow(settings)
    logger = get_run_logger()
    own: OwnTable | OwnInteractions | None = None
    if own_table:
        own = OwnTable(**{**own_table, "path": Path(own_table["path"])})
    elif own_interactions:
        own = OwnInteractions(**{**own_interactions, "path": Path(own_interactions["path"])})

    def build(days: list[dt.date]) -> Any:
        return run_feature_build(config, days, False, FEATURE_STEPS, logger.info)

    outcomes = run_training(config, family, TASK_STEPS, logger.info, build, own,
                            Path(truth) if truth else None, trials, timeout, shift_months)  # fmt: skip
    # As a task, the artifact is attached to a task run too (Prefect 3.8's artifact filter joins on task runs).
    task(name="publish-training-summary", cache_policy=NO_CACHE)(publish_summary)(outcomes)
    return [o.as_dict() for o in outcomes]
