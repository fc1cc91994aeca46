"""Mask personal data in ticket text before anything shows, logs or stores it.

Ticket text is personal data: people type their name, email address, phone number
and account numbers into it. Emails, phone numbers (UK, US and international
layouts, with spaces, dashes, dots or brackets) and long ids are found by pattern;
names by the phrases that introduce them ("my name is", "this is", sign-offs such as
"Regards, ...") and, where the lake knows who wrote the ticket, by that person's own
names. Masking errs on the side of removing too much.

Input is made safe first (`prepare_texts`): missing values and bytes that are not UTF-8
become text, and huge texts are cut to `MAX_TEXT_CHARS` with a named warning.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from insights.errors import InsightsError

EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
NAME = "[NAME]"
ID = "[ID]"
MAX_TEXT_CHARS = 4000

_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")
# A run of digits with the separators people put in phone numbers; kept when it has 9-15 digits.
_PHONE = re.compile(r"(?<![\w.])(?:\+|00)?\(?\d[\d\s().\-]{6,}\d(?![\w])")
_LONG_ID = re.compile(r"\b[A-Za-z]{0,4}[-#]?\d{6,}\b")
_NAME_TOKEN = r"[A-Z][a-zA-Z'\-]+"
_CUES = (
    r"my name is",
    r"my name's",
    r"this is",
    r"i am",
    r"i'm",
    r"account holder:",
    r"(?:kind |best )?regards,?",
    r"thanks,",
    r"thank you,",
    r"cheers,",
    r"sincerely,?",
    r"signed,?",
    r"from:",
    r"name:",
)
_CUED_NAME = re.compile(rf"((?i:\b(?:{'|'.join(_CUES)}))\s+)({_NAME_TOKEN}(?:\s+{_NAME_TOKEN})?)")
_NAME_HERE = re.compile(rf"(?<![\w\[])()({_NAME_TOKEN}(?:\s+{_NAME_TOKEN})?)(\s+here\b)")
# Capitalised words that follow a cue without being a name ("This is Urgent", "I'm Moving").
_NOT_NAMES = frozenset(
    """a an the i it my me we you your our this that there here please not no yes so very just still
    really now again also only one two three four five six urgent moving leaving paying relocating
    fed sorry afraid writing calling going trying unable done fine ok okay from about regarding
    re hi hello dear team support sir madam customer service thank thanks regards cheers""".split()
)


class TicketTextTruncated(UserWarning):
    """Some ticket texts were longer than the limit and were cut to it."""


@dataclass(frozen=True)
class TextIssue:
    """A ticket text that needed fixing before use: its position, the field and the reason."""

    row: int
    field: str
    reason: str  # "empty", "not_utf8" or "truncated"


@dataclass
class PreparedTexts:
    """Texts ready to mask, row for row with the input, and what was fixed on the way."""

    texts: list[str]
    issues: list[TextIssue] = field(default_factory=list)


def prepare_texts(
    values: Iterable[object], *, field_name: str = "description", max_chars: int = MAX_TEXT_CHARS
) -> PreparedTexts:
    """Turn raw ticket text values into strings: missing -> "", bad UTF-8 replaced, huge texts cut.

    Emits one `TicketTextTruncated` warning naming how many texts were cut; every fixed row is
    listed in `issues` with its reason.
    """
    texts: list[str] = []
    issues: list[TextIssue] = []
    for row, value in enumerate(values):
        text, reason = _as_text(value)
        if reason:
            issues.append(TextIssue(row, field_name, reason))
        if not text.strip():
            if reason is None:
                issues.append(TextIssue(row, field_name, "empty"))
            text = ""
        if len(text) > max_chars:
            text = text[:max_chars]
            issues.append(TextIssue(row, field_name, "truncated"))
        texts.append(text)
    cut = sum(1 for i in issues if i.reason == "truncated")
    if cut:
        warnings.warn(
            TicketTextTruncated(f"{cut} ticket text(s) in {field_name!r} longer than {max_chars} characters were cut"),
            stacklevel=2,
        )
    return PreparedTexts(texts, issues)


def _as_text(value: object) -> tuple[str, str | None]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "", "empty"
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8"), None
        except UnicodeDecodeError:
            return bytes(value).decode("utf-8", errors="replace"), "not_utf8"
    text = str(value)
    if "\ufffd" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text):  # decoded with replacement/surrogates
        return text.encode("utf-8", errors="replace").decode("utf-8", errors="replace"), "not_utf8"
    return text, None


def mask_text(text: str, known_names: Iterable[str] = ()) -> str:
    """`text` with emails, phone numbers, long ids and names replaced by [EMAIL], [PHONE], [ID], [NAME].

    `known_names`: names known to belong to the writer (first, last or full), masked wherever
    they occur, whatever their case.
    """
    if not text:
        return ""
    out = _EMAIL.sub(EMAIL, text)
    out = _PHONE.sub(_phone_or_keep, out)
    out = _LONG_ID.sub(ID, out)
    out = _CUED_NAME.sub(_cued_name, out)
    out = _NAME_HERE.sub(lambda m: f"{m.group(1)}{_names_only(m.group(2))}{m.group(3)}", out)
    tokens = {t for n in known_names if n for t in re.split(r"[\s,]+", str(n)) if len(t) >= 2}
    if tokens:
        pattern = re.compile(
            r"\b(?:" + "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)) + r")\b", re.I
        )
        out = pattern.sub(NAME, out)
    return out


def mask_texts(texts: Sequence[str], known_names: Sequence[Iterable[str]] | None = None) -> list[str]:
    """`mask_text` row by row; `known_names[i]` are the names of the writer of `texts[i]`."""
    if known_names is None:
        return [mask_text(t) for t in texts]
    if len(known_names) != len(texts):
        raise InsightsError(f"known_names: {len(known_names)} rows for {len(texts)} texts")
    return [mask_text(t, n) for t, n in zip(texts, known_names, strict=True)]


def _phone_or_keep(match: re.Match[str]) -> str:
    digits = sum(c.isdigit() for c in match.group(0))
    return PHONE if 9 <= digits <= 15 else match.group(0)


def _names_only(words: str) -> str:
    """[NAME] for one or two capitalised words after a cue, unless they are ordinary words."""
    parts = words.split()
    if parts[0].lower() in _NOT_NAMES:
        return words
    if len(parts) > 1 and parts[1].lower() in _NOT_NAMES:
        return f"{NAME} {parts[1]}"
    return NAME


def _cued_name(match: re.Match[str]) -> str:
    return f"{match.group(1)}{_names_only(match.group(2))}"
