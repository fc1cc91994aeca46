"""`custintel resolve`: identity resolution, and its `explain`, `conflicts` and `evaluate` subcommands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from custintel.settings import Settings
from flows.cli import views
from flows.cli.app import Engine, app, console, expected, fail, run_engine, settings

resolve_app = typer.Typer(
    help="Identity resolution: one customer key per person across CRM, billing and acquired records.",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(resolve_app, name="resolve")
DataEngine = Literal["duckdb", "spark"]


@resolve_app.callback()
def resolve(
    ctx: typer.Context,
    engine: Annotated[
        Engine,
        typer.Option(help="prefect: run as the Prefect flow resolve_identities (tracked); local: call the step."),
    ] = "prefect",
    reuse_model: Annotated[
        bool, typer.Option(help="Score with the last trained model instead of re-estimating it on this data.")
    ] = False,
    data_engine: Annotated[
        DataEngine | None,
        typer.Option(
            help="Where Splink runs: duckdb in this process, or spark (spark_master). "
            "Default: the engine setting ($CUSTINTEL_ENGINE, else duckdb)."
        ),
    ] = None,
) -> None:
    """Resolve the lake's identity records into customers (run without a subcommand)."""
    if ctx.invoked_subcommand is None:
        views.print_resolution(run_resolution(engine, reuse_model, data_engine))


def run_resolution(engine: Engine, reuse_model: bool, data_engine: DataEngine | None = None) -> dict[str, Any]:
    """Resolve identities under the engine; expected errors end the command in one line."""
    from features.identity.config import IdentityConfigError
    from features.identity.privacy import PrivacyError
    from features.identity.store import resolve_from_lake
    from features.lake import IngestError
    from features.spark_engine import SparkUnavailable, stop_spark

    config = settings()
    if data_engine is not None:
        config = config.model_copy(update={"engine": data_engine})

    def under_prefect() -> dict[str, Any]:
        from flows.resolve import resolve_identities

        return resolve_identities(config.to_flow(), reuse_model)

    def locally(say: Callable[[str], None]) -> dict[str, Any]:
        return resolve_from_lake(config, reuse_model, lambda message: say(f"Resolving identities: {message}…"))

    # ValueError covers no records to resolve and data the model cannot be trained on
    errors = (IdentityConfigError, PrivacyError, IngestError, FileNotFoundError, ValueError, SparkUnavailable)
    try:
        return run_engine(engine, "Resolving identities", "resolve_identities", under_prefect, locally, errors)
    finally:
        if config.engine == "spark":
            stop_spark()


def identity_outputs(config: Settings, *names: str) -> list[Any]:
    """The last resolution's tables by name (one line and exit 1 when there is none)."""
    from features.identity.store import IdentityStoreError, read_identity_table

    with expected(IdentityStoreError):
        return [read_identity_table(config, n) for n in names]


@resolve_app.command("explain")
def resolve_explain(
    record_a: Annotated[str, typer.Argument(help="A record key, e.g. crm_accounts:C000000003.")],
    record_b: Annotated[str, typer.Argument(help="Another record key, e.g. billing_accounts:BA000000025.")],
) -> None:
    """Why two records were, or were not, linked: rules, match weights per comparison, the path."""
    from features.identity.config import IdentityConfigError
    from features.identity.explain import ExplainError, explain_pair
    from features.identity.privacy import HASHED_RULES
    from features.identity.store import IdentityStoreError, identity_config, read_model, read_run

    config = settings()
    match_records, crosswalk, links = identity_outputs(config, "match_records", "crosswalk", "links")
    with expected(IdentityConfigError, IdentityStoreError):
        run = read_run(config)
        identity = identity_config(config)
    opts = run["options"]
    # the rules the run used (older runs did not record them: then today's configuration)
    rules: list[str] = run["stats"].get("deterministic_rules") or (
        list(HASHED_RULES) if opts["hashed"] else [r for r in identity.deterministic_rules if r in opts["fields"]]
    )
    model = read_model(config) if opts["probabilistic"] else None
    with expected(ExplainError):
        e = explain_pair(record_a, record_b, match_records, crosswalk, links, identity, rules, model, opts["threshold"])
    views.print_explanation(e, record_a, record_b)


@resolve_app.command("conflicts")
def resolve_conflicts(
    attribute: Annotated[str | None, typer.Option(help="Only this attribute, e.g. email.")] = None,
    customer: Annotated[str | None, typer.Option(help="Only this customer key.")] = None,
    limit: Annotated[int, typer.Option(help="How many conflicts to show.", min=1)] = 20,
) -> None:
    """The conflict log: attributes on which a customer's records disagree, and what won."""
    config = settings()
    (conflicts,) = identity_outputs(config, "conflicts")
    if attribute:
        conflicts = conflicts[conflicts["attribute"] == attribute]
    if customer:
        conflicts = conflicts[conflicts["customer_key"] == customer]
    if conflicts.empty:
        console.print("No conflicts match.")
        return
    views.print_conflicts(conflicts, limit)
    console.print(f"Conflict log: [bold]{config.identity_dir / 'conflicts.parquet'}[/]")


@resolve_app.command("evaluate")
def resolve_evaluate(
    truth: Annotated[
        Path,
        typer.Option(
            help="The generator's _truth folder (or a Parquet/CSV file with record_key or "
            "source_table+record_id, and person_id)."
        ),
    ],
) -> None:
    """Score the last resolution against known truth: pairwise and cluster metrics, with and without Splink."""
    import json

    import pandas as pd

    from features.identity.evaluate import evaluate_resolution

    config = settings()
    crosswalk, links = identity_outputs(config, "crosswalk", "links")
    path = truth / "source_records.parquet" if truth.is_dir() else truth
    if not path.is_file():
        raise fail(f"{path} does not exist")
    try:
        frame = pd.read_csv(path, dtype=str) if path.suffix == ".csv" else pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's errors are ValueErrors and OSErrors
        raise fail(f"{path} is not a readable {'CSV' if path.suffix == '.csv' else 'Parquet'} file: {exc}") from None
    if "record_key" not in frame:
        if not {"source_table", "record_id"} <= set(frame.columns):
            raise fail(f"{path} needs a record_key column, or source_table and record_id")
        frame["record_key"] = frame["source_table"].astype(str) + ":" + frame["record_id"].astype(str)
    if "person_id" not in frame:
        raise fail(f"{path} needs a person_id column")
    scores = evaluate_resolution(crosswalk, links, frame)
    out = config.reports_dir / "identity" / "evaluation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(scores, indent=2), encoding="utf-8")
    views.print_identity_scores(scores, out)
