"""Identity records from the ingested world, and the deterministic baseline against the truth."""

import pandas as pd
import pytest

from features.identity.config import load_identity_config
from features.identity.deterministic import cluster_records, deterministic_links
from features.identity.evaluate import pairwise_scores
from features.identity.normalise import normalise_emails
from features.identity.records import IDENTITY_COLUMNS
from features.identity.store import load_identity_records


@pytest.fixture(scope="module")
def identity(ingested) -> pd.DataFrame:
    recs = load_identity_records(ingested.settings, load_identity_config())
    truth = ingested.world.truth_frame("source_records")
    truth["record_key"] = truth["source_table"] + ":" + truth["record_id"]
    return recs.merge(truth[["record_key", "person_id", "role"]], on="record_key", how="left")


def test_every_accepted_account_becomes_one_identity_record(identity: pd.DataFrame, ingested) -> None:
    assert list(identity.columns[: len(IDENTITY_COLUMNS)]) == IDENTITY_COLUMNS
    assert identity["record_key"].is_unique
    accepted = sum(
        ingested.report.tables[t].accepted for t in ("crm_accounts", "billing_accounts", "northwind_customers")
    )
    assert len(identity) == accepted
    assert identity["person_id"].notna().all()
    assert identity["phone"].dropna().str.fullmatch(r"\+\d{8,15}").all()
    assert identity["email"].dropna().str.contains("@").all()
    assert identity["birth_date"].dropna().str.fullmatch(r"\d{4}-\d{2}-\d{2}").all()
    # the acquired book's one-field names were split
    nw = identity[identity["source_table"] == "northwind_customers"]
    assert nw["last_name"].notna().mean() > 0.95
    # every source maps a recency column, so most_recent has something to go on
    assert identity["updated_at"].notna().mean() > 0.99


def test_no_two_persons_share_a_mailbox_in_their_primary_records(ingested) -> None:
    crm = pd.read_csv(ingested.world.path / "crm" / "accounts.csv", dtype=str, keep_default_na=False)
    truth = ingested.world.truth_frame("source_records")
    primary = crm.merge(truth[truth["role"] == "crm_primary"], left_on="crm_id", right_on="record_id")
    canonical = normalise_emails(primary["email"].replace("", None))
    owners = pd.DataFrame({"email": canonical, "person": primary["person_id"]}).dropna().drop_duplicates()
    assert owners["email"].is_unique


def test_deterministic_pass_is_precise_against_the_truth(identity: pd.DataFrame) -> None:
    clusters = cluster_records(identity["record_key"], deterministic_links(identity))
    scores = pairwise_scores(clusters, identity["person_id"])
    assert scores.precision >= 0.999
    # exact identifiers alone miss changed emails and phones; the probabilistic pass is for those
    assert 0.85 <= scores.recall < 0.99
