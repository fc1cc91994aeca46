"""The promotion gate's checks and its verdict. Pure: models, rows and numbers in, a decision out.

Five checks, each with the numbers behind it: fairness (the audit's between-group
disparities against the policy's limits), performance (the challenger against the
champion on the challenger's own test rows), calibration (observed rate against mean
prediction over all test rows, against the policy's band), data quality of the training
set, and signature compatibility with the champion. Fairness, performance and
calibration failures may be waived by a named approver where the policy allows;
data-quality and signature failures never are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
import pandas as pd

from governance.audit import Audit, FeatureAudit
from governance.policy import CalibrationRule, DataQualityRule, FamilyPolicy, PerformanceRule
from models import evaluation as ev
from models.result import EvaluationSet

Result = Literal["promoted", "blocked", "waived"]


@dataclass
class Check:
    """One check's outcome and why."""

    name: str  # fairness | performance | calibration | data_quality | signature | consent (informational)
    passed: bool
    details: list[str] = field(default_factory=list)
    waivable: bool = True
    numbers: dict[str, float] = field(default_factory=dict)


@dataclass
class Waiver:
    """A named approver's written acceptance of a failed (waivable) check."""

    approver: str
    reason: str

    def __post_init__(self) -> None:
        if not self.approver.strip():
            raise ValueError("waiver approver: a waiver needs the approver's name")
        if len(self.reason.strip()) < 10:
            raise ValueError("waiver reason: say why the failure is accepted (10 characters or more)")


@dataclass
class Verdict:
    """The gate's answer."""

    result: Result
    reasons: list[str]
    checks: list[Check]
    waiver: Waiver | None = None

    def checks_as_dicts(self) -> list[dict[str, Any]]:
        """JSON-ready checks."""
        return [asdict(c) for c in self.checks]


@dataclass
class Scored:
    """A model's answers on an evaluation set."""

    score: np.ndarray  # classifier: P(positive); uplift: the effect; ranking: hit (0/1) per customer
    lists: list[list[str]] | None = None  # ranking: the top-k per customer
    fallback: np.ndarray | None = None  # ranking: served by popularity


def score_evaluation(model: Any, evaluation: EvaluationSet) -> Scored:
    """Run a loaded pyfunc model over the evaluation rows (the same way serving will call it)."""
    frame = evaluation.frame
    if evaluation.kind == "ranking":
        # the signature's input only: MLflow drops (and warns about) columns it does not declare
        request = frame[["customer_key"]].astype(object).where(frame[["customer_key"]].notna(), None)
        out = pd.DataFrame(model.predict(request))
        grouped = out.sort_values(["customer_key", "rank"]).groupby("customer_key")
        lists = grouped["product_id"].agg(list).to_dict()
        sources = grouped["source"].first().to_dict()
        keys = frame["customer_key"].astype(str).tolist()
        ranked = [list(lists.get(k, []))[: evaluation.k] for k in keys]
        relevant = [set(r) for r in frame["relevant"]]
        hits = np.array([bool(set(r) & rel) for r, rel in zip(ranked, relevant, strict=True)], dtype=float)
        fallback = np.array([sources.get(k) == "popularity" for k in keys], dtype=float)
        return Scored(hits, ranked, fallback)
    inputs = frame[evaluation.features]
    ints = [c for c in inputs.columns if pd.api.types.is_integer_dtype(inputs[c])]
    raw = np.asarray(model.predict(inputs.astype(dict.fromkeys(ints, "float64"))))  # as the signature declares
    score = raw[:, -1] if raw.ndim == 2 else raw.ravel()
    return Scored(np.asarray(score, dtype=float))


