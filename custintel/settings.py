"""The one typed settings object every custintel package reads.

Values come from environment variables prefixed ``CUSTINTEL_`` (and an optional
``.env`` file). Nothing here touches the disk at import: paths are derived on
demand and created by the I/O functions that write to them.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# Never passed to another process as a flow parameter (Prefect stores and shows parameters): each
# process that runs a flow reads them from its own environment.
SECRET_FIELDS = frozenset({"identity_hash_salt", "serving_api_keys", "serving_log_salt", "privacy_key"})
_URL_PASSWORD = re.compile(r"//[^/@:]*:[^/@]*@")


class SettingsError(ValueError):
    """Settings handed to a flow cannot be used in this process; the message names the variable to set."""


class Settings(BaseSettings):
    """Where custintel keeps its state and which services it talks to."""

    model_config = SettingsConfigDict(
        env_prefix="CUSTINTEL_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    home: Path = Field(
        default=Path(".custintel"),
        description="Root folder for the lake, MLflow store, artifacts, feature stores and reports.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; defaults to a SQLite database under home.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis URL for the online store and counters; SQLite under home when unset.",
    )
    postgres_url: str | None = Field(
        default=None,
        description="PostgreSQL URL for production-grade backends (MLflow, Optuna) when set.",
    )
    ingest_memory_limit: str = Field(
        default="1GB",
        pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        description="DuckDB memory limit during ingestion; beyond it DuckDB spills to disk.",
    )
    ingest_batch_rows: int = Field(
        default=500_000,
        ge=1_000,
        description="Rows checked per batch during ingestion: bounds memory on large tables.",
    )

    identity_config: Path | None = Field(
        default=None,
        description="Identity-resolution YAML (sources, rules, survivorship); the shipped default when unset.",
    )
    identity_match_threshold: float = Field(
        default=0.95,
        gt=0,
        lt=1,
        description="Match probability at or above which the probabilistic pass links two records.",
    )
    identity_match_fields: list[str] = Field(
        default_factory=lambda: [
            "name",
            "birth_date",
            "email",
            "phone",
            "address",
            "postcode",
            "national_id",
            "billing_key",
        ],  # fmt: skip
        description="Fields whose consent/purpose allows identity matching; leave one out (e.g. birth_date) "
        "and no rule or comparison reads it.",
    )
    identity_hashed: bool = Field(
        default=False,
        description="Match on salted hashes of the identifiers only (deterministic rules on equal hashes).",
    )
    identity_hash_salt: SecretStr | None = Field(
        default=None, description="Secret salt (HMAC key) for the hashed mode; required when it is on."
    )
    identity_u_max_pairs: float = Field(
        default=1e7, ge=1e3, description="Random record pairs sampled to estimate the matcher's u parameters."
    )

    features_config: Path | None = Field(
        default=None,
        description="Feature-layer YAML (which lake tables feed each canonical source); the shipped default "
        "when unset.",
    )
    features_memory_limit: str = Field(
        default="4GB",
        pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        description="DuckDB memory limit while building features; beyond it DuckDB spills to disk.",
    )
    engine: Literal["duckdb", "spark"] = Field(
        default="duckdb",
        description="Engine of the data-heavy steps (identity resolution, feature builds, batch scoring): DuckDB on "
        "this machine, or Apache Spark (`spark_master`).",
    )
    spark_master: str = Field(
        default="local[2]",
        pattern=r"^(local(\[(\d+|\*)\])?|spark://[^\s/]+(:\d+)?)$",
        description="Spark master URL for the Spark engine: local[N] in this process, or spark://host:port of a "
        "standalone cluster (`custintel stack up` starts one).",
    )
    spark_driver_memory: str = Field(
        default="4g",
        pattern=r"^\d+[kmgt]$",
        description="Memory of the Spark driver (spark.driver.memory), e.g. 4g.",
    )
    online_namespace: str = Field(
        default="custintel",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Prefix of every Redis key the online store writes (several homes can share one Redis).",
    )

    training_config: Path | None = Field(
        default=None,
        description="Training YAML (cutoffs, feature sets, search spaces, budgets per family); the shipped default "
        "when unset.",
    )
    optuna_storage: str | None = Field(
        default=None,
        description="Optuna study storage so several workers share a study: an RDB URL (e.g. "
        "postgresql+psycopg://...) or journal:///folder/study.log (a journal file on this machine); in memory "
        "when unset.",
    )
    tuning_workers: int | None = Field(
        default=None,
        ge=1,
        description="Worker processes per Optuna study (overrides the training config's tuning.workers; above 1 "
        "needs optuna_storage).",
    )
    governance_policy: Path | None = Field(
        default=None,
        description="Governance policy YAML (sensitive features, fairness limits, waivers per family); the shipped "
        "default when unset.",
    )
    serving_policy: Path | None = Field(
        default=None,
        description="Serving policy YAML (consent per purpose, minors, frequency caps, what the inference log keeps); "
        "the shipped default when unset.",
    )
    monitoring_policy: Path | None = Field(
        default=None,
        description="Monitoring policy YAML (drift tests, data-quality alerts, retraining triggers, minimum interval); "
        "the shipped default when unset.",
    )
    decision_policy: Path | None = Field(
        default=None,
        description="Next-best-action decision policy YAML (actions, channels, capacity, caps, exploration, equity "
        "floor, fallback); the shipped decisions/policy.yaml when unset.",
    )
    kpi_definitions: Path | None = Field(
        default=None,
        description="Operations KPI definitions YAML (FCR and repeat-contact windows, CSAT top box, NPS and CES "
        "answers, cost per contact by channel, journey stages); the shipped insights/kpis.yaml when unset.",
    )
    serving_api_keys: str = Field(
        default="",
        description="Comma-separated API keys the service accepts (Authorization: Bearer <key> or X-API-Key), "
        "each `key` (every scope) or `key:scope+scope` (score, recommend, admin). Empty: the service refuses to "
        "start unless CUSTINTEL_SERVING_ALLOW_ANONYMOUS is true.",
    )
    serving_allow_anonymous: bool = Field(default=False, description="Serve without API keys (local trials only).")
    serving_poll_seconds: float = Field(
        default=10.0, gt=0, description="How often the service asks the registry whether @champion moved."
    )
    serving_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="BentoML worker processes of the service (each loads the champions; one per core suits "
        "bulk scoring with several batch calls in flight).",
    )
    serving_log_salt: str | None = Field(
        default=None, description="Salt of the customer-key hash in the inference log (set it in production)."
    )
    retention_calls_per_week: int | None = Field(
        default=None,
        ge=1,
        description="Customers the retention team can call a week: sets the churn model's contact threshold "
        "(overrides the training config's churn.weekly_capacity). Unset and unconfigured: the config's "
        "churn.contact_share of the scored customers.",
    )

    experiments_holdout: float = Field(
        default=0.0,
        ge=0.0,
        le=0.5,
        description="Share of all customers held out of every experiment (a global holdout): /decide answers them "
        "with the decision policy's fallback, reason 'global holdout'. 0 (the default): no holdout.",
    )

    privacy_key: SecretStr | None = Field(
        default=None,
        description="Secret key (HMAC-SHA256) of the suppression list's hashed identifiers; when unset, a key file "
        "created once under <home>/governance/privacy.key (mode 0600).",
    )

    def to_flow(self) -> dict[str, Any]:
        """These settings as a flow parameter: JSON values, paths absolute, no secret.

        Every flow takes the settings of the command that started it, whole, so a worker
        process (or a deployment run) reads the same stores and configs without rebuilding
        them from a home path. Secrets, and URLs holding a password, are left out: the
        process running the flow takes those from its own environment (see `from_flow`).
        """
        values: dict[str, Any] = {}
        from_environment: list[str] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in SECRET_FIELDS:
                continue
            if isinstance(value, str) and _URL_PASSWORD.search(value):
                from_environment.append(name)
                continue
            if isinstance(value, Path):
                value = str(value.expanduser().resolve())
            values[name] = value
        values["home"] = str(self.home_dir)
        return {"values": values, "from_environment": from_environment}

    @classmethod
    def from_flow(cls, given: dict[str, Any] | None) -> Settings:
        """Settings from `to_flow`'s form; what it left out is read from this process's environment.

        None gives the settings of this process's environment (a flow started without settings).
        """
        if not given:
            return cls()
        settings = cls(**given.get("values", {}))
        missing = [name for name in given.get("from_environment", []) if getattr(settings, name) is None]
        if missing:
            names = ", ".join(f"CUSTINTEL_{n.upper()}" for n in missing)
            raise SettingsError(
                f"this flow's settings take {names} from the environment of the process that runs it (the value "
                "holds a password, so it is not passed as a flow parameter): set it there"
            )
        return settings

    @cached_property
    def home_dir(self) -> Path:
        """The custintel home as an absolute path."""
        return self.home.expanduser().resolve()

    @property
    def lake_dir(self) -> Path:
        """Accepted (contract-valid) tables, one Parquet partition per table and drop."""
        return self.home_dir / "lake"

    @property
    def quarantine_dir(self) -> Path:
        """Rejected rows, with source, row number, field and reason."""
        return self.home_dir / "quarantine"

    @property
    def reports_dir(self) -> Path:
        """Human-readable outputs: ingestion reports, later model cards and drift reports."""
        return self.home_dir / "reports"

    @property
    def identity_dir(self) -> Path:
        """Identity resolution's outputs: crosswalk, golden records, conflicts, links, model."""
        return self.home_dir / "identity"

    @property
    def features_dir(self) -> Path:
        """Feature layer: the offline store (Parquet), the SQLite online store, build manifests."""
        return self.home_dir / "features"

    @property
    def artifacts_dir(self) -> Path:
        """MLflow artifact root for the embedded default."""
        return self.home_dir / "artifacts"

    @property
    def api_keys(self) -> list[str]:
        """The service's API keys without their scopes (`serving.keys` parses and checks the scopes)."""
        entries = [e.strip() for e in self.serving_api_keys.split(",") if e.strip()]
        return [e.rpartition(":")[0].strip() if ":" in e else e for e in entries]

    @property
    def governance_dir(self) -> Path:
        """Gate decisions (decisions.jsonl), model cards and audits (cards/<model>/<version>/)."""
        return self.home_dir / "governance"

    @property
    def monitoring_dir(self) -> Path:
        """Drift and performance reports (reports/<model>/<stamp>/), trigger decisions, the Evidently workspace."""
        return self.home_dir / "monitoring"

    @property
    def inference_log_dir(self) -> Path:
        """The service's inference log (JSON lines per day): the source of monitoring."""
        return self.home_dir / "serving" / "inference"

    @property
    def site_dir(self) -> Path:
        """The governance reviewers' static site (`custintel report`)."""
        return self.home_dir / "site"

    @property
    def default_data_dir(self) -> Path:
        """Where `custintel generate` writes a synthetic world when no --out is given."""
        return self.home_dir / "data"

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking URI: the configured one, else SQLite under home."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.home_dir / 'mlflow.db'}"
