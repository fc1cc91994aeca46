"""Benchmark: erase 1,000 people from a 100k-customer home, against rebuilding the affected stores from scratch.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_erase                         # 100,000 customers, 1,000 subjects
    .venv/bin/python -m benchmarks.bench_erase --quick                 # 10,000 customers: a check, not figures
    .venv/bin/python -m benchmarks.bench_erase --customers 50000 --subjects 500 --repeats 2

Setup (untimed, cached under --work and reused while complete, `harness.cached_stages`): a synthetic
world (`generate_world`, outside the home), ingested (`ingest_drop`), identities resolved (the plain
path of `custintel resolve --engine local`), features built at the three cutoffs of a small churn
training config (`run_feature_build` with the plain steps; the last cutoff materialised into the SQLite
online store), churn trained with one trial (`flows.train.run_training`: MLflow on SQLite holds its
test rows, reference sample and members), and an inference log of one scored entry per online
customer, written with the service's own writer (`serving.inference_log.InferenceLog`, the serving
policy's key rule and salt: the customer's hashed log key, a score, the online features as inputs).
Then the subjects are picked: `--subjects` customers of the crosswalk that are online, requested a
third each by customer key, by an email as held and by a source record id (`table:id`), each checked
to resolve to that one customer; the requests file is what the erasure reads.

Each measurement runs in its own child (this module with ``_worker``) on a fresh copy of the home:

    erase    contender: `flows.personal.erase_subjects(settings, None, file=requests)`, as
             `custintel dsar erase --file F --yes` runs it: resolve every request, journal, suppression
             list, then every store of the catalogue in one pass. A progress callback stamps each
             store's line, which gives the per-store seconds. Untimed after it: `verify_subjects` on
             20 of the requests must find nothing (a hit fails the run).
    rebuild  baseline: the subjects go on the suppression list first (untimed), the lake, quarantine,
             identity outputs and feature stores are deleted; then, timed: the same drop ingested into
             the empty lake, identities resolved, features built at the same cutoffs (offline + online),
             churn retrained with the same config. Untimed after it: the rebuilt lake must hold none of
             the subjects' source records.

With --repeats R > 1 every erase runs between two rebuilds (`harness.sandwich`); with 1, erase then
rebuild. Targets: erase wall (spawn to done, imports included) < 2 minutes at 100,000 customers and
1,000 subjects (information at other sizes), and erase / rebuild (time in the child, each erase against
the mean of the rebuilds beside it) < 0.2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from benchmarks import harness
from benchmarks.harness import Bench, Run, Session, Spec, Target, Timed, cached_stages, emit, small_churn_training
from benchmarks.harness import mib_text as _m
from benchmarks.harness import seconds_text as _s

MODULE = "benchmarks.bench_erase"
DEFAULT_WORK = Path("/tmp/custintel-bench-erase")
DEFAULT_CUSTOMERS, QUICK_CUSTOMERS = 100_000, 10_000
DEFAULT_SUBJECTS = 1_000
TARGET_CUSTOMERS, TARGET_SUBJECTS = 100_000, 1_000
TARGET_SECONDS = 120.0
TARGET_RATIO = 0.2
VERIFY_SAMPLE = 20
U_MAX_PAIRS = 1e6
CUTOFFS = ("2024-11-01", "2025-02-01", "2025-06-01")
STAGES = ("generate", "ingest", "resolve", "features", "train", "serve")
MODEL = "custintel-churn"
# The small churn config of the tests (tests/conftest.py SMALL_TRAINING_YAML), on three cutoffs: one per stage.
TRAINING_YAML = small_churn_training("custintel-bench-erase", *CUTOFFS)


# --------------------------------------------------------------------------- child side


def _settings(p: dict[str, Any]) -> Any:
    """The home's settings: embedded stores only (SQLite online store, MLflow on SQLite under the home)."""
    from custintel.settings import Settings

    for key in ("CUSTINTEL_REDIS_URL", "CUSTINTEL_MLFLOW_TRACKING_URI", "CUSTINTEL_PRIVACY_KEY"):
        os.environ.pop(key, None)
    os.environ["PREFECT_HOME"] = p["prefect_home"]
    return Settings(
        home=Path(p["home"]),
        identity_u_max_pairs=U_MAX_PAIRS,
        training_config=Path(p["training_config"]),
        redis_url=None,
        mlflow_tracking_uri=None,
    )


