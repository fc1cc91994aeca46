"""Exports with measured re-identification risk: k and l reached (checked against pyCANON), pseudonyms keyed,
direct identifiers gone, refusals that name what stops them, the singling-out measure on hand-computed cases,
and the command on the session's ingested world."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pycanon import anonymity
from typer.testing import CliRunner

from custintel.settings import Settings
from governance.export import (
    ExportError,
    ExportRefused,
    anonymise,
    build_hierarchy,
    classify_columns,
    effective_rules,
    hierarchy_kind,
    parse_source,
    privacy_key,
    pseudonymise,
    residual_risk,
    singling_out_risk,
    wilson,
    write_export,
)
from governance.policy import ExportPolicy, load_policy

KEY = b"test-key"
CLASSES = {
    "customer_key": "direct_identifier",
    "email": "direct_identifier",
    "birth_date": "quasi_identifier",
    "postcode": "quasi_identifier",
    "gender": "quasi_identifier",
    "diagnosis": "sensitive",
    "spend": "behavioural",
}


def people(n: int = 600, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "customer_key": [f"CK{i:08d}" for i in range(n)],
            "email": [f"person{i}@example.org" for i in range(n)],
            "birth_date": pd.Timestamp("1950-01-01") + pd.to_timedelta(rng.integers(0, 18000, n), unit="D"),
            "postcode": [f"{rng.integers(10, 30)}{rng.integers(100, 999)}" for _ in range(n)],
            "gender": rng.choice(["F", "M"], n),
            "diagnosis": rng.choice(["a", "b", "c", "d"], n),
            "spend": rng.gamma(2, 50, n).round(2),
        }
    )


QUASI = ["birth_date", "postcode", "gender"]


@pytest.mark.parametrize(("k", "l"), [(2, 1), (5, 2), (10, 3)])
def test_k_and_l_reached_and_match_pycanon(k: int, l: int) -> None:  # noqa: E741
    frame = people()
    rules = ExportPolicy(k=k, l=l, max_singling_out_risk=1.0)
    result = anonymise(frame, CLASSES, rules, KEY)
    data, report = result.data, result.report
    assert report["k"] >= k and report["l"]["diagnosis"] >= l
    # pyCANON, on the released rows, agrees with our figures
    assert anonymity.k_anonymity(data, QUASI) == report["k"]
    assert anonymity.l_diversity(data, QUASI, ["diagnosis"]) == report["l"]["diagnosis"]
    assert report["rows_out"] == len(data) == len(frame) - report["suppressed_rows"]
    assert report["suppressed_share"] <= rules.max_suppressed_share
    # behavioural columns go out as they are; quasi-identifiers only as generalised as needed
    kept = frame.set_index(pseudonymise(frame["customer_key"], KEY))["spend"]
    assert (data.set_index("customer_key")["spend"] == kept.loc[data["customer_key"]]).all()
    assert 0 <= report["information_loss"]["generalisation"] <= 1
    assert set(report["singling_out"]) == {"columns", "univariate", "multivariate"}


def test_the_search_finds_the_least_lossy_combination_that_fits() -> None:
    import itertools

    from governance.export import failing_rows, group_ids, hierarchy_kind, search_generalisation

    frame = people(400, seed=9)
    rules = ExportPolicy(k=4, l=2)
    hierarchies = [build_hierarchy(c, frame[c], hierarchy_kind(c, frame[c])) for c in QUASI]
    sensitive = {"diagnosis": pd.factorize(frame["diagnosis"])[0]}
    chosen = search_generalisation(hierarchies, sensitive, rules, len(frame))
    allowed = math.floor(rules.max_suppressed_share * len(frame))
    fitting = []
    for node in itertools.product(*(range(h.top + 1) for h in hierarchies)):
        codes = [h.codes[node[i]] for i, h in enumerate(hierarchies)]
        if failing_rows(group_ids(codes, len(frame)), sensitive, 4, 2).rows.sum() <= allowed:
            fitting.append(sum(h.losses[node[i]] for i, h in enumerate(hierarchies)))
    best = min(fitting)  # brute force over every combination of levels
    assert sum(h.losses[chosen.levels[h.column]] for h in hierarchies) == pytest.approx(best)
    assert chosen.suppressed.sum() <= allowed


def test_generalisation_is_minimal_given_the_search() -> None:
    # a frame already 5-anonymous needs no generalisation at all
    frame = pd.DataFrame({"zip": ["12345"] * 5 + ["54321"] * 5, "age": [30] * 5 + [40] * 5, "note": range(10)})
    classes = {"zip": "quasi_identifier", "age": "quasi_identifier", "note": "behavioural"}
    result = anonymise(frame, classes, ExportPolicy(k=5, l=1, max_singling_out_risk=1.0), KEY)
    assert result.report["generalisation"]["zip"]["level"] == 0
    assert result.report["generalisation"]["age"]["level"] == 0
    assert result.data["zip"].tolist() == frame["zip"].tolist()


def test_direct_identifiers_never_leave_and_pseudonyms_are_stable_and_keyed(tmp_path: Path) -> None:
    frame = people(200)
    rules = ExportPolicy(k=3, l=1, max_singling_out_risk=1.0)
    first = anonymise(frame, CLASSES, rules, KEY)
    again = anonymise(frame.sample(frac=1, random_state=1), CLASSES, rules, KEY)
    other_key = anonymise(frame, CLASSES, rules, b"another-key")
    write_export(tmp_path / "out", first)
    written = "".join(p.read_text(encoding="utf-8", errors="replace") for p in (tmp_path / "out").glob("*.*"))
    for raw in (*frame["email"], *frame["customer_key"]):
        assert raw not in written
    mapping = dict(zip(first.data["customer_key"], first.data["email"], strict=True))
    assert dict(zip(again.data["customer_key"], again.data["email"], strict=True)) == mapping  # stable
    assert set(other_key.data["customer_key"]).isdisjoint(first.data["customer_key"])  # keyed
    assert all(p.startswith("p_") and len(p) == 26 for p in first.data["customer_key"])
    assert first.data["customer_key"].is_unique  # one pseudonym per person
    dropped = anonymise(frame, CLASSES, rules.model_copy(update={"direct_identifiers": "drop"}), KEY)
    assert "email" not in dropped.data.columns and "customer_key" not in dropped.data.columns


def test_refused_when_rows_are_fewer_than_k() -> None:
    def no_key() -> bytes:
        raise AssertionError("a refused export must not create or read the pseudonym key")

    with pytest.raises(ExportRefused, match=r"only 3 rows: fewer than k=5"):
        anonymise(people(3), CLASSES, ExportPolicy(k=5), no_key)


def test_refused_naming_the_capped_quasi_identifier_that_stops_k() -> None:
    frame = people(300)
    rules = ExportPolicy(k=5, l=1, max_levels={"birth_date": 0, "postcode": 1}, max_singling_out_risk=1.0)
    with pytest.raises(ExportRefused) as refused:
        anonymise(frame, CLASSES, rules, KEY)
    message = str(refused.value)
    assert "k=5" in message and "stops k" in message
    assert "birth_date" in message and "export.max_levels" in message


def test_refused_naming_the_sensitive_column_that_stops_l() -> None:
    frame = people(300).assign(diagnosis="a")
    with pytest.raises(ExportRefused, match=r"sensitive column diagnosis .*stops l"):
        anonymise(frame, CLASSES, ExportPolicy(k=2, l=2), KEY)


def test_refused_when_singling_out_risk_is_above_the_policy() -> None:
    # exact spend values, when the attacker is assumed to know them, single people out
    rules = ExportPolicy(k=2, l=1, singling_out_classes=["quasi_identifier", "behavioural"], max_singling_out_risk=0.1)
    with pytest.raises(ExportRefused, match=r"singling-out risk 0\.\d+ .* above the policy's max_singling_out_risk"):
        anonymise(people(400), CLASSES, rules, KEY)


def test_classes_missing_unknown_and_globs() -> None:
    with pytest.raises(ExportError, match=r"column spend: no data class"):
        classify_columns(["email", "spend"], {"email": "direct_identifier"})
    with pytest.raises(ExportError, match=r"column email: unknown data class 'secret'"):
        classify_columns(["email"], {"email": "secret"})
    got = classify_columns(["email_record", "email"], {"email": "direct_identifier"}, {"*_record": "direct_identifier"})
    assert got == {"email_record": "direct_identifier", "email": "direct_identifier"}
    assert classify_columns(["gender"], {"gender": "quasi_identifier"}, {"gender": "sensitive"}) == {
        "gender": "sensitive"
    }


def test_hierarchies() -> None:
    dates = pd.Series(pd.to_datetime(["1987-03-14", "1987-03-20", "1987-05-02", "1989-11-02", "1991-01-01", None]))
    h = build_hierarchy("birth_date", dates, hierarchy_kind("birth_date", dates))
    assert h.names == ("value", "month", "year", "decade", "*")
    assert h.labels[1].tolist() == ["1987-03", "1987-03", "1987-05", "1989-11", "1991-01", "<missing>"]
    assert h.labels[3].tolist() == ["1980s"] * 4 + ["1990s", "<missing>"]
    assert hierarchy_kind("birth_date", pd.Series(["1977-05-06", "1980-01-31"])) == "date"
    ages = pd.Series(range(18, 91))
    h = build_hierarchy("age", ages, "number")
    # bins of 1 would split whole ages exactly as the values do: that level is left out
    assert h.names[1] == "bins of 2" and h.labels[1].iloc[:3].tolist() == ["[18, 20)", "[18, 20)", "[20, 22)"]
    widths = [
        float(label.split(", ")[1].rstrip(")")) - float(label[1:].split(",")[0])
        for label in (level.iloc[0] for level in h.labels[1:-1])
    ]
    assert widths == sorted(widths) and widths[-1] > 90 - 18  # growing, the last holds every value
    codes = pd.Series(["SW1A 1AA", "SW1A 2BB", "EC1 4XY"])
    h = build_hierarchy("postcode", codes, hierarchy_kind("postcode", codes))
    assert h.kind == "prefix" and h.names == ("value", "first 4", "*")  # levels that merge nothing are left out
    assert h.labels[1].tolist() == ["SW1A*", "SW1A*", "EC14*"]
    assert h.labels[-1].tolist() == ["*"] * 3
    assert h.losses[0] == 0 and h.losses[-1] == 1 and h.losses == tuple(sorted(h.losses))


def test_wilson_and_residual_risk_by_hand() -> None:
    # Wilson: rate (s + z²/2) / (n + z²), error z / (n + z²) * sqrt(s (n - s) / n + z² / 4), z = 1.959964
    z = 1.959963984540054
    rate, error = wilson(500, 100)
    assert rate == pytest.approx((100 + z * z / 2) / (500 + z * z))
    assert error == pytest.approx(z / (500 + z * z) * math.sqrt(100 * 400 / 500 + z * z / 4))
    # residual: (attack - control) / (1 - control)
    attack, control = wilson(500, 400)[0], wilson(500, 100)[0]
    value, (low, high) = residual_risk(500, 400, 100)
    assert value == pytest.approx((attack - control) / (1 - control))
    assert low < value < high
    assert residual_risk(500, 50, 50)[0] == 0.0  # no better than on people never released
    assert residual_risk(500, 10, 300)[0] == 0.0  # bounded below by 0


def test_singling_out_on_hand_made_cases() -> None:
    ori = pd.DataFrame({"a": ["x", "y", "z", "w"], "b": ["1", "2", "3", "4"]})
    control = pd.DataFrame({"a": ["p", "q", "r", "s"], "b": ["5", "6", "7", "8"]})
    # releasing the originals as they are: every rare value singles out one original, none a control record
    risk = singling_out_risk(ori, ori, control, "univariate", n_attacks=8)
    assert (risk.queries, risk.successes, risk.control_successes) == (8, 8, 0)
    assert risk.value == pytest.approx(residual_risk(8, 8, 0)[0]) and risk.value > 0.6
    # the control holds the same people: the queries say nothing about those released
    same = singling_out_risk(ori, ori, ori.copy(), "multivariate", n_attacks=8, n_cols=2)
    assert same.successes == same.control_successes and same.value == 0.0
    # a release where every value of a column is shared by two (distinct) records offers no univariate query
    shared = pd.DataFrame({"a": ["x", "x", "y", "y"], "b": ["1", "2", "1", "2"]})
    none = singling_out_risk(shared, shared, control, "univariate", n_attacks=8)
    assert none.queries == 0 and none.value == 0.0


def test_options_and_sources() -> None:
    policy = ExportPolicy(k=5, l=2)
    assert effective_rules(policy, 8, None).k == 8
    with pytest.raises(ExportError, match=r"--k 3: below the export policy's k=5"):
        effective_rules(policy, 3, None)
    assert parse_source("golden") == ("golden", None)
    assert parse_source("features:2025-09-01") == ("features", "2025-09-01")
    with pytest.raises(ExportError, match=r"SOURCE 'features:2025-13-01': the cutoff must be a date"):
        parse_source("features:2025-13-01")
    assert load_policy().export.k >= 2  # the shipped policy has an export section


def test_privacy_key_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(home=tmp_path / "home")
    monkeypatch.setenv("CUSTINTEL_PRIVACY_KEY", "from-env")
    assert privacy_key(settings) == b"from-env"
    monkeypatch.delenv("CUSTINTEL_PRIVACY_KEY")
    key = privacy_key(settings)
    path = settings.governance_dir / "privacy.key"
    assert len(key) == 64 and oct(path.stat().st_mode & 0o777) == "0o600"
    assert privacy_key(settings) == key  # the same key next time
    os.chmod(path, 0o644)
    with pytest.raises(ExportError, match=r"readable by others \(mode 0644\); chmod 600"):
        privacy_key(settings)


# ------------------------------------------------------------------------------------------------ CLI


@pytest.fixture
def export_home(home_copy: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The session world's home, with a policy that classes crm_accounts' columns (until the contracts do)."""
    policy = yaml.safe_load(Path("governance/policy.yaml").read_text(encoding="utf-8"))
    policy["export"]["classes"].update(
        {
            "crm_id": "direct_identifier",
            "address_line": "direct_identifier",
            "billing_account_id": "direct_identifier",
            "region": "quasi_identifier",
            "segment": "sensitive",
            "acquisition_channel": "behavioural",
            "created_at": "behavioural",
            "updated_at": "behavioural",
        }
    )
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy), encoding="utf-8")
    monkeypatch.setenv("CUSTINTEL_GOVERNANCE_POLICY", str(path))
    monkeypatch.setenv("CUSTINTEL_PRIVACY_KEY", "cli-test-key")
    return home_copy


