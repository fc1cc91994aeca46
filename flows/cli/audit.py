"""`custintel audit`: check the hash-chained audit trail (and the gate's decision log), show its latest entries."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from flows.cli.app import app, console, settings

audit_app = typer.Typer(
    help="The tamper-evident audit trail: promotions, rollbacks, waivers, policy changes, exports, requests.",
    no_args_is_help=True,
)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    decisions: Annotated[
        bool, typer.Option("--decisions", help="Check the gate's decision log (decisions.jsonl) as well.")
    ] = False,
    anchor: Annotated[
        str | None,
        typer.Option(help="A head hash printed by an earlier verify: the trail must still contain it."),
    ] = None,
) -> None:
    """Check every line's hash and link; exit 1 naming each edited, inserted, deleted or cut-off line."""
    from governance.store import decision_log
    from governance.trail import trail_path, verify

    config = settings()
    paths = [trail_path(config)] + ([decision_log(config)] if decisions else [])
    results = [verify(path, anchor if i == 0 else None) for i, path in enumerate(paths)]
    for result in results:
        colour = "green" if result.ok else "bold red"
        console.print(f"[{colour}]{'ok' if result.ok else 'TAMPERED'}[/] {escape(result.summary())}", soft_wrap=True)
        for problem in result.problems:
            console.print(f"  {escape(str(problem))}", soft_wrap=True)
    if not all(r.ok for r in results):
        raise typer.Exit(code=1)


@audit_app.command("show")
def audit_show(
    last: Annotated[int, typer.Option(min=1, help="How many of the latest entries to show.")] = 20,
    decisions: Annotated[bool, typer.Option("--decisions", help="Show the gate's decision log instead.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the entries as JSON lines.")] = False,
) -> None:
    """The latest entries, oldest first: seq, time, actor, action, subject, details."""
    from governance.store import decision_log
    from governance.trail import read_entries, trail_path

    config = settings()
    path = decision_log(config) if decisions else trail_path(config)
    entries = read_entries(path, last)
    if as_json:
        for entry in entries:
            console.print(json.dumps(entry, sort_keys=True), soft_wrap=True, markup=False, highlight=False)
        return
    if not entries:
        console.print(f"no entries in {path}")
        return
    table = Table(title=f"{path} (last {len(entries)})")
    for column in ("seq", "time", "actor", "action", "subject", "details", "hash"):
        table.add_column(column, overflow="fold")
    for e in entries:
        if decisions:
            action, subject = str(e.get("result", "")), f"{e.get('model')} v{e.get('version')}"
            details = {k: e.get(k) for k in ("id", "champion_before", "champion_after", "reasons") if k in e}
        else:
            action, subject, details = str(e.get("action", "")), str(e.get("subject", "")), e.get("details", {})
        cells = [str(e.get("seq", "")), str(e.get("time", "")), str(e.get("actor", "")), action, subject]
        cells += [json.dumps(details, sort_keys=True, default=str), str(e.get("hash", ""))[:12]]
        table.add_row(*(escape(cell) for cell in cells))  # values are data, never rich markup
    console.print(table)
