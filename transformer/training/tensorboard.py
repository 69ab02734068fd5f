"""TensorBoard logs of a training run (training.tensorboard; the `tensorboard` extra).

Into <run>/tensorboard/: the numbers of each log step (training loss, learning rate, gradient
norm, target tokens/s, skipped steps), and at each validation its scores, the sample
translations as text and the samples' cross-attention as images (the last decoder layer,
average of the heads), so that TensorBoard's step slider shows the alignment forming. The
images are drawn by the code of `transformer-explain` (`transformer.explain.plots`) and only
at validations, so logging costs the training loop next to nothing.

Shape legend: H heads, T decoder positions, S source pieces.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from transformer.config import DecodingConfig
from transformer.data.corpus import EncodedCorpus
from transformer.data.tokenizer import BOS_PIECE, EOS_PIECE, Tokenizer, TokenizerPair
from transformer.decoding.search import greedy_search
from transformer.explain.plots import DPI, MissingExtraError, figure_class, heatmap
from transformer.model import Transformer
from transformer.training.validation import ValidationResult

logger = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"  # in the run directory
TENSORBOARD_EXTRA = "pip install 'transformer[tensorboard]'"
_CELL_INCHES = 0.3  # a piece's row or column of an attention image
_PANEL_INCHES = 7.5  # at most, a side: the image's pixels do not grow with long sentences


def summary_writer_class() -> Any:
    """torch's SummaryWriter, or a MissingExtraError naming the key and the extra to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MissingExtraError(
            "training.tensorboard: true needs the tensorboard package: "
            f"{TENSORBOARD_EXTRA} (or set training.tensorboard: false)"
        ) from None
    return SummaryWriter


@dataclass(frozen=True)
class Sample:
    """A validation pair whose translation and attention each validation shows."""

    source: str
    reference: str
    ids: list[int]  # the source ids as the model reads them (EOS last)


def validation_samples(data: EncodedCorpus | None, count: int) -> list[Sample]:
    """The first `count` pairs of the valid corpus: the samples the validation log shows."""
    if data is None:
        return []
    return [
        Sample(data.src_texts[i], data.tgt_texts[i], [int(x) for x in data[i].src])
        for i in range(min(count, len(data)))
    ]


