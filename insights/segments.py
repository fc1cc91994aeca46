"""Behavioural segments: who customers are by what they do, not by demographics; stable across monthly rebuilds.

Five behaviours per customer at a cutoff, read from the offline feature store (`value@1`,
`service@1`, `digital@1`, `relationship@1`; `custintel features --as-of <date>` builds them):

- discount dependency: the share of the value received in 365 days that came as discounts
  (`discount_share_365d`);
- digital self-service share: sessions / (sessions + tickets) over 90 days (`sessions_90d`,
  `tickets_90d`); 0.5 for a customer with neither;
- contact intensity: tickets in 365 days (log1p);
- value: spend in 365 days (`monetary_365d`, log1p);
- tenure: years since the customer's first account (`tenure_days`, log1p).

They are standardised and clustered with KMeans: k is chosen by silhouette over `k_range` at the
first fit (seeded); each later month is refitted with the same k, starting from the previous
month's centres, and its segments matched to the previous ones (Hungarian on the centres), so a
segment keeps its id and name from month to month unless it truly moves. The adjusted Rand index
between consecutive months, on the customers present in both, says how stable the rebuild is.
Names are read from the centres (e.g. "discount-led, low digital").

The per-customer table is a feature set, `segments@1`, in the offline store
(`<home>/features/offline/segments/v1/as_of=<date>/data.parquet`): training reads it like any set
(add `segments@1` to a family's `feature_sets`), and access and erasure requests reach it through
the offline store's `PersonalStore` (`features.personal.OfflineFeatureStore`); retention expires its
cutoffs with the other sets. With `online=True` the newest month is also materialised in the online
store (`features.online` covers it for requests), where the decision service reads feature columns
(a policy signal can name `discount_dependency`, `digital_share` or `segment_id`). The fitted models
(scaler, centres, names; no personal data) and the stability report go to `<home>/insights/segments/`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score

from custintel.atomic_files import write_text_atomically
from custintel.settings import Settings
from features.featurestore.offline import OfflineStoreError, read_offline, write_partitions
from features.featurestore.store import materialize_online
from insights.errors import InsightsError

SEGMENT_SET = "segments@1"
BEHAVIOURS = ("discount_dependency", "digital_share", "contact_intensity", "value", "tenure")
# (source set, column) each behaviour is computed from
SOURCES = {
    "value@1": ("discount_share_365d", "monetary_365d"),
    "service@1": ("tickets_90d", "tickets_365d"),
    "digital@1": ("sessions_90d",),
    "relationship@1": ("tenure_days",),
}
# Words for a centre far above (+) or below (-) the population on each behaviour.
DESCRIPTORS = {
    "discount_dependency": ("discount-led", "full-price"),
    "digital_share": ("digital-first", "low digital"),
    "contact_intensity": ("frequent contact", "rarely in contact"),
    "value": ("high value", "low value"),
    "tenure": ("long-standing", "new"),
}
NAME_THRESHOLD = 0.35  # standard deviations a centre must sit from the mean for a word to name it
SILHOUETTE_SAMPLE = 4000


class SegmentError(InsightsError):
    """The segment inputs are missing or unusable; the message names what and why."""


def behaviours(features: pd.DataFrame) -> pd.DataFrame:
    """The five behaviours per customer from the offline feature columns (see the module docstring).

    `features` holds customer_key and the columns of `SOURCES`; missing counts are 0, a missing
    discount share 0 (no value received, no discount), a missing tenure the median.
    """
    needed = ["customer_key", *(c for cols in SOURCES.values() for c in cols)]
    missing = [c for c in needed if c not in features.columns]
    if missing:
        raise SegmentError(f"segment inputs: missing column(s) {missing}")
    f = features
    sessions = pd.to_numeric(f["sessions_90d"], errors="coerce").fillna(0).clip(lower=0)
    tickets90 = pd.to_numeric(f["tickets_90d"], errors="coerce").fillna(0).clip(lower=0)
    contacts = sessions + tickets90
    tenure = pd.to_numeric(f["tenure_days"], errors="coerce").clip(lower=0)
    out = pd.DataFrame(
        {
            "customer_key": f["customer_key"].astype(str).to_numpy(),
            "discount_dependency": pd.to_numeric(f["discount_share_365d"], errors="coerce").fillna(0).clip(0, 1),
            "digital_share": np.where(contacts > 0, sessions / contacts.where(contacts > 0, 1), 0.5),
            "contact_intensity": np.log1p(pd.to_numeric(f["tickets_365d"], errors="coerce").fillna(0).clip(lower=0)),
            "value": np.log1p(pd.to_numeric(f["monetary_365d"], errors="coerce").fillna(0).clip(lower=0)),
            "tenure": np.log1p(tenure.fillna(tenure.median() if tenure.notna().any() else 0) / 365.25),
        }
    )
    if out["customer_key"].duplicated().any():
        raise SegmentError("segment inputs: customer_key must be unique (one row per customer)")
    return out.reset_index(drop=True)


@dataclass
class SegmentModel:
    """A fitted segmentation: the scaler, the centres (standardised), their names, and how k was chosen."""

    as_of: str
    k: int
    mean: list[float]
    scale: list[float]
    centres: list[list[float]]
    names: list[str]
    silhouette: float
    silhouette_by_k: dict[int, float] = field(default_factory=dict)

    def standardise(self, frame: pd.DataFrame) -> np.ndarray:
        """The behaviours of `frame` on this model's scale."""
        return (frame[list(BEHAVIOURS)].to_numpy(dtype=float) - np.array(self.mean)) / np.array(self.scale)

    def distances(self, frame: pd.DataFrame) -> np.ndarray:
        """Squared distance of each customer to each centre (standardised), customers x k."""
        x = self.standardise(frame)
        return np.asarray(((x[:, None, :] - np.array(self.centres)[None, :, :]) ** 2).sum(axis=2))

    def assign(
        self, frame: pd.DataFrame, previous_ids: np.ndarray | None = None, stickiness: float = 0.0
    ) -> np.ndarray:
        """The nearest centre of each customer (segment ids 0..k-1).

        With `previous_ids` (last month's id, -1 for a customer new this month) a customer stays in
        their segment unless another centre is nearer by more than `stickiness` (0.2: 20% of the
        distance), so customers on a border do not flip back and forth between monthly rebuilds.
        """
        d = self.distances(frame)
        nearest = d.argmin(axis=1)
        if previous_ids is None or stickiness <= 0:
            return np.asarray(nearest)
        prev = np.asarray(previous_ids)
        known = (prev >= 0) & (prev < self.k)
        rows = np.flatnonzero(known)
        stay = np.zeros(len(d), dtype=bool)
        stay[rows] = np.sqrt(d[rows, prev[rows]]) <= (1 + stickiness) * np.sqrt(d[rows, nearest[rows]])
        return np.asarray(np.where(stay, prev, nearest))

    def to_json(self) -> dict[str, Any]:
        """The model as plain data (no personal data: centres and scales only)."""
        return {
            "as_of": self.as_of, "k": self.k, "behaviours": list(BEHAVIOURS), "mean": self.mean, "scale": self.scale,
            "centres": self.centres, "names": self.names, "silhouette": self.silhouette,
            "silhouette_by_k": {str(k): v for k, v in self.silhouette_by_k.items()},
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SegmentModel:
        """A model written by `to_json`."""
        return cls(
            str(data["as_of"]), int(data["k"]), list(data["mean"]), list(data["scale"]),
            [list(c) for c in data["centres"]], list(data["names"]), float(data["silhouette"]),
            {int(k): float(v) for k, v in data.get("silhouette_by_k", {}).items()},
        )  # fmt: skip


def name_segments(centres: np.ndarray) -> list[str]:
    """Readable names from standardised centres: the one or two behaviours each centre stands out on.

    A centre within NAME_THRESHOLD of the mean on everything is "mainstream"; names are made unique
    by adding the next most distinctive word.
    """
    words: list[list[str]] = []
    for centre in centres:
        order = np.argsort(-np.abs(centre))
        ranked = [
            DESCRIPTORS[BEHAVIOURS[j]][0 if centre[j] > 0 else 1] for j in order if abs(centre[j]) >= NAME_THRESHOLD
        ]
        words.append(ranked)
    names = [", ".join(w[:2]) or "mainstream" for w in words]
    for i, name in enumerate(names):
        clash = [j for j, other in enumerate(names) if other == name and j != i]
        if clash:
            extra = words[i][2:3]
            names[i] = ", ".join([*words[i][:2], *extra]) if extra else f"{name} ({i + 1})"
    # Still equal after a third word: number them.
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            names[i] = f"{name} ({seen[name]})"
    return names


def fit_segments(
    frame: pd.DataFrame,
    as_of: dt.date | str,
    k_range: Sequence[int] = (3, 4, 5, 6),
    seed: int = 0,
    previous: SegmentModel | None = None,
) -> SegmentModel:
    """Standardise the behaviours and fit KMeans.

    Without `previous`, k is the best silhouette over `k_range` (on a seeded sample). With it, the
    same k is refitted from the previous centres and each new segment matched to the previous one
    it is closest to, so ids (and names) carry over from month to month.
    """
    if len(frame) < 2 * max(k_range if previous is None else [previous.k]):
        raise SegmentError(f"segments at {as_of}: {len(frame)} customers are too few to cluster")
    raw = frame[list(BEHAVIOURS)].to_numpy(dtype=float)
    if not np.isfinite(raw).all():
        raise SegmentError(f"segments at {as_of}: a behaviour is not finite (check the feature build)")
    mean = raw.mean(axis=0)
    scale = raw.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    x = (raw - mean) / scale
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(x), min(len(x), SILHOUETTE_SAMPLE), replace=False)
    scores: dict[int, float] = {}
    if previous is None:
        fits = {}
        for k in k_range:
            km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
            fits[k] = km
            scores[k] = float(silhouette_score(x[sample], km.labels_[sample]))
        k = max(scores, key=lambda kk: (scores[kk], -kk))
        centres = fits[k].cluster_centers_
    else:
        k = previous.k
        start = (np.array(previous.centres) * np.array(previous.scale) + np.array(previous.mean) - mean) / scale
        km = KMeans(n_clusters=k, init=start, n_init=1, random_state=seed).fit(x)
        moved = km.cluster_centers_
        cost = ((moved[:, None, :] - start[None, :, :]) ** 2).sum(axis=2)
        rows, cols = linear_sum_assignment(cost)
        centres = np.empty_like(moved)
        centres[cols] = moved[rows]  # new centre `rows[i]` takes the id of previous segment `cols[i]`
        labels = ((x[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
        scores[k] = float(silhouette_score(x[sample], labels[sample])) if len(set(labels[sample])) > 1 else -1.0
    names = name_segments(centres)
    if previous is not None:
        # A segment keeps its name while its leading word still describes it; one that moved is renamed.
        kept = [p if _leading_word(p) in _words(n) else n for p, n in zip(previous.names, names, strict=True)]
        names = kept if len(set(kept)) == len(kept) else names
    return SegmentModel(
        str(as_of), int(k), mean.tolist(), scale.tolist(), centres.tolist(), names, scores[k], scores
    )  # fmt: skip


def _words(name: str) -> set[str]:
    return {w.strip() for w in name.split("(")[0].split(",")}


def _leading_word(name: str) -> str:
    return name.split("(")[0].split(",")[0].strip()


@dataclass
class MonthSegments:
    """One rebuild: the model fitted at the month, each customer's segment, and its stability."""

    as_of: dt.date
    model: SegmentModel
    table: pd.DataFrame  # customer_key, segment_id, segment, and the five behaviours
    ari_with_previous: float | None = None  # consecutive months' segments, on the customers in both
    ari_previous_model: float | None = None  # this month assigned by last month's model vs refitted
    common_customers: int = 0


def segment_months(
    behaviours_by_month: Mapping[dt.date, pd.DataFrame],
    k_range: Sequence[int] = (3, 4, 5, 6),
    seed: int = 0,
    previous: SegmentModel | None = None,
    previous_table: pd.DataFrame | None = None,
    stickiness: float = 0.2,
) -> list[MonthSegments]:
    """Fit month by month (oldest first): the first choosing k (unless `previous` is given), each next refitted.

    For each month with a month before it (in this run, or `previous` and its `previous_table` of
    customer_key and segment_id): the adjusted Rand index between its segments and the previous
    month's (customers present in both), and between its segments and what the previous month's
    model assigns them (how much the refit moved). A customer keeps last month's segment unless
    another is nearer by more than `stickiness` (see `SegmentModel.assign`; 0 for plain nearest centre).
    """
    out: list[MonthSegments] = []
    last_table = previous_table
    for day in sorted(behaviours_by_month):
        frame = behaviours_by_month[day]
        model = fit_segments(frame, day, k_range, seed, previous)
        prev_ids = None
        if last_table is not None:
            last_ids = last_table.set_index("customer_key")["segment_id"]
            prev_ids = frame["customer_key"].map(last_ids).fillna(-1).astype(int).to_numpy()
        ids = model.assign(frame, prev_ids, stickiness)
        table = frame.assign(segment_id=ids.astype("int32"), segment=np.array(model.names, dtype=object)[ids])
        month = MonthSegments(day, model, table[["customer_key", "segment_id", "segment", *BEHAVIOURS]])
        if last_table is not None:
            last = last_table.set_index("customer_key")["segment_id"]
            now = month.table.set_index("customer_key")["segment_id"]
            common = last.index.intersection(now.index)
            month.common_customers = len(common)
            if len(common):
                month.ari_with_previous = float(adjusted_rand_score(last[common], now[common]))
        if previous is not None:
            month.ari_previous_model = float(adjusted_rand_score(previous.assign(frame), ids))
        out.append(month)
        previous, last_table = model, month.table
    return out


def segment_profiles(month: MonthSegments) -> list[dict[str, Any]]:
    """Each segment's size, share and mean behaviours in their own units (for a page), largest first.

    Profile keys: discount_share, digital_share, tickets_365d, spend_365d, tenure_years.
    """
    t = month.table
    raw = pd.DataFrame(
        {
            "segment": t["segment"],
            "discount_share": t["discount_dependency"],
            "digital_share": t["digital_share"],
            "tickets_365d": np.expm1(t["contact_intensity"]),
            "spend_365d": np.expm1(t["value"]),
            "tenure_years": np.expm1(t["tenure"]),
        }
    )
    means = raw.groupby("segment").mean()
    sizes = t["segment"].value_counts()
    return [
        {
            "segment": str(name),
            "customers": int(sizes[name]),
            "share": float(sizes[name] / len(t)),
            "profile": {k: round(float(v), 4) for k, v in means.loc[name].items()},
        }
        for name in sizes.index
    ]


# --- I/O at the edges: the offline store in, the offline store and the insights folder out. ---


def segments_dir(settings: Settings) -> Path:
    """Where the fitted models and the stability report go: `<home>/insights/segments/`."""
    return settings.home_dir / "insights" / "segments"


def read_segment_inputs(settings: Settings, as_of: dt.date, exclude: Collection[str] = ()) -> pd.DataFrame:
    """The behaviours of every customer at a cutoff, from the offline feature store; `exclude`d keys left out.

    `exclude`: customers who may not be profiled (withdrew the profiling purpose): they get no segment.
    """
    root = settings.features_dir / "offline"
    merged: pd.DataFrame | None = None
    for set_key, columns in SOURCES.items():
        try:
            table = read_offline(root, set_key, [as_of])
        except OfflineStoreError as exc:
            raise SegmentError(f"segments at {as_of}: {exc}") from exc
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise SegmentError(f"segments at {as_of}: {set_key} has no column(s) {missing}")
        part = table.select(["customer_key", *columns]).to_pandas()
        merged = part if merged is None else merged.merge(part, on="customer_key", how="inner")
    assert merged is not None
    if exclude:
        merged = merged[~merged["customer_key"].astype(str).isin(set(exclude))].reset_index(drop=True)
    return behaviours(merged)


def latest_model(settings: Settings, before: dt.date | None = None) -> SegmentModel | None:
    """The newest fitted model (before a date), for the next month to start from; None if none."""
    folder = segments_dir(settings) / "models"
    found = sorted(folder.glob("as_of=*.json")) if folder.is_dir() else []
    days = [(dt.date.fromisoformat(p.stem.removeprefix("as_of=")), p) for p in found]
    days = [(d, p) for d, p in days if before is None or d < before]
    if not days:
        return None
    return SegmentModel.from_json(json.loads(days[-1][1].read_text(encoding="utf-8")))


def _definition() -> dict[str, Any]:
    return {
        "set": SEGMENT_SET,
        "behaviours": list(BEHAVIOURS),
        "sources": {k: list(v) for k, v in SOURCES.items()},
        "method": "standardised KMeans, k by silhouette at the first fit, refitted from the previous centres",
    }


def _digest() -> str:
    return hashlib.sha256(json.dumps(_definition(), sort_keys=True).encode()).hexdigest()[:16]


def write_segments(settings: Settings, months: Sequence[MonthSegments]) -> list[Path]:
    """The per-customer table as feature set `segments@1`; the models and the stability report beside.

    Returns the written partitions.
    """
    if not months:
        return []
    definition = _definition()
    digest = _digest()
    frames = [m.table.assign(as_of=m.as_of) for m in months]
    table = pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)
    stats = {m.as_of.isoformat(): {"rows": len(m.table), "k": m.model.k, "names": m.model.names} for m in months}
    classes = {"segment_id": "inferred", "segment": "inferred", **{b: "behavioural" for b in BEHAVIOURS}}
    root = settings.features_dir / "offline"
    written = write_partitions(root, SEGMENT_SET, definition, digest, table, stats, classes)
    folder = segments_dir(settings)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    for m in months:
        write_text_atomically(folder / "models" / f"as_of={m.as_of}.json", json.dumps(m.model.to_json(), indent=2))
    report_path = folder / "stability.json"
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else {}
    for m in months:
        report[m.as_of.isoformat()] = stability_row(m)
    write_text_atomically(report_path, json.dumps(dict(sorted(report.items())), indent=2))
    return written


def stability_row(month: MonthSegments) -> dict[str, Any]:
    """What the stability report records for one month (no personal data)."""
    sizes = month.table["segment"].value_counts()
    return {
        "k": month.model.k,
        "silhouette": round(month.model.silhouette, 4),
        "segments": {name: int(sizes.get(name, 0)) for name in month.model.names},
        "ari_with_previous": month.ari_with_previous,
        "ari_previous_model": month.ari_previous_model,
        "common_customers": month.common_customers,
    }


def build_segments(
    settings: Settings,
    as_of: Sequence[dt.date],
    k_range: Sequence[int] = (3, 4, 5, 6),
    seed: int = 0,
    stickiness: float = 0.2,
    online: bool = False,
    exclude: Collection[str] = (),
) -> list[MonthSegments]:
    """Read the behaviours at each cutoff, fit (from the stored model before the first one), write them all.

    `exclude`: customer keys that get no segment (who withdrew the profiling purpose).
    With `online`, the newest month also goes to the online store (SQLite, or Redis when set) as
    `segments@1`, where the serving runtime and the decision policies' signals read feature columns.
    """
    if not as_of:
        raise SegmentError("segments: no cutoff given")
    days = sorted(set(as_of))
    frames = {d: read_segment_inputs(settings, d, exclude) for d in days}
    previous = latest_model(settings, before=days[0])
    previous_table = None
    if previous is not None:
        try:
            stored = read_offline(
                settings.features_dir / "offline", SEGMENT_SET, [dt.date.fromisoformat(previous.as_of)]
            )
            previous_table = stored.select(["customer_key", "segment_id"]).to_pandas()
        except OfflineStoreError:
            previous_table = None  # the model is there but its table was expired: no ARI for the first month
    months = segment_months(frames, k_range, seed, previous, previous_table, stickiness)
    write_segments(settings, months)
    if online:
        latest = months[-1]
        table = pa.Table.from_pandas(latest.table.assign(as_of=latest.as_of), preserve_index=False)
        materialize_online(settings, SEGMENT_SET, table, {"digest": _digest(), "as_of": latest.as_of.isoformat()})
    return months


def customer_segments(settings: Settings, as_of: dt.date) -> dict[str, str]:
    """customer_key -> segment name at a stored cutoff (for the KPI `segment` cut)."""
    try:
        table = read_offline(settings.features_dir / "offline", SEGMENT_SET, [as_of])
    except OfflineStoreError as exc:
        raise SegmentError(str(exc)) from exc
    frame = table.select(["customer_key", "segment"]).to_pandas()
    return dict(zip(frame["customer_key"].astype(str), frame["segment"].astype(str), strict=True))
