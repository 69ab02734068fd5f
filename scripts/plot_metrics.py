"""Draw validation BLEU against training time (or steps) for one or more runs.

Reads RUN/metrics.jsonl (one line per validation, written by transformer-train) of each run
and draws one line per run into a PNG:

    python scripts/plot_metrics.py runs/multi30k_en_de --output docs/bleu_vs_time.png
    python scripts/plot_metrics.py runs/a runs/b --labels "post-norm" "pre-norm" --x step

Time is the training time recorded with each validation (`elapsed_s`), in minutes or, for
runs longer than three hours, in hours. `elapsed_s` counts on across resumes; in metrics
written before it did, a resumed run starts again from zero: where the time goes backwards,
the later times are added to the last time recorded before (the time between that
validation and the interruption is lost).

Needs matplotlib, an optional extra: pip install -e '.[plot]'.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformer.cli.common import run_command
from transformer.errors import UserError
from transformer.training.checkpoint import METRICS_FILE

METRICS = {
    "bleu": "validation BLEU",
    "chrf": "validation chrF",
    "valid_loss": "validation loss",
    "valid_ppl": "validation perplexity",
}
HOURS_FROM_S = 3 * 3600  # longer runs are drawn in hours, shorter ones in minutes


class PlotError(UserError):
    """A run without usable metrics, or a missing plotting library."""


@dataclass(frozen=True)
class Curve:
    """One run's points: steps, cumulative training seconds, and metric values."""

    label: str
    steps: list[int]
    seconds: list[float]
    values: list[float]


def metrics_path(run: Path) -> Path:
    """RUN/metrics.jsonl, or `run` itself when it names the file."""
    return run if run.is_file() else run / METRICS_FILE


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The entries of a metrics.jsonl file; a bad line is a PlotError naming it."""
    if not path.is_file():
        raise PlotError(f"{path} not found; give a run directory written by transformer-train")
    entries = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                raise PlotError(f"{path}: line {number} is not JSON ({error.msg})") from None
            if not isinstance(entry, dict):
                raise PlotError(f"{path}: line {number} is not a JSON object")
            entries.append(entry)
    return entries


def cumulative_seconds(elapsed: list[float]) -> list[float]:
    """Training time that keeps growing across resumes (each restarts `elapsed_s` at zero)."""
    total, offset, previous = [], 0.0, 0.0
    for seconds in elapsed:
        if seconds < previous:  # the clock restarted: a resumed run
            offset += previous
        total.append(offset + seconds)
        previous = seconds
    return total


def curve_of(path: Path, label: str, metric: str) -> Curve:
    """The points of `metric` in one metrics file (validations without it are skipped)."""
    entries = read_metrics(path)
    seconds = cumulative_seconds([float(entry.get("elapsed_s") or 0.0) for entry in entries])
    points = [
        (int(entry.get("step", 0)), time, float(entry[metric]))
        for entry, time in zip(entries, seconds, strict=True)
        if entry.get(metric) is not None
    ]
    if not points:
        raise PlotError(
            f"{path} has no {metric} values; BLEU is only recorded with training.eval_bleu: true"
            if metric in ("bleu", "chrf")
            else f"{path} has no {metric} values"
        )
    steps, times, values = (list(column) for column in zip(*points, strict=True))
    return Curve(label, steps, times, values)


def import_matplotlib() -> Any:
    """matplotlib's Figure class with the Agg canvas, or a PlotError saying how to install it."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError(
            "matplotlib is not installed; install it with: pip install -e '.[plot]'"
        ) from None
    return Figure, FigureCanvasAgg


def draw(curves: list[Curve], x_axis: str, metric: str, output: Path) -> None:
    """Draw every curve into a PNG at `output` (Agg: no display needed)."""
    Figure, FigureCanvasAgg = import_matplotlib()
    figure = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    longest = max(max(curve.seconds) for curve in curves)
    unit, divisor = ("hours", 3600.0) if longest > HOURS_FROM_S else ("minutes", 60.0)
    for curve in curves:
        if x_axis == "step":
            xs: list[float] = [float(step) for step in curve.steps]
        else:
            xs = [seconds / divisor for seconds in curve.seconds]
        axes.plot(xs, curve.values, marker="o", markersize=3, label=curve.label)
    axes.set_xlabel("training step" if x_axis == "step" else f"training time ({unit})")
    axes.set_ylabel(METRICS[metric])
    axes.set_title(f"{METRICS[metric]} against training {'steps' if x_axis == 'step' else 'time'}")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, format="png")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (or metrics.jsonl)")
    parser.add_argument(
        "--output", type=Path, default=Path("docs/bleu_vs_time.png"), help="the PNG to write"
    )
    parser.add_argument("--x", choices=("time", "step"), default="time", help="the x axis")
    parser.add_argument("--metric", choices=sorted(METRICS), default="bleu", help="the y axis")
    parser.add_argument("--labels", nargs="+", default=None, help="one legend label per run")
    return parser.parse_args(argv)


def plot(argv: list[str] | None = None) -> int:
    """Read the runs' metrics and draw them."""
    args = parse_args(argv)
    labels = args.labels or [run.name if run.is_dir() else run.parent.name for run in args.runs]
    if len(labels) != len(args.runs):
        raise PlotError(f"--labels: give one label per run ({len(args.runs)}), not {len(labels)}")
    import_matplotlib()  # before reading anything: say at once when it is missing
    curves = [
        curve_of(metrics_path(run), label, args.metric)
        for run, label in zip(args.runs, labels, strict=True)
    ]
    draw(curves, args.x, args.metric, args.output)
    print(f"wrote {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: a PlotError becomes `error: ...` and exit code 2."""
    return run_command(plot, argv)


if __name__ == "__main__":
    raise SystemExit(main())
