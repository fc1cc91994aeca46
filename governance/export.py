"""Exports that leave the platform, with their re-identification risk measured (`custintel export`).

A test extract for a vendor or a sample for analysts goes out only in a form the export policy
(`export:` in the governance policy) accepts:

- every column has a data class (from its contract or feature, completed by the policy's
  `export.classes`); an unclassified column is an error naming it;
- direct identifiers are dropped or replaced by keyed pseudonyms (HMAC-SHA256 under the home's
  privacy key: the same value gives the same pseudonym in every export of the home, so extracts
  join, but nobody without the key can recompute or reverse one);
- quasi-identifiers are generalised along hierarchies (dates: month, year, decade; numbers: bins
  of growing width; postcodes: leading characters; categories: "*") by a greedy bottom-up search
  for the least generalisation at which every group of equal quasi-identifiers has at least k rows
  and at least l distinct values of each sensitive column, leaving out (suppressing) the rows of
  groups still failing, up to the policy's share;
- the singling-out risk is measured the way anonymeter does (Giomi et al. 2022, PoPETs 2023):
  queries that single out one released record are run against the original records and against a
  held-out control set; the risk is the excess success over the control's, with a Wilson interval.
  anonymeter itself does not install here (it pins numpy<1.27 and needs polars), so this module
  carries the method; tests check it on hand-computed cases and against anonymeter 1.1.0's figures
  taken in a separate environment (the univariate attack gives the same counts and risk; the
  multivariate one, random, agreed within noise: mean 0.226 here, 0.215 anonymeter, over 5 seeds).
  One deliberate difference: anonymeter merges identical rows (right for synthetic data); here rows
  are people, so k identical generalised records are k people and a query matching them singles
  out nobody.

When the policy cannot be met the export is refused (`ExportRefused`) with the reason: which column
and class stops k or l, or the risk measured. Everything here is pure but `privacy_key`,
`read_export_source` and `write_export` (the I/O at the edges).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import hmac
import html
import itertools
import json
import math
import os
import secrets
import shutil
import stat
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from custintel.settings import Settings
from features.data_classes import DATA_CLASSES
from features.suppression import SuppressionError
from features.suppression import privacy_key as shared_privacy_key
from governance.policy import ExportPolicy

HierarchyKind = Literal["date", "number", "prefix", "category"]
PSEUDONYM_PREFIX = "p_"
PSEUDONYM_HEX = 24  # 96 bits: no collision in any realistic customer base
TOP = "*"
MISSING = "<missing>"
# Names that mark a postcode-like code: generalised by leading characters, not as a category.
_PREFIX_NAMES = ("postcode", "postal_code", "zip", "zipcode", "post_code")
KEY_ENV = "CUSTINTEL_PRIVACY_KEY"
# The exact search after the greedy one: lattices up to this many level combinations, this many tried at most.
LATTICE_NODES = 50_000
LATTICE_EVALUATIONS = 300


class ExportError(ValueError):
    """An export cannot be made as asked (unknown column, missing class, options below the policy)."""


class ExportRefused(ExportError):
    """The export policy cannot be met on these data; the message says which column or figure stops it."""


# ----------------------------------------------------------------------------------------------- key


def privacy_key(settings: Settings) -> bytes:
    """The home's secret key for pseudonyms: the `privacy_key` setting, $CUSTINTEL_PRIVACY_KEY, else a key file.

    The key is the suppression list's (`features.suppression.privacy_key`: the file
    `<home>/governance/privacy.key`, created on first use with mode 0600), so pseudonyms, receipts and the
    list share one secret. A key file others can read is refused here, since whoever holds the key can link
    pseudonyms back to the identifiers they were made from.
    """
    configured = getattr(settings, "privacy_key", None)
    if configured is None and os.environ.get(KEY_ENV, ""):  # settings built before the variable was set
        return os.environ[KEY_ENV].encode()
    path = settings.governance_dir / "privacy.key"
    if configured is None and path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ExportError(f"{path}: the privacy key is readable by others (mode {mode:04o}); chmod 600 it")
    try:
        return shared_privacy_key(settings)
    except SuppressionError as exc:
        raise ExportError(str(exc)) from exc


# ------------------------------------------------------------------------------------------ classes


def classify_columns(
    columns: Sequence[str], classes: Mapping[str, str], overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Each column's data class: `classes` (from contracts and features) overridden and completed by the policy's.

    A policy key may be a glob (`*_record`): it classes the columns no exact name classes.

    Raises:
        ExportError: a column has no class, or one that is not a data class (the message names it).
    """
    merged = {**classes, **{k: v for k, v in (overrides or {}).items() if not _is_pattern(k)}}
    patterns = [(k, v) for k, v in (overrides or {}).items() if _is_pattern(k)]
    out: dict[str, str] = {}
    for column in columns:
        data_class = merged.get(column)
        if data_class is None:
            data_class = next((v for k, v in patterns if fnmatch.fnmatchcase(column, k)), None)
        if data_class is None:
            raise ExportError(
                f"column {column}: no data class; give it one in the policy's export.classes "
                f"({', '.join(DATA_CLASSES)}) or leave it out with --columns"
            )
        if data_class not in DATA_CLASSES:
            raise ExportError(f"column {column}: unknown data class {data_class!r}; known: {', '.join(DATA_CLASSES)}")
        out[column] = data_class
    return out


def _is_pattern(name: str) -> bool:
    return any(ch in name for ch in "*?[")


