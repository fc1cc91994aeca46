"""Access and erasure requests: subject resolution on a generated world, bundles, the journal, verify, receipts.

The platform's own stores are tested in their packages' modules; here small file-backed stores stand in
for them (the `PersonalStore` protocol is all the orchestrator sees), so these tests check what the
orchestrator owns: who a request is, what is refused, the bundle, resuming, verifying, the audit trail.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from custintel.atomic_files import write_text_atomically
from custintel.personal import Erased, Holding, PersonalStore, Subject
from custintel.settings import Settings
from features.identity.subjects import (
    AmbiguousSubject,
    SubjectError,
    UnknownSubject,
    load_subject_index,
    mask_request,
    request_subject,
    resolve_request,
    resolve_subjects_file,
)
from features.lake import read_lake_table
from flows.cli import app
from governance.dsar import DsarError, journal_path, pending_path, raw_token_hits, read_journal
from governance.trail import read_entries, trail_path
from tests.conftest import Ingested, tree_digest

SOURCES = {"crm_accounts", "billing_accounts", "northwind_customers"}


@pytest.fixture(scope="module")
def resolved(ingested: Ingested, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The session world's home, copied and resolved (identity outputs beside the lake)."""
    from features.identity.store import resolve_from_lake

    home = tmp_path_factory.mktemp("dsar") / "home"
    shutil.copytree(ingested.settings.home_dir, home)
    settings = Settings(home=home, identity_u_max_pairs=1e5)
    resolve_from_lake(settings, reuse_model=False, progress=lambda _: None)
    return settings


@dataclass(frozen=True)
class Person:
    """A customer the truth and the resolution agree on, with records in crm, billing and the acquired company."""

    key: str
    records: frozenset[tuple[str, str]]
    northwind_id: str
    raw_email: str  # as the acquired company's system holds it
    raw_phone: str
    name_birth: str


@pytest.fixture(scope="module")
def person(resolved: Settings, ingested: Ingested) -> Person:
    truth = ingested.world.truth_frame("source_records")
    crosswalk = pd.read_parquet(resolved.identity_dir / "crosswalk.parquet")
    key_of = dict(zip(crosswalk["record_key"], crosswalk["customer_key"], strict=True))
    members = crosswalk.groupby("customer_key")["record_key"].apply(set).to_dict()
    northwind = read_lake_table(resolved, "northwind_customers").set_index("customer_no")
    records = pd.read_parquet(resolved.identity_dir / "records.parquet").set_index("record_key")
    for _, rows in truth.groupby("person_id"):
        held = {(str(t), str(i)) for t, i in zip(rows["source_table"], rows["record_id"], strict=True)}
        if {t for t, _ in held} != SOURCES:
            continue
        keys = {key_of.get(f"{t}:{i}") for t, i in held}
        if len(keys) != 1 or None in keys:
            continue
        key = str(keys.pop())
        nw_id = next(i for t, i in held if t == "northwind_customers")
        nw = northwind.loc[nw_id]
        crm = records.loc[next(f"{t}:{i}" for t, i in sorted(held) if t == "crm_accounts")]
        usable = pd.notna(nw["email"]) and pd.notna(nw["phone"]) and pd.notna(crm["birth_date"])
        if members[key] != {f"{t}:{i}" for t, i in held} or not usable:
            continue
        name_birth = f"{crm['first_name'].title()} {crm['last_name'].title()}|{crm['birth_date']}"
        return Person(key, frozenset(held), nw_id, str(nw["email"]), str(nw["phone"]), name_birth)
    pytest.fail("no person with crm, billing and northwind records resolved to one customer")


@pytest.fixture
def home(resolved: Settings, tmp_path: Path) -> Settings:
    """A private copy of the resolved home."""
    shutil.copytree(resolved.home_dir, tmp_path / "home")
    return Settings(home=tmp_path / "home")


def cli(settings: Settings, *args: str) -> Any:
    return CliRunner().invoke(app, ["--home", str(settings.home_dir), *args])


# --- small stores: rows in one JSON file under the home ------------------------------------------------------------


