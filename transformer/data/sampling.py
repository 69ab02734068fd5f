"""Subword regularization: the training pairs segmented afresh, by sampling, for each epoch.

With ``tokenizer.sampling`` set, epoch e trains on a sampled segmentation of each pair
(unigram: Kudo, 2018; bpe: BPE-dropout, Provilkov et al., 2020; the draws are in
`transformer.data.samplers`) instead of the best one. Only the training pairs are sampled:
validation, test and translation always use the best segmentation, and so does the
tokenized-data cache (a sampled epoch is never written there).

Exact resumption: epoch e's segmentation is a pure function of (training.seed, e, the
corpus): each chunk of each side is drawn from `random.Random` seeded with a hash of
(seed, epoch, side, chunk), in whichever process.

The pairs are those the length filter kept on the best segmentation (data.max_length and
data.max_length_ratio judge a pair once, so every epoch trains on the same pairs); a sampled
side longer than data.max_length tokens (EOS counted) takes its best segmentation instead,
so that no epoch holds a sequence longer than the filter allows.

Speed: `SampledEpochs` samples epoch e + 1 in worker processes (the sampling is Python, and
a thread would take the interpreter lock from the training loop) while epoch e trains, so
that it is ready when e + 1 begins.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from transformer.config import TokenizerConfig
from transformer.data.corpus import EncodedCorpus, TextColumn, append_eos
from transformer.data.samplers import SubwordSampler, ignore_interrupts, sample_texts
from transformer.data.tokenizer import Tokenizer, TokenizerPair
from transformer.errors import UserError

logger = logging.getLogger(__name__)

CHUNK = 10_000  # sentences per task: a few seconds of work, so that stopping never waits long

Task = tuple[bytes, str, float, int, list[str], int, int]


def chunk_seed(seed: int, epoch: int, side: str, chunk: int) -> int:
    """The generator seed of one chunk of one side of one epoch (64 bits of a hash)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{side}:{chunk}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little")


def sample_chunk(task: Task) -> tuple[np.ndarray, np.ndarray]:
    """Sample one chunk of texts: (flat ids without EOS, lengths); run by the workers."""
    model_proto, kind, alpha, nbest_size, texts, seed, max_length = task
    sampler = warm_sampler(model_proto, kind, alpha, nbest_size)
    return sample_texts(sampler, texts, seed, max_length)


@functools.lru_cache(maxsize=2)  # a source and a target model
def warm_sampler(model_proto: bytes, kind: str, alpha: float, nbest_size: int) -> SubwordSampler:
    """This process's sampler for a model and setting, kept from chunk to chunk and epoch to
    epoch: the lattices of the words it has met are most of the cost of sampling (10,000
    Multi30k sentences took 0.99 s of CPU with a new sampler, 0.38 s with a warm one). A
    sampler's draws depend on the text and the generator alone, so keeping it changes none."""
    return SubwordSampler(model_proto, kind, alpha, nbest_size)


def epoch_tasks(
    corpus: EncodedCorpus,
    tokenizers: TokenizerPair,
    config: TokenizerConfig,
    seed: int,
    epoch: int,
    max_length: int,
) -> dict[str, list[Task]]:
    """The chunks to sample for `epoch`, by side ("src", "tgt")."""
    sampling = config.sampling
    if sampling is None:
        raise ValueError("tokenizer.sampling is not set")
    tasks: dict[str, list[Task]] = {}
    for side, tokenizer, texts in (
        ("src", tokenizers.src, corpus.src_texts),
        ("tgt", tokenizers.tgt, corpus.tgt_texts),
    ):
        proto = _sampler_model(tokenizer).model_proto
        tasks[side] = [
            (
                proto,
                config.kind,
                sampling.alpha,
                sampling.nbest_size,
                chunk,
                chunk_seed(seed, epoch, side, number),
                max_length,
            )
            for number, chunk in enumerate(_chunks(texts))
        ]
    return tasks


def _chunks(texts: TextColumn) -> list[list[str]]:
    return list(texts.chunks(CHUNK))


def _sampler_model(tokenizer: object) -> Tokenizer:
    if not isinstance(tokenizer, Tokenizer):
        raise UserError(
            "tokenizer.sampling: the run's tokenizer cannot sample segmentations (only this "
            "project's SentencePiece models can, not a Marian one); set tokenizer.sampling "
            "to null"
        )
    return tokenizer


