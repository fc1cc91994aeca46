"""The decision-policy gate as a flow: register a policy, simulate it on the latest customers, judge, record.

Steps (plain functions; the flow wraps them as Prefect tasks):
`register` logs the policy file to MLflow (`custintel-nba`, alias `challenger`);
`population` reads the latest cutoff of the offline store and scores it with the current
champions (churn, uplift, propensity, loaded through `models.registry`), with consent, age,
the equity attribute and products held; `simulate` runs the policy over it
(`decisions.simulation`); `off_policy` estimates its value from the decision log when there
is one; `against_truth` measures the retention offer on the generator's truth when the home
has a generated world; `judge` and `record` are `governance.decision_gate`'s. The whole
promotion holds the registered policy's lock, as a model's promotion does.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from custintel.settings import Settings
from decisions.arbitration import CustomerState
from decisions.policy import DecisionPolicy, Purpose, default_policy_text, load_policy
from decisions.simulation import Simulation, simulate
from decisions.states import customer_states
from decisions.truth import TruthComparison, capacity_curve, compare_targeting
from features.featurestore.offline import available_as_of, read_offline
from features.featurestore.store import offline_root
from flows.retries import io_task
from governance import decision_gate, store
from governance.gate import Waiver
from governance.policy import load_policy as load_governance_policy
from models import oracle
from models.config import load_training_config
from models.registry import CHALLENGER, CHAMPION, MEMBERS_PATH, Registry

log = logging.getLogger("custintel.decisions")

REGISTERED_NAME = "custintel-nba"
ATTRIBUTES = "attributes@1"
INTERACTIONS = "interactions@1"
PROPENSITY_CHUNK = 2_000  # customers whose (customer, product) rows are scored at once


class DecisionGateError(RuntimeError):
    """The policy gate cannot run as asked (no features, no policy); the message says what to do."""


@dataclass
class Population:
    """The customers at one cutoff, their champions' scores and what arbitration needs besides."""

    as_of: dt.date
    features: pd.DataFrame
    churn_risk: np.ndarray | None
    uplift: np.ndarray | None
    propensity: pd.DataFrame | None
    margins: dict[str, float]
    consent: dict[str, dict[Purpose, bool]]
    minors: np.ndarray | None
    groups: np.ndarray | None
    products_held: dict[str, frozenset[str]]
    champions: dict[str, str] = field(default_factory=dict)  # family -> "name vN"
    notes: list[str] = field(default_factory=list)

    def states(self, policy: DecisionPolicy, history: Mapping[str, Sequence[tuple[str, dt.date]]]) -> list[Any]:
        """Every customer's arbitration state."""
        return customer_states(
            policy, self.features, churn_risk=self.churn_risk, uplift=self.uplift, propensity=self.propensity,
            margins=self.margins, consent=self.consent, minors=self.minors, groups=self.groups, history=history,
            products_held=self.products_held,
        )  # fmt: skip


# --- the policy ---------------------------------------------------------------------------------------------------


def policy_source(settings: Settings, path: Path | None) -> tuple[str, DecisionPolicy]:
    """The policy's text and model: the file named, else the settings' (CUSTINTEL_DECISION_POLICY), else the packaged.

    The registered text is the file's own (comments included), so what is served reads as it was reviewed.
    """
    chosen = path or settings.decision_policy
    if chosen is None:
        text = default_policy_text()
    else:
        if not Path(chosen).is_file():
            raise DecisionGateError(f"policy: no file at {chosen}")
        text = Path(chosen).read_text(encoding="utf-8")
    return text, load_policy(text)


def registered_name(policy: DecisionPolicy, name: str | None = None) -> str:
    """The registered model a policy is versioned under: the name asked for, else the policy's own name."""
    return name or policy.name or REGISTERED_NAME


def register(settings: Settings, path: Path | None, name: str | None = None) -> decision_gate.PolicyCandidate:
    """Validate the policy file and register it (a new version, `challenger`; the same text: its version)."""
    text, policy = policy_source(settings, path)
    digest = policy.digest()
    registry = Registry(settings)
    target = registered_name(policy, name)
    version = registry.register_policy(target, text, digest, {"custintel.policy_name": policy.name})
    run_id = registry.version(target, version).run_id
    assert run_id is not None  # register_policy always logs the run
    return decision_gate.PolicyCandidate(
        target, version, run_id, policy, digest, registry.alias_version(target, CHAMPION)
    )


