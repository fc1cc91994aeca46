"""Realistic corruption: typos, formats, missing values. Deterministic given the rng."""

from __future__ import annotations

import numpy as np
import pandas as pd

_KEYBOARD_NEIGHBOURS = {
    "a": "qws",
    "b": "vgn",
    "c": "xdv",
    "d": "sfe",
    "e": "wrd",
    "f": "dgr",
    "g": "fht",
    "h": "gjy",
    "i": "uok",
    "j": "hku",
    "k": "jli",
    "l": "kop",
    "m": "nj",
    "n": "bmh",
    "o": "ipl",
    "p": "ol",
    "q": "wa",
    "r": "etf",
    "s": "adw",
    "t": "ryg",
    "u": "yij",
    "v": "cbf",
    "w": "qes",
    "x": "zcs",
    "y": "tuh",
    "z": "xa",
}


def _typo(text: str, kind: int, pos_draw: float, char_draw: float) -> str:
    if len(text) < 3:
        return text
    pos = 1 + int(pos_draw * (len(text) - 2))  # keep the first letter, as most typos do
    if kind == 0:  # swap two neighbours
        return text[: pos - 1] + text[pos] + text[pos - 1] + text[pos + 1 :]
    if kind == 1:  # drop one
        return text[:pos] + text[pos + 1 :]
    if kind == 2:  # double one
        return text[:pos] + text[pos] + text[pos:]
    ch = text[pos]
    near = _KEYBOARD_NEIGHBOURS.get(ch.lower())
    if not near:
        return text[:pos] + text[pos + 1 :]
    sub = near[int(char_draw * len(near))]
    return text[:pos] + (sub.upper() if ch.isupper() else sub) + text[pos + 1 :]


def add_typos(values: pd.Series, rate: float, rng: np.random.Generator) -> pd.Series:
    """Put one keyboard typo into about `rate` of the non-empty values."""
    out = values.copy()
    hit = (rng.random(len(values)) < rate) & values.notna().to_numpy()
    idx = np.flatnonzero(hit)
    if idx.size == 0:
        return out
    kinds = rng.integers(0, 4, idx.size)
    pos = rng.random(idx.size)
    chars = rng.random(idx.size)
    vals = out.to_numpy(dtype=object)
    for j, i in enumerate(idx):
        vals[i] = _typo(str(vals[i]), int(kinds[j]), float(pos[j]), float(chars[j]))
    return pd.Series(vals, index=values.index, name=values.name)


def blank_out(values: pd.Series, rate: float, rng: np.random.Generator) -> pd.Series:
    """Empty about `rate` of the values, as optional fields are in real exports."""
    mask = rng.random(len(values)) < rate
    return values.mask(mask)


def format_phone(digits: pd.Series, style: np.ndarray) -> pd.Series:
    """Render 10-digit US numbers in the style each system uses.

    Styles: 0 "+1 212-555-0143", 1 "212-555-0143", 2 "(212) 555-0143",
    3 "2125550143", 4 "212.555.0143", 5 "1-212-555-0143".
    """
    d = digits.fillna("").astype(str)
    a, b, c = d.str[:3], d.str[3:6], d.str[6:]
    rendered = [
        "+1 " + a + "-" + b + "-" + c,
        a + "-" + b + "-" + c,
        "(" + a + ") " + b + "-" + c,
        d,
        a + "." + b + "." + c,
        "1-" + a + "-" + b + "-" + c,
    ]
    out = pd.Series(np.select([style == k for k in range(6)], rendered, default=d), index=d.index)
    return out.mask(digits.isna())
