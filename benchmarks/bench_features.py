"""Benchmark: the point-in-time feature build of ~1M customers, against a plain pandas groupby baseline.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_features                        # 1,000,000 customers (created once, kept)
    .venv/bin/python -m benchmarks.bench_features --home /tmp/w1m        # an existing home (lake + crosswalk)
    .venv/bin/python -m benchmarks.bench_features --customers 20000      # any size (created under --workdir)
    .venv/bin/python -m benchmarks.bench_features --quick                # 20,000 customers: a check, not figures

Setup (untimed): a custintel home with a lake and an identity crosswalk, made with the CLI when
it is missing (`custintel generate`, `ingest --engine local`, `resolve --engine local`); then a
child reads the canonical inputs from it exactly as the build does (`open_feature_inputs`) and
exports the canonical tables (customers, accounts, profiles, products, transactions, tickets,
surveys, web, offers) to Parquet, once. Both contenders of the side-by-side comparison start
from those same files, so neither pays for the lake + crosswalk join and the other not:

    duckdb   read the files into DuckDB tables, then create_spine, build_feature_set of every set,
             build_interactions, build_labels (features/featurestore/build.py, unchanged)
    pandas   read the files with pd.read_parquet, then the same features, interactions and labels
             written as an engineer would with pandas: boolean masks, groupby().sum/max/mean,
             sort + drop_duplicates for the latest value, merges (`pandas_build` below)

Each measurement runs in its own child process (this module, called with ``_worker``), in this
order: end-to-end build, duckdb #1, pandas #1, duckdb #2 (with --repeats R: R pandas runs, each
between two duckdb runs), then the equality check. The end-to-end child runs the production
entry point `run_feature_build` (lake + crosswalk -> inputs, every set with its profiling and
quality checks, interactions, labels, offline Parquet written to a scratch folder instead of the
home's store; no online store) and reports its per-step seconds.

After the timed sections (untimed), every child writes its result tables to Parquet, and a last
child compares pandas #1 with duckdb #1 column by column (sorted by customer_key, and product_id
for interactions): same columns in the same order, same Arrow types, nulls in the same places,
numbers within rtol 1e-9 (atol 1e-9), everything else exactly equal. Any difference fails the run.
It also compares duckdb #1 with duckdb #2, and lists the customers whose arg_max/arg_min features
are decided by a tie (several values at the winning timestamp: the definition does not say which,
DuckDB returns any), so that a difference there is named as such (`--allow-ties` accepts them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from benchmarks.harness import RESULTS_DIR, BenchError, Run, Session, Spec, Target, Timed, emit, sandwich
from benchmarks.harness import main as harness_main
from benchmarks.harness import mib_text as _m
from benchmarks.harness import seconds_text as _s
from benchmarks.machine import ROOT

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_WORKDIR = RESULTS_DIR / "worlds"
DEFAULT_CUSTOMERS = 1_000_000
QUICK_CUSTOMERS = 20_000
DEFAULT_AS_OF = "2025-09-01"
TARGET_CUSTOMERS = 1_000_000
TARGET_SECONDS = 2 * 60
TARGET_SPEEDUP = 3.0
RTOL = 1e-9
ATOL = 1e-9
MIB = 1024 * 1024
MODULE = "benchmarks.bench_features"
EVENT_SOURCES = ("transactions", "tickets", "surveys", "web")
OUTPUTS = ("relationship", "value", "service", "digital", "attributes", "interactions", "labels", "purchase_labels")
SORT_KEYS = {"interactions": ["customer_key", "product_id"], "purchase_labels": ["customer_key", "product_id"]}


# --------------------------------------------------------------------------- child side


def _settings(home: str) -> Any:
    from custintel.settings import Settings

    return Settings(home=Path(home))


def _work_setup(p: dict[str, Any]) -> dict[str, Any]:
    """Read the canonical inputs from the lake + crosswalk and export them to Parquet (untimed setup)."""
    from features.featurestore.config import CANONICAL_COLUMNS
    from features.featurestore.store import feature_config, open_feature_inputs

    settings = _settings(p["home"])
    tables = ["customers", *CANONICAL_COLUMNS]
    config = feature_config(settings)
    out = Path(p["inputs_dir"])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    emit("progress", step="reading the lake and the crosswalk (open_feature_inputs)")
    con, summary = open_feature_inputs(settings, config)
    try:
        rows = {}
        for name in tables:
            emit("progress", step=f"exporting {name}")
            con.execute(
                f"COPY (SELECT * FROM {name}) TO '{out / f'{name}.parquet'}' (FORMAT parquet, COMPRESSION zstd)"
            )
            rows[name] = int(con.sql(f"SELECT count(*) FROM {name}").fetchall()[0][0])
    finally:
        con.close()
    if summary.observed_until is None:
        raise RuntimeError("the lake records no export time (_drop_as_of)")
    absent = [k for k in summary.absent if k != "offers"]
    if absent:
        raise RuntimeError(f"the pandas baseline needs every canonical source; absent: {absent}")
    meta = {
        "as_of": p["as_of"],
        "tables": tables,
        "observed_until": summary.observed_until.isoformat(),
        "config": config.model_dump(mode="json"),
        "rows": rows,
        "lake_rows": summary.rows,
        "unlinked": summary.unlinked,
        "absent": summary.absent,
        "customers": summary.customers,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    size = sum(f.stat().st_size for f in out.glob("*.parquet"))
    return {"seconds": time.perf_counter() - t0, "parquet_mib": size / MIB, **meta}


def _meta(inputs_dir: str) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((Path(inputs_dir) / "meta.json").read_text(encoding="utf-8"))
    return meta


def _write_outputs(tables: dict[str, Any], out_dir: str) -> None:
    """The result tables (Arrow or pandas) to Parquet, for the equality check (untimed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        if not isinstance(table, pa.Table):
            table = pa.Table.from_pandas(table, preserve_index=False)
        pq.write_table(table, out / f"{name}.parquet")


def _work_duckdb(p: dict[str, Any]) -> dict[str, Any]:
    """Contender: the canonical Parquet files into DuckDB, then the build's own functions."""
    import duckdb

    from features.featurestore.build import (
        build_feature_set,
        build_interactions,
        build_labels,
        build_purchase_labels,
        create_spine,
    )
    from features.featurestore.config import FeatureConfig
    from features.featurestore.definitions import feature_sets

    settings = _settings(p["home"])
    meta = _meta(p["inputs_dir"])
    config = FeatureConfig.model_validate(meta["config"])
    as_of = dt.date.fromisoformat(meta["as_of"])
    observed_until = dt.datetime.fromisoformat(meta["observed_until"])
    spill = Path(p["scratch"]) / "duckdb-spill"
    spill.mkdir(parents=True, exist_ok=True)
    clock = Timed()
    # The same connection settings as open_feature_inputs.
    con = duckdb.connect(
        config={
            "memory_limit": settings.features_memory_limit,
            "temp_directory": str(spill),
            "preserve_insertion_order": False,
        }
    )
    for name in meta["tables"]:
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM read_parquet('{Path(p['inputs_dir']) / f'{name}.parquet'}')")
    read_seconds = time.perf_counter() - clock.start
    steps: dict[str, float] = {"read_inputs": read_seconds}
    t1 = time.perf_counter()
    spine = create_spine(con, [as_of])
    steps["spine"] = time.perf_counter() - t1
    tables: dict[str, Any] = {}
    for fs in feature_sets(config):
        emit("progress", step=fs.name)
        t = time.perf_counter()
        tables[fs.name] = build_feature_set(con, fs)
        steps[fs.name] = time.perf_counter() - t
    emit("progress", step="interactions")
    t = time.perf_counter()
    tables["interactions"] = build_interactions(con)
    steps["interactions"] = time.perf_counter() - t
    emit("progress", step="labels")
    t = time.perf_counter()
    tables["labels"] = build_labels(con, config.labels, observed_until)
    tables["purchase_labels"] = build_purchase_labels(con, config.labels, observed_until)
    steps["labels"] = time.perf_counter() - t
    compute_seconds = clock.end(since=t1)
    con.close()
    rows = {k: v.num_rows for k, v in tables.items()}
    columns = {k: v.num_columns for k, v in tables.items()}
    return _built(clock, read_seconds, compute_seconds, steps, tables, p["out_dir"], rows, columns, spine_rows=spine)


def _built(
    clock: Timed,
    read_seconds: float,
    compute_seconds: float,
    steps: dict[str, float],
    tables: dict[str, Any],
    out_dir: str,
    rows: dict[str, int],
    columns: dict[str, int],
    **extra: Any,
) -> dict[str, Any]:
    """A contender's result (read + compute); its tables go to Parquet for the equality check, untimed."""
    emit("progress", step="writing results for the equality check (untimed)")
    _write_outputs(tables, out_dir)
    return clock.result(
        seconds=read_seconds + compute_seconds,
        read_seconds=read_seconds,
        compute_seconds=compute_seconds,
        step_seconds=steps,
        rows=rows,
        columns=columns,
        **extra,
    )


def _work_pandas(p: dict[str, Any]) -> dict[str, Any]:
    """Baseline: the canonical Parquet files with pd.read_parquet, then `pandas_build`."""
    import pandas as pd

    from features.featurestore.config import FeatureConfig

    meta = _meta(p["inputs_dir"])
    config = FeatureConfig.model_validate(meta["config"])
    clock = Timed()
    frames = {name: pd.read_parquet(Path(p["inputs_dir"]) / f"{name}.parquet") for name in meta["tables"]}
    read_seconds = time.perf_counter() - clock.start
    steps: dict[str, float] = {"read_inputs": read_seconds}
    t1 = time.perf_counter()
    tables = pandas_build(
        frames,
        config,
        pd.Timestamp(meta["as_of"]),
        pd.Timestamp(meta["observed_until"]),
        steps,
        lambda step: emit("progress", step=step),
    )
    compute_seconds = clock.end(since=t1)
    del frames
    rows = {k: len(v) for k, v in tables.items()}
    columns = {k: v.shape[1] for k, v in tables.items()}
    return _built(clock, read_seconds, compute_seconds, steps, tables, p["out_dir"], rows, columns)


def _work_e2e(p: dict[str, Any]) -> dict[str, Any]:
    """The production build, run_feature_build: lake + crosswalk -> every set, interactions, labels -> offline.

    The offline partitions and the report go to a scratch folder (the home's stores are left
    alone); no online store.
    """
    from features.featurestore.offline import write_partitions
    from flows.features import PLAIN_STEPS, BuiltSet, Steps, run_feature_build

    settings = _settings(p["home"])
    scratch = Path(p["scratch"]) / "e2e"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)

    def write_set(_settings: Any, built: BuiltSet, time_range: dict[str, Any]) -> list[str]:
        stats = {day: {**s, "data_time_range": time_range} for day, s in built.stats.items()}
        paths = write_partitions(scratch / "offline", built.key, built.definition, built.digest, built.table, stats)
        return [str(x) for x in paths]

    def write_report(_settings: Any, report: dict[str, Any]) -> Path:
        path = scratch / "report.json"
        path.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
        return path

    steps = Steps(PLAIN_STEPS.load_inputs, PLAIN_STEPS.build_one, write_set, PLAIN_STEPS.materialize, write_report)
    clock = Timed()
    report = run_feature_build(
        settings, [dt.date.fromisoformat(p["as_of"])], False, steps, lambda msg: emit("progress", step=msg)
    )
    clock.end()
    step_seconds = dict(report["seconds"])
    return clock.result(
        step_seconds=step_seconds,
        compute_seconds=sum(v for k, v in step_seconds.items() if "@" in k),
        rows={k: sum(x["rows"] for x in v.get("partitions", {}).values()) for k, v in report["sets"].items()},
        customers=report["inputs"]["customers"],
    )


