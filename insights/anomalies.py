"""Source anomalies: each table of each drop profiled, and checked against the table's history.

A **profile** is what ingestion accepted, per drop and table, as aggregates only: rows per day (by the
table's time column), empty values per column per day, and each column's value shares per day (the
categories of a low-cardinality column, or a numeric column's histogram over fixed bins). No value that
identifies a person is kept: identifier columns get empty counts only, and a text column is profiled as
categories only when it has few distinct values. Profiles live under `<home>/insights/profiles/<table>/
<drop id>/` and are the table's history.

The **checks** compare each day of the newest drop with the table's earlier days (those of the same
drop and of earlier drops, without days already found anomalous) and, for days an earlier drop already
held, with what that drop said about the same day:

- volume: robust z of log(rows + 1) against the same weekday's level, scale from the median absolute
  deviation with a Poisson floor, and a minimum factor; a table's total against its previous drop;
- empty values: a binomial z of a column's empty count against the history's empty share, with a
  minimum rise;
- distribution: the population stability index of a day's shares against the history's, above a
  threshold and above what sampling noise alone gives.

A table whose median day has few rows is judged by week. Consecutive anomalous days of one kind on one
column make one anomaly (its first day and its last). `check_sources` is what a flow calls before
features are built; the policy (`anomalies.yaml`) says whether anomalies only warn or stop the build.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import binom, norm

from custintel.atomic_files import write_text_atomically
from custintel.settings import Settings
from custintel.sql import text as sql_text
from custintel.yaml_config import load_yaml_model
from features.contracts import ColumnRule, Contract
from features.lake import IngestError, LakeManifest, lake_contract, read_manifest
from features.synthetic.config import WorldConfig
from insights.errors import InsightsError
from insights.report import Anomaly as PageAnomaly

Severity = Literal["high", "medium"]
Kind = Literal["volume", "table_volume", "quarantine_rate", "null_rate", "distribution", "empty_table", "missing_table"]
Period = Literal["day", "week", "drop"]
PROFILE_VERSION = 1
_TIME_CLASSES = ("behavioural", "inferred")
_NOT_TIME = ("loaded_at", "updated_at")


class AnomalyError(InsightsError):
    """The checks cannot run: a bad policy, or a lake without the table asked for."""


class SourcesStopped(RuntimeError):
    """The anomaly policy stops the feature build; the message names the first anomalies and what to do."""

    def __init__(self, report: AnomalyReport) -> None:
        self.report = report
        shown = "; ".join(a.message for a in report.anomalies[:3])
        more = f" (and {len(report.anomalies) - 3} more)" if len(report.anomalies) > 3 else ""
        super().__init__(
            f"features not built: {len(report.anomalies)} source anomalies and the anomaly policy says stop: "
            f"{shown}{more}. Fix the source and ingest again, or acknowledge the event in the policy's `acknowledged`"
        )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VolumePolicy(_Strict):
    """When a day's (or a table's) row count is anomalous."""

    z: float = Field(default=5.0, gt=0)
    min_ratio: float = Field(default=2.0, gt=1)
    high_ratio: float = Field(default=5.0, gt=1)
    drop_min_ratio: float = Field(default=2.0, gt=1)


class NullRatePolicy(_Strict):
    """When a column's share of empty values is anomalous."""

    z: float = Field(default=5.0, gt=0)
    min_increase: float = Field(default=0.2, gt=0, le=1)
    min_rows: int = Field(default=10, ge=1)
    high_increase: float = Field(default=0.5, gt=0, le=1)


class DistributionPolicy(_Strict):
    """When a column's value shares have moved."""

    psi: float = Field(default=0.25, gt=0)
    noise_factor: float = Field(default=4.0, ge=1)
    min_rows: int = Field(default=200, ge=1)
    max_categories: int = Field(default=30, ge=2)
    bins: int = Field(default=10, ge=2, le=50)
    high_psi: float = Field(default=1.0, gt=0)


CheckName = Literal["volume", "null_rate", "distribution"]


class TablePolicy(_Strict):
    """One table's settings: the column that dates its rows, the checks it gets, its period."""

    time_column: str | None = Field(
        default="auto", description="null: no time column; auto: the first fitting date column"
    )
    checks: list[CheckName] = Field(default=["volume", "null_rate", "distribution"])
    period: Literal["auto", "day", "week"] = "auto"
    settle_days: int | None = Field(default=None, ge=0, description="the policy's settle_days when None")
    lifecycle_columns: list[str] = Field(
        default=[],
        description="columns filled when something happens later (an account closes): their empty share falls "
        "with a row's age, so recent rows are always emptier; they are not judged for empty values",
    )
    why: str = ""


class Acknowledged(_Strict):
    """A known event (a migration, a one-off campaign): matching anomalies are reported as acknowledged."""

    table: str
    column: str | None = None
    kind: Kind | None = None
    start: dt.date
    end: dt.date
    reason: str = Field(min_length=1)

    def covers(self, a: Anomaly) -> bool:
        """The anomaly is this event's: same table (and column, kind when given) and its days inside."""
        if a.table != self.table or (self.column is not None and a.column != self.column):
            return False
        if self.kind is not None and a.kind != self.kind:
            return False
        return a.day is not None and self.start <= a.day and (a.until or a.day) <= self.end


class AnomalyPolicy(_Strict):
    """Thresholds of the checks and what an anomaly does to the feature build (`anomalies.yaml`)."""

    action: Literal["warn", "stop"] = "warn"
    stop_on: list[Severity] = Field(default=["high"])
    history_days: int = Field(default=56, ge=7)
    min_history_days: int = Field(default=28, ge=7)
    first_drop_days: int | None = Field(default=35, ge=7)
    quarantine_increase: float = Field(default=0.05, gt=0, le=1)
    settle_days: int = Field(default=2, ge=0)
    min_daily_rows: int = Field(default=20, ge=1)
    volume: VolumePolicy = Field(default_factory=VolumePolicy)
    null_rate: NullRatePolicy = Field(default_factory=NullRatePolicy)
    distribution: DistributionPolicy = Field(default_factory=DistributionPolicy)
    tables: dict[str, TablePolicy] = Field(default_factory=dict)
    acknowledged: list[Acknowledged] = Field(default_factory=list)

    def table(self, name: str) -> TablePolicy:
        """A table's settings (the defaults for a table the policy does not name)."""
        return self.tables.get(name, TablePolicy())


