"""Generate a whole world: simulate chunk by chunk, stream each chunk to disk.

Each chunk of persons gets its own random stream derived from (seed, chunk), so
the world is the same bytes for the same config whatever the machine, and memory
stays bounded by the chunk size however many customers are asked for.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.lake import file_digest
from features.synthetic import reference as ref
from features.synthetic.behaviour import Behaviour, simulate_behaviour
from features.synthetic.config import WorldConfig
from features.synthetic.knowledge_base import write_knowledge_base
from features.synthetic.people import N_FACTORS, simulate_persons
from features.synthetic.sources import QUOTE_ALL_TABLES, SOURCE_FILES, RenderedChunk, render_chunk

TRUTH_DIR = "_truth"
TRUTH_FILES = {
    "persons": "persons.parquet",
    "source_records": "source_records.parquet",
    "churn_hazard": "churn_hazard.parquet",
    "churn_risk": "churn_risk.parquet",
    "product_affinity": "product_affinity.parquet",
    "treatment_effect": "treatment_effect.parquet",
    "injected_errors": "injected_errors.parquet",
    "ticket_text": "ticket_text.parquet",
}
_TRUTH_PERSON_COLUMNS = [
    "person_id",
    "first_name",
    "last_name",
    "gender",
    "birth_date",
    "age_at_window_start",
    "age_band",
    "region",
    "state",
    "city",
    "segment",
    "acquisition_channel",
    "signup_date",
    "acquired",
    "observed_from",
    "joined_after_drift",
    "protected",
    "price_sensitivity",
    "engagement",
    "friction",
    *[f"factor_{k}" for k in range(N_FACTORS)],
    "plan_at_start",
    "plan_at_end",
    "churned",
    "churn_date",
]


@dataclass
class SimulatedChunk:
    """One chunk's export rows and truth."""

    rendered: RenderedChunk
    behaviour: Behaviour


def simulate_chunk(cfg: WorldConfig, chunk: int, taken_emails: set[str] | None = None) -> SimulatedChunk:
    """Simulate persons [chunk*chunk_size, ...) and render their source rows.

    `taken_emails` carries the mailboxes of earlier chunks, so chunks must be
    simulated in order for a world to be the same bytes.
    """
    rng = np.random.default_rng([cfg.seed, chunk])
    first = chunk * cfg.chunk_size
    n = min(cfg.chunk_size, cfg.customers - first)
    persons = simulate_persons(cfg, rng, first, n, taken_emails)
    behaviour = simulate_behaviour(cfg, rng, persons)
    return SimulatedChunk(render_chunk(cfg, rng, behaviour, chunk), behaviour)


@dataclass
class _TableWriter:
    """Appends chunks to one CSV or Parquet file, counting rows as it goes."""

    path: Path
    fmt: str
    sep: str = ","
    quote_all: bool = False
    rows: int = 0
    _started: bool = False
    _parquet: pq.ParquetWriter | None = None
    _schema: pa.Schema | None = None

    def write(self, frame: pd.DataFrame) -> int:
        """Append a frame; return the row number (0-based) its first row got in the file."""
        offset = self.rows
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.fmt == "csv" and self.quote_all:
            with open(self.path, "ab" if self._started else "wb") as f:
                pacsv.write_csv(
                    pa.Table.from_pandas(frame, preserve_index=False),
                    f,
                    write_options=pacsv.WriteOptions(
                        include_header=not self._started, delimiter=self.sep, quoting_style="needed"
                    ),
                )
        elif self.fmt == "csv":
            frame.to_csv(
                self.path,
                mode="a" if self._started else "w",
                header=not self._started,
                index=False,
                sep=self.sep,
                lineterminator="\n",
                quoting=csv.QUOTE_MINIMAL,
            )
        else:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._parquet is None:
                self._schema = table.schema.remove_metadata()
                self._parquet = pq.ParquetWriter(self.path, self._schema, compression="zstd")
            self._parquet.write_table(table.cast(self._schema))
        self.rows += len(frame)
        self._started = True
        return offset

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()


@dataclass
class WorldSummary:
    """What a generation produced, for the command line and the manifest."""

    out_dir: Path
    rows: dict[str, int] = field(default_factory=dict)
    truth_rows: dict[str, int] = field(default_factory=dict)
    not_yet_arrived: dict[str, int] = field(default_factory=dict)
    injected: dict[str, int] = field(default_factory=dict)


