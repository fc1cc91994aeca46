"""Render a chunk's behaviour as the source systems export it, with their quirks.

Each system has its own keys, column names, date and phone formats; the same
person appears as several records (CRM duplicates, billing accounts, the acquired
company's book), with typos, missing values and moved addresses. A small share of
rows is deliberately broken and every such row is recorded in the truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.synthetic import reference as ref
from features.synthetic import tickets
from features.synthetic.behaviour import Behaviour
from features.synthetic.config import WorldConfig
from features.synthetic.noise import add_typos, blank_out, format_phone

_SEC = np.timedelta64(1, "s")
_DAY = np.timedelta64(1, "D")

# table -> (path under the drop, format, csv separator)
SOURCE_FILES: dict[str, tuple[str, str, str]] = {
    "crm_accounts": ("crm/accounts.csv", "csv", ","),
    "billing_accounts": ("billing/accounts.csv", "csv", ","),
    "billing_transactions": ("billing/transactions.csv", "csv", ","),
    "support_tickets": ("support/tickets.csv", "csv", ","),
    "digital_events": ("digital/events.parquet", "parquet", ","),
    "nps_responses": ("surveys/nps_responses.csv", "csv", ","),
    "consent_events": ("consent/consent_events.csv", "csv", ","),
    "northwind_customers": ("northwind/CUSTOMERS.csv", "csv", ";"),
    "northwind_consents": ("northwind/CONSENTS.csv", "csv", ";"),
    "offer_test": ("experiments/retention_offer_2025.csv", "csv", ","),
    "product_catalogue": ("catalogue/products.csv", "csv", ","),
    "knowledge_base_articles": ("knowledge_base/articles.csv", "csv", ","),  # features.synthetic.knowledge_base
}

BAD_DATES = ["2024-02-30", "31/02/2024", "0000-00-00", "yesterday", "2024-13-45"]
# (table, field, kind, replacement values)
MALFORMATIONS: dict[str, list[tuple[str, str, list[str]]]] = {
    "crm_accounts": [
        ("created_at", "bad_date", BAD_DATES),
        ("segment", "unknown_code", ["gold", "vip_x"]),
        ("crm_id", "missing_key", [""]),
        ("birth_date", "bad_date", BAD_DATES),
    ],
    "billing_accounts": [
        ("billing_account_id", "missing_key", [""]),
        ("opened_at", "bad_date", BAD_DATES),
        ("status", "unknown_code", ["pending_review", "zombie"]),
    ],
    "billing_transactions": [
        ("amount", "negative_amount", ["-"]),
        ("txn_time", "bad_date", BAD_DATES),
        ("txn_type", "unknown_code", ["chargeback", "adjustmnt"]),
        ("product_id", "unknown_code", ["P-999", "ADD-LEGACY"]),
        ("txn_id", "missing_key", [""]),
        ("amount", "not_a_number", ["12,50", "$9.99", "abc"]),
    ],
    "support_tickets": [
        ("channel", "unknown_code", ["fax", "pigeon"]),
        ("csat", "out_of_range", ["0", "7", "10"]),
        ("opened_at", "bad_date", BAD_DATES),
        ("ticket_id", "missing_key", [""]),
    ],
    "nps_responses": [
        ("score", "out_of_range", ["11", "-1", "42"]),
        ("survey_date", "bad_date", BAD_DATES),
    ],
    "consent_events": [
        ("purpose", "unknown_code", ["sms_blast", "third_party_sale"]),
        ("status", "unknown_code", ["maybe", "pending"]),
        ("recorded_at", "bad_date", BAD_DATES),
    ],
    "northwind_customers": [
        ("SIGNUP_DT", "bad_date", BAD_DATES),
        ("SEGMENT_CD", "unknown_code", ["XXX", "GLD"]),
        ("CUST_NO", "missing_key", [""]),
    ],
    "digital_events": [
        ("event_type", "unknown_code", ["clickz", "hover"]),
        ("event_time", "future_time", []),
        ("event_id", "missing_key", []),
    ],
}
# Tables whose exports repeat a few rows, and the key column the repeats share.
DUPLICATED_TABLES = {
    "billing_transactions": "txn_id",
    "support_tickets": "ticket_id",
    "digital_events": "event_id",
    "consent_events": "consent_event_id",
}
# Systems whose export quotes every text value (as many billing and ticketing platforms do).
QUOTE_ALL_TABLES = {"billing_accounts", "billing_transactions", "support_tickets", "consent_events"}


@dataclass
class RenderedChunk:
    """The export rows of one chunk, the record-to-person truth and the injected defects."""

    tables: dict[str, pd.DataFrame]
    source_records: pd.DataFrame
    injected: list[pd.DataFrame] = field(default_factory=list)
    not_yet_arrived: dict[str, int] = field(default_factory=dict)
    truth: dict[str, pd.DataFrame] = field(default_factory=dict)  # extra truth tables, e.g. ticket_text


def _iso(ts: pd.Series | np.ndarray, fmt: str = "%Y-%m-%d %H:%M:%S") -> pd.Series:
    """Format timestamps the way a system exports them; empty where there is no time.

    numpy's C string routines do the work (pandas' strftime is ~20x slower at these
    sizes); the few layouts the sources use are rearranged from its ISO output.
    """
    values = np.asarray(pd.to_datetime(np.asarray(ts)).to_numpy(), dtype="datetime64[s]")
    iso = np.datetime_as_string(values, unit="s")
    cut = np.strings.slice
    date, clock = cut(iso, 0, 10), cut(iso, 11, 19)
    year, month, day = cut(iso, 0, 4), cut(iso, 5, 7), cut(iso, 8, 10)
    add = np.strings.add
    layouts = {
        "%Y-%m-%d %H:%M:%S": lambda: add(add(date, " "), clock),
        "%Y-%m-%dT%H:%M:%SZ": lambda: add(add(add(date, "T"), clock), "Z"),
        "%Y-%m-%dT%H:%M:%S+00:00": lambda: add(add(add(date, "T"), clock), "+00:00"),
        "%Y-%m-%d": lambda: date,
        "%m/%d/%Y": lambda: add(add(add(add(month, "/"), day), "/"), year),
        "%d/%m/%Y": lambda: add(add(add(add(day, "/"), month), "/"), year),
    }
    if fmt not in layouts:
        raise ValueError(f"unsupported export layout {fmt}")
    out = np.where(np.isnat(values), "", layouts[fmt]()).astype(object)
    return pd.Series(out)


def _ids(prefix: str, numbers: np.ndarray, width: int) -> np.ndarray:
    """Identifiers such as C000012345, built without a Python loop."""
    numbers = np.asarray(numbers, dtype=np.int64)
    if numbers.size == 0:  # a small chunk may have none of some record kind
        return np.empty(0, dtype=object)
    digits = np.strings.zfill(numbers.astype(str), width)
    return np.strings.add(prefix, digits).astype(object)


def _route(
    rng: np.random.Generator,
    who: np.ndarray,
    times: np.ndarray,
    ids: dict[str, np.ndarray],
    created: dict[str, np.ndarray],
) -> np.ndarray:
    """Pick which of a person's CRM records an activity was logged against."""
    out = ids["primary"][who]
    r = rng.random(who.size)
    for slot, lo, hi in (("dup1", 0.0, 0.3), ("dup2", 0.3, 0.4)):
        cand = ids[slot][who]
        ok = (r >= lo) & (r < hi) & (cand != "") & (created[slot][who] <= times)
        out = np.where(ok, cand, out)
    return out