def pseudonymise(values: pd.Series, key: bytes) -> pd.Series:
    """Keyed pseudonyms (HMAC-SHA256 of the value's text): stable under one key, unlinkable without it."""
    keyed = hmac.new(key, digestmod=hashlib.sha256)
    present = values.notna()
    text = values[present].astype(str)
    distinct = pd.unique(text.to_numpy(dtype=object))

    def one(value: str) -> str:
        mac = keyed.copy()
        mac.update(value.encode("utf-8"))
        return PSEUDONYM_PREFIX + mac.hexdigest()[:PSEUDONYM_HEX]

    mapping = {value: one(value) for value in distinct}
    out = pd.Series(None, index=values.index, dtype="object", name=values.name)
    out[present] = text.map(mapping)
    return out


# -------------------------------------------------------------------------------------- hierarchies


@dataclass(frozen=True)
class Hierarchy:
    """The generalisation levels of one quasi-identifier: level 0 is the value itself, the last is "*"."""

    column: str
    kind: HierarchyKind
    names: tuple[str, ...]  # what each level is called (for the report): "value", "month", ..., "*"
    labels: tuple[pd.Series, ...]  # per level, each row's value at that level (level 0: the original)
    codes: tuple[np.ndarray, ...]  # per level, the labels factorised (missing is a value of its own)
    losses: tuple[float, ...]  # per level, the mean share of the column's distinct values each row is lumped with

    @property
    def top(self) -> int:
        """The most general level ("*")."""
        return len(self.labels) - 1


def hierarchy_kind(column: str, values: pd.Series, given: str | None = None) -> HierarchyKind:
    """How a column is generalised: the policy's choice, else from its type (dates, numbers) and name (postcodes)."""
    if given is not None:
        return given  # type: ignore[return-value]  # validated by ExportPolicy.hierarchies
    if any(part in column.lower() for part in _PREFIX_NAMES):
        return "prefix"
    if pd.api.types.is_bool_dtype(values):
        return "category"
    if pd.api.types.is_datetime64_any_dtype(values):
        return "date"
    if pd.api.types.is_numeric_dtype(values):
        return "number"
    present = values.dropna().head(200)
    if len(present) and all(isinstance(v, dt.date) for v in present):
        return "date"
    if len(present) and all(isinstance(v, str) and len(v) >= 10 for v in present):
        parsed = pd.to_datetime(present, format="ISO8601", errors="coerce")
        if parsed.notna().all():
            return "date"  # ISO dates held as text (the golden records' birth_date)
    return "category"


def _as_text(values: pd.Series) -> pd.Series:
    return values.astype("object").where(values.notna(), MISSING).astype(str)


def _nice_widths(span: float, integral: bool) -> list[float]:
    """Bin widths 1, 2, 5 x 10^e from about span/100 until one bin holds the whole span."""
    smallest = max(span / 100.0, 1.0 if integral else 0.0)
    if smallest <= 0:
        return [1.0]
    exponent = math.floor(math.log10(smallest))
    widths: list[float] = []
    while True:
        for step in (1, 2, 5):
            width = step * 10.0**exponent
            if width >= smallest and (not widths or width > widths[-1]):
                widths.append(width)
                if width > span:
                    return widths
        exponent += 1


def _number_levels(values: pd.Series) -> tuple[list[str], list[pd.Series]]:
    numbers = pd.to_numeric(values, errors="coerce").astype(float)
    present = numbers.dropna()
    if present.empty:
        return [], []
    integral = bool(np.all(np.mod(present.to_numpy(), 1) == 0))
    span = float(present.max() - present.min())
    names, levels = [], []
    for width in _nice_widths(span, integral):
        low = np.floor(numbers.to_numpy(dtype=float) / width) * width
        label = [MISSING if math.isnan(lo) else f"[{_fmt(lo)}, {_fmt(lo + width)})" for lo in low]
        names.append(f"bins of {_fmt(width)}")
        levels.append(pd.Series(label, index=values.index))
    return names, levels


def _fmt(number: float) -> str:
    return f"{round(number, 10):g}"


