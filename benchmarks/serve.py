"""Load test of transformer-serve on loopback, against transformer-translate on the same sentences.

For each serving mode (`--modes`: the PyTorch engine with continuous batching, with the
groups batcher, and the CTranslate2 engine), starts `transformer-serve --run RUN` on a free
127.0.0.1 port and, for each client count of `--clients`, sends `--requests` POST /translate
requests of one sentence each from that many concurrent clients (each a keep-alive HTTP/1.1
connection that sends its next request when the last one is answered), after a warm-up
round. It measures throughput (sentences/s from the first request sent to the last answer)
and each request's latency (p50, p95, p99), and the machine's load average over the run.

Beside it, in a process of its own and timed inside it after a warm-up: transformer-translate
on all the sentences as the command does with `--input FILE` (its option parser, loader,
threads and decoding settings, chunks of CHUNK_LINES); the same translator on groups of as
many sentences as there are clients, one group at a time, without HTTP (the most that
batching whole requests can reach at that concurrency); and one `Translator.translate` call
per sentence (the 1-client latency floor). The CTranslate2 mode is compared with
`transformer-translate --engine ctranslate2` (the export must exist: transformer-export).
Everything stays on 127.0.0.1; `--timeout` bounds each load.

The output ends with one line per client count, `serve/translate at N clients: X.XX×`, for
the first mode (continuous batching by default), the largest count last.

    python -m benchmarks.serve --run runs/toy                       # 5,000 requests a count
    python -m benchmarks.serve --run runs/toy --requests 500 --clients 8,32 --modes continuous
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import REPO, cpu_name

HOST = "127.0.0.1"


@dataclass
class LoadResult:
    """What the clients saw: each request's latency, the answers, the wall time of the load."""

    latencies: list[float]
    translations: list[str]
    seconds: float
    batches: int
    load: float  # the 1-minute load average at the end


MODES = {  # mode -> (transformer-serve options, transformer-translate options)
    "continuous": (["--batching", "continuous"], []),
    "groups": (["--batching", "groups"], []),
    "ctranslate2": (["--engine", "ctranslate2"], ["--engine", "ctranslate2"]),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--run", required=True, type=Path, help="the run directory")
    parser.add_argument(
        "--input", type=Path, default=REPO / "data" / "test.en", help="sentences, cycled"
    )
    parser.add_argument("--requests", type=int, default=5000, help="requests per client count")
    parser.add_argument(
        "--clients", default="1,8,32,128,256", help="concurrent clients, comma-separated"
    )
    parser.add_argument(
        "--modes",
        default="continuous,groups,ctranslate2",
        help=f"serving modes, comma-separated, of {', '.join(MODES)}",
    )
    parser.add_argument("--timeout", type=float, default=600, help="bound on each load (s)")
    parser.add_argument(
        "--serve-option",
        action="append",
        default=[],
        metavar="OPTION",
        help="passed on to transformer-serve, e.g. --serve-option=--workers=1 (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        args.clients = [int(n) for n in args.clients.split(",")]
    except ValueError:
        parser.error(f"--clients: comma-separated integers, not {args.clients!r}")
    args.modes = args.modes.split(",")
    unknown = [mode for mode in args.modes if mode not in MODES]
    if unknown:
        parser.error(f"--modes: unknown {', '.join(unknown)} (choose from {', '.join(MODES)})")
    if args.requests < 1 or min(args.clients) < 1:
        parser.error("--requests and --clients must be >= 1")
    return args


def sentences(path: Path, count: int) -> list[str]:
    """`count` non-empty lines of `path`, cycled."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise SystemExit(f"error: {path} has no sentences")
    return [lines[i % len(lines)] for i in range(count)]


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def get_json(url: str) -> dict:
    """GET `url`; its JSON."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.load(reply)


def start_server(run: Path, port: int, options: list[str], timeout: float) -> subprocess.Popen:
    """transformer-serve on HOST:port, once /health answers."""
    command = [sys.executable, "-m", "transformer.cli.serve", "--run", str(run)]
    command += ["--host", HOST, "--port", str(port), *options]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"error: transformer-serve exited:\n{process.stderr.read()}")
        try:
            if get_json(f"http://{HOST}:{port}/health")["status"] == "ok":
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"error: transformer-serve did not answer within {timeout:.0f} s")


def stop_server(process: subprocess.Popen) -> str:
    """Stop the server as Ctrl-C does; returns what it wrote on stderr."""
    process.send_signal(signal.SIGINT)
    try:
        return process.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()[1]


async def _post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int, body: bytes
) -> dict:
    """One POST /translate on a keep-alive connection; the answer's JSON."""
    head = (
        f"POST /translate HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    status = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    data = await reader.readexactly(length)
    if b" 200 " not in status:
        raise RuntimeError(f"the server answered {status.decode().strip()}: {data[:200]!r}")
    return json.loads(data)


async def load(port: int, texts: list[str], clients: int) -> tuple[list[float], list[str], float]:
    """Send every text from `clients` connections; latencies, answers, wall seconds."""
    latencies = [0.0] * len(texts)
    answers = [""] * len(texts)
    next_index = iter(range(len(texts)))

    async def client() -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            for i in next_index:  # shared: each client takes the next request
                body = json.dumps({"text": texts[i]}).encode()
                start = time.perf_counter()
                result = await _post(reader, writer, port, body)
                latencies[i] = time.perf_counter() - start
                answers[i] = result["translations"][0]["text"]
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(min(clients, len(texts)))))
    return latencies, answers, time.perf_counter() - start


