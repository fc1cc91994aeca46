"""Consent in training: a customer who withdrew the family's purpose before a cutoff gives no row at that cutoff.

Pure: the consent history (`features.consent.read_consent_history`: customer_key, purpose,
status, recorded_at) and rows in, the kept rows and what was left out out. Per row, the
customer's latest decision for the purpose recorded strictly before the row's cutoff decides
(on a tie a withdrawal beats a grant, as serving decides): `withdrawn` leaves the row out, a
later re-grant brings the customer back, and no decision at all follows the policy's
`unknown` (allow: kept; exclude: left out). The filter runs on the loaded table, before the
model sees it, so the training, validation, test, calibration and monitoring-reference rows
and everything the run logs from them are the kept rows only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from models.splits import LabelledTable, SplitError

if TYPE_CHECKING:
    from models.recommendation import Interactions

UNKNOWN_CHOICES = ("allow", "exclude")


@dataclass(frozen=True)
class ConsentRule:
    """The purpose a family's use needs, what no recorded decision means, and the consent history."""

    purpose: str
    unknown: str  # allow | exclude
    history: pd.DataFrame  # customer_key, purpose, status, recorded_at

    def __post_init__(self) -> None:
        if self.unknown not in UNKNOWN_CHOICES:
            raise ValueError(f"unknown_consent.{self.purpose}: {self.unknown!r}; choose allow or exclude")


@dataclass
class ConsentExclusion:
    """What the consent filter left out of one unit's rows, per stage."""

    purpose: str
    unknown: str
    rows: dict[str, int] = field(default_factory=dict)  # stage -> rows left out
    customers: dict[str, int] = field(default_factory=dict)  # stage -> distinct customers left out
    withdrawn_rows: int = 0
    unknown_rows: int = 0
    excluded_customers: int = 0  # distinct over all stages

    @property
    def total_rows(self) -> int:
        """Rows left out over all stages."""
        return self.withdrawn_rows + self.unknown_rows

    def summary(self) -> str:
        """One line for the run, the card and the gate."""
        per_stage = ", ".join(f"{s} {n:,}" for s, n in self.rows.items() if n) or "none"
        return (
            f"{self.purpose}: {self.total_rows:,} row(s) of {self.excluded_customers:,} customer(s) excluded "
            f"({self.withdrawn_rows:,} withdrawn before the cutoff, {self.unknown_rows:,} with no decision, "
            f"unknown consent: {self.unknown}); per stage: {per_stage}"
        )

    def metrics(self) -> dict[str, float]:
        """consent_excluded_rows_<stage>, consent_excluded_customers_<stage> and the totals."""
        out = {f"consent_excluded_rows_{s}": float(n) for s, n in self.rows.items()}
        out |= {f"consent_excluded_customers_{s}": float(n) for s, n in self.customers.items()}
        out |= {
            "consent_excluded_rows": float(self.total_rows),
            "consent_excluded_customers": float(self.excluded_customers),
            "consent_excluded_rows_withdrawn": float(self.withdrawn_rows),
            "consent_excluded_rows_unknown": float(self.unknown_rows),
        }
        return out

    def params(self) -> dict[str, str]:
        """The run's params: whether and how consent was applied."""
        return {"consent": f"applied: {self.purpose}", "consent_purpose": self.purpose,
                "consent_unknown": self.unknown}  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the run's lineage record, which the card and the gate read)."""
        return {
            "applied": True,
            "purpose": self.purpose,
            "unknown": self.unknown,
            "rows": dict(self.rows),
            "customers": dict(self.customers),
            "withdrawn_rows": self.withdrawn_rows,
            "unknown_rows": self.unknown_rows,
            "excluded_rows": self.total_rows,
            "excluded_customers": self.excluded_customers,
            "summary": self.summary(),
        }


def not_applied(reason: str) -> dict[str, Any]:
    """The lineage record of a run consent could not be applied to (a user's own table has no consent data)."""
    return {"applied": False, "summary": f"not applied: {reason}"}


def status_before(keys: pd.Series, cutoffs: pd.Series, history: pd.DataFrame, purpose: str) -> pd.Series:
    """Per row, the customer's latest decision for `purpose` recorded before the row's cutoff (None: no decision).

    A cutoff is a day: an event counts when recorded before that day's midnight (naive UTC). Among
    events with the same time a withdrawal wins.
    """
    out = pd.Series(None, index=keys.index, dtype=object)
    events = history[history["purpose"].astype(str).str.lower() == purpose]
    if events.empty or keys.empty:
        return out
    events = (
        events.assign(
            customer_key=events["customer_key"].astype(str),
            recorded_at=pd.to_datetime(events["recorded_at"]).astype("datetime64[ns]"),
            withdrawn=events["status"].astype(str).str.lower() != "granted",  # anything but a grant withdraws
        )
        .groupby(["customer_key", "recorded_at"], as_index=False)
        .agg(withdrawn=("withdrawn", "max"))
        .sort_values("recorded_at")
    )
    left = pd.DataFrame(
        {
            "customer_key": keys.astype(str).to_numpy(),
            "cutoff": pd.to_datetime(cutoffs).astype("datetime64[ns]").to_numpy(),
            "position": np.arange(len(keys)),
        }
    ).sort_values("cutoff")
    joined = pd.merge_asof(
        left, events, left_on="cutoff", right_on="recorded_at", by="customer_key",
        direction="backward", allow_exact_matches=False,
    ).sort_values("position")  # fmt: skip
    status = joined["withdrawn"].map({True: "withdrawn", False: "granted"})
    out[:] = status.astype(object).where(status.notna(), None).to_numpy()
    return out


