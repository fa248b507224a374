"""Text column helpers: work once per distinct value, vectorised in pyarrow.

Logs repeat themselves: a million requests hold a few tens of thousands of
distinct questions and fewer distinct answers and system prompts. Every text
transform and test here runs on the distinct values and is mapped back by
index, which is what keeps the funnel at hundreds of thousands of records/s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def per_distinct(series: pd.Series, fn: Callable[[pd.Series], Any], missing: Any) -> np.ndarray:
    """`fn` over the distinct non-null values of `series` (as a Series), mapped back to every row.

    Rows whose value is null get `missing`.
    """
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    values = np.asarray(fn(pd.Series(uniques, dtype=object)))
    dtype = object if values.dtype == object or missing is None else values.dtype
    out = np.empty(len(series), dtype=dtype)
    present = codes >= 0
    out[present] = values[codes[present]]
    out[~present] = missing
    return out


def arrow_strings(series: pd.Series) -> pa.Array:
    """A text column as an arrow array (nulls kept)."""
    return pa.array(series, type=pa.large_string(), from_pandas=True)


def matches(series: pd.Series, pattern: str, ignore_case: bool = True) -> np.ndarray:
    """Whether each row matches the RE2 `pattern` (a search, not a full match); null rows: False."""

    def search(values: pd.Series) -> np.ndarray:
        hits = pc.match_substring_regex(arrow_strings(values), pattern=pattern, ignore_case=ignore_case)
        return np.asarray(hits.to_numpy(zero_copy_only=False), dtype=bool)

    return per_distinct(series, search, False).astype(bool)


def lengths(series: pd.Series) -> np.ndarray:
    """Characters per row (null rows: 0)."""
    return per_distinct(series, lambda values: values.str.len().to_numpy(), 0).astype(np.int64)
