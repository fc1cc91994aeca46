"""The `custintel` command line: parse, load settings, call one function."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from custintel.settings import Settings

app = typer.Typer(
    name="custintel",
    help="custintel: customer-intelligence models from raw source drops to governed, served, monitored models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Off a terminal (CI, pipes) rich would wrap tables at 80 columns; logs read better wider.
console = Console(width=None if sys.stdout.isatty() else 160)
_state: dict[str, Settings] = {}


def _progress() -> Progress:
    """A progress bar on the console (silent without a terminal)."""
    return Progress(
        TextColumn("[bold]{task.description}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )


def _settings() -> Settings:
    return _state.get("settings") or Settings()


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=1)


@app.callback()
def main(
    home: Annotated[
        Path | None,
        typer.Option(
            help="custintel home (lake, quarantine, reports, MLflow store). Default: $CUSTINTEL_HOME or ./.custintel",
            envvar="CUSTINTEL_HOME",
        ),
    ] = None,
) -> None:
    """Customer intelligence: churn, propensity and recommendation models, end to end."""
    # Prefect's ephemeral server phones home for analytics; offline that only logs an error.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Its 20 s start-up limit is too short on a busy 2-core machine (the API migrates its SQLite database first).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    _state["settings"] = Settings(home=home) if home else Settings()


@app.command()
def generate(
    customers: Annotated[int, typer.Option(help="True persons in the world.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed and knobs give the same bytes.")] = 7,
    out: Annotated[Path | None, typer.Option(help="Folder for the drop (default: <home>/data/world).")] = None,
    duplicate_rate: Annotated[float, typer.Option(help="Share of persons with extra CRM records.")] = 0.2,
    typo_rate: Annotated[float, typer.Option(help="Chance of a typo in a secondary record's field.")] = 0.08,
    missing_rate: Annotated[float, typer.Option(help="Base chance an optional field is empty.")] = 0.05,
    malformed_rate: Annotated[float, typer.Option(help="Share of rows per table deliberately broken.")] = 0.003,
    acquired_share: Annotated[float, typer.Option(help="Share of persons from the acquired company.")] = 0.15,
    bias_strength: Annotated[
        float,
        typer.Option(
            help="Skew of the protected group's outcome (higher churn) and features (under-recorded "
            "service signals); 0 = none."
        ),
    ] = 0.0,
    bias_attribute: Annotated[
        str, typer.Option(help="Attribute defining the protected group: gender, age_band or region.")
    ] = "gender",
    bias_group: Annotated[str, typer.Option(help="The protected group's value of that attribute.")] = "F",
    drift_date: Annotated[
        str | None, typer.Option(help="YYYY-MM-DD after which the population and behaviour shift.")
    ] = None,
    drift_strength: Annotated[float, typer.Option(help="How far they shift; 0 = none.")] = 0.0,
    chunk_size: Annotated[
        int, typer.Option(help="Persons simulated per chunk (bounds memory; part of the world's identity).")
    ] = 50_000,
) -> None:
    """Write a synthetic multi-source customer world and its hidden truth."""
    from features.synthetic import WorldConfig, generate_world

    settings = _settings()
    try:
        cfg = WorldConfig(
            customers=customers,
            seed=seed,
            duplicate_rate=duplicate_rate,
            typo_rate=typo_rate,
            missing_rate=missing_rate,
            malformed_rate=malformed_rate,
            acquired_share=acquired_share,
            bias_strength=bias_strength,
            bias_attribute=bias_attribute,
            bias_group=bias_group,
            drift_date=dt.date.fromisoformat(drift_date) if drift_date else None,
            drift_strength=drift_strength,
            chunk_size=chunk_size,
        )
    except (ValidationError, ValueError) as exc:
        raise _fail(f"invalid generator settings: {exc}") from None
    target = out or settings.default_data_dir / "world"
    with Progress(
        TextColumn("[bold]generating[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("chunks"),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    ) as progress:
        bar = progress.add_task("generate", total=-(-cfg.customers // cfg.chunk_size))
        summary = generate_world(cfg, target, on_chunk=lambda done, total: progress.update(bar, completed=done))
    table = Table(title=f"Synthetic world: {cfg.customers:,} customers, seed {cfg.seed}")
    table.add_column("source table")
    table.add_column("rows", justify="right")
    for name, rows in summary.rows.items():
        table.add_row(name, f"{rows:,}")
    console.print(table)
    late = ", ".join(f"{t}: {n:,}" for t, n in summary.not_yet_arrived.items())
    console.print(f"Drop written to [bold]{target}[/] (export date {cfg.window_end}).")
    console.print(f"Late records not yet arrived by the export date: {late}.")
    console.print(f"Hidden truth in [bold]{target / '_truth'}[/] (evaluation and benchmarks only).")


def _print_ingestion(report: object) -> None:
    from features.lake import IngestionReport

    assert isinstance(report, IngestionReport)
    table = Table(title=f"Ingestion of drop {report.drop_id}")
    for col, justify in (
        ("table", "left"),
        ("read", "right"),
        ("accepted", "right"),
        ("quarantined", "right"),
        ("nulled values", "right"),
        ("top reasons", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for name, t in report.tables.items():
        if t.skipped:
            table.add_row(name, "-", "-", "-", "-", f"skipped: {t.skipped}")
            continue
        top = "; ".join(f"{k} ({n:,})" for k, n in list(t.reasons.items())[:3])
        table.add_row(name, f"{t.read:,}", f"{t.accepted:,}", f"{t.quarantined:,}", f"{t.nulled_values:,}", top)
    console.print(table)
    verdict = "[green]all counts reconcile[/]" if report.reconciles else "[red]counts do not reconcile[/]"
    console.print(f"{verdict} (read = accepted + quarantined).")
    if report.replaced_existing:
        console.print("This drop had been ingested before: its partitions were replaced (idempotent).")


@app.command()
def ingest(
    source: Annotated[Path, typer.Option(help="Folder of the source drop to ingest.")],
    contracts: Annotated[
        Path | None, typer.Option(help="Folder of contract YAML files (default: the contracts shipped with custintel).")
    ] = None,
    engine: Annotated[
        Literal["prefect", "local"],
        typer.Option(help="prefect: run as the Prefect flow ingest_sources (tracked); local: call the step directly."),
    ] = "prefect",
) -> None:
    """Check a drop against its data contracts and land it in the lake; rejects go to quarantine."""
    from features.contracts import load_contracts
    from features.lake import IngestError, ingest_drop

    settings = _settings()
    try:
        if engine == "prefect":
            from flows.ingest import ingest_sources

            with console.status("Ingesting (Prefect flow ingest_sources)…"):
                report = ingest_sources(str(source), settings.to_flow(), str(contracts) if contracts else None)
        else:
            with console.status("Ingesting…") as status:
                report = ingest_drop(
                    source,
                    settings,
                    load_contracts(contracts) if contracts else None,
                    progress=lambda t, n: status.update(f"Ingesting {t}: {n:,} rows read"),
                )
    except (IngestError, ValueError) as exc:
        raise _fail(str(exc)) from None
    _print_ingestion(report)
    console.print(
        f"Lake: [bold]{settings.lake_dir}[/]  quarantine: [bold]{settings.quarantine_dir}[/]  "
        f"report: [bold]{settings.reports_dir / 'ingest' / (report.drop_id + '.json')}[/]"
    )


@app.command()
def quarantine(
    table: Annotated[str, typer.Argument(help="Source table, e.g. crm_accounts.")],
    limit: Annotated[int, typer.Option(help="How many example rows to show.")] = 10,
) -> None:
    """Show why rows of a table were quarantined (for data stewards)."""
    from features.lake import read_quarantine

    issues = read_quarantine(_settings(), table)
    if issues.empty:
        console.print(f"No quarantined rows or issues for {table}.")
        return
    counts = issues.groupby(["field", "check", "action"]).size().reset_index(name="count")
    summary = Table(title=f"{table}: {len(issues):,} issues")
    for col in ("field", "check", "action", "count"):
        summary.add_column(col)
    for row in counts.sort_values("count", ascending=False).itertuples(index=False):
        summary.add_row(str(row.field), str(row.check), str(row.action), f"{row.count:,}")
    console.print(summary)
    examples = Table(title="examples")
    for col in ("file", "row", "field", "reason"):
        examples.add_column(col)
    for _, r in issues.head(limit).iterrows():
        examples.add_row(str(r["_source_file"]), str(r["row_number"]), str(r["field"]), str(r["reason"]))
    console.print(examples)


resolve_app = typer.Typer(
    help="Identity resolution: one customer key per person across CRM, billing and acquired records.",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(resolve_app, name="resolve")


@resolve_app.callback()
def resolve(
    ctx: typer.Context,
    engine: Annotated[
        Literal["prefect", "local"],
        typer.Option(help="prefect: run as the Prefect flow resolve_identities (tracked); local: call the step."),
    ] = "prefect",
    reuse_model: Annotated[
        bool, typer.Option(help="Score with the last trained model instead of re-estimating it on this data.")
    ] = False,
) -> None:
    """Resolve the lake's identity records into customers (run without a subcommand)."""
    if ctx.invoked_subcommand is None:
        _run_resolution(engine, reuse_model)


