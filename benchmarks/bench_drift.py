"""Benchmark: do the drift triggers stay quiet on worlds without drift, and fire on the shifted inputs?

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_drift                     # 20,000 customers per world, like the demo
    .venv/bin/python -m benchmarks.bench_drift --quick             # 5,000 customers, 1 Optuna trial
    .venv/bin/python -m benchmarks.bench_drift --workdir /data/w   # where worlds are built and cached

Worlds (default): seeds 7, 8 and 9 generated without drift, and seed 7 with drift after 2025-09-01
at strength 1.5 (the demo's default world). Each world is built with the real pipeline steps, as
library calls, in its own child process (this module, called with ``_world``), and cached under
``--workdir/<customers>-s<seed>-<drift|nodrift>`` (a stage is redone only when missing):
generate (`generate_world`) -> ingest (`ingest_drop`) -> resolve (`resolve_from_lake`) -> features
(`run_feature_build` at the churn training config's cutoffs and the serving cutoff 2025-12-01) ->
train churn (`run_training` with `--trials` Optuna trials, logged to the world's own MLflow store).

The judgement of each world (not cached, timed): the served rows are the churn inputs at the serving
cutoff of every active customer (what the service logs when the demo scores everyone), with the
champion's scores. They are judged twice, with the shipped monitoring policy's triggers:
- **now**: the monitoring reference a training run logs (`monitoring.baseline.labelled_reference`
  of the model's labelled table, as `custintel train` logs it: the newest cutoff and a panel at each
  earlier one), through `monitoring.baseline.compare_window` (newest
  cutoff as reference, thresholds raised by each input's natural movement) and
  `monitoring.triggers.decide`;
- **before**: the reference training runs logged before issue 17 (a seeded sample of the train-stage
  rows, cutoffs pooled), judged as before issue 17 (policy `drift.reference: all_cutoffs`, no natural movement).

What the generator shifted, empirically (the definition used for precision and recall): an input is
shifted when, at the serving cutoff, the drift world's distance to *every* no-drift world (the
policy's default test: normed Wasserstein or Jensen-Shannon) is at least `SHIFT_RATIO` times the
largest distance between two no-drift worlds, and at least `SHIFT_MIN` (half the default threshold:
a move the test is meant to see). Printed beside it: the inputs the generator's code touches
(`GENERATOR_TOUCHED`: sessions for everyone after the drift date; channel and price sensitivity
of the customers who joined after it, and a price war on price-sensitive customers).

Targets (issue 17): on every world without drift, at most 1% of inputs flagged and no trigger fired;
on the drift world a drift trigger fires, with precision >= 0.75 and recall >= 0.5 on the shifted
inputs. Results: ``--workdir/results/drift-<time>.json``. Exit 0 when the targets are met, 1 when one
is missed, 2 when a world cannot be built or judged.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from benchmarks.machine import ROOT, machine_info

MODULE = "benchmarks.bench_drift"
DEFAULT_WORK = Path("/tmp/custintel-bench-drift")
DEFAULT_CUSTOMERS, QUICK_CUSTOMERS = 20_000, 5_000
DEFAULT_TRIALS, QUICK_TRIALS = 3, 1
SERVING_CUTOFF = dt.date(2025, 12, 1)  # the demo serves features as of this date
DRIFT_DATE, DRIFT_STRENGTH = dt.date(2025, 9, 1), 1.5
NO_DRIFT_SEEDS, DRIFT_SEED = (7, 8, 9), 7
U_MAX_PAIRS = 1e6  # as the other benchmarks: Splink's u from 1M random pairs
SHIFT_RATIO, SHIFT_MIN = 3.0, 0.05
TARGET_FLAGGED_SHARE, TARGET_PRECISION, TARGET_RECALL = 0.01, 0.75, 0.5
PREDICTION = "prediction"
STAGES = ("generate", "ingest", "resolve", "features", "train")
DRIFT_TRIGGERS = ("drifted_share", "key_feature_drift", "prediction_drift")
# Read off features/synthetic (people.py, behaviour.py): sessions rise for everyone after the drift date;
# customers who join after it come through other channels and are more price-sensitive (pricing and
# plan-compare pages, discounts, plan downgrades), and a price war raises the churn of price-sensitive ones.
GENERATOR_TOUCHED = (
    "sessions_30d", "sessions_90d", "sessions_trend", "days_since_last_session", "acquisition_channel",
    "page_views_pricing_30d", "page_views_pricing_90d", "page_views_plan_compare_30d", "page_views_plan_compare_90d",
    "discounts_365d", "discount_amount_365d", "discount_share_365d", "days_since_last_discount", "plan",
)  # fmt: skip


@dataclass(frozen=True)
class WorldSpec:
    """One world of the benchmark."""

    customers: int
    seed: int
    drift: bool

    @property
    def name(self) -> str:
        """Its folder name under the work dir."""
        return f"c{self.customers}-s{self.seed}-{'drift' if self.drift else 'nodrift'}"


# --------------------------------------------------------------------------- child: build and judge one world


def _emit(event: str, **data: Any) -> None:
    """One JSON line for the parent."""
    print(json.dumps({"event": event, **data}, default=str), flush=True)  # noqa: T201 - the parent reads it


def _build(spec: WorldSpec, root: Path, trials: int) -> dict[str, Any]:
    """Build (or reuse) the world's stages; returns the state (stage -> seconds and what it made)."""
    from custintel.settings import Settings
    from features.identity.store import resolve_from_lake
    from features.lake import ingest_drop
    from features.synthetic import WorldConfig, generate_world
    from flows.features import PLAIN_STEPS as FEATURE_STEPS
    from flows.features import run_feature_build
    from flows.train import PLAIN_STEPS, run_training
    from models.config import load_training_config
    from models.training import plan_units

    state_path = root / "state.json"
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.is_file() else {}
    settings = Settings(home=root / "home", identity_u_max_pairs=U_MAX_PAIRS)

    def log(message: str) -> None:
        _emit("progress", step=message[:140])

    def done(stage: str, started: float, **info: Any) -> None:
        state[stage] = {"seconds": round(time.perf_counter() - started, 1), **info}
        # a redone stage invalidates the ones after it
        for later in STAGES[STAGES.index(stage) + 1 :]:
            state.pop(later, None)
        state_path.write_text(json.dumps(state, indent=2, default=str), encoding="utf-8")

    t = time.perf_counter()
    if "generate" not in state:
        log("generate")
        drift = {"drift_date": DRIFT_DATE, "drift_strength": DRIFT_STRENGTH} if spec.drift else {}
        generate_world(WorldConfig(customers=spec.customers, seed=spec.seed, **drift), root / "world")
        done("generate", t)
    t = time.perf_counter()
    if "ingest" not in state:
        log("ingest")
        ingest_drop(root / "world", settings)
        done("ingest", t)
    t = time.perf_counter()
    if "resolve" not in state:
        resolve_from_lake(settings, False, log)
        done("resolve", t)
    (unit,) = plan_units(load_training_config(settings.training_config), "churn")
    cutoffs = sorted({*unit.as_of, SERVING_CUTOFF})
    t = time.perf_counter()
    if "features" not in state or not set(map(str, cutoffs)) <= set(state["features"]["cutoffs"]):
        for day in cutoffs:  # one cutoff per build, as the other benchmarks (memory)
            run_feature_build(settings, [day], False, FEATURE_STEPS, log)
        done("features", t, cutoffs=[str(d) for d in cutoffs])
    t = time.perf_counter()
    if "train" not in state:
        (outcome,) = run_training(settings, "churn", PLAIN_STEPS, log, trials=trials)
        version = next(str(r["version"]) for r in outcome.registered if r["name"] == unit.config.registered_model)
        done("train", t, run_id=outcome.run_id, version=version, trials=trials)
    return state