# --- the population -----------------------------------------------------------------------------------------------


def _customer_sets(settings: Settings) -> list[str]:
    config = load_training_config(settings.training_config)
    sets: list[str] = []
    for family in (config.churn, config.propensity):
        if family is not None:
            sets += [s for s in family.feature_sets if s not in sets]
    return sets


def latest_cutoff(settings: Settings) -> dt.date:
    """The latest cutoff every customer feature set holds."""
    root = offline_root(settings)
    common: set[dt.date] | None = None
    for key in _customer_sets(settings):
        days = set(available_as_of(root, key))
        common = days if common is None else common & days
    if not common:
        raise DecisionGateError("features: the offline store holds no cutoff of the customer sets; build features")
    return max(common)


def read_customers(settings: Settings, as_of: dt.date) -> pd.DataFrame:
    """Every customer's features at `as_of` (the customer sets joined, with the attributes set when built)."""
    root = offline_root(settings)
    frame: pd.DataFrame | None = None
    for key in [*_customer_sets(settings), ATTRIBUTES]:
        if as_of not in available_as_of(root, key):
            if key == ATTRIBUTES:
                continue
            raise DecisionGateError(f"features: set {key} has no cutoff {as_of}")
        part = read_offline(root, key, [as_of]).to_pandas().drop(columns=["as_of"], errors="ignore")
        frame = part if frame is None else frame.merge(part, on="customer_key", how="inner", suffixes=("", f"_{key}"))
    assert frame is not None
    return frame.sort_values("customer_key", ignore_index=True)


def _champion(registry: Registry, family: str) -> tuple[str, str] | None:
    name = registry.registered_names().get(family)
    if name is None:
        return None
    version = registry.alias_version(name, CHAMPION)
    return None if version is None else (name, version)


def _model_frame(frame: pd.DataFrame, inputs: list[tuple[str, str]] | None) -> pd.DataFrame:
    """The model's input columns (missing ones empty), integers as doubles (as its signature declares)."""
    columns = [c for c, _ in inputs or []] or [c for c in frame.columns if c != "customer_key"]
    out = frame.reindex(columns=columns)
    ints = [c for c in out.columns if pd.api.types.is_integer_dtype(out[c]) or pd.api.types.is_bool_dtype(out[c])]
    return out.astype(dict.fromkeys(ints, "float64"))


def _last_column(raw: Any) -> np.ndarray:
    values = np.asarray(raw, dtype=float)
    return values[:, -1] if values.ndim == 2 else values.ravel()