def performance(evaluation: EvaluationSet, scored: Scored, metric: str) -> float:
    """The policy's performance metric of one model on the evaluation rows."""
    frame = evaluation.frame
    if evaluation.kind == "ranking":
        assert scored.lists is not None
        keys = frame["customer_key"].astype(str).tolist()
        relevant = {k: set(r) for k, r in zip(keys, frame["relevant"], strict=True)}
        lists = dict(zip(keys, scored.lists, strict=True))
        m = ev.ranking_metrics(lists, relevant, evaluation.k, max(evaluation.items, 1))
        return float(m[f"{metric.removesuffix('_at_k')}_at_{evaluation.k}"])
    assert evaluation.label is not None
    y = frame[evaluation.label].to_numpy(dtype=float)
    if evaluation.kind == "uplift":
        assert evaluation.treatment is not None
        return ev.qini_coefficient(y, frame[evaluation.treatment].to_numpy(bool), scored.score)
    w = frame[evaluation.weight].to_numpy(dtype=float) if evaluation.weight else None
    return float(ev.classification_metrics(y, scored.score, w)[metric])


def selected_rows(score: np.ndarray, policy: FamilyPolicy, threshold: float | None) -> tuple[np.ndarray, str]:
    """Who the model selects under the policy, and that rule in words."""
    if policy.selection == "threshold" and threshold is not None:
        return score >= threshold, f"score >= {threshold:.4f} (the recorded capacity threshold)"
    cut = float(np.quantile(score, 1 - policy.top_share)) if len(score) else 0.0
    return score >= cut, f"the top {policy.top_share:.0%} of scores (>= {cut:.4f})"


def check_fairness(audit: Audit, policy: FamilyPolicy, confidence: float) -> Check:
    """Each between-group summary against its limit; the reason names the feature, metric and groups.

    A limit is breached only when the value passes it by more than sampling noise: by
    more than z standard errors, z the one-sided normal quantile of `confidence`.
    """
    z = float(NormalDist().inv_cdf(confidence))
    details, numbers = [], {}
    passed = True
    for feature in audit.features:
        for metric, limit in policy.fairness.items():
            value = feature.summary.get(metric, float("nan"))
            noise = feature.noise.get(metric, 0.0)
            numbers[f"{feature.feature}.{metric}"] = value
            if not np.isfinite(value):
                details.append(f"{metric} by {feature.feature}: not computable (fewer than two gated groups)")
                continue
            margin = z * noise if np.isfinite(noise) else 0.0
            breach = limit.breached(value, margin)
            if breach:
                passed = False
                details.append(
                    f"{metric} by {feature.feature} = {breach} beyond noise (+/-{margin:.3f}) "
                    f"({_groups(metric, feature)})"
                )
    judged = sum(1 for v in numbers.values() if np.isfinite(v))
    features = ", ".join(f.feature for f in audit.features)
    if judged == 0:
        passed = False
        details = [d for d in details if "not computable" not in d]  # every metric of every feature: one line says it
        details.insert(
            0,
            f"nothing could be audited: no feature among {features} has two gated groups; "
            + waiver_hint(policy, audit.min_group_size),
        )
    elif passed:
        details.insert(0, f"{judged} limits met (by {features})")
    small = [
        f"{f.feature}={g}" for f in audit.features for g, row in f.groups.iterrows() if not row["gated"]
    ]  # fmt: skip
    if small:
        details.append(f"reported, not gated (under {audit.min_group_size} rows or unknown): {', '.join(small)}")
    return Check("fairness", passed, details, True, numbers)


def waiver_hint(policy: FamilyPolicy, min_group_size: int) -> str:
    """How an unaudited model can still be promoted: the waiver the policy allows, or the setting that allows one."""
    fix = f"groups need {min_group_size} test rows with a known attribute (min_group_size in the governance policy)"
    if policy.on_failure == "waiver":
        return f"{fix}, or a named approver waives it: `custintel promote <model> --approver NAME --reason TEXT`"
    return (
        f"{fix}; this family's policy has on_failure: block, so no waiver: set on_failure: waiver in a copy of the "
        "policy (CUSTINTEL_GOVERNANCE_POLICY), then `custintel promote <model> --approver NAME --reason TEXT`"
    )


