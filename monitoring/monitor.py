"""One monitoring pass over one served model: read, compare, judge, report.

The I/O edges (registry, reference, inference log, labels, lake, report files, Evidently
workspace, MLflow) are small functions here; the judgement is pure (`monitoring.drift`,
`monitoring.checks`, `monitoring.triggers`). `flows/monitor.py` wraps each family's pass in a
Prefect task and starts the retraining chain for the families whose decision is `retrain`.

Per family, what is compared:
- churn: every model input (reference: the newest training cutoff in the champion's logged rows,
  `monitoring/reference.parquet` of its run, each input's threshold raised by its natural movement
  measured on the earlier logged cutoffs: `monitoring.baseline`), the calibrated score (the
  champion's scores of those rows, judged the same way), and, once labels arrived for the served
  rows' cutoffs, AUC / Brier / calibration / precision at the recorded threshold against the run's
  test figures;
- propensity: every customer-level input (its answers are ranked products, not one score);
- recommendation: no input row; its age, and what it recommended (fallback share, top items).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from custintel.json_lines import json_lines
from custintel.settings import Settings
from features.data_classes import without_direct_identifiers
from features.featurestore.offline import available_as_of, read_offline
from features.featurestore.store import offline_root
from features.lake import lake_files
from models.registry import Registry
from monitoring import reports
from monitoring.baseline import Baseline, compare_window, select_reference, served_cutoff
from monitoring.checks import QualityFinding, data_quality, null_shares, performance
from monitoring.drift import ColumnDrift, DatasetDrift, Kind, column_kinds
from monitoring.outcomes import monitor_outcomes, with_outcomes
from monitoring.policy import MonitoringPolicy
from monitoring.served import ServedWindow, read_served
from monitoring.triggers import Evidence, TriggerDecision, decide
from serving.inference_log import log_key

log = logging.getLogger("custintel.monitoring")
CHAMPION = "champion"
LABELS = "labels@1"
PREDICTION = reports.PREDICTION


class MonitoringError(RuntimeError):
    """Monitoring cannot run for a model; the message says why."""


@dataclass(frozen=True)
class Champion:
    """The served version of a family and what it was trained on."""

    family: str
    name: str
    version: str
    run_id: str
    registered_at: dt.datetime
    last_cutoff: dt.date | None
    horizon_days: int | None
    threshold: float | None
    test_metrics: dict[str, float]
    # column -> data class, from the run's lineage: no direct identifier reaches a sample or a report
    data_classes: dict[str, str] = field(default_factory=dict)


@dataclass
class MonitoringRun:
    """One family's pass: the decision, the summary written beside it, and the files."""

    champion: Champion
    decision: TriggerDecision
    summary: dict[str, Any]
    files: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


# --- reading ------------------------------------------------------------------------------------------------------


def model_name(settings: Settings, family: str) -> str:
    """The registered model a family is served as (the training config's name)."""
    return Registry(settings).registered_names()[family]


def read_champion(registry: Registry, family: str, name: str) -> Champion | None:
    """The @champion of a registered model and its run's cutoffs, horizon, threshold and test figures."""
    version = registry.alias_version(name, CHAMPION)
    if version is None:
        return None
    mv = registry.version(name, version)
    run = registry.run(mv.run_id) if mv.run_id else None
    lineage = registry.read_run_json(mv.run_id, "lineage/lineage.json") if mv.run_id else {}
    cutoffs = [dt.date.fromisoformat(d) for d in lineage.get("as_of", [])]
    horizon = (lineage.get("config") or {}).get("horizon_days") or (lineage.get("label") or {}).get("horizon_days")
    metrics = dict(run.metrics) if run else {}
    return Champion(
        family=family,
        name=name,
        version=version,
        run_id=str(mv.run_id),
        registered_at=mv.created or dt.datetime.now(dt.UTC),
        last_cutoff=max(cutoffs) if cutoffs else None,
        horizon_days=int(horizon) if horizon else None,
        threshold=metrics.get("threshold"),
        test_metrics={k.removeprefix("test_"): float(v) for k, v in metrics.items() if k.startswith("test_")},
        data_classes=dict(lineage.get("data_classes") or {}),
    )


