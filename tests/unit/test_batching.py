"""Micro-batcher: batches close on size or wait, errors reach every caller, control runs between batches."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from services.inference.engines.batching import BatcherStopped, MicroBatcher


def _echo_batches(seen: list[list[int]]):  # noqa: ANN202
    def run(batch: list[int]) -> list[int]:
        seen.append(list(batch))
        time.sleep(0.01)
        return [x * 10 for x in batch]

    return run


def test_concurrent_requests_share_batches() -> None:
    seen: list[list[int]] = []
    batcher = MicroBatcher(_echo_batches(seen), max_batch_size=8, max_wait_ms=50)
    batcher.start()

    async def main() -> list[int]:
        return await asyncio.gather(*(batcher.generate(i) for i in range(20)))

    assert asyncio.run(main()) == [i * 10 for i in range(20)]
    batcher.stop()
    assert max(len(b) for b in seen) == 8
    assert len(seen) <= 4
    assert sorted(x for b in seen for x in b) == list(range(20))


def test_a_lone_request_waits_at_most_max_wait() -> None:
    batcher = MicroBatcher(_echo_batches([]), max_batch_size=64, max_wait_ms=20)
    batcher.start()
    assert batcher.submit(3).result(timeout=2) == 30
    batcher.stop()


def test_batch_error_reaches_every_caller() -> None:
    def boom(batch: list[int]) -> list[int]:
        raise RuntimeError("CUDA out of memory")

    batcher = MicroBatcher(boom, max_batch_size=4, max_wait_ms=30)
    batcher.start()
    futures = [batcher.submit(i) for i in range(3)]
    for f in futures:
        with pytest.raises(RuntimeError, match="out of memory"):
            f.result(timeout=2)
    assert batcher.submit(1).exception(timeout=2) is not None  # the worker survived
    batcher.stop()


def test_control_never_overlaps_a_batch() -> None:
    running = threading.Event()
    overlaps: list[bool] = []

    def run(batch: list[int]) -> list[int]:
        running.set()
        time.sleep(0.02)
        running.clear()
        return batch

    batcher = MicroBatcher(run, max_batch_size=2, max_wait_ms=1)
    batcher.start()
    futures = [batcher.submit(i) for i in range(10)]
    controls = [batcher.call_between_batches(lambda: overlaps.append(running.is_set())) for _ in range(5)]
    for f in futures + controls:
        f.result(timeout=5)
    batcher.stop()
    assert overlaps == [False] * 5
    with pytest.raises(BatcherStopped):
        batcher.submit(1)


def test_a_full_queue_refuses_at_once_and_counts_it() -> None:
    from rlhf_loop.metrics import GENERATION_SHED
    from services.inference.engines.batching import BatcherFull

    release = threading.Event()

    def run(batch: list[int]) -> list[int]:
        release.wait(10)
        return batch

    batcher = MicroBatcher(run, max_batch_size=1, max_wait_ms=0, max_queued=2, retry_after_s=3)
    batcher.start()
    try:
        first = batcher.submit(0)
        while not first.running():  # the worker holds request 0 in its batch
            time.sleep(0.001)
        waiting = [batcher.submit(i) for i in (1, 2)]  # the queue's bound
        before = GENERATION_SHED._value.get()
        with pytest.raises(BatcherFull) as refused:
            batcher.submit(3)
        assert refused.value.retry_after_s == 3 and GENERATION_SHED._value.get() == before + 1
        release.set()
        assert [f.result(5) for f in (first, *waiting)] == [0, 1, 2]
        assert batcher.submit(4).result(5) == 4  # room again
    finally:
        release.set()
        batcher.stop()
