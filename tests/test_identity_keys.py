"""Stable customer keys across runs: new, kept, merged, split and retired keys."""

import hashlib
import random

import pandas as pd
import pytest

from features.identity.keys import CROSSWALK_COLUMNS, KEY_EVENT_COLUMNS, assign_customer_keys

KEY_PATTERN = r"CK[0-9A-F]{14}"


def _derived(anchor: str) -> str:
    """The documented first-run key: 'CK' and 14 hex digits of the sha256 of the smallest record key."""
    return "CK" + hashlib.sha256(anchor.encode("utf-8")).hexdigest()[:14].upper()


def _clusters(*groups: list[str]) -> pd.DataFrame:
    """record_key and cluster, each cluster labelled by its smallest member (as cluster_records does)."""
    rows = [(record, min(group)) for group in groups for record in group]
    return pd.DataFrame(rows, columns=["record_key", "cluster"]).astype("string")


def _keys(crosswalk: pd.DataFrame) -> dict[str, str]:
    return dict(zip(crosswalk["record_key"], crosswalk["customer_key"], strict=True))


def _events(log: pd.DataFrame) -> list[tuple[str, str, str | None, int]]:
    return [
        (row.customer_key, row.event, None if pd.isna(row.related_key) else row.related_key, row.records)
        for row in log.itertuples()
    ]


