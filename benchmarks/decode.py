"""Decoding speed: sentences/s and tokens/s of greedy and beam search, with and without the cache.

Decodes the 1,000 English sentences of Multi30k test_2016_flickr (or synthetic sentences when
the file is absent) in batches of 64 with a randomly initialised Transformer (d_model 256,
3 + 3 layers, 4 heads, d_ff 1024, one shared 8k vocabulary). There is no trained tokenizer
here, so each whitespace-separated word is mapped to a fixed pseudo-random id (CRC32 of the
word) and EOS is appended; as in the translator, batches are cut from the sentences sorted by
length, so little encoder work goes to padding. A random model says EOS at random, so every
output is forced to exactly `--length` tokens (min_length = max length = 20), and tokens/s
is 20 x sentences/s. The slow runs without the cache decode only `--uncached-sentences`.
"busy cores" is CPU time over wall time: below `--threads` when other programs share the CPU,
where OMP_WAIT_POLICY=PASSIVE in the environment saves much time lost to spinning threads.
Each batch is decoded `--rounds` times (3) and its fastest time counts: on a shared virtual
machine the same run can be a third slower or faster from one minute to the next. The cached
searches are also timed with `--workers` (2) batches decoded at once, each in its own thread
with its share of the threads, as transformer-translate does on a CPU by default.

With `--with-ctranslate2` the same model is also exported to CTranslate2 (float32 and int8
weights, `transformer.export.spec`) and the same batches are decoded by
`ctranslate2.Translator` with the options of `--engine ctranslate2`, on the same threads (one
batch at a time, and `--workers` batches at once): a second table compares it with ours.

    python -m benchmarks.decode            # the full run, CPU with 2 threads (+ CUDA)
    python -m benchmarks.decode --quick    # 128 sentences, a smoke test
    python -m benchmarks.decode --with-ctranslate2   # + CTranslate2 (its extra installed)
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from benchmarks.common import (
    FIRST_WORD_ID,
    MULTI30K,
    add_threads_flag,
    model_config,
    read_gzip_lines,
    synchronize,
)
from transformer.config import DecodingConfig
from transformer.data.special_ids import EOS_ID, PAD_ID
from transformer.decoding.search import beam_search, greedy_search
from transformer.errors import UserError
from transformer.export.engine import search_options
from transformer.export.spec import import_ctranslate2, transformer_spec
from transformer.model import Transformer, build_model

TEST_FILE = "test_2016_flickr.en.gz"


@dataclass
class Result:
    """One timed configuration."""

    mode: str
    cache: bool
    workers: int  # batches decoded at once, each in its own thread
    device: str
    sentences: int
    seconds: float
    cpu_seconds: float
    tokens: int

    @property
    def sentences_per_second(self) -> float:
        """Sentences decoded per second."""
        return self.sentences / self.seconds

    @property
    def cpu_share(self) -> float:
        """Cores kept busy on average: below the thread count when others use the CPU."""
        return self.cpu_seconds / self.seconds

    @property
    def tokens_per_second(self) -> float:
        """Output tokens (of the best hypothesis) per second."""
        return self.tokens / self.seconds


def read_sentences(data_dir: Path, limit: int) -> tuple[list[str], str]:
    """The first `limit` test sentences, or synthetic ones when the file is missing."""
    path = data_dir / TEST_FILE
    if path.is_file():
        return read_gzip_lines(path, limit), str(path)
    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    lines = [" ".join(rng.choices(words, k=rng.randint(5, 20))) for _ in range(limit)]
    return lines, f"synthetic ({path} not found)"


def word_ids(sentence: str, vocab_size: int) -> list[int]:
    """Each word -> a fixed id in [4, vocab_size) from its CRC32, then EOS."""
    span = vocab_size - FIRST_WORD_ID
    return [FIRST_WORD_ID + zlib.crc32(w.encode()) % span for w in sentence.split()] + [EOS_ID]


def batches(sentences: list[list[int]], batch_size: int, device: torch.device) -> list[Tensor]:
    """Padded (B, S) id tensors of `batch_size` sentences, longest first (as the translator)."""
    ordered = sorted(sentences, key=len, reverse=True)
    result = []
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start : start + batch_size]
        width = max(len(ids) for ids in chunk)
        padded = [ids + [PAD_ID] * (width - len(ids)) for ids in chunk]
        result.append(torch.tensor(padded, dtype=torch.long, device=device))
    return result


def random_model(vocab_size: int, seed: int) -> Transformer:
    """The benchmark's model, randomly initialised, in eval mode."""
    torch.manual_seed(seed)
    return build_model(model_config(vocab_size)).eval()