def _work_verify(p: dict[str, Any]) -> dict[str, Any]:
    """Compare pandas #1 with duckdb #1, and duckdb #1 with duckdb #2, table by table, column by column."""
    t0 = time.perf_counter()
    emit("progress", step="finding ties of the arg_max / arg_min features")
    ties = tied_keys(p["inputs_dir"])
    out: dict[str, Any] = {"ties": {f"{t}.{c}": len(k) for (t, c), k in ties.items()}}
    pairs = {"pandas": ("duckdb_dir", "pandas_dir"), "determinism": ("duckdb_dir", "duckdb2_dir")}
    for pair, (left, right) in pairs.items():
        mismatches: list[dict[str, Any]] = []
        checked: dict[str, dict[str, int]] = {}
        for name in OUTPUTS:
            emit("progress", step=f"{pair}: comparing {name}")
            found, n_rows, n_cols = compare_tables(
                name,
                Path(p[left]) / f"{name}.parquet",
                Path(p[right]) / f"{name}.parquet",
                {c: k for (t, c), k in ties.items() if t == name},
                right_label="pandas" if pair == "pandas" else "duckdb #2",
            )
            mismatches += found
            checked[name] = {"rows": n_rows, "columns": n_cols}
        out[pair] = {"mismatches": mismatches, "checked": checked}
    return {"seconds": time.perf_counter() - t0, **out}


