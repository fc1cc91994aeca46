"""Pure checks of a served window: data quality (alerts) and performance once labels arrived.

No I/O: frames in, findings out. A data-quality failure means the window cannot be trusted
(a schema break, a null spike): it raises an alert and never a retrain, since retraining on
broken inputs would teach the model the breakage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from models import evaluation as ev
from monitoring.policy import DataQualityPolicy


@dataclass(frozen=True)
class QualityFinding:
    """One data-quality failure of the current window."""

    check: str  # schema | type_errors | null_spike
    column: str | None
    value: float
    limit: float
    detail: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def null_shares(frame: pd.DataFrame, columns: list[str]) -> dict[str, float]:
    """Share of missing values per column (1.0 for a column the frame lacks)."""
    n = len(frame)
    return {c: float(frame[c].isna().mean()) if c in frame and n else 1.0 for c in columns}


def data_quality(
    reference_nulls: dict[str, float],
    current: pd.DataFrame,
    absent_inputs: dict[str, float],
    type_errors: dict[str, float],
    policy: DataQualityPolicy,
) -> tuple[list[QualityFinding], dict[str, Any]]:
    """The window's data-quality failures, and the figures they were judged on."""
    columns = list(reference_nulls)
    current_nulls = null_shares(current, columns)
    findings: list[QualityFinding] = []
    if len(current) < policy.min_rows:
        return findings, {"rows": len(current), "verdict": f"fewer than {policy.min_rows} served rows: not judged"}
    missing = sorted(c for c in columns if absent_inputs.get(c, 0.0) >= 1.0)
    if len(missing) > policy.max_missing_columns:
        findings.append(
            QualityFinding(
                "schema",
                None,
                float(len(missing)),
                float(policy.max_missing_columns),
                f"{len(missing)} model input(s) absent from every served row: {missing[:10]}",
            )
        )
    for column, share in sorted(type_errors.items()):
        if share > policy.max_type_errors:
            findings.append(
                QualityFinding(
                    "type_errors",
                    column,
                    share,
                    policy.max_type_errors,
                    f"{column}: {share:.1%} of served values are not numbers",
                )
            )
    for column in columns:
        if column in missing:
            continue
        rise = current_nulls[column] - reference_nulls[column]
        if rise > policy.max_null_rate_increase:
            findings.append(
                QualityFinding(
                    "null_spike",
                    column,
                    rise,
                    policy.max_null_rate_increase,
                    f"{column}: {current_nulls[column]:.1%} missing in the window against "
                    f"{reference_nulls[column]:.1%} in training",
                )
            )
    figures = {
        "absent_inputs": missing,
        "null_share_current": current_nulls,
        "null_share_reference": reference_nulls,
        "type_errors": type_errors,
    }
    return findings, figures


@dataclass(frozen=True)
class Performance:
    """A model's figures on served rows whose labels have arrived, beside its training figures."""

    labelled: int
    current: dict[str, float]
    training: dict[str, float]
    calibration: list[dict[str, Any]]

    def drop(self, metric: str) -> float | None:
        """How far the metric fell from training (positive: worse); None when either is unknown."""
        now, then = self.current.get(metric), self.training.get(metric)
        if now is None or then is None or not (np.isfinite(now) and np.isfinite(then)):
            return None
        return float(then - now)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def performance(
    labels: np.ndarray, scores: np.ndarray, training: dict[str, float], threshold: float | None
) -> Performance | None:
    """AUC, PR-AUC, Brier, calibration and precision at the recorded threshold on labelled served rows.

    None when the labelled rows hold one class only (no AUC can be computed).
    """
    y = np.asarray(labels, dtype=float)
    p = np.asarray(scores, dtype=float)
    keep = np.isfinite(y) & np.isfinite(p)
    y, p = y[keep], p[keep]
    if y.size == 0 or y.min() == y.max():
        return None
    current = ev.classification_metrics(y, p)
    current["mean_score"] = float(p.mean())
    current["calibration_gap"] = float(abs(p.mean() - y.mean()))
    if threshold is not None:
        current.update(ev.threshold_metrics(y, p, threshold))
    table = ev.calibration_table(y, p, bins=10)
    rows = [{str(k): v for k, v in row.items()} for row in table.to_dict(orient="records")]
    return Performance(int(y.size), current, training, rows)
