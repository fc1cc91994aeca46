"""How the command line shows results: one renderer per result, printed on the console."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from custintel.settings import Settings
from flows.cli.app import console

if TYPE_CHECKING:
    import datetime as dt

    import pandas as pd

    from features.identity.explain import PairExplanation
    from features.lake import IngestionReport
    from features.synthetic import WorldConfig
    from governance.history import AliasSpan


def print_world(cfg: WorldConfig, rows: dict[str, int], not_yet_arrived: dict[str, int], target: Path) -> None:
    """A generated world: rows per source table, where it is, what arrives late."""
    table = Table(title=f"Synthetic world: {cfg.customers:,} customers, seed {cfg.seed}")
    table.add_column("source table")
    table.add_column("rows", justify="right")
    for name, n in rows.items():
        table.add_row(name, f"{n:,}")
    console.print(table)
    late = ", ".join(f"{t}: {n:,}" for t, n in not_yet_arrived.items())
    console.print(f"Drop written to [bold]{target}[/] (export date {cfg.window_end}).")
    console.print(f"Late records not yet arrived by the export date: {late}.")
    console.print(f"Hidden truth in [bold]{target / '_truth'}[/] (evaluation and benchmarks only).")


def print_ingestion(report: IngestionReport) -> None:
    """Counts per table of an ingested drop, and whether they reconcile."""
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
    suppressed = {name: t.suppressed for name, t in report.tables.items() if t.suppressed}
    if suppressed:
        console.print(f"{verdict} (read = accepted + quarantined + suppressed).")
        shown = ", ".join(f"{name} {n:,}" for name, n in suppressed.items())
        console.print(f"Rows of people on the suppression list (erased), neither landed nor quarantined: {shown}.")
    else:
        console.print(f"{verdict} (read = accepted + quarantined).")
    if report.replaced_existing:
        console.print("This drop had been ingested before: its partitions were replaced (idempotent).")
    for warning in report.warnings:
        console.print(f"[yellow]warning[/] {escape(warning)}")


def print_quarantine(table: str, issues: pd.DataFrame, limit: int) -> None:
    """A table's quarantine issues: counts by field, check and action (commonest first), then examples of each."""
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
    # examples of every reason in order of its count (the commonest first), as many of each as the limit allows
    groups = issues.groupby(["field", "check", "action"], sort=False)
    order = counts.sort_values("count", ascending=False)
    each = max(1, limit // max(len(order), 1))
    shown = 0
    for key in order[["field", "check", "action"]].itertuples(index=False, name=None):
        for _, r in groups.get_group(key).head(min(each, limit - shown)).iterrows():
            examples.add_row(str(r["_source_file"]), str(r["row_number"]), str(r["field"]), str(r["reason"]))
            shown += 1
        if shown >= limit:
            break
    console.print(examples)


def print_resolution(run: dict[str, Any]) -> None:
    """An identity run: records, links, customers, key events, conflicts, and where its outputs are."""
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
    ids_only = stats.get("mode") == "ids_only"
    console.print(
        (
            f"mode ids_only: each id a customer, exact rules {stats.get('deterministic_rules') or 'none'}"
            if ids_only
            else f"threshold {opts['threshold']}, fields {', '.join(opts['fields'])}"
        )
        + (", hashed identifiers only" if opts["hashed"] else "")
        + f"; seconds per step: {stats['seconds']}"
    )
    console.print(f"Outputs: [bold]{Path(run['outputs']['crosswalk']).parent}[/]")


def print_explanation(e: PairExplanation, record_a: str, record_b: str) -> None:
    """Why two records were or were not linked: the records, the rules, the evidence, the path."""
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


def print_conflicts(conflicts: pd.DataFrame, limit: int) -> None:
    """Conflicts per attribute, then the first `limit` conflicts."""
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
        shown.add_row(str(r.customer_key), str(r.attribute), str(r.chosen_value), str(r.rule), str(r.candidates))
    console.print(shown)


def print_identity_scores(scores: dict[str, dict[str, float]], out: Path) -> None:
    """Pairwise and cluster metrics of a resolution against the truth, and where they were written."""
    table = Table(title="identity resolution against the truth")
    table.add_column("metric")
    for name in scores:
        table.add_column(name, justify="right")
    for metric in scores["deterministic"]:
        table.add_row(metric, *[f"{scores[n][metric]:,.4f}".rstrip("0").rstrip(".") for n in scores])
    console.print(table)
    console.print(f"Written to [bold]{out}[/]")


def print_feature_build(report: dict[str, Any]) -> None:
    """A feature build: sets, digests and rows per cutoff, the online store, where the manifest is."""
    table = Table(title=f"Feature build {report['build_id']}")
    for col in ("set", "digest", "rows per as-of", "note"):
        table.add_column(col)
    for key, s in report["sets"].items():
        parts = ", ".join(f"{d}: {p['rows']:,}" for d, p in s.get("partitions", {}).items())
        note = s.get("skipped") or (f"dropped {len(s['dropped_features'])}" if s.get("dropped_features") else "")
        table.add_row(key, s.get("digest", ""), parts, note)
    console.print(table)
    for kind, how in report["inputs"].get("derived_sources", {}).items():
        console.print(f"{kind}: {how}")
    for key, s in report["sets"].items():
        by_reason: dict[str, list[str]] = {}
        for name, why in s.get("dropped_features", {}).items():
            by_reason.setdefault(why, []).append(name)
        for why, names in by_reason.items():
            # what the data lacks is expected; a feature that collapsed on this data is worth a look
            warn = "[yellow]WARNING[/] " if why.startswith("collapsed") else ""
            console.print(f"{warn}{key}: dropped {', '.join(names)}: {why}")
        if s.get("empty"):
            console.print(f"[yellow]WARNING[/] {key} is empty: {s['empty']}")
    unlinked = {k: v for k, v in report["inputs"]["unlinked_rows"].items() if v}
    if unlinked:
        console.print(f"rows that found no customer (anonymous or unresolved): {unlinked}")
    for key, o in report["online"].items():
        if o.get("skipped"):
            console.print(f"online ({o['store']}): {key} kept: {o['skipped']} than {o['as_of']} (a backfill)")
        else:
            console.print(f"online ({o['store']}): {key} as of {o['as_of']}: {o['customers']:,} customers")
    for line in report.get("source_anomalies", []):
        kind = "source check" if line.startswith("note: ") else "[yellow]source anomaly[/]"
        console.print(f"{kind} {escape(line.removeprefix('note: '))}", soft_wrap=True, highlight=False)
    console.print(f"seconds: {report['seconds']}")
    console.print(f"Offline store: [bold]{report['offline_root']}[/]  manifest: [bold]{report['report_path']}[/]")


def print_offline_status(root: Path, offline: list[tuple[str, str, str]]) -> None:
    """What the offline store holds: set, digest, rows per cutoff."""
    table = Table(title=f"Offline store {root}")
    for col in ("set", "digest", "as-of: rows"):
        table.add_column(col)
    for row in offline:
        table.add_row(*row)
    console.print(table if table.row_count else f"nothing built under {root}: run `custintel features`")


def print_feature_classes(classes: dict[str, str]) -> None:
    """The features per data class, for reviewers: which are identifying, which are behavioural."""
    from features.data_classes import classes_by_class

    table = Table(title="Features by data class (direct identifiers are never logged or exported)")
    table.add_column("class")
    table.add_column("features")
    for data_class, names in classes_by_class(classes).items():
        table.add_row(data_class, ", ".join(names))
    console.print(table)


def print_online_status(online: dict[str, dict[str, Any]]) -> None:
    """What the online store holds: per set its cutoff, customers and when it was materialised."""
    for key, meta in online.items():
        console.print(f"online: {key} as of {meta.get('as_of')}: {meta.get('rows', 0):,} customers "
                      f"(materialised {meta.get('materialized_at')})")  # fmt: skip
    if not online:
        console.print("online store: empty")


HEADLINE = (
    "test_auc", "test_pr_auc", "test_brier", "test_lift_top_decile", "test_concordance", "threshold",
    "test_auc_mean_per_product", "test_qini", "crossfit_qini", "test_ndcg_at_10", "test_recall_at_10",
    "test_precision_at_10", "test_coverage", "test_popularity_ndcg_at_10", "test_ndcg_at_10_vs_popularity",
    "valid_popularity_ndcg_at_10", "valid_ease_ndcg_at_10", "valid_als_ndcg_at_10",  # the choice of recommender
    "calibration_none_log_loss", "calibration_sigmoid_log_loss", "calibration_isotonic_log_loss",  # and calibrator
    "baseline_bgnbd_test_auc", "baseline_logistic_test_auc", "baseline_lightgbm_untuned_test_auc",  # baselines
)  # fmt: skip


def print_schema(title: str, rows: list[dict[str, str]]) -> None:
    """A table's columns: inferred type, role in training, data class, and why (dropped or coerced columns say so)."""
    schema = Table(title=title)
    for col in ("column", "type", "role", "class", "note"):
        schema.add_column(col)
    for row in rows:
        style = "dim" if row.get("role") in ("dropped", "unused") else None
        schema.add_row(row["column"], row.get("type", ""), row["role"], row.get("class", ""), row["note"], style=style)
    console.print(schema)


def print_training(settings: Settings, outcomes: list[dict[str, Any]]) -> None:
    """Each run: headline metrics, oracle scores, registered versions (an own table's schema came before training)."""
    for o in outcomes:
        table = Table(title=f"{o['family']}: run {o['run_id']}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key in HEADLINE:
            if key in o["metrics"]:
                table.add_row(key, f"{o['metrics'][key]:.4f}")
        for key, value in o.get("oracle", {}).items():
            table.add_row(key, f"{value:.4f}")
        console.print(table)
        for note in o.get("notes", []):
            colour = "yellow" if "NOT better" in note or "excluded" in note or "kept" in note else "white"
            console.print(f"[{colour}]{escape(note)}[/]")
        for r in o["registered"]:
            console.print(f"registered [bold]{r['name']}[/] version {r['version']} as @challenger ({r['uri']})")
    console.print(f"MLflow UI: [bold]mlflow ui --backend-store-uri {settings.tracking_uri}[/]")


def print_decisions(settings: Settings, decisions: list[dict[str, Any]]) -> None:
    """The gate's decisions: result, champion move, each check, waiver and card, then the decision log."""
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
    console.print(
        f"decision log: {settings.governance_dir / 'decisions.jsonl'}  -> `custintel report`; "
        "hash-chained with the audit trail  -> `custintel audit verify --decisions`"
    )


def print_alias_holders(name: str, when: dt.datetime, spans: list[AliasSpan]) -> None:
    """Who held each alias of a model at one time, and why."""
    console.print(f"[bold]{name}[/] at {when.isoformat(timespec='seconds')}:")
    for s in sorted(spans, key=lambda s: s.alias):
        console.print(f"  @{s.alias} = v{s.version} since {s.start:%Y-%m-%d %H:%M:%S} UTC: {escape(s.why())}")
    if not spans:
        console.print("  no alias was set then")


def print_alias_history(settings: Settings, name: str, spans: list[AliasSpan]) -> None:
    """Every alias span of a model, oldest first, with why it started and why it ended."""
    table = Table(title=f"{name}: alias history (oldest first)")
    for col in ("alias", "version", "from (UTC)", "until (UTC)", "why", "moved on because"):
        table.add_column(col, overflow="fold")
    for s in spans:
        until = f"{s.end:%Y-%m-%d %H:%M:%S}" if s.end else "now"
        table.add_row(f"@{s.alias}", s.version, f"{s.start:%Y-%m-%d %H:%M:%S}", until, escape(s.why()),
                      escape(s.ended_by or ""))  # fmt: skip
    console.print(table if spans else f"{name}: no alias move recorded")
    console.print(f"decisions: {settings.governance_dir / 'decisions.jsonl'}; cards: `custintel report`")


def print_monitoring(settings: Settings, result: dict[str, Any]) -> None:
    """A monitoring pass: per served model its triggers, alerts and report; the retrains; where to look."""
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
