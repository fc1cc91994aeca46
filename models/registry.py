"""The MLflow side of training: one run per trained family, registered versions, aliases.

The only module besides `flows/` that uses MLflow's tracking API. A run holds
everything needed to reproduce and judge the model: parameters, metrics, the
feature-set manifests and dataset lineage, the git commit, figures, tables, and the
model (preprocessing and estimator as one artifact) with its signature and input
example. Each registered model gets a new version with the alias `challenger`; MLflow
keeps no history of alias moves, so every move is also recorded as a tag.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import mlflow.data.pandas_dataset
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import infer_signature

from models.result import EvaluationSet, LoggedModel, TrainedModel

CHALLENGER = "challenger"
CHAMPION = "champion"
ALIAS_HISTORY_TAG = "custintel.alias_history"
_HISTORY_KEPT = 25  # alias moves kept on the registered model's tag (tag values are size-limited)
_REQUIREMENTS = ("scikit-learn", "lightgbm", "pandas", "numpy", "scipy", "cloudpickle", "lifelines", "implicit")


class RegistryError(RuntimeError):
    """The tracking store is unreachable, or a registered model does not load back as it was logged."""


@dataclass
class RegisteredVersion:
    """A model logged in a run and, when registered, its version."""

    name: str  # artifact name in the run
    model_uri: str  # runs:/<run>/<name> or models:/<registered>/<version>
    registered_model: str | None = None
    version: int | None = None


@dataclass
class RunRecord:
    """Where a training run's results are."""

    run_id: str
    experiment_id: str
    family: str
    models: list[RegisteredVersion] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def git_commit(start: Path | None = None) -> str:
    """The commit of the checked-out code, or 'unknown' outside a git checkout."""
    where = start or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=where, capture_output=True, text=True,
            timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def pip_requirements() -> list[str]:
    """The model's runtime requirements, pinned to what is installed (explicit: inference takes seconds)."""
    pins = []
    for dist in _REQUIREMENTS:
        try:
            pins.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def ensure_experiment(client: MlflowClient, name: str, artifact_root: str | None) -> str:
    """The experiment's id, creating it (with an explicit artifact location) on first use."""
    try:
        found = client.get_experiment_by_name(name)
    except mlflow.exceptions.MlflowException as exc:
        raise RegistryError(f"cannot reach the MLflow tracking store: {exc}") from exc
    if found is not None:
        return str(found.experiment_id)
    return str(client.create_experiment(name, artifact_location=artifact_root))


