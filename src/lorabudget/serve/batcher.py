"""Dynamic batching: texts from concurrent requests share forward passes run by one inference thread.

Requests put their texts on an asyncio queue. One collector task on the event loop takes texts from the
queue until a batch holds ``max_batch`` texts or ``max_wait_ms`` have passed since the oldest waiting
text arrived, then hands the batch to a single worker thread (the forward pass never runs on the event
loop, so the server keeps accepting and answering requests meanwhile). While the thread is busy, new
texts wait in the queue and form the next batch; a request larger than ``max_batch`` is split across
batches and answered when its last text is done.

A request whose caller stops waiting (its task cancelled: the client disconnected) gives back its texts
not yet taken at once; the collector skips them. A batch whose forward pass fails is run again one text
at a time, so only the requests holding a text the model cannot take get the error.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np


class QueueFull(Exception):
    """More texts are waiting than the server accepts; the client should retry later."""


@dataclass
class _Job:
    texts: Sequence[str]
    future: asyncio.Future
    arrived: float
    logits: Optional[np.ndarray] = None
    taken: int = 0  # texts handed to batches so far
    done: int = 0  # texts whose logits are in
    released: bool = False  # its untaken texts no longer count as queued (cancelled, or failed)


@dataclass
class BatcherStats:
    batches: int = 0
    texts: int = 0
    largest_batch: int = 0
    busy_s: float = 0.0  # time the inference thread spent in forward passes
    recent_sizes: list[int] = field(default_factory=list)  # the last 100 batch sizes


class DynamicBatcher:
    """Batches texts for ``infer`` (texts -> logits [n, classes]), which runs on one worker thread."""

    def __init__(
        self,
        infer: Callable[[list[str]], np.ndarray],
        max_batch: int = 32,
        max_wait_ms: float = 0.0,
        max_queued_texts: int = 4096,
    ):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must not be negative")
        self.infer = infer
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.max_queued_texts = max_queued_texts
        self.stats = BatcherStats()
        self._queue: Optional[asyncio.Queue[_Job]] = None
        self._carry: Optional[_Job] = None  # a job only partly taken by the last batch
        self._queued_texts = 0
        self._task: Optional[asyncio.Task] = None
        self._executor: Optional[ThreadPoolExecutor] = None

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    async def start(self) -> None:
        """Start the collector on the running event loop and the inference thread."""
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorabudget-inference")
        self._task = asyncio.create_task(self._collect(), name="lorabudget-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Logits [len(texts), classes] for ``texts``, computed in batches shared with other requests."""
        if self._queue is None:
            raise RuntimeError("the batcher has not been started")
        if not texts:
            raise ValueError("no texts")
        if self._queued_texts + len(texts) > self.max_queued_texts:
            raise QueueFull(f"{self._queued_texts} texts are waiting (at most {self.max_queued_texts})")
        loop = asyncio.get_running_loop()
        job = _Job(list(texts), loop.create_future(), loop.time())
        self._queued_texts += len(texts)
        self._queue.put_nowait(job)
        try:
            return await job.future
        finally:
            if not job.future.done():  # the caller stopped waiting: its untaken texts are skipped
                job.future.cancel()
            if job.future.cancelled():
                self._release(job)

    def _release(self, job: _Job) -> None:
        """Stop counting the untaken texts of a job that ended (cancelled or failed) as queued, once."""
        if not job.released:
            job.released = True
            self._queued_texts -= len(job.texts) - job.taken

    # ---- the collector, on the event loop
    async def _next_job(self, timeout: Optional[float]) -> Optional[_Job]:
        """The next job with texts to take: the carried one, else from the queue (waiting at most
        ``timeout`` seconds; None waits for ever, 0 does not wait)."""
        assert self._queue is not None
        while True:
            if self._carry is not None:
                job, self._carry = self._carry, None
            elif timeout is None:
                job = await self._queue.get()
            elif timeout <= 0:
                try:
                    job = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    return None
            else:
                try:
                    job = await asyncio.wait_for(self._queue.get(), timeout)
                except asyncio.TimeoutError:
                    return None
            if job.future.done():  # cancelled while waiting
                self._release(job)
                continue
            return job

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._next_job(None)
            assert job is not None
            deadline = job.arrived + self.max_wait_s
            parts: list[tuple[_Job, int, int]] = []
            size = 0
            while job is not None:
                take = min(self.max_batch - size, len(job.texts) - job.taken)
                parts.append((job, job.taken, job.taken + take))
                job.taken += take
                size += take
                self._queued_texts -= take
                if job.taken < len(job.texts):
                    self._carry = job  # the batch is full; the rest goes into the next one
                    break
                if size >= self.max_batch:
                    break
                job = await self._next_job(deadline - loop.time())
            await self._run(parts, size)

    async def _run(self, parts: list[tuple[_Job, int, int]], size: int) -> None:
        loop = asyncio.get_running_loop()
        texts = [text for job, start, stop in parts for text in job.texts[start:stop]]
        started = time.perf_counter()
        try:
            logits = await loop.run_in_executor(self._executor, self.infer, texts)
        except Exception as err:  # noqa: BLE001 - the error goes to the requests whose texts cause it
            self._record(size, time.perf_counter() - started)
            if size == 1:
                self._fail(parts[0][0], err)
            else:
                await self._run_one_by_one(parts)
            return
        self._record(size, time.perf_counter() - started)
        offset = 0
        for job, start, stop in parts:
            self._deliver(job, start, stop, logits[offset : offset + stop - start])
            offset += stop - start

    async def _run_one_by_one(self, parts: list[tuple[_Job, int, int]]) -> None:
        """After a failed batch: each text alone, so a text the model cannot take fails its request only."""
        loop = asyncio.get_running_loop()
        for job, start, stop in parts:
            for i in range(start, stop):
                if job.future.done():  # failed on an earlier text, or cancelled
                    break
                started = time.perf_counter()
                try:
                    rows = await loop.run_in_executor(self._executor, self.infer, [job.texts[i]])
                except Exception as err:  # noqa: BLE001
                    self._fail(job, err)
                    continue
                finally:
                    self._record(1, time.perf_counter() - started)
                self._deliver(job, i, i + 1, rows)

    @staticmethod
    def _fail(job: _Job, err: Exception) -> None:
        if not job.future.done():
            job.future.set_exception(err)

    @staticmethod
    def _deliver(job: _Job, start: int, stop: int, rows: np.ndarray) -> None:
        """Logits for ``job.texts[start:stop]``; the job's future is answered when its last text is in."""
        if job.future.done():
            return
        if job.logits is None:
            job.logits = np.zeros((len(job.texts), rows.shape[1]), dtype=np.float32)
        job.logits[start:stop] = rows
        job.done += stop - start
        if job.done == len(job.texts):
            job.future.set_result(job.logits)

    def _record(self, size: int, seconds: float) -> None:
        stats = self.stats
        stats.batches += 1
        stats.texts += size
        stats.largest_batch = max(stats.largest_batch, size)
        stats.busy_s += seconds
        stats.recent_sizes = (stats.recent_sizes + [size])[-100:]
