"""The promotion gate's logic: gather a challenger, judge it against the policy and the champion, record it.

`gather` reads everything (registry, run artifacts, golden records) and loads the two
models; `judge` is pure (scores, audit, checks, verdict, card); `record` writes (aliases,
version tags, the card, the decision log); `rollback` moves the champion back. The flow
`flows.promote` runs gather, judge and record under the model's lock, as Prefect tasks or as
they are.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from custintel.settings import Settings
from governance import audit as fair
from governance import cards, erasure_notes, gate, store
from governance.policy import GovernancePolicy, load_policy
from models.registry import CHALLENGER, Registry
from models.result import EvaluationSet

CARD_METRICS = {"classifier": ["auc", "pr_auc", "brier"], "uplift": ["qini"], "ranking": ["ndcg_at_k", "recall_at_k"]}


@dataclass
class Candidate:
    """What the gate needs about one challenger version, read from the registry and its run."""

    name: str
    version: str
    family: str
    run_id: str
    evaluation: EvaluationSet
    data_quality: dict[str, Any]
    threshold: dict[str, Any] | None
    training: dict[str, Any]
    model: Any
    inputs: list[tuple[str, str]] | None
    champion_version: str | None
    champion: Any = None
    champion_inputs: list[tuple[str, str]] | None = None
    golden: Any = None
    consent: dict[str, Any] | None = None  # what the run left out for consent (its lineage record)


@dataclass
class Judgement:
    """The gate's verdict on a candidate, with the card that records it."""

    verdict: gate.Verdict
    decision: dict[str, Any]
    card: dict[str, bytes | str] = field(default_factory=dict)


def gather(settings: Settings, model: str, version: str | None) -> Candidate:
    """Read the challenger (the `challenger` alias unless a version is named) and the current champion."""
    registry = Registry(settings)
    name = store.resolve_model(registry, model)
    version = version or registry.alias_version(name, CHALLENGER)
    if version is None:
        raise store.GateError(f"{name} has no @challenger: train first, or name a version")
    mv = registry.version(name, version)
    if not mv.run_id:
        raise store.GateError(f"{name} v{version} was not logged from a run: nothing to audit it on")
    run_id: str = mv.run_id
    run = registry.run(run_id)
    family = mv.tags.get("custintel.family") or run.tags.get("custintel.family", "")
    evaluation = registry.read_evaluation_set(run_id)
    if evaluation is None:
        raise store.GateError(f"{name} v{version}: its run {mv.run_id} logged no evaluation set; retrain it")
    metrics = run.metrics
    info = registry.read_run_json(run_id, "info.json")
    threshold = None
    if "threshold" in metrics:
        threshold = {
            "threshold": round(metrics["threshold"], 6),
            "rule": info.get("threshold", {}).get("rule") if isinstance(info.get("threshold"), dict) else
            "the K-th highest calibrated score of the newest validation cutoff, K = the weekly call capacity",
            "weekly_capacity": int(metrics.get("weekly_capacity", 0)),
        }  # fmt: skip
    lineage = registry.read_run_json(run_id, "lineage/lineage.json")
    quality = registry.read_run_json(run_id, "data_quality.json")
    training = {
        **source_lines(lineage),
        **label_lines(lineage),
        "training rows": f"{quality.get('rows', float('nan')):,.0f}",
        "positives": f"{quality.get('positives', float('nan')):,.0f}",
        "test rows": f"{len(evaluation.frame):,}",
        "datasets": ", ".join(f"{n} (digest {d})" for n, d in run.datasets) or "none logged",
        "git commit": run.tags.get("mlflow.source.git.commit", "unknown"),
    }
    consent = lineage.get("consent") if isinstance(lineage.get("consent"), dict) else None
    training["consent"] = str(consent["summary"]) if consent else "not recorded (the run predates consent in training)"
    erasure = erasure_notes.erasure_line(mv.tags)
    if erasure:
        training["erasure"] = erasure
    calibration = info.get("calibration")
    if isinstance(calibration, dict) and calibration.get("summary"):
        training["calibration"] = str(calibration["summary"])
    champion_version = registry.alias_version(name, store.CHAMPION)
    candidate = Candidate(
        name, version, family, run_id, evaluation, quality, threshold, training,
        registry.load_model(name, version), registry.model_inputs(name, version), champion_version, consent=consent,
    )  # fmt: skip
    if champion_version is not None and champion_version != version:
        candidate.champion = registry.load_model(name, champion_version)
        candidate.champion_inputs = registry.model_inputs(name, champion_version)
    candidate.golden = store.read_golden_records(settings)
    return candidate