def time_decoding(
    decode: Callable[[Tensor], list[int]],
    inputs: list[Tensor],
    device: torch.device,
    length: int,
    rounds: int = 1,
    workers: int = 1,
) -> tuple[float, float, int]:
    """Wall and CPU seconds to decode every batch, and the number of output tokens produced.

    With several rounds each batch is decoded that many times and its fastest time counts
    (with the CPU time of that run), so that slow spells of a shared machine weigh less.
    With several workers, batches are decoded that many at once and the fastest round counts.
    """
    decode(inputs[0][:4])  # warm-up: allocations, kernels, thread pools
    synchronize(device)
    if workers > 1:
        return _time_parallel(decode, inputs, device, length, rounds, workers)
    seconds, cpu_seconds = [math.inf] * len(inputs), [0.0] * len(inputs)
    lengths: list[int] = []
    for _ in range(rounds):
        lengths = []
        for i, batch in enumerate(inputs):
            start, cpu_start = time.perf_counter(), time.process_time()
            lengths += decode(batch)
            synchronize(device)
            wall = time.perf_counter() - start
            if wall < seconds[i]:
                seconds[i], cpu_seconds[i] = wall, time.process_time() - cpu_start
    if any(n != length for n in lengths):
        raise RuntimeError(f"outputs should have {length} tokens, got lengths {set(lengths)}")
    return sum(seconds), sum(cpu_seconds), sum(lengths)


def _time_parallel(
    decode: Callable[[Tensor], list[int]],
    inputs: list[Tensor],
    device: torch.device,
    length: int,
    rounds: int,
    workers: int,
) -> tuple[float, float, int]:
    """`time_decoding` with `workers` threads, each decoding whole batches (as the Translator)."""
    best = (math.inf, 0.0)
    lengths: list[int] = []
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(decode, [batch[:4] for batch in inputs[:workers]]))  # warm each thread
        for _ in range(rounds):
            start, cpu_start = time.perf_counter(), time.process_time()
            lengths = [n for out in pool.map(decode, inputs) for n in out]
            synchronize(device)
            wall = time.perf_counter() - start
            best = min(best, (wall, time.process_time() - cpu_start))
    if any(n != length for n in lengths):
        raise RuntimeError(f"outputs should have {length} tokens, got lengths {set(lengths)}")
    return best[0], best[1], sum(lengths)


