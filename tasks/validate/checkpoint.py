"""Run an expectation suite on a frame through a GX checkpoint; a small report and data docs.

Each `validate` call builds a fresh ephemeral GX context (milliseconds; the
import of great_expectations is what costs seconds, once per process) whose
only data docs site is `data_docs_dir`. Validation results are kept as JSON in
`data_docs_dir/results`, so the site's index lists every run written there,
raw and curated, from any process. The report keeps what a reader needs: per expectation its type,
column, outcome, unexpected count and a few examples. Examples from free-text
columns are request ids only, so personal data never reaches a Prefect artifact
or an error message (the local data docs do show such values, as the data does).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import pandas as pd

from tasks.curate.frame import TEXT_COLUMNS
from tasks.validate.suites import columns_read, derive_columns, gx_modules, is_derived

if TYPE_CHECKING:
    from great_expectations import ExpectationSuite
    from great_expectations.checkpoint.checkpoint import CheckpointResult
    from great_expectations.data_context import EphemeralDataContext
    from great_expectations.data_context.types.resource_identifiers import ValidationResultIdentifier
    from great_expectations.expectations import Expectation

SITE_NAME = "flywheel"
RESULTS_DIR = "results"  # under the data docs dir: GX's JSON validation results
ID_COLUMN = "request_id"
N_EXAMPLES = 5
EXAMPLE_CHARS = 40
# Columns whose values may be what a user typed: examples show request ids only.
PRIVATE_COLUMNS = frozenset({*TEXT_COLUMNS, "messages"})


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's result, small enough for a markdown table."""

    expectation: str  # GX type, e.g. "expect_column_values_to_match_regex"
    column: str | None
    description: str
    success: bool
    unexpected_count: int | None  # None for table-level expectations
    unexpected_percent: float | None
    observed: str | None  # aggregate expectations: the observed value
    examples: tuple[str, ...]

    @property
    def label(self) -> str:
        """`type(column)`, or the type alone for table-level expectations."""
        return f"{self.expectation}({self.column})" if self.column else self.expectation

    def line(self) -> str:
        """One line naming the expectation, column, unexpected count and examples."""
        parts = [self.label, f"'{self.description}'"]
        if self.unexpected_count is not None:
            share = "" if self.unexpected_percent is None else f" ({self.unexpected_percent:.3g}%)"
            parts.append(f"{self.unexpected_count} unexpected{share}")
        if self.observed is not None:
            parts.append(f"observed {self.observed}")
        if self.examples:
            parts.append("e.g. " + ", ".join(self.examples))
        return ": ".join(parts[:2]) + (" - " + "; ".join(parts[2:]) if parts[2:] else "")


@dataclass(frozen=True)
class ValidationReport:
    """What a checkpoint run found, and where its data docs are."""

    suite: str
    success: bool
    n_rows: int
    seconds: float
    data_docs: Path  # the site's index.html
    outcomes: tuple[ExpectationOutcome, ...]
    pages: tuple[Path, ...] = ()  # this run's validation page(s) in the site
    sampled_rows: int | None = None  # row-by-row expectations saw this many rows; None: all

    @property
    def failures(self) -> tuple[ExpectationOutcome, ...]:
        return tuple(o for o in self.outcomes if not o.success)

    def markdown(self) -> str:
        """A short markdown summary for a Prefect artifact: the verdict, then each failure."""
        verdict = "passed" if self.success else "FAILED"
        n_ok = len(self.outcomes) - len(self.failures)
        sampled = (
            "" if self.sampled_rows is None else f" (row-by-row checks on a sample of {self.sampled_rows})"
        )
        head = (
            f"# Data validation `{self.suite}`: {verdict}\n\n"
            f"{n_ok} of {len(self.outcomes)} expectations met on {self.n_rows} rows in {self.seconds:.1f} s"
            f"{sampled}.  \n"
            f"Data docs: `{self.data_docs}`"
            + "".join(f"  \nThis run: `{page}`" for page in self.pages)
            + "\n"
        )
        if not self.failures:
            return head
        rows = "\n".join(
            f"| `{o.expectation}` | {o.column or ''} | {o.description} | "
            f"{'' if o.unexpected_count is None else o.unexpected_count} | "
            f"{o.observed or ''} | {', '.join(o.examples).replace('|', '/')} |"
            for o in self.failures
        )
        return (
            f"{head}\n| expectation | column | rule | unexpected | observed | examples |\n"
            f"|---|---|---|---:|---|---|\n{rows}\n"
        )