def _judge(reference: Any, current: Any, kinds: dict[str, Any], policy: Any, drift_policy: Any) -> dict[str, Any]:
    """One monitoring judgement (verdicts, prediction, triggers), timed."""
    from monitoring.baseline import compare_window
    from monitoring.triggers import Evidence, decide

    tests: dict[str, tuple[str, float | None]] = {}
    for c in [*kinds, PREDICTION]:
        test = drift_policy.test_for(c)
        tests[c] = (test.method, test.threshold)
    t = time.perf_counter()
    compared = compare_window(reference, current, kinds, tests, drift_policy, None, PREDICTION)
    seconds = time.perf_counter() - t
    evidence = Evidence(
        family="churn", model="custintel-churn", version="bench", rows=len(current), min_rows=drift_policy.min_rows,
        drift=compared.drift, prediction=compared.prediction, reference=compared.baseline.describe(),
    )  # fmt: skip
    decision = decide(policy.family("churn"), policy.retrain, evidence, dt.datetime.now(dt.UTC))
    return {
        "seconds": round(seconds, 2),
        "columns": [c.as_dict() for c in compared.drift.columns],
        "flagged": [c.column for c in compared.drift.columns if c.drifted],
        "share": compared.drift.share,
        "prediction": None if compared.prediction is None else compared.prediction.as_dict(),
        "checks": [c.as_dict() for c in decision.checks],
        "fired": [c.trigger for c in decision.fired],
        "reference": {k: v for k, v in compared.baseline.as_dict().items() if k != "columns"},
    }