def _groups(metric: str, feature: FeatureAudit) -> str:
    """The groups at either end of a metric; for calibration with their predicted and observed rates."""
    lo, lv, hi, hv = feature.extremes.get(metric, ("", float("nan"), "", float("nan")))
    if metric == "calibration_ratio":
        predicted, observed = feature.groups["mean_score"].astype(float), feature.groups["observed_rate"].astype(float)

        def rates(group: str, ratio: float) -> str:
            return f"group {group}: predicted {predicted[group]:.3f}, observed {observed[group]:.3f}, O/E {ratio:.2f}"

        return f"{rates(lo, lv)} vs {rates(hi, hv)}"
    return f"group {lo} {lv:.3f} vs group {hi} {hv:.3f}"


def check_performance(challenger: float, champion: float | None, rule: PerformanceRule) -> Check:
    """No worse than the champion on the same rows, beyond the tolerance (a first model passes)."""
    numbers = {f"challenger_{rule.metric}": challenger}
    if champion is None:
        return Check(
            "performance", True, [f"{rule.metric} {challenger:.4f}; no other champion to compare with"], True, numbers
        )
    numbers[f"champion_{rule.metric}"] = champion
    passed = challenger >= champion - rule.tolerance
    verb = "within" if passed else "worse than"
    return Check(
        "performance",
        passed,
        [f"{rule.metric} {challenger:.4f} vs champion {champion:.4f}: {verb} the tolerance {rule.tolerance:g}"],
        True,
        numbers,
    )


def check_calibration(evaluation: EvaluationSet, scored: Scored, rules: FamilyPolicy, confidence: float) -> Check:
    """Observed rate against mean prediction on all the challenger's test rows, beyond sampling noise.

    A model off by the same factor for everyone is a performance problem (its probabilities
    mean less than they say), not a disparity: it fails here, waivably, and the fairness
    audit compares the groups with that factor taken out. The noise is that of a calibrated
    model on the same rows (see `models.evaluation.calibration_in_the_large`).
    """
    if evaluation.kind != "classifier" or evaluation.label is None:
        return Check("calibration", True, [f"not judged: a {evaluation.kind} model's scores are not probabilities"])
    frame = evaluation.frame
    y = frame[evaluation.label].to_numpy(dtype=float)
    weight = frame[evaluation.weight].to_numpy(dtype=float) if evaluation.weight else None
    c = ev.calibration_in_the_large(y, scored.score, weight)
    numbers = {
        "rows": float(c.rows), "observed_rate": c.observed, "mean_prediction": c.predicted,
        "observed_to_predicted": c.ratio, "observed_to_predicted_se": c.se_ratio, "gap": c.gap, "gap_se": c.se_gap,
    }  # fmt: skip
    summary = (
        f"observed rate {c.observed:.4f}, mean prediction {c.predicted:.4f} over {c.rows:,} test rows "
        f"(observed/predicted {c.ratio:.3f})"
    )
    rule: CalibrationRule | None = rules.calibration
    if rule is None:
        return Check("calibration", True, [f"{summary}; the policy sets no calibration limit"], True, numbers)
    z = float(NormalDist().inv_cdf(confidence))
    problems = []
    if rule.observed_to_predicted is not None and not np.isfinite(c.ratio):
        problems.append(f"observed/predicted is not computable (the mean prediction is 0): {summary}")
    elif rule.observed_to_predicted is not None:
        margin = z * c.se_ratio
        breach = rule.observed_to_predicted.breached(c.ratio, margin)
        if breach:
            problems.append(f"observed/predicted = {breach} beyond noise (+/-{margin:.3f}): {summary}")
    if rule.max_gap is not None and abs(c.gap) - z * c.se_gap > rule.max_gap:
        problems.append(
            f"|observed - predicted| = {abs(c.gap):.4f} > {rule.max_gap:g} beyond noise (+/-{z * c.se_gap:.4f}): "
            f"{summary}"
        )
    return Check("calibration", not problems, problems or [f"{summary}: within the policy's limits"], True, numbers)


