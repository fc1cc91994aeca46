"""`custintel experiment` in fresh processes, from another working directory: register, launch, list, show (with the
exposures per arm), assign, stop, design; bad input as one line and exit 1, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from custintel.settings import Settings
from experiments.assignment import Assigner
from experiments.spec import ExperimentRegistry, example_spec_text, experiments_root
from serving.decision_log import DecisionLog, Exposure, decision_log_path, new_decision_id, now_iso

CLI = str(Path(sys.executable).with_name("custintel"))


def run(home: Path, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "COLUMNS": "200", **(env or {})}
    environment.pop("CUSTINTEL_HOME", None)
    return subprocess.run([CLI, "--home", str(home), "experiment", *args], capture_output=True, text=True,
                          cwd=cwd, env=environment, timeout=120)  # fmt: skip


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def refused(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    for text in expected:
        assert text in lines[0], out
    return lines[0]


@pytest.fixture
def where(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(home, spec file, another working directory)."""
    spec = tmp_path / "specs" / "retention_offer.yaml"
    spec.parent.mkdir()
    spec.write_text(example_spec_text(), encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return tmp_path / "home", spec, elsewhere


def test_register_launch_show_assign_stop(where: tuple[Path, Path, Path]) -> None:
    home, spec, cwd = where
    out = ok(run(home, "register", str(spec), cwd=cwd))
    registry = ExperimentRegistry(experiments_root(home.resolve()))
    registered = registry.get("retention-offer")
    assert out.startswith(f"retention-offer v1 draft (sha256 {registered.hash[:12]}, layer retention)")
    assert ok(run(home, "register", str(spec), cwd=cwd)).startswith("retention-offer v1 draft")  # same: same version
    assert not (cwd / ".custintel").exists()  # the home is the one given, not the working directory's

    out = ok(run(home, "launch", "retention-offer", cwd=cwd))
    assert "launched" in out and "layer retention buckets [0, 10000) (100% of its customers)" in out
    listed = ok(run(home, "list", cwd=cwd))
    assert "retention-offer" in listed and "launched" in listed and registered.hash[:12] in listed

    keys = [f"CK{i}" for i in range(12)]
    settings = Settings(home=home)
    log = DecisionLog(decision_log_path(settings), "hash", settings.serving_log_salt or "custintel")
    assigner = Assigner(registry.list())
    expected = {k: assigner.assign(k)[0].arm for k in keys}
    log.write([], [Exposure("retention-offer", 1, expected[k], log.key(k), new_decision_id(), "email", now_iso())
                   for k in keys])  # fmt: skip
    log.close()
    shown = ok(run(home, "show", "retention-offer", cwd=cwd))
    assert f"sha256 {registered.hash}" in shown and "buckets [0, 10000)" in shown
    counts = {arm: sum(1 for a in expected.values() if a == arm) for arm in ("control", "treatment")}
    assert counts["control"] and counts["treatment"]
    rows = {line.split("│")[1].strip(): line for line in shown.splitlines() if line.startswith("│ ")}
    assert rows["control (control)"].split("│")[4].strip() == str(counts["control"])
    assert rows["treatment"].split("│")[4].strip() == str(counts["treatment"])
    assert "retention_offer" in rows["control (control)"]

    assigned = ok(run(home, "assign", *keys, cwd=cwd))
    for key, arm in expected.items():
        line = next(line for line in assigned.splitlines() if line.startswith(f"│ {key} "))
        assert f" {arm} " in line and "retention-offer" in line
    held = ok(run(home, "assign", *keys, cwd=cwd, env={"CUSTINTEL_EXPERIMENTS_HOLDOUT": "0.5"}))
    held_out = [k for k in keys if Assigner([], holdout=0.5).holdout(k)]
    assert held_out and all(f"│ {k} " in held and "global holdout" in held.split(f"│ {k} ")[1].split("\n")[0]
                            for k in held_out)  # fmt: skip

    assert ok(run(home, "stop", "retention-offer", cwd=cwd)).startswith("retention-offer v1 stopped")
    assert "none" in ok(run(home, "assign", "CK1", cwd=cwd))


def test_bad_input_is_one_line(where: tuple[Path, Path, Path]) -> None:
    home, spec, cwd = where
    refused(run(home, "show", "nope", cwd=cwd), "experiment: no experiment 'nope' is registered")
    refused(run(home, "launch", "nope", cwd=cwd), "no experiment 'nope'")
    refused(run(home, "show", "Not A Name", cwd=cwd), "is not an experiment name")
    refused(run(home, "register", str(cwd / "missing.yaml"), cwd=cwd), "missing.yaml does not exist")
    bad = cwd / "bad.yaml"
    bad.write_text(example_spec_text().replace("share: 0.5\n    suppress", "share: 0.4\n    suppress"), "utf-8")
    refused(run(home, "register", str(bad), cwd=cwd), "arms: the arms' shares sum to 0.9, not 1")
    bad.write_text(example_spec_text().replace("kind: proportion", "kind: median", 1), "utf-8")
    refused(run(home, "register", str(bad), cwd=cwd), "metrics[0].kind: Input should be")
    bad.write_text("name: [oops\n", "utf-8")
    refused(run(home, "register", str(bad), cwd=cwd), "is not valid YAML")

    ok(run(home, "register", str(spec), cwd=cwd))
    ok(run(home, "launch", "retention-offer", cwd=cwd))
    changed = cwd / "changed.yaml"
    changed.write_text(example_spec_text().replace("traffic: 1.0", "traffic: 0.5"), "utf-8")
    refused(run(home, "register", str(changed), cwd=cwd), "spec: 'retention-offer' is launched (v1, hash ",
            "register a new experiment or stop this one")  # fmt: skip
    stored = experiments_root(home.resolve()) / "retention-offer" / "v1.yaml"
    stored.write_text(stored.read_text("utf-8").replace("traffic: 1.0", "traffic: 0.5"), "utf-8")
    line = refused(run(home, "show", "retention-offer", cwd=cwd), f"spec: {stored} changed after launch: hash ")
    assert "!= registered" in line
    listed = run(home, "list", cwd=cwd)
    assert listed.returncode == 1 and "does not check out" in listed.stdout and "changed after launch" in listed.stdout
    assert "Traceback" not in listed.stdout + listed.stderr
    out = ok(run(home, "assign", "CK1", cwd=cwd))  # the tampered experiment is left out, and said
    assert "left out" in out and "none" in out
    refused(run(home, "stop", "nope", cwd=cwd), "no experiment 'nope'")


def test_design_prints_the_sample_size_and_registers_it(where: tuple[Path, Path, Path]) -> None:
    design = pytest.importorskip("experiments.design", reason="experiments.design lands with helper stats").design
    home, spec, cwd = where
    expected = design("proportion", 0.2, 0.02, daily_traffic=1000.0)
    out = ok(run(home, "design", "--baseline", "0.2", "--mde", "0.02", "--daily-traffic", "1000", cwd=cwd))
    for arm in ("control", "treatment"):
        assert f"{expected.n_per_arm[arm]:,}" in out
    assert f"total {expected.total:,} customers; {expected.days} days at 1,000 a day" in out
    refused(run(home, "design", "--baseline", "0.2", "--mde", "-0.5", cwd=cwd), "error: ")

    out = ok(run(home, "design", "--baseline", "0.2", "--mde", "0.1", "--relative", "--daily-traffic", "500",
                 "--register", str(spec), cwd=cwd))  # fmt: skip
    assert "registered retention-offer v1 draft" in out
    stored = ExperimentRegistry(experiments_root(home.resolve())).get("retention-offer").spec
    assert stored.design is not None and stored.design["kind"] == "proportion"
    sequential = design("proportion", 0.2, 0.1, relative=True, daily_traffic=500.0, sequential=True)
    assert stored.design["n_per_arm"] == sequential.n_per_arm  # the spec's stopping rule: sequential
