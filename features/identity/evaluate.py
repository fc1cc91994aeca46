"""Linkage quality against a known truth: pairwise precision, recall and F1, exactly."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from features.identity.deterministic import cluster_records


@dataclass(frozen=True)
class PairwiseScores:
    """Pairwise linkage metrics over all record pairs."""

    precision: float
    recall: float
    f1: float
    predicted_pairs: int
    true_pairs: int
    correct_pairs: int


def _pairs(sizes: pd.Series) -> int:
    s = sizes.astype("int64")
    return int((s * (s - 1) // 2).sum())


def pairwise_scores(predicted: pd.Series, truth: pd.Series) -> PairwiseScores:
    """Score a clustering (cluster id per record) against the true entity per record.

    Counts pairs from group sizes, so it is exact and linear in the number of records.
    """
    frame = pd.DataFrame({"p": predicted.to_numpy(), "t": truth.to_numpy()})
    predicted_pairs = _pairs(frame.groupby("p").size())
    true_pairs = _pairs(frame.groupby("t").size())
    correct = _pairs(frame.groupby(["p", "t"]).size())
    precision = correct / predicted_pairs if predicted_pairs else 1.0
    recall = correct / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PairwiseScores(precision, recall, f1, predicted_pairs, true_pairs, correct)


@dataclass(frozen=True)
class ClusterScores:
    """Cluster-level metrics: how many entities came out whole, and B-cubed precision/recall."""

    predicted_clusters: int
    true_clusters: int
    exact_cluster_recall: float  # share of true entities recovered exactly, no more and no less
    exact_cluster_precision: float  # share of predicted clusters that are exactly one true entity
    bcubed_precision: float
    bcubed_recall: float
    bcubed_f1: float


def cluster_scores(predicted: pd.Series, truth: pd.Series) -> ClusterScores:
    """Score a clustering at the level of clusters (exact recovery) and records (B-cubed)."""
    frame = pd.DataFrame({"p": predicted.to_numpy(), "t": truth.to_numpy()})
    p_size = frame.groupby("p")["t"].transform("size")
    t_size = frame.groupby("t")["p"].transform("size")
    both = frame.groupby(["p", "t"])["p"].transform("size")
    bp = float((both / p_size).mean()) if len(frame) else 1.0
    br = float((both / t_size).mean()) if len(frame) else 1.0
    exact = (both == p_size) & (both == t_size)
    n_exact = frame.loc[exact, "p"].nunique()
    n_pred, n_true = frame["p"].nunique(), frame["t"].nunique()
    return ClusterScores(
        predicted_clusters=int(n_pred),
        true_clusters=int(n_true),
        exact_cluster_recall=n_exact / n_true if n_true else 1.0,
        exact_cluster_precision=n_exact / n_pred if n_pred else 1.0,
        bcubed_precision=bp,
        bcubed_recall=br,
        bcubed_f1=2 * bp * br / (bp + br) if bp + br else 0.0,
    )


def evaluate_resolution(
    crosswalk: pd.DataFrame, links: pd.DataFrame, truth: pd.DataFrame
) -> dict[str, dict[str, float]]:
    """Deterministic-only versus the full resolution, both scored against the truth.

    Args:
        crosswalk: record_key -> customer_key of the run.
        links: the run's links (rule 'probabilistic' for the probabilistic pass).
        truth: record_key -> person_id; records missing from it are not scored.
    """
    frame = crosswalk.merge(truth[["record_key", "person_id"]], on="record_key", how="inner")
    # cluster over every record (links may pass through unscored ones), then score the scored ones
    rule_links = links[links["rule"] != "probabilistic"]
    det = cluster_records(crosswalk["record_key"], rule_links).set_axis(crosswalk["record_key"].to_numpy())
    det = det.reindex(frame["record_key"].to_numpy())
    out: dict[str, dict[str, float]] = {}
    for name, predicted in (("deterministic", det), ("deterministic+probabilistic", frame["customer_key"])):
        pw = pairwise_scores(predicted, frame["person_id"])
        cs = cluster_scores(predicted, frame["person_id"])
        out[name] = {**{k: float(v) for k, v in vars(pw).items()}, **{k: float(v) for k, v in vars(cs).items()}}
    return out