def check_data_quality(profile: Mapping[str, Any], rule: DataQualityRule) -> Check:
    """The training set's profile (logged with the run) against the policy."""
    if not profile:
        return Check("data_quality", False, ["the run logged no training-set profile (data_quality.json)"], False)
    problems = []
    rows, positives = float(profile.get("rows", 0)), profile.get("positives")
    if rows < rule.min_rows:
        problems.append(f"training rows {rows:,.0f} < {rule.min_rows:,}")
    if positives is not None and float(positives) < rule.min_positives:
        problems.append(f"positive rows {float(positives):,.0f} < {rule.min_positives:,}")
    missing = float(profile.get("max_missing_share", 0.0))
    if missing > rule.max_missing_share:
        problems.append(
            f"column {profile.get('max_missing_column')} missing in {missing:.1%} > {rule.max_missing_share:.0%}"
        )
    duplicates = float(profile.get("duplicate_share", 0.0))
    if duplicates > rule.max_duplicate_share:
        problems.append(f"{duplicates:.2%} duplicate (id, as-of) rows > {rule.max_duplicate_share:.2%}")
    numbers = {k: float(v) for k, v in profile.items() if isinstance(v, int | float)}
    summary = f"{rows:,.0f} rows" + (f", {float(positives):,.0f} positive" if positives is not None else "")
    return Check("data_quality", not problems, problems or [summary], False, numbers)


def check_signature(
    challenger: Sequence[tuple[str, str]] | None,
    champion: Sequence[tuple[str, str]] | None,
    disallowed: Sequence[str],
) -> Check:
    """The challenger must take what the champion takes (serving sends the same fields) and no sensitive input.

    Each signature is a list of (column, type).
    """
    if challenger is None:
        return Check("signature", False, ["the challenger has no input signature"], False)
    problems = [f"uses the sensitive attribute {c!r} as an input" for c, _ in challenger if c in set(disallowed)]
    if champion is not None:
        theirs = dict(champion)
        for column, kind in challenger:
            if column not in theirs:
                problems.append(f"needs input {column!r}, which the champion's callers do not send")
            elif theirs[column] != kind:
                problems.append(f"input {column!r} is {kind}, the champion's is {theirs[column]}")
    ok = f"{len(challenger)} inputs" + (", compatible with the champion's" if champion is not None else "")
    return Check("signature", not problems, problems or [ok], False)


def check_consent(record: Mapping[str, Any] | None) -> Check:
    """Informational: how many rows and customers the run left out for consent (never fails; the run applied it)."""
    if not record:
        return Check("consent", True, ["not recorded: the run predates consent in training"], True)
    numbers = {} if not record.get("applied") else {
        "excluded_rows": float(record.get("excluded_rows", 0)),
        "excluded_customers": float(record.get("excluded_customers", 0)),
        **{f"excluded_rows_{k}": float(v) for k, v in dict(record.get("rows", {})).items()},
    }  # fmt: skip
    return Check("consent", True, [f"informational: {record.get('summary', 'no summary recorded')}"], True, numbers)


def decide(checks: Sequence[Check], on_failure: str, waiver: Waiver | None) -> Verdict:
    """Promote when every check passes; else block, unless a waiver covers every failure and the policy allows it."""
    failed = [c for c in checks if not c.passed]
    reasons = [f"{c.name}: {d}" for c in failed for d in c.details if "not gated" not in d]
    if not failed:
        return Verdict("promoted", [], list(checks))
    if waiver is None:
        return Verdict("blocked", reasons, list(checks))
    if on_failure != "waiver":
        return Verdict("blocked", [*reasons, "the policy does not allow waivers for this family"], list(checks))
    hard = [c.name for c in failed if not c.waivable]
    if hard:
        return Verdict("blocked", [*reasons, f"{', '.join(hard)} cannot be waived"], list(checks))
    return Verdict("waived", reasons, list(checks), waiver)
