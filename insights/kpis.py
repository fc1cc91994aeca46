"""Operations KPIs, each defined once with its window and exclusions, cut by month, channel, region, stage, segment.

The definitions (the same rules are in `kpis.yaml`, whose numbers they read):

- **FCR** (first-contact resolution): a ticket is first-contact-resolved when its outcome is not an
  unresolved one (escalated, unresolved, abandoned) and the same customer opens no other ticket in the
  same category within `fcr.window_days` (7) after it. Excluded: tickets still open at the data end
  (as-of date), tickets opened within the window of the data end (their repeat window is not fully
  seen), and tickets of customers the identity crosswalk does not know.
- **Repeat-contact rate**: the share of tickets opened within `repeat_contact.window_days` (7) after an
  earlier ticket of the same customer, any category. Excluded: tickets opened within the window of the
  data start (their earlier contacts are not seen), and tickets of unknown customers.
- **CSAT**: the top-box share (4-5 of 5) among answered tickets.
- **NPS** (Reichheld): promoters (9-10) minus detractors (0-6), in points, among answered surveys.
- **CES** (Dixon et al. 2010): mean answer to "the company made it easy to handle my issue" (1-7), and
  the share agreeing (5-7), among answered surveys.
- **Cost per resolved issue**: each contact (ticket) costs its channel's cost per contact; the contacts'
  cost divided by the issues resolved (resolved, refund issued). A channel without a cost raises a named
  warning and its contacts and resolutions are left out of this KPI (counted in the warning).

Cuts: `month` (of the ticket's opening or the survey's date), `channel` (tickets only: surveys have no
channel), `region` (the customer's CRM region), `journey_stage` (tenure at the event from the customer's
earliest CRM record: onboarding < 90 days, first_year < 365 days, established), and `segment` (the
behavioural segment of `insights.segments`, given as a customer -> segment mapping).

Every cell reports its `n` and an interval (Wilson for shares, normal for NPS, t for mean effort; none
for the cost ratio) and is flagged `low_n` below `min_n`, so a page does not over-read a small month.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import stats

from custintel.settings import Settings
from custintel.yaml_config import load_yaml_model
from features.lake import IngestError, read_lake_table
from insights.errors import InsightsError

KPIS = ("fcr", "repeat_contact_rate", "csat", "nps", "ces_mean", "ces_agree", "cost_per_resolved_issue")
CUTS = ("month", "channel", "region", "journey_stage", "segment")
TICKET_KPIS = ("fcr", "repeat_contact_rate", "csat", "cost_per_resolved_issue")
SURVEY_KPIS = ("nps", "ces_mean", "ces_agree")
UNKNOWN = "unknown"
UNASSIGNED = "unassigned"
Cut = Literal["month", "channel", "region", "journey_stage", "segment"]
KPI_LABELS = {
    "fcr": "First-contact resolution",
    "repeat_contact_rate": "Repeat-contact rate",
    "csat": "CSAT (top box)",
    "nps": "Net Promoter Score",
    "ces_mean": "Customer effort (mean, 1-7)",
    "ces_agree": "Customer effort (share finding it easy)",
    "cost_per_resolved_issue": "Cost per resolved issue",
}
# The unit of each KPI as the operations report names them (insights.report.KpiSeries.unit).
REPORT_UNITS = {
    "fcr": "share", "repeat_contact_rate": "rate", "csat": "share", "nps": "points", "ces_mean": "score",
    "ces_agree": "share", "cost_per_resolved_issue": "currency",
}  # fmt: skip


class KpiError(InsightsError):
    """The KPI definitions or inputs are unusable; the message names the field and the reason."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FcrRule(_Strict):
    """First-contact resolution: no repeat in the same category within the window, and not left unresolved."""

    window_days: int = Field(default=7, ge=1, le=90)
    unresolved_outcomes: list[str] = Field(default_factory=lambda: ["escalated", "unresolved", "customer_abandoned"])


