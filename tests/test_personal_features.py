"""The feature side's personal stores and the suppression list, on one small generated world.

The world is ingested, resolved and featured once (online in SQLite); each test erases from its
own copy of that home. Subjects are built the way the access-request orchestrator builds them:
every record the crosswalk gives their customer key, with the emails, phones and names held.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from custintel.personal import Erased, Holding, PersonalStore, Subject
from custintel.settings import Settings
from features.lake import ingest_drop, read_lake_table
from features.personal import _jsonable, personal_stores
from features.suppression import (
    SuppressionError,
    identifiers,
    load_suppression,
    suppress,
    suppressed_rows,
    suppression_path,
)
from features.synthetic import WorldConfig, generate_world
from tests.conftest import tree_digest

CUTOFFS = [dt.date(2025, 3, 1), dt.date(2025, 6, 1)]
REDIS_URL = "redis://127.0.0.1:6379/0"
STORES = ("lake", "quarantine", "identity", "features.offline", "features.online")
# Which lake tables say whose row it is, and by which column (as the feature and identity configs do).
RECORD_COLUMNS = {
    "crm_accounts": ("crm_id", "crm_accounts"),
    "billing_accounts": ("billing_account_id", "billing_accounts"),
    "northwind_customers": ("customer_no", "northwind_customers"),
    "billing_transactions": ("billing_account_id", "billing_accounts"),
    "support_tickets": ("crm_id", "crm_accounts"),
    "digital_events": ("crm_id", "crm_accounts"),
    "nps_responses": ("crm_id", "crm_accounts"),
    "consent_events": ("crm_id", "crm_accounts"),
    "offer_test": ("crm_id", "crm_accounts"),
    "northwind_consents": ("customer_no", "northwind_customers"),
}


def subject_for_keys(settings: Settings, keys: Sequence[str], request: str | None = None) -> Subject:
    """A subject as the orchestrator resolves one: the keys' records, and the identifiers they hold."""
    crosswalk = pd.read_parquet(settings.identity_dir / "crosswalk.parquet")
    records = pd.read_parquet(settings.identity_dir / "records.parquet")
    mine = records[records["record_key"].isin(crosswalk.loc[crosswalk["customer_key"].isin(keys), "record_key"])]
    emails, phones = set(mine["email"].dropna()), set(mine["phone"].dropna())
    for table in ("crm_accounts", "billing_accounts", "northwind_customers"):
        column = RECORD_COLUMNS[table][0]
        lake = read_lake_table(settings, table)
        held = lake[lake[column].astype(str).isin(set(mine.loc[mine["source_table"] == table, "record_id"]))]
        emails |= set(held["email"].dropna().astype(str))
        phones |= set(held["phone"].dropna().astype(str))
    names = {
        (f, last, b)
        for f, last, b in zip(mine["first_name"], mine["last_name"], mine["birth_date"], strict=True)
        if pd.notna(f) and pd.notna(last) and pd.notna(b)
    }
    return Subject(
        request=request or keys[0],
        customer_keys=tuple(keys),
        source_records=tuple(sorted(zip(mine["source_table"], mine["record_id"], strict=True))),
        emails=tuple(sorted(emails)),
        phones=tuple(sorted(phones)),
        names=tuple(sorted(names)),
    )


@dataclass(frozen=True)
class Home:
    drop: Path
    settings: Settings
    keys: tuple[str, ...]  # the subjects' customer keys


def _build(drop: Path, settings: Settings) -> None:
    from features.identity.store import resolve_from_lake
    from flows.features import PLAIN_STEPS, run_feature_build

    ingest_drop(drop, settings)
    resolve_from_lake(settings, False, progress=lambda _: None)
    run_feature_build(settings, CUTOFFS, True, PLAIN_STEPS, lambda _: None)


