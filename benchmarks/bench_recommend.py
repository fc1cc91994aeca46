"""Recommendation quality on MovieLens-100k: the platform's chosen model against a reference EASE on its own splits.

    python -m benchmarks.bench_recommend [--trials 20]
    python -m benchmarks.bench_recommend --quick      # 2 ALS trials

MovieLens-100k ships inside RecBole's wheel (installed by the Makefile). For each split the
platform offers for a user's interactions (`custintel train recommendation --interactions`):
each user's interactions 80/10/10 at random (`--split random`), each user's latest 10%
held out (`--split per-user`, the default with `--time`), and, for information, one time cutoff
for everyone (`--split global`), a child process:

- splits the file with the platform's own `own_interactions` and trains as the command does
  (`train_recommendation`: popularity, EASE and ALS tuned on validation, the best served);
- fits a reference EASE written here from the paper (Steck 2019), independently of the
  platform's code: the same split, its L2 penalty picked on the validation holdout from a
  grid of its own, refit on the test history;
- scores the platform's served model, the reference and popularity with NDCG@10 computed
  here (full ranking over the catalogue minus what the user already has).

Target: the platform's NDCG@10 at least the reference EASE's (ratio >= 1.00) on the random and
per-user splits. Printed beside it: the paired per-user difference and its standard error.
Results go to benchmarks/results/recommend-<time>.json.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.table import Table

from benchmarks.harness import Session, Spec, Target, Timed, emit
from benchmarks.harness import main as harness_main

K = 10
SPLITS = ("random", "per-user", "global")
TARGETED = ("random", "per-user")  # global: for information (the protocol before per-user time splits)
TARGET_RATIO = 1.0
# The reference's own grid: 16 values, geometric from 10 to 10,000 (five per decade; the platform's default
# grid has the same spacing from 1, so where both pick the same penalty the two models agree to rounding).
REFERENCE_LAMBDAS = [10 ** (1 + 3 * i / 15) for i in range(16)]


def ndcg_per_user(lists: dict[str, list[str]], relevant: dict[str, set[str]], k: int = K) -> dict[str, float]:
    """NDCG@k of each user with a relevant item; binary gains, ideal DCG over min(|relevant|, k) hits."""
    import math

    out = {}
    for user, rel in relevant.items():
        ranked = lists.get(user, [])[:k]
        dcg = sum(1.0 / math.log2(r + 2) for r, item in enumerate(ranked) if item in rel)
        ideal = sum(1.0 / math.log2(r + 2) for r in range(min(len(rel), k)))
        out[user] = dcg / ideal
    return out


def ndcg(lists: dict[str, list[str]], relevant: dict[str, set[str]], k: int = K) -> float:
    """Mean NDCG@k over users with a relevant item."""
    values = ndcg_per_user(lists, relevant, k)
    return sum(values.values()) / max(len(values), 1)


def reference_ease(history: Any, items: list[str], lam: float) -> tuple[dict[str, list[str]], Any]:
    """EASE from the paper: B = I - P diagMat(1 / diag(P)), P = (X'X + lam I)^-1; the user's items never ranked."""
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    users = sorted(history["user"].unique())
    u = pd.Index(users).get_indexer(history["user"])
    i = pd.Index(items).get_indexer(history["item"])
    x = sp.csr_matrix((np.ones(len(u)), (u, i)), shape=(len(users), len(items)))
    x.data[:] = 1.0  # bought or not (duplicates summed above)
    g = (x.T @ x).toarray()
    g[np.diag_indices_from(g)] += lam
    p = np.linalg.inv(g)
    b = p / (-np.diag(p))
    np.fill_diagonal(b, 0.0)
    scores = np.asarray(x @ b)
    scores[x.nonzero()] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    return {user: [items[j] for j in top[r]] for r, user in enumerate(users)}, b


def relevant_items(data: Any) -> dict[str, set[str]]:
    """Held-out items per user, minus the user's history (what a recommender may still suggest)."""
    seen = data.history.groupby("user")["item"].agg(set).to_dict()
    out: dict[str, set[str]] = {}
    for user, item in zip(data.holdout["user"], data.holdout["item"], strict=True):
        if item not in seen.get(user, set()):
            out.setdefault(user, set()).add(item)
    return out


def _split_step(p: dict[str, Any]) -> dict[str, Any]:
    """One split: the platform's training and the reference EASE, both scored here."""
    import logging
    from pathlib import Path

    import numpy as np
    import recbole

    from models.config import load_training_config
    from models.own_tables import OwnInteractions, own_interactions
    from models.recommendation import train_recommendation
    from models.tuning import FitClock, create_study

    logging.getLogger("custintel").setLevel(logging.WARNING)
    path = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"
    clock = Timed()
    emit("progress", step="splitting")
    own = OwnInteractions(path, "user_id:token", "item_id:token", None, "timestamp:float", p["split"])
    valid, test = own_interactions(own, seed=0)
    config = load_training_config().recommendation
    tuning = config.tuning.model_copy(update={"trials": p["trials"], "timeout_seconds": None})
    emit("progress", step="platform: tuning and fitting")
    trained = train_recommendation(valid, test, config, tuning, create_study("bench", tuning, None), FitClock())
    clock.end()
    model = trained.primary.model
    relevant_test, relevant_valid = relevant_items(test), relevant_items(valid)
    platform = ndcg({u: [i for i, _, _ in model.recommend(u)][:K] for u in relevant_test}, relevant_test)

    emit("progress", step="reference EASE: lambda on validation")
    items = sorted(set(valid.catalogue))
    on_valid = {lam: ndcg(reference_ease(valid.history, items, lam)[0], relevant_valid) for lam in REFERENCE_LAMBDAS}
    lam = max(on_valid, key=lambda x: on_valid[x])
    emit("progress", step="reference EASE: refit on the test history")
    ours = ndcg_per_user({u: [i for i, _, _ in model.recommend(u)][:K] for u in relevant_test}, relevant_test)
    seen = test.history.groupby("user")["item"].agg(set).to_dict()
    ranked = test.history.groupby("item")["user"].nunique().sort_values(ascending=False, kind="stable").index.tolist()
    popular = {u: [i for i in ranked if i not in seen.get(u, set())][:K] for u in relevant_test}
    # A user with no history gets the most popular items from the reference too, as from any deployment.
    theirs = ndcg_per_user({**popular, **reference_ease(test.history, items, lam)[0]}, relevant_test)
    reference = sum(theirs.values()) / len(theirs)
    # The paired difference per user and its standard error: how far apart two equally good models land by chance.
    diff = np.array([ours[u] - theirs[u] for u in relevant_test])

    return clock.result(
        split=p["split"],
        users=len(relevant_test),
        test_users_without_history=len(set(relevant_test) - set(seen)),
        platform_chosen=trained.params["recommender"],
        platform_params={k: v for k, v in trained.params.items() if k not in ("k", "min_history")},
        platform_ndcg=platform,
        platform_reported_ndcg=trained.metrics[f"test_ndcg_at_{K}"],
        platform_candidates=trained.tables["candidates"].to_dict("records"),
        reference_lambda=lam,
        reference_valid_ndcg=on_valid[lam],
        reference_ndcg=reference,
        difference=float(diff.mean()),
        difference_se=float(diff.std(ddof=1) / np.sqrt(len(diff))),
        popularity_ndcg=ndcg(popular, relevant_test),
    )


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_recommend", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="Optuna trials for the platform's ALS study")
    parser.add_argument("--quick", action="store_true", help="2 ALS trials")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials = 2
    return args


def _run(session: Session) -> None:
    """Each split in its own child; the ratio platform / reference EASE against the target."""
    args, console = session.args, session.console
    results: list[dict[str, Any]] = []
    session.record["results"] = results
    session.bench.plan(len(SPLITS))
    for split in SPLITS:
        run = session.bench.child("split", f"{split} split", {"split": split, "trials": args.trials}, "MovieLens-100k")
        results.append({**run.data, "seconds": run.seconds})
        session.save()
    out = Table(title=f"MovieLens-100k NDCG@{K}: the platform's served model against a reference EASE")
    for col in ("split", "users", "without history", "platform (chose)", "reference EASE (lambda)", "popularity",
                "difference ± SE", "platform / EASE", "fit s"):  # fmt: skip
        out.add_column(col, justify="right")
    for r in results:
        ratio = r["platform_ndcg"] / r["reference_ndcg"]
        out.add_row(
            r["split"], f"{r['users']:,}", f"{r['test_users_without_history']:,}",
            f"{r['platform_ndcg']:.4f} ({r['platform_chosen']})",
            f"{r['reference_ndcg']:.4f} ({r['reference_lambda']:.0f})",
            f"{r['popularity_ndcg']:.4f}", f"{r['difference']:+.4f} ± {r['difference_se']:.4f}", f"{ratio:.3f}",
            f"{r['seconds']:.1f}",
        )  # fmt: skip
        if abs(r["platform_ndcg"] - r["platform_reported_ndcg"]) > 1e-9:
            session.problems.append(
                f"{r['split']}: NDCG@{K} computed here {r['platform_ndcg']:.6f} differs from the platform's own "
                f"{r['platform_reported_ndcg']:.6f}"
            )
        session.targets.append(
            Target(
                f"{r['split']} split: platform / EASE NDCG@{K} >= {TARGET_RATIO:.2f}",
                ratio,
                TARGET_RATIO,
                ratio >= TARGET_RATIO - 1e-9,
                f"{ratio:.3f}",
                applies=r["split"] in TARGETED,
                note="for information: a global time cutoff leaves late users without history",
            )
        )
    console.print(out)
    for problem in session.problems:
        console.print(f"[bold red]{problem}")
    for target in session.targets:
        console.print(target.line())


SPEC = Spec(
    name="recommend",
    module="benchmarks.bench_recommend",
    workers={"split": _split_step},
    packages=("implicit", "numpy", "scipy", "optuna", "recbole"),
    measured=("models", "custintel"),
)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when the platform matches or beats the reference EASE on every split."""
    return harness_main(SPEC, argv, _parse, _run)


if __name__ == "__main__":
    sys.exit(main())