def score_customers(settings: Settings, frame: pd.DataFrame, as_of: dt.date) -> tuple[dict[str, Any], list[str]]:
    """Churn risk, uplift and per-product propensity from the current champions (a missing champion: None)."""
    registry = Registry(settings)
    out: dict[str, Any] = {"churn_risk": None, "uplift": None, "propensity": None, "champions": {}}
    notes: list[str] = []
    for family in ("churn", "uplift"):
        champion = _champion(registry, family)
        if champion is None:
            notes.append(f"{family}: no champion; its field is empty for every customer")
            continue
        name, version = champion
        model = registry.load_model(name, version)
        scores = _last_column(model.predict(_model_frame(frame, registry.model_inputs(name, version))))
        out["churn_risk" if family == "churn" else "uplift"] = scores
        out["champions"][family] = f"{name} v{version}"
    champion = _champion(registry, "propensity")
    if champion is None:
        notes.append("propensity: no champion; no cross-sell scores")
        return out, notes
    name, version = champion
    pipeline = registry.load_model(name, version, flavor="sklearn")
    prepare = pipeline[0] if hasattr(pipeline, "__getitem__") else None
    catalogue = [str(p) for p in getattr(prepare, "categories_", {}).get("product_id", [])]
    items = read_offline(offline_root(settings), INTERACTIONS, [as_of]).to_pandas()
    items = items[items["customer_key"].isin(set(frame["customer_key"]))]
    pairs = pd.DataFrame(
        {"customer_key": np.repeat(frame["customer_key"].to_numpy(), len(catalogue)),
         "product_id": np.tile(np.asarray(catalogue, dtype=object), len(frame))}
    )  # fmt: skip
    pairs = pairs.merge(items.drop(columns=["as_of"], errors="ignore"), on=["customer_key", "product_id"], how="left")
    held = pairs["holds"].eq(True).to_numpy() if "holds" in pairs else np.zeros(len(pairs), bool)
    for column in ("purchases", "refunds", "spend"):
        if column in pairs:
            pairs[column] = pairs[column].fillna(0)
    inputs = registry.model_inputs(name, version)
    by_key = frame.set_index("customer_key")
    proba = np.full(len(pairs), np.nan)
    step = PROPENSITY_CHUNK * max(len(catalogue), 1)  # whole customers per chunk: memory bounded by the chunk
    for start in range(0, len(pairs), step):
        chunk = pairs.iloc[start : start + step]
        todo = np.flatnonzero(~held[start : start + step])
        if todo.size:
            rows = chunk.iloc[todo].join(by_key, on="customer_key")
            proba[start + todo] = _last_column(pipeline.predict_proba(_model_frame(rows, inputs)))
    table = pd.DataFrame({"customer_key": pairs["customer_key"], "product_id": pairs["product_id"], "p": proba})
    out["propensity"] = table.pivot(index="customer_key", columns="product_id", values="p")
    held_by: dict[str, set[str]] = {}
    for key, product in zip(pairs.loc[held, "customer_key"], pairs.loc[held, "product_id"], strict=True):
        held_by.setdefault(str(key), set()).add(str(product))
    out["held"] = {key: frozenset(products) for key, products in held_by.items()}
    out["champions"]["propensity"] = f"{name} v{version}"
    return out, notes


def read_consent(settings: Settings, keys: Sequence[str]) -> dict[str, dict[Purpose, bool]]:
    """Each customer's recorded consent per purpose (granted: True, withdrawn: False), from the service's file."""
    from serving.consent import ConsentStore, build_consent_store, consent_store_path
    from serving.policy import load_serving_policy

    path = consent_store_path(settings)
    if not path.is_file():
        build_consent_store(settings, load_serving_policy(settings.serving_policy))
    known = ConsentStore(path).lookup_many(list(keys))
    out: dict[str, dict[Purpose, bool]] = {}
    for key, record in known.items():
        statuses: dict[Any, bool] = {p: s == "granted" for p, s in record.statuses.items()}
        if statuses:
            out[key] = statuses
    return out


def population(settings: Settings, policy: DecisionPolicy, as_of: dt.date | None = None) -> Population:
    """The customers at `as_of` (default: the latest cutoff), scored by the champions, with consent and groups."""
    day = as_of or latest_cutoff(settings)
    frame = read_customers(settings, day)
    scores, notes = score_customers(settings, frame, day)
    attribute = policy.equity.attribute
    groups = frame[attribute].to_numpy(dtype=object) if attribute in frame.columns else None
    if groups is None:
        notes.append(f"equity: no column {attribute!r} in the features; groups unknown")
    minors = None
    if "age_years" in frame.columns:
        minors = (frame["age_years"].astype(float) < policy.minors.age_below).to_numpy()
    return Population(
        as_of=day, features=frame, churn_risk=scores["churn_risk"], uplift=scores["uplift"],
        propensity=scores["propensity"], margins={},  # the policy file's reviewed value per product applies
        consent=read_consent(settings, frame["customer_key"].astype(str).tolist()), minors=minors, groups=groups,
        products_held=scores.get("held", {}), champions=scores["champions"], notes=notes,
    )  # fmt: skip


def _decision_log(settings: Settings) -> Any:
    """The service's decision log (`serving.decision_log.DecisionLog`) under its key rule; None without one."""
    module = _optional("serving.decision_log")
    if module is None:
        return None
    path = module.decision_log_path(settings)
    if not path.is_file():
        return None
    from serving.policy import load_serving_policy

    rule = load_serving_policy(settings.serving_policy).audit.customer_key
    return module.DecisionLog(path, rule, settings.serving_log_salt or "custintel")


