"""Parallel corpora: loading (text, tables, the Hub), tokenizing with a cache, length filtering.

Data flows::

    load_corpus(CorpusConfig)   -> datasets.Dataset with string columns "src", "tgt"
    encode_corpus(dataset, ...) -> EncodedCorpus: ids ending in EOS, length-filtered, cached
    EncodedCorpus.collate       -> Batch: src (B, S), tgt_in (B, T), tgt_out (B, T)

Which examples share a batch, and how they are padded, is `transformer.data.batching`.

Lengths count EOS: an encoded source of S tokens is what the encoder reads, and an encoded
target of T tokens gives ``tgt_in = BOS + target`` and ``tgt_out = target + EOS``, both T long.
"""

from __future__ import annotations

import codecs
import hashlib
import itertools
import logging
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transformer.config import CorpusConfig
from transformer.data.batching import Batch, Example, collate_flat
from transformer.data.tables import TableError, open_binary, read_table
from transformer.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, TokenizerPair
from transformer.errors import UserError
from transformer.files import atomic_write

logger = logging.getLogger(__name__)

_CACHE_VERSION = b"encoded-corpus-v1"
_ENCODE_CHUNK = 50_000  # sentences per encode_batch call: big enough for SentencePiece threads
_TEXT = pa.large_string()  # 64-bit offsets: a side of a corpus may exceed 2 GiB of text


class DataError(UserError, ValueError):
    """A corpus that cannot be read: missing file, bad encoding, mismatched sides, no column."""


# --------------------------------------------------------------------------- loading


def load_corpus(corpus: CorpusConfig, key: str) -> datasets.Dataset:
    """Load one corpus as a Dataset of stripped, non-empty (src, tgt) string pairs.

    `key` is the config key of the corpus (e.g. "data.train"), used in error messages.
    """
    if corpus.format == "text":
        src, tgt = _read_text_pair(corpus, key)
        where = f"{Path(corpus.src_path).expanduser()} and {Path(corpus.tgt_path).expanduser()}"
    elif corpus.format == "table":
        src, tgt = _read_table(corpus, key)
        where = str(Path(corpus.path).expanduser())
    else:
        src, tgt = _select_fields(_load_hub(corpus, key), corpus, key, corpus.name)
        where = f"split {corpus.split!r} of dataset {corpus.name!r}"
    return _drop_empty_pairs(src, tgt, key, where)


def _read_text_pair(corpus: CorpusConfig, key: str) -> tuple[pa.Array, pa.Array]:
    src_path = _existing_file(corpus.src_path, f"{key}.src_path")
    tgt_path = _existing_file(corpus.tgt_path, f"{key}.tgt_path")
    src, tgt = _read_lines(src_path), _read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(
            f"{key}: {src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; "
            "a parallel corpus needs exactly one target line per source line"
        )
    return src, tgt


def _existing_file(path: str, key: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise DataError(f"{key}: file not found: {resolved}")
    return resolved


def _read_lines(path: Path) -> pa.LargeStringArray:
    """The lines of a UTF-8 text file (``.gz`` allowed), split on "\\n" only.

    The Arrow array is built straight on the file's bytes (no Python string per line); each
    line keeps its "\\n" (and any "\\r"), which the stripping in `load_corpus` removes.
    """
    try:
        with open_binary(path) as file:
            data = file.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"cannot read {path}: {error}") from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n")) + 1
    if data and not data.endswith(b"\n"):
        ends = np.append(ends, len(data))
    offsets = np.concatenate([np.zeros(1, dtype=np.int64), ends.astype(np.int64)])
    lines = pa.LargeStringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(data))
    try:
        lines.validate(full=True)  # checks the UTF-8 in C, much faster than decoding it
    except pa.ArrowInvalid:
        _raise_for_bad_utf8(data, path)
    return lines