def serve_loads(
    args: argparse.Namespace, texts: list[str], options: list[str]
) -> dict[int, LoadResult]:
    """The server (one start) under load at each client count: warmed up, then timed."""
    port = free_port()
    process = start_server(args.run, port, [*options, *args.serve_option], timeout=120)
    results = {}
    try:
        for clients in args.clients:
            warm = texts[: max(clients, 8)]
            asyncio.run(asyncio.wait_for(load(port, warm, clients), args.timeout))
            before = get_json(f"http://{HOST}:{port}/health")["batches"]
            latencies, answers, seconds = asyncio.run(
                asyncio.wait_for(load(port, texts, clients), args.timeout)
            )
            batches = get_json(f"http://{HOST}:{port}/health")["batches"] - before
            results[clients] = LoadResult(latencies, answers, seconds, batches, os.getloadavg()[0])
    finally:
        stop_server(process)
    return results


# transformer-translate's batch path: its option parser, loader and decoding settings, and the
# file translated in chunks of CHUNK_LINES as its --input loop does; timed after a warm-up.
# Then the same translator on groups of as many sentences as there are clients, one group at
# a time, for each client count; and one call per sentence, for the latency of one request.
_BATCH = """
import json, sys, time
from transformer.cli.decoding import decoding_from_args, load_translator
from transformer.cli.translate import CHUNK_LINES, build_parser
run, source, sizes, *options = sys.argv[1:]
args = build_parser().parse_args(["--run", run, *options])
translator = load_translator(args)
decoding = decoding_from_args(translator.config.decoding, args)
with open(source, encoding="utf-8") as handle:
    lines = handle.read().splitlines()
translator.translate(lines[:64], decoding)
start = time.perf_counter()
best = []
for first in range(0, len(lines), CHUNK_LINES):
    chunk = lines[first : first + CHUNK_LINES]
    best += [nbest[0].text for nbest in translator.translate(chunk, decoding)]
seconds = time.perf_counter() - start
grouped = {}
for size in map(int, sizes.split(",")):
    start = time.perf_counter()
    for first in range(0, len(lines), size):
        translator.translate(lines[first : first + size], decoding)
    grouped[size] = time.perf_counter() - start
single = []
for line in lines[:300]:
    start = time.perf_counter()
    translator.translate([line], decoding)
    single.append(time.perf_counter() - start)
print(json.dumps({"seconds": seconds, "grouped": grouped, "single": single, "translations": best}))
"""


@dataclass
class BatchResult:
    """transformer-translate on all the sentences, on groups of each size, and one at a time."""

    seconds: float
    grouped_seconds: dict[int, float]
    single: list[float]
    translations: list[str]


def batch_translate(
    run: Path, texts: list[str], groups: list[int], options: list[str]
) -> BatchResult:
    """transformer-translate's batch translation of `texts`, of groups of each size, and of
    single sentences, in a process of its own."""
    with tempfile.TemporaryDirectory() as directory:
        source = Path(directory) / "source.txt"
        source.write_text("\n".join(texts) + "\n", encoding="utf-8")
        sizes = ",".join(map(str, groups))
        command = [sys.executable, "-c", _BATCH, str(run), str(source), sizes, *options]
        done = subprocess.run(command, check=True, capture_output=True, text=True, timeout=1800)
    result = json.loads(done.stdout)
    grouped = {int(size): seconds for size, seconds in result["grouped"].items()}
    return BatchResult(result["seconds"], grouped, result["single"], result["translations"])


def percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    texts = sentences(args.input, args.requests)
    print(f"CPU: {cpu_name()}; run {args.run}")
    print(
        f"{len(texts)} requests of one sentence ({args.input.name}, cycled) at each client "
        f"count; the run's decoding settings; transformer-serve {' '.join(args.serve_option)}"
    )
    ratios: dict[int, float] = {}
    for mode in args.modes:
        serve_options, translate_options = MODES[mode]
        served = serve_loads(args, texts, serve_options)
        batch = batch_translate(args.run, texts, args.clients, translate_options)
        batch_rate = len(texts) / batch.seconds
        one = percentile([t * 1000 for t in batch.single], 50)
        print()
        print(f"### {mode}: transformer-serve {' '.join(serve_options)}")
        print()
        print(
            "| clients | sentences/s | p50 latency | p95 | p99 | serve / translate | "
            "serve / groups, no HTTP | groups/s | load |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for clients, result in served.items():
            rate = len(texts) / result.seconds
            grouped_rate = len(texts) / batch.grouped_seconds[clients]
            ms = [latency * 1000 for latency in result.latencies]
            print(
                f"| {clients} | {rate:.1f} | {percentile(ms, 50):.1f} ms | "
                f"{percentile(ms, 95):.1f} ms | {percentile(ms, 99):.1f} ms | "
                f"{rate / batch_rate:.2f}× | {rate / grouped_rate:.2f}× | {grouped_rate:.1f} | "
                f"{result.load:.2f} |"
            )
            if mode == args.modes[0]:
                ratios[clients] = rate / batch_rate
        same = min(
            sum(a == b for a, b in zip(r.translations, batch.translations, strict=True))
            for r in served.values()
        )
        print()
        print(
            f"transformer-translate {' '.join(translate_options)}: {batch_rate:.1f} sentences/s "
            f"on all {len(texts)}; one sentence per call: p50 {one:.1f} ms; identical "
            f"translations: at least {same} of {len(texts)} at every client count"
        )
    print()
    for clients in sorted(ratios):
        print(f"serve/translate at {clients} clients: {ratios[clients]:.2f}×")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