class TensorBoardLog:
    """Writes a run's TensorBoard events; rank 0 alone has one.

    Built before training (it fails at once, with one `error:` line, without the extra);
    `start(step)` opens the writer when training begins at `step`, `close()` ends it.
    """

    def __init__(
        self,
        run_dir: Path,
        model: Transformer,
        tokenizers: TokenizerPair,
        samples: list[Sample],
        decoding: DecodingConfig,
    ) -> None:
        self.writer_class = summary_writer_class()
        self.directory = Path(run_dir) / TENSORBOARD_DIR
        self.model = model
        self.tokenizers = tokenizers
        self.samples = samples
        self.decoding = decoding
        self.writer: Any = None
        self.draws = True
        try:
            figure_class()
        except MissingExtraError as error:
            self.draws = False
            logger.warning("TensorBoard gets no attention images: %s", error)

    def start(self, step: int) -> None:
        """Open the writer for a training that begins after `step` (0: a new run).

        A resumed run appends to the run's events; what an earlier process logged after
        `step` (it went on past its last checkpoint, then died; or, at step 0, a run that
        stopped before its first checkpoint) is purged, so each step shows once.
        """
        self.writer = self.writer_class(
            log_dir=str(self.directory), purge_step=step + 1, flush_secs=30
        )

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        """The numbers of a log step, as train/<name> scalars."""
        for name, value in metrics.items():
            self.writer.add_scalar(f"train/{name}", value, step)

    def log_validation(self, step: int, result: ValidationResult) -> None:
        """A validation's scores, and the samples' translations and cross-attention."""
        scores = {
            "loss": result.loss,
            "perplexity": result.perplexity,
            "bleu": result.bleu,
            "chrf": result.chrf,
        }
        for name, value in scores.items():
            if value is not None:
                self.writer.add_scalar(f"valid/{name}", value, step)
        if self.samples:
            translations = self.translate()
            self.writer.add_text("valid/samples", samples_markdown(translations), step)
            if self.draws:
                for number, translation in enumerate(translations, start=1):
                    image = attention_image(*translation.attention())
                    self.writer.add_image(
                        f"attention/sample_{number}", image, step, dataformats="HWC"
                    )
        self.writer.flush()  # a validation is worth seeing at once

    @torch.inference_mode()
    def translate(self) -> list[Translation]:
        """Each sample's greedy translation and its attention, from the model as it is now."""
        model, special = self.model, self.model.special_ids
        model.eval()  # the training step switches back
        device = next(model.parameters()).device
        translations = []
        for sample in self.samples:
            src = torch.tensor([sample.ids], device=device)  # (1, S)
            best = greedy_search(model, src, self.decoding.max_len_a, self.decoding.max_len_b)
            tokens = best[0][0].tokens
            produced = [*tokens, *([special.eos] if best[0][0].ended else [])]
            tgt_in = torch.tensor([[special.bos, *produced[:-1]]], device=device)  # (1, T)
            cross = model.attention_maps(src, tgt_in).cross[-1, 0]  # (H, T, S): the last layer
            names = {special.bos: BOS_PIECE, special.eos: EOS_PIECE}
            translations.append(
                Translation(
                    sample,
                    self.tokenizers.tgt.decode(tokens),
                    pieces(self.tokenizers.src, sample.ids, names),
                    pieces(self.tokenizers.tgt, produced, names),
                    cross.float().cpu(),
                )
            )
        return translations

    def close(self) -> None:
        """Write what is pending and close the event file."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@dataclass
class Translation:
    """A sample's greedy translation and its last decoder layer's cross-attention."""

    sample: Sample
    hypothesis: str
    source_pieces: list[str]
    target_pieces: list[str]  # what each decoder position produced (EOS last if it ended)
    cross: Tensor  # (H, T, S)

    def attention(self) -> tuple[Tensor, list[str], list[str], str]:
        """The arguments of `attention_image`: weights, rows, columns and title."""
        title = f"{shorter(self.sample.source)!r}\n→ {shorter(self.hypothesis)!r}"
        return self.cross, self.target_pieces, self.source_pieces, title


def shorter(text: str, limit: int = 45) -> str:
    """`text`, cut to `limit` characters with an ellipsis: a title that fits the image."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pieces(tokenizer: Tokenizer, ids: list[int], names: dict[int, str]) -> list[str]:
    """The pieces of `ids`, BOS and EOS by their `names`."""
    return [names.get(i) or tokenizer.id_to_piece(i) for i in ids]


def samples_markdown(translations: list[Translation]) -> str:
    """The samples as a Markdown table (TensorBoard's text tab renders Markdown)."""
    rows = ["| source | reference | hypothesis |", "|---|---|---|"]
    for t in translations:
        cells = (t.sample.source, t.sample.reference, t.hypothesis)
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


def attention_image(weights: Tensor, rows: list[str], columns: list[str], title: str) -> np.ndarray:
    """The average of the heads of weights (H, T, S) as an RGB image (height, width, 3).

    Drawn by `transformer.explain.plots.heatmap`, as `transformer-explain` draws it (white 0,
    darkest blue 1), without the colour bar and the numbers in the cells, which would take
    most of the drawing's time; rendered on the figure's own canvas, without pyplot's global
    state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    cell = min(_CELL_INCHES, _PANEL_INCHES / max(len(rows), len(columns), 1))
    size = (max(4.2, len(columns) * cell + 1.8), max(3.0, len(rows) * cell + 2.0))
    figure = figure_class()(figsize=size, dpi=DPI, layout="constrained")
    ax = figure.add_subplot()
    heatmap(ax, weights.mean(0), rows, columns, title)
    ax.set_ylabel("piece produced (query)", fontsize=9)
    ax.set_xlabel("source piece (key), average of the heads", fontsize=9)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
