"""The CTranslate2 engine: an export decoded by `ctranslate2.Translator`, as our own searches do.

`CTranslate2Translator` is a `Translator` whose search is CTranslate2's: everything around
the search is the PyTorch engine's own code (pieces, truncation to the model's positions with
a warning, EOS, token-budget batches, workers, input order, empty lines, detokenization), so
both engines read and write text the same way. The source ids of a batch are handed to
CTranslate2 as SentencePiece pieces; its output pieces are mapped back to ids. All the
batches of a call are queued in CTranslate2 at once (`asynchronous=True`), whose `workers`
threads decode them in parallel, then their results are collected in order.

What CTranslate2 is asked, to decode as `transformer.decoding.search` does:

- the maximum length int(max_len_a · source length + max_len_b) of each sentence: CTranslate2
  takes one `max_decoding_length` per call, so a batch is decoded in groups of sentences that
  share one maximum (sorted batches hold few distinct lengths);
- `min_decoding_length` = min_length; the source is never truncated by CTranslate2 (the
  translator cut it to the model's positions already);
- greedy (beam 1): `length_penalty` 0, so its score is the sum of the token log-probs, EOS
  included, like ours;
- beam search: CTranslate2 normalizes by `length ** length_penalty`, not by the GNMT
  ((5 + n) / 6) ** alpha of ours, and has no option for it. So it is asked for `patience`
  × beam_size finished hypotheses with their end token (`return_end_token`, so that a length n
  counts the EOS as ours does); each score is multiplied back by n ** length_penalty to the
  plain log-prob, and the hypotheses are re-ranked by ours, log_prob / ((5 + n) / 6) ** alpha.
  CTranslate2's own formula (with `ranking_penalty`) only decides which finished
  hypotheses it keeps.
- PAD: ours never writes it (its log-prob is set to -inf after the softmax, the others keep
  their values). CTranslate2 can only suppress a token before its softmax, which renormalizes
  every other log-prob by log(1 - p(PAD)) (about 1e-4 a token for a model trained with label
  smoothing: too much for scores to agree to 1e-3). So PAD is not suppressed, and the rare
  sentence for which CTranslate2 writes PAD is decoded again with PAD suppressed.

What still differs (docs/ctranslate2.md): CTranslate2 stops a sentence once `patience` ×
beam_size hypotheses have finished, ours once beam_size have and no live one can beat them
(which takes longer the stronger the length penalty), so a few best outputs and more
runners-up of n-best lists differ; PAD, when a beam merely considered it, and EOS
before min_length are handled as above (before the softmax); ties between equal scores may
break another way; float rounding differs by ~1e-6.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from transformer.config import DecodingConfig
from transformer.data.special_ids import PAD_ID
from transformer.data.tokenizer import EOS_PIECE, PAD_PIECE, load_tokenizers
from transformer.decoding.search import (
    Hypothesis,
    NonFiniteScoreError,
    gnmt_length_penalty,
    max_output_lengths,
)
from transformer.decoding.translator import Translator
from transformer.export.directory import ExportRecord, read_export
from transformer.export.spec import import_ctranslate2

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Group:
    """Sentences of a batch that share one maximum length, queued in CTranslate2."""

    limit: int
    indices: list[int]  # their rows in the batch
    sources: list[list[str]]
    pending: list[Any]  # a ctranslate2.AsyncTranslationResult each


@dataclass(frozen=True)
class _Posted:
    """A batch queued in CTranslate2: its sentences, in groups by maximum length."""

    sentences: int
    groups: list[_Group]


class CTranslate2Translator(Translator):
    """A CTranslate2 export, ready to translate lines of raw text like `Translator`.

    It has no PyTorch model: `Translator.__init__` (which places one on a device) is not
    called; the attributes the shared text code reads are set here.
    """

    def __init__(
        self,
        engine: Any,
        record: ExportRecord,
        directory: Path,
        workers: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1 (got {workers})")
        self.engine = engine  # a ctranslate2.Translator
        self.record = record
        self.directory = directory
        self.config = record.run_config(str(directory))
        self.tokenizers = load_tokenizers(directory)
        self.device = torch.device("cpu")  # where the batches of ids are built
        self.workers = workers
        src, tgt = self.tokenizers.src, self.tokenizers.tgt
        self.source_pieces = [src.id_to_piece(i) for i in range(src.vocab_size)]
        self.target_ids = {tgt.id_to_piece(i): i for i in range(tgt.vocab_size)}

    @classmethod
    def from_export(
        cls,
        directory: str | Path,
        device: str = "cpu",
        device_index: int = 0,
        workers: int = 1,
        threads: int = 0,
    ) -> CTranslate2Translator:
        """Load an export; `workers` batches at once, each on `threads` threads (0: default)."""
        directory = Path(directory)
        record = read_export(directory)
        ct2 = import_ctranslate2()
        engine = ct2.Translator(
            str(directory),
            device=device,
            device_index=device_index,
            inter_threads=workers,
            intra_threads=threads,
        )
        logger.info(
            "loaded the CTranslate2 export %s (%s, of %s) on %s",
            directory,
            record.quantization,
            record.checkpoint,
            device,
        )
        return cls(engine, record, directory, workers)

    def _search_all(
        self, srcs: list[Tensor], decoding: DecodingConfig
    ) -> list[list[list[Hypothesis]]]:
        """Hand every batch to CTranslate2 at once (asynchronously): its `workers` threads
        decode them in parallel, batch by batch as they are queued; the results in order."""
        posted = [self._post(src, decoding) for src in srcs]
        return [self._collect(batch, decoding) for batch in posted]

    def _search(self, src: Tensor, decoding: DecodingConfig) -> list[list[Hypothesis]]:
        """Decode source ids (B, S) with CTranslate2: per sentence its n-best list, best first."""
        return self._collect(self._post(src, decoding), decoding)

    def _post(self, src: Tensor, decoding: DecodingConfig) -> _Posted:
        """Queue a batch of source ids (B, S) in CTranslate2 (asynchronous=True); at once.

        CTranslate2 takes one maximum length per call: the sentences that share one are
        decoded together. (Decoding the batch at its longest maximum, then again only the
        sentences cut by their own, takes more CPU time: for beam 5 on Multi30k, 12% more
        with alpha 0.6 and 70% more with alpha 1.5; as much for greedy search.)
        """
        limits = max_output_lengths(
            src,
            decoding.max_len_a,
            decoding.max_len_b,
            PAD_ID,
            self.record.max_target_positions,
        )
        pieces = [[self.source_pieces[i] for i in row if i != PAD_ID] for row in src.tolist()]
        groups = []
        for limit in sorted(set(limits)):
            group = [i for i, own in enumerate(limits) if own == limit]
            sources = [pieces[i] for i in group]
            options = search_options(decoding, limit)
            pending = self.engine.translate_batch(sources, asynchronous=True, **options)
            groups.append(_Group(limit, group, sources, pending))
        return _Posted(len(pieces), groups)

    def _collect(self, posted: _Posted, decoding: DecodingConfig) -> list[list[Hypothesis]]:
        """Wait for a posted batch's results; per sentence its n-best list, best first."""
        results: list[list[Hypothesis]] = [[] for _ in range(posted.sentences)]
        for group in posted.groups:
            outputs = self._redecode_pad(group, decoding)
            for i, output in zip(group.indices, outputs, strict=True):
                results[i] = self._hypotheses(output, decoding)
        return results

    def _redecode_pad(self, group: _Group, decoding: DecodingConfig) -> list:
        """CTranslate2's results for a group (waited for); a result that wrote PAD (rare) is
        replaced by a decoding with PAD suppressed."""
        outputs = [pending.result() for pending in group.pending]
        wrote_pad = [i for i, output in enumerate(outputs) if _holds_pad(output)]
        if wrote_pad:
            again = self.engine.translate_batch(
                [group.sources[i] for i in wrote_pad],
                **search_options(decoding, group.limit, True),
            )
            for i, output in zip(wrote_pad, again, strict=True):
                outputs[i] = output
        return outputs

    def _hypotheses(self, output: Any, decoding: DecodingConfig) -> list[Hypothesis]:
        """A CTranslate2 result as our n-best list, scored and ranked as our searches do."""
        beta = ranking_penalty(decoding)
        hypotheses = []
        for pieces, ct2_score in zip(output.hypotheses, output.scores, strict=True):
            if math.isnan(ct2_score):
                raise NonFiniteScoreError()
            ended = bool(pieces) and pieces[-1] == EOS_PIECE
            n = len(pieces)  # EOS counted when it ended, as ours
            log_prob = ct2_score * n**beta  # CTranslate2 divided it by n ** beta
            score = log_prob
            if decoding.beam_size > 1:
                score = log_prob / gnmt_length_penalty(n, decoding.length_penalty)
            tokens = [self.target_ids[piece] for piece in pieces[: n - ended]]
            hypotheses.append(Hypothesis(tokens, score, log_prob, ended))
        hypotheses.sort(key=lambda h: h.score, reverse=True)
        return hypotheses[: decoding.nbest]


