"""Data validation: Great Expectations suites for the raw and curated frames, run as checkpoints.

`validate` runs a suite and builds data docs; `raise_on_failure` stops a flow
on a failed suite with a message naming each failed expectation. Importing this
package does not import great_expectations (seconds); building a suite does.
"""

from tasks.validate.checkpoint import (
    DataValidationError,
    ExpectationOutcome,
    ValidationReport,
    raise_on_failure,
    validate,
)
from tasks.validate.suites import (
    CURATED_SUITE,
    PII_PATTERNS,
    RAW_SUITE,
    ROLES_PATTERN,
    curated_suite,
    raw_suite,
)

__all__ = [
    "CURATED_SUITE",
    "PII_PATTERNS",
    "RAW_SUITE",
    "ROLES_PATTERN",
    "DataValidationError",
    "ExpectationOutcome",
    "ValidationReport",
    "curated_suite",
    "raise_on_failure",
    "raw_suite",
    "validate",
]