def generate_world(cfg: WorldConfig, out_dir: Path, on_chunk: Callable[[int, int], None] | None = None) -> WorldSummary:
    """Write the source drops and the hidden truth for `cfg` under `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    truth_dir = out_dir / TRUTH_DIR
    writers = {
        t: _TableWriter(out_dir / path, fmt, sep, quote_all=t in QUOTE_ALL_TABLES)
        for t, (path, fmt, sep) in SOURCE_FILES.items()
        if t != "product_catalogue"
    }
    truth = {t: _TableWriter(truth_dir / f, "parquet") for t, f in TRUTH_FILES.items()}
    summary = WorldSummary(out_dir)
    n_chunks = -(-cfg.customers // cfg.chunk_size)
    taken_emails: set[str] = set()
    for chunk in range(n_chunks):
        sim = simulate_chunk(cfg, chunk, taken_emails)
        offsets = {t: writers[t].write(frame) for t, frame in sim.rendered.tables.items()}
        b = sim.behaviour
        truth["persons"].write(b.persons[_TRUTH_PERSON_COLUMNS])
        truth["source_records"].write(sim.rendered.source_records)
        truth["churn_hazard"].write(b.hazard)
        truth["churn_risk"].write(b.churn_risk)
        truth["product_affinity"].write(b.affinity)
        truth["treatment_effect"].write(b.treatment)
        truth["ticket_text"].write(sim.rendered.truth["ticket_text"])
        for inj in sim.rendered.injected:
            if len(inj):
                table = inj["table"].iloc[0]
                fixed = inj.assign(row_number=inj["row"].to_numpy() + offsets[table] + 1).drop(columns="row")
                truth["injected_errors"].write(fixed[["table", "row_number", "field", "kind"]])
        for t, k in sim.rendered.not_yet_arrived.items():
            summary.not_yet_arrived[t] = summary.not_yet_arrived.get(t, 0) + k
        if on_chunk is not None:
            on_chunk(chunk + 1, n_chunks)
        del sim, b  # release this chunk before the next is built: peak memory is one chunk, not two
    for w in [*writers.values(), *truth.values()]:
        w.close()
    if truth["injected_errors"].rows == 0:  # keep the file's schema even when nothing was broken
        pq.write_table(
            pa.table(
                {
                    "table": pa.array([], pa.string()),
                    "row_number": pa.array([], pa.int64()),
                    "field": pa.array([], pa.string()),
                    "kind": pa.array([], pa.string()),
                }
            ),
            truth_dir / TRUTH_FILES["injected_errors"],
        )
    catalogue_path, _, sep = SOURCE_FILES["product_catalogue"]
    (out_dir / catalogue_path).parent.mkdir(parents=True, exist_ok=True)
    ref.product_catalogue().to_csv(out_dir / catalogue_path, index=False, sep=sep, lineterminator="\n")
    summary.rows = {t: w.rows for t, w in writers.items()}
    summary.rows["product_catalogue"] = len(ref.PRODUCTS)
    summary.rows["knowledge_base_articles"] = write_knowledge_base(cfg, out_dir, truth_dir)
    summary.truth_rows = {t: w.rows for t, w in truth.items()}
    inj = pd.read_parquet(truth_dir / TRUTH_FILES["injected_errors"])
    summary.injected = {str(k): int(v) for k, v in inj.groupby("kind").size().items()}
    _write_manifest(cfg, out_dir, summary)
    return summary


def _write_manifest(cfg: WorldConfig, out_dir: Path, summary: WorldSummary) -> None:
    files = {
        t: {"path": p, "format": fmt, "sep": sep, "rows": summary.rows[t], "sha256": file_digest(out_dir / p)}
        for t, (p, fmt, sep) in SOURCE_FILES.items()
    }
    manifest = {
        "generator": "custintel.synthetic",
        "config": json.loads(cfg.model_dump_json()),
        "export_date": cfg.window_end.isoformat(),
        "files": files,
        "not_yet_arrived": summary.not_yet_arrived,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    truth = {
        "config": json.loads(cfg.model_dump_json()),
        "rows": summary.truth_rows,
        "injected_errors_by_kind": summary.injected,
        "note": "Hidden truth: read by evaluation and benchmarks only, never by training.",
    }
    (out_dir / TRUTH_DIR / "manifest.json").write_text(json.dumps(truth, indent=2, sort_keys=True) + "\n")
