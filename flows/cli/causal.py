"""`custintel causal`: synthetic control, difference-in-differences, attribution with ROI, uplift evaluation.

Each command reads its input, calls one function of `experiments`, prints the tables, and writes a JSON result
and PNG plots under `<home>/experiments/causal/`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.markup import escape
from rich.table import Table

from custintel.atomic_files import write_text_atomically
from flows.cli.app import app, console, expected, fail, settings

if TYPE_CHECKING:
    import pandas as pd

causal_app = typer.Typer(
    help="Measure what cannot be randomised and what the actions earned: synthetic control, difference-in-"
    "differences, multi-touch attribution with the ROI report, uplift (Qini/AUUC) evaluation.",
    no_args_is_help=True,
)
app.add_typer(causal_app, name="causal")


def _errors() -> tuple[type[BaseException], ...]:
    from experiments.errors import ExperimentError

    return (ExperimentError,)


def _out_dir() -> Path:
    folder = settings().home_dir / "experiments" / "causal"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _stamp(kind: str) -> str:
    return f"{kind}-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S%fZ')}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        return _jsonable(value.item())
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _write_json(path: Path, payload: dict[str, Any]) -> Path:
    write_text_atomically(path, json.dumps(_jsonable(payload), indent=2, sort_keys=False))
    return path


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    import pandas as pd

    if not path.is_file():
        raise fail(f"{what}: no file at {path}")
    try:
        return pd.read_csv(path)
    except (ValueError, OSError) as exc:
        raise fail(f"{what}: cannot read {path} as CSV ({str(exc).splitlines()[0]})") from None


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _number(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return escape(str(x))


def _print_frame(frame: pd.DataFrame, title: str, digits: int = 3) -> None:
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column), justify="left" if frame[column].dtype == object else "right")
    for row in frame.itertuples(index=False):
        table.add_row(*[_number(v, digits) for v in row])
    console.print(table)


def _save_figure(fig: Any, path: Path) -> Path:
    """Write a pyplot figure (made after `_figure()`) as a PNG and release it."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _figure().close(fig)
    return path


def _done(json_path: Path, plots: list[Path]) -> None:
    console.print(f"result: {json_path}; plots: {', '.join(str(p) for p in plots)}", soft_wrap=True)


# --- synth -------------------------------------------------------------------------------------------------


def _coerce_start(index: pd.Index, start: str) -> Any:
    import pandas as pd

    if pd.api.types.is_integer_dtype(index):
        try:
            return int(start)
        except ValueError:
            raise fail(f"start: {start!r} is not a period of this panel (its periods are integers)") from None
    if pd.api.types.is_numeric_dtype(index):
        try:
            return float(start)
        except ValueError:
            raise fail(f"start: {start!r} is not a number like the panel's periods") from None
    if pd.api.types.is_datetime64_any_dtype(index):
        try:
            return pd.Timestamp(start)
        except ValueError:
            raise fail(f"start: {start!r} is not a date") from None
    return start


def _panel(frame: pd.DataFrame, wide: bool, time_col: str | None, unit_col: str | None,
           outcome_col: str | None) -> pd.DataFrame:  # fmt: skip
    import pandas as pd

    from experiments.quasi import long_to_wide

    if wide:
        time = time_col or str(frame.columns[0])
        if time not in frame.columns:
            raise fail(f"time-col: column {time!r} is not in the panel")
        panel = frame.set_index(time)
    else:
        if not (unit_col and time_col and outcome_col):
            raise fail("unit-col: a long panel needs --unit-col, --time-col and --outcome-col")
        panel = long_to_wide(frame, unit=unit_col, time=time_col, outcome=outcome_col)
    if not pd.api.types.is_numeric_dtype(panel.index):
        try:
            panel.index = pd.to_datetime(panel.index)
        except (ValueError, TypeError):
            pass
    return panel


