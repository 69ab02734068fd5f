"""Heatmaps of attention weights labelled with the pieces (matplotlib: the `plot` extra).

Figures are drawn on `matplotlib.figure.Figure` objects, not through pyplot, so drawing sets
no global state (backend, current figure) in the program that asks for it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from transformer.errors import UserError
from transformer.files import atomic_write

if TYPE_CHECKING:
    from transformer.explain.trace import Explanation

PLOT_EXTRA = "pip install 'transformer[plot]'"
DPI = 110
LABELLED_UP_TO = 60  # pieces a side: more and their names overlap, so the axes show positions
_ANNOTATE_UP_TO = 12  # write the weights in the cells of matrices this small
_CELL_INCHES = 0.28  # a piece's row or column while the panel is small
# A head's panel is at most this many inches a side, so a figure's pixels do not grow with the
# sentence (figures that did took 10 GB and minutes for 255 pieces).
_PANEL_INCHES = 7.5


class MissingExtraError(UserError):
    """An optional dependency is not installed; the message names the extra to install."""


def figure_class() -> Any:
    """matplotlib's Figure, or a MissingExtraError that says how to install it."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtraError(f"drawing needs matplotlib: {PLOT_EXTRA}") from None
    return Figure


def heatmap(
    ax: Any,
    weights: Tensor,
    rows: Sequence[str],
    columns: Sequence[str],
    title: str,
    annotate: bool = False,
) -> Any:
    """Draw weights (Tq, Tk) in [0, 1] on `ax`: row i is query rows[i], column j key columns[j].

    Up to `LABELLED_UP_TO` pieces a side the ticks name the pieces; beyond, the axes keep their
    few numbered ticks (positions), so the cost of the drawing does not grow with the pieces.
    """
    image = ax.imshow(weights.float().cpu().numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    if has_piece_labels(rows, columns):
        fontsize = 8 if max(len(rows), len(columns)) <= 30 else 6
        ax.set_xticks(range(len(columns)), labels=list(columns), rotation=90, fontsize=fontsize)
        ax.set_yticks(range(len(rows)), labels=list(rows), fontsize=fontsize)
    else:
        ax.tick_params(labelsize=8)
    ax.set_title(title, fontsize=9)
    if annotate and max(len(rows), len(columns)) <= _ANNOTATE_UP_TO:
        for i, row in enumerate(weights.float().tolist()):
            for j, value in enumerate(row):
                color = "white" if value > 0.6 else "black"
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
    return image


def has_piece_labels(rows: Sequence[str], columns: Sequence[str]) -> bool:
    """Whether a heatmap of these pieces names them on its axes (few enough to read)."""
    return max(len(rows), len(columns)) <= LABELLED_UP_TO


def attention_figure(
    weights: Tensor,
    rows: Sequence[str],
    columns: Sequence[str],
    title: str,
    axes: tuple[str, str] = ("query", "key"),
) -> bytes:
    """A PNG of one layer's attention (H, Tq, Tk): the average of the heads, then each head.

    `axes` names what the rows (queries) and the columns (keys) are.
    """
    return png_bytes(draw_attention(weights, rows, columns, title, axes))


def draw_attention(
    weights: Tensor,
    rows: Sequence[str],
    columns: Sequence[str],
    title: str,
    axes: tuple[str, str] = ("query", "key"),
) -> Any:
    """The matplotlib Figure of `attention_figure`: its size grows with the heads, and with the
    pieces only up to a few dozen of them."""
    Figure = figure_class()
    heads = weights.size(0)
    per_row = min(heads, 4)
    head_rows = -(-heads // per_row)
    cell = min(_CELL_INCHES, _PANEL_INCHES / max(len(rows), len(columns), 1))
    width = max(6.0, per_row * (len(columns) * cell + 1.2))
    height = (len(rows) * cell + 1.6) * (2 + head_rows)
    figure = Figure(figsize=(width, height), layout="constrained")
    grid = figure.add_gridspec(1 + head_rows, per_row, height_ratios=[2] + [1] * head_rows)
    average = figure.add_subplot(grid[0, :])
    image = heatmap(
        average,
        weights.float().mean(0),
        rows,
        columns,
        f"{title}: average of the heads",
        annotate=True,
    )
    average.set_ylabel(f"{axes[0]} (query)", fontsize=9)
    average.set_xlabel(f"{axes[1]} (key)", fontsize=9)
    figure.colorbar(image, ax=average, shrink=0.8, label="attention weight")
    for head in range(heads):
        ax = figure.add_subplot(grid[1 + head // per_row, head % per_row])
        heatmap(ax, weights[head], rows, columns, f"head {head + 1}")
    return figure


def png_bytes(figure: Any) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def write_attention_figures(explanation: Explanation, directory: Path) -> list[Path]:
    """One PNG per attention and layer into `directory`; returns the paths written.

    cross_attention_layer{l}.png: the pieces produced (rows) attending the source pieces;
    decoder_self_attention_layer{l}.png: the decoder's inputs attending the earlier inputs (the
    causal triangle); encoder_self_attention_layer{l}.png: source pieces attending each other.
    """
    maps, source = explanation.maps, explanation.source_pieces
    inputs, produced = explanation.decoder_input_pieces, explanation.target_pieces
    kinds = [  # file stem, title, weights, rows, columns, what rows and columns are
        ("cross_attention", "cross-attention", maps.cross, produced, source,
         ("piece produced", "source piece")),
        ("decoder_self_attention", "masked decoder self-attention", maps.decoder_self, inputs,
         inputs, ("decoder input", "earlier decoder input")),
        ("encoder_self_attention", "encoder self-attention", maps.encoder_self, source, source,
         ("source piece", "source piece")),
    ]  # fmt: skip
    written = []
    for stem, title, weights, rows, columns, axes in kinds:
        for layer in range(weights.size(0)):
            path = directory / f"{stem}_layer{layer + 1}.png"
            name = f"{title}, layer {layer + 1}"
            data = attention_figure(weights[layer, 0], rows, columns, name, axes)
            with atomic_write(path) as handle:
                handle.write(data)
            written.append(path)
    return written
