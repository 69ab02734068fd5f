"""SentencePiece subword tokenizers: trained on the corpus (or given as files), loaded, used.

A run directory holds either one joint model, ``spm.model`` (source and target share one
vocabulary), or two, ``src.model`` and ``tgt.model``. Every model uses the same special ids:
PAD=0, UNK=1, BOS=2, EOS=3. ``encode`` adds no BOS/EOS; the data pipeline does that.

Normalization is SentencePiece's default ``nmt_nfkc``, as in most NMT systems: it makes noisy
web text uniform (NFKC, odd whitespace, control characters). So ``decode(encode(text))``
gives back ``text`` exactly for ordinary NFC text with single spaces between words (umlauts,
ß, digits, punctuation, „quotes“ and dashes included), but not in every case: runs of
whitespace collapse to one space, leading and trailing whitespace is dropped, and
compatibility characters are folded (``…`` -> ``...``, ``ﬁ`` -> ``fi``, full-width forms ->
ASCII). Characters the model never saw decode as `` ⁇ ``.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import logging
import math
import os
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from transformer.config import ConfigError, ModelConfig, TokenizerConfig
from transformer.data.special_ids import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from transformer.errors import UserError
from transformer.files import atomic_write

logger = logging.getLogger(__name__)

PAD_PIECE = "<pad>"
UNK_PIECE = "<unk>"
BOS_PIECE = "<s>"
EOS_PIECE = "</s>"

JOINT_MODEL = "spm.model"
SRC_MODEL = "src.model"
TGT_MODEL = "tgt.model"

_SKIPPED_IN_DECODE = frozenset({PAD_ID, BOS_ID, EOS_ID})
_SPECIAL_IDS = {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}


class TokenizerError(UserError, ValueError):
    """A tokenizer model that cannot be trained, found or loaded."""


class Tokenizer:
    """One SentencePiece model: text <-> ids, with the project's fixed special ids."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            proto = self.path.read_bytes()
        except FileNotFoundError:
            raise TokenizerError(f"tokenizer model file not found: {self.path}") from None
        except OSError as error:
            raise TokenizerError(f"cannot read tokenizer model {self.path}: {error}") from None
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(proto)
        except (RuntimeError, OSError):
            raise TokenizerError(
                f"{self.path} is not a SentencePiece model file (it could not be parsed)"
            ) from None
        found = {
            "pad": self._sp.pad_id(),
            "unk": self._sp.unk_id(),
            "bos": self._sp.bos_id(),
            "eos": self._sp.eos_id(),
        }
        if found != _SPECIAL_IDS:
            have = " ".join(f"{name}={value}" for name, value in found.items())
            want = " ".join(f"--{name}_id={value}" for name, value in _SPECIAL_IDS.items())
            raise TokenizerError(
                f"{self.path} uses other special ids ({have}); retrain it with {want}"
            )

    @property
    def vocab_size(self) -> int:
        """Number of pieces, special ones included."""
        return self._sp.get_piece_size()

    @property
    def model_proto(self) -> bytes:
        """The serialized model, e.g. to fingerprint a cache by the exact tokenizer."""
        return self._sp.serialized_model_proto()

    def encode(self, text: str) -> list[int]:
        """Piece ids of one text, without BOS or EOS."""
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Piece ids of many texts at once (SentencePiece encodes them on several threads)."""
        return self._sp.encode(list(texts), out_type=int)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`; PAD, BOS and EOS ids are skipped wherever they are."""
        return self._sp.decode([int(i) for i in ids if int(i) not in _SKIPPED_IN_DECODE])

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        """`decode` for many id sequences at once."""
        cleaned = [[int(i) for i in ids if int(i) not in _SKIPPED_IN_DECODE] for ids in batch]
        return self._sp.decode(cleaned)

    def id_to_piece(self, piece_id: int) -> str:
        """The piece string of one id (e.g. to show tokenized samples)."""
        return self._sp.id_to_piece(piece_id)

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


@dataclass
class TokenizerPair:
    """Source and target tokenizers; when `joint`, `src` and `tgt` are the same object."""

    src: Tokenizer
    tgt: Tokenizer
    joint: bool


