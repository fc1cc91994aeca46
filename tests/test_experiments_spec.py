"""Experiment specs: validation naming the field, the hash, the registry's versions, launch, layers, tampering."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import pytest
import yaml

from experiments.errors import ExperimentError
from experiments.spec import (
    BUCKETS,
    OUTCOME_EVENTS,
    ExperimentRegistry,
    ExperimentSpec,
    example_spec_text,
    load_spec,
    parse_spec,
    spec_hash,
)
from serving.decision_log import EVENTS


def base(**changes: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": "offer-test",
        "hypothesis": "the offer lowers churn",
        "metrics": [
            {"name": "churn", "kind": "proportion", "column": "churned", "higher_is_better": False, "primary": True},
            {"name": "conversion", "kind": "proportion", "event": "conversion"},
        ],
        "arms": [
            {"name": "control", "share": 0.5, "suppress": ["retention_offer"]},
            {"name": "treatment", "share": 0.5},
        ],
        "actions": ["retention_offer"],
    }
    data.update(changes)
    return data


def spec(**changes: object) -> ExperimentSpec:
    return parse_spec(base(**changes))


def test_the_example_spec_validates_and_its_suppressed_action_is_in_the_policy() -> None:
    from decisions.policy import load_policy

    example = load_spec(example_spec_text())
    assert example.name == "retention-offer" and example.primary.name == "churn"
    assert not example.primary.higher_is_better and example.primary.column == "churned_in_window"
    assert [a.share for a in example.arms] == [0.5, 0.5]
    assert example.arm("control").suppress == ["retention_offer"]
    policy = load_policy(None)
    assert {a.name for a in policy.actions} >= set(example.actions)
    assert OUTCOME_EVENTS == EVENTS  # the spec's events are the decision log's


def test_the_hash_is_of_the_meaning_not_the_layout() -> None:
    a = spec()
    reordered = yaml.safe_dump(dict(reversed(list(base().items()))))
    b = load_spec("# a comment\n" + reordered)
    assert spec_hash(a) == spec_hash(b) and len(spec_hash(a)) == 64
    assert spec_hash(spec(traffic=0.5)) != spec_hash(a)
    assert spec(salt=None).arm_salt == "offer-test" and spec(salt="s1").arm_salt == "s1"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"name": "Offer Test"}, "name: String should match pattern"),
        (
            {"arms": [{"name": "control", "share": 0.5}, {"name": "treatment", "share": 0.4}]},
            "arms: the arms' shares sum to 0.9, not 1",
        ),
        ({"arms": [{"name": "control", "share": 1.0}]}, "arms: List should have at least 2 items"),
        ({"arms": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5}]}, "control: 'control' is not one of"),
        ({"arms": [{"name": "control", "share": 0.5}, {"name": "control", "share": 0.5}]}, "arm 'control' appears"),
        (
            {"arms": [{"name": "control", "share": 0.5, "suppress": ["cross_sell"]}, {"name": "t", "share": 0.5}]},
            "arms[0].suppress: 'cross_sell' is not among the experiment's actions",
        ),
        (
            {"arms": [{"name": "control", "share": 0.5, "colour": 1}, {"name": "t", "share": 0.5}]},
            "arms[0].colour: Extra inputs are not permitted",
        ),
        ({"traffic": 0}, "traffic: Input should be greater than 0"),
        ({"traffic": 1.5}, "traffic: Input should be less than or equal to 1"),
        ({"metrics": [{"name": "churn", "kind": "proportion", "column": "c"}]}, "metrics: exactly one metric must"),
        (
            {
                "metrics": [
                    {"name": "c", "kind": "proportion", "column": "c", "primary": True},
                    {"name": "d", "kind": "mean", "column": "d", "primary": True},
                ]
            },
            "exactly one metric must be primary: true; found 2 (c, d)",
        ),
        ({"metrics": [{"name": "c", "kind": "median", "column": "c", "primary": True}]}, "metrics[0].kind: Input"),
        (
            {"metrics": [{"name": "c", "kind": "ratio", "column": "c", "primary": True}]},
            "metrics[0].denominator: a ratio metric needs a denominator",
        ),
        (
            {"metrics": [{"name": "c", "kind": "mean", "column": "c", "denominator": "d", "primary": True}]},
            "metrics[0].denominator: only a ratio metric has one, not a mean",
        ),
        ({"metrics": [{"name": "c", "kind": "proportion", "primary": True}]}, "metrics[0].event: give an outcome"),
        (
            {"metrics": [{"name": "c", "kind": "proportion", "event": "purchase", "primary": True}]},
            "metrics[0].event: 'purchase' is not an outcome event",
        ),
        ({"stopping": {"mode": "bayesian"}}, "stopping.mode: Input should be 'fixed' or 'sequential'"),
        ({"hypothesis": ""}, "hypothesis: String should have at least 1 character"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_bad_specs_name_the_field(changes: dict[str, object], expected: str) -> None:
    with pytest.raises(ExperimentError) as caught:
        spec(**changes)
    assert expected in str(caught.value)
    assert str(caught.value).startswith("spec: ")


def test_unreadable_files_say_so(tmp_path: Path) -> None:
    with pytest.raises(ExperimentError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(ExperimentError, match="is not valid YAML"):
        load_spec(bad)
    bad.write_text("- a list\n", encoding="utf-8")
    with pytest.raises(ExperimentError, match="must hold a mapping"):
        load_spec(bad)


def test_register_is_idempotent_versions_drafts_and_refuses_after_launch(tmp_path: Path) -> None:
    registry = ExperimentRegistry(tmp_path / "experiments")
    first = registry.register(spec())
    assert (first.version, first.status, first.buckets) == (1, "draft", (0, 0))
    assert registry.register(spec()).version == 1  # same content, same version
    second = registry.register(spec(hypothesis="the offer lowers churn among persuadables"))
    assert second.version == 2 and second.hash != first.hash
    assert registry.get("offer-test", 1).hash == first.hash and registry.get("offer-test", 1).status == "superseded"
    assert (tmp_path / "experiments" / "offer-test" / "v2.yaml").is_file()
    record = json.loads((tmp_path / "experiments" / "offer-test" / "registry.json").read_text())
    assert [v["hash"] for v in record["versions"]] == [first.hash, second.hash]

    at = dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC)
    launched = registry.launch("offer-test", at=at)
    assert launched.status == "launched" and launched.launched_at == at and launched.buckets == (0, BUCKETS)
    assert registry.launch("offer-test").launched_at == at  # idempotent
    assert registry.register(spec(hypothesis="the offer lowers churn among persuadables")).version == 2
    with pytest.raises(ExperimentError) as caught:
        registry.register(spec(traffic=0.5))
    message = str(caught.value)
    assert message.startswith(f"spec: 'offer-test' is launched (v2, hash {second.hash[:12]}")
    assert "register a new experiment or stop this one" in message
    stopped = registry.stop("offer-test")
    assert stopped.status == "stopped"
    with pytest.raises(ExperimentError, match="is stopped"):
        registry.launch("offer-test")
    with pytest.raises(ExperimentError, match="no experiment 'nope'"):
        registry.get("nope")
    with pytest.raises(ExperimentError, match="has no version 7"):
        registry.get("offer-test", 7)
    assert [e.name for e in registry.list()] == ["offer-test"]


def test_a_spec_edited_after_launch_is_caught_by_its_hash(tmp_path: Path) -> None:
    registry = ExperimentRegistry(tmp_path)
    registered = registry.register(spec())
    registry.launch("offer-test")
    text = registered.path.read_text(encoding="utf-8")
    registered.path.write_text(text.replace("share: 0.5", "share: 0.50") + "# reviewed\n", encoding="utf-8")
    assert registry.get("offer-test").hash == registered.hash  # the same meaning: still the registered spec
    registered.path.write_text(text.replace("traffic: 1.0", "traffic: 0.9"), encoding="utf-8")
    with pytest.raises(ExperimentError) as caught:
        registry.get("offer-test")
    assert str(caught.value).startswith(f"spec: {registered.path} changed after launch: hash ")
    assert f"!= registered {registered.hash[:12]}" in str(caught.value)
    launched, problems = registry.launched()
    assert launched == [] and len(problems) == 1 and "changed after launch" in problems[0]
    registered.path.write_text(text.replace("traffic: 1.0", "traffic: 7"), encoding="utf-8")
    with pytest.raises(ExperimentError, match="changed after launch and no longer validates"):
        registry.get("offer-test")


def test_layers_give_disjoint_ranges_and_refuse_when_full(tmp_path: Path) -> None:
    registry = ExperimentRegistry(tmp_path)
    for name, traffic in (("a", 0.3), ("b", 0.5), ("c", 0.3), ("d", 0.2)):
        registry.register(spec(name=name, traffic=traffic, layer="offers"))
    registry.register(spec(name="other", traffic=1.0, layer="prices"))
    assert registry.launch("a").buckets == (0, 3000)
    assert registry.launch("b").buckets == (3000, 8000)
    with pytest.raises(ExperimentError) as caught:
        registry.launch("c")
    assert str(caught.value).startswith("traffic: layer 'offers' has no free range of 3000 buckets for 'c'")
    assert "largest free range 2000" in str(caught.value)
    assert registry.launch("d").buckets == (8000, 10000)
    assert registry.launch("other").buckets == (0, BUCKETS)  # another layer: its own positions
    registry.stop("a")  # its range returns to the layer
    assert registry.launch("c").buckets == (0, 3000)
    with pytest.raises(ExperimentError, match="never launched"):
        registry.register(spec(name="e", layer="offers")) and registry.stop("e")


def test_concurrent_launches_never_share_buckets(tmp_path: Path) -> None:
    registry = ExperimentRegistry(tmp_path)
    names = [f"x{i}" for i in range(8)]
    for name in names:
        registry.register(spec(name=name, traffic=0.1, layer="one"))
    errors: list[BaseException] = []

    def launch(name: str) -> None:
        try:
            ExperimentRegistry(tmp_path).launch(name)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=launch, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    ranges = sorted(e.buckets for e in registry.list())
    assert all(b[1] - b[0] == 1000 for b in ranges)
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:], strict=False))


def test_to_metrics_gives_the_analysis_its_columns() -> None:
    analysis = pytest.importorskip("experiments.analysis", reason="experiments.analysis lands with helper stats")
    ratio = {"name": "clicks", "kind": "ratio", "event": "click", "denominator": "impression"}
    metrics = spec(metrics=[*base()["metrics"], ratio]).to_metrics()  # type: ignore[misc]
    assert all(isinstance(m, analysis.Metric) for m in metrics)
    churn, conversion, clicks = metrics
    assert (churn.column, churn.higher_is_better, churn.primary) == ("churned", False, True)
    assert (conversion.column, conversion.kind, conversion.primary) == ("conversion", "proportion", False)
    assert (clicks.column, clicks.denominator) == ("click", "impression")
