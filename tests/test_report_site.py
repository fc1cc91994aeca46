"""The governance reviewers' static site: what it shows, that it is self-contained, and that a real browser agrees."""

from __future__ import annotations

import html
import json
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit

import numpy as np
import pytest
from matplotlib.figure import Figure

from custintel.settings import Settings
from governance.site import (
    GATE_DECISION_TAG,
    GATE_POLICY_TAG,
    GATE_REASONS_TAG,
    GATE_RESULT_TAG,
    SiteError,
    build_site,
    find_site_problems,
    make_site_server,
    read_decisions,
    read_registry,
    safe_name,
    serve_site,
)

CHURN = "custintel-churn"
PROPENSITY = "custintel-propensity"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
POLICY_HASH = "ab" * 32
FAIRNESS_REASON = "fairness: equalized_odds_difference by gender = 0.21 > 0.10 (groups F vs M)"


@dataclass(frozen=True)
class GovernedHome:
    """A home with a registry, a decision log and a card, plus the decision ids written."""

    settings: Settings
    run_id: str
    promoted_id: str
    blocked_id: str
    waived_id: str


def _decision(decision_id: str, version: str, result: str, **extra: object) -> str:
    record = {
        "id": decision_id,
        "time": f"2026-11-2{version}T07:00:00+00:00",
        "actor": "gatekeeper@ci",
        "action": "promote",
        "model": CHURN,
        "version": version,
        "result": result,
        "reasons": [],
        "checks": [{"name": "fairness", "passed": result == "promoted", "details": []}],
        "policy_hash": POLICY_HASH,
        "policy_version": "1",
        "waiver": None,
        "champion_before": None,
        "champion_after": version if result != "blocked" else None,
        "run_id": "r",
        "card": None,
        "reviewer_note": "an unknown extra key",
    }
    record.update(extra)
    return json.dumps(record)


def _write_card(folder: Path) -> None:
    folder.mkdir(parents=True)
    fig = Figure(figsize=(4, 3), dpi=80)
    ax = fig.add_subplot()
    ax.bar(["F", "M"], [0.31, 0.10], color=["#b3261e", "#1e7d32"])
    ax.set_title("false positive rate by gender")
    fig.savefig(folder / "fairness_gender.png")
    (folder / "audit.json").write_text(json.dumps({"gender": {"equalized_odds_difference": 0.21}}), encoding="utf-8")
    (folder / "card.md").write_text("# custintel-churn v2\n", encoding="utf-8")
    (folder / "card.html").write_text(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<title>custintel-churn v2</title></head><body><h1>Model card</h1>"
        "<table><tr><th>group</th><th>FPR</th></tr><tr><td>F</td><td>0.31</td></tr></table>"
        "<img src='fairness_gender.png' alt='fairness by gender'></body></html>",
        encoding="utf-8",
    )


@pytest.fixture(scope="module")
def governed(tmp_path_factory: pytest.TempPathFactory) -> GovernedHome:
    """A real SQLite registry: one sklearn model logged once, registered twice, gate tags and aliases set."""
    import mlflow.sklearn
    from mlflow import MlflowClient
    from sklearn.linear_model import LogisticRegression

    settings = Settings(home=tmp_path_factory.mktemp("governed") / "home")
    settings.home_dir.mkdir(parents=True)
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    experiment = client.create_experiment("site-test", artifact_location=settings.artifacts_dir.as_uri())
    run = client.create_run(experiment)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 3))
    model = LogisticRegression().fit(features, features[:, 0] > 0)
    saved = tmp_path_factory.mktemp("saved") / "model"
    mlflow.sklearn.save_model(model, saved, pip_requirements=["scikit-learn"])
    client.log_artifacts(run.info.run_id, str(saved), "model")
    client.set_terminated(run.info.run_id)
    source = f"{run.info.artifact_uri}/model"
    for name in (CHURN, PROPENSITY):
        client.create_registered_model(name)
    for _ in range(2):
        client.create_model_version(CHURN, source, run_id=run.info.run_id)
    client.create_model_version(PROPENSITY, source, run_id=run.info.run_id)
    client.set_registered_model_alias(CHURN, "champion", "1")
    client.set_registered_model_alias(CHURN, "challenger", "2")

    promoted_id, blocked_id, waived_id = "a1" * 16, "b2" * 16, "c3" * 16
    tags = {
        "1": {GATE_RESULT_TAG: "promoted", GATE_REASONS_TAG: "[]", GATE_DECISION_TAG: promoted_id},
        "2": {GATE_RESULT_TAG: "waived", GATE_REASONS_TAG: json.dumps([FAIRNESS_REASON]), GATE_DECISION_TAG: waived_id},
    }
    for version, version_tags in tags.items():
        for key, value in {**version_tags, GATE_POLICY_TAG: POLICY_HASH}.items():
            client.set_model_version_tag(CHURN, version, key, value)

    settings.governance_dir.mkdir(parents=True)
    lines = [
        _decision(promoted_id, "1", "promoted", champion_after="1"),
        _decision(blocked_id, "2", "blocked", reasons=[FAIRNESS_REASON], champion_before="1"),
        '{"id": "broken", "time": 2026-11-23',
        _decision(
            waived_id,
            "2",
            "waived",
            reasons=[FAIRNESS_REASON],
            waiver={"approver": "dana.reviewer@risk", "reason": "<b>Q4 retention push</b>, retrain by 2027-01"},
            champion_before="1",
            champion_after="2",
            card=f"cards/{CHURN}/2/card.html",
        ),
    ]
    (settings.governance_dir / "decisions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _write_card(settings.governance_dir / "cards" / CHURN / "2")
    return GovernedHome(settings, run.info.run_id, promoted_id, blocked_id, waived_id)


@pytest.fixture(scope="module")
def site(governed: GovernedHome) -> Path:
    index = build_site(governed.settings)
    assert index == governed.settings.site_dir / "index.html"
    return index.parent


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("name", "expected"),
    [("custintel-churn", "custintel-churn"), ("3", "3"), ("v1.2_b", "v1.2_b")],
)
def test_safe_name_keeps_plain_names(name: str, expected: str) -> None:
    assert safe_name(name) == expected