@causal_app.command("synth")
def synth(
    panel: Annotated[
        Path, typer.Option(help="CSV of outcomes: wide (one row per period, one column per unit) or long with --long.")
    ],  # fmt: skip
    treated: Annotated[str, typer.Option(help="The treated unit (a column of the wide panel).")],
    start: Annotated[str, typer.Option(help="First treated period (e.g. 1989 or 2026-03-01).")],
    wide: Annotated[bool, typer.Option("--wide/--long", help="Panel layout (default wide).")] = True,
    time_col: Annotated[str | None, typer.Option(help="Period column (wide: default the first column).")] = None,
    unit_col: Annotated[str | None, typer.Option(help="Long panel: the unit column.")] = None,
    outcome_col: Annotated[str | None, typer.Option(help="Long panel: the outcome column.")] = None,
    placebos: Annotated[bool, typer.Option(help="Placebo-in-space tests for the p-value and interval.")] = True,
) -> None:
    """Synthetic control: donor weights, the gap, the average post-period effect, placebo p-value and interval."""
    from experiments.quasi import synthetic_control

    frame = _read_csv(panel, "panel")
    with expected(*_errors()):
        wide_panel = _panel(frame, wide, time_col, unit_col, outcome_col)
        result = synthetic_control(wide_panel, treated, _coerce_start(wide_panel.index, start), placebos=placebos)
    import pandas as pd

    weights = pd.DataFrame({"donor": list(result.weights), "weight": list(result.weights.values())})
    _print_frame(weights, f"synthetic {escape(result.treated)}: donor weights")
    console.print(
        f"average post-period effect {result.average_effect:,.3f} "
        f"[{_number(result.ci_low)}, {_number(result.ci_high)}]; last period {result.final_effect:,.3f}; "
        f"pre-RMSPE {result.pre_rmspe:,.3f}; placebo p = {_number(result.p_value)}",
        soft_wrap=True,
    )
    out = _out_dir()
    stem = _stamp(f"synth-{result.treated}".replace("/", "_").replace(" ", "_"))
    plt = _figure()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    top.plot(result.observed.index, result.observed.to_numpy(), label=result.treated, color="black")
    top.plot(result.synthetic.index, result.synthetic.to_numpy(), label="synthetic", linestyle="--")
    for ax in (top, bottom):
        ax.axvline(result.start, color="grey", linewidth=0.8)
    top.legend()
    top.set_ylabel("outcome")
    from experiments.quasi import PLACEBO_RMSPE_FILTER

    fitting = result.placebos.loc[result.placebos["pre_rmspe"] <= PLACEBO_RMSPE_FILTER * result.pre_rmspe, "unit"]
    for column in fitting:  # ADH's figure: placebos whose pre-period fit is not more than 5x worse
        bottom.plot(result.placebo_gaps.index, result.placebo_gaps[column].to_numpy(), color="lightgrey", lw=0.7)
    bottom.plot(result.gap.index, result.gap.to_numpy(), color="black", label="gap (observed - synthetic)")
    bottom.axhline(0, color="grey", linewidth=0.8)
    bottom.legend()
    bottom.set_ylabel("gap")
    plot = _save_figure(fig, out / f"{stem}.png")
    _done(_write_json(out / f"{stem}.json", result.as_dict()), [plot])


# --- did ---------------------------------------------------------------------------------------------------