class DataValidationError(ValueError):
    """A frame failed its expectation suite; the message names every failed expectation."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        lines = "\n".join(f"- {o.line()}" for o in report.failures)
        pages = "".join(f"\nthis run: {page}" for page in report.pages)
        super().__init__(
            f"data validation failed: suite '{report.suite}', {len(report.failures)} of "
            f"{len(report.outcomes)} expectations not met on {report.n_rows} rows:\n{lines}\n"
            f"data docs: {report.data_docs}{pages}"
        )


def raise_on_failure(report: ValidationReport) -> ValidationReport:
    """The report unchanged when it passed; `DataValidationError` naming each failure when not."""
    if not report.success:
        raise DataValidationError(report)
    return report


# Expectations about the set of rows, not each row: with `sample_rows` they
# still run on every row (on just the columns they read), so duplicates,
# straddling clusters and split shares are exact.
WHOLE_FRAME_TYPES = frozenset(
    {
        "expect_column_values_to_be_unique",
        "expect_compound_columns_to_be_unique",
        "expect_multicolumn_values_to_be_unique",
        "expect_table_row_count_to_be_between",
        "expect_table_row_count_to_equal",
        "expect_column_proportion_of_non_null_values_to_be_between",
    }
)


def validate(
    frame: pd.DataFrame,
    suite: ExpectationSuite,
    data_docs_dir: Path,
    *,
    sample_rows: int | None = None,
    seed: int = 0,
) -> ValidationReport:
    """Run `suite` on the frame through GX checkpoints and build data docs in `data_docs_dir`.

    Derived columns the suite reads (e.g. `straddling_cluster`) are added to a
    shallow copy first; the caller's frame is not modified. GX gets only the
    columns the expectations read (it fingerprints the whole batch, and a
    column of dicts such as `messages` makes it pickle the frame).

    Args:
        sample_rows: when set and the frame is larger, row-by-row expectations
            (nulls, ranges, sets, regexes, PII) run on a deterministic random
            sample of this many rows; expectations about the set of rows
            (`WHOLE_FRAME_TYPES`, and those reading a derived column) still run
            on every row. Trades recall of rare bad rows for time: a leak in 1
            of 1M rows is found with probability sample_rows / 1M.
        seed: the sample's random state.
    """
    started = time.perf_counter()
    expectations = list(suite.expectations)
    context = _context(Path(data_docs_dir).resolve())
    if sample_rows is None or len(frame) <= sample_rows:
        parts = [(suite.name, expectations, frame)]
    else:
        whole = [e for e in expectations if _whole_frame(e)]
        sampled = [e for e in expectations if not _whole_frame(e)]
        sample = frame.sample(n=sample_rows, random_state=seed).sort_index()
        parts = [(f"{suite.name}.all_rows", whole, frame), (f"{suite.name}.sample", sampled, sample)]
    outcomes: list[ExpectationOutcome] = []
    pages: list[Path] = []
    success = True
    for name, part_expectations, part_frame in parts:
        if not part_expectations:
            continue
        # expectations on a derived column are in the all-rows part, so group-level
        # ones (straddling clusters) see every row; the PII gate is per row
        data = derive_columns(part_frame, part_expectations)
        result = _run_checkpoint(context, name, suite.meta, part_expectations, data)
        success = success and bool(result.success)
        outcomes += [_outcome(r) for run in result.run_results.values() for r in run.results]
        pages += [_page(context, key) for key in result.run_results]
    return ValidationReport(
        suite=suite.name,
        success=success,
        n_rows=len(frame),
        seconds=time.perf_counter() - started,
        data_docs=Path(data_docs_dir).resolve() / "index.html",
        outcomes=tuple(outcomes),
        pages=tuple(pages),
        sampled_rows=None if len(parts) == 1 else sample_rows,
    )


def _whole_frame(expectation: Expectation) -> bool:
    column = expectation.configuration.kwargs.get("column")
    return expectation.expectation_type in WHOLE_FRAME_TYPES or (column is not None and is_derived(column))


def _run_checkpoint(
    context: EphemeralDataContext,
    name: str,
    meta: dict,
    expectations: list[Expectation],
    frame: pd.DataFrame,
) -> CheckpointResult:
    """One checkpoint (suite, validation definition, data docs action) over one frame."""
    gx, _ = gx_modules()
    from great_expectations.checkpoint import UpdateDataDocsAction

    # One copy up front leaves a consolidated frame (one block per dtype). GX copies
    # the batch in most expectations (a boolean filter that keeps every row still
    # copies), and each copy of a frame of loose column blocks merges them anew:
    # ~25 ms per copy on 1M rows, 89 copies in the curate stage.
    frame = _narrow(frame, expectations).copy()
    batch = (
        context.data_sources.add_pandas(name=name)
        .add_dataframe_asset(name=name)
        .add_batch_definition_whole_dataframe("whole_frame")
    )
    # copies: GX binds an expectation to one context's suite; the caller may reuse theirs
    suite = context.suites.add(
        gx.ExpectationSuite(name=name, meta=dict(meta), expectations=[e.copy() for e in expectations])
    )
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch, suite=suite)
    )
    result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": N_EXAMPLES}
    if ID_COLUMN in frame.columns:
        # GX looks up the id of *every* unexpected row (about 10 us each), not just the examples
        result_format["unexpected_index_column_names"] = [ID_COLUMN]
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=name,
            validation_definitions=[definition],
            actions=[UpdateDataDocsAction(name="data_docs", site_names=[SITE_NAME])],
            result_format=result_format,
        )
    )
    return checkpoint.run(batch_parameters={"dataframe": frame})


def _page(context: EphemeralDataContext, key: ValidationResultIdentifier) -> Path:
    """The data docs page of one validation result."""
    (site,) = context.get_docs_sites_urls(resource_identifier=key, site_name=SITE_NAME)
    return Path(url2pathname(urlparse(str(site["site_url"])).path))


def _narrow(frame: pd.DataFrame, expectations: list[Expectation]) -> pd.DataFrame:
    """The frame narrowed to the columns the expectations read (and the id), unless they check the set."""
    if any(e.expectation_type.startswith("expect_table_column") for e in expectations):
        return frame
    read = columns_read(expectations) | {ID_COLUMN}
    return frame[[c for c in frame.columns if c in read]]


def _context(docs_dir: Path) -> EphemeralDataContext:
    """An in-memory GX context whose one data docs site is `docs_dir`, progress bars off."""
    gx, _ = gx_modules()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    # no default site in a temp dir: ours is the only one built
    stores = InMemoryStoreBackendDefaults(init_temp_docs_sites=False)
    # results on disk beside the pages, so the index lists every run of every suite
    # written there (raw and curated, this process and earlier ones), not just the last
    stores.stores[stores.validation_results_store_name]["store_backend"] = {
        "class_name": "TupleFilesystemStoreBackend",
        "base_directory": str(docs_dir / RESULTS_DIR),
    }
    config = DataContextConfig(
        store_backend_defaults=stores,
        data_docs_sites={
            SITE_NAME: {
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        },
        progress_bars=ProgressBarsConfig(globally=False),
        analytics_enabled=False,
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _outcome(result: Any) -> ExpectationOutcome:
    """An `ExpectationValidationResult` as an `ExpectationOutcome`."""
    config = result.expectation_config
    column = config.kwargs.get("column")
    details = result.result or {}
    if message := _exception_message(result.exception_info):
        # e.g. a missing column: GX records the exception instead of a count
        return ExpectationOutcome(
            expectation=config.type,
            column=column,
            description=config.description or "",
            success=False,
            unexpected_count=None,
            unexpected_percent=None,
            observed=f"error: {message}",
            examples=(),
        )
    observed = details.get("observed_value")
    return ExpectationOutcome(
        expectation=config.type,
        column=column,
        description=config.description or "",
        success=bool(result.success),
        unexpected_count=details.get("unexpected_count"),
        # with a row condition GX's percent is of the filtered rows: misleading here
        unexpected_percent=None if config.kwargs.get("row_condition") else details.get("unexpected_percent"),
        observed=None if observed is None else _short(observed),
        examples=_examples(column, details),
    )


def _exception_message(info: dict | None) -> str | None:
    """The first raised exception's first line; GX nests it per metric or not at all."""
    if not info:
        return None
    candidates = [info, *(v for v in info.values() if isinstance(v, dict))]
    for candidate in candidates:
        if candidate.get("raised_exception"):
            text = str(candidate.get("exception_message") or "exception").strip()
            return (text.splitlines() or ["exception"])[0][: EXAMPLE_CHARS * 3]
    return None


def _examples(column: str | None, details: dict) -> tuple[str, ...]:
    """A few unexpected rows: `request_id: value`, or the id alone for free-text columns."""
    private = column in PRIVATE_COLUMNS
    indexed = details.get("partial_unexpected_index_list") or []
    if indexed and isinstance(indexed[0], dict) and ID_COLUMN in indexed[0]:
        return tuple(
            str(row[ID_COLUMN])
            if private or column == ID_COLUMN
            else f"{row[ID_COLUMN]}: {_short(row.get(column))}"
            for row in indexed[:N_EXAMPLES]
        )
    if private:
        return ()
    return tuple(_short(v) for v in (details.get("partial_unexpected_list") or [])[:N_EXAMPLES])


def _short(value: object) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"
