"""Local Hugging Face `evaluate` metric modules, loaded by path so nothing reaches the Hub.

`evaluate.load("rouge")` fails offline; `evaluate.load(str(metric_path("rouge_l")))` works.
Each module folder holds one script of the same name. The scripts keep one
import per line: evaluate's dependency scan misreads `import a, b`.
"""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES: tuple[str, ...] = ("rouge_l", "bleu", "exact_match")


def metric_path(name: str) -> Path:
    """The script of local metric `name` (one of `METRIC_NAMES`), for `evaluate.load`."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown local metric {name!r}; known: {', '.join(METRIC_NAMES)}")
    return METRICS_DIR / name / f"{name}.py"