def _pick_subjects(settings: Settings) -> tuple[str, ...]:
    """Three customers: one from the acquired company with records in several sources, one with a
    quarantined row, one served online; all with consent events."""
    crosswalk = pd.read_parquet(settings.identity_dir / "crosswalk.parquet")
    crosswalk["table"] = crosswalk["record_key"].str.split(":").str[0]
    crosswalk["id"] = crosswalk["record_key"].str.split(":", n=1).str[1]
    consent = set(read_lake_table(settings, "consent_events")["crm_id"].astype(str))
    with_consent = set(crosswalk.loc[crosswalk["id"].isin(consent), "customer_key"])
    tables = crosswalk.groupby("customer_key")["table"].nunique()
    acquired = set(crosswalk.loc[crosswalk["table"] == "northwind_customers", "customer_key"])
    first = sorted(k for k in acquired & with_consent if tables[k] >= 3)[0]
    rejected = pd.read_parquet(next(settings.quarantine_dir.glob("support_tickets/drop=*/rows-0.parquet")))
    quarantined = set(crosswalk.loc[crosswalk["id"].isin(set(rejected["crm_id"].dropna())), "customer_key"])
    second = sorted(quarantined & with_consent - {first})[0]
    online = pd.read_parquet(next((settings.features_dir / "offline" / "relationship").glob("v1/as_of=2025-06-01/*")))
    third = sorted(set(online["customer_key"]) & with_consent - {first, second})[0]
    return (first, second, third)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    root = tmp_path_factory.mktemp("personal")
    cfg = WorldConfig(customers=400, chunk_size=1000, seed=11, malformed_rate=0.04, duplicate_row_rate=0.004)
    generate_world(cfg, root / "drop")
    settings = Settings(home=root / "home", identity_u_max_pairs=1e6)
    _build(root / "drop", settings)
    return Home(root / "drop", settings, _pick_subjects(settings))


def _copy(home: Home, dst: Path, **more: object) -> Settings:
    shutil.copytree(home.settings.home_dir, dst)
    return Settings(home=dst, identity_u_max_pairs=1e6, **more)  # type: ignore[arg-type]


def _subjects(settings: Settings, keys: Sequence[str]) -> list[Subject]:
    return [subject_for_keys(settings, [k]) for k in keys]


def _by_store(holdings: list[Holding]) -> dict[str, list[Holding]]:
    out: dict[str, list[Holding]] = {s: [] for s in STORES}
    for h in holdings:
        out[h.store].append(h)
    return out


def _find(settings: Settings, subjects: Sequence[Subject]) -> list[Holding]:
    return [h for store in personal_stores(settings) for h in store.find(subjects)]


def _erase(settings: Settings, subjects: Sequence[Subject]) -> list[Erased]:
    return [e for store in personal_stores(settings) for e in store.erase(subjects)]


def test_the_stores_are_personal_stores(home: Home) -> None:
    stores = personal_stores(home.settings)
    assert [s.name for s in stores] == list(STORES)
    assert all(isinstance(s, PersonalStore) for s in stores)


