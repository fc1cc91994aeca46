"""Golden records: one row per customer key, each attribute chosen by a survivorship rule.

Every attribute carries the record it came from and the rule that chose it, and
every attribute on which a customer's records disagree goes to a conflict log a
data steward can read. Values are the normalised forms used for matching (emails
canonical, phones E.164, dates ISO, names folded), so they are comparable.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd

from features.identity.config import GOLDEN_ATTRIBUTES, IdentityConfig

_STR: Final = "string[pyarrow]"
CONFLICT_COLUMNS = [
    "customer_key", "attribute", "chosen_value", "chosen_record", "rule", "distinct_values", "candidates",
]  # fmt: skip


def _joined(groups: pd.Series, texts: pd.Series, sep: str) -> pd.Series:
    """`sep`-joined texts per group, in the given order.

    A plain loop over slices: a pandas string aggregation calls back into Python
    once per group anyway, with far more overhead.
    """
    order = np.argsort(groups.to_numpy(), kind="stable")
    g = groups.to_numpy()[order]
    t = texts.astype(str).to_numpy()[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    ends = np.r_[starts[1:], len(g)]
    return pd.Series([sep.join(t[s:e]) for s, e in zip(starts, ends, strict=True)], index=g[starts], dtype=_STR)


def _ranked(records: pd.DataFrame, crosswalk: pd.DataFrame, trust: list[str]) -> pd.DataFrame:
    frame = records.merge(crosswalk[["record_key", "customer_key"]], on="record_key", how="inner")
    rank = {t: i for i, t in enumerate(trust)}
    frame["trust"] = frame["source_table"].map(rank).fillna(len(trust)).astype("int64")
    # Integer stand-ins for the string keys: every sort, group and lookup below runs on them.
    frame["cust"] = pd.factorize(frame["customer_key"], sort=True)[0]
    frame["rec"] = pd.factorize(frame["record_key"], sort=True)[0]
    # missing updated_at sorts as oldest (min + 1, so that negating it cannot overflow)
    stamps = frame["updated_at"].astype("datetime64[us]")
    frame["recency"] = np.where(stamps.isna(), np.iinfo(np.int64).min + 1, stamps.to_numpy().view("int64"))
    return frame.reset_index(drop=True)


def _first_per_customer(cust: np.ndarray, keys: list[np.ndarray]) -> np.ndarray:
    """Positions of each customer's first row under `keys` (most important first, all ascending)."""
    order = np.lexsort([*reversed(keys), cust])  # lexsort's last key is the primary one
    if not len(order):
        return order
    return order[np.r_[True, cust[order][1:] != cust[order][:-1]]]


def _winners(frame: pd.DataFrame, attribute: str, rule: str) -> np.ndarray:
    """Row positions (in `frame`) of each customer's winning record for one attribute."""
    has = np.flatnonzero(frame[attribute].notna().to_numpy())
    cust = frame["cust"].to_numpy()[has]
    trust, recency, rec = (frame[c].to_numpy()[has] for c in ("trust", "recency", "rec"))
    # descending keys are negated
    if rule == "most_trusted":
        keys = [trust, -recency, rec]
    elif rule == "most_recent":
        keys = [-recency, trust, rec]
    elif rule == "most_frequent":
        value_code = pd.factorize(frame[attribute].to_numpy()[has])[0]
        votes = pd.Series(np.ones(len(has))).groupby([cust, value_code]).transform("size").to_numpy()
        keys = [-votes, trust, -recency, rec]
    elif rule == "non_null":
        keys = [trust, rec]
    else:  # pragma: no cover - the config validates rules
        raise ValueError(f"unknown survivorship rule {rule!r}")
    result: np.ndarray = has[_first_per_customer(cust, keys)]
    return result


