"""Subword regularization: the training pairs segmented afresh, by sampling, for each epoch.

With ``tokenizer.sampling`` set, epoch e trains on a segmentation drawn by SentencePiece
(unigram: Kudo, 2018; bpe: BPE-dropout, Provilkov et al., 2020) instead of the best one.
Only the training pairs are sampled: validation, test and translation always use the best
segmentation, and so does the tokenized-data cache (a sampled epoch is never written there).

Exact resumption: epoch e's segmentation is a pure function of (training.seed, e, the
corpus). SentencePiece draws from one generator per process, seeded with
`spm.set_random_generator_seed`; each chunk of each side is encoded on one thread right
after seeding it with a hash of (seed, epoch, side, chunk), under a lock.

The pairs are those the length filter kept on the best segmentation (data.max_length and
data.max_length_ratio judge a pair once, so every epoch trains on the same pairs); a sampled
side longer than data.max_length tokens (EOS counted) takes its best segmentation instead,
so that no epoch holds a sequence longer than the filter allows.

Speed: `SampledEpochs` encodes epoch e + 1 in a background thread while epoch e trains
(SentencePiece releases the GIL while it encodes), so that it is ready when e + 1 begins.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import sentencepiece as spm

from transformer.config import TokenizerConfig
from transformer.data.corpus import EncodedCorpus, TextColumn, flat_ids
from transformer.data.tokenizer import Tokenizer, TokenizerPair
from transformer.errors import UserError

logger = logging.getLogger(__name__)

# SentencePiece's generator seed is one per process: seeding and encoding go together.
_SEED_LOCK = threading.Lock()


class CancelledError(Exception):
    """A segmentation begun ahead that is no longer needed."""


def chunk_seed(seed: int, epoch: int, side: str, chunk: int) -> int:
    """The SentencePiece seed of one chunk of one side of one epoch (32 bits of a hash)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{side}:{chunk}".encode(), digest_size=4)
    return int.from_bytes(digest.digest(), "little")


def sample_epoch(
    corpus: EncodedCorpus,
    tokenizers: TokenizerPair,
    config: TokenizerConfig,
    seed: int,
    epoch: int,
    max_length: int,
    cancelled: Callable[[], bool] = lambda: False,
) -> EncodedCorpus:
    """`corpus`'s pairs segmented by sampling for `epoch`: the same for the same arguments.

    `corpus` holds the best segmentations (what a side too long once sampled falls back
    to); `config` is the run's tokenizer config, whose `sampling` is set.
    """
    sampling = config.sampling
    if sampling is None:
        raise ValueError("tokenizer.sampling is not set")
    if config.kind == "unigram" and sampling.nbest_size == 1:
        return corpus  # one candidate: the best segmentation
    nbest_size = sampling.nbest_size if config.kind == "unigram" else -1  # BPE: unused
    sides = []
    for side, tokenizer, texts in (
        ("src", tokenizers.src, corpus.src_texts),
        ("tgt", tokenizers.tgt, corpus.tgt_texts),
    ):
        sampler = _sampler(tokenizer)

        def best(index: int, side: str = side) -> list[int]:
            example = corpus[index]
            return (example.src if side == "src" else example.tgt)[:-1].tolist()  # no EOS

        chunks = _sampled_chunks(
            texts, sampler, sampling.alpha, nbest_size, (seed, epoch, side), cancelled
        )
        sides.append(flat_ids(_within(chunks, max_length, best)))
    return corpus.with_ids(sides[0], sides[1])


def _sampler(tokenizer: object) -> Tokenizer:
    if not isinstance(tokenizer, Tokenizer):
        raise UserError(
            "tokenizer.sampling: the run's tokenizer cannot sample segmentations (only this "
            "project's SentencePiece models can, not a Marian one); set tokenizer.sampling "
            "to null"
        )
    return tokenizer


