"""Month-by-month behaviour of true persons, and the truth it implies.

One latent process drives what is observable: a per-person dissatisfaction level
(AR(1) with shocks such as outages or billing errors) raises the monthly churn
hazard and, in the same month, the rate of support tickets, cancellation-page
visits, failed self-service attempts and low NPS answers. Price sensitivity
drives discount use and the reaction to discounts ending; engagement drives
digital activity and loyalty. So the signals a model can see carry real, but
noisy, information about the hazard the truth records. The level is persistent
and loads on high-volume signals (sessions fall, support and cancellation-page
visits rise), so a model reading recent activity can track it closely.

Add-on purchases follow personal taste: each person's latent factors meet each
item's factors (items of one category share a direction), so what a customer
bought says much more about what they buy next than item popularity does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.synthetic import reference as ref
from features.synthetic.config import WorldConfig
from features.synthetic.people import N_FACTORS

_DAY = np.timedelta64(1, "D")
_SEC = np.timedelta64(1, "s")
_PRODUCT_IDS = [p[0] for p in ref.PRODUCTS]
_PRICE = {p[0]: p[3] for p in ref.PRODUCTS}
_ADDONS = [p for p in ref.PRODUCTS if not p[4]]
HAZARD_CAP = 0.95
# Dissatisfaction: d <- PERSISTENCE * d + drift pull of friction + noise + rare shocks.
D_PERSISTENCE = 0.8
D_FRICTION = 0.12
D_NOISE_SD = 0.4
SHOCK_RATE = 0.04
SHOCK_MEAN = 1.2
# Add-on taste: scale of the personal part of affinity, and spread of item popularity.
TASTE_SCALE = 1.5
POPULARITY_SD = 0.4
# Monte-Carlo paths per person-month for the churn_risk truth (a separate random stream).
CHURN_RISK_PATHS = 64
CHURN_INTERCEPT = -4.45
D_LOADING = 0.85
DISCOUNT_RELIEF = 0.3
# Retention offer: it scales the hazard by exp(-tau), tau = base + price * sensitivity - engage * engagement.
UPLIFT_BASE = 0.4
UPLIFT_PRICE = 1.1
UPLIFT_ENGAGE = 0.8
UPLIFT_FLOOR = -1.5
# How clearly price sensitivity and engagement show in pricing-page visits and micro-conversions.
PRICE_SIGNAL = 0.8
ENGAGE_SIGNAL = 0.7
RECURRING_BASE = -6.6
REPEAT_BASE = -6.0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def item_parameters(cfg: WorldConfig) -> tuple[np.ndarray, np.ndarray]:
    """Latent item factors and popularity of the add-ons: one draw per world, shared by chunks.

    Items of one category lean the same way (a shared centre plus their own
    part), so tastes carry over between related products.
    """
    rng = np.random.default_rng([cfg.seed, 424242])
    categories = sorted({p[2] for p in _ADDONS})
    centres = rng.normal(0, 1, (len(categories), N_FACTORS))
    of_item = np.array([categories.index(p[2]) for p in _ADDONS])
    factors = 0.75 * centres[of_item] + 0.65 * rng.normal(0, 1, (len(_ADDONS), N_FACTORS))
    popularity = rng.normal(0, POPULARITY_SD, len(_ADDONS))
    return factors, popularity


def purchase_probabilities(cfg: WorldConfig, persons: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """True affinity and monthly purchase probability of each add-on, per person."""
    item_f, popularity = item_parameters(cfg)
    user_f = persons[[f"factor_{k}" for k in range(N_FACTORS)]].to_numpy()
    affinity = TASTE_SCALE * (user_f @ item_f.T) / np.sqrt(N_FACTORS) + popularity
    seg = persons["segment"].to_numpy()
    for j, p in enumerate(_ADDONS):
        if p[2] == "entertainment":
            affinity[seg == "premium", j] += 0.5
        if p[2] in ("cloud", "service"):
            affinity[seg == "small_business", j] += 0.8
        eligible = np.isin(seg, p[7].split("|"))
        affinity[~eligible, j] = -np.inf
    # Repeat purchases (boosters, content) are bought more often than a subscription is taken up.
    base = np.array([RECURRING_BASE if p[5] else REPEAT_BASE for p in _ADDONS])
    prob = _sigmoid(base[None, :] + affinity + 0.3 * persons["engagement"].to_numpy()[:, None])
    prob[~np.isfinite(affinity)] = 0.0
    return affinity, prob


@dataclass
class _ChurnHazard:
    """The monthly churn hazard as a function of the latent state; shared by the simulation and the truth."""

    static: np.ndarray  # the part fixed per person: traits, segment, bias
    price_pos: np.ndarray
    signup: np.ndarray
    month_start: np.ndarray  # month starts, extended past the window for look-ahead
    drift_m: int
    drift_strength: float

    def fixed(self, m: int, who: np.ndarray, discount_until: np.ndarray, discount_ended: np.ndarray) -> np.ndarray:
        """The hazard logit in month `m` of persons `who`, except the dissatisfaction term."""
        tenure = (self.month_start[m] - self.signup[who]) / np.timedelta64(30, "D")
        price = self.price_pos[who]
        return (
            self.static[who]
            + 0.9 * np.exp(-np.maximum(tenure, 0) / 8.0)
            - DISCOUNT_RELIEF * (discount_until >= m) * price
            + 0.6 * ((m - discount_ended) <= 1) * price
            + (m >= self.drift_m) * 0.6 * self.drift_strength * price
        )

    def logit(
        self, d: np.ndarray, m: int, who: np.ndarray, discount_until: np.ndarray, discount_ended: np.ndarray
    ) -> np.ndarray:
        """Hazard logit in month `m` for persons `who` at dissatisfaction `d`."""
        return self.fixed(m, who, discount_until, discount_ended) + D_LOADING * d


def _step_dissatisfaction(rng: np.random.Generator, d: np.ndarray, friction: np.ndarray) -> np.ndarray:
    """One month of the dissatisfaction process: persistence, pull of friction, noise and rare shocks."""
    shock = (rng.random(d.shape) < SHOCK_RATE) * rng.exponential(SHOCK_MEAN, d.shape)
    return D_PERSISTENCE * d + D_FRICTION * friction + rng.normal(0, D_NOISE_SD, d.shape) + shock


def _churn_risk(
    rng: np.random.Generator,
    model: _ChurnHazard,
    states: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    friction: np.ndarray,
    discount_p: np.ndarray,
    offer: tuple[np.ndarray, np.ndarray, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Monte-Carlo chance of churning within one and three months from each at-risk month start.

    Paths replay the hazard's own dynamics from the true state at the month start
    (dissatisfaction before that month's shock, discount state, and the offer
    treatment in the test months), drawing from their own stream so the
    simulation's stream is untouched. Returns person index, month, p_1m, p_3m.
    """
    treated, tau, test_m = offer
    cut = np.exp(-tau).astype(np.float32)
    k = CHURN_RISK_PATHS
    out_who, out_m, out_1, out_3 = [], [], [], []
    for m, (who, d0, until, ended) in enumerate(states):
        if who.size == 0:
            continue
        until, ended = until[who], ended[who]
        shape = (k, who.size)
        d = np.empty(shape, dtype=np.float32)
        d[:] = d0[who]
        pull = (D_FRICTION * friction[who]).astype(np.float32)
        relief = (DISCOUNT_RELIEF * model.price_pos[who]).astype(np.float32)
        granted = np.zeros(shape, dtype=bool)  # a discount granted on this path within the horizon
        survive = np.ones(shape, dtype=np.float32)
        noise = np.empty(shape, dtype=np.float32)
        logit = np.empty(shape, dtype=np.float32)
        p_1m = np.zeros(who.size)
        for step in range(3):
            mm = m + step
            rng.random(out=noise, dtype=np.float32)
            shocked = noise < SHOCK_RATE
            rng.standard_normal(out=noise, dtype=np.float32)
            noise *= D_NOISE_SD
            d *= D_PERSISTENCE
            d += pull
            d += noise
            d[shocked] += SHOCK_MEAN * rng.standard_exponential(int(shocked.sum()), dtype=np.float32)
            # Discounts granted on the path run past the horizon, so they only add relief.
            np.multiply(d, -D_LOADING, out=logit)
            logit -= model.fixed(mm, who, until, ended).astype(np.float32)
            if step:
                logit += granted * relief
            np.exp(logit, out=logit)
            logit += 1
            h = np.reciprocal(logit, out=logit)
            if test_m <= mm < test_m + 3:
                h = np.where(treated[who], np.minimum(h * cut[who], HAZARD_CAP), h)
            survive -= survive * h
            if step == 0:
                p_1m = 1 - survive.mean(axis=0, dtype=np.float64)
            if step < 2:
                cols = np.flatnonzero((until < mm) & (relief > 0))
                draw = rng.random((k, cols.size), dtype=np.float32) < discount_p[who[cols]]
                granted[:, cols] |= draw
                ended = np.where(until == mm, mm, ended)
        out_who.append(who)
        out_m.append(np.full(who.size, m, dtype=np.int16))
        out_1.append(p_1m)
        out_3.append(1 - survive.mean(axis=0, dtype=np.float64))
    return np.concatenate(out_who), np.concatenate(out_m), np.concatenate(out_1), np.concatenate(out_3)


