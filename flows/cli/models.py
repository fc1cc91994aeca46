"""Commands on models: `train`, `promote` (the gate), `rollback`, and `registry history`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from flows.cli import views
from flows.cli.app import Engine, app, console, expected, fail, run_engine, settings

if TYPE_CHECKING:
    from custintel.settings import Settings
    from models.own_tables import OwnTable
    from models.table_types import TypedTable
    from models.training import OwnInput

GATED_FAMILIES = ("churn", "propensity", "uplift", "recommendation")


@app.command()
def train(
    family: Annotated[
        Literal["churn", "propensity", "uplift", "recommendation", "all"],
        typer.Argument(
            help="Model family: churn, propensity (with the offer's uplift), recommendation, or all; uplift alone "
            "with --table (your own experiment)."
        ),
    ] = "all",
    engine: Annotated[
        Engine,
        typer.Option(help="prefect: run as the Prefect flow train_model (tracked); local: call the steps."),
    ] = "prefect",
    trials: Annotated[int | None, typer.Option(min=1, help="Optuna trials per study (overrides the config).")] = None,
    timeout: Annotated[
        float | None, typer.Option(min=1, help="Seconds per Optuna study (overrides the config).")
    ] = None,
    tuning_workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Worker processes sharing each Optuna study (overrides the config; above 1 needs a study storage). "
            "A killed worker's trial is failed and run again; the study still ends with the requested trials.",
        ),
    ] = None,
    study_storage: Annotated[
        str | None,
        typer.Option(
            help="Where the Optuna studies live so workers share them: a PostgreSQL URL "
            "(postgresql+psycopg2://user@host/db) or journal:///folder/study.log (a file, one machine). "
            "Default: the optuna_storage setting, else in memory.",
        ),
    ] = None,
    truth: Annotated[
        Path | None,
        typer.Option(help="A generated world's _truth folder: also log each model's score against the oracle."),
    ] = None,
    table: Annotated[
        Path | None,
        typer.Option(
            help="Your own table (CSV, delimited text or Parquet) instead of the feature store: churn (a snapshot "
            "with a label), uplift (an experiment: --treatment, --outcome), propensity (customer x product: --product)."
        ),
    ] = None,
    id_column: Annotated[str | None, typer.Option("--id", help="With --table: the customer id column.")] = None,
    label: Annotated[
        str | None,
        typer.Option(help="With --table: the binary label column (churn: churned or not; propensity: bought or not)."),
    ] = None,
    split_by: Annotated[
        str | None,
        typer.Option(help="With churn or propensity --table: a date column; earlier rows train, later ones test."),
    ] = None,
    duration: Annotated[
        str | None,
        typer.Option(help="With --table: time to churn or to the end of observation; adds the survival model."),
    ] = None,
    keep: Annotated[
        list[str] | None,
        typer.Option(help="With --table: keep this column although the leak guard flags it (repeatable; recorded)."),
    ] = None,
    horizon: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="With --table: the label's window in days (churned within it); with --split-by, "
            "label windows crossing a later stage's first snapshot are refused.",
        ),
    ] = None,  # fmt: skip
    capacity: Annotated[
        int | None,
        typer.Option(
            min=1, help="With --table: customers the team can contact (default: churn.contact_share of those scored)."
        ),
    ] = None,  # fmt: skip
    interactions: Annotated[
        Path | None, typer.Option(help="Recommendation on your own interactions table (CSV or Parquet).")
    ] = None,
    user: Annotated[str | None, typer.Option(help="With --interactions: the user column.")] = None,
    item: Annotated[str | None, typer.Option(help="With --interactions: the item column.")] = None,
    weight: Annotated[str | None, typer.Option(help="With --interactions: a weight column (counts, spend).")] = None,
    time_column: Annotated[
        str | None,
        typer.Option("--time", help="With --interactions: a time column; the latest interactions are held out."),
    ] = None,
    schema: Annotated[
        Path | None,
        typer.Option(
            help="With --table or --interactions: a YAML or JSON file of column -> type (numeric, categorical, "
            "boolean, date, id, text, drop) overriding the inferred types."
        ),
    ] = None,
    treatment: Annotated[
        str | None,
        typer.Option(help="uplift --table: the arm column (0/1, or a treatment and a control name)."),
    ] = None,
    outcome: Annotated[
        str | None, typer.Option(help="uplift --table: the binary outcome the action should raise.")
    ] = None,
    product: Annotated[
        str | None, typer.Option(help="propensity --table: the product column (one row per customer and product).")
    ] = None,
    split: Annotated[
        Literal["per-user", "global", "random"] | None,
        typer.Option(
            help="With --interactions: how interactions are held out, 80/10/10. per-user (the default with --time): "
            "each user's latest ones; global: one time cutoff for all (users seen only late have no history); "
            "random (the default without --time): each user's at random."
        ),
    ] = None,
) -> None:
    """Tune, train, track and register models (@challenger), on the feature store or on your own table."""
    own = own_input(family, {"table": table, "--id": id_column, "--label": label, "--split-by": split_by,
                             "--duration": duration, "interactions": interactions, "--user": user, "--item": item,
                             "--weight": weight, "--time": time_column, "--schema": schema, "--keep": tuple(keep or ()),
                             "--horizon": horizon, "--capacity": capacity, "--treatment": treatment,
                             "--outcome": outcome, "--product": product, "--split": split})  # fmt: skip
    if own is not None:
        check_own(own)
    tuned = tuning_settings(settings(), study_storage, tuning_workers)
    outcomes = run_training(family, engine, trials, timeout, truth, own, tuned)
    views.print_training(settings(), outcomes)


def tuning_settings(config: Settings, storage: str | None, workers: int | None) -> Settings:
    """The settings with the study storage and worker count given; an unusable storage is one line, exit 1."""
    import os

    from models.tuning import StudyStorageError, check_storage, masked_url

    if storage is None and workers is None:
        return config
    update: dict[str, Any] = {}
    if storage is not None:
        update["optuna_storage"] = storage
    if workers is not None:
        update["tuning_workers"] = workers
    config = config.model_copy(update=update)
    if (config.tuning_workers or 1) > 1 and not config.optuna_storage:
        raise fail(f"--tuning-workers {config.tuning_workers} needs a study storage: --study-storage "
                   "postgresql+psycopg2://user@host/db or journal:///folder/study.log")  # fmt: skip
    if config.optuna_storage:
        try:
            check_storage(config.optuna_storage)
        except StudyStorageError as err:
            raise fail(str(err)) from None
    if storage is not None and masked_url(storage) != storage:
        # A flow takes a URL holding a password from its process's environment (Settings.to_flow), not its parameters.
        os.environ["CUSTINTEL_OPTUNA_STORAGE"] = storage
    return config


# Which options each own-table family takes (beyond --table/--interactions): required, then optional.
OWN_OPTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "churn": (("--id", "--label"), ("--split-by", "--duration", "--schema", "--keep", "--horizon", "--capacity")),
    "uplift": (("--id", "--treatment", "--outcome"), ("--schema",)),
    "propensity": (("--id", "--product", "--label"), ("--split-by", "--schema")),
    "recommendation": (("--user", "--item"), ("--weight", "--time", "--schema", "--split")),
}


def own_input(family: str, options: dict[str, Any]) -> OwnInput | None:
    """The user's own table or interactions the options name (None: the feature store); misuse is one line."""
    from models.own_families import OwnPropensity, OwnUplift
    from models.own_tables import OwnInteractions, OwnTable, SplitMethod

    table, interactions = options.pop("table"), options.pop("interactions")
    given = {name for name, value in options.items() if value}
    if table is None and interactions is None:
        if given:
            raise fail(f"{', '.join(sorted(given))} only apply with --table or --interactions")
        if family == "uplift":
            raise fail(
                "uplift alone trains on your own experiment: `custintel train uplift --table F --id C --treatment T "
                "--outcome O` (the feature store's uplift trains with `train propensity`)"
            )
        return None
    if interactions is not None and family != "recommendation":
        raise fail("--interactions trains the recommendation family: use `custintel train recommendation ...`")
    if table is not None and family not in ("churn", "uplift", "propensity"):
        raise fail("--table trains churn, uplift or propensity: e.g. `custintel train churn --table ...`")
    source = "--table" if table is not None else "--interactions"
    required, optional = OWN_OPTIONS[family]
    missing = [name for name in required if not options[name]]
    if missing:
        raise fail(f"{family} {source} needs {' and '.join(missing)}")
    stray = sorted(given - set(required) - set(optional))
    if stray:
        raise fail(
            f"{', '.join(stray)} do(es) not apply to {family} {source}; it takes {', '.join(required + optional)}"
        )
    o = options
    if family == "churn":
        return OwnTable(table, o["--id"], o["--label"], o["--split-by"], o["--duration"], o["--schema"], o["--keep"],
                        o["--horizon"], o["--capacity"])  # fmt: skip
    if family == "uplift":
        return OwnUplift(table, o["--id"], o["--treatment"], o["--outcome"], schema=o["--schema"])
    if family == "propensity":
        return OwnPropensity(table, o["--id"], o["--product"], o["--label"], o["--split-by"], o["--schema"])
    if o["--split"] in ("per-user", "global") and not o["--time"]:
        raise fail(f"--split {o['--split']} needs --time (the column that orders the interactions)")
    method: SplitMethod = o["--split"] or ("per-user" if o["--time"] else "random")  # recorded in the run as used
    return OwnInteractions(interactions, o["--user"], o["--item"], o["--weight"], o["--time"], o["--schema"], method)


