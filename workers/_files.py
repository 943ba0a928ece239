"""The sweep directory: its layout, atomic JSON files, and the lock that keeps one driver per sweep.

Private: `workers.driver` and `workers.tracking` use it. Layout of a sweep directory::

    <sweep dir>/
        status.json     machine-readable progress (trial_key -> state, attempts, last step,
                        run id), rewritten atomically as trials progress; the service reads it
        driver.lock     held (flock) by the running driver; the kernel releases it when the
                        driver dies, so a killed driver never leaves a stale lock behind
        tune/           Ray Tune's storage_path: one Tune experiment per set of trials to run,
                        each with a ``dab_trials.json`` naming the trial keys it was built for

No file here holds the sweep's MLflow experiment or parent run id: those live in MLflow (and
the service's database) and are found from the sweep id (`workers.tracking.find_sweep_ids`),
so nothing can disagree with MLflow. The sweep id is the driver's ``--sweep-id``, else the
directory's name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
LOCK_FILE = "driver.lock"
TUNE_DIR = "tune"
TUNE_TRIALS_FILE = "dab_trials.json"


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write `data` as JSON to `path` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=False, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | os.PathLike[str]) -> Any | None:
    """The JSON in `path`, or None when the file does not exist or is not valid JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class SweepLockedError(RuntimeError):
    """Another driver holds this sweep directory."""


@contextlib.contextmanager
def sweep_lock(sweep_dir: str | os.PathLike[str], timeout_s: float = 30.0) -> Iterator[None]:
    """Hold the sweep's driver lock; wait up to `timeout_s` for a previous holder to go.

    Two drivers on one sweep would both create MLflow runs for the same trials: this is what
    makes "one run per trial" hold against a resubmission that races a still-running driver.
    """
    path = Path(sweep_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise SweepLockedError(
                        f"{path} is held by another driver (pid in file: {path.read_text().strip() or '?'})"
                    ) from None
                time.sleep(0.2)
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
