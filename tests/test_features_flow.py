"""The build_features flow on the ephemeral Prefect API, its I/O retries, and `custintel features` from the CLI."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any
from uuid import UUID

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import redis
from mlflow.exceptions import RestException
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import Artifact, FlowRun, TaskRun
from prefect.states import Completed, Failed
from typer.testing import CliRunner
from typer.testing import Result as CliResult

from custintel.settings import Settings
from features.featurestore.build import FeatureBuildError
from features.featurestore.inputs import FeatureInputError
from features.featurestore.offline import OfflineStoreError, read_offline
from features.featurestore.online import OnlineStoreError, RedisOnlineStore, SQLiteOnlineStore
from features.featurestore.quality import FeatureQualityError
from flows.cli import app
from flows.features import PLAIN_STEPS, TASK_STEPS, BuiltSet, build_features
from flows.retries import retry_on_io
from tests.conftest import Ingested, flow_runs_and_artifacts, run_home

pytestmark = pytest.mark.integration

runner = CliRunner()
# A quick matcher, and the embedded online store whatever the environment says (None unsets a variable).
ENV: dict[str, str | None] = {"CUSTINTEL_IDENTITY_U_MAX_PAIRS": "1e6", "CUSTINTEL_REDIS_URL": None}
FEATURE_SETS = ("relationship@1", "value@1", "service@1", "digital@1")
ONLINE_SETS = (*FEATURE_SETS, "interactions@1")
ALL_SETS = (*ONLINE_SETS, "attributes@1", "labels@1", "purchase_labels@1")  # never served: protected, labels
CUTOFFS = ["2025-03-01", "2026-01-01"]  # the second one is the end of the small world's observed data


def _invoke(home: Path, *args: str) -> CliResult:
    return runner.invoke(app, ["--home", str(home), *args], env=ENV)


def _flat(output: str) -> str:
    """CLI output on one line, so a message rich wrapped still matches."""
    return " ".join(output.split())


@pytest.fixture(scope="module")
def resolved_home(ingested: Ingested, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the ingested home with its identity crosswalk (shared by the module: copy it to write)."""
    home = tmp_path_factory.mktemp("features-flow") / "home"
    shutil.copytree(ingested.settings.home_dir, home)
    result = _invoke(home, "resolve", "--engine", "local")
    assert result.exit_code == 0, result.output
    return home


@pytest.fixture
def home(resolved_home: Path, tmp_path: Path) -> Path:
    """This test's own copy of the resolved home."""
    dst = tmp_path / "home"
    shutil.copytree(resolved_home, dst)
    return dst


def _read_runs(home: Path) -> tuple[list[FlowRun], list[Artifact]]:
    runs, artifacts = flow_runs_and_artifacts()
    ours = [r for r in runs if run_home(r) == str(home.resolve())]
    ids = {r.id for r in ours}
    return ours, [a for a in artifacts if a.flow_run_id in ids]


async def _read_task_run(task_run_id: UUID) -> TaskRun:
    async with get_client() as client:
        return await client.read_task_run(task_run_id)


# --------------------------------------------------------------------------------------------
# the flow


