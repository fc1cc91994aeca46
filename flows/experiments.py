"""Analyse a registered experiment: units -> analysis -> report (JSON, plots, HTML) -> MLflow -> reviewers' site.

`analyse_experiment` reads the registered spec (its hash verified, so a spec edited after launch
is refused), builds the units from one source, analyses them with `experiments.analysis.analyse`,
writes the report under `<home>/experiments/<name>/reports/<UTC timestamp>/` (aggregates only: no
customer key leaves the units), logs it as a run of the MLflow experiment `custintel-experiments`
and rebuilds the reviewers' site, whose experiments page links the latest report of each experiment.

Sources: `log` (exposures, decisions and outcomes of the decision service), `offer_test` (the
world's retention-offer test from the lake, with a CUPAC covariate from the offline feature store
as of the assignment date), `file` (a user's units file, CSV or Parquet). A blocked verdict (a
sample-ratio mismatch) is a result, not an error; bad input raises `ExperimentError`.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from custintel.atomic_files import write_text_atomically
from custintel.settings import Settings
from experiments.analysis import ExperimentAnalysis, Metric, analyse
from experiments.errors import ExperimentError
from experiments.spec import ExperimentRegistry, RegisteredExperiment
from experiments.units import (
    OFFER_METRIC,
    Units,
    describe,
    file_units,
    log_units,
    offer_test_units,
    pre_period_features,
    read_crosswalk,
    read_offer_test,
    read_units_file,
    shares_of,
    with_cupac,
)
from flows.retries import io_task

MLFLOW_EXPERIMENT = "custintel-experiments"
SOURCES = ("log", "offer_test", "file")
Source = Literal["log", "offer_test", "file"]


def experiments_root(settings: Settings) -> Path:
    """Where experiments are registered and their reports kept."""
    return settings.home_dir / "experiments"


def source_name(source: str) -> Source:
    """`offer-test` and `offer_test` alike; ExperimentError for anything else."""
    name = source.replace("-", "_")
    if name not in SOURCES:
        raise ExperimentError(f"source: {source!r} is not a source (log, offer-test or file)")
    return name  # type: ignore[return-value]


# --- steps ----------------------------------------------------------------------------------------------------------


def registered(settings: Settings, name: str, version: int | None = None) -> RegisteredExperiment:
    """The registered experiment (its spec's hash verified)."""
    return ExperimentRegistry(experiments_root(settings)).get(name, version)


def build_units(
    settings: Settings, experiment: RegisteredExperiment, source: Source, units_file: Path | None = None
) -> tuple[Units, list[Metric]]:
    """The experiment's units from `source` and the metrics they carry (those a source cannot give are noted)."""
    spec = experiment.spec
    if source == "file":
        if units_file is None:
            raise ExperimentError("units: the file source needs a units file (--units FILE)")
        covariates = [m.covariate for m in spec.metrics if m.covariate]
        units = file_units(read_units_file(units_file), spec.metrics, arms=[a.name for a in spec.arms],
                           covariates=covariates)  # fmt: skip
        metrics = [
            _metric(m, m.name, m.covariate if m.covariate in units.frame.columns else None) for m in spec.metrics
        ]
        return units, metrics
    if source == "offer_test":
        return _offer_units(settings, experiment)
    return _log_units(settings, experiment)


def _metric(spec_metric: Any, column: str, covariate: str | None) -> Metric:
    return Metric(
        name=spec_metric.name, kind=spec_metric.kind, column=column,
        denominator=f"{spec_metric.name}__denominator" if spec_metric.kind == "ratio" else None,
        covariate=covariate, higher_is_better=spec_metric.higher_is_better, primary=spec_metric.primary,
    )  # fmt: skip


def _offer_units(settings: Settings, experiment: RegisteredExperiment) -> tuple[Units, list[Metric]]:
    crosswalk = read_crosswalk(settings)
    units = offer_test_units(read_offer_test(settings), crosswalk)
    wanted = [m for m in experiment.spec.metrics if OFFER_METRIC in (m.column, m.name)]
    for m in experiment.spec.metrics:
        if m not in wanted:
            units.notes.append(f"metric {m.name!r}: the offer test has no such outcome (only {OFFER_METRIC}): left out")
    if not wanted:
        raise ExperimentError(
            f"metric: no metric of experiment {experiment.name!r} reads the offer test's {OFFER_METRIC} "
            f"(give one `column: {OFFER_METRIC}`)"
        )
    covariate: str | None = None
    try:
        first_day = min(units.frame["day"])
        features, cutoff = pre_period_features(settings, units.frame["unit"].astype(str).tolist(), first_day)
        with_cupac(units, features, OFFER_METRIC)
        covariate = f"cupac_{OFFER_METRIC}"
        units.notes.append(f"pre-period features as of {cutoff} (the last cutoff on or before the assignment)")
    except ExperimentError as exc:
        units.notes.append(f"no CUPED: {exc}")
    metrics = [_metric(m, OFFER_METRIC, covariate) for m in wanted]
    return units, metrics


def _log_units(settings: Settings, experiment: RegisteredExperiment) -> tuple[Units, list[Metric]]:
    from serving import decision_log

    reader = getattr(decision_log, "read_exposures", None)
    if reader is None:
        raise ExperimentError("exposures: this installation's decision log records no exposures")
    exposures = reader(settings, experiment=experiment.name)
    if exposures.empty:
        raise ExperimentError(f"exposures: no exposed units for experiment {experiment.name!r} in the decision log")
    from_log = [m for m in experiment.spec.metrics if m.event]
    units = log_units(
        exposures, decision_log.read_decisions(settings), decision_log.read_outcomes(settings), from_log,
        experiment=experiment.name, version=None,
    )  # fmt: skip
    for m in experiment.spec.metrics:
        if not m.event:
            units.notes.append(f"metric {m.name!r}: names no outcome event, so the logs cannot give it: left out")
    if not from_log:
        raise ExperimentError(f"metric: no metric of experiment {experiment.name!r} names an outcome event")
    metrics = []
    covariate_features = sorted({m.covariate for m in from_log if m.covariate})
    if covariate_features:
        try:
            features, cutoff = pre_period_features(
                settings, units.frame["unit"].astype(str).tolist(), min(units.frame["day"])
            )
            for name in covariate_features:
                if name not in features.columns:
                    raise ExperimentError(f"covariate: {name!r} is not a feature of the offline store")
                units.frame[name] = features[name].reindex(units.frame["unit"].astype(str)).fillna(0.0).to_numpy()
            units.notes.append(f"CUPED covariates {covariate_features} as of {cutoff}")
        except ExperimentError as exc:
            units.notes.append(f"no CUPED: {exc}")
            covariate_features = []
    for m in from_log:
        metrics.append(_metric(m, m.name, m.covariate if m.covariate in covariate_features else None))
    return units, metrics


def run_analysis(
    experiment: RegisteredExperiment, units: Units, metrics: Sequence[Metric], mode: str | None = None
) -> ExperimentAnalysis:
    """`analyse` with the spec's arms, control, alpha and stopping mode (`mode` overrides the latter)."""
    spec = experiment.spec
    chosen = mode or spec.stopping.mode
    if chosen not in ("fixed", "sequential"):
        raise ExperimentError(f"mode: {chosen!r} is neither fixed nor sequential")
    shares = shares_of({a.name: a.share for a in spec.arms})
    return analyse(
        units.frame, list(metrics), expected_shares=shares, control=spec.control, alpha=spec.stopping.alpha,
        mode=chosen,  # type: ignore[arg-type]
    )  # fmt: skip


def result_rows(analysis: ExperimentAnalysis) -> list[dict[str, Any]]:
    """One plain row per (metric, arm): what the CLI table, the JSON and the HTML show."""
    return [
        {
            "metric": r.metric, "arm": r.arm, "control": r.control, "n_control": r.n_control, "n_arm": r.n_arm,
            "mean_control": r.mean_control, "mean_arm": r.mean_arm, "difference": r.difference,
            "ci_low": r.ci_low, "ci_high": r.ci_high, "relative_lift": r.relative_lift,
            "rel_ci_low": r.rel_ci_low, "rel_ci_high": r.rel_ci_high, "p_value": r.p_value,
            "p_adjusted": r.p_adjusted, "significant": r.significant, "variance_reduction": r.variance_reduction,
            "note": r.note,
        }
        for r in analysis.results
    ]  # fmt: skip


def verdict_line(analysis: ExperimentAnalysis) -> str:
    """The verdict in words: "blocked: sample-ratio mismatch ..." names the reason."""
    if analysis.verdict == "blocked":
        reason = next(
            (r for r in analysis.reasons if "sample-ratio" in r), analysis.reasons[0] if analysis.reasons else ""
        )
        return f"blocked: {reason}" if reason else "blocked"
    return analysis.verdict.replace("_", " ")


def srm_line(analysis: ExperimentAnalysis) -> str:
    """The sample-ratio check in one line."""
    srm = analysis.srm
    counts = ", ".join(f"{arm} {n:,}" for arm, n in srm.counts.items())
    expected = ", ".join(f"{arm} {share:.0%}" for arm, share in srm.expected_shares.items())
    state = "BLOCKS the verdict" if srm.blocked else "ok"
    return f"sample ratio: {counts} (expected {expected}); chi2 {srm.chi2:.2f}, p = {srm.p_value:.3g}: {state}"


def write_report(
    settings: Settings,
    experiment: RegisteredExperiment,
    analysis: ExperimentAnalysis,
    units: Units,
    source: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report folder: analysis.json, a lift and a cumulative plot per metric (PNG), report.html.

    Only aggregates are written (counts, means, intervals per arm and day): no customer key.
    """
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    folder = experiments_root(settings) / experiment.name / "reports" / stamp
    folder.mkdir(parents=True, exist_ok=True)
    plots: dict[str, list[str]] = {}
    notes = list(units.notes)
    from experiments.plots import plot_cumulative, plot_lift_over_time

    for metric in dict.fromkeys(r.metric for r in analysis.results):
        made = [
            plot_lift_over_time(analysis, metric, folder / f"lift_{metric}.png"),
            plot_cumulative(analysis, metric, folder / f"cumulative_{metric}.png"),
        ]
        plots[metric] = [p.name for p in made]
    report = {
        "experiment": experiment.name, "version": experiment.version, "hash": experiment.hash,
        "hypothesis": experiment.spec.hypothesis, "source": source, "written_at": stamp,
        "verdict": analysis.verdict, "verdict_line": verdict_line(analysis), "srm_line": srm_line(analysis),
        "units": describe(units) | {"notes": notes}, "results": result_rows(analysis), "plots": plots,
        "analysis": analysis.as_dict(), **(extra or {}),
    }  # fmt: skip
    write_text_atomically(folder / "analysis.json", json.dumps(report, indent=2, default=_json_default) + "\n")
    write_text_atomically(folder / "report.html", render_report(report, folder))
    return {"folder": str(folder), "json": str(folder / "analysis.json"), "html": str(folder / "report.html"),
            "plots": [str(folder / p) for ps in plots.values() for p in ps], "report": report}  # fmt: skip


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.date | dt.datetime | pd.Timestamp):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _num(value: Any, fmt: str = "{:.4f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return fmt.format(value)


def render_report(report: dict[str, Any], folder: Path) -> str:
    """A self-contained HTML page (plots embedded as data URIs)."""
    e = html.escape
    rows = []
    for r in report["results"]:
        rows.append(
            "<tr>" + "".join(f"<td>{c}</td>" for c in (
                e(r["metric"]), e(r["arm"]), _num(r["mean_control"]), _num(r["mean_arm"]),
                f"{_num(r['difference'], '{:+.4f}')} [{_num(r['ci_low'], '{:+.4f}')}, {_num(r['ci_high'], '{:+.4f}')}]",
                f"{_num(r['relative_lift'], '{:+.1%}')} [{_num(r['rel_ci_low'], '{:+.1%}')}, "
                f"{_num(r['rel_ci_high'], '{:+.1%}')}]",
                _num(r["p_adjusted"], "{:.3g}"), _num(r["variance_reduction"], "{:.1%}"), e(r.get("note") or ""),
            )) + "</tr>"
        )  # fmt: skip
    images = []
    for metric, files in report["plots"].items():
        for name in files:
            data = base64.b64encode((folder / name).read_bytes()).decode("ascii")
            images.append(f'<figure><img alt="{e(name)}" src="data:image/png;base64,{data}">'
                          f"<figcaption>{e(metric)}: {e(name)}</figcaption></figure>")  # fmt: skip
    covariates = [f"CUPED covariate {c}: {', '.join(f)}" for c, f in (report["units"].get("covariates") or {}).items()]
    notes = "".join(
        f"<li>{e(n)}</li>" for n in [*report["units"]["notes"], *covariates, *report["analysis"].get("reasons", [])]
    )
    truth = report.get("truth")
    truth_html = f"<h2>Against the generator's truth</h2><p>{e(truth['line'])}</p>" if truth else ""
    head = ["metric", "arm", "control mean", "arm mean", "difference [CI]", "relative lift [CI]", "p adj",
            "CUPED variance reduction", "note"]  # fmt: skip
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Experiment {e(report['experiment'])}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2rem;max-width:72rem}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.3rem .5rem;text-align:left}img{max-width:100%}"
        ".blocked{color:#a00;font-weight:bold}</style></head><body>"
        f"<h1>Experiment {e(report['experiment'])} v{report['version']}</h1>"
        f"<p>{e(report['hypothesis'])}</p>"
        f"<p>Source: {e(report['source'])}; mode: {e(report['analysis']['mode'])}; "
        f"spec hash <code>{e(report['hash'][:12])}</code>; written {e(report['written_at'])}</p>"
        f'<p class="{"blocked" if report["verdict"] == "blocked" else ""}">Verdict: {e(report["verdict_line"])}</p>'
        f"<p>{e(report['srm_line'])}</p>"
        f"<table><thead><tr>{''.join(f'<th>{e(h)}</th>' for h in head)}</tr></thead><tbody>{''.join(rows)}"
        f"</tbody></table>{truth_html}<h2>Notes</h2><ul>{notes}</ul>{''.join(images)}</body></html>\n"
    )


def mlflow_figures(analysis: ExperimentAnalysis) -> dict[str, float]:
    """Per result: difference, interval, relative lift, p and adjusted p (`<metric>.<arm>.<figure>`)."""
    out: dict[str, float] = {}
    for r in analysis.results:
        for figure in ("difference", "ci_low", "ci_high", "relative_lift", "p_value", "p_adjusted",
                       "variance_reduction", "mean_control", "mean_arm"):  # fmt: skip
            value = getattr(r, figure)
            if value is not None and math.isfinite(float(value)):
                out[f"{r.metric}.{r.arm}.{figure}"] = float(value)
    out["srm.p_value"] = float(analysis.srm.p_value)
    return out


def log_run(
    settings: Settings, experiment: RegisteredExperiment, analysis: ExperimentAnalysis, source: str, folder: Path
) -> str:
    """The report as an MLflow run of `custintel-experiments`; returns its run id."""
    from models.registry import Registry

    return Registry(settings).log_experiment(
        experiment.name,
        params={
            "experiment": experiment.name,
            "version": str(experiment.version),
            "hash": experiment.hash,
            "mode": analysis.mode,
            "source": source,
            "alpha": str(analysis.alpha),
            "correction": analysis.correction,
        },  # fmt: skip
        metrics=mlflow_figures(analysis),
        tags={"custintel.experiment.verdict": analysis.verdict, "custintel.experiment.name": experiment.name},
        folder=folder,
        mlflow_experiment=MLFLOW_EXPERIMENT,
    )


def publish_site(settings: Settings) -> str:
    """Rebuild the reviewers' site (its experiments page lists the latest report of each experiment)."""
    from governance.site import build_site

    return str(build_site(settings).parent / "experiments.html")


@dataclass(frozen=True)
class AnalysisSteps:
    """The steps, plain or as Prefect tasks."""

    registered: Callable[..., RegisteredExperiment]
    units: Callable[..., tuple[Units, list[Metric]]]
    analyse: Callable[..., ExperimentAnalysis]
    report: Callable[..., dict[str, Any]]
    log: Callable[..., str]
    site: Callable[..., str]


PLAIN_STEPS = AnalysisSteps(registered, build_units, run_analysis, write_report, log_run, publish_site)
TASK_STEPS = AnalysisSteps(
    io_task("registered-experiment", registered),
    io_task("experiment-units", build_units),
    task(name="analyse-experiment", cache_policy=NO_CACHE)(run_analysis),
    io_task("experiment-report", write_report),
    io_task("log-experiment", log_run),
    io_task("publish-site", publish_site),
)


def analyse_experiment(
    settings: Settings,
    name: str,
    *,
    version: int | None = None,
    source: str = "log",
    units_file: Path | None = None,
    mode: str | None = None,
    truth_dir: Path | None = None,
    steps: AnalysisSteps = PLAIN_STEPS,
) -> dict[str, Any]:
    """Analyse a registered experiment end to end; returns what the CLI prints (paths, run id, table, verdict).

    `truth_dir` (a generated world's `_truth`, evaluation only): with the offer test as source, the
    reported interval is set beside the true mean effect of the offer over the same customers.
    """
    chosen = source_name(source)
    experiment = steps.registered(settings, name, version)
    units, metrics = steps.units(settings, experiment, chosen, units_file)
    analysis = steps.analyse(experiment, units, metrics, mode)
    extra: dict[str, Any] = {}
    if truth_dir is not None and chosen == "offer_test":
        primary = next((m.name for m in metrics if m.primary), metrics[0].name)
        extra["truth"] = truth_line(settings, units, analysis, primary, truth_dir)
    written = steps.report(settings, experiment, analysis, units, chosen, extra)
    run_id = steps.log(settings, experiment, analysis, chosen, Path(written["folder"]))
    site = steps.site(settings)
    report = written.pop("report")
    return {
        **written, "experiment": experiment.name, "version": experiment.version, "hash": experiment.hash,
        "source": chosen, "mode": analysis.mode, "verdict": analysis.verdict, "verdict_line": report["verdict_line"],
        "srm_line": report["srm_line"], "reasons": list(analysis.reasons), "results": report["results"],
        "units": report["units"], "mlflow_run_id": run_id, "mlflow_experiment": MLFLOW_EXPERIMENT, "site": site,
        "truth": extra.get("truth"),
    }  # fmt: skip


def truth_line(
    settings: Settings, units: Units, analysis: ExperimentAnalysis, metric: str, truth_dir: Path
) -> dict[str, Any]:
    """The primary offer-test result beside the true mean effect (evaluation only)."""
    from experiments.truth import observed_against_truth, offer_truth, read_truth

    effect, records = read_truth(truth_dir)
    truth = offer_truth(units.frame, read_crosswalk(settings), records, effect)
    primary = next(r for r in analysis.results if r.metric == metric)
    return observed_against_truth(truth, primary.ci_low, primary.ci_high, primary.difference)


def publish(result: dict[str, Any]) -> None:
    """The read-out beside the flow run in the Prefect UI."""
    lines = [f"# {result['experiment']} v{result['version']}: {result['verdict_line']}", "", result["srm_line"], ""]
    for r in result["results"]:
        lines.append(f"- {r['metric']} ({r['arm']} vs {r['control']}): {r['difference']:+.4f} "
                     f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}], p adj {r['p_adjusted']:.3g}")  # fmt: skip
    lines += ["", f"Report: {result['html']}", f"MLflow run: {result['mlflow_run_id']}"]
    create_markdown_artifact("\n".join(lines), key="experiment-analysis")


@flow(name="analyse_experiment", log_prints=False, persist_result=True)
def analyse_experiment_flow(
    name: str,
    settings: dict[str, Any] | None = None,
    version: int | None = None,
    source: str = "log",
    units_file: str | None = None,
    mode: str | None = None,
    truth: str | None = None,
) -> dict[str, Any]:
    """Analyse a registered experiment (units, analysis, report, MLflow run, reviewers' site)."""
    result = analyse_experiment(
        Settings.from_flow(settings), name, version=version, source=source,
        units_file=Path(units_file) if units_file else None, mode=mode, truth_dir=Path(truth) if truth else None,
        steps=TASK_STEPS,
    )  # fmt: skip
    task(name="publish-experiment-analysis", cache_policy=NO_CACHE)(publish)(result)
    return result


# --- attribution over the world's digital journeys (the demo) -------------------------------------------------------


def digital_attribution(
    settings: Settings, days: int = 60, window_days: int = 30
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Purchases credited to the digital touches before them, over the last `days` of the lake's purchases.

    Touches and conversions come from `experiments.journeys.digital_touches` (the lake's digital events of
    logged-in customers: key page views, failed self-service attempts, micro-conversions; billing purchases
    as conversions; keyed through the crosswalk as the feature build does). Returns
    `experiments.attribution.attribute`'s table and counts (journeys, conversions, the period).
    """
    from experiments.attribution import attribute, build_journeys
    from experiments.journeys import digital_touches
    from features.lake import IngestError, read_lake_table

    try:
        purchases = read_lake_table(settings, "billing_transactions", columns=["txn_time"])
    except IngestError as exc:
        raise ExperimentError(f"source: {exc}") from exc
    if purchases.empty:
        raise ExperimentError("source: the billing transactions hold no purchase")
    end = pd.Timestamp(purchases["txn_time"].max())
    first = end - pd.Timedelta(days=days)
    touches, conversions = digital_touches(settings, first - pd.Timedelta(days=window_days), end + pd.Timedelta(days=1))
    conversions = conversions[pd.to_datetime(conversions["time"]) >= first]
    journeys = build_journeys(touches, conversions, window_days=window_days, end=end)
    table = attribute(journeys)
    touched = journeys["path"].map(len) > 0
    info = {"journeys": len(journeys), "conversions": int(journeys["converted"].sum()), "touches": len(touches),
            "touched_conversions": int(journeys.loc[touched, "converted"].sum()),
            "from": str(first.date()), "to": str(end.date()), "window_days": window_days}  # fmt: skip
    return table, info