def _trail(settings: Settings) -> list[dict]:
    path = settings.governance_dir / "audit_trail.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_cli_export_of_a_lake_table(export_home: Settings, tmp_path: Path) -> None:
    from features.lake import read_lake_table
    from flows.cli import app

    out = tmp_path / "vendor"
    home = ["--home", str(export_home.home_dir)]
    result = CliRunner().invoke(
        app, [*home, "export", "crm_accounts", "--out", str(out), "--sample", "1500", "--k", "20"]
    )
    assert result.exit_code == 0, result.output
    assert "exported" in result.output and "singling-out risk" in result.output
    report = json.loads((out / "report.json").read_text())
    data = pd.read_parquet(out / "data.parquet")
    assert report["k"] >= 20 and report["l"]["segment"] >= 2 and len(data) == report["rows_out"]
    quasi = [c for c, k in report["classes"].items() if k == "quasi_identifier"]
    assert anonymity.k_anonymity(data, quasi) == report["k"]
    assert anonymity.l_diversity(data, quasi, ["segment"]) == report["l"]["segment"]
    source = read_lake_table(export_home, "crm_accounts")
    text = (out / "data.csv").read_text()
    emails = source["email"].dropna()
    assert len(emails) and not any(e in text for e in emails)
    assert not any(c.startswith("_") for c in data.columns)  # lake lineage stays home
    entry = _trail(export_home)[-1]
    assert entry["action"] == "data_export" and entry["subject"] == "crm_accounts"
    assert entry["details"]["out"] == str(out.resolve()) and entry["details"]["k"] == report["k"]
    logged = json.dumps(entry)
    assert not any(e in logged for e in emails) and not any(c in logged for c in source["crm_id"])  # never values


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--k", "3"], "--k 3: below the export policy's k=5"),
        (["--columns", "email,shoe_size"], "--columns: no column shoe_size"),
        (["--k", "100", "--sample", "40"], "only 40 rows: fewer than k=100"),
        (["--columns", "email,phone,postcode,region,segment,birth_date,created_at,first_name,last_name,gender"], ""),
    ],
)
def test_cli_bad_input_and_refusals_write_nothing(
    export_home: Settings, tmp_path: Path, args: list[str], message: str
) -> None:
    from flows.cli import app

    out = tmp_path / "refused"
    before = _trail(export_home)
    policy = Path(os.environ["CUSTINTEL_GOVERNANCE_POLICY"])
    if not message:  # no generalisation allowed on birth_date: k cannot be reached, and the command says why
        document = yaml.safe_load(policy.read_text())
        document["export"]["max_levels"] = {"birth_date": 0}
        policy.write_text(yaml.safe_dump(document))
        message = "the quasi-identifier birth_date stops k"
    home = ["--home", str(export_home.home_dir)]
    result = CliRunner().invoke(app, [*home, "export", "crm_accounts", "--out", str(out), *args])
    assert result.exit_code == 1, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not out.exists() and _trail(export_home) == before