def _run_resolution(engine: str, reuse_model: bool) -> None:
    from features.identity.config import IdentityConfigError
    from features.identity.privacy import PrivacyError
    from features.lake import IngestError

    settings = _settings()
    try:
        if engine == "prefect":
            from flows.resolve import resolve_identities

            with console.status("Resolving identities (Prefect flow resolve_identities)…"):
                run = resolve_identities(settings.to_flow(), reuse_model)
        else:
            run = _resolve_locally(settings, reuse_model)
    except (IdentityConfigError, PrivacyError, IngestError, FileNotFoundError, ValueError) as exc:
        # ValueError covers no records to resolve and data the model cannot be trained on
        raise _fail(str(exc)) from None
    _print_resolution(run)


def _resolve_locally(settings: Settings, reuse_model: bool) -> dict[str, Any]:
    from features.identity.store import resolve_from_lake

    with console.status("Resolving identities…") as status:
        return resolve_from_lake(
            settings, reuse_model, lambda message: status.update(f"Resolving identities: {message}…")
        )


def _print_resolution(run: dict[str, Any]) -> None:
    stats = run["stats"]
    table = Table(title=f"Identity resolution {run['run_id']}")
    table.add_column("")
    table.add_column("count", justify="right")
    for source, n in stats["records_by_source"].items():
        table.add_row(f"records from {source}", f"{n:,}")
    for rule, n in stats["links_by_rule"].items():
        table.add_row(f"links by {rule}", f"{n:,}")
    table.add_row("customers", f"{stats['customers']:,}")
    table.add_row("customers with one record", f"{stats['single_record_customers']:,}")
    for event, n in stats["key_events"].items():
        table.add_row(f"keys {event}", f"{n:,}")
    for attribute, n in stats["conflicts_by_attribute"].items():
        table.add_row(f"conflicts on {attribute}", f"{n:,}")
    console.print(table)
    opts = run["options"]
    console.print(
        f"threshold {opts['threshold']}, fields {', '.join(opts['fields'])}"
        + (", hashed identifiers only" if opts["hashed"] else "")
        + f"; seconds per step: {stats['seconds']}"
    )
    console.print(f"Outputs: [bold]{Path(run['outputs']['crosswalk']).parent}[/]")


