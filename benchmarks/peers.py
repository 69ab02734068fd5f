"""Our training step and decoding against Hugging Face's `MarianMTModel` of the same shape.

Both models: d_model 256, 3 + 3 layers, 4 heads, d_ff 1024, ReLU, post-norm, dropout 0.1,
sinusoidal positions, embeddings scaled by √d_model, one shared 8k vocabulary tied to the
output layer, randomly initialised. Both train on the same batches (Multi30k en-de tokenized
with the run pipeline's SentencePiece, cut into ~4,096-token batches by our sampler, or
synthetic batches of Multi30k's shape when the corpus is absent), with the same loss
(label-smoothed cross-entropy, ε = 0.1, summed and divided by the target tokens), the same
optimizer (Adam, betas 0.9/0.98, eps 1e-9, gradient clipping at 1.0) and the same threads.
Ours computes the loss as `transformer-train` does (`TranslationLoss`: the output layer and
the loss together, padding skipped); Marian's logits go through our `label_smoothed_loss`.
Both run with `transformer-train`'s allocator setting (`keep_freed_memory`: glibc keeps the
memory a step frees for the next one). Each model trains in its own subprocess (so its peak
memory is its own), and the rounds alternate: ours, Marian, ours, Marian... Speed is target
tokens per second of the median step; memory the peak resident set above the size before
the model was built.

Decoding: the same sentences (the first --sentences of Multi30k test_2016_flickr, sorted by
length) in batches of 64, every output
forced to 20 tokens; ours `greedy_search` / `beam_search`, Marian `generate` with its cache
(num_beams 1 or 5, min_new_tokens = max_new_tokens = 20).

    python -m benchmarks.peers                       # 2 threads, 20 steps, 2 rounds
    python -m benchmarks.peers --threads 1 --steps 30 --rounds 3
    python -m benchmarks.peers --no-decoding

Needs `transformers` (pip install -e '.[bench]'); without it, only our rows are printed.
The last line reads `training ours/MarianMT: X.XX×`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from benchmarks.common import (
    FIRST_WORD_ID,
    MULTI30K,
    add_threads_flag,
    as_flags,
    cpu_name,
    current_rss_mib,
    model_config,
    peak_rss_mib,
    read_gzip_lines,
    round_order,
    run_worker,
)
from transformer.data.batching import TokenBatchSampler
from transformer.data.special_ids import BOS_ID, EOS_ID, PAD_ID
from transformer.decoding.search import beam_search, greedy_search
from transformer.model import build_model
from transformer.runtime.memory import keep_freed_memory
from transformer.training.loss import TranslationLoss, label_smoothed_loss

VOCAB, D_MODEL, HEADS, D_FF, LAYERS = 8000, 256, 4, 1024, 3
BATCH_TOKENS = 4096
LABEL_SMOOTHING = 0.1
DECODE_LENGTH, DECODE_BATCH = 20, 64
IMPLEMENTATIONS = ("ours", "marian")


def our_model() -> nn.Module:
    """Ours: the shape above, post-norm, ReLU, shared tied embeddings."""
    return build_model(model_config(VOCAB, D_MODEL, HEADS, D_FF, LAYERS, dropout=0.1))


def marian_model() -> nn.Module:
    """MarianMTModel of the same shape (its sinusoidal positions, scaled embeddings, tying)."""
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=VOCAB,
        d_model=D_MODEL,
        encoder_layers=LAYERS,
        decoder_layers=LAYERS,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=D_FF,
        decoder_ffn_dim=D_FF,
        activation_function="relu",
        dropout=0.1,
        attention_dropout=0.0,
        activation_dropout=0.0,
        max_position_embeddings=512,
        scale_embedding=True,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=BOS_ID,
        forced_eos_token_id=None,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
    )
    return MarianMTModel(config)


def summed_loss(
    impl: str, model: nn.Module, src: Tensor, tgt_in: Tensor, tgt_out: Tensor
) -> Tensor:
    """The label-smoothed loss of a batch, summed. Ours: its training objective
    (`TranslationLoss`, as `transformer-train` runs it); Marian: its logits through our
    `label_smoothed_loss` (the same numbers as `F.cross_entropy(label_smoothing=0.1)`, with
    fewer (N, V) buffers)."""
    if impl == "ours":
        return model(src, tgt_in, tgt_out)
    logits = model(
        input_ids=src,
        attention_mask=(src != PAD_ID).long(),
        decoder_input_ids=tgt_in,
        decoder_attention_mask=(tgt_in != PAD_ID).long(),
    ).logits
    return label_smoothed_loss(logits, tgt_out, LABEL_SMOOTHING, PAD_ID)


# ------------------------------------------------------------------------------------ batches


def make_data(
    count: int, sentences: int, directory: Path
) -> tuple[list[tuple[Tensor, Tensor, Tensor]], list[Tensor], str]:
    """`count` training batches (src, tgt_in, tgt_out) and decoding batches, and their source."""
    if (MULTI30K / "train.en.gz").is_file():
        from transformer.config import TokenizerConfig
        from transformer.data.tokenizer import train_tokenizers

        english = read_gzip_lines(MULTI30K / "train.en.gz")
        german = read_gzip_lines(MULTI30K / "train.de.gz")
        tokenizers = train_tokenizers(TokenizerConfig(vocab_size=VOCAB), english, german, directory)
        src_ids = tokenizers.src.encode_batch(english)
        tgt_ids = tokenizers.tgt.encode_batch(german)
        test_ids = tokenizers.src.encode_batch(read_gzip_lines(MULTI30K / "test_2016_flickr.en.gz"))
        where = "Multi30k en-de"
    else:  # synthetic sentences of Multi30k's lengths (about 16 pieces, 14 to 40)
        g = torch.Generator().manual_seed(0)
        lengths = torch.randint(8, 30, (29_000,), generator=g).tolist()
        src_ids = [torch.randint(FIRST_WORD_ID, VOCAB, (n,), generator=g).tolist() for n in lengths]
        tgt_ids = [
            torch.randint(FIRST_WORD_ID, VOCAB, (n + 2,), generator=g).tolist() for n in lengths
        ]
        test_ids = src_ids[:1000]
        where = "synthetic (no Multi30k at ../shared/data/multi30k)"
    src_ids = [ids + [EOS_ID] for ids in src_ids]
    tgt_ids = [ids + [EOS_ID] for ids in tgt_ids]
    sampler = TokenBatchSampler(
        [len(s) for s in src_ids], [len(t) for t in tgt_ids], BATCH_TOKENS, seed=1, shuffle=True
    )
    training = [padded_batch([src_ids[i] for i in b], [tgt_ids[i] for i in b])
                for b in sampler.batches(0)[:count]]  # fmt: skip
    test = sorted(([*ids, EOS_ID] for ids in test_ids[:sentences]), key=len)
    decoding = [pad(test[i : i + DECODE_BATCH]) for i in range(0, len(test), DECODE_BATCH)]
    return training, decoding, where


def pad(rows: list[list[int]]) -> Tensor:
    out = torch.full((len(rows), max(map(len, rows))), PAD_ID, dtype=torch.long)
    for i, ids in enumerate(rows):
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def padded_batch(src: list[list[int]], tgt: list[list[int]]) -> tuple[Tensor, Tensor, Tensor]:
    tgt_out = pad(tgt)  # y_1 .. y_n EOS
    tgt_in = pad([[BOS_ID, *ids[:-1]] for ids in tgt])  # BOS y_1 .. y_n
    return pad(src), tgt_in, tgt_out


# ------------------------------------------------------------------------------------ workers


def measure_training(
    impl: str, data: Path, steps: int, warmup: int, compiled: bool = False
) -> dict[str, float]:
    """Train one model for warmup + steps steps on the saved batches; median step speed.

    `compiled`: ours through `torch.compile(dynamic=True)` (as `training.compile: true`); the
    warm-up steps, compilation included, are reported as `warmup_s`.
    """
    batches = torch.load(data / "training.pt")
    keep_freed_memory()  # as transformer-train does; for both, like the threads
    baseline = current_rss_mib()
    torch.manual_seed(1)
    module = (our_model() if impl == "ours" else marian_model()).train()
    model = TranslationLoss(module, LABEL_SMOOTHING, PAD_ID) if impl == "ours" else module
    model = torch.compile(model, dynamic=True) if compiled and impl == "ours" else model
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    times, tokens = [], []
    started = time.perf_counter()
    warmup_s = 0.0
    for index in range(warmup + steps):
        if index == warmup:
            warmup_s = time.perf_counter() - started
        src, tgt_in, tgt_out = batches[index % len(batches)]
        start = time.perf_counter()
        count = int((tgt_out != PAD_ID).sum())
        loss = summed_loss(impl, model, src, tgt_in, tgt_out) / count
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= warmup:
            times.append(time.perf_counter() - start)
            tokens.append(count)
    per_token = statistics.median(t / n for t, n in zip(times, tokens, strict=True))
    peak = peak_rss_mib() - baseline
    return {"tokens_per_s": 1 / per_token, "memory_mib": peak, "warmup_s": warmup_s}


@torch.inference_mode()
def measure_decoding(impl: str, data: Path, beam: int) -> dict[str, float]:
    """Decode the saved sentences with outputs forced to DECODE_LENGTH tokens."""
    batches = torch.load(data / "decoding.pt")
    torch.manual_seed(1)
    model = (our_model() if impl == "ours" else marian_model()).eval()
    sentences, start = 0, time.perf_counter()
    for src in batches:
        if impl == "ours" and beam == 1:
            greedy_search(model, src, 0.0, DECODE_LENGTH, min_length=DECODE_LENGTH)
        elif impl == "ours":
            beam_search(model, src, beam, 0.0, DECODE_LENGTH, min_length=DECODE_LENGTH)
        else:
            model.generate(
                input_ids=src,
                attention_mask=(src != PAD_ID).long(),
                num_beams=beam,
                do_sample=False,
                min_new_tokens=DECODE_LENGTH,
                max_new_tokens=DECODE_LENGTH,
                use_cache=True,
            )
        sentences += src.size(0)
    return {"sentences_per_s": sentences / (time.perf_counter() - start)}


def measure_in_worker(args: argparse.Namespace, data: Path, impl: str, task: str) -> dict:
    """One model's training or decoding in a fresh subprocess, so that its memory is its own."""
    arguments = ["--worker", task, "--impl", impl, "--data", str(data)]
    arguments += as_flags(args, ("threads", "steps", "warmup"))
    arguments += ["--compile"] if args.compile else []
    return run_worker("benchmarks.peers", arguments, f"{impl} {task}")