def source_lines(lineage: dict[str, Any]) -> dict[str, str]:
    """What the run read, as the card states it: the feature sets and cutoffs, or the user's file and its split."""
    sets = lineage.get("feature_sets")
    if sets:
        return {"feature sets": ", ".join(f"{k} (digest {v.get('digest')})" for k, v in sets.items()),
                "cutoffs (as of)": ", ".join(lineage.get("as_of", [])) or "n/a"}  # fmt: skip
    lines = {"source file": str(lineage.get("source", "a user's table"))}
    split = lineage.get("split")
    if isinstance(split, dict):
        sizes = ", ".join(f"{k} {v:,}" for k, v in split.get("sizes", {}).items())
        lines["split"] = f"{split.get('method')} (seed {split.get('seed')}; rows: {sizes})"
    return lines


def label_lines(lineage: dict[str, Any]) -> dict[str, str]:
    """The run's label and its horizon, as the card's training data states them (empty for runs without one)."""
    label = lineage.get("label")
    if not isinstance(label, dict):
        return {}
    horizon = label.get("horizon_days")
    lines = {"label": str(label.get("definition") or label.get("column")),
             "label horizon": f"{horizon} days" if horizon else "not given"}  # fmt: skip
    if lineage.get("sha256"):
        lines["file sha256"] = str(lineage["sha256"])
    return lines


