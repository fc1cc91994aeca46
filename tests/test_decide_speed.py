"""`Decider.states`' fast routes give the same decisions, and the same states, as the models' own predictions.

The service builds a request's customer states from the champions' matrices (the churn snapshot, the
pandas-free uplift and propensity routes, the stored columns read once). This checks, on a small world
with real champions (churn, propensity, uplift) and the online store, that every state equals one built
the plain way: the models' own `predict_proba` / `predict` on pandas frames of the stored features,
`decisions.states.customer_states` on them (but the propensities of customers no cross-sell may reach, a
minor or without marketing consent, which are not scored), and that `decide_batch` with a fixed seed decides
the same.
"""

from __future__ import annotations

import datetime as dt
import math
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from custintel.settings import Settings
from decisions.arbitration import CustomerState, decide_batch
from decisions.policy import DecisionPolicy
from decisions.states import customer_states
from serving.answers import product_catalogue
from serving.decisions import Decider
from serving.policy import load_serving_policy
from serving.runtime import Runtime
from tests.conftest import decision_home

pytestmark = [pytest.mark.slow]

TODAY = dt.date(2026, 12, 1)


@pytest.fixture(scope="module")
def decider(featured: Settings, decision_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Decider]:
    """A `Decider` over a home with churn, propensity and uplift promoted and an online store."""
    settings = decision_home(featured, decision_base, tmp_path_factory.mktemp("speed")).settings
    runtime = Runtime(settings, load_serving_policy(None))
    made = Decider(runtime)
    assert set(runtime.champions.models) >= {"churn", "propensity", "uplift"}
    yield made
    made.close()
    runtime.close()


def _known(decider: Decider, n: int) -> list[str]:
    keys = pd.read_parquet(decider.runtime.settings.identity_dir / "crosswalk.parquet", columns=["customer_key"])
    candidates = sorted(keys["customer_key"].dropna().unique().tolist())
    stored = decider.runtime.features_many(candidates)
    return [k for k in candidates if k in stored][:n]


def plain_states(decider: Decider, policy: DecisionPolicy, keys: Sequence[str], today: dt.date) -> list[CustomerState]:
    """The states built the plain way: every model's own prediction on a pandas frame of the stored features."""
    runtime = decider.runtime
    stored = runtime.features_many(keys)
    found = [k for k in keys if k in stored]
    rows = [stored[k] for k in found]
    models = runtime.champions.models
    churn, up, prop = models["churn"], models["uplift"], models["propensity"]
    churn_risk = np.asarray(churn.model.predict_proba(pd.DataFrame(rows, columns=churn.inputs)))[:, 1]
    uplift = np.asarray(up.model.predict(pd.DataFrame(rows, columns=up.inputs)), dtype=float)
    held = {
        k: frozenset(str(i["product_id"]) for i in (r.get("items") or []) if isinstance(i, dict) and i.get("holds"))
        for k, r in zip(found, rows, strict=True)
    }
    catalogue = set(product_catalogue(prop))
    offered = {p for a in policy.actions if a.kind == "cross_sell" for p in a.offered()}
    products = sorted(offered & catalogue if catalogue else offered)
    pairs = [(i, j) for i, k in enumerate(found) for j, p in enumerate(products) if p not in held[k]]
    records = [{**rows[i], "product_id": products[j]} for i, j in pairs]
    scores = np.asarray(prop.model.predict_proba(pd.DataFrame(records, columns=prop.columns)))[:, 1]
    matrix = np.full((len(found), len(products)), np.nan)
    at = np.asarray(pairs)
    matrix[at[:, 0], at[:, 1]] = scores
    propensity = pd.DataFrame(matrix, index=pd.Index(found), columns=products)
    columns = sorted(set(policy.signals.values()) | {policy.equity.attribute})
    features = pd.DataFrame({"customer_key": found, **{c: [r.get(c) for r in rows] for c in columns}})
    for column in policy.signals.values():
        features[column] = pd.to_numeric(features[column], errors="coerce")
    consent, minors = decider._consent(found, today, policy.minors.age_below)
    window = max(max(a.window_days, a.cooldown_days) for a in policy.actions)
    idle = [a.name for a in policy.actions if a.kind == "none"]  # as the service reads it: no rule counts these
    history = decider.log.history(found, since=today - dt.timedelta(days=window), skip=idle)
    group_values = features[policy.equity.attribute].to_numpy(dtype=object)
    groups = group_values if any(g is not None for g in group_values) else None
    return customer_states(
        policy, features, churn_risk=churn_risk, uplift=uplift, propensity=propensity, margins={}, consent=consent,
        minors=minors, groups=groups, history=history, products_held=held,
    )  # fmt: skip


