"""Prefect flow `retention-apply`: delete what the retention policy says is due, store by store, and report it.

One task per store calls the store's own expiry (`serving.inference_log.expire`,
`features.retention`, `models.scores.expire_scores`, `monitoring.retention`,
`governance.retention.expire_dsar_exports`)
with the day before which its items are due (`governance.retention.RetentionPolicy`). The
offline store keeps the cutoffs a live model version (@champion, @challenger) was trained and
tested on, read from the versions' lineage in the registry; when the registry cannot be read,
the offline store is skipped (nothing is deleted that could not be checked) and the report
says so. A real pass writes `reports/retention/<stamp>.json`, records the counts in the audit
trail (`retention_apply`) and rebuilds the reviewers' site when monitoring pages left (it
holds copies of them). A dry run changes nothing and writes nothing.

`deployment(...)` makes the flow a scheduled deployment (`custintel retention schedule`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from functools import partial
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from custintel.retention import Expiry
from custintel.settings import Settings
from governance.retention import (
    STORES,
    RetentionPolicy,
    dsar_dir,
    expire_dsar_exports,
    parse_as_of,
    retention_report,
    write_report,
)

FLOW_NAME = "retention-apply"
DEPLOYMENT_NAME = "custintel"
LIVE_ALIASES = ("champion", "challenger")


def live_cutoffs(settings: Settings) -> set[dt.date]:
    """Every cutoff the lineage of a @champion or @challenger version names (features and labels read at it).

    Raises `models.registry.RegistryError` when the registry cannot be read.
    """
    from models.registry import Registry

    registry = Registry(settings)
    found: set[dt.date] = set()
    for model in registry.list_models():
        live = {v for a, v in model.aliases.items() if a in LIVE_ALIASES}
        for version in model.versions:
            if version.version not in live or not version.run_id:
                continue
            lineage = registry.read_run_json(version.run_id, "lineage/lineage.json")
            named = lineage.get("as_of") or []
            texts = [named] if isinstance(named, str) else list(named)
            for spec in (lineage.get("feature_sets") or {}).values():
                texts += list((spec or {}).get("partitions") or {})
            for text in texts:
                try:
                    found.add(dt.date.fromisoformat(str(text)[:10]))
                except ValueError:
                    continue
    return found


def _store_calls(config: Settings, policy: RetentionPolicy, as_of: dt.date, dry_run: bool,
                 skipped: dict[str, str]) -> dict[str, Callable[[], Expiry | tuple[Expiry, ...]]]:  # fmt: skip
    """Per store the policy covers, the call that expires it (stores it leaves out go to `skipped`)."""
    from features import retention as features_retention
    from monitoring import retention as monitoring_retention
    from serving.inference_log import FIELD_CLASSES
    from serving.inference_log import expire as expire_inference_log

    calls: dict[str, Callable[[], Expiry | tuple[Expiry, ...]]] = {}
    for store in STORES:
        before = policy.before(store, as_of)
        strip = policy.strip_before(store, as_of)
        if before is None and not strip:
            skipped[store] = "not in the retention policy: everything kept"
            if store != "lake" or policy.before("quarantine", as_of) is None:
                continue
        if store == "quarantine":
            continue  # expired with the lake, in one commit of the lake manifest
        due = before or dt.date.min
        if store == "inference_log":
            fields = {f: strip[c] for f, c in FIELD_CLASSES.items() if c in strip}
            calls[store] = partial(expire_inference_log, config.inference_log_dir, due, fields, dry_run)
        elif store == "decision_log":
            from serving.decision_log import decision_log_path
            from serving.decision_log import expire as expire_decision_log

            calls[store] = partial(expire_decision_log, decision_log_path(config), due, dry_run)
        elif store == "lake":  # and the quarantine (its Expiry is dropped when the policy leaves it out)
            quarantine = policy.before("quarantine", as_of)
            calls[store] = partial(features_retention.expire_lake, config, before, quarantine, dry_run)
        elif store == "offline_features":
            keep: set[dt.date] = set()
            if policy.stores[store].keep_model_cutoffs if store in policy.stores else True:
                from models.registry import RegistryError

                try:
                    keep = live_cutoffs(config)
                except RegistryError as exc:
                    skipped[store] = f"the registry could not be read to find the live models' cutoffs: {exc}"
                    continue
            calls[store] = partial(features_retention.expire_offline, config, due, keep, dry_run)
        elif store == "batch_scores":
            from models.scores import expire_scores

            keep_latest = policy.stores[store].keep_latest if store in policy.stores else True
            calls[store] = partial(expire_scores, config, due, keep_latest, dry_run)
        elif store == "monitoring_reports":
            calls[store] = partial(monitoring_retention.expire_reports, config.reports_dir / "monitoring", due, dry_run)
        elif store == "evidently_workspace":
            workspace = config.monitoring_dir / "workspace"
            calls[store] = partial(monitoring_retention.expire_workspace, workspace, due, dry_run)
        elif store == "mlflow_monitoring_reports":
            from models.registry import Registry, RegistryError

            registry = Registry(config)
            try:
                registry.list_models()  # reachable? (a task failing on it would log a traceback for a known skip)
            except RegistryError as exc:
                skipped[store] = f"the registry could not be read: {exc}"
                continue
            calls[store] = partial(monitoring_retention.expire_mlflow_reports, registry, due, dry_run)
        elif store == "identity_reports":
            calls[store] = partial(features_retention.expire_identity_reports, config, due, dry_run)
        elif store == "dsar_exports":
            calls[store] = partial(expire_dsar_exports, dsar_dir(config), due, dry_run)
    return calls


def _expire(store: str, call: Callable[[], Expiry | tuple[Expiry, ...]]) -> list[Expiry]:
    done = call()
    return list(done) if isinstance(done, tuple) else [done]


def refresh_site(config: Settings, stems: list[str]) -> dict[str, Any]:
    """The reviewers' site holds copies of the monitoring pages: rebuild it without the removed ones.

    When it cannot be rebuilt (the registry unreachable), the copies of the removed pages are
    deleted from it all the same (their links then lead nowhere until `custintel report`).
    """
    from governance.site import SiteError, build_site, safe_name

    try:
        build_site(config)
        return {"site_rebuilt": True}
    except SiteError as exc:
        drift = config.site_dir / "drift"
        for stem in stems:
            for suffix in (".html", "-evidently.html", "-performance.html"):
                (drift / safe_name(stem + suffix)).unlink(missing_ok=True)
        get_run_logger().warning(f"the reviewers' site could not be rebuilt ({exc}); the removed pages' copies "
                                 "were deleted from it: run `custintel report` once the registry answers")  # fmt: skip
        return {"site_rebuilt": False, "site_error": str(exc)}


def summary_markdown(report: dict[str, Any]) -> str:
    """The pass as a table beside the flow run in the Prefect UI."""
    verb = "would remove" if report["dry_run"] else "removed"
    lines = [f"# Retention as of {report['as_of']}" + (" (dry run)" if report["dry_run"] else ""), "",
             f"| store | max age (days) | {verb} | kept | next due |", "|---|---|---|---|---|"]  # fmt: skip
    for name, s in report["stores"].items():
        due = s["next_due"] or ""
        lines.append(f"| {name} | {s['max_age_days']} | {len(s['removed'])} | {len(s['kept'])} | {due} |")
    lines += [f"| {name} | skipped: {why} | | | |" for name, why in report["skipped"].items()]
    return "\n".join(lines)


@flow(name=FLOW_NAME, log_prints=False)
def retention_apply(
    settings: dict[str, Any] | None = None, as_of: str | None = None, dry_run: bool = False
) -> dict[str, Any]:
    """Delete what the retention policy says is due as of `as_of` (default today, UTC); report per store."""
    from governance.policy import load_policy
    from governance.trail import record
    from models.registry import RegistryError

    config = Settings.from_flow(settings)
    logger = get_run_logger()
    governance = load_policy(config.governance_policy)
    day = parse_as_of(as_of)
    policy = governance.retention or RetentionPolicy()
    skipped: dict[str, str] = {}
    if governance.retention is None:
        skipped = {store: "the governance policy has no retention section: everything kept" for store in STORES}
        calls = {}
    else:
        calls = _store_calls(config, policy, day, dry_run, skipped)
    # dead Spark runs' folders serve nothing: swept whatever the policy says (features.spark_leftovers)
    from features.spark_leftovers import sweep_spark_leftovers

    skipped.pop("spark_leftovers", None)
    calls["spark_leftovers"] = partial(sweep_spark_leftovers, config, dry_run)
    expiries = []
    for store, call in calls.items():
        try:
            done = task(name=f"expire-{store}", cache_policy=NO_CACHE)(_expire)(store, call)
        except RegistryError as exc:  # nothing is deleted that could not be checked; the other stores go on
            skipped[store] = f"the registry could not be read: {exc}"
            logger.warning(f"{store}: skipped: {skipped[store]}")
            continue
        for expiry in done:
            if expiry.store in skipped:
                continue
            expiries.append(expiry)
            verb = "would remove" if dry_run else "removed"
            logger.info(f"{expiry.store}: {verb} {len(expiry.removed)}, kept {len(expiry.kept)}")
    report = retention_report(policy, expiries, day, dry_run, skipped)
    report["policy_digest"] = governance.digest
    if not dry_run:
        now = dt.datetime.now(dt.UTC)
        report["report"] = str(write_report(config, report, now))
        entry = record(config, "retention_apply", f"retention as of {day.isoformat()}",
                       {"as_of": day.isoformat(), "policy_digest": governance.digest, "counts": report["counts"],
                        "skipped": sorted(skipped), "report": report["report"]})  # fmt: skip
        report["trail_seq"] = entry.get("seq")
        pages_gone = report["stores"].get("monitoring_reports", {}).get("removed")
        if pages_gone and config.site_dir.is_dir():
            report.update(refresh_site(config, [i["place"] for i in pages_gone]))
    create_markdown_artifact(summary_markdown(report), key="retention")
    return report


def deployment(config: Settings, cron: str, timezone: str = "UTC", pool: str | None = None) -> str:
    """Create or update the scheduled deployment `retention-apply/custintel` on the configured Prefect API; its id.

    Its runs take this home's settings (secrets excluded: the process running it reads them
    from its own environment) and the date of the run as their as-of date.
    """
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    runner = retention_apply.to_deployment(
        name=DEPLOYMENT_NAME,
        schedule=Cron(cron, timezone=timezone),
        parameters={"settings": config.to_flow()},
        entrypoint_type=EntrypointType.MODULE_PATH,
        work_pool_name=pool,
        description="Delete what the retention policy says is due (custintel retention apply).",
    )
    return str(runner.apply(work_pool_name=pool))  # type: ignore[union-attr]


def serve_schedule(config: Settings, cron: str, timezone: str = "UTC") -> None:
    """Serve `retention-apply/custintel` on this cron from this process (blocks until Ctrl-C); no work pool needed."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    retention_apply.serve(
        name=DEPLOYMENT_NAME,
        schedule=Cron(cron, timezone=timezone),
        parameters={"settings": config.to_flow()},
        entrypoint_type=EntrypointType.MODULE_PATH,
        print_starting_message=False,
    )
