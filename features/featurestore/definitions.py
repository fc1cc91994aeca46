"""Feature definitions: versioned feature sets written as DuckDB aggregates over canonical sources.

Every aggregate reads the events `e` of one customer that happened **and** arrived
before the cutoff `s.cutoff` of a spine row `s` (customer, cutoff): the builder adds
that condition to every join, so a definition cannot see the future by mistake.
A definition's SQL, type, fill value and bounds are part of its set's digest; change
any of them and the set must get a new version (the offline store refuses to mix them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from features.data_classes import DataClass, check_data_class
from features.featurestore.config import FeatureConfig, FeatureConfigError

# The point-in-time condition every event join carries: happened and arrived before the cutoff.
PIT = "e.{time} < s.cutoff AND (e.arrival_time IS NULL OR e.arrival_time < s.cutoff)"


@dataclass(frozen=True)
class Feature:
    """One feature: an aggregate over its part's events (or, if derived, over earlier features)."""

    name: str
    sql: str
    description: str
    dtype: str = "DOUBLE"  # DOUBLE, BIGINT, VARCHAR
    fill: float | int | None = None  # the value for a customer with no events
    lower: float | None = None
    upper: float | None = None
    derived: bool = False
    # canonical columns ("source.column") it reads beyond its part's source and time; without
    # one of them the feature is dropped, with the reason (not part of the definition's digest)
    needs: tuple[str, ...] = ()
    # what kind of personal data it is (features.data_classes); required: decides what may be logged
    # and exported (not part of the digest: reclassifying changes no value)
    data_class: DataClass | str = ""

    def __post_init__(self) -> None:
        check_data_class(self.data_class, f"feature {self.name}")


@dataclass(frozen=True)
class Part:
    """Aggregates over one canonical source joined to the spine.

    `query`, when given, is a whole statement returning (cid, cutoff, <features>); it
    must use `{pit}` in its join to the source, so the point-in-time rule still holds.
    `lookback_days` and `where` only let the builder skip rows early (old events, other
    kinds); they must not change any value, which a test checks by building without them.
    """

    source: str
    features: tuple[Feature, ...]
    time: str = "event_time"
    query: str | None = None
    lookback_days: int | None = None  # no feature of the part looks further back than this
    where: str | None = None  # a condition on `e` alone, applied before the join


@dataclass(frozen=True)
class FeatureSet:
    """A named, versioned group of features with one row per (customer, cutoff)."""

    name: str
    version: int
    description: str
    parts: tuple[Part, ...]
    derived: tuple[Feature, ...] = field(default_factory=tuple)

    @property
    def key(self) -> str:
        """`name@version`, as the stores and the manifest name it."""
        return f"{self.name}@{self.version}"

    @property
    def features(self) -> tuple[Feature, ...]:
        """Every feature, in output order."""
        return tuple(f for p in self.parts for f in p.features) + self.derived

    @property
    def sources(self) -> tuple[str, ...]:
        """Canonical sources the set reads."""
        return tuple(dict.fromkeys(p.source for p in self.parts))

    def without_sources(self, absent: set[str]) -> tuple[FeatureSet | None, list[str]]:
        """The set without the parts that read an absent source, and the names of the features dropped.

        Derived features that read a dropped feature are dropped too; None when nothing is left.
        """
        usable, dropped = self.without({f"source {a}": "absent" for a in absent})
        return usable, list(dropped)

    def without(
        self, missing: Mapping[str, str], excluded: Collection[str] = ()
    ) -> tuple[FeatureSet | None, dict[str, str]]:
        """The set without features whose source or needed column is missing, or that are excluded.

        Args:
            missing: absent sources ("source web") and unmapped columns ("transactions.kind"), each with why.
            excluded: feature names the configuration switches off.

        Returns:
            The remaining set (None when nothing is left) and, per dropped feature, the reason.
            Derived features that read a dropped feature are dropped too.
        """
        dropped: dict[str, str] = {}

        def reason(f: Feature, source: str) -> str | None:
            for need in (f"source {source}", *f.needs):
                if need in missing:
                    return f"needs {need}: {missing[need]}"
            return "excluded by the feature config (exclude_features)" if f.name in excluded else None

        parts = []
        for p in self.parts:
            kept = []
            for f in p.features:
                why = reason(f, p.source)
                if why is None:
                    kept.append(f)
                else:
                    dropped[f.name] = why
            if kept:
                parts.append(dataclasses.replace(p, features=tuple(kept)))
        derived = []
        for f in self.derived:
            reads = [d for d in dropped if re.search(rf"\b{d}\b", f.sql)]
            why = f"reads dropped feature {reads[0]}" if reads else reason(f, "")
            if why is None:
                derived.append(f)
            else:
                dropped[f.name] = why
        if not parts:
            return None, dropped
        return FeatureSet(self.name, self.version, self.description, tuple(parts), tuple(derived)), dropped

    def definition(self) -> dict[str, object]:
        """The definitions as plain data (for the manifest and the digest)."""
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "parts": [
                {
                    "source": p.source,
                    "time": p.time,
                    "query": p.query,
                    "features": [_feature_dict(f) for f in p.features],
                }
                for p in self.parts
            ],
            "derived": [_feature_dict(f) for f in self.derived],
        }

    @property
    def digest(self) -> str:
        """A fingerprint of the definitions: equal digests mean the same features."""
        return definition_digest(self.definition())


