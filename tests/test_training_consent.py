"""Consent in training: a customer who withdrew the family's purpose before a cutoff gives no row at that cutoff.

Pure cases on small frames (withdrawn before or after the cutoff, re-granted, unknown consent per
policy, the recommender's interactions), then the consent-in-training test on the session's
generated world: a customer who withdrew profiling consent before every churn cutoff is in none
of the churn run's rows (train, valid, test, calibration, the monitoring reference) nor in any
file the run logged to MLflow.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from custintel.settings import Settings
from models.consent import ConsentRule, exclude_withdrawn, filter_interactions, filter_table, status_before
from models.recommendation import Interactions
from models.splits import LabelledTable, SplitError

CUTOFF = dt.date(2025, 3, 1)


def _history(*events: tuple[str, str, str, str]) -> pd.DataFrame:
    """(customer_key, purpose, status, recorded_at) rows."""
    frame = pd.DataFrame(events, columns=["customer_key", "purpose", "status", "recorded_at"])
    return frame.assign(recorded_at=pd.to_datetime(frame["recorded_at"], format="ISO8601"))


def _rows(*keys: str, as_of: dt.date = CUTOFF) -> pd.DataFrame:
    return pd.DataFrame({"customer_key": list(keys), "as_of": [as_of] * len(keys), "x": range(len(keys))})


def test_a_withdrawal_before_the_cutoff_excludes_the_customer_and_one_after_it_does_not() -> None:
    history = _history(
        ("early", "profiling", "withdrawn", "2025-01-10 09:00"),
        ("late", "profiling", "withdrawn", "2025-03-01 08:00"),  # on the cutoff day: after its midnight
        ("other_purpose", "marketing", "withdrawn", "2024-12-01"),
    )
    kept, report = exclude_withdrawn(_rows("early", "late", "other_purpose", "never"), history, "profiling",
                                     "as_of", "allow")  # fmt: skip
    assert list(kept["customer_key"]) == ["late", "other_purpose", "never"]
    assert report.rows == {"all": 1} and report.withdrawn_rows == 1 and report.unknown_rows == 0
    assert report.excluded_customers == 1 and report.metrics()["consent_excluded_rows_all"] == 1.0
    # The same customer at a later cutoff, after the withdrawal: excluded there too.
    later, _ = exclude_withdrawn(_rows("late", as_of=dt.date(2025, 4, 1)), history, "profiling", "as_of", "allow")
    assert later.empty


def test_a_re_grant_before_the_cutoff_brings_the_customer_back_and_a_tie_withdraws() -> None:
    history = _history(
        ("back", "profiling", "withdrawn", "2024-06-01"),
        ("back", "profiling", "granted", "2024-09-01"),
        ("regranted_after", "profiling", "withdrawn", "2024-06-01"),
        ("regranted_after", "profiling", "granted", "2025-05-01"),
        ("tie", "profiling", "granted", "2024-06-01"),
        ("tie", "profiling", "withdrawn", "2024-06-01"),
    )
    status = status_before(
        pd.Series(["back", "regranted_after", "tie", "nobody"]), pd.Series([CUTOFF] * 4), history, "profiling"
    )
    assert list(status) == ["granted", "withdrawn", "withdrawn", None]
    kept, _ = exclude_withdrawn(_rows("back", "regranted_after", "tie"), history, "profiling", "as_of", "allow")
    assert list(kept["customer_key"]) == ["back"]


def test_unknown_consent_follows_the_policy() -> None:
    history = _history(("granted", "profiling", "granted", "2024-01-01"),
                       ("future", "profiling", "granted", "2025-06-01"))  # fmt: skip
    rows = _rows("granted", "future", "never")
    allowed, report = exclude_withdrawn(rows, history, "profiling", "as_of", "allow")
    assert len(allowed) == 3 and report.total_rows == 0
    kept, report = exclude_withdrawn(rows, history, "profiling", "as_of", "exclude")
    assert list(kept["customer_key"]) == ["granted"]  # a grant recorded after the cutoff is not known at it
    assert report.unknown_rows == 2 and report.withdrawn_rows == 0 and report.excluded_customers == 2
    with pytest.raises(ValueError, match="unknown_consent.profiling"):
        ConsentRule("profiling", "suppress", history)


def test_a_labelled_table_loses_the_rows_of_every_stage_and_counts_them_per_stage() -> None:
    frame = pd.DataFrame(
        {
            "customer_key": ["a", "a", "b", "b", "c", "d"],
            "as_of": pd.to_datetime(
                ["2024-09-01", "2025-03-01", "2024-09-01", "2025-03-01", "2025-03-01", "2025-03-01"]
            ),  # fmt: skip
            "x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "churned": [0, 1, 0, 0, 1, 0],
        }
    )
    stage = pd.Series(["train", "test", "train", "calibration", "test", "calibration"])
    table = LabelledTable(frame, "customer_key", "churned", stage, snapshot="as_of")
    history = _history(("a", "profiling", "withdrawn", "2024-12-01"), ("b", "profiling", "withdrawn", "2024-01-01"))
    kept, report = filter_table(table, ConsentRule("profiling", "allow", history))
    assert kept.frame["x"].tolist() == [1.0, 5.0, 6.0] and kept.stage.tolist() == ["train", "test", "calibration"]
    assert report.rows == {"train": 1, "test": 1, "calibration": 1}
    assert report.customers == {"train": 1, "test": 1, "calibration": 1} and report.excluded_customers == 2
    assert "3 row(s) of 2 customer(s) excluded" in report.summary()
    with pytest.raises(ValueError, match="cutoff"):
        filter_table(replace(table, snapshot=None), ConsentRule("profiling", "allow", history))
    # A stage left without a row is refused in one line naming the stage and the policy's rule.
    granted_c = pd.concat(
        [history, _history(("c", "profiling", "granted", "2024-01-01"), ("d", "profiling", "granted", "2024-01-01"))],
        ignore_index=True,
    )
    with pytest.raises(SplitError, match=r"consent \(profiling\): every row of the train stage\(s\) was excluded"):
        filter_table(table, ConsentRule("profiling", "exclude", granted_c))  # a had no decision yet at 2024-09-01


def test_interactions_lose_the_users_excluded_at_each_cutoff() -> None:
    history = _history(("u1", "marketing", "withdrawn", "2025-04-01"))

    def part() -> Interactions:
        return Interactions(
            history=pd.DataFrame({"user": ["u1", "u1", "u2"], "item": ["p", "q", "p"], "weight": [1.0, 1.0, 1.0]}),
            holdout=pd.DataFrame({"user": ["u1", "u2"], "item": ["r", "q"]}),
            segments=pd.Series(["s", "t"], index=["u1", "u2"]),
        )

    (early, late), report = filter_interactions(
        [(part(), dt.date(2025, 3, 1), "train", "valid"), (part(), dt.date(2025, 6, 1), "refit", "test")],
        ConsentRule("marketing", "allow", history),
    )
    assert len(early.history) == 3 and len(early.holdout) == 2  # withdrawn after this cutoff
    assert set(late.history["user"]) == {"u2"} and set(late.holdout["user"]) == {"u2"}
    assert late.segments is not None and list(late.segments.index) == ["u2"]
    assert report.rows == {"train": 0, "valid": 0, "refit": 2, "test": 1} and report.withdrawn_rows == 3


def test_the_governance_policy_names_each_family_s_purpose_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    from governance.policy import PolicyError, load_policy

    policy = load_policy()
    purposes = {name: family.purpose for name, family in policy.families.items()}
    assert purposes == {"churn": "profiling", "propensity": "marketing", "uplift": "marketing",
                        "recommendation": "marketing"}  # fmt: skip
    assert policy.unknown_consent == {"profiling": "allow", "marketing": "allow", "analytics": "allow"}
    shipped = (Path(__file__).parents[1] / "governance" / "policy.yaml").read_text(encoding="utf-8")
    for old, new, message in (
        ("purpose: profiling ", "purpose: sales ", "families.churn.purpose"),
        ("  profiling: allow", "  profiling: suppress", "unknown_consent.profiling"),
    ):
        path = tmp_path / "policy.yaml"
        path.write_text(shipped.replace(old, new, 1), encoding="utf-8")
        with pytest.raises(PolicyError, match="policy.yaml") as info:
            load_policy(path)
        assert message in str(info.value)


def test_the_gate_states_the_exclusions_without_failing_on_them() -> None:
    from governance.gate import check_consent

    history = _history(("a", "profiling", "withdrawn", "2024-01-01"))
    _, report = exclude_withdrawn(_rows("a", "b"), history, "profiling", "as_of", "allow")
    check = check_consent(report.as_dict())
    assert check.passed and check.name == "consent" and check.numbers["excluded_rows"] == 1.0
    assert check.details == [f"informational: {report.summary()}"]
    assert "1 row(s) of 1 customer(s) excluded" in check.details[0]
    own = check_consent({"applied": False, "summary": "not applied: own table"})
    assert own.passed and own.details == ["informational: not applied: own table"] and not own.numbers
    assert "not recorded" in check_consent(None).details[0]


# ---------------------------------------------------------------- the consent-in-training test


def _withdrawn_before_every_cutoff(settings: Settings, cutoffs: list[dt.date]) -> list[str]:
    """Customers (the lake's consent table, through the crosswalk) whose latest profiling decision recorded before
    each of the cutoffs is a withdrawal: they may give no row at any cutoff."""
    from features.lake import read_lake_table

    events = read_lake_table(settings, "consent_events")
    crosswalk = pd.read_parquet(settings.identity_dir / "crosswalk.parquet", columns=["record_key", "customer_key"])
    events = events.assign(
        record_key="crm_accounts:" + events["crm_id"].astype(str),
        recorded_at=pd.to_datetime(events["recorded_at"], utc=True).dt.tz_localize(None),
        withdrawn=events["status"] == "withdrawn",
    ).merge(crosswalk, on="record_key")
    events = events[events["purpose"] == "profiling"].sort_values(["recorded_at", "withdrawn"])
    chosen: set[str] | None = None
    for cutoff in cutoffs:
        latest = events[events["recorded_at"] < pd.Timestamp(cutoff)].groupby("customer_key")["withdrawn"].last()
        withdrawn = set(latest[latest].index.astype(str))
        chosen = withdrawn if chosen is None else chosen & withdrawn
    return sorted(chosen or ())


def _mlflow_files(settings: Settings, run_id: str, into: Path) -> list[Path]:
    """Every file the run logged: its artifacts and its logged models' (input examples included)."""
    import mlflow

    from models.registry import Registry

    client = Registry(settings).client
    run = client.get_run(run_id)
    client.download_artifacts(run_id, "", str(into / "run"))
    for i, logged in enumerate(
        client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )  # fmt: skip
    ):
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        mlflow.artifacts.download_artifacts(artifact_uri=logged.artifact_location, dst_path=str(into / f"model{i}"))
    return [p for p in into.rglob("*") if p.is_file()]