def ranking_penalty(decoding: DecodingConfig) -> float:
    """The `length_penalty` β CTranslate2 is given. Greedy: 0, so that its scores are plain
    log-probs. Beam search: CTranslate2 keeps the `patience` × beam_size finished hypotheses
    that are best by log_prob / n^β, which we then re-rank by GNMT; ((5 + n) / 6)^α grows
    about as n^(α/2) over the lengths of short sentences (its slope in log n, α·n / (5 + n),
    is 0.5α to 0.75α from 5 to 15 tokens), so β = α/2 keeps nearly the ones GNMT would
    (β = α, for α = 1.5, drops short hypotheses that GNMT ranks first). Never 0: that would
    switch CTranslate2 to another stopping rule (stop once the best hypothesis finished).
    """
    if decoding.beam_size == 1:
        return 0.0
    return decoding.length_penalty / 2 or 1e-6


def patience(decoding: DecodingConfig) -> int:
    """How many times beam_size hypotheses CTranslate2 lets finish before it stops a sentence.

    Ours stops once no live hypothesis can beat the beam_size best finished ones, and the
    stronger the length penalty alpha, the longer a live one may still win: 2 + ⌈8(α - 1)⌉
    above α = 1 (2 below) gave the outputs of ours on 1000, 999, 999, 996 and 997 of the 1000
    Multi30k test sentences for α = 0.6, 1, 1.25, 1.5 and 2 (2 for α = 1.5: 955), at a cost
    in speed only for α > 1.
    """
    if decoding.beam_size == 1:
        return 1
    return 2 + math.ceil(8 * max(0.0, decoding.length_penalty - 1))


def search_options(
    decoding: DecodingConfig, max_length: int, suppress_pad: bool = False
) -> dict[str, Any]:
    """`ctranslate2.Translator.translate_batch` options for our decoding settings."""
    beam = decoding.beam_size
    factor = patience(decoding)
    return dict(
        beam_size=beam,
        patience=factor,
        num_hypotheses=factor * beam,
        length_penalty=ranking_penalty(decoding),
        max_decoding_length=max_length,
        min_decoding_length=min(decoding.min_length, max_length),
        max_input_length=0,  # no truncation: the sources are cut to the model's positions
        suppress_sequences=[[PAD_PIECE]] if suppress_pad else None,
        return_scores=True,
        return_end_token=True,
    )


def _holds_pad(output: Any) -> bool:
    """Whether a CTranslate2 result wrote PAD, which our searches never do."""
    return any(PAD_PIECE in pieces for pieces in output.hypotheses)
