"""Retention of the batch scores (store `batch_scores`): cutoffs past the policy's age go, each model's latest stays.

No training: each partition is a small scores table written by the store's own writer (`scores_table`,
`write_scores`), with cutoffs chosen around the as-of date so that some are due, some young, and one model's
latest due but kept.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from custintel.settings import Settings
from tests.conftest import tree_digest

AS_OF = dt.date(2026, 1, 1)
BEFORE = dt.date(2025, 10, 3)  # 90 days before AS_OF: cutoffs before it are due
# Per model, cutoff -> rows. churn: two due, one young; propensity: one due, one due but its latest.
CUTOFFS = {
    "custintel-churn": {"2025-06-01": 3, "2025-09-01": 4, "2025-12-01": 5},
    "custintel-propensity": {"2025-05-01": 6, "2025-08-01": 7},
}
DUE = ["custintel-churn/as_of=2025-06-01", "custintel-churn/as_of=2025-09-01", "custintel-propensity/as_of=2025-05-01"]
LATEST_KEPT = "custintel-propensity/as_of=2025-08-01"
NOTHING = {"kept": 0, "removed": 0, "removed_count": 0, "trimmed": 0}  # no dead Spark run's leftovers to sweep


def _policy_file(path: Path, retention: dict[str, Any]) -> Path:
    from importlib import resources

    policy = yaml.safe_load(resources.files("governance").joinpath("policy.yaml").read_text(encoding="utf-8"))
    policy["retention"] = retention
    path.write_text(yaml.safe_dump(policy), encoding="utf-8")
    return path


@pytest.fixture
def home(tmp_path: Path) -> Settings:
    """A home holding only batch scores (a policy covering only them: every other store is skipped)."""
    from models.scores import scores_table, write_scores

    policy = _policy_file(tmp_path / "policy.yaml", {"stores": {"batch_scores": {"max_age_days": 90}}})
    settings = Settings(home=tmp_path / "home", governance_policy=policy)
    for model, cutoffs in CUTOFFS.items():
        for day, rows in cutoffs.items():
            scored = pd.DataFrame({"customer_key": [f"CK{i}" for i in range(rows)], "score": [0.5] * rows})
            cutoff = dt.date.fromisoformat(day)
            write_scores(settings, scores_table(scored, model, "1", cutoff), model, cutoff)
    return settings


def _partitions(settings: Settings) -> list[str]:
    from models.scores import scores_root

    root = scores_root(settings)
    return sorted(str(p.parent.relative_to(root)) for p in root.glob("*/as_of=*/data.parquet"))


def test_a_pass_removes_the_due_cutoffs_whole_and_keeps_each_models_latest(home: Settings) -> None:
    from models.scores import BatchScoringError, ScoresStore, expire_scores, read_scores, scores_root

    before = tree_digest(home.home_dir)
    dry = expire_scores(home, BEFORE, dry_run=True)
    assert tree_digest(home.home_dir) == before  # a dry run lists, changes nothing
    assert [i.place for i in dry.removed] == DUE and dry.removed_count == 3 + 4 + 6

    # A pass killed between its rename and its delete left a hidden folder: this pass removes it, with a note.
    root = scores_root(home)
    (root / "custintel-churn" / ".expired-as_of=2025-01-01-0badf00d").mkdir()
    (root / "custintel-churn" / ".expired-as_of=2025-01-01-0badf00d" / "data.parquet").write_bytes(b"PAR1")
    (root / "custintel-churn" / "as_of=someday").mkdir()  # no date in its name: kept, with the reason
    done = expire_scores(home, BEFORE)
    assert [i.place for i in done.removed] == DUE and done.removed_count == 13
    assert _partitions(home) == ["custintel-churn/as_of=2025-12-01", LATEST_KEPT]
    assert sorted(p.name for p in (root / "custintel-churn").iterdir()) == ["as_of=2025-12-01", "as_of=someday"]
    assert done.notes == ["removed custintel-churn/.expired-as_of=2025-01-01-0badf00d: left by an earlier pass"]
    kept = {i.place: i.reason for i in done.kept}
    assert kept == {
        "custintel-churn/as_of=2025-12-01": "",
        "custintel-churn/as_of=someday": "the folder name holds no cutoff date",
        LATEST_KEPT: "the latest scores of custintel-propensity: the table its consumers read (keep_latest)",
    }
    assert read_scores(home, "custintel-propensity", dt.date(2025, 8, 1)).num_rows == 7
    with pytest.raises(BatchScoringError, match="no scores of custintel-churn as of 2025-09-01"):
        read_scores(home, "custintel-churn", dt.date(2025, 9, 1))
    assert sorted(p.parent.parent.name + "/" + p.parent.name for p in ScoresStore(home)._files()) == _partitions(home)
    assert not expire_scores(home, BEFORE).removed  # a second pass finds nothing due

    # Without keep_latest the propensity model's last cutoff goes too, and its folder left empty with it;
    # once every partition is gone, so is the scores folder.
    expire_scores(home, BEFORE, keep_latest=False)
    assert _partitions(home) == ["custintel-churn/as_of=2025-12-01"] and not (root / "custintel-propensity").exists()
    (root / "custintel-churn" / "as_of=someday").rmdir()
    gone = expire_scores(home, AS_OF + dt.timedelta(days=1), keep_latest=False)
    assert [i.place for i in gone.removed] == ["custintel-churn/as_of=2025-12-01"] and not root.exists()


def test_retention_apply_reports_the_scores_and_records_the_counts(
    home: Settings, prefect_api: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from flows.cli import app
    from flows.retention import retention_apply
    from governance.trail import read_entries, trail_path

    before = tree_digest(home.home_dir)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CUSTINTEL_GOVERNANCE_POLICY", str(home.governance_policy))
    args = ["--home", str(home.home_dir), "retention", "apply", "--as-of", AS_OF.isoformat()]
    dry = CliRunner().invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    out = " ".join(dry.output.split())
    assert "batch_scores: would remove custintel-churn/as_of=2025-06-01 (dated 2025-06-01)" in out
    assert f"batch_scores: kept {LATEST_KEPT}: the latest scores of custintel-propensity" in out
    assert "lake: skipped: not in the retention policy: everything kept" in out
    assert tree_digest(home.home_dir) == before  # nothing changed, nothing written

    report = retention_apply(home.to_flow(), AS_OF.isoformat())
    scores = report["stores"]["batch_scores"]
    assert (scores["max_age_days"], scores["before"], scores["class_ages_days"]) == (90, "2025-10-03", {})
    assert [i["place"] for i in scores["removed"]] == DUE
    assert {i["place"]: i.get("due") or i.get("reason") for i in scores["kept"]} == {
        "custintel-churn/as_of=2025-12-01": "2026-03-02",  # due the day its cutoff is 91 days old
        LATEST_KEPT: "the latest scores of custintel-propensity: the table its consumers read (keep_latest)",
    }
    assert scores["next_due"] == "2026-03-02"
    counts = {"removed": 3, "removed_count": 13, "trimmed": 0, "kept": 2}
    assert report["counts"]["batch_scores"] == counts
    assert _partitions(home) == ["custintel-churn/as_of=2025-12-01", LATEST_KEPT]
    assert json.loads(Path(report["report"]).read_text())["counts"]["batch_scores"] == counts
    entry = read_entries(trail_path(home))[-1]
    assert entry["action"] == "retention_apply"
    assert entry["details"]["counts"] == {"batch_scores": counts, "spark_leftovers": NOTHING}
    assert "batch_scores" not in entry["details"]["skipped"] and "lake" in entry["details"]["skipped"]


def test_the_policy_for_the_scores_is_checked_naming_the_key(
    home: Settings, prefect_api: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from flows.cli import app
    from governance.policy import PolicyError, load_policy

    shipped = load_policy().retention
    assert shipped is not None and shipped.max_age("batch_scores") == 90 and shipped.stores["batch_scores"].keep_latest
    bad = {
        "stores.batch_scores.max_age_days: -1 days: an age cannot be negative": {"max_age_days": -1},
        "retention.stores.batch_scores.max_age_days: Input should be a valid integer": {"max_age_days": "ninety"},
        "stores.batch_scores.classes.behavioural: this store holds no behavioural data (it holds: inferred)": {
            "classes": {"behavioural": 10}
        },
        "retention.stores.batch_scores.keep_latest: Input should be a valid boolean": {"keep_latest": "maybe"},
    }
    for i, (message, store) in enumerate(bad.items()):
        with pytest.raises(PolicyError) as caught:
            load_policy(_policy_file(tmp_path / f"p{i}.yaml", {"stores": {"batch_scores": store}}))
        assert message in " ".join(str(caught.value).split()), str(caught.value)
    with pytest.raises(PolicyError, match="stores.lake.keep_latest: only batch_scores has this choice"):
        load_policy(_policy_file(tmp_path / "lake.yaml", {"stores": {"lake": {"keep_latest": False}}}))
    # An age for inferred data, policy-wide, shortens the scores' age.
    ages = load_policy(_policy_file(tmp_path / "classes.yaml", {"classes": {"inferred": 30}})).retention
    assert ages is not None and ages.max_age("batch_scores") == 30

    # The command refuses a bad value before anything is deleted, with the key named and no traceback.
    before = tree_digest(home.home_dir)
    monkeypatch.setenv("CUSTINTEL_GOVERNANCE_POLICY", str(tmp_path / "p0.yaml"))
    refused = CliRunner().invoke(app, ["--home", str(home.home_dir), "retention", "apply", "--as-of", "2026-01-01"])
    assert refused.exit_code == 1 and refused.output.startswith("error: ") and "Traceback" not in refused.output
    assert "stores.batch_scores.max_age_days: -1 days: an age cannot be negative" in " ".join(refused.output.split())
    assert tree_digest(home.home_dir) == before