def render_chunk(cfg: WorldConfig, rng: np.random.Generator, beh: Behaviour, chunk: int) -> RenderedChunk:
    """Turn one chunk of simulated behaviour into source-system rows."""
    p = beh.persons
    n = len(p)
    end = np.datetime64(cfg.window_end, "s")
    base = chunk * cfg.chunk_size * 4
    churn = p["churn_date"].to_numpy()
    last_seen = np.where(np.isnat(churn), end, churn)
    observed = p["observed_from"].to_numpy()
    signup = p["signup_date"].to_numpy()
    records: list[pd.DataFrame] = []
    tables: dict[str, pd.DataFrame] = {}
    truth: dict[str, pd.DataFrame] = {}

    # --- CRM: a primary record per person, and duplicates with realistic drift. ---
    primary_created = (
        np.where(p["acquired"], observed, np.minimum(signup, observed)) + rng.integers(8 * 3600, 20 * 3600, n) * _SEC
    )
    has1 = rng.random(n) < cfg.duplicate_rate
    has2 = has1 & (rng.random(n) < 0.15)
    span = ((last_seen - observed) / _SEC).astype(np.int64)
    created = {
        "primary": primary_created,
        "dup1": observed + (rng.random(n) * span).astype(np.int64) * _SEC,
        "dup2": observed + (rng.random(n) * span).astype(np.int64) * _SEC,
    }
    slots = [("primary", np.ones(n, dtype=bool)), ("dup1", has1), ("dup2", has2)]
    k = sum(int(m.sum()) for _, m in slots)
    crm_numbers = base + rng.permutation(k)
    ids: dict[str, np.ndarray] = {}
    pos = 0
    crm_parts = []
    billing_id = _ids("BA", base + rng.permutation(n), 9)
    for slot, mask in slots:
        sel = np.flatnonzero(mask)
        slot_ids = np.full(n, "", dtype=object)
        slot_ids[sel] = _ids("C", crm_numbers[pos : pos + sel.size], 9)
        pos += sel.size
        ids[slot] = slot_ids
        crm_parts.append(
            _crm_records(
                cfg, rng, p.iloc[sel], slot, slot_ids[sel], created[slot][sel], billing_id[sel], last_seen[sel]
            )
        )
    crm = pd.concat(crm_parts, ignore_index=True)
    crm = crm.iloc[rng.permutation(len(crm))].reset_index(drop=True)
    records.append(
        pd.DataFrame(
            {
                "source_table": "crm_accounts",
                "record_id": crm["crm_id"],
                "person_id": crm.pop("_person"),
                "role": crm.pop("_role"),
            }
        )
    )
    tables["crm_accounts"] = crm

    # --- Billing accounts: one per person, a second for a few business customers. ---
    second = (p["segment"].to_numpy() != "consumer") & (rng.random(n) < 0.05)
    billing2 = _ids("BA", base + n + np.arange(int(second.sum())), 9)
    bacc = pd.concat(
        [
            _billing_accounts(cfg, rng, p, billing_id, observed, churn),
            _billing_accounts(cfg, rng, p[second], billing2, observed[second], churn[second]),
        ],
        ignore_index=True,
    )
    bacc = bacc.iloc[rng.permutation(len(bacc))].reset_index(drop=True)
    records.append(
        pd.DataFrame(
            {
                "source_table": "billing_accounts",
                "record_id": bacc["billing_account_id"],
                "person_id": bacc.pop("_person"),
                "role": "billing",
            }
        )
    )
    tables["billing_accounts"] = bacc

    # --- The acquired company's book, in its own schema. ---
    acq = np.flatnonzero(p["acquired"].to_numpy())
    nw_ids = _ids("NW", chunk * cfg.chunk_size + rng.permutation(acq.size), 8)
    nw = _northwind_customers(cfg, rng, p.iloc[acq], nw_ids, churn[acq])
    records.append(
        pd.DataFrame(
            {
                "source_table": "northwind_customers",
                "record_id": nw["CUST_NO"],
                "person_id": nw.pop("_person"),
                "role": "acquired",
            }
        )
    )
    tables["northwind_customers"] = nw
    tables["northwind_consents"] = _northwind_consents(cfg, rng, nw_ids)

    # --- Activity, keyed by the systems' own ids. ---
    bill2_of = np.full(n, "", dtype=object)
    bill2_of[np.flatnonzero(second)] = billing2
    tables["billing_transactions"], late_tx = _transactions(cfg, rng, beh.transactions, billing_id, bill2_of, chunk)
    tables["support_tickets"] = _tickets(cfg, rng, beh.tickets, ids, created, chunk, p, truth)
    tables["digital_events"], late_ev = _events(cfg, rng, beh.events, ids, created, chunk)
    tables["nps_responses"] = _nps(cfg, rng, beh.nps, ids, created, chunk)
    tables["consent_events"] = _consent(cfg, rng, beh.consent, p, ids, created, chunk)
    offer = beh.offer_test
    tables["offer_test"] = pd.DataFrame(
        {
            "crm_id": ids["primary"][offer["who"].to_numpy()],
            "group": offer["group"],
            "offer_code": "RET-20OFF-3M",
            "assigned_at": _iso(offer["assigned_at"], "%Y-%m-%d"),
            "outcome_window_end": _iso(offer["outcome_window_end"], "%Y-%m-%d"),
            "churned_in_window": offer["churned_in_window"].astype(int),
        }
    )

    out = RenderedChunk(
        tables,
        pd.concat(records, ignore_index=True),
        not_yet_arrived={"billing_transactions": late_tx, "digital_events": late_ev},
        truth=truth,
    )
    _inject_defects(cfg, rng, out)
    _plant_effort_errors(cfg, out, chunk)
    return out


