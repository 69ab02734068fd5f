"""Small run directories for tests: a SentencePiece trained on a few pairs and a tiny model."""

from __future__ import annotations

from pathlib import Path

import torch

from transformer.config import (
    Config,
    DecodingConfig,
    ModelConfig,
    TokenizerConfig,
    config_to_dict,
    save_config,
)
from transformer.data.tokenizer import train_tokenizers
from transformer.model import Transformer
from transformer.training.checkpoint import save_checkpoint

VOCAB_SIZE = 64
PAIRS = [
    ("how are you", "wie geht es dir"),
    ("the house is small", "das haus ist klein"),
    ("the house is big", "das haus ist gross"),
    ("i am tired", "ich bin muede"),
    ("we are at home", "wir sind zu hause"),
    ("the dog is sleeping", "der hund schlaeft"),
    ("the cat drinks milk", "die katze trinkt milch"),
    ("good morning", "guten morgen"),
    ("good night", "gute nacht"),
    ("thank you very much", "vielen dank"),
    ("where is the station", "wo ist der bahnhof"),
    ("i like books", "ich mag buecher"),
    ("she reads a book", "sie liest ein buch"),
    ("he writes a letter", "er schreibt einen brief"),
    ("the weather is nice today", "das wetter ist heute schoen"),
    ("we eat bread and cheese", "wir essen brot und kaese"),
    ("my brother plays football", "mein bruder spielt fussball"),
    ("the children are quiet", "die kinder sind leise"),
    ("it is very cold outside", "es ist sehr kalt draussen"),
    ("can you help me", "kannst du mir helfen"),
]


def tiny_model_config(**changes: object) -> ModelConfig:
    """A model small enough for unit tests, with the tiny tokenizer's vocabulary."""
    values: dict = dict(
        src_vocab_size=VOCAB_SIZE,
        tgt_vocab_size=VOCAB_SIZE,
        d_model=32,
        num_heads=2,
        d_ff=64,
        num_encoder_layers=1,
        num_decoder_layers=2,
        dropout=0.0,
        max_positions=64,
    )
    values.update(changes)
    return ModelConfig(**values)


def make_tiny_run(run_dir: Path, seed: int = 0, **model_changes: object) -> Path:
    """A complete run directory with a random model: config.yaml, tokenizer/, best.pt, last.pt."""
    config = Config(
        model=tiny_model_config(**model_changes),
        tokenizer=TokenizerConfig(vocab_size=VOCAB_SIZE, joint=True),
        decoding=DecodingConfig(beam_size=2, max_len_a=1.0, max_len_b=3, batch_tokens=4000),
    )
    run_dir.mkdir(parents=True)
    save_config(config, run_dir / "config.yaml")
    src, tgt = zip(*PAIRS, strict=True)
    tokenizers = train_tokenizers(config.tokenizer, list(src), list(tgt), run_dir / "tokenizer")
    assert tokenizers.src.vocab_size == VOCAB_SIZE, "the corpus must fill the vocabulary"
    torch.manual_seed(seed)
    state = {
        "model": Transformer(config.model).state_dict(),
        "config": config_to_dict(config),
        "step": 1,
    }
    for name in ("best.pt", "last.pt"):
        save_checkpoint(state, run_dir / "checkpoints" / name)
    return run_dir
