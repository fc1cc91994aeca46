"""Experiment specs: validated, hashed, versioned, and registered before launch.

An experiment is a YAML file (`ExperimentSpec`): its hypothesis, metrics (exactly one primary),
arms with their traffic shares (and the policy actions each arm withholds), the share of the
layer's customers it takes, its layer, salt and stopping rule, and (once designed) the design.
Every problem raises `ExperimentError` naming the field path and the reason.

`ExperimentRegistry` keeps the specs under `<home>/experiments/<name>/`: `v<N>.yaml` (each spec
as registered) and `registry.json` (its versions with their sha256, status draft | launched |
stopped, when it launched, its range of the layer's buckets), written atomically under one file
lock per registry. A draft takes a new version when its content changes; a launched (or stopped)
experiment refuses any change, and reading it back re-hashes the stored file, so a spec edited
after launch is caught by name (the analysis would otherwise read a different experiment than the
one customers were assigned to).

Layers: experiments of one layer never share a customer. At launch an experiment gets a
contiguous range [start, end) of the layer's `BUCKETS` positions, sized by its traffic share,
not overlapping the other launched experiments of the layer; a stopped experiment gives its range
back (a later experiment of the layer may reuse those customers).
"""

from __future__ import annotations

import builtins
import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from custintel.atomic_files import write_text_atomically
from custintel.file_lock import exclusive_lock
from custintel.yaml_config import error_message
from experiments.errors import ExperimentError

if TYPE_CHECKING:
    from experiments.analysis import Metric

MetricKind = Literal["proportion", "mean", "ratio"]
Status = Literal["draft", "launched", "stopped"]
BUCKETS = 10_000  # positions of a layer (a customer's position: `experiments.assignment.bucket`)
# The outcome events of the decision log (serving.decision_log.EVENTS, which this package may not import;
# a test keeps the two equal).
OUTCOME_EVENTS = ("impression", "click", "accept", "decline", "conversion", "complaint", "feedback")
SLUG = r"^[a-z][a-z0-9_-]{0,63}$"
_ACTION = r"^[a-z][a-z0-9_]*$"