class RepeatRule(_Strict):
    """Repeat contact: a ticket opened within the window after an earlier one of the same customer."""

    window_days: int = Field(default=7, ge=1, le=90)


class CsatRule(_Strict):
    """CSAT top box."""

    top_box: list[int] = Field(default_factory=lambda: [4, 5])


class NpsRule(_Strict):
    """NPS bands."""

    promoters: list[int] = Field(default_factory=lambda: [9, 10])
    detractors: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4, 5, 6])

    @model_validator(mode="after")
    def _disjoint(self) -> NpsRule:
        if set(self.promoters) & set(self.detractors):
            raise ValueError("promoters and detractors overlap")
        return self


class CesRule(_Strict):
    """CES agreement band."""

    agree: list[int] = Field(default_factory=lambda: [5, 6, 7])


class CostRule(_Strict):
    """Which outcomes count as a resolved issue, and the currency of the costs."""

    resolved_outcomes: list[str] = Field(default_factory=lambda: ["resolved", "refund_issued"])
    currency: str = "USD"


class JourneyStage(_Strict):
    """A journey stage: tenure below `below_days` (None: the last, open-ended stage)."""

    name: str = Field(min_length=1)
    below_days: int | None = Field(default=None, ge=1)


class KpiDefinitions(_Strict):
    """The KPI settings of `kpis.yaml`."""

    fcr: FcrRule = Field(default_factory=FcrRule)
    repeat_contact: RepeatRule = Field(default_factory=RepeatRule)
    csat: CsatRule = Field(default_factory=CsatRule)
    nps: NpsRule = Field(default_factory=NpsRule)
    ces: CesRule = Field(default_factory=CesRule)
    cost_per_resolved_issue: CostRule = Field(default_factory=CostRule)
    cost_per_contact: dict[str, float] = Field(default_factory=dict)
    journey_stages: list[JourneyStage] = Field(
        default_factory=lambda: [
            JourneyStage(name="onboarding", below_days=90),
            JourneyStage(name="first_year", below_days=365),
            JourneyStage(name="established"),
        ]
    )
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    min_n: int = Field(default=100, ge=1)

    @model_validator(mode="after")
    def _check(self) -> KpiDefinitions:
        for channel, cost in self.cost_per_contact.items():
            if not math.isfinite(cost) or cost < 0:
                raise ValueError(f"cost_per_contact.{channel}: must be a finite amount >= 0, got {cost}")
        stages = self.journey_stages
        if not stages or stages[-1].below_days is not None:
            raise ValueError("journey_stages: the last stage must be open-ended (below_days: null)")
        bounds = [s.below_days for s in stages[:-1]]
        known = [b for b in bounds if b is not None]
        if len(known) != len(bounds) or known != sorted(known) or len(set(known)) != len(known):
            raise ValueError("journey_stages: below_days must increase, and only the last stage may omit it")
        return self


def kpi_definitions_text(defs: KpiDefinitions) -> dict[str, str]:
    """Each KPI's definition in words, with the windows and exclusions `defs` sets (for a page)."""
    fcr, rep = defs.fcr, defs.repeat_contact
    unresolved = ", ".join(fcr.unresolved_outcomes) or "none"
    costs = ", ".join(f"{c} {v:.2f}" for c, v in sorted(defs.cost_per_contact.items())) or "none set"
    stages = ", ".join(
        f"{s.name} (< {s.below_days} days)" if s.below_days else f"{s.name} (after)" for s in defs.journey_stages
    )
    return {
        "fcr": f"Share of tickets after which the same customer opens no other ticket in the same category within "
        f"{fcr.window_days} days, and whose outcome is not {unresolved}. Excludes tickets still open, tickets opened "
        f"in the last {fcr.window_days} days of the data, and tickets of unknown customers.",
        "repeat_contact_rate": f"Share of tickets opened within {rep.window_days} days after an earlier ticket of the "
        f"same customer (any category). Excludes the first {rep.window_days} days of the data and unknown customers.",
        "csat": f"Share of answered satisfaction ratings (1-5) that are {' or '.join(map(str, defs.csat.top_box))}.",
        "nps": "Promoters (9-10) minus detractors (0-6), in points, among answered surveys (Reichheld).",
        "ces_mean": "Mean answer to 'the company made it easy to handle my issue' (1-7, Dixon et al. 2010).",
        "ces_agree": f"Share of effort answers of {', '.join(map(str, defs.ces.agree))} (agreeing it was easy).",
        "cost_per_resolved_issue": f"Contacts x cost per contact by channel ({costs} "
        f"{defs.cost_per_resolved_issue.currency}) / issues resolved "
        f"({', '.join(defs.cost_per_resolved_issue.resolved_outcomes)}); a channel without a cost is left out.",
        "journey_stage": f"Tenure at the event from the customer's earliest CRM record: {stages}.",
    }


