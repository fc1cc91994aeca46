"""The console: an expected error is one line under either engine, a bug keeps its traceback, and
custintel's own progress records (`custintel.*` loggers) are printed once, as our lines."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.cli.logs import OURS, PREFECT_RUN_LOGGERS, prefect_console_handlers

CONTRACT_YAML = """
table: accounts
system: byo
files: accounts*.csv
key: [account_id]
columns:
  - {name: account_id, class: direct_identifier, nullable: false}
  - {name: opened, class: behavioural, type: date, nullable: false}
  - {name: note, class: behavioural}
"""
ROWS = "account_id,opened,note\nA1,2024-01-01,Müller\n"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def contracts(tmp_path: Path) -> Path:
    folder = tmp_path / "contracts"
    folder.mkdir()
    (folder / "accounts.yaml").write_text(CONTRACT_YAML, encoding="utf-8")
    return folder


def _drop(tmp_path: Path, encoding: str) -> Path:
    drop = tmp_path / f"drop-{encoding}"
    drop.mkdir()
    (drop / "accounts.csv").write_bytes(ROWS.encode(encoding))
    return drop


@contextlib.contextmanager
def prefect_records() -> Iterator[tuple[list[logging.LogRecord], list[logging.LogRecord]]]:
    """(what Prefect's console handlers print, what its flow- and task-run loggers emit: the API's share)."""
    printed: list[logging.LogRecord] = []
    emitted = Records()
    consoles = prefect_console_handlers()
    assert consoles
    loggers = [logging.getLogger(name) for name in PREFECT_RUN_LOGGERS]
    for handler in consoles:
        handler.emit = printed.append  # type: ignore[method-assign] - after the handler's filters
    for logger in loggers:
        logger.addHandler(emitted)
    try:
        yield printed, emitted.records
    finally:
        for handler in consoles:
            del handler.emit
        for logger in loggers:
            logger.removeHandler(emitted)


def _ingest(home: Path, drop: Path, contracts: Path, engine: str):
    args = [
        "--home",
        str(home),
        "ingest",
        "--source",
        str(drop),
        "--contracts",
        str(contracts),
        "--engine",
        engine,
        "--export-date",
        "2024-06-01",
    ]
    return CliRunner().invoke(app, args)


@pytest.mark.parametrize("engine", ["local", pytest.param("prefect", marks=pytest.mark.integration)])
def test_an_expected_error_is_one_line_under_each_engine(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    contracts: Path,
    engine: str,
) -> None:
    if engine == "prefect":
        request.getfixturevalue("prefect_api")
    with prefect_records() as (printed, emitted):
        result = _ingest(tmp_path / "home", _drop(tmp_path, "latin-1"), contracts, engine)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("error:")]
    assert len(ours) == 1 and "accounts.csv" in ours[0] and "utf-8" in ours[0], result.output
    # besides our line, at most Prefect's INFO lines on the flow run (its start, its URL)
    assert all("| INFO " in line for line in lines if line not in ours), result.output
    assert "Traceback" not in result.output and "accounts.csv" not in result.output.replace(ours[0], "")
    if engine == "prefect":
        assert any("ingest_sources" in r.getMessage() for r in printed)  # it did run as a flow
        # the console shows neither the task's nor the flow's failure (traceback, then the failed state repeating it)
        assert not [r for r in printed if r.exc_info], [r.getMessage() for r in printed]
        assert not [r for r in printed if "Failed" in r.getMessage()]
        # the API (the Prefect UI) still gets the failure whole
        assert any(r.exc_info and "accounts.csv" in str(r.exc_info[1]) for r in emitted)


@pytest.mark.integration
def test_a_bug_keeps_its_traceback_under_prefect(
    prefect_api: None,
    tmp_path: Path,
    contracts: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug, not bad input")

    monkeypatch.setattr("flows.ingest.ingest_drop", broken)
    with prefect_records() as (printed, _):
        result = _ingest(tmp_path / "home", _drop(tmp_path, "utf-8"), contracts, "prefect")
    assert isinstance(result.exception, RuntimeError)
    assert any(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in printed)


@pytest.mark.parametrize("engine", ["local", pytest.param("prefect", marks=pytest.mark.integration)])
def test_custintel_progress_records_are_printed_once_as_our_lines(
    request: pytest.FixtureRequest, tmp_path: Path, contracts: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    import features.lake
    import flows.ingest

    if engine == "prefect":
        request.getfixturevalue("prefect_api")
    original = features.lake.ingest_drop

    def ingest_with_progress(*args, **kwargs):  # type: ignore[no-untyped-def]
        logging.getLogger("custintel.lake").info("read %s of %s files", 1, 1)
        logging.getLogger("custintel.lake").debug("not shown: below INFO")
        return original(*args, **kwargs)

    monkeypatch.setattr(features.lake, "ingest_drop", ingest_with_progress)
    monkeypatch.setattr(flows.ingest, "ingest_drop", ingest_with_progress)
    at_root = Records()
    logging.getLogger().addHandler(at_root)
    try:
        result = _ingest(tmp_path / "home", _drop(tmp_path, "utf-8"), contracts, engine)
    finally:
        logging.getLogger().removeHandler(at_root)
    assert result.exit_code == 0, result.output
    assert result.output.count("  read 1 of 1 files\n") == 1, result.output
    assert "not shown" not in result.output
    # not handed on to the root logger, where Prefect's console handler would print it a second time
    assert not [r for r in at_root.records if r.name.startswith(OURS)]
    # and the command's end undid it: other code (and caplog) sees custintel's records as before
    assert logging.getLogger(OURS).propagate and logging.getLogger(OURS).level == logging.NOTSET


@pytest.mark.integration
def test_a_separate_process_shows_one_line_under_prefect(tmp_path: Path, contracts: Path) -> None:
    """What a user sees: a real process, its own ephemeral Prefect API, stdout and stderr together."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }
    env.pop("PREFECT_API_URL", None)
    cli = str(Path(sys.executable).with_name("custintel"))
    args = [
        "--home",
        str(tmp_path / "home"),
        "ingest",
        "--source",
        str(_drop(tmp_path, "latin-1")),
        "--export-date",
        "2024-06-01",
    ]
    done = subprocess.run([cli, *args, "--contracts", str(contracts)], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "Traceback" not in out
    assert out.count("cannot read accounts.csv") == 1, out
    assert "error: accounts: cannot read accounts.csv" in done.stdout


def _record(message: str, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, message, (), exc_info)


def test_the_filter_drops_an_expected_failure_and_its_state_but_not_a_bug() -> None:
    from features.lake import IngestError
    from flows.cli.logs import ExpectedFailures

    quiet = ExpectedFailures((IngestError, ValueError))
    other = logging.LogRecord("custintel.lake", logging.ERROR, __file__, 1, "x", (), (ValueError, ValueError(), None))
    assert quiet.filter(other)  # only Prefect's run records are judged
    assert quiet.filter(_record("Beginning flow run 'x' for flow 'ingest_sources'"))
    assert not quiet.filter(_record("Task run failed with exception", IngestError("a.csv: not UTF-8")))
    assert not quiet.filter(_record("Finished in state Failed('Task run encountered an exception IngestError: a')"))
    # a subclass of an expected class is expected too; its state names the subclass
    assert not quiet.filter(
        _record("Encountered exception during execution", UnicodeDecodeError("utf-8", b"", 0, 1, "x"))
    )
    assert not quiet.filter(
        _record("Finished in state Failed('Flow run encountered an exception: UnicodeDecodeError: x')")
    )
    # a bug keeps its traceback and its failed state
    assert quiet.filter(_record("Task run failed with exception", RuntimeError("bug")))
    assert quiet.filter(_record("Finished in state Failed('Task run encountered an exception RuntimeError: bug')"))
