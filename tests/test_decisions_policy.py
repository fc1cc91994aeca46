"""Decision policies: the packaged default is valid and matches the world; every bad file names its field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from custintel.settings import Settings
from decisions.policy import (
    CHANNELS,
    DecisionPolicy,
    PolicyError,
    default_policy_text,
    load_policy,
    policy_from_settings,
)
from features.featurestore.config import load_feature_config
from features.featurestore.definitions import service_set, value_set
from features.synthetic import reference as ref


def _base() -> dict:
    return yaml.safe_load(default_policy_text())


def _text(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def test_the_default_policy_loads_and_covers_the_world() -> None:
    policy = load_policy()
    kinds = {a.kind for a in policy.actions}
    assert kinds == {"retention_offer", "cross_sell", "service_recovery", "none"}
    assert policy.action(policy.fallback).kind == "none"
    # One cross-sell per product family of the generated catalogue, every add-on in one of them.
    addons = {p[0]: p[2] for p in ref.PRODUCTS if not p[4]}
    offered = {product: a.name for a in policy.actions if a.kind == "cross_sell" for product in a.offered()}
    assert offered == {product: f"cross_sell_{family}" for product, family in addons.items()}
    retention = next(a for a in policy.actions if a.kind == "retention_offer")
    assert retention.purpose == "profiling" and set(retention.channels) == {"call_centre", "email", "app"}
    assert all(a.purpose is None for a in policy.actions if a.kind == "service_recovery")
    assert set(policy.capacity) == set(CHANNELS)


def test_the_default_signals_are_real_feature_columns() -> None:
    config = load_feature_config(None)
    columns = {f.name for s in (service_set(config), value_set()) for part in s.parts for f in part.features}
    assert set(load_policy().signals.values()) <= columns


def test_digest_is_canonical() -> None:
    policy = load_policy()
    reordered = dict(reversed(list(_base().items())))
    assert load_policy(_text(reordered)).digest() == policy.digest()
    changed = _base()
    changed["exploration"] = 0.1
    assert load_policy(_text(changed)).digest() != policy.digest()
    assert len(policy.digest()) == 64


def test_load_from_a_path_a_str_path_and_settings(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(default_policy_text())
    assert load_policy(path) == load_policy(str(path)) == load_policy()
    assert policy_from_settings(Settings(home=tmp_path, decision_policy=path)) == load_policy()
    assert policy_from_settings(Settings(home=tmp_path)) == load_policy()
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "missing.yaml")


def _set(path: tuple, value: object) -> dict:
    data = _base()
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


_DELETE = object()
_CROSS = 1  # actions[1] is a cross-sell in the default file
_CALLBACK = 14  # actions[14] is the service-recovery callback


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("actions", 2, "channels"), ["web", "fax"], r"actions\[2\]\.channels\[1\]: 'fax' is not a channel"),
        (("actions", 0, "kind"), "upsell", r"actions\[0\]\.kind: 'upsell' is not an action kind"),
        (("actions", 0, "purpose"), "spam", r"actions\[0\]\.purpose: 'spam' is not a consent purpose"),
        (("actions", 0, "colour"), "red", r"actions\[0\]\.colour: Extra inputs are not permitted"),
        (("actions", 0, "purpose"), None, r"actions\[0\]\.purpose: a retention_offer needs a consent purpose"),
        (("actions", _CROSS, "products"), _DELETE, r"actions\[1\]\.product: a cross_sell action needs the product"),
        (("actions", _CROSS, "product"), "ADD-X", r"actions\[1\]\.products: give one product or a family"),
        (("actions", 0, "product"), "ADD-X", r"actions\[0\]\.product: only a cross_sell action offers a product"),
        (("actions", _CROSS, "products", "ADD-X"), -1, r"actions\[1\]\.products\.ADD-X: Input should be greater"),
        (("actions", _CALLBACK, "purpose"), "marketing", r"actions\[14\]\.purpose: a service_recovery action needs"),
        (("actions", _CALLBACK, "triggers"), {"failed_self_service": 0}, r"actions\[14\]\.triggers\.failed_self_"),
        (("actions", _CALLBACK, "triggers"), {"nope": 2}, r"actions\[14\]: signal 'nope' is not defined under signals"),
        (("actions", 0, "triggers"), {"tickets": 2}, r"actions\[0\]\.triggers: only service_recovery actions have"),
        (("actions", 0, "value_signal"), "nope", r"actions\[0\]: signal 'nope' is not defined under signals"),
        (("actions", 0, "value"), -5, r"actions\[0\]\.value: Input should be greater than or equal to 0"),
        (("actions", 0, "lever"), 0, r"actions\[0\]\.lever: Input should be greater than 0"),
        (("actions", 0, "max_per_customer"), 0, r"actions\[0\]\.max_per_customer"),
        (("actions", 0, "channels"), [], r"actions\[0\]\.channels: List should have at least 1 item"),
        (("actions", 0, "channels"), ["web", "web"], r"actions\[0\]: channels lists a channel twice"),
        (("actions", 1, "name"), "retention_offer", r"actions\[1\]\.name: 'retention_offer' is used by an earlier"),
        (("actions", 0, "name"), "Bad Name", r"actions\[0\]\.name: String should match pattern"),
        (("fallback",), "escalate", r"fallback: 'escalate' is not one of the actions"),
        (("fallback",), "retention_offer", r"fallback: 'retention_offer' needs consent for profiling"),
        (("exploration",), 0.7, r"exploration: Input should be less than or equal to 0.5"),
        (("exploration",), -0.1, r"exploration: Input should be greater than or equal to 0"),
        (("capacity",), {"web": 10, "app": 10, "email": 10}, r"capacity: channel 'call_centre' .* no daily capacity"),
        (("capacity", "fax"), 3, r"capacity\.fax: 'fax' is not a channel"),
        (("capacity", "web"), -1, r"capacity\.web: Input should be greater than or equal to 0"),
        (("equity", "floor"), 1.5, r"equity\.floor: Input should be less than or equal to 1"),
        (("equity", "alpha"), 0, r"equity\.alpha: Input should be greater than 0"),
        (("minors", "action"), "ignore", r"minors\.action: Input should be 'suppress'"),
        (("equity",), _DELETE, r"equity: Field required"),
        (("max_actions",), 0, r"max_actions: Input should be greater than or equal to 1"),
        (("actions", _CROSS, "target"), "churn_risk", r"actions\[1\]\.target: only a retention_offer has a target"),
        (("actions", 0, "target"), "risk", r"actions\[0\]\.target: Input should be 'uplift' or 'churn_risk'"),
    ],
)
def test_a_bad_policy_names_the_field(path: tuple, value: object, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        load_policy(_text(_set(path, value)))


@pytest.mark.parametrize(
    ("text", "message"),
    [("name: [unclosed", "not valid YAML"), ("- a\n- list\n", "must hold a mapping")],
)
def test_a_policy_that_is_not_a_mapping_is_refused(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        load_policy(text)


def test_policy_is_immutable() -> None:
    policy = load_policy()
    with pytest.raises(ValueError):
        policy.exploration = 0.2  # type: ignore[misc]
    assert isinstance(policy, DecisionPolicy)


def test_signals_and_columns_from_a_feature_row() -> None:
    policy = load_policy()
    assert "self_service_failed_90d" in policy.feature_columns() and "gender" in policy.feature_columns()
    row = {"self_service_failed_90d": 4, "repeat_contacts_90d": None, "monetary_365d": float("nan"),
           "tickets_90d": "3", "tickets_category_billing_90d": 2.0, "other": 1}  # fmt: skip
    assert policy.signal_values(row) == {"failed_self_service": 4.0, "billing_tickets": 2.0}


@pytest.mark.parametrize(
    ("age", "minor"), [(17, True), (17.9, True), (18, False), (None, False), (float("nan"), False)]
)
def test_minors_rule(age: float | None, minor: bool) -> None:
    assert load_policy().minors.applies(age) is minor
