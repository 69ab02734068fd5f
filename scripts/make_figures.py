"""Draw the pictures of docs/walkthrough.md: from the formulas, and from a trained run.

From the code that computes them (so a picture cannot disagree with the model):
  positional_encoding.png   the sinusoidal positional encoding, positions x dimensions
  masks.png                 the padding mask and the causal mask, True = may attend
  learning_rate.png         the paper's (Noam) learning-rate schedule for three warm-ups
  label_smoothing.png       the target distribution with and without label smoothing
  rotary_positions.png      RoPE's rotation angles, and a query-key score that depends only on
                            the distance between the two positions
From a trained run (--run, default runs/toy), for --text (default "how are you"):
  cross_attention.png, decoder_self_attention.png, encoder_self_attention.png
                            the last layer's attention, head average and each head
From a run that kept the checkpoints of a few steps (--steps-run, only when given):
  attention_over_training.png
                            the last layer's cross-attention (head average) at --steps
                            (default 0,50,100,200,400): the alignment forming

    python scripts/make_figures.py                         # -> docs/figures/
    python scripts/make_figures.py --run runs/m30k --text "a dog runs" --output /tmp/figs
    transformer-train --config configs/toy.yaml --run-dir runs/toy-steps \
        --set training.eval_every=50 training.keep_best=8  # the quick start, kept every 50 steps
    python scripts/make_figures.py --steps-run runs/toy-steps

Needs matplotlib, an optional extra: pip install -e '.[plot]'.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from transformer.cli.common import run_command, setup_logging
from transformer.decoding.translator import Translator
from transformer.errors import UserError
from transformer.explain.plots import attention_figure, figure_class, heatmap, png_bytes
from transformer.explain.trace import Explanation, explain
from transformer.files import FileError, atomic_write, os_reason
from transformer.model.attention import causal_mask, padding_mask
from transformer.model.positions import RotaryPositionalEncoding, rotary_angles, sinusoidal_table
from transformer.training.checkpoint import checkpoint_dir
from transformer.training.loss import label_smoothed_loss
from transformer.training.retention import step_file_name
from transformer.training.run import build_model
from transformer.training.schedule import noam_lr

REPO = Path(__file__).resolve().parents[1]
TRAINING_STEPS = "0,50,100,200,400"
STEPS_RUN_COMMAND = (
    "transformer-train --config configs/toy.yaml --run-dir runs/toy-steps "
    "--set training.eval_every=50 training.keep_best=8"
)
logger = logging.getLogger("make_figures")


def positional_encoding(d_model: int = 128, positions: int = 64) -> bytes:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...), as the model adds it."""
    table = sinusoidal_table(torch.arange(positions), d_model)  # (positions, D)
    figure = figure_class()(figsize=(8, 4.5), layout="constrained")
    ax = figure.add_subplot()
    image = ax.imshow(table.numpy(), cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    ax.set_xlabel("dimension (even: sin, odd: cos; the wavelength grows to the right)")
    ax.set_ylabel("position")
    ax.set_title(f"sinusoidal positional encoding, d_model = {d_model}")
    figure.colorbar(image, ax=ax)
    return png_bytes(figure)


def masks() -> bytes:
    """A padding mask (B=2 sentences, one padded) and a causal mask, as the model builds them."""
    ids = torch.tensor([[5, 6, 7, 8, 3], [9, 10, 3, 0, 0]])
    padding = padding_mask(ids, pad_id=0)[:, 0, 0]  # (B, S)
    causal = causal_mask(5, 5)  # (T, T)
    figure = figure_class()(figsize=(9, 3.6), layout="constrained")
    left, right = figure.subplots(1, 2)
    labels = ["x1", "x2", "x3", "x4", "x5"]
    heatmap(left, padding.float(), ["sentence 1", "sentence 2"], labels,
            "padding mask (B, 1, 1, S): keys that are words", annotate=True)  # fmt: skip
    heatmap(right, causal.float(), [f"y{t}" for t in range(5)], [f"y{t}" for t in range(5)],
            "causal mask (T, T): query t sees keys ≤ t", annotate=True)  # fmt: skip
    right.set_ylabel("query")
    right.set_xlabel("key")
    return png_bytes(figure)


def learning_rate(d_model: int = 512, steps: int = 20_000) -> bytes:
    """lr = d_model^-0.5 · min(step^-0.5, step · warmup^-1.5) for three warm-ups."""
    figure = figure_class()(figsize=(7, 4), layout="constrained")
    ax = figure.add_subplot()
    xs = list(range(1, steps + 1, 20))
    for warmup in (1000, 4000, 8000):
        ax.plot(xs, [noam_lr(s, d_model, warmup) for s in xs], label=f"warmup {warmup}")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"the paper's schedule (noam), d_model = {d_model}")
    ax.legend()
    return png_bytes(figure)


