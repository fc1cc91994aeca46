"""The Typer app, its callback (home, settings, console logging) and what every command shares."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from custintel.settings import SECRET_FIELDS, Settings
from flows.cli.logs import quiet_expected_failures, show_custintel_logs

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

Engine = Literal["prefect", "local"]
T = TypeVar("T")


def settings() -> Settings:
    """The settings of this invocation (the callback's `--home`), or the environment's."""
    return _state.get("settings") or Settings()


def settings_problems(exc: ValidationError) -> str:
    """Invalid settings as one line naming each environment variable: "CUSTINTEL_ENGINE: input should be ..."."""
    parts = []
    for error in exc.errors():
        field = "_".join(str(p) for p in error["loc"])
        shown = "(secret)" if field in SECRET_FIELDS else repr(error.get("input"))
        parts.append(f"CUSTINTEL_{field.upper()}={shown} is not valid: {error['msg']}")
    return "invalid settings: " + "; ".join(parts)


def fail(message: str) -> typer.Exit:
    """Print an expected error as one line; raise the returned exit (code 1)."""
    # the message is text, not markup ("custintel[spark]" would otherwise lose its brackets)
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)  # one line, however long
    return typer.Exit(code=1)


def progress() -> Progress:
    """A progress bar on the console (silent without a terminal)."""
    return Progress(
        TextColumn("[bold]{task.description}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )


@contextlib.contextmanager
def expected(*errors: type[BaseException], prefect: bool = False) -> Iterator[None]:
    """Turn the expected errors into one line and exit 1, under either engine (no traceback).

    With `prefect` (a flow runs inside): the failed task and flow runs log the exception with its
    traceback before it reaches us; for these classes the console drops those records
    (`quiet_expected_failures`), so it shows our line only. Any other exception is a bug and
    keeps its traceback.
    """
    try:
        with quiet_expected_failures(errors) if prefect else contextlib.nullcontext():
            yield
    except errors as exc:
        raise fail(str(exc)) from None


def run_engine(
    engine: Engine,
    doing: str,
    flow_name: str,
    under_prefect: Callable[[], T],
    locally: Callable[[Callable[[str], None]], T],
    errors: tuple[type[BaseException], ...],
) -> T:
    """Run a flow under Prefect (tracked) or its plain steps in this process; expected errors are one line.

    `locally` gets a callback that shows its progress on the console's status line.
    """
    with expected(*errors, prefect=engine == "prefect"):
        if engine == "prefect":
            with console.status(f"{doing} (Prefect flow {flow_name})…"):
                return under_prefect()
        with console.status(f"{doing}…") as status:
            return locally(lambda message: status.update(message))


@app.callback()
def main(
    ctx: typer.Context,
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
    try:
        _state["settings"] = Settings(home=home) if home else Settings()
    except ValidationError as exc:
        raise fail(settings_problems(exc)) from None
    # custintel's own progress records (custintel.* loggers) as our lines; undone when the command ends
    ctx.call_on_close(show_custintel_logs(console))