def _raise_for_bad_utf8(data: bytes, path: Path) -> None:
    """Raise a DataError naming the line of the first byte that is not UTF-8."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(
            f"{path}: line {line} is not valid UTF-8; convert the file to UTF-8"
        ) from None
    raise DataError(f"{path}: not a valid UTF-8 text file")


def _read_table(corpus: CorpusConfig, key: str) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """The src_field and tgt_field columns of a local table file (see `transformer.data.tables`)."""
    path = _existing_file(corpus.path, f"{key}.path")
    try:
        return read_table(path, corpus.src_field, corpus.tgt_field)
    except TableError as error:
        where = f"{key}.{error.setting}" if error.setting else key
        raise DataError(f"{where}: {error}") from None


def _load_hub(corpus: CorpusConfig, key: str) -> pa.Table:
    """One split of a Hugging Face Hub dataset (or a local dataset directory)."""
    try:
        dataset = datasets.load_dataset(corpus.name, corpus.subset, split=corpus.split)
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as error:
        raise DataError(
            f"{key}: could not load dataset {corpus.name!r} from the Hugging Face Hub: "
            f"{_reason(error)}"
        ) from None
    return dataset.with_format("arrow")[:]


def _reason(error: BaseException) -> str:
    """The first line of an exception's message, following its cause when it has none."""
    while not str(error).strip() and error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _select_fields(
    table: pa.Table, corpus: CorpusConfig, key: str, where: object
) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """The src_field and tgt_field columns; a dotted path selects a nested field."""
    selected = []
    for field_key, path in (("src_field", corpus.src_field), ("tgt_field", corpus.tgt_field)):
        column = _field(table, path)
        if column is None:
            raise DataError(
                f"{key}.{field_key}: {where} has no column {path!r}; "
                f"its columns are: {', '.join(_leaf_names(table.schema))}"
            )
        try:
            selected.append(column.cast(_TEXT))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DataError(
                f"{key}.{field_key}: column {path!r} of {where} holds {column.type}, not text"
            ) from None
    return selected[0], selected[1]


def _field(table: pa.Table, path: str) -> pa.ChunkedArray | None:
    if path in table.column_names:
        return table.column(path)
    head, *rest = path.split(".")
    if head not in table.column_names:
        return None
    column = table.column(head)
    for part in rest:
        if not pa.types.is_struct(column.type) or column.type.get_field_index(part) < 0:
            return None
        column = pc.struct_field(column, part)
    return column


def _leaf_names(fields: pa.Schema | pa.StructType, prefix: str = "") -> list[str]:
    names = []
    for field in fields:
        if pa.types.is_struct(field.type):
            names.extend(_leaf_names(field.type, f"{prefix}{field.name}."))
        else:
            names.append(f"{prefix}{field.name}")
    return names


def _drop_empty_pairs(src: pa.Array, tgt: pa.Array, key: str, where: str) -> datasets.Dataset:
    """Strip both sides and drop pairs where either side is empty (or missing).

    `where` names the file(s) or dataset read, for the error when no pair is left.
    """
    src = pc.utf8_trim_whitespace(pc.fill_null(src, ""))
    tgt = pc.utf8_trim_whitespace(pc.fill_null(tgt, ""))
    keep = pc.and_(pc.greater(pc.binary_length(src), 0), pc.greater(pc.binary_length(tgt), 0))
    total = len(src)
    kept = pc.sum(keep).as_py() or 0
    if kept < total:
        logger.warning("%s: skipped %d of %d pairs with an empty side", key, total - kept, total)
    if kept == 0:
        found = f"all {total} rows have an empty side" if total else "no row with text"
        raise DataError(
            f"{key}: no sentence pairs in {where}: {found}; "
            "a corpus needs at least one pair with text on both sides"
        )
    table = pa.table({"src": src, "tgt": tgt}).filter(keep)
    logger.info("%s: %d sentence pairs", key, kept)
    return datasets.Dataset.from_dict({"src": table.column("src"), "tgt": table.column("tgt")})


def iter_sentences(dataset: datasets.Dataset, column: str) -> Iterator[str]:
    """The strings of one column, read in Arrow chunks (far faster than ``dataset[column]``).

    Meant for `train_tokenizers(config, iter_sentences(d, "src"), iter_sentences(d, "tgt"), ...)`.
    """
    yield from TextColumn(dataset.select_columns([column]).with_format("arrow")[:].column(0))


# --------------------------------------------------------------------------- encoding


