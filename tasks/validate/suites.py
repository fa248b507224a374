"""Expectation suites for the raw curation frame and the curated splits.

Suites are versioned data: each has a name and a version in its `meta`, and
every expectation a one-line `description` that the report and data docs show.
Building a suite imports great_expectations (several seconds), so it happens
inside the functions, never when this module is imported.

Some rules are about groups of rows, not single values ("no cluster in two
splits", each split's share). Those read a *derived column* that
`derive_columns` adds just before validation, so the rule is still an ordinary
GX expectation with its own line in the report and the data docs. Derived flag
columns also gate the PII regexes through a row condition: only rows that
could hold a match are searched (fast, and exact), and card numbers must pass
Luhn as they must in curate's redaction.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from flywheel.checksums import luhn_ok
from tasks.curate.frame import COLUMNS

if TYPE_CHECKING:
    from great_expectations import ExpectationSuite
    from great_expectations.expectations import Expectation

RAW_SUITE = "raw"
CURATED_SUITE = "curated"
SUITE_VERSION = "1"

# Roles the assistant is trained on; a request must end with the user's turn.
# (`tool` is a legal RequestRecord role, but no training row may carry it.)
ALLOWED_ROLES: tuple[str, ...] = ("system", "user", "assistant")
ROLES_PATTERN = rf"^(?:(?:{'|'.join(ALLOWED_ROLES)}),)*user$"
STATUSES: tuple[str, ...] = ("ok", "error")
FEEDBACK_SCORES: tuple[float, ...] = (-1.0, 0.0, 1.0)
SPLITS: tuple[str, ...] = ("train", "validation", "eval")
# No request or answer has more tokens than the largest context we serve.
MAX_TOKENS = 131_072

# Personal data the curate step must have replaced. Regexes, not a PII model:
# cheap enough for every row, tuned to miss rather than cry wolf (a curated row
# that trips one stops the flow). Python `re` syntax, searched anywhere in the
# text. Each starts with a literal or a character class and keeps its
# lookbehind after the first character, so `re` can skip ahead to candidates
# (about 5x faster than a leading lookbehind).
PII_PATTERNS: dict[str, str] = {
    "email": r"@(?<=[\w.%+-]@)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    # 13-19 digits with optional single space/dash separators, starting like a
    # card (3 Amex/Diners, 4 Visa, 5 Mastercard, 6 Discover). A regex cannot do
    # Luhn, so this expectation only looks at rows whose `card_candidate_` flag
    # says a digit run passes it: curate keeps non-Luhn runs (order and
    # tracking numbers) on purpose, and they must not fail the flow.
    "card number": r"[3-6](?<![\d.][3-6])\d{3}(?:[ -]?\d){9,15}(?!\d)",
    "IPv4 address": (r"\d(?<![\w.]\d)\d{0,2}(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}(?!\.?\d)"),
    # +1 555 123 4567, (555) 123-4567, 555-123-4567, 555.123.4567: separators
    # required, so a bare 10-digit number is not a phone number; not inside a
    # longer token (SKU-555-123-4567), as curate's phone shapes.
    "phone number": (
        r"[+(\d](?<![\w.+-].)"
        r"(?:(?<=\+)\d{1,3}[ .-]?(?:\(\d{3}\)|\d{3})[ .-]|(?<=\()\d{3}\)[ .-]?|(?<=\d)\d{2}[ .-])"
        r"\d{3}[ .-]\d{4}(?!\w|[.-]\d)"
    ),
}
# Every PII pattern needs an "@", three digits in a row, or digit.digit, so a
# text without any of them cannot match one. This RE2 superset runs vectorised
# in pyarrow over all rows; the exact Python patterns above then run (as GX
# expectations with a row condition) only on the rows it flags. A new pattern
# must keep this property (tests check each kind's examples against it).
PII_GATE = r"@|\d\d\d|\d\.\d"
# A 13-19 digit run, separators allowed: RE2 prefilter and Python finder for the Luhn flag.
DIGIT_RUN = r"\d(?:[ -]?\d){12,18}"
_DIGIT_RUN = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")

# Derived columns, added by `derive_columns` when a suite reads them.
STRADDLING_CLUSTER = "straddling_cluster"
CONFLICTING_REQUEST_ID = "conflicting_request_id"
PII_CANDIDATE = "pii_candidate_"  # + text column: True where PII_GATE matches
CARD_CANDIDATE = "card_candidate_"  # + text column: True where a 13-19 digit run passes Luhn
# + split name: 1.0 where the row is in that split, else null; its non-null share is the split's
IN_SPLIT = "in_split_"


def card_candidate(texts: pd.Series) -> pd.Series:
    """Per row: whether the text has a 13-19 digit run (spaces/dashes allowed) that passes Luhn."""
    array = pa.array(texts, type=pa.large_string(), from_pandas=True)
    runs = pc.fill_null(pc.match_substring_regex(array, DIGIT_RUN), False).to_numpy(zero_copy_only=False)
    flags = np.zeros(len(texts), dtype=bool)
    for i in np.flatnonzero(runs):  # rare rows: Python is fine here
        flags[i] = any(
            luhn_ok(m.group().replace(" ", "").replace("-", "")) for m in _DIGIT_RUN.finditer(texts.iat[i])
        )
    return pd.Series(flags, index=texts.index)


def straddling_cluster(frame: pd.DataFrame) -> pd.Series:
    """Per row: its cluster id if that cluster has rows in more than one split, else None."""
    n_splits = frame.groupby("cluster", sort=False)["split"].transform("nunique").to_numpy()
    values = np.where(n_splits > 1, frame["cluster"].to_numpy(dtype=object), None)
    return pd.Series(values, index=frame.index, dtype=object)


def conflicting_request_id(frame: pd.DataFrame) -> pd.Series:
    """Per row: its request id if another row has that id with other content, else None.

    Raw logs are shipped at least once, so an id may arrive twice with the same
    content (a re-delivery, which curate drops); the same id on different
    requests is a broken writer.
    """
    values = np.full(len(frame), None, dtype=object)
    repeated = frame["request_id"].duplicated(keep=False).to_numpy()
    if repeated.any():
        rows = frame.loc[repeated, ["request_id", "timestamp", "roles", "prompt", "response"]]
        variants = rows.drop_duplicates().groupby("request_id", sort=False).size()
        conflicting = rows["request_id"].map(variants).to_numpy() > 1
        values[np.flatnonzero(repeated)[conflicting]] = rows["request_id"].to_numpy()[conflicting]
    return pd.Series(values, index=frame.index, dtype=object)


def pii_candidate(texts: pd.Series) -> pd.Series:
    """Per row: whether the text could hold personal data (PII_GATE matches; null text: False)."""
    array = pa.array(texts, type=pa.large_string(), from_pandas=True)
    flags = pc.fill_null(pc.match_substring_regex(array, PII_GATE), False)
    return pd.Series(flags.to_numpy(zero_copy_only=False), index=texts.index, dtype=bool)


def is_derived(name: str) -> bool:
    """Whether `derive_columns` computes this column."""
    return _deriver(name) is not None


def _deriver(name: str) -> Callable[[pd.DataFrame], pd.Series] | None:
    if name == STRADDLING_CLUSTER:
        return straddling_cluster
    if name == CONFLICTING_REQUEST_ID:
        return conflicting_request_id
    if name.startswith(PII_CANDIDATE):
        column = name.removeprefix(PII_CANDIDATE)
        return lambda frame: pii_candidate(frame[column])
    if name.startswith(CARD_CANDIDATE):
        column = name.removeprefix(CARD_CANDIDATE)
        return lambda frame: card_candidate(frame[column])
    if name.startswith(IN_SPLIT):
        split = name.removeprefix(IN_SPLIT)
        return lambda frame: pd.Series(np.where(frame["split"] == split, 1.0, np.nan), index=frame.index)
    return None


def columns_read(expectations: Iterable[Expectation]) -> set[str]:
    """Every column name the expectations read: their column(s) and the names in their row conditions."""
    names: set[str] = set()
    for expectation in expectations:
        kwargs = expectation.configuration.kwargs
        names.update(c for c in [kwargs.get("column"), *(kwargs.get("column_list") or [])] if c)
        if condition := kwargs.get("row_condition"):
            # a string, or GX's parsed form (a dict holding the string): names in either
            names.update(re.findall(r"[A-Za-z_]\w*", json.dumps(condition, default=str)))
    return names


def derive_columns(frame: pd.DataFrame, expectations: Iterable[Expectation]) -> pd.DataFrame:
    """The frame plus every derived column the expectations read and the frame lacks (a shallow copy)."""
    wanted = {
        name: deriver
        for name in sorted(columns_read(expectations) - set(frame.columns))
        if (deriver := _deriver(name)) is not None
    }
    if not wanted:
        return frame
    out = frame.copy(deep=False)
    for name, deriver in wanted.items():
        try:
            out[name] = deriver(frame)
        except KeyError:
            # a source column is missing: leave the derived one out, and GX
            # reports both missing instead of validation crashing here
            continue
    return out


def gx_modules() -> tuple[ModuleType, ModuleType]:
    """`great_expectations` and its `expectations` module, imported with analytics off."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    import great_expectations.expectations as gxe

    return gx, gxe