def tied_keys(inputs_dir: str) -> dict[tuple[str, str], set[str]]:
    """Customers whose arg_max / arg_min feature is decided by a tie: several different values share the
    winning timestamp, so the definition does not say which one is meant (DuckDB picks any of them).
    """
    import duckdb

    meta = _meta(inputs_dir)
    cutoff = f"TIMESTAMP '{meta['as_of']}'"
    end = f"TIMESTAMP '{meta['observed_until'].replace('T', ' ')[:19]}'"
    longest = max(meta["config"]["labels"]["churn_horizons_days"])

    def pit(time_col: str) -> str:
        return f"{time_col} < {cutoff} AND (arrival_time IS NULL OR arrival_time < {cutoff})"

    window = f"assigned_at >= {cutoff} AND assigned_at < {cutoff} + INTERVAL {longest} DAY"
    known = f"CASE WHEN outcome_window_end IS NULL OR outcome_window_end <= {end} THEN outcome END"
    plan_changes = pit("event_time") + " AND kind = 'plan_change'"
    # (table, column): (source, value, order by, max|min, filter), as in definitions.py and build.py
    specs = {
        ("relationship", "segment"): ("profiles", "segment", "created_at", "max", pit("created_at")),
        ("relationship", "region"): ("profiles", "region", "created_at", "max", pit("created_at")),
        ("relationship", "acquisition_channel"): (
            "profiles", "acquisition_channel", "created_at", "min", pit("created_at")
        ),
        ("relationship", "plan"): ("transactions", "product", "event_time", "max", plan_changes),
        ("service", "nps_last"): ("surveys", "score", "event_time", "max", pit("event_time")),
        ("labels", "offer_group"): ("offers", '"group"', "assigned_at", "min", window),
        ("labels", "offer_outcome"): ("offers", known, "assigned_at", "min", window),
    }  # fmt: skip
    d = Path(inputs_dir)
    out = {}
    with duckdb.connect() as con:
        for key, (source, value, by, agg, where) in specs.items():
            rows = con.sql(
                f"WITH e AS (SELECT cid, {by} AS t, {value} AS v FROM read_parquet('{d / f'{source}.parquet'}') "
                f"WHERE {where} AND {by} IS NOT NULL AND ({value}) IS NOT NULL), "
                f"w AS (SELECT cid, {agg}(t) AS t FROM e GROUP BY cid) "
                f"SELECT c.customer_key FROM e JOIN w USING (cid, t) "
                f"JOIN read_parquet('{d / 'customers.parquet'}') c USING (cid) "
                f"GROUP BY c.customer_key HAVING count(DISTINCT v) > 1"
            ).fetchall()
            out[key] = {str(r[0]) for r in rows}
    return out


def compare_tables(
    name: str,
    left_path: Path,
    right_path: Path,
    ties: dict[str, set[str]] | None = None,
    right_label: str = "pandas",
) -> tuple[list[dict[str, Any]], int, int]:
    """Mismatches between two result tables (left = DuckDB), sorted by their keys.

    For a column in `ties` (customer keys whose value a tie decides), each mismatch says how
    many of its rows are such ties.
    """
    import numpy as np
    import pyarrow.parquet as pq

    left, right = pq.read_table(left_path), pq.read_table(right_path)
    out: list[dict[str, Any]] = []
    ties = ties or {}
    rl = right_label

    def miss(column: str, kind: str, count: int, example: str = "", at_ties: int | None = None) -> None:
        out.append(
            {
                "table": name,
                "column": column,
                "kind": kind,
                "count": count,
                "at_ties": at_ties,
                "example": example,
                "pair": f"duckdb vs {rl}",
            }
        )

    if left.column_names != right.column_names:
        only_l = [c for c in left.column_names if c not in right.column_names]
        only_r = [c for c in right.column_names if c not in left.column_names]
        detail = f"duckdb only {only_l}, {rl} only {only_r}" if only_l or only_r else "same columns, other order"
        miss("*", "columns", len(only_l) + len(only_r), detail)
    if left.num_rows != right.num_rows:
        miss("*", "rows", abs(left.num_rows - right.num_rows), f"duckdb {left.num_rows:,}, {rl} {right.num_rows:,}")
        return out, left.num_rows, left.num_columns
    keys = SORT_KEYS.get(name, ["customer_key"])
    ldf = left.to_pandas().sort_values(keys, kind="stable").reset_index(drop=True)
    rdf = right.to_pandas().sort_values(keys, kind="stable").reset_index(drop=True)
    if ldf[keys].duplicated().any():
        miss(",".join(keys), "keys", int(ldf[keys].duplicated().sum()), "duplicate keys in the DuckDB result")
    if not ldf[keys].equals(rdf[keys]):
        miss(",".join(keys), "keys", int((ldf[keys] != rdf[keys]).any(axis=1).sum()), "the row keys differ")
        return out, left.num_rows, left.num_columns
    for col in [c for c in left.column_names if c in right.column_names]:
        lt, rt = left.schema.field(col).type, right.schema.field(col).type
        if lt != rt:
            miss(col, "type", 0, f"duckdb {lt}, {rl} {rt}")
        a, b = ldf[col], rdf[col]
        na, nb = a.isna().to_numpy(), b.isna().to_numpy()

        def at(i: int, a: Any = a, b: Any = b) -> str:
            key = ", ".join(str(ldf.at[i, k]) for k in keys)
            return f"{key}: duckdb {a.iat[i]!r}, {rl} {b.iat[i]!r}"

        def tied(idx: Any, col: str = col) -> int | None:
            if col not in ties:
                return None
            return int(ldf["customer_key"].iloc[idx].isin(ties[col]).sum())

        null_diff = np.flatnonzero(na != nb)
        if len(null_diff):
            miss(col, "nulls", len(null_diff), at(int(null_diff[0])), tied(null_diff))
        both = ~(na | nb)
        if not both.any():
            continue
        numeric = (lt.equals(rt) and (str(lt).startswith(("int", "uint", "double", "float")))) or (
            a.dtype.kind in "iuf" and b.dtype.kind in "iuf"
        )
        if numeric:
            av = a.to_numpy(dtype="float64", na_value=np.nan)[both]
            bv = b.to_numpy(dtype="float64", na_value=np.nan)[both]
            bad = ~np.isclose(av, bv, rtol=RTOL, atol=ATOL)
        else:
            bad = a.to_numpy(dtype=object)[both] != b.to_numpy(dtype=object)[both]
        if bad.any():
            idx = np.flatnonzero(both)[np.flatnonzero(bad)]
            miss(col, "values", len(idx), at(int(idx[0])), tied(idx))
    return out, left.num_rows, left.num_columns


