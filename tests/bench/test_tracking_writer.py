"""bench/tracking_writer.py: the writer replayed under the orchestration benchmark's trials.

The request count is what the benchmark's table reports next to the CPU, so it is checked
here on a few trials: with a hold longer than a trial, each trial costs MLflow exactly
`create_run`, one `log_batch` and `set_terminated`, and every run lands FINISHED at step 30.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import tracking_writer  # noqa: E402


def test_a_trial_shorter_than_the_hold_costs_three_requests(tmp_path: Path) -> None:
    requests = tracking_writer.requests_per_trial(tmp_path / "held", 8, hold_s=30.0)
    assert requests == {"create_run": 1.0, "log_batch": 1.0, "set_terminated": 1.0}
