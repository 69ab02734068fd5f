"""Training-step speed and memory of our Transformer against one built on `torch.nn.Transformer`.

Both models get the same shape, embeddings (scaled by √d_model, sinusoidal positions from the
same function, output projection tied to the shared embedding, no bias), batch, loss
(cross-entropy, label smoothing 0.1, padding ignored), optimizer (Adam, betas 0.9/0.98,
eps 1e-9) and dropout. A step is forward, backward and optimizer step. Each (configuration,
device, model) runs in its own subprocess so that its peak memory is its own.

    python -m benchmarks.model             # small and base size, CPU (2 threads) [+ CUDA]
    python -m benchmarks.model --quick     # small size only, few steps
    python -m benchmarks.model --rounds 3  # repeat, keep each model's best round

Speed is target tokens (not padding) per second of the median timed step, so that a step
slowed down by other jobs on the machine does not count.

CPU memory is the peak resident set size of the subprocess above its size after start-up
(VmHWM, `peak_rss_mib`); CUDA memory is `torch.cuda.max_memory_allocated`. CUDA runs
under bf16 autocast.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.common import (
    FIRST_WORD_ID,
    add_threads_flag,
    as_flags,
    current_rss_mib,
    model_config,
    peak_rss_mib,
    round_order,
    run_worker,
    synchronize,
)
from transformer.data.special_ids import BOS_ID, EOS_ID, PAD_ID
from transformer.model import Transformer
from transformer.model import build_model as build_transformer
from transformer.model.positions import sinusoidal_table

LABEL_SMOOTHING = 0.1
IMPLEMENTATIONS = ("ours", "reference")


@dataclass(frozen=True)
class Size:
    """One model shape to measure."""

    d_model: int
    num_heads: int
    d_ff: int
    num_layers: int

    def describe(self) -> str:
        """E.g. "d256 3+3 h4 ff1024"."""
        layers = self.num_layers
        return f"d{self.d_model} {layers}+{layers} h{self.num_heads} ff{self.d_ff}"


SIZES = {
    "small": Size(d_model=256, num_heads=4, d_ff=1024, num_layers=3),
    "base": Size(d_model=512, num_heads=8, d_ff=2048, num_layers=6),
}


class ReferenceTransformer(nn.Module):
    """The same model on `torch.nn.Transformer` (batch_first), with PyTorch's own layers.

    The encoder and decoder stacks are passed in so that, as in ours, a final LayerNorm is only
    there with pre-norm (`nn.Transformer` would otherwise add one to post-norm stacks too).
    """

    def __init__(
        self,
        vocab_size: int,
        size: Size,
        dropout: float,
        activation: str,
        norm_first: bool,
    ) -> None:
        super().__init__()
        D = size.d_model
        self.d_model = D
        self.scale = math.sqrt(D)
        self.embedding = nn.Embedding(vocab_size, D, padding_idx=PAD_ID)
        layer_args = {
            "d_model": D,
            "nhead": size.num_heads,
            "dim_feedforward": size.d_ff,
            "dropout": dropout,
            "activation": activation,
            "batch_first": True,
            "norm_first": norm_first,
        }
        encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(**layer_args),
            size.num_layers,
            norm=nn.LayerNorm(D) if norm_first else None,
            enable_nested_tensor=False,
        )
        decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(**layer_args),
            size.num_layers,
            norm=nn.LayerNorm(D) if norm_first else None,
        )
        self.transformer = nn.Transformer(
            D,
            size.num_heads,
            custom_encoder=encoder,
            custom_decoder=decoder,
            dropout=dropout,
            batch_first=True,
        )
        for layer in [*encoder.layers, *decoder.layers]:
            # Ours, like the paper, drops out sublayer outputs and embeddings only; PyTorch's
            # layers also drop attention weights and the feed-forward's hidden units.
            layer.dropout = nn.Identity()  # inside the feed-forward
            for attention in (layer.self_attn, getattr(layer, "multihead_attn", None)):
                if attention is not None:
                    attention.dropout = 0.0
        self.dropout = nn.Dropout(dropout)
        self.output_proj = nn.Linear(D, vocab_size, bias=False)
        self.output_proj.weight = self.embedding.weight

    def embed(self, ids: Tensor) -> Tensor:
        """(B, T) -> (B, T, D): scaled embeddings plus sinusoidal positions, then dropout."""
        positions = torch.arange(ids.size(1), device=ids.device)
        x = self.embedding(ids) * self.scale
        return self.dropout(x + sinusoidal_table(positions, self.d_model).to(x.dtype))

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        """Source (B, S) and shifted target (B, T) ids -> logits (B, T, V)."""
        T = tgt.size(1)
        src_padding = src == PAD_ID  # (B, S), True = ignore (PyTorch's convention)
        causal = nn.Transformer.generate_square_subsequent_mask(T, device=tgt.device)
        out = self.transformer(
            self.embed(src),
            self.embed(tgt),
            tgt_mask=causal,
            src_key_padding_mask=src_padding,
            memory_key_padding_mask=src_padding,
            tgt_is_causal=True,
        )  # (B, T, D)
        return self.output_proj(out)


def build_model(impl: str, size: Size, vocab_size: int, dropout: float) -> nn.Module:
    """Our model or the reference, post-norm, ReLU, one shared tied vocabulary."""
    if impl == "ours":
        config = model_config(
            vocab_size, size.d_model, size.num_heads, size.d_ff, size.num_layers, dropout
        )
        return build_transformer(config)  # with the fast paths, as training builds it
    return ReferenceTransformer(vocab_size, size, dropout, "relu", norm_first=False)


def copy_weights(ours: Transformer, reference: ReferenceTransformer) -> None:
    """Give the reference our weights, so that both compute the same function."""
    target = reference.transformer

    def attention(mine: nn.Module, theirs: nn.MultiheadAttention) -> None:
        theirs.in_proj_weight.copy_(mine.qkv_proj.weight)  # both stack W^Q, W^K, W^V
        theirs.in_proj_bias.copy_(mine.qkv_proj.bias)
        theirs.out_proj.load_state_dict(mine.out_proj.state_dict())

    with torch.no_grad():
        reference.embedding.weight.copy_(ours.src_embed.embedding.weight)
        for mine, theirs in zip(ours.encoder.layers, target.encoder.layers, strict=True):
            attention(mine.self_attn, theirs.self_attn)
            theirs.norm1.load_state_dict(mine.attn_sublayer.norm.state_dict())
            theirs.norm2.load_state_dict(mine.ff_sublayer.norm.state_dict())
            theirs.linear1.load_state_dict(mine.feed_forward.linear1.state_dict())
            theirs.linear2.load_state_dict(mine.feed_forward.linear2.state_dict())
        for mine, theirs in zip(ours.decoder.layers, target.decoder.layers, strict=True):
            attention(mine.self_attn, theirs.self_attn)
            attention(mine.cross_attn, theirs.multihead_attn)
            theirs.norm1.load_state_dict(mine.self_attn_sublayer.norm.state_dict())
            theirs.norm2.load_state_dict(mine.cross_attn_sublayer.norm.state_dict())
            theirs.norm3.load_state_dict(mine.ff_sublayer.norm.state_dict())
            theirs.linear1.load_state_dict(mine.feed_forward.linear1.state_dict())
            theirs.linear2.load_state_dict(mine.feed_forward.linear2.state_dict())


def check_same_function(size: Size, vocab_size: int) -> float:
    """Largest logit difference between the two models holding the same weights (eval mode)."""
    torch.manual_seed(0)
    ours = build_model("ours", size, vocab_size, dropout=0.1).eval()
    reference = build_model("reference", size, vocab_size, dropout=0.1).eval()
    copy_weights(ours, reference)
    src, tgt_in, _ = make_batch(8, 12, vocab_size, seed=0)
    with torch.no_grad():
        return float((ours(src, tgt_in) - reference(src, tgt_in)).abs().max())


def make_batch(
    sentences: int, target_length: int, vocab_size: int, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Random padded batch: source (B, S), target input (B, T) and output (B, T) ids.

    Target lengths are uniform in target_length ± 5 (so about sentences x target_length
    tokens), source lengths in target_length ± 7.
    """
    g = torch.Generator().manual_seed(seed)
    src_lengths = torch.randint(target_length - 7, target_length + 8, (sentences,), generator=g)
    tgt_lengths = torch.randint(target_length - 5, target_length + 6, (sentences,), generator=g)
    S, T = int(src_lengths.max()), int(tgt_lengths.max()) + 1
    src = torch.randint(FIRST_WORD_ID, vocab_size, (sentences, S), generator=g)
    src[torch.arange(S)[None, :] >= src_lengths[:, None]] = PAD_ID
    words = torch.randint(FIRST_WORD_ID, vocab_size, (sentences, T), generator=g)
    position = torch.arange(T)[None, :]
    tgt_in = torch.cat([torch.full((sentences, 1), BOS_ID), words[:, :-1]], dim=1)
    tgt_in[position > tgt_lengths[:, None]] = PAD_ID
    tgt_out = words.clone()
    tgt_out[position == tgt_lengths[:, None]] = EOS_ID
    tgt_out[position > tgt_lengths[:, None]] = PAD_ID
    return src, tgt_in, tgt_out