def load_reference(registry: Registry, champion: Champion) -> pd.DataFrame:
    """The champion's monitoring reference; for a run from before monitoring, its logged test rows."""
    reference = registry.read_reference(champion.run_id)
    if reference is not None:
        return reference
    evaluation = registry.read_evaluation_set(champion.run_id)
    if evaluation is None or not evaluation.features:
        raise MonitoringError(
            f"{champion.name} v{champion.version}: its run {champion.run_id} logged no monitoring reference and no "
            "test rows; retrain it with this version of custintel"
        )
    keys = [c for c in ("customer_key", "as_of") if c in evaluation.frame.columns]
    columns = [c for c in evaluation.features if c != "product_id"]
    return evaluation.frame.drop_duplicates(subset=keys or None)[keys + columns].reset_index(drop=True)


def load_model(registry: Registry, champion: Champion) -> Any:
    """The champion's scikit-learn model, as the service loads it."""
    return registry.load_model(champion.name, champion.version, "sklearn")


def observed_until(settings: Settings) -> dt.date | None:
    """The end of the observed data: the newest drop's as-of over every lake table."""
    files = lake_files(settings)
    if not files:
        return None
    with duckdb.connect() as con:
        row = con.execute(
            f"SELECT max(_drop_as_of) FROM read_parquet({[str(f) for f in files]!r}, union_by_name = true)"
        ).fetchone()
    value = row[0] if row else None
    if value is None:
        return None
    return value.date() if isinstance(value, dt.datetime) else value


def new_labelled_months(last_cutoff: dt.date | None, horizon_days: int | None, until: dt.date | None) -> int:
    """Monthly cutoffs after the champion's last one whose labels (cutoff + horizon) are fully observed."""
    if last_cutoff is None or horizon_days is None or until is None:
        return 0
    months, day = 0, last_cutoff
    while True:
        total = day.year * 12 + day.month  # the first day of the next month
        day = dt.date(total // 12, total % 12 + 1, 1)
        if day + dt.timedelta(days=horizon_days) > until:
            return months
        months += 1


def read_labels(settings: Settings, as_of: list[dt.date], column: str) -> pd.DataFrame:
    """Observed labels (`customer_key`, `as_of`, `label`) at the cutoffs the offline store holds."""
    root = offline_root(settings)
    try:
        stored = set(available_as_of(root, LABELS))
    except Exception:  # noqa: BLE001 - no label set yet: no labels
        return pd.DataFrame(columns=["customer_key", "as_of", "label"])
    days = sorted(set(as_of) & stored)
    if not days:
        return pd.DataFrame(columns=["customer_key", "as_of", "label"])
    table = read_offline(root, LABELS, days).to_pandas()
    if column not in table.columns:
        raise MonitoringError(f"{LABELS} has no column {column!r}")
    out = table[["customer_key", "as_of", column]].rename(columns={column: "label"})
    out["as_of"] = pd.to_datetime(out["as_of"]).dt.date
    return out[out["label"].notna()]


def log_keys(rule: str, salt: str, keys: pd.Series) -> pd.Series:
    """Customer keys as the inference log keeps them (`serving.runtime.log_key` of each)."""
    return keys.astype(str).map(lambda k: log_key(rule, salt, k))


def last_retrain(decisions_path: Path, family: str) -> dt.datetime | None:
    """When the family last started a retrain, from the decision log."""
    if not decisions_path.is_file():
        return None
    latest = None
    for line in json_lines(decisions_path):
        entry = json.loads(line)
        if entry.get("family") == family and entry.get("action") == "retrain":
            latest = dt.datetime.fromisoformat(entry["at"])
    return latest


def append_decision(decisions_path: Path, entry: dict[str, Any]) -> None:
    """Append one decision to the log (one JSON line)."""
    decisions_path.parent.mkdir(parents=True, exist_ok=True)
    with decisions_path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, default=str) + "\n")


