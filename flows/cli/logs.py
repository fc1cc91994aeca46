"""What the command line does with log records: ours on the console as our lines, Prefect's failures kept quiet.

custintel's packages report progress on `custintel.<area>` loggers at INFO (no handler of their
own: the conventions forbid logging set-up at import). The command line shows those records as
its own indented lines, under either engine: Prefect runs tasks in this process, so a record
emitted inside a task reaches the handler once (the `custintel` logger does not propagate to the
root logger, where Prefect's console handler would print it a second time).

Under Prefect, a failed task or flow run logs its exception with the traceback before the
exception reaches the command. For an expected error (bad input, named in one line by the
command) Prefect's console handler drops those records while the command runs; its API handler
still gets them (the Prefect UI shows the failure whole), and any other exception keeps them
on the console too.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.text import Text

OURS = "custintel"
# Prefect 3's loggers of flow and task runs (`get_run_logger`, and the engines' state messages).
PREFECT_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class ConsoleLines(logging.Handler):
    """A `custintel.*` record as one of our console lines: two spaces, then the message."""

    def __init__(self, console: Console, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        """Print the record's message (rich markup in a message is printed as it is)."""
        try:
            line = Text("  ")
            if record.levelno >= logging.ERROR:
                line.append("error: ", style="bold red")
            elif record.levelno >= logging.WARNING:
                line.append("warning: ", style="yellow")
            line.append(record.getMessage())
            self.console.print(line, soft_wrap=True, highlight=False)
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


def show_custintel_logs(console: Console, level: int = logging.INFO) -> Callable[[], None]:
    """Show `custintel.*` records at `level` and above on `console`; returns the function that undoes it."""
    logger = logging.getLogger(OURS)
    handler = ConsoleLines(console, level)
    before = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False

    def undo() -> None:
        logger.removeHandler(handler)
        logger.setLevel(before[0])
        logger.propagate = before[1]

    return undo


class ExpectedFailures(logging.Filter):
    """Drops a Prefect run's records of an expected exception: the traceback, and the failed state that repeats it."""

    def __init__(self, errors: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.errors = errors
        self.seen: set[str] = set()  # the class names of the expected exceptions that failed a run

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a record to drop (only records of Prefect's flow- and task-run loggers are judged)."""
        if not record.name.startswith(PREFECT_RUN_LOGGERS):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            if isinstance(exc, self.errors):
                self.seen.add(type(exc).__name__)
                return False
            return True
        message = record.getMessage()
        # "Finished in state Failed('Task run encountered an exception IngestError: ...')"
        return not (message.startswith("Finished in state Failed") and any(f"{n}: " in message for n in self.seen))


def prefect_console_handlers() -> list[logging.Handler]:
    """The handlers that print Prefect's records on the console (set up by importing Prefect)."""
    import prefect.main  # noqa: F401 - its import sets up Prefect's logging (handlers replaced then)
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), logging.getLogger("prefect"), *map(logging.getLogger, PREFECT_RUN_LOGGERS)]
    return [h for logger in loggers for h in logger.handlers if isinstance(h, PrefectConsoleHandler)]


@contextlib.contextmanager
def quiet_expected_failures(errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """While inside, Prefect's console output drops the run records of these exceptions (other failures stay)."""
    if not errors:
        yield
        return
    quiet = ExpectedFailures(errors)
    handlers = prefect_console_handlers()
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)