def run(args: argparse.Namespace) -> int:
    """Time every mode x cache x device and print the table."""
    torch.set_num_threads(args.threads)
    if args.with_ctranslate2:
        import_ctranslate2()  # before the slow part: one line naming the extra if missing
    count = 128 if args.quick else args.sentences
    if args.quick:
        args.rounds = 1
    texts, source = read_sentences(args.data, count)
    ids = [word_ids(text, args.vocab_size) for text in texts]
    model = random_model(args.vocab_size, args.seed).to(getattr(torch, args.dtype))
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
    print(f"sentences: {len(ids)} from {source}; source length mean {_mean_length(ids):.1f}")
    print(
        f"model: d_model 256, 3+3 layers, 4 heads, d_ff 1024, vocab {args.vocab_size} "
        f"(random, {model.num_parameters() / 1e6:.1f}M parameters); batches of "
        f"{args.batch_size}; outputs forced to {args.length} tokens; {args.dtype}; CPU threads "
        f"{torch.get_num_threads()}"
    )
    if torch.get_num_threads() > 1 and "OMP_WAIT_POLICY" not in os.environ:
        print("hint: on a busy machine, OMP_WAIT_POLICY=PASSIVE keeps idle threads from spinning")
    length = args.length
    results = []
    for device in devices:
        model.to(device)
        # The Translator's default on a CPU: several batches at once, the threads shared out.
        parallel = [(True, args.workers)] if args.workers > 1 and device.type == "cpu" else []
        for mode, beam in (("greedy", 1), (f"beam {args.beam}", args.beam)):
            for cache, workers in [(True, 1), *parallel, (False, 1)]:
                subset = ids if cache else ids[: args.uncached_sentences]
                inputs = batches(subset, args.batch_size, device)

                def decode(src: Tensor, beam: int = beam, cache: bool = cache) -> list[int]:
                    """Output lengths of the best hypotheses for one batch."""
                    if beam == 1:
                        out = greedy_search(model, src, 0.0, length, length, use_cache=cache)
                    else:
                        out = beam_search(
                            model, src, beam, 0.0, length, min_length=length, use_cache=cache
                        )
                    return [len(hypotheses[0].tokens) for hypotheses in out]

                torch.set_num_threads(max(1, args.threads // workers))
                seconds, cpu_seconds, tokens = time_decoding(
                    decode, inputs, device, length, args.rounds, workers
                )
                torch.set_num_threads(args.threads)
                results.append(
                    Result(
                        mode, cache, workers, device.type, len(subset), seconds, cpu_seconds, tokens
                    )
                )
                _print_row(results[-1])
    print()
    _print_table(results)
    for device in devices:
        timed = {
            (r.mode, r.cache): r for r in results if r.device == device.type and r.workers == 1
        }
        cached, uncached = timed[(f"beam {args.beam}", True)], timed[(f"beam {args.beam}", False)]
        speedup = cached.sentences_per_second / uncached.sentences_per_second
        print(f"cache speedup for beam {args.beam} on {device.type}: {speedup:.1f}x")
    if args.with_ctranslate2:
        model.to("cpu")
        ours = [r for r in results if r.device == "cpu" and r.cache]
        _print_ctranslate2_table(time_ctranslate2(model, ids, args), ours)
    return 0


def time_ctranslate2(
    model: Transformer, ids: list[list[int]], args: argparse.Namespace
) -> list[tuple[str, Result]]:
    """The cached CPU rows again, decoded by CTranslate2: (weights, result) for float32, int8."""
    ct2 = import_ctranslate2()
    pieces = [f"w{i}" for i in range(args.vocab_size)]  # made-up: the ids are what matter
    pieces[:FIRST_WORD_ID] = ["<pad>", "<unk>", "<s>", "</s>"]
    inputs = batches(ids, args.batch_size, torch.device("cpu"))
    workers = [1, args.workers] if args.workers > 1 else [1]
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for weights in ("float32", "int8"):
            spec = transformer_spec(model, pieces, pieces, model.config.max_positions)
            spec.validate()
            spec.optimize(quantization=weights)
            Path(directory, weights).mkdir()
            spec.save(f"{directory}/{weights}")
            for mode, beam in (("greedy", 1), (f"beam {args.beam}", args.beam)):
                forced = DecodingConfig(
                    beam_size=beam, max_len_a=0.0, max_len_b=args.length, min_length=args.length
                )
                options = search_options(forced, args.length)
                for count in workers:
                    translator = ct2.Translator(
                        f"{directory}/{weights}",
                        device="cpu",
                        inter_threads=count,
                        intra_threads=max(1, args.threads // count),
                    )

                    def decode(src: Tensor, translator=translator, options=options) -> list[int]:
                        """Output lengths of the best hypotheses for one batch."""
                        sources = [[pieces[i] for i in row if i != PAD_ID] for row in src.tolist()]
                        out = translator.translate_batch(sources, **options)
                        return [len(result.hypotheses[0]) for result in out]

                    seconds, cpu_seconds, tokens = time_decoding(
                        decode, inputs, torch.device("cpu"), args.length, args.rounds, count
                    )
                    result = Result(
                        mode, True, count, "cpu", len(ids), seconds, cpu_seconds, tokens
                    )
                    rows.append((weights, result))
                    print(f"  ctranslate2 {weights:<7}", end="")
                    _print_row(result)
    return rows


def _print_ctranslate2_table(rows: list[tuple[str, Result]], ours: list[Result]) -> None:
    """CTranslate2's rows, each against our cached float32 row of the same mode and workers."""
    print(f"\nCTranslate2 {import_ctranslate2().__version__}, the same batches and threads:")
    print(
        f"{'mode':<8} {'weights':<8} {'workers':>7} {'sentences/s':>12} {'tokens/s':>10} "
        f"{'busy cores':>10} {'vs ours':>8}"
    )
    base = {(r.mode, r.workers): r.sentences_per_second for r in ours}
    for weights, r in rows:
        ratio = r.sentences_per_second / base[(r.mode, r.workers)]
        print(
            f"{r.mode:<8} {weights:<8} {r.workers:>7} {r.sentences_per_second:>12.1f} "
            f"{r.tokens_per_second:>10.0f} {r.cpu_share:>10.2f} {ratio:>7.2f}x"
        )


def _mean_length(ids: list[list[int]]) -> float:
    return sum(len(x) for x in ids) / max(len(ids), 1)


def _print_row(result: Result) -> None:
    print(
        f"  {result.mode:<8} cache={'yes' if result.cache else 'no ':<3} "
        f"workers={result.workers} {result.device:<4} "
        f"{result.sentences:>5} sentences in {result.seconds:7.2f} s",
        flush=True,
    )


def _print_table(results: list[Result]) -> None:
    print(
        f"{'mode':<8} {'cache':<5} {'workers':>7} {'device':<6} {'sentences/s':>12} "
        f"{'tokens/s':>10} {'busy cores':>10}"
    )
    for r in results:
        print(
            f"{r.mode:<8} {'yes' if r.cache else 'no':<5} {r.workers:>7} {r.device:<6} "
            f"{r.sentences_per_second:>12.1f} {r.tokens_per_second:>10.0f} {r.cpu_share:>10.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--data", type=Path, default=MULTI30K, help="Multi30k folder")
    parser.add_argument("--sentences", type=int, default=1000, help="how many to decode")
    parser.add_argument("--quick", action="store_true", help="only 128 sentences")
    parser.add_argument(
        "--uncached-sentences",
        type=int,
        default=256,
        help="how many sentences the slow no-cache runs decode (default 256)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--length", type=int, default=20, help="forced output length")
    parser.add_argument("--vocab-size", type=int, default=8000)
    add_threads_flag(parser)
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="also time the cached searches with this many batches at once on CPU, the "
        "threads shared out, as transformer-translate does by default (default 2; 1: off)",
    )
    parser.add_argument("--cpu-only", action="store_true", help="skip CUDA even if present")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="model weights"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="decode each batch this many times and keep its fastest (default 3)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--with-ctranslate2",
        action="store_true",
        help="also decode with CTranslate2, float32 and int8 (pip install -e '.[ctranslate2]')",
    )
    try:
        return run(parser.parse_args(argv))
    except UserError as error:
        sys.stderr.write(f"error: {error}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
