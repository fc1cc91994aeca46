"""The feature stores: SQLite and Redis online stores answer alike; the offline store keeps versions apart."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from custintel.settings import Settings
from features.featurestore.offline import (
    OfflineStoreError,
    available_as_of,
    read_manifest,
    read_offline,
    read_training_table,
    set_dir,
    write_partitions,
)
from features.featurestore.online import (
    AS_OF,
    OnlineStore,
    OnlineStoreError,
    RedisOnlineStore,
    SetView,
    SQLiteOnlineStore,
    merge_documents,
    online_documents,
    parse_documents,
    set_layout,
    set_view,
)
from features.featurestore.store import materialize_online, open_online_store
from flows.cli import app
from flows.features import PLAIN_STEPS, BuiltSet, materialize, run_feature_build
from tests.conftest import Ingested

REDIS_URL = "redis://127.0.0.1:6379/0"
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"
DAY = dt.date(2025, 3, 1)
LATER = dt.date(2025, 4, 1)
# The sets a build writes. Labels (the future) and attributes (protected, for audits) are never served.
FEATURE_SETS = ("relationship@1", "value@1", "service@1", "digital@1")
ONLINE_SETS = (*FEATURE_SETS, "interactions@1")
ALL_SETS = (*ONLINE_SETS, "attributes@1", "labels@1", "purchase_labels@1")


def _dates(day: dt.date, n: int) -> pa.Array:
    return pa.array([day] * n, pa.date32())


def profile_table(keys: tuple[str, ...] = ("CK1", "CK2", "CK3"), day: dt.date = DAY) -> pa.Table:
    """One row per customer: an int, floats that JSON could round, an all-NULL column, strings, a date."""
    rows = {
        "CK1": (0, 0.1, "consumer", dt.date(2020, 1, 31)),
        "CK2": (2**53 + 1, 1 / 3, 'small "business" é', dt.date(2021, 2, 28)),
        "CK3": (-7, 1e-300, None, dt.date(2024, 12, 31)),
    }
    picked = [rows[k] for k in keys]
    return pa.table(
        {
            "customer_key": pa.array(list(keys), pa.string()),
            "as_of": _dates(day, len(keys)),
            "tickets_90d": pa.array([r[0] for r in picked], pa.int64()),
            "spend_90d": pa.array([r[1] for r in picked], pa.float64()),
            "nps_last": pa.nulls(len(keys), pa.float64()),
            "segment": pa.array([r[2] for r in picked], pa.string()),
            "first_seen": pa.array([r[3] for r in picked], pa.date32()),
        }
    )


def interactions_table(rows: list[tuple[str, str, int, float]] | None = None, day: dt.date = DAY) -> pa.Table:
    """Customer x product rows, several per customer, as `interactions` has them."""
    rows = (
        [("CK1", "ADD-FAMILY", 2, 40.0), ("CK1", "ADD-INTL", 1, 0.1), ("CK2", "ADD-FAMILY", 1, 20.5)]
        if rows is None
        else rows
    )
    return pa.table(
        {
            "customer_key": pa.array([r[0] for r in rows], pa.string()),
            "as_of": _dates(day, len(rows)),
            "product_id": pa.array([r[1] for r in rows], pa.string()),
            "purchases": pa.array([r[2] for r in rows], pa.int64()),
            "spend": pa.array([r[3] for r in rows], pa.float64()),
        }
    )


def _meta(digest: str = "d1", day: dt.date = DAY) -> dict[str, Any]:
    return {"digest": digest, "as_of": day.isoformat()}


def _without_time(sets: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {k: {m: v for m, v in meta.items() if m != "materialized_at"} for k, meta in sets.items()}


def _replace_everywhere(stores: tuple[OnlineStore, ...], set_key: str, table: pa.Table, grouped: bool = False) -> None:
    for store in stores:
        written = store.replace_set(set_key, online_documents(table, grouped=grouped), _meta())
        assert written == len(set(table.column("customer_key").to_pylist()))


def _same_answers(stores: tuple[OnlineStore, ...], keys: list[str]) -> None:
    sqlite, redis_store = stores
    for key in keys:
        assert sqlite.lookup(key) == redis_store.lookup(key), key
    assert _without_time(sqlite.sets()) == _without_time(redis_store.sets())


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[SQLiteOnlineStore, RedisOnlineStore]]:
    """An empty SQLite store and an empty Redis namespace, removed afterwards."""
    sqlite = SQLiteOnlineStore(tmp_path / "online.sqlite")
    redis_store = RedisOnlineStore(REDIS_URL, f"test-{uuid4().hex}")
    try:
        yield sqlite, redis_store
    finally:
        redis_store.drop_namespace()
        redis_store.close()
        sqlite.close()


@pytest.fixture
def loaded(stores: tuple[SQLiteOnlineStore, RedisOnlineStore]) -> tuple[SQLiteOnlineStore, RedisOnlineStore]:
    """Both stores holding the same flat set (profile@1) and grouped set (interactions@1)."""
    _replace_everywhere(stores, "profile@1", profile_table())
    _replace_everywhere(stores, "interactions@1", interactions_table(), grouped=True)
    return stores


# --------------------------------------------------------------------------------------------
# online stores on hand-made rows


@pytest.mark.integration
def test_sqlite_and_redis_give_identical_answers(loaded: tuple[SQLiteOnlineStore, RedisOnlineStore]) -> None:
    _same_answers(loaded, ["CK1", "CK2", "CK3", "NOPE"])
    sqlite, redis_store = loaded
    assert set(sqlite.lookup("CK1") or {}) == {"profile@1", "interactions@1"}
    assert set(sqlite.lookup("CK3") or {}) == {"profile@1"}
    for store in loaded:
        sets = store.sets()
        assert sorted(sets) == ["interactions@1", "profile@1"]
        assert {k: v["rows"] for k, v in sets.items()} == {"profile@1": 3, "interactions@1": 2}
        assert all(v["digest"] == "d1" and v["as_of"] == "2025-03-01" and v["materialized_at"] for v in sets.values())


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_values_survive_json(loaded: tuple[SQLiteOnlineStore, RedisOnlineStore], backend: str) -> None:
    store = loaded[0] if backend == "sqlite" else loaded[1]
    two = store.lookup("CK2")
    assert two is not None
    assert two["profile@1"] == {
        "as_of": "2025-03-01",
        "tickets_90d": 2**53 + 1,  # beyond a double's exact integers: kept as an integer
        "spend_90d": 1 / 3,  # the same double, not a rounded print of it
        "nps_last": None,
        "segment": 'small "business" é',
        "first_seen": "2021-02-28",
    }
    three = store.lookup("CK3")
    assert three is not None and three["profile@1"]["spend_90d"] == 1e-300 and three["profile@1"]["segment"] is None
    one = store.lookup("CK1")
    assert one is not None and one["profile@1"]["spend_90d"] == 0.1
    assert one["interactions@1"]["as_of"] == "2025-03-01"
    items = sorted(one["interactions@1"]["items"], key=lambda item: item["product_id"])
    assert items == [
        {"product_id": "ADD-FAMILY", "purchases": 2, "spend": 40.0},
        {"product_id": "ADD-INTL", "purchases": 1, "spend": 0.1},
    ]


PROFILE_COLUMNS = ["tickets_90d", "spend_90d", "nps_last", "segment", "first_seen"]


def test_a_sets_layout_names_its_columns_and_the_numeric_ones() -> None:
    assert set_layout(profile_table(), grouped=False) == {
        "columns": PROFILE_COLUMNS,
        "numeric": ["tickets_90d", "spend_90d", "nps_last"],
        "grouped": False,
    }
    assert set_layout(interactions_table(), grouped=True) == {
        "columns": ["items"],
        "numeric": [],
        "grouped": True,
        "item_columns": ["product_id", "purchases", "spend"],
    }


@pytest.mark.integration
def test_the_stores_reader_merges_what_its_writer_wrote_alike_in_both_backends(
    stores: tuple[SQLiteOnlineStore, RedisOnlineStore],
) -> None:
    """`merged` and `merged_many` read `online_documents` back: one row per customer, the same in both backends."""
    tier = pa.table({"customer_key": ["CK1"], "as_of": _dates(LATER, 1), "tier": ["gold"]})  # a newer cutoff
    written = [("profile@1", profile_table(), False), ("interactions@1", interactions_table(), True),
               ("tier@1", tier, False)]  # fmt: skip
    for store in stores:
        for key, table, grouped in written:
            store.replace_set(key, online_documents(table, grouped=grouped), {**_meta(), **set_layout(table, grouped)})
    answers = []
    for store in stores:
        keys = ["CK3", "CK1", "NOPE", "CK2", "CK1"]
        one = store.merged("CK1")
        assert one is not None and one == merge_documents(store.lookup("CK1") or {})
        assert one[AS_OF] == str(LATER) and "as_of" not in one and one["tier"] == "gold" and len(one["items"]) == 2
        assert store.merged("NOPE") is None
        everything = store.merged_many(keys)
        assert everything.rows == {k: store.merged(k) for k in ("CK1", "CK2", "CK3")} and everything.texts == {}

        view = set_view(store.sets(), PROFILE_COLUMNS)
        assert view == SetView(("profile@1",), True, frozenset({"tickets_90d", "spend_90d", "nps_last"}))
        found = store.merged_many(keys, view)
        assert found.view == view and set(found.rows) == set(found.texts) == {"CK1", "CK2", "CK3"}
        for key, row in found.rows.items():
            assert row == merge_documents(store.lookup(key, ["profile@1"]) or {})
            assert json.loads(found.texts[key]) == {c: row[c] for c in PROFILE_COLUMNS}  # the inputs, as stored
        assert found.rows["CK2"]["tickets_90d"] == 2**53 + 1 and found.rows["CK2"]["spend_90d"] == 1 / 3
        answers.append((one, everything.rows, found.rows, found.texts))
    assert answers[0] == answers[1]


def test_raw_documents_parse_like_documents_parsed_one_by_one(tmp_path: Path) -> None:
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    store.replace_set(
        "b@1", [("k1", '{"as_of":"2025-02-01","x":2,"y":null}'), ("k2", '{"as_of":"2025-03-01","y":"z"}')], {}
    )
    store.replace_set("a@1", [("k1", '{"as_of":"2025-01-01","x":1,"w":[{"p":1}]}'), ("k4", '{"as_of":"2025-01-01"}')],
                      {})  # fmt: skip
    keys = ["k2", "k1", "k3", "k1", "k4"]
    raw = store.raw_documents_many(keys)
    assert set(raw) == {"k1", "k2", "k4"}
    assert store.raw_documents_many(keys, ["a@1"]) == {"k1": [raw["k1"][0]], "k4": raw["k4"]}
    merged = parse_documents(raw).rows
    for key, docs in store.lookup_many(keys).items():
        assert merged[key] == merge_documents(docs)
        assert parse_documents({key: raw[key][:1]}).rows[key] == merge_documents(dict(list(docs.items())[:1]))
    assert merged["k1"] == {"x": 2, "y": None, "w": [{"p": 1}], AS_OF: "2025-02-01"}  # the later set wins
    store.replace_set("c@1", [("k1", '{ "x": 3 }')], {})  # not as the feature store writes: parsed one by one
    raw = store.raw_documents_many(keys)
    assert parse_documents(raw).rows == {k: merge_documents(d) for k, d in store.lookup_many(keys).items()}
    assert store.merged_many(keys).rows["k1"]["x"] == 3
    # NaN and infinities, which orjson refuses, read as Python's json reads them
    nan = parse_documents({"k": ['{"as_of":"2025-01-01","x":NaN,"y":-Infinity}']}).rows["k"]
    assert nan["x"] != nan["x"] and nan["y"] == float("-inf") and nan[AS_OF] == "2025-01-01"
    store.close()


def test_a_model_reads_only_the_sets_holding_its_inputs() -> None:
    metas = {
        "a@1": {"columns": ["x", "y"], "numeric": ["x", "y"], "grouped": False},
        "b@1": {"columns": ["plan"], "numeric": [], "grouped": False},
        "items@1": {"columns": ["items"], "numeric": [], "grouped": True},
    }
    assert set_view(metas, ["x", "y", "plan"]) == SetView(("a@1", "b@1"), True, frozenset({"x", "y"}))
    assert set_view(metas, ["x"]) == SetView(("a@1",), False)  # y would be logged as an input: not exact
    assert set_view(metas, ["x", "y", "plan", "other"]) == SetView(("a@1", "b@1"), False)
    assert set_view(metas, ["x", "y", "items"]) == SetView(("a@1", "items@1"), False)  # grouped: not flat
    overlapping = {**metas, "c@1": {"columns": ["y"], "numeric": ["y"], "grouped": False}}
    assert set_view(overlapping, ["x", "y", "plan"]) == SetView(("a@1", "b@1", "c@1"), False)
    assert set_view({**metas, "old@1": {"as_of": "2025-01-01"}}, ["x"]) == SetView(None)  # columns unrecorded
    assert set_view({}, ["x"]) == SetView(None)


@pytest.mark.integration
def test_unknown_keys_and_set_filters(loaded: tuple[SQLiteOnlineStore, RedisOnlineStore]) -> None:
    for store in loaded:
        assert store.lookup("NOPE") is None
        assert store.lookup("") is None
        only = store.lookup("CK1", set_keys=["interactions@1"])
        assert only is not None and list(only) == ["interactions@1"]
        assert store.lookup("CK1", set_keys=["profile@1", "interactions@1"]) == store.lookup("CK1")
        assert store.lookup("CK3", set_keys=["interactions@1"]) is None  # CK3 bought nothing
        assert store.lookup("CK1", set_keys=["missing@1"]) is None
        assert store.lookup("CK1", set_keys=[]) is None


@pytest.mark.integration
def test_replacing_a_set_drops_customers_no_longer_in_it(loaded: tuple[SQLiteOnlineStore, RedisOnlineStore]) -> None:
    # CK3 churned: gone from profile@1, and so from the store (it is in no other set).
    _replace_everywhere(loaded, "profile@1", profile_table(("CK1", "CK2"), day=LATER))
    # CK2 no longer holds anything: gone from interactions@1, but its profile stays.
    _replace_everywhere(loaded, "interactions@1", interactions_table([("CK1", "ADD-INTL", 3, 2.5)]), grouped=True)
    _same_answers(loaded, ["CK1", "CK2", "CK3"])
    for store in loaded:
        assert store.lookup("CK3") is None
        two = store.lookup("CK2")
        assert two is not None and list(two) == ["profile@1"] and two["profile@1"]["as_of"] == "2025-04-01"
        one = store.lookup("CK1")
        assert one is not None
        assert one["interactions@1"]["items"] == [{"product_id": "ADD-INTL", "purchases": 3, "spend": 2.5}]
        assert {k: v["rows"] for k, v in store.sets().items()} == {"interactions@1": 1, "profile@1": 2}

    # a set replaced with nothing is empty; the other set is untouched
    _replace_everywhere(loaded, "interactions@1", interactions_table([]), grouped=True)
    _same_answers(loaded, ["CK1", "CK2", "CK3"])
    for store in loaded:
        assert store.lookup("CK1", set_keys=["interactions@1"]) is None
        one = store.lookup("CK1")
        assert one is not None and list(one) == ["profile@1"]
        assert store.sets()["interactions@1"]["rows"] == 0

    # and it can be filled again
    _replace_everywhere(loaded, "interactions@1", interactions_table(), grouped=True)
    _same_answers(loaded, ["CK1", "CK2", "CK3"])
    assert set(loaded[1].lookup("CK2") or {}) == {"profile@1", "interactions@1"}


def _failing_after(n: int) -> Iterator[tuple[str, str]]:
    """Documents for n new customers, then a failure (as a dropped connection or a failed query would be)."""
    for i in range(n):
        yield f"NEW{i:06d}", json.dumps({"as_of": "2025-04-01", "tickets_90d": i})
    raise RuntimeError("the document stream broke")


@pytest.mark.integration
def test_a_failed_replacement_leaves_the_old_set_in_both_backends(
    loaded: tuple[SQLiteOnlineStore, RedisOnlineStore],
) -> None:
    before = [store.lookup("CK1") for store in loaded]
    for store in loaded:
        with pytest.raises(RuntimeError, match="stream broke"):
            store.replace_set("profile@1", _failing_after(20_001), _meta("d2", LATER))
    for store, old in zip(loaded, before, strict=True):
        assert store.lookup("CK1") == old
        assert store.sets()["profile@1"]["digest"] == "d1"
        assert store.lookup("NEW000000") is None, type(store).__name__


@pytest.mark.integration
def test_unreachable_redis_names_the_url() -> None:
    with pytest.raises(OnlineStoreError, match=r"Redis at redis://127\.0\.0\.1:1/0 cannot be reached"):
        RedisOnlineStore(UNREACHABLE_REDIS, "test-unreachable")
    settings = Settings(home=Path("/nonexistent-home"), redis_url=UNREACHABLE_REDIS)
    with pytest.raises(OnlineStoreError, match="127.0.0.1:1"):
        open_online_store(settings)


@pytest.mark.integration
def test_settings_choose_the_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUSTINTEL_REDIS_URL", raising=False)
    embedded = Settings(home=tmp_path / "home")
    namespace = f"test-{uuid4().hex}"
    served = Settings(home=tmp_path / "home", redis_url=REDIS_URL, online_namespace=namespace)
    with open_online_store(embedded) as store:
        assert isinstance(store, SQLiteOnlineStore)
        assert store.path == embedded.features_dir / "online.sqlite"
    with open_online_store(served) as store:
        assert isinstance(store, RedisOnlineStore) and store.namespace == namespace
    try:
        for settings in (embedded, served):
            assert materialize_online(settings, "profile@1", profile_table(), _meta()) == 3
        with open_online_store(embedded) as sqlite, open_online_store(served) as redis_store:
            _same_answers((sqlite, redis_store), ["CK1", "CK2", "CK3"])
    finally:
        with RedisOnlineStore(REDIS_URL, namespace) as redis_store:
            assert isinstance(redis_store, RedisOnlineStore)
            redis_store.drop_namespace()


# --------------------------------------------------------------------------------------------
# the offline store


def _two_cutoffs(table_for: Any = profile_table) -> pa.Table:
    return pa.concat_tables([table_for(day=DAY), table_for(day=LATER)])


def _stats(table: pa.Table) -> dict[str, dict[str, Any]]:
    days = table.column("as_of").to_pylist()
    return {d.isoformat(): {"rows": days.count(d)} for d in sorted(set(days))}


def test_offline_round_trip(tmp_path: Path) -> None:
    table = _two_cutoffs()
    paths = write_partitions(tmp_path, "profile@1", {"name": "profile"}, "d1", table, _stats(table))
    assert paths == [tmp_path / "profile" / "v1" / f"as_of={d}" / "data.parquet" for d in ("2025-03-01", "2025-04-01")]
    assert all(p.is_file() for p in paths)
    assert available_as_of(tmp_path, "profile@1") == [DAY, LATER]
    back = read_offline(tmp_path, "profile@1")
    assert back.schema == table.schema
    assert back.to_pylist() == table.to_pylist()  # exact floats, NULLs and dates
    assert read_offline(tmp_path, "profile@1", [LATER]).to_pylist() == profile_table(day=LATER).to_pylist()


def test_the_manifest_records_definition_digest_and_partitions(tmp_path: Path) -> None:
    definition = {"name": "profile", "version": 1, "features": ["tickets_90d", "spend_90d"]}
    first = profile_table()
    write_partitions(tmp_path, "profile@1", definition, "d1", first, _stats(first))
    later = profile_table(("CK1", "CK2"), day=LATER)
    write_partitions(tmp_path, "profile@1", definition, "d1", later, _stats(later))  # same digest: adds a cutoff
    manifest = read_manifest(tmp_path, "profile@1")
    assert manifest is not None
    assert manifest == json.loads((set_dir(tmp_path, "profile@1") / "manifest.json").read_text())
    assert manifest["set"] == "profile@1" and manifest["digest"] == "d1" and manifest["definition"] == definition
    assert manifest["partitions"] == {"2025-03-01": {"rows": 3}, "2025-04-01": {"rows": 2}}
    assert [c["name"] for c in manifest["columns"]] == first.column_names
    assert read_manifest(tmp_path, "other@1") is None


def test_other_definitions_under_an_existing_version_are_refused(tmp_path: Path) -> None:
    table = profile_table()
    write_partitions(tmp_path, "profile@1", {"sql": "count(*)"}, "d1", table, _stats(table))
    changed = profile_table(day=LATER)
    with pytest.raises(OfflineStoreError, match="new version") as err:
        write_partitions(tmp_path, "profile@1", {"sql": "sum(x)"}, "d2", changed, _stats(changed))
    assert "profile@1" in str(err.value) and "d1" in str(err.value) and "d2" in str(err.value)
    # nothing of the refused write landed
    assert available_as_of(tmp_path, "profile@1") == [DAY]
    manifest = read_manifest(tmp_path, "profile@1")
    assert manifest is not None and manifest["digest"] == "d1" and list(manifest["partitions"]) == ["2025-03-01"]
    # the changed set under a new version is fine, beside the old one
    write_partitions(tmp_path, "profile@2", {"sql": "sum(x)"}, "d2", changed, _stats(changed))
    assert available_as_of(tmp_path, "profile@2") == [LATER]


def test_reading_a_missing_cutoff_names_it(tmp_path: Path) -> None:
    with pytest.raises(OfflineStoreError, match="no partition of profile@1"):
        read_offline(tmp_path, "profile@1")
    table = profile_table()
    write_partitions(tmp_path, "profile@1", {}, "d1", table, _stats(table))
    with pytest.raises(OfflineStoreError, match="profile@1 has no partition for 2025-05-01"):
        read_offline(tmp_path, "profile@1", [DAY, dt.date(2025, 5, 1)])
    with pytest.raises(OfflineStoreError, match="2025-05-01"):
        read_training_table(tmp_path, ["profile@1"], "profile@1", [dt.date(2025, 5, 1)])


def test_training_table_joins_labels_and_sets_on_customer_and_cutoff(tmp_path: Path) -> None:
    days = [DAY, DAY, DAY, LATER, LATER]
    keys = ["CK1", "CK2", "CK3", "CK1", "CK2"]
    labels = pa.table(
        {
            "customer_key": keys,
            "as_of": pa.array(days, pa.date32()),
            "churn_30d": [False, True, None, False, False],
        }
    )
    value = pa.table(
        {"customer_key": keys, "as_of": pa.array(days, pa.date32()), "monetary_90d": [1.5, 0.0, 2.25, 3.0, 0.1]}
    )
    # stored in another order than the labels: the join is on keys, not on positions
    service = pa.table(
        {
            "customer_key": list(reversed(keys)),
            "as_of": pa.array(list(reversed(days)), pa.date32()),
            "tickets_90d": pa.array([50, 40, 30, 20, 10], pa.int64()),
        }
    )
    for key, table in (("labels@1", labels), ("value@1", value), ("service@1", service)):
        write_partitions(tmp_path, key, {}, key, table, _stats(table))

    both = read_training_table(tmp_path, ["value@1", "service@1"], "labels@1", [DAY, LATER])
    assert both.column_names == ["customer_key", "as_of", "churn_30d", "monetary_90d", "tickets_90d"]
    assert [tuple(r.values()) for r in both.to_pylist()] == [
        ("CK1", DAY, False, 1.5, 10),
        ("CK2", DAY, True, 0.0, 20),
        ("CK3", DAY, None, 2.25, 30),
        ("CK1", LATER, False, 3.0, 40),
        ("CK2", LATER, False, 0.1, 50),
    ]
    later = read_training_table(tmp_path, ["service@1"], "labels@1", [LATER])
    assert later.column("as_of").to_pylist() == [LATER, LATER]
    assert later.column("tickets_90d").to_pylist() == [40, 50]


def test_partitions_of_one_version_never_differ_in_columns(tmp_path: Path) -> None:
    old = pa.table({"customer_key": ["CK1"], "as_of": _dates(DAY, 1), "buys_add_intl_90d": [True]})
    write_partitions(tmp_path, "labels@1", {}, "d1", old, _stats(old))
    new = old.set_column(1, "as_of", _dates(LATER, 1)).append_column("buys_add_new_90d", pa.array([False]))
    try:
        write_partitions(tmp_path, "labels@1", {}, "d1", new, _stats(new))
    except OfflineStoreError:
        return  # refusing the write is one way to keep the version whole
    manifest = read_manifest(tmp_path, "labels@1")
    assert manifest is not None
    assert read_offline(tmp_path, "labels@1").column_names == [c["name"] for c in manifest["columns"]]


# --------------------------------------------------------------------------------------------
# the real small world: one build, materialised into SQLite and Redis


@dataclasses.dataclass(frozen=True)
class BuiltHome:
    """A resolved home with one feature build, materialised into both online backends."""

    settings: Settings
    redis_settings: Settings
    report: dict[str, Any]


@pytest.fixture(scope="module")
def built_home(ingested: Ingested, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltHome]:
    home = tmp_path_factory.mktemp("features-stores") / "home"
    shutil.copytree(ingested.settings.home_dir, home)
    resolved = CliRunner().invoke(
        app, ["--home", str(home), "resolve", "--engine", "local"], env={"CUSTINTEL_IDENTITY_U_MAX_PAIRS": "1e6"}
    )
    assert resolved.exit_code == 0, resolved.output
    settings = Settings(home=home, redis_url=None)
    redis_settings = Settings(home=home, redis_url=REDIS_URL, online_namespace=f"test-{uuid4().hex}")

    def into_both(s: Settings, built: BuiltSet, grouped: bool) -> dict[str, Any]:
        materialize(redis_settings, built, grouped)
        return materialize(s, built, grouped)

    steps = dataclasses.replace(PLAIN_STEPS, materialize=into_both)
    try:
        report = run_feature_build(settings, [DAY, dt.date(2026, 1, 1)], True, steps, lambda _: None)
        yield BuiltHome(settings, redis_settings, report)
    finally:
        with RedisOnlineStore(REDIS_URL, redis_settings.online_namespace) as store:
            assert isinstance(store, RedisOnlineStore)
            store.drop_namespace()


def _customer_keys(settings: Settings) -> list[str]:
    crosswalk = pq.read_table(settings.identity_dir / "crosswalk.parquet", columns=["customer_key"])
    return sorted(set(crosswalk.column("customer_key").to_pylist()))


@pytest.mark.integration
def test_the_materialised_backends_agree_for_every_customer(built_home: BuiltHome) -> None:
    keys = _customer_keys(built_home.settings)
    with open_online_store(built_home.settings) as sqlite, open_online_store(built_home.redis_settings) as redis_store:
        assert isinstance(sqlite, SQLiteOnlineStore) and isinstance(redis_store, RedisOnlineStore)
        _same_answers((sqlite, redis_store), [*keys, "NOPE"])
        found = {k: sqlite.lookup(k) for k in keys}
        sets = sqlite.sets()
    active = {k for k, doc in found.items() if doc is not None}
    online = built_home.report["online"]
    assert sorted(sets) == sorted(ONLINE_SETS) == sorted(online)
    assert all(meta["as_of"] == "2026-01-01" for meta in sets.values())
    assert {k: meta["rows"] for k, meta in sets.items()} == {k: o["customers"] for k, o in online.items()}
    assert len(active) == online["relationship@1"]["customers"] > 1000
    assert len(active) < len(keys)  # customers without an open account are not served
    assert all(set(FEATURE_SETS) <= set(doc) <= set(ONLINE_SETS) for doc in found.values() if doc is not None)
    # Each set records its layout: the columns every document holds (nulls written), the numeric ones, grouped
    for key, meta in sets.items():
        docs = [doc[key] for doc in found.values() if doc is not None and key in doc]
        assert docs and all([c for c in d if c != "as_of"] == meta["columns"] for d in docs), key
        assert meta["grouped"] == (meta["columns"] == ["items"]), key
        numbers = {c for c in meta["columns"] if all(isinstance(d[c], int | float | None) for d in docs)}
        assert set(meta["numeric"]) <= numbers, key
        assert numbers - set(meta["numeric"]) <= {c for c in numbers if all(d[c] is None for d in docs)}, key


@pytest.mark.integration
def test_online_documents_equal_the_latest_offline_rows(built_home: BuiltHome) -> None:
    """Serving reads exactly what training reads at the latest cutoff (no skew in the JSON round trip)."""
    root = built_home.settings.features_dir / "offline"
    with open_online_store(built_home.redis_settings) as store:
        for set_key in FEATURE_SETS:
            rows = read_offline(root, set_key, [dt.date(2026, 1, 1)]).to_pylist()
            for row in rows:
                key = row.pop("customer_key")
                row["as_of"] = row["as_of"].isoformat()
                found = store.lookup(key, set_keys=[set_key])
                assert found == {set_key: row}, (set_key, key)


@pytest.mark.integration
def test_the_manifest_lists_every_set_with_rows_and_null_rates(built_home: BuiltHome) -> None:
    manifest = json.loads((built_home.settings.features_dir / "manifest.json").read_text())
    report = json.loads(json.dumps(built_home.report, default=str))
    copy = Path(report.pop("report_path"))
    assert manifest == report == json.loads(copy.read_text())  # a copy per build under reports/features/
    assert copy.parent == built_home.settings.reports_dir / "features"
    assert manifest["as_of"] == ["2025-03-01", "2026-01-01"]
    assert sorted(manifest["sets"]) == sorted(ALL_SETS)
    root = built_home.settings.features_dir / "offline"
    for key, entry in manifest["sets"].items():
        stored = read_manifest(root, key)
        assert stored is not None and stored["digest"] == entry["digest"]
        assert sorted(entry["partitions"]) == ["2025-03-01", "2026-01-01"]
        table = read_offline(root, key)
        features = [c for c in table.column_names if c not in ("customer_key", "as_of")]
        for day, part in entry["partitions"].items():
            rows = table.column("as_of").to_pylist().count(dt.date.fromisoformat(day))
            assert part["rows"] == rows > 0, (key, day)
            assert stored["partitions"][day]["rows"] == rows
            nulls = entry["null_rates"][day]
            assert sorted(nulls) == sorted(features), (key, day)
            assert all(0.0 <= rate <= 1.0 for rate in nulls.values()), (key, day)
    # a count is never empty; a feature of something a customer may never have done can be
    service = manifest["sets"]["service@1"]["null_rates"]["2026-01-01"]
    assert service["tickets_90d"] == 0.0 and 0.0 < service["nps_last"] < 1.0


def _add_product(home: Path, product_id: str) -> None:
    """A new recurring add-on in the lake's catalogue (as a later drop would bring)."""
    (path,) = (home / "lake" / "product_catalogue").glob("drop=*/data.parquet")
    catalogue = pq.read_table(path)
    row = catalogue.slice(len(catalogue) - 1, 1).to_pylist()[0]
    row.update(
        product_id=product_id, name="New add-on", is_plan=False, is_recurring=True, _row_number=len(catalogue) + 1
    )
    pq.write_table(pa.concat_tables([catalogue, pa.Table.from_pylist([row], schema=catalogue.schema)]), path)