class TextColumn(Sequence[str]):
    """Read-only sentences kept as one Arrow array (compact; a str is made only when read)."""

    def __init__(self, array: pa.Array | pa.ChunkedArray) -> None:
        self._array = array

    def __len__(self) -> int:
        return len(self._array)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        return self._array[range(len(self))[index]].as_py()

    def __iter__(self) -> Iterator[str]:
        for chunk in self.chunks():
            yield from chunk

    def chunks(self, size: int = _ENCODE_CHUNK) -> Iterator[list[str]]:
        """The sentences in lists of `size` (the last one shorter), e.g. to encode them."""
        for start in range(0, len(self._array), size):
            yield self._array.slice(start, size).to_pylist()


class EncodedCorpus:
    """Token ids of every kept pair, stored flat (int32 ids + int64 offsets), and their text."""

    def __init__(
        self,
        src_tokens: np.ndarray,
        src_offsets: np.ndarray,
        tgt_tokens: np.ndarray,
        tgt_offsets: np.ndarray,
        src_texts: pa.ChunkedArray | TextColumn,
        tgt_texts: pa.ChunkedArray | TextColumn,
    ) -> None:
        self._src_tokens, self._src_offsets = src_tokens, src_offsets
        self._tgt_tokens, self._tgt_offsets = tgt_tokens, tgt_offsets
        # the source sentences as read (stripped); the target sentences: references for BLEU
        self.src_texts = src_texts if isinstance(src_texts, TextColumn) else TextColumn(src_texts)
        self.tgt_texts = tgt_texts if isinstance(tgt_texts, TextColumn) else TextColumn(tgt_texts)
        self.src_lengths = np.diff(src_offsets)  # (N,) with EOS
        self.tgt_lengths = np.diff(tgt_offsets)  # (N,) with EOS

    def __len__(self) -> int:
        return len(self.src_lengths)

    def __getitem__(self, index: int) -> Example:
        index = range(len(self))[index]  # bounds check and negative indices
        src = self._src_tokens[self._src_offsets[index] : self._src_offsets[index + 1]]
        tgt = self._tgt_tokens[self._tgt_offsets[index] : self._tgt_offsets[index + 1]]
        return Example(index, src, tgt)

    def with_ids(
        self, src: tuple[np.ndarray, np.ndarray], tgt: tuple[np.ndarray, np.ndarray]
    ) -> EncodedCorpus:
        """The same pairs (and texts) with other ids: a sampled segmentation, each side given
        as (flat ids with EOS after each sequence, offsets), as `append_eos` makes them."""
        return EncodedCorpus(*src, *tgt, self.src_texts, self.tgt_texts)

    def collate(
        self, indices: Sequence[int], pad_id: int = PAD_ID, start_id: int = BOS_ID
    ) -> Batch:
        """`collate([self[i] for i in indices])`, gathered straight from the flat arrays."""
        return collate_flat(
            self._src_tokens,
            self._src_offsets,
            self._tgt_tokens,
            self._tgt_offsets,
            indices,
            pad_id,
            start_id,
        )


def encode_corpus(
    dataset: datasets.Dataset,
    tokenizers: TokenizerPair,
    max_length: int,
    max_length_ratio: float,
    cache_dir: str | Path | None = None,
    filter: bool = True,
    name: str = "corpus",
) -> EncodedCorpus:
    """Tokenize both sides, append EOS, and (if `filter`) drop over-long or unbalanced pairs.

    Dropped: a side longer than `max_length` tokens (EOS counted), or a token-count ratio
    (EOS not counted) above `max_length_ratio`. With `cache_dir`, the result is cached under
    a hash of the text, both tokenizer models and the filter settings.
    """
    table = dataset.select_columns(["src", "tgt"]).with_format("arrow")[:]
    settings = f"{filter}:{max_length}:{max_length_ratio}" if filter else "all"
    arrays = None
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"encoded-{_cache_key(table, tokenizers, settings)}.npz"
        arrays = _load_cache(path)
        if arrays is not None:
            logger.info("%s: tokenized pairs loaded from the cache %s", name, path)
    if arrays is None:
        arrays = _encode(table, tokenizers)
        if filter:
            arrays = _filter(arrays, max_length, max_length_ratio, name)
        if path is not None:
            _save_cache(path, arrays)
    kept = arrays["kept"]
    everything = len(kept) == table.num_rows
    return EncodedCorpus(
        arrays["src_tokens"],
        arrays["src_offsets"],
        arrays["tgt_tokens"],
        arrays["tgt_offsets"],
        table.column("src") if everything else table.column("src").take(kept),
        table.column("tgt") if everything else table.column("tgt").take(kept),
    )