@pytest.mark.parametrize("name", ["../etc", "a/b", "team churn", "..", ".hidden", "ünï", "x" * 300, "a\\b"])
def test_safe_name_makes_unsafe_names_plain_and_distinct(name: str) -> None:
    made = safe_name(name)
    assert made.replace("-", "").replace("_", "").replace(".", "").isalnum() and made.isascii()
    assert not made.startswith(".") and len(made) <= 101
    assert made != safe_name(name + "!")


def test_read_registry_sees_versions_aliases_and_tags(governed: GovernedHome) -> None:
    models = {m.name: m for m in read_registry(governed.settings)}
    churn = models[CHURN]
    assert [v.version for v in churn.versions] == ["2", "1"]
    assert churn.aliases == {"champion": "1", "challenger": "2"}
    assert {v.version: v.aliases for v in churn.versions} == {"2": ["challenger"], "1": ["champion"]}
    assert churn.versions[0].gate_result == "waived" and churn.versions[0].gate_reasons == [FAIRNESS_REASON]
    assert churn.versions[1].run_id == governed.run_id and churn.versions[1].created is not None
    assert [v.version for v in models[PROPENSITY].versions] == ["1"] and models[PROPENSITY].aliases == {}


def test_read_decisions_keeps_malformed_lines(governed: GovernedHome, tmp_path: Path) -> None:
    entries = read_decisions(governed.settings.governance_dir / "decisions.jsonl")
    assert [e.line for e in entries] == [1, 2, 3, 4]
    assert entries[2].record is None and entries[2].error and "not JSON" in entries[2].error
    assert entries[3].get("result") == "waived" and entries[3].get("reviewer_note") == "an unknown extra key"
    assert read_decisions(tmp_path / "absent.jsonl") == []
    odd = tmp_path / "odd.jsonl"
    odd.write_text('[1, 2]\n\n{"model": "m"}\n', encoding="utf-8")
    assert [(e.line, e.error) for e in read_decisions(odd)] == [(1, "not a JSON object"), (3, None)]


def test_index_lists_every_model_with_aliases_and_latest_decision(site: Path) -> None:
    index = _text(site / "index.html")
    for expected in (CHURN, PROPENSITY, f'href="models/{CHURN}.html"', 'href="decisions.html"', "No drift report yet."):
        assert expected in index
    assert "<td>1</td><td>2</td><td>—</td>" in index  # champion, challenger, previous of the churn model
    assert '<span class="badge waived">waived</span> v2' in index  # its latest decision
    assert "no decision yet" in index  # the propensity model's
    assert "4 entries, 1 malformed" in index


