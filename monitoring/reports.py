"""The reports people read: Evidently's drift and performance reports, our decision page, and where they go.

Each monitoring run of a model writes, under `settings.reports_dir / "monitoring"`:
- `<model>-v<version>-<stamp>-evidently.html` and `.json`: Evidently 0.7's DataDriftPreset plus a
  ValueDrift of the prediction, drawn on at most `report_rows` rows per side (all rows when
  fewer). Its verdicts equal ours on the same rows; with more rows ours are on all of them;
- `<model>-v<version>-<stamp>-performance.html`/`.json` when labels arrived: Evidently's
  binary-classification metrics on the labelled served rows;
- `<model>-v<version>-<stamp>.html` and `.json`: the decision page (every trigger with its
  numbers, the data-quality findings, the reference it was judged against, every column's test
  with its threshold and the natural movement inside it), linking the Evidently pages.
Evidently gets each column's method and threshold from the decision (natural movement included,
`monitoring.baseline`), so its verdicts are the decision's.
The governance reviewers' site copies every `*.html` there. The same files are logged to the
champion's MLflow run under `monitoring/<stamp>/`, and each Evidently snapshot is added to the
local Evidently workspace (`evidently ui --workspace <settings.monitoring_dir>/workspace`),
one project per registered model.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.data_classes import without_direct_identifiers

if TYPE_CHECKING:  # types only: the erasure path reads these reports without loading SciPy's statistics
    from monitoring.drift import DatasetDrift, Kind

PREDICTION = "prediction"


def sample_rows(
    frame: pd.DataFrame, rows: int, classes: Mapping[str, str] | None = None, seed: int = 0
) -> pd.DataFrame:
    """At most `rows` rows, seeded (all of them when fewer), without direct identifiers (`classes`: column -> class).

    The sample is what Evidently's pages and workspace snapshots embed.
    """
    frame = without_direct_identifiers(frame, classes or {})
    return frame if len(frame) <= rows else frame.sample(n=rows, random_state=seed)


def evidently_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    kinds: dict[str, Kind],
    tests: dict[str, tuple[str, float | None]],
    drift_share: float,
    with_prediction: bool,
) -> Any:
    """Evidently's DataDriftPreset over the inputs (and a ValueDrift of the prediction): the snapshot."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    numeric = [c for c, k in kinds.items() if k == "num"]
    categorical = [c for c, k in kinds.items() if k == "cat"]
    columns = list(kinds)
    if with_prediction:
        numeric = [*numeric, PREDICTION]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    keep = columns + ([PREDICTION] if with_prediction else [])

    def prepared(frame: pd.DataFrame) -> Any:
        # Infinities as missing: Evidently's per-column path drops them, but its dataset-level path keeps
        # them in a column without NaN (and its binned tests then fail). Both of ours drop them.
        out = frame[keep].reset_index(drop=True)
        out[numeric] = out[numeric].replace([np.inf, -np.inf], np.nan)
        return Dataset.from_pandas(out, data_definition=definition)

    ref, cur = prepared(reference), prepared(current)
    methods = {c: m for c, (m, _) in tests.items() if m != "auto" and c in kinds}
    thresholds = {c: t for c, (_, t) in tests.items() if t is not None and c in kinds}
    metrics: list[Any] = [
        DataDriftPreset(
            columns=columns,
            drift_share=drift_share,
            per_column_method=methods or None,
            per_column_threshold=thresholds or None,
        )
    ]
    if with_prediction:
        p_method, p_threshold = tests.get(PREDICTION, ("auto", None))
        args: dict[str, Any] = {"column": PREDICTION}
        if p_method != "auto":
            args["method"] = p_method
        if p_threshold is not None:
            args["threshold"] = p_threshold
        metrics.append(ValueDrift(**args))
    return Report(metrics, include_tests=True).run(cur, ref)