def _same(a: Any, b: Any) -> bool:
    """Equal, floats to 1e-9 (LightGBM's sums in another order), NaN-free mappings key for key."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _offerable(state: CustomerState) -> bool:
    """Whether the packaged policy's cross-sell (purpose marketing) can reach this customer at all."""
    return not state.is_minor and bool(state.consent.get("marketing", True))


def _assert_same_states(got: list[CustomerState], want: list[CustomerState]) -> None:
    """Every field equal, but propensity, which is not scored for a customer no cross-sell may reach."""
    assert [s.customer_key for s in got] == [s.customer_key for s in want]
    for g, w in zip(got, want, strict=True):
        for f in fields(CustomerState):
            x, y = getattr(g, f.name), getattr(w, f.name)
            if f.name == "propensity" and not _offerable(w):
                assert x == {}, f"{g.customer_key}: scored, though no cross-sell may reach them"
                continue
            assert _same(dict(x) if isinstance(x, dict) else x, dict(y) if isinstance(y, dict) else y), (
                f"{g.customer_key}.{f.name}: {x!r} != {y!r}"
            )


def test_states_match_the_models_own_predictions(decider: Decider) -> None:
    """Every field of every state, for a campaign's customers and for one customer, equals the plain route's."""
    policy = decider.policies.current.policy
    keys = _known(decider, 300)
    assert len(keys) >= 200
    asked = [*keys[:150], "no-such-customer", *keys[150:]]  # an unknown key is left out, order kept
    decider.states(policy, asked, TODAY)  # the first call checks each model's fast route against the model
    states, found, used = decider.states(policy, asked, TODAY)
    assert found == keys
    assert {m["name"] for m in used} == {"custintel-churn", "custintel-uplift", "custintel-propensity"}
    want = plain_states(decider, policy, keys, TODAY)
    _assert_same_states(states, want)
    # the states carry real scores: risk and uplift for everyone, a propensity for most products not held
    assert all(s.churn_risk is not None and 0 < s.churn_risk < 1 for s in states)
    assert all(s.uplift is not None for s in states)
    reachable = [s for s in states if _offerable(s)]
    assert 0 < len(reachable) < len(states)  # both kinds of customer are in the sample
    assert sum(len(s.propensity) for s in reachable) > 10 * len(reachable)
    one, found_one, _ = decider.states(policy, [keys[7]], TODAY)
    assert found_one == [keys[7]]
    _assert_same_states(one, want[7:8])


@pytest.mark.parametrize("channel", ["email", "call_centre"])
def test_decisions_match_on_a_fixed_seed(decider: Decider, channel: str) -> None:
    """`decide_batch` on the fast states decides exactly as on the plain ones: actions, probabilities, allocation."""
    policy = decider.policies.current.policy
    keys = _known(decider, 300)
    states, _, _ = decider.states(policy, keys, TODAY)
    want = plain_states(decider, policy, keys, TODAY)
    capacity = {channel: 40}  # binding: the allocation and the equity repair run
    got_batch = decide_batch(policy, states, channel, TODAY, seed=11, capacity=capacity)
    want_batch = decide_batch(policy, want, channel, TODAY, seed=11, capacity=capacity)
    assert [(d.customer_key, [c.action for c in d.actions], d.fallback, d.explored) for d in got_batch.decisions] == [
        (d.customer_key, [c.action for c in d.actions], d.fallback, d.explored) for d in want_batch.decisions
    ]
    assert [d.probability for d in got_batch.decisions] == pytest.approx([d.probability for d in want_batch.decisions])
    assert got_batch.value == pytest.approx(want_batch.value, rel=1e-9)
    pd.testing.assert_frame_equal(got_batch.allocation, want_batch.allocation)
    contacted = sum(1 for d in got_batch.decisions if d.actions and d.actions[0].kind != "none")
    assert 0 < contacted <= 40