# --------------------------------------------------------------------------- the pandas baseline


def pandas_build(
    frames: dict[str, pd.DataFrame],
    config: Any,
    cutoff: pd.Timestamp,
    observed_until: pd.Timestamp,
    seconds: dict[str, float] | None = None,
    progress: Any = None,
) -> dict[str, pd.DataFrame]:
    """The feature sets, interactions and labels of one cutoff, with pandas.

    Same semantics as features/featurestore (definitions.py, build.py): an event counts when it
    happened before the cutoff and arrived before it (or has no arrival time); windows are
    `event_time >= cutoff - N days`; counts and money sums are 0 without events, everything
    else is empty; `days since` is whole seconds / 86400 (DuckDB's date_diff('second')).
    """
    import numpy as np
    import pandas as pd

    seconds = seconds if seconds is not None else {}
    progress = progress or (lambda step: None)
    clock = [time.perf_counter()]

    def lap(step: str) -> None:
        now = time.perf_counter()
        seconds[step] = now - clock[0]
        clock[0] = now

    day = pd.Timedelta(days=1)
    customers = frames["customers"].set_index("cid")["customer_key"]

    def pit(df: pd.DataFrame, time_col: str = "event_time") -> pd.DataFrame:
        ok = (df[time_col] < cutoff) & (df["arrival_time"].isna() | (df["arrival_time"] < cutoff))
        return df[ok]

    def days_since(ts: pd.Series) -> pd.Series:
        return (cutoff - ts.dt.floor("s")).dt.total_seconds() / 86400.0

    def latest(df: pd.DataFrame, col: str, by: str, first: bool = False) -> pd.Series:
        """arg_max(col, by) per customer (arg_min when first), ignoring rows where either is null.

        Ties on `by` are broken as the definitions do: by arrival time, then by the value.
        """
        d = df.loc[df[col].notna() & df[by].notna(), ["cid", by, "arrival_time", col]]
        d = d.assign(_arrival=d["arrival_time"].fillna(d[by])).sort_values(["cid", by, "_arrival", col])
        return d.drop_duplicates("cid", keep="first" if first else "last").set_index("cid")[col]

    def within(df: pd.DataFrame, days: int) -> pd.Series:
        return df["event_time"] >= cutoff - days * day

    # Spine: customers with an account open at the cutoff.
    accounts = pit(frames["accounts"], "opened_at")
    is_open = accounts["closed_at"].isna() | (accounts["closed_at"] >= cutoff)
    spine = pd.Index(np.sort(accounts.loc[is_open, "cid"].unique()), name="cid")
    lap("spine")

    def finish(features: pd.DataFrame, fills: dict[str, Any], dtypes: dict[str, str]) -> pd.DataFrame:
        out = features.reindex(spine)
        out = out.fillna(fills).astype(dtypes)
        out.insert(0, "as_of", cutoff.date())
        out.insert(0, "customer_key", customers.reindex(spine).to_numpy())
        return out.sort_values("customer_key").reset_index(drop=True)

    # ---- relationship
    progress("relationship")
    acc = accounts.assign(open=is_open)
    by_acc = acc.groupby("cid")
    profiles = pit(frames["profiles"], "created_at")
    tx = pit(frames["transactions"])
    products = frames["products"]
    addons = products.loc[
        products["is_recurring"].fillna(False).astype(bool) & ~products["is_plan"].fillna(False).astype(bool),
        ["product_id"],
    ]
    held = tx[tx["kind"].isin(["purchase", "refund"])].merge(addons, left_on="product", right_on="product_id")
    held = held.assign(net=np.where(held["kind"] == "purchase", 1, -1))
    net = held.groupby(["cid", "product"])["net"].sum()
    rel = pd.DataFrame(
        {
            "tenure_days": days_since(by_acc["opened_at"].min()),
            "open_accounts": by_acc["open"].sum(),
            "segment": latest(profiles, "segment", "created_at"),
            "region": latest(profiles, "region", "created_at"),
            "acquisition_channel": latest(profiles, "acquisition_channel", "created_at", first=True),
            "plan": latest(tx[tx["kind"] == "plan_change"], "product", "event_time"),
            "plan_changes_365d": ((tx["kind"] == "plan_change") & within(tx, 365)).groupby(tx["cid"]).sum(),
            "products_held": (net > 0).groupby(level="cid").sum(),
        }
    )
    counts = ["open_accounts", "plan_changes_365d", "products_held"]
    relationship = finish(
        rel,
        dict.fromkeys(counts, 0),
        {**dict.fromkeys(counts, "int64"), "tenure_days": "float64"},
    )
    lap("relationship")

    # ---- value
    progress("value")
    kind = tx["kind"]
    purchase, discount, refund = kind == "purchase", kind == "discount", kind == "refund"
    w = {d: within(tx, d) for d in (30, 90, 365)}
    flags = {"cid": tx["cid"]}
    amounts = {"cid": tx["cid"]}
    for d in (30, 90, 365):
        flags[f"frequency_{d}d"] = purchase & w[d]
        amounts[f"monetary_{d}d"] = tx["amount"].where(purchase & w[d])
    flags["discounts_365d"] = discount & w[365]
    flags["refunds_365d"] = refund & w[365]
    amounts["discount_amount_365d"] = tx["amount"].where(discount & w[365])
    amounts["refund_amount_365d"] = tx["amount"].where(refund & w[365])
    n = pd.DataFrame(flags).groupby("cid").sum()
    money = pd.DataFrame(amounts).groupby("cid").sum()
    val = pd.concat([n, money], axis=1)
    val["recency_days"] = days_since(tx["event_time"].where(purchase).groupby(tx["cid"]).max())
    val["days_since_last_discount"] = days_since(tx["event_time"].where(discount).groupby(tx["cid"]).max())
    order = []
    for d in (30, 90, 365):
        order += [f"frequency_{d}d", f"monetary_{d}d"]
    order += [
        "discounts_365d",
        "discount_amount_365d",
        "refunds_365d",
        "refund_amount_365d",
        "recency_days",
        "days_since_last_discount",
    ]
    ints = [c for c in order if c.startswith(("frequency", "discounts", "refunds"))]
    value = finish(
        val[order],
        {**dict.fromkeys(ints, 0), **dict.fromkeys(money.columns, 0.0)},
        {c: ("int64" if c in ints else "float64") for c in order},
    )
    value["discount_share_365d"] = value["discount_amount_365d"] / (
        value["discount_amount_365d"] + value["monetary_365d"]
    ).replace(0, np.nan)
    value["refund_rate_365d"] = value["refunds_365d"] / value["frequency_365d"].replace(0, np.nan)
    lap("value")

    # ---- service
    progress("service")
    tk = pit(frames["tickets"])
    t90, t365 = within(tk, 90), within(tk, 365)
    tflags = {"cid": tk["cid"], "tickets_90d": t90, "tickets_365d": t365}
    for c in config.ticket_channels:
        tflags[f"tickets_channel_{c}_90d"] = (tk["channel"] == c) & t90
    for c in config.ticket_categories:
        tflags[f"tickets_category_{c}_90d"] = (tk["category"] == c) & t90
    svc = pd.DataFrame(tflags).groupby("cid").sum()  # one row per customer with a ticket
    resolved = tk["resolved_at"].notna() & (tk["resolved_at"] < cutoff) & t365
    svc["fcr_rate_365d"] = tk["first_contact_resolution"].astype("float64").where(resolved).groupby(tk["cid"]).mean()
    svc["csat_mean_365d"] = tk["csat"].where(resolved).groupby(tk["cid"]).mean()
    svc["days_since_last_ticket"] = days_since(tk.groupby("cid")["event_time"].max())
    seq = tk[["cid", "event_time"]].sort_values(["cid", "event_time"])
    prev = seq.groupby("cid")["event_time"].shift()
    repeat = (seq["event_time"] >= cutoff - 90 * day) & (prev >= seq["event_time"] - 7 * day)
    svc["repeat_contacts_90d"] = repeat.groupby(seq["cid"]).sum()
    sv = pit(frames["surveys"])
    nps = pd.DataFrame(
        {
            "nps_last": latest(sv, "score", "event_time"),
            "nps_mean_365d": sv["score"].where(within(sv, 365)).groupby(sv["cid"]).mean(),
            "days_since_nps": days_since(sv.groupby("cid")["event_time"].max()),
        }
    )
    web = pit(frames["web"])
    etype = web["event_type"]
    wb = {d: within(web, d) for d in (30, 90)}
    failed = ((etype == "self_service_failed") & wb[90]).groupby(web["cid"]).sum().rename("self_service_failed_90d")
    svc = pd.concat([svc, nps, failed], axis=1)  # outer join: customers with surveys or web events but no ticket
    svc_counts = [c for c in svc.columns if c.startswith(("tickets_", "repeat_", "self_service"))]
    service = finish(
        svc,
        dict.fromkeys(svc_counts, 0),
        {c: ("int64" if c in svc_counts else "float64") for c in svc.columns},
    )
    lap("service")

    # ---- digital
    progress("digital")
    session, page_view = etype == "session", etype == "page_view"
    micro = etype == "micro_conversion"
    views = {page: page_view & (web["page"] == page) for page in config.key_pages}
    dflags = {"cid": web["cid"]}
    for d in (30, 90):
        dflags[f"sessions_{d}d"] = session & wb[d]
        dflags[f"micro_conversions_{d}d"] = micro & wb[d]
        for page in config.key_pages:
            dflags[f"page_views_{page}_{d}d"] = views[page] & wb[d]
    dig = pd.DataFrame(dflags).groupby("cid").sum()
    dig["days_since_last_session"] = days_since(web["event_time"].where(session).groupby(web["cid"]).max())
    dig_counts = [c for c in dig.columns if c != "days_since_last_session"]
    digital = finish(
        dig,
        dict.fromkeys(dig_counts, 0),
        {c: ("int64" if c in dig_counts else "float64") for c in dig.columns},
    )
    digital["sessions_trend"] = digital["sessions_30d"] - (digital["sessions_90d"] - digital["sessions_30d"]) / 2.0
    lap("digital")

    # ---- attributes (golden record: age at the cutoff, age band, gender)
    progress("attributes")
    golden = frames["golden"].set_index("cid")
    age = np.floor((cutoff.normalize() - golden["birth_date"].dt.normalize()).dt.days / 365.25)
    band = np.select(  # type: ignore[type-var]
        [golden["birth_date"].isna(), age < 18, age < 25, age < 35, age < 50, age < 65],
        [None, "under_18", "18-24", "25-34", "35-49", "50-64"],
        default="65+",
    )
    attrs = pd.DataFrame({"age_years": age, "age_band": band, "gender": golden["gender"]}, index=golden.index)
    attributes = finish(attrs, {}, {"age_years": "float64"})
    lap("attributes")

    # ---- interactions (customer x product, purchases and refunds before the cutoff)
    progress("interactions")
    buyable = products.loc[~products["is_plan"].fillna(False).astype(bool), ["product_id", "is_recurring"]]
    x = tx[tx["cid"].isin(spine) & kind.isin(["purchase", "refund"])].merge(
        buyable, left_on="product", right_on="product_id"
    )
    xp = x["kind"] == "purchase"
    x = x.assign(
        purchases=xp,
        refunds=x["kind"] == "refund",
        spend=x["amount"].where(xp),
        last_purchase=x["event_time"].where(xp),
    )
    inter = (
        x.groupby(["cid", "product_id"])
        .agg(
            purchases=("purchases", "sum"),
            refunds=("refunds", "sum"),
            spend=("spend", "sum"),
            last_purchase=("last_purchase", "max"),
            is_recurring=("is_recurring", "first"),
        )
        .reset_index()
    )
    inter["days_since_purchase"] = days_since(inter["last_purchase"])
    inter["holds"] = inter["is_recurring"].fillna(False).astype(bool) & (inter["purchases"] > inter["refunds"])
    inter.insert(0, "as_of", cutoff.date())
    inter.insert(0, "customer_key", customers.reindex(inter["cid"]).to_numpy())
    interactions = (
        inter.astype({"purchases": "int64", "refunds": "int64", "spend": "float64"})[
            ["customer_key", "as_of", "product_id", "purchases", "refunds", "spend", "days_since_purchase", "holds"]
        ]
        .sort_values(["customer_key", "product_id"])
        .reset_index(drop=True)
    )
    lap("interactions")

    # ---- labels (outcomes after the cutoff; every account counts, whenever it arrived)
    progress("labels")
    labels_cfg = config.labels
    end = observed_until.floor("s")
    all_accounts = frames["accounts"]
    acc_g = all_accounts.groupby("cid")["closed_at"]
    churn_time = acc_g.max().where(acc_g.count() == acc_g.size()).reindex(spine)
    lab = pd.DataFrame(index=spine)

    def tri(happened: Any, known: bool) -> pd.Series:
        """true when it happened, else false when the horizon is observed, else empty (one per spine row)."""
        out = pd.Series(pd.NA if not known else False, index=spine, dtype="boolean")
        out[pd.Series(happened, index=spine).fillna(False).astype(bool).to_numpy()] = True
        return out

    for h in labels_cfg.churn_horizons_days:
        lab[f"churn_{h}d"] = tri((churn_time < cutoff + h * day) & (churn_time <= end), cutoff + h * day <= end)
    capped = churn_time.where(churn_time <= end, end)
    lab["time_to_churn_days"] = (capped.dt.floor("s") - cutoff).dt.total_seconds() / 86400.0
    lab["churn_observed"] = (churn_time <= end).astype(bool)
    h = labels_cfg.purchase_horizon_days
    known = cutoff + h * day <= end
    allt = frames["transactions"]
    bought = allt[
        (allt["event_time"] >= cutoff)
        & (allt["event_time"] < cutoff + h * day)
        & (allt["event_time"] < end)
        & (allt["kind"] == "purchase")
        & allt["cid"].isin(spine)
    ]
    plist = sorted(
        products.loc[~products["is_plan"].fillna(False).astype(bool) & products["product_id"].notna(), "product_id"]
        .unique()
        .tolist()
    )
    pairs = bought[["cid", "product"]].drop_duplicates().assign(hit=True)
    grid = pd.MultiIndex.from_product([spine, plist], names=["cid", "product"]).to_frame(index=False)
    grid = grid.merge(pairs, on=["cid", "product"], how="left")
    hit = grid["hit"].fillna(False).astype(bool)
    grid["bought"] = pd.Series(pd.NA if not known else False, index=grid.index, dtype="boolean").mask(hit, True)
    grid.insert(0, "as_of", cutoff.date())
    grid.insert(0, "customer_key", customers.reindex(grid["cid"]).to_numpy())
    purchase_labels = (
        grid.rename(columns={"product": "product_id"})[["customer_key", "as_of", "product_id", "bought"]]
        .sort_values(["customer_key", "product_id"])
        .reset_index(drop=True)
    )
    lab[f"buys_any_{h}d"] = tri(spine.isin(bought["cid"]), known)
    offers = frames["offers"]
    if len(offers):
        longest = max(labels_cfg.churn_horizons_days)
        o = offers[
            offers["cid"].isin(spine)
            & (offers["assigned_at"] >= cutoff)
            & (offers["assigned_at"] < cutoff + longest * day)
        ]
        known_outcome = o["outcome_window_end"].isna() | (o["outcome_window_end"] <= end)
        o = o.assign(known_outcome=o["outcome"].where(known_outcome))
        # the first offer after the cutoff (ties by group), its group and its own outcome
        first_offer = o.sort_values(["cid", "assigned_at", "group"]).drop_duplicates("cid").set_index("cid")
        lab["offer_group"] = first_offer["group"]
        lab["offer_outcome"] = first_offer["known_outcome"].astype("boolean")
    else:
        lab["offer_group"] = pd.Series(None, index=spine, dtype=object)
        lab["offer_outcome"] = pd.Series(pd.NA, index=spine, dtype="boolean")
    lab = lab.astype({"offer_group": "string", "offer_outcome": "boolean"})
    lab.insert(0, "as_of", cutoff.date())
    lab.insert(0, "customer_key", customers.reindex(spine).to_numpy())
    labels = lab.sort_values("customer_key").reset_index(drop=True)
    lap("labels")
    return {
        "relationship": relationship,
        "value": value,
        "service": service,
        "digital": digital,
        "attributes": attributes,
        "interactions": interactions,
        "labels": labels,
        "purchase_labels": purchase_labels,
    }


