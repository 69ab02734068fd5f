"""Concurrent requests decoded together: a short collection window, then token-budget groups.

Each request becomes a `_Job` (its lines, their source tokens, its decoding settings, a
future) in a queue on the event loop. When a decoding slot is free, a dispatcher takes the
oldest job and gathers the jobs with the same decoding settings that are waiting or arrive
while requests keep coming (until none has come for `window_s`, and first until as many
requests are there as the last batch had: on a busy server those clients send their next
requests right after their answers), at most `MAX_WINDOWS` windows and `max_tokens` source
tokens. The group goes to `Translator.translate` (the search code of transformer-translate)
in a worker thread, off the event loop; each job gets back its own lines' translations, in
order. `workers` groups are decoded at once (while one group decodes, the next gathers).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

from transformer.config import DecodingConfig
from transformer.decoding.translator import Translation

logger = logging.getLogger(__name__)

T = TypeVar("T")
MAX_WINDOWS = 10  # the longest a batch gathers, in collection windows


class GroupTranslator(Protocol):
    """What decodes a group: `Translator` (PyTorch) or `CTranslate2Translator`."""

    def translate(
        self, lines: Sequence[str], decoding: DecodingConfig | None = None
    ) -> list[list[Translation]]:
        """Each line's n-best translations, in input order."""
        ...


@dataclass
class _Job:
    """One request's lines, waiting to be decoded with its decoding settings."""

    lines: list[str]
    tokens: int
    decoding: DecodingConfig
    future: asyncio.Future[list[list[Translation]]]


@dataclass
class BatchStats:
    """What the batcher has done so far: groups decoded, and the sentences in them."""

    groups: int = 0
    sentences: int = 0
    largest_group: int = 0

    def count(self, sentences: int) -> None:
        """Record one decoded group of `sentences` sentences."""
        self.groups += 1
        self.sentences += sentences
        self.largest_group = max(self.largest_group, sentences)


class Batcher:
    """Gathers concurrent translation requests into groups and decodes them off the event loop.

    `start` and `stop` run on the server's event loop (its lifespan); `translate` is what a
    request awaits.
    """

    def __init__(
        self, translator: GroupTranslator, max_tokens: int, window_s: float, workers: int
    ) -> None:
        self.translator = translator
        self.max_tokens = max_tokens
        self.window_s = window_s
        self.workers = workers
        self.stats = BatchStats()
        self._waiting: deque[_Job] = deque()
        self._last_group = 0  # requests in the last batch gathered
        self._arrived: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._decoding: set[asyncio.Task[None]] = set()

    @property
    def queued(self) -> int:
        """Requests waiting for a decoding slot."""
        return len(self._waiting)

    async def start(self) -> None:
        """Start the worker threads and the dispatcher (on the running event loop)."""
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(self.workers)
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="decode")
        self._dispatcher = asyncio.create_task(self._dispatch(), name="batcher")

    async def stop(self) -> None:
        """Stop gathering, let the groups being decoded finish, fail the waiting requests."""
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        await asyncio.gather(*self._decoding, return_exceptions=True)
        while self._waiting:
            job = self._waiting.popleft()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def translate(
        self, lines: Sequence[str], tokens: int, decoding: DecodingConfig
    ) -> list[list[Translation]]:
        """Translate `lines` (`tokens` source tokens in all) together with other requests."""
        if self._arrived is None:
            raise RuntimeError("the batcher is not running: call start() (the app's lifespan)")
        loop = asyncio.get_running_loop()
        job = _Job(list(lines), tokens, decoding, loop.create_future())
        self._waiting.append(job)
        self._arrived.set()
        return await job.future

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """Run other model work (an explanation) in the decoding threads, off the event loop."""
        if self._executor is None:
            raise RuntimeError("the batcher is not running: call start() (the app's lifespan)")
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def _dispatch(self) -> None:
        """Forever: wait for a free slot, gather a group, decode it in the background."""
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

    async def _gather(self) -> list[_Job]:
        """The oldest waiting job and those that can join it, within the window."""
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        while True:
            self._drop_abandoned()
            if self._waiting:
                break
            self._arrived.clear()
            await self._arrived.wait()
        first = self._waiting.popleft()
        group, tokens = [first], first.tokens
        # Gather while requests keep coming: on a busy server the clients just answered send
        # their next requests one after another. Until as many requests as the last batch had
        # are here (their clients are likely to be back), wait for them; after that, stop when
        # none came for a window. At most MAX_WINDOWS windows, and never past the budget.
        latest = loop.time() + self.window_s * MAX_WINDOWS
        while True:
            tokens = self._take_matching(group, tokens)
            now = loop.time()
            if tokens >= self.max_tokens or now >= latest:
                break
            wait = self.window_s if len(group) >= self._last_group else latest - now
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), min(wait, latest - now))
            except asyncio.TimeoutError:
                self._take_matching(group, tokens)
                break
        self._last_group = len(group)
        return group

    def _take_matching(self, group: list[_Job], tokens: int) -> int:
        """Move waiting jobs with the group's decoding settings that fit the budget into it."""
        decoding, kept = group[0].decoding, deque()
        while self._waiting:
            job = self._waiting.popleft()
            if job.future.done():
                continue  # its client went away
            if job.decoding == decoding and tokens + job.tokens <= self.max_tokens:
                group.append(job)
                tokens += job.tokens
            else:
                kept.append(job)
        self._waiting = kept
        return tokens

    def _drop_abandoned(self) -> None:
        """Forget waiting jobs whose request was cancelled (the client disconnected)."""
        self._waiting = deque(job for job in self._waiting if not job.future.done())

    async def _decode(self, group: list[_Job]) -> None:
        """Translate a group's lines in a worker thread, then answer each of its jobs."""
        assert self._slots is not None
        lines = [line for job in group for line in job.lines]
        start = time.perf_counter()
        try:
            results = await self.run(self.translator.translate, lines, group[0].decoding)
        except Exception as error:  # every request of the group learns it
            logger.error("decoding a group of %d sentences failed: %s", len(lines), error)
            for job in group:
                if not job.future.done():
                    job.future.set_exception(error)
        else:
            self.stats.count(len(lines))
            milliseconds = (time.perf_counter() - start) * 1000
            logger.debug(
                "decoded %d sentences of %d requests in %.0f ms",
                len(lines),
                len(group),
                milliseconds,
            )
            start = 0
            for job in group:
                end = start + len(job.lines)
                if not job.future.done():
                    job.future.set_result(results[start:end])
                start = end
        finally:
            self._slots.release()
