"""A run directory's model as a Hugging Face MarianMT folder (`transformer-export --format hf`).

The folder is what `MarianMTModel.from_pretrained` and `MarianTokenizer.from_pretrained` load:
config.json, generation_config.json, model.safetensors, source.spm, target.spm, vocab.json
and the tokenizer's own files, plus export.json (what was exported: the checkpoint, the run's
config, the files). The inverse of `transformer.export.huggingface` (the import): our ids
become Marian's (``</s>`` 0, ``<unk>`` 1, the other pieces in our order, ``<pad>`` last), and
a joint SentencePiece model serves as both source.spm and target.spm. The paper's interleaved
sinusoids (PE(p, 2i) = sin, PE(p, 2i+1) = cos) become Marian's halves by permuting every
model feature the same way (features 0, 2, 4, ... first, then 1, 3, 5, ...): each layer
computes the same numbers in another order, since LayerNorm and the residual sums do not
depend on the order of the features. What Marian cannot represent is refused, naming the key.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from transformer.config import ModelConfig, config_to_dict
from transformer.decoding.translator import Translator, read_run_config
from transformer.export.huggingface import HuggingFaceError, attention_names, layer_names
from transformer.export.spec import ExportError
from transformer.files import atomic_directory, sweep_temporaries
from transformer.training.checkpoint import resolve_checkpoint

FORMAT = "hf"
RECORD_FILE = "export.json"
ACTIVATION_NAMES = {"silu": "swish", "relu": "relu", "gelu": "gelu"}
# (key, the value Marian needs, what the model has instead): the first that differs is named.
REQUIRED = (
    ("norm_position", "post", "Marian's layers are post-norm"),
    ("norm", "layernorm", "Marian normalizes with LayerNorm"),
    ("positional_encoding", "sinusoidal", "Marian adds sinusoids"),
    ("num_kv_heads", None, "Marian's attention has no grouped keys and values"),
    ("tie_output_embeddings", True, "Marian ties the output projection to the embeddings"),
)


def check_marian_exportable(config: ModelConfig) -> None:
    """Raise an `ExportError` naming the first model key a MarianMT model cannot represent."""
    if config.activation not in ACTIVATION_NAMES:
        raise ExportError(
            f"model.activation: {config.activation!r} cannot be exported to Hugging Face "
            f"Marian (its feed-forward network has one activation: {', '.join(ACTIVATION_NAMES)})"
        )
    for key, wanted, why in REQUIRED:
        value = getattr(config, key)
        if key == "num_kv_heads" and value == config.num_heads:
            continue
        if value != wanted:
            raise ExportError(
                f"model.{key}: {value!r} cannot be exported to Hugging Face Marian ({why})"
            )


def marian_pieces(pieces: list[str], pad_last: bool = True) -> list[str]:
    """Our pieces (in our id order) in Marian's order: </s>, <unk>, the others, <pad> (or
    </s>, <unk>, <pad>, the others)."""
    middle = [piece for piece in pieces if piece not in ("</s>", "<unk>", "<pad>")]
    if pad_last:
        return ["</s>", "<unk>", *middle, "<pad>"]
    return ["</s>", "<unk>", "<pad>", *middle]


def _numbering(tokenizer: Any, pad_last: bool) -> tuple[list[str], torch.Tensor]:
    """One side's pieces in Marian's order, and our id of each (`rows[m]`: Marian id m)."""
    ours = [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    if len(set(ours)) != len(ours):
        raise HuggingFaceError(f"{tokenizer.path}: two ids share a piece; vocab.json cannot map it")
    pieces = marian_pieces(ours, pad_last)
    index = {piece: i for i, piece in enumerate(ours)}
    return pieces, torch.tensor([index[piece] for piece in pieces])


def _residual_order(config: ModelConfig) -> torch.Tensor:
    """Marian feature j is our feature order[j]: halves from interleaved, or as it is."""
    d = config.d_model
    if config.positional_layout == "halves":
        return torch.arange(d)
    return torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])


def marian_weights(
    state: dict[str, torch.Tensor],
    config: ModelConfig,
    src_rows: torch.Tensor,
    tgt_rows: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Marian's state dict from ours; `src_rows[m]` is our source id of Marian's source id m,
    `tgt_rows` the same for the target."""
    order = _residual_order(config)

    def reads(t: torch.Tensor) -> torch.Tensor:  # a weight whose inputs are model features
        return t[:, order].contiguous()

    def writes(t: torch.Tensor) -> torch.Tensor:  # a weight or bias whose outputs are features
        return t[order].contiguous()

    source = reads(state["src_embed.embedding.weight"][src_rows].float())
    target = reads(state["tgt_embed.embedding.weight"][tgt_rows].float())
    bias = state.get("output_proj.bias")
    bias = torch.zeros(len(tgt_rows)) if bias is None else bias[tgt_rows].float()
    out = {
        "model.encoder.embed_tokens.weight": source,
        "model.decoder.embed_tokens.weight": target,
        "lm_head.weight": target,
        "final_logits_bias": bias.reshape(1, -1).contiguous(),
    }
    if config.share_embeddings:
        out["model.shared.weight"] = target
    for ours, theirs in layer_names(config):
        weight, bias_ = state[ours + ".weight"].float(), state[ours + ".bias"].float()
        if ours.endswith("linear1"):  # d_model -> d_ff
            out[theirs + ".weight"], out[theirs + ".bias"] = reads(weight), bias_
        elif ours.endswith("norm") or ours.endswith("linear2"):
            out[theirs + ".weight"], out[theirs + ".bias"] = writes(weight), writes(bias_)
        else:  # out_proj: heads -> d_model
            out[theirs + ".weight"], out[theirs + ".bias"] = writes(weight), writes(bias_)
    for ours, theirs in attention_names(config):
        weights = state[ours + ".weight"].float().chunk(3)
        biases = state[ours + ".bias"].float().chunk(3)
        for name, weight, bias_ in zip("qkv", weights, biases, strict=True):
            out[f"{theirs}.{name}_proj.weight"] = reads(weight)
            out[f"{theirs}.{name}_proj.bias"] = bias_.contiguous()
    return out