def test_the_flow_builds_every_set_stores_them_and_publishes_artifacts(
    prefect_api: None, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUSTINTEL_REDIS_URL", raising=False)
    report = build_features(Settings(home=home, redis_url=None).to_flow(), as_of=CUTOFFS)

    assert report["as_of"] == CUTOFFS
    assert sorted(report["sets"]) == sorted(ALL_SETS)
    settings = Settings(home=home, redis_url=None)
    for key, entry in report["sets"].items():
        assert sorted(entry["partitions"]) == CUTOFFS, key
        assert all(p["rows"] > 0 for p in entry["partitions"].values()), key
        name = key.split("@")[0]
        for day in CUTOFFS:
            assert (settings.features_dir / "offline" / name / "v1" / f"as_of={day}" / "data.parquet").is_file()
        stored = read_offline(settings.features_dir / "offline", key)
        assert stored.num_rows == sum(p["rows"] for p in entry["partitions"].values())
    # the same customers in every one-row-per-customer set, one cutoff after another
    spine = report["sets"]["labels@1"]["partitions"]
    per_product = ("interactions@1", "purchase_labels@1")
    assert all(report["sets"][k]["partitions"] == spine for k in ALL_SETS if k not in per_product)

    assert sorted(report["online"]) == sorted(ONLINE_SETS)
    assert all(o["store"] == "sqlite" and o["as_of"] == "2026-01-01" for o in report["online"].values())
    with SQLiteOnlineStore(settings.features_dir / "online.sqlite") as store:
        sets = store.sets()
        assert {k: m["rows"] for k, m in sets.items()} == {k: o["customers"] for k, o in report["online"].items()}
        some = read_offline(settings.features_dir / "offline", "value@1", [dt.date(2026, 1, 1)])
        found = store.lookup(some.column("customer_key")[0].as_py())
        assert found is not None and set(FEATURE_SETS) <= set(found) <= set(ONLINE_SETS)
    assert json.loads((settings.features_dir / "manifest.json").read_text())["build_id"] == report["build_id"]

    runs, artifacts = _read_runs(home)
    assert len(runs) == 1
    assert runs[0].state is not None and runs[0].state.is_completed()
    assert {a.key for a in artifacts} == {"feature-partitions", "feature-build"}
    table = next(a for a in artifacts if a.key == "feature-partitions")
    data = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert {(row["set"], row["as_of"]) for row in data} == {(k, d) for k in ALL_SETS for d in CUTOFFS}


def _damage_tickets(home: Path) -> None:
    """Overwrite the lake's support_tickets: every channel lost, every CSAT score below the scale."""
    (path,) = (home / "lake" / "support_tickets").glob("drop=*/data.parquet")
    tickets = pq.read_table(path)
    i = tickets.schema.get_field_index("channel")
    tickets = tickets.set_column(
        i, pa.field("channel", pa.string(), nullable=True), pa.nulls(len(tickets), pa.string())
    )
    i = tickets.schema.get_field_index("csat")
    tickets = tickets.set_column(i, "csat", pc.subtract(pc.negate(tickets.column("csat")), 1))
    pq.write_table(tickets, path)


def test_a_broken_input_fails_the_flow_naming_each_feature(prefect_api: None, home: Path) -> None:
    _damage_tickets(home)
    with pytest.raises(FeatureQualityError, match="feature set service@1 failed its data-quality checks") as err:
        build_features(Settings(home=home).to_flow())
    message = str(err.value)
    # no channel: each per-channel count is 0 for everyone
    for channel in ("phone", "email", "chat", "social", "store"):
        assert f"service@1.tickets_channel_{channel}_90d: collapsed, every non-empty value of" in message
    assert "service@1.csat_mean_365d: impossible values below 0" in message
    assert "service@1.tickets_90d" not in message  # the ticket counts themselves are fine
    # the sets that passed are not written either: a failed build leaves no half of itself behind
    assert not (home / "features" / "offline").exists()
    assert not (home / "features" / "manifest.json").exists()
    runs, _ = _read_runs(home)
    assert len(runs) == 1 and runs[0].state is not None and runs[0].state.is_failed()


# --------------------------------------------------------------------------------------------
# retries: I/O failures are retried, data failures are not


def _failed_with(exc: BaseException) -> Any:
    state = Failed(data=exc)
    with pytest.raises(type(exc)):
        state.result()  # how Prefect 3.8 hands the exception to a retry condition
    return state


@pytest.mark.parametrize(
    "exc",
    [
        OSError("disk full"),
        FileNotFoundError("gone"),
        PermissionError("read-only"),
        TimeoutError("slow disk"),
        redis.ConnectionError("Connection refused"),
        redis.TimeoutError("Timeout reading from socket"),
        RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "tracking server restarting"}),
    ],
    ids=type,
)
def test_io_failures_are_retried(exc: BaseException) -> None:
    assert retry_on_io(None, None, _failed_with(exc)) is True


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad"),
        FeatureQualityError("service@1.csat_mean_365d: impossible values below 0"),
        FeatureBuildError("as-of after the data"),
        FeatureInputError("no crosswalk"),
        OfflineStoreError("give the changed set a new version"),
        redis.ResponseError("WRONGTYPE"),
        KeyError("as_of"),
        RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad alias"}),
    ],
    ids=type,
)
def test_data_failures_are_not_retried(exc: BaseException) -> None:
    assert retry_on_io(None, None, _failed_with(exc)) is False


def test_a_completed_state_is_not_retried() -> None:
    assert retry_on_io(None, None, Completed(data=1)) is False


def test_an_unreachable_redis_is_retried() -> None:
    with pytest.raises(OnlineStoreError) as err:
        RedisOnlineStore("redis://127.0.0.1:1/0", "test-unreachable")
    assert retry_on_io(None, None, _failed_with(err.value)) is True


def test_the_io_tasks_retry_and_the_build_does_not() -> None:
    for task in (TASK_STEPS.load_inputs, TASK_STEPS.write_set, TASK_STEPS.materialize, TASK_STEPS.write_report):
        assert task.retries == 2 and task.retry_condition_fn is retry_on_io, task.name
    assert not TASK_STEPS.build_one.retries


def _tiny_set(digest: str) -> BuiltSet:
    day = dt.date(2025, 3, 1)
    table = pa.table({"customer_key": ["CK1"], "as_of": pa.array([day], pa.date32()), "x": [1.0]})
    return BuiltSet("tiny@1", table, {"digest": digest}, digest, {day.isoformat(): {"rows": 1}})