def test_a_repeated_request_is_answered_from_the_first_ones_work(decider: Decider) -> None:
    """The same customers again (a campaign's next call, a second live decision): the same states, cheaper."""
    policy = decider.policies.current.policy
    keys = _known(decider, 200)
    first, _, _ = decider.states(policy, keys, TODAY)
    again, _, _ = decider.states(policy, keys, TODAY)
    _assert_same_states(again, first)
    _assert_same_states(again, plain_states(decider, policy, keys, TODAY))


def _answer_as_before(served: Any, decision: Any, decision_id: str, channel: str, models: list[dict[str, str]],
                      log: Any, placement: Any) -> tuple[dict[str, Any], Any]:  # fmt: skip
    """A decision's answer and log entry as `Decider._answer` made them before campaigns were built in one pass."""
    from decisions.arbitration import expected_value
    from serving.decision_log import LoggedDecision, now_iso

    def finite(value: float) -> float:
        return float(value) if math.isfinite(value) else 0.0

    policy = served.policy
    chosen = [
        {"name": c.action, "kind": c.kind, "channel": str(c.channel), "priority": finite(c.priority), "p": finite(c.p),
         "v": finite(c.v), "l": finite(c.l), "reasons": list(c.reasons)}
        for c in decision.actions
    ]  # fmt: skip
    value = float(sum(finite(expected_value(c)) for c in decision.actions))
    first = decision.actions[0].action if decision.actions else policy.fallback
    answer = {
        "customer_key": decision.customer_key, "channel": channel, "status": "decided", "error": None,
        "decision_id": decision_id, "actions": chosen, "reasons": list(decision.reasons), "prompt": decision.prompt,
        "probability": float(decision.probability), "explored": bool(decision.explored),
        "fallback": bool(decision.fallback), "fallback_reason": decision.fallback_reason, "expected_value": value,
        "policy": served.ref(), "models": models, "experiments": placement.refs() if placement else [],
    }  # fmt: skip
    logged = LoggedDecision(
        decision_id=decision_id, customer_key=log.key(decision.customer_key), channel=channel,
        policy_name=policy.name, policy_version=served.version, action=first,
        actions=[{"action": c["name"], **{k: v for k, v in c.items() if k != "name"}} for c in chosen],
        probability=float(decision.probability),
        action_probabilities={str(k): float(v) for k, v in decision.action_probabilities.items()},
        explored=bool(decision.explored), fallback=bool(decision.fallback),
        fallback_reason=decision.fallback_reason, reasons=list(decision.reasons), context={},
        decided_at=now_iso(), expected_value=value, models={m["name"]: m["version"] for m in models},
    )  # fmt: skip
    return answer, logged