def load_kpi_definitions(path: Path | None = None) -> KpiDefinitions:
    """The KPI definitions from `path`, or the shipped `insights/kpis.yaml`."""
    return load_yaml_model(
        KpiDefinitions, path, ("insights", "kpis.yaml"), KpiError, "KPI definitions", "the KPI settings"
    )


@dataclass(frozen=True)
class KpiInputs:
    """What the KPIs are computed from, keyed by customer key (None where the crosswalk knows no customer).

    tickets: ticket_id, customer_key, opened_at, resolved_at, channel, category, resolution, csat.
    surveys: response_id, customer_key, survey_date, score, effort.
    customers: customer_key, customer_since, region.
    `data_start` is when the ticket history starts, `data_end` the as-of date (rows at or after it are not
    used; a ticket resolved at or after it is still open). With `count_from`, only rows from then on are
    counted; earlier tickets still serve as the earlier contact of a repeat.
    """

    tickets: pd.DataFrame
    surveys: pd.DataFrame
    customers: pd.DataFrame
    data_start: pd.Timestamp
    data_end: pd.Timestamp
    count_from: pd.Timestamp | None = None


@dataclass(frozen=True)
class KpiWarning:
    """Something a reader of the KPIs should know: a named code, what it concerns, how many rows."""

    code: str
    subject: str
    rows: int
    message: str


@dataclass
class KpiResult:
    """KPI values, one row per (kpi, cell): the cut columns, n, value, interval, unit and a small-n flag."""

    table: pd.DataFrame
    warnings: list[KpiWarning] = field(default_factory=list)
    by: tuple[str, ...] = ()

    def value(self, kpi: str, **cell: str) -> float:
        """The value of one KPI in one cell (e.g. `value("fcr", month="2025-09")`)."""
        rows = self.table[self.table["kpi"] == kpi]
        for column, wanted in cell.items():
            rows = rows[rows[column] == wanted]
        if len(rows) != 1:
            raise KeyError(f"{kpi} {cell}: {len(rows)} rows")
        return float(rows["value"].iloc[0])


TICKET_COLUMNS = ["ticket_id", "customer_key", "opened_at", "resolved_at", "channel", "category", "resolution", "csat"]
SURVEY_COLUMNS = ["response_id", "customer_key", "survey_date", "score", "effort"]
CUSTOMER_COLUMNS = ["customer_key", "customer_since", "region"]


