"""`workers.driver.signals`: SIGTERM ends the runs first, even when it arrives while the main
thread holds a lock that ending them needs (each case in a child process, so that a regression
hangs the child, which is killed, and not the test session)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import os, signal, sys, threading
from workers.driver.signals import SignalState, stop_on_signals

lock = threading.Lock()  # what ProcessWriter._send holds while it sends a report
ended = []
tune_stops = []

def on_stop(signum):
    with lock:
        ended.append(signum)

state = SignalState(in_fit={in_fit})
try:
    with stop_on_signals(on_stop, state):
        if state.in_fit:  # Tune's own SIGINT handler, which fit installs over ours
            signal.signal(signal.SIGINT, lambda s, f: tune_stops.append(s))
        with lock:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, the lock held
            held_through = sum(range(100_000))  # the main thread goes on with the lock
except KeyboardInterrupt:
    print("interrupted")
print(state.wait_stopped(10), ended, tune_stops, state.received)
"""


@pytest.mark.parametrize("in_fit", [False, True])
def test_sigterm_ends_the_runs_even_while_the_main_thread_holds_what_that_needs(in_fit: bool) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT.format(in_fit=in_fit))],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,  # the old handler ran on_stop in the main thread: a deadlock, killed here
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    if in_fit:  # inside fit: Tune is asked to stop (SIGINT), nothing is raised
        assert lines[0] == "True [15] [2] 15", out.stdout
    else:  # outside fit: KeyboardInterrupt, and the runs were ended all the same
        assert lines[:2] == ["interrupted", "True [15] [] 15"], out.stdout
