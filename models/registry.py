"""The one module that talks to MLflow's tracking store and model registry.

Every command, flow, service and page reaches MLflow through a `Registry` built from the
settings (tracking and registry URI), never through a process-wide default: a process can
point one registry at SQLite and another at PostgreSQL, and a command run on its own, from
any working directory, reads the registry of its home.

A training run holds everything needed to reproduce and judge the model: parameters, metrics,
the feature-set manifests and dataset lineage, the git commit, figures, tables, the test rows
and the monitoring reference, and the model (preprocessing and estimator as one artifact) with
its signature and input example. Each registered model gets a new version with the alias
`challenger`. MLflow keeps no history of alias moves (mlflow #2169), so every move is also
recorded, with its reason and the gate decision behind it, as a tag of its own on the
registered model (`alias_moves`).

MLflow's model logging and loading functions only know the process-wide tracking URI; the
registry sets it for the length of one such call, under a lock, and puts back exactly what
was there before (`_fluent`).

MLflow talks on the console while it logs and registers: cautions about the pickle format we
chose on purpose, a schema hint about the training sample's integer columns, a dataset-source
ambiguity of its own, the creation of a new store's tables, "Successfully registered model".
None is something a user of custintel can act on, so the registry silences exactly those
messages around its own calls (`_quiet_mlflow`), and leaves every other warning alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import io
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import urllib.parse
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import mlflow
import mlflow.data.pandas_dataset
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException, RestException
from mlflow.models import infer_signature
from mlflow.tracking._tracking_service import utils as tracking_service_utils

from custintel.settings import Settings
from features.data_classes import check_no_direct_identifiers, without_direct_identifiers
from models.examples import impersonal_example
from models.result import EvaluationSet, LoggedModel, TrainedModel

CHALLENGER = "challenger"
CHAMPION = "champion"
PREVIOUS = "previous"
ALIASES = (CHAMPION, CHALLENGER, PREVIOUS)
ALIAS_MOVE_TAG = "custintel.alias_move."  # + a sortable stamp: one registered-model tag per move
LEGACY_HISTORY_TAG = "custintel.alias_history"  # the last 25 moves in one tag (homes written before alias_move)
REFERENCE_PATH = "monitoring/reference.parquet"
POLICY_DIR = "policy"  # a decision policy's run: policy/policy.yaml
POLICY_FILE = "policy.yaml"
POLICY_DIGEST_TAG = "custintel.policy_digest"
MEMBERS_PATH = "lineage/members.parquet"  # the customer keys of a run's training rows (erasure requests read it)
_REQUIREMENTS = ("scikit-learn", "lightgbm", "pandas", "numpy", "scipy", "cloudpickle", "lifelines", "implicit")
_FLUENT_LOCK = threading.RLock()
_MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")  # no such model, version or alias

# MLflow's log records that a user of custintel cannot act on: (logger, start of the message).
_MLFLOW_CHATTER = (
    ("mlflow.store.db.utils", "Creating initial MLflow database tables"),  # a new home's store, once
    ("mlflow.store.db.utils", "Updating database tables"),
    # The pickle cautions: cloudpickle is chosen on purpose (skops cannot load LightGBM or our own estimators),
    # and only the registry of one's own home is ever loaded.
    ("mlflow.sklearn", "Saving scikit-learn models in the pickle or cloudpickle format"),
    ("mlflow.pyfunc", "Passing a Python object as `python_model`"),
    ("mlflow.pyfunc", "Validating input example against model signature"),
)
# Python warnings raised under the registry's calls into MLflow: (category, start of the message).
_MLFLOW_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # Raised for the run's training-data sample (lineage): the models' own signatures declare doubles
    # (`serving_example`), so a served request may leave a count out.
    (UserWarning, "Hint: Inferred schema contains integer column"),
    # MLflow registers its local artifact source twice, then warns that a path matches both.
    (UserWarning, "The specified dataset source can be interpreted in multiple ways"),
    # MLflow's SQLAlchemy store on SQLAlchemy 2 (shown only where deprecation warnings are on).
    (DeprecationWarning, "The ``noload`` loader strategy is deprecated"),
)
# What `mlflow.register_model` prints on stderr (not through logging) for every registration.
_REGISTRATION_CHATTER = re.compile(
    r"(Successfully registered model '.*'\.|Registered model '.*' already exists\. Creating a new version of this "
    r"model\.\.\.|Created version '.*' of model '.*'\.)"
)


class RegistryError(RuntimeError):
    """The tracking store is unreachable, or a registered model does not load back as it was logged."""


class UnknownModelError(RegistryError):
    """No registered model by that name or family."""


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


@dataclass(frozen=True)
class VersionInfo:
    """One registered model version, as the gate, the service, monitoring and the site read it."""

    name: str
    version: str
    run_id: str | None
    created: dt.datetime | None
    tags: dict[str, str]


@dataclass(frozen=True)
class RunInfo:
    """A run's tags, metrics and the datasets it logged as inputs (name, digest)."""

    run_id: str
    tags: dict[str, str]
    metrics: dict[str, float]
    datasets: list[tuple[str, str]]


@dataclass(frozen=True)
class RunSummary:
    """A run as an access or erasure request reads it: its tags, params and logged datasets (name, source)."""

    run_id: str
    experiment_id: str
    tags: dict[str, str]
    params: dict[str, str]
    datasets: list[tuple[str, str]]


