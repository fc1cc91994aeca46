"""Deterministic assignment of customers to experiments and arms: salted hashes, layers, a global holdout.

Three independent hashes of a customer key, each sha256 of `"<salt>:<key>"`:

1. the global holdout (salt `holdout_salt`): a customer whose bucket falls below `holdout x BUCKETS`
   gets no experiment at all (and, at `/decide`, no action: the policy's fallback) -- a standing
   control group for the programme as a whole;
2. the customer's position in each layer (salt: the layer's name): the experiments of one layer hold
   disjoint ranges of its `BUCKETS` positions (`ExperimentRegistry.launch`), so they never share a
   customer, and a position outside every range is in no experiment of that layer;
3. the arm (salt: the experiment's salt, default its name): the first 32 bits of the hash as a
   fraction in [0, 1), split by the arms' cumulative shares.

The same key always gets the same arm, in any process (no state, no seed); different salts make the
layers, the holdout and the arms independent of one another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from experiments.errors import ExperimentError
from experiments.spec import BUCKETS, RegisteredExperiment

__all__ = ["BUCKETS", "Assigner", "Assignment", "bucket", "unit_fraction"]

HOLDOUT_SALT = "custintel-holdout"
_SPAN = float(2**32)


def _digest32(salt: str, key: str) -> int:
    return int(hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()[:8], 16)


def bucket(salt: str, key: str) -> int:
    """A key's bucket in [0, BUCKETS): the first 32 bits of sha256("<salt>:<key>") modulo BUCKETS."""
    return _digest32(salt, key) % BUCKETS


def unit_fraction(salt: str, key: str) -> float:
    """A key's uniform draw in [0, 1) under `salt` (the first 32 bits of the hash over 2**32)."""
    return _digest32(salt, key) / _SPAN


def _digests(salt: str, keys: Iterable[str]) -> np.ndarray:
    """The first 32 bits of sha256("<salt>:<key>") per key (hashlib in a loop; the prefix's state copied)."""
    base = hashlib.sha256(f"{salt}:".encode())

    def first4(key: str) -> bytes:
        h = base.copy()
        h.update(key.encode())
        return h.digest()[:4]

    return np.frombuffer(b"".join(map(first4, keys)), dtype=">u4").astype(np.int64)


@dataclass(frozen=True)
class Assignment:
    """One customer's arm in one experiment."""

    experiment: str
    version: int
    arm: str
    layer: str


COLUMNS = ["key", "experiment", "version", "arm", "layer"]


class Assigner:
    """Assigns customer keys to the launched experiments' arms (stateless; safe to share across threads).

    Only experiments with status "launched" are used (a draft or stopped one assigns nobody).
    `holdout`: the share of all customers held out of every experiment, in [0, 0.5].
    """

    def __init__(
        self,
        experiments: Sequence[RegisteredExperiment],
        holdout: float = 0.0,
        holdout_salt: str = HOLDOUT_SALT,
    ) -> None:
        if not 0.0 <= holdout <= 0.5:
            raise ExperimentError(f"holdout: {holdout:g} is not a share in [0, 0.5]")
        self.holdout_share = holdout
        self.holdout_salt = holdout_salt
        self._holdout_below = round(holdout * BUCKETS)
        self.experiments = [e for e in experiments if e.status == "launched"]
        layers: dict[str, list[RegisteredExperiment]] = {}
        for e in sorted(self.experiments, key=lambda e: e.buckets):
            layers.setdefault(e.layer, []).append(e)
        for layer, members in layers.items():
            for before, after in zip(members, members[1:], strict=False):
                if after.buckets[0] < before.buckets[1]:
                    raise ExperimentError(
                        f"buckets: {before.name!r} and {after.name!r} overlap in layer {layer!r} "
                        f"({list(before.buckets)} and {list(after.buckets)})"
                    )
        self.layers = layers
        # per experiment: its arms' names and cumulative share bounds (the last one exactly 1)
        self._arms: dict[str, tuple[list[str], np.ndarray]] = {}
        for e in self.experiments:
            shares = np.cumsum([a.share for a in e.spec.arms])
            shares[-1] = 1.0
            self._arms[e.name] = ([a.name for a in e.spec.arms], shares)

    def holdout(self, key: str) -> bool:
        """Whether the key is in the global holdout (never when the holdout share is 0)."""
        return self._holdout_below > 0 and bucket(self.holdout_salt, key) < self._holdout_below

    def _arm(self, experiment: RegisteredExperiment, fraction: float) -> str:
        names, bounds = self._arms[experiment.name]
        return names[min(int(np.searchsorted(bounds, fraction, side="right")), len(names) - 1)]

    def assign(self, key: str) -> list[Assignment]:
        """The key's arm in each layer's experiment that covers its position; [] when held out or in none."""
        if not self.experiments or self.holdout(key):
            return []
        out = []
        for layer, members in self.layers.items():
            position = bucket(layer, key)
            for e in members:
                if e.buckets[0] <= position < e.buckets[1]:
                    arm = self._arm(e, unit_fraction(e.spec.arm_salt, key))
                    out.append(Assignment(e.name, e.version, arm, layer))
                    break
        return out

    def assign_many(self, keys: Sequence[str]) -> pd.DataFrame:
        """Assignments of many keys at once: one row per (key, experiment), keys in no experiment absent.

        Columns key, experiment, version, arm, layer; in key order. One hash per key and salt, arms by array search.
        """
        keys = [str(k) for k in keys]
        if not keys or not self.experiments:
            return pd.DataFrame({c: pd.Series(dtype="int64" if c == "version" else object) for c in COLUMNS})
        index = np.arange(len(keys))
        if self._holdout_below > 0:
            kept = (_digests(self.holdout_salt, keys) % BUCKETS) >= self._holdout_below
            index = index[kept]
        chosen = [keys[i] for i in index]
        parts: list[pd.DataFrame] = []
        for layer, members in self.layers.items():
            position = _digests(layer, chosen) % BUCKETS
            for e in members:
                inside = np.flatnonzero((position >= e.buckets[0]) & (position < e.buckets[1]))
                if not len(inside):
                    continue
                who = [chosen[i] for i in inside]
                fraction = _digests(e.spec.arm_salt, who) / _SPAN
                names, bounds = self._arms[e.name]
                arm = np.minimum(np.searchsorted(bounds, fraction, side="right"), len(names) - 1)
                parts.append(
                    pd.DataFrame({
                        "key": who, "experiment": e.name, "version": e.version,
                        "arm": np.asarray(names, dtype=object)[arm], "layer": layer,
                        "_order": index[inside],
                    })
                )  # fmt: skip
        if not parts:
            return self.assign_many([])
        frame = pd.concat(parts, ignore_index=True).sort_values(["_order", "layer"], kind="stable")
        return frame.drop(columns="_order").reset_index(drop=True).astype({"version": "int64"})
