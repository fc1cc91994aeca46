"""What a training run is made of: units, their configuration, their rows, their fit and their lineage.

A family name stands for units (`plan_units`: churn; propensity and its uplift model;
recommendation). Each unit's rows come from the offline store (`load_unit`, building no
features: `ensure_features` asks the caller to) or from a user's own table
(`models.own_tables`); `fit_unit` tunes and fits it. `with_budget` and `shifted` adjust the
training config (a trial budget; a retrain on newer cutoffs). `compare_with_truth` scores a
model against the generator's oracle (evaluation only). The flow `flows.train` wires these.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from custintel.settings import Settings
from features.data_classes import feature_classes
from features.featurestore.config import FeatureConfigError, LabelConfig
from features.featurestore.offline import (
    available_as_of,
    read_item_training_table,
    read_manifest,
    read_offline,
    read_training_table,
)
from features.featurestore.store import feature_config, offline_root
from models import oracle
from models.churn import churn_table, labelled_rows, train_churn
from models.config import (
    FAMILIES,
    ChurnConfig,
    Family,
    PropensityConfig,
    RecommendationConfig,
    TrainingConfig,
    TuningConfig,
)
from models.consent import ConsentExclusion, ConsentRule, filter_interactions, filter_table
from models.own_families import OwnPropensity, OwnUplift
from models.own_tables import OwnInteractions, OwnTable
from models.propensity import HELD, negative_shares, propensity_table, train_propensity, train_uplift, uplift_table
from models.recommendation import Interactions, train_recommendation
from models.result import TrainedModel
from models.splits import LabelledTable
from models.tuning import FitClock, create_study

LABELS = "labels@1"
PURCHASE_LABELS = "purchase_labels@1"
INTERACTIONS = "interactions@1"
RELATIONSHIP = "relationship@1"


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
    notes: list[str] = field(default_factory=list)  # what the guards found and the baselines' verdict, for the summary

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
            "notes": self.notes,
        }


# ---------------------------------------------------------------- data (I/O)


def _churn(config: TrainingConfig) -> ChurnConfig:
    section = config.section("churn")
    assert isinstance(section, ChurnConfig)
    return section


def _propensity(config: TrainingConfig) -> PropensityConfig:
    section = config.section("propensity")
    assert isinstance(section, PropensityConfig)
    return section


def _recommendation(config: TrainingConfig) -> RecommendationConfig:
    section = config.section("recommendation")
    assert isinstance(section, RecommendationConfig)
    return section


def _label_columns(root: Path, key: str) -> list[str]:
    manifest = read_manifest(root, key) or {}
    return [c["name"] for c in manifest.get("columns", []) if c["name"] not in ("customer_key", "as_of")]


def _label_definition(root: Path) -> LabelConfig:
    """The labels' definition the offline store was built with (contractual when it predates the choice)."""
    stored = (read_manifest(root, LABELS) or {}).get("definition", {})
    known = {k: v for k, v in stored.items() if k in LabelConfig.model_fields}
    return LabelConfig.model_validate(known)


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
    root, cfg = offline_root(settings), _churn(config)
    frame = read_training_table(root, cfg.feature_sets, LABELS, cfg.split.all_as_of()).to_pandas()
    definition = _label_definition(root).describe_churn(cfg.horizon_days)
    return churn_table(frame, cfg, _label_columns(root, LABELS), lineage=str(root), definition=definition)


def load_propensity(settings: Settings, config: TrainingConfig) -> LabelledTable:
    """(customer, product) rows: purchase labels joined to the customer sets and the interactions."""
    root, cfg = offline_root(settings), _propensity(config)
    frame = read_item_training_table(
        root, cfg.feature_sets, PURCHASE_LABELS, [INTERACTIONS], cfg.split.all_as_of(), "bought",
        keep_negatives=negative_shares(cfg), exclude_flag=HELD,
    ).to_pandas()  # fmt: skip
    return propensity_table(frame, cfg, _label_columns(root, PURCHASE_LABELS), lineage=str(root))


def load_uplift(settings: Settings, config: TrainingConfig) -> LabelledTable:
    """The offer test's participants with their features at the test's cutoff."""
    root, cfg = offline_root(settings), _propensity(config)
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


# ---------------------------------------------------------------- the units


Loaded = LabelledTable | tuple[Interactions, Interactions]
OwnInput = OwnTable | OwnInteractions | OwnUplift | OwnPropensity  # a user's own table, per family


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
    if family not in (*FAMILIES, "all"):
        raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)} or all")
    families = config.families() if family == "all" else [family]
    units: list[Unit] = []
    for f in families:
        if f == "churn":
            c = _churn(config)
            units.append(Unit("churn", (*c.feature_sets, LABELS), tuple(c.split.all_as_of()), c, c.tuning))
        elif f == "propensity":
            p = _propensity(config)
            sets = (*p.feature_sets, PURCHASE_LABELS, INTERACTIONS)
            units.append(Unit("propensity", sets, tuple(p.split.all_as_of()), p, p.tuning))
            if p.uplift is not None:
                units.append(Unit("uplift", (*p.feature_sets, LABELS), (p.uplift.as_of,), p.uplift, None))
        elif f == "recommendation":
            r = _recommendation(config)
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
    families = {name: getattr(config, name) for name in config.families()}
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

    update: dict[str, Any] = {}
    for name in ("churn", "propensity"):
        section = getattr(config, name)
        if section is not None:
            update[name] = section.model_copy(update={"split": move(section.split)})
    r = config.recommendation
    if r is not None:
        update["recommendation"] = r.model_copy(
            update={"train_as_of": add_months(r.train_as_of, months), "valid_as_of": add_months(r.valid_as_of, months)}
        )
    return config.model_copy(update=update)


