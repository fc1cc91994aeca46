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
    history = decider.log.history(found, since=today - dt.timedelta(days=window))
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
