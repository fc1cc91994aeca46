"""The error the operations insights raise for input they cannot use: one line naming the field and the reason."""

from __future__ import annotations


class InsightsError(ValueError):
    """Input the operations insights cannot use (a table, a column, a setting), said in one line."""
