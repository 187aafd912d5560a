"""Test-only fault injection into a real server process: put this directory first on PYTHONPATH and
name the faults in RLHF_TEST_FAULTS (comma-separated). Python imports this module at start-up.

- ``replayer``: the spool replayer's round raises once, the first time the spool holds events;
- ``poller``: the producer client's delivery poller raises once, on its 20th poll.
Each is an exception escaping a background loop, as a bug in it would; supervised.py must restart it.
"""

from __future__ import annotations

import os

FAULTS = {f for f in os.environ.get("RLHF_TEST_FAULTS", "").split(",") if f}


def _install() -> None:
    if "replayer" in FAULTS:
        from rlhf_loop.bus.replayer import Replayer

        run_once, fired = Replayer.run_once, []

        def failing_run_once(self: Replayer) -> int:
            if not fired and self._producer.spool.depth() > 0:
                fired.append(True)
                raise RuntimeError("injected fault in the spool replayer")
            return run_once(self)

        Replayer.run_once = failing_run_once  # type: ignore[method-assign]
    if "poller" in FAULTS:
        from rlhf_loop.bus.client import ProduceClient

        poll_once, polls = ProduceClient._poll_once, [0]

        def failing_poll_once(self: ProduceClient) -> bool:
            polls[0] += 1
            if polls[0] == 20:
                raise RuntimeError("injected fault in the delivery poller")
            return poll_once(self)

        ProduceClient._poll_once = failing_poll_once  # type: ignore[method-assign]


if FAULTS:
    _install()