def _crm_records(
    cfg: WorldConfig,
    rng: np.random.Generator,
    p: pd.DataFrame,
    slot: str,
    crm_ids: np.ndarray,
    created: np.ndarray,
    billing_id: np.ndarray,
    last_seen: np.ndarray,
) -> pd.DataFrame:
    m = len(p)
    dup = slot != "primary"
    typo = cfg.typo_rate if dup else cfg.typo_rate / 5
    first = p["first_name"].copy()
    if dup:
        nick = first.map(ref.NICKNAMES)
        use_nick = nick.notna() & (rng.random(m) < 0.5)
        first = first.where(~use_nick, nick)
    email = p["email"].copy()
    phone = p["phone_digits"].copy()
    address = p["house_number"] + " " + p["street"]
    city, state, postcode = p["city"].copy(), p["state"].copy(), p["postcode"].copy()
    birth = p["birth_date"].copy()
    if dup:
        r = rng.random(m)
        alt = (
            p["first_name"].str.lower().str.replace(r"[^a-z]", "", regex=True)
            + p["last_name"].str.lower().str.replace(r"[^a-z]", "", regex=True)
            + pd.Series(rng.integers(10, 9999, m).astype(str), index=p.index)
            + "@"
            + pd.Series(rng.choice([d for d, _ in ref.EMAIL_DOMAINS], m), index=p.index)
        )
        email = email.where(r >= 0.3, alt).mask(r > 0.88)
        r = rng.random(m)
        new_phone = pd.Series(
            p["phone_digits"].str[:3] + rng.integers(2_000_000, 9_999_999, m).astype(str), index=p.index
        )
        phone = phone.where(r >= 0.2, new_phone).mask(r > 0.7)
        moved = rng.random(m) < 0.25
        moved_addr = (
            pd.Series(rng.integers(1, 9999, m).astype(str), index=p.index)
            + " "
            + p["street"].sample(frac=1.0, random_state=int(rng.integers(1 << 31))).to_numpy()
        )
        address = address.where(~moved, moved_addr)
        postcode = postcode.where(~moved, p["postcode"].str[:3] + np.char.zfill(rng.integers(0, 100, m).astype(str), 2))
        swap = rng.random(m) < 0.05  # day and month swapped by a clerk
        swapped = pd.to_datetime(
            {"year": birth.dt.year, "month": birth.dt.day.clip(upper=12), "day": birth.dt.month}, errors="coerce"
        )
        birth = birth.where(~swap, swapped)
    created_s = pd.Series(created, index=p.index)
    upd = created + (rng.random(m) * ((last_seen - created) / _SEC)).astype(np.int64) * _SEC
    phone_fmt = format_phone(phone, rng.choice([0, 1, 2, 5], m))
    frame = pd.DataFrame(
        {
            "crm_id": crm_ids,
            "first_name": add_typos(first, typo, rng),
            "last_name": add_typos(p["last_name"], typo, rng),
            "email": blank_out(add_typos(email, typo, rng), cfg.missing_rate, rng),
            "phone": blank_out(phone_fmt, 2 * cfg.missing_rate, rng),
            "address_line": blank_out(add_typos(address, typo, rng), cfg.missing_rate / 2, rng),
            "city": city,
            "state": state,
            "postcode": postcode,
            "birth_date": blank_out(birth.dt.strftime("%Y-%m-%d"), 1.5 * cfg.missing_rate, rng),
            "gender": blank_out(p["gender"], cfg.missing_rate, rng),
            "region": p["region"],
            "segment": p["segment"],
            "acquisition_channel": p["acquisition_channel"]
            if not dup
            else pd.Series(rng.choice(ref.CHANNELS, m), index=p.index),
            "billing_account_id": pd.Series(billing_id, index=p.index).where(rng.random(m) < (0.3 if dup else 0.75)),
            "created_at": _iso(created_s).to_numpy(),
            "updated_at": _iso(upd).to_numpy(),
            "_person": p["person_id"].to_numpy(),
            "_role": "crm_duplicate" if dup else "crm_primary",
        }
    )
    return frame.reset_index(drop=True)


