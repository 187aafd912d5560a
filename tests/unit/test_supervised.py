"""SupervisedLoop: a step that raises restarts the loop (counted), and liveness is progress."""

from __future__ import annotations

import threading
import time

import pytest

from rlhf_loop.bus.supervised import SupervisedLoop
from rlhf_loop.metrics import THREAD_RESTARTS


def _until(condition, timeout_s: float = 5.0) -> None:  # noqa: ANN001 - a predicate
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.005)


@pytest.mark.allow_error_logs
def test_a_failing_step_restarts_the_loop_and_is_counted() -> None:
    calls: list[int] = []

    def step() -> bool:
        calls.append(1)
        if len(calls) in (2, 3):
            raise RuntimeError("boom")
        return False

    loop = SupervisedLoop("test-failing", step, idle_s=0.001)
    counter = THREAD_RESTARTS.labels("test-failing")
    before = counter._value.get()
    loop.start()
    _until(lambda: len(calls) >= 5)
    loop.stop(5)
    assert loop.restarts == 2 and counter._value.get() == before + 2
    assert not loop.stalled(60)  # it kept stepping after the failures


def test_a_hung_step_is_stalled_and_a_stopped_loop_is_not() -> None:
    hang, entered = threading.Event(), threading.Event()

    def step() -> bool:
        if entered.is_set():
            hang.wait(10)
        entered.set()
        return True

    loop = SupervisedLoop("test-hung", step, idle_s=0.0)
    loop.start()
    _until(entered.is_set)
    time.sleep(0.05)
    assert loop.alive() and loop.stalled(0.01)  # alive, but no step completed lately
    assert not loop.stalled(60)
    hang.set()
    loop.stop(5)
    assert loop.alive() and not loop.stalled(0.0)  # stopping is not dying
