"""Requests decoded by continuous batching: each sentence joins the decode under way.

The groups batcher (`batcher.py`) gathers requests into a batch and decodes it to the end:
a sentence that arrives meanwhile waits for the batch's slowest sentence, and between
batches the decoder idles while clients get their answers and send the next requests. Here
a decoding thread keeps one `ContinuousSearch` per set of decoding settings going: a
request's lines are submitted to it, enter at the next step (as the token budget allows),
and each request is answered as soon as its last line finishes, whatever else is still
being decoded.

The event loop only queues work and receives answers; tokenizing, searching and
detokenizing happen in the decoding thread. `workers` threads each keep their own decode,
and a request goes to the one with the fewest sentences in hand. /explain runs in a thread
of its own (`run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from transformer.config import DecodingConfig
from transformer.decoding.continuous import ContinuousSearch
from transformer.decoding.translator import EMPTY_TRANSLATION, Translation, Translator
from transformer.serve.batcher import BatchStats

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(eq=False)
class _Request:
    """One request's lines and their translations as they finish (in the decoding thread)."""

    lines: list[str]
    decoding: DecodingConfig
    future: asyncio.Future[list[list[Translation]]]
    results: list[list[Translation] | None] = field(default_factory=list)
    remaining: int = 0


class _Worker:
    """A decoding thread and its decodes, one per set of decoding settings."""

    def __init__(self, batcher: ContinuousBatcher, index: int) -> None:
        self.batcher = batcher
        self.inbox: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self.in_hand = 0  # sentences submitted to this worker and not answered (event loop)
        self.searches: dict[tuple[object, ...], ContinuousSearch] = {}
        self.requests: dict[tuple[object, ...], set[_Request]] = {}
        self.thread = threading.Thread(target=self.run, name=f"decode-{index}", daemon=True)

    def run(self) -> None:
        """Forever: take new requests (waiting for one when idle), step every decode."""
        while True:
            busy = any(len(search) for search in self.searches.values())
            try:
                request = self.inbox.get(block=not busy)
                while True:
                    if request is None:
                        self.fail_all(RuntimeError("the server is shutting down"))
                        return
                    try:
                        self.add(request)
                    except Exception as error:  # this request learns it; the others go on
                        logger.error("could not queue a request: %s", error)
                        self.batcher.fail(self, request, error)
                    request = self.inbox.get_nowait()
            except queue.Empty:
                pass
            for key, search in list(self.searches.items()):
                if len(search):
                    self.step(key, search)
                if not len(search) and not self.requests.get(key):  # idle: forget it
                    self.searches.pop(key, None)
                    self.requests.pop(key, None)

    def add(self, request: _Request) -> None:
        """Submit a request's lines to the decode of its settings (empty lines: answered)."""
        if request.future.done():  # its client went away while it was queued
            self.batcher.dropped(self, request)
            return
        translator = self.batcher.translator
        key = dataclasses.astuple(request.decoding)
        search = self.searches.get(key)
        if search is None:
            search = ContinuousSearch(translator.model, request.decoding, self.batcher.max_tokens)
            self.searches[key], self.requests[key] = search, set()
        request.results = [None] * len(request.lines)
        for i, line in enumerate(request.lines):
            ids = translator.source_ids(line, i + 1) if line.strip() else []
            if ids:
                search.submit((request, i), ids)
                request.remaining += 1
            else:
                request.results[i] = [EMPTY_TRANSLATION]
        self.requests[key].add(request)
        if not request.remaining:
            self.finish(key, request)

    def step(self, key: tuple[object, ...], search: ContinuousSearch) -> None:
        """One step of one decode; answer the requests whose last line finished."""
        admitted = search.stats.admitted
        try:
            finished = search.step()
        except Exception as error:  # every request in this decode learns it
            logger.error("decoding failed: %s", error)
            for request in self.requests.pop(key):
                self.batcher.fail(self, request, error)
            del self.searches[key]
            return
        self.batcher.stats_step(search, admitted)
        translator = self.batcher.translator
        for (request, i), hypotheses in finished:  # type: ignore[misc]
            request.results[i] = [translator.translation(h) for h in hypotheses]
            request.remaining -= 1
            if not request.remaining:
                self.finish(key, request)

    def finish(self, key: tuple[object, ...], request: _Request) -> None:
        """Every line of `request` is translated: answer it on the event loop."""
        self.requests[key].discard(request)
        self.batcher.answer(self, request)

    def fail_all(self, error: Exception) -> None:
        """Fail every request this worker holds (at shutdown)."""
        for requests in self.requests.values():
            for request in requests:
                self.batcher.fail(self, request, error)
        self.requests.clear()
        self.searches.clear()


