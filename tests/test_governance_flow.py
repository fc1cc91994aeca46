"""The promotion gate end to end on a real MLflow registry (SQLite): pass, block, waiver, rollback, the
Prefect flow, two processes racing, and a world whose bias knob skews one group."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from custintel.settings import Settings
from flows.cli import app
from flows.promote import PLAIN_STEPS, run_gate
from flows.train import PLAIN_STEPS as TRAIN_STEPS
from flows.train import run_training
from governance import store, trail
from governance.gate import Waiver
from governance.policy import load_policy
from models.registry import Registry
from tests.conftest import SMALL_TRAINING_YAML, TRAIN_AS_OF

pytestmark = [pytest.mark.slow, pytest.mark.integration]

NAME = "custintel-churn"


def _policy(tmp: Path, name: str, **churn: Any) -> Path:
    """The shipped policy with the churn family's rules changed."""
    data = yaml.safe_load((Path(__file__).parents[1] / "governance" / "policy.yaml").read_text())
    data["families"]["churn"].update(churn)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _with_policy(settings: Settings, policy: Path | None) -> Settings:
    return Settings(home=settings.home_dir, training_config=settings.training_config, governance_policy=policy)


def _aliases(settings: Settings) -> dict[str, str]:
    registry = Registry(settings)
    return {a: v for a in ("champion", "challenger", "previous") if (v := registry.alias_version(NAME, a))}


def _tags(settings: Settings, version: str) -> dict[str, str]:
    return Registry(settings).version(NAME, version).tags


