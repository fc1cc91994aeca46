"""`custintel demo`: the whole loop on embedded defaults, from a generated world to a retrain after drift."""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from custintel.settings import Settings
from flows.cli import views
from flows.cli.app import app, console, fail, progress
from flows.cli.app import settings as current_settings
from flows.cli.data import generate, ingest
from flows.cli.features import run_feature_build
from flows.cli.identity import resolve_evaluate, run_resolution
from flows.cli.models import GATED_FAMILIES, run_gate, run_training
from flows.cli.operations import run_monitoring, serving_environment


@contextlib.contextmanager
def _demo_service(settings: Settings) -> Iterator[tuple[str, str]]:
    """Start the service on a free port for the demo's last steps; yields (url, API key); stops it after."""
    import secrets
    import socket
    import subprocess
    import time

    import httpx

    key = settings.api_keys[0] if settings.api_keys else secrets.token_urlsafe(12)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**serving_environment(settings), "CUSTINTEL_SERVING_API_KEYS": key, "CUSTINTEL_SERVING_POLL_SECONDS": "2"}
    log_path = settings.home_dir / "serving" / "demo-serve.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cli = str(Path(sys.executable).with_name("custintel"))
    with log_path.open("wb") as log:
        server = subprocess.Popen([cli, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        with console.status("starting the service (loads the three champions)…"):
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                if server.poll() is not None:
                    raise fail(f"the service stopped; its log: {log_path}")
                try:
                    if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            else:
                raise fail(f"the service did not become ready in 180 s; its log: {log_path}")
        yield url, key
    finally:
        server.terminate()
        server.wait(30)


def _demo_sample_request(settings: Settings, url: str, key: str) -> str:
    """Score one consenting customer; returns the curl line."""
    import json

    import httpx
    import pandas as pd

    from features.featurestore.store import open_online_store
    from serving.consent import ConsentStore, consent_store_path

    auth = {"Authorization": f"Bearer {key}"}
    served = {m["family"] for m in httpx.get(url + "/models", headers=auth, timeout=10).json()["models"]}
    # churn's endpoint, or the first family the gate let through
    path = next((p for f, p in DEMO_ENDPOINTS if f in served), "/churn/score")
    purpose = "profiling" if path == "/churn/score" else "marketing"
    consent = ConsentStore(consent_store_path(settings))
    customer = None
    with open_online_store(settings) as online:
        keys = pd.read_parquet(settings.identity_dir / "crosswalk.parquet", columns=["customer_key"])
        for candidate in keys["customer_key"].drop_duplicates().head(2000):
            withdrawn = {p for p, s in consent.lookup(candidate).statuses.items() if s == "withdrawn"}
            if online.lookup(candidate) and not withdrawn & {purpose, "profiling"}:
                customer = candidate
                break
    body = json.dumps({"customer_key": customer})
    answer = httpx.post(url + path, content=body, timeout=30, headers={"Content-Type": "application/json", **auth})
    console.print(f"POST {path} {body} -> HTTP {answer.status_code}")
    console.print_json(answer.text)
    return (
        f"curl -s -X POST http://127.0.0.1:3000{path} -H 'Content-Type: application/json' "
        f"-H 'Authorization: Bearer <key>' -d '{body}'"
    )


DEMO_ENDPOINTS = (("churn", "/churn/score"), ("propensity", "/propensity/score"), ("recommendation", "/recommend"))


def _demo_drift(settings: Settings, url: str, key: str, trials: int) -> dict[str, Any]:
    """Score every customer through the batch endpoint, then monitor: drift -> retrain -> gate -> served."""
    import time

    import httpx
    import pandas as pd

    keys = pd.read_parquet(settings.identity_dir / "crosswalk.parquet", columns=["customer_key"])
    customers = sorted(keys["customer_key"].drop_duplicates())
    start = dt.datetime.now(dt.UTC).isoformat()
    served = httpx.get(url + "/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()["models"]
    if not any(m["family"] == "churn" for m in served):
        console.print(
            "[yellow]churn has no @champion (the gate blocked it, see step 6), so there is no churn traffic to "
            "monitor; after a review, `custintel promote churn --approver <name> --reason <why>` and rerun.[/]"
        )
        customers = []
    scored = 0
    with progress() as bars:
        job = bars.add_task("scoring every customer (POST /churn/score/batch)", total=len(customers))
        for i in range(0, len(customers), 1000):
            chunk = customers[i : i + 1000]
            answer = httpx.post(url + "/churn/score/batch", json={"customers": [{"customer_key": c} for c in chunk]},
                                headers={"Authorization": f"Bearer {key}"}, timeout=300)  # fmt: skip
            if answer.status_code != 200:
                raise fail(f"the batch endpoint answered HTTP {answer.status_code}: {answer.text[:300]}")
            scored += sum(r["status"] == "scored" for r in answer.json()["results"])
            bars.advance(job, len(chunk))
    console.print(f"{scored:,} customers scored and logged; the others were suppressed by consent or not in the store")
    time.sleep(1.5)  # the inference log is written off the request path
    result = run_monitoring(settings, None, start, None, True, trials, "inprocess")
    views.print_monitoring(settings, result)
    promoted = [g for r in result["retrains"] for g in r.get("gate", []) if g["result"] == "promoted"]
    for g in promoted:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            models = httpx.get(url + "/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
            if any(m["name"] == g["model"] and m["version"] == g["version"] for m in models["models"]):
                console.print(f"the running service now answers with {g['model']} v{g['version']} (picked up live)")
                break
            time.sleep(1)
    return result


def _demo_policy_gate(world: Path) -> dict[str, Any] | None:
    """Register the packaged decision policy and judge it (simulation, equity, the world's truth); None if it failed."""
    from flows.cli.decisions import promote

    try:
        promote(policy=None, truth=world / "_truth", approver=None, reason=None, name="custintel-nba", engine="prefect")
    except typer.Exit:  # blocked: the demo goes on with the policy file, as the service does
        console.print("[yellow]the decision policy was blocked (see above): the service decides with its file[/]")
    from models.registry import Registry

    found = Registry(current_settings()).policy_version("custintel-nba", "champion")
    return {"version": found[0]} if found else None


def _demo_decisions(settings: Settings, url: str, key: str, policy_gate: dict[str, Any] | None) -> None:
    """Decide for every scored customer on two channels, show the allocation, feed a few outcomes back."""
    from collections import Counter

    import httpx
    import pandas as pd
    from rich.table import Table

    auth = {"Authorization": f"Bearer {key}"}
    keys = pd.read_parquet(settings.identity_dir / "crosswalk.parquet", columns=["customer_key"])
    customers = sorted(keys["customer_key"].drop_duplicates())
    counts: Counter[tuple[str, str]] = Counter()
    value = given_up = 0.0
    decided: list[tuple[str, str]] = []
    policy = ""
    with progress() as bars:
        for channel in ("call_centre", "email"):
            job = bars.add_task(f"deciding for every customer on {channel} (POST /decide/batch)", total=len(customers))
            for i in range(0, len(customers), 1000):
                chunk = customers[i : i + 1000]
                answer = httpx.post(url + "/decide/batch", json={"customer_keys": chunk, "channel": channel},
                                    headers=auth, timeout=300)  # fmt: skip
                if answer.status_code != 200:
                    raise fail(f"/decide/batch answered HTTP {answer.status_code}: {answer.text[:300]}")
                body = answer.json()
                value += body["value"]
                given_up += body["value_given_up"]
                policy = f"{body['policy'].get('name')} v{body['policy'].get('version') or '(file)'}"
                for r in body["results"]:
                    if r["status"] == "decided":
                        first = r["actions"][0]["name"] if r["actions"] else "none"
                        counts[(first, channel)] += 1
                        if r["actions"] and not r["fallback"]:
                            decided.append((r["decision_id"], r["customer_key"]))
                bars.advance(job, len(chunk))
    table = Table(title=f"decisions under {policy}: first action per channel")
    for column in ("action", "channel", "customers"):
        table.add_column(column, justify="right" if column == "customers" else "left")
    for (action, channel), n in sorted(counts.items(), key=lambda x: (x[0][1], -x[1])):
        table.add_row(action, channel, f"{n:,}")
    console.print(table)
    console.print(f"expected value of the campaigns {value:,.0f}; given up to capacity and caps {given_up:,.0f}")
    fed = 0
    for decision_id, customer in decided[:5]:  # an impression, then an accept, for a few contacted customers
        for event in ("impression", "accept"):
            answer = httpx.post(url + "/outcomes", json={"decision_id": decision_id, "event": event,
                                "customer_key": customer}, headers=auth, timeout=30)  # fmt: skip
            fed += answer.status_code == 200
    shown = min(5, len(decided))
    console.print(f"{fed} outcomes fed back (POST /outcomes): an impression and an accept for {shown} decisions")
    if policy_gate is None:
        console.print("[yellow]no decision policy is @champion: the service decided with the policy file[/]")


def _demo_measure(settings: Settings, world: Path) -> dict[str, Any] | None:
    """Register the packaged retention-offer experiment, analyse the world's offer test (CUPED), attribute.

    The analysis runs as the Prefect flow analyse_experiment (report, MLflow run, reviewers' site) with the
    world's truth beside it; the attribution credits add-on purchases to the digital touches before them.
    """
    from rich.table import Table

    from experiments.errors import ExperimentError
    from experiments.spec import ExperimentRegistry, example_spec_text, load_spec
    from flows.cli.experiment_analysis import print_analysis
    from flows.experiments import analyse_experiment_flow, digital_attribution, experiments_root

    try:
        registered = ExperimentRegistry(experiments_root(settings)).register(load_spec(example_spec_text()))
        console.print(f"registered experiment {registered.name} v{registered.version} (sha256 {registered.hash[:12]}): "
                      f"{registered.spec.hypothesis}", soft_wrap=True)  # fmt: skip
        with console.status("Analysing the world's retention-offer test (Prefect flow analyse_experiment)…"):
            result = analyse_experiment_flow(
                registered.name, settings.to_flow(), None, "offer_test", None, "fixed", str(world / "_truth")
            )
    except ExperimentError as exc:
        console.print(f"[yellow]the retention-offer experiment could not be analysed: {exc}[/]")
        return None
    console.print("the offer test ran its whole outcome window once: read at its fixed horizon")
    print_analysis(result)
    try:
        table, info = digital_attribution(settings)
    except ExperimentError as exc:
        console.print(f"[yellow]no attribution: {exc}[/]")
        return result
    title = (
        f"{info['conversions']:,} purchases from {info['from']} to {info['to']}; the "
        f"{info['touched_conversions']:,} with a digital touch in the {info['window_days']} days before them "
        f"credited to those touches ({info['journeys']:,} journeys)"
    )
    shown = Table(title=title)
    for column in ("channel", "journeys", "last touch", "first touch", "Markov", "Shapley"):
        shown.add_column(column, justify="left" if column == "channel" else "right")
    for row in table.itertuples():
        shown.add_row(str(row.channel), f"{row.journeys:,}", f"{row.last_touch:,.1f}", f"{row.first_touch:,.1f}",
                      f"{row.markov:,.1f}", f"{row.shapley:,.1f}")  # fmt: skip
    console.print(shown)
    return result


def _demo_insights(settings: Settings) -> dict[str, Any]:
    """The operations report as of the world's export, as the Prefect flow operations_insights; one line of it."""
    from flows.insights import operations_insights

    with console.status("Computing the operations report (Prefect flow operations_insights)…"):
        result: dict[str, Any] = operations_insights(settings.to_flow(), None)
    console.print(
        f"operations report as of {result['as_of']}: {result['kpis']} KPIs, {result['topics']} ticket topics "
        f"({result['emerging']} rising), {result['suggestions']} articles to write, {result['segments']} segments, "
        f"{result['alerts']} open alerts",
        soft_wrap=True,
        highlight=False,
    )
    return result


@app.command()
def demo(
    customers: Annotated[int, typer.Option(help="Customers in the demo world.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    trials: Annotated[
        int, typer.Option(min=1, help="Optuna trials per study (`custintel train` uses the configured 20).")
    ] = 10,
    drift_date: Annotated[
        str, typer.Option(help="The world's population and behaviour shift after this date (YYYY-MM-DD).")
    ] = "2025-09-01",
    drift_strength: Annotated[float, typer.Option(help="How far they shift (0: no drift).")] = 1.5,
) -> None:
    """Run everything that exists end to end on embedded defaults and say where to look."""
    settings = current_settings()
    world = settings.default_data_dir / "demo-world"
    console.rule("[bold]1/12 generate a synthetic customer world (its population drifts after the drift date)")
    generate(customers=customers, seed=seed, out=world, drift_date=drift_date, drift_strength=drift_strength)
    console.rule("[bold]2/12 ingest it behind data contracts (Prefect flow ingest_sources)")
    ingest(source=world)
    console.rule("[bold]3/12 resolve identities into customers (Prefect flow resolve_identities)")
    views.print_resolution(run_resolution("prefect", reuse_model=False))
    resolve_evaluate(truth=world / "_truth")
    console.rule("[bold]4/12 point-in-time features and labels (Prefect flow build_features)")
    # The online store holds the latest cutoff: three months into the drift the demo scores and monitors.
    views.print_feature_build(run_feature_build([dt.date(2025, 3, 1), dt.date(2025, 12, 1)], "prefect", online=True))
    console.rule(
        "[bold]5/12 train, tune and register churn, propensity + uplift, recommendation (Prefect flow train_model)"
    )
    outcomes = run_training("all", "prefect", trials, None, world / "_truth", None)
    views.print_training(settings, outcomes)
    console.rule("[bold]6/12 audit and promote the challengers (Prefect flow audit_and_promote), reviewers' site")
    decisions = run_gate(list(GATED_FAMILIES), None, None, None, "prefect")
    views.print_decisions(settings, decisions)
    from governance.site import build_site

    console.rule("[bold]7/12 the next-best-action policy through its gate (Prefect flow promote_decision_policy)")
    policy_gate = _demo_policy_gate(world)
    site = build_site(settings)
    console.rule("[bold]8/12 serve the champions with BentoML (custintel serve) and answer a sample request")
    with _demo_service(settings) as (url, key):
        curl = _demo_sample_request(settings, url, key)
        console.rule("[bold]9/12 traffic after the drift, monitoring (Prefect flow monitor_models), retraining")
        monitored = _demo_drift(settings, url, key, trials)
        console.rule("[bold]10/12 decisions for the scored customers (POST /decide/batch) and outcomes fed back")
        _demo_decisions(settings, url, key, policy_gate)
    console.rule("[bold]11/12 measure: the retention-offer experiment and attribution")
    measured = _demo_measure(settings, world)
    console.rule(
        "[bold]12/12 operations: KPIs, ticket topics, segments, actions and alerts (Prefect flow operations_insights)"
    )
    insights = _demo_insights(settings)
    site = Path(insights["page"]).with_name("index.html")  # the flow rebuilt the site: drift, experiment, operations
    console.rule("[bold]where to look")
    console.print(f"- source drop: {world}  (hidden truth: {world / '_truth'})")
    console.print(f"- lake (accepted rows, Parquet): {settings.lake_dir}")
    console.print(
        f"- quarantine (rejected rows and reasons): {settings.quarantine_dir}  -> `custintel quarantine crm_accounts`"
    )
    console.print(f"- ingestion report: {settings.reports_dir / 'ingest' / 'latest.json'}")
    console.print(
        f"- identity: {settings.identity_dir} (crosswalk, golden_records, conflicts, links, model.json)  "
        "-> `custintel resolve conflicts`, `custintel resolve explain A B`"
    )
    console.print(
        f"- features: {settings.features_dir / 'offline'} (Parquet per set, version and as-of, manifest.json beside), "
        f"online store {settings.features_dir / 'online.sqlite'}  -> `custintel features lookup <customer_key>`"
    )
    console.print(
        f"- models: MLflow runs {', '.join(o['family'] + ' ' + o['run_id'] for o in outcomes)}; registered as "
        f"@challenger  -> `mlflow ui --backend-store-uri {settings.tracking_uri}` (plots, tables, lineage per run)"
    )
    console.print(
        f"- governance: {settings.governance_dir} (decisions.jsonl, audit_trail.jsonl, "
        f"cards/<model>/<version>/card.html); reviewers' site {site}  -> `custintel report --serve`"
    )
    console.print(
        f"- decisions: policy custintel-nba{' v' + policy_gate['version'] if policy_gate else ' (file)'} and its card "
        f"-> `custintel decisions show`; decision and outcome log {settings.home_dir / 'serving' / 'decisions.db'}"
    )
    if measured is not None:
        console.print(
            f"- experiments: {settings.home_dir / 'experiments'} (specs, reports); the retention offer's report "
            f"{measured['html']}, MLflow run {measured['mlflow_run_id']} (experiment {measured['mlflow_experiment']}), "
            f"site page {measured['site']}  "
            f"-> `custintel experiment analyse {measured['experiment']} --source offer-test`"
        )
    console.print(f"- serving: `CUSTINTEL_SERVING_API_KEYS=<key> custintel --home {settings.home_dir} serve`, then:")
    console.print(f"  {curl}", soft_wrap=True)
    reports = [d["report"] for d in monitored["decisions"] if d.get("report")]
    console.print(
        f"- monitoring: decision page {', '.join(reports) or '(none: nothing served)'}; Evidently reports beside it "
        f"and in `evidently ui --workspace {settings.monitoring_dir / 'workspace'}`; decisions "
        f"{settings.monitoring_dir / 'decisions.jsonl'}; on the reviewers' site after `custintel report`"
    )
    console.print(
        f"- operations: the operations page {insights['page']} (KPIs, ticket topics, segments, actions and outcomes, "
        f"alerts); its data {insights['report']}  -> `custintel insights`, `custintel report --serve`"
    )