def test_model_page_shows_versions_gate_results_waivers_and_card(site: Path, governed: GovernedHome) -> None:
    page = _text(site / "models" / f"{CHURN}.html")
    for expected in (
        governed.run_id,
        "@champion",
        "@challenger",
        '<span class="badge waived">waived</span>',
        '<span class="badge promoted">promoted</span>',
        '<span class="badge blocked">blocked</span>',
        html.escape(FAIRNESS_REASON),
        "WAIVED by dana.reviewer@risk",
        "&lt;b&gt;Q4 retention push&lt;/b&gt;",  # escaped, not markup
        f'href="../cards/{CHURN}/2/card.html"',
        f'src="../cards/{CHURN}/2/fairness_gender.png"',
        f'href="../cards/{CHURN}/2/audit.json"',
        f'href="../decisions.html#d-{governed.waived_id}"',
    ):
        assert expected in page, expected
    assert "<b>Q4" not in page
    # Decisions newest first: the waiver (line 4) before the block (line 2) before the promotion (line 1).
    positions = [page.index(f'id="d-{i}"') for i in (governed.waived_id, governed.blocked_id, governed.promoted_id)]
    assert positions == sorted(positions)
    assert "No registered version." not in page
    assert (site / "cards" / CHURN / "2" / "fairness_gender.png").stat().st_size > 1000


def test_decision_log_page_is_newest_first_and_shows_the_malformed_line(site: Path, governed: GovernedHome) -> None:
    page = _text(site / "decisions.html")
    assert page.index(governed.waived_id) < page.index("line 3: malformed entry") < page.index(governed.blocked_id)
    assert "{&quot;id&quot;: &quot;broken&quot;" in page
    assert f'href="models/{CHURN}.html"' in page and 'class="waived-row"' in page


def test_site_is_self_contained(site: Path) -> None:
    assert find_site_problems(site) == []
    icon = (site / "favicon.ico").read_bytes()  # asked for by pages naming no icon (the cards); a 404 otherwise
    assert icon[:4] == b"\x00\x00\x01\x00" and b"PNG" in icon[:40]
    for path in site.rglob("*"):
        if path.suffix in {".html", ".json", ".md"}:
            text = _text(path)
            assert "http://" not in text and "https://" not in text, path
    # Every local href/src, checked again with a parser independent of the site module's own checker.
    for page in site.rglob("*.html"):
        collector = _RefCollector()
        collector.feed(_text(page))
        assert collector.refs, page
        for ref in collector.refs:
            if ref.startswith("data:"):
                continue
            target = urlsplit(ref).path
            assert (page.parent / target).resolve().is_file() if target else True, (page, ref)


def test_find_site_problems_reports_each_kind(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "ok.html").write_text("<p id='here'>x</p>", encoding="utf-8")
    (tmp_path / "sub" / "page.html").write_text(
        "<a href='../ok.html#here'>fine</a><a href='#top'>self, missing</a><a href='missing.html'>x</a>"
        "<img src='https://cdn.example/x.png'><script src='//cdn.example/x.js'></script>"
        "<a href='../../outside.html'>x</a><a href='../ok.html#nowhere'>x</a><a href='mailto:a@b'>mail</a>",
        encoding="utf-8",
    )
    problems = find_site_problems(tmp_path)
    assert len(problems) == 6, problems
    assert any("outside reference https://cdn.example" in p for p in problems)
    assert any("outside reference //cdn.example" in p for p in problems)
    assert any("missing.html does not exist" in p for p in problems)
    assert any("points outside the site" in p for p in problems)
    assert sum("names no element" in p for p in problems) == 2


