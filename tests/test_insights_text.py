"""Ticket text: planted topics and PII in the generator, masking, topics, emerging-issue alerts."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import normalized_mutual_info_score

from features.synthetic import WorldConfig, generate_world
from features.synthetic.tickets import TICKET_TOPICS, TOPIC_TEMPLATES
from insights.errors import InsightsError
from insights.text.emerging import EmergingReport, detect_emerging
from insights.text.mask import MAX_TEXT_CHARS, TicketTextTruncated, mask_text, mask_texts, prepare_texts
from insights.text.topics import UNASSIGNED, assign_topics, fit_topics
from tests.conftest import WORLD_CONFIG, World

OUTBREAK_START = dt.date(2025, 6, 10)


def _tickets(path: Path) -> pd.DataFrame:
    """The exported tickets (one row per id) joined to their text truth and the writer's names."""
    raw = pd.read_csv(path / "support" / "tickets.csv", dtype=str, keep_default_na=False)
    truth = pd.read_parquet(path / "_truth" / "ticket_text.parquet")
    persons = pd.read_parquet(path / "_truth" / "persons.parquet")[["person_id", "first_name", "last_name"]]
    return (
        raw.drop_duplicates("ticket_id")
        .merge(truth, on="ticket_id", suffixes=("", "_truth"))
        .merge(persons, on="person_id", how="left")
    )


@pytest.fixture(scope="module")
def tickets(world: World) -> pd.DataFrame:
    return _tickets(world.path)


@pytest.fixture(scope="module")
def outbreak_tickets(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    cfg = WORLD_CONFIG.model_copy(
        update={"outbreak_topic": "technical_app_update_login", "outbreak_start": OUTBREAK_START}
    )
    out = tmp_path_factory.mktemp("outbreak") / "drop"
    generate_world(WorldConfig.model_validate(cfg.model_dump()), out)
    return _tickets(out)


def test_taxonomy_is_complete() -> None:
    assert 15 <= sum(t.weight > 0 for t in TICKET_TOPICS.values()) <= 20
    assert set(TICKET_TOPICS) == set(TOPIC_TEMPLATES)
    assert {t.category for t in TICKET_TOPICS.values()} == {
        "billing",
        "technical",
        "network",
        "account",
        "device",
        "cancellation",
    }


def test_generator_plants_topics_and_pii(tickets: pd.DataFrame) -> None:
    assert (tickets["category"] == tickets["category_truth"]).all()  # a topic lives in its ticket's category
    assert not tickets["outbreak"].any()  # the default world has no outbreak
    pii = tickets["pii_owner"] != ""
    assert 0.05 <= pii.mean() <= 0.10
    for col in ("pii_name", "pii_email", "pii_phone"):
        planted = tickets[tickets[col] != ""]
        assert len(planted) > 30
        assert all(v in text for v, text in zip(planted[col], planted["description"], strict=True))


def test_outbreak_world_adds_only_new_tickets(tickets: pd.DataFrame, outbreak_tickets: pd.DataFrame) -> None:
    extra = outbreak_tickets[outbreak_tickets["outbreak"]]
    assert len(extra) > 50 and (extra["topic"] == "technical_app_update_login").all()
    assert (pd.to_datetime(extra["opened_at"], errors="coerce").dropna() >= pd.Timestamp(OUTBREAK_START)).all()
    assert not set(extra["ticket_id"]) & set(tickets["ticket_id"])
    normal = outbreak_tickets[~outbreak_tickets["outbreak"]].set_index("ticket_id")["description"]
    same = tickets.set_index("ticket_id")["description"].reindex(normal.index)
    assert (normal == same).mean() > 0.99  # the normal tickets' text does not move (bar injected defects)


def _leaks(frame: pd.DataFrame, masked: list[str]) -> list[tuple[str, str]]:
    leaks = []
    for row, text in zip(frame.itertuples(), masked, strict=True):
        values = [v for v in (row.pii_email, row.pii_phone) if v]
        tokens = row.pii_name.split() if row.pii_name else []
        if any(v in text for v in values) or any(re.search(rf"\b{re.escape(t)}\b", text) for t in tokens):
            leaks.append((row.description, text))
    return leaks


def test_no_planted_pii_survives_masking(tickets: pd.DataFrame) -> None:
    planted = tickets[tickets["pii_owner"] != ""]
    assert _leaks(planted, mask_texts(planted["description"].tolist())) == []
    names = [(f, last) for f, last in zip(planted["first_name"], planted["last_name"], strict=True)]
    assert _leaks(planted, mask_texts(planted["description"].tolist(), names)) == []
    clean = tickets[tickets["pii_owner"] == ""]["description"].head(3000).tolist()
    changed = sum(a != b for a, b in zip(clean, mask_texts(clean), strict=True))
    assert changed / len(clean) < 0.01  # masking leaves texts without personal data alone


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        ("call me on 07700 900123 please", "07700 900123"),
        ("my number is +44 (0)7700 900 123", "7700 900 123"),
        ("ring 020-7946-0018", "7946"),
        ("tel (415) 555-0134 after 5", "555-0134"),
        ("email me at jane.o'neil+x@mail.example.co.uk", "@mail"),
        ("This is Gráinne Ní Bhriain, account C000012345", "C000012345"),
        ("Regards, Tom", "Tom"),
        ("my name is Aisha Haddad and my bill is wrong", "Haddad"),
    ],
)
def test_mask_formats(text: str, gone: str) -> None:
    assert gone not in mask_text(text)


