"""Emerging issues: a ticket topic whose share rises beyond noise against its own history.

Tickets are counted per topic in 7-day periods ending at `as_of` (the latest period is
the last seven days, so an outbreak is seen within a week of its start, not at the next
calendar week's end). For each tested period and topic the count is compared with the
topic's share over the `history` periods before it: a one-sided binomial test (the
baseline share smoothed by one pseudo-ticket, so a topic that never occurred can still
alert), Bonferroni-corrected across the topics tested in that period, and an alert also
needs a practical rise: at least `min_count` tickets and `min_ratio` times the baseline
share. Alerts carry masked example tickets.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from insights.errors import InsightsError
from insights.text.mask import mask_texts, prepare_texts

PERIOD_DAYS = 7
_WORD = re.compile(r"[a-z][a-z']{2,}")


@dataclass(frozen=True)
class EmergingIssue:
    """One alert: a topic whose share in one period rose beyond its history."""

    topic: int
    label: str
    period_start: dt.date
    period_end: dt.date  # exclusive
    count: int
    total: int
    share: float
    baseline: float
    p_value: float  # one-sided binomial, Bonferroni-corrected across the topics of the period
    examples: tuple[str, ...]  # masked; the tickets that carry most of the rising terms
    rising_terms: tuple[str, ...] = ()  # words far more frequent in this period's tickets of the topic


@dataclass
class EmergingReport:
    """What was tested and what alerted."""

    as_of: dt.date
    periods_tested: int
    topic_periods_tested: int
    alerts: list[EmergingIssue] = field(default_factory=list)

    @property
    def alert_rate(self) -> float:
        """Alerts per topic-period tested (the false-positive rate on a world without outbreaks)."""
        return len(self.alerts) / self.topic_periods_tested if self.topic_periods_tested else 0.0


def detect_emerging(
    opened_at: Sequence[object] | pd.Series,
    topics: Sequence[int] | np.ndarray,
    texts: Sequence[object],
    labels: Sequence[str],
    *,
    as_of: dt.date | None = None,
    periods: int = 1,
    history: int = 12,
    alpha: float = 0.01,
    min_count: int = 5,
    min_ratio: float = 1.5,
    examples: int = 3,
) -> EmergingReport:
    """Alerts for the last `periods` 7-day periods before `as_of` (default: the day after the last ticket).

    `topics[i]` is ticket i's topic index (negative: unassigned, not tested); `labels[k]` names
    topic k. Tickets whose opening time does not parse are left out.
    """
    if not 0 < alpha < 1:
        raise InsightsError(f"alpha: {alpha} is not a probability")
    if periods < 1 or history < 1:
        raise InsightsError("periods and history: at least one period each")
    opened = pd.to_datetime(pd.Series(list(opened_at)), errors="coerce", utc=True).dt.tz_localize(None)
    topic = np.asarray(topics, dtype=np.int64)
    if not len(opened) == topic.size == len(texts):
        raise InsightsError(f"opened_at, topics, texts: {len(opened)}, {topic.size}, {len(texts)} rows")
    ok = opened.notna().to_numpy()
    if as_of is None:
        if not ok.any():
            return EmergingReport(dt.date.today(), 0, 0)
        as_of = (opened[ok].max() + pd.Timedelta(days=1)).date()
    end = np.datetime64(as_of, "D")
    t = opened.to_numpy(dtype="datetime64[ns]")
    age = np.where(ok, (end - t.astype("datetime64[D]")).astype("timedelta64[D]").astype(np.int64), -1)
    period = np.where(age > 0, (age - 1) // PERIOD_DAYS, -1)  # 0 = the seven days before as_of
    n_topics = len(labels)
    span = periods + history
    use = (period >= 0) & (period < span) & ok
    counts = np.zeros((span, n_topics + 1), dtype=np.int64)  # last column: unassigned
    col = np.where((topic >= 0) & (topic < n_topics), topic, n_topics)
    np.add.at(counts, (period[use], col[use]), 1)
    totals = counts.sum(axis=1)
    report = EmergingReport(as_of, 0, 0)
    for p in range(periods):
        hist = counts[p + 1 : p + 1 + history]
        if totals[p] == 0 or hist.sum() == 0:
            continue
        report.periods_tested += 1
        base = (hist[:, :n_topics].sum(axis=0) + 1.0) / (hist.sum() + 2.0)
        x = counts[p, :n_topics]
        n = int(totals[p])
        p_raw = stats.binom.sf(x - 1, n, base)
        p_adj = np.minimum(p_raw * n_topics, 1.0)
        report.topic_periods_tested += n_topics
        share = x / n
        fire = (p_adj < alpha) & (x >= min_count) & (share >= min_ratio * base)
        start = end - np.timedelta64((p + 1) * PERIOD_DAYS, "D")
        for k in np.flatnonzero(fire):
            now = np.flatnonzero(use & (period == p) & (col == k))
            before = np.flatnonzero(use & (period > p) & (period <= p + history) & (col == k))
            masked_now = mask_texts(prepare_texts([texts[int(i)] for i in now]).texts)
            masked_before = mask_texts(prepare_texts([texts[int(i)] for i in before]).texts)
            rising, rows = _what_is_new(masked_now, masked_before, examples)
            shown = [masked_now[i] for i in rows]
            report.alerts.append(
                EmergingIssue(
                    topic=int(k),
                    label=str(labels[int(k)]),
                    period_start=start.astype(dt.date),
                    period_end=(start + np.timedelta64(PERIOD_DAYS, "D")).astype(dt.date),
                    count=int(x[k]),
                    total=n,
                    share=float(share[k]),
                    baseline=float(base[k]),
                    p_value=float(p_adj[k]),
                    examples=tuple(shown),
                    rising_terms=rising,
                )
            )
    report.alerts.sort(key=lambda a: (a.period_start, a.p_value))
    return report


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in ENGLISH_STOP_WORDS}


def _what_is_new(now: list[str], before: list[str], examples: int) -> tuple[tuple[str, ...], list[int]]:
    """The words that rose in a topic's recent tickets, and the recent tickets that carry most of them.

    An alerted topic may be an old topic absorbing a new problem (an app update that breaks login
    lands in "update my details"): its label then says little, the rising words and these
    examples say what is new.
    """
    words_now = [_words(t) for t in now]
    df_now = Counter(w for ws in words_now for w in ws)
    df_before = Counter(w for t in before for w in _words(t))
    n_now, n_before = len(now), len(before)

    def lift(w: str) -> float:
        return ((df_now[w] + 0.5) / (n_now + 1)) / ((df_before[w] + 0.5) / (n_before + 1))

    rising = sorted((w for w, c in df_now.items() if c >= 3 and lift(w) >= 2), key=lift, reverse=True)[:6]
    score = [len(ws & set(rising)) for ws in words_now]
    rows = sorted(range(n_now), key=lambda i: (-score[i], i))[:examples]
    return tuple(rising), rows