def check_own(own: OwnInput) -> None:
    """Read, type and check the user's table in this process, before any orchestration starts; show its schema.

    Every input error (a missing column, a label that is not binary, one class, repeated ids, too
    few rows, a split column that is not dates, a negative duration, ...) ends the command here in
    one line, in seconds, under either engine; the flow checks the same again.
    """
    from models.own_families import OwnPropensity, OwnUplift, own_propensity_table, own_uplift_table
    from models.own_tables import OwnTable, TrainingInputError, check_own_interactions, check_own_table
    from models.splits import SplitError

    with expected(TrainingInputError, SplitError):
        if isinstance(own, OwnUplift | OwnPropensity):
            data = own_uplift_table(own, 0) if isinstance(own, OwnUplift) else own_propensity_table(own, 0)
            rows, described = len(data.frame), list(data.schema_report)
        else:
            typed = check_own_table(own) if isinstance(own, OwnTable) else check_own_interactions(own)
            rows, described = len(typed.frame), typed.describe()
        if isinstance(own, OwnTable):
            check_own_guards(own, typed)
    views.print_schema(f"{own.path.name}: inferred schema ({rows:,} rows)", described)


def check_own_guards(own: OwnTable, typed: TypedTable) -> None:
    """The leak guard's input checks, before anything starts: --keep names columns; label windows fit the split.

    `typed`: the table as `check_own_table` read it (the file is not read again).
    """
    from models.leakage import check_label_windows
    from models.own_tables import TrainingInputError, own_churn_table

    columns = list(typed.frame.columns)
    unknown = [c for c in own.keep if c not in columns]
    if unknown:
        raise TrainingInputError(f"{own.path}: --keep column(s) {unknown} are not in the table; it has {columns}")
    if own.horizon_days and own.split_by:
        check_label_windows(own_churn_table(own, seed=0, checked=typed), own.horizon_days)


