"""Corpus-level scores with sacreBLEU: BLEU and chrF, each with its reproducibility signature.

The same function scores validation during training and test sets in `transformer-evaluate`,
so the numbers in `metrics.jsonl` and on the command line are comparable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sacrebleu.metrics import BLEU, CHRF


@dataclass(frozen=True)
class Scores:
    """Corpus BLEU and chrF (0-100), their sacreBLEU signatures and full result lines."""

    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    bleu_string: str
    chrf_string: str
    num_sentences: int

    def as_dict(self) -> dict[str, Any]:
        """A plain mapping, e.g. for JSON output."""
        return dataclasses.asdict(self)


def corpus_scores(hypotheses: list[str], references: list[list[str]]) -> Scores:
    """Score `hypotheses` against one or more reference streams, each as long as `hypotheses`.

    `references[k][i]` is the k-th reference of sentence i (sacreBLEU's layout).
    """
    if not hypotheses:
        raise ValueError("nothing to score: the hypotheses are empty")
    if not references:
        raise ValueError("at least one reference stream is needed")
    for k, stream in enumerate(references):
        if len(stream) != len(hypotheses):
            raise ValueError(
                f"reference stream {k + 1} has {len(stream)} sentences, "
                f"the hypotheses {len(hypotheses)}"
            )
    bleu_metric, chrf_metric = BLEU(), CHRF()
    bleu = bleu_metric.corpus_score(hypotheses, references)
    chrf = chrf_metric.corpus_score(hypotheses, references)
    bleu_signature = str(bleu_metric.get_signature())
    chrf_signature = str(chrf_metric.get_signature())
    return Scores(
        bleu=float(bleu.score),
        chrf=float(chrf.score),
        bleu_signature=bleu_signature,
        chrf_signature=chrf_signature,
        bleu_string=f"{bleu} {bleu_signature}",
        chrf_string=f"{chrf} {chrf_signature}",
        num_sentences=len(hypotheses),
    )


def score(hypotheses: list[str], references: list[list[str]]) -> dict[str, Any]:
    """`corpus_scores` as a plain mapping (bleu, chrf, signatures, strings, num_sentences)."""
    return corpus_scores(hypotheses, references).as_dict()