def measure(args: argparse.Namespace) -> dict[str, float]:
    """Run warm-up then timed training steps of one model in this process."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    baseline_rss = current_rss_mib()
    model = build_model(args.impl, SIZES[args.size], args.vocab, args.dropout).to(device).train()
    src, tgt_in, tgt_out = (
        t.to(device) for t in make_batch(args.sentences, args.target_length, args.vocab, args.seed)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    cuda = device.type == "cuda"
    autocast_dtype = torch.bfloat16 if cuda else None

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=cuda):
            logits = model(src, tgt_in)  # (B, T, V)
            loss = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)),
                tgt_out.reshape(-1),
                ignore_index=PAD_ID,
                label_smoothing=LABEL_SMOOTHING,
            )
        loss.backward()
        optimizer.step()

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step()
    step_times = []
    for _ in range(args.steps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        step_times.append(time.perf_counter() - start)
    step_time = statistics.median(step_times)  # robust to other jobs stealing a step's cores
    if cuda:
        memory = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        memory = peak_rss_mib() - baseline_rss
    tokens = int((tgt_out != PAD_ID).sum())
    return {
        "tokens_per_s": tokens / step_time,
        "step_s": step_time,
        "memory_mib": memory,
        "tokens": tokens,
    }


def measure_in_worker(
    args: argparse.Namespace, impl: str, size: str, device: str
) -> dict[str, float]:
    """Measure one model in a fresh subprocess and return what it reports."""
    options = ("steps", "warmup", "threads", "vocab", "sentences", "target_length", "dropout")
    arguments = ["--worker", "--impl", impl, "--size", size, "--device", device]
    arguments += as_flags(args, (*options, "seed"))
    return run_worker("benchmarks.model", arguments, f"{impl} {size} on {device}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; steps and warm-up default per device (CPU 5/2, CUDA 50/10)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["small", "base"])
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu [+ cuda]")
    parser.add_argument("--steps", type=int, default=None, help="timed steps")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    parser.add_argument("--quick", action="store_true", help="small size, 1 warm-up, 2 steps")
    parser.add_argument("--rounds", type=int, default=1, help="repeat; keep each best round")
    add_threads_flag(parser)
    parser.add_argument("--vocab", type=int, default=8000, help="shared vocabulary size")
    parser.add_argument("--sentences", type=int, default=160, help="sentences per batch")
    parser.add_argument("--target-length", type=int, default=25, help="mean target length")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--size", choices=sorted(SIZES), help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = ["small"]
        args.warmup = 1 if args.warmup is None else args.warmup
        args.steps = 2 if args.steps is None else args.steps
    if args.target_length < 8:
        parser.error("--target-length must be at least 8")
    return args


def main(argv: list[str] | None = None) -> None:
    """Measure every size on every device, both models, and print the table."""
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args)))
        return
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    torch.set_num_threads(args.threads)
    for size in args.sizes:
        difference = check_same_function(SIZES[size], args.vocab)
        if difference > 1e-3:
            raise SystemExit(f"error: the models differ by {difference:.2e} at size {size}")
    header = (
        f"{'configuration':<22} {'device':<6} {'tok/s ours':>11} {'tok/s ref':>11} "
        f"{'ratio':>6} {'mem ours':>10} {'mem ref':>10}"
    )
    print(
        f"batch: {args.sentences} sentences, ~{args.target_length} target tokens each; "
        f"vocab {args.vocab}; dropout {args.dropout}; CPU threads {args.threads}; "
        "memory in MiB (CPU: peak RSS growth, CUDA: max allocated, bf16 autocast)"
    )
    print(header)
    print("-" * len(header))
    for device in devices:
        cuda = device.startswith("cuda")
        settings = argparse.Namespace(**vars(args))
        settings.steps = args.steps if args.steps is not None else (50 if cuda else 5)
        settings.warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
        for size in args.sizes:
            best: dict[str, dict[str, float]] = {}
            for round_index in range(args.rounds):
                for impl in round_order(IMPLEMENTATIONS, round_index):
                    result = measure_in_worker(settings, impl, size, device)
                    if impl not in best or result["tokens_per_s"] > best[impl]["tokens_per_s"]:
                        best[impl] = result
            ours, ref = best["ours"], best["reference"]
            ratio = ours["tokens_per_s"] / ref["tokens_per_s"]
            print(
                f"{SIZES[size].describe():<22} {device:<6} {ours['tokens_per_s']:>11,.0f} "
                f"{ref['tokens_per_s']:>11,.0f} {ratio:>5.2f}x {ours['memory_mib']:>10,.0f} "
                f"{ref['memory_mib']:>10,.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