def history(settings: Settings, keys: Sequence[str]) -> dict[str, list[tuple[str, dt.date]]]:
    """Past (action, date) per customer from the decision log (empty without one): what caps and cool-downs count."""
    log = _decision_log(settings)
    if log is None:
        return {}
    try:
        return {k: v for k, v in log.history(keys).items() if v}
    finally:
        log.close()


def _optional(module: str) -> Any:
    """A module that another part of the decisions work adds (the decision log, the estimators); None without it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


# --- the steps ----------------------------------------------------------------------------------------------------


def run_simulation(
    policy: DecisionPolicy, states: Sequence[CustomerState], today: dt.date, seed: int = 0
) -> Simulation:
    """The policy over the population for one day."""
    return simulate(policy, states, today, seed=seed)


REWARDING_EVENTS = ("accept", "conversion")  # an outcome that counts as the action's success (reward 1)


def off_policy(
    settings: Settings, policy: DecisionPolicy, states: Sequence[CustomerState], today: dt.date
) -> decision_gate.OffPolicy:
    """The policy's value estimated from the logged decisions and their outcomes (IPS, SNIPS, DR), or why not.

    Reward: 1 when the decision was accepted or converted, else 0. The candidate's distribution for
    each logged decision is its own `decide` for that customer today (customers no longer in the
    population are left out).
    """
    log_module, ope = _optional("serving.decision_log"), _optional("decisions.ope")
    if log_module is None or ope is None:
        return decision_gate.OffPolicy(skipped="this build has no decision log or estimators")
    logged = log_module.read_decisions(settings)
    if logged is None or len(logged) == 0:
        return decision_gate.OffPolicy(skipped="the decision log is empty: nothing to estimate from")
    from decisions.arbitration import decide

    log = _decision_log(settings)
    try:
        by_logged_key = {log.key(s.customer_key): s for s in states} if log is not None else {}
    finally:
        if log is not None:
            log.close()
    logged = logged[logged["customer_key"].isin(set(by_logged_key))].reset_index(drop=True)
    if logged.empty:
        return decision_gate.OffPolicy(skipped="no logged decision is for a customer of today's population")
    outcomes = log_module.read_outcomes(settings)
    won = set(outcomes.loc[outcomes["event"].isin(REWARDING_EVENTS), "decision_id"]) if len(outcomes) else set()
    logged["reward"] = logged["decision_id"].isin(won).astype(float)
    target = [
        decide(policy, by_logged_key[key], channel, today, seed=0).action_probabilities
        for key, channel in zip(logged["customer_key"], logged["channel"], strict=True)
    ]
    estimates = ope.evaluate(logged, target)
    return decision_gate.OffPolicy(estimates=list(estimates), logged=len(logged))


def default_truth(settings: Settings) -> Path | None:
    """The demo world's truth when the home has one (`custintel demo` writes it there)."""
    candidate = settings.default_data_dir / "demo-world" / "_truth"
    return candidate if (candidate / "treatment_effect.parquet").is_file() else None


@dataclass
class TruthRun:
    """The truth comparison and the capacity curve behind it."""

    comparison: TruthComparison
    curve: pd.DataFrame
    as_of: dt.date
    excluded_training: int