def load_anomaly_policy(path: Path | None = None) -> AnomalyPolicy:
    """The policy at `path`, or the shipped `insights/anomalies.yaml`; errors name the file and the field."""
    return load_yaml_model(
        AnomalyPolicy, path, ("insights", "anomalies.yaml"), AnomalyError, "anomaly policy", "the check thresholds"
    )


def synthetic_world_policy(cfg: WorldConfig, **update: object) -> AnomalyPolicy:
    """The shipped policy judging a generated world's last 120 days, with the generator's known events acknowledged.

    As a data engineer would acknowledge them once: the acquired company's customers migrate in the months
    after `acquisition_date` (accounts, plan changes and amounts jump) and its own systems take no sign-ups
    after it; the generator stops sign-ups 20 days before its export (new accounts and the consents recorded
    at sign-up fall). For the benchmark and the tests; real data gets the shipped policy (or its own).
    """
    acq, end = cfg.acquisition_date, cfg.window_end
    early = acq - dt.timedelta(days=7)
    acks = [
        Acknowledged(table=t, start=early, end=acq + dt.timedelta(days=100), reason="the acquired company's migration")
        for t in ("crm_accounts", "billing_accounts", "billing_transactions")
    ]
    acks += [
        Acknowledged(table=t, kind="volume", start=early, end=end, reason="the acquired company takes no sign-ups")
        for t in ("northwind_customers", "northwind_consents")
    ]
    acks += [
        Acknowledged(
            table=t,
            kind="volume",
            start=end - dt.timedelta(days=35),
            end=end,
            reason="the generator stops sign-ups 20 days before its export",
        )  # fmt: skip
        for t in ("crm_accounts", "billing_accounts", "consent_events")
    ]
    return load_anomaly_policy().model_copy(update={"first_drop_days": 120, "acknowledged": acks, **update})


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Anomaly:
    """One anomaly: where, what was seen against what was expected, how bad, and what to do."""

    drop_id: str
    table: str
    column: str | None
    day: dt.date | None  # the first anomalous day (the Monday of a week); None for a whole table
    until: dt.date | None  # the last anomalous day of the run (the Sunday of a week)
    period: Period
    kind: Kind
    observed: float
    expected: float
    severity: Severity
    message: str

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields (dates as ISO text)."""
        out = asdict(self)
        out["day"] = self.day.isoformat() if self.day else None
        out["until"] = self.until.isoformat() if self.until else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Anomaly:
        """An anomaly from its JSON form."""
        fields = {k: data[k] for k in cls.__dataclass_fields__}
        for k in ("day", "until"):
            fields[k] = dt.date.fromisoformat(fields[k]) if fields[k] else None
        return cls(**fields)


@dataclass
class AnomalyReport:
    """Every anomaly of the newest drop of each table, the notes on what could not be checked, and the verdict."""

    drops: dict[str, str] = field(default_factory=dict)  # table -> the drop id checked
    anomalies: list[Anomaly] = field(default_factory=list)
    acknowledged: list[tuple[Anomaly, str]] = field(default_factory=list)  # (anomaly, the policy's reason)
    notes: list[str] = field(default_factory=list)
    action: Literal["none", "warn", "stop"] = "none"
    key: str = ""  # digest of the drops checked and the policy: the same key, the same report

    @property
    def stop(self) -> bool:
        """The policy says the feature build must not start."""
        return self.action == "stop"

    def lines(self) -> list[str]:
        """One readable line per anomaly, then the notes."""
        return [f"[{a.severity}] {a.message}" for a in self.anomalies] + [f"note: {n}" for n in self.notes]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "key": self.key,
            "drops": self.drops,
            "action": self.action,
            "anomalies": [a.to_dict() for a in self.anomalies],
            "acknowledged": [{**a.to_dict(), "reason": why} for a, why in self.acknowledged],
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnomalyReport:
        """A report from its JSON form."""
        return cls(
            drops=dict(data["drops"]),
            anomalies=[Anomaly.from_dict(a) for a in data["anomalies"]],
            acknowledged=[(Anomaly.from_dict(a), str(a["reason"])) for a in data["acknowledged"]],
            notes=list(data["notes"]),
            action=data["action"],
            key=str(data.get("key", "")),
        )


# --------------------------------------------------------------------------------------------
# Profiles


@dataclass
class TableProfile:
    """A table's aggregates in one drop.

    Frames: `volume` (day, rows), `nulls` (day, column, rows, nulls), `values` (day, column, bucket,
    count); a table without a time column has day NaT.
    """

    table: str
    drop_id: str
    as_of: dt.date
    time_column: str | None
    rows: int
    quarantined: int
    volume: pd.DataFrame
    nulls: pd.DataFrame
    values: pd.DataFrame
    edges: dict[str, list[float]] = field(default_factory=dict)
    summary: dict[str, dict[str, object]] = field(default_factory=dict)

    @property
    def last_day(self) -> dt.date:
        """The last day the drop can hold rows of: the day before its export."""
        return self.as_of - dt.timedelta(days=1)


def slice_profile(profile: TableProfile, as_of: dt.date) -> TableProfile:
    """What a drop of the table exported on `as_of` would have shown (late arrivals aside).

    For measuring the checks on many normal drops cut from one world ("day slices"); a table without a
    time column cannot be cut.
    """
    if profile.time_column is None:
        raise AnomalyError(f"{profile.table} has no time column: its profile cannot be cut at a day")
    cut = pd.Timestamp(as_of)

    def before(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[frame["day"] < cut].reset_index(drop=True)

    volume = before(profile.volume)
    return TableProfile(
        table=profile.table,
        drop_id=f"{profile.drop_id}@{as_of:%Y%m%d}",
        as_of=as_of,
        time_column=profile.time_column,
        rows=int(volume["rows"].sum()),
        quarantined=0,
        volume=volume,
        nulls=before(profile.nulls),
        values=before(profile.values),
        edges=profile.edges,
        summary=profile.summary,
    )


def profile_root(settings: Settings) -> Path:
    """Where every table's profiles are kept."""
    return settings.home_dir / "insights" / "profiles"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def time_column(contract: Contract, policy: AnomalyPolicy) -> str | None:
    """The column that dates a table's rows: the policy's choice, else the first fitting date column."""
    names = {c.name for c in contract.columns}
    chosen = policy.table(contract.table).time_column
    if chosen != "auto":
        if chosen is not None and chosen not in names:
            raise AnomalyError(
                f"tables.{contract.table}.time_column: {chosen} is not a column of {contract.table} "
                f"(columns: {', '.join(sorted(names))})"
            )
        return chosen
    for c in contract.columns:
        if (
            c.type in ("date", "timestamp")
            and not c.nullable
            and c.data_class in _TIME_CLASSES
            and c.name not in _NOT_TIME
        ):
            return c.name
    return None