def judge(candidate: Candidate, policy: GovernancePolicy, waiver: gate.Waiver | None, actor: str) -> Judgement:
    """Audit, check and decide (no I/O); the card is built here from what was gathered."""
    rules = policy.family(candidate.family)
    ev_set = candidate.evaluation
    scored = gate.score_evaluation(candidate.model, ev_set)
    definitions = {n: policy.sensitive_features[n] for n in {*rules.sensitive_features, *sum(rules.intersections, [])}}
    attributes = fair.sensitive_attributes(
        ev_set.frame, candidate.golden, definitions, ev_set.id_column, ev_set.snapshot
    )
    audited = fair.with_intersections(attributes, rules.sensitive_features, rules.intersections)
    if ev_set.kind == "ranking":
        assert scored.lists is not None and scored.fallback is not None
        audit = fair.audit_recommender(
            scored.score, scored.fallback, scored.lists, audited, ev_set.items, policy.min_group_size
        )
    else:
        threshold = candidate.threshold["threshold"] if candidate.threshold else None
        selected, rule = gate.selected_rows(scored.score, rules, threshold)
        label = ev_set.frame[ev_set.label].to_numpy(dtype=float) if ev_set.label else np.zeros(len(ev_set.frame))
        weight = ev_set.frame[ev_set.weight].to_numpy(dtype=float) if ev_set.weight else None
        audit = fair.audit_classifier(
            candidate.family, label, scored.score, selected, audited, policy.min_group_size, rule, weight,
            outcome_known=ev_set.kind == "classifier",
        )  # fmt: skip
    metric = rules.performance.metric
    challenger_score = gate.performance(ev_set, scored, metric)
    champion_score = None
    if candidate.champion is not None:
        champion_score = gate.performance(ev_set, gate.score_evaluation(candidate.champion, ev_set), metric)
    disallowed = [spec.column for spec in policy.sensitive_features.values() if not spec.model_input_allowed]
    checks = [
        gate.check_fairness(audit, rules, policy.confidence),
        gate.check_calibration(ev_set, scored, rules, policy.confidence),
        gate.check_performance(challenger_score, champion_score, rules.performance),
        gate.check_data_quality(candidate.data_quality, rules.data_quality),
        gate.check_signature(candidate.inputs, candidate.champion_inputs, disallowed),
        gate.check_consent(candidate.consent),
    ]
    verdict = gate.decide(checks, rules.on_failure, waiver)
    moves = verdict.result in ("promoted", "waived")
    decision_id, decided_at = uuid.uuid4().hex, dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    champion_after = candidate.version if moves else candidate.champion_version
    decision: dict[str, Any] = {
        "id": decision_id,
        "time": decided_at,
        "actor": actor,
        "action": "promote",
        "model": candidate.name,
        "version": candidate.version,
        "family": candidate.family,
        "run_id": candidate.run_id,
        "result": verdict.result,
        "reasons": verdict.reasons,
        "checks": verdict.checks_as_dicts(),
        "policy_hash": policy.digest,
        "policy_version": policy.version,
        "waiver": None
        if verdict.waiver is None
        else {"approver": verdict.waiver.approver, "reason": verdict.waiver.reason},
        "champion_before": candidate.champion_version,
        "champion_after": champion_after,
        "metrics": {metric: challenger_score, f"champion_{metric}": champion_score},
        "card": f"cards/{candidate.name}/{candidate.version}/card.html",
    }
    context = cards.CardContext(
        name=candidate.name, version=candidate.version, family=candidate.family, run_id=candidate.run_id,
        owner=policy.owner, policy_version=policy.version, policy_hash=policy.digest,
        intended_use=cards.intended_use_for(rules.intended_use, candidate.training.get("label horizon")),
        out_of_scope=rules.out_of_scope, caveats=rules.caveats,
        decided_at=decided_at, actor=actor, decision_id=decision_id, training=candidate.training,
        metrics=cards.bootstrap_metrics(ev_set, scored, CARD_METRICS[ev_set.kind]),
        threshold=candidate.threshold, audit=audit, verdict=verdict,
        champion_before=candidate.champion_version, champion_after=champion_after,
    )  # fmt: skip
    files = cards.card_files(context, cards.fairness_figures(audit), lambda: json.dumps(audit.to_dict(), indent=2))
    return Judgement(verdict, decision, files)


def record(settings: Settings, candidate: Candidate, judgement: Judgement) -> dict[str, Any]:
    """Move the aliases (if it passed), tag the version, attach the card and append the decision."""
    return store.record_verdict(
        settings, candidate.name, candidate.version, candidate.run_id, judgement.decision, judgement.card
    )


def rollback(settings: Settings, model: str, reason: str, actor: str) -> dict[str, Any]:
    """Champion goes back to `previous` (the demoted version becomes `previous`); recorded like a promotion."""
    registry = Registry(settings)
    name = store.resolve_model(registry, model)
    with store.model_lock(settings, name):
        champion = registry.alias_version(name, store.CHAMPION)
        previous = registry.alias_version(name, store.PREVIOUS)
        if champion is None or previous is None:
            raise store.GateError(f"{name} has no @champion and @previous to roll back between")
        decision_id = uuid.uuid4().hex
        store.move_champion(registry, name, previous, f"rollback: {reason}", decision_id, actor)
        store.tag_version(registry, name, champion, {"result": "rolled_back", "reasons": json.dumps([reason])})
        decision = {
            "id": decision_id,
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "actor": actor,
            "action": "rollback",
            "model": name,
            "version": champion,
            "result": "rolled_back",
            "reasons": [reason],
            "checks": [],
            "policy_hash": load_policy(settings.governance_policy).digest,
            "waiver": None,
            "champion_before": champion,
            "champion_after": previous,
            "card": None,
        }
        store.append_decision(settings, decision)
    return decision