def _say(message: str) -> None:
    emit("progress", step=message[:120])


def _work_generate(p: dict[str, Any]) -> dict[str, Any]:
    """Write the synthetic world (source drop and hidden truth), outside the home."""
    from features.synthetic import WorldConfig, generate_world

    world = Path(p["world"])
    shutil.rmtree(world, ignore_errors=True)
    t0 = time.perf_counter()
    summary = generate_world(
        WorldConfig(customers=p["customers"], seed=p["seed"]), world, on_chunk=lambda i, n: _say(f"chunk {i}/{n}")
    )
    return {"seconds": time.perf_counter() - t0, "rows": summary.rows}


def _ingest(settings: Any, world: Path) -> Any:
    from features.lake import ingest_drop

    return ingest_drop(world, settings, progress=lambda table, rows: _say(f"ingest {table}: {rows:,} rows"))


def _resolve(settings: Any) -> dict[str, Any]:
    from features.identity.store import resolve_from_lake

    run: dict[str, Any] = resolve_from_lake(settings, False, lambda message: _say(f"resolve: {message}"))
    return run


def _build_features(settings: Any) -> None:
    """The three cutoffs, one build each (bounded memory); the last one (the newest) also goes online."""
    from flows.features import PLAIN_STEPS, run_feature_build

    for i, day in enumerate(CUTOFFS):
        last = i == len(CUTOFFS) - 1
        run_feature_build(settings, [dt.date.fromisoformat(day)], last, PLAIN_STEPS, lambda m: _say(f"features: {m}"))


def _train(settings: Any) -> list[Any]:
    from flows.train import PLAIN_STEPS, run_training

    return run_training(settings, "churn", PLAIN_STEPS, lambda m: _say(f"train: {m}"), trials=1)


def _work_ingest(p: dict[str, Any]) -> dict[str, Any]:
    """Check the drop against the contracts and land it in the lake of a new home."""
    shutil.rmtree(p["home"], ignore_errors=True)
    settings = _settings(p)
    t0 = time.perf_counter()
    report = _ingest(settings, Path(p["world"]))
    return {"seconds": time.perf_counter() - t0, "reconciles": report.reconciles}


def _work_resolve(p: dict[str, Any]) -> dict[str, Any]:
    """Resolve identities (as `custintel resolve --engine local`)."""
    settings = _settings(p)
    shutil.rmtree(settings.identity_dir, ignore_errors=True)
    t0 = time.perf_counter()
    stats = _resolve(settings)["stats"]
    return {"seconds": time.perf_counter() - t0, "records": stats["records"], "customers": stats["customers"]}


def _work_features(p: dict[str, Any]) -> dict[str, Any]:
    """Features at the training cutoffs, offline, and the newest online."""
    settings = _settings(p)
    shutil.rmtree(settings.features_dir, ignore_errors=True)
    t0 = time.perf_counter()
    _build_features(settings)
    return {"seconds": time.perf_counter() - t0}


def _work_train(p: dict[str, Any]) -> dict[str, Any]:
    """Churn with one trial: MLflow (SQLite under the home) holds its test rows, reference and members."""
    settings = _settings(p)
    for name in ("mlflow.db", "artifacts"):
        target = settings.home_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    t0 = time.perf_counter()
    outcomes = _train(settings)
    return {"seconds": time.perf_counter() - t0, "runs": [o.run_id for o in outcomes]}


