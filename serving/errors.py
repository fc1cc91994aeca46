"""The one error a request can end in (an HTTP status, the field at fault and why), and how refusals are logged."""

from __future__ import annotations

import logging
from typing import Any


class ServingError(Exception):
    """A request the service refuses: HTTP status, the field at fault and why."""

    def __init__(self, status: int, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.status, self.field, self.reason = status, field, reason

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return {"error": {"field": self.field, "reason": self.reason}}


class RejectedRequests(logging.Filter):
    """BentoML logs every request its pydantic model refuses at ERROR with a traceback; make it one INFO line.

    A refused request is the caller's mistake, answered 400 with the field named: the log line
    says which route, the first field and why, and how many errors. Anything else (a 5xx, a bug)
    keeps its traceback. Installed on BentoML's HTTP logger when a worker starts.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place when it is a refused request; keep every record."""
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        status = getattr(getattr(exc, "error_code", None), "value", None)  # BentoML's own 4xx errors (bad JSON)
        errors = getattr(exc, "errors", None)
        if type(exc).__name__ == "ValidationError" and callable(errors):
            found = errors(include_url=False, include_context=False, include_input=False)
            first = found[0] if found else {"loc": (), "msg": str(exc)}
            where = ".".join(str(part) for part in first.get("loc", ())) or "body"
            why = f"{where}: {first.get('msg', '')}" + (f" (and {len(found) - 1} more)" if len(found) > 1 else "")
        elif isinstance(status, int) and 400 <= status < 500:
            why = str(exc).splitlines()[0][:200]
        else:
            return True
        path, method = (record.args or ("?", "?"))[:2] if isinstance(record.args, tuple) else ("?", "?")
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args = "refused %s %s: %s", (method, path, why)
        record.exc_info, record.exc_text = None, None
        return True


def quiet_refusals(logger_name: str) -> None:
    """Install `RejectedRequests` on a logger once."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, RejectedRequests) for f in logger.filters):
        logger.addFilter(RejectedRequests())