def _work_world(argv: list[str]) -> int:
    """Child: build or reuse one world, judge its served rows now and before issue 17; print the result."""
    ap = argparse.ArgumentParser(prog=f"{MODULE} _world")
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--customers", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--drift", action="store_true")
    ap.add_argument("--trials", type=int, required=True)
    args = ap.parse_args(argv)
    spec = WorldSpec(args.customers, args.seed, args.drift)
    root = args.workdir / spec.name
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(args.workdir / "prefect-home"))  # never the user's own

    import pandas as pd

    from custintel.settings import Settings
    from features.featurestore.offline import read_offline
    from features.featurestore.store import offline_root
    from models.config import load_training_config
    from models.registry import Registry
    from models.training import load_churn
    from monitoring.baseline import labelled_reference
    from monitoring.drift import column_kinds
    from monitoring.monitor import score_rows
    from monitoring.policy import NaturalMovement, load_policy

    started = time.perf_counter()
    state = _build(spec, root, args.trials)
    build_seconds = time.perf_counter() - started
    settings = Settings(home=root / "home", identity_u_max_pairs=U_MAX_PAIRS)
    config = load_training_config(settings.training_config)
    policy = load_policy(settings.monitoring_policy)

    _emit("progress", step="judging the served rows")
    t = time.perf_counter()
    data = load_churn(settings, config)
    model = Registry(settings).load_model(config.churn.registered_model, state["train"]["version"], "sklearn")
    columns = list(model.feature_names_in_)  # in the model's order, as the service sends them
    features = {c for c in data.frame.columns if c not in data.excluded}
    if set(columns) != features:
        raise RuntimeError(f"the model's inputs differ from the labelled frame's: {sorted(set(columns) ^ features)}")
    # what the service logs when the demo scores every customer: the inputs at the serving cutoff
    root_dir, served = offline_root(settings), None
    for key in config.churn.feature_sets:
        part = read_offline(root_dir, key, [SERVING_CUTOFF]).to_pandas()
        served = part if served is None else served.merge(part, on=["customer_key", "as_of"])
    assert served is not None
    served = served[["customer_key", "as_of", *columns]]
    served[PREDICTION] = score_rows(model, served, columns)
    served.to_parquet(root / "served.parquet", index=False)

    # what `custintel train` logs as the run's monitoring/reference.parquet (flows/train.py monitoring_reference)
    now_reference = labelled_reference(data, columns, policy.reference_rows, policy.history_rows)
    now_reference[PREDICTION] = score_rows(model, now_reference, columns)
    # before issue 17: a seeded sample of the train stage's rows, cutoffs pooled
    train = data.rows("train")[["customer_key", "as_of", *columns]]
    before_reference = (
        train if len(train) <= policy.reference_rows else train.sample(n=policy.reference_rows, random_state=0)
    )
    before_reference = before_reference.assign(**{PREDICTION: score_rows(model, before_reference, columns)})
    kinds = column_kinds(now_reference, columns)
    prepare_seconds = time.perf_counter() - t

    before_policy = policy.drift.model_copy(
        update={"reference": "all_cutoffs", "natural_movement": NaturalMovement(enabled=False)}
    )
    result = {
        "world": spec.name,
        "seed": spec.seed,
        "drift": spec.drift,
        "customers": spec.customers,
        "stages": state,
        "build_seconds": round(build_seconds, 1),
        "prepare_seconds": round(prepare_seconds, 1),
        "served_rows": len(served),
        "inputs": columns,
        "stage_rows": {str(k): int(v) for k, v in pd.Series(data.stage).value_counts().items()},
        "now": _judge(now_reference, served, kinds, policy, policy.drift),
        "before": _judge(before_reference, served, kinds, policy, before_policy),
    }
    _emit("result", **result)
    return 0