@dataclass
class ModelListing:
    """A registered model with its aliases and every version (for the reviewers' site)."""

    name: str
    aliases: dict[str, str]
    versions: list[VersionInfo] = field(default_factory=list)


@dataclass(frozen=True)
class AliasMove:
    """One move of an alias: where it pointed before and after, when, why, under which gate decision."""

    model: str
    alias: str
    version: str | None  # None: the alias was removed
    previous: str | None
    at: dt.datetime
    reason: str
    decision: str | None = None
    actor: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"model": self.model, "alias": self.alias, "version": self.version, "previous": self.previous,
                "at": self.at.isoformat(timespec="microseconds"), "reason": self.reason,
                "decision": self.decision, "actor": self.actor}  # fmt: skip


# --- pure helpers ---------------------------------------------------------------------------------------------------


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


def _flat_params(params: dict[str, Any]) -> dict[str, str]:
    """Params as MLflow strings; unset ones (None) are left out rather than logged as 'None'."""
    return {k: json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in params.items() if v is not None}


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


def training_dataset(trained: TrainedModel, source: str, classes: dict[str, str] | None = None) -> Any:
    """The run's training data as an MLflow dataset: its schema from a sample, its digest from every row.

    Hashing rows with pandas takes a fraction of a second where MLflow's own profile of
    a large frame takes many; the sample keeps the logged schema and preview small. The sample
    holds no direct identifier (`classes`: column -> data class); the digest is of the rows as trained on.
    """
    frame = trained.training_frame
    assert frame is not None
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()[:16]
    sample = without_direct_identifiers(frame.head(1000), classes or trained.data_classes)
    return mlflow.data.pandas_dataset.from_pandas(
        sample, source=source, name=f"{trained.family}-train-{len(frame)}-rows", digest=digest
    )


def _id_columns(trained: TrainedModel) -> set[str]:
    ids = {"customer_key"}
    if trained.evaluation_set is not None:
        ids.add(trained.evaluation_set.id_column)
    return ids


def training_members(trained: TrainedModel) -> pd.DataFrame | None:
    """The customer keys of the training rows, one column: what an erasure request checks a version against.

    None when the training frame has no id column (nothing to name a person by).
    """
    frame = trained.training_frame
    if frame is None:
        return None
    # the recommender's training frame is its interaction history, keyed by `user`
    column = next((c for c in ("customer_key", *sorted(_id_columns(trained)), "user") if c in frame.columns), None)
    if column is None:
        return None
    keys = pd.Series(frame[column].dropna().astype(str).unique(), dtype=str).sort_values(ignore_index=True)
    return pd.DataFrame({"customer_key": keys})


def run_data_classes(trained: TrainedModel, lineage: dict[str, Any]) -> dict[str, str]:
    """The data classes of a run's columns: the lineage's record, and what the trainer says."""
    return {**dict(lineage.get("data_classes") or {}), **trained.data_classes}


def loggable(frame: pd.DataFrame, classes: dict[str, str]) -> pd.DataFrame:
    """Rows as MLflow may keep them: without direct identifiers (the subject key stays: erasure finds rows by it)."""
    return without_direct_identifiers(frame, classes)


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


def redact(text: str) -> str:
    """The text with any URL password masked (postgresql://user:secret@host/db -> postgresql://user:***@host/db)."""
    return re.sub(r"(//[^/:@]+):[^/@]*@", r"\1:***@", text)


def is_transient(exc: BaseException) -> bool:
    """True when a registry call failed for a reason a retry can fix: a tracking server's 5xx."""
    return isinstance(exc, RestException) and exc.get_http_status_code() >= 500


def _missing(exc: MlflowException) -> bool:
    return exc.error_code in _MISSING


def _version_info(mv: Any) -> VersionInfo:
    created = dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=dt.UTC) if mv.creation_timestamp else None
    return VersionInfo(mv.name, str(mv.version), mv.run_id or None, created, dict(mv.tags or {}))


def _stamp(at: dt.datetime) -> str:
    return at.strftime("%Y%m%dT%H%M%S%fZ")


@contextlib.contextmanager
def _fluent(tracking_uri: str, registry_uri: str) -> Iterator[None]:
    """MLflow's fluent functions pointed at these URIs for the length of one call; the process's own put back.

    `mlflow.sklearn.log_model`, `load_model` and `get_model_info` read the process-wide URI and
    have no parameter for it. The module globals they read are set directly rather than through
    `mlflow.set_tracking_uri`, which also exports an environment variable and resets the global
    OpenTelemetry tracer provider (a serving process's own tracing and metrics live there). The
    lock keeps two threads of one process (the service's poll and a request, say) from seeing
    each other's URI.
    """
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    with _FLUENT_LOCK:
        saved: tuple[Any, Any] = (tracking_utils._tracking_uri, registry_utils._registry_uri)
        setattr(tracking_utils, "_tracking_uri", tracking_uri)  # noqa: B010 - typed None in MLflow's stubs
        setattr(registry_utils, "_registry_uri", registry_uri)  # noqa: B010
        try:
            yield
        finally:
            setattr(tracking_utils, "_tracking_uri", saved[0])  # noqa: B010
            setattr(registry_utils, "_registry_uri", saved[1])  # noqa: B010


