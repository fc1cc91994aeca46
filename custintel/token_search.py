"""Finding many people's identifiers in text at once: one pass over the text, whatever the number of people.

A store that cannot look a person up by a column (a report page, a JSON artifact, a card) searches
its text for the identifiers `custintel.personal.Subject.tokens()` gives. Counting each identifier
with `str.count` costs a pass per identifier: for a batch of a thousand subjects, thousands of
passes over every file. Here the text is cut once into identifier-shaped runs (letters, digits and
`@ . _ + -`) and each run is looked up in a set; an identifier that holds other characters (a phone
written with spaces) is still counted on its own.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping

_RUN = re.compile(r"[\w@.+\-]+")
_PLAIN = re.compile(r"[\w@.+\-]+\Z")
_EDGES = ".+-"
_SEPARATORS = re.compile(r"[@.+\-]")  # a run may end in a full stop or start with a sign that is not the identifier's


def _runs(text: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for run in _RUN.findall(text):
        # "key.parquet", "+44..." hold the identifier as a part, or with a sign or full stop around it
        forms = {run, run.rstrip(_EDGES), run.lstrip(_EDGES), run.strip(_EDGES), *_SEPARATORS.split(run)}
        for form in forms:
            if form:
                counts[form] += 1
    return counts


def occurrences(text: str, tokens: Mapping[str, Iterable[str]]) -> dict[str, int]:
    """Owner -> how many times the owner's identifiers occur in `text` (owners with none left out).

    `tokens` maps an owner (a subject's request) to its identifiers.
    """
    runs: Counter[str] | None = None
    out: dict[str, int] = {}
    for owner, own in tokens.items():
        count = 0
        for token in own:
            if not token:
                continue
            if _PLAIN.match(token):
                if runs is None:
                    runs = _runs(text)
                count += runs.get(token, 0)
            else:
                count += text.count(token)
        if count:
            out[owner] = count
    return out


def scrub(text: str, tokens: Iterable[str], replacement: str = "[erased]") -> tuple[str, int]:
    """`text` with every occurrence of the identifiers replaced (longest first); returns (text, replacements)."""
    present = _present(text, tokens)
    total = 0
    for token in sorted(present, key=len, reverse=True):
        total += text.count(token)
        text = text.replace(token, replacement)
    return text, total


def _present(text: str, tokens: Iterable[str]) -> list[str]:
    runs = _runs(text)
    return [t for t in tokens if t and (runs.get(t) if _PLAIN.match(t) else t in text)]