def evidently_performance(labelled: pd.DataFrame, reference: pd.DataFrame | None, threshold: float | None) -> Any:
    """Evidently's binary-classification metrics on labelled served rows (`label`, `prediction`)."""
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.metrics import LogLoss, Precision, Recall, RocAuc

    definition = DataDefinition(
        numerical_columns=[PREDICTION],
        categorical_columns=["label"],
        classification=[BinaryClassification(target="label", prediction_probas=PREDICTION, pos_label=1)],
    )
    cut = 0.5 if threshold is None else float(threshold)
    metrics = [RocAuc(), LogLoss(), Precision(probas_threshold=cut), Recall(probas_threshold=cut)]
    cur = Dataset.from_pandas(labelled[["label", PREDICTION]].reset_index(drop=True), data_definition=definition)
    ref = None
    if reference is not None and reference["label"].nunique() == 2:
        ref = Dataset.from_pandas(reference[["label", PREDICTION]].reset_index(drop=True), data_definition=definition)
    return Report(metrics, include_tests=False).run(cur, ref)


def evidently_verdicts(snapshot: Any) -> dict[str, bool]:
    """Column -> drifted, as Evidently's tests say (FAIL = drifted)."""
    out: dict[str, bool] = {}
    for test in snapshot.dict().get("tests", []):
        params = test.get("metric_config", {}).get("params", {})
        if params.get("type") == "evidently:metric_v2:ValueDrift":
            out[str(params["column"])] = test.get("status") == "FAIL"
    return out


def evidently_scores(snapshot: Any) -> dict[str, float]:
    """Column -> the drift statistic Evidently computed (its ValueDrift values)."""
    out: dict[str, float] = {}
    for metric in snapshot.dict().get("metrics", []):
        config = metric.get("config", {})
        if config.get("type") == "evidently:metric_v2:ValueDrift":
            out[str(config["column"])] = float(metric["value"])
    return out


def add_to_workspace(workspace_dir: Path, project_name: str, snapshot: Any, name: str) -> str:
    """Add a snapshot to the local Evidently workspace (one project per model); returns the run id."""
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(workspace_dir))
    found = workspace.search_project(project_name)
    project = found[0] if found else workspace.create_project(project_name, description="custintel monitoring")
    return str(workspace.add_run(project.id, snapshot, include_data=False, name=name).id)


# --- our decision page (pure rendering) ------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: object) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else _e(value)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem;color:#1b1b1b}"
    "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}"
    ".fired{background:#fde2e1}.ok{background:#e6f4ea}.action{font-size:1.3rem;font-weight:600}"
)


COLUMN_HEADERS = [
    "column", "kind", "test", "statistic", "threshold", "of which natural movement", "verdict", "reference rows",
    "served rows",
]  # fmt: skip


def _reference_html(summary: dict[str, Any]) -> str:
    """What the window was judged against: the reference cutoff and rows, the gap, the movement's cutoffs."""
    ref = summary.get("reference")
    if not ref:
        return f"<p>Reference: {summary['reference_rows']:,} training rows.</p>"
    if ref["reference_as_of"] is None:
        text = f"Reference: every logged training row ({ref['reference_rows']:,})."
    else:
        text = (
            f"Reference: {ref['reference_rows']:,} training rows as of {_e(ref['reference_as_of'])} (the champion's "
            f"newest logged cutoff); served features as of {_e(ref['served_as_of'] or 'unknown')}, "
            f"{ref['gap_months']:.1f} months later."
        )
        if ref["movement_cutoffs"] and any(c.get("allowance") for c in ref["columns"].values()):
            text += (
                " Each input's threshold includes its natural movement over that gap, measured between the "
                f"logged cutoffs {_e(', '.join(ref['movement_cutoffs']))}."
            )
    notes = "".join(f"<li>{_e(n)}</li>" for n in ref.get("notes", []))
    return f"<p>{text}</p>" + (f"<ul>{notes}</ul>" if notes else "")