def raw_suite(max_tokens: int = MAX_TOKENS) -> ExpectationSuite:
    """Expectations for the raw curation frame (`tasks.curate.frame`), before any curation step."""
    gx, gxe = gx_modules()
    expectations = [
        *(gxe.ExpectColumnToExist(column=c, description=f"column {c} exists") for c in COLUMNS),
        gxe.ExpectColumnValuesToNotBeNull(column="request_id", description="every row has a request id"),
        gxe.ExpectColumnValuesToBeNull(
            column=CONFLICTING_REQUEST_ID,
            description="a request id names one request (re-deliveries of the same request are allowed)",
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="timestamp", description="every row has a timestamp"),
        gxe.ExpectColumnValuesToNotBeNull(column="roles", description="every row has its message roles"),
        gxe.ExpectColumnValuesToMatchRegex(
            column="roles",
            regex=ROLES_PATTERN,
            description="roles are only system/user/assistant and the last turn is the user's",
        ),
        *(
            gxe.ExpectColumnValuesToBeBetween(
                column=c, min_value=0, max_value=max_tokens, description=f"{c} in [0, {max_tokens}]"
            )
            for c in ("prompt_tokens", "completion_tokens")
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="feedback", value_set=list(FEEDBACK_SCORES), description="feedback is -1, 0, 1 or unrated"
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="status", description="every row has a status"),
        gxe.ExpectColumnValuesToBeInSet(
            column="status", value_set=list(STATUSES), description="status is ok or error"
        ),
    ]
    # built whole: `add_expectation` on a suite outside a context needs an active context
    return gx.ExpectationSuite(name=RAW_SUITE, meta={"version": SUITE_VERSION}, expectations=expectations)


