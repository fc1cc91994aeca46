"""The governance policy, the bias audit's numbers, the gate's checks and verdicts, and the model card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from governance import audit as fair
from governance import cards, gate
from governance.policy import GovernancePolicy, Limit, PerformanceRule, PolicyError, load_policy
from models.result import EvaluationSet


def test_the_shipped_policy_loads_and_covers_every_family() -> None:
    policy = load_policy()
    assert set(policy.families) == {"churn", "propensity", "uplift", "recommendation"}
    assert len(policy.digest) == 64


def _policy_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


BASE = """
version: "7"
owner: someone
sensitive_features:
  gender: {source: golden_records, column: gender}
families:
  churn:
    sensitive_features: [gender]
    fairness: {calibration_ratio: {min: 0.8}}
    performance: {metric: auc}
    intended_use: ranking customers by churn risk
"""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("calibration_ratio: {min: 0.8}", "colour_gap: {max: 0.05}"), "unknown metric(s) ['colour_gap']"),
        (("sensitive_features: [gender]", "sensitive_features: [gender, religion]"), "unknown sensitive feature"),
        (("{min: 0.8}", "{}"), "a limit needs `min`, `max` or both"),
        (("{min: 0.8}", "{min: 0.5, max: 0.1}"), "min 0.5 is above max 0.1"),
        (("calibration_ratio: {min: 0.8}", "calibration_gap: {max: 0.02}"), "Rename it to calibration_ratio"),
        (("metric: auc", "metric: accuracy"), "unknown performance metric 'accuracy'"),
        (("owner: someone", "owner: someone\nsurprise: 1"), "surprise"),
        (("column: gender}", "column: gender, age_bands: [50, 30]}"), "strictly increasing"),
    ],
)
def test_policy_errors_name_the_field_and_the_reason(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    with pytest.raises(PolicyError, match="policy.yaml") as info:
        load_policy(_policy_yaml(tmp_path, BASE.replace(*change)))
    assert message in str(info.value)


def test_the_policy_digest_depends_on_the_rules_not_the_layout(tmp_path: Path) -> None:
    a = load_policy(_policy_yaml(tmp_path, BASE))
    reordered = BASE.replace('version: "7"\nowner: someone', 'owner: someone\nversion: "7"  # same rules')
    b = load_policy(_policy_yaml(tmp_path, reordered))
    c = load_policy(_policy_yaml(tmp_path, BASE.replace("min: 0.8", "min: 0.85")))
    assert a.digest == b.digest != c.digest
    with pytest.raises(PolicyError, match="no rules for the 'uplift' family"):
        a.family("uplift")


def _tiny_audit(min_group_size: int = 1) -> fair.Audit:
    y = np.array([1, 1, 0, 0, 1, 0, 0, 0])
    selected = np.array([1, 0, 1, 0, 1, 1, 0, 0])
    score = np.array([0.9, 0.4, 0.6, 0.1, 0.8, 0.7, 0.2, 0.1])
    groups = pd.DataFrame({"g": ["A"] * 4 + ["B"] * 4})
    return fair.audit_classifier("churn", y, score, selected, groups, min_group_size, "hand-made")


def test_the_audit_matches_a_hand_computed_case() -> None:
    audit = _tiny_audit()
    table = audit.features[0].groups
    a, b = table.loc["A"], table.loc["B"]
    # A: y 1 1 0 0, selected 1 0 1 0, score .9 .4 .6 .1 -> AUC 3/4
    assert (a["selection_rate"], a["tpr"], a["fpr"], a["precision"], a["auc"]) == pytest.approx(
        (0.5, 0.5, 0.5, 0.5, 0.75)
    )
    # B: y 1 0 0 0, selected 1 1 0 0, score .8 .7 .2 .1 -> AUC 1
    assert (b["selection_rate"], b["tpr"], b["fpr"], b["precision"], b["auc"]) == pytest.approx((0.5, 1, 1 / 3, 0.5, 1))
    assert (b["mean_score"], b["observed_rate"], b["calibration_gap"]) == pytest.approx((0.45, 0.25, -0.2))
    assert (a["observed_to_predicted"], b["observed_to_predicted"]) == pytest.approx((1.0, 0.25 / 0.45))
    summary = audit.features[0].summary
    assert summary["demographic_parity_difference"] == pytest.approx(0)
    assert summary["demographic_parity_ratio"] == pytest.approx(1)
    assert summary["tpr_difference"] == pytest.approx(0.5)
    assert summary["fpr_difference"] == pytest.approx(1 / 6)
    assert summary["equalized_odds_difference"] == pytest.approx(0.5)
    assert summary["auc_difference"] == pytest.approx(0.25)
    assert summary["calibration_ratio"] == pytest.approx(0.25 / 0.45)  # B's O/E over A's
    assert audit.features[0].extremes["calibration_ratio"][::2] == ("B", "A")
    assert audit.overall["observed_to_predicted"] == pytest.approx(0.375 / 0.475)
    assert audit.features[0].extremes["tpr_difference"][0] == "A"


def test_small_and_unknown_groups_are_reported_but_not_gated() -> None:
    y = np.array([1, 0] * 10 + [1, 0])
    groups = pd.DataFrame({"g": ["A"] * 10 + ["B"] * 10 + ["C", "unknown"]})
    audit = fair.audit_classifier("churn", y, np.linspace(0, 1, 22), y, groups, 5, "rule")
    table = audit.features[0].groups
    assert table["gated"].to_dict() == {"A": True, "B": True, "C": False, "unknown": False}
    both = fair.with_intersections(pd.DataFrame({"a": ["x", "unknown"], "b": ["1", "2"]}), ["a"], [["a", "b"]])
    assert both["a×b"].tolist() == ["x|1", "unknown|2"]
    assert not fair._gated(pd.DataFrame({"rows": [99]}, index=["unknown|2"]), 1).iloc[0]


def test_sensitive_attributes_come_from_golden_records_and_features_with_age_at_the_cutoff() -> None:
    policy = load_policy()
    rows = pd.DataFrame(
        {
            "customer_key": ["a", "b", "c"],
            "as_of": pd.to_datetime(["2025-06-01"] * 3),
            "region": ["West", None, "South"],
        }
    )
    golden = pd.DataFrame(
        {"customer_key": ["a", "b"], "gender": ["F", None], "birth_date": ["2000-06-02", "1960-01-01"]}
    )
    out = fair.sensitive_attributes(rows, golden, policy.sensitive_features, snapshot="as_of")
    assert out["gender"].tolist() == ["F", "unknown", "unknown"]
    assert out["age_band"].tolist() == ["<25", "65+", "unknown"]  # 24.99 years on the day
    assert out["region"].tolist() == ["West", "unknown", "South"]
    own_table = fair.sensitive_attributes(rows.drop(columns="region"), golden.iloc[:0], policy.sensitive_features)
    assert set(own_table.to_numpy().ravel()) == {"unknown"}


def test_the_fairness_check_names_the_feature_metric_and_groups_and_allows_for_noise() -> None:
    rules = load_policy(None).family("churn").model_copy(update={"fairness": {"calibration_ratio": Limit(min=0.8)}})
    check = gate.check_fairness(_tiny_audit(), rules, confidence=0.5)  # 0.5: the raw value decides
    assert not check.passed
    assert "calibration_ratio by g = 0.556 < 0.8" in check.details[0]
    assert "group B: predicted 0.450, observed 0.250, O/E 0.56 vs group A: predicted 0.500" in check.details[0]
    # four rows a group: the O/E's standard error (0.5 or more) covers the disparity at 95%
    assert gate.check_fairness(_tiny_audit(), rules, confidence=0.95).passed
    # every group too small to gate: nothing was audited, which fails (a reviewer may waive it)
    unaudited = gate.check_fairness(_tiny_audit(min_group_size=100), rules, confidence=0.95)
    assert not unaudited.passed and unaudited.waivable and "nothing could be audited" in unaudited.details[0]


def test_performance_data_quality_and_signature_checks() -> None:
    rule = PerformanceRule(metric="auc", tolerance=0.01)
    assert gate.check_performance(0.70, None, rule).passed
    assert gate.check_performance(0.695, 0.70, rule).passed
    worse = gate.check_performance(0.68, 0.70, rule)
    assert not worse.passed and "worse than the tolerance" in worse.details[0]
    dq = load_policy().family("churn").data_quality
    assert gate.check_data_quality({"rows": 5000, "positives": 300, "max_missing_share": 0.1}, dq).passed
    bad = gate.check_data_quality({"rows": 10, "positives": 1, "max_missing_share": 1.0, "max_missing_column": "x"}, dq)
    assert not bad.passed and not bad.waivable and len(bad.details) == 3
    assert not gate.check_data_quality({}, dq).passed
    champion = [("tenure", "double"), ("plan", "string")]
    assert gate.check_signature([("tenure", "double")], champion, ["gender"]).passed
    drift = gate.check_signature([("tenure", "long"), ("new", "double"), ("gender", "string")], champion, ["gender"])
    assert not drift.passed and len(drift.details) == 4  # sensitive input, changed type, two new inputs
    assert not gate.check_signature(None, champion, []).passed


def test_the_verdict_blocks_waives_or_promotes() -> None:
    ok = gate.Check("fairness", True)
    unfair = gate.Check("fairness", False, ["calibration_ratio by gender = 0.5 < 0.8"])
    broken = gate.Check("signature", False, ["needs input 'x'"], waivable=False)
    waiver = gate.Waiver("Dana Reviewer", "accepted for the pilot; re-audit after retraining")
    assert gate.decide([ok], "block", None).result == "promoted"
    blocked = gate.decide([ok, unfair], "waiver", None)
    assert blocked.result == "blocked" and blocked.reasons == ["fairness: calibration_ratio by gender = 0.5 < 0.8"]
    assert gate.decide([unfair], "waiver", waiver).result == "waived"
    assert "does not allow waivers" in gate.decide([unfair], "block", waiver).reasons[-1]
    assert "signature cannot be waived" in gate.decide([unfair, broken], "waiver", waiver).reasons[-1]
    with pytest.raises(ValueError, match="waiver reason"):
        gate.Waiver("Dana", "ok")


class _Ranker:
    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        rows = []
        for key in frame["customer_key"]:
            items, source = (["p1", "p2"], "als") if key != "c3" else (["p9", "p8"], "popularity")
            rows += [
                {"customer_key": key, "rank": r, "product_id": i, "source": source} for r, i in enumerate(items, 1)
            ]
        return pd.DataFrame(rows)


def test_a_recommender_is_scored_and_audited_per_group() -> None:
    evaluation = EvaluationSet(
        pd.DataFrame(
            {"customer_key": ["c1", "c2", "c3"], "segment": ["s", "s", None], "relevant": [["p1"], ["p5"], ["p9"]]}
        ),
        "ranking",
        ["customer_key", "segment"],
        k=2,
        items=10,
    )
    scored = gate.score_evaluation(_Ranker(), evaluation)
    assert scored.score.tolist() == [1, 0, 1] and scored.fallback is not None and scored.fallback.tolist() == [0, 0, 1]
    assert gate.performance(evaluation, scored, "recall_at_k") == pytest.approx(2 / 3)
    assert scored.lists is not None
    audit = fair.audit_recommender(
        scored.score, scored.fallback, scored.lists, pd.DataFrame({"g": ["a", "a", "b"]}), 10, 1
    )
    table = audit.features[0].groups
    assert table.loc["a", "hit_rate"] == pytest.approx(0.5) and table.loc["b", "fallback_share"] == 1
    assert table.loc["a", "coverage"] == pytest.approx(0.2)  # one customer drawn per group: p1, p2 of 10 products
    assert audit.features[0].summary["hit_rate_ratio"] == pytest.approx(0.5)


def test_a_card_is_built_from_the_numbers_it_is_given() -> None:
    audit = _tiny_audit()
    verdict = gate.decide([gate.Check("fairness", False, ["calibration_ratio by g = 0.556 < 0.8"])], "block", None)
    evaluation = EvaluationSet(pd.DataFrame({"y": [1, 1, 0, 0, 1, 0, 0, 0], "x": range(8)}), "classifier", ["x"], "y")
    scored = gate.Scored(np.array([0.9, 0.4, 0.6, 0.1, 0.8, 0.7, 0.2, 0.1]))
    metrics = cards.bootstrap_metrics(evaluation, scored, ["auc", "brier"], reps=50)
    value, low, high = metrics["auc"]
    assert value == pytest.approx(13 / 15) and low <= value <= high
    ctx = cards.CardContext(
        name="custintel-churn", version="3", family="churn", run_id="r1", owner="team", policy_version="1",
        policy_hash="abc", intended_use="rank churn risk", out_of_scope=["pricing"], caveats=["c"],
        decided_at="2026-11-23T07:00:00+00:00", actor="me", decision_id="d1",
        training={"training rows": "1,000"}, metrics=metrics, threshold={"threshold": 0.12, "rule": "capacity"},
        audit=audit, verdict=verdict, champion_before="2", champion_after="2",
    )  # fmt: skip
    markdown, page = cards.render_markdown(ctx), cards.render_html(ctx)
    for text in ("custintel-churn v3", "rank churn risk", "pricing", "blocked", "calibration_ratio by g", "0.12"):
        assert text in markdown and text in page
    assert f"{value:.4f}" in markdown and "fairness_g.png" in page
    files = cards.card_files(ctx, cards.fairness_figures(audit), lambda: "{}")
    assert files["fairness_g.png"][:4] == b"\x89PNG"


def test_the_policy_model_is_strict() -> None:
    with pytest.raises(ValueError, match="families.churn"):
        GovernancePolicy.model_validate(
            {"version": "1", "owner": "o", "sensitive_features": {"g": {"source": "features", "column": "g"}},
             "families": {"churn": {"sensitive_features": ["g"], "intersections": [["g"]],
                                    "fairness": {"auc_difference": {"max": 0.1}}, "performance": {"metric": "auc"},
                                    "intended_use": "x"}}}
        )  # fmt: skip