class ContinuousBatcher:
    """Serves translation requests by continuous batching; the groups batcher's interface.

    `start` and `stop` run on the server's event loop (its lifespan); `translate` is what a
    request awaits; `run` does other model work (an explanation) off the event loop.
    """

    def __init__(self, translator: Translator, max_tokens: int, workers: int = 1) -> None:
        self.translator = translator
        self.max_tokens = max_tokens
        self.stats = BatchStats()
        self.steps = 0
        self._workers = [_Worker(self, i) for i in range(workers)]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # the stats, updated by the decoding threads

    @property
    def queued(self) -> int:
        """Sentences in hand: waiting for the decode or being decoded."""
        return sum(worker.in_hand for worker in self._workers)

    async def start(self) -> None:
        """Start the decoding threads and the explanation thread (on the running loop)."""
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="explain")
        for worker in self._workers:
            worker.thread.start()

    async def stop(self) -> None:
        """Stop the decoding threads; requests not answered yet fail."""
        for worker in self._workers:
            if worker.thread.is_alive():
                worker.inbox.put(None)
        for worker in self._workers:
            if worker.thread.is_alive():
                await asyncio.to_thread(worker.thread.join)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def translate(
        self, lines: Sequence[str], tokens: int, decoding: DecodingConfig
    ) -> list[list[Translation]]:
        """Translate `lines` in the running decode; their n-best lists, in order."""
        if self._loop is None:
            raise RuntimeError("the batcher is not running: call start() (the app's lifespan)")
        request = _Request(list(lines), decoding, self._loop.create_future())
        worker = min(self._workers, key=lambda w: w.in_hand)
        worker.in_hand += len(request.lines)
        worker.inbox.put(request)
        return await request.future

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """Run other model work (an explanation) in its own thread, off the event loop."""
        if self._loop is None or self._executor is None:
            raise RuntimeError("the batcher is not running: call start() (the app's lifespan)")
        return await self._loop.run_in_executor(self._executor, function, *args)

    # ------------------------------------------------ called from the decoding threads

    def answer(self, worker: _Worker, request: _Request) -> None:
        """Give `request` its translations, on the event loop."""
        results = [r if r is not None else [EMPTY_TRANSLATION] for r in request.results]
        self._call_soon(self._settle, worker, request, results, None)

    def fail(self, worker: _Worker, request: _Request, error: Exception) -> None:
        """Fail `request` with `error`, on the event loop."""
        self._call_soon(self._settle, worker, request, None, error)

    def dropped(self, worker: _Worker, request: _Request) -> None:
        """A request dropped before decoding: forget its lines, on the event loop."""
        self._call_soon(self._settle, worker, request, None, None)

    def stats_step(self, search: ContinuousSearch, admitted_before: int) -> None:
        """Count a decoding step (and the group of sentences that entered at it)."""
        with self._lock:
            self.steps += 1
            entered = search.stats.admitted - admitted_before
            if entered:
                self.stats.count(entered)
            self.stats.largest_group = max(self.stats.largest_group, search.live)

    def _call_soon(self, callback: Callable[..., None], *args: object) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            self._loop.call_soon_threadsafe(callback, *args)

    @staticmethod
    def _settle(
        worker: _Worker,
        request: _Request,
        results: list[list[Translation]] | None,
        error: Exception | None,
    ) -> None:
        """On the event loop: the worker's load drops, and the request learns its outcome."""
        worker.in_hand -= len(request.lines)
        if request.future.done():
            return
        if error is not None:
            request.future.set_exception(error)
        elif results is not None:
            request.future.set_result(results)
