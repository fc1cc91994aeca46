"""The deterministic pass: records that share an exact normalised identifier are one person.

Cheap and explainable: every link names the rule and the shared value. A value
shared by more records than `max_group` (a switchboard number, a placeholder, a
shop's own address used for walk-in customers) links nobody, since it does not
identify one person. A family of up to `max_group` sharing one inbox is linked: the
probabilistic pass cannot undo that, so lower `max_group` where that is common.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from features.identity.config import DETERMINISTIC_RULES


def deterministic_links(
    records: pd.DataFrame, rules: tuple[str, ...] = DETERMINISTIC_RULES, max_group: int = 6
) -> pd.DataFrame:
    """Pairs of records linked by an exact rule: record_key_l, record_key_r, rule, value.

    Each group of records sharing a value is linked as a star to its smallest key,
    which is enough for connectivity and keeps the edge count linear.
    """
    # Integer codes in key order: group minima on integers are fast, on strings they are not.
    codes, uniques = pd.factorize(records["record_key"].astype("string"), sort=True)
    keys = np.asarray(uniques, dtype=object)
    edges = []
    for rule in rules:
        vals = pd.DataFrame({"code": codes, "value": records[rule].to_numpy()}).dropna()
        sizes = vals.groupby("value")["code"].transform("size")
        vals = vals[(sizes > 1) & (sizes <= max_group)]
        if vals.empty:
            continue
        hub = vals.groupby("value")["code"].transform("min").to_numpy()
        star = vals["code"].to_numpy() != hub
        edges.append(
            pd.DataFrame(
                {
                    "record_key_l": keys[hub[star]],
                    "record_key_r": keys[vals["code"].to_numpy()[star]],
                    "rule": rule,
                    "value": vals["value"].to_numpy()[star],
                }
            )
        )
    if not edges:
        return pd.DataFrame(columns=["record_key_l", "record_key_r", "rule", "value"])
    return pd.concat(edges, ignore_index=True)


def cluster_records(record_keys: pd.Series, links: pd.DataFrame) -> pd.Series:
    """Connected components of the link graph; each cluster is named by its smallest record key.

    Naming by the smallest member makes the result independent of row order.
    """
    keys = pd.Index(record_keys.astype("string").unique()).sort_values()
    n = len(keys)
    left = keys.get_indexer(links["record_key_l"].astype("string"))
    right = keys.get_indexer(links["record_key_r"].astype("string"))
    graph = coo_matrix((np.ones(len(left)), (left, right)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    # keys are sorted, so the first member met of each component is its smallest key
    first = pd.Series(np.arange(n)).groupby(label).transform("min").to_numpy()
    names = pd.Series(np.asarray(keys)[first], index=keys, dtype="string")
    return names.reindex(record_keys.astype("string")).set_axis(record_keys.index)
