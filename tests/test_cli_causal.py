"""`custintel causal ...` in a fresh process: synthetic control, DiD, uplift, attribution (decision log and digital)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from custintel.settings import Settings
from tests.test_experiments_quasi import prop99, simulated_did

CLI = str(Path(sys.executable).parent / "custintel")


def run(home: Path, *args: str) -> tuple[int, str]:
    """`custintel causal ...` in a fresh process (one per command: the error cases run in this one, `run_here`)."""
    env = {**os.environ, "CUSTINTEL_HOME": str(home)}
    done = subprocess.run([CLI, "--home", str(home), "causal", *args], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def run_here(home: Path, *args: str) -> tuple[int, str]:
    """The same command through Typer's runner in this process (stdout and stderr together, as `run` gives)."""
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["--home", str(home), "causal", *args])
    return result.exit_code, result.output


def result_of(out: str) -> dict[str, object]:
    line = next(x for x in out.splitlines() if x.startswith("result: "))
    json_path, plots = line.removeprefix("result: ").split("; plots: ")
    for plot in plots.split(", "):
        assert Path(plot).is_file() and Path(plot).stat().st_size > 5000, plot
    assert Path(json_path).parent.name == "causal" and Path(json_path).parent.parent.name == "experiments"
    return json.loads(Path(json_path).read_text(encoding="utf-8"))


def assert_one_line_error(code: int, out: str, message: str) -> None:
    assert code == 1, out
    assert "Traceback" not in out
    assert out.strip().count("\n") == 0, out
    assert message in out, out


def test_synth_on_prop99(tmp_path: Path) -> None:
    panel = tmp_path / "prop99.csv"
    prop99().to_csv(panel)
    code, out = run(tmp_path / "home", "synth", "--panel", str(panel), "--treated", "California", "--start", "1989")
    assert code == 0, out
    assert "Utah" in out and "average post-period effect -19.514" in out
    result = result_of(out)
    assert result["average_effect"] == pytest.approx(-19.51, abs=0.01)
    assert result["p_value"] == pytest.approx(3 / 39)
    assert len(result["placebos"]) == 38  # type: ignore[arg-type]

    code, out = run_here(tmp_path / "home", "synth", "--panel", str(panel), "--treated", "Atlantis", "--start", "1989")
    assert_one_line_error(code, out, "error: treated: unit 'Atlantis' is not a column of the panel")
    code, out = run_here(tmp_path / "home", "synth", "--panel", str(panel), "--treated", "California",
                         "--start", "2100")  # fmt: skip
    assert_one_line_error(code, out, "error: start: 2100 is outside the panel's periods")


def test_did_and_its_errors(tmp_path: Path) -> None:
    data = tmp_path / "panel.csv"
    simulated_did(True).to_csv(data, index=False)
    args = ["did", "--data", str(data), "--unit", "unit", "--time", "t", "--treated", "treated", "--post", "post"]
    code, out = run(tmp_path / "home", *args, "--outcome", "y")
    assert code == 0, out
    result = result_of(out)
    assert result["estimate"] == pytest.approx(3.0, abs=0.5)
    assert result["pre_trend_p"] > 0.05  # type: ignore[operator]
    code, out = run_here(tmp_path / "home", *args, "--outcome", "revenue")
    assert_one_line_error(code, out, "error: outcome: column 'revenue' is not in the data")