def exclude_withdrawn(
    frame: pd.DataFrame,
    history: pd.DataFrame,
    purpose: str,
    as_of_col: str,
    unknown: str,
    stage: pd.Series | None = None,
    key_col: str = "customer_key",
) -> tuple[pd.DataFrame, ConsentExclusion]:
    """The rows whose customer had not withdrawn `purpose` before the row's cutoff, and what was left out per stage.

    `stage` (aligned with `frame`) names each row's stage for the counts; without it every row is 'all'.
    """
    rule = ConsentRule(purpose, unknown, history)
    keep, report = _keep(frame[key_col], frame[as_of_col], stage, rule)
    return frame[keep], report


def _reasons(keys: pd.Series, cutoffs: pd.Series, rule: ConsentRule) -> tuple[np.ndarray, np.ndarray]:
    """Per row: left out for a withdrawal, left out for no decision (when the policy excludes unknown consent)."""
    status = status_before(keys, cutoffs, rule.history, rule.purpose)
    withdrawn = (status == "withdrawn").to_numpy()
    unknown = status.isna().to_numpy() if rule.unknown == "exclude" else np.zeros(len(status), dtype=bool)
    return withdrawn, unknown


def _keep(
    keys: pd.Series, cutoffs: pd.Series, stage: pd.Series | None, rule: ConsentRule
) -> tuple[np.ndarray, ConsentExclusion]:
    withdrawn, unknown = _reasons(keys, cutoffs, rule)
    dropped = withdrawn | unknown
    stages = stage.astype(str).to_numpy() if stage is not None else np.full(len(keys), "all", dtype=object)
    report = ConsentExclusion(rule.purpose, rule.unknown)
    key_values = keys.astype(str).to_numpy()
    for name in dict.fromkeys(stages):
        here = dropped & (stages == name)
        report.rows[str(name)] = int(here.sum())
        report.customers[str(name)] = int(pd.unique(key_values[here]).size)
    report.withdrawn_rows, report.unknown_rows = int(withdrawn.sum()), int(unknown.sum())
    report.excluded_customers = int(pd.unique(key_values[dropped]).size)
    return ~dropped, report


def filter_table(table: LabelledTable, rule: ConsentRule) -> tuple[LabelledTable, ConsentExclusion]:
    """A labelled table without the rows consent excludes (every stage); the rows need an id and a cutoff column."""
    if table.snapshot is None:
        raise ValueError("consent is applied per cutoff: the table has no cutoff (snapshot) column")
    keep, report = _keep(table.frame[table.id_column], table.frame[table.snapshot], table.stage, rule)
    kept = dataclasses.replace(table, frame=table.frame[keep], stage=table.stage[keep])
    _refuse_emptied(report, set(table.stage.astype(str)) - set(kept.stage.astype(str)) - {"unused"})
    return kept, report


def _refuse_emptied(report: ConsentExclusion, emptied: set[str]) -> None:
    """A stage consent left without a row cannot train or test a model: say so in one line."""
    if emptied:
        raise SplitError(
            f"consent ({report.purpose}): every row of the {', '.join(sorted(emptied))} stage(s) was excluded "
            f"({report.withdrawn_rows:,} withdrawn, {report.unknown_rows:,} with no decision); the governance "
            f"policy's unknown_consent.{report.purpose} is {report.unknown}"
        )


def filter_interactions(
    parts: Iterable[tuple[Interactions, dt.date, str, str]], rule: ConsentRule
) -> tuple[list[Interactions], ConsentExclusion]:
    """Each cutoff's interactions without the users consent excludes at that cutoff.

    `parts`: (interactions, cutoff, stage of the history rows, stage of the held-out rows).
    """
    report = ConsentExclusion(rule.purpose, rule.unknown)
    kept: list[Interactions] = []
    excluded: set[str] = set()
    for data, cutoff, history_stage, holdout_stage in parts:
        users = pd.Series(pd.unique(pd.concat([data.history["user"], data.holdout["user"]]).astype(str)))
        withdrawn, unknown = _reasons(users, pd.Series(pd.Timestamp(cutoff), index=users.index), rule)
        reason = pd.Series(np.where(withdrawn, "withdrawn", np.where(unknown, "unknown", "")), index=users.to_numpy())
        gone = reason[reason != ""]
        excluded |= set(gone.index)
        for name, frame in ((history_stage, data.history), (holdout_stage, data.holdout)):
            why = frame["user"].astype(str).map(gone)
            out = why.notna().to_numpy()
            report.rows[name] = report.rows.get(name, 0) + int(out.sum())
            report.customers[name] = report.customers.get(name, 0) + int(frame["user"][out].nunique())
            report.withdrawn_rows += int((why == "withdrawn").sum())
            report.unknown_rows += int((why == "unknown").sum())
        history_out = data.history["user"].astype(str).isin(gone.index).to_numpy()
        holdout_out = data.holdout["user"].astype(str).isin(gone.index).to_numpy()
        segments = data.segments
        if segments is not None:
            segments = segments[~segments.index.astype(str).isin(gone.index)]
        kept.append(
            dataclasses.replace(
                data, history=data.history[~history_out], holdout=data.holdout[~holdout_out], segments=segments
            )
        )
    report.excluded_customers = len(excluded)
    _refuse_emptied(
        report,
        {
            name
            for part in kept
            for name, frame in (("history", part.history), ("held-out", part.holdout))
            if frame.empty
        },
    )
    return kept, report
