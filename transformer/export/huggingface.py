"""A Hugging Face MarianMT folder (OPUS-MT) as a run directory (`transformer-import`).

The folder is what `MarianMTModel.save_pretrained` and `MarianTokenizer.save_pretrained`
write: config.json, model.safetensors (or pytorch_model.bin), source.spm, target.spm and
vocab.json. The run holds config.yaml, tokenizer/ (the three tokenizer files as they are)
and checkpoints/best.pt + last.pt; every command that reads a run reads it.

Marian's layers are the paper's post-norm layers; what differs is a model switch here:
SiLU ("swish") in the feed-forward network (`model.activation: silu`), sines and cosines in
two halves (`model.positional_layout: halves`), a bias on the logits (`model.output_bias`)
and the decoder starting from PAD (`model.decoder_start: pad`). Marian's ids (``</s>`` 0,
``<unk>`` 1, ``<pad>`` last) become ours (`transformer.data.marian`): the embedding, output
and bias rows are permuted to match; a vocabulary without ``<s>`` gets it as an extra row
(zero embedding, logit bias `NEVER_BIAS`), which the model never reads and never predicts.
What the model cannot represent is refused, naming the config.json field.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from transformer.config import Config, ModelConfig, config_to_dict, save_config
from transformer.data.marian import (
    MARIAN_FILES,
    TARGET_VOCAB_JSON,
    VOCAB_JSON,
    our_pieces,
    read_marian_vocabulary,
)
from transformer.errors import UserError
from transformer.files import atomic_directory
from transformer.model.transformer import build_model
from transformer.training.checkpoint import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    TOKENIZER_DIR,
    save_checkpoint,
)

logger = logging.getLogger(__name__)

CONFIG_JSON = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# exp(-100) is below float32's smallest normal number: a row the model never predicts, while
# a label-smoothed fine-tuning loss stays finite.
NEVER_BIAS = -100.0
ACTIVATIONS = {"swish": "silu", "silu": "silu", "relu": "relu", "gelu": "gelu"}


class HuggingFaceError(UserError, ValueError):
    """A Hugging Face folder that is missing, damaged, or not representable here."""


def _refuse(field: str, value: Any, why: str) -> HuggingFaceError:
    return HuggingFaceError(f"{CONFIG_JSON}: {field} is {value!r}; {why}")


def model_config_from_marian(
    hf: dict[str, Any], src_vocab_size: int, tgt_vocab_size: int, separate: bool = False
) -> ModelConfig:
    """Our ModelConfig for a MarianConfig (config.json), or an error naming the field;
    `separate`: the folder has a target vocabulary of its own (target_vocab.json)."""
    if hf.get("model_type") != "marian":
        raise _refuse("model_type", hf.get("model_type"), "only marian models are imported")
    activation = hf.get("activation_function", "gelu")
    if activation not in ACTIVATIONS:
        raise _refuse("activation_function", activation, f"supported: {', '.join(ACTIVATIONS)}")
    must = {
        "scale_embedding": True,  # ours multiply embeddings by √d_model, always
        "normalize_before": False,  # post-norm, as Marian's layers are
        "normalize_embedding": False,  # no LayerNorm on the embeddings (BART has one)
        "add_bias_logits": False,
        "tie_word_embeddings": True,
        "static_position_embeddings": True,
    }
    defaults = {"scale_embedding": False}
    for field, wanted in must.items():
        value = hf.get(field, defaults.get(field, wanted))
        if value != wanted:
            raise _refuse(field, value, f"only {str(wanted).lower()} can be represented")
    for ours, theirs in (("encoder_attention_heads", "decoder_attention_heads"),
                         ("encoder_ffn_dim", "decoder_ffn_dim")):  # fmt: skip
        if hf.get(ours) != hf.get(theirs):
            raise _refuse(theirs, hf.get(theirs), f"must equal {ours} ({hf.get(ours)!r})")
    decoder_vocab = hf.get("decoder_vocab_size")
    if not separate and decoder_vocab not in (None, hf.get("vocab_size")):
        raise _refuse("decoder_vocab_size", decoder_vocab, "must equal vocab_size")
    shared = bool(hf.get("share_encoder_decoder_embeddings", True))
    if separate and shared:
        raise _refuse("share_encoder_decoder_embeddings", True, f"not with {TARGET_VOCAB_JSON}")
    try:
        return ModelConfig(
            src_vocab_size=src_vocab_size,
            tgt_vocab_size=tgt_vocab_size,
            d_model=int(hf["d_model"]),
            num_heads=int(hf["encoder_attention_heads"]),
            d_ff=int(hf["encoder_ffn_dim"]),
            num_encoder_layers=int(hf["encoder_layers"]),
            num_decoder_layers=int(hf["decoder_layers"]),
            dropout=float(hf.get("dropout", 0.1)),
            attention_dropout=float(hf.get("attention_dropout", 0.0)),
            activation=ACTIVATIONS[activation],
            max_positions=int(hf.get("max_position_embeddings", 1024)),
            tie_output_embeddings=True,
            share_embeddings=shared,
            positional_layout="halves",
            output_bias=True,
            decoder_start="pad",
        )
    except KeyError as error:
        raise HuggingFaceError(f"{CONFIG_JSON} has no {error.args[0]} field") from None
    except (TypeError, ValueError) as error:
        raise HuggingFaceError(f"{CONFIG_JSON}: {error}") from None


def layer_names(config: ModelConfig) -> list[tuple[str, str]]:
    """(our parameter prefix, Marian's) for every Linear and LayerNorm of the layers."""
    pairs = []
    for i in range(config.num_encoder_layers):
        ours, theirs = f"encoder.layers.{i}.", f"model.encoder.layers.{i}."
        pairs += [
            (ours + "self_attn.out_proj", theirs + "self_attn.out_proj"),
            (ours + "attn_sublayer.norm", theirs + "self_attn_layer_norm"),
            (ours + "feed_forward.linear1", theirs + "fc1"),
            (ours + "feed_forward.linear2", theirs + "fc2"),
            (ours + "ff_sublayer.norm", theirs + "final_layer_norm"),
        ]
    for i in range(config.num_decoder_layers):
        ours, theirs = f"decoder.layers.{i}.", f"model.decoder.layers.{i}."
        pairs += [
            (ours + "self_attn.out_proj", theirs + "self_attn.out_proj"),
            (ours + "self_attn_sublayer.norm", theirs + "self_attn_layer_norm"),
            (ours + "cross_attn.out_proj", theirs + "encoder_attn.out_proj"),
            (ours + "cross_attn_sublayer.norm", theirs + "encoder_attn_layer_norm"),
            (ours + "feed_forward.linear1", theirs + "fc1"),
            (ours + "feed_forward.linear2", theirs + "fc2"),
            (ours + "ff_sublayer.norm", theirs + "final_layer_norm"),
        ]
    return pairs


def attention_names(config: ModelConfig) -> list[tuple[str, str]]:
    """(our stacked qkv_proj, Marian's attention prefix) for every attention."""
    pairs = [(f"encoder.layers.{i}.self_attn.qkv_proj", f"model.encoder.layers.{i}.self_attn")
             for i in range(config.num_encoder_layers)]  # fmt: skip
    for i in range(config.num_decoder_layers):
        ours, theirs = f"decoder.layers.{i}.", f"model.decoder.layers.{i}."
        pairs += [
            (ours + "self_attn.qkv_proj", theirs + "self_attn"),
            (ours + "cross_attn.qkv_proj", theirs + "encoder_attn"),
        ]
    return pairs


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(str(path))
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any parse failure is a damaged file
            raise HuggingFaceError(f"{path} cannot be read ({type(error).__name__})") from None
    raise HuggingFaceError(f"{folder} has no weights ({' or '.join(WEIGHT_FILES)})")


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_JSON
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HuggingFaceError(
            f"{path} not found: is {folder} a Hugging Face model folder?"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HuggingFaceError(f"{path} is not readable JSON ({error})") from None
    if not isinstance(hf, dict):
        raise HuggingFaceError(f"{path} must hold a JSON object")
    return hf


def _side(matrix: torch.Tensor, pieces: list[str], vocab: dict[str, int]) -> torch.Tensor:
    """Rows of a Marian matrix (Marian id order) in our id order; a piece that the
    vocabulary lacks (<s>) gets a row of zeros. (V_marian, ...) -> (V_ours, ...)."""
    rows = torch.tensor([vocab.get(piece, -1) for piece in pieces])  # Marian id of each of ours
    taken = matrix[rows.clamp(min=0)]
    taken[rows < 0] = 0.0
    return taken


def marian_state_dict(
    hf: dict[str, Any],
    weights: dict[str, torch.Tensor],
    vocab: dict[str, int],
    target_vocab: dict[str, int] | None = None,
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Our config and state dict from Marian's config, weights and vocabularies (the target's
    own with separate vocabularies; None: the shared one)."""
    tgt_vocab = vocab if target_vocab is None else target_vocab
    pieces, tgt_pieces = our_pieces(vocab), our_pieces(tgt_vocab)
    config = model_config_from_marian(hf, len(pieces), len(tgt_pieces), target_vocab is not None)
    for field, piece in (("pad_token_id", "<pad>"), ("eos_token_id", "</s>")):
        for name, numbering in ((VOCAB_JSON, vocab), (TARGET_VOCAB_JSON, tgt_vocab)):
            if hf.get(field) != numbering[piece]:
                raise _refuse(
                    field, hf.get(field), f"{name} gives {piece} the id {numbering[piece]}"
                )
    start = hf.get("decoder_start_token_id", hf.get("pad_token_id"))
    if start == tgt_vocab.get("<s>") and start is not None:
        config.decoder_start = "bos"
    elif start != tgt_vocab["<pad>"]:
        raise _refuse("decoder_start_token_id", start, "only the id of <pad> or <s> is supported")

    def get(name: str) -> torch.Tensor:
        try:
            return weights[name].float()
        except KeyError:
            raise HuggingFaceError(f"the weights have no {name}") from None

    if config.share_embeddings:
        source = target = get("model.shared.weight")
    else:  # an embedding matrix for each side
        source = get("model.encoder.embed_tokens.weight")
        target = get("model.decoder.embed_tokens.weight")
    for matrix, numbering, field in ((source, vocab, "vocab_size"),
                                     (target, tgt_vocab, "decoder_vocab_size")):  # fmt: skip
        if matrix.size(0) != len(numbering):
            raise _refuse(field, hf.get(field), f"the vocabulary has {len(numbering)} pieces")
    marian_bias = weights.get("final_logits_bias", torch.zeros(1, len(tgt_vocab)))
    bias = _side(marian_bias.float().reshape(-1, 1), tgt_pieces, tgt_vocab).reshape(-1)
    bias[[piece not in tgt_vocab for piece in tgt_pieces]] = NEVER_BIAS
    target = _side(target, tgt_pieces, tgt_vocab)
    state = {
        "src_embed.embedding.weight": _side(source, pieces, vocab),
        "tgt_embed.embedding.weight": target,
        "output_proj.weight": target,
        "output_proj.bias": bias,
    }
    for ours, theirs in layer_names(config):
        state[ours + ".weight"], state[ours + ".bias"] = (
            get(theirs + ".weight"),
            get(theirs + ".bias"),
        )
    for ours, theirs in attention_names(config):
        for part in ("weight", "bias"):
            state[f"{ours}.{part}"] = torch.cat(
                [get(f"{theirs}.{p}_proj.{part}") for p in ("q", "k", "v")]
            )
    return config, state


def import_marian(folder: str | Path, run_dir: str | Path) -> ModelConfig:
    """Write the run directory `run_dir` for the MarianMT folder `folder`; returns its model."""
    folder, run_dir = Path(folder), Path(run_dir)
    if not folder.is_dir():
        raise HuggingFaceError(f"{folder} is not a directory (give a Hugging Face MarianMT folder)")
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise HuggingFaceError(f"{run_dir} exists and is not empty; give a new run directory")
    hf = _read_config(folder)
    for name in MARIAN_FILES:
        if not (folder / name).is_file():
            raise HuggingFaceError(f"{folder / name} not found (a Marian folder has {name})")
    vocab = read_marian_vocabulary(folder / VOCAB_JSON)
    separate = (folder / TARGET_VOCAB_JSON).is_file()
    target_vocab = read_marian_vocabulary(folder / TARGET_VOCAB_JSON) if separate else None
    model_config, state = marian_state_dict(hf, _read_weights(folder), vocab, target_vocab)
    model = build_model(model_config, fast=False)
    model.load_state_dict(state)  # every parameter given, each of the right shape
    config = Config(model=model_config)
    config.tokenizer.joint = not separate
    files = [*MARIAN_FILES, *([TARGET_VOCAB_JSON] if separate else [])]
    checkpoint = {"model": model.state_dict(), "config": config_to_dict(config), "step": 0}

    def write(directory: Path) -> None:
        save_config(config, directory / CONFIG_FILE)
        (directory / TOKENIZER_DIR).mkdir()
        for name in files:
            shutil.copyfile(folder / name, directory / TOKENIZER_DIR / name)
        for name in ("best.pt", "last.pt"):
            save_checkpoint(checkpoint, directory / CHECKPOINT_DIR / name)

    atomic_directory(run_dir, write)
    logger.info("imported %s into %s", folder, run_dir)
    return model_config
