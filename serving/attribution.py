"""Path attribution of a LightGBM model's score: what each feature's splits added on the way to each leaf.

TreeSHAP (`pred_contrib`) averages every feature's effect over all the orders the tree's
splits could be taken in, at a cost that grows with the leaves and the square of the depth;
for a 77-tree champion it was most of a batch's scoring time. Path attribution (Saabas:
"Interpreting random forests", 2014) credits each split with the change it makes along the
path a row actually takes: from the root's value to the child's value, to the split's
feature. Each leaf's credits depend only on the leaf, so they are tabulated once per model
(`PathTable`) and a row's attribution is the sum of its leaves' rows of that table, read from
LightGBM's leaf indices (`pred_leaf`, as cheap as a prediction).

Like TreeSHAP's, the credits and the trees' root values (the bias, last column) sum exactly
to the raw score, so the (calibrated) probability follows from them unchanged. The two
attributions rank the top features alike on most rows but not all (Saabas leans towards
features split near the root); `tests/test_scoring_attribution.py` measures the agreement.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
from lightgbm.basic import _LIB, _c_str, _safe_call
from scipy import sparse

DIRECT_ROWS = 16  # up to this many rows, summed without the sparse product (its set-up costs more)


@dataclass(frozen=True)
class PathTable:
    """Per leaf of every tree: the credit of each feature along the leaf's path, and the tree's root value last."""

    table: np.ndarray  # (leaves of all trees, features + 1)
    offsets: np.ndarray  # (trees,): the table row of each tree's leaf 0

    @property
    def trees(self) -> int:
        """How many trees the table covers."""
        return len(self.offsets)


def path_table(booster: Any) -> PathTable:
    """Tabulate every leaf's path credits from a LightGBM booster's tree dump.

    A split node's value is LightGBM's `internal_value` (what the tree would answer if it
    stopped there), a leaf's its `leaf_value`; both already carry the learning rate and, for
    the first tree, the average the boosting started from.
    """
    dump = booster.dump_model()
    features = int(dump["max_feature_idx"]) + 1
    trees = dump["tree_info"]
    offsets = np.zeros(len(trees), dtype=np.intp)
    rows: list[np.ndarray] = []
    for t, info in enumerate(trees):
        offsets[t] = len(rows) if t == 0 else offsets[t - 1] + int(trees[t - 1]["num_leaves"])
        leaves = np.zeros((int(info["num_leaves"]), features + 1))
        root = info["tree_structure"]
        bias = float(root["internal_value"]) if "split_index" in root else float(root["leaf_value"])
        leaves[:, features] = bias
        credit = np.zeros(features)
        stack: list[tuple[dict[str, Any], np.ndarray]] = [(root, credit)]
        while stack:  # depth first; each node carries the credits of its path so far
            node, so_far = stack.pop()
            if "split_index" not in node:
                leaves[int(node.get("leaf_index", 0)), :features] = so_far
                continue
            here = float(node["internal_value"])
            feature = int(node["split_feature"])
            for child in (node["left_child"], node["right_child"]):
                value = float(child["internal_value"] if "split_index" in child else child["leaf_value"])
                step = so_far.copy()
                step[feature] += value - here
                stack.append((child, step))
        rows.append(leaves)
    return PathTable(np.vstack(rows) if rows else np.zeros((0, features + 1)), offsets)


def path_contributions(table: PathTable, leaves: np.ndarray) -> np.ndarray:
    """Per row, each feature's path credit and the bias last (`pred_contrib`'s layout), from `pred_leaf` indices.

    `leaves`: (rows, trees) leaf indices as LightGBM's `predict(..., pred_leaf=True)` gives them.
    A few rows sum their leaves' table rows directly; more, by one sparse product (each row
    selects one table row per tree), which never makes the (rows, trees, features) block.
    """
    leaves = np.asarray(leaves, dtype=np.intp).reshape(len(leaves), table.trees)
    n = len(leaves)
    picked = (leaves + table.offsets).ravel()
    if n <= DIRECT_ROWS:
        return table.table[picked].reshape(n, table.trees, -1).sum(axis=1)
    selector = sparse.csr_matrix(
        (np.ones(picked.size), picked, np.arange(0, picked.size + 1, table.trees)), shape=(n, len(table.table))
    )
    return np.asarray(selector @ table.table)


_LEAF_INDEX, _FLOAT64 = 2, 1  # LightGBM's C API: C_API_PREDICT_LEAF_INDEX, C_API_DTYPE_FLOAT64


class SingleRowLeaves:
    """One row's leaf indices from LightGBM's single-row fast path (`LGBM_BoosterPredictForMatSingleRowFast`).

    `Booster.predict` sets up a predictor on every call: for one row that set-up is most of the
    call (about 50 us against 20 us here, for 60 trees). The fast path keeps one predictor for
    the booster; calls are serialised (its buffers are shared). The same trees as `predict`
    (the booster's best iteration when it has one).
    """

    def __init__(self, booster: Any) -> None:
        self.features = int(booster.num_feature())
        best = int(getattr(booster, "best_iteration", 0) or 0)
        self._config = ctypes.c_void_p()
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle,
                ctypes.c_int(_LEAF_INDEX),
                ctypes.c_int(0),
                ctypes.c_int(best if best > 0 else -1),
                ctypes.c_int(_FLOAT64),
                ctypes.c_int32(self.features),
                _c_str("num_threads=1"),
                ctypes.byref(self._config),
            )
        )
        weakref.finalize(self, _LIB.LGBM_FastConfigFree, self._config)
        self._out = np.empty(int(booster.num_trees()), dtype=np.float64)
        self._length = ctypes.c_int64(0)
        self._lock = threading.Lock()

    def __call__(self, row: np.ndarray) -> np.ndarray:
        """The (1, trees) leaf indices of one row of `features` floats, as `predict(..., pred_leaf=True)` gives."""
        data = np.ascontiguousarray(row, dtype=np.float64).reshape(-1)
        if data.size != self.features:
            raise ValueError(f"{data.size} values for a model of {self.features} features")
        with self._lock:
            _safe_call(
                _LIB.LGBM_BoosterPredictForMatSingleRowFast(
                    self._config,
                    data.ctypes.data_as(ctypes.c_void_p),
                    ctypes.byref(self._length),
                    self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
                )
            )
            return self._out[: self._length.value].astype(np.intp).reshape(1, -1)