def _flat_params(params: dict[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in params.items()}


def serving_example(logged: LoggedModel) -> pd.DataFrame:
    """The input example as the signature declares it: integer features as doubles.

    A serving request may leave a count out (missing), which an integer schema cannot hold.
    """
    example = logged.input_example
    if logged.flavor != "sklearn":
        return example
    ints = [c for c in example.columns if pd.api.types.is_integer_dtype(example[c])]
    return example.astype(dict.fromkeys(ints, "float64"))


def predict_in_memory(logged: LoggedModel, frame: pd.DataFrame) -> Any:
    """What the trained model (not yet logged) answers for `frame`, as its pyfunc will."""
    if logged.flavor == "sklearn":
        return getattr(logged.model, logged.predict_method)(frame)
    return logged.model.predict(None, frame)


def _log_model(logged: LoggedModel) -> Any:
    example = serving_example(logged)
    output = predict_in_memory(logged, example)
    if logged.flavor == "sklearn":
        return mlflow.sklearn.log_model(
            logged.model,
            name=logged.name,
            serialization_format="cloudpickle",
            signature=infer_signature(example, np.asarray(output)),
            input_example=example,
            pip_requirements=pip_requirements(),
            pyfunc_predict_fn=logged.predict_method,
        )
    return mlflow.pyfunc.log_model(
        name=logged.name,
        python_model=logged.model,
        artifacts=logged.artifacts or None,
        signature=infer_signature(example, output),
        input_example=example,
        pip_requirements=pip_requirements(),
    )


REFERENCE_PATH = "monitoring/reference.parquet"


def monitoring_reference(trained: TrainedModel, rows: int, seed: int = 0) -> pd.DataFrame | None:
    """A seeded sample of the training rows, model inputs only: what monitoring compares served traffic with.

    Rows that repeat a customer at a cutoff (the propensity model's one row per product) are
    kept once, since monitoring compares one row per answered customer.
    """
    frame, primary = trained.training_frame, trained.primary
    if frame is None or primary.flavor != "sklearn":
        return None
    columns = [c for c in primary.input_example.columns if c in frame.columns and c != "product_id"]
    keys = [c for c in ("customer_key", "as_of") if c in frame.columns]
    sample = frame.drop_duplicates(subset=keys) if keys and "product_id" in frame.columns else frame
    if len(sample) > rows:
        sample = sample.sample(n=rows, random_state=seed)
    return sample[keys + columns].reset_index(drop=True)


def read_reference(run_id: str) -> pd.DataFrame | None:
    """The monitoring reference a run logged (None for a run from before monitoring)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=REFERENCE_PATH, dst_path=tmp)
        except (mlflow.exceptions.MlflowException, OSError):
            return None
        return pd.read_parquet(local)


def log_training_run(
    trained: TrainedModel,
    experiment_id: str,
    tags: dict[str, str],
    lineage: dict[str, Any],
    dataset_source: str,
    reference_rows: int = 100_000,
) -> RunRecord:
    """Log one trained family as a run; register its models and point `challenger` at the new versions."""
    client = MlflowClient()
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{trained.family}") as run:
        mlflow.set_tags({"custintel.family": trained.family, "mlflow.source.git.commit": git_commit(), **tags})
        mlflow.log_params(_flat_params(trained.params))
        mlflow.log_metrics({k: float(v) for k, v in trained.metrics.items() if np.isfinite(v)})
        mlflow.log_dict(lineage, "lineage/lineage.json")
        mlflow.log_dict(trained.info, "info.json")
        if trained.data_quality:
            mlflow.log_dict(trained.data_quality, "data_quality.json")
        if trained.evaluation_set is not None:
            log_evaluation_set(trained.evaluation_set)
        if trained.training_frame is not None:
            mlflow.log_input(training_dataset(trained, dataset_source), context="training")
            reference = monitoring_reference(trained, reference_rows)
            if reference is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    reference.to_parquet(Path(tmp) / "reference.parquet", index=False)
                    mlflow.log_artifact(str(Path(tmp) / "reference.parquet"), "monitoring")
        for name, fig in trained.figures.items():
            mlflow.log_figure(fig, f"plots/{name}.png")
        for name, table in trained.tables.items():
            mlflow.log_text(table.to_csv(index=False), f"tables/{name}.csv")
        record = RunRecord(run.info.run_id, experiment_id, trained.family, metrics=dict(trained.metrics))
        for logged in trained.models:
            info = _log_model(logged)
            version = None
            uri = info.model_uri
            if logged.registered_model:
                mv = mlflow.register_model(info.model_uri, logged.registered_model)
                version = int(mv.version)
                uri = f"models:/{logged.registered_model}/{version}"
                client.set_model_version_tag(logged.registered_model, str(version), "custintel.family", trained.family)
                set_alias(client, logged.registered_model, CHALLENGER, version, f"trained in run {run.info.run_id}")
            record.models.append(RegisteredVersion(logged.name, uri, logged.registered_model, version))
    return record


def log_evaluation_set(evaluation: EvaluationSet) -> None:
    """Log the test rows and their layout under the active run's `evaluation/`."""
    with tempfile.TemporaryDirectory() as tmp:
        evaluation.frame.to_parquet(Path(tmp) / "test.parquet", index=False)
        (Path(tmp) / "meta.json").write_text(json.dumps(evaluation.meta(), indent=2))
        mlflow.log_artifacts(tmp, "evaluation")


def read_evaluation_set(run_id: str) -> EvaluationSet | None:
    """The test rows a run logged (None for a run from before the gate existed)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="evaluation", dst_path=tmp))
        except (mlflow.exceptions.MlflowException, OSError):
            return None
        if not (local / "meta.json").is_file():
            return None
        meta = json.loads((local / "meta.json").read_text())
        frame = pd.read_parquet(local / "test.parquet")
    meta.pop("rows", None)
    return EvaluationSet(frame=frame, **meta)


def read_run_json(run_id: str, path: str) -> dict[str, Any]:
    """A JSON artifact of a run ({} when the run has none)."""
    try:
        return dict(mlflow.artifacts.load_dict(f"runs:/{run_id}/{path}"))
    except (mlflow.exceptions.MlflowException, OSError):
        return {}


def log_run_metrics(run_id: str, metrics: dict[str, float]) -> None:
    """Add metrics to a finished run (e.g. the oracle comparison, computed after registration)."""
    client = MlflowClient()
    stamp = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    batch = [mlflow.entities.Metric(k, float(v), stamp, 0) for k, v in metrics.items() if np.isfinite(v)]
    client.log_batch(run_id, metrics=batch)


def training_dataset(trained: TrainedModel, source: str) -> Any:
    """The run's training data as an MLflow dataset: its schema from a sample, its digest from every row.

    Hashing rows with pandas takes a fraction of a second where MLflow's own profile of
    a large frame takes many; the sample keeps the logged schema and preview small.
    """
    frame = trained.training_frame
    assert frame is not None
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()[:16]
    return mlflow.data.pandas_dataset.from_pandas(
        frame.head(1000), source=source, name=f"{trained.family}-train-{len(frame)}-rows", digest=digest
    )


def set_alias(client: MlflowClient, name: str, alias: str, version: int, reason: str) -> None:
    """Point `alias` at `version`, and append the move to the registered model's alias history."""
    previous = None
    try:
        previous = int(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        previous = None
    client.set_registered_model_alias(name, alias, str(version))
    history = alias_history(client, name)
    history.append(
        {
            "alias": alias,
            "version": version,
            "previous": previous,
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "reason": reason,
        }
    )
    client.set_registered_model_tag(name, ALIAS_HISTORY_TAG, json.dumps(history[-_HISTORY_KEPT:]))


def alias_history(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Alias moves of a registered model, oldest first (the newest few are kept)."""
    tags = client.get_registered_model(name).tags
    raw = tags.get(ALIAS_HISTORY_TAG)
    return list(json.loads(raw)) if raw else []


def load_alias(name: str, alias: str = CHALLENGER) -> Any:
    """The registered model behind an alias, as a pyfunc model."""
    return mlflow.pyfunc.load_model(f"models:/{name}@{alias}")


def verify_round_trip(logged: LoggedModel, name: str, alias: str = CHALLENGER) -> float:
    """Load `models:/<name>@<alias>` and check it scores the input example as the in-memory model does.

    Returns the largest absolute difference; raises RegistryError beyond 1e-9.
    """
    loaded = load_alias(name, alias)
    example = serving_example(logged)
    expected = predict_in_memory(logged, example)
    got = loaded.predict(example)
    diff = _max_difference(expected, got)
    if diff > 1e-9:
        raise RegistryError(f"models:/{name}@{alias} scores differ from the trained model by {diff:g}")
    return diff


def _max_difference(expected: Any, got: Any) -> float:
    if isinstance(expected, pd.DataFrame):
        got = pd.DataFrame(got)
        numeric = expected.select_dtypes("number").columns
        other = [c for c in expected.columns if c not in numeric]
        if not expected[other].astype(str).reset_index(drop=True).equals(got[other].astype(str).reset_index(drop=True)):
            return float("inf")
        if len(numeric) == 0:
            return 0.0
        return float(np.max(np.abs(expected[numeric].to_numpy(float) - got[numeric].to_numpy(float))))
    return float(np.max(np.abs(np.asarray(expected, dtype=float) - np.asarray(got, dtype=float))))