def test_known_names_are_masked_in_any_case() -> None:
    assert mask_text("please ask susan or SUSAN JONES", ["Susan", "Jones"]) == "please ask [NAME] or [NAME] [NAME]"


def test_bad_input_is_handled() -> None:
    huge = "slow speeds " * 1000
    with pytest.warns(TicketTextTruncated, match="longer than"):
        prepared = prepare_texts([None, float("nan"), b"\xff\xfebad bytes", "", huge, "fine"])
    reasons = {(i.row, i.reason) for i in prepared.issues}
    assert {(0, "empty"), (1, "empty"), (2, "not_utf8"), (3, "empty"), (4, "truncated")} <= reasons
    assert len(prepared.texts[4]) == MAX_TEXT_CHARS and prepared.texts[5] == "fine"
    with pytest.raises(InsightsError, match="description"):
        fit_topics(["", None, "???", "!!"])


def test_topics_recover_the_planted_ones(tickets: pd.DataFrame) -> None:
    sample = tickets.sample(6000, random_state=0)
    model = fit_topics(sample["description"].tolist(), k_grid=(16, 20, 24, 28))
    assigned = assign_topics(model, sample["description"].tolist())
    nmi = normalized_mutual_info_score(sample["topic"], assigned)
    assert nmi >= 0.8, f"NMI {nmi:.3f} against the planted topics"
    assert all(t.label and t.example for t in model.topics)
    assert not any("@" in t.example for t in model.topics)
    new = assign_topics(model, ["my wifi keeps dropping, the router disconnects", "", None])
    wifi = assigned[sample["topic"].to_numpy() == "technical_wifi_dropouts"]
    assert new[0] == np.bincount(wifi[wifi >= 0]).argmax()
    assert new[1] == UNASSIGNED and new[2] == UNASSIGNED


def _alerts(frame: pd.DataFrame, as_of: dt.date, periods: int) -> tuple[EmergingReport, np.ndarray, pd.DataFrame]:
    seen = frame[pd.to_datetime(frame["opened_at"], errors="coerce") < pd.Timestamp(as_of)]
    model = fit_topics(seen["description"].tolist(), k_grid=(20, 24, 28))
    topics = assign_topics(model, seen["description"].tolist())
    labels = [t.label for t in model.topics]
    report = detect_emerging(
        seen["opened_at"], topics, seen["description"].tolist(), labels, as_of=as_of, periods=periods
    )
    return report, topics, seen


def test_outbreak_alerts_within_a_week(outbreak_tickets: pd.DataFrame) -> None:
    as_of = OUTBREAK_START + dt.timedelta(days=7)
    report, topics, seen = _alerts(outbreak_tickets, as_of, periods=1)
    hit = topics[seen["outbreak"].to_numpy()]
    outbreak_topic = np.bincount(hit[hit >= 0]).argmax()
    assert [a.topic for a in report.alerts] == [outbreak_topic]
    alert = report.alerts[0]
    assert alert.share > alert.baseline and alert.p_value < 0.01 and alert.examples
    assert {"app", "login"} <= set(alert.rising_terms)  # what is new, whatever the topic's label says
    assert not any("@" in e for e in alert.examples)


def test_quiet_world_stays_quiet(tickets: pd.DataFrame) -> None:
    report, _, _ = _alerts(tickets, dt.date(2026, 1, 1), periods=60)
    assert report.topic_periods_tested >= 60 * 16
    assert report.alert_rate <= 0.005, [(a.label, a.period_start) for a in report.alerts]


_PHONE_LAYOUTS = ("{a} {b} {c}", "{a}-{b}-{c}", "({a}) {b}-{c}", "+1 {a} {b} {c}", "{a}{b}{c}", "+44 {a} {b}{c}")


@given(
    a=st.integers(100, 999),
    b=st.integers(100, 999),
    c=st.integers(1000, 9999),
    layout=st.sampled_from(_PHONE_LAYOUTS),
    local=st.from_regex(r"[a-z][a-z0-9._+-]{0,20}[a-z0-9]", fullmatch=True),
    domain=st.from_regex(r"[a-z][a-z0-9-]{0,10}\.(com|co\.uk|org)", fullmatch=True),
    topic=st.sampled_from(sorted(TOPIC_TEMPLATES)),
)
def test_masking_never_leaks_a_phone_or_email(
    a: int, b: int, c: int, layout: str, local: str, domain: str, topic: str
) -> None:
    phone = layout.format(a=a, b=b, c=c)
    email = f"{local}@{domain}"
    text = f"{TOPIC_TEMPLATES[topic][0]} Call me on {phone} or mail {email}, thanks"
    masked = mask_text(text)
    assert phone not in masked and email not in masked and f"{c}" not in masked
