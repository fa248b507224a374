"""ROUGE-L F-measure per answer and averaged, from `rouge_score`: a local, offline `evaluate` metric."""

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = (
    "ROUGE-L F-measure (longest common subsequence of tokens) of each prediction against its "
    "reference, computed by rouge_score.RougeScorer(['rougeL']), and its plain mean."
)
_INPUTS = """
Args:
    predictions: answers, one string each.
    references: one reference string per prediction.
    use_stemmer: Porter-stem tokens before matching (default False, as RougeScorer).
Returns:
    rougeL: mean F-measure in [0, 1] (a plain mean, not the bootstrap median the hub metric reports).
    rougeL_per_item: the F-measure of each prediction, in input order.
"""


class RougeL(evaluate.Metric):
    """ROUGE-L F-measure, per item and mean."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin, C.-Y. (2004). ROUGE: A Package for Automatic Evaluation of Summaries.",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, use_stemmer=False):
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
        # RougeScorer.score takes (target, prediction): the reference comes first.
        per_item = [
            float(scorer.score(ref, pred)["rougeL"].fmeasure)
            for pred, ref in zip(predictions, references, strict=True)
        ]
        mean = sum(per_item) / len(per_item) if per_item else 0.0
        return {"rougeL": mean, "rougeL_per_item": per_item}
