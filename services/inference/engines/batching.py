"""Micro-batching: concurrent requests are gathered into batches on one worker thread.

The queue is bounded (``max_queued``): a request past the bound is refused at once with
:class:`BatcherFull` (503 + Retry-After, counted in ``rlhf_generation_shed_total``) instead of
waiting behind work that will not finish before its client gives up.

A batch closes when it holds ``max_batch_size`` requests or ``max_wait_ms`` after its first request
arrived, whichever comes first. Generation runs on the worker thread, never on the event loop.
Maintenance work (loading an adapter into the model) runs on the same thread *between* batches via
:meth:`MicroBatcher.call_between_batches`, so it never races a forward pass.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from rlhf_loop.metrics import GENERATION_BATCH_SIZE, GENERATION_SHED

Req = TypeVar("Req")
Res = TypeVar("Res")
T = TypeVar("T")


class BatcherStopped(RuntimeError):
    """The batcher is shutting down and takes no new work."""


class BatcherFull(RuntimeError):
    """The queue holds ``max_queued`` requests: come back after ``retry_after_s``."""

    def __init__(self, queued: int, retry_after_s: int) -> None:
        super().__init__(f"{queued} generation requests are already waiting; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class MicroBatcher(Generic[Req, Res]):
    def __init__(
        self,
        run_batch: Callable[[list[Req]], list[Res]],
        max_batch_size: int,
        max_wait_ms: float,
        max_queued: int = 256,
        retry_after_s: int = 1,
    ) -> None:
        if max_batch_size < 1 or max_wait_ms < 0 or max_queued < 1:
            raise ValueError("max_batch_size and max_queued must be >= 1 and max_wait_ms >= 0")
        self._max_queued = max_queued
        self._retry_after_s = retry_after_s
        self._run_batch = run_batch
        self._max_batch = max_batch_size
        self._max_wait_s = max_wait_ms / 1000
        self._requests: queue.Queue[tuple[Req, concurrent.futures.Future[Res]]] = queue.Queue()
        self._control: queue.Queue[tuple[Callable[[], object], concurrent.futures.Future[object]]] = queue.Queue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="micro-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the queued requests, then stop the worker thread."""
        self._stopping.set()
        self._thread.join(timeout_s)

    def submit(self, request: Req) -> concurrent.futures.Future[Res]:
        """Queue one request; the future resolves with its result or the batch's exception."""
        if self._stopping.is_set():
            raise BatcherStopped("the generation batcher is stopping")
        queued = self._requests.qsize()
        if queued >= self._max_queued:
            GENERATION_SHED.inc()
            raise BatcherFull(queued, self._retry_after_s)
        future: concurrent.futures.Future[Res] = concurrent.futures.Future()
        self._requests.put((request, future))
        return future

    async def generate(self, request: Req) -> Res:
        """Awaitable :meth:`submit` for the event loop."""
        return await asyncio.wrap_future(self.submit(request))

    def call_between_batches(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run ``fn`` on the worker thread when no batch is running."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._control.put((fn, future))  # type: ignore[arg-type]
        return future

    def _loop(self) -> None:
        while True:
            self._run_control()
            try:
                first = self._requests.get(timeout=0.05)
            except queue.Empty:
                if self._stopping.is_set():
                    self._run_control()
                    return
                continue
            batch = [first]
            deadline = time.monotonic() + self._max_wait_s
            while len(batch) < self._max_batch:
                remaining = deadline - time.monotonic()
                try:
                    item = self._requests.get(timeout=remaining) if remaining > 0 else self._requests.get_nowait()
                    batch.append(item)
                except queue.Empty:
                    break
            self._execute(batch)

    def _execute(self, batch: list[tuple[Req, concurrent.futures.Future[Res]]]) -> None:
        live = [(r, f) for r, f in batch if f.set_running_or_notify_cancel()]
        if not live:
            return
        GENERATION_BATCH_SIZE.observe(len(live))
        try:
            results = self._run_batch([r for r, _ in live])
        except BaseException as e:  # delivered to every waiting caller, who turns it into a 5xx
            for _, f in live:
                f.set_exception(e)
            return
        for (_, f), result in zip(live, results, strict=True):
            f.set_result(result)

    def _run_control(self) -> None:
        while True:
            try:
                fn, future = self._control.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as e:
                future.set_exception(e)