def against_truth(
    settings: Settings, policy: DecisionPolicy, truth_dir: Path, seed: int = 0, with_ceiling: bool = True
) -> TruthRun | None:
    """The retention offer on the generator's truth, at the offer test's cutoff (where the true response holds).

    The customers are those with a true response who were not in the uplift champion's training
    rows (scoring its own training rows would flatter it). The policy is simulated on them; its
    retention offers set the capacity at which uplift, churn-risk, best, random and (`with_ceiling`) the
    feature ceiling's targeting are compared.
    """
    effect_file = truth_dir / "treatment_effect.parquet"
    if not effect_file.is_file():
        return None
    config = load_training_config(settings.training_config)
    if config.propensity is None or config.propensity.uplift is None:
        return None
    as_of = config.propensity.uplift.as_of
    people = population(settings, policy, as_of)
    persons = oracle.customer_persons(
        pd.read_parquet(settings.identity_dir / "crosswalk.parquet", columns=["customer_key", "record_key"]),
        pd.read_parquet(truth_dir / "source_records.parquet", columns=["source_table", "record_id", "person_id"]),
    )
    effect = pd.read_parquet(effect_file, columns=["person_id", "true_uplift"])
    true_by_person = effect.drop_duplicates("person_id").set_index("person_id")["true_uplift"]
    keys = people.features["customer_key"].astype(str)
    true_uplift = keys.map(persons).map(true_by_person).astype(float)
    trained_on = _uplift_training_members(settings)
    keep = true_uplift.notna() & ~keys.isin(trained_on)
    excluded = int((true_uplift.notna() & keys.isin(trained_on)).sum())
    mask = keep.to_numpy()
    subset = Population(
        as_of=as_of, features=people.features[mask].reset_index(drop=True),
        churn_risk=None if people.churn_risk is None else people.churn_risk[mask],
        uplift=None if people.uplift is None else people.uplift[mask],
        propensity=people.propensity, margins=people.margins, consent=people.consent,
        minors=None if people.minors is None else people.minors[mask],
        groups=None if people.groups is None else people.groups[mask],
        products_held=people.products_held, champions=people.champions,
    )  # fmt: skip
    states = subset.states(policy, {})
    sim = simulate(policy, states, as_of, seed=seed)
    offers = sim.chosen[sim.chosen["kind"] == "retention_offer"]["customer_key"]
    targets = subset.features["customer_key"].astype(str).isin(set(offers)).to_numpy()
    capacity = int(targets.sum()) or _retention_capacity(policy)
    truth = true_uplift[keep].to_numpy(float)
    ceiling = _feature_ceiling(settings, subset.features, truth) if with_ceiling else None
    comparison = compare_targeting(
        truth, predicted_uplift=subset.uplift, churn_risk=subset.churn_risk, capacity=capacity,
        policy_targets=targets if targets.any() else None, ceiling=ceiling,
    )  # fmt: skip
    curve = (
        capacity_curve(truth, subset.uplift, subset.churn_risk)
        if subset.uplift is not None and subset.churn_risk is not None
        else pd.DataFrame()
    )
    return TruthRun(comparison, curve, as_of, excluded)


def _feature_ceiling(settings: Settings, features: pd.DataFrame, truth: np.ndarray) -> np.ndarray | None:
    """The true uplift predicted from the uplift champion's own inputs, cross-fitted (None without a champion)."""
    registry = Registry(settings)
    champion = _champion(registry, "uplift")
    if champion is None or len(features) < 50:
        return None
    inputs = [c for c, _ in registry.model_inputs(*champion) or [] if c in features.columns]
    if not inputs:
        return None
    return oracle.feature_ceiling(features[inputs], truth, exclude=[])


def _retention_capacity(policy: DecisionPolicy) -> int:
    channels = {c for a in policy.actions if a.kind == "retention_offer" for c in a.channels}
    return max(1, sum(int(policy.capacity.get(c, 0)) for c in channels))


def _uplift_training_members(settings: Settings) -> set[str]:
    """The customer keys the uplift champion was trained on (empty when unknown)."""
    registry = Registry(settings)
    champion = _champion(registry, "uplift")
    if champion is None:
        return set()
    run_id = registry.version(*champion).run_id
    if run_id is None:
        return set()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = registry.download_run_file(run_id, MEMBERS_PATH, Path(tmp))
        return set(pd.read_parquet(local)["customer_key"].astype(str)) if local is not None else set()


# --- the gate -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicySteps:
    """The gate's steps, plain or as Prefect tasks."""

    register: Callable[..., decision_gate.PolicyCandidate]
    population: Callable[..., Population]
    simulate: Callable[..., Simulation]
    off_policy: Callable[..., decision_gate.OffPolicy]
    truth: Callable[..., TruthRun | None]
    judge: Callable[..., decision_gate.PolicyJudgement]
    record: Callable[..., dict[str, Any]]