class JsonStore:
    """A personal store in one JSON file: a row belongs to a subject by its customer key or email."""

    def __init__(self, settings: Settings, name: str, place: str, rows: Sequence[dict[str, Any]]) -> None:
        self.name, self.place, self.path = name, place, settings.home_dir / place
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write(list(rows))
        self.erase_calls = 0

    def _rows(self) -> list[dict[str, Any]]:
        return list(json.loads(self.path.read_text(encoding="utf-8")))

    def _write(self, rows: list[dict[str, Any]]) -> None:
        write_text_atomically(self.path, json.dumps(rows, indent=1))

    @staticmethod
    def _of(row: dict[str, Any], subject: Subject) -> bool:
        return row.get("customer_key") in subject.customer_keys or row.get("email") in subject.emails

    def find(self, subjects: Sequence[Subject]) -> list[Holding]:
        rows = self._rows()
        found = [(s, [r for r in rows if self._of(r, s)]) for s in subjects]
        return [Holding(self.name, self.place, s.request, hits) for s, hits in found if hits]

    def erase(self, subjects: Sequence[Subject]) -> list[Erased]:
        self.erase_calls += 1
        rows = self._rows()
        keep = [r for r in rows if not any(self._of(r, s) for s in subjects)]
        if len(keep) == len(rows):
            return []
        self._write(keep)
        return [Erased(self.name, self.place, len(rows) - len(keep))]


class FailingOnce(JsonStore):
    """A store whose first erase dies half-way (like a SIGKILL between two stores)."""

    def erase(self, subjects: Sequence[Subject]) -> list[Erased]:
        if self.erase_calls == 0:
            self.erase_calls += 1
            raise OSError("disk went away")
        return super().erase(subjects)


@pytest.fixture
def stores(home: Settings, person: Person, monkeypatch: pytest.MonkeyPatch) -> list[JsonStore]:
    """Three stores holding the person and someone else, wired in as the catalogue."""
    index = load_subject_index(home)
    me = resolve_request(index, person.key)
    other = next(k for k in index.customer_keys() if k != person.key)
    mine = {"customer_key": person.key, "email": me.emails[0]}
    theirs = {"customer_key": other, "email": "someone.else@example.org"}
    made = [
        JsonStore(home, "profiles", "teststores/profiles.json", [{**mine, "segment": "premium"}, theirs]),
        JsonStore(home, "consent", "teststores/consent_events.json",
                  [{**mine, "purpose": "profiling", "status": "withdrawn", "recorded_at": "2025-01-02"}]),
        JsonStore(home, "mlflow", "teststores/runs.json",
                  [{"customer_key": person.key, "model": "custintel-churn", "version": "3", "split": "test"}, theirs]),
    ]  # fmt: skip
    monkeypatch.setattr("flows.personal.catalogue", lambda settings: made)
    return made


# --- resolution ----------------------------------------------------------------------------------------------------


def test_every_identifier_resolves_to_the_same_subject_with_every_source_record(resolved: Settings, person: Person):
    index = load_subject_index(resolved)
    by_key = resolve_request(index, person.key)
    assert by_key.customer_keys == (person.key,)
    assert set(by_key.source_records) == person.records  # the truth's records, the acquired company's included
    assert person.raw_email in by_key.emails and person.raw_email.lower() in by_key.emails  # raw and normalised
    assert person.raw_phone in by_key.emails + by_key.phones and any(p.startswith("+1") for p in by_key.phones)
    assert any(born for _, _, born in by_key.names)
    crm_id = next(i for t, i in sorted(person.records) if t == "crm_accounts")
    requests = [
        person.raw_email,  # as held by northwind, upper case
        f"  {person.raw_email.lower()} ",
        person.raw_phone,
        f"northwind_customers:{person.northwind_id}",
        crm_id,  # a bare id found in one table
        person.name_birth,
    ]
    for request in requests:
        assert replace(resolve_request(index, request), request=person.key) == by_key, mask_request(request)