def test_univariate_singling_out_matches_anonymeter() -> None:
    # anonymeter 1.1.0 cannot be installed beside this stack (it pins numpy<1.27), so its figures on these frames
    # were taken once in a separate environment: SinglingOutEvaluator(ori, syn, control, n_attacks=500)
    # .evaluate("univariate") -> 110 successes, 71 on the control, risk 0.0905 (0.0371-0.1439). All rows are
    # distinct, so its merging of identical rows (which this module does not do) changes nothing here.
    rng = np.random.default_rng(5)

    def draw(n: int) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "a": rng.choice(list("abcdefgh"), n),
                "b": rng.choice(list("pqrstu"), n),
                "c": rng.choice(list("xyz"), n, p=[0.6, 0.3, 0.1]),
                "d": rng.choice([f"v{i}" for i in range(30)], n),
                "e": rng.integers(0, 1000, n).astype(float),
            }
        )

    ori, control = draw(2000).drop_duplicates(), draw(2000).drop_duplicates()
    control, ori = control.iloc[: len(ori)], ori.iloc[: len(control)]
    syn = pd.concat([ori.iloc[:1000], draw(2000).iloc[:1000]]).drop_duplicates()
    assert len(ori) == len(control) == len(syn) == 2000
    risk = singling_out_risk(ori, syn, control, "univariate", n_attacks=500)
    assert (risk.successes, risk.control_successes) == (110, 71)  # of the 266 queries that single out in syn
    assert risk.value == pytest.approx(0.0905038846782003, abs=1e-6)
    assert risk.ci == pytest.approx((0.037083888133389704, 0.1439238812230109), abs=1e-6)