def load_unit(settings: Settings, config: TrainingConfig, unit: Unit) -> Loaded:
    """The unit's rows from the offline store (I/O: retried by the flow)."""
    if unit.name == "churn":
        return load_churn(settings, config)
    if unit.name == "propensity":
        return load_propensity(settings, config)
    if unit.name == "uplift":
        return load_uplift(settings, config)
    r = _recommendation(config)
    return load_interactions(settings, r.valid_as_of), load_interactions(settings, r.train_as_of)


def apply_consent(unit: Unit, data: Loaded, rule: ConsentRule) -> tuple[Loaded, ConsentExclusion]:
    """The unit's rows without those of customers whose consent for the purpose was withdrawn before each cutoff.

    A labelled table is filtered per (customer, cutoff) over every stage; the recommender's
    interactions per user at each of its two cutoffs (the validation fit's history and held-out
    purchases at `valid_as_of`, the final fit's at `train_as_of`).
    """
    if isinstance(data, LabelledTable):
        return filter_table(data, rule)
    r = unit.config
    assert isinstance(r, RecommendationConfig)
    (valid, test), report = filter_interactions(
        [(data[0], r.valid_as_of, "train", "valid"), (data[1], r.train_as_of, "refit", "test")], rule
    )
    return (valid, test), report


def fit_unit(unit: Unit, data: Loaded, settings: Settings, study_prefix: str) -> TrainedModel:
    """Tune and fit one unit (its Optuna study in memory or in the configured RDB)."""
    clock = FitClock()
    study = create_study(f"{study_prefix}-{unit.name}", unit.tuning, settings.optuna_storage) if unit.tuning else None
    if unit.name == "churn":
        assert isinstance(data, LabelledTable) and study is not None
        capacity = settings.retention_calls_per_week or unit.config.weekly_capacity
        return train_churn(data, unit.config, capacity, study, clock)
    if unit.name == "propensity":
        assert isinstance(data, LabelledTable) and study is not None
        return train_propensity(data, unit.config, study, clock)
    if unit.name == "uplift":
        assert isinstance(data, LabelledTable)
        return train_uplift(data, unit.config, clock)
    assert isinstance(data, tuple) and study is not None and unit.tuning is not None
    return train_recommendation(data[0], data[1], unit.config, unit.tuning, study, clock)


# Config keys that describe the feature store's data (its sets, cutoffs, label horizon and team): a user's own
# table never used them, so its run does not record them as if it had.
STORE_ONLY = frozenset({"feature_sets", "split", "horizon_days", "weekly_capacity", "calibrate_on",
                        "calibration_share", "calibration_salt", "train_as_of", "valid_as_of", "uplift"})  # fmt: skip


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def options_given(own: OwnInput) -> dict[str, Any]:
    """The options of a user's table that were set (no None, no empty list), JSON-ready."""
    out: dict[str, Any] = {}
    for key, value in vars(own).items():
        if value is None or value == ():
            continue
        out[key] = str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
    return out


def split_record(data: Loaded, seed: int, own: OwnInput | None) -> dict[str, Any]:
    """How the rows were split: the method, the seed, and the rows per stage."""
    if isinstance(data, LabelledTable):
        sizes = {str(k): int(v) for k, v in data.stage.value_counts().sort_index().items()}
        if own is None:
            method = "by cutoff (the config's train, valid and test cutoffs)"
        elif isinstance(own, OwnUplift):
            method = f"at random within arm x outcome: {1 - own.test_share:.0%} train, {own.test_share:.0%} test"
        elif isinstance(own, OwnPropensity) and not own.split_by:
            method = (
                "by customer (a salted hash of the id): 60% train, 20% valid, 20% test, a customer's pairs together"
            )
        elif data.snapshot:
            method = f"by time: rows ranked by {data.snapshot}, earliest 60% train, next 20% valid, latest 20% test"
        else:
            method = "at random, stratified by the label: 60% train, 20% valid, 20% test"
        return {"method": method, "seed": seed, "sizes": sizes}
    valid, test = data
    if isinstance(own, OwnInteractions):
        method = {
            "per-user": f"per user by time ({own.time}): each user's first 80% train, next 10% valid, last 10% test",
            "global": f"by time ({own.time}), one cutoff for all: earliest 80% train, next 10% valid, latest 10% test",
        }.get(own.split or "", "at random per user: 80% train, 10% valid, 10% test")
    else:
        method = "by cutoff (the config's valid_as_of and train_as_of)"
    sizes = {"train": len(valid.history), "valid": len(valid.holdout), "test": len(test.holdout)}
    return {"method": method, "seed": seed, "sizes": sizes}