def make_inputs(
    tickets: pd.DataFrame,
    surveys: pd.DataFrame,
    customers: pd.DataFrame,
    data_end: dt.date | pd.Timestamp,
    data_start: dt.date | pd.Timestamp | None = None,
) -> KpiInputs:
    """Validate and type canonical frames (tests, notebooks, the lake reader): a missing column is named."""
    for name, frame, columns in (
        ("tickets", tickets, TICKET_COLUMNS),
        ("surveys", surveys, SURVEY_COLUMNS),
        ("customers", customers, CUSTOMER_COLUMNS),
    ):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise KpiError(f"{name}: missing column(s) {missing}; expected {columns}")
    t = tickets[TICKET_COLUMNS].copy()
    for column in ("opened_at", "resolved_at"):
        t[column] = _timestamps(t[column], f"tickets.{column}")
    t["csat"] = _numbers(t["csat"], "tickets.csat")
    for column in ("channel", "category", "resolution", "customer_key"):
        t[column] = t[column].astype("string")
    s = surveys[SURVEY_COLUMNS].copy()
    s["survey_date"] = _timestamps(s["survey_date"], "surveys.survey_date")
    s["score"] = _numbers(s["score"], "surveys.score")
    s["effort"] = _numbers(s["effort"], "surveys.effort")
    s["customer_key"] = s["customer_key"].astype("string")
    c = customers[CUSTOMER_COLUMNS].copy()
    c["customer_since"] = _timestamps(c["customer_since"], "customers.customer_since")
    c["customer_key"] = c["customer_key"].astype("string")
    c["region"] = c["region"].astype("string")
    if c["customer_key"].duplicated().any():
        raise KpiError("customers: customer_key must be unique (one row per customer)")
    end = pd.Timestamp(data_end)
    start = pd.Timestamp(data_start) if data_start is not None else t["opened_at"].min()
    if pd.isna(start):
        start = end
    return KpiInputs(t, s, c, start, end)


def _timestamps(values: pd.Series, name: str) -> pd.Series:
    try:
        with warnings.catch_warnings():  # pandas' "could not infer format" is ours to report, as the error below
            warnings.simplefilter("ignore", UserWarning)
            out = pd.to_datetime(values, errors="raise")
    except (ValueError, TypeError) as exc:
        raise KpiError(f"{name}: not a date or time ({exc})") from exc
    if getattr(out.dt, "tz", None) is not None:
        out = out.dt.tz_convert("UTC").dt.tz_localize(None)
    return out.astype("datetime64[ns]")


def _numbers(values: pd.Series, name: str) -> pd.Series:
    try:
        return pd.to_numeric(values, errors="raise").astype("float64")
    except (ValueError, TypeError) as exc:
        raise KpiError(f"{name}: not a number ({exc})") from exc


def crm_customer_keys(settings: Settings) -> pd.Series:
    """CRM id -> customer key, from the identity crosswalk (`crm_accounts:<id>` records); empty without one."""
    path = settings.identity_dir / "crosswalk.parquet"
    if not path.is_file():
        return pd.Series(dtype="string")
    crosswalk = pd.read_parquet(path, columns=["record_key", "customer_key"]).astype("string")
    crm = crosswalk[crosswalk["record_key"].str.startswith("crm_accounts:")]
    key_of = pd.Series(
        crm["customer_key"].to_numpy(), index=crm["record_key"].str.removeprefix("crm_accounts:").to_numpy()
    )
    return key_of[~key_of.index.duplicated()]


def read_kpi_inputs(settings: Settings, as_of: dt.date | None = None) -> KpiInputs:
    """Tickets, surveys and customers from the lake, keyed through the identity crosswalk, as of a date.

    Support tickets and survey answers name a CRM record (`crm_id`); the crosswalk
    (`<home>/identity/crosswalk.parquet`, written by `custintel resolve`) maps `crm_accounts:<id>` to the
    customer key. A customer's `customer_since` is their earliest CRM record's `created_at`, their region
    that of their latest record. Rows at or after `as_of` (default: the newest drop's export time) are
    not used. A lake from before the effort question has no `effort`: CES is then empty, not an error.
    """
    crosswalk_path = settings.identity_dir / "crosswalk.parquet"
    if not crosswalk_path.is_file():
        raise KpiError(f"no identity crosswalk at {crosswalk_path}: run `custintel resolve` first")
    try:
        tickets = read_lake_table(settings, "support_tickets")
        surveys = read_lake_table(settings, "nps_responses")
        crm = read_lake_table(settings, "crm_accounts", columns=["crm_id", "created_at", "region"])
    except IngestError as exc:
        raise KpiError(str(exc)) from exc
    key_of = crm_customer_keys(settings)
    exported = max(pd.Timestamp(f["_drop_as_of"].max()) for f in (tickets, surveys))
    end = pd.Timestamp(as_of) if as_of is not None else exported
    end = min(end, exported)
    tickets = tickets.assign(customer_key=tickets["crm_id"].astype("string").map(key_of))
    surveys = surveys.assign(customer_key=surveys["crm_id"].astype("string").map(key_of))
    if "effort" not in surveys.columns:
        surveys["effort"] = np.nan
    crm = crm.assign(customer_key=crm["crm_id"].astype("string").map(key_of)).dropna(subset=["customer_key"])
    crm = crm.sort_values("created_at", kind="stable")
    customers = crm.groupby("customer_key", sort=True).agg(customer_since=("created_at", "min"))
    # the region of the customer's latest record that names one (a Python function per group took 18 s at 20k)
    customers["region"] = crm.dropna(subset=["region"]).groupby("customer_key", sort=True)["region"].last()
    start = pd.to_datetime(tickets["opened_at"]).min()
    return make_inputs(tickets, surveys, customers.reset_index(), end, start)


