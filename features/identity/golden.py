"""Golden records: one row per customer key, each attribute chosen by a survivorship rule.

Every attribute carries the record it came from and the rule that chose it, and
every attribute on which a customer's records disagree goes to a conflict log a
data steward can read. Values are the normalised forms used for matching (emails
canonical, phones E.164, dates ISO, names folded), so they are comparable.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.identity.config import GOLDEN_ATTRIBUTES, IdentityConfig

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
    return pd.Series([sep.join(t[s:e]) for s, e in zip(starts, ends, strict=True)], index=g[starts], dtype="string")


def _source_sets(frame: pd.DataFrame, trust: list[str]) -> pd.Series:
    """Comma-joined source tables per customer, via a bit mask (few distinct sets, many customers)."""
    names = sorted(set(frame["source_table"].astype(str)))
    bit = {name: 1 << i for i, name in enumerate(names)}
    present = frame[["customer_key", "source_table"]].drop_duplicates()
    mask = present["source_table"].astype(str).map(bit).groupby(present["customer_key"]).sum()
    labels = {m: ",".join(n for n in names if m & bit[n]) for m in mask.unique()}
    return mask.map(labels).astype("string")


def _ranked(records: pd.DataFrame, crosswalk: pd.DataFrame, trust: list[str]) -> pd.DataFrame:
    frame = records.merge(crosswalk[["record_key", "customer_key"]], on="record_key", how="inner")
    rank = {t: i for i, t in enumerate(trust)}
    frame["trust"] = frame["source_table"].map(rank).fillna(len(trust)).astype("int64")
    # Integer stand-ins for the sort keys: sorting a million strings seven times is what made this slow.
    frame["cust"] = pd.factorize(frame["customer_key"], sort=True)[0]
    frame["rec"] = pd.factorize(frame["record_key"], sort=True)[0]
    # missing updated_at sorts as oldest (min + 1, so that negating it cannot overflow)
    stamps = frame["updated_at"].astype("datetime64[us]")
    frame["recency"] = np.where(stamps.isna(), np.iinfo(np.int64).min + 1, stamps.to_numpy().view("int64"))
    return frame


def _winners(frame: pd.DataFrame, attribute: str, rule: str) -> pd.DataFrame:
    """customer_key -> winning record_key and value for one attribute under one rule."""
    cand = frame.loc[frame[attribute].notna(), ["customer_key", "record_key", "cust", "rec", "trust", "recency"]]
    cand["value"] = frame.loc[cand.index, attribute]
    trust, recency, rec = cand["trust"].to_numpy(), cand["recency"].to_numpy(), cand["rec"].to_numpy()
    # keys from most to least important; descending ones negated
    if rule == "most_trusted":
        keys = [trust, -recency, rec]
    elif rule == "most_recent":
        keys = [-recency, trust, rec]
    elif rule == "most_frequent":
        value_code = pd.factorize(cand["value"])[0]
        votes = cand.groupby([cand["cust"].to_numpy(), value_code])["rec"].transform("size").to_numpy()
        keys = [-votes, trust, -recency, rec]
    elif rule == "non_null":
        keys = [trust, rec]
    else:  # pragma: no cover - the config validates rules
        raise ValueError(f"unknown survivorship rule {rule!r}")
    cust = cand["cust"].to_numpy()
    order = np.lexsort([*reversed(keys), cust])  # lexsort's last key is the primary one
    first = order[np.r_[True, cust[order][1:] != cust[order][:-1]]] if len(order) else order
    won = cand.iloc[first]
    return pd.DataFrame(
        {"record_key": won["record_key"].to_numpy(), "value": won["value"].to_numpy()},
        index=pd.Index(won["customer_key"].to_numpy(), name="customer_key"),
    )


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
    golden = pd.DataFrame({"record_count": frame.groupby("customer_key", sort=True).size()})
    golden["source_tables"] = _source_sets(frame, config.trust_order).reindex(golden.index)
    winners: dict[str, pd.DataFrame] = {}
    for attribute in GOLDEN_ATTRIBUTES:
        rule = config.survivorship[attribute]
        if rule.rule is not None:
            winners[attribute] = _winners(frame, attribute, rule.rule)
    by_record = frame.set_index("record_key")
    for attribute in GOLDEN_ATTRIBUTES:
        rule = config.survivorship[attribute]
        if rule.rule is not None:
            won = winners[attribute]
            label: str = rule.rule
        else:
            assert rule.with_ is not None
            source = winners[rule.with_]
            values = by_record.loc[source["record_key"], attribute].to_numpy()
            won = pd.DataFrame({"record_key": source["record_key"], "value": values}, index=source.index)
            won = won[won["value"].notna()]
            label = f"with {rule.with_}"
        golden[attribute] = won["value"].reindex(golden.index).astype("string")
        golden[f"{attribute}_record"] = won["record_key"].reindex(golden.index).astype("string")
        golden[f"{attribute}_rule"] = pd.Series(label, index=golden.index, dtype="string").where(
            golden[attribute].notna()
        )
    golden = golden.reset_index()
    return golden, conflict_log(frame, golden, config)


def conflict_log(frame: pd.DataFrame, golden: pd.DataFrame, config: IdentityConfig) -> pd.DataFrame:
    """Every (customer, attribute) whose records hold more than one distinct value."""
    parts = []
    chosen = golden.set_index("customer_key")
    for attribute in GOLDEN_ATTRIBUTES:
        vals = frame.loc[frame[attribute].notna(), ["customer_key", "source_table", attribute]]
        per_customer = vals[["customer_key", attribute]].drop_duplicates().groupby("customer_key").size()
        vals = vals[vals["customer_key"].isin(per_customer.index[per_customer > 1])]
        if vals.empty:
            continue
        vals = vals.sort_values(["customer_key", attribute, "source_table"], kind="stable")
        counted = vals.groupby(["customer_key", attribute], sort=True).size().rename("n").reset_index()
        tables = vals.drop_duplicates(["customer_key", attribute, "source_table"])
        joined = _joined(tables["customer_key"] + "\x00" + tables[attribute], tables["source_table"], ",")
        counted["tables"] = (counted["customer_key"] + "\x00" + counted[attribute]).map(joined)
        counted["text"] = (
            counted[attribute].astype(str) + " (" + counted["n"].astype(str) + "× " + counted["tables"] + ")"
        )
        summary = pd.DataFrame(
            {
                "distinct_values": counted.groupby("customer_key").size(),
                "candidates": _joined(counted["customer_key"], counted["text"], " | "),
            }
        )
        rule = config.survivorship[attribute]
        label = rule.rule if rule.rule is not None else f"with {rule.with_}"
        summary["attribute"] = attribute
        summary["chosen_value"] = chosen.loc[summary.index, attribute].to_numpy()
        summary["chosen_record"] = chosen.loc[summary.index, f"{attribute}_record"].to_numpy()
        summary["rule"] = label
        parts.append(summary.rename_axis("customer_key").reset_index())
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype="string") for c in CONFLICT_COLUMNS}).astype(
            {"distinct_values": "int64"}
        )
    log = pd.concat(parts, ignore_index=True)[CONFLICT_COLUMNS]
    return log.sort_values(["customer_key", "attribute"], kind="stable").reset_index(drop=True)
