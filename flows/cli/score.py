"""`custintel score`: every customer scored by a model's champion as of a cutoff, written as a table."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any, Literal

import typer

from flows.cli.app import Engine, app, console, run_engine, settings

Compute = Literal["duckdb", "spark"]


@app.command("score")
def score(
    model: Annotated[
        str, typer.Option(help="The model to score with: a family (churn) or a registered name.")
    ] = "churn",
    as_of: Annotated[
        dt.datetime | None,
        typer.Option(
            "--as-of",
            formats=["%Y-%m-%d"],
            help="The cutoff whose stored features are scored. Default: the latest cutoff every input set holds.",
        ),
    ] = None,
    data_engine: Annotated[
        Compute | None,
        typer.Option(help="Where the rows are joined and scored: duckdb, or spark (default: the engine setting)."),
    ] = None,
    engine: Annotated[
        Engine,
        typer.Option(help="prefect: run as the Prefect flow score_customers (tracked); local: call the steps."),
    ] = "prefect",
) -> None:
    """Score every customer with the model's @champion; write <home>/scores/<model>/as_of=<date>/data.parquet."""
    from models.registry import RegistryError
    from models.scores import BatchScoringError

    config = settings()
    if data_engine is not None:
        config = config.model_copy(update={"engine": data_engine})
    day = as_of.date() if as_of else None

    def under_prefect() -> dict[str, Any]:
        from flows.score import score_customers

        return score_customers(config.to_flow(), model, str(day) if day else None)

    def locally(say: Callable[[str], None]) -> dict[str, Any]:
        from flows.score import run_batch_scoring

        return run_batch_scoring(config, model, day, say)

    result = run_engine(engine, "Scoring customers", "score_customers", under_prefect, locally,
                        (BatchScoringError, RegistryError))  # fmt: skip
    mean = "" if result["mean_score"] is None else f", mean score {result['mean_score']:.4f}"
    console.print(
        f"scored {result['customers']:,} customers with {result['model']} v{result['version']} as of "
        f"{result['as_of']} on {result['engine']}{mean} in {result['seconds']} s: {result['path']}",
        soft_wrap=True,
    )
