"""The sweep driver: runs a spec's trials on Ray Tune with each trial tracked in MLflow.

    python -m workers.driver SPEC --sweep-dir DIR --tracking-uri URI [--sweep-id ID]
        [--ray-address ADDR]

This is the entrypoint the service submits as a Ray Job. Without an address it joins the Ray
that ``RAY_ADDRESS`` names (a Ray Job sets it) or starts a local one; ``--ray-address`` (or
``DAB_RAY_ADDRESS``) names a cluster. The exit code is 0 only when every trial of the spec has
a FINISHED run (its own, or one it adopted): 1 when some failed or did not run, 2 for a bad
spec or arguments, 3 when only trials that other sweeps are running are left (the service
starts it again once they are done: `service.sharing`), 130/143 when stopped by SIGINT/SIGTERM.

The sweep id is ``--sweep-id`` (the service passes its own), else the sweep directory's name:
derived rather than generated, so a standalone driver started again on the same directory
continues the same sweep. The MLflow experiment and parent run ids are never written to the
sweep directory: they are found in MLflow from the sweep id (`workers.tracking.find_sweep_ids`).

What one run of the driver does, in order:

1. Takes the sweep directory's lock (one driver per sweep).
2. Finds or creates the sweep's MLflow experiment (``dab/<spec name> (<sweep id>)``, found by
   its ``dab.sweep_id`` tag) and parent run, and
   lists the child runs already there. Runs left RUNNING by a driver that died are ended
   KILLED. Trials whose trial_key has a FINISHED run are skipped: they are never handed to
   Tune, and the skip is listed in ``status.json`` and on the parent run. Trials the
   service's ``shared.json`` names are adopted (another sweep's FINISHED run is recorded as
   theirs; tagged ``dab.adopted`` on the parent run and ``dab.adopted_by`` on that run) or
   left waiting (another sweep is running them).
3. Runs the other trials: it restores the Tune experiment of the sweep directory that was
   built for them (``Tuner.restore(resume_unfinished=True, restart_errored=True)``) when there
   is one, else builds a new one (a resubmitted sweep with a seed added gets a new Tune
   experiment for the new trials only). Trials resume from their latest checkpoints.
4. Ends every run it opened FINISHED, FAILED or KILLED, the parent run too, and leaves the
   final ``status.json``; on SIGTERM/SIGINT it does this first, then lets Tune stop.

By concern: `workers.driver.sweep` (that run, `run_sweep`), `workers.driver.tuner` (Ray and
the Tuner), `workers.driver.signals` (SIGTERM/SIGINT), `workers.driver.cli` (``main``).
"""

from __future__ import annotations

from workers.driver.cli import main
from workers.driver.sweep import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_WAITING,
    SweepDirError,
    SweepOutcome,
    parent_tags,
    run_sweep,
    sweep_id_for,
)
from workers.driver.tuner import DEFAULT_CHECKPOINTS_TO_KEEP, build_tuner, ensure_ray

__all__ = [
    "DEFAULT_CHECKPOINTS_TO_KEEP",
    "EXIT_INCOMPLETE",
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_WAITING",
    "SweepDirError",
    "SweepOutcome",
    "build_tuner",
    "ensure_ray",
    "main",
    "parent_tags",
    "run_sweep",
    "sweep_id_for",
]