def definition_without(definition: dict[str, Any], names: Collection[str]) -> dict[str, Any]:
    """A set's definition (`FeatureSet.definition`) without the named features; parts left empty go too."""
    parts = []
    for part in definition.get("parts", []):
        kept = [f for f in part["features"] if f["name"] not in names]
        if kept:
            parts.append({**part, "features": kept})
    derived = [f for f in definition.get("derived", []) if f["name"] not in names]
    return {**definition, "parts": parts, "derived": derived}


def definition_digest(definition: dict[str, object]) -> str:
    """Fingerprint of a definition (sorted JSON, SHA-256, 16 hex digits)."""
    return hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _feature_dict(f: Feature) -> dict[str, object]:
    return {
        "name": f.name,
        "sql": f.sql,
        "description": f.description,
        "dtype": f.dtype,
        "fill": f.fill,
        "lower": f.lower,
        "upper": f.upper,
    }


# Windows the spine carries precomputed bounds for (`s.since_<n>d` = cutoff - n days).
WINDOWS = (7, 30, 90, 365)


def _within(days: int, time: str = "event_time") -> str:
    if days not in WINDOWS:
        raise ValueError(f"window {days} days has no precomputed bound; add it to WINDOWS")
    return f"e.{time} >= s.since_{days}d"


def _latest(value: str, time: str, where: str | None = None, earliest: bool = False) -> str:
    """The value of the latest (or earliest) row; ties broken by arrival, then by the value (deterministic)."""
    flt = f" FILTER (WHERE {where})" if where else ""
    pick = "arg_min" if earliest else "arg_max"
    return f"{pick}({value}, ({time}, coalesce(e.arrival_time, {time}), {value})){flt}"


def _days_since(expr: str) -> str:
    return f"date_diff('second', {expr}, s.cutoff) / 86400.0"


def _count(cond: str, days: int | None = None) -> str:
    where = f"{cond} AND {_within(days)}" if days else cond
    return f"count(*) FILTER (WHERE {where})"


def _n(name: str, sql: str, description: str, needs: tuple[str, ...] = ()) -> Feature:
    """A non-negative count of the customer's events, zero when nothing happened (behavioural: what they did)."""
    return Feature(name, sql, description, dtype="BIGINT", fill=0, lower=0, needs=needs, data_class="behavioural")


# What a transaction kind needs: purchases and refunds are told apart by the amount's sign when
# no kind column is mapped; discounts and plan changes only a kind column can say.
_KIND_NEEDS = {"purchase": (), "refund": (), "discount": ("transactions.kind",), "plan_change": ("transactions.kind",)}


