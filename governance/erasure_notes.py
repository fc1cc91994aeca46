"""The erasure note of a model version: its tags and the line its card carries (light: no model code imported).

An erasure request that removed people from a version's training, test or reference rows flags the version with
these tags (`models.personal`); governance writes the retrain rule beside them and puts the line under the card's
title. Kept apart from `governance.cards` so the erasure path loads none of the audit's libraries.
"""

from __future__ import annotations

import html
import re

ERASURE_SUBJECTS, ERASURE_AT, ERASURE_RETRAIN = (
    "custintel.erasure.subjects",
    "custintel.erasure.at",
    "custintel.erasure.retrain",
)
_ERASURE_NOTE = re.compile(r'\n?<p class="erasure">.*?</p>|> Erasure: [^\n]*\n')


def erasure_line(tags: dict[str, str]) -> str | None:
    """The card's line for a version flagged by erasure requests (None when it is not)."""
    if not tags.get(ERASURE_SUBJECTS):
        return None
    retrain = tags.get(ERASURE_RETRAIN, "not_required").replace("_", " ")
    return (
        f"{tags[ERASURE_SUBJECTS]} erased person(s) were in this version's training, test or reference rows "
        f"(last erasure {tags.get(ERASURE_AT, 'unknown')}); retrain {retrain} by the governance policy"
    )


def with_erasure_note(text: str, line: str, markdown: bool) -> str:
    """A written card (HTML or Markdown) with its erasure note put under the title (replacing an older one)."""
    text = _ERASURE_NOTE.sub("", text)
    if markdown:
        head, sep, rest = text.partition("\n")
        return f"{head}{sep}> Erasure: {line}\n{rest}"
    head, sep, rest = text.partition("</h1>")
    return f'{head}{sep}\n<p class="erasure">Erasure: {html.escape(line)}</p>{rest}' if sep else text