WORKERS = {
    "setup": _work_setup,
    "duckdb": _work_duckdb,
    "pandas": _work_pandas,
    "e2e": _work_e2e,
    "verify": _work_verify,
}


# --------------------------------------------------------------------------- parent side


def _prepare_home(args: argparse.Namespace, console: Console) -> tuple[Path, bool]:
    """The home to measure: --home as given, or <workdir>/w<customers>, created with the CLI when missing."""
    if args.home is not None:
        home = args.home
        if not (home / "identity" / "crosswalk.parquet").is_file():
            raise BenchError(f"{home} has no identity crosswalk: give a home after `custintel resolve`")
        return home, False
    home = args.workdir / f"w{args.customers}"
    world = home / "data" / "world"
    manifest = world / "manifest.json"
    if manifest.is_file():
        have = json.loads(manifest.read_text(encoding="utf-8")).get("config", {})
        if have.get("customers") != args.customers or have.get("seed") != args.seed:
            raise BenchError(
                f"{world} holds another world ({have.get('customers')} customers, seed {have.get('seed')})"
            )
    cli = str(Path(sys.executable).with_name("custintel"))
    steps = []
    if not manifest.is_file():
        steps.append(["generate", "--customers", str(args.customers), "--seed", str(args.seed), "--out", str(world)])
    if not list((home / "lake").glob("*/drop=*/data.parquet")):
        steps.append(["ingest", "--source", str(world), "--engine", "local"])
    if not (home / "identity" / "crosswalk.parquet").is_file():
        steps.append(["resolve", "--engine", "local"])
    for step in steps:
        cmd = [cli, "--home", str(home), *step]
        console.log(f"setup (untimed): {' '.join(cmd)}")
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BenchError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        console.log(f"setup: {step[0]} took {time.perf_counter() - t0:,.0f} s")
    return home, bool(steps)


