"""Behavioural segments: behaviours from feature columns, k by silhouette, readable names, stable monthly rebuilds,
stored as a feature set that training reads and access and erasure requests reach."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from custintel.personal import Subject
from custintel.settings import Settings
from features.featurestore.offline import read_training_table, write_partitions
from features.personal import OfflineFeatureStore
from insights.segments import (
    BEHAVIOURS,
    SEGMENT_SET,
    SOURCES,
    SegmentError,
    behaviours,
    build_segments,
    customer_segments,
    fit_segments,
    latest_model,
    name_segments,
    segment_months,
    segments_dir,
)

# Three planted groups (raw feature columns as the offline store holds them):
#   bargain hunters: a third of their value as discounts, mostly digital, few tickets, low spend, new;
#   phone-first:     no discounts, few sessions, many tickets, mid spend, mid tenure;
#   loyal big spenders: no discounts, digital, few tickets, high spend, long tenure.
GROUPS = {
    "bargain": dict(discount_share_365d=0.35, sessions_90d=30, tickets_90d=1, tickets_365d=1, monetary_365d=150,
                    tenure_days=200),
    "phone": dict(discount_share_365d=0.0, sessions_90d=2, tickets_90d=6, tickets_365d=14, monetary_365d=600,
                  tenure_days=1500),
    "loyal": dict(discount_share_365d=0.0, sessions_90d=25, tickets_90d=0, tickets_365d=1, monetary_365d=4000,
                  tenure_days=4000),
}  # fmt: skip


def _features(n_per_group: int = 120, seed: int = 0, noise: float = 0.1) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for g, (name, centre) in enumerate(GROUPS.items()):
        for i in range(n_per_group):
            row = {"customer_key": f"{name}-{i:03d}"}
            for column, value in centre.items():
                jitter = float(np.exp(rng.normal(0, noise)))
                row[column] = min(value * jitter, 1.0) if column == "discount_share_365d" else value * jitter
            rows.append(row)
            truth.append(g)
    frame = pd.DataFrame(rows)
    return frame, pd.Series(truth, index=frame["customer_key"])


def test_behaviours_from_feature_columns() -> None:
    raw = pd.DataFrame(
        {
            "customer_key": ["a", "b"],
            "discount_share_365d": [0.25, None],
            "monetary_365d": [99.0, None],
            "sessions_90d": [3, 0],
            "tickets_90d": [1, 0],
            "tickets_365d": [4, None],
            "tenure_days": [365.25, None],
        }
    )
    b = behaviours(raw).set_index("customer_key")
    assert b.loc["a", "discount_dependency"] == 0.25 and b.loc["b", "discount_dependency"] == 0.0
    assert b.loc["a", "digital_share"] == pytest.approx(0.75)
    assert b.loc["b", "digital_share"] == 0.5  # no contact at all: neither digital nor assisted
    assert b.loc["a", "contact_intensity"] == pytest.approx(np.log(5))
    assert b.loc["a", "value"] == pytest.approx(np.log(100))
    assert b.loc["a", "tenure"] == pytest.approx(np.log(2)) and b.loc["b", "tenure"] == pytest.approx(np.log(2))
    with pytest.raises(SegmentError, match=r"missing column\(s\) \['tenure_days'\]"):
        behaviours(raw.drop(columns="tenure_days"))


def test_k_by_silhouette_finds_the_planted_groups_with_readable_names() -> None:
    frame, truth = _features()
    model = fit_segments(behaviours(frame), "2025-01-01", k_range=(2, 3, 4, 5), seed=1)
    assert model.k == 3 and model.silhouette == max(model.silhouette_by_k.values())
    ids = model.assign(behaviours(frame))
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(truth.to_numpy(), ids) == pytest.approx(1.0)
    name_of = {truth.index[i].split("-")[0]: model.names[ids[i]] for i in range(len(ids))}
    assert "discount-led" in name_of["bargain"]
    assert "frequent contact" in name_of["phone"] or "low digital" in name_of["phone"]
    assert "high value" in name_of["loyal"] or "long-standing" in name_of["loyal"]
    assert len(set(model.names)) == 3


def test_name_segments() -> None:
    centres = np.array([[1.2, -0.8, 0, 0, 0], [0, 0, 0.1, -0.2, 0.1], [0, 0, 0, 0.1, -1.0], [0, 0, 0, 0.05, -0.9]])
    names = name_segments(centres)
    assert names[0] == "discount-led, low digital"
    assert names[1] == "mainstream"
    assert names[2] != names[3] and names[2].startswith("new") and names[3].startswith("new")


def test_monthly_rebuilds_are_stable_and_keep_ids_and_names() -> None:
    jan, truth = _features(seed=1)
    feb, _ = _features(seed=2)  # the same customers, their behaviour moved a little
    feb = feb.iloc[10:]  # ten customers gone
    months = segment_months(
        {dt.date(2025, 2, 1): behaviours(feb), dt.date(2025, 1, 1): behaviours(jan)}, k_range=(2, 3, 4), seed=3
    )
    assert [m.as_of for m in months] == [dt.date(2025, 1, 1), dt.date(2025, 2, 1)]
    first, second = months
    assert first.ari_with_previous is None
    assert second.common_customers == len(feb)
    assert second.ari_with_previous == pytest.approx(1.0)
    assert second.ari_previous_model == pytest.approx(1.0)
    assert second.model.k == first.model.k and second.model.names == first.model.names
    a = first.table.set_index("customer_key")["segment_id"]
    b = second.table.set_index("customer_key")["segment_id"]
    assert (a[b.index] == b).all(), "a customer whose behaviour barely moved keeps the same segment id"


def test_too_few_customers_or_broken_values_are_named() -> None:
    frame, _ = _features(n_per_group=2)
    with pytest.raises(SegmentError, match="too few to cluster"):
        fit_segments(behaviours(frame), "2025-01-01", k_range=(3, 4, 5, 6))
    big, _ = _features()
    b = behaviours(big)
    b.loc[0, "value"] = np.inf
    with pytest.raises(SegmentError, match="not finite"):
        fit_segments(b, "2025-01-01")


def _store_features(settings: Settings, days: list[dt.date]) -> None:
    """Write the source sets' partitions as a feature build would (only the columns segments read)."""
    root = settings.features_dir / "offline"
    for set_key, columns in SOURCES.items():
        frames = []
        for n, day in enumerate(days):
            frame, _ = _features(seed=10 + n)
            frames.append(frame[["customer_key", *columns]].assign(as_of=day))
        table = pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)
        stats = {d.isoformat(): {"rows": len(frames[0])} for d in days}
        write_partitions(root, set_key, {"set": set_key}, "test", table, stats)


