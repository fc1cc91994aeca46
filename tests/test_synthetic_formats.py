"""The generator's fast export formatting must match what strftime would write."""

import numpy as np
import pandas as pd
import pytest

from features.synthetic.sources import _ids, _iso

LAYOUTS = ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S+00:00", "%Y-%m-%d", "%m/%d/%Y", "%d/%m/%Y"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_iso_matches_strftime_and_leaves_missing_times_empty(layout: str) -> None:
    rng = np.random.default_rng(0)
    seconds = rng.integers(-2_000_000_000, 2_000_000_000, 500)
    values = seconds.astype("datetime64[s]")
    values[::7] = np.datetime64("NaT")
    got = _iso(values, layout).tolist()
    expected = ["" if np.isnat(v) else pd.Timestamp(v).strftime(layout) for v in values]
    assert got == expected


def test_iso_refuses_an_unknown_layout() -> None:
    with pytest.raises(ValueError, match="unsupported export layout"):
        _iso(np.array(["2024-01-01"], dtype="datetime64[s]"), "%Y")


def test_ids_are_zero_padded_with_prefix() -> None:
    assert _ids("TX", np.array([0, 42, 123456]), 6).tolist() == ["TX000000", "TX000042", "TX123456"]