def _identity_outputs(settings: Settings, *names: str) -> list[Any]:
    from features.identity.store import IdentityStoreError, read_identity_table

    try:
        return [read_identity_table(settings, n) for n in names]
    except IdentityStoreError as exc:
        raise _fail(str(exc)) from None


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

    settings = _settings()
    match_records, crosswalk, links = _identity_outputs(settings, "match_records", "crosswalk", "links")
    try:
        run = read_run(settings)
        config = identity_config(settings)
    except (IdentityConfigError, IdentityStoreError) as exc:
        raise _fail(str(exc)) from None
    opts = run["options"]
    # the rules the run used (older runs did not record them: then today's configuration)
    rules: list[str] = run["stats"].get("deterministic_rules") or (
        list(HASHED_RULES) if opts["hashed"] else [r for r in config.deterministic.rules if r in opts["fields"]]
    )
    model = read_model(settings) if opts["probabilistic"] else None
    try:
        e = explain_pair(record_a, record_b, match_records, crosswalk, links, config, rules, model, opts["threshold"])
    except ExplainError as exc:
        raise _fail(str(exc)) from None
    records = Table(title="the two records (as the matcher saw them)")
    records.add_column("field")
    records.add_column(record_a)
    records.add_column(record_b)
    for name in e.record_a:
        if name not in ("record_key",):
            records.add_row(name, str(e.record_a[name] or ""), str(e.record_b[name] or ""))
    records.add_row("customer_key", str(e.customer_key_a), str(e.customer_key_b))
    console.print(records)
    rules_table = Table(title="deterministic rules")
    for col in ("rule", "links", "why"):
        rules_table.add_column(col)
    for r in e.rules:
        rules_table.add_row(r.rule, "yes" if r.links else "no", r.reason)
    console.print(rules_table)
    if e.match_probability is not None:
        weights = Table(title="probabilistic model: evidence per comparison")
        for col in ("comparison", "level", "Bayes factor", "match weight"):
            weights.add_column(col, justify="right" if col in ("Bayes factor", "match weight") else "left")
        weights.add_row("prior (two random records)", "", "", f"{e.prior_match_weight:+.2f}")
        for c in e.comparisons:
            weights.add_row(c.comparison, c.level, f"{c.bayes_factor:.3g}", f"{c.match_weight:+.2f}")
        weights.add_row("total", "", "", f"{e.match_weight:+.2f}")
        console.print(weights)
        console.print(
            f"match probability {e.match_probability:.6f} (threshold {e.threshold}); "
            f"proposed by a blocking rule: {'yes' if e.candidate_pair else 'no'}"
        )
    for step in e.path:
        prob = f" (p = {step['match_probability']:.4f})" if step["rule"] == "probabilistic" else ""
        console.print(f"  {step['from']} —{step['rule']}{prob}→ {step['to']}")
    console.print(f"[bold]{e.verdict}[/]")


@resolve_app.command("conflicts")
def resolve_conflicts(
    attribute: Annotated[str | None, typer.Option(help="Only this attribute, e.g. email.")] = None,
    customer: Annotated[str | None, typer.Option(help="Only this customer key.")] = None,
    limit: Annotated[int, typer.Option(help="How many conflicts to show.", min=1)] = 20,
) -> None:
    """The conflict log: attributes on which a customer's records disagree, and what won."""
    (conflicts,) = _identity_outputs(_settings(), "conflicts")
    if attribute:
        conflicts = conflicts[conflicts["attribute"] == attribute]
    if customer:
        conflicts = conflicts[conflicts["customer_key"] == customer]
    if conflicts.empty:
        console.print("No conflicts match.")
        return
    counts = Table(title=f"{len(conflicts):,} conflicts")
    counts.add_column("attribute")
    counts.add_column("customers", justify="right")
    for name, n in conflicts["attribute"].value_counts().items():
        counts.add_row(str(name), f"{n:,}")
    console.print(counts)
    shown = Table(title="conflicts")
    for col in ("customer_key", "attribute", "chosen", "rule", "candidates (value, records, sources)"):
        shown.add_column(col)
    for r in conflicts.head(limit).itertuples(index=False):
        shown.add_row(r.customer_key, r.attribute, str(r.chosen_value), r.rule, r.candidates)
    console.print(shown)


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

    settings = _settings()
    crosswalk, links = _identity_outputs(settings, "crosswalk", "links")
    path = truth / "source_records.parquet" if truth.is_dir() else truth
    if not path.is_file():
        raise _fail(f"{path} does not exist")
    try:
        frame = pd.read_csv(path, dtype=str) if path.suffix == ".csv" else pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's errors are ValueErrors and OSErrors
        raise _fail(f"{path} is not a readable {'CSV' if path.suffix == '.csv' else 'Parquet'} file: {exc}") from None
    if "record_key" not in frame:
        if not {"source_table", "record_id"} <= set(frame.columns):
            raise _fail(f"{path} needs a record_key column, or source_table and record_id")
        frame["record_key"] = frame["source_table"].astype(str) + ":" + frame["record_id"].astype(str)
    if "person_id" not in frame:
        raise _fail(f"{path} needs a person_id column")
    scores = evaluate_resolution(crosswalk, links, frame)
    table = Table(title="identity resolution against the truth")
    table.add_column("metric")
    for name in scores:
        table.add_column(name, justify="right")
    for metric in scores["deterministic"]:
        table.add_row(metric, *[f"{scores[n][metric]:,.4f}".rstrip("0").rstrip(".") for n in scores])
    console.print(table)
    out = settings.reports_dir / "identity" / "evaluation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(scores, indent=2), encoding="utf-8")
    console.print(f"Written to [bold]{out}[/]")


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
        Literal["prefect", "local"],
        typer.Option(help="prefect: run as the Prefect flow build_features (tracked); local: call the steps."),
    ] = "prefect",
    online: Annotated[
        bool, typer.Option(help="Materialise the latest cutoff into the online store (SQLite, or Redis if set).")
    ] = True,
) -> None:
    """Build the feature sets and labels into the offline store (run without a subcommand)."""
    if ctx.invoked_subcommand is None:
        days = [d.date() for d in as_of] if as_of else None
        _print_feature_build(_run_feature_build(days, engine, online))


def _run_feature_build(as_of: list[dt.date] | None, engine: str, online: bool) -> dict[str, Any]:
    from features.featurestore.build import FeatureBuildError
    from features.featurestore.config import FeatureConfigError
    from features.featurestore.inputs import FeatureInputError
    from features.featurestore.offline import OfflineStoreError
    from features.featurestore.online import OnlineStoreError
    from features.featurestore.quality import FeatureQualityError
    from features.lake import IngestError

    settings = _settings()
    errors = (FeatureBuildError, FeatureConfigError, FeatureInputError, FeatureQualityError, OfflineStoreError,
              OnlineStoreError, IngestError)  # fmt: skip
    try:
        if engine == "prefect":
            from flows.features import build_features

            with console.status("Building features (Prefect flow build_features)…"):
                return build_features(settings.to_flow(), [str(d) for d in as_of] if as_of else None, online)
        from flows.features import PLAIN_STEPS, run_feature_build

        with console.status("Building features…") as status:
            return run_feature_build(settings, as_of, online, PLAIN_STEPS, lambda m: status.update(m))
    except errors as exc:
        raise _fail(str(exc)) from None