def _local_artifact(root_uri: str, path: str) -> Path | None:
    """The local file behind an artifact of a `file:` artifact root (None for any other store)."""
    parsed = urllib.parse.urlparse(root_uri)
    if parsed.scheme not in ("file", "") or (parsed.scheme == "" and "://" in root_uri):
        return None
    root = Path(urllib.parse.unquote(parsed.path))
    return root / path


def _replace_atomically(target: Path, local: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(f".{target.name}.replacing-{os.getpid()}")
    with staged.open("wb") as fh:
        fh.write(local.read_bytes())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(staged, target)


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """MLflow draws a progress bar per download by default; the gate, monitoring and erasure read many small files."""
    with _FLUENT_LOCK:
        saved = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
            else:
                os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = saved


class _DropMessages(logging.Filter):
    """Drops a logger's records whose message starts with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a record to drop."""
        return not record.getMessage().startswith(self.prefixes)


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """MLflow's messages that a user cannot act on (`_MLFLOW_CHATTER`, `_MLFLOW_WARNINGS`) silenced inside the block.

    Only those messages: any other warning or record of MLflow's still shows. Warning filters are
    process-wide, so the block holds the registry's lock (two threads cannot interleave their restores).
    """
    prefixes: dict[str, tuple[str, ...]] = {}
    for name, prefix in _MLFLOW_CHATTER:
        prefixes[name] = (*prefixes.get(name, ()), prefix)
    filters = [(logging.getLogger(name), _DropMessages(p)) for name, p in prefixes.items()]
    with _FLUENT_LOCK, warnings.catch_warnings():
        for category, message in _MLFLOW_WARNINGS:
            warnings.filterwarnings("ignore", message=re.escape(message), category=category)
        for logger, drop in filters:
            logger.addFilter(drop)
        try:
            yield
        finally:
            for logger, drop in filters:
                logger.removeFilter(drop)


@contextlib.contextmanager
def _without_registration_chatter() -> Iterator[None]:
    """`mlflow.register_model`'s own progress lines kept off the console; anything else printed meanwhile passes on."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    finally:
        rest = [
            line
            for line in captured.getvalue().splitlines(keepends=True)
            if not _REGISTRATION_CHATTER.fullmatch(line.rstrip("\n"))
        ]
        if rest:
            sys.stderr.write("".join(rest))


# --- the registry ---------------------------------------------------------------------------------------------------


def relocate_home_store(settings: Settings) -> int:
    """Make a home's own MLflow store point inside the home it is in now; returns the values rewritten.

    MLflow keeps absolute artifact locations (each experiment's, run's, logged model's and model
    version's) in `mlflow.db`, and absolute paths in each model's `MLmodel`. A home that was copied,
    moved or restored from a backup would otherwise write new cards, reports and models into the
    home it was made in. The home's store is known by its experiments, whose artifact root this
    module sets to `<home>/artifacts`: when that root is in another folder, the old home's path in
    every text value of the database and every `MLmodel` under the artifacts becomes this home's, in one SQLite
    transaction (concurrent processes wait for it and then find nothing to do). A store the
    settings name (`CUSTINTEL_MLFLOW_TRACKING_URI`: PostgreSQL, a server) is left alone.
    """
    if settings.mlflow_tracking_uri:
        return 0
    db = settings.home_dir / "mlflow.db"
    if not db.is_file():
        return 0
    new_uri = settings.artifacts_dir.as_uri()
    con = sqlite3.connect(db, timeout=120, isolation_level=None)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "experiments" not in tables:
            return 0
        query = "SELECT DISTINCT artifact_location FROM experiments WHERE artifact_location LIKE 'file://%/artifacts'"
        if not {r[0] for r in con.execute(query)} - {new_uri}:
            return 0
        con.execute("BEGIN IMMEDIATE")  # one process rebases; the others wait, then find it done
        olds = {r[0] for r in con.execute(query)} - {new_uri}
        pairs: list[tuple[str, str]] = []
        for old_uri in sorted(olds):
            # the whole home's prefix: artifacts, and the lake paths the logged datasets name
            old_path = old_uri.removeprefix("file://").removesuffix("artifacts")
            new_path = new_uri.removeprefix("file://").removesuffix("artifacts")
            pairs.append((old_path, new_path))  # as a URI's path (percent-encoded)
            if urllib.parse.unquote(old_path) != old_path:
                pairs.append((urllib.parse.unquote(old_path), urllib.parse.unquote(new_path)))  # as a plain path
        changed = 0
        for table in sorted(tables):
            columns = [r[1] for r in con.execute(f'PRAGMA table_info("{table}")')
                       if any(t in (r[2] or "").upper() for t in ("CHAR", "TEXT", "CLOB"))]  # fmt: skip
            for column in columns:
                for old, new in pairs:
                    cursor = con.execute(
                        f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) WHERE instr("{column}", ?) > 0',
                        (old, new, old),
                    )
                    changed += max(cursor.rowcount, 0)
        for model_file in settings.artifacts_dir.rglob("MLmodel"):
            text = model_file.read_text(encoding="utf-8")
            moved = text
            for old, new in pairs:
                moved = moved.replace(old, new)
            if moved != text:
                model_file.write_text(moved, encoding="utf-8")
                changed += 1
        con.execute("COMMIT")
        return changed
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    finally:
        con.close()


class Registry:
    """The MLflow tracking store and model registry that the settings name.

    Registered names come from the training config, so `resolve_model("churn")` gives the
    name the trainer registers and the service serves.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tracking_uri = settings.tracking_uri
        self.registry_uri = settings.tracking_uri
        self._relocated = False

    @functools.cached_property
    def client(self) -> MlflowClient:
        """MLflow's client on these URIs (made on first use: for SQLite, making it creates the database)."""
        self._relocate()
        with _quiet_mlflow():
            return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)

    def _relocate(self) -> None:
        if not self._relocated:
            relocate_home_store(self.settings)
            self._relocated = True

    # -- the store -------------------------------------------------------------------------------------------------
    @property
    def is_server(self) -> bool:
        """True for a tracking server (it decides where artifacts go)."""
        return self.tracking_uri.startswith(("http://", "https://", "databricks"))

    def exists(self) -> bool:
        """False for an embedded SQLite store whose file was never written (reading would create it)."""
        if self.tracking_uri.startswith("sqlite:///"):
            return Path(self.tracking_uri.removeprefix("sqlite:///")).exists()
        return True

    def artifact_root(self) -> str | None:
        """Where new experiments keep artifacts: under the home for a database store; a server decides its own."""
        if self.is_server:
            return None
        self.settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
        return self.settings.artifacts_dir.as_uri()

    def _fluent(self) -> contextlib.AbstractContextManager[None]:
        self._relocate()
        return _fluent(self.tracking_uri, self.registry_uri)

    def _unreachable(self, exc: Exception) -> RegistryError:
        return RegistryError(redact(f"cannot reach the MLflow tracking store at {self.tracking_uri}: {exc}"))

    # -- names -----------------------------------------------------------------------------------------------------
    def registered_names(self) -> dict[str, str]:
        """Family -> registered model name, from the training config (uplift included)."""
        from models.config import load_training_config

        return load_training_config(self.settings.training_config).registered_names()

    def resolve_model(self, model: str) -> str:
        """A registered model's name from its name or its family (churn -> the config's churn model)."""
        try:
            names = [m.name for m in self._all_pages(self.client.search_registered_models)]
        except MlflowException as exc:
            raise self._unreachable(exc) from exc
        if model in names:
            return model
        by_family = self.registered_names().get(model)
        if by_family in names:
            return str(by_family)
        raise UnknownModelError(f"no registered model {model!r}; registered: {sorted(names) or 'none'}")

    # -- experiments and runs --------------------------------------------------------------------------------------
    def ensure_experiment(self, name: str) -> str:
        """The experiment's id, creating it (with an explicit artifact location) on first use."""
        try:
            found = self.client.get_experiment_by_name(name)
        except MlflowException as exc:
            raise self._unreachable(exc) from exc
        if found is not None:
            return str(found.experiment_id)
        return str(self.client.create_experiment(name, artifact_location=self.artifact_root()))

    def log_training_run(
        self,
        trained: TrainedModel,
        experiment_id: str,
        tags: dict[str, str],
        lineage: dict[str, Any],
        dataset_source: str,
        actor: str | None = None,
    ) -> RunRecord:
        """Log one trained family as a run; register its models and point `challenger` at the new versions.

        `trained.reference`, when set, is logged at `monitoring/reference.parquet`: the rows monitoring
        compares served traffic with.
        """
        classes = run_data_classes(trained, lineage)
        for logged in trained.models:
            # A model reading a direct identifier would log it in its input example: refuse before the run starts.
            check_no_direct_identifiers(logged.input_example, classes, f"{trained.family} model {logged.name} inputs")
        with (
            _quiet_mlflow(),
            self._fluent(),
            mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{trained.family}") as run,
        ):
            mlflow.set_tags({"custintel.family": trained.family, "mlflow.source.git.commit": git_commit(), **tags})
            mlflow.log_params(_flat_params(trained.params))
            mlflow.log_metrics({k: float(v) for k, v in trained.metrics.items() if np.isfinite(v)})
            mlflow.log_dict(lineage, "lineage/lineage.json")
            mlflow.log_dict(trained.info, "info.json")
            if trained.data_quality:
                mlflow.log_dict(trained.data_quality, "data_quality.json")
            if trained.evaluation_set is not None:
                self._log_evaluation_set(run.info.run_id, trained.evaluation_set, classes)
            if trained.training_frame is not None:
                mlflow.log_input(training_dataset(trained, dataset_source, classes), context="training")
                members = training_members(trained)
                if members is not None:
                    with tempfile.TemporaryDirectory() as tmp:
                        members.to_parquet(Path(tmp) / "members.parquet", index=False)
                        mlflow.log_artifact(str(Path(tmp) / "members.parquet"), "lineage")
            if trained.reference is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    loggable(trained.reference, classes).to_parquet(Path(tmp) / "reference.parquet", index=False)
                    mlflow.log_artifact(str(Path(tmp) / "reference.parquet"), "monitoring")
            for name, fig in trained.figures.items():
                mlflow.log_figure(fig, f"plots/{name}.png")
            for name, table in trained.tables.items():
                mlflow.log_text(loggable(table, classes).to_csv(index=False), f"tables/{name}.csv")
            record = RunRecord(run.info.run_id, experiment_id, trained.family, metrics=dict(trained.metrics))
            for logged in trained.models:
                # The logged example is built from the training columns' medians and modes: no person's row.
                example = impersonal_example(logged.input_example, trained.training_frame, _id_columns(trained))
                info = self._log_model(dataclasses.replace(logged, input_example=example))
                version = None
                uri = info.model_uri
                if logged.registered_model:
                    with _without_registration_chatter():
                        mv = mlflow.register_model(info.model_uri, logged.registered_model)
                    version = int(mv.version)
                    uri = f"models:/{logged.registered_model}/{version}"
                    self.client.set_model_version_tag(
                        logged.registered_model, str(version), "custintel.family", trained.family
                    )
                    self.set_alias(logged.registered_model, CHALLENGER, str(version),
                                   f"trained in run {run.info.run_id}", actor=actor)  # fmt: skip
                record.models.append(RegisteredVersion(logged.name, uri, logged.registered_model, version))
        return record

    @staticmethod
    def _log_model(logged: LoggedModel) -> Any:
        """Log one model into the active run (inside `_fluent`)."""
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

    def _log_evaluation_set(self, run_id: str, evaluation: EvaluationSet, classes: dict[str, str]) -> None:
        """Log the test rows (without direct identifiers) and their layout under the run's `evaluation/`."""
        with tempfile.TemporaryDirectory() as tmp:
            loggable(evaluation.frame, classes).to_parquet(Path(tmp) / "test.parquet", index=False)
            (Path(tmp) / "meta.json").write_text(json.dumps(evaluation.meta(), indent=2))
            self._artifacts_of(run_id).log_artifacts(run_id, tmp, "evaluation")

    def _artifacts_of(self, run_id: str) -> MlflowClient:
        """The client, once MLflow's process-wide cache has forgotten the run's artifact store.

        MLflow caches each run's artifact repository by run id alone, whatever the store: a
        process that touched a run in one home (a copy's original, a home before it moved) would
        go on writing that run's artifacts there. Dropping the entry makes the client read the
        run's location from this registry.
        """
        cache = getattr(tracking_service_utils, "_artifact_repos_cache", None)
        if cache is not None:
            cache.pop(run_id, None)
        return self.client

    def log_run_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        """Add metrics to a finished run (e.g. the oracle comparison, computed after registration)."""
        stamp = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        batch = [mlflow.entities.Metric(k, float(v), stamp, 0) for k, v in metrics.items() if np.isfinite(v)]
        self.client.log_batch(run_id, metrics=batch)

    def log_artifacts(self, run_id: str, folder: Path, path: str) -> str:
        """Attach a local folder's files to a run under `path`; returns `path`."""
        self._artifacts_of(run_id).log_artifacts(run_id, str(folder), path)
        return path

    def run(self, run_id: str) -> RunInfo:
        """A run's tags, metrics and logged datasets."""
        run = self.client.get_run(run_id)
        datasets = [(d.dataset.name, d.dataset.digest) for d in (run.inputs.dataset_inputs if run.inputs else [])]
        return RunInfo(run_id, dict(run.data.tags), dict(run.data.metrics), datasets)

    def _download(self, run_id: str, path: str, dst: str) -> Path | None:
        with _no_progress_bar():
            try:
                return Path(self._artifacts_of(run_id).download_artifacts(run_id, path, dst))
            except (MlflowException, OSError):
                return None

    def read_run_json(self, run_id: str, path: str) -> dict[str, Any]:
        """A JSON artifact of a run ({} when the run has none)."""
        with tempfile.TemporaryDirectory() as tmp:
            local = self._download(run_id, path, tmp)
            if local is None or not local.is_file():
                return {}
            return dict(json.loads(local.read_text(encoding="utf-8")))

    def read_evaluation_set(self, run_id: str) -> EvaluationSet | None:
        """The test rows a run logged (None for a run from before the gate existed)."""
        with tempfile.TemporaryDirectory() as tmp:
            local = self._download(run_id, "evaluation", tmp)
            if local is None or not (local / "meta.json").is_file():
                return None
            meta = json.loads((local / "meta.json").read_text())
            frame = pd.read_parquet(local / "test.parquet")
        meta.pop("rows", None)
        return EvaluationSet(frame=frame, **meta)

    def read_reference(self, run_id: str) -> pd.DataFrame | None:
        """The monitoring reference a run logged (None for a run from before monitoring)."""
        with tempfile.TemporaryDirectory() as tmp:
            local = self._download(run_id, REFERENCE_PATH, tmp)
            return pd.read_parquet(local) if local is not None and local.is_file() else None

    # -- personal data: what an access or erasure request reads and rewrites ---------------------------------------
    def all_runs(self) -> list[RunSummary]:
        """Every run of every experiment in the store (an embedded store never written: none)."""
        if not self.exists():
            return []
        experiments = self._all_pages(self.client.search_experiments)
        ids = [e.experiment_id for e in experiments]
        if not ids:
            return []
        runs = self._all_pages(functools.partial(self.client.search_runs, ids))
        out = []
        for run in runs:
            datasets = [(d.dataset.name, d.dataset.source) for d in (run.inputs.dataset_inputs if run.inputs else [])]
            out.append(RunSummary(run.info.run_id, run.info.experiment_id, dict(run.data.tags),
                                  dict(run.data.params), datasets))  # fmt: skip
        return out

    def run_files(self, run_id: str, path: str | None = None) -> list[str]:
        """Every artifact file of a run (paths relative to the run's artifact root)."""
        client = self._artifacts_of(run_id)
        files: list[str] = []
        for item in client.list_artifacts(run_id, path):
            if item.is_dir:
                files += self.run_files(run_id, item.path)
            else:
                files.append(item.path)
        return files

    def download_run_file(self, run_id: str, path: str, dst: Path) -> Path | None:
        """One artifact of a run, downloaded under `dst` (None when the run has no such file)."""
        local = self._download(run_id, path, str(dst))
        return local if local is not None and local.is_file() else None

    def replace_run_file(self, run_id: str, path: str, local: Path) -> None:
        """Overwrite one artifact of a run (same path) with a local file's content.

        Artifacts on the local disk are replaced atomically (written beside, then renamed over: a kill leaves the
        old file or the new one); a server's artifact store takes the upload as one request.
        """
        target = _local_artifact(self.client.get_run(run_id).info.artifact_uri, path)
        if target is not None:
            _replace_atomically(target, local)
            return
        folder, _, name = path.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / name
            staged.write_bytes(local.read_bytes())
            self._artifacts_of(run_id).log_artifact(run_id, str(staged), folder or None)

    def delete_run_file(self, run_id: str, path: str) -> None:
        """Delete one artifact (file or folder) of a run."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        uri = self.client.get_run(run_id).info.artifact_uri
        with self._fluent():  # an mlflow-artifacts: URI is resolved against the tracking server
            get_artifact_repository(uri).delete_artifacts(path)

    def run_models(self, run_id: str) -> list[tuple[str, str, str]]:
        """The models a run logged: (model id, name, artifact location)."""
        run = self.client.get_run(run_id)
        found = self._all_pages(
            functools.partial(self.client.search_logged_models, [run.info.experiment_id], f"source_run_id = '{run_id}'")
        )
        return [(m.model_id, m.name, m.artifact_location) for m in found]

    def download_model_file(self, location: str, name: str, dst: Path) -> Path | None:
        """One file at the root of a logged model's artifacts (None when it has none)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        with self._fluent(), _no_progress_bar():
            repo = get_artifact_repository(location)
            if name not in {Path(f.path).name for f in repo.list_artifacts() if not f.is_dir}:
                return None
            dst.mkdir(parents=True, exist_ok=True)
            return Path(repo.download_artifacts(name, str(dst)))

    def download_model(self, location: str, dst: Path) -> Path:
        """Every file of a logged model, downloaded under `dst`; returns the local folder."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        dst.mkdir(parents=True, exist_ok=True)
        with self._fluent(), _no_progress_bar():
            return Path(get_artifact_repository(location).download_artifacts("", str(dst)))

    def replace_model_file(self, location: str, local: Path) -> None:
        """Overwrite one file at the root of a logged model's artifacts (the local file's name)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        target = _local_artifact(location, local.name)
        if target is not None:
            _replace_atomically(target, local)
            return
        with self._fluent():
            get_artifact_repository(location).log_artifact(str(local))

    def run_versions(self, run_id: str) -> list[VersionInfo]:
        """The registered versions a run produced."""
        found = self._all_pages(functools.partial(self.client.search_model_versions, f"run_id = '{run_id}'"))
        return [_version_info(mv) for mv in found]

    def delete_version_tag(self, name: str, version: str, key: str) -> None:
        """Remove one tag of a model version (absent: nothing to do)."""
        try:
            self.client.delete_model_version_tag(name, str(version), key)
        except MlflowException as exc:
            if not _missing(exc):
                raise

    # -- versions, tags, models ------------------------------------------------------------------------------------
    def version(self, name: str, version: str) -> VersionInfo:
        """One version of a registered model."""
        return _version_info(self.client.get_model_version(name, str(version)))

    def set_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        """Set tags on a model version."""
        for key, value in tags.items():
            self.client.set_model_version_tag(name, str(version), key, value)

    def log_to_version_run(self, name: str, version: str, folder: Path, path: str) -> None:
        """Attach a folder to the run that produced a version (cards, monitoring reports)."""
        run_id = self.version(name, version).run_id
        if run_id:
            self.log_artifacts(run_id, folder, path)

    def load_model(self, name: str, version: str, flavor: Literal["pyfunc", "sklearn"] = "pyfunc") -> Any:
        """A registered version as a pyfunc model, or as the scikit-learn estimator it was logged as."""
        uri = f"models:/{name}/{version}"
        with self._fluent():
            if flavor == "sklearn":
                return mlflow.sklearn.load_model(uri)
            return mlflow.pyfunc.load_model(uri)

    def model_inputs(self, name: str, version: str) -> list[tuple[str, str]] | None:
        """The version's input signature as (column, type), None when it has none."""
        with self._fluent():
            signature = mlflow.models.get_model_info(f"models:/{name}/{version}").signature
        if signature is None or signature.inputs is None:
            return None
        return [(c.name, str(c.type)) for c in signature.inputs.inputs if c.name]

    def verify_round_trip(self, logged: LoggedModel, name: str, alias: str = CHALLENGER) -> float:
        """Load `models:/<name>@<alias>` and check it scores the input example as the in-memory model does.

        Returns the largest absolute difference; raises RegistryError beyond 1e-9.
        """
        with self._fluent():
            loaded = mlflow.pyfunc.load_model(f"models:/{name}@{alias}")
        example = serving_example(logged)
        expected = predict_in_memory(logged, example)
        got = loaded.predict(example)
        diff = _max_difference(expected, got)
        if diff > 1e-9:
            raise RegistryError(f"models:/{name}@{alias} scores differ from the trained model by {diff:g}")
        return diff

    def list_models(self) -> list[ModelListing]:
        """Every registered model with its aliases and versions (newest first), sorted by name.

        An embedded SQLite store that was never written reads as empty (reading would create it).
        """
        if not self.exists():
            return []
        try:
            registered = self._all_pages(self.client.search_registered_models)
            versions = self._all_pages(self.client.search_model_versions)
        except Exception as exc:  # any store failure (REST, SQLAlchemy, MLflow) means the same to a reader
            raise self._unreachable(exc) from exc
        models = {
            rm.name: ModelListing(rm.name, {a: str(v) for a, v in (rm.aliases or {}).items()}) for rm in registered
        }
        for mv in versions:
            created = (
                dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=dt.UTC) if mv.creation_timestamp else None
            )
            listing = models.setdefault(mv.name, ModelListing(mv.name, {}))
            listing.versions.append(
                VersionInfo(mv.name, str(mv.version), mv.run_id or None, created, dict(mv.tags or {}))
            )
        for listing in models.values():
            listing.versions.sort(key=lambda v: int(v.version) if v.version.isdigit() else 0, reverse=True)
        return sorted(models.values(), key=lambda m: m.name)

    @staticmethod
    def _all_pages(search: Any) -> list[Any]:
        found: list[Any] = []
        token = None
        while True:
            page = search(page_token=token) if token else search()
            found.extend(page)
            token = getattr(page, "token", None)
            if not token:
                return found

    # -- aliases and their history ---------------------------------------------------------------------------------
    def alias_version(self, name: str, alias: str) -> str | None:
        """The version an alias points at; None when the model or the alias does not exist.

        Any other failure (the store unreachable) raises: a caller must not read "no champion"
        into "the registry is down".
        """
        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException as exc:
            if _missing(exc):
                return None
            raise

    def set_alias(
        self, name: str, alias: str, version: str, reason: str, decision: str | None = None, actor: str | None = None
    ) -> None:
        """Point `alias` at `version` and record the move (with the gate decision behind it, when there is one)."""
        previous = self.alias_version(name, alias)
        self.client.set_registered_model_alias(name, alias, str(version))
        self._record_move(AliasMove(name, alias, str(version), previous, dt.datetime.now(dt.UTC), reason, decision,
                                    actor))  # fmt: skip

    def remove_alias(
        self, name: str, alias: str, reason: str, decision: str | None = None, actor: str | None = None
    ) -> None:
        """Remove an alias (if set) and record the removal."""
        previous = self.alias_version(name, alias)
        if previous is None:
            return
        self.client.delete_registered_model_alias(name, alias)
        self._record_move(AliasMove(name, alias, None, previous, dt.datetime.now(dt.UTC), reason, decision, actor))

    def _record_move(self, move: AliasMove) -> None:
        key = f"{ALIAS_MOVE_TAG}{_stamp(move.at)}.{uuid.uuid4().hex[:6]}"
        record = {**move.as_dict(), "reason": move.reason[:1000]}
        record.pop("model")
        self.client.set_registered_model_tag(move.model, key, json.dumps(record))

    def alias_moves(self, name: str) -> list[AliasMove]:
        """Every recorded move of the model's aliases, oldest first.

        Homes written before each move had a tag of its own kept the last 25 moves in one tag;
        those are read too.
        """
        tags = dict(self.client.get_registered_model(name).tags or {})
        raw: list[dict[str, Any]] = []
        legacy = tags.get(LEGACY_HISTORY_TAG)
        if legacy:
            raw += [r for r in json.loads(legacy) if isinstance(r, dict)]
        raw += [json.loads(v) for k, v in tags.items() if k.startswith(ALIAS_MOVE_TAG)]
        moves = []
        for r in raw:
            at = dt.datetime.fromisoformat(str(r["at"]))
            at = at if at.tzinfo else at.replace(tzinfo=dt.UTC)
            version = r.get("version")
            previous = r.get("previous")
            moves.append(
                AliasMove(name, str(r["alias"]), None if version is None else str(version),
                          None if previous is None else str(previous), at, str(r.get("reason", "")),
                          r.get("decision"), r.get("actor"))
            )  # fmt: skip
        return sorted(moves, key=lambda m: m.at)

    # -- experiment read-outs ---------------------------------------------------------------------------------------
    def log_experiment(
        self,
        name: str,
        *,
        params: dict[str, str],
        metrics: dict[str, float],
        tags: dict[str, str],
        folder: Path,
        mlflow_experiment: str = "custintel-experiments",
    ) -> str:
        """One experiment analysis as a finished run of `mlflow_experiment`: params, figures, tags, the report folder.

        The folder's files (JSON, plots, HTML: aggregates only) are attached under `report/`. Returns the run id.
        """
        experiment_id = self.ensure_experiment(mlflow_experiment)
        stamp = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        with _quiet_mlflow():
            run = self.client.create_run(
                experiment_id,
                run_name=f"analyse-{name}",
                tags={"custintel.family": "experiment", "mlflow.source.git.commit": git_commit(), **tags},
            )
            run_id = run.info.run_id
            self.client.log_batch(
                run_id,
                metrics=[mlflow.entities.Metric(k, float(v), stamp, 0) for k, v in metrics.items() if np.isfinite(v)],
                params=[mlflow.entities.Param(k, str(v)[:6000]) for k, v in params.items()],
            )
            self._artifacts_of(run_id).log_artifacts(run_id, str(folder), "report")
            self.client.set_terminated(run_id)
        return str(run_id)

    # -- decision policies: versioned like models -------------------------------------------------------------------
    def register_policy(self, name: str, policy_text: str, digest: str, tags: dict[str, str]) -> str:
        """Register a decision policy's YAML as a new version of `name` (alias `challenger`); returns the version.

        The text is logged as `policy/policy.yaml` of a run in the experiment of the same name, with
        the digest as a tag of the run and of the version. A policy whose digest is already
        registered is not registered again: its version is returned (and becomes `challenger`
        unless it is the champion or already the challenger), so the same file twice leaves one version.
        """
        experiment_id = self.ensure_experiment(name)
        existing = self._policy_by_digest(name, digest)
        if existing is not None:
            if existing not in (self.alias_version(name, CHAMPION), self.alias_version(name, CHALLENGER)):
                self.set_alias(name, CHALLENGER, existing, f"policy {digest[:12]} registered again")
            return existing
        with _quiet_mlflow():
            run = self.client.create_run(
                experiment_id,
                run_name=f"policy-{digest[:12]}",
                tags={"custintel.family": "decision_policy", POLICY_DIGEST_TAG: digest,
                      "mlflow.source.git.commit": git_commit(), **tags},
            )  # fmt: skip
            run_id = run.info.run_id
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / POLICY_FILE).write_text(policy_text, encoding="utf-8")
                self._artifacts_of(run_id).log_artifact(run_id, str(Path(tmp) / POLICY_FILE), POLICY_DIR)
            self.client.set_terminated(run_id)
            try:
                self.client.create_registered_model(name, tags={"custintel.family": "decision_policy"})
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            version = self.client.create_model_version(
                name,
                source=f"{run.info.artifact_uri}/{POLICY_DIR}",
                run_id=run_id,
                tags={"custintel.family": "decision_policy", POLICY_DIGEST_TAG: digest, **tags},
            )
        self.set_alias(name, CHALLENGER, str(version.version), f"policy registered in run {run_id}")
        return str(version.version)

    def _policy_by_digest(self, name: str, digest: str) -> str | None:
        try:
            found = self._all_pages(functools.partial(self.client.search_model_versions, f"name = '{name}'"))
        except MlflowException as exc:
            if _missing(exc):
                return None
            raise
        same = [str(mv.version) for mv in found if (mv.tags or {}).get(POLICY_DIGEST_TAG) == digest]
        return max(same, key=int) if same else None

    def policy_text(self, name: str, version: str) -> str:
        """The YAML text of one registered policy version."""
        run_id = self.version(name, version).run_id
        if run_id is None:
            raise RegistryError(f"{name} v{version} has no run holding its policy file")
        with tempfile.TemporaryDirectory() as tmp:
            local = self._download(run_id, f"{POLICY_DIR}/{POLICY_FILE}", tmp)
            if local is None or not local.is_file():
                raise RegistryError(f"{name} v{version}: its run {run_id} holds no {POLICY_DIR}/{POLICY_FILE}")
            return local.read_text(encoding="utf-8")

    def policy_version(self, name: str, alias: str = CHAMPION) -> tuple[str, str] | None:
        """(version, policy YAML text) of the version `alias` points at; None when there is none.

        What the service polls: a promoted policy is picked up like a model. An unreachable
        store raises (never read as "no policy").
        """
        if not self.exists():
            return None
        version = self.alias_version(name, alias)
        if version is None:
            return None
        return version, self.policy_text(name, version)

    # -- retention ---------------------------------------------------------------------------------------------------
    def artifact_folders(self, run_id: str, path: str) -> list[str]:
        """The folders directly under a run's artifact `path` (e.g. `monitoring/<stamp>`); [] when it has none."""
        try:
            listed = self._artifacts_of(run_id).list_artifacts(run_id, path)
        except Exception as exc:  # any store failure means the same to a reader
            raise self._unreachable(exc) from exc
        return sorted(f.path for f in listed if f.is_dir)

    def delete_artifacts(self, run_id: str, path: str) -> None:
        """Delete a run's artifacts under `path` from the run's own artifact store (local files or a served store)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        try:
            uri = self.client.get_run(run_id).info.artifact_uri
            get_artifact_repository(uri, tracking_uri=self.tracking_uri).delete_artifacts(path)
        except Exception as exc:
            raise self._unreachable(exc) from exc
