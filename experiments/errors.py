"""The one error type of the experiments package."""

from __future__ import annotations


class ExperimentError(ValueError):
    """An experiment cannot be designed, registered, assigned or analysed as asked.

    The message starts with the field (or the input) at fault and says why, in one line a user can act on.
    """