def has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    add_threads_flag(parser)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; best kept")
    parser.add_argument("--no-decoding", action="store_true", help="training rows only")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="train ours through torch.compile(dynamic=True); its warm-up time is printed",
    )
    parser.add_argument("--sentences", type=int, default=256, help="sentences to decode")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        if args.worker == "train":
            result = measure_training(args.impl, args.data, args.steps, args.warmup, args.compile)
        else:
            result = measure_decoding(args.impl, args.data, int(args.worker.split("-")[1]))
        print(json.dumps(result))
        return 0
    impls = IMPLEMENTATIONS if has_transformers() else ("ours",)
    if len(impls) == 1:
        print("note: transformers is not installed (pip install -e '.[bench]'): our rows only")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        training, decoding, where = make_data(
            args.steps + args.warmup, args.sentences, data / "tokenizer"
        )
        torch.save(training, data / "training.pt")
        torch.save(decoding, data / "decoding.pt")
        tokens = sum(int((b[2] != PAD_ID).sum()) for b in training) / len(training)
        print(f"data: {where}; {len(training)} batches of ~{tokens:,.0f} target tokens; "
              f"{args.threads} thread(s); CPU: {cpu_name()}")  # fmt: skip
        tasks = ["train"] + ([] if args.no_decoding else ["decode-1", "decode-5"])
        best: dict[tuple[str, str], dict[str, float]] = {}
        for round_index in range(args.rounds):
            for task in tasks:
                for impl in round_order(impls, round_index):
                    result = measure_in_worker(args, data, impl, task)
                    key, metric = (impl, task), next(iter(result))
                    if key not in best or result[metric] > best[key][metric]:
                        best[key] = result
    print(f"\n{'row':<28} {'ours':>12} {'MarianMT':>12} {'ours/Marian':>12}")
    rows = [("training target tok/s", "train", "tokens_per_s"),
            ("training peak MiB", "train", "memory_mib")]  # fmt: skip
    if not args.no_decoding:
        rows += [("greedy sentences/s", "decode-1", "sentences_per_s"),
                 ("beam 5 sentences/s", "decode-5", "sentences_per_s")]  # fmt: skip
    for label, task, metric in rows:
        ours = best[("ours", task)][metric]
        if len(impls) == 1:
            print(f"{label:<28} {ours:>12,.0f}")
            continue
        theirs = best[("marian", task)][metric]
        print(f"{label:<28} {ours:>12,.0f} {theirs:>12,.0f} {ours / theirs:>11.2f}x")
    if args.compile:
        print(f"ours compiled: {best[('ours', 'train')]['warmup_s']:.0f} s of warm-up steps "
              f"({args.warmup}), compilation included")  # fmt: skip
    if len(impls) == 2:
        ratio = best[("ours", "train")]["tokens_per_s"] / best[("marian", "train")]["tokens_per_s"]
        print(f"training ours/MarianMT: {ratio:.2f}×")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
