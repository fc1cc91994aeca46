"""The production stack on this machine: `custintel stack up | status | down` (issue 23).

`up` creates the MLflow and Prefect databases on the running PostgreSQL, then starts, each detached in
its own process group with its log under `<home>/stack/logs`:

- `mlflow server` on PostgreSQL with served artifacts (under `<home>/stack/mlflow-artifacts`);
- `prefect server start` on PostgreSQL (asyncpg), a process work pool and N `prefect worker start`;
- a Spark standalone master and worker (pyspark's `spark-class`, a Java 17 runtime);
- the BentoML service (`custintel serve` with N workers), pointed at the tracking server.

It waits for each one's HTTP health endpoint, and records pids, ports and URLs in
`<home>/stack/state.json`. `status` reads that file and asks each endpoint; `down` stops the
process groups `up` started (and their descendants: Prefect starts flow runs in sessions of their
own), nothing else, and leaves PostgreSQL's data. Before anything starts, `up` checks every port:
one in use is an error naming the port and the component, and nothing is started. A component
that does not become healthy stops everything this `up` started.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from custintel.atomic_files import write_text_atomically
from custintel.settings import Settings
from custintel.yaml_config import load_yaml_model

Say = Callable[[str], None]
_DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class StackError(RuntimeError):
    """The stack cannot start, or is not as `up` left it; the message says what and where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Ports(_Strict):
    """Where each component listens."""

    mlflow: int = Field(5000, ge=1, le=65535)
    prefect: int = Field(4200, ge=1, le=65535)
    prefect_worker: int = Field(8490, ge=1, le=65535)
    spark_master: int = Field(7077, ge=1, le=65535)
    spark_master_ui: int = Field(8480, ge=1, le=65535)
    spark_worker_ui: int = Field(8481, ge=1, le=65535)
    serving: int = Field(3000, ge=1, le=65535)


class Postgres(_Strict):
    """The running PostgreSQL the stack keeps MLflow's and Prefect's state in."""

    url: str = Field("postgresql://postgres@127.0.0.1:5432", pattern=r"^postgresql://[^/\s]+/?$")
    mlflow_database: str = Field("custintel_mlflow", pattern=_DATABASE_NAME.pattern)
    prefect_database: str = Field("custintel_prefect", pattern=_DATABASE_NAME.pattern)

    def admin_connection(self) -> Any:
        """A psycopg connection (autocommit) to the server's `postgres` database, where databases are made."""
        import psycopg

        return psycopg.connect(self.url.rstrip("/") + "/postgres", autocommit=True, connect_timeout=5)

    def database_url(self, database: str, driver: str) -> str:
        """SQLAlchemy URL of `database` with `driver` (psycopg, asyncpg)."""
        return f"postgresql+{driver}://{self.url.removeprefix('postgresql://').rstrip('/')}/{database}"


class PrefectPart(_Strict):
    """Prefect's work pool and workers."""

    work_pool: str = Field("custintel", pattern=r"^[A-Za-z0-9_-]+$")
    workers: int = Field(1, ge=1, le=16)
    query_seconds: float = Field(10.0, gt=0, description="How often a worker asks the API for scheduled runs.")
    runs_per_worker: int = Field(
        2, ge=1, le=64, description="Flow runs one worker runs at once (a monitor waits on the retrain it starts)."
    )


class SparkPart(_Strict):
    """The standalone Spark master and its one worker."""

    enabled: bool = True
    worker_cores: int = Field(1, ge=1, le=256)
    worker_memory: str = Field("1g", pattern=r"^\d+[mg]$")


class ServingPart(_Strict):
    """The BentoML service."""

    enabled: bool = True
    workers: int = Field(1, ge=1, le=64)


class StackConfig(_Strict):
    """`flows/stack.yaml`, or a user's copy."""

    host: str = "127.0.0.1"
    ports: Ports = Field(default_factory=Ports)
    postgres: Postgres = Field(default_factory=Postgres)
    prefect: PrefectPart = Field(default_factory=PrefectPart)
    spark: SparkPart = Field(default_factory=SparkPart)
    serving: ServingPart = Field(default_factory=ServingPart)
    health_timeout_seconds: float = Field(240.0, gt=0)


def load_stack_config(path: Path | None) -> StackConfig:
    """The stack's configuration: `path`, or the packaged flows/stack.yaml."""
    return load_yaml_model(StackConfig, path, ("flows", "stack.yaml"), StackError, "stack config", "the stack's parts")