def _print_feature_build(report: dict[str, Any]) -> None:
    table = Table(title=f"Feature build {report['build_id']}")
    for col in ("set", "digest", "rows per as-of", "note"):
        table.add_column(col)
    for key, s in report["sets"].items():
        parts = ", ".join(f"{d}: {p['rows']:,}" for d, p in s.get("partitions", {}).items())
        note = s.get("skipped") or (f"dropped {', '.join(s['dropped_features'])}" if s.get("dropped_features") else "")
        table.add_row(key, s.get("digest", ""), parts, note)
    console.print(table)
    unlinked = {k: v for k, v in report["inputs"]["unlinked_rows"].items() if v}
    if unlinked:
        console.print(f"rows that found no customer (anonymous or unresolved): {unlinked}")
    for key, o in report["online"].items():
        if o.get("skipped"):
            console.print(f"online ({o['store']}): {key} kept: {o['skipped']} than {o['as_of']} (a backfill)")
        else:
            console.print(f"online ({o['store']}): {key} as of {o['as_of']}: {o['customers']:,} customers")
    console.print(f"seconds: {report['seconds']}")
    console.print(f"Offline store: [bold]{report['offline_root']}[/]  manifest: [bold]{report['report_path']}[/]")


@features_app.command("status")
def features_status() -> None:
    """What the offline store holds (sets, versions, as-of dates, rows) and what is online."""
    from features.featurestore.offline import read_manifest
    from features.featurestore.online import OnlineStoreError
    from features.featurestore.store import offline_root, open_online_store

    settings = _settings()
    root = offline_root(settings)
    table = Table(title=f"Offline store {root}")
    for col in ("set", "digest", "as-of: rows"):
        table.add_column(col)
    for manifest_path in sorted(root.glob("*/v*/manifest.json")):
        key = f"{manifest_path.parent.parent.name}@{manifest_path.parent.name.removeprefix('v')}"
        manifest = read_manifest(root, key) or {}
        parts = ", ".join(f"{d}: {p['rows']:,}" for d, p in manifest.get("partitions", {}).items())
        table.add_row(key, manifest.get("digest", ""), parts)
    console.print(table if table.row_count else f"nothing built under {root}: run `custintel features`")
    try:
        with open_online_store(settings) as store:
            sets = store.sets()
    except OnlineStoreError as exc:
        raise _fail(str(exc)) from None
    for key, meta in sets.items():
        console.print(f"online: {key} as of {meta.get('as_of')}: {meta.get('rows', 0):,} customers "
                      f"(materialised {meta.get('materialized_at')})")  # fmt: skip
    if not sets:
        console.print("online store: empty")


@features_app.command("lookup")
def features_lookup(
    customer_key: Annotated[str, typer.Argument(help="A customer key (see the identity crosswalk).")],
) -> None:
    """Print a customer's online features (what serving reads), as JSON."""
    import json

    from features.featurestore.online import OnlineStoreError
    from features.featurestore.store import open_online_store

    try:
        with open_online_store(_settings()) as store:
            found = store.lookup(customer_key)
    except OnlineStoreError as exc:
        raise _fail(str(exc)) from None
    if found is None:
        raise _fail(f"customer {customer_key} is in no materialised feature set (unknown key, or not active)")
    console.print_json(json.dumps(found))


@app.command()
def train(
    family: Annotated[
        Literal["churn", "propensity", "recommendation", "all"],
        typer.Argument(help="Model family: churn, propensity (with the offer's uplift), recommendation, or all."),
    ] = "all",
    engine: Annotated[
        Literal["prefect", "local"],
        typer.Option(help="prefect: run as the Prefect flow train_model (tracked); local: call the steps."),
    ] = "prefect",
    trials: Annotated[int | None, typer.Option(min=1, help="Optuna trials per study (overrides the config).")] = None,
    timeout: Annotated[
        float | None, typer.Option(min=1, help="Seconds per Optuna study (overrides the config).")
    ] = None,
    truth: Annotated[
        Path | None,
        typer.Option(help="A generated world's _truth folder: also log each model's score against the oracle."),
    ] = None,
    table: Annotated[
        Path | None,
        typer.Option(help="Churn on your own snapshot table (CSV or Parquet) instead of the feature store."),
    ] = None,
    id_column: Annotated[str | None, typer.Option("--id", help="With --table: the customer id column.")] = None,
    label: Annotated[str | None, typer.Option(help="With --table: the binary label column (churned or not).")] = None,
    split_by: Annotated[
        str | None, typer.Option(help="With --table: a date column; earlier rows train, later ones test.")
    ] = None,
    duration: Annotated[
        str | None,
        typer.Option(help="With --table: time to churn or to the end of observation; adds the survival model."),
    ] = None,
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
) -> None:
    """Tune, train, track and register models (@challenger), on the feature store or on your own table."""
    own = _own_input(family, table, id_column, label, split_by, duration, interactions, user, item, weight, time_column)
    outcomes = _run_training(family, engine, trials, timeout, truth, own)
    _print_training(outcomes)


def _own_input(
    family: str,
    table: Path | None,
    id_column: str | None,
    label: str | None,
    split_by: str | None,
    duration: str | None,
    interactions: Path | None,
    user: str | None,
    item: str | None,
    weight: str | None,
    time_column: str | None,
) -> Any:
    from flows.train import OwnInteractions, OwnTable

    if table is not None:
        if family != "churn":
            raise _fail("--table trains the churn family: use `custintel train churn --table ...`")
        if not id_column or not label:
            raise _fail("--table needs --id and --label")
        return OwnTable(table, id_column, label, split_by, duration)
    if interactions is not None:
        if family != "recommendation":
            raise _fail("--interactions trains the recommendation family: use `custintel train recommendation ...`")
        if not user or not item:
            raise _fail("--interactions needs --user and --item")
        return OwnInteractions(interactions, user, item, weight, time_column)
    given = {"--id": id_column, "--label": label, "--split-by": split_by, "--duration": duration, "--user": user,
             "--item": item, "--weight": weight, "--time": time_column}  # fmt: skip
    stray = [name for name, value in given.items() if value]
    if stray:
        raise _fail(f"{', '.join(stray)} only apply with --table or --interactions")
    return None