def _only_ties(mismatches: list[dict[str, Any]]) -> bool:
    """Whether every mismatch is a row a tie decides (an arg_max / arg_min feature, see `tied_keys`)."""
    return all(m["kind"] in ("values", "nulls") and m.get("at_ties") == m["count"] for m in mismatches)


def _analyse(runs: list[Run], setup: Run, verify: Run | None) -> dict[str, Any]:
    duck = [r for r in runs if r.step == "duckdb"]
    pand = [r for r in runs if r.step == "pandas"]
    e2e = next(r for r in runs if r.step == "e2e")

    def mean(xs: list[Run], key: str) -> float:
        return statistics.mean(float(r.data[key]) if key != "seconds" else r.seconds for r in xs)

    d_total, p_total = mean(duck, "seconds"), mean(pand, "seconds")
    d_comp, p_comp = mean(duck, "compute_seconds"), mean(pand, "compute_seconds")
    d_peak = statistics.mean(r.peak_mib or 0.0 for r in duck)
    p_peak = statistics.mean(r.peak_mib or 0.0 for r in pand)
    rows = setup.data["rows"]
    e2e_wall = e2e.timed_wall_seconds if e2e.timed_wall_seconds is not None else e2e.wall_seconds
    big = setup.data["customers"] >= 0.9 * TARGET_CUSTOMERS
    not_here = f"targets apply at ~{TARGET_CUSTOMERS:,} customers: not counted here"
    mismatches = verify.data["pandas"]["mismatches"] if verify else None
    unstable = verify.data["determinism"]["mismatches"] if verify else None
    return {
        "customers": setup.data["customers"],
        "spine_rows": duck[0].data["spine_rows"],
        "events": sum(rows[k] for k in EVENT_SOURCES),
        "canonical_rows": rows,
        "duckdb": {
            "read_compute_seconds": d_total,
            "compute_seconds": d_comp,
            "per_run_seconds": [r.seconds for r in duck],
            "peak_mib": d_peak,
            "step_seconds": duck[0].data["step_seconds"],
        },
        "pandas": {
            "read_compute_seconds": p_total,
            "compute_seconds": p_comp,
            "per_run_seconds": [r.seconds for r in pand],
            "peak_mib": p_peak,
            "step_seconds": pand[0].data["step_seconds"],
        },
        "ratio_read_compute": p_total / d_total,
        "ratio_compute": p_comp / d_comp,
        "ratio_peak_mib": p_peak / d_peak if d_peak else None,
        "e2e": {
            "in_process_seconds": e2e.seconds,
            "spawn_to_built_seconds": e2e_wall,
            "peak_mib": e2e.peak_mib,
            "step_seconds": e2e.data["step_seconds"],
            "compute_seconds": e2e.data["compute_seconds"],
        },
        "targets_apply": big,
        "targets": [
            Target(
                f"DuckDB end-to-end build < {TARGET_SECONDS / 60:.0f} min",
                e2e_wall,
                TARGET_SECONDS,
                e2e_wall < TARGET_SECONDS,
                _s(e2e_wall),
                applies=big,
                note=not_here,
            ),
            Target(
                f"DuckDB ≥ {TARGET_SPEEDUP:.0f}× faster than pandas (read + compute)",
                p_total / d_total,
                TARGET_SPEEDUP,
                p_total / d_total >= TARGET_SPEEDUP,
                f"{p_total / d_total:.1f}×",
                applies=big,
                note=not_here,
            ),
        ],
        "equal": mismatches == [] if mismatches is not None else None,
        "equal_but_ties": mismatches is not None and _only_ties(mismatches),
        "mismatches": mismatches,
        "duckdb_deterministic": unstable == [] if unstable is not None else None,
        "duckdb_differs_only_at_ties": unstable is not None and _only_ties(unstable),
        "duckdb_run_differences": unstable,
        "ties": verify.data["ties"] if verify else None,
    }


