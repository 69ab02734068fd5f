"""`transformer-serve --engine ctranslate2`: /translate decoded by a CTranslate2 export.

Concurrent requests are gathered into groups (the oldest waiting request and those with its
decoding settings, up to its `batch_tokens` source tokens, while requests keep arriving
within `--batch-window-ms`, at most MAX_WINDOWS windows), and each group is one
`CTranslate2Translator.translate` call: the text code of `transformer-translate --engine
ctranslate2`, which queues the group's token-budget batches in CTranslate2 at once
(`asynchronous=True`) and waits for their results in a worker thread, off the event loop.
`workers` groups are in flight at once, as many as CTranslate2 has threads decoding
(`inter_threads`); requests that arrive meanwhile wait and join the next group. /explain is
not decoded here: an export has no attention to show, so the app explains with PyTorch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from transformer.config import DecodingConfig
from transformer.decoding.translator import Translation
from transformer.export.engine import CTranslate2Translator
from transformer.serve.batcher import BatchStats
from transformer.serve.settings import ServeSettings

logger = logging.getLogger(__name__)

MAX_WINDOWS = 10  # the longest a group gathers, in collection windows


@dataclass
class _Request:
    """One request's lines, waiting with its decoding settings for its translations."""

    lines: list[str]
    tokens: int
    decoding: DecodingConfig
    future: asyncio.Future[list[list[Translation]]]


class CTranslate2Engine:
    """Translates the requests of a server with a CTranslate2 export; `start` and `stop` run
    on the server's event loop (its lifespan), `translate` is what a request awaits."""

    name = "ctranslate2"

    def __init__(self, translator: CTranslate2Translator, settings: ServeSettings) -> None:
        self.translator = translator
        self.window_s = settings.batch_window_ms / 1000
        self.workers = settings.workers
        self.stats = BatchStats()
        self._waiting: deque[_Request] = deque()
        self._arrived: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._decoding: set[asyncio.Task[None]] = set()

    @property
    def queued(self) -> int:
        """Requests waiting for a group."""
        return len(self._waiting)

    def describe(self) -> dict[str, Any]:
        """What GET /info says of the engine and its export."""
        record = self.translator.record
        return {
            "engine": self.name,
            "export": {
                "directory": str(self.translator.directory),
                "quantization": record.quantization,
                "checkpoint": record.checkpoint,
            },
        }

    async def start(self) -> None:
        """Start the dispatcher and the threads that wait for CTranslate2's results."""
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(self.workers)
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="ctranslate2")
        self._dispatcher = asyncio.create_task(self._dispatch(), name="ctranslate2-engine")

    async def stop(self) -> None:
        """Stop gathering, let the groups in flight finish, fail the waiting requests."""
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        await asyncio.gather(*self._decoding, return_exceptions=True)
        while self._waiting:
            request = self._waiting.popleft()
            if not request.future.done():
                request.future.set_exception(RuntimeError("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def translate(
        self, lines: Sequence[str], tokens: int, decoding: DecodingConfig
    ) -> list[list[Translation]]:
        """Translate `lines` (`tokens` source tokens in all) together with other requests;
        each line's n-best list, in order."""
        if self._arrived is None:
            raise RuntimeError("the engine is not running: call start() (the app's lifespan)")
        future = asyncio.get_running_loop().create_future()
        request = _Request(list(lines), tokens, decoding, future)
        self._waiting.append(request)
        self._arrived.set()
        return await request.future

    async def _dispatch(self) -> None:
        """Forever: wait for a free slot, gather a group, hand it to CTranslate2."""
        assert self._slots is not None
        while True:
            await self._slots.acquire()
            try:
                group = await self._gather()
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.create_task(self._decode(group))
            self._decoding.add(task)
            task.add_done_callback(self._decoding.discard)

    async def _gather(self) -> list[_Request]:
        """The oldest waiting request and those that join it while requests keep arriving
        (a window apart at most, MAX_WINDOWS windows in all), within its token budget."""
        assert self._arrived is not None
        while True:
            self._waiting = deque(r for r in self._waiting if not r.future.done())  # gone
            if self._waiting:
                break
            self._arrived.clear()
            await self._arrived.wait()
        first = self._waiting.popleft()
        group, tokens = [first], first.tokens
        budget = first.decoding.batch_tokens
        for _ in range(MAX_WINDOWS):
            tokens = self._take_matching(group, tokens)
            if tokens >= budget or self.window_s <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), self.window_s)
            except asyncio.TimeoutError:
                break
        self._take_matching(group, tokens)
        return group

    def _take_matching(self, group: list[_Request], tokens: int) -> int:
        """Move waiting requests with the group's settings that fit its budget into it."""
        decoding, kept = group[0].decoding, deque()
        while self._waiting:
            request = self._waiting.popleft()
            if request.future.done():
                continue  # its client went away
            if request.decoding == decoding and tokens + request.tokens <= decoding.batch_tokens:
                group.append(request)
                tokens += request.tokens
            else:
                kept.append(request)
        self._waiting = kept
        return tokens

    async def _decode(self, group: list[_Request]) -> None:
        """Translate a group's lines (CTranslate2's results awaited in a worker thread), then
        answer each of its requests with its own lines' translations."""
        assert self._slots is not None and self._executor is not None
        lines = [line for request in group for line in request.lines]
        start = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.translator.translate, lines, group[0].decoding
            )
        except Exception as error:  # every request of the group learns it
            logger.error("decoding a group of %d sentences failed: %s", len(lines), error)
            for request in group:
                if not request.future.done():
                    request.future.set_exception(error)
        else:
            self.stats.count(len(lines))
            logger.debug(
                "CTranslate2 decoded %d sentences of %d requests in %.0f ms",
                len(lines),
                len(group),
                (time.perf_counter() - start) * 1000,
            )
            first = 0
            for request in group:
                end = first + len(request.lines)
                if not request.future.done():
                    request.future.set_result(results[first:end])
                first = end
        finally:
            self._slots.release()