# --- where things are ------------------------------------------------------------------------------------------


def stack_dir(settings: Settings) -> Path:
    """`<home>/stack`: logs, state, the Prefect home, MLflow's artifacts, Spark's work folders."""
    return settings.home_dir / "stack"


def state_path(settings: Settings) -> Path:
    """The file `up` records what it started in."""
    return stack_dir(settings) / "state.json"


def read_state(settings: Settings) -> dict[str, Any] | None:
    """What `up` recorded, or None."""
    path = state_path(settings)
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text(encoding="utf-8")))


def _write_state(settings: Settings, state: dict[str, Any]) -> None:
    write_text_atomically(state_path(settings), json.dumps(state, indent=2) + "\n")


def urls(config: StackConfig) -> dict[str, str]:
    """Each service's address."""
    h, p = config.host, config.ports
    out = {
        "mlflow": f"http://{h}:{p.mlflow}",
        "prefect": f"http://{h}:{p.prefect}/api",
        "prefect_ui": f"http://{h}:{p.prefect}",
    }
    if config.spark.enabled:
        out["spark_master"] = f"spark://{h}:{p.spark_master}"
        out["spark_ui"] = f"http://{h}:{p.spark_master_ui}"
    if config.serving.enabled:
        out["serving"] = f"http://{h}:{p.serving}"
    return out


def client_environment(config: StackConfig) -> dict[str, str]:
    """The variables that point custintel (and Prefect's CLI) at this stack."""
    where = urls(config)
    env = {"CUSTINTEL_MLFLOW_TRACKING_URI": where["mlflow"], "PREFECT_API_URL": where["prefect"]}
    if config.spark.enabled:
        env["CUSTINTEL_SPARK_MASTER"] = where["spark_master"]
    return env


# --- one component ---------------------------------------------------------------------------------------------


@dataclass
class Component:
    """A process `up` starts: its command, environment, ports and health check."""

    name: str
    command: list[str]
    env: dict[str, str]
    ports: dict[str, int]
    health: str  # URL; 2xx is healthy (plus `accept` on the body when given)
    url: str
    accept: Callable[[httpx.Response], bool] = field(default=lambda r: True)


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _base_environment(settings: Settings, config: StackConfig) -> dict[str, str]:
    root = stack_dir(settings)
    env = dict(os.environ)
    for key in ("PREFECT_API_URL", "PREFECT_PROFILE"):
        env.pop(key, None)
    env.update({
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOCAL_STORAGE_PATH": str(root / "prefect" / "storage"),
        "CUSTINTEL_HOME": str(settings.home_dir),
        "BENTOML_DO_NOT_TRACK": "true",
        "PYTHONUNBUFFERED": "1",
    })  # fmt: skip
    env.update(client_environment(config))
    return env


def _spark_environment(settings: Settings, base: dict[str, str]) -> dict[str, str]:
    import pyspark

    from features.spark_engine import java_home

    root = stack_dir(settings) / "spark"
    return {
        **base,
        "SPARK_HOME": str(Path(pyspark.__file__).parent),
        "JAVA_HOME": java_home(),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(root / "logs"),
        "SPARK_WORKER_DIR": str(root / "work"),
        "SPARK_NO_DAEMONIZE": "1",
    }


def _spark_alive(response: httpx.Response) -> bool:
    return bool(response.json().get("status") == "ALIVE")