def _billing_accounts(
    cfg: WorldConfig,
    rng: np.random.Generator,
    p: pd.DataFrame,
    acct: np.ndarray,
    observed: np.ndarray,
    churn: np.ndarray,
) -> pd.DataFrame:
    m = len(p)
    holder = np.where(
        rng.random(m) < 0.5, p["last_name"].str.upper() + ", " + p["first_name"], p["first_name"] + " " + p["last_name"]
    )
    r = rng.random(m)
    email = p["email"].where(r < 0.8).mask(r > 0.92)
    frame = pd.DataFrame(
        {
            "billing_account_id": acct,
            "account_holder": add_typos(pd.Series(holder, index=p.index), cfg.typo_rate, rng).to_numpy(),
            "email": add_typos(email, cfg.typo_rate, rng).to_numpy(),
            "phone": blank_out(format_phone(p["phone_digits"], np.full(m, 3)), cfg.missing_rate, rng).to_numpy(),
            "billing_address": add_typos(p["house_number"] + " " + p["street"], cfg.typo_rate, rng).to_numpy(),
            "city": p["city"].to_numpy(),
            "state": p["state"].to_numpy(),
            "postcode": p["postcode"].to_numpy(),
            "plan_id": p["plan_at_end"].to_numpy(),
            "status": np.where(np.isnat(churn), "active", "closed"),
            "opened_at": _iso(observed, "%Y-%m-%d").to_numpy(),
            "closed_at": pd.Series(pd.to_datetime(churn)).dt.strftime("%Y-%m-%d").to_numpy(),
            "_person": p["person_id"].to_numpy(),
        }
    )
    return frame


def _northwind_customers(
    cfg: WorldConfig, rng: np.random.Generator, p: pd.DataFrame, nw_ids: np.ndarray, churn: np.ndarray
) -> pd.DataFrame:
    m = len(p)
    name = (p["first_name"] + " " + p["last_name"]).where(rng.random(m) < 0.7, p["last_name"] + " " + p["first_name"])
    r = rng.random(m)
    return pd.DataFrame(
        {
            "CUST_NO": nw_ids,
            "FULL_NAME": add_typos(name.str.upper(), cfg.typo_rate, rng).to_numpy(),
            "EMAIL_ADDR": add_typos(
                p["email"].str.upper().where(r < 0.5, p["email"]).where(r < 0.85), cfg.typo_rate, rng
            ).to_numpy(),
            "TEL_NO": blank_out(
                format_phone(p["phone_digits"], rng.choice([2, 4], m)), 2 * cfg.missing_rate, rng
            ).to_numpy(),
            "DOB": blank_out(p["birth_date"].dt.strftime("%d/%m/%Y"), 3 * cfg.missing_rate, rng).to_numpy(),
            "SEX": p["gender"].map(ref.NORTHWIND_SEX).to_numpy(),
            "ADDRESS": add_typos((p["house_number"] + " " + p["street"]).str.upper(), cfg.typo_rate, rng).to_numpy(),
            "TOWN": p["city"].str.upper().to_numpy(),
            "STATE": p["state"].to_numpy(),
            "ZIP": p["postcode"].to_numpy(),
            "SEGMENT_CD": p["segment"].map(ref.NORTHWIND_SEGMENT).to_numpy(),
            "SIGNUP_DT": p["signup_date"].dt.strftime("%d/%m/%Y").to_numpy(),
            "STATUS": np.where(np.isnat(churn), "MIGRATED", "MIGRATED_CLOSED"),
            "_person": p["person_id"].to_numpy(),
        }
    )