# --- comparing ----------------------------------------------------------------------------------------------------


def score_rows(model: Any, frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """The champion's calibrated scores of rows (integer inputs as doubles, as the signature serves them)."""
    x = frame[columns].copy()
    ints = [c for c in columns if pd.api.types.is_integer_dtype(x[c])]
    x = x.astype(dict.fromkeys(ints, "float64"))
    return np.asarray(model.predict_proba(x))[:, 1]


def _answer_columns(family: str) -> dict[str, str]:
    if family == "churn":
        return {
            PREDICTION: "TRY_CAST(answer->>'score' AS DOUBLE)",
            "decision": "TRY_CAST(answer->>'decision' AS BOOLEAN)",
        }
    if family == "recommendation":
        return {
            "items": "TRY_CAST(answer->'items' AS VARCHAR[])",
            "fallback": "TRY_CAST(answer->>'fallback' AS BOOLEAN)",
        }
    return {"top_product": "answer->'products'->0->>'product_id'"}


def _tests(policy: MonitoringPolicy, columns: list[str]) -> dict[str, tuple[str, float | None]]:
    tests: dict[str, tuple[str, float | None]] = {}
    for c in [*columns, PREDICTION]:
        t = policy.drift.test_for(c)
        tests[c] = (t.method, t.threshold)
    return tests


def _recommendation_figures(window: ServedWindow) -> dict[str, Any]:
    frame = window.frame
    if frame.empty:
        return {}
    items = pd.Series([i for row in frame["items"].dropna() for i in row])
    return {
        "fallback_share": float(frame["fallback"].fillna(False).mean()),
        "top_items": items.value_counts().head(10).to_dict(),
        "distinct_items": int(items.nunique()),
    }


def monitor_family(
    settings: Settings,
    policy: MonitoringPolicy,
    family: str,
    start: dt.datetime,
    end: dt.datetime,
    now: dt.datetime,
    serving_rule: tuple[str, str],
) -> MonitoringRun | None:
    """Compare one family's served window with its champion's training; judge and report. None: nothing served."""
    clock: dict[str, float] = {}
    t = time.perf_counter()
    registry = Registry(settings)
    name = registry.registered_names()[family]
    champion = read_champion(registry, family, name)
    if champion is None:
        return None
    rules = policy.family(family)
    tests: dict[str, tuple[str, float | None]] = {}
    logged = reference = pd.DataFrame()
    columns: list[str] = []
    kinds: dict[str, Kind] = {}
    if family != "recommendation":
        # Samples and reports are made from these columns: no direct identifier among them.
        logged = without_direct_identifiers(load_reference(registry, champion), champion.data_classes)
        columns = [c for c in logged.columns if c not in ("customer_key", "as_of")]
        kinds = column_kinds(logged, columns)
        tests = _tests(policy, columns)
        reference = select_reference(logged, policy.drift)
    clock["reference"] = time.perf_counter() - t
    t = time.perf_counter()
    inputs = {c: logged[c].dtype for c in columns}
    window = read_served(settings.inference_log_dir, name, start, end, inputs, _answer_columns(family))
    window.frame = window.frame[window.frame["version"].astype(str) == champion.version].reset_index(drop=True)
    window.frame = without_direct_identifiers(window.frame, champion.data_classes)
    clock["read_window"] = time.perf_counter() - t
    log.info("%s: %s v%s, %s served rows in the window", family, name, champion.version, f"{len(window.frame):,}")

    t = time.perf_counter()
    current = window.frame
    drift: DatasetDrift | None = None
    prediction: ColumnDrift | None = None
    baseline: Baseline | None = None
    quality: list[QualityFinding] = []
    quality_figures: dict[str, Any] = {}
    model = None
    enough = len(current) >= policy.drift.min_rows
    if columns:
        quality, quality_figures = data_quality(
            null_shares(reference, columns), current, window.absent_inputs, window.type_errors, policy.data_quality
        )
    if family == "churn":
        model = load_model(registry, champion)
        # Every logged cutoff is scored: the score's natural movement is measured like an input's.
        log.info("%s: scoring the champion's %s reference rows", family, f"{len(logged):,}")
        logged = logged.assign(**{PREDICTION: score_rows(model, logged, columns)})
    if columns and enough:
        compared = compare_window(
            logged, current, kinds, tests, policy.drift, served_cutoff(current) or end.date(),
            PREDICTION if family == "churn" else None,
        )  # fmt: skip
        baseline, drift, prediction = compared.baseline, compared.drift, compared.prediction
        reference = baseline.reference
    clock["drift"] = time.perf_counter() - t
    t = time.perf_counter()
    perf, labelled = None, None
    if family == "churn":
        perf, labelled = _performance(settings, champion, current, serving_rule)
    clock["prediction_and_performance"] = time.perf_counter() - t

    evidence = Evidence(
        family=family,
        model=name,
        version=champion.version,
        rows=len(current),
        min_rows=policy.drift.min_rows,
        drift=drift,
        prediction=prediction,
        quality=quality,
        performance=perf,
        model_age_days=(now - champion.registered_at).total_seconds() / 86400,
        last_retrain=last_retrain(settings.monitoring_dir / "decisions.jsonl", family),
        new_months=new_labelled_months(champion.last_cutoff, champion.horizon_days, observed_until(settings)),
        reference="" if baseline is None else baseline.describe(),
    )
    decision = decide(rules, policy.retrain, evidence, now)
    # What the decisions that read this version led to (issue 21): realised response and frontline feedback.
    outcomes = monitor_outcomes(settings, start, end, model=(name, champion.version))
    decision = with_outcomes(decision, outcomes)

    t = time.perf_counter()
    stem = f"{name}-v{champion.version}-{reports.stamp(now)}"
    folder = settings.reports_dir / "monitoring"
    files: list[Path] = []
    links: dict[str, str] = {}
    workspace_runs: list[str] = []
    if drift is not None and drift.columns:
        # Evidently refuses a column without a value on either side: it draws the columns we could test.
        tested = {c.column: kinds[c.column] for c in drift.columns}
        log.info("%s: writing the Evidently drift report (%d columns)", family, len(tested))
        # The baseline's tests: each column's method and threshold (natural movement included), so
        # Evidently's verdicts on the page are the ones the decision used.
        reference_sample = reports.sample_rows(reference, policy.report_rows, champion.data_classes)
        current_sample = reports.sample_rows(current, policy.report_rows, champion.data_classes)
        snapshot = reports.evidently_drift(
            reference_sample,
            current_sample,
            tested,
            baseline.tests if baseline is not None else tests,
            policy.drift.drift_share,
            with_prediction=prediction is not None,
        )
        folder.mkdir(parents=True, exist_ok=True)
        files += _save_snapshot(snapshot, folder / f"{stem}-evidently")
        members = {"reference": reference_sample, "served": current_sample}
        links["Evidently data drift report"] = f"{stem}-evidently.html"
        workspace_runs.append(
            reports.add_to_workspace(
                settings.monitoring_dir / "workspace", name, snapshot, f"v{champion.version} {stem}"
            )
        )
        if family == "churn" and labelled is not None and len(labelled) and labelled["label"].nunique() == 2:
            log.info("%s: writing the Evidently performance report (%s labelled rows)", family, f"{len(labelled):,}")
            snap = reports.evidently_performance(labelled, None, champion.threshold)
            members["labelled"] = labelled
            files += _save_snapshot(snap, folder / f"{stem}-performance")
            links["Evidently performance report (labelled served rows)"] = f"{stem}-performance.html"
            workspace_runs.append(
                reports.add_to_workspace(
                    settings.monitoring_dir / "workspace", name, snap, f"v{champion.version} {stem} performance"
                )
            )
        # Whose rows the Evidently reports drew on (keys only, local): what an erasure request looks them up by.
        reports.write_members(folder / f"{stem}-members.parquet", members)
    clock["reports"] = time.perf_counter() - t
    summary = {
        "family": family,
        "model": name,
        "version": champion.version,
        "run_id": champion.run_id,
        "stamp": reports.stamp(now),
        "at": now.isoformat(),
        "window": {"start": start.isoformat(), "end": end.isoformat()},
        "rows": len(current),
        "suppressed": window.suppressed,
        "reference_rows": len(reference),
        "reference": None if baseline is None else baseline.as_dict(),
        "policy_digest": policy.digest,
        "decision": decision.as_dict(),
        "drift": reports.drift_dict(drift),
        "prediction": None if prediction is None else prediction.as_dict(),
        "data_quality": quality_figures,
        "performance": None if perf is None else perf.as_dict(),
        "recommendations": _recommendation_figures(window) if family == "recommendation" else None,
        "outcomes": outcomes.as_dict() if outcomes.decisions else None,
        "new_labelled_months": evidence.new_months,
        "model_age_days": evidence.model_age_days,
        "links": links,
        "workspace_runs": workspace_runs,
        "seconds": {k: round(v, 3) for k, v in clock.items()},
    }
    page, data = reports.write_summary(folder, stem, summary)
    files = [page, data, *files]
    _log_to_mlflow(registry, champion, reports.stamp(now), files, decision)
    return MonitoringRun(champion, decision, summary, files, clock)


def _performance(
    settings: Settings, champion: Champion, current: pd.DataFrame, serving_rule: tuple[str, str]
) -> tuple[Any, pd.DataFrame | None]:
    """Churn's figures on the served rows whose labels have arrived (joined on the logged key)."""
    rule, salt = serving_rule
    if current.empty or rule == "omit" or champion.horizon_days is None or "as_of" not in current:
        return None, None
    served = current.dropna(subset=["customer", "as_of", PREDICTION])
    if served.empty:
        return None, None
    served = served.assign(as_of=pd.to_datetime(served["as_of"]).dt.date)
    served = served.drop_duplicates(subset=["customer", "as_of"], keep="last")  # the latest answer per customer
    labels = read_labels(settings, sorted(served["as_of"].unique()), f"churn_{champion.horizon_days}d")
    if labels.empty:
        return None, None
    labels = labels.assign(customer=log_keys(rule, salt, labels["customer_key"]))
    joined = served.merge(labels[["customer", "as_of", "label"]], on=["customer", "as_of"], how="inner")
    if joined.empty:
        return None, None
    joined["label"] = joined["label"].astype(int)
    training = {k: v for k, v in champion.test_metrics.items()}
    return performance(joined["label"].to_numpy(), joined[PREDICTION].to_numpy(), training, champion.threshold), joined


def _save_snapshot(snapshot: Any, stem: Path) -> list[Path]:
    html, data = stem.with_suffix(".html"), stem.with_suffix(".json")
    snapshot.save_html(str(html))
    snapshot.save_json(str(data))
    return [html, data]


def _log_to_mlflow(
    registry: Registry, champion: Champion, stamp: str, files: list[Path], decision: TriggerDecision
) -> None:
    """The reports beside the model version: artifacts of its run, and a tag with the latest verdict."""
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            shutil.copy2(f, Path(tmp) / f.name)
        registry.log_artifacts(champion.run_id, Path(tmp), f"monitoring/{stamp}")
    verdict = f"{stamp}: {decision.action} ({decision.why})"[:500]
    registry.set_version_tags(champion.name, champion.version, {"custintel.monitoring.last": verdict})
