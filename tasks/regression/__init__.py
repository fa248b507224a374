"""The regression stage: the served champion replays the fixed suite and the safety probes, nightly."""

from tasks.regression.compare import Check, alerts, checks_markdown, compare_scores
from tasks.regression.scores import as_version_scores, from_version_tags, suite_scores

__all__ = [
    "Check",
    "alerts",
    "as_version_scores",
    "checks_markdown",
    "compare_scores",
    "from_version_tags",
    "suite_scores",
]