def _print(console: Console, runs: list[Run], a: dict[str, Any], verify: Run | None) -> None:
    t = Table(title="Runs (in the order they ran)")
    for col in ("run", "timed", "read inputs", "compute", "process wall", "peak RSS MiB", "load avg", "steps (s)"):
        t.add_column(col, justify="left" if col in ("run", "steps (s)") else "right")
    for r in runs:
        steps = r.data.get("step_seconds", {})
        t.add_row(
            r.label,
            _s(r.seconds),
            _s(r.data["read_seconds"]) if "read_seconds" in r.data else _s(steps.get("load_inputs", 0.0)),
            _s(r.data["compute_seconds"]),
            _s(r.wall_seconds),
            _m(r.peak_mib),
            f"{r.load_avg[0]:.1f}",
            ", ".join(f"{k} {v:,.1f}" for k, v in steps.items()),
        )
    console.print(t)
    rows = a["canonical_rows"]
    console.print(
        f"{a['customers']:,} customers, {a['spine_rows']:,} with an open account at the cutoff; "
        f"{a['events']:,} events ("
        + ", ".join(f"{k} {rows[k]:,}" for k in EVENT_SOURCES)
        + f"); accounts {rows['accounts']:,}, profiles {rows['profiles']:,}, offers {rows['offers']:,}"
    )
    d, p = a["duckdb"], a["pandas"]
    c = Table(title="Side by side, from the same canonical Parquet files (ratio = pandas / duckdb, this run)")
    for col in ("", "duckdb", "pandas", "ratio"):
        c.add_column(col, justify="left" if not col else "right")
    c.add_row(
        "read + compute",
        _s(d["read_compute_seconds"]),
        _s(p["read_compute_seconds"]),
        f"{a['ratio_read_compute']:.1f}×",
    )
    c.add_row("compute only", _s(d["compute_seconds"]), _s(p["compute_seconds"]), f"{a['ratio_compute']:.1f}×")
    c.add_row("peak RSS", f"{_m(d['peak_mib'])} MiB", f"{_m(p['peak_mib'])} MiB", f"{a['ratio_peak_mib'] or 0:.2f}×")
    console.print(c)
    e = a["e2e"]
    console.print(
        f"End to end (run_feature_build: lake + crosswalk -> offline Parquet, no online store): "
        f"{_s(e['spawn_to_built_seconds'])} spawn to built ({_s(e['in_process_seconds'])} in process), "
        f"peak {_m(e['peak_mib'])} MiB; steps (s): " + ", ".join(f"{k} {v:,.1f}" for k, v in e["step_seconds"].items())
    )
    if verify is not None:
        checked = verify.data["pandas"]["checked"]
        console.print(
            "Equality pandas #1 vs duckdb #1: "
            + ", ".join(f"{k} {v['rows']:,}×{v['columns']}" for k, v in checked.items())
        )
        console.print(
            "Customers whose arg_max/arg_min feature a tie decides (several values at the winning time): "
            + ", ".join(f"{k} {v:,}" for k, v in a["ties"].items())
        )
        found = (a["mismatches"] or []) + (a["duckdb_run_differences"] or [])
        if found:
            m = Table(title="[bold red]Mismatches")
            for col in ("pair", "table", "column", "kind", "count", "at ties", "first example"):
                m.add_column(col, justify="right" if col in ("count", "at ties") else "left")
            for x in found:
                ties = "—" if x.get("at_ties") is None else f"{x['at_ties']:,}"
                m.add_row(x["pair"], x["table"], x["column"], x["kind"], f"{x['count']:,}", ties, escape(x["example"]))
            console.print(m)
        if a["equal"]:
            console.print(
                f"[bold green]Equal[/]: every column of every table (rtol {RTOL:g}, atol {ATOL:g} for numbers; "
                "exact otherwise; nulls in the same places; same Arrow types)"
            )
        elif a["equal_but_ties"]:
            console.print(
                "[bold yellow]Equal except at ties[/]: every difference is a customer whose arg_max/arg_min feature "
                "has several values at the winning time (the definition does not decide; DuckDB picks any). "
                "Counted as a failure unless --allow-ties."
            )
        else:
            console.print("[bold red]Not equal[/]: the pandas baseline and the DuckDB build differ (table above)")
        if a["duckdb_deterministic"] is False:
            why = "only at ties" if a["duckdb_differs_only_at_ties"] else "[bold red]beyond ties[/]"
            console.print(
                f"[bold yellow]duckdb #1 and duckdb #2 gave different results ({why}): the build is not deterministic"
            )
    for target in a["targets"]:
        console.print(target.line())