def _run_training(
    family: str, engine: str, trials: int | None, timeout: float | None, truth: Path | None, own: Any
) -> list[dict[str, Any]]:
    from dataclasses import asdict

    from features.featurestore.build import FeatureBuildError
    from features.featurestore.offline import OfflineStoreError
    from models.config import TrainingConfigError
    from models.recommendation import RecommendationDataError
    from models.registry import RegistryError
    from models.splits import SplitError
    from models.tabular import TabularSchemaError

    settings = _settings()
    if truth is not None and not truth.is_dir():
        raise _fail(f"--truth {truth} is not a folder")
    errors = (FeatureBuildError, OfflineStoreError, TrainingConfigError, RecommendationDataError, RegistryError,
              SplitError, TabularSchemaError, ValueError)  # fmt: skip
    try:
        if engine == "prefect":
            from flows.train import OwnTable, train_model

            given = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(own).items()} if own else None
            own_table = given if isinstance(own, OwnTable) else None
            own_interactions = given if own is not None and not isinstance(own, OwnTable) else None
            with console.status(f"Training {family} (Prefect flow train_model)…"):
                return train_model(settings.to_flow(), family, str(truth) if truth else None, trials, timeout,
                                   own_table, own_interactions)  # fmt: skip
        from flows.features import PLAIN_STEPS as FEATURE_STEPS
        from flows.features import run_feature_build
        from flows.train import PLAIN_STEPS, run_training

        with console.status(f"Training {family}…") as status:

            def build(days: list[dt.date]) -> Any:
                return run_feature_build(settings, days, False, FEATURE_STEPS, lambda m: status.update(m))

            outcomes = run_training(settings, family, PLAIN_STEPS, lambda m: status.update(m), build, own, truth,
                                    trials, timeout)  # fmt: skip
            return [o.as_dict() for o in outcomes]
    except errors as exc:
        raise _fail(str(exc)) from None


_HEADLINE = (
    "test_auc", "test_pr_auc", "test_brier", "test_lift_top_decile", "test_concordance", "threshold",
    "test_auc_mean_per_product", "test_qini", "crossfit_qini", "test_ndcg_at_10", "test_recall_at_10",
    "test_precision_at_10", "test_coverage", "test_popularity_ndcg_at_10", "test_ndcg_at_10_vs_popularity",
)  # fmt: skip


def _print_training(outcomes: list[dict[str, Any]]) -> None:
    settings = _settings()
    for o in outcomes:
        if o.get("schema"):
            schema = Table(title=f"{o['family']}: inferred schema")
            for col in ("column", "role", "note"):
                schema.add_column(col)
            for row in o["schema"]:
                schema.add_row(row["column"], row["role"], row["note"])
            console.print(schema)
        table = Table(title=f"{o['family']}: run {o['run_id']}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key in _HEADLINE:
            if key in o["metrics"]:
                table.add_row(key, f"{o['metrics'][key]:.4f}")
        for key, value in o.get("oracle", {}).items():
            table.add_row(key, f"{value:.4f}")
        console.print(table)
        for r in o["registered"]:
            console.print(f"registered [bold]{r['name']}[/] version {r['version']} as @challenger ({r['uri']})")
    console.print(f"MLflow UI: [bold]mlflow ui --backend-store-uri {settings.tracking_uri}[/]")


GATED_FAMILIES = ("churn", "propensity", "uplift", "recommendation")


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
        Literal["prefect", "local"],
        typer.Option(help="prefect: run as the Prefect flow audit_and_promote (tracked); local: call the steps."),
    ] = "prefect",
) -> None:
    """Audit the challenger (fairness, performance vs champion, data quality, signature); promote it if it passes."""
    if (approver is None) != (reason is None):
        raise _fail("a waiver needs both --approver and --reason")
    if model == "all" and (version or approver):
        raise _fail("--version and --approver name one model: not with `all`")
    decisions = _run_gate(list(GATED_FAMILIES) if model == "all" else [model], version, approver, reason, engine)
    _print_decisions(decisions)
    if any(d["result"] == "blocked" for d in decisions):
        raise typer.Exit(code=2)


def _run_gate(
    models: list[str], version: str | None, approver: str | None, reason: str | None, engine: str
) -> list[dict[str, Any]]:
    from governance.gate import Waiver
    from governance.policy import PolicyError
    from governance.store import GateError, actor

    settings = _settings()
    decisions = []
    try:
        waiver = Waiver(approver, reason or "") if approver else None
        for model in models:
            with console.status(f"Auditing {model}…"):
                if engine == "prefect":
                    from flows.promote import audit_and_promote

                    decisions.append(audit_and_promote(model, settings.to_flow(), version, approver, reason, actor()))
                else:
                    from flows.promote import PLAIN_STEPS, run_gate

                    decisions.append(run_gate(settings, model, version, waiver, actor(), PLAIN_STEPS))
    except (GateError, PolicyError, ValueError) as exc:
        raise _fail(str(exc)) from None
    return decisions


def _print_decisions(decisions: list[dict[str, Any]]) -> None:
    settings = _settings()
    colour = {"promoted": "green", "waived": "yellow", "blocked": "red", "rolled_back": "yellow"}
    for d in decisions:
        console.print(
            f"[bold]{d['model']}[/] v{d['version']}: [bold {colour.get(d['result'], 'white')}]{d['result']}[/]  "
            f"champion {d['champion_before'] or 'none'} -> {d['champion_after'] or 'none'}"
        )
        for check in d.get("checks", []):
            mark = "[green]pass[/]" if check["passed"] else "[red]FAIL[/]"
            details = [x for x in check["details"] if "not gated" not in x]
            console.print(f"  {mark} {check['name']}: {'; '.join(details)}")
        if d.get("waiver"):
            console.print(f"  waived by {d['waiver']['approver']}: {d['waiver']['reason']}")
        if d.get("card"):
            console.print(f"  model card: {settings.governance_dir / d['card']}")
    console.print(f"decision log: {settings.governance_dir / 'decisions.jsonl'}  -> `custintel report`")