@given(
    rows=st.lists(
        st.tuples(
            st.text(alphabet="abcdefghij@.", min_size=6, max_size=12),  # an email-like direct identifier
            st.integers(18, 90),
            st.sampled_from(["F", "M"]),
            st.sampled_from(["x", "y", "z"]),
        ),
        min_size=1,
        max_size=60,
    ),
    k=st.integers(2, 6),
)
@hypothesis_settings(max_examples=25)
def test_property_identifiers_never_leak_and_k_holds_or_refused(rows: list[tuple], k: int) -> None:
    frame = pd.DataFrame(rows, columns=["email", "age", "gender", "diagnosis"])
    classes = {"email": "direct_identifier", "age": "quasi_identifier", "gender": "quasi_identifier"}
    classes["diagnosis"] = "sensitive"
    rules = ExportPolicy(k=k, l=1, max_singling_out_risk=1.0, singling_out_attacks=20, max_suppressed_share=0.2)
    try:
        result = anonymise(frame, classes, rules, KEY)
    except ExportRefused:
        return  # refused: nothing to leak
    released = result.data
    assert set(released["email"]).isdisjoint(frame["email"])
    assert result.report["k"] >= k and anonymity.k_anonymity(released, ["age", "gender"]) >= k
    assert len(released) >= len(frame) * 0.8


