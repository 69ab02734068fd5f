"""The special token ids that every tokenizer and model of this project uses.

SentencePiece models are trained with these ids (and checked for them when loaded); the
model pads with PAD, and the searches start from BOS and stop at EOS.
"""

from __future__ import annotations

from dataclasses import dataclass

PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3


@dataclass(frozen=True)
class SpecialIds:
    """The ids a search needs: padding, beginning and end of sentence."""

    pad: int = PAD_ID
    bos: int = BOS_ID
    eos: int = EOS_ID
