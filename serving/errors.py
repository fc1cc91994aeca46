"""The one error a request can end in: an HTTP status, the field at fault and why."""

from __future__ import annotations

from typing import Any


class ServingError(Exception):
    """A request the service refuses: HTTP status, the field at fault and why."""

    def __init__(self, status: int, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.status, self.field, self.reason = status, field, reason

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return {"error": {"field": self.field, "reason": self.reason}}
