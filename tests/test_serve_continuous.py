"""The server's continuous batching under load: every request answered, in order, correctly,
through a burst, cancelled requests, a slow client, and long sentences around short ones.

The model is the tiny run of `tiny_runs`; expected answers come from `Translator.translate`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny_runs import PAIRS, kept_logging, train_tiny_run

import benchmarks.serve as benchmark
from transformer.config import DecodingConfig
from transformer.decoding.translator import Translation, Translator

pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[serve]'")

from transformer.serve.continuous import ContinuousBatcher  # noqa: E402

SOURCES = [source for source, _ in PAIRS]


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    with kept_logging():
        yield


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("continuous"))


@pytest.fixture(scope="module")
def translator(run_dir: Path) -> Translator:
    return Translator.from_run(run_dir, device="cpu")


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def texts_of(results: list[list[Translation]]) -> list[str]:
    return [nbest[0].text for nbest in results]


async def with_batcher(translator: Translator, work, max_tokens: int = 4000, workers: int = 1):
    """Run `work(batcher)` on a started batcher, and stop it after."""
    batcher = ContinuousBatcher(translator, max_tokens, workers)
    await batcher.start()
    try:
        return await work(batcher)
    finally:
        await batcher.stop()


@pytest.mark.parametrize("beam_size", [1, 5])
def test_a_burst_of_500_requests_is_answered_completely_correctly_and_in_order(
    translator: Translator, beam_size: int
) -> None:
    decoding = dataclasses.replace(translator.config.decoding, beam_size=beam_size, nbest=1)
    requests = [
        [SOURCES[(3 * i) % 20], "", SOURCES[(7 * i + 1) % 20]][: 1 + i % 3] for i in range(500)
    ]
    alone = dict(zip(SOURCES, texts_of(translator.translate(SOURCES, decoding)), strict=True))
    alone[""] = ""

    async def burst(batcher: ContinuousBatcher) -> list[list[list[Translation]]]:
        answers = await asyncio.gather(
            *(batcher.translate(lines, 0, decoding) for lines in requests)
        )
        assert batcher.queued == 0
        assert batcher.stats.largest_group > 1, "the burst should be decoded together"
        return answers

    answers = asyncio.run(with_batcher(translator, burst, workers=2))
    for lines, results in zip(requests, answers, strict=True):
        assert texts_of(results) == [alone[line] for line in lines]


def test_cancelled_requests_leave_the_others_answered_and_nothing_in_hand(
    translator: Translator,
) -> None:
    decoding = translator.config.decoding
    alone = dict(zip(SOURCES, texts_of(translator.translate(SOURCES, decoding)), strict=True))

    async def cancel_some(batcher: ContinuousBatcher) -> None:
        tasks = [
            asyncio.create_task(batcher.translate([SOURCES[i % 20]], 0, decoding))
            for i in range(60)
        ]
        await asyncio.sleep(0.01)  # some are being decoded, some wait
        for task in tasks[::3]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for i, result in enumerate(results):
            if i % 3 == 0:
                continue  # cancelled (or answered before the cancel)
            assert texts_of(result) == [alone[SOURCES[i % 20]]]
        for _ in range(200):  # the cancelled sentences drain
            if batcher.queued == 0:
                break
            await asyncio.sleep(0.01)
        assert batcher.queued == 0
        after = await batcher.translate(["how are you"], 0, decoding)
        assert texts_of(after) == [alone["how are you"]]

    asyncio.run(with_batcher(translator, cancel_some))


def test_a_short_sentence_is_answered_before_a_long_one_that_started_first(
    translator: Translator,
) -> None:
    decoding = dataclasses.replace(
        translator.config.decoding, beam_size=1, max_len_a=0.0, max_len_b=400, min_length=300
    )
    quick = dataclasses.replace(decoding, min_length=0)

    async def race(batcher: ContinuousBatcher) -> list[str]:
        order: list[str] = []

        async def ask(name: str, settings: DecodingConfig) -> None:
            await batcher.translate(["how are you"], 0, settings)
            order.append(name)

        long = asyncio.create_task(ask("long", decoding))  # 300 steps at least
        await asyncio.sleep(0.05)
        await ask("short", quick)
        await long
        return order

    assert asyncio.run(with_batcher(translator, race)) == ["short", "long"]


@pytest.mark.slow
def test_a_slow_client_does_not_hold_up_the_others(run_dir: Path) -> None:
    port = benchmark.free_port()
    process = benchmark.start_server(run_dir, port, [], timeout=60)
    try:
        url = f"http://{benchmark.HOST}:{port}"
        with socket.create_connection((benchmark.HOST, port)) as slow:
            slow.sendall(
                b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 40\r\n\r\n{"
            )
            start = time.perf_counter()
            for text in SOURCES[:10]:
                answer = post_json(f"{url}/translate", {"text": text})
                assert answer["translations"][0]["text"]
            assert time.perf_counter() - start < 20
            slow.sendall(b'"text": "how are you"}' + b" " * 17)
            reply = slow.recv(65536)
            assert b"200 OK" in reply
    finally:
        benchmark.stop_server(process)