@app.command()
def rollback(
    model: Annotated[str, typer.Argument(help="A registered model or a family.")],
    reason: Annotated[str, typer.Option(help="Why the champion is rolled back (recorded).")],
) -> None:
    """Move @champion back to @previous (the demoted version becomes @previous)."""
    from flows.promote import rollback as roll_back
    from governance.policy import PolicyError
    from governance.store import GateError, actor

    try:
        decision = roll_back(_settings(), model, reason, actor())
    except (GateError, PolicyError) as exc:
        raise _fail(str(exc)) from None
    _print_decisions([decision])


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

    from rich.markup import escape

    from governance.history import alias_spans, holders_at
    from governance.store import read_decisions
    from models.registry import Registry, RegistryError

    settings = _settings()
    try:
        when = _at(at) if at else None
    except ValueError:
        raise _fail(f"--at {at!r} is not an ISO date or time (e.g. 2026-01-15 or 2026-01-15T09:30)") from None
    registry = Registry(settings)
    if not registry.exists():
        raise _fail(f"no registry at {settings.tracking_uri}: train a model first")
    try:
        name = registry.resolve_model(model)
        moves = registry.alias_moves(name)
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    spans = [s for s in alias_spans(moves, read_decisions(settings, name)) if not alias or s.alias in alias]
    if when is not None:
        spans = list(holders_at(spans, when).values())
    if as_json:
        console.print_json(json.dumps([s.as_dict() for s in spans]))
        return
    if when is not None:
        console.print(f"[bold]{name}[/] at {when.isoformat(timespec='seconds')}:")
        for s in sorted(spans, key=lambda s: s.alias):
            console.print(f"  @{s.alias} = v{s.version} since {s.start:%Y-%m-%d %H:%M:%S} UTC: {escape(s.why())}")
        if not spans:
            console.print("  no alias was set then")
        return
    table = Table(title=f"{name}: alias history (oldest first)")
    for col in ("alias", "version", "from (UTC)", "until (UTC)", "why", "moved on because"):
        table.add_column(col, overflow="fold")
    for s in spans:
        until = f"{s.end:%Y-%m-%d %H:%M:%S}" if s.end else "now"
        table.add_row(f"@{s.alias}", s.version, f"{s.start:%Y-%m-%d %H:%M:%S}", until, escape(s.why()),
                      escape(s.ended_by or ""))  # fmt: skip
    console.print(table if spans else f"{name}: no alias move recorded")
    console.print(f"decisions: {settings.governance_dir / 'decisions.jsonl'}; cards: `custintel report`")


@app.command()
def monitor(
    family: Annotated[
        list[str] | None, typer.Option(help="A family to monitor (churn, propensity, recommendation); repeatable.")
    ] = None,
    start: Annotated[
        str | None, typer.Option(help="Window start, ISO date or time, UTC (default: end - window_days).")
    ] = None,
    end: Annotated[str | None, typer.Option(help="Window end, ISO date or time, UTC (default: now).")] = None,
    retrain: Annotated[
        bool, typer.Option(help="Start retraining where a trigger fires (--no-retrain: report only).")
    ] = True,
    trials: Annotated[int | None, typer.Option(min=1, help="Optuna trials per study for a retrain.")] = None,
    executor: Annotated[
        Literal["inprocess", "external"],
        typer.Option(help="inprocess: run the train/audit deployment runs here; external: a worker runs them."),
    ] = "inprocess",
) -> None:
    """Drift, data-quality and performance reports of the served models; retrain where a trigger fires.

    Runs the Prefect flow monitor_models, which starts train_model and audit_and_promote as deployment runs.
    """
    from flows.monitor import monitor_models, register_deployments
    from monitoring.monitor import MonitoringError
    from monitoring.policy import MONITORED, MonitoringPolicyError
    from monitoring.served import ServedLogError

    settings = _settings()
    unknown = sorted(set(family or []) - set(MONITORED))
    if unknown:
        raise _fail(f"unknown family {unknown}; choose from {', '.join(MONITORED)}")
    try:
        with console.status("Registering the train and audit deployments…"):
            register_deployments()
        with console.status("Monitoring the served models…"):
            result = monitor_models(settings.to_flow(), family or None, start, end, retrain, trials, executor)
    except (MonitoringPolicyError, MonitoringError, ServedLogError, ValueError) as exc:
        raise _fail(str(exc)) from None
    _print_monitoring(settings, result)
    if any(d["action"] == "alert" for d in result["decisions"]):
        raise typer.Exit(code=3)  # a data-quality alert: a scheduler's failure, someone must look


def _print_monitoring(settings: Settings, result: dict[str, Any]) -> None:
    colour = {"retrain": "yellow", "hold": "yellow", "alert": "red", "none": "green"}
    window = result["window"]
    console.print(f"window {window['start']} -> {window['end']}")
    if not result["decisions"]:
        console.print("no @champion is served yet: nothing to monitor")
    for d in result["decisions"]:
        console.print(
            f"[bold]{d['model']}[/] v{d['version']}: {d['rows']:,} served rows -> "
            f"[bold {colour.get(d['action'], 'white')}]{d['action']}[/]  {d['why']}"
        )
        for check in d["checks"]:
            mark = "[red]fired[/]" if check["fired"] else "[green]quiet[/]"
            console.print(f"  {mark} {check['trigger']}: {check['detail']}")
        for alert in d["alerts"]:
            console.print(f"  [red]ALERT[/] {alert['check']}: {alert['detail']}")
        if d.get("report"):
            console.print(f"  report: {d['report']}")
    for r in result["retrains"]:
        console.print(f"[bold]retrain {r['family']}[/] (+{r['shift_months']} months): {r['outcome']}")
    console.print(
        f"reports: {settings.reports_dir / 'monitoring'}; decisions: {settings.monitoring_dir / 'decisions.jsonl'}; "
        f"Evidently workspace: `evidently ui --workspace {settings.monitoring_dir / 'workspace'}`; "
        "site: `custintel report`"
    )