def label_record(own: OwnTable | None, unit: Unit) -> dict[str, Any]:
    """What the label means and over what horizon, as the run records it (and the model card says it)."""
    if own is None:
        horizon = getattr(unit.config, "horizon_days", None)
        definition = f"the feature store's label, observed over the {horizon} days after each cutoff"
        return {"column": getattr(unit.config, "label", None) or unit.name, "horizon_days": horizon,
                "definition": definition}  # fmt: skip
    horizon = f"within {own.horizon_days} days of the snapshot" if own.horizon_days else "horizon not given (--horizon)"
    return {"column": own.label, "horizon_days": own.horizon_days,
            "definition": f"column {own.label!r} of the user's table (true: churned), {horizon}"}  # fmt: skip


def lineage_of(
    settings: Settings,
    unit: Unit,
    data: Loaded,
    own: OwnInput | None,
    trained: TrainedModel | None = None,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What the run was trained on: sets, versions, digests and cutoffs (or the user's file), the split and the config.

    A user's file is recorded by its sha256, the options given, the columns used (the schema),
    the split and the label; the config without the feature store's sets and cutoffs, which it
    never read. `extra` (the leakage guard's and the baselines' records) is added as is.
    """
    config = unit.config.model_dump(mode="json")
    if own is not None:
        record = {
            "source": str(own.path.resolve()),
            "sha256": file_sha256(own.path),
            "options": options_given(own),
            "schema": list(trained.info.get("schema", [])) if trained is not None else [],
            **own_data_classes(own, trained),
            "split": split_record(data, seed, own),
            "config": {k: v for k, v in config.items() if k not in STORE_ONLY},
        }
        if isinstance(own, OwnTable):
            record["label"] = label_record(own, unit)
        elif isinstance(data, LabelledTable) and data.label_definition:
            record["label"] = {"column": data.label, "definition": data.label_definition}
        return {**record, **(extra or {})}
    root = offline_root(settings)
    sets = {}
    columns: set[str] = set()
    built: dict[str, str] = {}  # the classes the sets were built with
    for key in unit.feature_sets:
        manifest = read_manifest(root, key) or {}
        columns.update(c["name"] for c in manifest.get("columns") or [])
        built.update(manifest.get("data_classes") or {})
        parts = manifest.get("partitions", {})
        sets[key] = {
            "digest": manifest.get("digest"),
            "columns": manifest.get("columns"),
            "partitions": {str(d): parts.get(str(d)) for d in unit.as_of},
        }
    split = split_record(data, seed, None)
    label = label_record(None, unit) if unit.name == "churn" else None
    # Today's configuration decides what may be logged (a feature reclassified since the build included);
    # the classes recorded at the build stand in for features it no longer defines, or when it cannot be read.
    try:
        configured = feature_classes(feature_config(settings))
    except FeatureConfigError:
        configured = {}
    classes = {k: v for k, v in {**built, **configured}.items() if k in columns}
    return {"source": str(root), "feature_sets": sets, "as_of": [str(d) for d in unit.as_of], "split": split,
            **({"label": label} if label else {}), "config": config, "data_classes": dict(sorted(classes.items())),
            "subject_key": "customer_key", **(extra or {})}  # fmt: skip


def own_data_classes(own: OwnInput, trained: TrainedModel | None) -> dict[str, Any]:
    """An own table's data classes (column -> class, from its schema) and its subject key, as the run records them.

    The subject key (--id, --user) is the run's pseudonym of a person, left out of the classes: it stays in
    logged rows so access and erasure requests find them; every other direct identifier is stripped.
    """
    key = getattr(own, "id_column", None) or getattr(own, "user", None)
    rows = trained.info.get("schema", []) if trained is not None else []
    classes = {r["column"]: r["class"] for r in rows if r.get("class") and r["column"] != key}
    return {"data_classes": classes, "subject_key": key}


def run_tags(unit: Unit, lineage: dict[str, Any]) -> dict[str, str]:
    """The run's tags: what it read (feature sets, or the user's file and its digest), and what the guards found."""
    tags = {"custintel.unit": unit.name}
    if "feature_sets" in lineage:
        tags["custintel.feature_sets"] = ",".join(unit.feature_sets)
    else:
        tags["custintel.source"] = "own_table"
        tags["custintel.table_sha256"] = str(lineage.get("sha256", ""))
    leakage = lineage.get("leakage")
    if leakage:
        tags["custintel.leakage.excluded"] = ",".join(x["column"] for x in leakage["excluded"]) or "none"
        if leakage["kept"]:
            tags["custintel.leakage.kept"] = ",".join(x["column"] for x in leakage["kept"])
    baselines = lineage.get("baselines")
    if baselines:
        tags["custintel.beats_baselines"] = "true" if baselines["beats_baselines"] else "false"
    return tags


def split_seed(unit: Unit) -> int:
    """The seed of a unit's split (a random split of a user's table) and of its tuning."""
    if unit.tuning is not None:
        return unit.tuning.seed
    return int(getattr(unit.config, "seed", 0))


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
