"""`custintel dsar`: a person's access (export), erasure and verification requests across every store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from flows.cli.app import app, console, expected, fail, settings

dsar_app = typer.Typer(
    help="Access and erasure requests (GDPR art. 15, 17): export, erase and verify one person across every store.",
    no_args_is_help=True,
)
app.add_typer(dsar_app, name="dsar")

SubjectArg = Annotated[
    str | None,
    typer.Argument(
        help="Who: a customer key, an email, a phone, a source record id (table:id or a bare id), or 'name|birth-date'."
    ),
]
CustomerOpt = Annotated[
    str | None,
    typer.Option("--customer", help="The customer key to choose when the identifier is held by several customers."),
]
FileOpt = Annotated[
    Path | None,
    typer.Option("--file", help="A file of requests, one per line (optionally REQUEST<TAB>CUSTOMER_KEY)."),
]


def _errors() -> tuple[type[BaseException], ...]:
    from features.identity.store import IdentityStoreError
    from features.lake import IngestError
    from governance.dsar import DsarError

    return (ValueError, DsarError, IdentityStoreError, IngestError, OSError)


class _Steps:
    """Progress lines of one command, under a header printed before the first (none when nothing happened)."""

    def __init__(self, header: str) -> None:
        self.header, self.lines = header, 0

    def __call__(self, message: str) -> None:
        if not self.lines:
            console.print(self.header)
        self.lines += 1
        console.print(f"  {escape(message)}", soft_wrap=True, highlight=False)


@dsar_app.command("export")
def dsar_export(
    subject: SubjectArg = None,
    customer: CustomerOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder of the bundle. Default: <home>/governance/dsar/<request id>/export.")
    ] = None,
) -> None:
    """Everything held about a person in every store: bundle.json, one CSV per store and a readable index.html."""
    from flows.personal import export_subject

    if subject is None:
        raise fail("subject: give the person to export (a customer key, email, phone, record id or name|birth-date)")
    config = settings()
    with expected(*_errors()):
        result = export_subject(config, subject, customer, out, _Steps("searching every store:"))
    total = sum(result.counts.values())
    console.print(
        f"[green]exported[/] {total} row(s) from {len(result.counts)} store(s) in {len(result.holdings)} place(s)"
    )
    console.print(f"bundle: {escape(str(result.folder))} (index.html, bundle.json, one CSV per store)", soft_wrap=True)
    console.print(f"receipt: audit trail seq {result.receipt['seq']} (dsar_export {result.request_id})")


@dsar_app.command("erase")
def dsar_erase(
    subject: SubjectArg = None,
    file: FileOpt = None,
    customer: CustomerOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="Erase without asking for confirmation.")] = False,
) -> None:
    """Delete a person (or every person of --file) from every store, suppress their identifiers, write a receipt.

    Every request is resolved before anything changes. Killed half-way, the same command again finishes the job.
    """
    from custintel.personal import Subject
    from flows.personal import erase_subjects

    def confirm(subjects: list[Subject]) -> bool:
        records = sum(len(s.source_records) for s in subjects)
        keys = sorted(k for s in subjects for k in s.customer_keys)
        shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        console.print(f"about to erase {len(subjects)} person(s): customer key(s) {shown}; {records} source record(s)")
        return yes or typer.confirm("erase them from every store?", default=False)

    config = settings()
    with expected(*_errors()):
        result = erase_subjects(config, subject, customer, file, _Steps("erasing:"), confirm=confirm)
    if result is None:
        raise fail("erasure: not confirmed, nothing changed (add --yes to skip the question)")
    journal = result.journal
    if result.already_done:
        console.print(f"[green]already erased[/] at {journal.finished_at}; journal {escape(str(result.journal_file))}")
        return
    table = Table(title=f"erasure {result.request_id}")
    for column in ("store", "places", "removed"):
        table.add_column(column)
    for entry in journal.stores:
        table.add_row(escape(entry["name"]), str(len(entry["erased"])), str(entry["removed"]))
    console.print(table)
    console.print(f"[green]erased[/] {len(journal.subjects)} person(s); suppressed identifiers: "
                  f"{(journal.suppressed or {}).get('added', 0)}")  # fmt: skip
    console.print(f"journal: {escape(str(result.journal_file))}", soft_wrap=True)
    console.print(f"receipt: audit trail seq {(journal.receipt or {}).get('seq')} (dsar_erase {result.request_id})")


@dsar_app.command("verify")
def dsar_verify(
    subject: SubjectArg = None,
    file: FileOpt = None,
    customer: CustomerOpt = None,
) -> None:
    """Search every store and the home's files for a person's identifiers; exit 1 listing each hit and its place."""
    from flows.personal import verify_subjects

    config = settings()
    with expected(*_errors()):
        result = verify_subjects(config, subject, customer, file, _Steps("searching every store:"))
    where = f"report: {escape(str(result.report))}; receipt: audit trail seq {result.receipt['seq']}"
    if result.clean:
        console.print(f"[green]nothing found[/] in {result.stores_searched} stores ({where})", soft_wrap=True)
        return
    console.print(f"[bold red]found[/] in {len(result.hits)} place(s):")
    for hit in result.hits:
        console.print(f"  {escape(hit.store)}  {escape(hit.place)}  {len(hit.rows)} row(s)", soft_wrap=True)
    console.print(where, soft_wrap=True)
    raise typer.Exit(code=1)
