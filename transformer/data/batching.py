"""Token-budget batches: which examples go together, and padding them into tensors.

Shapes: ``B`` batch (examples), ``S`` padded source length, ``T`` padded target length,
``L`` padded length of either side. Each side is right-padded with PAD; lengths count EOS.

Data flows::

    token_batches(lengths)       -> lists of indices, sorted by length, at most batch_tokens each
    TokenBatchSampler            -> the same for training: shuffled, sharded, epoch by epoch
    collate(examples)            -> Batch: src (B, S), tgt_in (B, T), tgt_out (B, T)
    collate_flat(flat id arrays) -> the same Batch, gathered without per-example arrays
    pad(id sequences)            -> one right-padded (B, L) array (what translation batches need)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from transformer.data.tokenizer import BOS_ID, PAD_ID

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One encoded pair: `src` and `tgt` ids, each ending with EOS."""

    index: int
    src: np.ndarray  # (S,) int32
    tgt: np.ndarray  # (T,) int32


@dataclass
class Batch:
    """Padded tensors of one batch; `tgt_in` is `tgt_out` shifted right behind BOS."""

    src: torch.Tensor  # (B, S) int64, each row ends with EOS, then PAD
    tgt_in: torch.Tensor  # (B, T) int64: BOS y_1 ... y_n, then PAD
    tgt_out: torch.Tensor  # (B, T) int64: y_1 ... y_n EOS, then PAD
    indices: list[int]  # the examples' indices in their EncodedCorpus
    num_target_tokens: int  # non-PAD entries of tgt_out (what the loss is averaged over)

    def __len__(self) -> int:
        return len(self.indices)

    def pin_memory(self) -> Batch:
        """The same batch in page-locked memory, for asynchronous copies to the GPU."""
        return Batch(
            self.src.pin_memory(),
            self.tgt_in.pin_memory(),
            self.tgt_out.pin_memory(),
            self.indices,
            self.num_target_tokens,
        )

    def to(self, device: torch.device | str) -> Batch:
        """The same batch on `device` (the copy does not block when the memory is pinned)."""
        non_blocking = self.src.is_pinned()
        return Batch(
            self.src.to(device, non_blocking=non_blocking),
            self.tgt_in.to(device, non_blocking=non_blocking),
            self.tgt_out.to(device, non_blocking=non_blocking),
            self.indices,
            self.num_target_tokens,
        )


def token_batches(lengths: Sequence[int] | np.ndarray, batch_tokens: int) -> list[list[int]]:
    """Indices of `lengths`, shortest first, cut into batches of at most `batch_tokens`.

    A batch costs its size times its longest length (its padded size); each is filled as far
    as the budget allows, and a sequence longer than the budget gets a batch of its own.
    Sorting first keeps padding small.
    """
    costs = np.maximum(np.asarray(lengths, dtype=np.int64), 1)
    order = np.argsort(costs, kind="stable")
    return [batch.tolist() for batch in np.split(order, _cut_points(costs[order], batch_tokens))]


