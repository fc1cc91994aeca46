"""Ids-only identity: sources without names resolve without the probabilistic model.

A retailer's transactions carry a customer id and nothing else about the person: each id
is one customer (linked to others only by exact rules the config names), a table with many
rows per id gives one record per id, and survivorship rules are needed only for attributes
some source has.
"""

from __future__ import annotations

import pandas as pd
import pytest

from features.identity.config import IdentityConfig, IdentityConfigError
from features.identity.probabilistic import TrainingDataError
from features.identity.records import assemble_identity_records
from features.identity.resolve import ResolveOptions, resolve_records

OPTIONS = ResolveOptions(u_max_pairs=1e4)


def _purchases() -> pd.DataFrame:
    """Purchase lines: several per customer id, ids only (one line has no id)."""
    return pd.DataFrame(
        {
            "Invoice": ["1", "1", "2", "3", "4", "5", "6"],
            "Customer ID": ["17850", "17850", "13047", "17850", "12583", None, "13047"],
            "InvoiceDate": [
                "2010-12-01 08:26:00", "2010-12-01 08:26:00", "2010-12-02 09:00:00", "2010-12-05 10:00:00",
                "2010-12-06 11:00:00", "2010-12-07 12:00:00", "2010-12-03 13:00:00",
            ],
            "Country": ["United Kingdom", "United Kingdom", "France", "Germany", "France", "Spain", "Italy"],
        }
    )  # fmt: skip


def _config(**extra: object) -> IdentityConfig:
    source = {"table": "retail", "id": "Customer ID", "repeated_ids": True, "columns": {"updated_at": "InvoiceDate"}}
    return IdentityConfig.model_validate({"mode": "ids_only", "sources": [source], **extra})


def test_each_id_is_one_customer_without_a_model_or_survivorship_rules() -> None:
    config = _config()
    records = assemble_identity_records({"retail": _purchases()}, config.sources)
    assert sorted(records["record_key"]) == ["retail:12583", "retail:13047", "retail:17850"]
    resolved = resolve_records(records, config, OPTIONS)
    assert resolved.model is None
    assert len(resolved.golden) == 3 and resolved.crosswalk["customer_key"].nunique() == 3
    assert resolved.links.empty and resolved.stats["deterministic_rules"] == []
    assert resolved.golden["email"].isna().all() and resolved.conflicts.empty


def test_a_repeated_id_keeps_its_most_recently_updated_row() -> None:
    source = {"table": "retail", "id": "Customer ID", "repeated_ids": True}
    columns = {"updated_at": "InvoiceDate", "state": "Country"}
    rules = {"state": {"rule": "non_null"}}
    config = IdentityConfig.model_validate(
        {"mode": "ids_only", "sources": [{**source, "columns": columns}], "survivorship": rules}
    )
    records = assemble_identity_records({"retail": _purchases()}, config.sources)
    states = dict(zip(records["record_id"], records["state"], strict=True))
    assert states == {"17850": "GERMANY", "13047": "ITALY", "12583": "FRANCE"}  # 17850's newest line is 2010-12-05


def test_without_repeated_ids_a_repeated_id_names_the_option() -> None:
    config = IdentityConfig.model_validate({"mode": "ids_only", "sources": [{"table": "retail", "id": "Customer ID"}]})
    with pytest.raises(IdentityConfigError, match="repeated_ids: true"):
        assemble_identity_records({"retail": _purchases()}, config.sources)


def test_ids_only_links_by_exact_rules_only_when_the_config_names_them() -> None:
    frames = {
        "shop": pd.DataFrame({"id": ["a", "b"], "mail": ["x@example.com", "y@example.com"]}),
        "app": pd.DataFrame({"id": ["1", "2"], "mail": ["X@example.com", None]}),
    }
    sources = [{"table": t, "id": "id", "columns": {"email": "mail"}} for t in ("shop", "app")]
    rules = {"email": {"rule": "most_recent"}}
    plain = IdentityConfig.model_validate({"mode": "ids_only", "sources": sources, "survivorship": rules})
    linked = IdentityConfig.model_validate(
        {"mode": "ids_only", "sources": sources, "survivorship": rules, "deterministic": {"rules": ["email"]}}
    )
    records = assemble_identity_records(frames, plain.sources)
    assert resolve_records(records, plain, OPTIONS).crosswalk["customer_key"].nunique() == 4
    joined = resolve_records(records, linked, OPTIONS)
    assert joined.crosswalk["customer_key"].nunique() == 3 and joined.model is None
    assert list(joined.links["rule"]) == ["email"]


def test_matching_ids_without_names_names_ids_only_as_the_way_out() -> None:
    source = {"table": "retail", "id": "Customer ID", "repeated_ids": True, "columns": {"updated_at": "InvoiceDate"}}
    config = IdentityConfig.model_validate({"sources": [source]})  # mode: match (the default)
    records = assemble_identity_records({"retail": _purchases()}, config.sources)
    with pytest.raises(TrainingDataError, match="'mode: ids_only'"):
        resolve_records(records, config, OPTIONS)


def test_survivorship_is_required_only_for_attributes_a_source_maps() -> None:
    source = {"table": "loyalty", "id": "ref", "columns": {"full_name": "name", "phone": "mobile"}}
    with pytest.raises(ValueError, match=r"no rule for attribute\(s\) \['first_name', 'last_name', 'phone'\]"):
        IdentityConfig.model_validate({"sources": [source], "survivorship": {}})
    rules = {a: {"rule": "most_recent"} for a in ("first_name", "last_name", "phone")}
    config = IdentityConfig.model_validate({"sources": [source], "survivorship": rules})
    assert config.mapped_attributes == {"first_name", "last_name", "phone"}


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="mode"):
        IdentityConfig.model_validate({"mode": "guess", "sources": [{"table": "t", "id": "id"}]})
