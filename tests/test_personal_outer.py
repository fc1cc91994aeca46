"""The outer personal stores (MLflow, the inference log, frequency caps, the consent file, monitoring, governance):
find a few customers, erase them, find nothing; everyone else's rows unchanged; versions flagged.

One home for the module: the session's featured world, a churn model trained on it (MLflow on SQLite), audited
(card), made champion, served (inference log entries written by the service's own writer, frequency caps,
the consent file), monitored (Evidently reports, workspace) and published (the reviewers' site). The PostgreSQL
case trains on a fresh database that the test creates and drops.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from custintel.personal import Erased, Holding, PersonalStore, Subject
from custintel.settings import Settings
from flows.train import PLAIN_STEPS, run_training
from governance import erasure_notes
from governance.personal import GovernanceStore
from models.examples import PLACEHOLDER_KEY, impersonal_example
from models.personal import ERASURE_AT, ERASURE_PENDING, ERASURE_SUBJECTS, MLflowStore
from models.registry import REFERENCE_PATH, Registry
from monitoring.personal import MonitoringStore
from serving.caps import RedisFrequencyCaps, open_frequency_caps
from serving.inference_log import InferenceLog, log_key
from serving.personal import CapsStore, ConsentSnapshotStore, InferenceLogStore

pytestmark = [pytest.mark.slow, pytest.mark.integration]

NAME = "custintel-churn"
SALT = "custintel"  # the service's salt when CUSTINTEL_SERVING_LOG_SALT is unset


@dataclass
class Home:
    settings: Settings
    run_id: str
    subjects: list[Subject]
    others: list[str]  # customer keys served and tested, not erased
    stem: str  # the monitoring pass


def _stores(settings: Settings) -> list[PersonalStore]:
    """In the order erasure runs them: MLflow, serving, monitoring, governance (the site last)."""
    return [MLflowStore(settings), InferenceLogStore(settings), CapsStore(settings), ConsentSnapshotStore(settings),
            MonitoringStore(settings), GovernanceStore(settings)]  # fmt: skip


def _by_store(holdings: Sequence[Holding]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for h in holdings:
        out.setdefault(h.store, set()).add(h.subject)
    return out


def _artifact(settings: Settings, run_id: str, path: str) -> Path:
    return settings.artifacts_dir / run_id / "artifacts" / path


def _serve(settings: Settings, reference: pd.DataFrame, keys: list[str]) -> None:
    """Inference-log entries as the service writes them (its writer), for these customers' newest reference rows."""
    newest = reference[reference["as_of"] == reference["as_of"].max()].set_index("customer_key")
    features = [c for c in reference.columns if c not in ("customer_key", "as_of")]
    log = InferenceLog(settings.inference_log_dir, "hash", SALT, flush_seconds=0.05)
    rng = np.random.default_rng(3)
    entries = []
    for key in keys:
        row = newest.loc[key]
        score = float(rng.uniform(0, 0.3))
        entries.append({"at": time.time(), "caller": "test", "endpoint": "/churn/score", "model": NAME, "version": "1",
                        "customer": log.key(key), "answer": {"score": score, "decision": score > 0.2},
                        "as_of": str(pd.Timestamp(row["as_of"]).date()),
                        "inputs": {c: (None if pd.isna(row[c]) else row[c].item() if hasattr(row[c], "item")
                                       else row[c]) for c in features}})  # fmt: skip
    log.record_many(entries)
    log.close()


