"""The probabilistic pass: Fellegi-Sunter linkage with Splink on DuckDB (or on Spark).

It runs after the deterministic pass and only scores pairs of records that the
deterministic pass left in different clusters. Its parameters are estimated
without labels: the prior from the deterministic rules, u from random pairs,
m by expectation maximisation over blocked pairs. The trained model is a JSON
document, so `explain` can score any two records later with the same weights.

With the Spark engine (`engine: spark`) Splink runs the same model on its Spark backend:
the comparisons are written once per SQL dialect (`_Dialect`), the stored model is always
DuckDB's (so `explain` and `--reuse-model` read one format whichever engine trained it), and
Spark draws its u sample by a seeded hash of the record key, so a re-run gives the same model.

Training takes the better part of a minute on a few thousand records: each stage (the
prior, u, every EM session, predicting) reports its start and its time on the
`custintel.identity` logger; Splink's own chatter is kept off the console.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from itertools import combinations
from typing import TYPE_CHECKING, Any, Literal

import duckdb
import pandas as pd
import splink.comparison_level_library as cll
import splink.comparison_library as cl
from nicknames import NickNamer
from splink import DuckDBAPI, Linker, SettingsCreator
from splink.internals.exceptions import EMTrainingException

if TYPE_CHECKING:
    from custintel.settings import Settings

log = logging.getLogger("custintel.identity")
HEARTBEAT_SECONDS = 15.0  # a long stage says it is still running this often

# The columns Splink compares; every one may be left out by the privacy settings.
MATCH_FIELDS = ("name", "birth_date", "email", "phone", "address", "postcode", "national_id")

# Candidate pairs: each rule is cheap (an equi-join) and catches a different kind of
# difference (moved house, new email, typo in the surname, names written the other
# way round). Pairs already in one deterministic cluster are not scored again.
# `name_key` is the first and last name in alphabetical order, so "SMITH JOHN" and
# "John Smith" share it. `last3`/`first3` are the first three letters of a name, so a
# typo later in the name still meets its pair; birth date with postcode or city catches
# a name mistyped (or changed) in both parts.
_BLOCKING_RULES: dict[str, tuple[str, ...]] = {
    "name and birth date": ("name_key", "birth_date"),
    "surname and birth date": ("last_name", "birth_date"),
    "first name and birth date": ("first_name", "birth_date"),
    "birth date and postcode": ("birth_date", "postcode"),
    "birth date and city": ("birth_date", "city"),
    "name and postcode": ("name_key", "postcode"),
    "surname prefix and postcode": ("last3", "postcode"),
    "first name prefix and postcode": ("first3", "postcode"),
    "address and postcode": ("address", "postcode"),
    "surname and address": ("last_name", "address"),
    "email": ("email",),
    "phone": ("phone",),
    "national id": ("national_id",),
}
# Column -> SQL of its value on one side (`{s}` is l or r).
_RULE_EXPRESSIONS = {
    "last3": "substr({s}.last_name, 1, 3)",
    "first3": "substr({s}.first_name, 1, 3)",
}
_OTHER_CLUSTER = "l.det_cluster <> r.det_cluster"
# Rules that need a field the privacy settings exclude are dropped.
_RULE_FIELDS = {
    "name_key": "name",
    "last_name": "name",
    "first_name": "name",
    "last3": "name",
    "first3": "name",
    "birth_date": "birth_date",
    "city": "address",
    "email": "email",
    "phone": "phone",
    "address": "address",
    "postcode": "postcode",
    "national_id": "national_id",
}
# EM blocks: tight enough that a good share of the pairs are true matches, even
# among a million records (blocking on a common name alone is not). Each session
# cannot estimate the fields it blocks on; the sessions are chosen so that every
# field is estimated by at least one.
_EM_ANCHORS = {
    "name": "l.name_key = r.name_key",
    "birth_date": "l.birth_date = r.birth_date",
    "postcode": "substr(l.postcode, 1, 3) = substr(r.postcode, 1, 3)",
}


@dataclass(frozen=True)
class ProbabilisticConfig:
    """How the probabilistic pass is run.

    Attributes:
        threshold: Match probability at or above which a pair is linked.
        fields: Fields the matcher may compare (privacy settings remove some).
        u_max_pairs: Random pairs sampled to estimate u.
        seed: Seed for that sample, so a re-run gives the same model.
        spark_settings: Settings whose Spark session runs Splink; None: DuckDB in this process.
    """

    threshold: float = 0.95
    fields: tuple[str, ...] = MATCH_FIELDS
    u_max_pairs: float = 1e7
    seed: int = 42
    spark_settings: Settings | None = field(default=None, repr=False, compare=False)

    @property
    def engine(self) -> Literal["duckdb", "spark"]:
        """Where Splink runs: Spark when its settings are given, else DuckDB."""
        return "duckdb" if self.spark_settings is None else "spark"


@dataclass(frozen=True)
class _Dialect:
    """The SQL functions the custom comparison levels use, as one SQL dialect spells them."""

    name: str
    jaro_winkler: str  # similarity in [0, 1]
    damerau_levenshtein: str
    groups_overlap: str  # two '|'-joined lists ({a}, {b}) share an element
    date_format: str  # of birth_date strings


_DIALECTS = {
    "duckdb": _Dialect(
        "duckdb",
        "jaro_winkler_similarity",
        "damerau_levenshtein",
        "list_has_any(string_split({a}, '|'), string_split({b}, '|'))",
        "%Y-%m-%d",
    ),
    # Splink's Spark jar registers jaro_winkler and damerau_levenshtein; Spark's split takes a regex.
    "spark": _Dialect(
        "spark",
        "jaro_winkler",
        "damerau_levenshtein",
        "arrays_overlap(split({a}, '[|]'), split({b}, '[|]'))",
        "yyyy-MM-dd",
    ),
}


def _comparisons(fields: tuple[str, ...], d: _Dialect) -> list[Any]:
    jw = d.jaro_winkler
    out: list[Any] = []
    if "name" in fields:
        # Term-frequency adjusted: "Robert Long" agreeing is weak evidence, "Zelda Quinlan" strong.
        out.append(
            cl.CustomComparison(
                output_column_name="name",
                comparison_description="first and last name",
                comparison_levels=[
                    cll.And(cll.NullLevel("first_name"), cll.NullLevel("last_name")),
                    cll.ExactMatchLevel("name_key").configure(tf_adjustment_column="name_key"),
                    _both_names_similar(0.92, d),
                    cll.CustomLevel(
                        d.groups_overlap.format(a="first_name_group_l", b="first_name_group_r")
                        + f" and {jw}(last_name_l, last_name_r) >= 0.92",
                        label_for_charts="first names of one name (Liz, Elizabeth), surname similar",
                    ),
                    _both_names_similar(0.85, d),
                    cll.ExactMatchLevel("last_name").configure(tf_adjustment_column="last_name"),
                    cll.ExactMatchLevel("first_name").configure(tf_adjustment_column="first_name"),
                    cll.JaroWinklerLevel("last_name", 0.92),
                    cll.JaroWinklerLevel("first_name", 0.92),
                    cll.ElseLevel(),
                ],
            )
        )
    if "birth_date" in fields:
        out.append(
            cl.DateOfBirthComparison(
                "birth_date",
                input_is_string=True,
                datetime_format=d.date_format,
                datetime_metrics=["month", "year"],
                datetime_thresholds=[1, 1],
            )
        )
    if "email" in fields:
        # No fuzzy level: emails are made of names, so a similar email between two
        # people with common names is a coincidence the name comparison already counts.
        out.append(
            cl.CustomComparison(
                output_column_name="email",
                comparison_levels=[
                    cll.NullLevel("email"),
                    cll.ExactMatchLevel("email"),
                    cll.CustomLevel(
                        "split_part(email_l, '@', 1) = split_part(email_r, '@', 1)",
                        label_for_charts="same mailbox name, other domain",
                    ),
                    cll.ElseLevel(),
                ],
            )
        )
    # Numbers: typos are common; two different numbers are strong evidence against.
    out.extend(_exact_or_typo(column) for column in ("phone", "national_id") if column in fields)
    if "address" in fields:
        out.append(cl.JaroWinklerAtThresholds("address", [0.95, 0.85]))
    if "postcode" in fields and "address" in fields:
        out.append(_location_comparison(d))
    elif "postcode" in fields:
        out.append(
            cl.CustomComparison(
                output_column_name="postcode",
                comparison_levels=[
                    cll.NullLevel("postcode"),
                    cll.ExactMatchLevel("postcode"),
                    cll.CustomLevel(
                        "substr(postcode_l, 1, 3) = substr(postcode_r, 1, 3)",
                        label_for_charts="same area (first three characters)",
                    ),
                    cll.ElseLevel(),
                ],
            )
        )
    return out


def _exact_or_typo(column: str) -> Any:
    """Null, exact, within two edits, else."""
    return cl.CustomComparison(
        output_column_name=column,
        comparison_levels=[
            cll.NullLevel(column),
            cll.ExactMatchLevel(column),
            cll.LevenshteinLevel(column, 2),
            cll.ElseLevel(),
        ],
    )


def _both_names_similar(threshold: float, d: _Dialect) -> Any:
    """First and last name each similar, in the same order or the other way round."""

    def jw(a: str, b: str) -> str:
        return f"{d.jaro_winkler}({a}, {b}) >= {threshold}"

    same = f"({jw('first_name_l', 'first_name_r')} and {jw('last_name_l', 'last_name_r')})"
    swapped = f"({jw('first_name_l', 'last_name_r')} and {jw('last_name_l', 'first_name_r')})"
    return cll.CustomLevel(
        f"{same} or {swapped}", label_for_charts=f"both names similar (>= {threshold}), either order"
    )


def _location_comparison(d: _Dialect) -> Any:
    """Postcode and city as one comparison.

    They are not independent (a postcode lies in one city), so two comparisons would
    count the same agreement twice; one comparison with joint levels counts it once,
    and still credits a typo in either or a move within the city.
    """
    city = f"{d.jaro_winkler}(city_l, city_r) >= 0.92"
    near = (
        f"(substr(postcode_l, 1, 3) = substr(postcode_r, 1, 3) or {d.damerau_levenshtein}(postcode_l, postcode_r) <= 1)"
    )
    return cl.CustomComparison(
        output_column_name="location",
        comparison_description="postcode and city",
        comparison_levels=[
            cll.And(cll.NullLevel("postcode"), cll.NullLevel("city")),
            cll.CustomLevel(f"postcode_l = postcode_r and {city}", label_for_charts="same postcode and city"),
            cll.ExactMatchLevel("postcode"),
            cll.CustomLevel(f"{city} and {near}", label_for_charts="same city, nearby postcode"),
            cll.CustomLevel(city, label_for_charts="same city"),
            cll.CustomLevel(near, label_for_charts="nearby postcode (same area or one edit)"),
            cll.ElseLevel(),
        ],
    )


def blocking_rules(fields: tuple[str, ...]) -> dict[str, str]:
    """Named SQL blocking rules usable with the allowed fields."""
    rules: dict[str, str] = {}
    for name, cols in _BLOCKING_RULES.items():
        if all(_RULE_FIELDS[c] in fields for c in cols):
            rules[name] = " and ".join(_equal(c) for c in cols)
    return rules


def _equal(column: str) -> str:
    expr = _RULE_EXPRESSIONS.get(column, "{s}." + column)
    return f"{expr.format(s='l')} = {expr.format(s='r')}"


def splink_settings(fields: tuple[str, ...], dialect: str = "duckdb") -> SettingsCreator:
    """The linkage model's specification (untrained), its custom SQL in `dialect` ('duckdb' or 'spark')."""
    rules = blocking_rules(fields)
    predictions: list[Any] = [f"({sql}) and {_OTHER_CLUSTER}" for sql in rules.values()]
    return SettingsCreator(
        link_type="dedupe_only",
        unique_id_column_name="record_key",
        comparisons=_comparisons(fields, _DIALECTS[dialect]),
        blocking_rules_to_generate_predictions=predictions,
        retain_intermediate_calculation_columns=False,
        retain_matching_columns=False,
        additional_columns_to_retain=[],
    )