@app.command()
def report(
    serve: Annotated[bool, typer.Option(help="Serve the site over HTTP after building it (Ctrl-C stops).")] = False,
    host: Annotated[str, typer.Option(help="Address to serve on (with --serve).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve on (with --serve).")] = 8090,
) -> None:
    """Build the governance reviewers' site: models, versions, aliases, decisions, waivers, model cards."""
    from governance.site import SiteError, build_site, serve_site

    settings = _settings()
    try:
        index = build_site(settings)
    except SiteError as exc:
        raise _fail(str(exc)) from None
    console.print(f"reviewers' site: {index}  (open it, or `custintel report --serve`)")
    if serve:
        console.print(f"serving {settings.site_dir} at http://{host}:{port}/ (Ctrl-C stops)")
        try:
            serve_site(settings, host, port)
        except OSError as exc:
            raise _fail(f"cannot serve on {host}:{port}: {exc}") from None


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 3000,
    refresh_consent: Annotated[
        bool, typer.Option(help="Rebuild the consent snapshot from the lake and identity store first.")
    ] = True,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, max=64, help="Worker processes (default CUSTINTEL_SERVING_WORKERS, else 1); one per core for bulk."
        ),
    ] = None,
) -> None:
    """Serve the champions with BentoML (`bentoml serve serving.service:Custintel`): scores, recommendations."""
    settings = _settings()
    env = serving_environment(settings)
    if workers is not None:
        env["CUSTINTEL_SERVING_WORKERS"] = str(workers)
    if not settings.api_keys and not settings.serving_allow_anonymous:
        raise _fail("set CUSTINTEL_SERVING_API_KEYS (comma-separated), or CUSTINTEL_SERVING_ALLOW_ANONYMOUS=true")
    if refresh_consent:
        from serving.consent import build_consent_store
        from serving.policy import ServingPolicyError, load_serving_policy

        try:
            customers = build_consent_store(settings, load_serving_policy(settings.serving_policy))
        except (ServingPolicyError, FileNotFoundError) as exc:
            raise _fail(f"cannot build the consent snapshot: {exc}") from None
        console.print(f"consent snapshot: {customers:,} customers with a recorded decision")
    console.print(f"serving on http://{host}:{port}  (OpenAPI: /docs.json; health: /livez, /readyz; metrics: /metrics)")
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    os.execvpe(bentoml, [bentoml, "serve", "serving.service:Custintel", "--host", host, "--port", str(port)], env)


def serving_environment(settings: Settings) -> dict[str, str]:
    """The service's environment: this home, BentoML's state under it, no usage tracking."""
    env = dict(os.environ)
    env["CUSTINTEL_HOME"] = str(settings.home_dir.resolve())
    env.setdefault("BENTOML_HOME", str((settings.home_dir / "serving" / "bentoml").resolve()))
    env["BENTOML_DO_NOT_TRACK"] = "true"
    return env


