"""`custintel retention`: delete what the retention policy says is due (`apply`), or schedule that (`schedule`)."""

from __future__ import annotations

import json
import shlex
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from flows.cli.app import app, console, expected, fail, settings

SHOWN = 12  # places listed per store on the console (the JSON report lists every one)
retention_app = typer.Typer(
    help="Retention: delete personal data older than the policy allows, per store and data class.",
    no_args_is_help=True,
)
app.add_typer(retention_app, name="retention")


@retention_app.command("apply")
def retention_apply(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what is due; change nothing.")] = False,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="The date the ages count from, YYYY-MM-DD (default: today, UTC).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole report as JSON.")] = False,
) -> None:
    """Delete what is due in every store the policy covers (Prefect flow retention-apply); report per store."""
    from flows.retention import retention_apply as retention_flow
    from governance.policy import PolicyError
    from governance.retention import RetentionPolicyError, parse_as_of

    config = settings()
    with expected(RetentionPolicyError):
        parse_as_of(as_of)  # a bad date fails before any flow starts
    with expected(PolicyError, RetentionPolicyError, prefect=True):
        with console.status("Applying the retention policy (Prefect flow retention-apply)…"):
            report = retention_flow(config.to_flow(), as_of, dry_run)
    if as_json:
        console.print(json.dumps(report, indent=2, sort_keys=True), soft_wrap=True, markup=False, highlight=False)
        return
    print_report(report)


def print_report(report: dict[str, Any]) -> None:
    """Per store: what went (or would), what stays and when the next item is due; then where the report is."""
    dry = report["dry_run"]
    verb = "would remove" if dry else "removed"
    table = Table(title=f"retention as of {report['as_of']}" + (" (dry run: nothing changed)" if dry else ""))
    for column in ("store", "max age", verb, "trimmed", "kept", "next due"):
        table.add_column(column)
    for name, s in report["stores"].items():
        age = "" if s["max_age_days"] is None else f"{s['max_age_days']} d"
        classes = ", ".join(f"{c} {d} d" for c, d in s["class_ages_days"].items())
        removed = f"{len(s['removed'])} ({s['removed_count']:,})" if s["removed"] else "0"
        table.add_row(name, age + (f" ({classes})" if classes else ""), removed, str(len(s["trimmed"])),
                      str(len(s["kept"])), s["next_due"] or "")  # fmt: skip
    console.print(table)
    for name, s in report["stores"].items():
        lines = [f"{verb} {escape(i['place'])} (dated {i['dated']})" for i in s["removed"]]
        lines += [f"{escape(i['place'])}: {escape(i['reason'])} from {i['count']:,} entries" for i in s["trimmed"]]
        lines += [f"kept {escape(i['place'])}: {escape(i['reason'])}" for i in s["kept"] if i.get("reason")]
        lines += [escape(note) for note in s["notes"]]
        for line in lines[:SHOWN]:
            console.print(f"  {name}: {line}", soft_wrap=True)
        if len(lines) > SHOWN:
            console.print(f"  {name}: … and {len(lines) - SHOWN:,} more (`--json`, or the report file, lists them all)")
    for name, why in report["skipped"].items():
        console.print(f"  {name}: skipped: {escape(why)}", soft_wrap=True)
    if not dry:
        console.print(f"report: {report['report']}; audit trail entry seq {report.get('trail_seq')}", soft_wrap=True)
        if report.get("site_rebuilt"):
            console.print("the reviewers' site was rebuilt without the removed monitoring pages")
        elif "site_error" in report:
            console.print(
                f"[yellow]warning:[/] the reviewers' site could not be rebuilt ({escape(report['site_error'])}); "
                "the removed pages' copies were deleted from it: run `custintel report` later",
                soft_wrap=True,
            )


@retention_app.command("schedule")
def retention_schedule(
    cron: Annotated[str, typer.Option(help='When to run, a cron expression, e.g. "0 3 * * *" (03:00 daily).')],
    timezone: Annotated[str, typer.Option(help="The cron's time zone (IANA name).")] = "UTC",
    pool: Annotated[
        str | None,
        typer.Option(help="A Prefect work pool whose workers run it (default: a process serving it, see --serve)."),
    ] = None,
    serve: Annotated[
        bool, typer.Option("--serve", help="Serve the schedule from this process (foreground, Ctrl-C stops).")
    ] = False,
) -> None:
    """Schedule retention-apply: a Prefect deployment with a cron on the configured server, else the commands."""
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.settings import get_current_settings
    from pydantic import ValidationError

    config = settings()
    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise fail(f"--{first['loc'][0]}: {first['msg'].removeprefix('Value error, ')}") from None
    if serve and pool:
        raise fail("--serve runs the schedule in this process; --pool leaves it to the pool's workers: choose one")
    if get_current_settings().api.url:
        from flows.retention import DEPLOYMENT_NAME, FLOW_NAME, deployment, serve_schedule

        if serve:
            console.print(f"serving {FLOW_NAME}/{DEPLOYMENT_NAME}: cron {cron!r} ({timezone}), home {config.home_dir} "
                          "(Ctrl-C stops)", soft_wrap=True)  # fmt: skip
            serve_schedule(config, cron, timezone)
            return

        with expected(ValueError, RuntimeError, OSError):
            deployment_id = deployment(config, cron, timezone, pool)
        console.print(f"deployment {FLOW_NAME}/{DEPLOYMENT_NAME} ({deployment_id}): cron {cron!r} ({timezone}), "
                      f"home {config.home_dir}", soft_wrap=True)  # fmt: skip
        if pool:
            console.print(f"runs go to work pool {pool}: start a worker with `prefect worker start --pool {pool}`")
        else:
            console.print(
                "its runs need a process to run them: `custintel retention schedule --cron ... --serve` "
                "(foreground), or --pool POOL and `prefect worker start --pool POOL`",
                soft_wrap=True,
            )
        return
    if serve:
        raise fail("--serve needs a Prefect server to schedule the runs: start one (`prefect server start`) and set "
                   "PREFECT_API_URL")  # fmt: skip
    params = json.dumps({"settings": config.to_flow()}, sort_keys=True)
    pool_name = pool or "custintel"
    console.print("no Prefect server is configured (PREFECT_API_URL): start one (`prefect server start`), set "
                  "PREFECT_API_URL and run this again, or create the deployment with Prefect's own commands, "
                  "from the repository's root:", soft_wrap=True)  # fmt: skip
    commands = [
        f"prefect work-pool create {shlex.quote(pool_name)} --type process",
        f"prefect --no-prompt deploy flows/retention.py:retention_apply --name custintel --cron {shlex.quote(cron)} "
        f"--timezone {shlex.quote(timezone)} --pool {shlex.quote(pool_name)} --params {shlex.quote(params)}",
        f"prefect worker start --pool {shlex.quote(pool_name)}",
    ]
    for command in commands:
        console.print(f"  {command}", soft_wrap=True, markup=False, highlight=False)
    console.print("(Prefect 3.8's `deploy` creates the deployment, then may fail its check for active workers with a "
                  "422 on this stack's pinned FastAPI; `prefect deployment inspect retention-apply/custintel` shows "
                  "it was made.)", soft_wrap=True)  # fmt: skip