@flow(name="write-tiny-set")
def _write_tiny_set(home: str, digest: str) -> tuple[str, bool]:
    state = TASK_STEPS.write_set(Settings(home=Path(home)), _tiny_set(digest), {}, return_state=True)
    return str(state.state_details.task_run_id), state.is_failed()


def _attempts(task_run_id: str) -> int:
    return asyncio.run(_read_task_run(UUID(task_run_id))).run_count


def test_the_write_task_retries_on_a_file_system_error_only(prefect_api: None, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "features").write_text("a file where the feature folder should be")
    task_run_id, failed = _write_tiny_set(str(broken), "d1")
    assert failed and _attempts(task_run_id) == 3  # the first try and two retries

    stored = Settings(home=tmp_path / "stored")
    PLAIN_STEPS.write_set(stored, _tiny_set("d1"), {})
    task_run_id, failed = _write_tiny_set(str(stored.home_dir), "d2")  # other definitions: retrying cannot help
    assert failed and _attempts(task_run_id) == 1


# --------------------------------------------------------------------------------------------
# the command line (--engine local: the same steps without Prefect)


@pytest.fixture(scope="module")
def cli_home(resolved_home: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CliResult]:
    """A home built once by `custintel features --as-of 2025-03-01 --engine local`, and that command's result."""
    home = tmp_path_factory.mktemp("features-cli") / "home"
    shutil.copytree(resolved_home, home)
    return home, _invoke(home, "features", "--as-of", "2025-03-01", "--engine", "local")


def test_features_builds_and_prints_the_table(cli_home: tuple[Path, CliResult]) -> None:
    home, result = cli_home
    assert result.exit_code == 0, result.output
    for key in ALL_SETS:
        assert key in result.output
    assert "2025-03-01: " in result.output
    assert "online (sqlite): relationship@1 as of 2025-03-01" in result.output
    manifest = json.loads((home / "features" / "manifest.json").read_text())
    assert manifest["as_of"] == ["2025-03-01"] and sorted(manifest["sets"]) == sorted(ALL_SETS)


def test_a_cutoff_after_the_data_is_refused(cli_home: tuple[Path, CliResult]) -> None:
    home, _ = cli_home
    before = (home / "features" / "manifest.json").read_text()
    result = _invoke(home, "features", "--as-of", "2999-01-01", "--engine", "local")
    assert result.exit_code == 1
    assert "as-of 2999-01-01 is after the end of the observed data (2026-01-01)" in _flat(result.output)
    assert "Traceback" not in result.output
    assert (home / "features" / "manifest.json").read_text() == before  # the last good build stays


def test_lookup_prints_an_active_customers_features(cli_home: tuple[Path, CliResult]) -> None:
    home, _ = cli_home
    crosswalk = set(pq.read_table(home / "identity" / "crosswalk.parquet").column("customer_key").to_pylist())
    buyers = read_offline(home / "features" / "offline", "interactions@1").column("customer_key").to_pylist()
    key = buyers[0]  # active at 2025-03-01 and a buyer of something: in every online set
    assert key in crosswalk
    result = _invoke(home, "features", "lookup", key)
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert sorted(found) == sorted(ONLINE_SETS)
    assert all(doc["as_of"] == "2025-03-01" for doc in found.values())
    assert found["interactions@1"]["items"] and "tenure_days" in found["relationship@1"]
    with SQLiteOnlineStore(home / "features" / "online.sqlite") as store:
        assert store.lookup(key) == found


def test_lookup_of_an_unknown_or_inactive_customer_fails_cleanly(cli_home: tuple[Path, CliResult]) -> None:
    home, _ = cli_home
    result = _invoke(home, "features", "lookup", "NOPE")
    assert result.exit_code == 1
    assert "customer NOPE is in no materialised feature set (unknown key, or not active)" in _flat(result.output)
    assert "Traceback" not in result.output
    # a real customer without an open account at the cutoff is not served either
    crosswalk = set(pq.read_table(home / "identity" / "crosswalk.parquet").column("customer_key").to_pylist())
    active = set(read_offline(home / "features" / "offline", "relationship@1").column("customer_key").to_pylist())
    inactive = sorted(crosswalk - active)[0]
    result = _invoke(home, "features", "lookup", inactive)
    assert result.exit_code == 1 and f"customer {inactive} is in no materialised" in _flat(result.output)


def test_features_before_resolution_says_to_resolve_first(home_copy: Settings) -> None:
    assert not (home_copy.identity_dir / "crosswalk.parquet").exists()
    result = _invoke(home_copy.home_dir, "features", "--engine", "local")
    assert result.exit_code == 1
    assert "no identity crosswalk" in _flat(result.output)
    assert "run `custintel resolve` first" in _flat(result.output)
    assert "Traceback" not in result.output
