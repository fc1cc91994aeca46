"""Deterministic linking, clustering and pairwise scoring."""

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.identity.deterministic import cluster_records, deterministic_links
from features.identity.evaluate import pairwise_scores


def _records(rows: list[tuple[str, str | None, str | None, str | None]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["record_key", "email", "phone", "billing_key"]).astype("string")


def test_each_rule_links_exact_shared_values_and_names_itself() -> None:
    recs = _records(
        [
            ("a", "x@m.com", None, None),
            ("b", "x@m.com", "+12125550143", None),
            ("c", None, "+12125550143", "BA1"),
            ("d", None, None, "BA1"),
            ("e", "y@m.com", "+13125550143", "BA2"),
        ]
    )
    links = deterministic_links(recs)
    assert set(map(tuple, links[["record_key_l", "record_key_r", "rule"]].to_numpy())) == {
        ("a", "b", "email"),
        ("b", "c", "phone"),
        ("c", "d", "billing_key"),
    }
    clusters = cluster_records(recs["record_key"], links)
    assert clusters.tolist() == ["a", "a", "a", "a", "e"]


def test_a_value_shared_by_too_many_records_links_nobody() -> None:
    recs = _records(
        [(f"r{i}", None, "+18005550100", None) for i in range(8)]
        + [("s1", "z@m.com", None, None), ("s2", "z@m.com", None, None)]
    )
    links = deterministic_links(recs, max_group=6)
    assert set(links["rule"]) == {"email"}
    clusters = cluster_records(recs["record_key"], links)
    assert clusters.nunique() == 9


def test_no_links_gives_singletons() -> None:
    recs = _records([("a", None, None, None), ("b", "q@m.com", None, None)])
    links = deterministic_links(recs)
    assert links.empty
    assert cluster_records(recs["record_key"], links).tolist() == ["a", "b"]


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["e1", "e2", "e3", None]),
            st.sampled_from(["p1", "p2", None]),
            st.sampled_from(["k1", None]),
        ),
        min_size=1,
        max_size=30,
    ),
    st.randoms(use_true_random=False),
)
def test_clustering_does_not_depend_on_row_order(rows: list, rnd) -> None:
    recs = _records([(f"r{i:03d}", *r) for i, r in enumerate(rows)])
    base = cluster_records(recs["record_key"], deterministic_links(recs))
    order = list(range(len(recs)))
    rnd.shuffle(order)
    shuffled = recs.iloc[order].reset_index(drop=True)
    again = cluster_records(shuffled["record_key"], deterministic_links(shuffled))
    assert dict(zip(shuffled["record_key"], again, strict=True)) == dict(zip(recs["record_key"], base, strict=True))


@pytest.mark.parametrize(
    ("predicted", "truth", "precision", "recall"),
    [
        ([1, 1, 2, 3], [1, 1, 2, 3], 1.0, 1.0),
        ([1, 1, 1, 1], [1, 1, 2, 2], 2 / 6, 1.0),
        ([1, 2, 3, 4], [1, 1, 2, 2], 1.0, 0.0),
        ([1, 1, 2, 2], [1, 1, 1, 2], 1 / 2, 1 / 3),
    ],
)
def test_pairwise_scores(predicted: list, truth: list, precision: float, recall: float) -> None:
    s = pairwise_scores(pd.Series(predicted), pd.Series(truth))
    assert s.precision == pytest.approx(precision)
    assert s.recall == pytest.approx(recall)
