"""SupervisedLoop: a background thread that cannot die silently.

The producer's two threads (the spool replayer and the client's delivery poller) are loops of one
step. An exception escaping a step used to end the thread for good while the process looked
healthy; here it is logged with its traceback, counted in ``rlhf_thread_restarts_total``, and the
loop starts again after a backoff (doubling up to ``MAX_BACKOFF_S``, back to the first value after
a step that returns).

Liveness is progress, not existence: each step that returns stamps :attr:`heartbeat`, and
:meth:`stalled` says whether the loop is dead or has not completed a step for ``stall_s`` seconds
(the caller decides whether the thread had work in that time).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from rlhf_loop.metrics import THREAD_RESTARTS

log = logging.getLogger(__name__)
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0


class SupervisedLoop:
    """Runs ``step`` until :meth:`stop`; ``step`` returns True to go again at once, else the loop waits
    ``idle_s`` (or until stopped)."""

    def __init__(self, name: str, step: Callable[[], bool], idle_s: float) -> None:
        self.name = name
        self._step = step
        self._idle_s = idle_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.heartbeat = time.monotonic()
        self.restarts = 0
        self._restart_counter = THREAD_RESTARTS.labels(name)

    def start(self) -> None:
        self.heartbeat = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` unless stopped; True when stopped."""
        return self._stop.wait(seconds)

    def alive(self) -> bool:
        """False only if the thread was started, is not being stopped, and has ended."""
        return self._thread is None or self._thread.is_alive() or self._stop.is_set()

    def stalled(self, stall_s: float) -> bool:
        """Dead, or no step completed for ``stall_s`` seconds."""
        return not self.alive() or (not self._stop.is_set() and time.monotonic() - self.heartbeat > stall_s)

    def _run(self) -> None:
        backoff = FIRST_BACKOFF_S
        while not self._stop.is_set():
            try:
                again = self._step()
            except Exception:  # noqa: BLE001 - any step failure restarts the loop; it is logged and counted
                self.restarts += 1
                self._restart_counter.inc()
                log.exception("%s failed; restarting it in %.1f s (restart %d)", self.name, backoff, self.restarts)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            self.heartbeat = time.monotonic()
            backoff = FIRST_BACKOFF_S
            if not again:
                self._stop.wait(self._idle_s)
