"""Typed configuration: one dataclass per concern, loaded from YAML and validated.

The YAML file mirrors the dataclasses 1:1::

    model:      ModelConfig       the network's shape
    tokenizer:  TokenizerConfig   SentencePiece training or an existing model
    data:       DataConfig        where the corpora are and how they are filtered
    training:   TrainingConfig    optimisation, schedule, batching, checkpoints
    decoding:   DecodingConfig    greedy / beam search settings

Unknown keys, wrong types and impossible values raise `ConfigError`, whose message names
the file and the dotted key (with a "did you mean" suggestion for typos).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from transformer.data.special_ids import PAD_ID
from transformer.errors import UserError
from transformer.files import atomic_write

# YAML 1.1 (PyYAML) reads a float without a dot, such as 5e-4, as a string.
_SCIENTIFIC = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+")

# A config holds a few hundred values; YAML anchors and aliases may repeat some of them, but
# may not multiply a 600-byte file into billions (an "alias bomb", which any deep walk or repr
# of the parsed value would then expand).
MAX_YAML_VALUES = 10_000

# Decoding ceilings. The GNMT penalty ((5 + n) / 6) ** alpha stays finite in float64 for every
# length n below 10**31 when alpha <= 10 (CTranslate2's n ** (alpha / 2), in float32, below
# 5 * 10**7), and the longest output, max_len_a * source length + max_len_b, stays a small
# integer; 10 is far beyond any useful alpha (0.6 to 2 in practice).
MAX_LENGTH_PENALTY = 10.0
MAX_LEN_A = 100.0
MAX_LEN_B = 100_000
MAX_BEAM_SIZE = 1000

# Keys that earlier versions wrote but that are no longer settings, with the one value they
# can hold: a config.yaml, checkpoint or export of an older run still loads (the key is
# dropped), and any other value is refused, naming the key.
RETIRED_KEYS: dict[str, tuple[int, str]] = {
    "model.pad_id": (PAD_ID, "the tokenizer fixes the ids (transformer/data/special_ids.py)"),
}

_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict = 2, 4, 4, 4
_SHORT.maxstring, _SHORT.maxlong, _SHORT.maxother = 40, 40, 40
SHOWN_CHARACTERS = 60


def shown(value: Any) -> str:
    """`repr(value)` in at most about 60 characters, without ever building the whole of it."""
    try:
        text = _SHORT.repr(value)
    except ValueError:  # an int too long for str() (Python's 4300-digit limit), maybe inside
        return "<a number too long to show>"
    return text if len(text) <= SHOWN_CHARACTERS else text[: SHOWN_CHARACTERS - 3] + "..."


class ConfigError(UserError, ValueError):
    """An invalid configuration value; `key` is the dotted name of the offending setting."""

    def __init__(self, key: str, message: str, source: str | None = None) -> None:
        self.key = key
        self.message = message
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {message}" if key else f"{where}{message}")

    def located(self, prefix: str = "", source: str | None = None) -> ConfigError:
        """The same error with its key prefixed by a section name, and a source if it has none."""
        key = f"{prefix}.{self.key}" if prefix and self.key else (prefix or self.key)
        return ConfigError(key, self.message, self.source or source)  # --set keeps its own


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(key, f"must be one of {', '.join(allowed)} (got {shown(value)})")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(key, f"must be {bound} (got {shown(value)})")


def _finite(section: object) -> None:
    """Every float setting of a config section (lists of floats too) must be a finite number."""
    for item in dataclasses.fields(section):  # type: ignore[arg-type]
        value = getattr(section, item.name)
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(item.name, f"must be a finite number (got {shown(value)})")


def _between(key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:  # False for NaN too
        raise ConfigError(key, f"must be between {low:g} and {high:g} (got {shown(value)})")


def check_length_penalty(value: float) -> float:
    """The one check of a GNMT length penalty alpha (config, --length-penalty, the server)."""
    if not 0 <= value <= MAX_LENGTH_PENALTY:  # False for NaN too
        raise ConfigError(
            "length_penalty",
            f"must be a finite number from 0 to {MAX_LENGTH_PENALTY:g} (got {shown(value)}); "
            "0 is no penalty, 0.6 to 2 the useful range",
        )
    return value


def _probability(key: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(key, f"must be in [0, 1) (got {shown(value)})")


@dataclass
class ModelConfig:
    """Shape of the encoder-decoder Transformer (the paper's base model by default)."""

    src_vocab_size: int | None = None  # None: taken from the tokenizer
    tgt_vocab_size: int | None = None
    d_model: int = 512
    num_heads: int = 8
    num_kv_heads: int | None = None  # None: num_heads (no grouping)
    d_ff: int = 2048
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation: str = "relu"
    norm_position: str = "post"
    norm: str = "layernorm"
    positional_encoding: str = "sinusoidal"
    max_positions: int = 1024
    tie_output_embeddings: bool = True
    share_embeddings: bool = False
    positional_layout: str = "interleaved"  # sinusoids: interleaved (paper) or halves (Marian)
    output_bias: bool = False  # a bias b_out on the logits: softmax(h W_outᵀ + b_out) (Marian)
    decoder_start: str = "bos"  # the decoder's first input: bos (ours) or pad (Marian)

    def __post_init__(self) -> None:
        _finite(self)
        for name in ("src_vocab_size", "tgt_vocab_size"):
            value = getattr(self, name)
            if value is not None:
                _positive(name, value)
        for name in ("d_model", "num_heads", "d_ff", "num_encoder_layers", "max_positions"):
            _positive(name, getattr(self, name))
        _positive("num_decoder_layers", self.num_decoder_layers)
        if self.d_model % self.num_heads != 0:
            raise ConfigError(
                "d_model",
                f"must be divisible by num_heads ({shown(self.d_model)} % {shown(self.num_heads)} "
                "!= 0)",
            )
        _probability("dropout", self.dropout)
        _probability("attention_dropout", self.attention_dropout)
        _choice("activation", self.activation, ("relu", "gelu", "silu", "swiglu"))
        _choice("positional_layout", self.positional_layout, ("interleaved", "halves"))
        _choice("decoder_start", self.decoder_start, ("bos", "pad"))
        _choice("norm_position", self.norm_position, ("post", "pre"))
        _choice("norm", self.norm, ("layernorm", "rmsnorm"))
        _choice("positional_encoding", self.positional_encoding, ("sinusoidal", "learned", "rope"))
        if self.num_kv_heads is not None:
            _positive("num_kv_heads", self.num_kv_heads)
            if self.num_heads % self.num_kv_heads:
                raise ConfigError(
                    "num_kv_heads",
                    f"must divide num_heads ({shown(self.num_heads)} % {shown(self.num_kv_heads)} "
                    "!= 0); "
                    "each group of num_heads / num_kv_heads query heads shares one K/V head",
                )
        if self.positional_encoding == "rope" and self.d_k % 2:
            raise ConfigError(
                "positional_encoding",
                "rope rotates pairs of features: d_model / num_heads must be even "
                f"(d_k = {shown(self.d_k)})",
            )
        if (
            self.share_embeddings
            and self.src_vocab_size is not None
            and self.tgt_vocab_size is not None
            and self.src_vocab_size != self.tgt_vocab_size
        ):
            raise ConfigError(
                "share_embeddings",
                "needs one shared vocabulary (src_vocab_size == tgt_vocab_size); "
                f"got {shown(self.src_vocab_size)} and {shown(self.tgt_vocab_size)}",
            )

    @property
    def d_k(self) -> int:
        """Width of one attention head: d_model / num_heads."""
        return self.d_model // self.num_heads


@dataclass
class SamplingConfig:
    """Subword regularization: each epoch the training pairs are segmented by sampling.

    unigram: a segmentation drawn with probability proportional to P(x)^alpha, from the
    whole lattice (nbest_size -1) or from the nbest_size best (Kudo, 2018); bpe: BPE-dropout,
    each merge skipped with probability alpha (Provilkov et al., 2020; nbest_size unused).
    """

    alpha: float = 0.1
    nbest_size: int = -1

    def __post_init__(self) -> None:
        _finite(self)
        if not self.alpha > 0:  # False for NaN too
            raise ConfigError("alpha", f"must be > 0 (got {shown(self.alpha)})")
        if self.nbest_size == 0 or self.nbest_size < -1:
            raise ConfigError(
                "nbest_size",
                f"must be -1 (sample from the whole lattice) or >= 1 (from the nbest_size "
                f"best; 1: no sampling) (got {shown(self.nbest_size)})",
            )


@dataclass
class TokenizerConfig:
    """SentencePiece: trained on the training data into the run directory, or given files."""

    kind: str = "unigram"
    vocab_size: int = 8000
    joint: bool = True
    character_coverage: float = 1.0
    max_training_sentences: int = 1_000_000
    model_file: str | None = None
    src_model_file: str | None = None
    tgt_model_file: str | None = None
    sampling: SamplingConfig | None = None  # subword regularization of training; None: off

    def __post_init__(self) -> None:
        _finite(self)
        _choice("kind", self.kind, ("unigram", "bpe"))
        if self.sampling is not None and self.kind == "bpe" and self.sampling.alpha > 1:
            raise ConfigError(
                "sampling.alpha",
                "is BPE-dropout's probability of skipping a merge for kind bpe: it must be in "
                f"(0, 1] (got {shown(self.sampling.alpha)})",
            )
        if self.vocab_size < 8:
            raise ConfigError("vocab_size", f"must be >= 8 (got {shown(self.vocab_size)})")
        if not 0.0 < self.character_coverage <= 1.0:
            raise ConfigError(
                "character_coverage", f"must be in (0, 1] (got {shown(self.character_coverage)})"
            )
        _positive("max_training_sentences", self.max_training_sentences)
        if self.model_file and (self.src_model_file or self.tgt_model_file):
            raise ConfigError(
                "model_file", "give either model_file or src_model_file + tgt_model_file"
            )
        if bool(self.src_model_file) != bool(self.tgt_model_file):
            raise ConfigError("src_model_file", "src_model_file and tgt_model_file go together")


@dataclass
class CorpusConfig:
    """One split of a parallel corpus: plain-text pair, a table file, or a Hub dataset."""

    format: str = "text"
    src_path: str = ""
    tgt_path: str = ""
    path: str = ""
    name: str = ""
    subset: str | None = None
    split: str = "train"
    src_field: str = "src"
    tgt_field: str = "tgt"

    def __post_init__(self) -> None:
        _finite(self)
        _choice("format", self.format, ("text", "table", "hub"))
        if self.format == "text" and not (self.src_path and self.tgt_path):
            raise ConfigError("src_path", "format 'text' needs src_path and tgt_path")
        if self.format == "table" and not self.path:
            raise ConfigError("path", "format 'table' needs path (a .tsv, .csv or .jsonl file)")
        if self.format == "hub" and not self.name:
            raise ConfigError("name", "format 'hub' needs the dataset name")


@dataclass
class DataConfig:
    """Training and validation corpora and the length filter applied to training pairs."""

    train: CorpusConfig | None = None
    valid: CorpusConfig | None = None
    max_length: int = 128
    max_length_ratio: float = 3.0
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        _finite(self)
        _positive("max_length", self.max_length)
        if self.max_length_ratio < 1.0:
            raise ConfigError(
                "max_length_ratio", f"must be >= 1 (got {shown(self.max_length_ratio)})"
            )


@dataclass
class TrainingConfig:
    """Optimisation, batching, validation and checkpointing."""

    seed: int = 1
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    fast: bool = True  # the model's fast paths (transformer.model.fast); false: the paper's code
    max_steps: int = 100_000
    max_epochs: int = 100
    max_time_minutes: float = 0.0
    batch_tokens: int = 4096
    accumulate_steps: int = 1
    optimizer_betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    optimizer_eps: float = 1e-9
    weight_decay: float = 0.0
    schedule: str = "noam"
    lr: float = 1e-3
    lr_scale: float = 1.0
    warmup_steps: int = 4000
    min_lr: float = 0.0
    label_smoothing: float = 0.1
    clip_grad_norm: float = 1.0
    max_bad_steps: int = 5  # stop after this many steps in a row with a non-finite loss or gradient
    log_every: int = 100
    eval_every: int = 1000
    save_every: int = 0
    eval_bleu: bool = True
    eval_samples: int = 3
    keep_best: int = 3
    early_stopping_patience: int = 0
    progress_bar: bool = True
    tensorboard: bool = False  # TensorBoard logs in <run>/tensorboard/ (the tensorboard extra)
    # The checkpoint this run's weights started from (written by transformer-train
    # --init-from, which it means when a new run's config gives it); null: a fresh model.
    init_from: str | None = None
    # Exponential moving average of the weights, updated after each optimizer step; validation,
    # best.pt and the weights every checkpoint offers to translation are the average. 0: off.
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        _finite(self)
        _probability("ema_decay", self.ema_decay)
        _choice("precision", self.precision, ("fp32", "bf16", "fp16"))
        _choice("schedule", self.schedule, ("noam", "inverse_sqrt", "cosine", "constant"))
        for name in ("max_steps", "max_epochs", "batch_tokens", "accumulate_steps"):
            _positive(name, getattr(self, name))
        _positive("max_time_minutes", self.max_time_minutes, allow_zero=True)
        for name in ("log_every", "eval_every"):
            _positive(name, getattr(self, name))
        _positive("lr", self.lr)
        _positive("lr_scale", self.lr_scale)
        _positive("warmup_steps", self.warmup_steps, allow_zero=True)
        _positive("min_lr", self.min_lr, allow_zero=True)
        _positive("optimizer_eps", self.optimizer_eps)
        _positive("weight_decay", self.weight_decay, allow_zero=True)
        _positive("clip_grad_norm", self.clip_grad_norm, allow_zero=True)
        _positive("max_bad_steps", self.max_bad_steps)
        _positive("save_every", self.save_every, allow_zero=True)
        _positive("keep_best", self.keep_best, allow_zero=True)
        _positive("eval_samples", self.eval_samples, allow_zero=True)
        _positive("early_stopping_patience", self.early_stopping_patience, allow_zero=True)
        _probability("label_smoothing", self.label_smoothing)
        if len(self.optimizer_betas) != 2 or not all(0 <= b < 1 for b in self.optimizer_betas):
            raise ConfigError(
                "optimizer_betas",
                f"must be two numbers in [0, 1) (got {shown(self.optimizer_betas)})",
            )
        if self.schedule == "noam" and self.warmup_steps == 0:
            raise ConfigError("warmup_steps", "the noam schedule needs warmup_steps > 0")


@dataclass
class DecodingConfig:
    """Greedy (beam_size 1) or beam search; output length max_len_a * source_length + max_len_b.

    Bounded so that no length or score can overflow: beam_size <= MAX_BEAM_SIZE,
    0 <= length_penalty <= MAX_LENGTH_PENALTY, max_len_a <= MAX_LEN_A, max_len_b <= MAX_LEN_B.
    """

    beam_size: int = 5
    nbest: int = 1
    length_penalty: float = 0.6
    max_len_a: float = 1.5
    max_len_b: int = 10
    min_length: int = 0
    batch_tokens: int = 4000

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            self.check_setting(item.name, getattr(self, item.name))
        _finite(self)
        if self.nbest > self.beam_size:
            raise ConfigError(
                "nbest", f"must be <= beam_size ({shown(self.nbest)} > {shown(self.beam_size)})"
            )
        if self.max_len_a == 0 and self.max_len_b == 0:
            raise ConfigError("max_len_b", "max_len_a and max_len_b cannot both be 0")

    @staticmethod
    def check_setting(name: str, value: Any) -> None:
        """The bounds of one decoding setting on its own, a ConfigError naming it if outside.

        The one home of these bounds: a config, a command-line flag and a server request are
        all checked here (a flag before the run's config is read, as a server field is before
        it is merged with the server's defaults); how settings relate (nbest <= beam_size) is
        checked when a whole `DecodingConfig` is built.
        """
        if name == "beam_size":
            _between(name, value, 1, MAX_BEAM_SIZE)
        elif name in ("nbest", "batch_tokens"):
            _positive(name, value)
        elif name == "length_penalty":
            check_length_penalty(value)
        elif name == "max_len_a":
            _between(name, value, 0, MAX_LEN_A)
        elif name == "max_len_b":
            _between(name, value, 0, MAX_LEN_B)
        elif name == "min_length":
            _positive(name, value, allow_zero=True)
        else:
            raise ValueError(f"{name!r} is not a decoding setting")


@dataclass
class Config:
    """A whole experiment: what the YAML file describes and the run directory keeps."""

    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)