def _amount(name: str, kind: str, days: int, description: str) -> Feature:
    """A non-negative sum of transaction amounts of one kind over a window, zero when nothing happened."""
    sql = f"coalesce(sum(e.amount) FILTER (WHERE e.kind = '{kind}' AND {_within(days)}), 0)"
    return Feature(name, sql, description, fill=0, lower=0, needs=_KIND_NEEDS[kind], data_class="behavioural")


def relationship_set() -> FeatureSet:
    """Tenure, segment, region, acquisition channel, plan, products held."""
    holdings = (
        "SELECT cid, cutoff, count(*) FILTER (WHERE net > 0) AS products_held FROM ("
        " SELECT s.cid, s.cutoff, e.product,"
        " sum(CASE e.kind WHEN 'purchase' THEN 1 WHEN 'refund' THEN -1 ELSE 0 END) AS net"
        " FROM spine s JOIN transactions e ON e.cid = s.cid AND {pit}"
        " JOIN products p ON p.product_id = e.product AND p.is_recurring AND NOT coalesce(p.is_plan, false)"
        " WHERE e.kind IN ('purchase', 'refund') GROUP BY ALL) GROUP BY cid, cutoff"
    )
    return FeatureSet(
        "relationship",
        1,
        "Who the customer is to us: how long, which segment, region and channel, plan and add-ons held.",
        (
            Part(
                "accounts",
                (
                    Feature(
                        "tenure_days",
                        _days_since("min(e.opened_at)"),
                        "Days since the first account was opened.",
                        lower=0,
                        data_class="behavioural",
                    ),
                    _n(
                        "open_accounts",
                        _count("e.closed_at IS NULL OR e.closed_at >= s.cutoff"),
                        "Accounts open at the cutoff.",
                        needs=("accounts.closed_at",),
                    ),
                ),
                time="opened_at",
            ),
            Part(
                "profiles",
                (
                    Feature(
                        "segment",
                        _latest("e.segment", "e.created_at", "e.segment IS NOT NULL"),
                        "Segment on the newest profile record created before the cutoff.",
                        dtype="VARCHAR",
                        needs=("profiles.segment",),
                        data_class="inferred",
                    ),
                    Feature(
                        "region",
                        _latest("e.region", "e.created_at", "e.region IS NOT NULL"),
                        "Region on the newest profile record created before the cutoff.",
                        dtype="VARCHAR",
                        needs=("profiles.region",),
                        data_class="quasi_identifier",
                    ),
                    Feature(
                        "acquisition_channel",
                        _latest(
                            "e.acquisition_channel", "e.created_at", "e.acquisition_channel IS NOT NULL", earliest=True
                        ),
                        "Channel of the first profile record (how the customer came to us).",
                        dtype="VARCHAR",
                        needs=("profiles.acquisition_channel",),
                        data_class="behavioural",
                    ),
                ),
                time="created_at",
            ),
            Part(
                "transactions",
                (
                    Feature(
                        "plan",
                        _latest("e.product", "e.event_time", "e.kind = 'plan_change'"),
                        "Plan after the last plan change before the cutoff.",
                        dtype="VARCHAR",
                        needs=("transactions.kind", "transactions.product"),
                        data_class="behavioural",
                    ),
                    _n(
                        "plan_changes_365d",
                        _count("e.kind = 'plan_change'", 365),
                        "Plan changes in the last 365 days.",
                        needs=("transactions.kind",),
                    ),
                ),
                where="e.kind = 'plan_change'",
            ),
            Part(
                "transactions",
                (
                    _n(
                        "products_held",
                        "",
                        "Recurring add-ons held: bought and not refunded, before the cutoff.",
                        needs=("transactions.product", "products.is_recurring"),
                    ),
                ),
                query=holdings,
            ),
        ),
    )