def _work_serve(p: dict[str, Any]) -> dict[str, Any]:
    """One scored entry per online customer in the inference log, through the service's writer and key rule."""
    import numpy as np

    from features.featurestore.online import AS_OF
    from features.featurestore.store import open_online_store
    from serving.inference_log import InferenceLog
    from serving.policy import load_serving_policy

    settings = _settings(p)
    shutil.rmtree(settings.inference_log_dir, ignore_errors=True)
    t0 = time.perf_counter()
    rule = load_serving_policy(settings.serving_policy).audit.customer_key
    log = InferenceLog(settings.inference_log_dir, rule, settings.serving_log_salt or "custintel", flush_seconds=0.5)
    rng = np.random.default_rng(p["seed"])
    written = 0
    with open_online_store(settings) as store:
        keys = store.customer_keys(list(store.sets()))
        for start in range(0, len(keys), 2_000):
            batch = keys[start : start + 2_000]
            found = store.merged_many(batch).rows
            entries = []
            for key in batch:
                inputs = found.get(key)
                if inputs is None:
                    continue
                score = float(rng.uniform(0, 1))
                as_of = inputs.pop(AS_OF, None)
                entries.append({"at": time.time(), "caller": "bench", "endpoint": "/churn/score", "model": MODEL,
                                "version": "1", "customer": log.key(key), "answer": {"score": score,
                                "decision": score > 0.5}, "as_of": as_of, "inputs": inputs})  # fmt: skip
            log.record_many(entries)
            written += len(entries)
            _say(f"inference log: {written:,} of {len(keys):,} customers")
    log.close(timeout=600)
    size = sum(f.stat().st_size for f in settings.inference_log_dir.glob("*") if f.is_file())
    return {"seconds": time.perf_counter() - t0, "entries": written, "log_mib": size / 2**20}