def _check_output(output: Path) -> None:
    """Refuse a file, or a directory holding anything but what an earlier hf export wrote."""
    if output.exists() and not output.is_dir():
        raise ExportError(f"{output} is a file; give a directory to write the export to")
    if not output.is_dir() or not any(output.iterdir()):
        return
    keep = "so nothing was replaced; export to a new or empty directory"
    try:
        record = json.loads((output / RECORD_FILE).read_text(encoding="utf-8"))
        names = set(record["files"]) if record.get("format") == FORMAT else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        names = None
    if names is None:
        raise ExportError(f"{output} is not an earlier hf export (no valid {RECORD_FILE}), {keep}")
    for entry in os.scandir(output):
        if entry.name not in names or not entry.is_file(follow_symlinks=False):
            raise ExportError(
                f"{output} is a directory of other files: {entry.name} is not part of an "
                f"export, {keep}, or move {entry.name} away"
            )


def export_huggingface(run_dir: str | Path, output: str | Path, checkpoint: str = "best") -> Path:
    """Write the run's checkpoint as a MarianMT folder `output`; returns the checkpoint."""
    output = Path(output)
    sweep_temporaries(output.parent)
    _check_output(output)
    try:
        import transformers
    except ImportError:
        raise ExportError(
            "the hf format needs the transformers package: pip install 'transformer[hf]'"
        ) from None
    check_marian_exportable(read_run_config(run_dir).model)  # before loading anything
    path = resolve_checkpoint(run_dir, checkpoint).resolve()
    translator = Translator.from_run(run_dir, str(path), device="cpu", fast=False)
    config, tokenizers = translator.config, translator.tokenizers
    model_config = config.model
    check_marian_exportable(model_config)
    source, target = tokenizers.src, tokenizers.tgt
    # Marian has one pad_token_id for both sides: <pad> last when the sides have as many
    # pieces (always with one vocabulary), else third on both.
    pad_last = source.vocab_size == target.vocab_size
    src_pieces, src_rows = _numbering(source, pad_last)
    tgt_pieces, tgt_rows = _numbering(target, pad_last)
    src_vocab = {piece: i for i, piece in enumerate(src_pieces)}
    vocab = {piece: i for i, piece in enumerate(tgt_pieces)}  # the target's, for the ids below
    start = "<pad>" if model_config.decoder_start == "pad" else "<s>"
    hf_config = transformers.MarianConfig(
        vocab_size=len(src_pieces), decoder_vocab_size=len(tgt_pieces),
        d_model=model_config.d_model,
        encoder_layers=model_config.num_encoder_layers,
        decoder_layers=model_config.num_decoder_layers,
        encoder_attention_heads=model_config.num_heads,
        decoder_attention_heads=model_config.num_heads, encoder_ffn_dim=model_config.d_ff,
        decoder_ffn_dim=model_config.d_ff,
        activation_function=ACTIVATION_NAMES[model_config.activation],
        dropout=model_config.dropout, attention_dropout=model_config.attention_dropout,
        activation_dropout=0.0, max_position_embeddings=max(model_config.max_positions, 512),
        scale_embedding=True, pad_token_id=vocab["<pad>"], eos_token_id=vocab["</s>"],
        decoder_start_token_id=vocab[start], forced_eos_token_id=None,
        share_encoder_decoder_embeddings=model_config.share_embeddings,
        tie_word_embeddings=True,
    )  # fmt: skip
    hf_model = transformers.MarianMTModel(hf_config)
    weights = marian_weights(translator.model.state_dict(), model_config, src_rows, tgt_rows)
    missing, unexpected = hf_model.load_state_dict(weights, strict=False)
    if unexpected or [name for name in missing if "embed_positions" not in name]:
        raise ExportError(f"internal: Marian weights do not match ({missing[:2]} {unexpected[:2]})")
    hf_model.generation_config.bad_words_ids = [[vocab["<pad>"]]]  # ours never writes PAD
    hf_model.generation_config.forced_eos_token_id = None
    spm_files = (source.path, target.path)  # the joint model twice, or each side's
    vocab_files = {"vocab.json": src_vocab}
    if not tokenizers.joint:
        vocab_files["target_vocab.json"] = vocab
    record = {
        "format": FORMAT,
        "checkpoint": str(path),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "config": config_to_dict(config),
    }

    def write(directory: Path) -> None:
        hf_model.save_pretrained(directory)
        for file, name in zip(spm_files, ("source.spm", "target.spm"), strict=True):
            shutil.copyfile(file, directory / name)
        for name, numbering in vocab_files.items():
            text = json.dumps(numbering, ensure_ascii=False, indent=1)
            (directory / name).write_text(text, encoding="utf-8")
        separate = "target_vocab.json" in vocab_files
        tokenizer = transformers.MarianTokenizer(
            str(directory / "source.spm"), str(directory / "target.spm"),
            str(directory / "vocab.json"),
            target_vocab_file=str(directory / "target_vocab.json") if separate else None,
            separate_vocabs=separate,
        )  # fmt: skip
        tokenizer.save_pretrained(directory)
        files = sorted({*os.listdir(directory), RECORD_FILE})
        (directory / RECORD_FILE).write_text(
            json.dumps({**record, "files": files}, indent=2) + "\n", encoding="utf-8"
        )

    atomic_directory(output, write)
    return path
