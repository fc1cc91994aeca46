"""A model's online features held in memory, for batch scoring.

Reading a thousand customers' documents from the online store and parsing them costs more
than scoring them. For a model whose inputs the online store holds exactly (`SetView.exact`,
numbers typed), the service can keep every customer's inputs in memory as the model's float
matrix (`FramePreparer.records_matrix`), plus the raw categorical values and each customer's
cutoff. A batch then takes its rows from the matrix by index.

The copy is tied to what the store holds: `OnlineStore.state` (the sets' tables or
generations) is read on every batch, and a snapshot made from another state is never
used; a new one is built in the background while batches read the store as before. A
snapshot is made only up to the policy's `max_customers` (memory grows with them: about
0.5 KiB per customer for 60 inputs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from features.featurestore.online import AS_OF, OnlineStore, SetView

log = logging.getLogger("custintel.serving")

CHUNK = 10_000  # customers read and parsed per step of a build
RETRY_SECONDS = 60.0  # after a failed build, batches read the store this long before another is tried


@dataclass(frozen=True)
class Snapshot:
    """Every customer's inputs for one model, as of one state of the online store."""

    model: str  # name and version
    state: tuple[tuple[str, str], ...]
    index: dict[str, int]  # customer key -> row
    matrix: np.ndarray  # (customers, numeric + categorical) as `records_matrix` makes them
    numeric: list[str]
    categorical: list[str]
    labels: np.ndarray  # (customers, categorical): the stored values themselves (None when missing)
    cutoffs: list[str]
    built_seconds: float

    @property
    def customers(self) -> int:
        """How many customers it holds."""
        return len(self.index)

    @property
    def mib(self) -> float:
        """Memory of the matrix and the labels, roughly."""
        return (self.matrix.nbytes + self.labels.size * 8) / 2**20

    def rows(self, at: Sequence[int]) -> tuple[np.ndarray, list[dict[str, Any]], list[str]]:
        """For these rows: the model's matrix, each customer's inputs (the stored values) and cutoff.

        A missing number is NaN in the inputs (the log writes it as null, a reason shows None).
        """
        picked = np.asarray(at, dtype=np.intp)
        matrix = self.matrix[picked]
        names = [*self.numeric, *self.categorical]
        if self.categorical:
            values = [[*n, *c] for n, c in zip(matrix[:, : len(self.numeric)].tolist(),
                                               self.labels[picked].tolist(), strict=True)]  # fmt: skip
        else:
            values = matrix.tolist()
        inputs = [dict(zip(names, v, strict=True)) for v in values]
        cutoffs = self.cutoffs
        return matrix, inputs, [cutoffs[i] for i in at]


def build_snapshot(
    online: OnlineStore, model_ref: str, prepare: Any, set_keys: Sequence[str], max_customers: int
) -> Snapshot | None:
    """Read every customer of these sets and make the model's matrix; None when over `max_customers`.

    Raises `StoreMoved` when the store changed while it was read (the next batch starts again).
    """
    started = time.perf_counter()
    state = online.state(set_keys)
    keys = online.customer_keys(set_keys)
    if len(keys) > max_customers:
        return None
    numeric, categorical = list(prepare.numeric), list(prepare.categorical)
    matrix = np.empty((len(keys), len(numeric) + len(categorical)))
    labels = np.empty((len(keys), len(categorical)), dtype=object)
    cutoffs: list[str] = []
    view = SetView(tuple(set_keys))
    for start in range(0, len(keys), CHUNK):
        part = keys[start : start + CHUNK]
        rows = online.merged_many(part, view).rows
        if len(rows) != len(part):
            raise StoreMoved("customers left the online store while it was read")
        ordered = [rows[k] for k in part]
        matrix[start : start + len(part)] = prepare.records_matrix(ordered, numbers_checked=True)
        for j, c in enumerate(categorical):
            labels[start : start + len(part), j] = [r.get(c) for r in ordered]
        cutoffs.extend(str(r.get(AS_OF)) for r in ordered)
    if online.state(set_keys) != state:
        raise StoreMoved("the online store was replaced while it was read")
    return Snapshot(model_ref, state, {k: i for i, k in enumerate(keys)}, matrix, numeric, categorical, labels,
                    cutoffs, time.perf_counter() - started)  # fmt: skip


class StoreMoved(RuntimeError):
    """The online store changed while a snapshot was being read."""


class Snapshots:
    """The current snapshot per model, built in the background on demand."""

    def __init__(self, max_customers: int) -> None:
        self.max_customers = max_customers
        self._current: dict[str, Snapshot] = {}
        self._building: set[str] = set()
        self._too_big: dict[str, tuple[tuple[str, str], ...]] = {}
        self._failed: dict[str, float] = {}  # model -> when its last build failed (retried after RETRY_SECONDS)
        self._lock = threading.Lock()

    def get(self, model_ref: str, state: tuple[tuple[str, str], ...]) -> Snapshot | None:
        """The model's snapshot if it was made from this state of the store."""
        found = self._current.get(model_ref)
        return found if found is not None and found.state == state else None

    def describe(self) -> list[dict[str, Any]]:
        """What is held, for /models."""
        return [
            {
                "model": s.model,
                "customers": s.customers,
                "mib": round(s.mib, 1),
                "built_seconds": round(s.built_seconds, 2),
            }
            for s in list(self._current.values())
        ]

    def start(self, model_ref: str, state: tuple[tuple[str, str], ...], build: Any) -> None:
        """Build the model's snapshot in a background thread unless one is being built (or it is too big)."""
        with self._lock:
            failed = self._failed.get(model_ref)
            if model_ref in self._building or self._too_big.get(model_ref) == state:
                return
            if failed is not None and time.monotonic() - failed < RETRY_SECONDS:
                return
            self._building.add(model_ref)
            for old in [m for m in self._current if m.split("@")[0] == model_ref.split("@")[0] and m != model_ref]:
                del self._current[old]  # a replaced version's copy is not kept

        def run() -> None:
            try:
                snapshot = build()
                if snapshot is None:
                    self._too_big[model_ref] = state
                    log.info("%s: more customers than the snapshot's limit (%s); batches read the store",
                             model_ref, f"{self.max_customers:,}")  # fmt: skip
                else:
                    with self._lock:
                        self._current[model_ref] = snapshot
                    log.info("%s: %s customers' inputs held in memory (%.0f MiB, %.1f s)", model_ref,
                             f"{snapshot.customers:,}", snapshot.mib, snapshot.built_seconds)  # fmt: skip
            except StoreMoved as exc:
                log.info("%s: snapshot abandoned: %s", model_ref, exc)
            except Exception:  # noqa: BLE001 - a failed copy only means batches keep reading the store
                self._failed[model_ref] = time.monotonic()
                log.exception("%s: snapshot failed; batches read the online store (retried in %s s)", model_ref,
                              RETRY_SECONDS)  # fmt: skip
            finally:
                with self._lock:
                    self._building.discard(model_ref)

        threading.Thread(target=run, name=f"snapshot-{model_ref}", daemon=True).start()