def render_page(summary: dict[str, Any]) -> str:
    """The decision page of one monitoring run: verdict, triggers, data quality, columns, links."""
    decision = summary["decision"]
    checks = [
        [
            _e(c["trigger"]),
            "fired" if c["fired"] else "no",
            _num(c["value"]),
            _num(c["limit"]),
            _e(c["detail"]),
        ]
        for c in decision["checks"]
    ]
    alerts = [[_e(a["check"]), _e(a["column"] or ""), _num(a["value"]), _num(a["limit"]), _e(a["detail"])]
              for a in decision["alerts"]]  # fmt: skip
    drift = summary.get("drift") or {"columns": []}
    columns = [
        [_e(c["column"]), _e(c["kind"]), _e(c["method"]), _num(c["score"]), _num(c["threshold"]),
         _num(c.get("allowance", 0.0)), "drifted" if c["drifted"] else "", _num(c["reference_rows"]),
         _num(c["current_rows"])]
        for c in sorted(drift["columns"], key=lambda c: (not c["drifted"], c["column"]))
    ]  # fmt: skip
    links = "".join(
        f'<li><a href="{_e(href)}">{_e(label)}</a></li>' for label, href in summary.get("links", {}).items()
    )
    perf = summary.get("performance")
    perf_html = "<p>No labels have arrived for the served rows yet.</p>"
    if perf:
        keys = sorted(set(perf["current"]) & set(perf["training"]))
        perf_html = (
            _table(
                ["metric", "served rows", "training"],
                [[_e(k), _num(perf["current"][k]), _num(perf["training"][k])] for k in keys],
            )
            + f"<p>{perf['labelled']:,} labelled served rows.</p>"
        )
    title = f"{summary['model']} v{summary['version']}: monitoring {summary['stamp']}"
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f'<link rel="icon" href="data:,"><style>{STYLE}</style></head><body>'
        f"<h1>{_e(title)}</h1>"
        f'<p class="action">Decision: {_e(decision["action"])}</p><p>{_e(decision["why"])}</p>'
        f"<p>Window {_e(summary['window']['start'])} to {_e(summary['window']['end'])}: "
        f"{summary['rows']:,} scored rows, {summary['suppressed']:,} suppressed. "
        f"Policy digest <code>{_e(summary['policy_digest'][:12])}</code>.</p>"
        + _reference_html(summary)
        + f"<h2>Triggers</h2>{_table(['trigger', 'fired', 'value', 'limit', 'detail'], checks)}"
        f"<h2>Data quality</h2>"
        + (_table(["check", "column", "value", "limit", "detail"], alerts) if alerts else "<p>No failure.</p>")
        + f"<h2>Performance</h2>{perf_html}"
        + f"<h2>Columns</h2>{_table(COLUMN_HEADERS, columns)}"
        + (f"<h2>Reports</h2><ul>{links}</ul>" if links else "")
        + "</body></html>"
    )


def write_summary(folder: Path, stem: str, summary: dict[str, Any]) -> tuple[Path, Path]:
    """Write the decision page and its JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    page, data = folder / f"{stem}.html", folder / f"{stem}.json"
    data.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    page.write_text(render_page(summary), encoding="utf-8")
    return page, data


MEMBERS_SUFFIX = "-members.parquet"


def write_members(path: Path, samples: dict[str, pd.DataFrame]) -> Path:
    """The keys of the rows each report of a pass drew on: `side` (reference, served, labelled) and `key`.

    The reference's rows are named by customer key, served rows by the inference log's key. Kept beside the
    reports (never logged to MLflow) so an erasure request finds the reports that embed a person's rows.
    """
    parts = []
    for side, frame in samples.items():
        column = "customer_key" if "customer_key" in frame.columns else "customer" if "customer" in frame else None
        if column is None:
            continue
        keys = frame[column].dropna().astype(str).unique()
        parts.append(pd.DataFrame({"side": side, "key": keys}))
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"side": [], "key": []}, dtype=str)
    table.to_parquet(path, index=False)
    return path


def stamp(now: dt.datetime) -> str:
    """A sortable, file-safe time stamp."""
    return now.strftime("%Y%m%dT%H%M%SZ")


def drift_dict(drift: DatasetDrift | None) -> dict[str, Any] | None:
    """The drift result, JSON-ready (None stays None)."""
    return None if drift is None else drift.as_dict()