def label_smoothing(vocab: int = 12, target: int = 4, epsilon: float = 0.1) -> bytes:
    """(1 - ε)·one-hot + ε/V: what label-smoothed cross-entropy asks the model to predict."""
    one_hot = F.one_hot(torch.tensor(target), vocab).float()
    smoothed = (1 - epsilon) * one_hot + epsilon / vocab
    # The training loss is cross-entropy against exactly this distribution.
    logits = torch.randn(1, 1, vocab)
    expected = -(smoothed * logits.log_softmax(-1)[0, 0]).sum()
    loss = label_smoothed_loss(logits, torch.tensor([[target]]), epsilon, pad_id=-100)
    assert torch.allclose(loss, expected, atol=1e-5), "the picture must match the training loss"
    figure = figure_class()(figsize=(7, 3.5), layout="constrained")
    ax = figure.add_subplot()
    xs = torch.arange(vocab).numpy()
    ax.bar(xs - 0.2, one_hot.numpy(), width=0.4, label="one-hot target")
    ax.bar(xs + 0.2, smoothed.numpy(), width=0.4, label=f"label-smoothed, ε = {epsilon}")
    ax.set_xticks(xs, labels=[f"w{i}" for i in xs])
    ax.set_xlabel(f"vocabulary (V = {vocab}); the reference word is w{target}")
    ax.set_ylabel("target probability")
    ax.legend()
    return png_bytes(figure)


def rotary_positions(d_k: int = 32, positions: int = 48) -> bytes:
    """RoPE's angles pos·θ_i (mod 2π), and q·k of one rotated query and key at every (i, j)."""
    angles = rotary_angles(torch.arange(positions), d_k) % (2 * math.pi)  # (T, d_k/2)
    rope = RotaryPositionalEncoding(d_k)
    torch.manual_seed(0)
    q, k = torch.randn(d_k), torch.randn(d_k)
    rotated_q = rope(q.expand(1, 1, positions, d_k))[0, 0]  # (T, d_k): q at every position
    rotated_k = rope(k.expand(1, 1, positions, d_k))[0, 0]
    scores = rotated_q @ rotated_k.T  # (T, T): score of q at position i with k at position j
    figure = figure_class()(figsize=(11, 4.5), layout="constrained")
    left, right = figure.subplots(1, 2)
    image = left.imshow(angles.numpy(), cmap="twilight", aspect="auto", vmin=0, vmax=2 * math.pi)
    left.set_xlabel("feature pair i (θ_i = 10000^(-2i/d_k): slower to the right)")
    left.set_ylabel("position")
    left.set_title(f"rotation angle pos · θ_i (mod 2π), d_k = {d_k}")
    figure.colorbar(image, ax=left, label="radians")
    image = right.imshow(scores.numpy(), cmap="RdBu", aspect="auto")
    right.set_xlabel("key position j")
    right.set_ylabel("query position i")
    right.set_title("q·k after rotation: constant along each diagonal (it depends on i − j)")
    figure.colorbar(image, ax=right)
    return png_bytes(figure)


def attention_pictures(run: Path, text: str) -> dict[str, bytes]:
    """The last layer's three attentions for `text`, from the trained run."""
    translator = Translator.from_run(run, device="cpu")
    explanation = explain(translator, text)
    maps = explanation.maps
    inputs, produced = explanation.decoder_input_pieces, explanation.target_pieces
    source = explanation.source_pieces
    title = f"{explanation.source!r} → {explanation.translation!r}"
    return {
        "cross_attention.png": attention_figure(
            maps.cross[-1, 0], produced, source, f"cross-attention, last layer: {title}",
            ("piece produced", "source piece"),
        ),
        "decoder_self_attention.png": attention_figure(
            maps.decoder_self[-1, 0], inputs, inputs, "masked decoder self-attention, last layer",
            ("decoder input", "earlier decoder input"),
        ),
        "encoder_self_attention.png": attention_figure(
            maps.encoder_self[-1, 0], source, source, "encoder self-attention, last layer",
            ("source piece", "source piece"),
        ),
    }  # fmt: skip