@contextlib.contextmanager
def _demo_service(settings: Settings) -> Iterator[tuple[str, str]]:
    """Start the service on a free port for the demo's last steps; yields (url, API key); stops it after."""
    import secrets
    import socket
    import subprocess
    import time

    import httpx

    key = settings.api_keys[0] if settings.api_keys else secrets.token_urlsafe(12)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**serving_environment(settings), "CUSTINTEL_SERVING_API_KEYS": key, "CUSTINTEL_SERVING_POLL_SECONDS": "2"}
    log_path = settings.home_dir / "serving" / "demo-serve.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cli = str(Path(sys.executable).with_name("custintel"))
    with log_path.open("wb") as log:
        server = subprocess.Popen([cli, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        with console.status("starting the service (loads the three champions)…"):
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                if server.poll() is not None:
                    raise _fail(f"the service stopped; its log: {log_path}")
                try:
                    if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            else:
                raise _fail(f"the service did not become ready in 180 s; its log: {log_path}")
        yield url, key
    finally:
        server.terminate()
        server.wait(30)


def _demo_sample_request(settings: Settings, url: str, key: str) -> str:
    """Score one consenting customer; returns the curl line."""
    import json

    import httpx
    import pandas as pd

    from features.featurestore.store import open_online_store
    from serving.consent import ConsentStore, consent_store_path

    auth = {"Authorization": f"Bearer {key}"}
    served = {m["family"] for m in httpx.get(url + "/models", headers=auth, timeout=10).json()["models"]}
    # churn's endpoint, or the first family the gate let through
    path = next((p for f, p in DEMO_ENDPOINTS if f in served), "/churn/score")
    purpose = "profiling" if path == "/churn/score" else "marketing"
    consent = ConsentStore(consent_store_path(settings))
    customer = None
    with open_online_store(settings) as online:
        keys = pd.read_parquet(settings.identity_dir / "crosswalk.parquet", columns=["customer_key"])
        for candidate in keys["customer_key"].drop_duplicates().head(2000):
            withdrawn = {p for p, s in consent.lookup(candidate).statuses.items() if s == "withdrawn"}
            if online.lookup(candidate) and not withdrawn & {purpose, "profiling"}:
                customer = candidate
                break
    body = json.dumps({"customer_key": customer})
    answer = httpx.post(url + path, content=body, timeout=30, headers={"Content-Type": "application/json", **auth})
    console.print(f"POST {path} {body} -> HTTP {answer.status_code}")
    console.print_json(answer.text)
    return (
        f"curl -s -X POST http://127.0.0.1:3000{path} -H 'Content-Type: application/json' "
        f"-H 'Authorization: Bearer <key>' -d '{body}'"
    )


DEMO_ENDPOINTS = (("churn", "/churn/score"), ("propensity", "/propensity/score"), ("recommendation", "/recommend"))


def _demo_drift(settings: Settings, url: str, key: str, trials: int) -> dict[str, Any]:
    """Score every customer through the batch endpoint, then monitor: drift -> retrain -> gate -> served."""
    import time

    import httpx
    import pandas as pd

    from flows.monitor import monitor_models, register_deployments

    keys = pd.read_parquet(settings.identity_dir / "crosswalk.parquet", columns=["customer_key"])
    customers = sorted(keys["customer_key"].drop_duplicates())
    start = dt.datetime.now(dt.UTC).isoformat()
    served = httpx.get(url + "/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()["models"]
    if not any(m["family"] == "churn" for m in served):
        console.print(
            "[yellow]churn has no @champion (the gate blocked it, see step 6), so there is no churn traffic to "
            "monitor; after a review, `custintel promote churn --approver <name> --reason <why>` and rerun.[/]"
        )
        customers = []
    scored = 0
    with _progress() as progress:
        job = progress.add_task("scoring every customer (POST /churn/score/batch)", total=len(customers))
        for i in range(0, len(customers), 1000):
            chunk = customers[i : i + 1000]
            answer = httpx.post(url + "/churn/score/batch", json={"customers": [{"customer_key": c} for c in chunk]},
                                headers={"Authorization": f"Bearer {key}"}, timeout=300)  # fmt: skip
            if answer.status_code != 200:
                raise _fail(f"the batch endpoint answered HTTP {answer.status_code}: {answer.text[:300]}")
            scored += sum(r["status"] == "scored" for r in answer.json()["results"])
            progress.advance(job, len(chunk))
    console.print(f"{scored:,} customers scored and logged; the others were suppressed by consent or not in the store")
    time.sleep(1.5)  # the inference log is written off the request path
    with console.status("monitoring (Prefect flow monitor_models: drift, retrain, audit)…"):
        register_deployments()
        result = monitor_models(settings.to_flow(), None, start, None, True, trials, "inprocess")
    _print_monitoring(settings, result)
    promoted = [g for r in result["retrains"] for g in r.get("gate", []) if g["result"] == "promoted"]
    for g in promoted:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            models = httpx.get(url + "/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
            if any(m["name"] == g["model"] and m["version"] == g["version"] for m in models["models"]):
                console.print(f"the running service now answers with {g['model']} v{g['version']} (picked up live)")
                break
            time.sleep(1)
    return result


@app.command()
def demo(
    customers: Annotated[int, typer.Option(help="Customers in the demo world.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    trials: Annotated[
        int, typer.Option(min=1, help="Optuna trials per study (`custintel train` uses the configured 20).")
    ] = 10,
    drift_date: Annotated[
        str, typer.Option(help="The world's population and behaviour shift after this date (YYYY-MM-DD).")
    ] = "2025-09-01",
    drift_strength: Annotated[float, typer.Option(help="How far they shift (0: no drift).")] = 1.5,
) -> None:
    """Run everything that exists end to end on embedded defaults and say where to look."""
    settings = _settings()
    world = settings.default_data_dir / "demo-world"
    console.rule("[bold]1/8 generate a synthetic customer world (its population drifts after the drift date)")
    generate(customers=customers, seed=seed, out=world, drift_date=drift_date, drift_strength=drift_strength)
    console.rule("[bold]2/8 ingest it behind data contracts (Prefect flow ingest_sources)")
    ingest(source=world)
    console.rule("[bold]3/8 resolve identities into customers (Prefect flow resolve_identities)")
    _run_resolution("prefect", reuse_model=False)
    resolve_evaluate(truth=world / "_truth")
    console.rule("[bold]4/8 point-in-time features and labels (Prefect flow build_features)")
    # The online store holds the latest cutoff: three months into the drift the demo scores and monitors.
    _print_feature_build(_run_feature_build([dt.date(2025, 3, 1), dt.date(2025, 12, 1)], "prefect", online=True))
    console.rule(
        "[bold]5/8 train, tune and register churn, propensity + uplift, recommendation (Prefect flow train_model)"
    )
    outcomes = _run_training("all", "prefect", trials, None, world / "_truth", None)
    _print_training(outcomes)
    console.rule("[bold]6/8 audit and promote the challengers (Prefect flow audit_and_promote), reviewers' site")
    decisions = _run_gate(list(GATED_FAMILIES), None, None, None, "prefect")
    _print_decisions(decisions)
    from governance.site import build_site

    site = build_site(settings)
    console.rule("[bold]7/8 serve the champions with BentoML (custintel serve) and answer a sample request")
    with _demo_service(settings) as (url, key):
        curl = _demo_sample_request(settings, url, key)
        console.rule("[bold]8/8 traffic after the drift, monitoring (Prefect flow monitor_models), retraining")
        monitored = _demo_drift(settings, url, key, trials)
    site = build_site(settings)  # again: with the drift reports
    console.rule("[bold]where to look")
    console.print(f"- source drop: {world}  (hidden truth: {world / '_truth'})")
    console.print(f"- lake (accepted rows, Parquet): {settings.lake_dir}")
    console.print(
        f"- quarantine (rejected rows and reasons): {settings.quarantine_dir}  -> `custintel quarantine crm_accounts`"
    )
    console.print(f"- ingestion report: {settings.reports_dir / 'ingest' / 'latest.json'}")
    console.print(
        f"- identity: {settings.identity_dir} (crosswalk, golden_records, conflicts, links, model.json)  "
        "-> `custintel resolve conflicts`, `custintel resolve explain A B`"
    )
    console.print(
        f"- features: {settings.features_dir / 'offline'} (Parquet per set, version and as-of, manifest.json beside), "
        f"online store {settings.features_dir / 'online.sqlite'}  -> `custintel features lookup <customer_key>`"
    )
    console.print(
        f"- models: MLflow runs {', '.join(o['family'] + ' ' + o['run_id'] for o in outcomes)}; registered as "
        f"@challenger  -> `mlflow ui --backend-store-uri {settings.tracking_uri}` (plots, tables, lineage per run)"
    )
    console.print(
        f"- governance: {settings.governance_dir} (decisions.jsonl, cards/<model>/<version>/card.html); "
        f"reviewers' site {site}  -> `custintel report --serve`"
    )
    console.print(f"- serving: `CUSTINTEL_SERVING_API_KEYS=<key> custintel --home {settings.home_dir} serve`, then:")
    console.print(f"  {curl}", soft_wrap=True)
    reports = [d["report"] for d in monitored["decisions"] if d.get("report")]
    console.print(
        f"- monitoring: decision page {', '.join(reports) or '(none: nothing served)'}; Evidently reports beside it "
        f"and in `evidently ui --workspace {settings.monitoring_dir / 'workspace'}`; decisions "
        f"{settings.monitoring_dir / 'decisions.jsonl'}; on the reviewers' site after `custintel report`"
    )


if __name__ == "__main__":  # pragma: no cover
    app()