def _date_levels(values: pd.Series) -> tuple[list[str], list[pd.Series]]:
    days = pd.to_datetime(values, errors="coerce")
    year = days.dt.year
    levels = [
        days.dt.strftime("%Y-%m"),
        year.astype("Int64").astype(str),
        ((year // 10) * 10).astype("Int64").astype(str) + "s",
    ]
    levels = [level.where(days.notna(), MISSING) for level in levels]
    return ["month", "year", "decade"], levels


def _prefix_levels(values: pd.Series) -> tuple[list[str], list[pd.Series]]:
    text = values.astype("object").where(values.notna(), None)
    compact = text.map(lambda v: None if v is None else str(v).replace(" ", "").upper())
    longest = int(compact.dropna().map(len).max()) if compact.notna().any() else 0
    names, levels = [], []
    for keep in range(longest - 1, 0, -1):
        names.append(f"first {keep}")
        levels.append(compact.map(lambda v, n=keep: MISSING if v is None else v[:n] + "*"))
    return names, levels


def build_hierarchy(column: str, values: pd.Series, kind: HierarchyKind) -> Hierarchy:
    """Every generalisation level of one column, from the value itself up to "*"."""
    builders: dict[str, Callable[[pd.Series], tuple[list[str], list[pd.Series]]]] = {
        "number": _number_levels,
        "date": _date_levels,
        "prefix": _prefix_levels,
        "category": lambda _: ([], []),
    }
    names, levels = builders[kind](values)
    raw_codes, _ = pd.factorize(_as_text(values), use_na_sentinel=False)
    distinct = int(raw_codes.max()) + 1 if len(raw_codes) else 1
    labels: list[pd.Series] = []
    all_names: list[str] = []
    codes, losses = [], []
    previous_groups = -1
    for name, level in zip(("value", *names, TOP), (values, *levels, pd.Series(TOP, index=values.index)), strict=True):
        level_codes, _ = pd.factorize(_as_text(level), use_na_sentinel=False)
        groups = int(level_codes.max()) + 1 if len(level_codes) else 0
        if groups == previous_groups and name != TOP:
            continue  # each level merges the one below: as many groups means the same partition (bins of 1 on ages)
        previous_groups = groups
        labels.append(level)
        all_names.append(name)
        codes.append(level_codes.astype(np.int64))
        # how many distinct original values share each row's generalised value (1 = none lumped)
        pairs = pd.DataFrame({"g": level_codes, "v": raw_codes}).drop_duplicates()
        per_group = pairs.groupby("g").size()
        lumped = per_group.reindex(level_codes).to_numpy(dtype=float)
        losses.append(float(np.mean((lumped - 1) / (distinct - 1))) if distinct > 1 and len(lumped) else 0.0)
    return Hierarchy(column, kind, tuple(all_names), tuple(labels), tuple(codes), tuple(losses))


# ----------------------------------------------------------------------------------- k and l


def group_ids(codes: Sequence[np.ndarray], n_rows: int) -> np.ndarray:
    """One id per group of rows equal on every given code array (one group when none is given)."""
    if not codes:
        return np.zeros(n_rows, dtype=np.int64)
    frame = pd.DataFrame({str(i): c for i, c in enumerate(codes)})
    return frame.groupby(list(frame.columns), sort=False).ngroup().to_numpy(dtype=np.int64)


@dataclass(frozen=True)
class Failing:
    """Rows in groups that break k, or l on a sensitive column."""

    below_k: np.ndarray  # bool per row
    below_l: dict[str, np.ndarray]  # per sensitive column, bool per row

    @property
    def rows(self) -> np.ndarray:
        """Rows that would have to be suppressed."""
        out = self.below_k.copy()
        for mask in self.below_l.values():
            out |= mask
        return out


def failing_rows(groups: np.ndarray, sensitive: Mapping[str, np.ndarray], k: int, l: int) -> Failing:  # noqa: E741
    """Which rows sit in groups smaller than k, or with fewer than l distinct values of a sensitive column."""
    sizes = np.bincount(groups) if len(groups) else np.zeros(0, dtype=np.int64)
    below_k = sizes[groups] < k
    below_l = {}
    for name, values in sensitive.items():
        pairs = pd.DataFrame({"g": groups, "s": values}).drop_duplicates()
        distinct = np.bincount(pairs["g"].to_numpy(), minlength=len(sizes))
        below_l[name] = distinct[groups] < l
    return Failing(below_k, below_l)


def _sensitive_codes(frame: pd.DataFrame, columns: Sequence[str]) -> dict[str, np.ndarray]:
    return {c: pd.factorize(_as_text(frame[c]), use_na_sentinel=False)[0] for c in columns}


@dataclass
class Search:
    """The generalisation chosen: a level per quasi-identifier and the rows suppressed at it."""

    levels: dict[str, int]
    suppressed: np.ndarray  # bool per row
    steps: list[dict[str, Any]] = field(default_factory=list)


def _blame(
    hierarchies: Sequence[Hierarchy],
    caps: Sequence[int],
    levels: Sequence[int],
    sensitive: Mapping[str, np.ndarray],
    failing: Failing,
    rules: ExportPolicy,
    n_rows: int,
) -> str:
    """Which column stops k or l at the most general levels the policy allows."""
    allowed = math.floor(rules.max_suppressed_share * n_rows)
    head = (
        f"k={rules.k} and l={rules.l} cannot be reached with at most {rules.max_suppressed_share:.1%} of rows "
        f"left out ({allowed} of {n_rows}): at the most general levels allowed, {int(failing.rows.sum())} rows are "
        "in groups"
    )
    if n_rows < rules.k:
        return f"only {n_rows} rows: fewer than k={rules.k} however far the quasi-identifiers are generalised"
    k_rows = int(failing.below_k.sum())
    l_rows = {name: int(mask.sum()) for name, mask in failing.below_l.items()}
    worst_l = max(l_rows, key=lambda n: l_rows[n]) if l_rows else None
    if k_rows >= (l_rows[worst_l] if worst_l else 0):
        capped = [i for i, h in enumerate(hierarchies) if caps[i] < h.top]
        if not capped:
            return f"{head} smaller than k={rules.k}"
        relief = {}
        for i in capped:
            codes = [h.codes[h.top if j == i else levels[j]] for j, h in enumerate(hierarchies)]
            relief[i] = int(failing_rows(group_ids(codes, n_rows), sensitive, rules.k, rules.l).below_k.sum())
        i = min(relief, key=lambda j: relief[j])
        h = hierarchies[i]
        return (
            f"{head} smaller than k={rules.k}; the quasi-identifier {h.column} stops k: the policy's "
            f"export.max_levels caps it at level {caps[i]} ({h.names[caps[i]]}), and fully generalised it would "
            f"leave {relief[i]} rows in groups smaller than k"
        )
    assert worst_l is not None
    return (
        f"{head} with fewer than l={rules.l} distinct values of the sensitive column {worst_l} "
        f"({l_rows[worst_l]} rows): it stops l"
    )


def search_generalisation(
    hierarchies: Sequence[Hierarchy], sensitive: Mapping[str, np.ndarray], rules: ExportPolicy, n_rows: int
) -> Search:
    """Greedy bottom-up search for the least generalisation reaching k and l within the suppression budget.

    From every column at its own values, each step raises the one quasi-identifier whose next level
    brings the most failing rows into groups per unit of information lost (Datafly's greedy step with
    a utility price; ties: the fewest rows left failing), until the failing rows fit in
    `max_suppressed_share`; then each column is lowered again while the budget still holds, so no
    column is more general than it needs to be given the others.

    Raises:
        ExportRefused: even the most general levels allowed leave too many rows failing.
    """
    caps = [min(h.top, rules.max_levels.get(h.column, h.top)) for h in hierarchies]
    allowed = math.floor(rules.max_suppressed_share * n_rows)

    def failing_at(levels: Sequence[int]) -> Failing:
        codes = [h.codes[levels[i]] for i, h in enumerate(hierarchies)]
        return failing_rows(group_ids(codes, n_rows), sensitive, rules.k, rules.l)

    def loss(levels: Sequence[int]) -> float:
        return float(sum(h.losses[levels[i]] for i, h in enumerate(hierarchies)))

    levels = [0] * len(hierarchies)
    steps: list[dict[str, Any]] = []
    current = failing_at(levels)
    current_loss = loss(levels)
    while n_rows < rules.k or int(current.rows.sum()) > allowed:
        candidates = [i for i in range(len(hierarchies)) if levels[i] < caps[i]]
        if not candidates or n_rows < rules.k:
            raise ExportRefused(_blame(hierarchies, caps, levels, sensitive, current, rules, n_rows))
        scored = []
        for i in candidates:
            trial = [*levels]
            trial[i] += 1
            result = failing_at(trial)
            gained = int(current.rows.sum()) - int(result.rows.sum())
            price = gained / max(loss(trial) - current_loss, 1e-9)
            scored.append((-price, int(result.rows.sum()), i, trial, result))
        _, failing_count, i, levels, current = min(scored, key=lambda s: (s[0], s[1], s[2]))
        current_loss = loss(levels)
        steps.append({"raise": hierarchies[i].column, "to": hierarchies[i].names[levels[i]], "failing": failing_count})
    for i in range(len(hierarchies)):  # minimality: undo what the later steps made unnecessary
        while levels[i] > 0:
            trial = [*levels]
            trial[i] -= 1
            result = failing_at(trial)
            if int(result.rows.sum()) > allowed:
                break
            levels, current = trial, result
            steps.append({"lower": hierarchies[i].column, "to": hierarchies[i].names[levels[i]]})
    # Then, when the lattice of level combinations is small, the combinations losing less than the greedy
    # choice are tried cheapest first (within a budget): the first that fits is the least generalisation.
    sizes = [c + 1 for c in caps]
    if 0 < math.prod(sizes) <= LATTICE_NODES:
        bound = loss(levels)
        cheaper = sorted(
            (node for node in itertools.product(*(range(n) for n in sizes)) if loss(node) < bound - 1e-12), key=loss
        )
        tried = cheaper[:LATTICE_EVALUATIONS]
        for n, node in enumerate(tried, start=1):
            result = failing_at(node)
            if int(result.rows.sum()) <= allowed:
                levels, current = list(node), result
                steps.append({"lattice": {h.column: h.names[node[i]] for i, h in enumerate(hierarchies)}, "tried": n})
                break
        else:
            complete = len(tried) == len(cheaper)
            steps.append(
                {"lattice": "no cheaper combination fits" if complete else "budget spent", "tried": len(tried)}
            )
    return Search({h.column: levels[i] for i, h in enumerate(hierarchies)}, current.rows, steps)


def generalised(frame: pd.DataFrame, hierarchies: Sequence[Hierarchy], levels: Mapping[str, int]) -> pd.DataFrame:
    """The frame with each quasi-identifier at its chosen level (level 0 keeps the original values)."""
    out = frame.copy()
    for h in hierarchies:
        level = levels[h.column]
        if level > 0:
            out[h.column] = h.labels[level].astype("object")
    return out


# --------------------------------------------------------------------------------- singling out


@dataclass(frozen=True)
class Risk:
    """A measured singling-out risk (anonymeter's definition), with the attack counts behind it."""

    mode: str
    value: float
    ci: tuple[float, float]
    attacks: int
    queries: int  # queries that single out one released record
    successes: int  # of those, how many single out one original record
    control_successes: int
    baseline_successes: int


def wilson(n_total: int, n_success: float, confidence: float = 0.95) -> tuple[float, float]:
    """Success rate and its error (Wilson score interval), as anonymeter's `success_rate`."""
    z = statistics.NormalDist().inv_cdf(0.5 * (1.0 + confidence))
    z2 = z * z
    variance = n_success * (n_total - n_success) / n_total
    denominator = n_total + z2
    return (n_success + 0.5 * z2) / denominator, (z / denominator) * math.sqrt(variance + 0.25 * z2)


def residual_risk(
    n_attacks: int, successes: float, control_successes: float, confidence: float = 0.95
) -> tuple[float, tuple[float, float]]:
    """The attack's excess success over the control's, normalised, bounded to [0, 1] with its interval."""
    attack, attack_error = wilson(n_attacks, successes, confidence)
    control, control_error = wilson(n_attacks, control_successes, confidence)
    value = (attack - control) / (1.0 - control)
    error = math.sqrt((attack_error / abs(1 - control)) ** 2 + (control_error * (attack - 1) / (1 - control) ** 2) ** 2)

    def bound(x: float) -> float:
        return min(max(x, 0.0), 1.0)

    return bound(value), (bound(value - error), bound(value + error))


Query = tuple[tuple[int, str, float], ...]  # (column index, operator, value code or number)


class _Encoded:
    """Frames encoded alike: numbers as floats, everything else as shared integer codes (missing: its own)."""

    def __init__(self, frames: Sequence[pd.DataFrame], columns: Sequence[str]) -> None:
        self.columns = list(columns)
        self.numeric = [
            pd.api.types.is_numeric_dtype(frames[0][c]) and not pd.api.types.is_bool_dtype(frames[0][c])
            for c in columns
        ]
        stacked = pd.concat([f[list(columns)] for f in frames], ignore_index=True)
        arrays = []
        for c, numeric in zip(columns, self.numeric, strict=True):
            if numeric:
                arrays.append(pd.to_numeric(stacked[c], errors="coerce").to_numpy(dtype=float))
            else:
                arrays.append(pd.factorize(_as_text(stacked[c]), use_na_sentinel=False)[0].astype(float))
        matrix = np.column_stack(arrays) if arrays else np.zeros((len(stacked), 0))
        bounds = np.cumsum([0, *(len(f) for f in frames)])
        # rows are people: unlike anonymeter (made for synthetic data) identical rows are not merged, since k
        # identical generalised records are k people and a query matching them singles out nobody
        self.parts = [matrix[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class _Rows:
    """One encoded frame, with a per-column index (value -> rows) so an equality narrows a query at once."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self._index: dict[int, dict[float, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.data)

    def rows_equal(self, column: int, value: float) -> np.ndarray:
        if column not in self._index:
            x = self.data[:, column]
            order = np.argsort(x, kind="stable")
            values, starts = np.unique(x[order], return_index=True)
            ends = [*starts[1:], len(order)]
            self._index[column] = {
                float(v): order[a:b] for v, a, b in zip(values, starts, ends, strict=True) if not math.isnan(v)
            }
        return self._index[column].get(value, _NO_ROWS)


_NO_ROWS = np.zeros(0, dtype=np.int64)


def _hits(x: np.ndarray, op: str, value: float) -> np.ndarray:
    if math.isnan(value):
        return np.isnan(x) if op in ("==", "<=", ">=") else ~np.isnan(x)
    if op == "==":
        return x == value
    if op == "!=":
        return x != value
    if op == "<=":
        return x <= value
    if op == ">=":
        return x >= value
    return x < value if op == "<" else x > value


def _count(rows: _Rows, query: Query) -> int:
    """How many rows the query matches."""
    equalities = [(c, v) for c, op, v in query if op == "==" and not math.isnan(v)]
    if equalities:
        candidates = min((rows.rows_equal(c, v) for c, v in equalities), key=len)
        if not len(candidates):
            return 0
        mask = np.ones(len(candidates), dtype=bool)
        for column, op, value in query:
            mask &= _hits(rows.data[candidates, column], op, value)
        return int(mask.sum())
    mask = np.ones(len(rows), dtype=bool)
    for column, op, value in query:
        mask &= _hits(rows.data[:, column], op, value)
    return int(mask.sum())


def _univariate_queries(syn: np.ndarray, numeric: Sequence[bool]) -> list[Query]:
    queries: list[Query] = []
    for j, is_number in enumerate(numeric):
        column = syn[:, j]
        if int(np.isnan(column).sum()) == 1:
            queries.append(((j, "==", math.nan),))
        present = column[~np.isnan(column)]
        if is_number and len(present):
            queries += [((j, "<=", float(present.min())),), ((j, ">=", float(present.max())),)]
        values, counts = np.unique(present, return_counts=True)
        queries += [((j, "==", float(v)),) for v in values[counts == 1]]
    return queries


def singling_out_risk(
    ori: pd.DataFrame,
    syn: pd.DataFrame,
    control: pd.DataFrame,
    mode: Literal["univariate", "multivariate"],
    n_attacks: int = 500,
    n_cols: int = 3,
    seed: int = 0,
    max_attempts: int | None = None,
) -> Risk:
    """The singling-out risk of releasing `syn`, made from `ori` and not from `control` (anonymeter's method).

    The attacker builds queries that single out exactly one released record: univariate from rare
    values and extremes of one column; multivariate from a released record's values on `n_cols`
    random columns (equality, or beyond the record's value on the far side of the median for
    numbers). Success is a query matching exactly one original record; the control set, of the same
    size, tells what the same queries achieve on people who were never released. Risk = (attack -
    control) / (1 - control) of the success rates over `n_attacks`, with a 95% interval. A random-query
    baseline is reported too: an attack no better than it is not informative.
    """
    columns = list(syn.columns)
    encoded = _Encoded([ori, syn, control], columns)
    ori_m, syn_m, control_m = encoded.parts
    ori_rows, syn_rows, control_rows = _Rows(ori_m), _Rows(syn_m), _Rows(control_m)
    rng = np.random.default_rng(seed)
    n_cols = min(n_cols, len(columns))
    candidates: list[Query] = []
    if mode == "univariate":
        candidates = _univariate_queries(syn_m, encoded.numeric)
        rng.shuffle(candidates)
    found: list[Query] = []
    seen: set[Query] = set()
    medians = np.nanmedian(syn_m, axis=0) if len(syn_m) else np.zeros(len(columns))
    attempts, max_attempts = 0, max_attempts or 40 * n_attacks  # anonymeter's default (10 million) is unbounded here
    while len(found) < n_attacks and len(syn_m) and columns:
        if mode == "univariate":
            if not candidates:
                break
            query = candidates.pop()
        else:
            if attempts >= max_attempts:
                break
            attempts += 1
            record = syn_m[rng.integers(len(syn_m))]
            picked = sorted(rng.choice(len(columns), size=n_cols, replace=False).tolist())
            parts = []
            for j in picked:
                value = float(record[j])
                op = "==" if not encoded.numeric[j] or math.isnan(value) else (">=" if value > medians[j] else "<=")
                parts.append((j, op, value))
            query = tuple(parts)
        if query not in seen and _count(syn_rows, query) == 1:
            seen.add(query)
            found.append(query)
    successes = sum(_count(ori_rows, q) == 1 for q in found)
    control_successes = sum(_count(control_rows, q) == 1 for q in found)
    baseline = 0
    for _ in range(n_attacks if len(syn_m) and columns else 0):
        picked = rng.choice(len(columns), size=1 if mode == "univariate" else n_cols, replace=False).tolist()
        parts = []
        for j in sorted(picked):
            values = np.unique(syn_m[:, j])
            ops = ["==", "!=", "<", ">", "<=", ">="] if encoded.numeric[j] else ["==", "!="]
            parts.append((j, str(rng.choice(ops)), float(rng.choice(values))))
        baseline += _count(ori_rows, tuple(parts)) == 1
    value, ci = residual_risk(n_attacks, successes, control_successes)
    return Risk(mode, value, ci, n_attacks, len(found), successes, control_successes, baseline)


# ------------------------------------------------------------------------------------------ export


@dataclass
class ExportResult:
    """The rows to release and the report of how they were made and what risk they carry."""

    data: pd.DataFrame
    report: dict[str, Any]


def measured_k(frame: pd.DataFrame, quasi_identifiers: Sequence[str]) -> int:
    """The smallest group of rows equal on every quasi-identifier (the k the frame is k-anonymous for)."""
    if frame.empty:
        return 0
    codes = [pd.factorize(_as_text(frame[c]), use_na_sentinel=False)[0] for c in quasi_identifiers]
    return int(np.bincount(group_ids(codes, len(frame))).min())


def measured_l(frame: pd.DataFrame, quasi_identifiers: Sequence[str], column: str) -> int:
    """The fewest distinct values of a sensitive column within any such group (distinct l-diversity)."""
    if frame.empty:
        return 0
    codes = [pd.factorize(_as_text(frame[c]), use_na_sentinel=False)[0] for c in quasi_identifiers]
    groups = group_ids(codes, len(frame))
    values = pd.factorize(_as_text(frame[column]), use_na_sentinel=False)[0]
    return int(pd.DataFrame({"g": groups, "s": values}).groupby("g")["s"].nunique().min())


def effective_rules(policy: ExportPolicy, k: int | None = None, l: int | None = None) -> ExportPolicy:  # noqa: E741
    """The policy with a stricter k or l asked for on the command line; a looser one is refused."""
    for name, asked in (("k", k), ("l", l)):
        floor = getattr(policy, name)
        if asked is not None and asked < floor:
            raise ExportError(f"--{name} {asked}: below the export policy's {name}={floor} (it may only be raised)")
    return policy.model_copy(update={"k": k or policy.k, "l": l or policy.l})


def anonymise(
    frame: pd.DataFrame,
    classes: Mapping[str, str],
    rules: ExportPolicy,
    key: bytes | Callable[[], bytes],
    source: str = "frame",
) -> ExportResult:
    """Make `frame` fit to leave the platform under `rules`, and measure what it still risks.

    `classes` gives each column's data class (see `classify_columns`); `key` is the pseudonym key, or a
    function giving it, called only once the export is accepted (a refused one creates no key). Direct identifiers are
    pseudonymised or dropped, quasi-identifiers generalised (`search_generalisation`), rows of groups
    still failing k or l suppressed, and the singling-out risk measured on a split of the rows.

    Raises:
        ExportError: a column lacks a class.
        ExportRefused: k, l, the suppression budget or the singling-out limit cannot all be met.
    """
    classes = classify_columns(list(frame.columns), classes)
    frame = frame.reset_index(drop=True)
    direct = [c for c in frame.columns if classes[c] == "direct_identifier"]
    quasi = [c for c in frame.columns if classes[c] == "quasi_identifier"]
    sensitive = [c for c in frame.columns if classes[c] == "sensitive"]
    n_rows = len(frame)
    hierarchies = [build_hierarchy(c, frame[c], hierarchy_kind(c, frame[c], rules.hierarchies.get(c))) for c in quasi]
    sensitive_codes = _sensitive_codes(frame, sensitive)
    search = search_generalisation(hierarchies, sensitive_codes, rules, n_rows)

    data = generalised(frame, hierarchies, search.levels).loc[~search.suppressed].reset_index(drop=True)

    k = measured_k(data, quasi)
    l_values = {c: measured_l(data, quasi, c) for c in sensitive}
    if not data.empty and (k < rules.k or any(v < rules.l for v in l_values.values())):
        raise AssertionError(f"the search released k={k}, l={l_values}: a bug, not a policy failure")  # never
    loss = float(np.mean([h.losses[search.levels[h.column]] for h in hierarchies])) if hierarchies else 0.0
    suppressed = int(search.suppressed.sum())
    kept = n_rows - suppressed
    information_loss = (loss * kept + suppressed) / n_rows if n_rows and hierarchies else (suppressed / max(n_rows, 1))

    risks, measured_on = _measure_singling_out(frame, classes, hierarchies, search, sensitive_codes, rules)
    report: dict[str, Any] = {
        "source": source,
        "rows_in": n_rows,
        "rows_out": len(data),
        "suppressed_rows": suppressed,
        "suppressed_share": suppressed / n_rows if n_rows else 0.0,
        "policy": rules.model_dump(mode="json", exclude={"classes"}),
        "classes": dict(classes),
        "direct_identifiers": {c: rules.direct_identifiers for c in direct},
        "generalisation": {
            h.column: {"kind": h.kind, "level": search.levels[h.column], "name": h.names[search.levels[h.column]]}
            for h in hierarchies
        },
        "search_steps": search.steps,
        "k": k,
        "l": l_values,
        "information_loss": {
            "generalisation": loss,
            "with_suppression": information_loss,
            "per_column": {h.column: h.losses[search.levels[h.column]] for h in hierarchies},
        },
        "singling_out": {"columns": measured_on, **{r.mode: _risk_json(r) for r in risks}},
        "columns_out": list(data.columns),
    }
    worst = max(risks, key=lambda r: r.value) if risks else None
    if worst is not None and worst.value > rules.max_singling_out_risk:
        raise ExportRefused(
            f"the {worst.mode} singling-out risk {worst.value:.3f} (95% CI {worst.ci[0]:.3f}-{worst.ci[1]:.3f}; "
            f"{worst.successes} of {worst.attacks} attacks on {', '.join(measured_on)} single out one person, "
            f"{worst.control_successes} on the control set) is above the policy's max_singling_out_risk "
            f"{rules.max_singling_out_risk:g} at k={k}: raise k, or generalise further with export.max_levels"
        )
    if direct and rules.direct_identifiers == "drop":
        data = data.drop(columns=direct)
    elif direct:
        secret = key() if callable(key) else key
        for column in direct:
            data[column] = pseudonymise(data[column], secret)
    report["columns_out"] = list(data.columns)
    return ExportResult(data, report)


def _risk_json(risk: Risk) -> dict[str, Any]:
    out = asdict(risk)
    out["ci"] = list(risk.ci)
    return out


def _measure_singling_out(
    frame: pd.DataFrame,
    classes: Mapping[str, str],
    hierarchies: Sequence[Hierarchy],
    search: Search,
    sensitive_codes: Mapping[str, np.ndarray],
    rules: ExportPolicy,
) -> tuple[list[Risk], list[str]]:
    """Univariate and multivariate risk of a release made the same way from one part of the rows.

    The rows are split at random into an original part and a control part of equal size; the
    original part is released at the chosen levels (its own failing groups suppressed), and the
    attacks built on that release are scored on both parts, generalised alike.
    """
    columns = [c for c in frame.columns if classes[c] in rules.singling_out_classes]
    n_rows = len(frame)
    if not columns or n_rows < 4:
        return [], columns
    order = np.random.default_rng(rules.seed).permutation(n_rows)
    half = min(int(n_rows * (1 - rules.control_share)), n_rows - int(n_rows * (1 - rules.control_share)))
    ori_rows, control_rows = order[:half], order[half : 2 * half]
    general = generalised(frame[columns], [h for h in hierarchies if h.column in columns], search.levels)
    codes = [h.codes[search.levels[h.column]][ori_rows] for h in hierarchies]
    sub_sensitive = {c: v[ori_rows] for c, v in sensitive_codes.items()}
    fails = failing_rows(group_ids(codes, len(ori_rows)), sub_sensitive, rules.k, rules.l).rows
    ori = general.iloc[ori_rows].reset_index(drop=True)
    syn = ori.loc[~fails].reset_index(drop=True)
    control = general.iloc[control_rows].reset_index(drop=True)
    modes: tuple[Literal["univariate", "multivariate"], ...] = ("univariate", "multivariate")
    risks = [singling_out_risk(ori, syn, control, mode, rules.singling_out_attacks, seed=rules.seed) for mode in modes]
    return risks, columns


# ------------------------------------------------------------------------------------------ I/O


@dataclass(frozen=True)
class ExportSource:
    """The rows of a source and the data classes its own definitions give their columns."""

    name: str
    frame: pd.DataFrame
    classes: dict[str, str]


def parse_source(source: str) -> tuple[str, str | None]:
    """('lake', table), ('golden', None) or ('features', cutoff ISO) from the command's SOURCE.

    Raises:
        ExportError: a malformed `features:<cutoff>`.
    """
    if source in ("golden", "golden_records"):
        return "golden", None
    if source.startswith("features:"):
        cutoff = source.removeprefix("features:")
        try:
            return "features", dt.date.fromisoformat(cutoff).isoformat()
        except ValueError:
            raise ExportError(
                f"SOURCE {source!r}: the cutoff must be a date YYYY-MM-DD (features:2025-09-01)"
            ) from None
    if not source or not source.replace("_", "").isalnum() or not source[0].isalpha():
        raise ExportError(f"SOURCE {source!r}: a lake table name, golden, or features:<YYYY-MM-DD>")
    return "lake", source


def _declared_class(obj: object) -> str | None:
    value = getattr(obj, "data_class", None) or getattr(obj, "class_", None)
    return None if value is None else str(getattr(value, "value", value))


def read_export_source(settings: Settings, source: str) -> ExportSource:
    """Read a lake table, the golden records or the offline features at a cutoff, with their declared classes.

    Lake lineage columns (`_...`) are platform bookkeeping, not data about anyone: they are not exported.
    """
    kind, detail = parse_source(source)
    classes: dict[str, str] = {}
    if kind == "lake":
        from features.lake import lake_contract, read_lake_table

        assert detail is not None
        frame = read_lake_table(settings, detail)
        for rule in lake_contract(settings, detail).columns:
            declared = _declared_class(rule)
            if declared:
                classes[rule.name] = declared
    elif kind == "golden":
        from features.identity.store import read_identity_table

        frame = read_identity_table(settings, "golden_records")
    else:
        from features.featurestore.definitions import feature_sets
        from features.featurestore.offline import available_as_of, read_offline
        from features.featurestore.store import feature_config, offline_root

        assert detail is not None
        cutoff = dt.date.fromisoformat(detail)
        root = offline_root(settings)
        parts = []
        for feature_set in feature_sets(feature_config(settings)):
            if cutoff not in available_as_of(root, feature_set.key):
                continue
            part = read_offline(root, feature_set.key, [cutoff]).to_pandas()
            parts.append(part)
            for feature in feature_set.features:
                declared = _declared_class(feature)
                if declared:
                    classes[feature.name] = declared
        if not parts:
            raise ExportError(f"SOURCE {source}: no feature set is stored at {detail}: run `custintel features` first")
        frame = parts[0]
        for part in parts[1:]:
            frame = frame.merge(part, on=["customer_key", "as_of"], how="outer", suffixes=("", "_dup"))
        frame = frame[[c for c in frame.columns if not c.endswith("_dup")]]
    frame = frame[[c for c in frame.columns if not str(c).startswith("_")]]
    return ExportSource(source, frame, classes)


def select_columns(frame: pd.DataFrame, columns: Sequence[str] | None) -> pd.DataFrame:
    """Only the columns asked for (all when None); an unknown one is an error naming it."""
    if not columns:
        return frame
    unknown = [c for c in columns if c not in frame.columns]
    if unknown:
        raise ExportError(f"--columns: no column {', '.join(unknown)} in the source; it has {', '.join(frame.columns)}")
    return frame[list(dict.fromkeys(columns))]


def sample_rows(frame: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """A seeded random sample of n rows (all rows when None or when there are fewer)."""
    if n is None or n >= len(frame):
        return frame
    return frame.sample(n=n, random_state=seed).sort_index()


def check_out_dir(out: Path) -> None:
    """An export is written into a new or empty folder only, so nothing is overwritten or mixed."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out}: exists and is not an empty folder")


def write_export(out: Path, result: ExportResult) -> list[Path]:
    """Write data.parquet, data.csv, report.json and report.html; all appear at once (a renamed staging folder)."""
    check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.staging-{secrets.token_hex(4)}"
    stage.mkdir()
    try:
        data = result.data.copy()
        for column in data.columns:  # generalised labels are text; keep Parquet columns of one type
            if data[column].dtype == object:
                data[column] = data[column].map(lambda v: v if v is None or isinstance(v, str) else str(v))
        data.to_parquet(stage / "data.parquet", index=False)
        data.to_csv(stage / "data.csv", index=False)
        (stage / "report.json").write_text(json.dumps(result.report, indent=2, default=str) + "\n", encoding="utf-8")
        (stage / "report.html").write_text(report_html(result.report), encoding="utf-8")
        if out.exists():
            out.rmdir()
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return [out / name for name in ("data.parquet", "data.csv", "report.json", "report.html")]


def report_html(report: Mapping[str, Any]) -> str:
    """A small readable page of the export's figures (no data values)."""

    def esc(value: object) -> str:
        return html.escape(str(value))

    risk = report.get("singling_out", {})
    risk_rows = "".join(
        f"<tr><td>{esc(mode)}</td><td>{r['value']:.3f}</td><td>{r['ci'][0]:.3f} - {r['ci'][1]:.3f}</td>"
        f"<td>{r['successes']} / {r['attacks']}</td><td>{r['control_successes']}</td><td>{r['baseline_successes']}</td>"
        "</tr>"
        for mode in ("univariate", "multivariate")
        if (r := risk.get(mode))
    )
    general_rows = "".join(
        f"<tr><td>{esc(c)}</td><td>{esc(g['kind'])}</td><td>{esc(g['name'])}</td>"
        f"<td>{report['information_loss']['per_column'][c]:.3f}</td></tr>"
        for c, g in report["generalisation"].items()
    )
    class_rows = "".join(f"<tr><td>{esc(c)}</td><td>{esc(k)}</td></tr>" for c, k in report["classes"].items())
    policy = report["policy"]
    l_text = ", ".join(f"{esc(c)}: {v}" for c, v in report["l"].items()) or "no sensitive column"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Export of {esc(report["source"])}</title>
<style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.2rem .5rem;text-align:left}}</style></head><body>
<h1>Export of {esc(report["source"])}</h1>
<p>{report["rows_out"]} of {report["rows_in"]} rows released; {report["suppressed_rows"]} suppressed
({report["suppressed_share"]:.1%}, policy at most {policy["max_suppressed_share"]:.1%}).</p>
<h2>Anonymity</h2>
<p>k = {report["k"]} (policy {policy["k"]}); l = {l_text} (policy {policy["l"]});
information loss {report["information_loss"]["with_suppression"]:.3f} (0: none, 1: everything generalised away).</p>
<table><tr><th>quasi-identifier</th><th>hierarchy</th><th>released as</th><th>loss</th></tr>{general_rows}</table>
<h2>Singling-out risk</h2>
<p>Attacks on: {esc(", ".join(risk.get("columns", [])))}; policy at most {policy["max_singling_out_risk"]:g}.</p>
<table><tr><th>attack</th><th>risk</th><th>95% interval</th><th>successes</th><th>control successes</th>
<th>random baseline</th></tr>{risk_rows}</table>
<h2>Data classes</h2>
<p>Direct identifiers: {esc(policy["direct_identifiers"])}.</p>
<table><tr><th>column</th><th>class</th></tr>{class_rows}</table>
</body></html>
"""