def journey_stage(tenure_days: pd.Series, stages: Sequence[JourneyStage]) -> pd.Series:
    """The stage of each tenure (days since the customer's earliest record); unknown where tenure is."""
    out = pd.Series(UNKNOWN, index=tenure_days.index, dtype="object")
    known = tenure_days.notna()
    remaining = known.copy()
    for stage in stages:
        hit = remaining if stage.below_days is None else remaining & (tenure_days < stage.below_days)
        out[hit] = stage.name
        remaining &= ~hit
    return out


def _dimensions(
    frame: pd.DataFrame, time: str, inputs: KpiInputs, defs: KpiDefinitions, segments: Mapping[str, str] | None
) -> pd.DataFrame:
    """Month, region, journey stage and segment of each row (tickets or surveys)."""
    customers = inputs.customers.set_index("customer_key")
    key = frame["customer_key"]
    since = key.map(customers["customer_since"])
    tenure = (frame[time] - pd.to_datetime(since)).dt.days
    out = frame.assign(
        month=frame[time].dt.strftime("%Y-%m"),
        region=key.map(customers["region"]).fillna(UNKNOWN).astype("object"),
        journey_stage=journey_stage(tenure.where(tenure >= 0), defs.journey_stages),
    )
    if segments is not None:
        out["segment"] = key.map(pd.Series(dict(segments), dtype="object")).fillna(UNASSIGNED).astype("object")
    return out


