"""Landing under SIGKILL: readers see the lake before a landing or after it, never a mix, and the next run recovers.

An ingestion is killed at each named step of the landing (the `CUSTINTEL_TEST_PAUSE_AT` hook makes it stop
there and say so), and at random moments; after each kill the lake must read as exactly the old state or
exactly the new one, and a rerun must complete and leave no staging and no partition the manifest does not name.
The sweep forks the test process (the modules are imported already, so a kill costs a fraction of a second);
two kills go through the real command line, `custintel ingest --engine local`, around the manifest flip.
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import features.contracts
from custintel.settings import Settings
from features.contracts import ContractSet, load_contracts
from features.lake import (
    INGEST_LOG,
    MANIFEST,
    PAUSE_ENV,
    PAUSE_MARKER,
    IngestError,
    ingest_drop,
    lake_files,
    read_lake_table,
    read_manifest,
    read_quarantine,
    recover_lake,
)
from features.synthetic import WorldConfig, generate_world

# Four tables (two referencing the catalogue) keep each landing short, so every step can be killed.
CONTRACT_FILES = ("crm.yaml", "catalogue.yaml", "billing.yaml")
SHIPPED = Path(features.contracts.__file__).parent
SOURCE_FOLDERS = ("crm", "catalogue", "billing")


def _contracts_folder(dst: Path, edit: Callable[[str], str] = lambda text: text) -> Path:
    dst.mkdir()
    for name in CONTRACT_FILES:
        text = (SHIPPED / name).read_text()
        (dst / name).write_text(edit(text) if name == "crm.yaml" else text)
    return dst


CONTRACTS = ContractSet(
    contracts=[c for c in load_contracts().contracts if c.system in ("crm", "catalogue", "billing")]
)
TABLES = [c.table for c in CONTRACTS.ordered()]
# The landing's named steps, in order; the flip (the manifest's replace) comes between "flipping" and "flipped".
BEFORE_FLIP = [
    "recovered",
    *[f"staged:{t}" for t in TABLES],
    "staged",
    *[f"placed:{t}" for t in TABLES],
    "flipping",
]
AFTER_FLIP = ["flipped", "cleaned", "reported", "logged"]

State = dict[str, tuple[object, ...] | None]


def lake_state(settings: Settings, contracts: ContractSet = CONTRACTS) -> State:
    """What a reader sees, per table: rows, rows per drop, empty values, quarantine issues per drop."""
    out: State = {}
    for table in TABLES:
        try:
            frame = read_lake_table(settings, table, contracts)
        except IngestError:
            out[table] = None
            continue
        issues = read_quarantine(settings, table)
        out[table] = (
            len(frame),
            tuple(sorted(frame["_drop_id"].value_counts().items())),
            int(frame.isna().sum().sum()),
            tuple(sorted(issues.groupby("drop").size().items())) if len(issues) else (),
        )
    return out


@dataclass(frozen=True)
class Drops:
    """Drop A, landed in `base`; drop B, the same files exported a month later (another drop id)."""

    a: Path
    b: Path
    base: Settings
    old: State
    new: State
    b_id: str
    seconds: float  # one landing of B


@pytest.fixture(scope="module")
def drops(tmp_path_factory: pytest.TempPathFactory) -> Drops:
    root = tmp_path_factory.mktemp("atomic")
    world = root / "world"
    generate_world(WorldConfig(customers=300, chunk_size=1000, seed=21, duplicate_row_rate=0.01), world)
    a, b = root / "a", root / "b"
    for drop in (a, b):
        for folder in SOURCE_FOLDERS:
            shutil.copytree(world / folder, drop / folder)
        shutil.copy(world / "manifest.json", drop / "manifest.json")
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["export_date"] = "2026-02-01"
    (b / "manifest.json").write_text(json.dumps(manifest))
    base = Settings(home=root / "base")
    ingest_drop(a, base, CONTRACTS)
    after = _copy_home(base, root / "after")
    started = time.perf_counter()
    report = ingest_drop(b, after, CONTRACTS)
    seconds = time.perf_counter() - started
    drops = Drops(a, b, base, lake_state(base), lake_state(after), report.drop_id, seconds)
    assert drops.old != drops.new
    assert all(drops.old.values()), "every table has rows in drop A"
    return drops


def _copy_home(settings: Settings, dst: Path) -> Settings:
    shutil.copytree(settings.home_dir, dst)
    return Settings(home=dst)


def _wait_for_marker(fd: int, step: str, timeout: float = 30.0) -> None:
    """Read the child's stderr until it says it paused at `step`; fail if it ends or takes too long."""
    seen = b""
    deadline = time.monotonic() + timeout
    while f"{PAUSE_MARKER} {step}".encode() not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no pause at {step} within {timeout} s; stderr: {seen[-2000:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"the ingestion ended without pausing at {step}; stderr: {seen[-2000:]!r}"
            seen += chunk


def _fork_ingest(drop: Path, settings: Settings, contracts: ContractSet, pause_at: str | None) -> tuple[int, int]:
    """Start ingest_drop in a forked child whose stderr is a pipe; return (pid, read end)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(read_end)
            os.dup2(write_end, 2)
            sys.stderr = os.fdopen(2, "w")  # pytest's capture replaced sys.stderr; the hook writes there
            if pause_at is not None:
                os.environ[PAUSE_ENV] = pause_at
            ingest_drop(drop, settings, contracts)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    return pid, read_end


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _kill_at(drop: Path, settings: Settings, step: str, contracts: ContractSet = CONTRACTS) -> None:
    pid, fd = _fork_ingest(drop, settings, contracts, step)
    try:
        _wait_for_marker(fd, step)
    finally:
        _kill(pid)
        os.close(fd)


def _unreferenced_partitions(settings: Settings) -> list[str]:
    manifest = read_manifest(settings)
    named = {f"lake/{t}/{p.lake}" for t, parts in manifest.tables.items() for p in parts} | {
        f"quarantine/{t}/{p.quarantine}" for t, parts in manifest.tables.items() for p in parts if p.quarantine
    }
    on_disk = {str(p.relative_to(settings.home_dir)) for p in settings.home_dir.glob("*/*/drop=*")}
    return sorted(on_disk - named)


def _staging(settings: Settings) -> list[str]:
    staging = settings.home_dir / ".staging"
    return sorted(p.name for p in staging.iterdir()) if staging.is_dir() else []


def _logged(settings: Settings) -> list[dict[str, object]]:
    return [json.loads(line) for line in (settings.lake_dir / INGEST_LOG).read_text().splitlines()]


def _assert_complete(settings: Settings, drops: Drops, contracts: ContractSet = CONTRACTS) -> None:
    """A finished landing of B: the new state, its report, nothing left over."""
    assert lake_state(settings, contracts) == drops.new
    assert _staging(settings) == []
    assert _unreferenced_partitions(settings) == []
    assert not (settings.lake_dir / f".{MANIFEST}.tmp").exists()
    report = json.loads((settings.reports_dir / "ingest" / f"{drops.b_id}.json").read_text())
    assert report["drop_id"] == drops.b_id
    assert json.loads((settings.reports_dir / "ingest" / "latest.json").read_text()) == report
    landings = [line["landing_id"] for line in _logged(settings)]
    assert len(landings) == len(set(landings)), "a landing is logged once"


@pytest.mark.parametrize("step", BEFORE_FLIP + AFTER_FLIP)
def test_killed_at_each_step_leaves_old_or_new_and_a_rerun_completes(drops: Drops, tmp_path: Path, step: str) -> None:
    settings = _copy_home(drops.base, tmp_path / "home")
    _kill_at(drops.b, settings, step)

    expected = drops.old if step in BEFORE_FLIP else drops.new
    assert lake_state(settings) == expected, (
        f"killed at {step}: the lake is not the {'old' if expected is drops.old else 'new'} one"
    )
    landing = read_manifest(settings).landing
    assert landing is not None
    # The report travels with the landing: a committed drop is never without it.
    assert (landing["drop_id"] == drops.b_id) is (step in AFTER_FLIP)

    rerun = ingest_drop(drops.b, settings, CONTRACTS)
    assert rerun.drop_id == drops.b_id
    _assert_complete(settings, drops)
    logged = [line["drop_id"] for line in _logged(settings)]
    # A, then B killed after its commit (finished and logged by the rerun's recovery), then the rerun.
    assert logged[1:] == [*([drops.b_id] if step in AFTER_FLIP else []), drops.b_id]


def test_recovery_alone_finishes_a_committed_landing(drops: Drops, tmp_path: Path) -> None:
    settings = _copy_home(drops.base, tmp_path / "home")
    _kill_at(drops.b, settings, "flipped")
    assert _staging(settings) != []
    assert not (settings.reports_dir / "ingest" / f"{drops.b_id}.json").exists()
    done = recover_lake(settings)
    assert any(d.startswith("removed .staging/") for d in done)
    assert any(d.endswith(f"{drops.b_id}.json") for d in done)
    _assert_complete(settings, drops)
    assert recover_lake(settings) == [], "recovery of a clean lake does nothing"


def test_recovery_alone_undoes_an_uncommitted_landing(drops: Drops, tmp_path: Path) -> None:
    settings = _copy_home(drops.base, tmp_path / "home")
    _kill_at(drops.b, settings, "flipping")
    assert _unreferenced_partitions(settings) != [], "B's partitions were in place, not yet committed"
    before = (settings.reports_dir / "ingest" / "latest.json").read_text()
    recover_lake(settings)
    assert lake_state(settings) == drops.old
    assert _unreferenced_partitions(settings) == [] and _staging(settings) == []
    assert (settings.reports_dir / "ingest" / "latest.json").read_text() == before


def test_killed_at_random_moments(drops: Drops, tmp_path: Path) -> None:
    rng = random.Random(5)
    for i in range(3):
        settings = _copy_home(drops.base, tmp_path / f"home{i}")
        pid, fd = _fork_ingest(drops.b, settings, CONTRACTS, None)
        time.sleep(rng.uniform(0.0, drops.seconds))
        _kill(pid)
        os.close(fd)
        assert lake_state(settings) in (drops.old, drops.new)
        ingest_drop(drops.b, settings, CONTRACTS)
        _assert_complete(settings, drops)


@dataclass(frozen=True)
class Relanded:
    """Drop A landed again under a tighter contract (CRM first names of at most 3 characters, longer ones emptied)."""

    contracts: ContractSet
    state: State


@pytest.fixture(scope="module")
def relanded(drops: Drops, tmp_path_factory: pytest.TempPathFactory) -> Relanded:
    root = tmp_path_factory.mktemp("relanded")
    folder = _contracts_folder(
        root / "contracts",
        lambda text: text.replace(
            "  - {name: first_name, class: direct_identifier}",
            '  - {name: first_name, class: direct_identifier, max_length: 3, on_invalid: "null"}',
        ),
    )
    tight = load_contracts(folder)
    assert tight.get("crm_accounts").column("first_name").max_length == 3
    reference = _copy_home(drops.base, root / "home")
    report = ingest_drop(drops.a, reference, tight)
    assert report.replaced_existing and report.tables["crm_accounts"].nulled_values > 0
    state = lake_state(reference, tight)
    assert state != drops.old and state["product_catalogue"] == drops.old["product_catalogue"]
    return Relanded(tight, state)


@pytest.mark.parametrize("step", ["placed:crm_accounts", "flipping", "flipped", "cleaned"])
def test_relanding_the_same_drop_replaces_it_atomically(
    drops: Drops, relanded: Relanded, tmp_path: Path, step: str
) -> None:
    """Drop A again under a changed contract: the new version goes beside the committed one until the flip."""
    settings = _copy_home(drops.base, tmp_path / "home")
    _kill_at(drops.a, settings, step, relanded.contracts)
    before_flip = step == "flipping" or step.startswith("placed:")
    assert lake_state(settings, relanded.contracts) == (drops.old if before_flip else relanded.state)
    ingest_drop(drops.a, settings, relanded.contracts)
    assert lake_state(settings, relanded.contracts) == relanded.state
    assert _unreferenced_partitions(settings) == [] and _staging(settings) == []
    # one partition per table and drop, whatever folder the new version went to
    manifest = read_manifest(settings)
    assert all(len(parts) == 1 for parts in manifest.tables.values())
    assert len(lake_files(settings)) == len(manifest.tables)


def _cli(home: Path, drop: Path, contracts: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [str(Path(sys.executable).with_name("custintel")), "--home", str(home)]
    return subprocess.Popen(
        [*command, "ingest", "--engine", "local", "--source", str(drop), "--contracts", str(contracts)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("step", ["flipping", "flipped"])
def test_cli_killed_at_the_flip(drops: Drops, tmp_path: Path, step: str) -> None:
    settings = _copy_home(drops.base, tmp_path / "home")
    env = {**os.environ, PAUSE_ENV: step, "COLUMNS": "200"}
    contracts = _contracts_folder(tmp_path / "contracts")
    proc = _cli(settings.home_dir, drops.b, contracts, env)
    try:
        assert proc.stderr is not None
        _wait_for_marker(proc.stderr.fileno(), step, timeout=120)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert lake_state(settings) == (drops.old if step == "flipping" else drops.new)
    ingest_drop(drops.b, settings, CONTRACTS)
    _assert_complete(settings, drops)


def test_a_lake_without_manifest_is_adopted(drops: Drops, tmp_path: Path) -> None:
    """A home written before manifests: readers glob its folders; the next landing writes the manifest."""
    settings = _copy_home(drops.base, tmp_path / "home")
    (settings.lake_dir / MANIFEST).unlink()
    # a folder the old in-place swap left when killed is not a partition
    crm = next((settings.lake_dir / "crm_accounts").glob("drop=*"))
    shutil.copytree(crm, crm.with_name(crm.name + ".old-1234abcd"))
    assert lake_state(settings) == drops.old
    ingest_drop(drops.b, settings, CONTRACTS)
    assert (settings.lake_dir / MANIFEST).is_file()
    _assert_complete(settings, drops)


def test_concurrent_landings_in_one_home_are_serialised(drops: Drops, tmp_path: Path) -> None:
    settings = _copy_home(drops.base, tmp_path / "home")
    pid, fd = _fork_ingest(drops.b, settings, CONTRACTS, "staged")
    recovering = None
    try:
        _wait_for_marker(fd, "staged")
        recovering = os.fork()
        if recovering == 0:  # a second process recovering the same home must wait for the landing's lock
            try:
                recover_lake(settings)
            finally:
                os._exit(0)
        time.sleep(0.5)
        assert os.waitpid(recovering, os.WNOHANG) == (0, 0), "recovery waits while a landing runs"
        assert _staging(settings) != [], "the running landing's staging was not touched"
    finally:
        _kill(pid)
        os.close(fd)
    assert recovering is not None
    os.waitpid(recovering, 0)  # the killed landing's lock is released; the recovery runs and cleans up
    assert _staging(settings) == [] and lake_state(settings) == drops.old


def test_a_read_racing_a_landing_resolves_again(drops: Drops, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader that resolved a version a landing has just removed reads the manifest again."""
    import features.lake as lake

    resolved = lake.lake_files
    calls = []

    def stale_once(
        settings: Settings, table: str | None = None, manifest: lake.LakeManifest | None = None
    ) -> list[Path]:
        calls.append(table)
        files = resolved(settings, table, manifest)
        return [f.with_name("removed.parquet") for f in files] if len(calls) == 1 else files

    monkeypatch.setattr(lake, "lake_files", stale_once)
    frame = read_lake_table(drops.base, "crm_accounts", CONTRACTS)
    assert len(calls) == 2 and len(frame) == drops.old["crm_accounts"][0]  # type: ignore[index]


def test_a_failure_while_placing_leaves_the_lake_as_it_was(
    drops: Drops, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import features.lake as lake

    settings = _copy_home(drops.base, tmp_path / "home")
    place = lake._place_folder
    calls = []

    def failing(*args: object) -> str:
        calls.append(args)
        if len(calls) == 3:
            raise OSError("disk full")
        return place(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(lake, "_place_folder", failing)
    with pytest.raises(OSError, match="disk full"):
        ingest_drop(drops.b, settings, CONTRACTS)
    assert lake_state(settings) == drops.old
    assert _unreferenced_partitions(settings) == [] and _staging(settings) == []