@pytest.fixture(scope="module")
def gated(featured: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The small world's churn model trained twice (versions 1 and 2, @challenger on 2); nothing promoted."""
    home = tmp_path_factory.mktemp("gated") / "home"
    shutil.copytree(featured.home_dir, home, ignore=shutil.ignore_patterns("mlflow.db", "artifacts"))
    settings = Settings(home=home, training_config=featured.training_config)
    for _ in range(2):
        run_training(settings, "churn", TRAIN_STEPS, lambda _: None, trials=1)
    return settings


def test_pass_block_waiver_and_rollback_move_the_aliases_and_leave_a_record(gated: Settings, tmp_path: Path) -> None:
    me = "tester@ci"
    first = run_gate(gated, "churn", "1", None, me, PLAIN_STEPS)  # the shipped policy, on the default world
    assert first["result"] == "promoted", first["reasons"]
    assert _aliases(gated) == {"champion": "1", "challenger": "2"}
    assert _tags(gated, "1")["custintel.gate.result"] == "promoted"
    card = gated.governance_dir / "cards" / NAME / "1"
    assert {"card.md", "card.html", "audit.json"} <= {p.name for p in card.iterdir()}
    page = (card / "card.html").read_text()
    assert "Intended use" in page and "Fairness audit" in page and "promoted" in page
    # consent in training: the card's training data and the gate's informational check state the exclusions
    assert "consent: profiling: " in page and "customer(s) excluded" in page
    (consent,) = [c for c in first["checks"] if c["name"] == "consent"]
    assert consent["passed"] and consent["numbers"]["excluded_rows"] > 0 and "informational" in consent["details"][0]
    registry = Registry(gated)
    run_id = registry.version(NAME, "1").run_id
    assert run_id is not None
    assert any(a.path.endswith("card.html") for a in registry.client.list_artifacts(run_id, "cards/v1"))

    # An impossible fairness limit, judged on the raw value: version 2 is blocked and nothing moves.
    strict = _with_policy(gated, _policy(tmp_path, "strict", fairness={"calibration_ratio": {"min": 1.0}}))
    assert strict.governance_policy is not None
    strict_yaml = yaml.safe_load(strict.governance_policy.read_text())
    strict_yaml["confidence"] = 0.5
    strict.governance_policy.write_text(yaml.safe_dump(strict_yaml))
    strict_policy = load_policy(strict.governance_policy)
    blocked = run_gate(strict, "churn", None, None, me, PLAIN_STEPS)
    assert blocked["result"] == "blocked" and blocked["version"] == "2"
    assert any("calibration_ratio by" in r for r in blocked["reasons"])
    assert _aliases(gated) == {"champion": "1", "challenger": "2"}
    assert "calibration_ratio by" in json.loads(_tags(gated, "2")["custintel.gate.reasons"])[0]
    assert any(c["name"] == "performance" and "vs champion" in c["details"][0] for c in blocked["checks"])

    # A named approver waives it: champion moves to 2, the former champion is kept as previous.
    waiver = Waiver("Dana Reviewer", "pilot on 5% of traffic; re-audit after the next retrain")
    waived = run_gate(strict, "churn", "2", waiver, me, PLAIN_STEPS)
    assert waived["result"] == "waived" and waived["waiver"]["approver"] == "Dana Reviewer"
    assert _aliases(gated) == {"champion": "2", "previous": "1"}

    out = CliRunner().invoke(app, ["--home", str(gated.home_dir), "rollback", "churn", "--reason", "complaints"])
    assert out.exit_code == 0, out.output
    assert _aliases(gated) == {"champion": "1", "previous": "2"}
    assert _tags(gated, "2")["custintel.gate.result"] == "rolled_back"

    log = [json.loads(line) for line in (gated.governance_dir / "decisions.jsonl").read_text().splitlines()]
    assert [d["result"] for d in log] == ["promoted", "blocked", "waived", "rolled_back"]
    assert [d["champion_after"] for d in log] == ["1", "1", "2", "1"]
    assert log[0]["policy_hash"] == load_policy().digest != strict_policy.digest == log[1]["policy_hash"]
    assert all(d["actor"] == me for d in log[:3])
    # Both logs are hash-chained and intact: one trail entry per decision, one per policy change.
    assert trail.verify(store.decision_log(gated)).ok and [d["seq"] for d in log] == [1, 2, 3, 4]
    assert trail.verify(trail.trail_path(gated)).ok
    entries = trail.read_entries(trail.trail_path(gated))
    actions = ["promotion", "policy_change", "promotion", "waiver", "policy_change", "rollback"]
    assert [e["action"] for e in entries] == actions
    assert [e["details"].get("decision") for e in entries if e["action"] != "policy_change"] == [d["id"] for d in log]

    # The history: which version held each alias, from when to when, and the gate decision behind each move.
    out = CliRunner().invoke(app, ["--home", str(gated.home_dir), "registry", "history", "churn", "--json"])
    assert out.exit_code == 0, out.output
    spans = json.loads(out.output)
    champion = [s for s in spans if s["alias"] == "champion"]
    assert [s["version"] for s in champion] == ["1", "2", "1"] and champion[-1]["until"] is None
    assert [s["decision"] for s in champion] == [log[0]["id"], log[2]["id"], log[3]["id"]]
    assert "waived by Dana Reviewer" in champion[1]["why"] and champion[1]["ended_by"].startswith("rollback")
    assert [s["version"] for s in spans if s["alias"] == "challenger"] == ["1", "2"]
    now = CliRunner().invoke(app, ["--home", str(gated.home_dir), "registry", "history", "churn", "--at",
                                   dt.datetime.now(dt.UTC).isoformat()])  # fmt: skip
    text = " ".join(now.output.split())
    assert now.exit_code == 0 and "@champion = v1" in text and "@previous = v2" in text and "rolled_back" in text


def test_the_prefect_flow_audits_and_records(gated: Settings, prefect_api: None) -> None:
    from flows.promote import audit_and_promote
    from tests.conftest import flow_runs_and_artifacts

    decision = audit_and_promote(NAME, settings=gated.to_flow(), version="2", actor="flow@ci")
    assert decision["result"] in ("promoted", "blocked") and decision["actor"] == "flow@ci"
    runs, artifacts = flow_runs_and_artifacts()
    assert any(r.name and r.state and r.state.is_completed() for r in runs)
    assert any(a.key == "gate-decision" for a in artifacts)


def _promote_in_a_process(home: str, config: str, policy: str, version: str, start: Any) -> None:
    start.wait()
    settings = Settings(home=Path(home), training_config=Path(config), governance_policy=Path(policy))
    run_gate(settings, NAME, version, None, f"racer-{version}", PLAIN_STEPS)


def test_two_processes_promoting_the_same_model_queue_up(gated: Settings, tmp_path: Path) -> None:
    loose = _policy(
        tmp_path, "loose", fairness={"calibration_ratio": {"min": 0.0}}, performance={"metric": "auc", "tolerance": 1.0}
    )
    before = len(store.read_decisions(gated))
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    racers = [
        ctx.Process(
            target=_promote_in_a_process,
            args=(str(gated.home_dir), str(gated.training_config), str(loose), v, start),
        )
        for v in ("1", "2")
    ]
    for p in racers:
        p.start()
    start.set()
    for p in racers:
        p.join(timeout=300)
        assert p.exitcode == 0
    first, second = store.read_decisions(gated)[before:]
    assert {first["version"], second["version"]} == {"1", "2"}
    assert first["result"] == second["result"] == "promoted"
    # The second saw the first's outcome: one chain, one champion.
    assert second["champion_before"] == first["champion_after"]
    assert second["seq"] == first["seq"] + 1 and second["prev_hash"] == first["hash"]
    assert trail.verify(store.decision_log(gated)).ok and trail.verify(trail.trail_path(gated)).ok
    aliases = _aliases(gated)
    assert aliases["champion"] == second["champion_after"]
    assert aliases.get("previous") not in (None, aliases["champion"])


def test_the_report_command_builds_the_reviewers_site(gated: Settings) -> None:
    out = CliRunner().invoke(app, ["--home", str(gated.home_dir), "report"])
    assert out.exit_code == 0, out.output
    index = gated.site_dir / "index.html"
    assert index.is_file() and NAME in index.read_text()


@pytest.fixture(scope="module")
def biased(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A small world whose protected group (gender F) churns more and has its signals under-recorded."""
    import datetime as dt

    from features.lake import ingest_drop
    from features.synthetic import WorldConfig, generate_world
    from flows.features import PLAIN_STEPS as FEATURE_STEPS
    from flows.features import run_feature_build

    root = tmp_path_factory.mktemp("biased")
    generate_world(WorldConfig(customers=3000, chunk_size=1000, seed=5, bias_strength=3.0), root / "drop")
    config = root / "training.yaml"
    config.write_text(SMALL_TRAINING_YAML, encoding="utf-8")
    settings = Settings(home=root / "home", training_config=config)
    ingest_drop(root / "drop", settings)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUSTINTEL_IDENTITY_U_MAX_PAIRS", "1e6")
        result = CliRunner().invoke(app, ["--home", str(settings.home_dir), "resolve", "--engine", "local"])
    assert result.exit_code == 0, result.output
    run_feature_build(settings, [dt.date.fromisoformat(d) for d in TRAIN_AS_OF], False, FEATURE_STEPS, lambda _: None)
    # Trained without consent filtering: in a world this small, leaving out the customers who withdrew profiling
    # (a quarter of the rows) puts each gender's test rows under the policy's min_group_size, and this test is
    # about the bias knob (consent in training: tests/test_training_consent.py).
    unfiltered = Settings(home=settings.home_dir, training_config=config,
                          governance_policy=_policy(root, "no-consent", purpose=None))  # fmt: skip
    run_training(unfiltered, "churn", TRAIN_STEPS, lambda _: None, trials=1)
    return settings


def test_the_bias_knob_makes_the_gate_block_naming_the_group_and_metric(biased: Settings) -> None:
    env = {"CUSTINTEL_TRAINING_CONFIG": str(biased.training_config)}
    out = CliRunner().invoke(app, ["--home", str(biased.home_dir), "promote", "churn", "--engine", "local"], env=env)
    assert out.exit_code == 2, out.output  # blocked
    text = " ".join(out.output.split())
    assert "blocked" in text and "calibration_ratio by gender" in text and "group F" in text
    assert _aliases(biased) == {"challenger": "1"}
    assert _tags(biased, "1")["custintel.gate.result"] == "blocked"


def test_a_copied_home_promotes_reports_and_monitors_inside_itself(
    gated: Settings, tmp_path: Path, prefect_api: None
) -> None:
    """A home restored elsewhere (here: copied under a path with a space) writes nothing into the original."""
    from governance.site import build_site
    from models.registry import relocate_home_store
    from tests.conftest import tree_digest

    copy = tmp_path / "restored home" / "home"
    shutil.copytree(gated.home_dir, copy)
    original = tree_digest(gated.home_dir)
    settings = Settings(home=copy, training_config=gated.training_config)
    registry = Registry(settings)
    name = "custintel-churn"
    version = registry.alias_version(name, "challenger") or registry.alias_version(name, "champion")
    assert version is not None
    record = run_gate(settings, "churn", version, Waiver("Dana Reviewer", "relocation test"), "tester@ci", PLAIN_STEPS)
    assert record["result"] in ("promoted", "blocked", "waived"), record
    site = build_site(settings)
    result = CliRunner().invoke(app, ["--home", str(copy), "monitor", "--family", "churn", "--no-retrain"])
    assert result.exit_code in (0, 3), result.output
    assert tree_digest(gated.home_dir) == original  # not one byte of the original home changed
    assert site.is_relative_to(copy)
    # every location MLflow holds now lies inside the copy, and the card went into the copy's artifacts
    runs = registry.client.search_runs([e.experiment_id for e in registry.client.search_experiments()])
    assert runs and all(r.info.artifact_uri.startswith(settings.artifacts_dir.as_uri()) for r in runs)
    assert registry.load_model(name, version, "sklearn") is not None  # the model loads from the copy's artifacts
    cards = list((copy / "artifacts").rglob("card.md"))
    assert any(f"cards/v{version}" in str(p) for p in cards), cards
    assert relocate_home_store(settings) == 0  # already here: nothing more to rewrite