def components(settings: Settings, config: StackConfig) -> list[list[Component]]:
    """The stack's processes in start order: each inner list starts together (no dependency between them)."""
    h, p = config.host, config.ports
    base = _base_environment(settings, config)
    root = stack_dir(settings)
    where = urls(config)
    mlflow = Component(
        "mlflow",
        [
            _bin("mlflow"),
            "server",
            "--host",
            h,
            "--port",
            str(p.mlflow),
            "--workers",
            "1",
            "--backend-store-uri",
            config.postgres.database_url(config.postgres.mlflow_database, "psycopg"),
            "--serve-artifacts",
            "--artifacts-destination",
            str(root / "mlflow-artifacts"),
        ],  # fmt: skip
        base,
        {"mlflow": p.mlflow},
        f"{where['mlflow']}/health",
        where["mlflow"],
    )
    prefect_env = {
        **base,
        "PREFECT_API_DATABASE_CONNECTION_URL": config.postgres.database_url(
            config.postgres.prefect_database, "asyncpg"
        ),
        "PREFECT_UI_API_URL": where["prefect"],
    }
    prefect_env.pop("PREFECT_API_URL")
    prefect = Component(
        "prefect-server",
        [_bin("prefect"), "server", "start", "--host", h, "--port", str(p.prefect)],
        prefect_env,
        {"prefect": p.prefect},
        f"{where['prefect']}/health",
        where["prefect_ui"],
    )
    first: list[Component] = [mlflow, prefect]
    second: list[Component] = []
    for i in range(config.prefect.workers):
        port = p.prefect_worker + i
        env = {**base, "PREFECT_WORKER_WEBSERVER_HOST": h, "PREFECT_WORKER_WEBSERVER_PORT": str(port),
               "PREFECT_WORKER_QUERY_SECONDS": str(config.prefect.query_seconds)}  # fmt: skip
        second.append(
            Component(
                f"prefect-worker-{i + 1}",
                [
                    _bin("prefect"),
                    "worker",
                    "start",
                    "--pool",
                    config.prefect.work_pool,
                    "--type",
                    "process",
                    "--name",
                    f"custintel-worker-{i + 1}",
                    "--with-healthcheck",
                    "--limit",
                    "1",
                ],  # fmt: skip
                env,
                {f"prefect_worker_{i + 1}": port},
                f"http://{h}:{port}/health",
                f"http://{h}:{port}",
            )
        )
    if config.spark.enabled:
        spark = _spark_environment(settings, base)
        spark_class = str(Path(spark["SPARK_HOME"]) / "bin" / "spark-class")
        first.append(
            Component(
                "spark-master",
                [
                    spark_class,
                    "org.apache.spark.deploy.master.Master",
                    "--host",
                    h,
                    "--port",
                    str(p.spark_master),
                    "--webui-port",
                    str(p.spark_master_ui),
                ],  # fmt: skip
                spark,
                {"spark_master": p.spark_master, "spark_master_ui": p.spark_master_ui},
                f"{where['spark_ui']}/json/",
                where["spark_master"],
                _spark_alive,
            )
        )
        second.append(
            Component(
                "spark-worker",
                [
                    spark_class,
                    "org.apache.spark.deploy.worker.Worker",
                    where["spark_master"],
                    "--host",
                    h,
                    "--cores",
                    str(config.spark.worker_cores),
                    "--memory",
                    config.spark.worker_memory,
                    "--webui-port",
                    str(p.spark_worker_ui),
                    "--work-dir",
                    spark["SPARK_WORKER_DIR"],
                ],  # fmt: skip
                spark,
                {"spark_worker_ui": p.spark_worker_ui},
                f"{where['spark_ui']}/json/",
                f"http://{h}:{p.spark_worker_ui}",
                lambda r: int(r.json().get("aliveworkers", 0)) >= 1,
            )
        )
    if config.serving.enabled:
        second.append(
            Component(
                "serving",
                [
                    _bin("custintel"),
                    "serve",
                    "--host",
                    h,
                    "--port",
                    str(p.serving),
                    "--workers",
                    str(config.serving.workers),
                    "--no-refresh-consent",
                ],  # fmt: skip
                base,
                {"serving": p.serving},
                f"{where['serving']}/livez",
                where["serving"],
            )
        )
    return [first, second]


# --- processes -------------------------------------------------------------------------------------------------


