"""Identity configuration: the shipped default, and every way a hand-written YAML can be wrong."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from features.identity.config import (
    GOLDEN_ATTRIBUTES,
    IdentityConfig,
    IdentityConfigError,
    load_identity_config,
)


def _valid() -> dict[str, Any]:
    """A small valid configuration (two sources), as the YAML document would hold it."""
    return {
        "sources": [
            {
                "table": "crm",
                "id": "crm_id",
                "columns": {"first_name": "fn", "last_name": "ln", "email": "mail", "updated_at": "ts"},
            },
            {"table": "loyalty", "id": "ref", "columns": {"full_name": "name", "phone": "mobile"}},
        ],
        "deterministic": {"rules": ["email", "phone"], "max_group": 4},
        "survivorship": {
            "first_name": {"rule": "most_frequent"},
            "last_name": {"rule": "most_frequent"},
            "email": {"rule": "most_recent"},
            "phone": {"rule": "most_recent"},
            "birth_date": {"rule": "most_trusted"},
            "gender": {"rule": "non_null"},
            "address": {"rule": "most_recent"},
            "postcode": {"with": "address"},
            "city": {"with": "address"},
            "state": {"with": "address"},
        },
    }


def _write(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "identity.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def test_the_shipped_default_loads_with_its_sources_in_trust_order() -> None:
    config = load_identity_config()
    assert isinstance(config, IdentityConfig)
    assert config.trust_order == ["crm_accounts", "billing_accounts", "northwind_customers"]
    assert [s.table for s in config.sources] == config.trust_order
    assert set(config.survivorship) == set(GOLDEN_ATTRIBUTES)
    assert config.survivorship["birth_date"].rule == "most_trusted"
    assert config.survivorship["postcode"].with_ == "address"
    assert config.deterministic.rules == ["email", "phone", "billing_key"]
    assert config.deterministic.max_group == 6
    crm = config.sources[0]
    assert crm.id == "crm_id" and crm.columns["address"] == "address_line"
    assert config.sources[1].columns["full_name"] == "account_holder"


def test_a_valid_file_loads_and_keeps_the_listed_order(tmp_path: Path) -> None:
    config = load_identity_config(_write(tmp_path, _valid()))
    assert config.trust_order == ["crm", "loyalty"]
    assert config.deterministic.max_group == 4
    assert config.sources[1].columns == {"full_name": "name", "phone": "mobile"}
    assert config.survivorship["gender"].rule == "non_null"


def _unknown_identity_field(d: dict[str, Any]) -> None:
    d["sources"][0]["columns"]["nickname"] = "nick"


def _unknown_survivorship_attribute(d: dict[str, Any]) -> None:
    d["survivorship"]["shoe_size"] = {"rule": "most_recent"}


def _missing_attribute_rule(d: dict[str, Any]) -> None:
    del d["survivorship"]["email"]  # crm maps email


def _with_points_to_a_with(d: dict[str, Any]) -> None:
    d["survivorship"]["city"] = {"with": "postcode"}


def _with_points_to_an_unknown_attribute(d: dict[str, Any]) -> None:
    d["survivorship"]["city"] = {"with": "billing_key"}


def _both_rule_and_with(d: dict[str, Any]) -> None:
    d["survivorship"]["city"] = {"rule": "most_recent", "with": "address"}


def _unknown_rule(d: dict[str, Any]) -> None:
    d["survivorship"]["email"] = {"rule": "loudest"}


def _full_and_first_name(d: dict[str, Any]) -> None:
    d["sources"][1]["columns"]["first_name"] = "given"


def _duplicated_table(d: dict[str, Any]) -> None:
    d["sources"].append({"table": "crm", "id": "other_id", "columns": {"email": "e"}})


def _no_sources(d: dict[str, Any]) -> None:
    d["sources"] = []


def _max_group_too_small(d: dict[str, Any]) -> None:
    d["deterministic"]["max_group"] = 1


_INCONSISTENCIES: list[tuple[Callable[[dict[str, Any]], None], str]] = [
    (_unknown_identity_field, "unknown identity field(s) ['nickname']"),
    (_unknown_survivorship_attribute, "unknown attribute(s) ['shoe_size']"),
    (_missing_attribute_rule, "no rule for attribute(s) ['email'] (a source maps them)"),
    (_with_points_to_a_with, "survivorship.city: 'with: postcode' must name an attribute that has its own rule"),
    (_with_points_to_an_unknown_attribute, "'with: billing_key' must name an attribute"),
    (_both_rule_and_with, "give exactly one of 'rule' or 'with'"),
    (_unknown_rule, "survivorship.email.rule"),
    (_full_and_first_name, "source 'loyalty': map either full_name or first_name/last_name, not both"),
    (_duplicated_table, "a source table is listed twice: ['crm', 'loyalty', 'crm']"),
    (_no_sources, "sources"),
    (_max_group_too_small, "deterministic.max_group"),
]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [pytest.param(mutate, expected, id=mutate.__name__.strip("_")) for mutate, expected in _INCONSISTENCIES],
)
def test_an_inconsistent_config_names_the_problem(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], expected: str
) -> None:
    document = _valid()
    mutate(document)
    path = _write(tmp_path, document)
    with pytest.raises(IdentityConfigError) as info:
        load_identity_config(path)
    message = str(info.value)
    assert expected in message
    assert str(path) in message  # the user learns which file is wrong


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sources: [\n  - table: crm\n", "is not valid YAML"),
        ("survivorship: {first_name: {rule: most_frequent}\n", "is not valid YAML"),
        ("- just\n- a list\n", "must hold a mapping with 'sources' and 'survivorship'"),
        ("just a string\n", "must hold a mapping"),
        ("", "must hold a mapping"),  # an empty file is None, not a mapping
    ],
    ids=["unclosed-list", "unclosed-flow-mapping", "list-document", "scalar-document", "empty-document"],
)
def test_unreadable_documents_are_rejected(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "identity.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(IdentityConfigError, match="identity.yaml") as info:
        load_identity_config(path)
    assert expected in str(info.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "identity.yaml"
    with pytest.raises(IdentityConfigError, match="does not exist") as info:
        load_identity_config(path)
    assert str(path) in str(info.value)


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(IdentityConfigError, match="does not exist"):
        load_identity_config(tmp_path)


def test_the_config_error_is_a_value_error(tmp_path: Path) -> None:
    # callers that catch ValueError (e.g. the CLI's bad-parameter handling) see config errors too
    with pytest.raises(ValueError):
        load_identity_config(tmp_path / "missing.yaml")


def _misspelt_section(d: dict[str, Any]) -> None:
    d["determinstic"] = d.pop("deterministic")


def _misspelt_source_key(d: dict[str, Any]) -> None:
    d["sources"][0]["trust"] = 1


def _misspelt_rule_key(d: dict[str, Any]) -> None:
    d["survivorship"]["postcode"] = {"with": "address", "rul": "most_recent"}


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_misspelt_section, "determinstic"),
        (_misspelt_source_key, "trust"),
        (_misspelt_rule_key, "rul"),
    ],
    ids=["top-level", "source", "survivorship-rule"],
)
def test_an_unknown_key_anywhere_is_rejected(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], expected: str
) -> None:
    document = _valid()
    mutate(document)
    with pytest.raises(IdentityConfigError) as info:
        load_identity_config(_write(tmp_path, document))
    assert expected in str(info.value)