def _run(*groups: list[str], previous: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    return assign_customer_keys(_clusters(*groups), previous)


def test_first_run_keys_are_derived_from_each_clusters_smallest_record_key() -> None:
    crosswalk, events = _run(["crm:2", "billing:9", "crm:7"], ["shop:1"])
    assert crosswalk.columns.tolist() == CROSSWALK_COLUMNS
    assert crosswalk["record_key"].tolist() == ["billing:9", "crm:2", "crm:7", "shop:1"]  # sorted
    assert _keys(crosswalk) == {
        "billing:9": _derived("billing:9"),
        "crm:2": _derived("billing:9"),
        "crm:7": _derived("billing:9"),
        "shop:1": _derived("shop:1"),
    }
    assert crosswalk["customer_key"].str.fullmatch(KEY_PATTERN).all()
    assert events.columns.tolist() == KEY_EVENT_COLUMNS
    assert sorted(_events(events)) == sorted(
        [(_derived("billing:9"), "new", None, 3), (_derived("shop:1"), "new", None, 1)]
    )


@pytest.mark.parametrize("seed", range(4))
def test_first_run_keys_depend_on_membership_only(seed: int) -> None:
    groups = [["a:1", "b:4", "c:2"], ["a:3"], ["b:1", "b:2"], ["c:9", "a:9"]]
    base, base_events = _run(*groups)
    again, again_events = _run(*groups)
    pd.testing.assert_frame_equal(again, base)
    pd.testing.assert_frame_equal(again_events, base_events)
    # shuffled rows and arbitrary cluster labels give the same keys
    rnd = random.Random(seed)
    clusters = _clusters(*groups)
    clusters["cluster"] = clusters["cluster"].map({c: f"label{rnd.randint(0, 10**6)}-{c}" for c in clusters["cluster"]})
    clusters = clusters.sample(frac=1, random_state=seed).reset_index(drop=True)
    shuffled, shuffled_events = assign_customer_keys(clusters)
    pd.testing.assert_frame_equal(shuffled, base)
    pd.testing.assert_frame_equal(shuffled_events, base_events)
    assert base["customer_key"].nunique() == len(groups)


def test_a_second_run_on_the_same_clusters_keeps_every_key_and_logs_nothing() -> None:
    groups = (["crm:1", "shop:4"], ["crm:2"], ["billing:3", "shop:5", "crm:9"])
    first, _ = _run(*groups)
    second, events = _run(*groups, previous=first)
    pd.testing.assert_frame_equal(second, first)
    assert events.empty
    assert events.columns.tolist() == KEY_EVENT_COLUMNS


def test_previous_keys_are_kept_even_when_they_are_not_derived_keys() -> None:
    previous = pd.DataFrame({"record_key": ["crm:1", "crm:2"], "customer_key": ["LEGACY-7", "LEGACY-7"]})
    crosswalk, events = _run(["crm:1", "crm:2"], previous=previous)
    assert set(crosswalk["customer_key"]) == {"LEGACY-7"}
    assert events.empty


def test_an_appended_record_joining_a_cluster_takes_its_key() -> None:
    first, _ = _run(["crm:5", "shop:2"], ["crm:8"])
    kept = _keys(first)["crm:5"]
    # the new record is the cluster's smallest key, which would change a derived key
    second, events = _run(["billing:1", "crm:5", "shop:2"], ["crm:8"], previous=first)
    assert _keys(second)["billing:1"] == kept
    assert _keys(second)["crm:5"] == kept
    assert _keys(second)["crm:8"] == _keys(first)["crm:8"]
    assert events.empty


def test_a_new_person_gets_a_new_key_and_the_others_keep_theirs() -> None:
    first, _ = _run(["crm:1", "shop:1"], ["crm:2"])
    second, events = _run(["crm:1", "shop:1"], ["crm:2"], ["shop:9", "billing:9"], previous=first)
    assert _keys(second)["crm:1"] == _keys(first)["crm:1"]
    assert _keys(second)["crm:2"] == _keys(first)["crm:2"]
    new_key = _derived("billing:9")
    assert _keys(second)["shop:9"] == _keys(second)["billing:9"] == new_key
    assert _events(events) == [(new_key, "new", None, 2)]


def test_a_merge_keeps_the_key_with_more_records_and_logs_the_other_as_merged() -> None:
    first, _ = _run(["a:1"], ["b:1", "b:2", "b:3"])
    small, large = _keys(first)["a:1"], _keys(first)["b:1"]
    second, events = _run(["a:1", "b:1", "b:2", "b:3"], previous=first)
    assert set(second["customer_key"]) == {large}
    assert _events(events) == [(small, "merged", large, 1)]


def test_a_merge_of_equal_clusters_keeps_the_smaller_key() -> None:
    # a's key sorts after b's, although a's records sort first
    previous = pd.DataFrame(
        {
            "record_key": ["a:1", "a:2", "b:1", "b:2"],
            "customer_key": ["CK00000000000002", "CK00000000000002", "CK00000000000001", "CK00000000000001"],
        }
    )
    crosswalk, events = _run(["a:1", "a:2", "b:1", "b:2"], previous=previous)
    assert set(crosswalk["customer_key"]) == {"CK00000000000001"}
    assert _events(events) == [("CK00000000000002", "merged", "CK00000000000001", 2)]


def test_a_split_logs_the_smaller_part_and_the_larger_part_keeps_the_key() -> None:
    first, _ = _run(["a:1", "a:2", "a:3", "z:1"])
    original = _keys(first)["a:1"]
    second, events = _run(["a:1", "a:2", "a:3"], ["z:1"], previous=first)
    assert {_keys(second)[r] for r in ("a:1", "a:2", "a:3")} == {original}
    split_key = _keys(second)["z:1"]
    assert split_key != original
    assert split_key == _derived("z:1")
    assert _events(events) == [(split_key, "split", original, 1)]


def test_a_three_way_split_logs_each_smaller_part() -> None:
    first, _ = _run(["a:1", "a:2", "b:1", "b:2", "b:3", "c:1"])
    original = _keys(first)["a:1"]
    second, events = _run(["a:1", "a:2"], ["b:1", "b:2", "b:3"], ["c:1"], previous=first)
    assert _keys(second)["b:1"] == original
    assert sorted(_events(events)) == sorted(
        [(_keys(second)["a:1"], "split", original, 2), (_keys(second)["c:1"], "split", original, 1)]
    )
    assert second.groupby("customer_key").size().sort_values().tolist() == [1, 2, 3]


def test_a_cluster_whose_records_all_disappeared_is_retired() -> None:
    first, _ = _run(["a:1", "a:2"], ["b:1"], ["c:1"])
    gone_a, gone_c = _keys(first)["a:1"], _keys(first)["c:1"]
    second, events = _run(["b:1"], previous=first)
    assert _keys(second) == {"b:1": _keys(first)["b:1"]}
    assert sorted(_events(events)) == sorted([(gone_a, "retired", None, 0), (gone_c, "retired", None, 0)])
    assert events["records"].dtype == "int64"


def test_new_merged_split_and_retired_in_one_run() -> None:
    first, _ = _run(["a:1"], ["b:1", "b:2"], ["c:1", "c:2", "c:3"], ["d:1"])
    k = {name: _keys(first)[f"{name}:1"] for name in "abcd"}
    # a merges into b, c loses c:3, d disappears, e is new
    second, events = _run(["a:1", "b:1", "b:2"], ["c:1", "c:2"], ["c:3"], ["e:1"], previous=first)
    assert _keys(second)["a:1"] == k["b"] and _keys(second)["c:1"] == k["c"]
    assert sorted(_events(events), key=lambda e: e[1]) == [
        (k["a"], "merged", k["b"], 1),
        (_derived("e:1"), "new", None, 1),
        (k["d"], "retired", None, 0),
        (_derived("c:3"), "split", k["c"], 1),
    ]
    # the log is sorted by event, then key
    assert events["event"].tolist() == sorted(events["event"])


def test_a_split_off_anchor_does_not_take_the_key_its_old_cluster_keeps() -> None:
    first, _ = _run(["a:1", "b:1", "c:1"])
    original = _keys(first)["a:1"]
    assert original == _derived("a:1")
    # a:1 leaves; the larger part keeps the key derived from a:1, so a:1's own derived key is taken
    second, events = _run(["a:1"], ["b:1", "c:1"], previous=first)
    assert _keys(second)["b:1"] == _keys(second)["c:1"] == original
    split_key = _keys(second)["a:1"]
    assert split_key != original
    assert pd.Series([split_key]).str.fullmatch(KEY_PATTERN).all()
    assert _events(events) == [(split_key, "split", original, 1)]
    # still deterministic
    again, _ = _run(["b:1", "c:1"], ["a:1"], previous=first)
    pd.testing.assert_frame_equal(again, second)


def test_a_derived_key_never_collides_with_a_key_still_in_use_from_a_merged_away_anchor() -> None:
    # run 1: a:1 anchors the cluster {a:1, b:1, c:1}, which gets the key derived from a:1
    run1, _ = _run(["a:1", "b:1", "c:1"], ["x:1", "x:2", "x:3", "x:4"])
    derived_a, derived_x = _keys(run1)["a:1"], _keys(run1)["x:1"]
    assert derived_a == _derived("a:1")
    # run 2: a:1 is merged away into x's cluster; {b:1, c:1} keeps the key derived from a:1
    run2, events2 = _run(["a:1", "x:1", "x:2", "x:3", "x:4"], ["b:1", "c:1"], previous=run1)
    assert _keys(run2)["a:1"] == derived_x and _keys(run2)["b:1"] == derived_a
    assert events2.empty
    # run 3: a:1 splits off on its own; it anchors a cluster without a key of its own,
    # and the key derived from it is still b:1 and c:1's key
    run3, events3 = _run(["a:1"], ["b:1", "c:1"], ["x:1", "x:2", "x:3", "x:4"], previous=run2)
    keys3 = _keys(run3)
    assert keys3["b:1"] == derived_a and keys3["x:1"] == derived_x
    assert keys3["a:1"] not in {derived_a, derived_x}
    assert run3.groupby("customer_key")["record_key"].apply(frozenset).nunique() == 3
    assert _events(events3) == [(keys3["a:1"], "split", derived_x, 1)]


def test_a_returning_record_does_not_take_a_key_still_held_by_its_old_cluster() -> None:
    first, _ = _run(["m:1", "n:1"])
    held = _keys(first)["n:1"]
    assert held == _derived("m:1")
    # m:1 is absent for a run, then comes back alone: it anchors a brand-new cluster
    second, _ = _run(["n:1"], previous=first)
    third, events = _run(["m:1"], ["n:1"], previous=second)
    assert _keys(third)["n:1"] == held
    assert _keys(third)["m:1"] != held
    assert _events(events) == [(_keys(third)["m:1"], "new", None, 1)]
