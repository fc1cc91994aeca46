"""Shared fixtures: one small generated world, ingested once, plus fresh homes on demand."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from custintel.settings import Settings
from features.synthetic import WorldConfig, generate_world
from features.synthetic.world import WorldSummary

# Three chunks of 1000 persons; a malformed rate high enough that every injection kind shows up in
# every table that can receive it, even the small acquired-company table.
WORLD_CONFIG = WorldConfig(customers=3000, chunk_size=1000, seed=11, malformed_rate=0.04, duplicate_row_rate=0.004)


@dataclass(frozen=True)
class World:
    """A generated drop and its truth."""

    cfg: WorldConfig
    path: Path
    summary: WorldSummary

    @property
    def truth(self) -> Path:
        return self.path / "_truth"

    def truth_frame(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.truth / f"{name}.parquet")


@dataclass(frozen=True)
class Ingested:
    """The world above, ingested once into its own home."""

    world: World
    settings: Settings
    report: object  # features.lake.IngestionReport


def make_settings(root: Path, name: str = "home") -> Settings:
    """A fresh Settings whose home is `root/name` (nothing read from the environment matters)."""
    return Settings(home=root / name)


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, keyed by relative path."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    out = tmp_path_factory.mktemp("world") / "drop"
    summary = generate_world(WORLD_CONFIG, out)
    return World(WORLD_CONFIG, out, summary)


@pytest.fixture(scope="session")
def ingested(world: World, tmp_path_factory: pytest.TempPathFactory) -> Ingested:
    from features.lake import ingest_drop

    settings = make_settings(tmp_path_factory.mktemp("ingested"))
    report = ingest_drop(world.path, settings)
    return Ingested(world, settings, report)


@pytest.fixture
def new_settings(tmp_path: Path) -> Callable[[str], Settings]:
    """Factory for fresh homes under this test's tmp_path."""

    def make(name: str = "home") -> Settings:
        return make_settings(tmp_path, name)

    return make


@pytest.fixture
def drop_copy(world: World, tmp_path: Path) -> Callable[[str], Path]:
    """Copy the session drop (without its truth) so a test can damage it."""

    def make(name: str = "drop") -> Path:
        dst = tmp_path / name
        shutil.copytree(world.path, dst, ignore=shutil.ignore_patterns("_truth"))
        return dst

    return make


@pytest.fixture
def home_copy(ingested: Ingested, tmp_path: Path) -> Settings:
    """A copy of the ingested home, so a test can ingest more into it without touching the shared one."""
    dst = tmp_path / "home_copy"
    shutil.copytree(ingested.settings.home_dir, dst)
    return Settings(home=dst)


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """One ephemeral Prefect API for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def flow_runs_and_artifacts() -> tuple[list, list]:
    """Every flow run and artifact the test API holds (newest first)."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, FlowRunFilter, TaskRunFilter
    from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort

    async def read() -> tuple[list, list]:
        async with get_client() as client:
            # Prefect 3.8's client sends unset filters, limit and sort as null; its API, on the pinned
            # fastapi/pydantic, rejects null there (422). Every argument is therefore given explicitly.
            # (An empty deployment or work-pool filter would join on deployments and hide ad-hoc runs.)
            runs = await client.read_flow_runs(limit=200, sort=FlowRunSort.START_TIME_DESC)
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(),
                flow_run_filter=FlowRunFilter(),
                task_run_filter=TaskRunFilter(),
                limit=200,
                sort=ArtifactSort.CREATED_DESC,
            )
        return runs, artifacts

    return asyncio.run(read())
