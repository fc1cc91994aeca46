"""`custintel experiment analyse NAME`: read a registered experiment out (table, SRM line, verdict, where to look)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from flows.cli.app import Engine, app, console, fail, run_engine, settings

try:  # the `experiment` group (design, register, launch, ...) when it is installed
    from flows.cli.experiments import experiment_app  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - until the group lands, `analyse` brings the group itself
    experiment_app = typer.Typer(help="Experiments: design, register, launch, analyse.", no_args_is_help=True)
    app.add_typer(experiment_app, name="experiment")


def _errors() -> tuple[type[BaseException], ...]:
    from experiments.errors import ExperimentError
    from models.registry import RegistryError

    return (ExperimentError, RegistryError)


@experiment_app.command("analyse")
def analyse(
    name: Annotated[str, typer.Argument(help="The registered experiment's name.")],
    source: Annotated[
        str,
        typer.Option(
            help="Where the units come from: log (the decision service's exposures and outcomes), "
            "offer-test (the world's retention-offer test, with CUPED from the feature store), or file "
            "(--units)."
        ),
    ] = "log",  # fmt: skip
    units: Annotated[
        Path | None,
        typer.Option(
            "--units",
            help="A units file (CSV or Parquet: unit, arm, day and the spec's metric columns); implies --source file.",
        ),
    ] = None,  # fmt: skip
    sequential: Annotated[
        bool | None,
        typer.Option("--sequential/--fixed", help="Override the spec's stopping mode (default: the spec's)."),
    ] = None,
    version: Annotated[int | None, typer.Option(help="A registered version (default: the latest).")] = None,
    truth: Annotated[
        Path | None,
        typer.Option(
            help="A generated world's _truth folder: set the offer test's interval beside the true effect "
            "(evaluation only)."
        ),
    ] = None,  # fmt: skip
    engine: Annotated[
        Engine,
        typer.Option(help="prefect: run as the Prefect flow analyse_experiment (tracked); local: call the steps."),
    ] = "prefect",
) -> None:
    """Analyse a registered experiment: per metric the difference and lift with intervals, CUPED, SRM, verdict.

    The report (JSON, plots, HTML) goes under <home>/experiments/NAME/reports/, to MLflow
    (experiment custintel-experiments) and to the reviewers' site. A blocked verdict exits 0.
    """
    from flows.experiments import source_name

    chosen = "file" if units is not None else source
    with _expected():
        chosen = source_name(chosen)
    if chosen == "file" and units is None:
        raise fail("--units: the file source needs a units file")
    if truth is not None and not (truth / "treatment_effect.parquet").is_file():
        raise fail(f"--truth: {truth} holds no treatment_effect.parquet (a generated world's _truth folder)")
    config = settings()
    mode = None if sequential is None else ("sequential" if sequential else "fixed")

    def under_prefect() -> dict[str, Any]:
        from flows.experiments import analyse_experiment_flow

        return analyse_experiment_flow(
            name, config.to_flow(), version, chosen, str(units) if units else None, mode, str(truth) if truth else None
        )

    def locally(say: Any) -> dict[str, Any]:
        from flows.experiments import analyse_experiment

        return analyse_experiment(
            config, name, version=version, source=chosen, units_file=units, mode=mode, truth_dir=truth
        )

    result = run_engine(engine, f"Analysing experiment {name}", "analyse_experiment", under_prefect, locally, _errors())
    print_analysis(result)


def _expected() -> Any:
    from flows.cli.app import expected

    return expected(*_errors())


def _f(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return fmt.format(value)


def print_analysis(result: dict[str, Any]) -> None:
    """The read-out: the table, the SRM line, the verdict, notes, the truth line and where to look."""
    table = Table(title=f"{result['experiment']} v{result['version']} ({result['source']}, {result['mode']})")
    for column in ("metric", "arm", "control mean", "arm mean", "difference [CI]", "relative lift [CI]", "p adj",
                   "CUPED var. red."):  # fmt: skip
        table.add_column(column)
    for r in result["results"]:
        table.add_row(
            r["metric"], r["arm"], _f(r["mean_control"], "{:.4f}"), _f(r["mean_arm"], "{:.4f}"),
            f"{_f(r['difference'], '{:+.4f}')} [{_f(r['ci_low'], '{:+.4f}')}, {_f(r['ci_high'], '{:+.4f}')}]",
            f"{_f(r['relative_lift'], '{:+.1%}')} "
            f"[{_f(r['rel_ci_low'], '{:+.1%}')}, {_f(r['rel_ci_high'], '{:+.1%}')}]",
            _f(r["p_adjusted"], "{:.3g}"), _f(r["variance_reduction"], "{:.1%}"),
        )  # fmt: skip
    console.print(table)
    console.print(escape(result["srm_line"]), soft_wrap=True)
    colour = {"blocked": "bold red", "significant": "green"}.get(result["verdict"], "yellow")
    console.print(f"verdict: [{colour}]{escape(result['verdict_line'])}[/]", soft_wrap=True)
    for reason in result["reasons"]:
        console.print(f"- {escape(reason)}", soft_wrap=True)
    for note in result["units"]["notes"]:
        console.print(f"note: {escape(note)}", soft_wrap=True)
    for column, features in (result["units"].get("covariates") or {}).items():
        shown = ", ".join(features[:8]) + (f", ... ({len(features)} in all)" if len(features) > 8 else "")
        console.print(f"CUPED covariate {escape(column)} from: {escape(shown)}", soft_wrap=True)
    if result.get("truth"):
        console.print(f"truth: {escape(result['truth']['line'])}", soft_wrap=True)
    console.print(f"report: {escape(result['html'])}", soft_wrap=True)
    console.print(f"MLflow run: {result['mlflow_run_id']} (experiment {result['mlflow_experiment']})")
    console.print(f"reviewers' site: {escape(result['site'])}", soft_wrap=True)