def value_set() -> FeatureSet:
    """RFM over 30/90/365 days, discount dependency, refunds."""
    purchase = "e.kind = 'purchase'"
    ever = (
        Feature(
            "recency_days",
            _days_since(f"max(e.event_time) FILTER (WHERE {purchase})"),
            "Days since the last purchase (empty if none).",
            lower=0,
            data_class="behavioural",
        ),
        Feature(
            "days_since_last_discount",
            _days_since("max(e.event_time) FILTER (WHERE e.kind = 'discount')"),
            "Days since the last discount (empty if none).",
            lower=0,
            needs=("transactions.kind",),
            data_class="behavioural",
        ),
    )
    feats: list[Feature] = []
    for d in (30, 90, 365):
        feats.append(_n(f"frequency_{d}d", _count(purchase, d), f"Purchases in the last {d} days."))
        feats.append(_amount(f"monetary_{d}d", "purchase", d, f"Spend on purchases in the last {d} days."))
    feats += [
        _n(
            "discounts_365d",
            _count("e.kind = 'discount'", 365),
            "Discounts granted in the last 365 days.",
            needs=("transactions.kind",),
        ),
        _amount("discount_amount_365d", "discount", 365, "Value of discounts granted in the last 365 days."),
        _n("refunds_365d", _count("e.kind = 'refund'", 365), "Refunds in the last 365 days."),
        _amount("refund_amount_365d", "refund", 365, "Value refunded in the last 365 days."),
    ]
    derived = (
        Feature(
            "discount_share_365d",
            "discount_amount_365d / nullif(discount_amount_365d + monetary_365d, 0)",
            "Discount dependency: share of the value received in 365 days that came as discounts.",
            lower=0,
            upper=1,
            derived=True,
            data_class="behavioural",
        ),
        Feature(
            "refund_rate_365d",
            "refunds_365d / nullif(frequency_365d, 0)",
            "Refunds per purchase over 365 days (empty without purchases).",
            lower=0,
            derived=True,
            data_class="behavioural",
        ),
    )
    return FeatureSet(
        "value",
        1,
        "What the customer spends: recency, frequency, monetary value, discounts, refunds.",
        (
            Part("transactions", tuple(feats), lookback_days=365, where="e.kind IN ('purchase', 'discount', 'refund')"),
            Part("transactions", ever, where="e.kind IN ('purchase', 'discount')"),
        ),
        derived,
    )