def test_build_segments_writes_a_feature_set_models_and_stability(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    days = [dt.date(2025, 1, 1), dt.date(2025, 2, 1), dt.date(2025, 3, 1)]
    _store_features(settings, days)
    months = build_segments(settings, days[:2], k_range=(2, 3, 4), seed=0)
    assert len(months) == 2
    folder = settings.features_dir / "offline" / "segments" / "v1"
    assert sorted(p.name for p in folder.glob("as_of=*")) == ["as_of=2025-01-01", "as_of=2025-02-01"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["data_classes"]["segment"] == "inferred"
    # A later rebuild starts from the stored model of the month before: same ids and names.
    (third,) = build_segments(settings, days[2:], k_range=(2, 3, 4), seed=0)
    assert third.model.names == months[-1].model.names and third.ari_previous_model == pytest.approx(1.0)
    stability = json.loads((segments_dir(settings) / "stability.json").read_text())
    assert list(stability) == [d.isoformat() for d in days]
    assert stability["2025-02-01"]["ari_with_previous"] == pytest.approx(1.0)
    assert sum(stability["2025-03-01"]["segments"].values()) == 360
    assert stability["2025-03-01"]["ari_with_previous"] == pytest.approx(1.0)  # against the stored February
    assert latest_model(settings) is not None and latest_model(settings, before=days[0]) is None
    assert "customer_key" not in (segments_dir(settings) / "models" / "as_of=2025-03-01.json").read_text()
    # Training reads it like any feature set; the KPI cut reads customer -> segment.
    labels = pa.Table.from_pandas(
        pd.DataFrame(
            {"customer_key": ["bargain-000", "loyal-001"], "as_of": [days[0]] * 2, "churn_30d": [True, False]}
        ),
        preserve_index=False,
    )
    write_partitions(settings.features_dir / "offline", "labels@1", {}, "l", labels, {days[0].isoformat(): {}})
    joined = read_training_table(settings.features_dir / "offline", [SEGMENT_SET], "labels@1", [days[0]])
    assert set(BEHAVIOURS) | {"segment", "segment_id"} <= set(joined.column_names) and joined.num_rows == 2
    mapping = customer_segments(settings, days[0])
    assert len(mapping) == 360 and "discount-led" in mapping["bargain-000"]


def test_segments_are_found_and_erased_by_the_offline_store(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    days = [dt.date(2025, 1, 1)]
    _store_features(settings, days)
    build_segments(settings, days, k_range=(3,), seed=0)
    store = OfflineFeatureStore(settings)
    subject = Subject(request="bargain-007", customer_keys=("bargain-007",))
    held = [h for h in store.find([subject]) if "segments" in h.place]
    assert len(held) == 1 and held[0].rows[0]["segment"]
    store.erase([subject])
    assert not [h for h in store.find([subject]) if "segments" in h.place]
    assert "bargain-007" not in customer_segments(settings, days[0])
    manifest = json.loads((settings.features_dir / "offline" / "segments" / "v1" / "manifest.json").read_text())
    assert manifest["partitions"]["2025-01-01"]["rows"] == 359


def test_missing_feature_partitions_are_named(tmp_path: Path) -> None:
    with pytest.raises(SegmentError, match="no partition of value@1"):
        build_segments(Settings(home=tmp_path / "home"), [dt.date(2025, 1, 1)])
    with pytest.raises(SegmentError, match="no cutoff"):
        build_segments(Settings(home=tmp_path / "home"), [])


def test_stickiness_keeps_border_customers_in_their_segment() -> None:
    from insights.segments import SegmentModel

    model = SegmentModel("2025-01-01", 2, [0.0] * 5, [1.0] * 5, [[0.0] * 5, [2.0, 0, 0, 0, 0]], ["a", "b"], 0.5)
    frame = pd.DataFrame({"customer_key": ["x", "y", "z"], **{b: [0.0] * 3 for b in BEHAVIOURS}})
    frame["discount_dependency"] = [1.05, 1.15, 1.05]  # nearer b; x and y were in a, z is new this month
    previous = np.array([0, 0, -1])
    assert model.assign(frame).tolist() == [1, 1, 1]
    # x: 1.05 <= 1.2 x 0.95 stays in a; y: 1.15 > 1.2 x 0.85 moves; z has no past and takes the nearest.
    assert model.assign(frame, previous, stickiness=0.2).tolist() == [0, 1, 1]
    assert model.assign(frame, previous, stickiness=0.0).tolist() == [1, 1, 1]


def test_the_newest_month_goes_online_for_serving_and_the_policies(tmp_path: Path) -> None:
    from features.featurestore.store import open_online_store

    settings = Settings(home=tmp_path / "home")
    days = [dt.date(2025, 1, 1), dt.date(2025, 2, 1)]
    _store_features(settings, days)
    months = build_segments(settings, days, k_range=(3,), seed=0, online=True)
    with open_online_store(settings) as store:
        assert store.sets()[SEGMENT_SET]["as_of"] == "2025-02-01"
        doc = store.lookup("bargain-003", [SEGMENT_SET])
    assert doc is not None
    row = doc[SEGMENT_SET]
    expected = months[-1].table.set_index("customer_key").loc["bargain-003"]
    assert row["segment"] == expected["segment"] and row["discount_dependency"] == pytest.approx(
        expected["discount_dependency"]
    )


def test_segment_profiles_in_their_own_units() -> None:
    from insights.segments import segment_profiles

    frame, _ = _features(noise=0.0)
    (month,) = segment_months({dt.date(2025, 1, 1): behaviours(frame)}, k_range=(3,), seed=0)
    profiles = segment_profiles(month)
    assert [p["customers"] for p in profiles] == [120, 120, 120]
    assert sum(p["share"] for p in profiles) == pytest.approx(1.0)
    bargain = next(p for p in profiles if "discount-led" in p["segment"])["profile"]
    assert bargain["discount_share"] == pytest.approx(0.35) and bargain["spend_365d"] == pytest.approx(150)
    assert bargain["tickets_365d"] == pytest.approx(1) and bargain["tenure_years"] == pytest.approx(
        200 / 365.25, abs=1e-4
    )