# --------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(
        tp, str(tp)
    )


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting int->float where harmless."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return _convert(value, arg, key)  # its own error names the key inside
            try:
                return _convert(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(key, f"expected {_type_name(tp)}, got {shown(value)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(key, f"expected {_type_name(tp)}, got {shown(value)}")
        (item_type,) = typing.get_args(tp)
        return [_convert(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping of settings, got {shown(value)}")
        return _build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            return float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - every annotation above is covered
        raise TypeError(f"unsupported config type {tp}")
    raise ConfigError(key, f"expected {_type_name(tp)}, got {shown(value)}")


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, naming the dotted key of any problem."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        name = key if isinstance(key, str) and len(key) <= 40 else shown(key)
        dotted = f"{prefix}.{name}" if prefix else name
        if dotted in RETIRED_KEYS:
            _check_retired(dotted, value)
            continue
        if key not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(dotted, f"unknown key{hint}")
        kwargs[key] = _convert(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except ConfigError as error:
        raise error.located(prefix) from None


def _check_retired(dotted: str, value: Any) -> None:
    """A retired key may only hold the value it always had; anything else is a ConfigError."""
    fixed, reason = RETIRED_KEYS[dotted]
    if not _is_retired_value(dotted, value):
        raise ConfigError(
            dotted,
            f"is not a setting: {reason}, and it is {shown(fixed)}; remove the key "
            f"(got {shown(value)})",
        )


def _is_retired_value(dotted: str, value: Any) -> bool:
    """Whether `value` is what the retired key `dotted` held (None: the key is absent)."""
    fixed, _ = RETIRED_KEYS[dotted]
    return value is None or (type(value) is type(fixed) and value == fixed)


def config_from_dict(values: dict[str, Any], source: str | None = None) -> Config:
    """Build and validate a `Config` from a nested mapping (e.g. parsed YAML)."""
    try:
        return _build(Config, values)
    except ConfigError as error:
        raise error.located(source=source) from None


def config_to_dict(config: Config) -> dict[str, Any]:
    """The nested mapping that `config_from_dict` turns back into `config`."""
    return dataclasses.asdict(config)


def config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two config mappings, as "key: old -> new"."""
    changes = []
    for key in sorted(old.keys() | new.keys()):
        dotted = f"{prefix}.{key}" if prefix else key
        before, after = old.get(key), new.get(key)
        if dotted in RETIRED_KEYS and all(_is_retired_value(dotted, v) for v in (before, after)):
            continue  # an older checkpoint's model.pad_id: 0 is no change
        if isinstance(before, dict) and isinstance(after, dict):
            changes += config_changes(before, after, dotted)
        elif before != after:
            changes.append(f"{dotted}: {before} -> {after}")
    return changes


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents whose aliases expand past MAX_YAML_VALUES."""

    def compose_document(self) -> yaml.Node:
        """The document's node graph, checked before anything is built from it."""
        node = super().compose_document()
        _expanded_size(node, "", {}, set())
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """A value PyYAML cannot build (a 5000-digit integer, month 13) as a ConfigError."""
        try:
            return super().construct_object(node, deep)
        except ConfigError:
            raise
        except ValueError as error:
            line = node.start_mark.line + 1
            value = shown(node.value) if isinstance(node, yaml.ScalarNode) else "a value"
            reason = str(error).split(";")[0][:80]
            message = f"line {line}: cannot read {value} ({reason})"
            raise ConfigError("", message) from None


def _expanded_size(node: yaml.Node, key: str, sizes: dict[int, int], open_: set[int]) -> int:
    """How many values `node` holds with every alias written out; ConfigError past the bound.

    Each node is counted once (`sizes`), so the walk is as long as the file, not its expansion.
    The error names the innermost key whose value is too large.
    """
    if id(node) in sizes:
        return sizes[id(node)]
    line = node.start_mark.line + 1
    if id(node) in open_:
        raise ConfigError(key, f"a YAML alias (line {line}) holds itself; write the value out")
    if isinstance(node, yaml.SequenceNode):
        children = [(key, item) for item in node.value]
    elif isinstance(node, yaml.MappingNode):
        children = []
        for name, value in node.value:
            label = name.value if isinstance(name, yaml.ScalarNode) else "?"
            label = label if len(label) <= 40 else shown(label)
            children += [(key, name), (f"{key}.{label}" if key else label, value)]
    else:
        children = []
    open_.add(id(node))
    total = 1
    for child_key, child in children:
        total += _expanded_size(child, child_key, sizes, open_)
        if total > MAX_YAML_VALUES:
            raise ConfigError(
                key,
                f"its YAML anchors and aliases (from line {line}) expand to more than "
                f"{MAX_YAML_VALUES:,} values; a config needs no such repetition: write the "
                "values out",
            )
    open_.discard(id(node))
    sizes[id(node)] = total
    return total


def _load_yaml(text: str) -> Any:
    """Parse YAML text as a config does: safe types only, aliases bounded."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise ConfigError("", "YAML nested too deeply; a config is a few levels deep") from None


def parse_override(text: str) -> tuple[str, Any]:
    """Split one `key=value` override; the value is parsed as YAML (so 5e-4 is a float)."""
    if "=" not in text:
        raise ConfigError("", f"override {shown(text)} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError("", f"override {shown(text)} has no key before '='")
    try:
        value = _load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    except ConfigError as error:
        where = f"{key}.{error.key}" if error.key else key
        raise ConfigError(where, error.message, "--set") from None
    return key, value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `values` with each `a.b.c=value` override applied."""
    result = _deep_copy(values)
    for text in overrides:
        key, value = parse_override(text)
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(
                    key, f"cannot set a key inside the non-mapping {shown(part)}", "--set"
                )
            node = child
        node[parts[-1]] = value
    return result


def _deep_copy(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in values.items()}


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a YAML config file, apply dotted overrides, and validate everything."""
    return config_from_dict(load_config_values(path, overrides), str(path))


def load_config_values(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The mapping a YAML config file and its dotted overrides give, before validation.

    What a user wrote, without the defaults: `transformer-train --init-from` tells the keys
    a config gives from those it leaves to the parent run.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError("", "config file not found; check the path", source)
    try:
        values = _load_yaml(path.read_text(encoding="utf-8"))
    except ConfigError as error:
        raise error.located(source=source) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError("", f"YAML syntax error at {line}{problem}", source) from None
    except UnicodeDecodeError:
        raise ConfigError("", "not a UTF-8 text file", source) from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError("", "the top level must be a mapping of sections", source)
    if overrides:
        try:
            values = apply_overrides(values, overrides)
        except ConfigError as error:
            raise error.located(source=source) from None
    return values


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (what `load_config` reads back), atomically."""
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    with atomic_write(path) as handle:
        handle.write(text.encode("utf-8"))
