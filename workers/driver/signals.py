"""Stopping the driver on SIGTERM/SIGINT: end the MLflow runs first, then let Tune stop."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Live:
    """What the signal handler and the final clean-up need from inside the Tune set-up."""

    callback: Any = None
    started_ray: bool = False


@dataclass
class SignalState:
    received: int | None = None
    in_fit: bool = False
    handler: Callable[[int, Any], None] | None = None
    previous: dict[int, Any] = field(default_factory=dict)
    stopping: threading.Thread | None = None  # the thread running `on_stop`

    def wait_stopped(self, timeout: float) -> bool:
        """Wait until `on_stop` has run (True), or `timeout` seconds (False); True when no
        signal came. Call it outside any lock `on_stop` takes."""
        if self.stopping is None:
            return True
        self.stopping.join(timeout)
        return not self.stopping.is_alive()

    def install(self) -> None:
        """(Re)install the handler: `ray.init` replaces SIGTERM's with its own `sys.exit`."""
        if self.handler is None or threading.current_thread() is not threading.main_thread():
            return
        for s in (signal.SIGTERM, signal.SIGINT):
            self.previous.setdefault(s, signal.getsignal(s))
            signal.signal(s, self.handler)

    def uninstall(self) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)
        self.previous.clear()


@contextlib.contextmanager
def stop_on_signals(on_stop: Callable[[int], None], state: SignalState) -> Iterator[SignalState]:
    """On SIGTERM (or SIGINT outside Tune), run `on_stop` first, then stop.

    Inside `Tuner.fit`, the stop goes through Tune's own SIGINT handler (it saves the
    experiment state and stops the trials); elsewhere it raises KeyboardInterrupt. `on_stop`
    ends the MLflow runs at once, because a Ray Job stop follows SIGTERM with SIGKILL a few
    seconds later.

    `on_stop` runs on a thread of its own, started by the handler, never in the handler: the
    handler interrupts the main thread wherever it is, which can be inside a lock `on_stop`
    needs (CI caught the driver hung for good in `ProcessWriter._send`, the signal having
    arrived while the main thread held the pipe's lock to send a report). The thread takes
    that lock as soon as the interrupted code lets go of it; the caller waits for it with
    `SignalState.wait_stopped` before its own clean-up.
    """

    def quietly(signum: int) -> None:
        with contextlib.suppress(Exception):
            on_stop(signum)

    def handler(signum: int, _frame: Any) -> None:
        first = state.received is None
        state.received = state.received or signum
        if first:
            state.stopping = threading.Thread(target=quietly, args=(signum,), name="dab-on-stop", daemon=True)
            state.stopping.start()
        if state.in_fit and first:
            signal.raise_signal(signal.SIGINT)  # Tune's handler: a graceful stop
        elif not state.in_fit:
            raise KeyboardInterrupt

    state.handler = handler
    state.install()
    try:
        yield state
    finally:
        state.uninstall()