def test_uplift_compares_targeting_scores(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 3000
    uplift = rng.uniform(0, 0.2, n)
    treated = rng.random(n) < 0.5
    converted = rng.random(n) < 0.1 + treated * uplift
    units = tmp_path / "units.csv"
    pd.DataFrame({"converted": converted.astype(int), "treated": treated.astype(int), "model": uplift,
                  "noise": rng.random(n)}).to_csv(units, index=False)  # fmt: skip
    base = ["uplift", "--units", str(units), "--outcome", "converted", "--treated", "treated", "--bootstrap", "50"]
    code, out = run(tmp_path / "home", *base, "--score", "model", "--score", "noise")
    assert code == 0, out
    result = result_of(out)
    policies = {p["policy"]: p for p in result["policies"]}  # type: ignore[union-attr,index]
    assert set(policies) == {"model", "noise", "random"}
    assert policies["model"]["qini"] > policies["noise"]["qini"]
    assert all(p["normalised"] <= 1 for p in policies.values())
    curve = result["curves"]["model"]  # type: ignore[index]
    assert all(q <= p + 1e-9 for q, p in zip(curve["qini"], curve["perfect"], strict=True))
    code, out = run_here(tmp_path / "home", *base, "--score", "propensity")
    assert_one_line_error(code, out, "error: score: column 'propensity' is not in units.csv")


def write_decision_log(home: Path) -> None:
    """A campaign's decisions and outcomes in the home's decision log, through the service's own writer."""
    from serving.decision_log import DecisionLog, LoggedDecision, decision_log_path, new_decision_id

    settings = Settings(home=home)
    log = DecisionLog(decision_log_path(settings))
    rng = np.random.default_rng(5)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    plans = [("retention_offer", "retention_offer", 300.0), ("service_recovery_callback", "service_recovery", 150.0),
             ("cross_sell_cloud", "cross_sell", 30.0)]  # fmt: skip
    outcomes = []
    for i in range(150):
        customer = f"C{i:04d}"
        for step, channel in enumerate(("email", "app")):
            action, kind, value = plans[(i + step) % 3]
            decision_id = new_decision_id()
            log.write([LoggedDecision(
                decision_id=decision_id, customer_key=log.key(customer), channel=channel, policy_name="custintel-nba",
                policy_version="1", action=action, actions=[{"action": action, "kind": kind, "v": value}],
                probability=1.0, action_probabilities={action: 1.0}, explored=False, fallback=False,
                fallback_reason=None, reasons=[], context={},
                decided_at=(start + dt.timedelta(hours=i % 24 + 30 * step)).isoformat(), expected_value=value,
                models={},
            )])  # fmt: skip
            outcomes.append((decision_id, customer, rng.random() < (0.4 if kind == "retention_offer" else 0.15)))
    for decision_id, customer, hit in outcomes:
        log.record_outcome(decision_id, "impression", customer, None)
        if hit:
            log.record_outcome(decision_id, "accept", customer, None)
    log.close()


def test_attribution_of_the_decision_log_with_roi(tmp_path: Path) -> None:
    home = tmp_path / "home"
    code, out = run_here(home, "attribution")
    assert_one_line_error(code, out, "error: source: the decision log has no decisions in this period")
    write_decision_log(home)
    code, out = run(home, "attribution", "--source", "decisions")
    assert code == 0, out
    result = result_of(out)
    channels = {row["channel"] for row in result["attribution"]}  # type: ignore[union-attr]
    assert "email/retention_offer" in channels and "app/service_recovery" in channels
    total = result["touched_conversions"]
    for method in ("last_touch", "first_touch", "markov", "shapley"):
        credited = sum(row[method] for row in result["attribution"])  # type: ignore[union-attr]
        assert credited == pytest.approx(total)
    roi = {row["kind"]: row for row in result["roi"]}  # type: ignore[union-attr]
    assert roi["all"]["decisions"] == 300
    assert roi["retention_offer"]["cost"] == 20.0 * roi["retention_offer"]["decisions"]  # the packaged policy's cost
    assert roi["retention_offer"]["revenue"] == 300.0 * roi["retention_offer"]["responses"]
    assert roi["service_recovery"]["cost_per_resolved_issue"] == pytest.approx(
        15.0 * roi["service_recovery"]["decisions"] / roi["service_recovery"]["responses"]
    )
    assert roi["retention_offer"]["note"] == "no control"


def test_attribution_of_digital_journeys(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from features.lake import ingest_drop
    from features.synthetic import WorldConfig, generate_world
    from flows.cli import app

    home = tmp_path / "home"
    code, out = run_here(home, "attribution", "--source", "digital")
    assert_one_line_error(code, out, "error: source: digital journeys need the lake and the identity crosswalk")
    generate_world(WorldConfig(customers=400, seed=5), tmp_path / "drop")
    ingest_drop(tmp_path / "drop", Settings(home=home))
    resolved = CliRunner().invoke(app, ["--home", str(home), "resolve", "--engine", "local"])
    assert resolved.exit_code == 0, resolved.output
    code, out = run_here(home, "attribution", "--source", "digital", "--window-days", "60")
    assert code == 0, out
    result = result_of(out)
    channels = {row["channel"] for row in result["attribution"]}  # type: ignore[union-attr]
    assert {"pricing", "cancellation", "support", "micro_conversion"} <= channels
    assert "session" not in channels
    assert "roi" not in result
    assert result["touched_conversions"] > 50  # type: ignore[operator]