def _cut_points(costs: np.ndarray, batch_tokens: int) -> list[int]:
    """Ends of the greedy batches over ascending `costs` (all but the last)."""
    cuts, start, count = [], 0, len(costs)
    while start < count:
        window = costs[start : start + max(1, batch_tokens // int(costs[start]))]
        # size * cost is increasing along the sorted window, so the fits form a prefix.
        fits = np.arange(1, len(window) + 1) * window <= batch_tokens
        start += max(1, int(np.count_nonzero(fits)))
        cuts.append(start)
    return cuts[:-1]


def collate(examples: Sequence[Example], pad_id: int = PAD_ID, start_id: int = BOS_ID) -> Batch:
    """Pad encoded examples into a `Batch` (right padding; one numpy copy per side); the
    decoder's input starts with `start_id` (the model's `special_ids.bos`)."""
    src = pad([e.src for e in examples], pad_id)
    tgt = pad([e.tgt for e in examples], pad_id)
    return _make_batch(src, tgt, [e.index for e in examples], pad_id, start_id)


def collate_flat(
    src_tokens: np.ndarray,
    src_offsets: np.ndarray,
    tgt_tokens: np.ndarray,
    tgt_offsets: np.ndarray,
    indices: Sequence[int],
    pad_id: int = PAD_ID,
    start_id: int = BOS_ID,
) -> Batch:
    """`collate` of pairs `indices` of flat ids; pair i is ``tokens[offsets[i] : offsets[i+1]]``."""
    rows = np.asarray(indices, dtype=np.int64)
    src = _gather(src_tokens, src_offsets[rows], src_offsets[rows + 1] - src_offsets[rows], pad_id)
    tgt = _gather(tgt_tokens, tgt_offsets[rows], tgt_offsets[rows + 1] - tgt_offsets[rows], pad_id)
    return _make_batch(src, tgt, [int(i) for i in indices], pad_id, start_id)


def pad(sequences: Sequence[np.ndarray | Sequence[int]], pad_id: int = PAD_ID) -> np.ndarray:
    """Right-pad id sequences into one int64 array (B, L), L the longest length."""
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    width = int(lengths.max()) if len(lengths) else 0
    padded = np.full((len(sequences), width), pad_id, dtype=np.int64)  # (B, L)
    # Row-major boolean assignment fills each row's first `length` slots in order.
    padded[np.arange(width) < lengths[:, None]] = np.concatenate(sequences) if sequences else []
    return padded


def _gather(tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray, pad_id: int) -> np.ndarray:
    """Rows `tokens[starts[i] : starts[i] + lengths[i]]`, right-padded: (B, max length)."""
    width = int(lengths.max()) if len(lengths) else 0
    positions = np.arange(width)
    filled = positions < lengths[:, None]  # (B, L)
    padded = np.full(filled.shape, pad_id, dtype=np.int64)
    padded[filled] = tokens[(starts[:, None] + positions)[filled]]
    return padded


def _make_batch(
    src: np.ndarray, tgt: np.ndarray, indices: list[int], pad_id: int, start_id: int
) -> Batch:
    """Build tgt_in = start + target from tgt_out = target + EOS, keeping PAD where tgt_out
    has it (the start is BOS, or PAD for a model whose decoder starts from PAD)."""
    tgt_in = np.empty_like(tgt)  # (B, T)
    tgt_in[:, :1] = start_id
    tgt_in[:, 1:] = tgt[:, :-1]
    padding = tgt == pad_id
    tgt_in[padding] = pad_id  # the EOS shifted into the first padding slot
    return Batch(
        torch.from_numpy(src),
        torch.from_numpy(tgt_in),
        torch.from_numpy(tgt),
        indices,
        int(tgt.size - padding.sum()),
    )


class TokenBatchSampler:
    """Length-bucketed batches of example indices that fit a token budget, padding counted.

    An example costs ``max(src_length, tgt_length)`` (EOS counted, which is also the length
    of ``tgt_in`` with its BOS), and a batch costs ``len(batch) * max cost in it``: the size
    of its larger padded tensor. Each batch costs at most `batch_tokens`, except that an
    example dearer than the budget gets a batch of its own (with a warning).

    Each epoch the examples are sorted by cost (then source length, then at random when
    `shuffle`), cut greedily into batches, and the order of the batches is shuffled with a
    generator seeded by ``seed + epoch``: deterministic for a seed and an epoch, different
    between epochs, and every example is in exactly one batch.

    Sharding: rank r of `world_size` takes batches r, r + world_size, ... . So that every rank
    gets the same number of batches, the largest batches are first split in two until the
    count divides by `world_size`; nothing is dropped or repeated, unless every batch holds a
    single example: then the first batches are repeated to fill the last round. Without
    `shuffle` (validation) the batches come in sorted order and the epoch does not matter.
    """

    def __init__(
        self,
        src_lengths: Sequence[int] | np.ndarray,
        tgt_lengths: Sequence[int] | np.ndarray,
        batch_tokens: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_tokens <= 0:
            raise ValueError(f"batch_tokens must be > 0 (got {batch_tokens})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        src = np.asarray(src_lengths, dtype=np.int64)
        tgt = np.asarray(tgt_lengths, dtype=np.int64)
        if src.shape != tgt.shape:
            raise ValueError(f"{len(src)} source lengths but {len(tgt)} target lengths")
        self._src_lengths = src
        self._costs = np.maximum(np.maximum(src, tgt), 1)
        self.batch_tokens = batch_tokens
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._warned = False
        self._memo: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch that `__iter__` and `__len__` describe."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches(self.epoch))

    def __len__(self) -> int:
        return len(self.batches(self.epoch))

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches for `epoch`, in the order to train on them."""
        if self._memo is None or self._memo[0] != epoch:
            self._memo = (epoch, self._all_batches(epoch)[self.rank :: self.world_size])
        return self._memo[1]

    def _all_batches(self, epoch: int) -> list[list[int]]:
        count = len(self._costs)
        if count == 0:
            return []
        rng = np.random.default_rng(self.seed + epoch) if self.shuffle else None
        if rng is not None:
            order = np.lexsort((rng.random(count), self._src_lengths, self._costs))
        else:
            order = np.lexsort((self._src_lengths, self._costs))  # stable: ties by index
        costs = self._costs[order]
        self._warn_once(costs)
        batches = np.split(order, _cut_points(costs, self.batch_tokens))
        batches = _divisible(batches, self.world_size)
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return [batch.tolist() for batch in batches]

    def _warn_once(self, costs: np.ndarray) -> None:
        over = int(np.count_nonzero(costs > self.batch_tokens))
        if over and not self._warned:
            self._warned = True
            logger.warning(
                "%d examples are longer than batch_tokens %d (the longest has %d tokens); "
                "each gets a batch of its own",
                over,
                self.batch_tokens,
                int(costs[-1]),
            )


def _divisible(batches: list[np.ndarray], world_size: int) -> list[np.ndarray]:
    """Split the largest batches until their number divides by `world_size`."""
    batches = list(batches)
    while len(batches) % world_size:
        largest = max(range(len(batches)), key=lambda i: len(batches[i]))
        if len(batches[largest]) < 2:
            # Nothing left to split: repeat batches so that every rank gets as many.
            missing = world_size - len(batches) % world_size
            return batches + [batches[i % len(batches)] for i in range(missing)]
        half = len(batches[largest]) // 2
        batches[largest : largest + 1] = [batches[largest][:half], batches[largest][half:]]
    return batches