# --------------------------------------------------------------------------- parent: worlds, analysis, report


def _run_world(spec: WorldSpec, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Build and judge one world in a child process; its last JSON line is the result."""
    cmd = [sys.executable, "-m", MODULE, "_world", "--workdir", str(args.workdir), "--customers",
           str(spec.customers), "--seed", str(spec.seed), "--trials", str(args.trials)]  # fmt: skip
    if spec.drift:
        cmd.append("--drift")
    log_path = args.workdir / spec.name / "child.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    result: dict[str, Any] | None = None
    with log_path.open("w", encoding="utf-8") as log, console.status(f"{spec.name}: starting") as status:
        child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        assert child.stdout is not None
        for line in child.stdout:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue
            if message.get("event") == "progress":
                status.update(f"{spec.name}: {escape(message['step'])}")
            elif message.get("event") == "result":
                result = message
        child.wait()
    if child.returncode != 0 or result is None:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{spec.name}: the child failed (exit {child.returncode}); its log {log_path}:\n{tail}")
    return result


def shifted_inputs(served: dict[str, Any], drift_name: str, calm: list[str], inputs: list[str]) -> dict[str, Any]:
    """Per input: the largest distance between two no-drift worlds, the drift world's smallest distance to one.

    Always a distance (Evidently's normed Wasserstein or Jensen-Shannon), never a p-value, whatever the size.
    """
    from monitoring.drift import clean, column_drift, column_kinds, distance_method

    kinds = column_kinds(served[drift_name], inputs)
    out: dict[str, Any] = {}
    for c in inputs:

        def score(ref: str, cur: str, column: str = c) -> float:
            a, b = served[ref][column], served[cur][column]
            if clean(a).empty or clean(b).empty:
                return 0.0
            method = distance_method(clean(a), clean(b), kinds[column])
            verdict = column_drift(column, a, b, kinds[column], method)
            return 0.0 if verdict is None else verdict.score

        spread = max((score(a, b) for a in calm for b in calm if a != b), default=0.0)
        moved = min(score(a, drift_name) for a in calm)
        out[c] = {"spread": spread, "moved": moved,
                  "shifted": moved >= SHIFT_RATIO * spread and moved >= SHIFT_MIN}  # fmt: skip
    return out


def _analyse(results: list[dict[str, Any]], workdir: Path) -> dict[str, Any]:
    import pandas as pd

    calm = [r for r in results if not r["drift"]]
    drifted = [r for r in results if r["drift"]]
    inputs = results[0]["inputs"]
    served = {r["world"]: pd.read_parquet(workdir / r["world"] / "served.parquet") for r in results}
    analysis: dict[str, Any] = {"inputs": len(inputs)}
    shifted: set[str] = set()
    if drifted and len(calm) >= 2:
        table = shifted_inputs(served, drifted[0]["world"], [r["world"] for r in calm], inputs)
        shifted = {c for c, v in table.items() if v["shifted"]}
        analysis["shift_table"] = table
    analysis["shifted"] = sorted(shifted)
    for when in ("now", "before"):
        part: dict[str, Any] = {}
        flags = {c: sum(c in r[when]["flagged"] for r in calm) for c in inputs}
        part["false_alarm_per_input"] = {c: n / len(calm) for c, n in flags.items() if n} if calm else {}
        part["false_alarm_rate"] = sum(flags.values()) / (len(inputs) * len(calm)) if calm else None
        part["calm_fired"] = {r["world"]: r[when]["fired"] for r in calm}
        for r in drifted:
            flagged = set(r[when]["flagged"])
            hits = flagged & shifted
            touched = flagged & set(GENERATOR_TOUCHED)
            part["drift"] = {
                "world": r["world"],
                "flagged": sorted(flagged),
                "fired": r[when]["fired"],
                "precision": len(hits) / len(flagged) if flagged else None,
                "recall": len(hits) / len(shifted) if shifted else None,
                "precision_generator_touched": len(touched) / len(flagged) if flagged else None,
                "recall_generator_touched": len(touched) / len(GENERATOR_TOUCHED),
            }
        analysis[when] = part
    now = analysis["now"]
    checks = {
        f"{r['world']}: flagged share <= {TARGET_FLAGGED_SHARE:.0%}": r["now"]["share"] <= TARGET_FLAGGED_SHARE
        for r in calm
    }
    checks.update({f"{r['world']}: no trigger fired": not r["now"]["fired"] for r in calm})
    if "drift" in now:
        d = now["drift"]
        checks[f"{d['world']}: a drift trigger fired"] = bool(set(d["fired"]) & set(DRIFT_TRIGGERS))
        checks[f"{d['world']}: precision >= {TARGET_PRECISION}"] = (d["precision"] or 0.0) >= TARGET_PRECISION
        checks[f"{d['world']}: recall >= {TARGET_RECALL}"] = (d["recall"] or 0.0) >= TARGET_RECALL
    analysis["targets"] = checks
    analysis["pass"] = all(checks.values())
    return analysis


def _print(console: Console, results: list[dict[str, Any]], analysis: dict[str, Any], seconds: float) -> None:
    inputs = analysis["inputs"]
    for r in results:
        now, before = r["now"], r["before"]
        ref = now["reference"]
        title = (
            f"{r['world']}: {r['served_rows']:,} served rows as of {SERVING_CUTOFF}; "
            f"reference {ref['reference_rows']:,} rows as of {ref['reference_as_of']}, "
            f"gap {ref['gap_months']:.1f} months; movement on "
            f"{len(ref['movement_cutoffs'])} cutoffs; judged in {now['seconds']:.1f} s"
        )
        table = Table(title=title, title_justify="left")
        for h in ("input", "test", "statistic", "threshold", "of which natural movement", "shifted"):
            table.add_column(h)
        verdicts = {c["column"]: c for c in now["columns"]}
        for c in now["flagged"]:
            v = verdicts[c]
            table.add_row(c, v["method"], f"{v['score']:.3f}", f"{v['threshold']:.3f}", f"{v['allowance']:.3f}",
                          "yes" if c in analysis["shifted"] else "no")  # fmt: skip
        p = now["prediction"]
        if p is not None:
            table.add_row(PREDICTION, p["method"], f"{p['score']:.3f}", f"{p['threshold']:.3f}",
                          f"{p['allowance']:.3f}", "drifted" if p["drifted"] else "not drifted")  # fmt: skip
        console.print(table)
        for check in now["checks"]:
            mark = "[red]FIRED[/]" if check["fired"] else "quiet"
            console.print(f"  {check['trigger']:<18} {mark}  {escape(check['detail'])}")
        console.print(
            f"  flagged {len(now['flagged'])} of {inputs} inputs ({now['share']:.1%}); before issue 17: "
            f"{len(before['flagged'])} ({before['share']:.1%}), prediction "
            f"{(before['prediction'] or {}).get('score', float('nan')):.3f} vs "
            f"{(before['prediction'] or {}).get('threshold', float('nan')):.3g}, fired {before['fired'] or 'nothing'}"
        )
    console.print(f"\nShifted inputs (empirical, >= {SHIFT_RATIO:g}x the no-drift seeds' spread and >= {SHIFT_MIN}):")
    for c, v in sorted(analysis.get("shift_table", {}).items(), key=lambda kv: -kv[1]["moved"])[:8]:
        console.print(
            f"  {c:<28} moved {v['moved']:.3f}  seed spread {v['spread']:.3f}  -> {'shifted' if v['shifted'] else 'no'}"
        )
    for when in ("now", "before"):
        part = analysis[when]
        rate = part["false_alarm_rate"]
        per_input = {c: round(v, 2) for c, v in part["false_alarm_per_input"].items()} or "none flagged"
        console.print(f"\n[bold]{when}[/]: false-alarm rate over the no-drift worlds "
                      f"{'n/a' if rate is None else f'{rate:.2%}'}; per input: {per_input}")  # fmt: skip
        if "drift" in part:
            d = part["drift"]
            fmt = lambda x: "n/a" if x is None else f"{x:.2f}"  # noqa: E731
            console.print(f"  drift world: flagged {d['flagged']}; fired {d['fired'] or 'nothing'}; precision "
                          f"{fmt(d['precision'])}, recall {fmt(d['recall'])} (against the generator-touched list: "
                          f"{fmt(d['precision_generator_touched'])} / "
                          f"{fmt(d['recall_generator_touched'])})")  # fmt: skip
    console.print()
    for name, ok in analysis["targets"].items():
        console.print(f"  {'[green]PASS[/]' if ok else '[red]FAIL[/]'}  {escape(name)}")
    console.print(f"\nbenchmark run time {seconds:.0f} s")


def _parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_CUSTOMERS:,} customers, {QUICK_TRIALS} trial")
    ap.add_argument("--customers", type=int, default=None, help=f"customers per world (default {DEFAULT_CUSTOMERS:,})")
    ap.add_argument(
        "--trials", type=int, default=None, help=f"Optuna trials of the churn fit (default {DEFAULT_TRIALS})"
    )
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORK, help=f"worlds and results (default {DEFAULT_WORK})")
    ap.add_argument("--seeds", type=str, default=",".join(map(str, NO_DRIFT_SEEDS)), help="seeds without drift")
    ap.add_argument("--drift-seed", type=int, default=DRIFT_SEED, help="seed of the drift world (-1: none)")
    args = ap.parse_args(argv)
    args.customers = args.customers or (QUICK_CUSTOMERS if args.quick else DEFAULT_CUSTOMERS)
    args.trials = args.trials or (QUICK_TRIALS if args.quick else DEFAULT_TRIALS)
    args.workdir = args.workdir.expanduser().resolve()
    if args.customers < 1000 or args.trials < 1:
        ap.error("--customers >= 1000 and --trials >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Build or reuse the worlds, judge each, compare, print and write the results."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_world"]:
        return _work_world(argv[1:])
    args = _parse(argv)
    console = Console() if Console().is_terminal else Console(width=200)
    started, t0 = dt.datetime.now(), time.perf_counter()
    machine = machine_info(("evidently", "scipy", "numpy", "pandas", "lightgbm", "mlflow"))
    specs = [WorldSpec(args.customers, int(s), False) for s in args.seeds.split(",") if s.strip()]
    if args.drift_seed >= 0:
        specs.append(WorldSpec(args.customers, args.drift_seed, True))
    results: list[dict[str, Any]] = []
    try:
        for spec in specs:
            results.append(_run_world(spec, args, console))
            console.log(f"{spec.name}: built/reused in {results[-1]['build_seconds']:.0f} s")
    except RuntimeError as exc:
        console.print(f"[bold red]{escape(str(exc))}[/]")
        return 2
    analysis = _analyse(results, args.workdir)
    seconds = time.perf_counter() - t0
    _print(console, results, analysis, seconds)
    out = args.workdir / "results" / f"drift-{started:%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "drift", "command": [Path(sys.executable).name, "-m", MODULE, *argv],
               "started_at": started.isoformat(timespec="seconds"), "seconds": round(seconds, 1),
               "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "machine": machine, "load_avg_at_end": os.getloadavg(), "worlds": results,
               "analysis": analysis}  # fmt: skip
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    console.print(f"Results written to [bold]{out}[/]")
    return 0 if analysis["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
