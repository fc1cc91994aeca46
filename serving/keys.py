"""API keys and their scopes: what `CUSTINTEL_SERVING_API_KEYS` holds, which scope each route needs.

The setting is a comma-separated list of entries, each `key` or `key:scope+scope`, e.g.
`k1:score+recommend,k2:admin,k3`. The scopes are `score` (churn and propensity scores),
`recommend` (recommendations), `decide` (next-best-action decisions and their outcomes) and
`admin` (`/models`, and any route not named here). A key
written without scopes has them all: every key set before scopes existed keeps exactly the
access it had, and an operator narrows a key by naming its scopes.

A key is never shown: logs, the inference log and error messages name it by its
fingerprint (`fingerprint`), `key-` and the first 12 hex digits of its sha256.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

SCOPES = ("score", "recommend", "decide", "admin")
ALL_SCOPES = frozenset(SCOPES)
ROUTE_SCOPES = {  # the scope each protected route needs; a route not listed needs admin
    **dict.fromkeys(("/churn/score", "/churn/score/batch", "/propensity/score", "/propensity/score/batch"), "score"),
    **dict.fromkeys(("/recommend", "/recommend/batch"), "recommend"),
    **dict.fromkeys(("/decide", "/decide/batch", "/outcomes"), "decide"),
    "/models": "admin",
}
SETTING = "CUSTINTEL_SERVING_API_KEYS"


class ApiKeysError(ValueError):
    """A malformed API-keys setting: the entry (by position and fingerprint, never the key) and why."""


def fingerprint(key: str | bytes) -> str:
    """A key as logs and messages may show it: `key-` and 12 hex digits of its sha256."""
    raw = key.encode() if isinstance(key, str) else key
    return "key-" + hashlib.sha256(raw).hexdigest()[:12]


def scope_for(path: str) -> str:
    """The scope a protected path needs (admin for one this module does not name)."""
    return ROUTE_SCOPES.get(path, "admin")


@dataclass(frozen=True)
class ApiKey:
    """One accepted key: its bytes (compared in constant time), its fingerprint and its scopes."""

    secret: bytes
    fingerprint: str
    scopes: frozenset[str]


def _entry(position: int, entry: str) -> ApiKey:
    key, colon, listed = entry.rpartition(":") if ":" in entry else (entry, "", "")
    key = key.strip()
    where = f"{SETTING} entry {position}"
    if not key:
        raise ApiKeysError(f"{where}: no key before ':' (write key or key:scope+scope)")
    where += f" ({fingerprint(key)})"
    if not colon:
        return ApiKey(key.encode(), fingerprint(key), ALL_SCOPES)
    names = [s.strip() for s in listed.split("+")]
    if not any(names):
        raise ApiKeysError(f"{where}: no scope after ':' (leave the ':' out for every scope)")
    unknown = [s for s in names if s not in ALL_SCOPES]
    if unknown:
        raise ApiKeysError(
            f"{where}: unknown scope {unknown[0]!r}; scopes are {', '.join(SCOPES)} joined by '+' "
            "(a key holding ':' must end with ':<scopes>')"
        )
    return ApiKey(key.encode(), fingerprint(key), frozenset(names))


def parse_api_keys(text: str) -> list[ApiKey]:
    """The keys of the setting, each with its scopes; `ApiKeysError` names a malformed entry.

    Empty entries (a trailing comma) are skipped, as before scopes; the same key twice is an
    error, since its two scope lists would contradict each other or repeat.
    """
    keys: list[ApiKey] = []
    seen: set[bytes] = set()
    for position, raw in enumerate(text.split(","), start=1):
        if not raw.strip():
            continue
        key = _entry(position, raw.strip())
        if key.secret in seen:
            raise ApiKeysError(f"{SETTING} entry {position} ({key.fingerprint}): the same key is listed twice")
        seen.add(key.secret)
        keys.append(key)
    return keys


def identify(keys: Iterable[ApiKey], token: bytes) -> ApiKey | None:
    """The key the token is, compared in constant time against every key (no early exit), else None."""
    found: ApiKey | None = None
    if not token:
        return None
    for key in keys:
        if hmac.compare_digest(token, key.secret) and found is None:
            found = key
    return found