@pytest.mark.integration
def test_a_new_product_adds_purchase_label_rows_not_columns(built_home: BuiltHome, tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(built_home.settings.home_dir, home)
    _add_product(home, "ADD-NEW")
    settings = Settings(home=home, redis_url=None)
    report = run_feature_build(settings, [dt.date(2025, 6, 1)], False, PLAIN_STEPS, lambda _: None)
    # the labels keep their columns and digest, so the new build joins the same version
    assert report["sets"]["labels@1"]["digest"] == built_home.report["sets"]["labels@1"]["digest"]
    bought = read_offline(settings.features_dir / "offline", "purchase_labels@1", [dt.date(2025, 6, 1)])
    assert "ADD-NEW" in set(bought.column("product_id").to_pylist())
    older = read_offline(settings.features_dir / "offline", "purchase_labels@1")
    assert older.column_names == bought.column_names


def test_a_backfill_never_moves_serving_back_in_time(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", redis_url=None)
    later = pa.table({"customer_key": ["CK1", "CK2"], "as_of": _dates(LATER, 2), "x": [1.0, 2.0]})
    earlier = pa.table({"customer_key": ["CK1"], "as_of": _dates(DAY, 1), "x": [9.0]})
    assert materialize_online(settings, "tiny@1", later, {"as_of": str(LATER)}) == 2
    assert materialize_online(settings, "tiny@1", earlier, {"as_of": str(DAY)}) is None  # a backfill: kept
    with open_online_store(settings) as store:
        assert store.lookup("CK2") == {"tiny@1": {"as_of": str(LATER), "x": 2.0}}
        assert store.sets()["tiny@1"]["as_of"] == str(LATER)


@pytest.mark.integration
def test_state_changes_with_each_replacement_and_customer_keys_agree(
    loaded: tuple[SQLiteOnlineStore, RedisOnlineStore],
) -> None:
    for store in loaded:
        before = store.state(["profile@1", "interactions@1"])
        assert [k for k, _ in before] == ["interactions@1", "profile@1"]
        assert store.state(["profile@1"]) == tuple(p for p in before if p[0] == "profile@1")
        store.replace_set("profile@1", online_documents(profile_table()), _meta())
        after = store.state(["profile@1", "interactions@1"])
        assert after[0] == before[0] and after[1] != before[1]  # only the replaced set moved
    sqlite, redis_store = loaded
    assert sqlite.customer_keys(["profile@1"]) == redis_store.customer_keys(["profile@1"]) == ["CK1", "CK2", "CK3"]
    assert sqlite.customer_keys(["interactions@1", "profile@1"]) == redis_store.customer_keys(
        ["interactions@1", "profile@1"]
    )
    assert sqlite.customer_keys(["nope@1"]) == redis_store.customer_keys(["nope@1"]) == []