def test_unknown_and_malformed_requests_are_clear_errors(resolved: Settings, tmp_path: Path):
    index = load_subject_index(resolved)
    with pytest.raises(UnknownSubject, match=r"^no customer matches n\*\*\*@e\*\*\*\.invalid$"):
        resolve_request(index, "nobody@example.invalid")
    with pytest.raises(UnknownSubject):
        resolve_request(index, "Nobody Atall|1901-02-03")
    with pytest.raises(SubjectError, match="empty"):
        resolve_request(index, "  ")
    requests = tmp_path / "requests.txt"
    requests.write_text(f"# erasures\n{index.customer_keys()[0]}\n\nnobody@example.invalid\n")
    with pytest.raises(SubjectError, match=r"1 bad request\(s\), nothing changed: line 4: no customer matches"):
        resolve_subjects_file(resolved, requests)


def test_unknown_subject_exits_1_with_one_line_and_changes_nothing(home: Settings, person: Person, tmp_path: Path):
    requests = tmp_path / "requests.txt"
    requests.write_text(f"{person.key}\nnobody@example.invalid\n")
    before = tree_digest(home.home_dir)
    for args in (
        ["dsar", "export", "nobody@example.invalid"],
        ["dsar", "erase", "nobody@example.invalid", "--yes"],
        ["dsar", "erase", "--file", str(requests), "--yes"],
    ):
        result = cli(home, *args)
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
        assert "no customer matches n***@e***.invalid" in lines[0] and "nobody@" not in result.output
        assert ("line 2:" in lines[0]) == ("--file" in args)
    assert tree_digest(home.home_dir) == before  # no bundle, journal, key file or receipt


def test_a_shared_email_lists_the_candidates_and_is_refused_until_one_is_chosen(
    home: Settings, person: Person, stores: list[JsonStore]
):
    # A family email: one of another customer's records now holds the person's address. The crosswalk
    # keeps the two customers apart (as it does when more than max_group records share a value).
    crosswalk = pd.read_parquet(home.identity_dir / "crosswalk.parquet")
    other_record = crosswalk[crosswalk["customer_key"] != person.key].iloc[0]
    records = pd.read_parquet(home.identity_dir / "records.parquet")
    shared = person.raw_email.lower()
    records.loc[records["record_key"] == other_record["record_key"], "email"] = shared
    records.to_parquet(home.identity_dir / "records.parquet", index=False)
    index = load_subject_index(home)
    with pytest.raises(AmbiguousSubject) as caught:
        resolve_request(index, shared)
    assert {c.key for c in caught.value.candidates} == {person.key, other_record["customer_key"]}

    before = tree_digest(home.home_dir)
    refused = cli(home, "dsar", "export", shared)
    assert refused.exit_code == 1
    assert person.key in refused.output and other_record["customer_key"] in refused.output
    assert "add --customer KEY" in refused.output and "northwind_customers" in refused.output  # masked description
    assert shared not in refused.output
    wrong = cli(home, "dsar", "export", shared, "--customer", "CK0000000000FFFF")
    assert wrong.exit_code == 1 and "does not hold" in wrong.output
    assert tree_digest(home.home_dir) == before

    chosen = cli(home, "dsar", "export", shared, "--customer", person.key)
    assert chosen.exit_code == 0, chosen.output
    bundle = json.loads(next(home.governance_dir.glob("dsar/export-*/export/bundle.json")).read_text())
    assert [s["customer_keys"] for s in bundle["subjects"]] == [[person.key]]


# --- export --------------------------------------------------------------------------------------------------------


