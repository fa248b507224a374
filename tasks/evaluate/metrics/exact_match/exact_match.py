"""Exact match after light normalisation: a local, offline `evaluate` metric."""

import re
import string

import datasets
import evaluate

_SPACES = re.compile(r"\s+")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_DESCRIPTION = "1 where the prediction equals its reference after normalisation, else 0; and the mean."
_INPUTS = """
Args:
    predictions: answers, one string each.
    references: one reference string per prediction.
    ignore_case: compare case-insensitively (default True).
    ignore_punctuation: drop ASCII punctuation before comparing (default False: "$8" vs "$80" must differ,
        and so must "8.5" vs "85").
Whitespace is always collapsed and stripped.
Returns:
    exact_match: share of exact matches in [0, 1].
    exact_match_per_item: 1 or 0 per prediction.
"""


def _normalise(text, ignore_case, ignore_punctuation):
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        text = text.translate(_PUNCTUATION)
    return _SPACES.sub(" ", text).strip()


class ExactMatch(evaluate.Metric):
    """Normalised exact match, per item and mean."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, ignore_case=True, ignore_punctuation=False):
        per_item = [
            int(
                _normalise(pred, ignore_case, ignore_punctuation)
                == _normalise(ref, ignore_case, ignore_punctuation)
            )
            for pred, ref in zip(predictions, references, strict=True)
        ]
        mean = sum(per_item) / len(per_item) if per_item else 0.0
        return {"exact_match": mean, "exact_match_per_item": per_item}
