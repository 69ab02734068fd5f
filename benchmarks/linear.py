"""MKL (`F.linear`) against oneDNN (`onednn_linear`) for the model's linear layers, float32.

For each of the shapes a translation model multiplies (rows of x × d_in → d_out: the stacked
Q/K/V projection, W^O, the feed-forward network, the output layer), and for each number of
rows (training batches of ~4,096 tokens, the training loss's blocks of 256 rows of the
output layer, decoding steps of 1 to 320 rows), the median time of --repeats products
through each library, and for the training rows the product with its backward pass
through `F.linear` and through `onednn_linear` (oneDNN for the first multiple of ROW_STEP
rows, MKL for the rest). The last
column is the path `onednn_linear_pays` takes in training.

    python -m benchmarks.linear              # 2 threads, d_model 256, d_ff 1024
    python -m benchmarks.linear --threads 1 --d-model 512 --d-ff 2048
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.common import add_threads_flag, milliseconds
from transformer.model.fast import (
    ROW_STEP,
    onednn_available,
    onednn_linear,
    onednn_linear_pays,
    onednn_matmul,
)


def with_backward(
    product: Callable[[Tensor, Tensor, Tensor], Tensor], x: Tensor, w: Tensor, b: Tensor
) -> Callable[[], None]:
    grad = torch.randn(x.size(0), w.size(0))
    return lambda: product(x, w, b).backward(grad)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    add_threads_flag(parser)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--d-ff", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    if not onednn_available():
        print("this PyTorch has no oneDNN linear kernel: every product runs through MKL")
        return 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    D, d_ff, V = args.d_model, args.d_ff, args.vocab
    layers = [("Q/K/V", D, 3 * D), ("W^O", D, D), ("W_1", D, d_ff), ("W_2", d_ff, D)]
    shapes = [(name, rows, d_in, d_out) for rows in (4096, 4085, 320, 64, 8, 1)
              for name, d_in, d_out in layers]  # fmt: skip
    shapes += [("W_out", rows, D, V) for rows in (256, 64, 8, 1)]
    print(f"{args.threads} thread(s), float32; times in ms (median of {args.repeats})")
    print(
        f"{'layer':>6} {'rows':>5} {'d_in':>5} {'d_out':>5} {'MKL':>8} {'oneDNN':>8} {'ratio':>6}"
        f" {'MKL fwd+bwd':>12} {'oneDNN fwd+bwd':>15} {'ratio':>6}  path taken"
    )
    for name, rows, d_in, d_out in shapes:
        x = torch.randn(rows, d_in)
        w, b = torch.randn(d_out, d_in) / d_in**0.5, torch.randn(d_out)
        with torch.inference_mode():
            mkl = milliseconds(lambda x=x, w=w, b=b: F.linear(x, w, b), args.repeats)
            dnn = milliseconds(lambda x=x, w=w, b=b: onednn_matmul(x, w, b), args.repeats)
        line = f"{name:>6} {rows:>5} {d_in:>5} {d_out:>5} {mkl:>8.3f} {dnn:>8.3f} {mkl / dnn:>6.2f}"
        if rows >= ROW_STEP:
            x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
            mkl_train = milliseconds(with_backward(F.linear, x, w, b), args.repeats)
            dnn_train = milliseconds(with_backward(onednn_linear, x, w, b), args.repeats)
            line += f" {mkl_train:>12.2f} {dnn_train:>15.2f} {mkl_train / dnn_train:>6.2f}"
        else:
            line += f" {'':>12} {'':>15} {'':>6}"
        path = "oneDNN" if onednn_linear_pays(x, w, training=True) else "MKL"
        print(f"{line}  {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