@pytest.mark.slow
@pytest.mark.integration
def test_a_customer_who_withdrew_profiling_gives_no_row_to_the_churn_run(trainable: Settings) -> None:
    from flows.train import PLAIN_STEPS, run_training
    from models.config import load_training_config
    from models.registry import Registry
    from models.training import load_churn

    config = load_training_config(trainable.training_config)
    assert config.churn is not None
    cutoffs = config.churn.split.all_as_of()
    unfiltered = load_churn(trainable, config)
    present = set(unfiltered.frame["customer_key"].astype(str))
    chosen = [k for k in _withdrawn_before_every_cutoff(trainable, cutoffs) if k in present]
    assert chosen, "the generated world has no customer who withdrew profiling consent before the churn cutoffs"
    subject = chosen[0]

    seen: dict[str, Any] = {}

    def fit(unit: Any, data: Any, settings: Settings, prefix: str) -> Any:
        seen["data"] = data
        seen["trained"] = trained = PLAIN_STEPS.fit(unit, data, settings, prefix)
        return trained

    (churn,) = run_training(trainable, "churn", replace(PLAIN_STEPS, fit=fit), lambda _: None, trials=1)
    data, trained = seen["data"], seen["trained"]
    keys = data.frame["customer_key"].astype(str)
    assert subject not in set(keys)  # every stage: train, valid, test, calibration
    assert {"train", "valid", "test"} <= set(data.stage)
    assert not set(chosen) & set(keys)
    assert len(data.frame) == len(unfiltered.frame) - int(churn.metrics["consent_excluded_rows"])
    assert churn.metrics["consent_excluded_customers"] >= len(chosen)
    for name in ("training_frame", "predictions"):
        frame = getattr(trained, name)
        if frame is not None and "customer_key" in frame.columns:
            assert subject not in set(frame["customer_key"].astype(str)), name
    assert trained.reference is not None and len(trained.reference) <= len(data.frame)

    registry = Registry(trainable)
    run = registry.client.get_run(churn.run_id)
    assert run.data.params["consent"] == "applied: profiling" and run.data.params["consent_unknown"] == "allow"
    assert run.data.metrics["consent_excluded_rows_test"] >= 1 or run.data.metrics["consent_excluded_rows_train"] >= 1
    lineage = registry.read_run_json(churn.run_id, "lineage/lineage.json")
    assert lineage["consent"]["applied"] and lineage["consent"]["purpose"] == "profiling"
    evaluation = registry.read_evaluation_set(churn.run_id)
    assert evaluation is not None and subject not in set(evaluation.frame["customer_key"].astype(str))
    with tempfile.TemporaryDirectory() as tmp:
        files = _mlflow_files(trainable, churn.run_id, Path(tmp))
        assert any(f.name == "test.parquet" for f in files) and any(f.name == "reference.parquet" for f in files)
        for path in files:
            if path.suffix == ".parquet":
                frame = pd.read_parquet(path)
                for column in frame.columns:
                    if frame[column].dtype == object:
                        assert subject not in set(frame[column].astype(str)), f"{path.name}:{column}"
            else:
                assert subject.encode() not in path.read_bytes(), path.name