def run_training(
    family: str,
    engine: Engine,
    trials: int | None,
    timeout: float | None,
    truth: Path | None,
    own: OwnInput | None,
    config: Settings | None = None,
) -> list[dict[str, Any]]:
    """Train under the engine (with `config`, else this invocation's settings); expected errors are one line."""
    from dataclasses import asdict

    from features.featurestore.build import FeatureBuildError
    from features.featurestore.offline import OfflineStoreError
    from models.config import TrainingConfigError
    from models.own_families import OwnPropensity, OwnUplift
    from models.own_tables import OwnInteractions, OwnTable
    from models.recommendation import RecommendationDataError
    from models.registry import RegistryError
    from models.splits import SplitError
    from models.tabular import TabularSchemaError

    config = config or settings()
    if truth is not None and not truth.is_dir():
        raise fail(f"--truth {truth} is not a folder")

    def under_prefect() -> list[dict[str, Any]]:
        from flows.train import train_model

        given = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(own).items()} if own else None
        kind = {OwnTable: "own_table", OwnInteractions: "own_interactions", OwnUplift: "own_uplift",
                OwnPropensity: "own_propensity"}  # fmt: skip
        mine: dict[str, dict[str, Any] | None] = {name: None for name in kind.values()}
        if own is not None:
            mine[kind[type(own)]] = given
        return train_model(config.to_flow(), family, str(truth) if truth else None, trials, timeout,
                           own_table=mine["own_table"], own_interactions=mine["own_interactions"],
                           own_uplift=mine["own_uplift"], own_propensity=mine["own_propensity"])  # fmt: skip

    def locally(say: Callable[[str], None]) -> list[dict[str, Any]]:
        from flows.features import PLAIN_STEPS as FEATURE_STEPS
        from flows.features import run_feature_build
        from flows.train import PLAIN_STEPS
        from flows.train import run_training as train_units

        def build(days: list[dt.date]) -> Any:
            return run_feature_build(config, days, False, FEATURE_STEPS, say)

        outcomes = train_units(config, family, PLAIN_STEPS, say, build, own, truth, trials, timeout)
        return [o.as_dict() for o in outcomes]

    errors = (FeatureBuildError, OfflineStoreError, TrainingConfigError, RecommendationDataError, RegistryError,
              SplitError, TabularSchemaError, ValueError)  # fmt: skip
    return run_engine(engine, f"Training {family}", "train_model", under_prefect, locally, errors)