def _parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Wall time and peak memory of the point-in-time feature build (DuckDB) against a pandas "
        "groupby baseline of the same features, each in its own process, with an equality check.",
    )
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--home", type=Path, help="an existing custintel home with a lake and an identity crosswalk")
    src.add_argument(
        "--customers",
        type=int,
        default=DEFAULT_CUSTOMERS,
        help="world size when no --home: <workdir>/w<N>, created with the CLI if missing "
        f"(default {DEFAULT_CUSTOMERS:,})",
    )
    src.add_argument("--quick", action="store_true", help=f"--customers {QUICK_CUSTOMERS}: a check that the run works")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="where --customers worlds live (kept)")
    ap.add_argument("--seed", type=int, default=7, help="seed of a generated world")
    ap.add_argument("--as-of", default=DEFAULT_AS_OF, help=f"the cutoff (default {DEFAULT_AS_OF})")
    ap.add_argument("--repeats", type=int, default=1, help="pandas runs, each between two duckdb runs (default 1)")
    ap.add_argument("--scratch", type=Path, help="folder for the exported inputs and results (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument(
        "--allow-ties",
        action="store_true",
        help="accept differences found only where an arg_max/arg_min feature is decided by a tie",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.customers = QUICK_CUSTOMERS
    try:
        dt.date.fromisoformat(args.as_of)
    except ValueError:
        ap.error(f"--as-of: {args.as_of!r} is not a date (YYYY-MM-DD)")
    if args.home is not None:
        args.home = args.home.expanduser().resolve()
    args.workdir = args.workdir.expanduser().resolve()
    return args


def _run(session: Session) -> None:
    args, console, bench = session.args, session.console, session.bench
    home, created = _prepare_home(args, console)
    scratch = (args.scratch or Path(tempfile.mkdtemp(prefix="bench-features-"))).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    console.log(f"home {home}{' (created)' if created else ''}; scratch {scratch}; cutoff {args.as_of}")
    base = {"home": str(home), "as_of": args.as_of, "scratch": str(scratch), "inputs_dir": str(scratch / "inputs")}
    runs: list[Run] = []
    session.record.update(
        home=str(home),
        targets={"customers": TARGET_CUSTOMERS, "end_to_end_seconds": TARGET_SECONDS, "speedup": TARGET_SPEEDUP},
        fairness="both contenders read the same canonical Parquet files (exported once from open_feature_inputs, "
        "untimed); the end-to-end run is the production run_feature_build from the lake",
        analysis={},
        runs=runs,
        verify=None,
    )

    def build(step: str, label: str) -> Run:
        out = scratch / "out" / label.replace(" #", "-")
        return bench.child(step, label, {**base, "out_dir": str(out)})

    try:
        setup = bench.child("setup", "setup: canonical inputs -> Parquet (untimed)", base)
        console.log(
            f"{setup.data['customers']:,} customers; canonical Parquet {setup.data['parquet_mib']:,.0f} MiB; "
            + ", ".join(f"{k} {v:,}" for k, v in setup.data["rows"].items())
        )
        runs.append(bench.child("e2e", "end to end: run_feature_build", base))
        # D P D: each pandas run between two duckdb runs (with --repeats R: R pandas runs).
        runs.extend(
            sandwich(lambda i: build("duckdb", f"duckdb #{i}"), lambda i: build("pandas", f"pandas #{i}"), args.repeats)
        )
        verify = bench.child(
            "verify",
            "equality check pandas #1 vs duckdb #1, duckdb #1 vs #2 (untimed)",
            {
                "inputs_dir": base["inputs_dir"],
                "duckdb_dir": str(scratch / "out" / "duckdb-1"),
                "pandas_dir": str(scratch / "out" / "pandas-1"),
                "duckdb2_dir": str(scratch / "out" / "duckdb-2"),
            },
        )
        session.record["verify"] = verify
        analysis = _analyse(runs, setup, verify)
        session.record["analysis"] = analysis
        _print(console, runs, analysis, verify)
    finally:
        if not args.keep and args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    session.targets += analysis["targets"]
    if not (analysis["equal"] is True or (args.allow_ties and analysis["equal_but_ties"] is True)):
        session.problems.append("the pandas baseline and the DuckDB build differ")
    if not (analysis["duckdb_deterministic"] is True or analysis["duckdb_differs_only_at_ties"] is True):
        session.problems.append("duckdb #1 and duckdb #2 differ beyond ties: the build is not deterministic")


SPEC = Spec(
    name="features",
    module=MODULE,
    workers=WORKERS,
    packages=("numpy", "pandas", "pyarrow", "duckdb", "custintel"),
)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when the results are equal and every applicable target passes."""
    return harness_main(SPEC, argv, _parse, _run)


if __name__ == "__main__":
    sys.exit(main())