PLAIN_STEPS = PolicySteps(
    register, population, run_simulation, off_policy, against_truth, decision_gate.judge_policy,
    decision_gate.record_policy,
)  # fmt: skip
TASK_STEPS = PolicySteps(
    io_task("register-policy", register),
    io_task("score-population", population),
    task(name="simulate-policy", cache_policy=NO_CACHE)(run_simulation),
    io_task("off-policy-estimate", off_policy),
    io_task("against-truth", against_truth),
    task(name="judge-policy", cache_policy=NO_CACHE)(decision_gate.judge_policy),
    io_task("record-policy-decision", decision_gate.record_policy),
)


def run_policy_gate(
    settings: Settings,
    path: Path | None,
    truth_dir: Path | None,
    waiver: Waiver | None,
    actor: str,
    steps: PolicySteps,
    name: str | None = None,
) -> dict[str, Any]:
    """Register, simulate, estimate, measure, judge and record one policy, under the registered policy's lock."""
    name = registered_name(policy_source(settings, path)[1], name)
    with store.model_lock(settings, name):
        candidate = steps.register(settings, path, name)
        policy = candidate.policy
        people = steps.population(settings, policy)
        states = people.states(policy, history(settings, people.features["customer_key"].astype(str).tolist()))
        sim = steps.simulate(policy, states, people.as_of)
        off = steps.off_policy(settings, policy, states, people.as_of)
        truth_run = steps.truth(settings, policy, truth_dir) if truth_dir is not None else None
        context = {
            "customers at the cutoff": f"{len(states):,} (features as of {people.as_of})",
            "champions": ", ".join(f"{k}: {v}" for k, v in people.champions.items()) or "none",
            **{f"note {i + 1}": n for i, n in enumerate(people.notes)},
        }
        if truth_run is not None:
            context["truth"] = (
                f"measured at the offer test's cutoff {truth_run.as_of}; {truth_run.excluded_training:,} customers "
                "left out as the uplift champion's training rows"
            )
        judgement = steps.judge(
            candidate, sim, off, None if truth_run is None else truth_run.comparison,
            governance_digest=load_governance_policy(settings.governance_policy).digest, actor=actor, waiver=waiver,
            context=context, truth_curve=None if truth_run is None else truth_run.curve,
        )  # fmt: skip
        decision = steps.record(settings, candidate, judgement)
    decision["summary"] = {
        "as_of": str(people.as_of),
        "customers": len(states),
        "allocation": sim.allocation.to_dict("records"),
        "channels": sim.channels.to_dict("records"),
        "expected_value": sim.value,
        "value_given_up": sim.value_given_up,
        "exposure": sim.exposure.to_dict("records"),
        "off_policy": off.skipped or [e.__dict__ for e in off.estimates],
        "truth": None if truth_run is None else truth_run.comparison.table().to_dict("records"),
        "truth_lines": [] if truth_run is None else truth_run.comparison.summary(),
        "truth_curve": [] if truth_run is None else truth_run.curve.to_dict("records"),
        "challenger": CHALLENGER,
    }
    return decision


def publish(decision: dict[str, Any]) -> None:
    """The decision beside the flow run in the Prefect UI."""
    lines = [f"# {decision['model']} v{decision['version']}: {decision['result']}", ""]
    lines += [f"- {r}" for r in decision["reasons"]] or ["- every check passed"]
    lines += ["", *[f"- {t}" for t in decision.get("summary", {}).get("truth_lines", [])]]
    create_markdown_artifact("\n".join(lines), key="policy-gate-decision")


@flow(name="promote_decision_policy", log_prints=False, persist_result=True)
def promote_decision_policy(
    policy: str | None = None,
    settings: dict[str, Any] | None = None,
    truth: str | None = None,
    approver: str | None = None,
    reason: str | None = None,
    actor: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Register a decision policy and promote it to @champion if the gate's checks pass (or a waiver covers them)."""
    waiver = Waiver(approver, reason or "") if approver else None
    decision = run_policy_gate(
        Settings.from_flow(settings), Path(policy) if policy else None, Path(truth) if truth else None, waiver,
        actor or store.actor(), TASK_STEPS, name,
    )  # fmt: skip
    task(name="publish-policy-decision", cache_policy=NO_CACHE)(publish)(decision)
    return decision