def service_set(config: FeatureConfig) -> FeatureSet:
    """Tickets by channel and category, resolution, repeat contacts, CSAT, NPS, failed self-service."""
    resolved = "e.resolved_at IS NOT NULL AND e.resolved_at < s.cutoff"
    tickets: list[Feature] = [
        _n("tickets_90d", _count("true", 90), "Tickets opened in the last 90 days."),
        _n("tickets_365d", _count("true", 365), "Tickets opened in the last 365 days."),
    ]
    for c in config.ticket_channels:
        tickets.append(
            _n(
                f"tickets_channel_{c}_90d",
                _count(f"e.channel = '{c}'", 90),
                f"Tickets by {c}, 90 days.",
                needs=("tickets.channel",),
            )
        )
    for c in config.ticket_categories:
        tickets.append(
            _n(
                f"tickets_category_{c}_90d",
                _count(f"e.category = '{c}'", 90),
                f"Tickets about {c}, 90 days.",
                needs=("tickets.category",),
            )
        )
    last_ticket = Feature(
        "days_since_last_ticket",
        _days_since("max(e.event_time)"),
        "Days since the last ticket (empty if none).",
        lower=0,
        data_class="behavioural",
    )
    tickets += [
        Feature(
            "fcr_rate_365d",
            f"avg(CAST(e.first_contact_resolution AS DOUBLE)) FILTER (WHERE {resolved} AND {_within(365)})",
            "First-contact resolution rate of tickets resolved before the cutoff, 365 days.",
            lower=0,
            upper=1,
            needs=("tickets.first_contact_resolution", "tickets.resolved_at"),
            data_class="behavioural",
        ),
        Feature(
            "csat_mean_365d",
            f"avg(e.csat) FILTER (WHERE {resolved} AND {_within(365)})",
            "Mean CSAT of tickets resolved before the cutoff, 365 days (a score is known once resolved).",
            lower=0,
            needs=("tickets.csat", "tickets.resolved_at"),
            data_class="behavioural",
        ),
    ]
    repeat = (
        "SELECT cid, cutoff, count(*) FILTER (WHERE event_time >= since_90d"
        " AND prev_time >= event_time - INTERVAL 7 DAY) AS repeat_contacts_90d FROM ("
        " SELECT s.cid, s.cutoff, s.since_90d, e.event_time,"
        " lag(e.event_time) OVER (PARTITION BY s.cid, s.cutoff ORDER BY e.event_time) AS prev_time"
        " FROM spine s JOIN tickets e ON e.cid = s.cid AND {pit}) GROUP BY cid, cutoff"
    )
    return FeatureSet(
        "service",
        1,
        "How service goes for the customer: tickets, resolution, repeat contacts, CSAT, NPS, self-service.",
        (
            Part("tickets", tuple(tickets), lookback_days=365),
            Part("tickets", (last_ticket,)),
            Part(
                "tickets",
                (_n("repeat_contacts_90d", "", "Tickets in 90 days opened within 7 days of the previous one."),),
                query=repeat,
                lookback_days=97,  # a ticket 90 days back may repeat one from 7 days before it
            ),
            Part(
                "surveys",
                (
                    Feature(
                        "nps_last",
                        _latest("e.score", "e.event_time"),
                        "Latest NPS answer (0-10) before the cutoff.",
                        lower=0,
                        upper=10,
                        data_class="behavioural",
                    ),
                    Feature(
                        "nps_mean_365d",
                        f"avg(e.score) FILTER (WHERE {_within(365)})",
                        "Mean NPS answer, 365 days.",
                        lower=0,
                        upper=10,
                        data_class="behavioural",
                    ),
                    Feature(
                        "days_since_nps",
                        _days_since("max(e.event_time)"),
                        "Days since the last NPS answer.",
                        lower=0,
                        data_class="behavioural",
                    ),
                ),
            ),
            Part(
                "web",
                (
                    _n(
                        "self_service_failed_90d",
                        _count("e.event_type = 'self_service_failed'", 90),
                        "Failed self-service attempts, 90 days.",
                    ),
                ),
                lookback_days=90,
                where="e.event_type = 'self_service_failed'",
            ),
        ),
    )


def digital_set(config: FeatureConfig) -> FeatureSet:
    """Sessions, micro-conversions, key page views, and the trend of sessions."""
    feats: list[Feature] = []
    for d in (30, 90):
        feats.append(_n(f"sessions_{d}d", _count("e.event_type = 'session'", d), f"Sessions, {d} days."))
        feats.append(
            _n(
                f"micro_conversions_{d}d",
                _count("e.event_type = 'micro_conversion'", d),
                f"Micro-conversions (sign-ups, installs, referrals), {d} days.",
            )
        )
        for page in config.key_pages:
            feats.append(
                _n(
                    f"page_views_{page}_{d}d",
                    _count(f"e.event_type = 'page_view' AND e.page = '{page}'", d),
                    f"Views of the {page} page, {d} days.",
                    needs=("web.page",),
                )
            )
    last_session = Feature(
        "days_since_last_session",
        _days_since("max(e.event_time) FILTER (WHERE e.event_type = 'session')"),
        "Days since the last session (empty if none).",
        lower=0,
        data_class="behavioural",
    )
    derived = (
        Feature(
            "sessions_trend",
            "sessions_30d - (sessions_90d - sessions_30d) / 2.0",
            "Sessions in the last 30 days minus the monthly average of the 60 days before.",
            derived=True,
            data_class="behavioural",
        ),
    )
    return FeatureSet(
        "digital",
        1,
        "How the customer uses web and app: sessions, key pages, micro-conversions, trend.",
        (
            Part("web", tuple(feats), lookback_days=90),
            Part("web", (last_session,), where="e.event_type = 'session'"),
        ),
        derived,
    )