def with_vocabulary_sizes(model: ModelConfig, tokenizers: TokenizerPair) -> ModelConfig:
    """`model` with its vocabulary sizes taken from the tokenizers: the one place they are set.

    A size the config already gives must be the tokenizer's: anything else is a `ConfigError`
    naming the key (`model.src_vocab_size`); the caller says what to do about it.
    """
    sizes = {
        "src_vocab_size": tokenizers.src.vocab_size,
        "tgt_vocab_size": tokenizers.tgt.vocab_size,
    }
    for key, size in sizes.items():
        given = getattr(model, key)
        if given is not None and given != size:
            raise ConfigError(f"model.{key}", f"is {given} but the tokenizer has {size} pieces")
    return dataclasses.replace(model, **sizes)


def load_tokenizers(directory: str | Path) -> TokenizerPair:
    """Load ``spm.model`` (joint) or ``src.model`` + ``tgt.model`` from `directory`, or
    Marian's ``source.spm`` + ``target.spm`` + ``vocab.json`` (one shared id space: joint),
    and ``target_vocab.json`` when the target has its own."""
    from transformer.data.marian import is_marian_directory, load_marian_tokenizers

    directory = Path(directory)
    if is_marian_directory(directory):
        src_side, tgt_side = load_marian_tokenizers(directory)
        joint = src_side.vocab_path == tgt_side.vocab_path  # one id space for both sides
        return TokenizerPair(src_side, tgt_side, joint=joint)  # type: ignore[arg-type]
    joint = directory / JOINT_MODEL
    src, tgt = directory / SRC_MODEL, directory / TGT_MODEL
    if joint.is_file():
        if src.is_file() or tgt.is_file():
            raise TokenizerError(
                f"{directory} holds both {JOINT_MODEL} and {SRC_MODEL}/{TGT_MODEL}; "
                "remove the one that this run does not use"
            )
        tokenizer = Tokenizer(joint)
        return TokenizerPair(tokenizer, tokenizer, joint=True)
    if src.is_file() and tgt.is_file():
        return TokenizerPair(Tokenizer(src), Tokenizer(tgt), joint=False)
    raise TokenizerError(
        f"no tokenizer in {directory}: expected {JOINT_MODEL} or {SRC_MODEL} and {TGT_MODEL}"
    )


