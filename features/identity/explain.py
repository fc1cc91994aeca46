"""Why two records were, or were not, linked.

For any two records: the deterministic rules (which identifier they share, and
whether that value identifies one person), the probabilistic model's evidence
per comparison (level, Bayes factor, match weight) and the total, and, when
they are one customer without a direct link, the chain of links that joins them.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pandas as pd
from splink import DuckDBAPI, Linker

from features.identity.config import IdentityConfig
from features.identity.probabilistic import SPLINK_COLUMNS, TF_COLUMNS, linker_input, term_frequencies


class ExplainError(LookupError):
    """A record key is not among the resolved records."""


@dataclass(frozen=True)
class RuleCheck:
    """One deterministic rule applied to the pair."""

    rule: str
    value_a: str | None
    value_b: str | None
    equal: bool
    shared_by: int  # records holding the value (0 when not equal)
    links: bool
    reason: str


@dataclass(frozen=True)
class ComparisonEvidence:
    """One comparison of the probabilistic model applied to the pair."""

    comparison: str
    level: str
    value_a: str | None
    value_b: str | None
    bayes_factor: float
    match_weight: float


@dataclass
class PairExplanation:
    """The whole story of one pair."""

    record_a: dict[str, Any]
    record_b: dict[str, Any]
    customer_key_a: str | None
    customer_key_b: str | None
    rules: list[RuleCheck]
    comparisons: list[ComparisonEvidence] = field(default_factory=list)
    prior_match_weight: float | None = None
    match_weight: float | None = None
    match_probability: float | None = None
    threshold: float | None = None
    candidate_pair: bool | None = None  # would any blocking rule have proposed the pair
    path: list[dict[str, Any]] = field(default_factory=list)
    verdict: str = ""

    @property
    def same_customer(self) -> bool:
        """Whether the two records resolved to one customer."""
        return self.customer_key_a is not None and self.customer_key_a == self.customer_key_b


def _value(v: object) -> str | None:
    return None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else str(v)


def _record(frame: pd.DataFrame, key: str) -> dict[str, Any]:
    hit = frame.loc[frame["record_key"] == key]
    if hit.empty:
        raise ExplainError(f"record {key!r} is not among the resolved records (keys look like 'crm_accounts:C0001')")
    return {str(k): _value(v) for k, v in hit.iloc[0].items()}


def _rule_checks(
    match_records: pd.DataFrame, a: dict[str, Any], b: dict[str, Any], rules: list[str], max_group: int
) -> list[RuleCheck]:
    checks = []
    for rule in rules:
        va, vb = a.get(rule), b.get(rule)
        equal = va is not None and va == vb
        shared = int((match_records[rule] == va).sum()) if equal else 0
        links = equal and shared <= max_group
        if va is None or vb is None:
            reason = "missing on one side"
        elif not equal:
            reason = "different"
        elif links:
            reason = f"same value, held by {shared} records"
        else:
            reason = f"same value, but held by {shared} records (> {max_group}): it does not identify one person"
        checks.append(RuleCheck(rule, va, vb, equal, shared, links, reason))
    return checks


def _level_labels(comparison: dict[str, Any]) -> dict[int, str]:
    levels = comparison["comparison_levels"]
    non_null = [lv for lv in levels if not lv.get("is_null_level")]
    labels = {-1: "one side missing"}
    for i, lv in enumerate(non_null):
        labels[len(non_null) - 1 - i] = str(lv.get("label_for_charts") or lv.get("sql_condition"))
    return labels


def _score_pair(
    model: dict[str, Any], match_records: pd.DataFrame, a: dict[str, Any], b: dict[str, Any]
) -> tuple[pd.Series, dict[str, Any]]:
    settings = dict(model, retain_intermediate_calculation_columns=True, retain_matching_columns=True)
    pair = pd.DataFrame([{c: a.get(c) for c in SPLINK_COLUMNS}, {c: b.get(c) for c in SPLINK_COLUMNS}])
    # distinct deterministic clusters, so that the blocking rules say whether the pair is a candidate
    frame = linker_input(pair.astype("string"), pd.Series(["a", "b"]))
    rows = [{str(k): _value(v) for k, v in r.items()} for r in frame.to_dict("records")]
    db_api = DuckDBAPI(duckdb.connect())
    linker = Linker(frame, settings, db_api=db_api, set_up_basic_logging=False)  # type: ignore[arg-type]
    # the run's term frequencies, so a common name weighs as little here as it did in the run
    everyone = linker_input(match_records)
    for column in TF_COLUMNS:
        linker.table_management.register_term_frequency_lookup(term_frequencies(everyone, column), column)
    scored = linker.inference.compare_two_records(rows[0], rows[1], include_found_by_blocking_rules=True)
    return scored.as_pandas_dataframe().iloc[0], settings


def _path(links: pd.DataFrame, crosswalk: pd.DataFrame, a: str, b: str) -> list[dict[str, Any]]:
    """The shortest chain of links from a to b within their customer."""
    members = set(crosswalk.loc[crosswalk["customer_key"] == _customer(crosswalk, a), "record_key"])
    local = links[links["record_key_l"].isin(members) & links["record_key_r"].isin(members)]
    graph: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    rows: list[dict[str, Any]] = [{str(k): v for k, v in r.items()} for r in local.to_dict("records")]
    for row in rows:
        graph.setdefault(row["record_key_l"], []).append((row["record_key_r"], row))
        graph.setdefault(row["record_key_r"], []).append((row["record_key_l"], row))
    previous: dict[str, tuple[str, dict[str, Any]] | None] = {a: None}
    queue = deque([a])
    while queue:
        node = queue.popleft()
        if node == b:
            break
        for nxt, row in sorted(graph.get(node, []), key=lambda x: x[0]):
            if nxt not in previous:
                previous[nxt] = (node, row)
                queue.append(nxt)
    if b not in previous:
        return []
    steps = []
    node = b
    while (step := previous[node]) is not None:
        prev, row = step
        prob = row.get("match_probability")
        steps.append(
            {
                "from": prev,
                "to": node,
                "rule": row["rule"],
                "match_probability": None if prob is None or pd.isna(prob) else float(prob),
            }
        )
        node = prev
    return steps[::-1]


def _customer(crosswalk: pd.DataFrame, key: str) -> str | None:
    hit = crosswalk.loc[crosswalk["record_key"] == key, "customer_key"]
    return None if hit.empty else str(hit.iloc[0])


def explain_pair(
    key_a: str,
    key_b: str,
    match_records: pd.DataFrame,
    crosswalk: pd.DataFrame,
    links: pd.DataFrame,
    config: IdentityConfig,
    rules: list[str],
    model: dict[str, Any] | None,
    threshold: float | None,
) -> PairExplanation:
    """Explain the pair (key_a, key_b) from a run's outputs.

    Args:
        key_a: a record key, `<source_table>:<record id>`.
        key_b: the other record key.
        match_records: what the matcher saw in that run.
        crosswalk: the run's record_key -> customer_key.
        links: the run's links.
        config: the identity configuration (max_group).
        rules: the deterministic rules that ran.
        model: the Splink model, or None when the probabilistic pass did not run.
        threshold: the match-probability threshold of the run.
    """
    if key_a == key_b:
        raise ExplainError(f"give two different records (both were {key_a!r})")
    a, b = _record(match_records, key_a), _record(match_records, key_b)
    out = PairExplanation(
        record_a=a,
        record_b=b,
        customer_key_a=_customer(crosswalk, key_a),
        customer_key_b=_customer(crosswalk, key_b),
        rules=_rule_checks(match_records, a, b, rules, config.deterministic.max_group),
        threshold=threshold,
    )
    if model is not None:
        row, settings = _score_pair(model, match_records, a, b)
        for comparison in settings["comparisons"]:
            name = comparison["output_column_name"]
            labels = _level_labels(comparison)
            gamma = int(row[f"gamma_{name}"])
            bf = float(row[f"bf_{name}"]) * float(row.get(f"bf_tf_adj_{name}", 1.0) or 1.0)
            shown = {"name": "name_key", "location": "postcode"}.get(name, name)  # the compared value to show
            col_a, col_b = (f"{shown}_l", f"{shown}_r") if f"{shown}_l" in row else (None, None)
            out.comparisons.append(
                ComparisonEvidence(
                    comparison=name,
                    level=labels.get(gamma, str(gamma)),
                    value_a=_value(row[col_a]) if col_a else None,
                    value_b=_value(row[col_b]) if col_b else None,
                    bayes_factor=bf,
                    match_weight=math.log2(bf) if bf > 0 else float("-inf"),
                )
            )
        prior = float(model["probability_two_random_records_match"])
        out.prior_match_weight = math.log2(prior / (1 - prior))
        out.match_weight = float(row["match_weight"])
        out.match_probability = float(row["match_probability"])
        out.candidate_pair = bool(row["found_by_blocking_rules"])
    if out.same_customer:
        out.path = _path(links, crosswalk, key_a, key_b)
    out.verdict = _verdict(out)
    return out


def _verdict(e: PairExplanation) -> str:
    linking = [r.rule for r in e.rules if r.links]
    if e.same_customer:
        if not e.path:  # pragma: no cover - only when the outputs were edited by hand
            return f"One customer ({e.customer_key_a}), but no chain of links joins them: the outputs are inconsistent."
        if len(e.path) == 1:
            step = e.path[0]
            how = (
                f"the rule '{step['rule']}'"
                if step["rule"] != "probabilistic"
                else f"the probabilistic match (p = {step['match_probability']:.4f})"
            )
            return f"One customer ({e.customer_key_a}): linked directly by {how}."
        return (
            f"One customer ({e.customer_key_a}): not linked directly, but joined through "
            f"{len(e.path) - 1} other record(s) (see the path)."
        )
    if linking:  # pragma: no cover - a linking rule always puts the pair in one customer
        return f"Rule(s) {linking} would link them, yet they are two customers: the outputs are out of date."
    reasons = []
    if e.match_probability is not None and e.threshold is not None:
        if not e.candidate_pair:
            reasons.append("no blocking rule proposes the pair, so the model never scored it")
        reasons.append(
            f"the model gives p = {e.match_probability:.4f}, "
            + ("below" if e.match_probability < e.threshold else "at or above")
            + f" the threshold {e.threshold}"
        )
    elif e.match_probability is None:
        reasons.append("the probabilistic pass did not run (hashed mode, or no fields allowed)")
    return "Two customers: no deterministic rule links them; " + "; ".join(reasons) + "."