@dataclass
class Behaviour:
    """What one chunk of persons did, plus the truth behind it."""

    persons: pd.DataFrame
    hazard: pd.DataFrame
    churn_risk: pd.DataFrame
    affinity: pd.DataFrame
    treatment: pd.DataFrame
    transactions: pd.DataFrame
    tickets: pd.DataFrame
    events: pd.DataFrame
    nps: pd.DataFrame
    consent: pd.DataFrame
    offer_test: pd.DataFrame


class _Rows:
    """Collects per-month arrays of one activity table and stacks them at the end."""

    def __init__(self) -> None:
        self.parts: list[dict[str, np.ndarray]] = []

    def add(self, **cols: np.ndarray) -> None:
        self.parts.append(cols)

    def frame(self, columns: list[str]) -> pd.DataFrame:
        if not self.parts:
            return pd.DataFrame({c: [] for c in columns})
        return pd.DataFrame({c: np.concatenate([p[c] for p in self.parts]) for c in columns})


def _times(rng: np.random.Generator, who: np.ndarray, lo: np.ndarray, span: np.ndarray) -> np.ndarray:
    """Uniform timestamps inside each person's active span of the month."""
    return lo[who] + (rng.random(who.size) * span[who]).astype(np.int64) * _SEC


def _draw_rows(rng: np.random.Generator, rate: np.ndarray) -> np.ndarray:
    counts = rng.poisson(np.clip(rate, 0, 50))
    return np.repeat(np.arange(rate.size), counts)