def test_the_bundle_holds_every_store_and_nobody_else(home: Settings, person: Person, stores: list[JsonStore]):
    result = cli(home, "dsar", "export", person.raw_email)
    assert result.exit_code == 0, result.output
    assert "profiles: 1 row(s) in 1 place(s)" in result.output and "bundle: " in result.output
    folder = next(home.governance_dir.glob("dsar/export-*/export"))
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["bundle.json", "consent.csv", "index.html", "mlflow.csv", "profiles.csv"]
    bundle = json.loads((folder / "bundle.json").read_text())
    assert bundle["counts"] == {"profiles": 1, "consent": 1, "mlflow": 1}
    assert {tuple(r) for r in bundle["subjects"][0]["source_records"]} == person.records
    for path in folder.iterdir():
        assert "someone.else@example.org" not in path.read_text()
    profiles = pd.read_csv(folder / "profiles.csv")
    assert profiles[["place", "customer_key", "segment"]].values.tolist() == [
        ["teststores/profiles.json", person.key, "premium"]
    ]
    page = (folder / "index.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained
    receipts = [e for e in read_entries(trail_path(home)) if e["action"] == "dsar_export"]
    assert len(receipts) == 1 and receipts[0]["details"]["stores"] == bundle["counts"]
    assert receipts[0]["details"]["subjects"][0]["customer_keys"][0] != person.key  # keyed hash only


@pytest.mark.integration
def test_the_bundle_page_reads_in_headless_chromium(home: Settings, person: Person, stores: list[JsonStore],
                                                    tmp_path: Path):  # fmt: skip
    from tests.test_report_site import chromium

    assert cli(home, "dsar", "export", person.key, "--out", str(tmp_path / "bundle")).exit_code == 0
    page = tmp_path / "bundle" / "index.html"
    with chromium(tmp_path) as driver:
        driver.get(page.as_uri())
        title, text = driver.title, driver.find_element("tag name", "body").text
        sections = driver.execute_script("return Array.from(document.querySelectorAll('h2')).map(h => h.textContent);")
        loaded = driver.execute_script("return performance.getEntriesByType('resource').map(r => r.name);")
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        shot = tmp_path / "bundle.png"
        assert driver.save_screenshot(str(shot))
    assert title.startswith("Personal data held: export-")
    assert sections == ["Who", "Where your data is", "Consent history", "Models your data went into",
                        "Every place, row by row"]  # fmt: skip
    assert person.key in text and "withdrawn" in text and "custintel-churn version 3" in text
    assert "model training and test data that included you" in text  # each store said in plain words
    assert loaded == [] and severe == [], (loaded, severe)  # nothing fetched: self-contained
    assert shot.stat().st_size > 10_000


# --- erase: the journal resumes ------------------------------------------------------------------------------------


def test_an_erasure_that_dies_half_way_resumes_from_its_journal(home: Settings, person: Person, tmp_path: Path):
    index = load_subject_index(home)
    me = resolve_request(index, person.key)
    row = {"customer_key": person.key, "email": me.emails[0]}
    first = JsonStore(home, "first", "teststores/first.json", [row, {"customer_key": "CK-other"}])
    flaky = FailingOnce(home, "flaky", "teststores/flaky.json", [row])
    last = JsonStore(home, "last", "teststores/last.json", [{"customer_key": person.key}])
    catalogue: list[PersonalStore] = [first, flaky, last]
    suppressed: list[Sequence[Subject]] = []

    def suppress(settings: Settings, subjects: Sequence[Subject]) -> int:
        assert first.erase_calls == 0  # the suppression list comes first: nothing re-adds them half-way
        assert pending_path(home, request_of()).is_file()  # ... after the journal
        suppressed.append(subjects)
        return len(subjects[0].emails)

    def request_of() -> str:
        return next(p.name for p in (home.governance_dir / "dsar").glob("erase-*"))

    from flows.personal import erase_subjects

    def erase() -> Any:
        return erase_subjects(home, person.raw_email, stores=catalogue, suppress=suppress)

    with pytest.raises(DsarError, match="store flaky failed .*run the same command again"):
        erase()
    request = request_of()
    journal = read_journal(home, request)
    assert journal is not None and journal.status == "in_progress" and journal.suppressed is not None
    assert [(s["name"], s["status"], s["removed"]) for s in journal.stores] == [
        ("first", "done", 1), ("flaky", "planned", 0), ("last", "planned", 0)
    ]  # fmt: skip
    assert "disk went away" in journal.stores[1]["error"]
    assert pending_path(home, request).is_file()
    raw_journal = journal_path(home, request).read_text()
    assert person.key not in raw_journal and person.raw_email.lower() not in raw_journal.lower()

    # Meanwhile the identity outputs lost the person (the real identity store may have been erased first):
    # the rerun must not need to resolve the request again.
    shutil.rmtree(home.identity_dir)
    shutil.rmtree(home.lake_dir)
    done = erase()
    assert done is not None and not done.already_done
    assert done.removed == {"first": 1, "flaky": 1, "last": 1}
    assert first.erase_calls == 1 and len(suppressed) == 1  # nothing done twice
    assert not pending_path(home, request).exists()
    assert json.loads(last.path.read_text()) == [] and json.loads(first.path.read_text()) == [
        {"customer_key": "CK-other"}
    ]
    again = erase()
    assert again is not None and again.already_done and first.erase_calls == 1

    receipts = [e for e in read_entries(trail_path(home)) if e["action"] == "dsar_erase"]
    assert [r["subject"] for r in receipts] == [request, request]
    assert [r["details"]["status"] for r in receipts] == ["incomplete", "complete"]
    assert receipts[0]["details"]["stores"] == {"first": 1}
    assert receipts[0]["details"]["failed_store"] == "flaky" and receipts[0]["details"]["error"] == "OSError"
    assert receipts[1]["details"]["stores"] == {"first": 1, "flaky": 1, "last": 1}
    assert receipts[1]["details"]["runs"] == 2
    trail = trail_path(home).read_text()
    assert person.key not in trail and person.raw_email.lower() not in trail.lower()
    verified = cli(home, "audit", "verify")
    assert verified.exit_code == 0 and "intact" in verified.output


# --- verify --------------------------------------------------------------------------------------------------------


def test_verify_lists_hits_then_finds_nothing_after_erasure_from_the_request_alone(
    home: Settings, person: Person, stores: list[JsonStore]
):
    before = cli(home, "dsar", "verify", person.raw_email)
    assert before.exit_code == 1, before.output
    for store in stores:
        assert f"{store.name}  {store.place}  1 row(s)" in before.output
    report = next(home.governance_dir.glob("dsar/verify-*/verify.json"))
    document = json.loads(report.read_text())
    assert not document["clean"] and {(h["store"], h["rows"]) for h in document["hits"]} == {
        ("profiles", 1), ("consent", 1), ("mlflow", 1)
    }  # fmt: skip
    assert person.key not in report.read_text() and person.raw_email.lower() not in report.read_text().lower()

    leftover = home.home_dir / "reports" / "notes.txt"  # a file no store knows: the raw search finds it
    leftover.write_text(f"called {person.raw_phone} about the bill\n")
    raw = cli(home, "dsar", "verify", person.key)
    assert raw.exit_code == 1 and "raw search  reports/notes.txt  1 row(s)" in raw.output
    leftover.unlink()

    erased = cli(home, "dsar", "erase", person.raw_email, "--yes")
    assert erased.exit_code == 0, erased.output
    assert "erased 1 person(s)" in erased.output and "receipt: audit trail seq" in erased.output
    # The real identity and lake stores erase the person too: afterwards nothing resolves the request.
    shutil.rmtree(home.identity_dir)
    shutil.rmtree(home.lake_dir)
    with pytest.raises(UnknownSubject):
        resolve_request(load_subject_index(home), person.raw_email)
    subject = request_subject(load_subject_index(home), person.raw_email)
    assert set(subject.emails) == {person.raw_email, person.raw_email.lower()}

    after = cli(home, "dsar", "verify", person.raw_email)
    assert after.exit_code == 0, after.output
    assert f"nothing found in {len(stores) + 1} stores" in after.output
    actions = [e["action"] for e in read_entries(trail_path(home))]
    assert actions == ["dsar_verify", "dsar_verify", "dsar_erase", "dsar_verify"]
    assert cli(home, "audit", "verify").exit_code == 0


def test_erase_asks_before_changing_anything(home: Settings, person: Person, stores: list[JsonStore]):
    before = tree_digest(home.home_dir)
    result = CliRunner().invoke(app, ["--home", str(home.home_dir), "dsar", "erase", person.key], input="n\n")
    assert result.exit_code == 1 and "not confirmed, nothing changed" in result.output
    assert "about to erase 1 person(s)" in result.output
    assert tree_digest(home.home_dir) == before


def test_a_file_of_requests_is_erased_in_one_pass(
    home: Settings, person: Person, stores: list[JsonStore], tmp_path: Path
):
    other = next(r["customer_key"] for r in json.loads(stores[0].path.read_text()) if r["customer_key"] != person.key)
    requests = tmp_path / "requests.txt"
    requests.write_text(f"# two people, one of them twice\n{person.raw_email}\n{other}\n{person.key}\n")
    result = cli(home, "dsar", "erase", "--file", str(requests), "--yes")
    assert result.exit_code == 0, result.output
    assert "about to erase 2 person(s)" in result.output and "profiles: 2 removed in 1 place(s)" in result.output
    assert json.loads(stores[0].path.read_text()) == [] and all(s.erase_calls == 1 for s in stores)
    journal = read_journal(home, next(p.name for p in (home.governance_dir / "dsar").glob("erase-*")))
    assert journal is not None and len(journal.subjects) == 2 and journal.status == "done"


@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_the_raw_search_finds_whole_identifiers_in_any_case_across_chunk_edges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
):
    import governance.dsar

    monkeypatch.setattr(governance.dsar, "_CHUNK", chunk)
    subject = Subject("r", customer_keys=("CK0001",), emails=("jane@example.com",), phones=("+13125550143",))
    (tmp_path / "log.jsonl").write_text('{"who": "JANE@Example.com", "id": "xxCK0001"}\n' * 3)
    (tmp_path / "notes.txt").write_text("CK00012 and CK0001x are someone else; +131255501439 too\n")
    (tmp_path / "keys.csv").write_text("a,b\n1,CK0001\n")
    (tmp_path / "data.parquet").write_bytes(b"CK0001")  # the stores search Parquet by value
    (tmp_path / "drops").mkdir()
    (tmp_path / "drops" / "crm.csv").write_text("jane@example.com\n")
    hits = raw_token_hits(tmp_path, [subject], skip=[tmp_path / "drops"])
    assert {(h.place, tuple(r["token"] for r in h.rows)) for h in hits} == {
        ("log.jsonl", ("JA************om",)), ("keys.csv", ("CK**01",))
    }  # fmt: skip