SPLINK_COLUMNS = [
    "record_key", "first_name", "last_name", "birth_date", "email", "phone", "address", "postcode", "city",
    "national_id",
]  # fmt: skip


@cache
def _nicknames() -> NickNamer:
    return NickNamer()  # reads its CSV: on first use, not at import


def name_keys(first: pd.Series, last: pd.Series) -> pd.Series:
    """First and last name in alphabetical order: the same key however the name was written."""
    f, s = first.astype("string"), last.astype("string")
    lo = f.where(f <= s, s)
    hi = s.where(f <= s, f)
    return (lo + " " + hi).astype("string")


def first_name_groups(first: pd.Series) -> pd.Series:
    """Each first name with the full names it is a nickname of, '|'-joined ('liz' -> 'beth|elizabeth|liz|...')."""
    names = first.astype("string")
    lookup = {v: "|".join(sorted({v} | _nicknames().canonicals_of(v))) for v in names.dropna().unique()}
    return names.map(lookup).astype("string")


def linker_input(records: pd.DataFrame, det_cluster: pd.Series | None = None) -> pd.DataFrame:
    """The table Splink sees: the compared columns, the name key, the deterministic cluster."""
    frame = records[SPLINK_COLUMNS].copy()
    frame["name_key"] = name_keys(frame["first_name"], frame["last_name"])
    frame["first_name_group"] = first_name_groups(frame["first_name"])
    frame["det_cluster"] = det_cluster.to_numpy() if det_cluster is not None else frame["record_key"]
    # Canonical order: Splink's sampling and EM then see the same table whatever the input order.
    return frame.sort_values("record_key", kind="stable").reset_index(drop=True)