@pytest.fixture(scope="module")
def home(featured: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    from flows.promote import PLAIN_STEPS as GATE_STEPS
    from flows.promote import run_gate
    from governance import store
    from governance.site import build_site
    from monitoring.monitor import monitor_family
    from monitoring.policy import load_policy as load_monitoring_policy
    from serving.consent import build_consent_store
    from serving.policy import load_serving_policy

    root = tmp_path_factory.mktemp("personal-outer")
    shutil.copytree(featured.home_dir, root / "home", ignore=shutil.ignore_patterns("mlflow.db", "artifacts"))
    settings = Settings(home=root / "home", training_config=featured.training_config)
    (churn,) = run_training(settings, "churn", PLAIN_STEPS, lambda _: None, trials=1)
    run_gate(settings, "churn", None, None, "tester", GATE_STEPS)
    registry = Registry(settings)
    if registry.alias_version(NAME, "champion") != "1":
        store.move_champion(registry, NAME, "1", "the personal-data test's champion")

    reference = pd.read_parquet(_artifact(settings, churn.run_id, REFERENCE_PATH))
    test = pd.read_parquet(_artifact(settings, churn.run_id, "evaluation/test.parquet"))
    members = pd.read_parquet(_artifact(settings, churn.run_id, "lineage/members.parquet"))
    newest = reference[reference["as_of"] == reference["as_of"].max()]
    served = sorted(set(newest["customer_key"]) & set(test["customer_key"]) & set(members["customer_key"]))
    assert len(served) >= 200, len(served)
    chosen, others = served[:3], served[3:400]
    _serve(settings, reference, chosen + others)

    policy = load_serving_policy(settings.serving_policy)
    build_consent_store(settings, policy)
    caps = open_frequency_caps(settings, 3, 7)
    for key in chosen + others[:5]:
        caps.record(key, ["P001", "P002"], time.time())

    monitoring = load_monitoring_policy(None)
    monitoring = monitoring.model_copy(update={"drift": monitoring.drift.model_copy(update={"min_rows": 100})})
    now = dt.datetime.now(dt.UTC)
    ran = monitor_family(settings, monitoring, "churn", now - dt.timedelta(hours=1), now + dt.timedelta(minutes=1),
                         now, ("hash", SALT))  # fmt: skip
    assert ran is not None and ran.summary["links"], ran
    build_site(settings)
    subjects = [Subject(request=k, customer_keys=(k,)) for k in chosen]
    yield Home(settings, churn.run_id, subjects, others, ran.summary["model"] + "-v1-" + ran.summary["stamp"])


def test_new_input_examples_hold_no_persons_row(home: Home) -> None:
    registry = Registry(home.settings)
    test = pd.read_parquet(_artifact(home.settings, home.run_id, "evaluation/test.parquet"))
    for _, _, location in registry.run_models(home.run_id):
        example = json.loads((Path(location.removeprefix("file://")) / "input_example.json").read_text())
        frame = pd.DataFrame(example["data"], columns=example["columns"])
        assert len(frame) == 1
        same = pd.Series(True, index=test.index)
        for column in frame.columns:
            value = frame[column].iloc[0]
            if pd.api.types.is_numeric_dtype(test[column]):
                same &= np.isclose(test[column].astype(float), float(value), equal_nan=True)
            else:
                same &= test[column].astype(str) == str(value)
        assert not same.any()  # nobody's row
        assert same.size and len(frame.columns) > 10
    members = pd.read_parquet(_artifact(home.settings, home.run_id, "lineage/members.parquet"))
    assert list(members.columns) == ["customer_key"] and members["customer_key"].is_unique and len(members) > 500


def test_an_impersonal_example_keeps_dtypes_and_replaces_identifiers() -> None:
    frame = pd.DataFrame({"customer_key": ["a", "b", "c"], "n": [1, 2, 10], "x": [0.5, np.nan, 1.5],
                          "seg": pd.Categorical(["s", "s", "t"]), "flag": [True, False, True]})  # fmt: skip
    out = impersonal_example(frame.head(2), frame)
    assert out.dtypes.equals(frame.dtypes) and len(out) == 1
    assert out.iloc[0].tolist() == [PLACEHOLDER_KEY, 2, 1.0, "s", True]


def test_find_then_erase_then_nothing_in_any_outer_store(home: Home) -> None:
    settings, subjects = home.settings, home.subjects
    requests = {s.request for s in subjects}
    log_dir = settings.inference_log_dir
    before_log = {p.name: p.read_bytes().splitlines() for p in log_dir.glob("*.jsonl")}
    test_path = _artifact(settings, home.run_id, "evaluation/test.parquet")
    test_before = pd.read_parquet(test_path)
    ref_before = pd.read_parquet(_artifact(settings, home.run_id, REFERENCE_PATH))
    monitoring_dir = settings.reports_dir / "monitoring"
    assert (monitoring_dir / f"{home.stem}-evidently.html").is_file()
    assert (settings.site_dir / "drift" / f"{home.stem}-evidently.html").is_file()

    found = [h for store in _stores(settings) for h in store.find(subjects)]
    by_store = _by_store(found)
    for store in ("mlflow", "inference_log", "serving.caps", "monitoring"):
        assert by_store.get(store) == requests, (store, by_store)
    # consent decisions exist for some of them only; the file is built from the lake
    assert by_store.get("serving.consent", set()) <= requests
    places = {h.place for h in found if h.store == "mlflow"}
    assert {f"runs:/{home.run_id}/evaluation/test.parquet", f"runs:/{home.run_id}/monitoring/reference.parquet",
            f"runs:/{home.run_id}/lineage/members.parquet", f"models:/{NAME}/1"} <= places  # fmt: skip
    versions = [h for h in found if h.place == f"models:/{NAME}/1"]
    assert all(set(h.rows[0]["rows_in"]) == {"training", "test", "reference"} for h in versions), versions
    # every row found belongs to its subject, nobody else
    for h in found:
        for row in h.rows:
            if "customer_key" in row:
                assert row["customer_key"] == h.subject
    served = [r for h in found if h.store == "inference_log" for r in h.rows]
    assert {r["customer"] for r in served} == {log_key("hash", SALT, k) for k in requests}
    # the legal records hold no identifier
    assert not [h for h in found if h.place.endswith(("audit_trail.jsonl", "decisions.jsonl"))]

    erased: list[Erased] = []
    for store in _stores(settings):
        erased += store.erase(subjects)
    assert sum(e.removed for e in erased if e.store == "inference_log") == len(subjects)
    assert sum(e.removed for e in erased if e.place.endswith("evaluation/test.parquet")) == (
        test_before["customer_key"].isin(requests).sum()
    )
    legal = [e for e in erased if e.place.endswith(("audit_trail.jsonl", "decisions.jsonl"))]
    assert legal and all("holds no identifier" in e.detail for e in legal), legal

    assert [h for store in _stores(settings) for h in store.find(subjects)] == []
    again = [e for store in _stores(settings) for e in store.erase(subjects)]
    assert sum(e.removed for e in again) == 0, [e for e in again if e.removed]

    # everyone else: the same rows, the same log lines, their impressions kept
    test_after = pd.read_parquet(test_path)
    pd.testing.assert_frame_equal(test_after, test_before[~test_before["customer_key"].isin(requests)]
                                  .reset_index(drop=True))  # fmt: skip
    ref_after = pd.read_parquet(_artifact(settings, home.run_id, REFERENCE_PATH))
    pd.testing.assert_frame_equal(ref_after, ref_before[~ref_before["customer_key"].isin(requests)]
                                  .reset_index(drop=True))  # fmt: skip
    hashed = {log_key("hash", SALT, k).encode() for k in requests}
    for name, lines in before_log.items():
        after = (log_dir / name).read_bytes().splitlines()
        assert after == [line for line in lines if not any(h in line for h in hashed)]
    others = CapsStore(settings).find([Subject(request=k, customer_keys=(k,)) for k in home.others[:5]])
    assert len(others) == 5 and all(len(h.rows) == 2 for h in others)

    # the version is flagged, the policy's retrain rule beside it, and the card says so
    tags = Registry(settings).version(NAME, "1").tags
    assert tags[ERASURE_SUBJECTS] == str(len(subjects)) and tags[ERASURE_AT] and ERASURE_PENDING not in tags
    assert tags[erasure_notes.ERASURE_RETRAIN] == "not_required"
    card = settings.governance_dir / "cards" / NAME / "1" / "card.html"
    assert card.read_text().count('<p class="erasure">Erasure: 3 erased person(s)') == 1
    assert "> Erasure: 3 erased person(s)" in card.with_name("card.md").read_text()
    # monitoring: the Evidently reports that drew on their rows are gone (workspace and site too), the page stays
    assert not list(monitoring_dir.glob(f"{home.stem}-evidently.*"))
    assert (monitoring_dir / f"{home.stem}.html").is_file()
    summary = json.loads((monitoring_dir / f"{home.stem}.json").read_text())
    assert summary["links"] == {} and summary["workspace_runs"] == [] and "erased" in summary
    from evidently.ui.workspace import Workspace

    workspace = Workspace(str(settings.monitoring_dir / "workspace"))
    assert all(not workspace.list_runs(p.id) for p in workspace.list_projects())
    assert not (settings.site_dir / "drift" / f"{home.stem}-evidently.html").exists()
    members = pd.read_parquet(monitoring_dir / f"{home.stem}-members.parquet")
    assert not members["key"].isin(requests | {h.decode() for h in hashed}).any() and len(members) > 300


def test_erasing_a_stranger_changes_nothing(home: Home) -> None:
    stranger = [Subject(request="CK-NOBODY", customer_keys=("CK-NOBODY",))]
    before = {p: p.stat().st_mtime_ns for p in home.settings.home_dir.rglob("*") if p.is_file()}
    assert [h for store in _stores(home.settings) for h in store.find(stranger)] == []
    erased = [e for store in _stores(home.settings) for e in store.erase(stranger)]
    assert sum(e.removed for e in erased) == 0
    after = {p: p.stat().st_mtime_ns for p in home.settings.home_dir.rglob("*") if p.is_file()}
    changed = {str(p) for p in before if after.get(p) != before[p]} - {str(home.settings.home_dir / "mlflow.db")}
    assert changed == set()


def test_card_notes_are_replaced_not_repeated() -> None:
    html = "<html><body><h1>Model card: m v1</h1>\n<h2>Model</h2></body></html>"
    md = "# Model card: m v1\n\n## Model\n"
    once = erasure_notes.with_erasure_note(html, "2 erased", False)
    assert erasure_notes.with_erasure_note(once, "2 erased", False) == once
    assert erasure_notes.with_erasure_note(once, "5 erased", False).count('class="erasure"') == 1
    assert erasure_notes.erasure_line({}) is None
    line = erasure_notes.erasure_line(
        {
            erasure_notes.ERASURE_SUBJECTS: "2",
            erasure_notes.ERASURE_AT: "2026-01-01",
            erasure_notes.ERASURE_RETRAIN: "required",
        }
    )
    assert line is not None and line.startswith("2 erased person(s)") and "retrain required" in line
    noted = erasure_notes.with_erasure_note(md, "2 erased", True)
    assert noted == "# Model card: m v1\n> Erasure: 2 erased\n\n## Model\n"
    assert erasure_notes.with_erasure_note(noted, "2 erased", True) == noted


def test_frequency_caps_in_redis_forget_a_customer() -> None:
    import redis

    namespace = f"test-personal-{uuid.uuid4().hex[:8]}"
    settings = Settings(home=Path("/nonexistent-home"), redis_url="redis://127.0.0.1:6379/0",
                        online_namespace=namespace)  # fmt: skip
    caps = open_frequency_caps(settings, 3, 7)
    assert isinstance(caps, RedisFrequencyCaps)
    now = time.time()
    caps.record("CK1", ["P1", "P2"], now)
    caps.record("CK1", ["P1"], now + 1)
    caps.record("CK2", ["P1"], now)
    store = CapsStore(settings)
    try:
        found = store.find([Subject("CK1", ("CK1",))])
        assert [r["product_id"] for r in found[0].rows] == ["P1", "P2", "P1"]  # by time
        assert store.erase([Subject("CK1", ("CK1",))])[0].removed == 3
        assert store.find([Subject("CK1", ("CK1",))]) == [] and store.erase([Subject("CK1", ("CK1",))]) == []
        assert caps.counts("CK2", ["P1"], now) == {"P1": 1}
    finally:
        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        keys = list(client.scan_iter(match=f"{namespace}:*"))
        if keys:
            client.delete(*keys)


def test_mlflow_on_postgresql(featured: Settings, tmp_path: Path) -> None:
    import psycopg

    database = f"custintel_personal_{uuid.uuid4().hex[:8]}"
    admin = "postgresql://postgres@127.0.0.1:5432/test"
    with psycopg.connect(admin, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{database}"')
    try:
        shutil.copytree(featured.home_dir, tmp_path / "home", ignore=shutil.ignore_patterns("mlflow.db", "artifacts"))
        settings = Settings(home=tmp_path / "home", training_config=featured.training_config,
                            mlflow_tracking_uri=f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}")  # fmt: skip
        (churn,) = run_training(settings, "churn", PLAIN_STEPS, lambda _: None, trials=1)
        test = pd.read_parquet(_artifact(settings, churn.run_id, "evaluation/test.parquet"))
        keys = test["customer_key"].drop_duplicates().head(2).tolist()
        subjects = [Subject(request=k, customer_keys=(k,)) for k in keys]
        store = MLflowStore(settings)
        found = store.find(subjects)
        assert {h.subject for h in found if h.place == f"models:/{NAME}/1"} == set(keys)
        erased = store.erase(subjects)
        assert (
            sum(e.removed for e in erased if e.place.endswith("test.parquet")) == test["customer_key"].isin(keys).sum()
        )
        assert store.find(subjects) == [] and sum(e.removed for e in store.erase(subjects)) == 0
        tags = Registry(settings).version(NAME, "1").tags
        assert tags[ERASURE_SUBJECTS] == "2" and ERASURE_PENDING not in tags
    finally:
        with psycopg.connect(admin, autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_an_erasure_killed_midway_finishes_on_rerun_and_counts_once(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after its first rewrite: the version is already flagged (pending); the rerun finishes, adds nothing."""
    subjects = [Subject(request=k, customer_keys=(k,)) for k in home.others[-2:]]
    registry = Registry(home.settings)
    before = int(registry.version(NAME, "1").tags.get(ERASURE_SUBJECTS, "0"))
    original = Registry.replace_run_file
    calls = 0

    def killed_after_one(self: Registry, run_id: str, path: str, local: Path) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt  # stands for the SIGKILL: nothing after this line of the erasure runs
        original(self, run_id, path, local)

    monkeypatch.setattr(Registry, "replace_run_file", killed_after_one)
    store = MLflowStore(home.settings)
    with pytest.raises(KeyboardInterrupt):
        store.erase(subjects)
    tags = registry.version(NAME, "1").tags
    assert tags[ERASURE_SUBJECTS] == str(before + 2) and ERASURE_PENDING in tags
    assert store.find(subjects)  # some rows still there
    monkeypatch.undo()
    store.erase(subjects)
    assert store.find(subjects) == []
    tags = registry.version(NAME, "1").tags
    assert tags[ERASURE_SUBJECTS] == str(before + 2) and ERASURE_PENDING not in tags


def test_an_example_logged_before_impersonal_examples_is_found_by_its_values_and_replaced(home: Home) -> None:
    """Examples used to be the first test rows (features only, no key): matched to the subject's test rows."""
    settings = home.settings
    registry = Registry(settings)
    test = pd.read_parquet(_artifact(settings, home.run_id, "evaluation/test.parquet"))
    (model_id, _, location) = next(m for m in registry.run_models(home.run_id) if m[1] == "model")
    current = json.loads((Path(location.removeprefix("file://")) / "input_example.json").read_text())
    old_style = test[current["columns"]].head(3)
    legacy = settings.home_dir / "legacy" / "input_example.json"
    legacy.parent.mkdir()
    legacy.write_text(old_style.to_json(orient="split", index=False))
    registry.replace_model_file(location, legacy)
    keys = test["customer_key"].head(3).tolist()
    subjects = [Subject(request=k, customer_keys=(k,)) for k in keys]
    store = MLflowStore(settings)
    place = f"models:/{model_id}/input_example.json"
    found = [h for h in store.find(subjects) if h.place == place]
    assert sorted(h.subject for h in found) == sorted(keys) and all(len(h.rows) == 1 for h in found)
    erased = {e.place: e for e in store.erase(subjects)}
    assert erased[place].removed == 3 and "impersonal" in erased[place].detail
    replaced = json.loads((Path(location.removeprefix("file://")) / "input_example.json").read_text())
    assert replaced["columns"] == current["columns"] and len(replaced["data"]) == 1
    assert store.find(subjects) == []


def test_a_card_naming_someone_is_scrubbed_and_the_site_rebuilt(home: Home) -> None:
    """Cards hold aggregates; one that names a person (a reviewer's note pasted in, say) is found and scrubbed."""
    from governance.site import build_site

    settings = home.settings
    key = home.others[10]
    card = settings.governance_dir / "cards" / NAME / "1" / "card.md"
    card.write_text(card.read_text() + f"\nReviewer note: customer {key} complained.\n")
    build_site(settings)
    subject = [Subject(request=key, customer_keys=(key,))]
    store = GovernanceStore(settings)
    found = {h.place for h in store.find(subject)}
    assert f"governance/cards/{NAME}/1/card.md" in found and any(p.startswith("site/") for p in found), found
    erased = {e.place: e for e in store.erase(subject)}
    assert erased[f"governance/cards/{NAME}/1/card.md"].removed == 1 and erased["site"].removed >= 1
    assert "customer [erased] complained" in card.read_text()
    assert store.find(subject) == []


def test_a_log_writer_waiting_on_the_lock_appends_to_the_file_that_replaced_it(tmp_path: Path) -> None:
    """The eraser holds the day file's lock and renames a rewritten file over it: the waiting writer's lines
    land in the new file, none in the replaced one."""
    import fcntl
    import os
    import threading

    from serving.inference_log import _append_locked

    path = tmp_path / "2026-01-01.jsonl"
    path.write_bytes(b'{"customer": "erased"}\n{"customer": "kept"}\n')
    with path.open("rb") as old:
        fcntl.flock(old, fcntl.LOCK_EX)
        writer = threading.Thread(target=_append_locked, args=(path, b'{"customer": "late"}\n'))
        writer.start()
        time.sleep(0.3)  # the writer has opened the old file and waits on its lock
        fresh = tmp_path / "fresh"
        fresh.write_bytes(b'{"customer": "kept"}\n')
        os.replace(fresh, path)
        fcntl.flock(old, fcntl.LOCK_UN)
        writer.join(10)
        assert old.read() == b'{"customer": "erased"}\n{"customer": "kept"}\n'  # nothing went to the old file
    assert path.read_bytes() == b'{"customer": "kept"}\n{"customer": "late"}\n'


def test_each_package_offers_its_stores_by_the_catalogue_name(tmp_path: Path) -> None:
    import governance.personal
    import insights.personal
    import models.personal
    import monitoring.personal
    import serving.personal

    settings = Settings(home=tmp_path / "empty-home")
    packages = (models.personal, insights.personal, serving.personal, monitoring.personal, governance.personal)
    stores = [s for m in packages for s in m.personal_stores(settings)]
    assert all(isinstance(s, PersonalStore) for s in stores)
    assert [s.name for s in stores] == ["mlflow", "models.scores", "insights", "inference_log", "serving.caps",
                                        "serving.consent", "decision_log", "monitoring", "governance"]  # fmt: skip
    someone = [Subject(request="CK0000000000001", customer_keys=("CK0000000000001",))]
    # a home with nothing in it: nothing found, nothing erased, nothing created
    assert [h for s in stores for h in s.find(someone)] == [] and [e for s in stores for e in s.erase(someone)] == []
    assert not settings.home_dir.exists()


def test_keys_are_found_in_a_pickled_model_however_it_holds_them() -> None:
    """A recommender keeps user keys in its pickle: as Python strings (UTF-8) or a NumPy array (UTF-32 cells,
    full ones touching), at any byte offset; a key with other characters is still counted."""
    import pickle

    import numpy as np

    from models.personal import _key_occurrences

    owners = {"a": {"C000012345"}, "b": {"C000099999"}, "c": {"C000077777"}, "d": {"C000000001"}, "e": {"K 7"}}
    data = pickle.dumps({"users": np.array(["C000012345", "C000099999", "C01"]), "seen": ["C000012345", "K 7"],
                         "other": pd.Series(["C000077777"], dtype=object)})  # fmt: skip
    for pad in range(4):
        assert _key_occurrences(b"\x00" * pad + data, owners) == {"a": 2, "b": 1, "c": 1, "e": 1}


def test_the_first_cut_of_example_matching_keeps_every_row_that_may_be_equal() -> None:
    """`_candidates` narrows the test rows in bulk but never drops one that `_same` would call equal."""
    from models.personal import _candidates, _same

    rows = pd.DataFrame(
        {
            "n": [1.0, 1.0 + 1e-12, 2.0, np.nan],
            "s": pd.array(["a", "a", "a", pd.NA], dtype="string"),
            "mixed": pd.Series([5, "5", 5, None], dtype=object),
            "code": pd.array(["7", "7", "8", "7"], dtype="string"),
        }
    )
    columns = ["n", "s", "mixed", "code"]
    for _, row in pd.concat([rows, pd.DataFrame([{"n": 1, "s": "a", "mixed": 5, "code": 7}])]).iterrows():
        kept = set(_candidates(row, rows, columns).index)
        equal = {i for i, other in rows.iterrows() if all(_same(row[c], other[c]) for c in columns)}
        assert equal <= kept, (row.to_dict(), equal, kept)
    assert list(_candidates(rows.iloc[2], rows, columns).index) == [2]