@causal_app.command("did")
def did(
    data: Annotated[Path, typer.Option(help="Long CSV: one row per unit and period.")],
    unit: Annotated[str, typer.Option(help="Unit column (standard errors are clustered by it).")],
    time: Annotated[str, typer.Option(help="Period column.")],
    outcome: Annotated[str, typer.Option(help="Outcome column.")],
    treated: Annotated[str, typer.Option(help="0/1 column: the unit is ever treated.")],
    post: Annotated[str, typer.Option(help="0/1 column: the period is after the change.")],
) -> None:
    """Difference-in-differences (two-way fixed effects, cluster-robust SEs) with an event-study pre-trend check."""
    from experiments.quasi import diff_in_diff

    frame = _read_csv(data, "data")
    with expected(*_errors()):
        result = diff_in_diff(frame, unit=unit, time=time, outcome=outcome, treated=treated, post=post)
    _print_frame(result.leads, "event study (reference: the last pre period)")
    pre = "-" if result.pre_trend_p is None else f"{result.pre_trend_p:.3g}"
    console.print(f"effect {result.estimate:,.3f} [{result.ci_low:,.3f}, {result.ci_high:,.3f}] (se {result.se:,.3f}, "
                  f"p = {result.p_value:.3g}); {result.n_units} units ({result.n_treated} treated), "
                  f"{result.n_periods} periods; pre-trend p = {pre}", soft_wrap=True)  # fmt: skip
    for note in result.notes:
        console.print(f"note: {escape(note)}", soft_wrap=True)
    out = _out_dir()
    stem = _stamp("did")
    plt = _figure()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    leads = result.leads
    ax.errorbar(leads["relative"], leads["estimate"], yerr=[leads["estimate"] - leads["ci_low"],
                leads["ci_high"] - leads["estimate"]], fmt="o", capsize=3)  # fmt: skip
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.axvline(-0.5, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("periods relative to the change")
    ax.set_ylabel("treated - control (vs reference)")
    plot = _save_figure(fig, out / f"{stem}.png")
    _done(_write_json(out / f"{stem}.json", result.as_dict()), [plot])


# --- attribution -------------------------------------------------------------------------------------------


def _decision_frames(since: dt.datetime | None, until: dt.datetime | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    from serving.decision_log import read_decisions, read_outcomes

    config = settings()
    return read_decisions(config, since, until), read_outcomes(config, since, until)


def _exposures() -> pd.DataFrame | None:
    try:
        from serving.decision_log import read_exposures  # type: ignore[attr-defined,unused-ignore]
    except ImportError:  # the exposure log comes with experiment assignment
        return None
    frame = read_exposures(settings())
    return frame if frame is not None and not frame.empty else None


def _roi(decisions: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    from decisions.policy import PolicyError, policy_from_settings
    from experiments.attribution import control_rates, roi_report

    try:
        policy = policy_from_settings(settings())
    except PolicyError as exc:
        raise fail(f"policy: {exc}") from None
    costs = {a.name: a.cost for a in policy.actions}
    kinds = {a.name: a.kind for a in policy.actions}
    exposures = _exposures()
    rates = control_rates(decisions, outcomes, exposures) if exposures is not None else None
    return roi_report(decisions, outcomes, costs=costs, kinds=kinds, control=rates)


@causal_app.command("attribution")
def attribution(
    source: Annotated[
        Literal["decisions", "digital"],
        typer.Option(
            help="decisions: the decision log's actions as touches, accepts/conversions as conversions; digital: the "
            "lake's digital events as touches, billing purchases as conversions."
        ),
    ] = "decisions",  # fmt: skip
    since: Annotated[dt.datetime | None, typer.Option(help="From this time (UTC).")] = None,
    until: Annotated[dt.datetime | None, typer.Option(help="Until this time (UTC), exclusive.")] = None,
    window_days: Annotated[int, typer.Option(help="A journey's touches within this many days of its end.")] = 30,
) -> None:
    """Multi-touch attribution (last/first touch, Markov removal effect, Shapley) and, for decisions, the ROI."""
    from experiments.attribution import attribute, build_journeys
    from experiments.journeys import decision_touches, digital_touches

    roi = None
    with expected(*_errors()):
        if source == "decisions":
            decisions, outcomes = _decision_frames(since, until)
            if decisions.empty:
                raise fail("source: the decision log has no decisions in this period (serve /decide first)")
            touches, conversions = decision_touches(decisions, outcomes)
            roi = _roi(decisions, outcomes)
        else:
            touches, conversions = digital_touches(settings(), since, until)
        if touches.empty:
            raise fail(f"source: no {source} touches in this period")
        journeys = build_journeys(touches, conversions, window_days=window_days)
        table = attribute(journeys)
    converted = int(journeys["converted"].sum())
    touched = int(journeys.loc[journeys["path"].map(len) > 0, "converted"].sum())
    title = f"attribution of {touched} touched conversions ({converted} in all) over {len(journeys)} {source} journeys"
    _print_frame(table[["channel", "journeys", "last_touch", "first_touch", "markov", "shapley", "markov_value"]],
                 title, 1)  # fmt: skip
    payload: dict[str, Any] = {"source": source, "since": since, "until": until, "window_days": window_days,
                               "journeys": len(journeys), "conversions": converted, "touched_conversions": touched,
                               "attribution": table.to_dict(orient="records")}  # fmt: skip
    if roi is not None:
        columns = ["kind", "decisions", "responses", "incremental_responses", "revenue", "cost",
                   "revenue_per_decision", "cost_per_resolved_issue", "note"]  # fmt: skip
        _print_frame(roi[columns], "ROI per action kind", 2)
        payload["roi"] = roi.to_dict(orient="records")
    out = _out_dir()
    stem = _stamp(f"attribution-{source}")
    plt = _figure()
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(table) + 2))
    methods = ["last_touch", "first_touch", "markov", "shapley"]
    height = 0.8 / len(methods)
    for i, method in enumerate(methods):
        ax.barh([y + i * height for y in range(len(table))], table[method], height=height, label=method)
    ax.set_yticks([y + 0.4 - height / 2 for y in range(len(table))], table["channel"])
    ax.invert_yaxis()
    ax.set_xlabel("conversions credited")
    ax.legend()
    plot = _save_figure(fig, out / f"{stem}.png")
    _done(_write_json(out / f"{stem}.json", payload), [plot])


# --- uplift ------------------------------------------------------------------------------------------------


@causal_app.command("uplift")
def uplift(
    units: Annotated[Path, typer.Option(help="CSV, one row per experimental unit.")],
    outcome: Annotated[str, typer.Option(help="Outcome column (0/1 conversion, or a value).")],
    treated: Annotated[str, typer.Option(help="0/1 column: the unit was treated.")],
    score: Annotated[list[str], typer.Option(help="A targeting score column (repeat to compare policies).")],
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the intervals.")] = 200,
) -> None:
    """Qini curve and AUUC of targeting scores on an experiment's own data, against the random and perfect ones."""
    from experiments.uplift_eval import compare_targeting, qini_curve

    frame = _read_csv(units, "units")
    for field, column in [("outcome", outcome), ("treated", treated), *[("score", s) for s in score]]:
        if column not in frame.columns:
            raise fail(f"{field}: column {column!r} is not in {units.name}")
    with expected(*_errors()):
        scores = {s: frame[s].to_numpy() for s in score}
        table = compare_targeting(frame[outcome].to_numpy(), frame[treated].to_numpy(), scores, bootstrap=bootstrap)
        curves = {s: qini_curve(frame[outcome].to_numpy(), frame[treated].to_numpy(), scores[s]) for s in score}
    _print_frame(table, f"targeting policies on {len(frame)} units")
    out = _out_dir()
    stem = _stamp("uplift")
    plt = _figure()
    fig, ax = plt.subplots(figsize=(8, 5))
    first = next(iter(curves.values()))
    ax.plot(first["share_targeted"], first["perfect"], color="black", linestyle=":", label="perfect")
    ax.plot(first["share_targeted"], first["random"], color="grey", linestyle="--", label="random")
    for name, curve in curves.items():
        ax.plot(curve["share_targeted"], curve["qini"], label=name)
    ax.set_xlabel("share targeted")
    ax.set_ylabel("incremental conversions (Qini)")
    ax.legend()
    plot = _save_figure(fig, out / f"{stem}.png")
    payload = {"units": str(units), "outcome": outcome, "treated": treated, "policies": table.to_dict(orient="records"),
               "curves": {k: v.to_dict(orient="list") for k, v in curves.items()}}  # fmt: skip
    _done(_write_json(out / f"{stem}.json", payload), [plot])