def attributes_set() -> FeatureSet:
    """Protected and demographic attributes from the golden record, for fairness audits.

    Not a model input by default (a trainer must choose it): the promotion gate audits
    models by these groups. Birth date and gender are taken as fixed, so the golden
    record's current value is the value at every cutoff.
    """
    age = "floor(date_diff('day', e.birth_date, s.cutoff) / 365.25)"
    query = (
        f"SELECT s.cid, s.cutoff, {age} AS age_years, "
        f"CASE WHEN e.birth_date IS NULL THEN NULL WHEN {age} < 18 THEN 'under_18' WHEN {age} < 25 THEN '18-24' "
        f"WHEN {age} < 35 THEN '25-34' WHEN {age} < 50 THEN '35-49' WHEN {age} < 65 THEN '50-64' ELSE '65+' END "
        "AS age_band, e.gender FROM spine s JOIN golden e ON e.cid = s.cid"
    )
    return FeatureSet(
        "attributes",
        1,
        "Protected attributes (age, age band, gender) from the golden record, for bias audits; offline only.",
        (
            Part(
                "golden",
                (
                    Feature(
                        "age_years",
                        "",
                        "Age in whole years at the cutoff.",
                        lower=0,
                        upper=120,
                        data_class="quasi_identifier",
                    ),
                    Feature(
                        "age_band",
                        "",
                        "under_18, 18-24, 25-34, 35-49, 50-64 or 65+.",
                        dtype="VARCHAR",
                        data_class="quasi_identifier",
                    ),
                    Feature(
                        "gender", "", "Gender on the golden record.", dtype="VARCHAR", data_class="quasi_identifier"
                    ),
                ),
                query=query,
            ),
        ),
    )


# Sets kept out of the online store (restricted attributes, not served).
OFFLINE_ONLY = frozenset({"attributes"})


def feature_sets(config: FeatureConfig) -> tuple[FeatureSet, ...]:
    """The feature sets of this configuration, in build order, classed as the definitions and `classes` say."""
    sets = (relationship_set(), value_set(), service_set(config), digital_set(config), attributes_set())
    return reclassified(sets, config.classes) if config.classes else sets


def reclassified(sets: Sequence[FeatureSet], classes: Mapping[str, str]) -> tuple[FeatureSet, ...]:
    """The sets with the features `classes` names given that class; a name no feature has is an error."""
    unknown = sorted(set(classes) - {f.name for fs in sets for f in fs.features})
    if unknown:
        raise FeatureConfigError(f"classes: no feature is called {', '.join(unknown)}")

    def one(f: Feature) -> Feature:
        return dataclasses.replace(f, data_class=classes[f.name]) if f.name in classes else f

    return tuple(
        dataclasses.replace(
            fs,
            parts=tuple(dataclasses.replace(p, features=tuple(one(f) for f in p.features)) for p in fs.parts),
            derived=tuple(one(f) for f in fs.derived),
        )
        for fs in sets
    )


def check_exclusions(sets: Sequence[FeatureSet], excluded: Collection[str]) -> None:
    """Refuse a name in `exclude_features` that no feature has (a typo would switch nothing off)."""
    unknown = sorted(set(excluded) - {f.name for fs in sets for f in fs.features})
    if unknown:
        raise FeatureConfigError(f"exclude_features: no feature is called {', '.join(unknown)}")


# Interactions (customer x product) and labels have their own grain and builders; their
# versions are kept here so the stores and the manifest treat them like feature sets.
INTERACTIONS_VERSION = 1
# The interactions' numeric columns, with their bounds for the quality checks.
INTERACTION_FEATURES = (
    Feature(
        "purchases",
        "",
        "Purchases of the product before the cutoff.",
        dtype="BIGINT",
        lower=0,
        data_class="behavioural",
    ),
    Feature(
        "refunds", "", "Refunds of the product before the cutoff.", dtype="BIGINT", lower=0, data_class="behavioural"
    ),
    Feature("spend", "", "Spend on the product before the cutoff.", lower=0, data_class="behavioural"),
    Feature("days_since_purchase", "", "Days since the product was last bought.", lower=0, data_class="behavioural"),
)
LABELS_VERSION = 1
PURCHASE_LABELS_VERSION = 1
