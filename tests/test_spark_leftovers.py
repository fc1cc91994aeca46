"""A Spark run killed midway leaves its folder under the home; the next run sweeps it, and DSARs reach it meanwhile.

The module kills a real `custintel resolve --data-engine spark` (a subprocess, its process group) as soon as
Splink has written a checkpoint table, the records being linked in it. The run folders' ownership (an flock
held for the process's life) is checked with plain subprocesses, without a JVM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from custintel.personal import Subject
from custintel.settings import Settings
from features.spark_leftovers import (
    WHAT,
    SparkLeftoversStore,
    leftovers,
    run_folder,
    runs_root,
    sweep_spark_leftovers,
)
from flows.cli import app

FAST = {"CUSTINTEL_IDENTITY_U_MAX_PAIRS": "1e6", "CUSTINTEL_SPARK_MASTER": "local[2]"}
HOLDER = (
    "import sys, time\n"
    "from custintel.settings import Settings\n"
    "from features.spark_leftovers import run_folder\n"
    "folder = run_folder(Settings(home=sys.argv[1]), 'checkpoints')\n"
    "(folder / 'part-0.parquet').write_bytes(b'rows')\n"
    "print(folder.parent, flush=True)\n"
    "time.sleep(600)\n"
)


def _splink_tables(home: Path) -> list[Path]:
    return [p for p in (home / "spark" / "runs").glob("*/checkpoints/**/*") if "__splink__" in str(p) and p.is_file()]


@pytest.fixture(scope="module")
def killed(featured: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A copy of the resolved home on which `custintel resolve --data-engine spark` was killed midway."""
    import shutil

    home = tmp_path_factory.mktemp("spark_leftovers") / "home"
    shutil.copytree(featured.home_dir, home, ignore=shutil.ignore_patterns("mlflow.db", "artifacts", "offline"))
    command = [str(Path(sys.executable).parent / "custintel"), "--home", str(home), "resolve", "--engine", "local",
               "--data-engine", "spark"]  # fmt: skip
    env = {**os.environ, **FAST}
    run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not _splink_tables(home):
            assert run.poll() is None, f"the run ended before writing a checkpoint: {run.stderr.read()!r}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no Splink checkpoint within 300 s"
            time.sleep(0.5)
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # the CLI and its JVM: a run killed midway
        run.wait(timeout=60)
        run.stderr.close()  # type: ignore[union-attr]
    deadline = time.monotonic() + 60
    while not sweep_spark_leftovers(Settings(home=home), dry_run=True).removed:
        assert time.monotonic() < deadline, "the killed run's JVM did not go"  # it goes with its stdin, at once
        time.sleep(0.5)
    return Settings(home=home)


def test_a_killed_run_leaves_its_folder_reported_as_a_dead_runs_leftover(killed: Settings):
    found = leftovers(killed)
    assert len(found) == 1 and found[0].files >= 1, found
    assert found[0].path.parent == runs_root(killed) and "is gone" in found[0].why
    assert _splink_tables(killed.home_dir)  # Splink's tables of the records being linked: personal data
    holdings = SparkLeftoversStore(killed).find([Subject("a@example.com", emails=("a@example.com",))])
    assert [h.rows for h in holdings] == [[{"held": f"{WHAT}, {found[0].files} files", "files": found[0].files}]]
    assert holdings[0].place.startswith("spark/runs/")


def test_the_next_run_sweeps_it_and_verify_finds_nothing(killed: Settings):
    dead = leftovers(killed)[0].path
    ours = run_folder(killed, "checkpoints")  # what every Spark run does first (spark_session, staging)
    assert not dead.exists() and ours.is_dir()
    assert leftovers(killed) == []  # our own folder is a live run's
    key = _a_customer(killed)
    home = ["--home", str(killed.home_dir)]
    erased = CliRunner().invoke(app, [*home, "dsar", "erase", key, "--yes"])
    assert erased.exit_code == 0, erased.output
    result = CliRunner().invoke(app, [*home, "dsar", "verify", key])  # every store, and a raw search of the home
    assert result.exit_code == 0 and "nothing found" in result.output, result.output
    assert SparkLeftoversStore(killed).find([Subject(key, customer_keys=(key,))]) == []


def _a_customer(settings: Settings) -> str:
    import pyarrow.parquet as pq

    return str(pq.read_table(settings.identity_dir / "crosswalk.parquet").column("customer_key")[0].as_py())


def test_a_live_runs_folder_stays_and_goes_once_its_process_is_killed(tmp_path: Path):
    settings = Settings(home=tmp_path / "home")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(settings.home_dir)], env=env, stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        folder = Path(holder.stdout.readline().strip())  # type: ignore[union-attr]
        assert sweep_spark_leftovers(settings).removed == [] and folder.is_dir()  # its lock is held
        assert SparkLeftoversStore(settings).erase([Subject("x", customer_keys=("x",))]) == []
    finally:
        holder.kill()
        holder.wait(timeout=30)
        holder.stdout.close()  # type: ignore[union-attr]
    expiry = sweep_spark_leftovers(settings, dry_run=True)
    assert [i.place for i in expiry.removed] == [str(folder.relative_to(settings.home_dir))] and folder.is_dir()
    erased = SparkLeftoversStore(settings).erase([Subject("x", customer_keys=("x",))])
    assert [(e.place, e.removed) for e in erased] == [(str(folder.relative_to(settings.home_dir)), 1)]
    assert not folder.exists() and not list(runs_root(settings).iterdir())
    assert SparkLeftoversStore(settings).erase([Subject("x", customer_keys=("x",))]) == []  # idempotent


def test_folders_of_the_earlier_layout_are_swept(tmp_path: Path):
    settings = Settings(home=tmp_path / "home")
    legacy = settings.home_dir / "spark" / "checkpoints" / "__splink__df_concat"
    legacy.mkdir(parents=True)
    (legacy / "part-0.parquet").write_bytes(b"rows")
    (settings.home_dir / "spark" / "inputs" / "0a1b").mkdir(parents=True)
    expiry = sweep_spark_leftovers(settings)
    assert sorted(i.place for i in expiry.removed) == ["spark/checkpoints/__splink__df_concat", "spark/inputs/0a1b"]
    assert not legacy.exists() and expiry.removed_count == 1
