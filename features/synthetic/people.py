"""True persons: who they are and the latent traits that drive their behaviour."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from faker.providers.address.en_US import Provider as AddressProvider
from faker.providers.person.en_US import Provider as PersonProvider

from features.identity.normalise import normalise_emails
from features.synthetic import reference as ref
from features.synthetic.config import WorldConfig

N_FACTORS = 6
_DAY = np.timedelta64(1, "D")


def _weighted(names: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    keys = np.array(list(names.keys()), dtype=object)
    w = np.array(list(names.values()), dtype=float)
    return keys, w / w.sum()


_FEMALE = _weighted(PersonProvider.first_names_female)
_MALE = _weighted(PersonProvider.first_names_male)
_LAST = _weighted(PersonProvider.last_names)
_SUFFIXES = np.array(AddressProvider.street_suffixes, dtype=object)


def _to_day(d: dt.date) -> np.datetime64:
    return np.datetime64(d, "D")


def age_band(age: np.ndarray) -> np.ndarray:
    """Age bands used by the policies: under_18, 18-24, 25-34, 35-49, 50-64, 65+."""
    bands = np.array(["under_18", "18-24", "25-34", "35-49", "50-64", "65+"], dtype=object)
    return bands[np.digitize(age, [18, 25, 35, 50, 65])]


def simulate_persons(
    cfg: WorldConfig, rng: np.random.Generator, first_id: int, n: int, taken_emails: set[str] | None = None
) -> pd.DataFrame:
    """Draw `n` true persons with identities, segments, tenure and latent traits.

    `taken_emails` holds the mailboxes (canonical form) already given to persons of
    earlier chunks; it is updated, so that no two persons share a mailbox.
    """
    start = _to_day(cfg.window_start)
    end = _to_day(cfg.window_end)
    person_id = np.arange(first_id, first_id + n, dtype=np.int64)

    gender = rng.choice(ref.GENDERS, n, p=ref.GENDER_WEIGHTS).astype(object)
    female = rng.choice(_FEMALE[0], n, p=_FEMALE[1])
    male = rng.choice(_MALE[0], n, p=_MALE[1])
    either = np.where(rng.random(n) < 0.5, female, male)
    first_name = np.where(gender == "F", female, np.where(gender == "M", male, either))
    last_name = rng.choice(_LAST[0], n, p=_LAST[1])

    # Who joined when: most customers predate the export window, the rest arrive during it.
    pre = rng.random(n) < 0.62
    old_span = int((start - np.datetime64("2014-01-01")) / _DAY)
    win_span = int((end - start) / _DAY) - 20
    signup = np.where(
        pre,
        start - (1 + rng.integers(0, old_span, n)) * _DAY,
        start + rng.integers(0, win_span, n) * _DAY,
    )

    drifted = np.zeros(n, dtype=bool)
    if cfg.drift_date is not None and cfg.drift_strength > 0:
        drifted = signup >= _to_day(cfg.drift_date)
    s = cfg.drift_strength

    age = np.where(
        rng.random(n) < 0.012,
        rng.uniform(16, 18, n),  # a few minors (family lines, student offers): a regulated segment
        np.clip(rng.normal(46, 15, n) - drifted * 7 * s, 18, 90),
    )
    birth = start - (age * 365.25).astype(np.int64) * _DAY - rng.integers(0, 365, n) * _DAY

    city_w = np.array([c[5] for c in ref.CITIES])
    city_idx = rng.choice(len(ref.CITIES), n, p=city_w / city_w.sum())
    cities = np.array(ref.CITIES, dtype=object)
    street = rng.choice(_LAST[0], n, p=_LAST[1]) + " " + rng.choice(_SUFFIXES, n)
    house = rng.integers(1, 9999, n).astype(str)
    postcode = cities[city_idx, 3].astype(str) + np.char.zfill(rng.integers(0, 100, n).astype(str), 2)
    phone = cities[city_idx, 4].astype(str) + rng.integers(2_000_000, 9_999_999, n).astype(str)

    segment = rng.choice(ref.SEGMENTS, n, p=ref.SEGMENT_WEIGHTS).astype(object)
    channel_p = np.array(ref.CHANNEL_WEIGHTS)
    channel = rng.choice(ref.CHANNELS, n, p=channel_p).astype(object)
    if drifted.any():
        shifted = channel_p * np.array([1 + s, 1, 1, 1 + 0.5 * s, 1])
        channel[drifted] = rng.choice(ref.CHANNELS, int(drifted.sum()), p=shifted / shifted.sum())

    # Northwind customers: the acquired company's book, active when the deal closed.
    acq = _to_day(cfg.acquisition_date)
    acquired = (signup < acq) & (rng.random(n) < cfg.acquired_share / 0.62 * 0.85)
    migration = acq + rng.integers(0, 30, n) * _DAY
    channel = np.where(acquired, "acquisition", channel)
    observed_from = np.where(acquired, migration, np.maximum(signup, start))

    price_sensitivity = rng.normal(0, 1, n) + drifted * 0.7 * s
    engagement = rng.normal(0, 1, n) - 0.012 * (age - 46)
    friction = rng.normal(0, 1, n)
    factors = rng.normal(0, 1, (n, N_FACTORS))

    plan_by_segment = {
        "consumer": (["PLN-BASIC", "PLN-STD", "PLN-PLUS"], [0.35, 0.45, 0.20]),
        "small_business": (["PLN-BASIC", "PLN-STD", "PLN-PLUS", "PLN-PREM"], [0.1, 0.4, 0.35, 0.15]),
        "premium": (["PLN-STD", "PLN-PLUS", "PLN-PREM"], [0.1, 0.4, 0.5]),
    }
    plan = np.empty(n, dtype=object)
    for seg, (plans, w) in plan_by_segment.items():
        m = segment == seg
        plan[m] = rng.choice(plans, int(m.sum()), p=w)

    bands = age_band(age)
    region = cities[city_idx, 2]
    protected_source = {"gender": gender, "age_band": bands, "region": region}[cfg.bias_attribute]
    frame = pd.DataFrame(
        {
            "person_id": person_id,
            "first_name": first_name,
            "last_name": last_name,
            "gender": gender,
            "birth_date": birth.astype("datetime64[s]"),
            "age_at_window_start": age.round(1),
            "age_band": bands,
            "house_number": house,
            "street": street,
            "city": cities[city_idx, 0],
            "state": cities[city_idx, 1],
            "region": region,
            "postcode": postcode,
            "phone_digits": phone,
            "segment": segment,
            "acquisition_channel": channel,
            "plan_at_start": plan,
            "signup_date": signup.astype("datetime64[s]"),
            "acquired": acquired,
            "observed_from": observed_from.astype("datetime64[s]"),
            "joined_after_drift": drifted,
            "protected": protected_source == cfg.bias_group,
            "price_sensitivity": price_sensitivity,
            "engagement": engagement,
            "friction": friction,
        }
    )
    for k in range(N_FACTORS):
        frame[f"factor_{k}"] = factors[:, k]
    frame["email"] = _unique_mailboxes(_emails(frame, rng), taken_emails if taken_emails is not None else set())
    return frame


def _emails(persons: pd.DataFrame, rng: np.random.Generator) -> pd.Series:
    """Plausible personal emails: styles people really use, some with numbers."""
    n = len(persons)
    first = persons["first_name"].str.lower().str.replace(r"[^a-z]", "", regex=True)
    last = persons["last_name"].str.lower().str.replace(r"[^a-z]", "", regex=True)
    year = persons["birth_date"].dt.year.astype(str)
    num = pd.Series(rng.integers(1, 9999, n).astype(str), index=persons.index)
    style = rng.integers(0, 7, n)
    local = np.select(
        [style == k for k in range(7)],
        [
            first + "." + last,
            first + last + num.str[:2],
            first.str[0] + last,
            first + "_" + last + num,
            first + year,
            last + "." + first + num.str[:3],
            first.str[0] + "." + last + num,
        ],
    )
    domains, w = zip(*ref.EMAIL_DOMAINS, strict=True)
    p = np.array(w) / sum(w)
    domain = rng.choice(np.array(domains, dtype=object), n, p=p)
    return pd.Series(local, index=persons.index) + "@" + domain


def _unique_mailboxes(emails: pd.Series, taken: set[str]) -> pd.Series:
    """Give a later registrant of a taken mailbox a number, as mail providers make people do.

    Mailboxes are compared in canonical form (Gmail ignores dots), so
    'a.gonzalez@gmail.com' and 'agonzalez@gmail.com' are one mailbox. Clashes are
    settled in rounds (number 2, 3, ...), each round vectorised over the rows still
    clashing; membership is checked only for those rows, never by scanning `taken`.
    """
    canonical = normalise_emails(emails)
    clash = np.fromiter((c in taken for c in canonical), dtype=bool, count=len(canonical))
    clash |= canonical.duplicated().to_numpy()
    taken.update(canonical[~clash].tolist())
    out = emails.to_numpy(dtype=object).copy()
    pending = np.flatnonzero(clash)
    parts = emails.iloc[pending].str.rsplit("@", n=1)
    local = parts.str[0].to_numpy(dtype=object)
    domain = parts.str[1].to_numpy(dtype=object)
    k = 2
    while pending.size:
        candidate = local + str(k) + "@" + domain
        key = normalise_emails(pd.Series(candidate))
        free = np.fromiter((c not in taken for c in key), dtype=bool, count=len(key))
        free &= ~key.duplicated().to_numpy()
        out[pending[free]] = candidate[free]
        taken.update(key[free].tolist())
        pending, local, domain = pending[~free], local[~free], domain[~free]
        k += 1
    return pd.Series(out, index=emails.index, name=emails.name)
