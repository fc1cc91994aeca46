"""The Spark engine's session: one per process and master, configured from the settings.

The data-heavy steps (identity resolution, feature builds, batch scoring) run on DuckDB by
default and on Apache Spark with ``CUSTINTEL_ENGINE=spark``. This module is the one place that
builds a ``SparkSession``: the master from ``spark_master`` (``local[N]`` in this process or a
standalone cluster's ``spark://host:port``), UTC session time (point-in-time rules compare
timestamps, as DuckDB does in UTC), Splink's similarity UDF jar, no web UI, and Spark's console
lines at errors only. Everything Spark writes on this machine (Splink's checkpoints, its scratch
space `spark.local.dir`, staged inputs) goes in this process's own folder under the home
(`spark_leftovers.run_folder`), so a killed run's leftovers are found, swept and erased.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import threading
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from custintel.settings import Settings
from features.spark_leftovers import record_jvm, release_run_folders, run_folder

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["SparkUnavailable", "java_home", "spark_session", "spark_work_dir", "stop_spark"]

_LOCK = threading.Lock()
_SESSIONS: dict[str, SparkSession] = {}


class SparkUnavailable(RuntimeError):
    """The Spark engine cannot start here; the message says what to install or set."""


def _java_major(java: str) -> int | None:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return None
    text = out.stderr + out.stdout
    marker = 'version "'
    at = text.find(marker)
    if at < 0:
        return None
    head = text[at + len(marker) :].split('"', 1)[0]
    first = head.split(".", 1)[0]
    if first == "1":  # 1.8.0_x
        first = head.split(".")[1]
    return int(first) if first.isdigit() else None


def java_home() -> str:
    """A JAVA_HOME of a Java that Spark 3.5 runs on (8, 11 or 17), preferring the one already set."""
    supported = {8, 11, 17}
    candidates: list[str] = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(os.environ["JAVA_HOME"])
    on_path = shutil.which("java")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent.parent))
    candidates += sorted(glob.glob("/usr/lib/jvm/java-17-openjdk-*")) + sorted(glob.glob("/usr/lib/jvm/*"))
    for home in candidates:
        java = Path(home) / "bin" / "java"
        if java.is_file() and _java_major(str(java)) in supported:
            return home
    raise SparkUnavailable(
        "the Spark engine needs a Java 17 runtime (Spark 3.5 runs on Java 8, 11 or 17) and none was found: run "
        "scripts/ensure-java, or set JAVA_HOME to one"
    )


def spark_session(settings: Settings | None = None) -> SparkSession:
    """This process's Spark session for the settings' master, started on first use."""
    settings = settings or Settings()
    master = settings.spark_master
    with _LOCK:
        session = _SESSIONS.get(master)
        if session is not None and session.sparkContext._jsc is not None:  # noqa: SLF001 - stopped sessions lose it
            return session
        try:
            from pyspark.sql import SparkSession
        except ImportError as error:
            raise SparkUnavailable(
                "the Spark engine needs pyspark: install custintel's spark extra (pip install 'custintel[spark]')"
            ) from error
        from splink.backends.spark import similarity_jar_location

        os.environ["JAVA_HOME"] = java_home()
        # Bind the driver to loopback unless told otherwise: the machines here resolve their hostname to 127.0.0.1
        # and Spark warns about it on every start.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # Python workers (mapInPandas, UDFs) run this interpreter, so they import custintel's packages and the
        # model's libraries as the driver does; Spark's default is whatever `python3` is first on the PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        log4j = resources.files("features") / "spark_log4j2.properties"
        checkpoints = spark_work_dir(settings, "checkpoints")  # sweeps the home's dead runs first
        local = spark_work_dir(settings, "local")
        java_options = f"-Dlog4j2.configurationFile=file:{log4j}"
        builder = (
            SparkSession.builder.master(master)
            .appName("custintel")
            .config("spark.jars", similarity_jar_location())
            .config("spark.driver.memory", settings.spark_driver_memory)
            .config("spark.driver.extraJavaOptions", java_options)
            .config("spark.executor.extraJavaOptions", java_options)
            .config("spark.local.dir", str(local))
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.shuffle.partitions", "8" if master.startswith("local") else "200")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
        )
        session = builder.getOrCreate()
        session.sparkContext.setLogLevel("ERROR")
        session.sparkContext.setCheckpointDir(str(checkpoints))
        gateway = getattr(session.sparkContext._gateway, "proc", None)  # noqa: SLF001 - the driver JVM pyspark started
        record_jvm(settings, getattr(gateway, "pid", None))
        _SESSIONS[master] = session
        return session


def spark_work_dir(settings: Settings, kind: str) -> Path:
    """This process's folder of one kind (checkpoints, local, inputs, ...) for Spark's files under the home.

    Owned and locked by this process; a run killed midway leaves it to `spark_leftovers`' sweep.
    """
    return run_folder(settings, kind)


def stop_spark() -> None:
    """Stop every Spark session this process started (tests and commands call it when done); remove its folders."""
    with _LOCK:
        for session in _SESSIONS.values():
            session.stop()
        _SESSIONS.clear()
        release_run_folders()
