"""A sweep's location: its layout, and the lock that keeps one driver per sweep.

Private: `workers.driver`, `workers._status` and the service use it. A sweep's location is a
`workers.storage.Location` (a local directory or ``s3://bucket/prefix/<sweep id>``)::

    <sweep location>/
        spec.json       the spec the service submitted (the driver's input; absent when the
                        driver is run by hand on a spec file)
        shared.json     (written by the service at each admission) trials of this sweep that
                        another sweep ran or runs: {"adopt": {key: {run_id, sweep_id}},
                        "wait": {key: sweep_id}} (`service.sharing`); absent: run every trial
        status.json     machine-readable progress (trial_key -> state, attempts, last step,
                        run id), replaced whole as trials progress; the service reads it
        tune/           Ray Tune's storage_path: one Tune experiment per set of trials to run,
                        each with a ``dab_trials.json`` naming the trial keys it was built for
        driver.lock     (local locations only) held with flock by the running driver

No file here holds the sweep's MLflow experiment or parent run id: those live in MLflow (and
the service's database) and are found from the sweep id (`workers.tracking.find_sweep_ids`),
so nothing can disagree with MLflow. The sweep id is the driver's ``--sweep-id``, else the
location's last name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from workers.storage import Location

SPEC_FILE = "spec.json"
STATUS_FILE = "status.json"
SHARED_FILE = "shared.json"
LOCK_FILE = "driver.lock"
TUNE_DIR = "tune"
TUNE_TRIALS_FILE = "dab_trials.json"


class SweepLockedError(RuntimeError):
    """Another driver holds this sweep."""


def _lock_path(location: Location) -> Path:
    local = location.local_path()
    if local is not None:
        return local / LOCK_FILE
    # Object storage has no lock a dying process releases by itself. Across hosts, one driver
    # per sweep is the service's rule (one Ray Job per sweep at a time, a new one only once Ray
    # says the last is gone); this file lock adds the same guarantee as on a local location
    # for drivers on one host (a resubmitted job on the same head while the old one exits).
    digest = hashlib.sha256(location.uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "dab-locks" / f"{digest}.lock"


@contextlib.contextmanager
def sweep_lock(location: Location, timeout_s: float = 30.0) -> Iterator[None]:
    """Hold the sweep's driver lock; wait up to `timeout_s` for a previous holder to go.

    Two drivers on one sweep would both create MLflow runs for the same trials: this is what
    makes "one run per trial" hold against a resubmission that races a still-running driver.
    The kernel releases the lock when its holder dies, so a killed driver leaves none behind.
    """
    path = _lock_path(location)
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
                        f"{location} is held by another driver (lock {path}, pid in file: "
                        f"{path.read_text().strip() or '?'})"
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
