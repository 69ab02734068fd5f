"""Load test of transformer-serve on loopback, against transformer-translate on the same sentences.

Starts `transformer-serve --run RUN` on a free 127.0.0.1 port, sends `--requests` POST
/translate requests of one sentence each from `--clients` concurrent clients (each a
keep-alive HTTP/1.1 connection that sends its next request when the last one is answered),
and measures throughput (sentences/s from the first request sent to the last answer) and the
latency of each request (p50, p95, p99). Then transformer-translate translates the same
sentences in a process of its own, as the command does with `--input FILE` (its option
parser, loader, threads and decoding settings, the file in chunks of its CHUNK_LINES),
timed inside that process after a warm-up, so that neither side counts its start-up; and
the same translator on groups of `--clients` sentences, one group at a time (no HTTP): the
most that batching whole requests can reach with that many clients. It prints the ratios and
how many translations are identical (the same search code decodes both). Everything stays on
127.0.0.1 and stops by itself: the load ends after `--requests`, and `--timeout` bounds each
load.

    python -m benchmarks.serve --run runs/toy                  # 1,000 requests, 32 clients
    python -m benchmarks.serve --run runs/toy --requests 200 --clients 8
    python -m benchmarks.serve --run runs/toy --serve-option=--workers=1
    python -m benchmarks.serve --run runs/toy --engine ctranslate2   # both sides: CTranslate2

With `--engine ctranslate2` the server and transformer-translate both decode with the run's
CTranslate2 export (RUN/ctranslate2, made first when missing; `--export DIR` goes in
--serve-option and is not passed to the translate side).
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
ENGINES = ("pytorch", "ctranslate2")  # transformer-serve's and -translate's --engine


@dataclass
class LoadResult:
    """What the clients saw: each request's latency, the answers, the wall time of the load."""

    latencies: list[float]
    translations: list[str]
    seconds: float
    batches: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--run", required=True, type=Path, help="the run directory")
    parser.add_argument(
        "--input", type=Path, default=REPO / "data" / "test.en", help="sentences, cycled"
    )
    parser.add_argument("--requests", type=int, default=1000, help="requests in all")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--timeout", type=float, default=600, help="bound on the whole test (s)")
    parser.add_argument(
        "--serve-option",
        action="append",
        default=[],
        metavar="OPTION",
        help="passed on to transformer-serve, e.g. --serve-option=--workers=1 (repeatable)",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="pytorch",
        help="the --engine of both transformer-serve and transformer-translate (default: pytorch)",
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or args.clients < 1:
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


def serve_load(args: argparse.Namespace, texts: list[str]) -> LoadResult:
    """The server under load: warmed up on one round of the clients, then timed."""
    port = free_port()
    options = [*args.serve_option, "--engine", args.engine]
    process = start_server(args.run, port, options, timeout=120)
    try:
        warm = texts[: args.clients]
        asyncio.run(asyncio.wait_for(load(port, warm, args.clients), args.timeout))
        before = get_json(f"http://{HOST}:{port}/health")["batches"]
        latencies, answers, seconds = asyncio.run(
            asyncio.wait_for(load(port, texts, args.clients), args.timeout)
        )
        batches = get_json(f"http://{HOST}:{port}/health")["batches"] - before
    finally:
        stop_server(process)
    return LoadResult(latencies, answers, seconds, batches)


# transformer-translate's batch path: its option parser, loader and decoding settings, and the
# file translated in chunks of CHUNK_LINES as its --input loop does; timed after a warm-up.
# Then the same translator on groups of as many sentences as there are clients, one group at
# a time: the most that batching whole requests can reach at that concurrency.
_BATCH = """
import json, sys, time
from transformer.cli.decoding import decoding_from_args, load_translator
from transformer.cli.translate import CHUNK_LINES, build_parser
args = build_parser().parse_args(["--run", sys.argv[1], "--engine", sys.argv[4]])
translator = load_translator(args)
decoding = decoding_from_args(translator.config.decoding, args)
with open(sys.argv[2], encoding="utf-8") as handle:
    lines = handle.read().splitlines()
size = int(sys.argv[3])
translator.translate(lines[:size], decoding)
start = time.perf_counter()
best = []
for first in range(0, len(lines), CHUNK_LINES):
    chunk = lines[first : first + CHUNK_LINES]
    best += [nbest[0].text for nbest in translator.translate(chunk, decoding)]
seconds = time.perf_counter() - start
groups = [lines[first : first + size] for first in range(0, len(lines), size)]
start = time.perf_counter()
for group in groups:
    translator.translate(group, decoding)
grouped = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "grouped": grouped, "translations": best}))
"""


@dataclass
class BatchResult:
    """transformer-translate's time for all the sentences, for them in groups, its output."""

    seconds: float
    grouped_seconds: float
    translations: list[str]


def batch_translate(
    run: Path, texts: list[str], group: int, engine: str = "pytorch"
) -> BatchResult:
    """transformer-translate's batch translation of `texts`, and of groups of `group` of them."""
    with tempfile.TemporaryDirectory() as directory:
        source = Path(directory) / "source.txt"
        source.write_text("\n".join(texts) + "\n", encoding="utf-8")
        command = [sys.executable, "-c", _BATCH, str(run), str(source), str(group), engine]
        done = subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    result = json.loads(done.stdout)
    return BatchResult(result["seconds"], result["grouped"], result["translations"])


def percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    texts = sentences(args.input, args.requests)
    deadline = time.monotonic() + args.timeout
    served = serve_load(args, texts)
    batch = batch_translate(args.run, texts, group=args.clients, engine=args.engine)
    if time.monotonic() > deadline:
        print(f"note: the test took longer than --timeout {args.timeout:.0f} s")
    batch_rate = len(texts) / batch.seconds
    serve_rate = len(texts) / served.seconds
    ms = [latency * 1000 for latency in served.latencies]
    same = sum(a == b for a, b in zip(served.translations, batch.translations, strict=True))
    print(f"CPU: {cpu_name()}")
    print(
        f"{len(texts)} requests of one sentence ({args.input.name}, cycled), {args.clients} "
        f"clients; the run's decoding settings; --engine {args.engine}; transformer-serve "
        f"{' '.join(args.serve_option)}"
    )
    print()
    print("| | sentences/s | p50 latency | p95 | p99 |")
    print("|---|---|---|---|---|")
    print(
        f"| transformer-serve, {args.clients} clients | {serve_rate:.1f} | "
        f"{percentile(ms, 50):.0f} ms | {percentile(ms, 95):.0f} ms | {percentile(ms, 99):.0f} ms |"
    )
    print(f"| transformer-translate, all {len(texts)} at once | {batch_rate:.1f} | | | |")
    grouped_rate = len(texts) / batch.grouped_seconds
    print(f"| its translator on groups of {args.clients}, no HTTP | {grouped_rate:.1f} | | | |")
    print()
    print(f"ratio serve / translate: {serve_rate / batch_rate:.2f}")
    print(f"ratio groups of {args.clients} / translate: {grouped_rate / batch_rate:.2f}")
    print(
        f"server batches: {served.batches} ({len(texts) / max(served.batches, 1):.1f} sentences "
        f"each); serve {served.seconds:.1f} s, translate {batch.seconds:.1f} s"
    )
    print(f"identical translations: {same} of {len(texts)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
