"""What the test modules share: small run directories (a SentencePiece trained on a few pairs
and a tiny model), tiny configs and models, and commands called in-process.

No test module imports another: a helper two of them need lives here (plain functions and
constants) or in conftest.py (fixtures).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import yaml

from transformer.cli.train import main as train_main
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

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
ENV = {  # for the commands tests start as subprocesses: this checkout's code, one thread
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
}
VOCAB_SIZE = 64
TRAIN_STEPS = 120  # enough for a tiny model to learn the twenty pairs by heart (~2 s)
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


def tiny_model(seed: int = 0, **changes: object) -> Transformer:
    """A randomly initialised tiny Transformer (deterministic for a seed)."""
    torch.manual_seed(seed)
    return Transformer(tiny_model_config(**changes))


def tiny_config(tmp_path: Path, **sections: dict) -> Path:
    """A config for a tiny model on the shipped corpus; `sections` update its sections."""
    config = {
        "model": {
            "d_model": 32,
            "num_heads": 2,
            "d_ff": 64,
            "num_encoder_layers": 1,
            "num_decoder_layers": 1,
            "dropout": 0.1,
            "share_embeddings": True,
        },
        "tokenizer": {"vocab_size": 200},
        "data": {
            "train": {"src_path": str(DATA / "train.en"), "tgt_path": str(DATA / "train.de")},
            "valid": {"src_path": str(DATA / "valid.en"), "tgt_path": str(DATA / "valid.de")},
            "cache_dir": str(tmp_path / "cache"),
        },
        "training": {
            "device": "cpu",
            "max_steps": 20,
            "batch_tokens": 600,
            "schedule": "inverse_sqrt",
            "lr": 3e-3,
            "warmup_steps": 5,
            "eval_every": 1000,
            "log_every": 5,
            "eval_bleu": False,
            "progress_bar": False,
        },
        "decoding": {"beam_size": 1, "max_len_a": 1.0, "max_len_b": 5},
    }
    for section, values in sections.items():
        config[section].update(values)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@contextlib.contextmanager
def kept_logging() -> Iterator[None]:
    """The commands set up logging for themselves; give the other tests theirs back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:], root.level = handlers, level


def call_main(entry: Callable[[list[str]], int], argv: Sequence[object]) -> int:
    """Run a command's `main` in-process, then restore the logging setup it replaced.

    `setup_logging` binds a handler to the current (captured) stderr, which pytest closes
    after the test; leaving it would break logging in later tests.
    """
    with kept_logging():
        return entry([str(arg) for arg in argv])


def pairs_config(
    directory: Path,
    model: dict | None = None,
    tokenizer: dict | None = None,
    training: dict | None = None,
    decoding: dict | None = None,
) -> Path:
    """A config (written to DIRECTORY/tiny.yaml) for a tiny model trained and validated on
    `PAIRS`, written to DIRECTORY/train.en and train.de; the sections update its defaults."""
    directory.mkdir(parents=True, exist_ok=True)
    sources, targets = zip(*PAIRS, strict=True)
    (directory / "train.en").write_text("\n".join(sources) + "\n", encoding="utf-8")
    (directory / "train.de").write_text("\n".join(targets) + "\n", encoding="utf-8")
    corpus = {"src_path": str(directory / "train.en"), "tgt_path": str(directory / "train.de")}
    config = {
        "model": dataclasses.asdict(tiny_model_config(**(model or {}))),
        "tokenizer": {"vocab_size": VOCAB_SIZE, **(tokenizer or {})},
        "data": {"train": corpus, "valid": corpus, "cache_dir": str(directory / "cache")},
        "training": {
            "device": "cpu",
            "schedule": "constant",
            "lr": 3e-3,
            "eval_every": 100000,
            "eval_bleu": False,
            "progress_bar": False,
            **(training or {}),
        },
        "decoding": {"beam_size": 2, "max_len_a": 1.0, "max_len_b": 5, **(decoding or {})},
    }
    path = directory / "tiny.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def train_tiny_run(directory: Path) -> Path:
    """A run whose tiny model, trained by transformer-train, translates `PAIRS`."""
    training = {
        "max_steps": TRAIN_STEPS,
        "max_epochs": TRAIN_STEPS,  # the twenty pairs are one batch: one step per epoch
        "max_time_minutes": 0,
        "batch_tokens": 1000,
        "warmup_steps": 10,
        "label_smoothing": 0.0,
    }
    path = pairs_config(directory, model={"num_encoder_layers": 2}, training=training)
    with kept_logging():
        assert train_main(["--config", str(path), "--run-dir", str(directory / "run")]) == 0
    return directory / "run"


def error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """The one `error:` line of a failed command (exit code 2, no traceback), checked."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every file and folder below `directory` (names relative to it), files with their bytes."""
    return {
        str(p.relative_to(directory)): p.read_bytes() if p.is_file() else None
        for p in directory.rglob("*")
    }


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    """A refused command's exit code 2 and its one `error:` line (no traceback), checked."""
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
