"""BLEU from `sacrebleu`, corpus and per sentence, on a 0-1 scale: a local, offline `evaluate` metric."""

import datasets
import evaluate
import sacrebleu

_DESCRIPTION = (
    "BLEU of the predictions against one reference each, computed by sacrebleu: "
    "corpus_bleu over all items and sentence_bleu per item, divided by 100."
)
_INPUTS = """
Args:
    predictions: answers, one string each.
    references: one reference string per prediction.
    tokenize: sacrebleu tokenizer (default "13a", sacrebleu's default).
    lowercase: compare case-insensitively (default False).
Returns:
    bleu: corpus BLEU in [0, 1].
    bleu_per_item: sentence BLEU of each prediction in [0, 1]
        (sacrebleu's defaults: exp smoothing, effective order).
"""


class Bleu(evaluate.Metric):
    """sacrebleu BLEU, corpus and per sentence, on a 0-1 scale."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Post, M. (2018). A Call for Clarity in Reporting BLEU Scores.",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, tokenize="13a", lowercase=False):
        corpus = sacrebleu.corpus_bleu(
            list(predictions), [list(references)], tokenize=tokenize, lowercase=lowercase
        )
        per_item = [
            float(sacrebleu.sentence_bleu(pred, [ref], tokenize=tokenize, lowercase=lowercase).score) / 100.0
            for pred, ref in zip(predictions, references, strict=True)
        ]
        return {"bleu": float(corpus.score) / 100.0, "bleu_per_item": per_item}