def _categorical(rule: ColumnRule) -> bool:
    """Whether a column's value shares are kept: behavioural and inferred text or flags only.

    Identifiers and quasi-identifiers (gender, region, ...) get empty counts only: a day's count of a
    rare value can single a person out.
    """
    if rule.data_class not in _TIME_CLASSES:
        return False
    return rule.type in ("bool", "string")


def _numeric(rule: ColumnRule) -> bool:
    return rule.type in ("int", "float") and rule.data_class in _TIME_CLASSES


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, ...]:
    """The first row of a query."""
    rows = con.sql(sql).fetchall()
    return tuple(rows[0]) if rows else ()


def _edges(con: duckdb.DuckDBPyConnection, src: str, column: str, bins: int) -> list[float]:
    qs = ", ".join(f"{k / bins:.4f}" for k in range(1, bins))
    got = _one(con, f"SELECT quantile_cont({_q(column)}, [{qs}]) FROM {src}")
    values = got[0] if got and got[0] is not None else []
    return sorted({float(v) for v in values if v is not None and math.isfinite(float(v))})


def _bucket_sql(column: str, edges: list[float]) -> str:
    col = _q(column)
    whens = " ".join(f"WHEN {col} < {e!r} THEN 'b{i:02d}'" for i, e in enumerate(edges))
    return f"CASE WHEN {col} IS NULL THEN NULL {whens} ELSE 'b{len(edges):02d}' END"


def profile_table(
    files: Sequence[Path],
    contract: Contract,
    drop_id: str,
    as_of: dt.date,
    policy: AnomalyPolicy,
    quarantined: int = 0,
    edges: dict[str, list[float]] | None = None,
) -> TableProfile:
    """Aggregate one drop's accepted rows of a table (its lake partition files).

    `edges`: numeric columns' histogram bins from the table's earlier profiles, so that every drop's
    histograms are comparable; a column without them gets bins at this drop's deciles.
    """
    tcol = time_column(contract, policy)
    src = f"read_parquet([{', '.join(sql_text(p) for p in files)}], union_by_name = true)"
    day = f"CAST({_q(tcol)} AS DATE)" if tcol else "CAST(NULL AS DATE)"
    edges = dict(edges or {})
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET threads = 2")
        rows = int(_one(con, f"SELECT count(*) FROM {src}")[0])
        volume = con.sql(f"SELECT {day} AS day, count(*) AS rows FROM {src} GROUP BY 1 ORDER BY 1").df()
        profiled = [c for c in contract.columns if c.name != tcol]
        null_parts = [
            f"SELECT {day} AS day, {sql_text(c.name)} AS column, count(*) AS rows, "
            f"count(*) - count({_q(c.name)}) AS nulls FROM {src} GROUP BY 1"
            for c in profiled
        ]
        nulls = (
            con.sql(" UNION ALL ".join(null_parts) + " ORDER BY 1, 2").df()
            if null_parts and rows
            else pd.DataFrame({"day": [], "column": [], "rows": [], "nulls": []})
        )
        value_parts: list[str] = []
        summary: dict[str, dict[str, object]] = {}
        empty = nulls.groupby("column")["nulls"].sum() if rows else pd.Series(dtype=float)
        categorical = [c for c in profiled if _categorical(c)]
        distincts = dict(
            zip(
                [c.name for c in categorical],
                _one(con, "SELECT " + ", ".join(f"count(DISTINCT {_q(c.name)})" for c in categorical) + f" FROM {src}")
                if categorical and rows
                else [],
                strict=False,
            )
        )
        for c in profiled:
            if not rows:
                break
            info: dict[str, object] = {"null_share": round(float(empty.get(c.name, 0)) / rows, 6)}
            if _categorical(c):
                distinct = int(distincts[c.name])
                if distinct <= policy.distribution.max_categories:
                    bucket = f"CAST({_q(c.name)} AS VARCHAR)"
                    top = con.sql(
                        f"SELECT {bucket} AS v, count(*) / sum(count(*)) OVER () AS s FROM {src} "
                        f"WHERE {_q(c.name)} IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10"
                    ).fetchall()
                    info["shares"] = {str(v): round(float(s), 6) for v, s in top}
                    value_parts.append(
                        f"SELECT {day} AS day, {sql_text(c.name)} AS column, {bucket} AS bucket, count(*) AS count "
                        f"FROM {src} WHERE {_q(c.name)} IS NOT NULL GROUP BY 1, 3"
                    )
                else:
                    info["note"] = f"{distinct} distinct values: not profiled as categories"
            elif _numeric(c):
                if c.name not in edges:
                    edges[c.name] = _edges(con, src, c.name, policy.distribution.bins)
                qs = _one(
                    con,
                    f"SELECT quantile_cont({_q(c.name)}, [0.05, 0.25, 0.5, 0.75, 0.95]), avg({_q(c.name)}) FROM {src}",
                )
                if qs and qs[0] is not None:
                    info["quantiles"] = dict(
                        zip(["p05", "p25", "p50", "p75", "p95"], [float(v) for v in qs[0]], strict=True)
                    )
                    info["mean"] = float(qs[1])
                value_parts.append(
                    f"SELECT {day} AS day, {sql_text(c.name)} AS column, {_bucket_sql(c.name, edges[c.name])} "
                    f"AS bucket, count(*) AS count FROM {src} WHERE {_q(c.name)} IS NOT NULL GROUP BY 1, 3"
                )
            summary[c.name] = info
        values = (
            con.sql(" UNION ALL ".join(value_parts) + " ORDER BY 1, 2, 3").df()
            if value_parts
            else pd.DataFrame({"day": [], "column": [], "bucket": [], "count": []})
        )
    for frame in (volume, nulls, values):
        frame["day"] = pd.to_datetime(frame["day"])
    return TableProfile(
        table=contract.table,
        drop_id=drop_id,
        as_of=as_of,
        time_column=tcol,
        rows=rows,
        quarantined=quarantined,
        volume=volume,
        nulls=nulls,
        values=values,
        edges={k: v for k, v in edges.items() if any(c.name == k for c in profiled)},
        summary=summary,
    )