def assemble(
    corpus: EncodedCorpus, results: dict[str, list[tuple[np.ndarray, np.ndarray]]]
) -> EncodedCorpus:
    """`corpus`'s pairs with the sampled ids of each side's chunks, in order."""
    sides = []
    for side in ("src", "tgt"):
        chunks = results[side]
        tokens = np.concatenate([t for t, _ in chunks]) if chunks else np.zeros(0, np.int32)
        lengths = np.concatenate([n for _, n in chunks]) if chunks else np.zeros(0, np.int64)
        sides.append(append_eos(tokens, lengths))
    return corpus.with_ids(sides[0], sides[1])


def sample_epoch(
    corpus: EncodedCorpus,
    tokenizers: TokenizerPair,
    config: TokenizerConfig,
    seed: int,
    epoch: int,
    max_length: int,
) -> EncodedCorpus:
    """`corpus`'s pairs segmented by sampling for `epoch`, in this process: the same for
    the same arguments (and the same as `SampledEpochs` gives)."""
    tasks = epoch_tasks(corpus, tokenizers, config, seed, epoch, max_length)
    return assemble(corpus, {side: list(map(sample_chunk, t)) for side, t in tasks.items()})


class SampledEpochs:
    """The training corpus of each epoch, sampled one epoch ahead by worker processes."""

    def __init__(
        self,
        corpus: EncodedCorpus,
        tokenizers: TokenizerPair,
        config: TokenizerConfig,
        seed: int,
        max_length: int,
        ranks: int = 1,
    ) -> None:
        _sampler_model(tokenizers.src)
        _sampler_model(tokenizers.tgt)
        self.best = corpus
        self.tokenizers = tokenizers
        self.config = config
        self.seed = seed
        self.max_length = max_length
        # Half the cores at most (training needs the others), shared by the `ranks` training
        # processes of the machine (each samples the same epochs for itself)
        self.workers = max(1, min(8, (os.cpu_count() or 2) // 2 // ranks))
        self._pool: ProcessPoolExecutor | None = None
        self._ahead: tuple[int, dict[str, list[Future]]] | None = None

    def _submit(self, epoch: int) -> tuple[int, dict[str, list[Future]]]:
        if self._pool is None:  # spawn: a fork of a process running torch threads may hang
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=ignore_interrupts
            )
        pool = self._pool
        tasks = epoch_tasks(
            self.best, self.tokenizers, self.config, self.seed, epoch, self.max_length
        )
        futures = {
            side: [pool.submit(sample_chunk, t) for t in chunks] for side, chunks in tasks.items()
        }
        return epoch, futures

    def corpus(self, epoch: int) -> EncodedCorpus:
        """Epoch `epoch`'s corpus (waiting for it if it is being sampled ahead); begins
        sampling epoch + 1."""
        ahead, self._ahead = self._ahead, None
        if ahead is None or ahead[0] != epoch:
            if ahead is not None:
                _cancel(ahead[1])
            ahead = self._submit(epoch)
        futures = ahead[1]
        waited = time.perf_counter()
        try:
            results = {side: [f.result() for f in chunks] for side, chunks in futures.items()}
        except BrokenProcessPool:
            self._pool = None
            raise UserError(
                f"tokenizer.sampling: a process sampling the segmentation of epoch {epoch + 1} "
                "ended abruptly (killed, or out of memory); continue the run with --resume, or "
                "set tokenizer.sampling to null"
            ) from None
        corpus = assemble(self.best, results)
        now = time.perf_counter()
        logger.info(
            "epoch %d: training pairs segmented by sampling (waited %.1f s for it); pieces per "
            "sentence: %.2f source, %.2f target (best segmentation: %.2f, %.2f)",
            epoch + 1,
            now - waited,
            corpus.src_lengths.mean() - 1,
            corpus.tgt_lengths.mean() - 1,
            self.best.src_lengths.mean() - 1,
            self.best.tgt_lengths.mean() - 1,
        )
        self._ahead = self._submit(epoch + 1)
        return corpus

    def close(self) -> None:
        """Drop the epoch begun ahead and stop the workers (after their current chunk)."""
        if self._ahead is not None:
            _cancel(self._ahead[1])
            self._ahead = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _cancel(futures: dict[str, list[Future]]) -> None:
    for side in futures.values():
        for future in side:
            future.cancel()
