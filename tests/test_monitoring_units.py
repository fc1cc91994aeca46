"""Monitoring, unit by unit: drift verdicts equal Evidently's, the policy, each trigger, data quality, the log."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.config import load_training_config
from models.training import add_months, shifted
from monitoring import reports
from monitoring.checks import data_quality, null_shares, performance
from monitoring.drift import column_drift, column_kinds, dataset_drift, default_method
from monitoring.monitor import log_keys, new_labelled_months
from monitoring.policy import (
    DataQualityPolicy,
    FamilyMonitoring,
    MonitoringPolicy,
    MonitoringPolicyError,
    RetrainPolicy,
    Triggers,
    load_policy,
)
from monitoring.served import read_served
from monitoring.triggers import Evidence, decide

NOW = dt.datetime(2026, 1, 15, 12, tzinfo=dt.UTC)


def _frames(n_ref: int, n_cur: int, shift: float, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Numeric (continuous, few-valued, integer counts), categorical and boolean columns, with NaN and inf."""
    rng = np.random.default_rng(seed)

    def make(n: int, s: float) -> pd.DataFrame:
        frame = pd.DataFrame(
            {
                "amount": rng.lognormal(3 + s, 1, n),
                "score": rng.normal(s, 1, n),
                "tickets": rng.poisson(1 + s, n),
                "flag_count": rng.integers(0, 3, n),  # numeric with 3 values: tested as categorical
                "segment": rng.choice(["a", "b", "c", "d"], n, p=[0.4 - 0.1 * s, 0.3, 0.2, 0.1 + 0.1 * s]),
                "premium": rng.random(n) < 0.3 + 0.1 * s,
            }
        )
        frame.loc[frame.sample(frac=0.05, random_state=seed).index, "score"] = np.nan
        frame.loc[frame.sample(frac=0.01, random_state=seed + 1).index, "amount"] = np.inf
        return frame

    return make(n_ref, 0.0), make(n_cur, shift)


@pytest.mark.parametrize(
    ("n_ref", "n_cur", "shift"),
    [(5000, 3000, 0.0), (5000, 3000, 0.5), (800, 600, 0.0), (800, 600, 0.6)],
    ids=["large-same", "large-shifted", "small-same", "small-shifted"],
)
def test_verdicts_and_statistics_equal_evidently_on_the_same_rows(n_ref: int, n_cur: int, shift: float) -> None:
    reference, current = _frames(n_ref, n_cur, shift)
    kinds = column_kinds(reference, list(reference.columns))
    assert kinds == {"amount": "num", "score": "num", "tickets": "num", "flag_count": "num", "segment": "cat",
                     "premium": "cat"}  # fmt: skip
    ours = dataset_drift(reference, current, kinds)
    snapshot = reports.evidently_drift(reference, current, kinds, {}, 0.5, with_prediction=False)
    theirs, scores = reports.evidently_verdicts(snapshot), reports.evidently_scores(snapshot)
    assert {c.column: c.drifted for c in ours.columns} == theirs
    for c in ours.columns:
        assert c.score == pytest.approx(scores[c.column], rel=1e-9, abs=1e-12), c
    methods = {c.column: c.method for c in ours.columns}
    if n_ref > 1000:
        wide = dict.fromkeys(("amount", "score", "tickets"), "wasserstein")
        assert methods == {**wide, **dict.fromkeys(("flag_count", "segment", "premium"), "jensenshannon")}
    else:
        assert methods["amount"] == "ks" and methods["segment"] == "chisquare" and methods["premium"] == "z"
    assert (ours.drifted > 0) == (shift > 0)


def test_policy_overrides_reach_both_our_test_and_evidentlys() -> None:
    reference, current = _frames(5000, 3000, 0.2)
    kinds = column_kinds(reference, ["amount", "segment"])
    tests = {"amount": ("psi", 0.05), "segment": ("jensenshannon", 0.01)}
    ours = dataset_drift(reference, current, kinds, tests)
    snapshot = reports.evidently_drift(reference, current, kinds, tests, 0.5, with_prediction=False)
    assert {c.column: c.method for c in ours.columns} == {"amount": "psi", "segment": "jensenshannon"}
    assert {c.column: c.drifted for c in ours.columns} == reports.evidently_verdicts(snapshot)
    scores = reports.evidently_scores(snapshot)
    for c in ours.columns:
        assert c.score == pytest.approx(scores[c.column], rel=1e-9)


def test_a_column_without_values_on_one_side_gives_no_verdict() -> None:
    assert column_drift("x", pd.Series([1.0, 2.0, np.nan]), pd.Series([np.nan, np.inf]), "num") is None
    same = pd.Series(np.arange(2000.0))
    assert default_method(same, same, "num") == "wasserstein"
    with pytest.raises(ValueError, match="unknown drift test"):
        column_drift("x", same, same, "num", method="nope")