TF_COLUMNS = ("name_key", "last_name", "first_name")


def term_frequencies(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Splink's term-frequency table for one column: each value and its share of non-null values."""
    shares = frame[column].dropna().value_counts(normalize=True)
    return pd.DataFrame({column: shares.index.astype(str), f"tf_{column}": shares.to_numpy()})


class TrainingDataError(ValueError):
    """The records give the probabilistic model nothing to learn from."""


@contextmanager
def _stage(what: str, every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Log `what` as the stage starts, how long it has run every `every` seconds, and its time when it ends.

    Splink reports nothing from inside one of its calls (and DuckDB's own estimate of a sampling
    query is no guide), so a long stage says it is still running rather than nothing at all.
    """
    name = what.split(" (")[0]
    log.info("%s", what)
    start = time.perf_counter()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            log.info("%s: still running, %.0f s so far", name, time.perf_counter() - start)

    beating = threading.Thread(target=beat, name="custintel-identity-progress", daemon=True)
    beating.start()
    try:
        yield
    finally:
        stop.set()
        beating.join()
    log.info("%s: done in %.1f s", name, time.perf_counter() - start)


@contextmanager
def _quiet_splink() -> Iterator[None]:
    """Splink's progress chatter (INFO and WARNING) off for the duration, then as it was."""
    logger = logging.getLogger("splink")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _new_linker(frame: pd.DataFrame, settings: SettingsCreator | dict[str, Any]) -> Linker:
    con = duckdb.connect()
    # Splink accepts a pandas frame (registered in DuckDB), though its hints say table names
    return Linker(frame, settings, db_api=DuckDBAPI(con), set_up_basic_logging=False)  # type: ignore[arg-type]


@contextmanager
def _linker(
    frame: pd.DataFrame, settings: SettingsCreator | dict[str, Any], config: ProbabilisticConfig
) -> Iterator[Linker]:
    """A Linker on the configured engine; on Spark, its intermediate tables are removed when done."""
    if config.spark_settings is None:
        yield _new_linker(frame, settings)
        return
    from features.identity.spark_linker import spark_linker

    with spark_linker(frame, settings, config.spark_settings) as linker:
        yield linker


def train_model(records: pd.DataFrame, det_cluster: pd.Series, config: ProbabilisticConfig) -> dict[str, Any]:
    """Estimate the Fellegi-Sunter parameters without labels; returns Splink's model JSON (DuckDB's SQL)."""
    fields = config.fields
    frame = linker_input(records, det_cluster)
    rules = em_blocking_rules(fields)
    with _linker(frame, splink_settings(fields, config.engine), config) as linker, _quiet_splink():
        with _stage(f"identity: estimating the match prior ({len(frame):,} records)"):
            _estimate_prior(linker, frame, fields)
        with _stage(f"identity: estimating u from up to {config.u_max_pairs:,.0f} random pairs"):
            linker.training.estimate_u_using_random_sampling(max_pairs=config.u_max_pairs, seed=config.seed)
        trained = []
        for i, rule in enumerate(rules, start=1):
            try:
                with _stage(f"identity: estimating m by EM, session {i}/{len(rules)} (pairs where {rule})"):
                    linker.training.estimate_parameters_using_expectation_maximisation(
                        rule, estimate_without_term_frequencies=True
                    )
                trained.append(rule)
            except EMTrainingException:
                # no pair shares these fields in this data: the other sessions estimate it
                log.info("identity: EM session %d/%d found no pair to learn from", i, len(rules))
                continue
        if not trained:
            raise TrainingDataError(
                "the probabilistic model cannot be trained: no two records share a name, birth date or "
                f"postcode area among the allowed fields {list(fields)}; for sources with ids and no names set "
                "'mode: ids_only' in the identity config (each id a customer), or allow more fields or add data"
            )
        model: dict[str, Any] = linker.misc.save_model_to_json()
    model.pop("linker_uid", None)  # a random id per Linker object: not part of the model
    if config.engine != "duckdb":
        model = model_in_dialect(model, fields, "duckdb")
    return floor_probabilities(model)


class ModelDialectError(ValueError):
    """A stored model whose comparisons are not the ones this version builds (retrain it)."""


def model_in_dialect(model: dict[str, Any], fields: tuple[str, ...], dialect: str) -> dict[str, Any]:
    """The same trained model with its SQL written for another engine's dialect.

    The parameters (prior, every level's m and u, term-frequency settings) are kept; the SQL of
    each level, the comparison descriptions and the blocking rules are those `splink_settings`
    writes for `dialect`. The comparisons are matched by name and level by level, so a model
    whose comparisons differ from today's is refused (it would be scored with other levels).
    """
    base = splink_settings(fields, dialect).get_settings(dialect).as_dict()
    wanted = {c["output_column_name"]: c for c in base["comparisons"]}
    comparisons = []
    for comparison in model["comparisons"]:
        name = comparison.get("output_column_name")
        target = wanted.get(name)
        if target is None or len(target["comparison_levels"]) != len(comparison["comparison_levels"]):
            raise ModelDialectError(
                f"the stored model's comparison {name!r} is not one this version builds for the fields "
                f"{list(fields)}: run `custintel resolve` without --reuse-model to train it again"
            )
        levels = [
            {**level, "sql_condition": spelled["sql_condition"], "label_for_charts": spelled.get("label_for_charts")}
            for level, spelled in zip(comparison["comparison_levels"], target["comparison_levels"], strict=True)
        ]
        comparisons.append(
            {
                **comparison,
                "comparison_description": target.get("comparison_description"),
                "comparison_levels": levels,
            }
        )
    out = {**model, "comparisons": comparisons, "sql_dialect": dialect}
    out["blocking_rules_to_generate_predictions"] = base["blocking_rules_to_generate_predictions"]
    return out


def floor_probabilities(
    model: dict[str, Any], m_floor: float = 1e-3, u_floor: float = 1e-9, u_unseen: float = 1e-7
) -> dict[str, Any]:
    """Keep every m and u probability above a floor (then renormalise).

    EM sets a level's m to zero when no training pair of true matches fell in it
    (no match in the sample moved to another postcode area, say). A zero would be
    infinite evidence against every such pair on data the model has not seen; a
    floor turns it into strong but finite evidence. u is floored far lower: a
    tiny u is exactly what makes an exact match on a rare value strong evidence.
    """
    for comparison in model["comparisons"]:
        levels = [lv for lv in comparison["comparison_levels"] if not lv.get("is_null_level")]
        # A level no training pair reached has no estimate, and Splink would score it with
        # a built-in default (a one-digit phone typo then weighed +11 bits). Give it an
        # explicit one: m at the floor; u just under one in the random sample; neutral when
        # neither was seen.
        for lv in levels:
            m, u = lv.get("m_probability"), lv.get("u_probability")
            if m is None and u is None:
                lv["m_probability"] = lv["u_probability"] = m_floor
            elif m is None:
                lv["m_probability"] = m_floor
            elif u is None:
                lv["u_probability"] = u_unseen
        for name, floor in (("m_probability", m_floor), ("u_probability", u_floor)):
            values = [lv[name] for lv in levels]
            floored = [max(float(v), floor) for v in values]
            total = sum(floored)
            for lv, value in zip(levels, floored, strict=True):
                # 12 significant digits: EM's sums run in parallel, and their last bits vary run to run
                lv[name] = float(f"{value / total:.12g}")
    return model


# Rules almost only true matches satisfy; the prior is the share of pairs they catch / their recall.
_PRIOR_RULES = {
    "email": "l.email = r.email",
    "phone": "l.phone = r.phone",
    "name and birth date": "l.name_key = r.name_key and l.birth_date = r.birth_date",
    "name and address": "l.name_key = r.name_key and l.address = r.address",
}
_PRIOR_RULE_FIELDS = {
    "email": ("email",),
    "phone": ("phone",),
    "name and birth date": ("name", "birth_date"),
    "name and address": ("name", "address"),
}


def _estimate_prior(linker: Linker, frame: pd.DataFrame, fields: tuple[str, ...]) -> None:
    """The probability that two random records match, from near-certain rules (recall 0.8 assumed).

    Falls back to one duplicate per record (1 / n) when the data give those rules nothing
    to work with (no emails, phones, birth dates or addresses in common).
    """
    rules: list[Any] = [sql for name, sql in _PRIOR_RULES.items() if all(f in fields for f in _PRIOR_RULE_FIELDS[name])]
    if rules:
        try:
            linker.training.estimate_probability_two_random_records_match(rules, recall=0.8)
        except ZeroDivisionError:  # Splink on fewer than two records
            rules = []
    prior = linker._settings_obj._probability_two_random_records_match  # noqa: SLF001 - no public getter
    if not rules or not prior or prior <= 0:
        n = max(len(frame), 2)
        linker._settings_obj._probability_two_random_records_match = 1 / n  # noqa: SLF001


def em_blocking_rules(fields: tuple[str, ...]) -> list[str]:
    """EM sessions for the allowed fields: pairs of anchors when there are three, else one each."""
    anchors = [sql for name, sql in _EM_ANCHORS.items() if name in fields]
    if len(anchors) >= 3:
        return [f"{a} and {b}" for a, b in combinations(anchors, 2)]
    if anchors:
        return anchors
    fallback = {"address": "l.address = r.address", "email": "l.email = r.email", "phone": "l.phone = r.phone"}
    return [sql for name, sql in fallback.items() if name in fields][:1]


def predict_links(
    records: pd.DataFrame, det_cluster: pd.Series, model: dict[str, Any], config: ProbabilisticConfig
) -> pd.DataFrame:
    """Scored pairs at or above the threshold: record_key_l, record_key_r, match_weight, match_probability."""
    frame = linker_input(records, det_cluster)
    if config.engine != "duckdb":
        model = model_in_dialect(model, config.fields, config.engine)
    with (
        _linker(frame, model, config) as linker,
        _quiet_splink(),
        _stage(f"identity: scoring candidate pairs of {len(frame):,} records"),
    ):
        scored = linker.inference.predict(threshold_match_probability=config.threshold)
        out = scored.as_pandas_dataframe()
    return out[["record_key_l", "record_key_r", "match_weight", "match_probability"]].reset_index(drop=True)