def test_resolution_rules_on_a_tiny_index():
    from features.identity.subjects import SubjectIndex

    rows = {
        "crm_accounts:C1": {"record_id": "C1", "first_name": "jane", "last_name": "doe", "birth_date": "1970-01-31",
                            "email": "janedoe@gmail.com"},
        "billing_accounts:B1": {"record_id": "B1", "email": "janedoe@gmail.com"},
        "crm_accounts:C2": {"record_id": "C2", "first_name": "john", "last_name": "roe", "birth_date": "1980-05-05"},
        "billing_accounts:C2": {"record_id": "C2"},  # the same bare id in another table, another customer
        "northwind_customers:N9": {"record_id": "N9", "email": "late@example.org"},  # ingested after resolve
    }  # fmt: skip
    customer_of = {"crm_accounts:C1": "K1", "billing_accounts:B1": "K1", "crm_accounts:C2": "K2",
                   "billing_accounts:C2": "K3"}  # fmt: skip
    raw_phones = {"crm_accounts:C2": {"000-000-0000"}}  # a placeholder normalisation rejects, still held as written
    index = SubjectIndex.from_mappings(rows, customer_of, {"crm_accounts:C1": {"Jane.Doe@GMail.com"}}, raw_phones,
                         ("crm_accounts", "billing_accounts", "northwind_customers"))  # fmt: skip
    jane = resolve_request(index, "K1")
    assert jane.source_records == (("billing_accounts", "B1"), ("crm_accounts", "C1"))
    assert jane.emails == ("Jane.Doe@GMail.com", "janedoe@gmail.com") and jane.names == (("jane", "doe", "1970-01-31"),)
    for request in ("jane.doe+news@googlemail.com", "DOE, Jane|31/01/1970", "Doe Jane|1970-01-31", "B1"):
        assert resolve_request(index, request).customer_keys == ("K1",), request
    assert resolve_request(index, "000-000-0000").customer_keys == ("K2",)
    with pytest.raises(AmbiguousSubject, match=r"held by 2 customers: K2 .*; K3 ") as caught:
        resolve_request(index, "C2")
    assert [c.key for c in caught.value.candidates] == ["K2", "K3"]
    assert resolve_request(index, "C2", customer="K3").source_records == (("billing_accounts", "C2"),)
    late = resolve_request(index, "late@example.org")  # no customer key yet: the record alone
    assert late.customer_keys == () and late.source_records == (("northwind_customers", "N9"),)
    searched = request_subject(index, "gone@example.org", customer="K9")  # after erasure: the request itself
    assert searched.emails == ("gone@example.org",) and searched.customer_keys == ("K9",)