def _work_pick(p: dict[str, Any]) -> dict[str, Any]:
    """`subjects` online customers of the crosswalk, requested by key, email or record id; the requests file."""
    import numpy as np

    from features.featurestore.store import open_online_store
    from features.identity.subjects import SubjectError, load_subject_index, resolve_request

    settings = _settings(p)
    t0 = time.perf_counter()
    index = load_subject_index(settings)
    with open_online_store(settings) as store:
        online = set(store.customer_keys(list(store.sets())))
    candidates = sorted(k for k in online if index.is_customer(k))
    if len(candidates) < p["subjects"]:
        raise RuntimeError(f"--subjects {p['subjects']}: only {len(candidates):,} online customers in the crosswalk")
    rng = np.random.default_rng(p["seed"])
    chosen = [candidates[i] for i in sorted(rng.choice(len(candidates), size=p["subjects"], replace=False))]
    lines, kinds, keys = [], {"customer key": 0, "email": 0, "record id": 0}, []
    for i, key in enumerate(chosen):
        records = sorted(index.records_of(key))
        options: list[tuple[str, str]] = []
        if i % 3 == 1:
            options = [("email", e) for r in records for e in sorted(index.raw_values("email", r))]
        elif i % 3 == 2:
            options = [("record id", r) for r in records]
        request, kind = key, "customer key"
        for option_kind, option in options:
            try:
                subject = resolve_request(index, option)
            except SubjectError:  # a shared (family) email: another of theirs, or the key
                continue
            if subject.customer_keys == (key,):
                request, kind = option, option_kind
                break
        lines.append(request)
        kinds[kind] += 1
        keys.append(key)
        if i % 100 == 0:
            _say(f"picking subjects: {i:,} of {len(chosen):,}")
    out = Path(p["requests"])
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    Path(p["sample"]).write_text("\n".join(lines[:: max(len(lines) // VERIFY_SAMPLE, 1)][:VERIFY_SAMPLE]) + "\n")
    return {
        "seconds": time.perf_counter() - t0,
        "subjects": len(lines),
        "kinds": kinds,
        "online_customers": len(online),
        "crosswalk_customers": len(index.customer_keys()),
    }


def _store_seconds(stamps: list[tuple[float, str]], total: float) -> list[dict[str, Any]]:
    """Per phase of the erasure, from the progress lines' stamps: each line ends the phase it names.

    erase_request reports "suppression list: ..." once the requests are resolved, the journal written
    and the identifiers suppressed, then "<store>: N removed in K place(s)" after each store.
    """
    phases, last = [], 0.0
    for at, message in stamps:
        name = message.partition(":")[0]
        if name == "suppression list":
            name = "resolve requests + journal + suppression list"
        phases.append({"phase": name, "seconds": at - last, "line": message})
        last = at
    phases.append({"phase": "receipt + journal closed", "seconds": total - last, "line": ""})
    return phases


def _work_erase(p: dict[str, Any]) -> dict[str, Any]:
    """Contender: every request of the file erased from every store in one pass; then verify a sample."""
    from flows.personal import erase_subjects, verify_subjects

    settings = _settings(p)
    clock = Timed()
    stamps: list[tuple[float, str]] = []

    def progress(message: str) -> None:
        stamps.append((time.perf_counter() - clock.start, message))
        _say(f"erase: {message}")

    result = erase_subjects(settings, None, file=Path(p["requests"]), progress=progress)
    seconds = clock.end()
    if result is None or result.already_done:
        raise RuntimeError("the erasure did nothing: the copy of the home had been erased already")
    journal = result.journal
    stores = [
        {"store": s["name"], "removed": int(s["removed"]), "places": len(s["erased"])} for s in journal.stores
    ]  # fmt: skip
    _say("verify: a sample of the requests (untimed)")
    t = time.perf_counter()
    found = verify_subjects(settings, None, file=Path(p["sample"]))
    hits = [{"store": h.store, "place": h.place, "subject_rows": len(h.rows)} for h in found.hits]
    return clock.result(
        seconds=seconds,
        phases=_store_seconds(stamps, seconds),
        stores=stores,
        subjects=len(journal.subjects),
        suppressed=(journal.suppressed or {}).get("added", 0),
        verify_seconds=time.perf_counter() - t,
        verify_clean=found.clean,
        verify_hits=hits,
        verify_stores=found.stores_searched,
    )


def _work_rebuild(p: dict[str, Any]) -> dict[str, Any]:
    """Baseline: suppress the subjects (untimed), then ingest, resolve, features, churn again from scratch."""
    from features.identity.subjects import load_subject_index, read_requests_file, resolve_lines
    from features.personal import LakeStore
    from features.suppression import suppress

    settings = _settings(p)
    requests = Path(p["requests"])
    _say("suppressing the subjects (untimed)")
    subjects = resolve_lines(load_subject_index(settings), read_requests_file(requests), f"--file {requests}")
    suppressed = suppress(settings, subjects)
    for folder in (settings.lake_dir, settings.quarantine_dir, settings.identity_dir, settings.features_dir):
        shutil.rmtree(folder, ignore_errors=True)
    clock = Timed()
    steps: dict[str, float] = {}
    t = clock.start
    report = _ingest(settings, Path(p["world"]))
    steps["ingest"], t = time.perf_counter() - t, time.perf_counter()
    stats = _resolve(settings)["stats"]
    steps["resolve"], t = time.perf_counter() - t, time.perf_counter()
    _build_features(settings)
    steps["features (offline + online)"], t = time.perf_counter() - t, time.perf_counter()
    _train(settings)
    steps["train churn (1 trial)"] = time.perf_counter() - t
    clock.end()
    _say("checking the rebuilt lake holds none of the subjects (untimed)")
    left = LakeStore(settings).find(subjects)
    return clock.result(
        steps=steps,
        subjects=len(subjects),
        suppressed=suppressed,
        reconciles=report.reconciles,
        customers=stats["customers"],
        lake_holdings_left=sum(len(h.rows) for h in left),
    )


WORKERS = {
    "generate": _work_generate,
    "ingest": _work_ingest,
    "resolve": _work_resolve,
    "features": _work_features,
    "train": _work_train,
    "serve": _work_serve,
    "pick": _work_pick,
    "erase": _work_erase,
    "rebuild": _work_rebuild,
}


# --------------------------------------------------------------------------- parent side


def _prepare(args: argparse.Namespace, bench: Bench) -> tuple[dict[str, Any], dict[str, Any]]:
    """Make (or reuse) the prepared home; returns the children's common params and the setup record."""
    base = args.work / f"w{args.customers}-s{args.seed}"
    base.mkdir(parents=True, exist_ok=True)
    config = base / "training.yaml"
    config.write_text(TRAINING_YAML, encoding="utf-8")
    params: dict[str, Any] = {
        "world": str(base / "world"),
        "home": str(base / "home"),
        "customers": args.customers,
        "seed": args.seed,
        "subjects": args.subjects,
        "training_config": str(config),
        "prefect_home": str(args.work / "prefect-home"),
        "requests": str(base / f"requests-{args.subjects}.txt"),
        "sample": str(base / f"verify-sample-{args.subjects}.txt"),
        "pick": str(base / f"picked-{args.subjects}.json"),
        "runs": str(base / "runs"),  # the runs' copies of the home, removed at the end
    }

    def make(stage: str, redo: bool) -> Run | None:
        if not redo:
            return None
        label = f"setup: {stage} ({args.customers:,} customers, untimed)"
        return bench.child(stage, label, params)

    marker = base / "prepared.json"
    state = cached_stages(
        bench,
        marker,
        STAGES,
        make,
        identity={"customers": args.customers, "seed": args.seed, "cutoffs": list(CUTOFFS)},
        kept=("rows", "records", "customers", "entries", "log_mib"),
    )
    requests = Path(params["requests"])
    # The subjects of this --subjects, picked again whenever the home was made again since.
    if not requests.is_file() or requests.stat().st_mtime < marker.stat().st_mtime:
        requests.unlink(missing_ok=True)
        pick = bench.child("pick", f"setup: picking {args.subjects:,} subjects (untimed)", params)
        Path(params["pick"]).write_text(json.dumps(pick.data, default=str), encoding="utf-8")
    state["pick"] = json.loads(Path(params["pick"]).read_text(encoding="utf-8"))
    return params, state


def _copy(prepared: Path, to: Path) -> float:
    """A fresh full copy of the prepared home (SQLite files and Parquet are rewritten in place by some stores)."""
    shutil.rmtree(to, ignore_errors=True)
    t0 = time.perf_counter()
    shutil.copytree(prepared, to)
    return time.perf_counter() - t0


def _measure(session: Session, params: dict[str, Any], runs: list[Run]) -> None:
    """The runs, each on a fresh copy of the prepared home, appended to `runs` as they end (kept on Ctrl-C)."""
    args, bench = session.args, session.bench
    runs_dir = Path(params["runs"])

    def fresh(step: str, label: str) -> Run:
        home = runs_dir / label.replace(" ", "").replace("#", "-")
        seconds = _copy(Path(params["home"]), home)
        session.console.log(f"{label}: a fresh copy of the prepared home in {seconds:,.0f} s (untimed)")
        try:
            run = bench.child(step, label, {**params, "home": str(home)})
        finally:
            shutil.rmtree(home, ignore_errors=True)
        runs.append(run)
        session.save()
        if step == "erase":
            session.console.log(
                f"{label} phases (s): "
                + ", ".join(f"{ph['phase']} {ph['seconds']:,.1f}" for ph in run.data["phases"] if ph["seconds"] >= 0.05)
            )
        return run

    if args.repeats == 1:
        fresh("erase", "erase #1")
        fresh("rebuild", "rebuild #1")
    else:
        harness.sandwich(
            lambda i: fresh("rebuild", f"rebuild #{i}"), lambda i: fresh("erase", f"erase #{i}"), args.repeats
        )


def _pairs(runs: list[Run]) -> list[tuple[Run, list[Run]]]:
    """Each erase with the rebuilds beside it (its neighbours in the order they ran)."""
    out = []
    for i, r in enumerate(runs):
        if r.step == "erase":
            near = [runs[j] for j in (i - 1, i + 1) if 0 <= j < len(runs) and runs[j].step == "rebuild"]
            out.append((r, near))
    return out


def _wall(r: Run) -> float:
    return r.timed_wall_seconds if r.timed_wall_seconds is not None else r.wall_seconds


def _analyse(session: Session, runs: list[Run], state: dict[str, Any]) -> dict[str, Any]:
    args = session.args
    erases = [r for r in runs if r.step == "erase"]
    rebuilds = [r for r in runs if r.step == "rebuild"]
    ratios: list[dict[str, Any]] = [
        {
            "erase": e.label,
            "erase_seconds": e.seconds,
            "rebuild_seconds": statistics.mean(b.seconds for b in near),
            "ratio": e.seconds / statistics.mean(b.seconds for b in near),
            "memory_ratio": (e.peak_mib or 0.0) / statistics.mean(b.peak_mib or 1.0 for b in near),
        }
        for e, near in _pairs(runs)
    ]
    ratio = statistics.median(x["ratio"] for x in ratios)
    wall = statistics.median(_wall(e) for e in erases)
    big = args.customers >= TARGET_CUSTOMERS and args.subjects >= TARGET_SUBJECTS
    note = f"applies at {TARGET_CUSTOMERS:,} customers and {TARGET_SUBJECTS:,} subjects: information here"
    for e in erases:
        if not e.data["verify_clean"]:
            places = ", ".join(f"{h['store']} {h['place']}" for h in e.data["verify_hits"][:10])
            session.problems.append(f"{e.label}: dsar verify found the erased subjects in {places}")
        if e.data["subjects"] != args.subjects:
            session.problems.append(f"{e.label}: erased {e.data['subjects']} subjects, not {args.subjects}")
    for b in rebuilds:
        if b.data["lake_holdings_left"]:
            session.problems.append(
                f"{b.label}: the rebuilt lake still holds {b.data['lake_holdings_left']} of the subjects' rows"
            )
    session.targets += [
        Target(
            f"erase of {args.subjects:,} subjects < {TARGET_SECONDS / 60:.0f} min (spawn to done)",
            wall, TARGET_SECONDS, wall < TARGET_SECONDS, _s(wall), applies=big, note=note,
        ),
        Target(
            f"erase / rebuild < {TARGET_RATIO}", ratio, TARGET_RATIO, ratio < TARGET_RATIO, f"{ratio:.3f}",
        ),
    ]  # fmt: skip
    return {
        "customers": args.customers,
        "subjects": args.subjects,
        "erase_wall_seconds": wall,
        "ratio": ratio,
        "pairs": ratios,
        "erase_phases": [e.data["phases"] for e in erases],
        "erase_stores": erases[0].data["stores"] if erases else [],
        "rebuild_steps": [b.data["steps"] for b in rebuilds],
        "setup": state.get("stages", {}),
    }


def _print(console: Console, runs: list[Run], a: dict[str, Any]) -> None:
    def detail(r: Run) -> str:
        if r.step == "erase":
            clean = "clean" if r.data["verify_clean"] else f"[red]{len(r.data['verify_hits'])} hit(s)[/]"
            return (
                f"{r.data['subjects']:,} subjects, {r.data['suppressed']:,} identifiers suppressed; "
                f"verify of {VERIFY_SAMPLE} in {r.data['verify_stores']} stores: {clean} "
                f"({_s(r.data['verify_seconds'])})"
            )
        steps = ", ".join(f"{k} {v:,.1f}" for k, v in r.data["steps"].items())
        return f"steps (s): {steps}; {r.data['customers']:,} customers; lake rows of subjects left: " + str(
            r.data["lake_holdings_left"]
        )

    console.print(
        harness.runs_table(
            "Runs (in the order they ran)",
            runs,
            [
                ("spawn to done", lambda r: _s(_wall(r))),
                ("load avg", lambda r: f"{r.load_avg[0]:.1f}"),
                ("detail", detail),
            ],
        )  # fmt: skip
    )
    erases = [r for r in runs if r.step == "erase"]
    if erases:
        first = erases[0]
        removed = {s["store"]: s for s in first.data["stores"]}
        t = Table(title=f"Erasure of {first.data['subjects']:,} subjects, phase by phase ({first.label})")
        for col in ("phase", "seconds", "share", "removed", "places"):
            t.add_column(col, justify="left" if col == "phase" else "right")
        for ph in sorted(first.data["phases"], key=lambda x: -x["seconds"]):
            s = removed.get(ph["phase"])
            t.add_row(
                escape(ph["phase"]),
                f"{ph['seconds']:,.2f}",
                f"{ph['seconds'] / first.seconds:.0%}",
                f"{s['removed']:,}" if s else "",
                f"{s['places']:,}" if s else "",
            )
        console.print(t)
    c = Table(title="Side by side (ratio = erase / rebuild, the rebuilds beside each erase)")
    for col in ("run", "erase", "rebuild", "time ratio", "peak RSS ratio"):
        c.add_column(col, justify="left" if col == "run" else "right")
    for x in a["pairs"]:
        c.add_row(
            x["erase"],
            _s(x["erase_seconds"]),
            _s(x["rebuild_seconds"]),
            f"{x['ratio']:.3f}",
            f"{x['memory_ratio']:.2f}",
        )
    console.print(c)
    for r in runs:
        console.print(f"{r.label}: peak RSS {_m(r.peak_mib)} MiB at the end of its timed section")


def _parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Wall time and peak memory of erasing many people from every store of a home (one pass), "
        "against rebuilding the affected stores from scratch with them suppressed, each in its own process.",
    )
    ap.add_argument(
        "--customers", type=int, default=DEFAULT_CUSTOMERS, help=f"world size (default {DEFAULT_CUSTOMERS:,})"
    )
    ap.add_argument("--quick", action="store_true", help=f"--customers {QUICK_CUSTOMERS:,}: a check that it runs")
    ap.add_argument(
        "--subjects", type=int, default=DEFAULT_SUBJECTS, help=f"people to erase (default {DEFAULT_SUBJECTS:,})"
    )
    ap.add_argument("--seed", type=int, default=7, help="seed of the world and of the subjects picked")
    ap.add_argument("--repeats", type=int, default=1, help="erase runs; above 1 each runs between two rebuilds")
    ap.add_argument(
        "--work", type=Path, default=DEFAULT_WORK, help=f"the cached setup and the runs (default {DEFAULT_WORK})"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.customers = QUICK_CUSTOMERS
    if args.customers < 1_000:
        ap.error("--customers: at least 1,000")
    if not 1 <= args.subjects <= args.customers // 2:
        ap.error("--subjects: between 1 and half the customers")
    if args.repeats < 1:
        ap.error("--repeats: at least 1")
    args.work = args.work.expanduser().resolve()
    return args


def _run(session: Session) -> None:
    args, console = session.args, session.console
    runs: list[Run] = []
    session.record.update(
        targets={"customers": TARGET_CUSTOMERS, "subjects": TARGET_SUBJECTS, "erase_seconds": TARGET_SECONDS,
                 "ratio": TARGET_RATIO},
        inference_log="entries written with serving.inference_log.InferenceLog (the policy's key rule and salt), "
        "one per online customer, scores drawn at random (the model is not called)",
        runs=runs,
        analysis={},
    )  # fmt: skip
    params, state = _prepare(args, session.bench)
    session.bench.plan(2 if args.repeats == 1 else 2 * args.repeats + 1)  # the measured runs
    stages = state.get("stages", {})
    pick = state["pick"]
    console.log(
        f"prepared home {params['home']}: {args.customers:,} customers, "
        f"{stages.get('serve', {}).get('entries', 0):,} inference-log entries; subjects "
        + ", ".join(f"{k} {v:,}" for k, v in pick.get("kinds", {}).items())
    )
    try:
        _measure(session, params, runs)
    finally:
        shutil.rmtree(params["runs"], ignore_errors=True)
    analysis = _analyse(session, runs, state)
    session.record["analysis"] = analysis
    _print(console, runs, analysis)
    for target in session.targets:
        console.print(target.line())
    for p in session.problems:
        console.print(f"[bold red]{escape(p)}")


SPEC = Spec(
    name="erase",
    module=MODULE,
    workers=WORKERS,
    packages=("numpy", "pandas", "pyarrow", "duckdb", "mlflow", "custintel"),
    measured=("custintel", "features", "models", "serving", "monitoring", "governance", "flows"),
    width=200,
)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every applicable target passes and every check passed."""
    return harness.main(SPEC, argv, _parse, _run)


if __name__ == "__main__":
    sys.exit(main())
