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
    ends the MLflow runs before either, because a Ray Job stop follows SIGTERM with SIGKILL a
    few seconds later.
    """

    def handler(signum: int, _frame: Any) -> None:
        first = state.received is None
        state.received = state.received or signum
        if first:
            with contextlib.suppress(Exception):
                on_stop(signum)
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