def train_tokenizers(
    config: TokenizerConfig,
    src_texts: Iterable[str],
    tgt_texts: Iterable[str],
    out_dir: str | Path,
    seed: int = 0,
) -> TokenizerPair:
    """Train SentencePiece on the texts (or copy the configured model files) into `out_dir`.

    Joint: one ``spm.model`` trained on source and target text together; otherwise
    ``src.model`` and ``tgt.model``. At most ``config.max_training_sentences`` sentences per
    model are used, sampled with `seed`. The texts are not read when model files are given.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.model_file:
        _copy_model(config.model_file, "tokenizer.model_file", out_dir / JOINT_MODEL)
        _remove_stale(out_dir, (SRC_MODEL, TGT_MODEL))
    elif config.src_model_file and config.tgt_model_file:
        _copy_model(config.src_model_file, "tokenizer.src_model_file", out_dir / SRC_MODEL)
        _copy_model(config.tgt_model_file, "tokenizer.tgt_model_file", out_dir / TGT_MODEL)
        _remove_stale(out_dir, (JOINT_MODEL,))
    elif config.joint:
        rng = random.Random(seed)
        sentences = _sample(
            itertools.chain(src_texts, tgt_texts), config.max_training_sentences, rng
        )
        _write_atomic(out_dir / JOINT_MODEL, _train_model(sentences, config, "source and target"))
        _remove_stale(out_dir, (SRC_MODEL, TGT_MODEL))
    else:
        rng = random.Random(seed)
        for texts, name, side in (
            (src_texts, SRC_MODEL, "source"),
            (tgt_texts, TGT_MODEL, "target"),
        ):
            sentences = _sample(iter(texts), config.max_training_sentences, rng)
            _write_atomic(out_dir / name, _train_model(sentences, config, side))
        _remove_stale(out_dir, (JOINT_MODEL,))
    return load_tokenizers(out_dir)


def _copy_model(source: str, key: str, destination: Path) -> None:
    """Copy a user-given model file into the run directory after checking that it loads."""
    path = Path(source).expanduser()
    if path.is_dir():
        models = sorted(path.glob("*.model"))
        example = f", e.g. {models[0]}" if models else ""
        raise TokenizerError(
            f"{key}: {path} is a directory; give the SentencePiece model file itself{example}"
        )
    if not path.is_file():
        raise TokenizerError(f"{key}: file not found: {path}")
    Tokenizer(path)
    if destination.exists() and os.path.samefile(path, destination):
        return
    _write_atomic(destination, path.read_bytes())
    logger.info("tokenizer: using %s (copied to %s)", path, destination)


def _remove_stale(out_dir: Path, names: tuple[str, ...]) -> None:
    """Remove model files of the other layout, left by an earlier run in the same directory."""
    for name in names:
        path = out_dir / name
        if path.is_file():
            logger.info("tokenizer: removing %s left from an earlier run", path)
            path.unlink()


def _sample(sentences: Iterator[str], k: int, rng: random.Random) -> list[str]:
    """Up to `k` non-blank sentences drawn uniformly (reservoir sampling), in random order.

    Algorithm L (Li, 1994): skips ahead geometrically, so most sentences cost no random draw.
    """
    stream = filter(str.strip, sentences)
    reservoir = list(itertools.islice(stream, k))
    if len(reservoir) == k:
        w = math.exp(math.log(1.0 - rng.random()) / k)
        while w < 1.0:
            skip = math.floor(math.log(1.0 - rng.random()) / math.log1p(-w))
            item = next(itertools.islice(stream, skip, None), None)
            if item is None:
                break
            reservoir[rng.randrange(k)] = item
            w *= math.exp(math.log(1.0 - rng.random()) / k)
    rng.shuffle(reservoir)
    return reservoir


def _train_model(sentences: list[str], config: TokenizerConfig, what: str) -> bytes:
    """Train one SentencePiece model in memory and return its serialized bytes."""
    if not sentences:
        raise TokenizerError(f"cannot train the {what} tokenizer: the training text is empty")
    logger.info(
        "tokenizer: training a %s model (vocab_size %d) on %d %s sentences",
        config.kind,
        config.vocab_size,
        len(sentences),
        what,
    )
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type=config.kind,
            vocab_size=config.vocab_size,
            character_coverage=config.character_coverage,
            normalization_rule_name="nmt_nfkc",
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_piece=PAD_PIECE,
            unk_piece=UNK_PIECE,
            bos_piece=BOS_PIECE,
            eos_piece=EOS_PIECE,
            # A corpus too small for vocab_size yields a smaller vocabulary (warned below)
            # instead of SentencePiece's "Vocabulary size too high" error.
            hard_vocab_limit=False,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as error:
        message = str(error)
        needed = re.search(r"required_chars\. \d+ vs (\d+)", message)
        if needed:
            raise TokenizerError(
                f"tokenizer.vocab_size {config.vocab_size} is too small: the characters of the "
                f"{what} text and the special pieces need at least {needed.group(1)}; raise "
                "tokenizer.vocab_size or lower tokenizer.character_coverage"
            ) from None
        raise TokenizerError(
            f"SentencePiece training failed on the {what} text: {message}"
        ) from None
    proto = model.getvalue()
    reached = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
    if reached < config.vocab_size:
        logger.warning(
            "tokenizer: the %s text only supports %d pieces, fewer than tokenizer.vocab_size "
            "%d; using %d (lower tokenizer.vocab_size to silence this)",
            what,
            reached,
            config.vocab_size,
            reached,
        )
    return proto


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_write(path) as handle:
        handle.write(data)


__all__ = [
    "BOS_ID",
    "BOS_PIECE",
    "EOS_ID",
    "EOS_PIECE",
    "JOINT_MODEL",
    "PAD_ID",
    "PAD_PIECE",
    "SRC_MODEL",
    "TGT_MODEL",
    "UNK_ID",
    "UNK_PIECE",
    "Tokenizer",
    "TokenizerError",
    "TokenizerPair",
    "load_tokenizers",
    "train_tokenizers",
]