def _sampled_chunks(
    texts: TextColumn,
    tokenizer: Tokenizer,
    alpha: float,
    nbest_size: int,
    key: tuple[int, int, str],
    cancelled: Callable[[], bool],
) -> Iterator[list[list[int]]]:
    seed, epoch, side = key
    for number, chunk in enumerate(texts.chunks()):
        if cancelled():
            raise CancelledError
        with _SEED_LOCK:
            spm.set_random_generator_seed(chunk_seed(seed, epoch, side, number))
            ids = tokenizer.sample_batch(chunk, alpha, nbest_size)
        yield ids


def _within(
    chunks: Iterator[list[list[int]]], max_length: int, best: Callable[[int], list[int]]
) -> Iterator[list[list[int]]]:
    """The chunks, each sequence over `max_length` tokens with EOS replaced by `best`."""
    start = 0
    for ids in chunks:
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        for row in np.flatnonzero(lengths + 1 > max_length).tolist():
            ids[row] = best(start + row)
        start += len(ids)
        yield ids


class SampledEpochs:
    """The training corpus of each epoch, sampled one epoch ahead in a background thread."""

    def __init__(
        self,
        corpus: EncodedCorpus,
        tokenizers: TokenizerPair,
        config: TokenizerConfig,
        seed: int,
        max_length: int,
    ) -> None:
        _sampler(tokenizers.src)
        _sampler(tokenizers.tgt)
        self.best = corpus
        self.tokenizers = tokenizers
        self.config = config
        self.seed = seed
        self.max_length = max_length
        self._ahead: _Ahead | None = None

    def sample(self, epoch: int, cancelled: Callable[[], bool] = lambda: False) -> EncodedCorpus:
        """Epoch `epoch`'s corpus, sampled now in this thread."""
        started = time.perf_counter()
        corpus = sample_epoch(
            self.best, self.tokenizers, self.config, self.seed, epoch, self.max_length, cancelled
        )
        logger.info(
            "epoch %d: training pairs segmented by sampling in %.1f s (pieces per sentence: "
            "%.2f source, %.2f target; best segmentation: %.2f, %.2f)",
            epoch + 1,
            time.perf_counter() - started,
            corpus.src_lengths.mean() - 1,
            corpus.tgt_lengths.mean() - 1,
            self.best.src_lengths.mean() - 1,
            self.best.tgt_lengths.mean() - 1,
        )
        return corpus

    def corpus(self, epoch: int) -> EncodedCorpus:
        """Epoch `epoch`'s corpus (waiting for it if it is being sampled ahead); begins
        sampling epoch + 1 in the background."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.epoch == epoch:
            waited = time.perf_counter()
            corpus = ahead.result()
            waited = time.perf_counter() - waited
            if waited > 0.5:
                logger.info("waited %.1f s for the segmentation of epoch %d", waited, epoch + 1)
        else:
            if ahead is not None:
                ahead.cancel()
            corpus = self.sample(epoch)
        self._ahead = _Ahead(self, epoch + 1)
        return corpus

    def close(self) -> None:
        """Stop sampling ahead (at the next chunk) and wait for the thread to end."""
        if self._ahead is not None:
            self._ahead.cancel()
            self._ahead = None


class _Ahead:
    """One epoch being sampled in a daemon thread; `result` waits for it."""

    def __init__(self, epochs: SampledEpochs, epoch: int) -> None:
        self.epoch = epoch
        self._stop = threading.Event()
        self._corpus: EncodedCorpus | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(epochs,), name=f"sample-epoch-{epoch + 1}", daemon=True
        )
        self._thread.start()

    def _run(self, epochs: SampledEpochs) -> None:
        try:
            self._corpus = epochs.sample(self.epoch, self._stop.is_set)
        except CancelledError:
            pass
        except BaseException as error:  # raised again in the training thread, by `result`
            self._error = error

    def result(self) -> EncodedCorpus:
        """The sampled corpus, once the thread is done; its error if it failed."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._corpus is not None
        return self._corpus

    def cancel(self) -> None:
        """Ask the thread to stop at its next chunk, and wait for it."""
        self._stop.set()
        self._thread.join()