def test_a_run_on_the_users_own_table_says_consent_was_not_applied(tmp_path: Path) -> None:
    import numpy as np

    from flows.train import PLAIN_STEPS, run_training
    from models.own_families import OwnUplift
    from models.registry import RunRecord

    rng = np.random.default_rng(0)
    n = 800
    treated = rng.random(n) < 0.5
    path = tmp_path / "offer_test.csv"
    pd.DataFrame(
        {
            "member": [f"M{i:05d}" for i in range(n)],
            "arm": np.where(treated, "offer", "control"),
            "converted": np.where(rng.random(n) < 0.2 + 0.2 * treated, "yes", "no"),
            "engagement": rng.uniform(0, 1, n).round(3),
        }
    ).to_csv(path, index=False)
    logged: dict[str, Any] = {}

    def register(settings: Settings, config: Any, unit: Any, trained: Any, lineage: dict[str, Any]) -> RunRecord:
        logged.update(params=trained.params, metrics=trained.metrics, lineage=lineage)
        return RunRecord("run", "0", unit.name)

    steps = replace(PLAIN_STEPS, register=register, verify=lambda *_: 0.0)
    (outcome,) = run_training(Settings(home=tmp_path / "home"), "uplift", steps, lambda _: None,
                              own=OwnUplift(path, "member", "arm", "converted"))  # fmt: skip
    assert logged["params"]["consent"] == "not applied: own table"
    assert logged["lineage"]["consent"] == {"applied": False, "summary": "not applied: own table"}
    assert not any(k.startswith("consent_") for k in logged["metrics"])
    assert "consent: not applied: own table" in outcome.notes
