"""Where the written-out attention beats the fused kernel on this machine, forward + backward.

For each key length T, a batch of about --tokens tokens (B = tokens / T rows) of H heads of
d_k features goes through `fused_attention` (PyTorch's fused kernel) and
`scaled_dot_product_attention` (the formula written out), with a padding mask (a quarter of
the rows padded from 3T/4) and with the causal mask; the median of --repeats runs of forward
and backward each. The last column says which path `written_out_is_faster` takes in
training: this table is where its threshold comes from.

    python -m benchmarks.attention                   # 2 threads, H 4, d_k 64
    python -m benchmarks.attention --threads 1 --heads 8
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor

from benchmarks.common import add_threads_flag, milliseconds
from transformer.model.attention import causal_mask, fused_attention, scaled_dot_product_attention
from transformer.model.fast import written_out_is_faster


def through_fused(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, grad: Tensor) -> None:
    fused_attention(q, k, v, mask).backward(grad)


def through_written_out(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, grad: Tensor) -> None:
    scaled_dot_product_attention(q, k, v, mask)[0].backward(grad)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    add_threads_flag(parser)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d-k", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--lengths", type=int, nargs="+", default=[10, 20, 32, 48, 64, 128])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"{args.threads} thread(s), H {args.heads}, d_k {args.d_k}, ~{args.tokens} tokens a batch"
    )
    header = f"{'T':>5} {'B':>5} {'mask':>8} {'fused ms':>9} {'written ms':>11} {'ratio':>6}"
    print(f"{header}  training path")
    for T in args.lengths:
        B = max(1, args.tokens // T)
        qkv = [torch.randn(B, args.heads, T, args.d_k, requires_grad=True) for _ in range(3)]
        grad = torch.randn(B, args.heads, T, args.d_k)
        padding = torch.ones(B, 1, 1, T, dtype=torch.bool)  # (B, 1, 1, T)
        padding[: B // 4, ..., T * 3 // 4 :] = False
        for name, mask in (("padding", padding), ("causal", causal_mask(T, T))):
            fused, written = (
                lambda mask=mask, qkv=qkv, grad=grad, path=path: path(*qkv, mask, grad)
                for path in (through_fused, through_written_out)
            )
            a, b = milliseconds(fused, args.repeats), milliseconds(written, args.repeats)
            chosen = "written out" if written_out_is_faster(qkv[0], qkv[1], True) else "fused"
            print(f"{T:>5} {B:>5} {name:>8} {a:>9.2f} {b:>11.2f} {a / b:>6.2f}  {chosen}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
