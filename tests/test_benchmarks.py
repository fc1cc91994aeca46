"""The benchmark harness itself (benchmarks/harness.py), cheaply: no benchmark runs here.

This module is also a tiny benchmark: its children (``python -m tests.test_benchmarks _worker STEP``)
allocate memory in a timed section, and run as a whole it measures a small and a large allocation
side by side, against a target on the large one's peak. Its children import it, so pytest is imported
only by the tests that use it: a child starts in half the time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import BenchError, Session, Spec, Target, emit, in_turn, run_child, sandwich, triples
from benchmarks.machine import ROOT

MODULE = "tests.test_benchmarks"
RESULTS_ENV = "CUSTINTEL_TEST_BENCH_RESULTS"
SMALL_MIB, LARGE_MIB = 24, 96


# --------------------------------------------------------------------------- the child steps


def _allocate(p: dict[str, Any]) -> dict[str, Any]:
    """Hold `mib` MiB, written so that they are resident, through the timed section; free them after it."""
    clock = harness.Timed()
    block = b"\x01" * (p["mib"] << 20)
    for i in range(3):
        emit("progress", step="holding", done=i + 1, total=3)
    clock.end()
    del block
    if p.get("touch"):  # stands for someone editing the measured code while the benchmark runs
        with open(p["touch"], "a", encoding="utf-8") as fh:
            fh.write("# touched\n")
    return clock.result(mib=p["mib"])


def _fail(p: dict[str, Any]) -> dict[str, Any]:
    raise ValueError(f"column {p['column']!r} is missing")


WORKERS = {"allocate": _allocate, "fail": _fail}
SPEC = Spec(name="harness-selftest", module=MODULE, workers=WORKERS, packages=("rich",), width=120,
            measured=("benchmarks/harness.py",))  # fmt: skip


def _parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    ap.add_argument("--limit-mib", type=float, default=10_000.0, help="target: the large run's peak below this")
    return ap.parse_args(argv)


def _body(session: Session) -> None:
    """small, large, small: the large allocation between two small ones, and a target on its peak."""
    bench = session.bench
    runs = sandwich(
        lambda i: bench.child("allocate", f"small #{i}", {"mib": SMALL_MIB}),
        lambda i: bench.child("allocate", "large", {"mib": LARGE_MIB}),
    )
    session.record["runs"] = runs
    (_, large, _), limit = triples(runs)[0], session.args.limit_mib
    peak = large.peak_mib or 0.0
    session.targets.append(Target(f"large peak < {limit:,.0f} MiB", peak, limit, peak < limit, f"{peak:,.0f} MiB"))
    session.console.print(session.targets[-1].line())


# --------------------------------------------------------------------------- tests


def test_a_child_reports_its_time_peak_and_progress() -> None:
    events: list[dict[str, Any]] = []
    run = run_child(MODULE, "allocate", "allocate 64", {"mib": 64}, events.append, digest="d1")
    assert [(e["step"], e["done"], e["total"]) for e in events] == [("holding", i, 3) for i in (1, 2, 3)]
    assert (run.step, run.label, run.code_digest, run.data["mib"]) == ("allocate", "allocate 64", "d1", 64)
    assert run.rss_after_imports_mib is not None and run.hwm_mib is not None and run.peak_mib is not None
    # The child's own high-water mark holds the block; ru_maxrss may also carry this (heavier) parent's.
    assert run.hwm_mib >= run.rss_after_imports_mib + 60
    assert run.peak_mib >= run.hwm_mib - 1
    assert run.process_peak_mib >= run.peak_mib - 1 and run.process_hwm_mib is not None
    assert 0 < run.seconds < run.timed_wall_seconds <= run.wall_seconds  # type: ignore[operator]
    assert all(abs(a - b) < 5 for a, b in zip(run.load_avg, os.getloadavg(), strict=True))


def test_a_whole_run_from_a_lean_parent_writes_its_results(tmp_path: Path) -> None:
    env = {**os.environ, RESULTS_ENV: str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", MODULE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = tmp_path.glob("harness-selftest-*.json")
    out = json.loads(path.read_text(encoding="utf-8"))
    assert (out["benchmark"], out["exit_code"], out["ok"], out["error"]) == ("harness-selftest", 0, True, None)
    assert out["machine"]["versions"]["rich"] and out["machine"]["cpu_count"] == os.cpu_count()
    assert out["machine"]["python_loop_seconds_at_start"] > 0 and out["machine"]["python_loop_seconds_at_end"] > 0
    assert out["code_digest"]["measured"] == ["benchmarks/harness.py"] and not out["code_digest"]["changed"]
    assert out["code_digest"]["start"] == out["code_digest"]["end"] == harness.code_digest(SPEC.measured)
    runs = out["runs"]
    assert [r["label"] for r in runs] == ["small #1", "large", "small #2"]
    small, large = runs[0], runs[1]
    # From a lean parent, ru_maxrss is the child's own: it agrees with VmHWM and shows the difference.
    assert out["warnings"] == []
    assert large["peak_mib"] - small["peak_mib"] >= 0.9 * (LARGE_MIB - SMALL_MIB)
    assert large["process_peak_mib"] >= large["peak_mib"] - 1
    assert out["verdicts"] == [
        {
            "name": "large peak < 10,000 MiB",
            "value": large["peak_mib"],
            "limit": 10_000.0,
            "pass": True,
            "applies": True,
        }
    ]
    assert "Target large peak < 10,000 MiB" in done.stdout and "PASS" in done.stdout


def test_a_missed_target_and_code_changed_mid_run_exit_1(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "step.py").write_text("x = 1\n", encoding="utf-8")
    spec = replace(SPEC, measured=(str(code),))

    def body(session: Session) -> None:
        run = session.bench.child("allocate", "touching", {"mib": 1, "touch": str(code / "step.py")})
        session.targets.append(Target("peak < 1 MiB", run.peak_mib, 1.0, False, "too much"))
        session.targets.append(Target("not here", None, 1.0, None, "—", applies=False, note="another size"))

    assert harness.main(spec, [], _parse, body, tmp_path) == harness.EXIT_MISSED
    out = json.loads(next(tmp_path.glob("harness-selftest-*.json")).read_text(encoding="utf-8"))
    assert out["exit_code"] == 1 and out["ok"] is False
    digests = out["code_digest"]
    assert digests["changed"] and digests["start"] != digests["end"] == harness.code_digest((str(code),))
    assert digests["by_run"] == {"touching": digests["start"]}
    assert any("changed while the benchmark ran" in w for w in out["warnings"])
    assert [v["pass"] for v in out["verdicts"]] == [False, None]


def test_a_child_that_fails_makes_the_run_exit_2_with_its_error(tmp_path: Path) -> None:
    def body(session: Session) -> None:
        session.bench.child("fail", "reading the drop", {"column": "customer_id"})

    assert harness.main(SPEC, [], _parse, body, tmp_path) == harness.EXIT_FAILED
    out = json.loads(next(tmp_path.glob("harness-selftest-*.json")).read_text(encoding="utf-8"))
    assert out["exit_code"] == 2 and out["verdicts"] == []
    assert out["error"].startswith("reading the drop failed with exit code 1:")
    assert "ValueError: column 'customer_id' is missing" in out["error"]
    import pytest

    with pytest.raises(BenchError, match="column 'x' is missing"):
        run_child(MODULE, "fail", "fail", {"column": "x"}, lambda e: None)


def test_alternation_orders_and_target_verdicts() -> None:
    assert sandwich(lambda i: f"B{i}", lambda i: f"C{i}", repeats=2) == ["B1", "C1", "B2", "C2", "B3"]
    assert sandwich(lambda i: f"A{i}", lambda i: f"B{i}", close=False) == ["A1", "B1"]
    assert triples(["B1", "C1", "B2", "C2", "B3"]) == [("B1", "C1", "B2"), ("B2", "C2", "B3")]
    assert [in_turn(i, "A", "B") for i in range(3)] == [("A", "B"), ("B", "A"), ("A", "B")]
    met = Target("t < 1", 0.5, 1.0, True, "0.5")
    unchecked = Target("t < 1", None, 1.0, None, "—")
    elsewhere = Target("t < 1", 2.0, 1.0, False, "2.0", applies=False, note="applies at 1M")
    assert (met.missed, unchecked.missed, elsewhere.missed) == (False, True, False)
    assert met.line() == "Target t < 1: 0.5 → [bold green]PASS[/]"
    assert "NOT CHECKED" in unchecked.line() and elsewhere.line().endswith("[dim](applies at 1M)[/]")


if __name__ == "__main__":
    sys.exit(harness.main(SPEC, None, _parse, _body, Path(os.environ.get(RESULTS_ENV, harness.RESULTS_DIR))))