def ticket_facts(
    inputs: KpiInputs, defs: KpiDefinitions, segments: Mapping[str, str] | None = None
) -> tuple[pd.DataFrame, list[KpiWarning]]:
    """One row per ticket opened before the data end, with the flags every ticket KPI counts.

    Columns added: open, linked, fcr_eligible, fcr, repeat_eligible, repeat, csat_answered, csat_top,
    cost (NaN when the channel has no cost), resolved, and the cut columns.
    """
    end, start = inputs.data_end, inputs.data_start
    t = inputs.tickets[inputs.tickets["opened_at"] < end].copy()
    t = t.sort_values(["opened_at", "ticket_id"], kind="stable").reset_index(drop=True)
    resolution = t["resolution"].fillna("")
    t["open"] = (resolution == "open") | t["resolved_at"].isna() | (t["resolved_at"] >= end)
    t["linked"] = t["customer_key"].notna()
    fcr_window = pd.Timedelta(days=defs.fcr.window_days)
    repeat_window = pd.Timedelta(days=defs.repeat_contact.window_days)

    # Next ticket of the same customer in the same category (any time before the data end).
    by_cat = t[t["linked"]].sort_values(["customer_key", "category", "opened_at"], kind="stable")
    next_same = by_cat.groupby(["customer_key", "category"], sort=False)["opened_at"].shift(-1)
    followed = pd.Series(False, index=t.index)
    followed[by_cat.index] = (next_same - by_cat["opened_at"]) <= fcr_window
    t["fcr_eligible"] = t["linked"] & ~t["open"] & (t["opened_at"] <= end - fcr_window)
    t["fcr"] = t["fcr_eligible"] & ~followed & ~resolution.isin(defs.fcr.unresolved_outcomes)

    # Previous ticket of the same customer, any category.
    by_cust = t[t["linked"]].sort_values(["customer_key", "opened_at"], kind="stable")
    previous = by_cust.groupby("customer_key", sort=False)["opened_at"].shift(1)
    repeat = pd.Series(False, index=t.index)
    repeat[by_cust.index] = (by_cust["opened_at"] - previous) <= repeat_window
    t["repeat_eligible"] = t["linked"] & (t["opened_at"] >= start + repeat_window)
    t["repeat"] = t["repeat_eligible"] & repeat

    t["csat_answered"] = t["csat"].notna()
    t["csat_top"] = t["csat"].isin(defs.csat.top_box)
    costs = defs.cost_per_contact
    t["cost"] = t["channel"].map(lambda c: costs.get(str(c), np.nan) if pd.notna(c) else np.nan).astype("float64")
    t["resolved"] = ~t["open"] & resolution.isin(defs.cost_per_resolved_issue.resolved_outcomes)
    if inputs.count_from is not None:
        t = t[t["opened_at"] >= inputs.count_from].reset_index(drop=True)

    warnings = []
    uncosted = t.loc[t["cost"].isna(), "channel"].fillna("<blank>").astype(str)
    for channel, rows in uncosted.value_counts().sort_index().items():
        warnings.append(
            KpiWarning(
                "channel_without_cost",
                str(channel),
                int(rows),
                f"channel {channel!r} has no cost per contact (kpis.yaml cost_per_contact): its {rows} contact(s) "
                "are left out of cost per resolved issue",
            )
        )
    unlinked = int((~t["linked"]).sum())
    if unlinked:
        warnings.append(
            KpiWarning(
                "ticket_without_customer",
                "support_tickets",
                unlinked,
                f"{unlinked} ticket(s) name no customer the identity crosswalk knows: they count for CSAT and cost, "
                "not for FCR or repeat contacts",
            )
        )
    return _dimensions(t, "opened_at", inputs, defs, segments), warnings