def build_golden_records(
    records: pd.DataFrame, crosswalk: pd.DataFrame, config: IdentityConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Golden records and the conflict log.

    Args:
        records: identity records (see `features.identity.records`).
        crosswalk: record_key -> customer_key.
        config: the survivorship rules and the sources' trust order.

    Returns:
        golden: customer_key, record_count, source_tables, then for each attribute
            `<attr>`, `<attr>_record` (the winning record) and `<attr>_rule`.
        conflicts: one row per customer and attribute whose records disagree.
    """
    frame = _ranked(records, crosswalk, config.trust_order)
    cust = frame["cust"].to_numpy()
    n_customers = int(cust.max()) + 1 if len(cust) else 0
    first_row = _first_per_customer(cust, [frame["rec"].to_numpy()])
    record_keys = frame["record_key"].to_numpy(dtype=object)
    golden = pd.DataFrame(
        {
            "customer_key": pd.array(frame["customer_key"].to_numpy(dtype=object)[first_row], dtype=_STR),
            "record_count": np.bincount(cust, minlength=n_customers),
            "source_tables": _source_sets(frame, n_customers),
        }
    )
    rules = config.survivorship
    winners = {a: _winners(frame, a, r.rule) for a in GOLDEN_ATTRIBUTES if (r := rules.get(a)) and r.rule is not None}
    for attribute in GOLDEN_ATTRIBUTES:
        rule = rules.get(attribute)
        label: str
        if rule is None:  # no source has this attribute, so no rule is needed: it stays empty
            rows, label = np.array([], dtype=np.int64), ""
        elif rule.rule is not None:
            rows, label = winners[attribute], rule.rule
        else:
            assert rule.with_ is not None
            rows, label = winners[rule.with_], f"with {rule.with_}"
            rows = rows[frame[attribute].notna().to_numpy()[rows]]  # the winner's part may be empty
        value = np.full(n_customers, None, dtype=object)
        winner = np.full(n_customers, None, dtype=object)
        value[cust[rows]] = frame[attribute].to_numpy(dtype=object)[rows]
        winner[cust[rows]] = record_keys[rows]
        golden[attribute] = pd.array(value, dtype=_STR)
        golden[f"{attribute}_record"] = pd.array(winner, dtype=_STR)
        labels = np.full(n_customers, label, dtype=object)
        labels[pd.isna(value)] = None
        golden[f"{attribute}_rule"] = pd.array(labels, dtype=_STR)
    return golden, _conflict_log(frame, golden, config)


def _source_sets(frame: pd.DataFrame, n_customers: int) -> pd.Series:
    """Comma-joined source tables per customer, via a bit mask (few distinct sets, many customers)."""
    names = sorted(set(frame["source_table"].astype(str)))
    bit = {name: 1 << i for i, name in enumerate(names)}
    bits = frame["source_table"].astype(str).map(bit).to_numpy(dtype=np.int64)
    mask = np.zeros(n_customers, dtype=np.int64)
    np.bitwise_or.at(mask, frame["cust"].to_numpy(), bits)
    labels = {m: ",".join(n for n in names if m & bit[n]) for m in np.unique(mask)}
    return pd.Series(pd.array([labels[m] for m in mask], dtype=_STR))


def _conflict_log(frame: pd.DataFrame, golden: pd.DataFrame, config: IdentityConfig) -> pd.DataFrame:
    """Every (customer, attribute) whose records hold more than one distinct value.

    `frame` is the ranked frame of `build_golden_records` and `golden` its result
    (row i of golden is customer code i).
    """
    parts = []
    for attribute in GOLDEN_ATTRIBUTES:
        has = frame[attribute].notna().to_numpy()
        cust = frame["cust"].to_numpy()[has]
        values = frame[attribute].to_numpy(dtype=object)[has]
        tables = frame["source_table"].to_numpy(dtype=object)[has]
        value_code = pd.factorize(values)[0]
        pairs = pd.DataFrame({"cust": cust, "v": value_code}).drop_duplicates()
        distinct = np.bincount(pairs["cust"].to_numpy(), minlength=len(golden))
        disputed = distinct[cust] > 1
        if not disputed.any():
            continue
        d = pd.DataFrame(
            {"cust": cust[disputed], "v": value_code[disputed], "value": values[disputed], "table": tables[disputed]}
        )
        counted = d.groupby(["cust", "v"], sort=False).agg(n=("table", "size"), value=("value", "first"))
        table_sets = d.drop_duplicates(["cust", "v", "table"]).sort_values(["cust", "v", "table"], kind="stable")
        joined = _joined(table_sets["cust"] * (int(value_code.max()) + 1) + table_sets["v"], table_sets["table"], ",")
        counted = counted.reset_index()
        counted["tables"] = (counted["cust"] * (int(value_code.max()) + 1) + counted["v"]).map(joined)
        counted = counted.sort_values(["cust", "value"], kind="stable")
        counted["text"] = (
            counted["value"].astype(str) + " (" + counted["n"].astype(str) + "× " + counted["tables"] + ")"
        )
        candidates = _joined(counted["cust"], counted["text"], " | ")
        codes = candidates.index.to_numpy(dtype=np.int64)
        rule = config.survivorship[attribute]  # disputed values exist, so a source maps it and it has a rule
        parts.append(
            pd.DataFrame(
                {
                    "customer_key": golden["customer_key"].to_numpy()[codes],
                    "attribute": attribute,
                    "chosen_value": golden[attribute].to_numpy()[codes],
                    "chosen_record": golden[f"{attribute}_record"].to_numpy()[codes],
                    "rule": rule.rule if rule.rule is not None else f"with {rule.with_}",
                    "distinct_values": distinct[codes],
                    "candidates": candidates.to_numpy(),
                }
            )
        )
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=_STR) for c in CONFLICT_COLUMNS}).astype({"distinct_values": "int64"})
    log = pd.concat(parts, ignore_index=True)[CONFLICT_COLUMNS]
    log = log.astype({c: _STR for c in CONFLICT_COLUMNS if c != "distinct_values"})
    return log.sort_values(["customer_key", "attribute"], kind="stable").reset_index(drop=True)