def simulate_behaviour(cfg: WorldConfig, rng: np.random.Generator, persons: pd.DataFrame) -> Behaviour:
    """Run the persons through the exported months; return activity and truth."""
    n = len(persons)
    months = cfg.months
    month_start = np.array([np.datetime64(cfg.window_start, "M") + m for m in range(months + 1)]).astype(
        "datetime64[s]"
    )
    observed_from = persons["observed_from"].to_numpy().astype("datetime64[s]")
    signup = persons["signup_date"].to_numpy().astype("datetime64[s]")
    start_m = (observed_from.astype("datetime64[M]") - month_start[0].astype("datetime64[M]")).astype(int)
    price = persons["price_sensitivity"].to_numpy()
    engage = persons["engagement"].to_numpy()
    friction = persons["friction"].to_numpy()
    segment = persons["segment"].to_numpy()
    protected = persons["protected"].to_numpy()
    age = persons["age_at_window_start"].to_numpy()
    b = cfg.bias_strength
    under_record = min(0.8, 0.35 * b)
    drift_m = cfg.month_index(cfg.drift_date) if cfg.drift_date and cfg.drift_strength > 0 else months + 1
    test_m = cfg.month_index(cfg.offer_test_date)

    affinity, buy_p = purchase_probabilities(cfg, persons)
    addon_ids = np.array([p[0] for p in _ADDONS], dtype=object)
    recurring = np.array([p[5] for p in _ADDONS])
    launched = np.array([np.datetime64(p[6], "s") for p in _ADDONS])
    addon_price = np.array([p[3] for p in _ADDONS])

    tx, tk, ev, nps_rows, cons = _Rows(), _Rows(), _Rows(), _Rows(), _Rows()
    hazard_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    # Opening state: the plan each person is on, and the recurring add-ons held when first seen.
    plan_rank = {pid: i for i, pid in enumerate(ref.PLAN_IDS)}
    plan = np.array([plan_rank[p] for p in persons["plan_at_start"]])
    tenure_at_obs = (observed_from - signup) / np.timedelta64(30, "D")
    prior = 1 - (1 - buy_p) ** np.minimum(tenure_at_obs, 36)[:, None]
    held = (rng.random(buy_p.shape) < prior) & recurring[None, :] & (launched[None, :] < observed_from[:, None])
    # Billing history migrated with the account: plan activation and add-ons held at first sight.
    activation = np.where(persons["acquired"].to_numpy(), observed_from, signup)
    tx.add(
        who=np.arange(n),
        time=activation,
        kind=np.full(n, "plan_change", dtype=object),
        product=np.array(ref.PLAN_IDS, dtype=object)[plan],
        amount=np.array([_PRICE[ref.PLAN_IDS[p]] for p in plan]),
        key=np.zeros(n, dtype=np.int64) - 1,
    )
    hi_i, hj = np.nonzero(held)
    span0 = np.maximum((observed_from - np.maximum(signup, launched[hj].min())) / _SEC, 1).astype(np.int64)
    when = observed_from[hi_i] - (rng.random(hi_i.size) * span0[hi_i] * 0.9).astype(np.int64) * _SEC
    tx.add(
        who=hi_i,
        time=when,
        kind=np.full(hi_i.size, "purchase", dtype=object),
        product=addon_ids[hj],
        amount=addon_price[hj],
        key=np.zeros(hi_i.size, dtype=np.int64) - 1,
    )

    # Consent at first sight, per purpose.
    grant_p = {"marketing": 0.62, "profiling": 0.74, "analytics": 0.86}
    consent_state = {}
    for purpose, p in grant_p.items():
        state = rng.random(n) < p
        consent_state[purpose] = state
        cons.add(who=np.arange(n), time=observed_from, purpose=np.full(n, purpose, dtype=object), granted=state)

    alive = np.ones(n, dtype=bool)
    churn_time = np.full(n, np.datetime64("NaT"), dtype="datetime64[s]")
    # Start at the process's stationary level: mean (D_FRICTION * f + shock mean) / (1 - persistence).
    level = D_FRICTION / (1 - D_PERSISTENCE)
    stationary_sd = np.sqrt(
        (D_NOISE_SD**2 + SHOCK_RATE * 2 * SHOCK_MEAN**2 - (SHOCK_RATE * SHOCK_MEAN) ** 2) / (1 - D_PERSISTENCE**2)
    )
    d = level * friction + SHOCK_RATE * SHOCK_MEAN / (1 - D_PERSISTENCE) + rng.normal(0, stationary_sd, n)
    discount_until = np.full(n, -1)
    discount_ended = np.full(n, -99)
    churn_model = _ChurnHazard(
        static=CHURN_INTERCEPT
        - 0.35 * engage
        + 0.25 * price
        - 0.45 * (segment == "premium")
        - 0.2 * (segment == "small_business")
        + 0.5 * b * protected,
        price_pos=np.clip(price, 0, None),
        signup=signup,
        month_start=np.array([np.datetime64(cfg.window_start, "M") + m for m in range(months + 4)]).astype(
            "datetime64[s]"
        ),
        drift_m=drift_m,
        drift_strength=cfg.drift_strength,
    )
    everyone = np.arange(n)
    # The state at each month start (before that month's shock), for the churn_risk truth.
    states: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    in_test = np.zeros(n, dtype=bool)
    treated = np.zeros(n, dtype=bool)
    # Negative for 'sleeping dogs' (engaged, price-insensitive customers reminded they can leave), but bounded.
    tau = np.maximum(UPLIFT_BASE + UPLIFT_PRICE * price - UPLIFT_ENGAGE * engage, UPLIFT_FLOOR)
    test_hazards = np.zeros((n, 3))
    eligible_at_test = np.zeros(n, dtype=bool)

    for m in range(months):
        lo_m, hi_m = month_start[m], month_start[m + 1]
        at_risk = alive & (start_m <= m)
        states.append((np.flatnonzero(at_risk), d.copy(), discount_until.copy(), discount_ended.copy()))
        d = _step_dissatisfaction(rng, d, friction)
        discount_active = discount_until >= m
        h = _sigmoid(churn_model.logit(d, m, everyone, discount_until, discount_ended))
        if m == test_m:
            eligible_at_test = at_risk.copy()
            in_test = at_risk & (segment != "premium") & (rng.random(n) < cfg.offer_test_share)
            treated = in_test & (rng.random(n) < 0.5)
        h_eff = h
        if test_m <= m < test_m + 3:
            test_hazards[:, m - test_m] = h
            h_eff = np.where(treated, np.minimum(h * np.exp(-tau), HAZARD_CAP), h)
        idx = np.flatnonzero(start_m <= m)
        hazard_parts.append((idx, np.full(idx.size, m, dtype=np.int16), h[idx].astype(np.float32)))

        lo = np.maximum(lo_m, observed_from)
        churn_now = at_risk & (rng.random(n) < h_eff)
        span_total = np.maximum((hi_m - lo) / _SEC, 0).astype(np.int64)
        ct = lo + (rng.random(n) * span_total).astype(np.int64) * _SEC
        churn_time = np.where(churn_now, ct.astype("datetime64[D]").astype("datetime64[s]"), churn_time)
        hi = np.where(churn_now, churn_time, hi_m)
        span = np.where(at_risk, np.maximum((hi - lo) / _SEC, 0), 0).astype(np.int64)
        frac = span / (30 * 86400)

        # Support tickets.
        rate = 0.2 * np.exp(0.9 * d + 0.25 * friction) * frac
        who = _draw_rows(rng, rate)
        if under_record > 0:
            who = who[~(protected[who] & (rng.random(who.size) < under_record))]
        tk.add(who=who, time=_times(rng, who, lo, span), d=d[who])

        # Digital: sessions, key page views, failed self-service, micro-conversions.
        drift_boost = 0.3 * cfg.drift_strength * (m >= drift_m)
        for etype, page_choices, r in (
            ("session_start", None, 1.3 * np.exp(0.5 * engage + drift_boost - 0.6 * d)),
            ("page_view:pricing", None, 0.12 * np.exp(PRICE_SIGNAL * price + 0.3 * d)),
            ("page_view:cancellation", None, 0.1 * np.exp(1.3 * d)),
            ("page_view:upgrade", None, 0.06 * np.exp(0.4 * engage)),
            ("page_view:plan_compare", None, 0.05 * np.exp(0.3 * price + 0.2 * engage)),
            ("page_view:support", None, 0.1 * np.exp(0.8 * d + 0.3 * friction)),
            ("self_service_failed", ref.SELF_SERVICE_TASKS, 0.05 * np.exp(0.5 * friction + 0.8 * d)),
            ("micro_conversion", ref.MICRO_CONVERSIONS, 0.08 * np.exp(ENGAGE_SIGNAL * engage)),
        ):
            who = _draw_rows(rng, r * frac)
            if etype == "page_view:cancellation" and under_record > 0:
                who = who[~(protected[who] & (rng.random(who.size) < under_record))]
            kind, _, page = etype.partition(":")
            pages = (
                rng.choice(np.array(page_choices, dtype=object), who.size)
                if page_choices
                else np.full(who.size, page or None, dtype=object)
            )
            ev.add(
                who=who,
                time=_times(rng, who, lo, span),
                kind=np.full(who.size, kind, dtype=object),
                page=pages,
                age=age[who],
            )

        # Purchases of add-ons (recurring ones once; boosters repeatedly).
        avail = (launched <= lo_m)[None, :] & ~held & at_risk[:, None]
        buy = avail & (rng.random(buy_p.shape) < buy_p * frac[:, None])
        bi, bj = np.nonzero(buy)
        held |= buy & recurring[None, :]
        tx.add(
            who=bi,
            time=_times(rng, bi, lo, span),
            kind=np.full(bi.size, "purchase", dtype=object),
            product=addon_ids[bj],
            amount=addon_price[bj] * rng.choice([1.0, 1.0, 1.0, 2.0], bi.size),
            key=np.zeros(bi.size, dtype=np.int64) - 1,
        )

        # Plan changes: engaged customers move up, price-sensitive ones move down.
        change = at_risk & (rng.random(n) < 0.012 * frac)
        up = (engage - 0.5 * price + rng.normal(0, 1, n)) > 0
        new_plan = np.clip(plan + np.where(up, 1, -1), 0, len(ref.PLAN_IDS) - 1)
        change &= new_plan != plan
        plan = np.where(change, new_plan, plan)
        ci = np.flatnonzero(change)
        tx.add(
            who=ci,
            time=_times(rng, ci, lo, span),
            kind=np.full(ci.size, "plan_change", dtype=object),
            product=np.array(ref.PLAN_IDS, dtype=object)[plan[ci]],
            amount=np.array([_PRICE[ref.PLAN_IDS[p]] for p in plan[ci]]),
            key=np.zeros(ci.size, dtype=np.int64) - 1,
        )

        # Discounts: price-sensitive customers ask for (and get) more of them; they last 3 months.
        disc = at_risk & ~discount_active & (rng.random(n) < 0.02 * np.exp(0.6 * price) * frac)
        di = np.flatnonzero(disc)
        pct = rng.choice([0.1, 0.2, 0.3], di.size)
        tx.add(
            who=di,
            time=_times(rng, di, lo, span),
            kind=np.full(di.size, "discount", dtype=object),
            product=np.array(ref.PLAN_IDS, dtype=object)[plan[di]],
            amount=np.round(pct * np.array([_PRICE[ref.PLAN_IDS[p]] for p in plan[di]]) * 3, 2),
            key=np.zeros(di.size, dtype=np.int64) - 1,
        )
        discount_ended = np.where(discount_until == m, m, discount_ended)
        discount_until = np.where(disc, m + 3, discount_until)

        # NPS survey each quarter to a sample of customers.
        if m % 3 == 1:
            ask = np.flatnonzero((span > 0) & (rng.random(n) < 0.09))
            score = np.clip(np.round(7.4 - 1.5 * d[ask] + 0.7 * engage[ask] + rng.normal(0, 1.4, ask.size)), 0, 10)
            # `d` rides along (no draw) for the effort question, which sources.py draws from its own stream.
            nps_rows.add(who=ask, time=_times(rng, ask, lo, span), score=score.astype(np.int64), d=d[ask])

        # Consent changes: withdrawals rise with dissatisfaction; a few re-grant.
        for purpose in ref.CONSENT_PURPOSES:
            state = consent_state[purpose]
            flip_p = np.where(state, 0.004 * np.exp(0.4 * d), 0.002) * frac
            flip = (span > 0) & (rng.random(n) < flip_p)
            state = np.where(flip, ~state, state)
            consent_state[purpose] = state
            fi = np.flatnonzero(flip)
            cons.add(
                who=fi,
                time=_times(rng, fi, lo, span),
                purpose=np.full(fi.size, purpose, dtype=object),
                granted=state[fi],
            )

        alive &= ~churn_now

    # Refunds: a few purchases come back within three weeks, never after churn or the export.
    transactions = tx.frame(["who", "time", "kind", "product", "amount", "key"])
    transactions["key"] = np.arange(len(transactions))
    purchases = transactions[(transactions["kind"] == "purchase") & (transactions["time"] >= month_start[0])]
    ref_pick = purchases[rng.random(len(purchases)) < 0.05]
    refund_time = ref_pick["time"].to_numpy() + rng.integers(2, 21, len(ref_pick)) * _DAY
    limit = np.where(np.isnat(churn_time[ref_pick["who"]]), month_start[-1], churn_time[ref_pick["who"]])
    ok = refund_time < limit
    refunds = pd.DataFrame(
        {
            "who": ref_pick["who"].to_numpy()[ok],
            "time": refund_time[ok],
            "kind": "refund",
            "product": ref_pick["product"].to_numpy()[ok],
            "amount": ref_pick["amount"].to_numpy()[ok],
            "key": np.arange(len(transactions), len(transactions) + int(ok.sum())),
            "refund_of": ref_pick["key"].to_numpy()[ok],
        }
    )
    transactions["refund_of"] = -1
    transactions = pd.concat([transactions, refunds], ignore_index=True)

    tickets = tk.frame(["who", "time", "d"])
    events = ev.frame(["who", "time", "kind", "page", "age"])
    nps = nps_rows.frame(["who", "time", "score", "d"])
    consent = cons.frame(["who", "time", "purpose", "granted"])

    persons = persons.copy()
    persons["churn_date"] = churn_time.astype("datetime64[s]")
    persons["churned"] = ~np.isnat(churn_time)
    persons["plan_at_end"] = np.array(ref.PLAN_IDS, dtype=object)[plan]

    risk_who, risk_m, p_1m, p_3m = _churn_risk(
        rng.spawn(1)[0],  # its own stream: the truth's Monte Carlo leaves the simulation's draws alone
        churn_model,
        states,
        friction,
        0.02 * np.exp(0.6 * price),
        (treated, tau, test_m),
    )
    churn_risk = pd.DataFrame(
        {
            "person_id": persons["person_id"].to_numpy()[risk_who],
            "month": pd.to_datetime(month_start[risk_m]).date,
            "p_churn_1m": p_1m.astype(np.float32),
            "p_churn_3m": p_3m.astype(np.float32),
        }
    ).sort_values(["person_id", "month"], kind="stable", ignore_index=True)

    hz_idx = np.concatenate([p[0] for p in hazard_parts])
    hazard = pd.DataFrame(
        {
            "person_id": persons["person_id"].to_numpy()[hz_idx],
            "month": pd.to_datetime(month_start[np.concatenate([p[1] for p in hazard_parts])]).date,
            "hazard": np.concatenate([p[2] for p in hazard_parts]),
        }
    ).sort_values(["person_id", "month"], kind="stable", ignore_index=True)

    n_add = len(_ADDONS)
    aff = pd.DataFrame(
        {
            "person_id": np.repeat(persons["person_id"].to_numpy(), n_add),
            "product_id": np.tile(addon_ids, n),
            "affinity": np.where(np.isfinite(affinity), affinity, np.nan).ravel().astype(np.float32),
            "monthly_purchase_prob": buy_p.ravel().astype(np.float32),
        }
    )

    p_control = 1 - np.prod(1 - test_hazards, axis=1)
    p_treated = 1 - np.prod(1 - np.minimum(test_hazards * np.exp(-tau)[:, None], HAZARD_CAP), axis=1)
    e = np.flatnonzero(eligible_at_test)
    treatment = pd.DataFrame(
        {
            "person_id": persons["person_id"].to_numpy()[e],
            "in_test": in_test[e],
            "treated": treated[e],
            "p_churn_if_control": p_control[e].astype(np.float32),
            "p_churn_if_treated": p_treated[e].astype(np.float32),
            "true_uplift": (p_control[e] - p_treated[e]).astype(np.float32),
        }
    )
    t0, t3 = month_start[test_m], month_start[min(test_m + 3, months)]
    ti = np.flatnonzero(in_test)
    offer = pd.DataFrame(
        {
            "who": ti,
            "group": np.where(treated[ti], "treatment", "control"),
            "assigned_at": t0,
            "outcome_window_end": t3,
            "churned_in_window": (~np.isnat(churn_time[ti])) & (churn_time[ti] < t3),
        }
    )
    return Behaviour(persons, hazard, churn_risk, aff, treatment, transactions, tickets, events, nps, consent, offer)