def curated_suite(
    split_shares: Mapping[str, tuple[float, float]] | None = None,
    min_prompt_chars: int = 1,
    max_prompt_chars: int = 4000,
    min_response_chars: int = 1,
    max_response_chars: int = 4000,
    text_columns: tuple[str, ...] = ("prompt", "response"),
    feedback_scores: tuple[float, ...] = (0.0, 1.0),
    max_tokens: int | None = None,
) -> ExpectationSuite:
    """Expectations for the curated rows of all splits together (columns `cluster` and `split` included).

    Args:
        split_shares: per split, the (low, high) bounds of its share of rows;
            default: train 0.5-0.95, validation and eval at most 0.3 each.
        min_prompt_chars, max_prompt_chars, min_response_chars, max_response_chars:
            text length bounds (characters), as curate's length filter applied them.
        text_columns: columns searched for leftover personal data.
        feedback_scores: the scores a curated row may carry (answers rated -1
            are dropped by curate, so -1 is not among them by default); null
            (unrated) always passes.
        max_tokens: when set, `prompt_tokens` and `completion_tokens` must be in [0, max_tokens].
    """
    gx, gxe = gx_modules()
    from great_expectations.expectations.row_conditions import Column

    shares = (
        dict(split_shares)
        if split_shares is not None
        else {"train": (0.5, 0.95), "validation": (0.0, 0.3), "eval": (0.0, 0.3)}
    )
    expectations = [
        *(
            gxe.ExpectColumnToExist(column=c, description=f"column {c} exists")
            for c in ("request_id", "prompt", "response", "feedback", "cluster", "split")
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="request_id", description="every row has a request id"),
        gxe.ExpectColumnValuesToBeUnique(column="request_id", description="request ids are unique"),
    ]
    bounds = {
        "prompt": (min_prompt_chars, max_prompt_chars),
        "response": (min_response_chars, max_response_chars),
    }
    for column, (min_chars, max_chars) in bounds.items():
        expectations += [
            gxe.ExpectColumnValuesToNotBeNull(column=column, description=f"every row has a {column}"),
            gxe.ExpectColumnValueLengthsToBeBetween(
                column=column,
                min_value=min_chars,
                max_value=max_chars,
                description=f"{column} has {min_chars}-{max_chars} characters",
            ),
        ]
    expectations += [
        gxe.ExpectColumnValuesToNotMatchRegex(
            column=column,
            regex=pattern,
            # only rows the gate flags can match: the rest are skipped, exactly
            row_condition=Column(_gate_column(kind, column)) == True,  # noqa: E712 (a GX condition, not a bool)
            description=f"no {kind} left in {column}",
        )
        for column in text_columns
        for kind, pattern in PII_PATTERNS.items()
    ]
    if max_tokens is not None:
        expectations += [
            gxe.ExpectColumnValuesToBeBetween(
                column=c, min_value=0, max_value=max_tokens, description=f"{c} in [0, {max_tokens}]"
            )
            for c in ("prompt_tokens", "completion_tokens")
        ]
    expectations += [
        gxe.ExpectColumnValuesToBeInSet(
            column="feedback",
            value_set=list(feedback_scores),
            description=f"feedback is one of {list(feedback_scores)} or unrated",
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="cluster", description="every row has a cluster"),
        gxe.ExpectColumnValuesToNotBeNull(column="split", description="every row has a split"),
        gxe.ExpectColumnValuesToBeInSet(
            column="split", value_set=list(SPLITS), description="split is train, validation or eval"
        ),
        gxe.ExpectTableRowCountToBeBetween(
            min_value=1,
            row_condition=Column("split") == "train",
            description="the train split has rows",
        ),
        *_share_expectations(gxe, shares),
        gxe.ExpectColumnValuesToBeNull(
            column=STRADDLING_CLUSTER,
            description="no near-duplicate cluster in two splits (values: cluster ids)",
        ),
    ]
    meta = {"version": SUITE_VERSION, "split_shares": {k: list(v) for k, v in shares.items()}}
    return gx.ExpectationSuite(name=CURATED_SUITE, meta=meta, expectations=expectations)


def _gate_column(kind: str, column: str) -> str:
    """The derived flag column that says which rows a PII kind's regex must look at."""
    return f"{CARD_CANDIDATE if kind == 'card number' else PII_CANDIDATE}{column}"


def _share_expectations(gxe: ModuleType, shares: Mapping[str, tuple[float, float]]) -> list:
    """Each split's share of rows within its bounds: the non-null share of a derived column.

    An aggregate, so GX lists no unexpected rows (a set expectation with
    `mostly` would, and GX looks up every unexpected row's id one by one:
    seconds per 100k rows); and a null count, not a mean (GX's mean checks
    every value for Decimal in Python: 0.4 s per 1M rows).
    """
    out = []
    for name, (low, high) in shares.items():
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(
                f"split share bounds for {name!r} must satisfy 0 <= low <= high <= 1, got {(low, high)}"
            )
        out.append(
            gxe.ExpectColumnProportionOfNonNullValuesToBeBetween(
                column=f"{IN_SPLIT}{name}",
                min_value=low,
                max_value=high,
                description=f"{name} share of rows in [{low:.0%}, {high:.0%}]",
            )
        )
    return out