@app.command()
def promote(
    model: Annotated[
        str,
        typer.Argument(help="A registered model or a family (churn, propensity, uplift, recommendation), or all."),
    ],
    version: Annotated[str | None, typer.Option(help="The version to audit (default: the @challenger).")] = None,
    approver: Annotated[
        str | None, typer.Option(help="Waive a failed fairness or performance check: the approver's name.")
    ] = None,
    reason: Annotated[str | None, typer.Option(help="With --approver: why the failure is accepted.")] = None,
    engine: Annotated[
        Engine,
        typer.Option(help="prefect: run as the Prefect flow audit_and_promote (tracked); local: call the steps."),
    ] = "prefect",
) -> None:
    """Audit the challenger (fairness, performance vs champion, data quality, signature); promote it if it passes."""
    if (approver is None) != (reason is None):
        raise fail("a waiver needs both --approver and --reason")
    if model == "all" and (version or approver):
        raise fail("--version and --approver name one model: not with `all`")
    decisions = run_gate(list(GATED_FAMILIES) if model == "all" else [model], version, approver, reason, engine)
    views.print_decisions(settings(), decisions)
    if any(d["result"] == "blocked" for d in decisions):
        raise typer.Exit(code=2)


def run_gate(
    models: list[str], version: str | None, approver: str | None, reason: str | None, engine: Engine
) -> list[dict[str, Any]]:
    """Audit each model under the engine, one after the other; expected errors end the command in one line."""
    from governance.gate import Waiver
    from governance.policy import PolicyError
    from governance.store import GateError, actor

    config = settings()
    errors = (GateError, PolicyError, ValueError)
    with expected(*errors):
        waiver = Waiver(approver, reason or "") if approver else None
    decisions = []
    for model in models:

        def under_prefect(model: str = model) -> dict[str, Any]:
            from flows.promote import audit_and_promote

            return audit_and_promote(model, config.to_flow(), version, approver, reason, actor())

        def locally(say: Callable[[str], None], model: str = model) -> dict[str, Any]:
            from flows.promote import PLAIN_STEPS
            from flows.promote import run_gate as gate

            return gate(config, model, version, waiver, actor(), PLAIN_STEPS)

        decisions.append(run_engine(engine, f"Auditing {model}", "audit_and_promote", under_prefect, locally, errors))
    return decisions


@app.command()
def rollback(
    model: Annotated[str, typer.Argument(help="A registered model or a family.")],
    reason: Annotated[str, typer.Option(help="Why the champion is rolled back (recorded).")],
) -> None:
    """Move @champion back to @previous (the demoted version becomes @previous)."""
    from governance.policy import PolicyError
    from governance.promotion import rollback as roll_back
    from governance.store import GateError, actor

    config = settings()
    with expected(GateError, PolicyError):
        decision = roll_back(config, model, reason, actor())
    views.print_decisions(config, [decision])


registry_app = typer.Typer(help="The model registry: registered models, their aliases, and who held them when.")
app.add_typer(registry_app, name="registry")


def _at(value: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(value)
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@registry_app.command("history")
def registry_history(
    model: Annotated[str, typer.Argument(help="A registered model or a family (churn, propensity, uplift, ...).")],
    at: Annotated[
        str | None, typer.Option(help="Only who held each alias at this ISO date or time (UTC unless given).")
    ] = None,
    alias: Annotated[
        list[str] | None, typer.Option(help="Only this alias (champion, challenger, previous); repeatable.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the spans as JSON instead of tables.")] = False,
) -> None:
    """Which version was @champion, @challenger and @previous at any date, and why (the gate's decision)."""
    import json

    from governance.history import alias_spans, holders_at
    from governance.store import read_decisions
    from models.registry import Registry, RegistryError

    config = settings()
    try:
        when = _at(at) if at else None
    except ValueError:
        raise fail(f"--at {at!r} is not an ISO date or time (e.g. 2026-01-15 or 2026-01-15T09:30)") from None
    registry = Registry(config)
    if not registry.exists():
        raise fail(f"no registry at {config.tracking_uri}: train a model first")
    with expected(RegistryError):
        name = registry.resolve_model(model)
        moves = registry.alias_moves(name)
    spans = [s for s in alias_spans(moves, read_decisions(config, name)) if not alias or s.alias in alias]
    if when is not None:
        spans = list(holders_at(spans, when).values())
    if as_json:
        console.print_json(json.dumps([s.as_dict() for s in spans]))
        return
    if when is not None:
        views.print_alias_holders(name, when, spans)
        return
    views.print_alias_history(config, name, spans)
