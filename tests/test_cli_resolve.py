"""`custintel resolve` and its subcommands, through Typer's CliRunner on a copy of the ingested home."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from custintel.settings import Settings
from flows.cli import app

runner = CliRunner()
FAST = {"CUSTINTEL_IDENTITY_U_MAX_PAIRS": "1e6"}


def _invoke(home: Path, *args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, ["--home", str(home), *args], env={**FAST, **(env or {})})


@pytest.fixture(scope="module")
def resolved_home(ingested, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import shutil

    home = tmp_path_factory.mktemp("cli-resolve") / "home"
    shutil.copytree(ingested.settings.home_dir, home)
    result = _invoke(home, "resolve", "--engine", "local")
    assert result.exit_code == 0, result.output
    return home


def test_resolve_prints_counts_and_writes_every_output(resolved_home: Path) -> None:
    out = Settings(home=resolved_home).identity_dir
    for name in ("records", "match_records", "links", "crosswalk", "golden_records", "conflicts", "key_events"):
        assert (out / f"{name}.parquet").is_file(), name
    assert (out / "model.json").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["stats"]["customers"] == len(pd.read_parquet(out / "golden_records.parquet"))
    assert run["options"]["probabilistic"] is True
    assert list((resolved_home / "reports" / "identity").glob("*.json"))


def test_a_second_run_keeps_every_key(resolved_home: Path, tmp_path: Path) -> None:
    import shutil

    home = tmp_path / "again"
    shutil.copytree(resolved_home, home)
    before = pd.read_parquet(home / "identity" / "crosswalk.parquet")
    result = _invoke(home, "resolve", "--engine", "local", "--reuse-model")
    assert result.exit_code == 0, result.output
    after = pd.read_parquet(home / "identity" / "crosswalk.parquet")
    pd.testing.assert_frame_equal(before, after)
    run = json.loads((home / "identity" / "run.json").read_text())
    assert run["stats"]["key_events"] == {}  # nothing new, merged, split or retired
    events = pd.read_parquet(home / "identity" / "key_events.parquet")
    assert events["run_id"].nunique() == 1  # only the first run issued keys


def test_explain_shows_rules_weights_and_a_verdict(resolved_home: Path) -> None:
    links = pd.read_parquet(resolved_home / "identity" / "links.parquet")
    prob = links[links["rule"] == "probabilistic"].iloc[0]
    result = _invoke(resolved_home, "resolve", "explain", prob["record_key_l"], prob["record_key_r"])
    assert result.exit_code == 0, result.output
    for text in ("deterministic rules", "evidence per comparison", "match weight", "prior", "One customer"):
        assert text in result.output
    email = links[links["rule"] == "email"].iloc[0]
    result = _invoke(resolved_home, "resolve", "explain", email["record_key_l"], email["record_key_r"])
    assert result.exit_code == 0 and "linked directly by the rule 'email'" in result.output


def test_explain_an_unknown_record_fails_cleanly(resolved_home: Path) -> None:
    result = _invoke(resolved_home, "resolve", "explain", "crm_accounts:NOPE", "crm_accounts:NOPE2")
    assert result.exit_code == 1
    assert "crm_accounts:NOPE" in result.output and "Traceback" not in result.output


def test_conflicts_for_a_steward(resolved_home: Path) -> None:
    result = _invoke(resolved_home, "resolve", "conflicts", "--attribute", "email", "--limit", "3")
    assert result.exit_code == 0, result.output
    assert "conflicts" in result.output and "most_recent" in result.output
    none = _invoke(resolved_home, "resolve", "conflicts", "--customer", "CK_NOBODY")
    assert none.exit_code == 0 and "No conflicts match" in none.output


def test_evaluate_against_the_truth(resolved_home: Path, ingested) -> None:
    result = _invoke(resolved_home, "resolve", "evaluate", "--truth", str(ingested.world.truth))
    assert result.exit_code == 0, result.output
    scores = json.loads((resolved_home / "reports" / "identity" / "evaluation.json").read_text())
    assert scores["deterministic+probabilistic"]["f1"] >= 0.97
    assert scores["deterministic+probabilistic"]["recall"] > scores["deterministic"]["recall"]
    missing = _invoke(resolved_home, "resolve", "evaluate", "--truth", str(resolved_home / "nope.parquet"))
    assert missing.exit_code == 1 and "does not exist" in missing.output


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CUSTINTEL_IDENTITY_HASHED": "true"}, "salt"),
        ({"CUSTINTEL_IDENTITY_MATCH_FIELDS": '["name", "dob"]'}, "unknown field(s) ['dob']"),
        ({"CUSTINTEL_IDENTITY_CONFIG": "/no/such/identity.yaml"}, "does not exist"),
    ],
)
def test_bad_identity_settings_fail_with_a_message(resolved_home: Path, env: dict[str, str], message: str) -> None:
    result = _invoke(resolved_home, "resolve", "--engine", "local", env=env)
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


def test_commands_before_any_resolution_say_what_to_do(tmp_path: Path) -> None:
    result = _invoke(tmp_path / "empty", "resolve", "conflicts")
    assert result.exit_code == 1 and "run `custintel resolve` first" in result.output
    result = _invoke(tmp_path / "empty", "resolve", "--engine", "local")
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_hashed_mode_from_settings(resolved_home: Path, tmp_path: Path) -> None:
    import shutil

    home = tmp_path / "hashed"
    shutil.copytree(resolved_home, home)
    env = {"CUSTINTEL_IDENTITY_HASHED": "true", "CUSTINTEL_IDENTITY_HASH_SALT": "pepper"}
    result = _invoke(home, "resolve", "--engine", "local", env=env)
    assert result.exit_code == 0, result.output
    assert "hashed identifiers only" in result.output
    match = pd.read_parquet(home / "identity" / "match_records.parquet")
    assert "email" in match.columns and match["email"].dropna().str.fullmatch(r"[0-9a-f]{64}").all()
    links = pd.read_parquet(home / "identity" / "links.parquet")
    assert "probabilistic" not in set(links["rule"])
    e = _invoke(home, "resolve", "explain", links["record_key_l"].iloc[0], links["record_key_r"].iloc[0], env=env)
    assert e.exit_code == 0 and "One customer" in e.output


def test_a_new_drop_keeps_the_keys_of_people_seen_before(drop_copy, tmp_path: Path, ingested) -> None:
    """Drop 1 lacks a fifth of the CRM accounts; drop 2, exported later, has them all."""
    first, second = drop_copy("drop1"), drop_copy("drop2")
    accounts = first / "crm" / "accounts.csv"
    lines = accounts.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for i, line in enumerate(lines) if i == 0 or i % 5 != 0]
    accounts.write_text("".join(kept), encoding="utf-8")
    manifest = json.loads((second / "manifest.json").read_text())
    manifest["export_date"] = "2026-02-01"
    (second / "manifest.json").write_text(json.dumps(manifest))
    home = tmp_path / "home"
    for drop in (first, second):
        assert _invoke(home, "ingest", "--source", str(drop), "--engine", "local").exit_code == 0
        result = _invoke(home, "resolve", "--engine", "local")
        assert result.exit_code == 0, result.output
        if drop == first:
            before = pd.read_parquet(home / "identity" / "crosswalk.parquet").set_index("record_key")
    after = pd.read_parquet(home / "identity" / "crosswalk.parquet").set_index("record_key")
    assert len(after) > len(before)
    same = after["customer_key"].reindex(before.index) == before["customer_key"]
    events = pd.read_parquet(home / "identity" / "key_events.parquet")
    second_run = events[events["run_id"] == events["run_id"].max()]
    merged = set(second_run.loc[second_run["event"] == "merged", "customer_key"])
    # a record seen before changes key only when its customer merged into another one
    assert before.loc[~same.to_numpy(), "customer_key"].isin(merged).all()
    assert same.mean() > 0.97
    # the returning accounts joined the customers their other records already had
    truth = ingested.world.truth_frame("source_records")
    person = (truth["source_table"] + ":" + truth["record_id"]).to_frame("record_key").assign(p=truth["person_id"])
    person = person.set_index("record_key")["p"]
    new = after.index.difference(before.index)
    known_people = set(person.reindex(before.index))
    returning = after.loc[new][person.reindex(new).isin(known_people).to_numpy()]
    assert returning["customer_key"].isin(set(before["customer_key"])).mean() > 0.95