def _encode(table: pa.Table, tokenizers: TokenizerPair) -> dict[str, np.ndarray]:
    result = {"kept": np.arange(table.num_rows, dtype=np.int64)}
    for side, tokenizer in (("src", tokenizers.src), ("tgt", tokenizers.tgt)):
        column = table.column(side)
        pieces, lengths = [], []
        for start in range(0, table.num_rows, _ENCODE_CHUNK):
            ids = tokenizer.encode_batch(column.slice(start, _ENCODE_CHUNK).to_pylist())
            chunk_lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            flat = np.fromiter(
                itertools.chain.from_iterable(ids), dtype=np.int32, count=int(chunk_lengths.sum())
            )
            pieces.append(flat)
            lengths.append(chunk_lengths)
        tokens, counts = _concat(pieces, np.int32), _concat(lengths, np.int64)
        result[f"{side}_tokens"], result[f"{side}_offsets"] = append_eos(tokens, counts)
    return result


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def append_eos(tokens: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat ids with EOS after each sequence, and the offsets of the new sequences."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths + 1, out=offsets[1:])
    result = np.full(offsets[-1], EOS_ID, dtype=np.int32)
    is_token = np.ones(offsets[-1], dtype=bool)
    is_token[offsets[1:] - 1] = False
    result[is_token] = tokens
    return result, offsets


def _filter(
    arrays: dict[str, np.ndarray], max_length: int, max_length_ratio: float, name: str
) -> dict[str, np.ndarray]:
    src_lengths, tgt_lengths = np.diff(arrays["src_offsets"]), np.diff(arrays["tgt_offsets"])
    too_long = (src_lengths > max_length) | (tgt_lengths > max_length)
    shorter = np.maximum(np.minimum(src_lengths, tgt_lengths) - 1, 1)
    longer = np.maximum(src_lengths, tgt_lengths) - 1
    unbalanced = ~too_long & (longer > max_length_ratio * shorter)
    keep = ~(too_long | unbalanced)
    logger.info(
        "%s: kept %d of %d pairs (%d with a side over %d tokens, %d with a length ratio over %g)",
        name,
        int(keep.sum()),
        len(keep),
        int(too_long.sum()),
        max_length,
        int(unbalanced.sum()),
        max_length_ratio,
    )
    result = {"kept": arrays["kept"][keep]}
    for side, lengths in (("src", src_lengths), ("tgt", tgt_lengths)):
        result[f"{side}_tokens"] = arrays[f"{side}_tokens"][np.repeat(keep, lengths)]
        offsets = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
        np.cumsum(lengths[keep], out=offsets[1:])
        result[f"{side}_offsets"] = offsets
    return result


class _HashWriter:
    """A write-only file object that feeds a hash (to fingerprint Arrow data by streaming)."""

    def __init__(self, digest: hashlib.blake2b) -> None:
        self.digest = digest
        self.closed = False

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _cache_key(table: pa.Table, tokenizers: TokenizerPair, settings: str) -> str:
    """Hash of the text, both tokenizer models and the filter settings."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(_CACHE_VERSION)
    digest.update(settings.encode())
    for model in (tokenizers.src.model_proto, tokenizers.tgt.model_proto):
        digest.update(hashlib.blake2b(model, digest_size=16).digest())
    sink = pa.PythonFile(_HashWriter(digest), mode="w")
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return digest.hexdigest()


def _load_cache(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as stored:
            return {name: stored[name] for name in stored.files}
    except (OSError, ValueError, KeyError) as error:
        logger.warning("ignoring the unreadable cache file %s (%s)", path, error)
        return None


def _save_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the cache file atomically: a crash never leaves a half-written cache behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as handle:
        np.savez(handle, **arrays)