# --- policy --------------------------------------------------------------------------------------------------------


def test_the_shipped_policy_loads_and_its_digest_ignores_layout(tmp_path: Path) -> None:
    policy = load_policy()
    assert set(policy.families) == {"churn", "propensity", "recommendation"}
    copy = tmp_path / "policy.yaml"
    copy.write_text(json.dumps(policy.model_dump(mode="json")))  # JSON is YAML: same rules, other layout
    assert load_policy(copy).digest == policy.digest


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
        ({"drift": {"min_rows": 5}}, "drift.min_rows"),
        ({"drift": {"method": "magic"}}, "drift.method"),
        ({"drift": {"reference": "oldest_cutoff"}}, "drift.reference"),
        ({"drift": {"natural_movement": {"window": 3}}}, "drift.natural_movement.window: Extra inputs"),
        ({"drift": {"natural_movement": {"lookback_months": 0}}}, "drift.natural_movement.lookback_months"),
        ({"history_rows": 5}, "history_rows"),
        ({"retrain": {"min_interval_hours": -1}}, "retrain.min_interval_hours"),
        ({"families": {"recommendation": {"key_features": ["x"]}}}, "families.recommendation"),
        ({"families": {"propensity": {"triggers": {"prediction_drift": True}}}}, "families.propensity.triggers"),
        ({"families": {"churn": {"triggers": {"performance": {"metric": "auc", "max_drop": 2}}}}}, "max_drop"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_field(tmp_path: Path, change: dict, message: str) -> None:
    data = load_policy().model_dump(mode="json")
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            for k, v in value.items():
                if isinstance(v, dict) and isinstance(data[key].get(k), dict):
                    data[key][k].update(v)
                else:
                    data[key][k] = v
        else:
            data[key] = value
    path = tmp_path / "policy.yaml"
    path.write_text(json.dumps(data))
    with pytest.raises(MonitoringPolicyError, match=message.replace("(", r"\(")):
        load_policy(path)
    with pytest.raises(MonitoringPolicyError, match="does not exist"):
        load_policy(tmp_path / "missing.yaml")


# --- triggers ------------------------------------------------------------------------------------------------------


def _evidence(**changes: object) -> Evidence:
    reference, current = _frames(3000, 3000, float(changes.pop("shift", 0.0)))  # type: ignore[arg-type]
    kinds = column_kinds(reference, list(reference.columns))
    drift = dataset_drift(reference, current, kinds)
    score_ref, score_cur = reference["score"].fillna(0), current["score"].fillna(0)
    base: dict[str, object] = {
        "family": "churn",
        "model": "custintel-churn",
        "version": "3",
        "rows": 3000,
        "min_rows": 1000,
        "drift": drift,
        "prediction": column_drift("prediction", score_ref, score_cur, "num"),
        "model_age_days": 10.0,
        "last_retrain": None,
        "new_months": 2,
    }
    base.update(changes)
    return Evidence(**base)  # type: ignore[arg-type]


RULES = FamilyMonitoring(key_features=["amount", "segment"], triggers=Triggers(drifted_share=0.5, max_age_days=90))
RETRAIN = RetrainPolicy(min_interval_hours=24, min_new_months=1)


def test_no_drift_means_no_retrain() -> None:
    decision = decide(RULES, RETRAIN, _evidence(), NOW)
    assert decision.action == "none" and not decision.fired
    assert {c.trigger for c in decision.checks} == {"drifted_share", "key_feature_drift", "prediction_drift", "max_age"}


def test_drift_retrains_naming_the_triggers_and_their_numbers() -> None:
    decision = decide(RULES, RETRAIN, _evidence(shift=0.5), NOW)
    assert decision.action == "retrain"
    fired = {c.trigger: c for c in decision.fired}
    assert {"drifted_share", "key_feature_drift", "prediction_drift"} <= set(fired)
    assert fired["drifted_share"].value >= 0.5 and "inputs drifted" in fired["drifted_share"].detail
    assert "amount (wasserstein" in fired["key_feature_drift"].detail


@pytest.mark.parametrize(
    "trigger", ["drifted_share", "key_feature_drift", "prediction_drift", "max_age", "performance"]
)
def test_each_trigger_fires_alone(trigger: str) -> None:
    off = Triggers(drifted_share=None, key_feature_drift=False, prediction_drift=False, max_age_days=None)
    on = {
        "drifted_share": off.model_copy(update={"drifted_share": 0.3}),
        "key_feature_drift": off.model_copy(update={"key_feature_drift": True}),
        "prediction_drift": off.model_copy(update={"prediction_drift": True}),
        "max_age": off.model_copy(update={"max_age_days": 5.0}),
        "performance": off.model_copy(update={"performance": {"metric": "auc", "max_drop": 0.03}}),
    }[trigger]
    rules = FamilyMonitoring(key_features=["amount"], triggers=Triggers.model_validate(on.model_dump()))
    rng = np.random.default_rng(1)
    y = rng.random(2000) < 0.2
    weak = performance(y, np.where(y, 0.55, 0.45) + rng.normal(0, 0.3, 2000), {"auc": 0.9}, None)
    shift = 0.0 if trigger in ("max_age", "performance") else 0.5
    decision = decide(rules, RETRAIN, _evidence(shift=shift, performance=weak), NOW)
    assert [c.trigger for c in decision.fired] == [trigger]
    assert decision.action == "retrain"


def test_minimum_interval_and_new_data_hold_a_fired_trigger() -> None:
    recent = decide(RULES, RETRAIN, _evidence(shift=0.5, last_retrain=NOW - dt.timedelta(hours=3)), NOW)
    assert recent.action == "hold" and "last retrain 3.0 h ago < min_interval_hours 24" in recent.why
    old = decide(RULES, RETRAIN, _evidence(shift=0.5, last_retrain=NOW - dt.timedelta(hours=30)), NOW)
    assert old.action == "retrain"
    stale = decide(RULES, RETRAIN, _evidence(shift=0.5, new_months=0), NOW)
    assert stale.action == "hold" and "min_new_months 1" in stale.why
    off = decide(RULES, RETRAIN.model_copy(update={"enabled": False}), _evidence(shift=0.5), NOW)
    assert off.action == "hold" and "disabled" in off.why


def test_too_few_rows_abstain_and_a_quality_failure_alerts_instead_of_retraining() -> None:
    few = decide(RULES, RETRAIN, _evidence(shift=0.5, rows=200), NOW)
    assert few.action == "none"
    assert all("no verdict" in c.detail for c in few.checks if c.trigger != "max_age")
    reference, current = _frames(2000, 2000, 0.0)
    current["tickets"] = current["tickets"].where(current.index % 2 == 0)  # half the values lost upstream
    findings, _ = data_quality(
        null_shares(reference, ["tickets", "amount"]), current, {}, {}, DataQualityPolicy(max_null_rate_increase=0.2)
    )
    alert = decide(RULES, RETRAIN, _evidence(shift=0.5, quality=findings), NOW)
    assert alert.action == "alert" and "tickets: 50.0% missing" in alert.why


def test_data_quality_finds_a_schema_break_type_errors_and_null_spikes() -> None:
    reference, current = _frames(1000, 1000, 0.0)
    columns = ["amount", "score", "tickets"]
    findings, figures = data_quality(
        null_shares(reference, columns),
        current.drop(columns=["tickets"]),
        {"amount": 0.0, "score": 0.0, "tickets": 1.0},
        {"amount": 0.2, "score": 0.0},
        DataQualityPolicy(),
    )
    kinds = {(f.check, f.column) for f in findings}
    assert kinds == {("schema", None), ("type_errors", "amount")}
    assert figures["absent_inputs"] == ["tickets"]
    # an empty or tiny window is not judged (a null share of nothing is not a spike)
    none, figures = data_quality(null_shares(reference, columns), current.head(0), {}, {}, DataQualityPolicy())
    assert none == [] and "not judged" in figures["verdict"]


def test_performance_on_labelled_rows_and_its_drop() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(5000) < 0.1
    p = np.clip(0.1 + 0.3 * y + rng.normal(0, 0.1, 5000), 0, 1)
    perf = performance(y, p, {"auc": 0.99}, threshold=0.3)
    assert perf is not None and perf.labelled == 5000
    assert 0.9 < perf.current["auc"] < 0.99 and perf.drop("auc") == pytest.approx(0.99 - perf.current["auc"])
    assert {"brier", "calibration_gap", "precision_at_threshold"} <= set(perf.current)
    assert performance(np.zeros(10), np.ones(10), {}, None) is None  # one class: no AUC


# --- dates ---------------------------------------------------------------------------------------------------------


def test_new_labelled_months_and_the_shifted_training_config() -> None:
    assert new_labelled_months(dt.date(2025, 6, 1), 90, dt.date(2026, 1, 1)) == 4  # Jul..Oct (Oct 1 + 90 < Jan 1)
    assert new_labelled_months(dt.date(2025, 6, 1), 90, dt.date(2025, 9, 1)) == 0
    assert new_labelled_months(None, 90, dt.date(2026, 1, 1)) == 0
    assert add_months(dt.date(2025, 1, 31), 1) == dt.date(2025, 2, 28)
    config = load_training_config(None)
    moved = shifted(config, 4)
    assert moved.churn.split.test_as_of == [add_months(d, 4) for d in config.churn.split.test_as_of]
    assert moved.recommendation.train_as_of == add_months(config.recommendation.train_as_of, 4)
    assert moved.propensity.uplift == config.propensity.uplift  # the experiment's start does not move
    assert shifted(config, 0) is config


# --- the log reader ------------------------------------------------------------------------------------------------


def _write_log(folder: Path, entries: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    day = dt.datetime.fromtimestamp(entries[0]["at"], dt.UTC).strftime("%Y-%m-%d")
    with (folder / f"{day}.jsonl").open("a") as fh:
        for e in entries:
            fh.write(json.dumps(e) + "\n")


def test_the_log_reader_keeps_the_window_and_model_and_counts_misfits(tmp_path: Path) -> None:
    at = NOW.timestamp()
    entries = [
        {"at": at - 60, "model": "m", "version": "2", "customer": "k1", "as_of": "2025-09-01",
         "inputs": {"a": 1.5, "b": "x"}, "answer": {"score": 0.25, "decision": False}},
        {"at": at - 50, "model": "m", "version": "2", "status": "suppressed"},
        {"at": at - 40, "model": "other", "version": "1", "inputs": {"a": 9.0, "b": "z"}, "answer": {"score": 0.9}},
        {"at": at - 30, "model": "m", "version": "2", "customer": "k2", "inputs": {"b": "y", "c": 1},
         "answer": {"score": 0.5, "decision": True}},
        {"at": at - 10 * 86400, "model": "m", "version": "1", "inputs": {"a": 2.0, "b": "x"}, "answer": {"score": 0.1}},
    ]  # fmt: skip
    _write_log(tmp_path, entries)
    answer = {"prediction": "TRY_CAST(answer->>'score' AS DOUBLE)"}
    inputs = {"a": np.dtype(float), "b": np.dtype(object)}
    window = read_served(tmp_path, "m", NOW - dt.timedelta(days=1), NOW, inputs, answer)
    assert window.rows == 2 and window.suppressed == 1
    assert window.frame["prediction"].tolist() == [0.25, 0.5]
    assert window.frame["a"].isna().tolist() == [False, True]
    assert window.absent_inputs == {"a": 0.5, "b": 0.0} and window.unexpected_inputs == ["c"]
    # a value of the wrong type: the fast typed read fails, the per-value cast keeps the row and counts it
    _write_log(tmp_path, [{"at": at - 20, "model": "m", "version": "2", "inputs": {"a": "oops", "b": "x"},
                           "answer": {"score": 0.7}}])  # fmt: skip
    broken = read_served(tmp_path, "m", NOW - dt.timedelta(days=1), NOW, inputs, answer)
    assert broken.rows == 3 and broken.type_errors["a"] == pytest.approx(0.5)
    assert read_served(tmp_path / "none", "m", NOW - dt.timedelta(days=1), NOW, inputs, answer).rows == 0


def test_log_keys_hash_like_the_service() -> None:
    from serving.inference_log import InferenceLog

    log = InferenceLog(Path("/nonexistent-never-written"), "hash", "salt")
    try:
        keys = pd.Series(["c-1", "c-2"])
        assert log_keys("hash", "salt", keys).tolist() == [log.key("c-1"), log.key("c-2")]
        assert log_keys("plain", "salt", keys).tolist() == ["c-1", "c-2"]
    finally:
        log._queue.put(None)


def test_the_decision_page_shows_the_action_triggers_and_columns(tmp_path: Path) -> None:
    evidence = _evidence(shift=0.5)
    decision = decide(RULES, RETRAIN, evidence, NOW)
    summary = {
        "model": "custintel-churn", "version": "3", "stamp": reports.stamp(NOW), "decision": decision.as_dict(),
        "window": {"start": "a", "end": "b"}, "rows": 3000, "suppressed": 2, "reference_rows": 3000,
        "policy_digest": MonitoringPolicy.model_validate({"version": 1, "families": {}}).digest,
        "drift": reports.drift_dict(evidence.drift), "performance": None, "links": {"Evidently": "x.html"},
        "reference": {"reference_as_of": "2025-06-01", "reference_rows": 3000, "served_as_of": "2025-12-01",
                      "gap_months": 6.0, "movement_cutoffs": ["2024-06-01", "2025-06-01"],
                      "notes": ["prediction: ks is not a distance"], "columns": {"amount": {"allowance": 0.2}}},
    }  # fmt: skip
    page, data = reports.write_summary(tmp_path, "s", summary)
    text = page.read_text()
    assert "Decision: retrain" in text and "drifted_share" in text and 'href="x.html"' in text
    assert "3,000 training rows as of 2025-06-01" in text and "6.0 months later" in text
    assert "logged cutoffs 2024-06-01, 2025-06-01" in text and "of which natural movement" in text
    assert "ks is not a distance" in text
    assert json.loads(data.read_text())["decision"]["action"] == "retrain"