def test_features_source_joins_every_set_stored_at_the_cutoff(tmp_path: Path) -> None:
    import datetime as dt

    import pyarrow as pa

    from features.featurestore.offline import write_partitions
    from features.featurestore.store import offline_root
    from governance.export import read_export_source

    settings = Settings(home=tmp_path / "home")
    rng = np.random.default_rng(2)
    keys = [f"CK{i:06d}" for i in range(200)]
    cutoff = dt.date(2025, 9, 1)
    sets = {
        "attributes@1": {"age_years": rng.integers(18, 90, 200).astype(float), "gender": rng.choice(["F", "M"], 200)},
        "relationship@1": {
            "tenure_days": rng.integers(0, 3000, 200).astype(float),
            "segment": rng.choice(["a", "b"], 200),
        },
    }
    for key, columns in sets.items():
        table = pa.table({"customer_key": keys, "as_of": [cutoff] * 200, **columns})
        write_partitions(offline_root(settings), key, {"name": key}, key, table, {cutoff.isoformat(): {"rows": 200}})
    source = read_export_source(settings, "features:2025-09-01")
    assert len(source.frame) == 200 and source.frame["customer_key"].is_unique
    assert {"age_years", "gender", "tenure_days", "segment"} <= set(source.frame.columns)
    classes = {"customer_key": "direct_identifier", "as_of": "behavioural", "age_years": "quasi_identifier"}
    classes |= {"gender": "quasi_identifier", "tenure_days": "behavioural", "segment": "sensitive"}
    result = anonymise(source.frame, classes, ExportPolicy(k=5, l=2, max_singling_out_risk=1.0), KEY)
    assert anonymity.k_anonymity(result.data, ["age_years", "gender"]) == result.report["k"] >= 5
    with pytest.raises(ExportError, match=r"no feature set is stored at 2025-10-01"):
        read_export_source(settings, "features:2025-10-01")