def attention_over_training(run: Path, text: str, steps: Sequence[int]) -> bytes:
    """The last layer's cross-attention of `text` (head average) at `steps`, one panel each.

    Step s > 0 is the run's kept checkpoint of that step (checkpoints/step_*.pt); step 0 is
    the model the run started from, built again from its config and seed. Each model reads
    its own greedy translation, as `transformer-explain` draws it.
    """
    panels: list[tuple[int, Explanation]] = []
    for step in steps:
        translator = translator_at(run, step, steps)
        greedy = replace(translator.config.decoding, beam_size=1, nbest=1)
        panels.append((step, explain(translator, text, greedy)))
    figure = figure_class()(figsize=(3.0 * len(panels) + 1.0, 5.2), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (step, explanation) in zip(axes, panels, strict=True):
        translation = explanation.translation
        shown = translation if len(translation) <= 28 else translation[:27] + "…"
        weights = explanation.maps.cross[-1, 0].mean(0)  # (T, S): the average of the heads
        image = heatmap(ax, weights, explanation.target_pieces, explanation.source_pieces,
                        f"step {step}\n→ {shown!r}")  # fmt: skip
    axes[0].set_ylabel("piece produced (query)")
    figure.colorbar(image, ax=list(axes), shrink=0.6, label="attention weight, head average")
    figure.suptitle(f"cross-attention of {text!r} while training (last decoder layer)")
    return png_bytes(figure)


def translator_at(run: Path, step: int, steps: Sequence[int]) -> Translator:
    """The run's model after `step` steps, on the CPU; step 0: the weights it started from."""
    kept = sorted(checkpoint_dir(run).glob("step_*.pt"))
    path = checkpoint_dir(run) / step_file_name(step)
    if not kept or (step > 0 and not path.is_file()):
        missing = path if kept else checkpoint_dir(run) / "step_*.pt"
        raise UserError(
            f"{missing} is missing: the picture of attention over training needs the run's "
            f"checkpoints of steps {', '.join(map(str, steps))}; keep them with: "
            f"{STEPS_RUN_COMMAND}"
        )
    translator = Translator.from_run(run, str(path if step > 0 else kept[0]), device="cpu")
    if step == 0:  # training seeds torch's generator, then builds the model: do it again
        config = translator.config
        if config.training.init_from is not None:
            raise UserError(
                f"{run} was fine-tuned from {config.training.init_from}: its step 0 is that "
                "model, not one built from its seed; leave 0 out of --steps"
            )
        initial = build_model(config, config.training.seed, translator.device)
        translator = Translator(initial, translator.tokenizers, config, translator.device)
    return translator


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "toy", help="a trained run")
    parser.add_argument("--text", default="how are you", help="the sentence to draw")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "figures")
    parser.add_argument(
        "--steps-run", type=Path, help="a run that kept step checkpoints (see the module doc)"
    )
    parser.add_argument(
        "--steps",
        type=lambda text: [int(step) for step in text.split(",")],
        default=TRAINING_STEPS,
        help=f"the steps of attention_over_training.png (default {TRAINING_STEPS})",
    )
    args = parser.parse_args(argv)
    setup_logging()
    figures = {
        "positional_encoding.png": positional_encoding(),
        "masks.png": masks(),
        "learning_rate.png": learning_rate(),
        "label_smoothing.png": label_smoothing(),
        "rotary_positions.png": rotary_positions(),
    }
    if (args.run / "config.yaml").is_file():
        figures.update(attention_pictures(args.run, args.text))
    else:
        sys.stderr.write(
            f"note: no run at {args.run}: the attention pictures need one "
            "(train it with: transformer-train --config configs/toy.yaml)\n"
        )
    if args.steps_run is not None:
        figures["attention_over_training.png"] = attention_over_training(
            args.steps_run, args.text, args.steps
        )
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FileError(f"cannot create {args.output}: {os_reason(error)}") from None
    for name, data in figures.items():
        with atomic_write(args.output / name) as handle:
            handle.write(data)
    sys.stderr.write(f"wrote {len(figures)} figures into {args.output}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0, or 2 with one error line."""
    return run_command(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
