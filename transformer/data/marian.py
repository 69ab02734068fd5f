"""Marian's (OPUS-MT's) tokenizer files, read with this project's special ids.

A Hugging Face MarianMT folder segments with two SentencePiece models, ``source.spm`` and
``target.spm``, and maps the pieces of both onto one id space through ``vocab.json``, where
``</s>`` is 0, ``<unk>`` 1 and ``<pad>`` the last id. Here the same pieces get this project's
ids (PAD 0, UNK 1, BOS 2, EOS 3, then the other pieces in vocab.json's order; a vocabulary
without ``<s>`` gets it as an extra id, which Marian's models never read nor predict), so
that a model imported from such a folder reads and writes the ids every search here expects.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from transformer.data.special_ids import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from transformer.errors import UserError

SOURCE_SPM = "source.spm"
TARGET_SPM = "target.spm"
VOCAB_JSON = "vocab.json"
TARGET_VOCAB_JSON = "target_vocab.json"  # only with separate vocabularies (separate_vocabs)
MARIAN_FILES = (SOURCE_SPM, TARGET_SPM, VOCAB_JSON)
SPECIAL_PIECES = {PAD_ID: "<pad>", UNK_ID: "<unk>", BOS_ID: "<s>", EOS_ID: "</s>"}
_SKIPPED_IN_DECODE = frozenset({PAD_ID, BOS_ID, EOS_ID})


class MarianVocabularyError(UserError, ValueError):
    """A Marian tokenizer file that is missing or cannot be read."""


def read_marian_vocabulary(path: Path) -> dict[str, int]:
    """vocab.json: piece -> Marian id, checked to be a complete numbering with the specials."""
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MarianVocabularyError(
            f"{path} not found (a Marian folder has {VOCAB_JSON})"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MarianVocabularyError(f"{path} is not a readable JSON vocabulary ({error})") from None
    if not isinstance(vocab, dict) or not all(
        isinstance(k, str) and isinstance(v, int) for k, v in vocab.items()
    ):
        raise MarianVocabularyError(f"{path} must map each piece to an integer id")
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise MarianVocabularyError(f"{path}: the ids must be 0 .. {len(vocab) - 1}, each once")
    for piece in ("<pad>", "<unk>", "</s>"):
        if piece not in vocab:
            raise MarianVocabularyError(f"{path} has no {piece} piece")
    return vocab


def our_pieces(vocab: dict[str, int]) -> list[str]:
    """The pieces in this project's id order: the four specials, then vocab.json's order."""
    specials = list(SPECIAL_PIECES.values())
    ordered = sorted(vocab, key=vocab.__getitem__)
    return specials + [piece for piece in ordered if piece not in specials]


def _load_spm(path: Path) -> spm.SentencePieceProcessor:
    try:
        proto = path.read_bytes()
    except OSError as error:
        raise MarianVocabularyError(f"cannot read {path}: {error.strerror or error}") from None
    processor = spm.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(proto)
    except (RuntimeError, OSError):
        raise MarianVocabularyError(f"{path} is not a SentencePiece model file") from None
    return processor


class MarianTokenizer:
    """One side of a Marian tokenizer: its SentencePiece model and the shared vocabulary."""

    def __init__(self, spm_path: str | Path, vocab_path: str | Path) -> None:
        self.path = Path(spm_path)
        self.vocab_path = Path(vocab_path)
        self._sp = _load_spm(self.path)
        self.pieces = our_pieces(read_marian_vocabulary(self.vocab_path))
        self._ids = {piece: i for i, piece in enumerate(self.pieces)}

    @property
    def vocab_size(self) -> int:
        """Number of ids, special ones included."""
        return len(self.pieces)

    @property
    def model_proto(self) -> bytes:
        """The SentencePiece model and the vocabulary, e.g. to fingerprint a cache."""
        return self._sp.serialized_model_proto() + self.vocab_path.read_bytes()

    def encode(self, text: str) -> list[int]:
        """Ids of one text's pieces (pieces outside vocab.json are UNK), without BOS or EOS."""
        return [self._ids.get(piece, UNK_ID) for piece in self._sp.encode(text, out_type=str)]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` for many texts."""
        pieces = self._sp.encode(list(texts), out_type=str)
        return [[self._ids.get(piece, UNK_ID) for piece in line] for line in pieces]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`; PAD, BOS and EOS are skipped wherever they are."""
        kept = [self.pieces[int(i)] for i in ids if int(i) not in _SKIPPED_IN_DECODE]
        return self._sp.decode_pieces(kept)

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        """`decode` for many id sequences."""
        return [self.decode(ids) for ids in batch]

    def id_to_piece(self, piece_id: int) -> str:
        """The piece string of one id."""
        return self.pieces[piece_id]

    def __repr__(self) -> str:
        return f"MarianTokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


def is_marian_directory(directory: Path) -> bool:
    """Whether `directory` holds Marian's tokenizer files (any of them)."""
    return any((directory / name).exists() for name in MARIAN_FILES)


def load_marian_tokenizers(directory: Path) -> tuple[MarianTokenizer, MarianTokenizer]:
    """The source and target sides of the Marian tokenizer files in `directory`: one shared
    vocab.json, or vocab.json for the source and target_vocab.json for the target."""
    for name in MARIAN_FILES:
        if not (directory / name).is_file():
            raise MarianVocabularyError(
                f"{directory} holds Marian tokenizer files but no {name} "
                f"(it needs {', '.join(MARIAN_FILES)})"
            )
    vocab, target_vocab = directory / VOCAB_JSON, directory / TARGET_VOCAB_JSON
    if not target_vocab.is_file():
        target_vocab = vocab
    return MarianTokenizer(directory / SOURCE_SPM, vocab), MarianTokenizer(
        directory / TARGET_SPM, target_vocab
    )
