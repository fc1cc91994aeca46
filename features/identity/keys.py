"""Stable customer keys: the same person keeps the same key across runs and drops.

A cluster inherits the key most of its records had before. When clusters merge,
the key with the most records survives and the others are retired, pointing to
it; when a cluster splits, the part holding most records keeps the key. Clusters
with no history get a key derived from their smallest record key, so that even
without a previous crosswalk the same data always gets the same keys.
"""

from __future__ import annotations

import hashlib

import pandas as pd

CROSSWALK_COLUMNS = ["record_key", "customer_key"]
KEY_EVENT_COLUMNS = ["customer_key", "event", "related_key", "records"]


def _derived_key(anchor: str, attempt: int) -> str:
    text = anchor if attempt == 0 else f"{anchor}#{attempt}"
    return "CK" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:14].upper()


def assign_customer_keys(
    clusters: pd.DataFrame, previous: pd.DataFrame | None = None, reserved: set[str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Give every cluster a customer key, keeping the keys of `previous` where the person was seen.

    Args:
        clusters: record_key and cluster (any cluster label; e.g. the smallest member's key).
        previous: the last crosswalk (record_key, customer_key), or None on a first run.
        reserved: every key issued before (from the key-event log): a retired key is never reissued.

    Returns:
        The crosswalk (record_key, customer_key) sorted by record key, and what
        changed in this run: `new` keys, `merged` (the key was retired into
        related_key), `split` (a new key for records that came from related_key)
        and `retired` (no record carries the key any more). Kept keys are not logged.
    """
    frame = clusters[["record_key", "cluster"]].astype("string[pyarrow]")
    # each cluster's smallest record key (sorting strings is fast; a grouped min over them is not)
    firsts = frame.sort_values("record_key", kind="stable").drop_duplicates("cluster")
    anchor = pd.Series(firsts["record_key"].to_numpy(), index=firsts["cluster"].to_numpy(), dtype="string[pyarrow]")
    events: list[dict[str, object]] = []
    key_of_cluster: dict[str, str] = {}
    used: set[str] = set(reserved or ())
    prev_keys: set[str] = set()
    if previous is not None and not previous.empty:
        prev = previous[CROSSWALK_COLUMNS].astype("string[pyarrow]")
        prev_keys = set(prev["customer_key"])
        used |= prev_keys
        joined = frame.merge(prev, on="record_key", how="inner")
        votes = joined.groupby(["cluster", "customer_key"]).size().rename("n").reset_index()
        votes["anchor"] = votes["cluster"].map(anchor)
        # Most shared records first; ties go to the smaller key, then the smaller anchor (arbitrary but stable).
        votes = votes.sort_values(["n", "customer_key", "anchor"], ascending=[False, True, True], kind="stable")
        taken: set[str] = set()
        for cluster, key in zip(votes["cluster"], votes["customer_key"], strict=True):
            if cluster in key_of_cluster or key in taken:
                continue
            key_of_cluster[cluster] = key
            taken.add(key)
        retired: set[str] = set()
        for cluster, key, n in zip(votes["cluster"], votes["customer_key"], votes["n"], strict=True):
            winner = key_of_cluster.get(cluster)
            if winner is not None and key not in taken and key not in retired:
                retired.add(key)
                events.append({"customer_key": key, "event": "merged", "related_key": winner, "records": n})
    # Clusters without history: keys derived from their anchor, in anchor order for determinism.
    new_clusters = anchor[~anchor.index.isin(list(key_of_cluster))].sort_values()
    split_from = _split_sources(frame, previous, key_of_cluster) if prev_keys else {}
    sizes = frame.groupby("cluster").size()
    for cluster, anchor_key in new_clusters.items():
        attempt = 0
        key = _derived_key(str(anchor_key), attempt)
        while key in used:
            attempt += 1
            key = _derived_key(str(anchor_key), attempt)
        used.add(key)
        key_of_cluster[str(cluster)] = key
        origin = split_from.get(str(cluster))
        events.append(
            {
                "customer_key": key,
                "event": "split" if origin else "new",
                "related_key": origin,
                "records": int(sizes.loc[str(cluster)]),
            }
        )
    crosswalk = pd.DataFrame(
        {
            "record_key": frame["record_key"],
            "customer_key": frame["cluster"].map(key_of_cluster).astype("string[pyarrow]"),
        }
    )
    assigned = set(key_of_cluster.values())
    merged = {str(e["customer_key"]) for e in events if e["event"] == "merged"}
    for key in sorted(prev_keys - assigned - merged):
        events.append({"customer_key": key, "event": "retired", "related_key": None, "records": 0})
    log = pd.DataFrame(events, columns=KEY_EVENT_COLUMNS)
    log["records"] = log["records"].fillna(0).astype("int64")
    log = log.sort_values(["event", "customer_key"], kind="stable").reset_index(drop=True)
    return crosswalk.sort_values("record_key", kind="stable").reset_index(drop=True), log


def _split_sources(frame: pd.DataFrame, previous: pd.DataFrame | None, kept: dict[str, str]) -> dict[str, str]:
    """For clusters that got no key: the previous key most of their records had, if any."""
    if previous is None:
        return {}
    joined = frame[~frame["cluster"].isin(list(kept))].merge(
        previous[CROSSWALK_COLUMNS].astype("string[pyarrow]"), on="record_key", how="inner"
    )
    if joined.empty:
        return {}
    top = joined.groupby(["cluster", "customer_key"]).size().rename("n").reset_index()
    top = top.sort_values(["cluster", "n", "customer_key"], ascending=[True, False, True], kind="stable")
    return dict(top.drop_duplicates("cluster").set_index("cluster")["customer_key"].astype(str))