def _northwind_consents(cfg: WorldConfig, rng: np.random.Generator, nw_ids: np.ndarray) -> pd.DataFrame:
    """Incomplete by design: a third have no consent on file; analytics was never asked."""
    keep = rng.random(nw_ids.size) >= 0.35
    ids = np.repeat(nw_ids[keep], 2)
    purpose = np.tile(["MKT", "PROF"], int(keep.sum()))
    some = rng.random(ids.size) < 0.85  # not every purpose was captured either
    days = rng.integers(0, 3000, ids.size)
    dates = np.datetime64(cfg.acquisition_date, "D") - days * _DAY
    return pd.DataFrame(
        {
            "CUST_NO": ids[some],
            "PURPOSE_CD": purpose[some],
            "OPT_IN": np.where(rng.random(ids.size) < 0.7, "Y", "N")[some],
            "CAPTURED_DT": _iso(dates[some], "%d/%m/%Y").to_numpy(),
        }
    )


def _arrival(cfg: WorldConfig, rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """When each record reached the warehouse: hours later, or for a few, days to weeks."""
    delay = (rng.exponential(3 * 3600, t.size)).astype(np.int64)
    late = rng.random(t.size) < cfg.late_rate
    delay = np.where(late, rng.integers(2 * 86400, 45 * 86400, t.size), delay)
    return t + delay * _SEC


def _transactions(
    cfg: WorldConfig,
    rng: np.random.Generator,
    tx: pd.DataFrame,
    billing_id: np.ndarray,
    billing2: np.ndarray,
    chunk: int,
) -> tuple[pd.DataFrame, int]:
    tx = tx.sort_values(["time", "key"], kind="stable").reset_index(drop=True)
    txn_id = _ids("TX", chunk * 100_000_000 + np.arange(len(tx)), 11)
    id_of_key = pd.Series(txn_id, index=tx["key"].to_numpy())
    who = tx["who"].to_numpy()
    acct = billing_id[who]
    use2 = (billing2[who] != "") & (rng.random(len(tx)) < 0.3)
    acct = np.where(use2, billing2[who], acct)
    times = tx["time"].to_numpy().astype("datetime64[s]")
    loaded = _arrival(cfg, rng, times)
    kind = tx["kind"].to_numpy()
    codes = np.array(["SAVE10", "SAVE20", "LOYAL30", "WINBACK"], dtype=object)
    frame = pd.DataFrame(
        {
            "txn_id": txn_id,
            "billing_account_id": acct,
            "txn_time": _iso(times, "%Y-%m-%dT%H:%M:%SZ").to_numpy(),
            "txn_type": kind,
            "product_id": tx["product"].to_numpy(),
            "amount": np.char.mod("%.2f", tx["amount"].to_numpy().astype(float)),
            "currency": "USD",
            "discount_code": np.where(kind == "discount", rng.choice(codes, len(tx)), ""),
            "refund_of_txn_id": np.where(
                tx["refund_of"].to_numpy() >= 0, id_of_key.reindex(tx["refund_of"].to_numpy()).to_numpy(), ""
            ),
            "loaded_at": _iso(loaded, "%Y-%m-%dT%H:%M:%SZ").to_numpy(),
        }
    )
    arrived = loaded < np.datetime64(cfg.window_end, "s")
    return frame[arrived].reset_index(drop=True), int((~arrived).sum())


def _category_probs(d: np.ndarray) -> np.ndarray:
    base = np.array([0.30, 0.22, 0.15, 0.14, 0.11, 0.08])
    w = np.tile(base, (d.size, 1))
    w[:, 5] *= np.exp(0.8 * d)  # unhappy customers ask how to leave
    w[:, 2] *= np.exp(0.3 * d)
    return w / w.sum(axis=1, keepdims=True)


def _pick_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    cum = probs.cumsum(axis=1)
    return (rng.random((probs.shape[0], 1)) > cum).sum(axis=1).clip(max=probs.shape[1] - 1)


# After the drift date the service organisation is strained (the new, younger, price-sensitive customers
# bring more contacts than it was staffed for): first-contact resolution and CSAT fall. Zero without drift,
# so a world without drift is the same bytes as before; the same draws are made either way.
SERVICE_STRAIN = 0.75  # logit points of first-contact resolution lost per unit of drift strength
SERVICE_STRAIN_CSAT = 0.3  # CSAT points lost per logit point of strain (on top of the lost resolutions)


def service_strain(cfg: WorldConfig, times: np.ndarray) -> np.ndarray:
    """The strain on service at each ticket's time: SERVICE_STRAIN x drift strength after the drift date, else 0."""
    if cfg.drift_date is None or cfg.drift_strength <= 0:
        return np.zeros(times.size)
    after = times >= np.datetime64(cfg.drift_date, "s")
    return np.where(after, SERVICE_STRAIN * cfg.drift_strength, 0.0)


def _tickets(
    cfg: WorldConfig,
    rng: np.random.Generator,
    tk: pd.DataFrame,
    ids: dict[str, np.ndarray],
    created: dict[str, np.ndarray],
    chunk: int,
    persons: pd.DataFrame,
    truth: dict[str, pd.DataFrame],
) -> pd.DataFrame:
    """The ticketing system's export; the text's planted topics and personal data go to `truth`."""
    tk = tk.sort_values("time", kind="stable").reset_index(drop=True)
    who = tk["who"].to_numpy()
    times = tk["time"].to_numpy().astype("datetime64[s]")
    trng = tickets.text_rng(cfg, chunk)
    frame, category = _ticket_rows(cfg, rng, who, times, tk["d"].to_numpy(), ids, created, None)
    written = tickets.write_ticket_texts(trng, tickets.draw_topics(trng, category), persons, who)
    frame["description"] = written.text
    frame["ticket_id"] = _ids("TK", chunk * 10_000_000 + np.arange(len(frame)), 9)
    text_truth = written.truth.assign(ticket_id=frame["ticket_id"].to_numpy())

    extra = tickets.outbreak_tickets(cfg, chunk, persons, times)
    if extra.who.size and cfg.outbreak_topic is not None:
        topic_id = cfg.outbreak_topic
        outbreak_category = tickets.TICKET_TOPICS[topic_id].category
        orows, _ = _ticket_rows(
            cfg, extra.rng, extra.who, extra.time, np.full(extra.who.size, 0.5), ids, created, outbreak_category
        )
        owritten = tickets.write_ticket_texts(
            extra.rng, np.full(extra.who.size, topic_id, dtype=object), persons, extra.who, outbreak=True
        )
        orows["description"] = owritten.text
        # Ids of their own (the 5,000,000 block of the chunk), so no normal ticket's id moves.
        orows["ticket_id"] = _ids("TK", chunk * 10_000_000 + 5_000_000 + np.arange(len(orows)), 9)
        both = np.concatenate([times, extra.time])
        order = np.argsort(both, kind="stable")
        frame = pd.concat([frame, orows], ignore_index=True).iloc[order].reset_index(drop=True)
        text_truth = pd.concat(
            [text_truth, owritten.truth.assign(ticket_id=orows["ticket_id"].to_numpy())], ignore_index=True
        )
    truth["ticket_text"] = text_truth[tickets.TRUTH_COLUMNS]
    return frame[
        [
            "ticket_id",
            "crm_id",
            "opened_at",
            "channel",
            "category",
            "description",
            "resolution",
            "first_contact_resolution",
            "resolved_at",
            "csat",
        ]
    ]


def _ticket_rows(
    cfg: WorldConfig,
    rng: np.random.Generator,
    who: np.ndarray,
    times: np.ndarray,
    d: np.ndarray,
    ids: dict[str, np.ndarray],
    created: dict[str, np.ndarray],
    category: str | None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Every column of a ticket but its id and text, drawn from `rng` in the order the world was made with."""
    m = who.size
    cat = np.array(ref.TICKET_CATEGORIES, dtype=object)[_pick_rows(rng, _category_probs(d))]
    if category is not None:
        cat = np.full(m, category, dtype=object)
    strain = service_strain(cfg, times)
    fcr = rng.random(m) < 1 / (1 + np.exp(-(0.9 - 0.6 * d - strain)))
    hours = rng.exponential(6, m) * np.where(fcr, 1, 8) * np.exp(0.3 * d)
    resolution = np.where(
        fcr,
        "resolved",
        rng.choice(
            ["resolved", "escalated", "unresolved", "refund_issued", "customer_abandoned"],
            m,
            p=[0.5, 0.2, 0.12, 0.1, 0.08],
        ),
    )
    csat = np.round(3.9 - 0.8 * d + 0.6 * fcr - SERVICE_STRAIN_CSAT * strain + rng.normal(0, 0.9, m))
    csat = np.clip(csat, 1, 5).astype(int).astype(str)
    csat = np.where(rng.random(m) < 0.45, "", csat)
    # The text now comes from features.synthetic.tickets on a generator of its own, but these draws
    # (a product, an amount and a template per ticket) stay: removing them would shift every later
    # draw of the chunk's generator and so change every other column and table of the world.
    product_names = np.array([q[1] for q in ref.PRODUCTS], dtype=object)
    rng.choice(product_names, m)
    rng.integers(5, 60, m)
    for c, n_templates in _LEGACY_TEMPLATE_COUNTS.items():
        rng.integers(0, n_templates, int(np.count_nonzero(cat == c)))
    resolved_at = times + (hours * 3600).astype(np.int64) * _SEC
    open_now = resolved_at >= np.datetime64(cfg.window_end, "s")
    frame = pd.DataFrame(
        {
            "crm_id": _route(rng, who, times, ids, created),
            "opened_at": _iso(times).to_numpy(),
            "channel": rng.choice(ref.TICKET_CHANNELS, m, p=ref.TICKET_CHANNEL_WEIGHTS),
            "category": cat,
            "resolution": np.where(open_now, "open", resolution),
            "first_contact_resolution": np.where(fcr & ~open_now, "true", "false"),
            "resolved_at": np.where(open_now, "", _iso(resolved_at).to_numpy()),
            "csat": csat,
        }
    )
    return frame, cat


# How many text templates each category had before ticket text got planted topics: the
# generator still draws one index per ticket from these ranges to keep the world's bytes.
_LEGACY_TEMPLATE_COUNTS = {"billing": 5, "technical": 4, "network": 3, "account": 4, "device": 3, "cancellation": 4}


def _events(
    cfg: WorldConfig,
    rng: np.random.Generator,
    ev: pd.DataFrame,
    ids: dict[str, np.ndarray],
    created: dict[str, np.ndarray],
    chunk: int,
) -> tuple[pd.DataFrame, int]:
    ev = ev.sort_values("time", kind="stable").reset_index(drop=True)
    m = len(ev)
    who = ev["who"].to_numpy()
    times = ev["time"].to_numpy().astype("datetime64[s]")
    crm = _route(rng, who, times, ids, created)
    anonymous = rng.random(m) < 0.06
    age = ev["age"].to_numpy()
    dev_p = np.column_stack([0.55 - 0.004 * (age - 45), np.full(m, 0.2), 0.25 + 0.004 * (age - 45)]).clip(0.05)
    device = np.array(ref.DEVICES, dtype=object)[_pick_rows(rng, dev_p / dev_p.sum(axis=1, keepdims=True))]
    kind = ev["kind"].to_numpy()
    loaded = _arrival(cfg, rng, times)
    frame = pd.DataFrame(
        {
            "event_id": pd.array(_ids("E", chunk * 1_000_000_000 + np.arange(m), 12), dtype="string"),
            "crm_id": pd.Series(crm, dtype="string").mask(anonymous).array,
            "event_time": pd.to_datetime(times).tz_localize("UTC"),
            "event_type": pd.array(kind, dtype="string"),
            "page": pd.array(ev["page"].to_numpy(), dtype="string"),
            "page_views": pd.array(np.where(kind == "session_start", 1 + rng.poisson(3, m), 0), dtype="Int32"),
            "device": pd.array(device, dtype="string"),
            "loaded_at": pd.to_datetime(loaded).tz_localize("UTC"),
        }
    )
    frame.loc[frame["event_type"] != "session_start", "page_views"] = pd.NA
    arrived = loaded < np.datetime64(cfg.window_end, "s")
    return frame[arrived].reset_index(drop=True), int((~arrived).sum())


# The effort question (CES, Dixon et al. 2010): "The company made it easy to handle my issue", 1-7.
# Drawn from streams of their own, seeded from (seed, chunk, constant), so adding it moved no other value.
EFFORT_STREAM = 0xCE5
EFFORT_ERROR_STREAM = 0xCE6
EFFORT_ANSWERED = 0.6  # share of respondents who answer the effort question (the rest leave it blank)
EFFORT_BASE = 5.3
EFFORT_D = 0.9  # how strongly dissatisfaction (the latent driver of NPS) lowers the ease reported
EFFORT_NOISE_SD = 1.0
EFFORT_OUT_OF_RANGE = ["0", "8", "99"]


def effort_answers(cfg: WorldConfig, d: np.ndarray, chunk: int) -> np.ndarray:
    """Effort answers as exported: "1".."7", or "" for respondents who skipped the question."""
    g = np.random.default_rng([cfg.seed, chunk, EFFORT_STREAM])
    m = d.size
    answered = g.random(m) < EFFORT_ANSWERED
    effort = np.clip(np.round(EFFORT_BASE - EFFORT_D * d + g.normal(0, EFFORT_NOISE_SD, m)), 1, 7).astype(int)
    return np.where(answered, effort.astype(str), "").astype(object)


def _nps(
    cfg: WorldConfig,
    rng: np.random.Generator,
    nps: pd.DataFrame,
    ids: dict[str, np.ndarray],
    created: dict[str, np.ndarray],
    chunk: int,
) -> pd.DataFrame:
    nps = nps.sort_values("time", kind="stable").reset_index(drop=True)
    m = len(nps)
    score = nps["score"].to_numpy()
    comment = np.where(score <= 6, rng.choice(ref.NPS_COMMENTS_LOW, m), rng.choice(ref.NPS_COMMENTS_HIGH, m))
    times = nps["time"].to_numpy().astype("datetime64[s]")
    return pd.DataFrame(
        {
            "response_id": _ids("R", chunk * 10_000_000 + np.arange(m), 9),
            "crm_id": _route(rng, nps["who"].to_numpy(), times, ids, created),
            "survey_date": _iso(times, "%m/%d/%Y").to_numpy(),
            "score": score.astype(str),
            "comment": np.where(rng.random(m) < 0.35, comment, ""),
            "effort": effort_answers(cfg, nps["d"].to_numpy(dtype=float), chunk),
        }
    )


def _plant_effort_errors(cfg: WorldConfig, out: RenderedChunk, chunk: int) -> None:
    """Out-of-range effort answers on a few survey rows no other defect touched, recorded in the truth.

    A stream of its own picks them, after the chunk's defects are injected, so no other value moves.
    """
    frame = out.tables["nps_responses"]
    broken: set[int] = set()
    for inj in out.injected:
        if len(inj) and inj["table"].iloc[0] == "nps_responses":
            broken |= set(inj["row"].tolist())
    g = np.random.default_rng([cfg.seed, chunk, EFFORT_ERROR_STREAM])
    hit = np.flatnonzero(g.random(len(frame)) < cfg.malformed_rate / 2)
    hit = hit[~np.isin(hit, list(broken))]
    if hit.size == 0:
        return
    frame.loc[hit, "effort"] = np.array(EFFORT_OUT_OF_RANGE, dtype=object)[g.integers(0, 3, hit.size)]
    out.injected.append(pd.DataFrame({"table": "nps_responses", "row": hit, "field": "effort", "kind": "out_of_range"}))


def _consent(
    cfg: WorldConfig,
    rng: np.random.Generator,
    cons: pd.DataFrame,
    p: pd.DataFrame,
    ids: dict[str, np.ndarray],
    created: dict[str, np.ndarray],
    chunk: int,
) -> pd.DataFrame:
    who = cons["who"].to_numpy()
    times = cons["time"].to_numpy().astype("datetime64[s]")
    acquired = p["acquired"].to_numpy()
    # The acquired book's consents came over incomplete: their opening grants are not here.
    first_sight = times == p["observed_from"].to_numpy().astype("datetime64[s]")[who]
    keep = ~(acquired[who] & first_sight)
    frames = [
        pd.DataFrame(
            {
                "crm_id": ids["primary"][who[keep]],
                "time": times[keep],
                "purpose": cons["purpose"].to_numpy()[keep],
                "granted": cons["granted"].to_numpy()[keep],
            }
        )
    ]
    # Every duplicate CRM record was created with its own answers, which may disagree.
    for slot in ("dup1", "dup2"):
        has = np.flatnonzero(ids[slot] != "")
        for purpose in ref.CONSENT_PURPOSES:
            frames.append(
                pd.DataFrame(
                    {
                        "crm_id": ids[slot][has],
                        "time": created[slot][has],
                        "purpose": purpose,
                        "granted": rng.random(has.size) < 0.7,
                    }
                )
            )
    c = pd.concat(frames, ignore_index=True).sort_values(["time", "crm_id"], kind="stable").reset_index(drop=True)
    m = len(c)
    return pd.DataFrame(
        {
            "consent_event_id": _ids("CE", chunk * 10_000_000 + np.arange(m), 9),
            "crm_id": c["crm_id"].to_numpy(),
            "purpose": c["purpose"].to_numpy(),
            "status": np.where(c["granted"], "granted", "withdrawn"),
            "recorded_at": _iso(c["time"], "%Y-%m-%dT%H:%M:%S+00:00").to_numpy(),
            "channel": rng.choice(["web", "app", "call_centre", "email_link", "store"], m),
        }
    )


def _inject_defects(cfg: WorldConfig, rng: np.random.Generator, out: RenderedChunk) -> None:
    """Break a few rows per table in the ways real exports break, and duplicate a few."""
    for table, kinds in MALFORMATIONS.items():
        frame = out.tables[table]
        m = len(frame)
        hit = np.flatnonzero(rng.random(m) < cfg.malformed_rate)
        if hit.size == 0:
            continue
        which = rng.integers(0, len(kinds), hit.size)
        pick = rng.random(hit.size)
        for k, (col, kind, values) in enumerate(kinds):
            rows = hit[which == k]
            if rows.size == 0:
                continue
            if kind == "future_time":
                frame.loc[rows, col] = pd.Timestamp(cfg.window_end, tz="UTC") + pd.Timedelta(days=400)
            elif kind == "missing_key":
                frame.loc[rows, col] = None if table == "digital_events" else ""
            elif kind == "negative_amount":
                frame.loc[rows, col] = "-" + frame.loc[rows, col].astype(str)
            else:
                choice = (pick[which == k] * len(values)).astype(int)
                frame.loc[rows, col] = np.array(values, dtype=object)[choice]
        out.injected.append(
            pd.DataFrame(
                {
                    "table": table,
                    "row": hit,
                    "field": [kinds[w][0] for w in which],
                    "kind": [kinds[w][1] for w in which],
                }
            )
        )

    for table, key in DUPLICATED_TABLES.items():
        frame = out.tables[table]
        m = len(frame)
        broken = set()
        for inj in out.injected:
            if len(inj) and inj["table"].iloc[0] == table:
                broken |= set(inj["row"].tolist())
        dup = np.flatnonzero(rng.random(m) < cfg.duplicate_row_rate)
        dup = np.array([i for i in dup if i not in broken], dtype=np.int64)
        if dup.size == 0:
            continue
        order = np.sort(np.concatenate([np.arange(m), dup]), kind="stable")
        new = frame.iloc[order].reset_index(drop=True)
        # Positions move as copies are inserted: recompute where each original and copy now sit.
        shift = np.searchsorted(np.sort(dup), np.arange(m), side="left")
        new_pos = np.arange(m) + shift
        for inj in out.injected:
            if len(inj) and inj["table"].iloc[0] == table:
                inj["row"] = new_pos[inj["row"].to_numpy()]
        copies = new_pos[dup] + 1
        out.tables[table] = new
        out.injected.append(pd.DataFrame({"table": table, "row": copies, "field": key, "kind": "duplicate_row"}))