def test_an_empty_home_holds_nothing(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    subject = Subject("a@b.com", ("CK0001",), (("crm_accounts", "C0001"),), ("a@b.com",), ("+12125550143",))
    assert _find(settings, [subject]) == [] and _erase(settings, [subject]) == []
    assert not settings.home_dir.exists() or not any(settings.home_dir.rglob("*.parquet"))


def test_find_returns_each_subjects_rows_and_nobody_elses(home: Home) -> None:
    settings = home.settings
    subjects = _subjects(settings, home.keys)
    found = _by_store(_find(settings, subjects))
    assert all(found[s] for s in STORES), {s: len(v) for s, v in found.items()}
    for subject in subjects:
        ids = subject.record_ids
        # lake: exactly the rows whose record column holds one of the subject's records, consent history included
        for table, (column, record_table) in RECORD_COLUMNS.items():
            lake = read_lake_table(settings, table)
            expected = int(lake[column].astype(str).isin(ids.get(record_table, set())).sum())
            held = [
                r
                for h in found["lake"]
                if h.subject == subject.request and h.place.startswith(f"lake/{table}/")
                for r in h.rows
            ]
            assert all(str(r[column]) in ids.get(record_table, set()) for r in held), table
            assert len(held) == expected, (subject.request, table)
        assert any(h.place.startswith("lake/consent_events/") for h in found["lake"] if h.subject == subject.request)
        # identity: their records and only theirs; features: their keys only
        records = {
            r["record_key"]
            for h in found["identity"]
            if h.subject == subject.request and h.place == "identity/records.parquet"
            for r in h.rows
        }
        assert records == {f"{t}:{i}" for t, i in subject.source_records}
        for h in found["features.offline"] + found["features.online"]:
            if h.subject == subject.request:
                assert {r["customer_key"] for r in h.rows} <= set(subject.customer_keys)
        # quarantine: every row holds one of their tokens (raw or normalised), or is an issue about such a row
        for h in found["quarantine"]:
            if h.subject == subject.request and "/rows-" in h.place:
                assert all(_holds_identifier(r, subject) for r in h.rows), h.place
    served = {h.subject for h in found["features.online"]}
    assert home.keys[2] in served
    assert {h.subject for h in found["quarantine"]} >= {home.keys[1]}
    json.dumps([h.rows for h in _find(settings, subjects)])  # JSON-able as they are


def _holds_identifier(row: dict[str, object], subject: Subject) -> bool:
    """A raw row holds one of the subject's tokens as it is, or an email or phone that normalises to theirs."""
    from features.identity.normalise import normalise_emails, normalise_phones

    values = pd.Series([str(v).strip() for v in row.values() if v is not None], dtype="string")
    mine = set(normalise_emails(pd.Series(subject.emails))) | set(normalise_phones(pd.Series(subject.phones)))
    held = set(normalise_emails(values).dropna()) | set(normalise_phones(values).dropna()) | set(values)
    return bool(held & (mine | subject.tokens()))


def _rows(path: Path) -> list[dict[str, object]]:
    return [_jsonable(r) for r in pq.read_table(path).to_pylist()]


def _killed_erasure(settings: Settings, subjects: Sequence[Subject], tmp_path: Path, after_files: int) -> None:
    """Run the stores' erasure in a child process and SIGKILL it once `after_files` files were replaced."""
    (tmp_path / "subjects.json").write_text(json.dumps([s.__dict__ for s in subjects]))
    child = f"""
import json, sys, time
import features.personal as personal
from custintel.personal import Subject
from custintel.settings import Settings
done = [0]
real = personal.replace_atomically
def replace(path, write):
    real(path, write)
    done[0] += 1
    if done[0] == {after_files}:
        sys.stderr.write("erase-paused\\n"); sys.stderr.flush()
        time.sleep(600)
personal.replace_atomically = replace
subjects = [Subject(**{{k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
                        for k, v in s.items()}}) for s in json.load(open({str(tmp_path / "subjects.json")!r}))]
for store in personal.personal_stores(Settings(home={str(settings.home_dir)!r})):
    store.erase(subjects)
"""
    process = subprocess.Popen([sys.executable, "-c", child], stderr=subprocess.PIPE, cwd=Path(__file__).parent.parent)
    assert process.stderr is not None
    line = process.stderr.readline()
    assert b"erase-paused" in line, line + process.stderr.read()
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def test_erase_killed_half_way_completes_and_leaves_every_other_row(home: Home, tmp_path: Path) -> None:
    settings = _copy(home, tmp_path / "home")
    subjects = _subjects(settings, home.keys)
    found = _find(settings, subjects)
    before = tree_digest(settings.home_dir)
    parquet = {p: _rows(settings.home_dir / p) for p in before if p.endswith(".parquet")}
    with _online(settings) as store:
        everyone = store.customer_keys(list(store.sets()))
        documents = store.lookup_many(everyone)

    _killed_erasure(settings, subjects, tmp_path, after_files=4)
    assert _find(settings, subjects)  # half done
    erased = _erase(settings, subjects)  # the rerun completes it
    assert {e.store for e in erased} == set(STORES)
    assert _find(settings, subjects) == []
    assert sum(e.removed for e in _erase(settings, subjects)) == 0  # and another removes nothing

    after = tree_digest(settings.home_dir)
    changed = {p for p in before if after.get(p) != before[p]}
    for path in sorted(changed):
        if path.endswith(".parquet"):
            theirs = [r for h in found if h.place == path for r in h.rows]
            assert theirs, path  # only files that held a hit were rewritten
            kept = [r for r in parquet[path] if r not in theirs]
            assert _rows(settings.home_dir / path) == kept, path  # the others' rows, values and order
        else:  # the offline manifests' row counts, the online store
            assert path.endswith("manifest.json") or path.startswith("features/online.sqlite"), path
    assert {e.place for e in erased} <= {h.place for h in found}
    assert not [p for p in after if p.endswith(".tmp")]
    for manifest in (settings.features_dir / "offline").glob("*/v*/manifest.json"):
        for day, part in json.loads(manifest.read_text())["partitions"].items():
            assert part["rows"] == pq.ParquetFile(manifest.parent / f"as_of={day}" / "data.parquet").metadata.num_rows
    with _online(settings) as store:
        left = store.lookup_many(everyone)
    assert set(left) == set(documents) - set(home.keys)
    assert all(left[k] == documents[k] for k in left)


def _online(settings: Settings):  # type: ignore[no-untyped-def]
    from features.featurestore.store import open_online_store

    return open_online_store(settings)


def test_suppression_keeps_them_out_of_ingest_resolve_and_features(home: Home, tmp_path: Path) -> None:
    settings = _copy(home, tmp_path / "home")
    subjects = _subjects(settings, home.keys)
    crosswalk = pd.read_parquet(settings.identity_dir / "crosswalk.parquet")
    others = crosswalk[~crosswalk["customer_key"].isin(home.keys)].reset_index(drop=True)
    added = suppress(settings, subjects)
    expected = len({(k, v) for s in subjects for k, v in identifiers(s)}) + 1  # and the key's own check
    assert added == expected and suppress(settings, subjects) == 0
    assert load_suppression(settings)
    _erase(settings, subjects)

    from typer.testing import CliRunner

    from features.lake import IngestionReport
    from flows.cli import app

    # the same drop again, as an operator would
    result = CliRunner().invoke(
        app, ["--home", str(settings.home_dir), "ingest", "--source", str(home.drop), "--engine", "local"]
    )
    assert result.exit_code == 0, result.output
    assert "read = accepted + quarantined + suppressed" in result.output
    assert "Rows of people on the suppression list" in result.output
    latest = json.loads((settings.reports_dir / "ingest" / "latest.json").read_text())
    report = IngestionReport.from_dict(latest)
    assert report.reconciles
    for name, t in report.tables.items():
        assert t.read == t.accepted + t.quarantined + t.suppressed, name
    for table in ("crm_accounts", "consent_events", "support_tickets", "northwind_customers"):
        assert report.tables[table].suppressed > 0, table  # neither landed nor quarantined
    assert _find(settings, subjects) == []
    features = settings.features_dir / "offline" / "relationship" / "v1" / "as_of=2025-06-01" / "data.parquet"
    kept_features = pd.read_parquet(features)

    from features.identity.store import resolve_from_lake
    from flows.features import PLAIN_STEPS, run_feature_build

    resolve_from_lake(settings, False, progress=lambda _: None)
    run_feature_build(settings, CUTOFFS, True, PLAIN_STEPS, lambda _: None)
    assert _find(settings, subjects) == []
    again = pd.read_parquet(settings.identity_dir / "crosswalk.parquet")
    assert not again["customer_key"].isin(home.keys).any()
    pd.testing.assert_frame_equal(again, others)  # nobody else's key moved
    pd.testing.assert_frame_equal(pd.read_parquet(features), kept_features)  # nor their features


@pytest.mark.parametrize(
    ("column", "held", "hit"),
    [
        ("email", "  Jane.Doe+shop@GoogleMail.com ", True),  # case, tag, dots, alias: one mailbox
        ("email", "jane.doe@example.com", False),
        ("phone", "(212) 555-0143", True),
        ("phone", "+1 212.555.0143 ext 9", True),
        ("phone", "212-555-0144", False),
        ("customer_key", "CK0001", True),
        ("crm_id", "C0001", True),
        ("crm_id", "C0002", False),
    ],
)
def test_the_matcher_normalises_what_it_compares(tmp_path: Path, column: str, held: str, hit: bool) -> None:
    settings = Settings(home=tmp_path / "home")
    person = Subject("x", ("CK0001",), (("crm_accounts", "C0001"),), ("janedoe@gmail.com",), ("+12125550143",))
    suppress(settings, [person])
    frame = pd.DataFrame({column: [held, None]})
    matched = suppressed_rows(frame, load_suppression(settings), links={"crm_id": "crm_accounts"})
    assert matched.tolist() == [hit, False]


def test_names_with_birth_dates_match_folded(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    suppress(settings, [Subject("x", names=(("jose", "obrien", "1970-12-02"),))])
    born = [dt.date(1970, 12, 2), dt.date(1970, 12, 2), dt.date(1970, 12, 3)]
    frame = pd.DataFrame({"full_name": ["O'BRIEN, José", "José O'Brien", "Jose Obrien"], "birth_date": born})
    matched = suppressed_rows(frame, load_suppression(settings), names=None, full_name=("full_name", "birth_date"))
    assert matched.tolist() == [True, True, False]


def test_the_list_holds_keyed_hashes_only(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    person = Subject("a@b.com", ("CK0001",), (("crm_accounts", "C0001"),), ("a@b.com",), ("+12125550143",))
    assert load_suppression(settings).digests == frozenset()
    assert not (settings.governance_dir / "privacy.key").exists()  # nothing suppressed, no key made
    suppress(settings, [person])
    raw = suppression_path(settings).read_bytes()
    table = pq.read_table(suppression_path(settings))
    assert all(token.encode() not in raw for token in ("a@b.com", "CK0001", "C0001", "2125550143"))
    kinds = {"email", "phone", "record", "record_id", "customer_key", "key_check"}
    assert set(table.column("kind").to_pylist()) == kinds
    key_file = settings.governance_dir / "privacy.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    keyed = Settings(home=tmp_path / "other", privacy_key="a secret")  # type: ignore[arg-type]
    suppress(keyed, [person])
    assert not (keyed.governance_dir / "privacy.key").exists()
    other = set(pq.read_table(suppression_path(keyed)).column("digest").to_pylist())
    assert other.isdisjoint(table.column("digest").to_pylist())  # another key, other hashes
    assert "privacy_key" not in json.dumps(keyed.to_flow()["values"])
    # a list is only ever read under the key it was written with
    wrong = Settings(home=tmp_path / "other", privacy_key="another secret")  # type: ignore[arg-type]
    with pytest.raises(SuppressionError, match="another privacy key"):
        load_suppression(wrong)
    with pytest.raises(SuppressionError, match="another privacy key"):
        suppress(wrong, [person])
    key_file.unlink()
    with pytest.raises(SuppressionError, match=r"privacy\.key is missing"):
        load_suppression(settings)
    with pytest.raises(SuppressionError, match=r"privacy\.key is missing"):
        suppress(settings, [person])
    assert not key_file.exists()  # no new key was made up under the old list


def test_an_identifier_another_customer_holds_is_neither_matched_nor_suppressed(home: Home, tmp_path: Path) -> None:
    settings = home.settings
    mine, other = subject_for_keys(settings, [home.keys[0]]), subject_for_keys(settings, [home.keys[1]])
    # a request naming the other customer's email and phone too (a shared family address, say)
    mixed = Subject(mine.request, mine.customer_keys, mine.source_records, mine.emails + other.emails,
                    mine.phones + other.phones, mine.names)  # fmt: skip
    lake = personal_stores(settings)[0].find([mixed])
    assert lake and all(h.subject == mine.request for h in lake)
    assert {(h.place, len(h.rows)) for h in lake} == {
        (h.place, len(h.rows)) for h in personal_stores(settings)[0].find([mine])
    }
    copy = Settings(home=tmp_path / "home")
    shutil.copytree(settings.identity_dir, copy.identity_dir)
    suppress(copy, [mixed])
    suppression = load_suppression(copy)
    for column, values in (("email", other.emails), ("phone", other.phones)):
        assert not suppressed_rows(pd.DataFrame({column: list(values)}), suppression).any()  # theirs still land
    assert suppressed_rows(pd.DataFrame({"email": list(mine.emails)}), suppression).all()


def _own_table(path: Path, ids: list[str]) -> Path:
    pd.DataFrame({"crm_id": ids, "tenure": [float(i) for i in range(len(ids))], "plan": ["a"] * len(ids)}).to_csv(
        path, index=False
    )
    return path


@pytest.mark.integration
def test_online_redis_and_sqlite_find_erase_and_refuse_suppressed_keys(home: Home, tmp_path: Path) -> None:
    from features.featurestore.online import RedisOnlineStore
    from features.featurestore.store import materialize_online
    from models.own_tables import own_online_rows

    namespace = f"test-dsar-{uuid4().hex}"
    sqlite = _copy(home, tmp_path / "home")
    settings = Settings(home=sqlite.home_dir, redis_url=REDIS_URL, online_namespace=namespace)
    subjects = _subjects(settings, home.keys)
    crm = [i for s in subjects for t, i in s.source_records if t == "crm_accounts"]
    own = _own_table(tmp_path / "own.csv", [*crm, "C9999990", "C9999991"])
    rows, _ = own_online_rows(own, "crm_id")
    offline = pq.read_table(next((settings.features_dir / "offline" / "relationship").glob("v1/as_of=2025-06-01/*")))
    try:
        assert materialize_online(settings, "relationship@1", offline, {"as_of": "2025-06-01"}) == offline.num_rows
        for target in (settings, sqlite):  # a user's own table, keyed by the CRM's ids, in both stores
            materialize_online(
                target, "own_x@1", pa.Table.from_pandas(rows, preserve_index=False), {"as_of": "2026-01-01"}
            )
        held = _by_store(personal_stores(settings)[-1].find(subjects))["features.online"]
        places = {h.place.split("#")[0] for h in held}
        assert places == {"features/online.sqlite", f"redis:{namespace}:online"}
        assert {h.place.split("#")[1] for h in held} >= {"relationship@1", "own_x@1"}
        with RedisOnlineStore(REDIS_URL, namespace) as redis_store:
            everyone = redis_store.customer_keys(["relationship@1", "own_x@1"])
            before = redis_store.lookup_many(everyone)
            rows_before = {k: m["rows"] for k, m in redis_store.sets().items()}
            redis_state = redis_store.state(["relationship@1", "own_x@1"])
        with _online(sqlite) as sqlite_store:
            sqlite_state = sqlite_store.state(["relationship@1", "own_x@1"])
        erased = personal_stores(settings)[-1].erase(subjects)
        # the stores' state moves, so a service's in-memory copy of a set is rebuilt without them
        with _online(sqlite) as sqlite_store:
            moved = sqlite_store.state(["relationship@1", "own_x@1"])
            assert moved != sqlite_state and [k for k, _ in moved] == [k for k, _ in sqlite_state]
        with RedisOnlineStore(REDIS_URL, namespace) as redis_store:
            assert redis_store.state(["relationship@1", "own_x@1"]) != redis_state
        assert {e.place.split("#")[0] for e in erased} == places
        assert personal_stores(settings)[-1].find(subjects) == []
        assert personal_stores(settings)[-1].erase(subjects) == []
        with RedisOnlineStore(REDIS_URL, namespace) as redis_store:
            after = redis_store.lookup_many(everyone)
            assert redis_store.customer_keys(["relationship@1", "own_x@1"]) == sorted(after)
            gone = {k: rows_before[k] - m["rows"] for k, m in redis_store.sets().items()}
        import redis

        with redis.Redis.from_url(REDIS_URL) as client:
            assert not client.exists(f"{namespace}:online:{home.keys[2]}")
        assert set(after) == set(before) - {*home.keys, *crm}
        assert all(after[k] == before[k] for k in after)
        assert gone == {e.place.split("#")[1]: e.removed for e in erased if e.place.startswith("redis:")}
        # once suppressed, materialising the same own table again leaves them out
        suppress(settings, subjects)
        written = materialize_online(settings, "own_x@1", pa.Table.from_pandas(rows, preserve_index=False),
                                     {"as_of": "2026-01-02"})  # fmt: skip
        assert written == 2
        assert personal_stores(settings)[-1].find(subjects) == []
    finally:
        with RedisOnlineStore(REDIS_URL, namespace) as redis_store:
            redis_store.drop_namespace()


PEOPLE_CONTRACT = """
table: people
system: byo
files: people.csv
key: [person_id]
columns:
  - {name: person_id, nullable: false, class: direct_identifier}
  - {name: email, class: direct_identifier}
  - {name: phone, class: direct_identifier}
  - {name: note, class: behavioural}
"""


def test_suppressed_rows_are_neither_landed_nor_quarantined(tmp_path: Path) -> None:
    from features.contracts import load_contracts
    from features.lake import read_quarantine

    (tmp_path / "contracts").mkdir()
    (tmp_path / "contracts" / "people.yaml").write_text(PEOPLE_CONTRACT)
    contracts = load_contracts(tmp_path / "contracts")
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "people.csv").write_text(
        "person_id,email,phone,note\n"
        "P1,Jane.Doe@GMAIL.com,,accepted: theirs\n"
        "P2,bob@example.com,,accepted: someone else\n"
        ",janedoe+news@gmail.com,,rejected (no id): theirs\n"
        "P4,x@y.com,(212) 555-0143,unsplittable,theirs\n"
        "P5,carol@example.com,,unsplittable,someone else\n"
    )
    settings = Settings(home=tmp_path / "home")
    suppress(settings, [Subject("jane", emails=("janedoe@gmail.com",), phones=("+12125550143",))])
    report = ingest_drop(drop, settings, contracts=contracts, export_date=dt.date(2024, 6, 1))
    t = report.tables["people"]
    assert (t.read, t.accepted, t.quarantined, t.suppressed) == (5, 1, 1, 3) and report.reconciles
    assert list(read_lake_table(settings, "people", contracts)["person_id"]) == ["P2"]
    issues = read_quarantine(settings, "people")
    assert list(issues["row_number"]) == [5] and "carol@example.com" in issues["reason"].iloc[0]
    held = " ".join(
        str(pq.read_table(p).to_pylist()) if p.suffix == ".parquet" else p.read_text(errors="replace")
        for p in settings.home_dir.rglob("*")
        if p.is_file() and p.suffix in (".parquet", ".json", ".jsonl")
    )
    assert "carol@example.com" in held and "bob@example.com" in held  # the search would see them
    assert not any(v in held for v in ("Jane.Doe", "janedoe", "555-0143"))