def survey_facts(inputs: KpiInputs, defs: KpiDefinitions, segments: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per survey answer before the data end, with the NPS band and CES flags, and the cut columns."""
    s = inputs.surveys[inputs.surveys["survey_date"] < inputs.data_end].copy()
    if inputs.count_from is not None:
        s = s[s["survey_date"] >= inputs.count_from]
    s["nps_answered"] = s["score"].notna()
    s["promoter"] = s["score"].isin(defs.nps.promoters)
    s["detractor"] = s["score"].isin(defs.nps.detractors)
    s["ces_answered"] = s["effort"].notna()
    s["ces_agree"] = s["effort"].isin(defs.ces.agree)
    return _dimensions(s, "survey_date", inputs, defs, segments)


def wilson_interval(successes: np.ndarray, n: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a share (NaN where n is 0); honest for small n and shares near 0 or 1."""
    k = np.asarray(successes, dtype=float)
    m = np.asarray(n, dtype=float)
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / m
        denom = 1 + z**2 / m
        centre = (p + z**2 / (2 * m)) / denom
        half = z * np.sqrt(p * (1 - p) / m + z**2 / (4 * m**2)) / denom
    return np.where(m > 0, centre - half, np.nan), np.where(m > 0, centre + half, np.nan)


def _share(grouped: pd.DataFrame, kpi: str, n: str, k: str, defs: KpiDefinitions) -> pd.DataFrame:
    lo, hi = wilson_interval(grouped[k].to_numpy(), grouped[n].to_numpy(), defs.confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = grouped[k].to_numpy(dtype=float) / grouped[n].to_numpy(dtype=float)
    return grouped.assign(kpi=kpi, n=grouped[n], value=value, lower=lo, upper=hi, unit="share")


def _nps(grouped: pd.DataFrame, defs: KpiDefinitions) -> pd.DataFrame:
    m = grouped["nps_answered"].to_numpy(dtype=float)
    z = float(stats.norm.ppf(0.5 + defs.confidence / 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        p, d = grouped["promoter"].to_numpy() / m, grouped["detractor"].to_numpy() / m
        score = p - d
        se = np.sqrt((p + d - score**2) / m)
    return grouped.assign(
        kpi="nps",
        n=grouped["nps_answered"],
        value=100 * score,
        lower=np.clip(100 * (score - z * se), -100, 100),
        upper=np.clip(100 * (score + z * se), -100, 100),
        unit="points",
    )


def _ces_mean(grouped: pd.DataFrame, defs: KpiDefinitions) -> pd.DataFrame:
    m = grouped["ces_answered"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = grouped["effort_sum"].to_numpy() / m
        var = (grouped["effort_sq"].to_numpy() - m * mean**2) / (m - 1)
        t = stats.t.ppf(0.5 + defs.confidence / 2, np.maximum(m - 1, 1))
        half = np.where(m > 1, t * np.sqrt(np.maximum(var, 0) / m), np.nan)
    return grouped.assign(kpi="ces_mean", n=grouped["ces_answered"], value=mean, lower=mean - half, upper=mean + half,
                          unit="1-7")  # fmt: skip


def _cost(grouped: pd.DataFrame, defs: KpiDefinitions) -> pd.DataFrame:
    resolved = grouped["resolved_costed"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(resolved > 0, grouped["cost_sum"].to_numpy() / resolved, np.nan)
    return grouped.assign(
        kpi="cost_per_resolved_issue",
        n=grouped["resolved_costed"],
        value=value,
        lower=np.nan,
        upper=np.nan,
        unit=defs.cost_per_resolved_issue.currency,
    )


def _grouped(frame: pd.DataFrame, by: Sequence[str], sums: Mapping[str, pd.Series]) -> pd.DataFrame:
    data = pd.DataFrame({**{c: frame[c] for c in by}, **{k: v.astype("float64") for k, v in sums.items()}})
    if not by:
        return pd.DataFrame({k: [float(v.sum())] for k, v in data.items()})
    return data.groupby(list(by), sort=True, dropna=False).sum().reset_index()


def compute_kpis(
    inputs: KpiInputs,
    defs: KpiDefinitions | None = None,
    by: Sequence[Cut] = (),
    segments: Mapping[str, str] | None = None,
) -> KpiResult:
    """Every KPI, overall (`by=()`) or per cell of the cuts in `by` (e.g. `("month",)`, `("month", "channel")`).

    `segments` maps customer key -> behavioural segment (needed for the `segment` cut). Survey KPIs (NPS,
    CES) have no channel: with `channel` in `by` only the ticket KPIs are given.
    """
    defs = defs or load_kpi_definitions()
    unknown = [c for c in by if c not in CUTS]
    if unknown:
        raise KpiError(f"by: unknown cut(s) {unknown}; known: {list(CUTS)}")
    if len(set(by)) != len(by):
        raise KpiError(f"by: a cut is repeated in {list(by)}")
    if "segment" in by and segments is None:
        raise KpiError("by: the segment cut needs the segments (customer_key -> segment, from insights.segments)")
    tickets, warnings = ticket_facts(inputs, defs, segments)
    costed = tickets["cost"].notna()
    tg = _grouped(
        tickets,
        by,
        {
            "fcr_eligible": tickets["fcr_eligible"],
            "fcr": tickets["fcr"],
            "repeat_eligible": tickets["repeat_eligible"],
            "repeat": tickets["repeat"],
            "csat_answered": tickets["csat_answered"],
            "csat_top": tickets["csat_top"],
            "cost_sum": tickets["cost"].fillna(0.0),
            "resolved_costed": tickets["resolved"] & costed,
        },
    )
    parts = [
        _share(tg, "fcr", "fcr_eligible", "fcr", defs),
        _share(tg, "repeat_contact_rate", "repeat_eligible", "repeat", defs),
        _share(tg, "csat", "csat_answered", "csat_top", defs),
        _cost(tg, defs),
    ]
    if "channel" not in by:
        surveys = survey_facts(inputs, defs, segments)
        effort = surveys["effort"].where(surveys["ces_answered"], 0.0)
        sg = _grouped(
            surveys,
            by,
            {
                "nps_answered": surveys["nps_answered"],
                "promoter": surveys["promoter"],
                "detractor": surveys["detractor"],
                "ces_answered": surveys["ces_answered"],
                "ces_agree": surveys["ces_agree"],
                "effort_sum": effort,
                "effort_sq": effort**2,
            },
        )
        parts += [_nps(sg, defs), _ces_mean(sg, defs), _share(sg, "ces_agree", "ces_answered", "ces_agree", defs)]
    columns = ["kpi", *by, "n", "value", "lower", "upper", "unit"]
    table = pd.concat([p[columns] for p in parts], ignore_index=True)
    table["n"] = table["n"].astype("int64")
    table["low_n"] = table["n"] < defs.min_n
    order = {k: i for i, k in enumerate(KPIS)}
    table = table.sort_values([*by, "kpi"], key=lambda s: s.map(order) if s.name == "kpi" else s, kind="stable")
    return KpiResult(table.reset_index(drop=True), warnings, tuple(by))


@dataclass(frozen=True)
class Movement:
    """A KPI before and after a date: both values, their intervals and n, and whether the change exceeds noise."""

    kpi: str
    before: float
    before_interval: tuple[float, float]
    before_n: int
    after: float
    after_interval: tuple[float, float]
    after_n: int
    z: float

    @property
    def change(self) -> float:
        """The change (after minus before), in the KPI's unit."""
        return self.after - self.before


def movement(
    inputs: KpiInputs, kpi: str, date: dt.date, defs: KpiDefinitions | None = None, days: int | None = None
) -> Movement:
    """The KPI over the `days` before `date` against the `days` from it (default: all before, all after).

    `z` is the change over its standard error (from the two intervals' half-widths), so |z| > 2 is a
    change beyond noise at about 95%.
    """
    defs = defs or load_kpi_definitions()
    comparable = [k for k in KPIS if k != "cost_per_resolved_issue"]
    if kpi not in comparable:
        raise KpiError(f"kpi: {kpi!r} has no interval to compare; one of {comparable}")
    cut = pd.Timestamp(date)
    lo = cut - pd.Timedelta(days=days) if days else inputs.data_start
    hi = min(cut + pd.Timedelta(days=days), inputs.data_end) if days else inputs.data_end
    before = _window(inputs, lo, cut)
    after = _window(inputs, cut, hi)
    a, b = (_row(compute_kpis(x, defs).table, kpi) for x in (before, after))
    z_level = float(stats.norm.ppf(0.5 + defs.confidence / 2))
    se = math.hypot((a["upper"] - a["lower"]) / (2 * z_level), (b["upper"] - b["lower"]) / (2 * z_level))
    z = (b["value"] - a["value"]) / se if se > 0 else float("nan")
    return Movement(
        kpi, a["value"], (a["lower"], a["upper"]), int(a["n"]),
        b["value"], (b["lower"], b["upper"]), int(b["n"]), z,
    )  # fmt: skip


def _row(table: pd.DataFrame, kpi: str) -> dict[str, float]:
    row = table[table["kpi"] == kpi].iloc[0]
    return {c: float(row[c]) for c in ("n", "value", "lower", "upper")}


def _window(inputs: KpiInputs, start: pd.Timestamp, end: pd.Timestamp) -> KpiInputs:
    """The inputs seen as if the data ended at `end`, counting only rows from `start`.

    Each window applies its own exclusions: a ticket near `end` has no full repeat window; one from
    `start` may repeat an earlier one.
    """
    return KpiInputs(inputs.tickets, inputs.surveys, inputs.customers, inputs.data_start, end, start)
