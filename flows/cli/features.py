"""`custintel features`: build the point-in-time feature sets, and `status` and `lookup` of the stores."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from flows.cli import views
from flows.cli.app import Engine, app, console, expected, fail, run_engine, settings

features_app = typer.Typer(
    help="Point-in-time features: offline store for training, online store for serving.",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(features_app, name="features")


@features_app.callback()
def features(
    ctx: typer.Context,
    as_of: Annotated[
        list[dt.datetime] | None,
        typer.Option(
            "--as-of",
            formats=["%Y-%m-%d"],
            help="Cutoff date (repeatable): features use only what happened and arrived before it. "
            "Default: the end of the observed data (the serving build).",
        ),
    ] = None,
    engine: Annotated[
        Engine,
        typer.Option(help="prefect: run as the Prefect flow build_features (tracked); local: call the steps."),
    ] = "prefect",
    online: Annotated[
        bool, typer.Option(help="Materialise the latest cutoff into the online store (SQLite, or Redis if set).")
    ] = True,
    data_engine: Annotated[
        Literal["duckdb", "spark"] | None,
        typer.Option(help="Where the feature SQL runs: duckdb, or spark (transpiled; default: the engine setting)."),
    ] = None,
) -> None:
    """Build the feature sets and labels into the offline store (run without a subcommand)."""
    if ctx.invoked_subcommand is None:
        days = [d.date() for d in as_of] if as_of else None
        views.print_feature_build(run_feature_build(days, engine, online, data_engine))


def run_feature_build(
    as_of: list[dt.date] | None, engine: Engine, online: bool, data_engine: Literal["duckdb", "spark"] | None = None
) -> dict[str, Any]:
    """Build features under the engine; expected errors end the command in one line."""
    from features.featurestore.build import FeatureBuildError
    from features.featurestore.config import FeatureConfigError
    from features.featurestore.inputs import FeatureInputError
    from features.featurestore.offline import OfflineStoreError
    from features.featurestore.online import OnlineStoreError
    from features.featurestore.quality import FeatureQualityError
    from features.lake import IngestError
    from insights.anomalies import AnomalyError, SourcesStopped

    config = settings()
    if data_engine is not None:
        config = config.model_copy(update={"engine": data_engine})

    def under_prefect() -> dict[str, Any]:
        from flows.features import build_features

        return build_features(config.to_flow(), [str(d) for d in as_of] if as_of else None, online)

    def locally(say: Callable[[str], None]) -> dict[str, Any]:
        from flows.features import PLAIN_STEPS
        from flows.features import run_feature_build as build

        return build(config, as_of, online, PLAIN_STEPS, say)

    errors = (FeatureBuildError, FeatureConfigError, FeatureInputError, FeatureQualityError, OfflineStoreError,
              OnlineStoreError, IngestError, AnomalyError, SourcesStopped)  # fmt: skip
    return run_engine(engine, "Building features", "build_features", under_prefect, locally, errors)


@features_app.command("status")
def features_status() -> None:
    """What the offline store holds (sets, versions, as-of dates, rows), what is online, each feature's class."""
    from features.data_classes import feature_classes
    from features.featurestore.config import FeatureConfigError
    from features.featurestore.offline import read_manifest
    from features.featurestore.online import OnlineStoreError
    from features.featurestore.store import feature_config, offline_root, open_online_store

    config = settings()
    root = offline_root(config)
    offline = []
    for manifest_path in sorted(root.glob("*/v*/manifest.json")):
        key = f"{manifest_path.parent.parent.name}@{manifest_path.parent.name.removeprefix('v')}"
        manifest = read_manifest(root, key) or {}
        parts = ", ".join(f"{d}: {p['rows']:,}" for d, p in manifest.get("partitions", {}).items())
        offline.append((key, manifest.get("digest", ""), parts))
    views.print_offline_status(root, offline)
    with expected(OnlineStoreError):
        with open_online_store(config) as store:
            sets = store.sets()
    views.print_online_status(sets)
    with expected(FeatureConfigError):
        classes = feature_classes(feature_config(config))
    views.print_feature_classes(classes)


@features_app.command("lookup")
def features_lookup(
    customer_key: Annotated[str, typer.Argument(help="A customer key (see the identity crosswalk).")],
) -> None:
    """Print a customer's online features (what serving reads), as JSON."""
    import json

    from features.featurestore.online import OnlineStoreError
    from features.featurestore.store import open_online_store

    with expected(OnlineStoreError):
        with open_online_store(settings()) as store:
            found = store.lookup(customer_key)
    if found is None:
        raise fail(f"customer {customer_key} is in no materialised feature set (unknown key, or not active)")
    console.print_json(json.dumps(found))


@features_app.command("own")
def features_own(
    table: Annotated[Path, typer.Option(help="Your own table (CSV or Parquet), as given to `train --table`.")],
    id_column: Annotated[str, typer.Option("--id", help="The customer id column: the key serving looks up.")],
    split_by: Annotated[
        str | None, typer.Option(help="A date column: each id's newest row is served, as of its date.")
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(help="A column never written (the label, an outcome; repeatable)."),
    ] = None,
    schema: Annotated[
        Path | None, typer.Option(help="The --schema file the model was trained with (column -> type).")
    ] = None,
    set_name: Annotated[
        str | None, typer.Option("--set", help="The online set's name (default: own_<file name>).")
    ] = None,
) -> None:
    """Put your own table into the online store, so a model trained on it (`train --table`) is served by key.

    Each id's latest row, typed exactly as training types the table, becomes the customer's
    document of the set `<name>@1`; the service reads the inputs a model needs from whichever
    sets hold them. Materialising again replaces the set whole.
    """
    import re

    from features.featurestore.online import OnlineStoreError
    from features.featurestore.store import materialize_online
    from models.own_tables import TrainingInputError, own_online_rows

    name = set_name or "own_" + re.sub(r"[^a-z0-9_]+", "_", table.stem.lower()).strip("_")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise fail(f"--set {name!r}: use lower-case letters, digits and underscores, starting with a letter")
    with expected(TrainingInputError):
        rows, typed = own_online_rows(table, id_column, split_by, tuple(exclude or ()), schema)
    views.print_schema(f"{table.name}: inferred schema ({len(typed.frame):,} rows)", typed.describe())
    import pyarrow as pa

    newest = str(max(rows["as_of"])) if len(rows) else None
    if newest is None:
        raise fail(f"{table}: no row to materialise")
    with expected(OnlineStoreError):
        written = materialize_online(settings(), f"{name}@1", pa.Table.from_pandas(rows, preserve_index=False),
                                     {"as_of": newest, "source": str(table.resolve())})  # fmt: skip
    if written is None:
        raise fail(f"the online store holds {name}@1 as of a later date than {newest}: nothing written")
    features = len(rows.columns) - 2
    console.print(f"online: {name}@1, {written:,} customers x {features} features as of {newest} "
                  f"(`custintel features lookup <{id_column}>` shows one)")  # fmt: skip