class _Strict(BaseModel):
    """Unknown keys are errors (a typo must not silently change the experiment); models are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ArmSpec(_Strict):
    """One arm: its name, its share of the experiment's customers, the policy actions it withholds."""

    name: str = Field(pattern=SLUG, description="Arm name (lower case, digits, _ or -).")
    share: float = Field(gt=0, le=1, description="Share of the experiment's customers in this arm.")
    suppress: list[str] = Field(
        default_factory=list, description="Policy action ids withheld from this arm's customers (e.g. the control)."
    )

    @field_validator("suppress")
    @classmethod
    def _action_ids(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.match(_ACTION, name):
                raise ValueError(f"{name!r} is not an action id (lower case, digits and _)")
        if len(set(value)) != len(value):
            raise ValueError("an action is listed twice")
        return value


class MetricSpec(_Strict):
    """One metric: from the outcomes log (`event`) or a column of a units file (`column`), or both."""

    name: str = Field(pattern=SLUG)
    kind: MetricKind
    event: str | None = Field(
        default=None, description="Outcome event counted per customer (proportion: had one; mean: how many)."
    )
    column: str | None = Field(
        default=None, description="Column of a units file (bring-your-own data, the world's offer test)."
    )
    denominator: str | None = Field(default=None, description="Ratio only: the denominator's event or column.")
    covariate: str | None = Field(default=None, description="CUPED: a pre-period feature or units-file column.")
    higher_is_better: bool = True
    primary: bool = False

    @field_validator("event")
    @classmethod
    def _known_event(cls, value: str | None) -> str | None:
        if value is not None and value not in OUTCOME_EVENTS:
            raise ValueError(f"{value!r} is not an outcome event (one of {', '.join(OUTCOME_EVENTS)})")
        return value

    @model_validator(mode="after")
    def _fields_of_kind(self) -> MetricSpec:
        if self.event is None and self.column is None:
            raise ValueError("event: give an outcome event or a units-file column (or both)")
        if self.kind == "ratio" and self.denominator is None:
            raise ValueError("denominator: a ratio metric needs a denominator (an event or a column)")
        if self.kind != "ratio" and self.denominator is not None:
            raise ValueError(f"denominator: only a ratio metric has one, not a {self.kind}")
        if self.kind == "ratio" and self.column is None and self.denominator not in OUTCOME_EVENTS:
            raise ValueError(
                f"denominator: {self.denominator!r} is not an outcome event (an event ratio divides two events)"
            )
        return self


class StoppingSpec(_Strict):
    """When the experiment is read: a fixed horizon (one look) or sequential (a daily look is safe)."""

    mode: Literal["fixed", "sequential"] = "fixed"
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    max_days: int = Field(default=28, ge=1, le=366)


def _once(what: str, names: list[str]) -> None:
    """ValueError naming the first name (alphabetically) that appears twice."""
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{what} {twice[0]!r} appears twice")


class ExperimentSpec(_Strict):
    """An experiment as registered: what it tests, on whom, how it is measured and when it stops."""

    name: str = Field(pattern=SLUG, description="Slug: lower case, digits, _ or -, at most 64 characters.")
    hypothesis: str = Field(min_length=1, max_length=2000)
    metrics: list[MetricSpec] = Field(min_length=1)
    arms: list[ArmSpec] = Field(min_length=2)
    control: str = "control"
    traffic: float = Field(default=1.0, gt=0, le=1, description="Share of the layer's customers in the experiment.")
    layer: str = Field(default="default", pattern=SLUG)
    salt: str | None = Field(default=None, min_length=1, max_length=128, description="Arm hash salt (default: name).")
    actions: list[str] = Field(default_factory=list, description="The policy's action ids the experiment is about.")
    stopping: StoppingSpec = Field(default_factory=StoppingSpec)
    design: dict[str, Any] | None = Field(default=None, description="DesignResult.as_dict() when designed.")

    @field_validator("metrics")
    @classmethod
    def _one_primary(cls, value: list[MetricSpec]) -> list[MetricSpec]:
        _once("metric", [m.name for m in value])
        primary = [m.name for m in value if m.primary]
        if len(primary) != 1:
            found = f"{len(primary)} ({', '.join(primary)})" if primary else "none"
            raise ValueError(f"exactly one metric must be primary: true; found {found}")
        return value

    @field_validator("arms")
    @classmethod
    def _shares(cls, value: list[ArmSpec]) -> list[ArmSpec]:
        _once("arm", [a.name for a in value])
        total = math.fsum(a.share for a in value)
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"the arms' shares sum to {total:g}, not 1")
        return value

    @field_validator("actions")
    @classmethod
    def _action_ids(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.match(_ACTION, name):
                raise ValueError(f"{name!r} is not an action id (lower case, digits and _)")
        return value

    @model_validator(mode="after")
    def _cross_fields(self) -> ExperimentSpec:
        names = [a.name for a in self.arms]
        if self.control not in names:
            raise ValueError(f"control: {self.control!r} is not one of the arms ({', '.join(names)})")
        if self.actions:
            for i, arm in enumerate(self.arms):
                stray = [a for a in arm.suppress if a not in self.actions]
                if stray:
                    raise ValueError(
                        f"arms[{i}].suppress: {stray[0]!r} is not among the experiment's actions "
                        f"({', '.join(self.actions)})"
                    )
        return self

    @property
    def arm_salt(self) -> str:
        """The salt of the arm hash: `salt`, else the experiment's name."""
        return self.salt or self.name

    @property
    def primary(self) -> MetricSpec:
        """The primary metric."""
        return next(m for m in self.metrics if m.primary)

    def arm(self, name: str) -> ArmSpec:
        """The arm called `name` (ExperimentError naming it otherwise)."""
        for a in self.arms:
            if a.name == name:
                return a
        raise ExperimentError(f"arm: no arm {name!r} in experiment {self.name!r}")

    def to_metrics(self) -> list[Metric]:
        """The analysis's metrics: a units column per metric (the column, else the event's per-customer column)."""
        from experiments.analysis import Metric

        return [
            Metric(
                name=m.name,
                kind=m.kind,
                column=m.column or str(m.event),
                denominator=m.denominator,
                covariate=m.covariate,
                higher_is_better=m.higher_is_better,
                primary=m.primary,
            )
            for m in self.metrics
        ]

    def canonical_json(self) -> str:
        """The spec as canonical JSON (sorted keys, no spaces): what the hash covers."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def to_yaml(self) -> str:
        """The spec as a YAML document (fields in declaration order; what `v<N>.yaml` holds)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def spec_hash(spec: ExperimentSpec) -> str:
    """sha256 of the spec's canonical JSON: two files meaning the same experiment share a hash."""
    return hashlib.sha256(spec.canonical_json().encode("utf-8")).hexdigest()


# --- reading a spec ----------------------------------------------------------------------------------------------


def parse_spec(data: Any, origin: str = "spec") -> ExperimentSpec:
    """Validate an already-parsed mapping into an `ExperimentSpec` (ExperimentError naming each bad field)."""
    if not isinstance(data, dict):
        raise ExperimentError(f"spec: {origin} must hold a mapping with name, hypothesis, metrics and arms")
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as exc:
        raise ExperimentError(f"spec: {origin}: " + "; ".join(error_message(e, "spec") for e in exc.errors())) from exc


def load_spec(path_or_text: Path | str) -> ExperimentSpec:
    """Read a spec from a YAML file (a `Path`, or a one-line string naming a file) or from YAML text."""
    if isinstance(path_or_text, Path) or ("\n" not in path_or_text and ":" not in path_or_text):
        path = Path(path_or_text)
        if not path.is_file():
            raise ExperimentError(f"spec: {path} does not exist")
        text, origin = path.read_text(encoding="utf-8"), str(path)
    else:
        text, origin = path_or_text, "spec text"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        reason = str(exc).replace("\n", " ")
        raise ExperimentError(f"spec: {origin} is not valid YAML: {reason}") from exc
    return parse_spec(data, origin)


def example_spec_text() -> str:
    """The packaged example: the demo's retention offer (experiments/examples/retention_offer.yaml)."""
    from importlib import resources

    return resources.files("experiments").joinpath("examples", "retention_offer.yaml").read_text(encoding="utf-8")


# --- the registry ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisteredExperiment:
    """One registered version of an experiment, with its status and its range of the layer's buckets.

    `buckets` is [start, end) of the layer's `BUCKETS` positions while launched; (0, 0) (no customer) for
    a draft; the range it held for a stopped experiment (no longer assigned).
    """

    spec: ExperimentSpec
    version: int
    hash: str
    path: Path
    status: str
    launched_at: dt.datetime | None
    buckets: tuple[int, int]

    @property
    def name(self) -> str:
        """The experiment's name."""
        return self.spec.name

    @property
    def layer(self) -> str:
        """The experiment's layer."""
        return self.spec.layer

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able summary (what `custintel experiment show` prints)."""
        return {
            "name": self.name, "version": self.version, "hash": self.hash, "path": str(self.path),
            "status": self.status, "launched_at": self.launched_at.isoformat() if self.launched_at else None,
            "layer": self.layer, "buckets": list(self.buckets), "spec": self.spec.model_dump(mode="json"),
        }  # fmt: skip


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _as_utc(at: dt.datetime) -> dt.datetime:
    return at.astimezone(dt.UTC) if at.tzinfo else at.replace(tzinfo=dt.UTC)


class ExperimentRegistry:
    """Experiment specs on files: `<root>/<name>/v<N>.yaml` and `<root>/<name>/registry.json`.

    Every change happens under one lock (`<root>/.lock`) so two processes registering or launching
    at once cannot give two experiments of a layer the same buckets; files are replaced atomically.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    # -- files ----------------------------------------------------------------------------------------------------
    def _folder(self, name: str) -> Path:
        if not re.match(SLUG, name):
            raise ExperimentError(f"experiment: {name!r} is not an experiment name (lower case, digits, _ or -)")
        return self.root / name

    def _record(self, name: str) -> dict[str, Any] | None:
        path = self._folder(name) / "registry.json"
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ExperimentError(f"experiment: {path} is not valid JSON: {exc}") from exc
        if not isinstance(record, dict) or not record.get("versions"):
            raise ExperimentError(f"experiment: {path} holds no versions")
        return record

    def _save(self, name: str, record: dict[str, Any]) -> None:
        folder = self._folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomically(folder / "registry.json", json.dumps(record, indent=2, sort_keys=True) + "\n")

    def _lock(self) -> Any:
        return exclusive_lock(self.root / ".lock")

    def _names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "registry.json").is_file())

    def _build(self, name: str, record: dict[str, Any], version: int | None, verify: bool) -> RegisteredExperiment:
        versions = record["versions"]
        if version is None:
            entry = versions[-1]
        else:
            found = [v for v in versions if v["version"] == version]
            if not found:
                raise ExperimentError(
                    f"version: experiment {name!r} has no version {version} (versions 1..{versions[-1]['version']})"
                )
            entry = found[0]
        path = self._folder(name) / entry["file"]
        status = str(record["status"]) if entry is versions[-1] else "superseded"
        after = "after launch" if record["status"] != "draft" else "since it was registered"
        if not path.is_file():
            raise ExperimentError(f"spec: {path} is missing: the registered v{entry['version']} cannot be checked")
        try:
            spec = load_spec(path)
        except ExperimentError as exc:
            raise ExperimentError(f"spec: {path} changed {after} and no longer validates: {exc}") from None
        digest = spec_hash(spec)
        if verify and digest != entry["hash"]:
            raise ExperimentError(
                f"spec: {path} changed {after}: hash {digest[:12]} != registered {entry['hash'][:12]} "
                f"(v{entry['version']}); restore it, or register a new experiment"
            )
        launched = record.get("launched_at")
        buckets = record.get("buckets") or [0, 0]
        return RegisteredExperiment(
            spec=spec,
            version=int(entry["version"]),
            hash=str(entry["hash"]),
            path=path,
            status=status,
            launched_at=dt.datetime.fromisoformat(launched) if launched else None,
            buckets=(int(buckets[0]), int(buckets[1])) if entry is versions[-1] else (0, 0),
        )

    # -- the API --------------------------------------------------------------------------------------------------
    def register(self, spec: ExperimentSpec) -> RegisteredExperiment:
        """Register a spec: the same content keeps its version, a changed draft gets a new one.

        A launched or stopped experiment refuses any change (ExperimentError naming its version and hash).
        """
        digest = spec_hash(spec)
        with self._lock():
            record = self._record(spec.name)
            if record is not None:
                latest = record["versions"][-1]
                if latest["hash"] == digest:
                    return self._build(spec.name, record, None, verify=True)
                if record["status"] != "draft":
                    what = "register a new experiment" + (" or stop this one" if record["status"] == "launched" else "")
                    state = f"{record['status']} (v{latest['version']}, hash {latest['hash'][:12]})"
                    raise ExperimentError(f"spec: {spec.name!r} is {state}; {what}")
            else:
                record = {"name": spec.name, "status": "draft", "launched_at": None, "stopped_at": None,
                          "buckets": None, "layer": spec.layer, "versions": []}  # fmt: skip
            version = len(record["versions"]) + 1
            file = f"v{version}.yaml"
            folder = self._folder(spec.name)
            folder.mkdir(parents=True, exist_ok=True)
            write_text_atomically(folder / file, spec.to_yaml())
            record["versions"].append(
                {"version": version, "hash": digest, "file": file, "registered_at": _now().isoformat()}
            )
            record["layer"] = spec.layer
            self._save(spec.name, record)
            return self._build(spec.name, record, None, verify=True)

    def get(self, name: str, version: int | None = None) -> RegisteredExperiment:
        """A registered experiment (its latest version unless `version`), its stored file re-hashed.

        ExperimentError when it is not registered, or its file changed after it was registered.
        """
        record = self._record(name)
        if record is None:
            raise ExperimentError(f"experiment: no experiment {name!r} is registered (under {self.root})")
        return self._build(name, record, version, verify=True)

    def names(self) -> builtins.list[str]:
        """The registered experiments' names, sorted."""
        return self._names()

    def list(self) -> list[RegisteredExperiment]:
        """Every registered experiment's latest version, by name (each file re-hashed)."""
        return [self.get(name) for name in self._names()]

    def launched(self) -> tuple[builtins.list[RegisteredExperiment], builtins.list[str]]:
        """The launched experiments whose files still check out, and one line per experiment that does not.

        What the service assigns with: a tampered experiment is left out (and said), the others keep running.
        """
        found: builtins.list[RegisteredExperiment] = []
        problems: builtins.list[str] = []
        for name in self._names():
            try:
                record = self._record(name)
                if record is None or record.get("status") != "launched":
                    continue
                found.append(self._build(name, record, None, verify=True))
            except ExperimentError as exc:
                problems.append(str(exc))
        return found, problems

    def launch(self, name: str, at: dt.datetime | None = None) -> RegisteredExperiment:
        """Launch the latest version: allocate its range of the layer's buckets; idempotent once launched.

        ExperimentError when it is stopped, its file changed, or the layer has no free range for its traffic.
        """
        with self._lock():
            record = self._record(name)
            if record is None:
                raise ExperimentError(f"experiment: no experiment {name!r} is registered (under {self.root})")
            current = self._build(name, record, None, verify=True)
            if record["status"] == "launched":
                return current
            if record["status"] == "stopped":
                raise ExperimentError(f"experiment: {name!r} is stopped; register a new experiment to run it again")
            size = max(1, round(current.spec.traffic * BUCKETS))
            taken = sorted(
                tuple(other["buckets"])
                for other in (self._record(n) for n in self._names() if n != name)
                if other is not None and other.get("status") == "launched" and other.get("layer") == current.layer
            )
            start = _first_fit(taken, size)
            if start is None:
                free = _largest_gap(taken)
                raise ExperimentError(
                    f"traffic: layer {current.layer!r} has no free range of {size} buckets for {name!r} "
                    f"(largest free range {free} of {BUCKETS}); stop an experiment of the layer, lower the "
                    "traffic, or use another layer"
                )
            record["status"] = "launched"
            record["launched_at"] = _as_utc(at or _now()).isoformat()
            record["buckets"] = [start, start + size]
            self._save(name, record)
            return self._build(name, record, None, verify=True)

    def stop(self, name: str, at: dt.datetime | None = None) -> RegisteredExperiment:
        """Stop a launched experiment: its customers are no longer assigned; its buckets return to the layer."""
        with self._lock():
            record = self._record(name)
            if record is None:
                raise ExperimentError(f"experiment: no experiment {name!r} is registered (under {self.root})")
            if record["status"] == "draft":
                raise ExperimentError(f"experiment: {name!r} was never launched; nothing to stop")
            if record["status"] == "launched":
                record["status"] = "stopped"
                record["stopped_at"] = _as_utc(at or _now()).isoformat()
                self._save(name, record)
            return self._build(name, record, None, verify=False)


def _first_fit(taken: Sequence[tuple[int, ...]], size: int) -> int | None:
    """The lowest start of a free run of `size` positions among the taken [start, end) ranges."""
    cursor = 0
    for start, end in taken:
        if start - cursor >= size:
            return cursor
        cursor = max(cursor, end)
    return cursor if BUCKETS - cursor >= size else None


def _largest_gap(taken: Sequence[tuple[int, ...]]) -> int:
    cursor, best = 0, 0
    for start, end in taken:
        best = max(best, start - cursor)
        cursor = max(cursor, end)
    return max(best, BUCKETS - cursor)


def experiments_root(home: Path) -> Path:
    """The registry's folder under a custintel home."""
    return home / "experiments"