def test_a_campaigns_answers_and_log_rows_are_made_as_before(
    decider: Decider, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`decide_many` answers and logs a campaign exactly as the per-decision route did (ids and clock fixed).

    Its answers (every field, in order, an unknown customer's included) and its log rows equal those made
    the way they were before (`_answer_as_before`, `LoggedDecision.row`) from `decide_batch` of the same
    states with the campaign's seed.
    """
    import orjson

    import serving.decisions as served_decisions
    from serving.decision_log import DECISION_COLUMNS, DecisionLog, seed_of
    from serving.schemas import DecideBatchRequest

    counter = iter(range(1, 10**6))
    monkeypatch.setattr(served_decisions, "new_decision_id", lambda: f"{next(counter):032x}")
    monkeypatch.setattr(served_decisions, "new_decision_ids", lambda n: [f"{next(counter):032x}" for _ in range(n)])
    monkeypatch.setattr(served_decisions, "now_iso", lambda: "2026-12-01T09:00:00.000000+00:00")
    monkeypatch.setattr("serving.decision_log.now_iso", lambda: "2026-12-01T09:00:00.000000+00:00")
    log = DecisionLog(tmp_path / "decisions.db", decider.log.key_rule, decider.log.salt)
    monkeypatch.setattr(decider, "log", log)
    served = decider.policies.current
    policy, channel, today = served.policy, "call_centre", dt.date.today()
    keys = _known(decider, 300)
    asked = [*keys[:100], "no-such-customer", *keys[100:]]
    states, found, models = decider.states(policy, asked, today)  # before: the campaign's rows are its history
    placements = decider.experiments.place(found)
    assert not any(p.held_out or p.withheld for p in placements.values())
    body = decider.decide_many(DecideBatchRequest(customer_keys=asked, channel=channel))

    batch = decide_batch(policy, states, channel, today, seed=seed_of(f"{1:032x}"),
                         capacity={channel: policy.capacity[channel]}, policy_version=served.version)  # fmt: skip
    want = [
        _answer_as_before(served, d, f"{i + 2:032x}", channel, models, log, placements[d.customer_key])
        for i, d in enumerate(batch.decisions)
    ]
    results = [r for r in body["results"] if r["status"] == "decided"]
    assert orjson.dumps(results) == orjson.dumps([a for a, _ in want])
    unknown = body["results"][100]
    assert unknown["status"] == "not_found" and unknown["error"] == "unknown customer 'no-such-customer'"
    with sqlite3.connect(tmp_path / "decisions.db") as con:
        rows = con.execute(f"SELECT {', '.join(DECISION_COLUMNS)} FROM decisions ORDER BY rowid").fetchall()
    assert rows == [logged.row() for _, logged in want]
    assert 0 < sum(r[5] != policy.fallback for r in rows) <= policy.capacity[channel]
    log.close()


def test_campaigns_decided_at_once_share_the_channel_capacity(
    decider: Decider, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Four campaigns on threads at once (as the service's gate runs them): their contacts together keep to the
    channel's capacity left today, which one campaign would have filled alone."""
    import threading
    from dataclasses import replace

    from serving.decision_log import DecisionLog
    from serving.schemas import DecideBatchRequest

    log = DecisionLog(tmp_path / "decisions.db", decider.log.key_rule, decider.log.salt)
    monkeypatch.setattr(decider, "log", log)
    served = decider.policies.current
    capacity = 25
    policy = served.policy.model_copy(update={"capacity": {**served.policy.capacity, "email": capacity}})
    monkeypatch.setattr(decider.policies, "current", replace(served, policy=policy))
    keys = _known(decider, 200)
    start = threading.Barrier(4)
    answers: list[dict[str, Any]] = []

    def campaign(part: list[str]) -> None:
        start.wait()
        answers.append(decider.decide_many(DecideBatchRequest(customer_keys=part, channel="email")))

    threads = [threading.Thread(target=campaign, args=(keys[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(answers) == 4
    with sqlite3.connect(tmp_path / "decisions.db") as con:
        contacts = con.execute("SELECT count(*) FROM decisions WHERE channel = 'email' AND action != ? "
                               "AND fallback = 0", (policy.fallback,)).fetchone()[0]  # fmt: skip
        holds = con.execute("SELECT count(*) FROM capacity_holds").fetchone()[0]
    squeezed = sum(1 for a in answers for r in a["results"] if "capacity" in (r["fallback_reason"] or ""))
    assert contacts <= capacity and holds == 0
    assert squeezed > 0 and contacts == capacity  # more customers wanted a contact: all of it was used, none lost
    log.close()