def _created(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def is_running(entry: dict[str, Any]) -> bool:
    """True while the recorded process is the one `up` started (same pid and start time) and not a zombie."""
    import psutil

    created = _created(int(entry["pid"]))
    if created is None or abs(created - float(entry["created"])) > 0.01:
        return False
    try:
        return bool(psutil.Process(int(entry["pid"])).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _start(component: Component, logs: Path) -> dict[str, Any]:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{component.name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            component.command,
            env=component.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: `down` stops it and nothing else
            cwd=logs.parent,
        )
    return {
        "pid": process.pid,
        "pgid": process.pid,
        "created": _created(process.pid) or time.time(),
        "ports": component.ports,
        "url": component.url,
        "health": component.health,
        "log": str(log),
        "command": component.command,
    }


def probe(url: str, accept: Callable[[httpx.Response], bool] = lambda r: True) -> bool:
    """One health request: a 2xx answer the check accepts."""
    try:
        response = httpx.get(url, timeout=3)
        return response.is_success and accept(response)
    except (httpx.HTTPError, ValueError):
        return False


def _log_tail(path: str, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _wait_healthy(started: list[tuple[Component, dict[str, Any]]], timeout: float, say: Say) -> None:
    waiting = {c.name: (c, e) for c, e in started}
    t0 = time.monotonic()
    while waiting:
        for name, (component, entry) in list(waiting.items()):
            if not is_running(entry):
                raise StackError(f"{name} exited while starting (log {entry['log']}):\n{_log_tail(entry['log'])}")
            if probe(component.health, component.accept):
                say(f"  {name} healthy at {component.url} ({time.monotonic() - t0:.0f} s)")
                del waiting[name]
        if waiting and time.monotonic() - t0 > timeout:
            name, (_, entry) = next(iter(waiting.items()))
            raise StackError(
                f"{name} did not become healthy within {timeout:.0f} s (log {entry['log']}):\n{_log_tail(entry['log'])}"
            )
        if waiting:
            time.sleep(0.5)


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_ports(config: StackConfig, plan: list[list[Component]]) -> None:
    """Raise naming each port already taken and the component that needs it."""
    taken = []
    seen: dict[int, str] = {}
    for component in (c for group in plan for c in group):
        for what, port in component.ports.items():
            if port in seen:
                raise StackError(f"port {port} is configured twice: {seen[port]} and {component.name} ({what})")
            seen[port] = component.name
            if not _port_free(config.host, port):
                taken.append(f"port {port} ({component.name}{'' if what in component.name else ' ' + what})")
    if taken:
        raise StackError(
            f"{', '.join(taken)} already in use on {config.host} by another process: stop it or choose other ports "
            "in the stack config (custintel stack up --config FILE)"
        )


def ensure_databases(config: StackConfig, say: Say) -> None:
    """Create MLflow's and Prefect's databases on the running PostgreSQL when missing (data kept otherwise)."""
    import psycopg

    wanted = [config.postgres.mlflow_database, config.postgres.prefect_database]
    try:
        with config.postgres.admin_connection() as db:
            for name in wanted:
                if db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                    say(f"  database {name}: present")
                    continue
                db.execute(f'CREATE DATABASE "{name}"')  # name checked against _DATABASE_NAME
                say(f"  database {name}: created")
    except psycopg.OperationalError as exc:
        raise StackError(f"cannot reach PostgreSQL at {config.postgres.url}: {str(exc).strip()}") from None


def drop_databases(config: StackConfig) -> None:
    """Drop the stack's two databases (tests; `down` never does)."""
    with config.postgres.admin_connection() as db:
        for name in (config.postgres.mlflow_database, config.postgres.prefect_database):
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _create_work_pool(settings: Settings, config: StackConfig) -> None:
    env = _base_environment(settings, config)
    done = subprocess.run(
        [
            _bin("prefect"),
            "--no-prompt",
            "work-pool",
            "create",
            config.prefect.work_pool,
            "--type",
            "process",
            "--overwrite",
        ],  # fmt: skip
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise StackError(f"cannot create the work pool {config.prefect.work_pool}: {done.stdout}{done.stderr}")


def _check_serving_keys() -> None:
    settings = Settings()
    if not settings.serving_api_keys and not settings.serving_allow_anonymous:
        raise StackError(
            "the stack's service needs CUSTINTEL_SERVING_API_KEYS (comma-separated) or "
            "CUSTINTEL_SERVING_ALLOW_ANONYMOUS=true in this environment (or serving.enabled: false in the stack config)"
        )


# --- the commands ----------------------------------------------------------------------------------------------


@dataclass
class UpResult:
    """What `up` did: started (False: it was up already), the state and the client environment."""

    started: bool
    state: dict[str, Any]
    env: dict[str, str]


def stack_up(settings: Settings, config_path: Path | None, say: Say) -> UpResult:
    """Start the stack (see the module docstring); an error stops what this call started and raises."""
    existing = read_state(settings)
    running: set[str] = set()
    if existing is not None:
        running = {n for n, e in existing["components"].items() if is_running(e)}
        if running == set(existing["components"]):
            return UpResult(False, existing, existing["env"])
        if running:
            # Partly up (a component died or was stopped): start what is missing, on the recorded config.
            recorded = existing.get("config_path")
            config_path = Path(recorded) if recorded else None
            say(f"the stack is partly up: starting {', '.join(sorted(set(existing['components']) - running))}")
    config = load_stack_config(config_path)
    if config.serving.enabled:
        _check_serving_keys()
    plan = [[c for c in group if c.name not in running] for group in components(settings, config)]
    check_ports(config, plan)
    say(f"PostgreSQL {config.postgres.url}")
    ensure_databases(config, say)
    if running and existing is not None:
        state = existing
        return _start_plan(settings, config, plan, state, say, keep=running)
    state = {
        "home": str(settings.home_dir),
        "config": str(config_path.resolve()) if config_path else "flows/stack.yaml (packaged)",
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": config.host,
        "work_pool": config.prefect.work_pool,
        "databases": {"mlflow": config.postgres.mlflow_database, "prefect": config.postgres.prefect_database},
        "urls": urls(config),
        "env": client_environment(config),
        "config_path": str(config_path.resolve()) if config_path else None,
        "components": {},
    }
    return _start_plan(settings, config, plan, state, say, keep=set())


def _start_plan(
    settings: Settings,
    config: StackConfig,
    plan: list[list[Component]],
    state: dict[str, Any],
    say: Say,
    keep: set[str],
) -> UpResult:
    """Start the plan's groups in order, each waited healthy; on failure stop what this call started."""
    logs = stack_dir(settings) / "logs"
    try:
        for i, group in enumerate(plan):
            if i == 1:
                _create_work_pool(settings, config)
                say(f"  work pool {config.prefect.work_pool} (process)")
            started = []
            for component in group:
                entry = _start(component, logs)
                state["components"][component.name] = entry
                _write_state(settings, state)  # recorded at once: a crash here still leaves `down` able to stop it
                say(f"starting {component.name} (pid {entry['pid']}, log {entry['log']})")
                started.append((component, entry))
            _wait_healthy(started, config.health_timeout_seconds, say)
    except BaseException:
        ours = {n: e for n, e in state["components"].items() if n not in keep}
        stop_components({"components": ours}, lambda m: None)
        if keep:
            state["components"] = {n: e for n, e in state["components"].items() if n in keep}
            _write_state(settings, state)
        else:
            state_path(settings).unlink(missing_ok=True)
        raise
    return UpResult(True, state, state["env"])


def _descendants(pid: int) -> list[Any]:
    import psutil

    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def stop_components(state: dict[str, Any], say: Say, grace: float = 20.0) -> list[str]:
    """Stop the recorded process groups (last started first) and their descendants; names stopped."""
    import psutil

    stopped = []
    for name, entry in reversed(list(state["components"].items())):
        if not is_running(entry):
            continue
        children = _descendants(int(entry["pid"]))
        try:
            os.killpg(int(entry["pgid"]), signal.SIGTERM)
        except ProcessLookupError:
            pass
        for child in children:
            try:
                child.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs([psutil.Process(int(entry["pid"])), *children], timeout=grace)
        for process in alive:
            try:
                process.kill()
            except psutil.Error:
                pass
        try:
            os.killpg(int(entry["pgid"]), signal.SIGKILL)  # whatever else the group still holds
        except (ProcessLookupError, PermissionError):
            pass
        say(f"stopped {name} (pid {entry['pid']})")
        stopped.append(name)
    return stopped


def stack_down(settings: Settings, say: Say) -> list[str]:
    """Stop what `up` started (PostgreSQL and its databases stay); names stopped."""
    state = read_state(settings)
    if state is None:
        return []
    stopped = stop_components(state, say)
    state_path(settings).unlink(missing_ok=True)
    return stopped


@dataclass
class ComponentStatus:
    """One component as `status` sees it."""

    name: str
    pid: int
    running: bool
    healthy: bool
    url: str
    log: str


def stack_status(settings: Settings) -> tuple[dict[str, Any] | None, list[ComponentStatus]]:
    """The recorded state and, per component, whether its process runs and its health endpoint answers."""
    state = read_state(settings)
    if state is None:
        return None, []
    out = []
    for name, entry in state["components"].items():
        running = is_running(entry)
        accept: Callable[[httpx.Response], bool] = lambda r: True  # noqa: E731
        if name == "spark-master":
            accept = _spark_alive
        elif name == "spark-worker":
            accept = lambda r: int(r.json().get("aliveworkers", 0)) >= 1  # noqa: E731
        healthy = running and probe(entry["health"], accept)
        out.append(ComponentStatus(name, int(entry["pid"]), running, healthy, entry["url"], entry["log"]))
    return state, out
