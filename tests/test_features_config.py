"""The feature configuration (bring your own tables) and the data-quality rules."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from features.featurestore.config import FeatureConfigError, load_feature_config
from features.featurestore.definitions import Feature, feature_sets
from features.featurestore.quality import profile_columns, quality_problems

DEFAULT = yaml.safe_load(
    (Path(__file__).parents[1] / "features" / "featurestore" / "features.yaml").read_text(encoding="utf-8")
)


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "features.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


def test_the_shipped_config_loads_and_names_every_source() -> None:
    config = load_feature_config()
    assert set(config.sources) == {
        "accounts", "profiles", "products", "transactions", "tickets", "surveys", "web", "offers",
    }  # fmt: skip
    assert config.sources["web"][0].values["event_type"] == {"session_start": "session"}
    assert config.labels.churn_horizons_days == [30, 90]


def _broken(change: dict) -> dict:
    data = yaml.safe_load(yaml.safe_dump(DEFAULT))
    for path, value in change.items():
        node = data
        *parents, last = path.split(".")
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"sources.web.0.columns.browser": "ua"},
            r"sources.web table 'digital_events': unknown column\(s\) \['browser'\]",
        ),
        ({"sources.transactions.0.columns.amount": None}, r"required column\(s\) \['amount'\] are not mapped"),
        ({"sources.tickets.0.ref": None}, "'ref' and 'record_table' are required"),
        ({"sources.web.0.values.device": {"x": "y"}}, r"values given for unmapped column\(s\) \['device'\]"),
        ({"sources.accounts": None, "sources.transactions": None}, "sources.accounts or sources.transactions"),
        ({"exclude_features": ["plan", "plan"]}, "exclude_features lists a feature twice"),
        ({"quality.collapsed": "ignore"}, "quality.collapsed"),
        ({"ticket_channels": ["phone", "phone"]}, "ticket_channels lists a code twice"),
        ({"key_pages": ["pricing page"]}, "codes must be letters"),
        ({"labels.churn_horizons_days": [0]}, "churn_horizons_days must be positive"),
        ({"labls": {}}, "labls"),
        ({"sources.weblogs": []}, "weblogs"),
    ],
)
def test_a_broken_config_names_the_field_and_the_reason(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(FeatureConfigError, match=message):
        load_feature_config(_write(tmp_path, _broken(change)))


def test_unreadable_configs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FeatureConfigError, match="does not exist"):
        load_feature_config(tmp_path / "missing.yaml")
    with pytest.raises(FeatureConfigError, match="not valid YAML"):
        load_feature_config(_write(tmp_path, "sources: [unclosed"))
    with pytest.raises(FeatureConfigError, match="must hold a mapping"):
        load_feature_config(_write(tmp_path, "- a list"))


def test_codes_from_the_config_become_features_and_change_the_digest(tmp_path: Path) -> None:
    config = load_feature_config(_write(tmp_path, _broken({"key_pages": ["pricing", "checkout"]})))
    digital = {fs.name: fs for fs in feature_sets(config)}["digital"]
    names = {f.name for f in digital.features}
    assert {"page_views_checkout_30d", "page_views_checkout_90d"} <= names
    assert "page_views_upgrade_30d" not in names
    shipped = {fs.name: fs for fs in feature_sets(load_feature_config())}["digital"]
    assert digital.digest != shipped.digest


COUNT = Feature("tickets_90d", "", "", dtype="BIGINT", fill=0, lower=0, data_class="behavioural")
RATE = Feature("fcr_rate_365d", "", "", lower=0, upper=1, data_class="behavioural")
SEGMENT = Feature("segment", "", "", dtype="VARCHAR", data_class="inferred")


def _problems(columns: dict[str, list], min_rows: int = 3) -> list[str]:
    table = pa.table(columns)
    features = [f for f in (COUNT, RATE, SEGMENT) if f.name in columns]
    profile = profile_columns(table, list(columns))
    return quality_problems("service@1", features, profile, table.num_rows, min_rows)


def test_healthy_features_pass_and_are_profiled() -> None:
    assert _problems({"tickets_90d": [0, 2, 1], "fcr_rate_365d": [0.5, None, 1.0], "segment": ["a", "b", None]}) == []
    profile = profile_columns(pa.table({"x": [1.0, None, 3.0], "s": ["a", "a", "b"]}), ["x", "s"])
    assert profile["x"] == {"null_rate": 0.333333, "distinct": 2, "min": 1.0, "max": 3.0, "mean": 2.0, "non_finite": 0}
    assert profile["s"] == {"null_rate": 0.0, "distinct": 2, "most_common": "a"}


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"tickets_90d": [0, -2, 1]}, r"service@1.tickets_90d: impossible values below 0 \(min -2\)"),
        ({"fcr_rate_365d": [0.5, 1.5, 0.2]}, r"service@1.fcr_rate_365d: impossible values above 1 \(max 1.5\)"),
        ({"fcr_rate_365d": [0.5, float("nan"), 0.2]}, "service@1.fcr_rate_365d: 1 values are not finite"),
        ({"tickets_90d": [0, 0, 0]}, r"service@1.tickets_90d: collapsed, every non-empty value of 3 is the same \(0\)"),
        ({"segment": [None, None, None]}, "service@1.segment: collapsed, every one of 3 values is empty"),
        ({"segment": ["a", None, "a"]}, r"service@1.segment: collapsed, every non-empty value of 3 is the same \(a\)"),
    ],
)
def test_impossible_and_collapsed_features_are_named(columns: dict[str, list], message: str) -> None:
    problems = _problems(columns)
    assert len(problems) == 1
    assert re.search(message, problems[0]), problems


def test_small_builds_are_not_called_collapsed() -> None:
    assert _problems({"tickets_90d": [0, 0, 0]}, min_rows=100) == []
    assert _problems({"tickets_90d": [0, -1, 0]}, min_rows=100) != []  # bounds hold at any size