def test_rebuild_replaces_the_site_and_lists_drift_reports(governed: GovernedHome, tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(governed.settings.home_dir, home)
    settings = Settings(home=home)
    build_site(settings)
    stale = settings.site_dir / "stale.html"
    stale.write_text("old", encoding="utf-8")
    monitoring = settings.reports_dir / "monitoring"
    monitoring.mkdir(parents=True)
    (monitoring / "churn-drift-2026-11-23.html").write_text(
        "<!doctype html><title>drift</title><p>drift</p>", encoding="utf-8"
    )
    shutil.rmtree(settings.governance_dir / "cards")
    index = _text(build_site(settings))
    assert not stale.exists() and not (settings.site_dir / "cards").exists()
    assert 'href="drift/churn-drift-2026-11-23.html"' in index and "No drift report yet." not in index
    assert (settings.site_dir / "drift" / "churn-drift-2026-11-23.html").is_file()
    assert "No model card yet." in _text(settings.site_dir / "models" / f"{CHURN}.html")
    assert [p.name for p in home.iterdir() if p.name.startswith(".site")] == []  # no staging folder left
    assert find_site_problems(settings.site_dir) == []


def test_empty_home_builds_an_empty_site_without_creating_a_registry(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    index = _text(build_site(settings))
    assert "No registered model yet." in index and "No drift report yet." in index
    assert "No gate decision yet." in _text(settings.site_dir / "decisions.html")
    assert not (settings.home_dir / "mlflow.db").exists()


def test_models_named_only_by_the_log_or_cards_get_a_page(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    settings.governance_dir.mkdir(parents=True)
    (settings.governance_dir / "decisions.jsonl").write_text(_decision("d" * 32, "1", "blocked") + "\n")
    (settings.governance_dir / "cards" / "retired model" / "4").mkdir(parents=True)
    build_site(settings)
    assert "not in the registry" in _text(settings.site_dir / "index.html")
    assert (settings.site_dir / "models" / f"{CHURN}.html").is_file()
    assert (settings.site_dir / "models" / f"{safe_name('retired model')}.html").is_file()
    assert find_site_problems(settings.site_dir) == []


def test_unreachable_registry_is_a_site_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    settings = Settings(home=tmp_path / "home", mlflow_tracking_uri="http://reader:secret@127.0.0.1:1")
    with pytest.raises(SiteError, match="cannot read the MLflow registry") as raised:
        build_site(settings)
    assert "secret" not in str(raised.value) and "reader:***@" in str(raised.value)
    assert not settings.site_dir.exists()


def test_server_serves_the_site_and_refuses_a_missing_one(site: Path, governed: GovernedHome, tmp_path: Path) -> None:
    with _serving(site) as base:
        with urllib.request.urlopen(base + f"models/{CHURN}.html", timeout=10) as response:
            assert response.status == 200 and CHURN in response.read().decode()
    with pytest.raises(SiteError, match="run `custintel report` first"):
        serve_site(Settings(home=tmp_path / "nothing"))


# --- the real browser ---------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_site_in_headless_chromium(site: Path, tmp_path: Path) -> None:
    """Crawl every same-origin page from the index in Debian's chromium: loads, images, a clean console."""
    with _serving(site) as base, chromium(tmp_path) as driver:
        pages, resources, images, severe = _crawl(driver, base)
        shots = []
        for page in (f"models/{CHURN}.html", "decisions.html"):
            driver.get(base + page)
            shots.append(tmp_path / f"{Path(page).stem}.png")
            assert driver.save_screenshot(str(shots[-1]))
        # The console check can fail: a missing page is a SEVERE entry.
        driver.get_log("browser")
        driver.get(base + "no-such-page.html")
        control = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]

    assert {base, base + "index.html"} & pages and base + "decisions.html" in pages
    assert base + f"models/{CHURN}.html" in pages and base + f"models/{PROPENSITY}.html" in pages
    assert base + f"cards/{CHURN}/2/card.html" in pages
    assert base + f"cards/{CHURN}/2/audit.json" in resources
    assert any(src.endswith("fairness_gender.png") for src in images)
    assert severe == [], severe
    assert control and "404" in control[0]["message"], control
    for shot in shots:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000, shot


@contextmanager
def chromium(tmp_path: Path) -> Iterator[Any]:
    """Debian's headless chromium through its chromedriver, offline, with the browser console recorded."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} is missing: run scripts/ensure-chromium (make test does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look anything up: both binaries are given
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


def _crawl(driver: object, base: str) -> tuple[set[str], set[str], set[str], list[dict]]:
    """Visit every same-origin page reachable from the index; HTTP-check every other linked file."""
    pages: set[str] = set()
    resources: set[str] = set()
    images: set[str] = set()
    severe: list[dict] = []
    queue = [base]
    while queue:
        url = queue.pop(0)
        if url in pages or url in resources:
            continue
        assert _http_status(url) == 200, url
        if not (url.endswith(".html") or url.endswith("/")):
            resources.add(url)
            continue
        pages.add(url)
        driver.get(url)  # type: ignore[attr-defined]
        title = driver.title  # type: ignore[attr-defined]
        body = driver.find_element("tag name", "body").text  # type: ignore[attr-defined]
        assert title and "Error response" not in body and "Error code" not in body, url
        loaded = driver.execute_script(  # type: ignore[attr-defined]
            "return Array.from(document.images).map(i => [i.src, i.complete && i.naturalWidth > 0]);"
        )
        for src, ok in loaded:
            assert ok, f"{src} did not load on {url}"
            images.add(src)
        hrefs = driver.execute_script(  # type: ignore[attr-defined]
            "return Array.from(document.querySelectorAll('a[href]')).map(a => a.href);"
        )
        for href in hrefs:
            target = urldefrag(urljoin(url, href)).url
            assert target.startswith(base), f"{url} links outside the site: {href}"
            queue.append(target)
        severe += [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]  # type: ignore[attr-defined]
    return pages, resources, images, severe


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@contextmanager
def _serving(directory: Path) -> Iterator[str]:
    """Serve a site folder on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    server = make_site_server(directory, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class _RefCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [v for k, v in attrs if k in {"href", "src"} and v is not None]