def save_profile(settings: Settings, profile: TableProfile) -> Path:
    """Write a profile under the home (a folder moved into place whole); return its folder."""
    root = profile_root(settings) / profile.table
    final = root / profile.drop_id
    tmp = root / f".{profile.drop_id}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    profile.volume.to_parquet(tmp / "volume.parquet", index=False)
    profile.nulls.to_parquet(tmp / "nulls.parquet", index=False)
    profile.values.to_parquet(tmp / "values.parquet", index=False)
    meta = {
        "version": PROFILE_VERSION,
        "table": profile.table,
        "drop_id": profile.drop_id,
        "as_of": profile.as_of.isoformat(),
        "time_column": profile.time_column,
        "rows": profile.rows,
        "quarantined": profile.quarantined,
        "edges": profile.edges,
        "columns": profile.summary,
    }
    write_text_atomically(tmp / "profile.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def load_profile(folder: Path) -> TableProfile:
    """A profile written by `save_profile`."""
    meta = json.loads((folder / "profile.json").read_text(encoding="utf-8"))
    return TableProfile(
        table=meta["table"],
        drop_id=meta["drop_id"],
        as_of=dt.date.fromisoformat(meta["as_of"]),
        time_column=meta["time_column"],
        rows=int(meta["rows"]),
        quarantined=int(meta["quarantined"]),
        volume=pd.read_parquet(folder / "volume.parquet"),
        nulls=pd.read_parquet(folder / "nulls.parquet"),
        values=pd.read_parquet(folder / "values.parquet"),
        edges={k: [float(x) for x in v] for k, v in meta["edges"].items()},
        summary=meta["columns"],
    )


def stored_profiles(settings: Settings, table: str) -> list[TableProfile]:
    """A table's stored profiles, oldest drop first."""
    root = profile_root(settings) / table
    if not root.is_dir():
        return []
    found = [load_profile(p) for p in root.iterdir() if p.is_dir() and (p / "profile.json").is_file()]
    return sorted(found, key=lambda p: (p.as_of, p.drop_id))


# --------------------------------------------------------------------------------------------
# Checks (pure: profiles in, anomalies out)


@dataclass
class _Flag:
    """A period found anomalous (`index` -1: a period judged and found normal, which ends a run)."""

    index: int
    observed: float
    expected: float
    high: bool
    direction: str
    detail: str


def _periods(first: dt.date, profile: TableProfile, weekly: bool, settle_days: int) -> pd.DatetimeIndex:
    """Every period from `first` to the last settled one (weeks start on Monday and must be complete)."""
    settled = profile.last_day - dt.timedelta(days=settle_days)
    if not weekly:
        return pd.date_range(first, settled, freq="D") if first <= settled else pd.DatetimeIndex([])
    start = first - dt.timedelta(days=first.weekday())
    end = settled - dt.timedelta(days=6)
    last_start = end - dt.timedelta(days=end.weekday())
    return pd.date_range(start, last_start, freq="7D") if start <= last_start else pd.DatetimeIndex([])


def _combined(profile: TableProfile, earlier: Sequence[TableProfile], name: str) -> pd.DataFrame:
    """A profile frame, with the days before its first day taken from earlier drops (the newest first)."""
    own = getattr(profile, name).dropna(subset=["day"])
    pieces = [own]
    cutoff = own["day"].min() if len(own) else pd.Timestamp.max
    for h in reversed(earlier):
        older = getattr(h, name).dropna(subset=["day"])
        older = older[older["day"] < cutoff]
        if len(older):
            pieces.append(older)
            cutoff = older["day"].min()
    return pd.concat(pieces, ignore_index=True) if len(pieces) > 1 else own


def _floor(days: pd.Series, weekly: bool) -> pd.Series:
    if not weekly:
        return days
    return days - pd.to_timedelta(days.dt.weekday, unit="D")


def _series(frame: pd.DataFrame, index: pd.DatetimeIndex, weekly: bool, value: str, by: list[str]) -> pd.DataFrame:
    """`value` summed per period (and per `by`), periods as rows, zero where nothing was seen."""
    f = frame.dropna(subset=["day"]).assign(day=lambda d: _floor(d["day"], weekly))
    if by:
        wide = f.groupby(["day", *by])[value].sum().unstack(by, fill_value=0)
    else:
        wide = f.groupby("day")[[value]].sum()
    return wide.reindex(index, fill_value=0).astype(float)


def _history(policy: AnomalyPolicy, weekly: bool) -> tuple[int, int]:
    """How many earlier periods a check looks back over, and how many it needs (days, or weeks for weekly tables)."""
    if weekly:
        return policy.history_days // 7, policy.min_history_days // 7
    return policy.history_days, policy.min_history_days


def _window(i: int, span: int, flagged: np.ndarray, available: np.ndarray) -> np.ndarray:
    """The last `span` periods before `i` that hold rows and were not found anomalous."""
    return np.flatnonzero(~flagged[:i] & available[:i])[-span:]


def _volume_flags(
    counts: np.ndarray,
    dow: np.ndarray,
    judge: np.ndarray,
    previous: np.ndarray | None,
    weekly: bool,
    policy: AnomalyPolicy,
) -> list[_Flag]:
    """Per judged period, the count against the trailing level (or the previous drop's count of that period)."""
    span, need = _history(policy, weekly)
    vp = policy.volume
    logs = np.log1p(counts)
    flagged = np.zeros(len(counts), bool)
    available = np.ones(len(counts), bool)
    out = []
    for i in np.flatnonzero(judge).tolist():
        if previous is not None and not np.isnan(previous[i]):
            expected_log = math.log1p(previous[i])
            scale = 0.0
            detail = "the previous drop's count of the same " + ("week" if weekly else "day")
        else:
            w = _window(i, span, flagged, available)
            if len(w) < need:
                continue
            level = float(np.median(logs[w]))
            effect = 0.0
            if not weekly:
                same = w[dow[w] == dow[i]]
                if len(same) >= 3:
                    effect = float(np.median(logs[same]) - level)
            resid = logs[w] - level
            if not weekly:
                for d in range(7):
                    m = dow[w] == d
                    if m.sum() >= 3:
                        resid[m] = logs[w][m] - float(np.median(logs[w][m]))
            expected_log = level + effect
            scale = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
            detail = f"the {'same weekday' if not weekly else 'weekly'} level of the {len(w)} earlier " + (
                "weeks" if weekly else "days"
            )
        expected = math.expm1(expected_log)
        sd = max(scale, 1.0 / math.sqrt(expected + 1.0), 0.02)
        z = (logs[i] - expected_log) / sd
        obs = float(counts[i])
        low = obs * vp.min_ratio <= expected
        high_side = obs >= expected * vp.min_ratio
        if abs(z) >= vp.z and (low or high_side) and expected >= 1:
            flagged[i] = True
            ratio = (expected + 1) / (obs + 1) if low else (obs + 1) / (expected + 1)
            out.append(_Flag(i, obs, expected, obs == 0 or ratio >= vp.high_ratio, "low" if low else "high", detail))
        elif not (low or high_side):  # within the factor: normal (a large factor without significance is not)
            out.append(_Flag(i, obs, expected, False, "", ""))
    return out


def _null_flags(
    rows: np.ndarray,
    nulls: np.ndarray,
    judge: np.ndarray,
    prev_rows: np.ndarray | None,
    prev_nulls: np.ndarray | None,
    weekly: bool,
    policy: AnomalyPolicy,
) -> list[_Flag]:
    """Per judged period, the empty share against the history's (or the previous drop's same period)."""
    span, need = _history(policy, weekly)
    npol = policy.null_rate
    flagged = np.zeros(len(rows), bool)
    available = rows > 0
    out = []
    for i in np.flatnonzero(judge & (rows >= npol.min_rows)).tolist():
        if prev_rows is not None and prev_nulls is not None and prev_rows[i] >= npol.min_rows:
            base_n, base_k = float(prev_rows[i]), float(prev_nulls[i])
            detail = "the previous drop's share for the same " + ("week" if weekly else "day")
        else:
            w = _window(i, span, flagged, available)
            if len(w) < need:
                continue
            base_n, base_k = float(rows[w].sum()), float(nulls[w].sum())
            detail = f"the share over the {len(w)} earlier " + ("weeks" if weekly else "days")
        p0 = min(max(base_k / base_n, 0.5 / base_n), 1 - 0.5 / base_n)
        n, k = float(rows[i]), float(nulls[i])
        # Quasi-binomial: empty values come in clumps (a batch of store sign-ups without email), so the
        # history's own spread beyond binomial noise widens the band.
        dispersion = 1.0
        if detail.startswith("the share over"):
            n_w = rows[w]
            resid = (nulls[w] - n_w * p0) ** 2 / (n_w * p0 * (1 - p0))
            dispersion = max(1.0, float(np.mean(resid)))
        if k / n - p0 >= npol.min_increase and _binomial_tail(k, n, p0, dispersion) <= norm.sf(npol.z):
            flagged[i] = True
            out.append(_Flag(i, k / n, base_k / base_n, k == n or k / n - p0 >= npol.high_increase, "high", detail))
        elif k / n - p0 < npol.min_increase:  # a small rise is normal; a large one on few rows is inconclusive
            out.append(_Flag(i, k / n, base_k / base_n, False, "", ""))
    return out


def _binomial_tail(k: float, n: float, p0: float, dispersion: float = 1.0) -> float:
    """P(X >= k) for X ~ Binomial(n, p0), exact: on few rows the normal approximation is far too bold.

    Counts are divided by the dispersion first (quasi-binomial).
    """
    n_eff, k_eff = n / dispersion, k / dispersion
    return float(binom.sf(math.ceil(k_eff) - 1, max(1, round(n_eff)), p0))


def _psi(current: np.ndarray, base: np.ndarray) -> float:
    c = (current + 0.5) / (current + 0.5).sum()
    b = (base + 0.5) / (base + 0.5).sum()
    return float(np.sum((c - b) * np.log(c / b)))


def _distribution_flags(
    counts: np.ndarray,
    judge: np.ndarray,
    previous: np.ndarray | None,
    weekly: bool,
    policy: AnomalyPolicy,
) -> list[_Flag]:
    """Per judged period, the PSI of its shares against the history's (or the previous drop's same period)."""
    span, need = _history(policy, weekly)
    dp = policy.distribution
    totals = counts.sum(axis=1)
    flagged = np.zeros(len(counts), bool)
    available = totals > 0
    out = []
    k = counts.shape[1]
    for i in np.flatnonzero(judge & (totals >= dp.min_rows)).tolist():
        if previous is not None and previous[i].sum() >= dp.min_rows:
            base = previous[i]
            detail = "the previous drop's shares for the same " + ("week" if weekly else "day")
        else:
            w = _window(i, span, flagged, available)
            if len(w) < need:
                continue
            base = counts[w].sum(axis=0)
            detail = f"the shares over the {len(w)} earlier " + ("weeks" if weekly else "days")
        if base.sum() < dp.min_rows:
            continue
        psi = _psi(counts[i], base)
        noise = (k - 1) * (1 / totals[i] + 1 / base.sum())
        if psi >= dp.psi and psi >= dp.noise_factor * noise:
            flagged[i] = True
            out.append(_Flag(i, psi, noise, psi >= dp.high_psi, "high", detail))
        elif psi < dp.psi:
            out.append(_Flag(i, psi, noise, False, "", ""))
    return out


def _runs(flags: list[_Flag]) -> list[tuple[_Flag, int, bool]]:
    """Anomalous periods in one direction merged, unless a period judged normal lies between them.

    (Periods too small or with too little history to judge do not break a run.) Returns (first flag,
    last index, any high).
    """
    runs: list[tuple[_Flag, int, bool]] = []
    open_run = False
    for f in sorted(flags, key=lambda f: f.index):
        if not f.direction:  # judged normal: the run ends
            open_run = False
            continue
        if open_run and runs[-1][0].direction == f.direction:
            first, _, high = runs[-1]
            runs[-1] = (first, f.index, high or f.high)
        else:
            runs.append((f, f.index, f.high))
            open_run = True
    return runs


def _span_text(first: dt.date, last: dt.date, weekly: bool) -> str:
    unit = "the week of " if weekly else ""
    if first == last:
        return f"{unit}{first}" if weekly else f"on {first}"
    return f"from {unit}{first} to {'the week of ' if weekly else ''}{last}"


def _prev_aligned(frame: pd.DataFrame | None, index: pd.DatetimeIndex, columns: pd.Index | None) -> np.ndarray | None:
    if frame is None:
        return None
    if columns is None:
        return frame.reindex(index).to_numpy()[:, 0]
    return frame.reindex(index=index, columns=columns).to_numpy()


def check_table(profile: TableProfile, history: Sequence[TableProfile], policy: AnomalyPolicy) -> list[Anomaly]:
    """The anomalies of one drop of a table against its earlier drops' profiles (oldest first)."""
    earlier = [h for h in history if (h.as_of, h.drop_id) < (profile.as_of, profile.drop_id)]
    prev = earlier[-1] if earlier else None
    t, d = profile.table, profile.drop_id
    out: list[Anomaly] = []

    def add(column: str | None, day: dt.date | None, until: dt.date | None, period: Period, kind: Kind,
            observed: float, expected: float, high: bool, message: str) -> None:  # fmt: skip
        out.append(Anomaly(d, t, column, day, until, period, kind, observed, expected,
                           "high" if high else "medium", message))  # fmt: skip

    if profile.rows == 0:
        add(None, None, None, "drop", "empty_table", 0, prev.rows if prev else 0, True,
            f"{t}: drop {d} landed no rows ({profile.quarantined} quarantined): check the export of {t} "
            f"before building features; `custintel quarantine {t}` lists the reasons")  # fmt: skip
        return out
    if prev is not None and prev.rows > 0 and profile.rows * policy.volume.drop_min_ratio <= prev.rows:
        add(None, None, None, "drop", "table_volume", profile.rows, prev.rows,
            profile.rows * policy.volume.high_ratio <= prev.rows,
            f"{t}: drop {d} holds {profile.rows:,} rows, the previous drop {prev.drop_id} held {prev.rows:,}: "
            "check whether the export was cut short or filtered")  # fmt: skip
    if prev is not None and prev.rows + prev.quarantined > 0:
        n, k = profile.rows + profile.quarantined, profile.quarantined
        base_n, base_k = prev.rows + prev.quarantined, prev.quarantined
        p0 = min(max(base_k / base_n, 0.5 / base_n), 1 - 0.5 / base_n)
        if k / n - p0 >= policy.quarantine_increase and _binomial_tail(k, n, p0) <= norm.sf(policy.null_rate.z):
            add(None, None, None, "drop", "quarantine_rate", round(k / n, 4), round(base_k / base_n, 4),
                k / n - p0 >= policy.null_rate.high_increase,
                f"{t}: {k / n:.0%} of drop {d}'s rows were quarantined against {base_k / base_n:.0%} in the previous "
                f"drop {prev.drop_id}: `custintel quarantine {t}` lists the reasons; fix the export or the "
                "contract before features are built")  # fmt: skip
    if profile.time_column is None:
        out += _check_totals(profile, prev, policy)
        return out

    daily = profile.volume.dropna(subset=["day"])
    if daily.empty:
        return out
    settings = policy.table(t)
    weekly = settings.period == "week" or (
        settings.period == "auto" and bool(daily["rows"].median() < policy.min_daily_rows)
    )
    volume_frame = _combined(profile, earlier, "volume")
    settle = policy.settle_days if settings.settle_days is None else settings.settle_days
    index = _periods(volume_frame["day"].min().date(), profile, weekly, settle)
    if len(index) == 0:
        return out
    own_first = _floor(daily["day"], weekly).min()
    vol = _series(volume_frame, index, weekly, "rows", [])
    counts = vol["rows"].to_numpy()
    prev_settled = None
    if prev is not None and prev.time_column is not None:
        prev_settled = pd.Timestamp(prev.last_day - dt.timedelta(days=settle))
    overlap = (index + pd.Timedelta(days=6 if weekly else 0) <= prev_settled) if prev_settled is not None else None
    judge = np.asarray(index >= own_first)
    if prev is None and policy.first_drop_days is not None:
        # A table's first drop: its recent days are judged, its older days are their history.
        recent = pd.Timestamp(profile.last_day - dt.timedelta(days=settle + policy.first_drop_days))
        judge &= np.asarray(index > recent)
    dow = np.asarray(index.dayofweek)
    unit = "week" if weekly else "day"
    period: Period = "week" if weekly else "day"

    def prev_only(frame: pd.DataFrame | None) -> pd.DataFrame | None:
        if frame is None or overlap is None:
            return None
        return frame.where(pd.Series(overlap, index=frame.index), other=np.nan, axis=0)

    prev_vol = None
    if prev is not None and prev_settled is not None:
        prev_vol = prev_only(_series(prev.volume, index, weekly, "rows", []))
    volume_flags = (
        _volume_flags(counts, dow, judge, _prev_aligned(prev_vol, index, None), weekly, policy)
        if "volume" in settings.checks
        else []
    )
    # A period whose row count is anomalous is not judged for empty values or shares: its rows are
    # already suspect, and a replayed batch would read as a distribution move of its own.
    judge_values = judge.copy()
    judge_values[[f.index for f in volume_flags if f.direction]] = False
    for f, last, high in _runs(volume_flags):
        first_day, last_day = index[f.index].date(), index[last].date() + dt.timedelta(days=6 if weekly else 0)
        what = "no rows" if f.observed == 0 else f"{f.observed:,.0f} rows"
        direction = "below" if f.direction == "low" else "above"
        advice = (
            "check the source system's export and its loading job for the gap, and re-export the missing rows"
            if f.direction == "low"
            else "check for duplicated loads or a replayed batch before features count these rows"
        )
        add(None, first_day, last_day, period, "volume", f.observed, round(f.expected, 1), high,
            f"{t}: {what} per {unit} {_span_text(first_day, last_day, weekly)} (by {profile.time_column}), "
            f"{direction} the {f.expected:,.0f} expected from {f.detail}: {advice}")  # fmt: skip

    null_frame = _combined(profile, earlier, "nulls")
    nulls = _series(null_frame, index, weekly, "nulls", ["column"])
    rows = _series(null_frame, index, weekly, "rows", ["column"])
    prev_nulls = prev_rows = None
    if prev_settled is not None and prev is not None and len(prev.nulls):
        prev_nulls = prev_only(_series(prev.nulls, index, weekly, "nulls", ["column"]))
        prev_rows = prev_only(_series(prev.nulls, index, weekly, "rows", ["column"]))
    for col in nulls.columns if "null_rate" in settings.checks else []:
        if col in settings.lifecycle_columns:
            continue
        pn = prev_nulls[col].to_numpy() if prev_nulls is not None and col in prev_nulls.columns else None
        pr = prev_rows[col].to_numpy() if prev_rows is not None and col in prev_rows.columns else None
        if pr is not None:
            pr = np.nan_to_num(pr, nan=0.0)
        n_rows, n_nulls = rows[col].to_numpy(), nulls[col].to_numpy()
        flags = _null_flags(n_rows, n_nulls, judge_values, pr, pn, weekly, policy)
        for f, last, high in _runs(flags):
            start = f.index
            if f.observed >= 1:  # an emptied column: its run starts with the periods before it that were
                # empty too, or (the period it began in) emptier than the history by the minimum rise
                floor = f.expected + policy.null_rate.min_increase
                while start > 0 and judge_values[start - 1] and n_rows[start - 1] > 0:
                    if n_nulls[start - 1] < n_rows[start - 1]:
                        if n_nulls[start - 1] / n_rows[start - 1] >= floor:
                            start -= 1
                        break
                    start -= 1
            f = _Flag(start, f.observed, f.expected, f.high, f.direction, f.detail)
            first_day, last_day = index[f.index].date(), index[last].date() + dt.timedelta(days=6 if weekly else 0)
            gone = "is empty in every row" if f.observed >= 1 else f"is empty in {f.observed:.0%} of rows"
            add(str(col), first_day, last_day, period, "null_rate", round(f.observed, 4), round(f.expected, 4), high,
                f"{t}.{col} {gone} {_span_text(first_day, last_day, weekly)}, against {f.expected:.0%} in "
                f"{f.detail}: check whether the source system stopped filling {col} or its export mapping "
                "changed")  # fmt: skip

    if len(profile.values) and "distribution" in settings.checks:
        value_frame = _combined(profile, earlier, "values")
        for key, part in value_frame.groupby("column"):
            col = str(key)
            if col not in set(profile.values["column"]):
                continue
            wide = _series(part, index, weekly, "count", ["bucket"])
            previous = None
            if prev_settled is not None and prev is not None and len(prev.values):
                prev_part = prev.values[prev.values["column"] == col]
                if len(prev_part) and (prev.edges.get(str(col)) == profile.edges.get(str(col))):
                    aligned = prev_only(_series(prev_part, index, weekly, "count", ["bucket"]))
                    previous = _prev_aligned(aligned, index, wide.columns)
                    if previous is not None:
                        previous = np.nan_to_num(previous, nan=0.0)
            flags = _distribution_flags(wide.to_numpy(), judge_values, previous, weekly, policy)
            for f, last, high in _runs(flags):
                first_day, last_day = index[f.index].date(), index[last].date() + dt.timedelta(days=6 if weekly else 0)
                add(str(col), first_day, last_day, period, "distribution", round(f.observed, 4), round(f.expected, 4),
                    high, f"{t}.{col}: its values moved {_span_text(first_day, last_day, weekly)} (PSI "
                    f"{f.observed:.2f} against {f.detail}; noise alone gives about {f.expected:.3f}): check for a "
                    "new code, a changed mapping or a unit change in the source")  # fmt: skip
    return out


def _check_totals(profile: TableProfile, prev: TableProfile | None, policy: AnomalyPolicy) -> list[Anomaly]:
    """A table without a time column: each column's empty share and shares against the previous drop's."""
    if prev is None or prev.rows == 0:
        return []
    t, d = profile.table, profile.drop_id
    out: list[Anomaly] = []
    npol, dp = policy.null_rate, policy.distribution
    cur = profile.nulls.groupby("column")[["rows", "nulls"]].sum()
    old = prev.nulls.groupby("column")[["rows", "nulls"]].sum()
    for col in cur.index.intersection(old.index):
        n, k = float(cur.loc[col, "rows"]), float(cur.loc[col, "nulls"])
        bn, bk = float(old.loc[col, "rows"]), float(old.loc[col, "nulls"])
        if n < npol.min_rows or bn == 0:
            continue
        p0 = min(max(bk / bn, 0.5 / bn), 1 - 0.5 / bn)
        if k / n - p0 >= npol.min_increase and _binomial_tail(k, n, p0) <= norm.sf(npol.z):
            high = k == n or k / n - p0 >= npol.high_increase
            out.append(Anomaly(d, t, str(col), None, None, "drop", "null_rate", round(k / n, 4), round(bk / bn, 4),
                               "high" if high else "medium",
                               f"{t}.{col} is empty in {k / n:.0%} of rows against {bk / bn:.0%} in the previous drop "
                               f"{prev.drop_id}: check whether the source stopped filling {col}"))  # fmt: skip
    for key, part in profile.values.groupby("column"):
        col = str(key)
        base = prev.values[prev.values["column"] == col].groupby("bucket")["count"].sum()
        now = part.groupby("bucket")["count"].sum()
        keys = now.index.union(base.index)
        c, b = now.reindex(keys, fill_value=0).to_numpy(float), base.reindex(keys, fill_value=0).to_numpy(float)
        if c.sum() < dp.min_rows or b.sum() < dp.min_rows or prev.edges.get(str(col)) != profile.edges.get(str(col)):
            continue
        psi = _psi(c, b)
        noise = (len(keys) - 1) * (1 / c.sum() + 1 / b.sum())
        if psi >= dp.psi and psi >= dp.noise_factor * noise:
            out.append(Anomaly(d, t, str(col), None, None, "drop", "distribution", round(psi, 4), round(noise, 4),
                               "high" if psi >= dp.high_psi else "medium",
                               f"{t}.{col}: its values moved against the previous drop {prev.drop_id} (PSI {psi:.2f}): "
                               "check for a new code, a changed mapping or a unit change in the source"))  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------
# The step a flow calls before features are built


def _drop_date(drop_id: str) -> dt.date:
    try:
        return dt.datetime.strptime(drop_id.split("-", 1)[0], "%Y%m%d").date()
    except ValueError:
        return dt.date.min


def _quarantined(settings: Settings, table: str, folder: str | None) -> int:
    """Rows of a table's drop kept in quarantine (rejected by a check, or a later copy of a key)."""
    if folder is None:
        return 0
    root = settings.quarantine_dir / table / folder
    files = [*sorted(root.glob("rows-*.parquet")), *sorted(root.glob("duplicates.parquet"))]
    return sum(pq.ParquetFile(p).metadata.num_rows for p in files)


def profile_lake(settings: Settings, policy: AnomalyPolicy, manifest: LakeManifest | None = None) -> list[str]:
    """Profile every committed drop of every table that has no profile yet; return what was profiled."""
    manifest = manifest or read_manifest(settings)
    done = []
    for table, partitions in sorted(manifest.tables.items()):
        contract = lake_contract(settings, table, manifest)
        have = {p.drop_id: p for p in stored_profiles(settings, table)}
        edges: dict[str, list[float]] = {}
        for p in sorted(have.values(), key=lambda p: (p.as_of, p.drop_id)):
            edges = {**p.edges, **edges}
        for part in sorted(partitions, key=lambda p: (_drop_date(p.drop_id), p.drop_id)):
            if part.drop_id in have:
                continue
            data = settings.lake_dir / table / part.lake / "data.parquet"
            profile = profile_table(
                [data], contract, part.drop_id, _drop_date(part.drop_id), policy,
                _quarantined(settings, table, part.quarantine), edges,
            )  # fmt: skip
            save_profile(settings, profile)
            edges = {**profile.edges, **edges}
            done.append(f"{table}@{part.drop_id}")
    return done


def _report_key(manifest: LakeManifest, policy: AnomalyPolicy) -> str:
    drops = {t: sorted(p.drop_id for p in parts) for t, parts in sorted(manifest.tables.items())}
    text = json.dumps({"drops": drops, "policy": policy.model_dump(mode="json"), "version": PROFILE_VERSION})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _saved_report(settings: Settings, key: str) -> AnomalyReport | None:
    latest = anomalies_dir(settings) / "latest.json"
    try:
        data = json.loads(latest.read_text(encoding="utf-8"))
        return AnomalyReport.from_dict(data) if data.get("key") == key else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_sources(settings: Settings, policy: AnomalyPolicy | None = None, reuse: bool = True) -> AnomalyReport:
    """Profile what the lake holds and check the newest drop of each table against its history.

    Called by the feature flow before anything is built: the report's `action` is `stop` when the
    policy says so and an anomaly of a stopping severity was found. `reuse`: when the lake's drops and
    the policy are those of the saved report (`save_anomaly_report`), that report is returned as it is.
    """
    policy = policy or load_anomaly_policy()
    manifest = read_manifest(settings)
    if not manifest.tables:
        raise AnomalyError(f"nothing has been ingested into {settings.lake_dir}: run `custintel ingest` first")
    key = _report_key(manifest, policy)
    if reuse and (saved := _saved_report(settings, key)) is not None:
        return saved
    profile_lake(settings, policy, manifest)
    report = AnomalyReport(key=key)
    newest = max((_drop_date(p.drop_id), p.drop_id) for parts in manifest.tables.values() for p in parts)
    for table, partitions in sorted(manifest.tables.items()):
        history = stored_profiles(settings, table)
        if not history:
            continue
        current = history[-1]
        report.drops[table] = current.drop_id
        if current.drop_id != newest[1] and newest[1] not in {p.drop_id for p in partitions}:
            report.anomalies.append(
                Anomaly(
                    newest[1],
                    table,
                    None,
                    None,
                    None,
                    "drop",
                    "missing_table",
                    0,
                    current.rows,
                    "high",
                    f"{table}: the newest drop {newest[1]} has no {table} (its newest rows are from drop "
                    f"{current.drop_id}): features will use stale {table} rows; check that the export of "
                    f"{table} ran",
                )  # fmt: skip
            )
            continue
        if current.time_column is None and len(history) == 1:
            report.notes.append(
                f"{table}: no time column, so only its totals are profiled; they are compared from its next drop on"
            )
        try:
            report.anomalies += check_table(current, history[:-1], policy)
        except (KeyError, ValueError, IngestError) as exc:  # a profile that does not fit: named, never a traceback
            report.notes.append(f"{table}: not checked: {exc}")
    return apply_policy(report, policy)


def anomalies_dir(settings: Settings) -> Path:
    """Where the checks' reports are kept: `latest.json`, and one line per check in `history.jsonl`."""
    return settings.home_dir / "insights" / "anomalies"


def save_anomaly_report(settings: Settings, report: AnomalyReport) -> Path:
    """Write the report as `latest.json` and append it to `history.jsonl`; return `latest.json`.

    `latest.json` is what the operations page shows as open alerts.
    """
    folder = anomalies_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    latest = folder / "latest.json"
    if report.key and _saved_report(settings, report.key) is not None:
        return latest  # the same drops under the same policy: already saved
    data = {"checked_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **report.to_dict()}
    write_text_atomically(latest, json.dumps(data, indent=2, sort_keys=True) + "\n")
    with open(folder / "history.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(data, sort_keys=True) + "\n")
    return latest


def latest_anomaly_report(settings: Settings) -> AnomalyReport | None:
    """The last saved check (`save_anomaly_report`), or None when sources were never checked."""
    latest = anomalies_dir(settings) / "latest.json"
    if not latest.is_file():
        return None
    return AnomalyReport.from_dict(json.loads(latest.read_text(encoding="utf-8")))


def page_rows(report: AnomalyReport) -> list[PageAnomaly]:
    """The anomalies as the operations report's rows (severity high -> critical, medium -> warning)."""
    return [
        PageAnomaly(
            table=a.table,
            column=a.column,
            day=a.day.isoformat() if a.day else None,
            kind=a.kind,
            observed=a.observed,
            expected=a.expected,
            severity="critical" if a.severity == "high" else "warning",
            message=a.message,
        )
        for a in report.anomalies
    ]


def raise_if_stopped(report: AnomalyReport) -> AnomalyReport:
    """The report, unless the policy says stop: then `SourcesStopped` naming the anomalies."""
    if report.stop:
        raise SourcesStopped(report)
    return report


def apply_policy(report: AnomalyReport, policy: AnomalyPolicy) -> AnomalyReport:
    """The report with acknowledged anomalies set aside and the verdict the policy gives (warn or stop)."""
    found = report.anomalies + [a for a, _ in report.acknowledged]
    out = AnomalyReport(drops=dict(report.drops), notes=list(report.notes), key=report.key)
    for a in found:
        ack = next((k for k in policy.acknowledged if k.covers(a)), None)
        if ack is None:
            out.anomalies.append(a)
        else:
            out.acknowledged.append((a, ack.reason))
    stops = [a for a in out.anomalies if a.severity in policy.stop_on]
    if policy.action == "stop" and stops:
        out.action = "stop"
    elif out.anomalies:
        out.action = "warn"
    return out
