"""The sweep lifecycle: submit a sweep's driver as a Ray Job, follow it, cancel it, and reconcile
every unfinished sweep with its job (at start and then every `poll_interval_s`).

(Over 500 lines because the state machine below is one unit: the queue, admission, submission,
cancel and the reconciler's transitions each read the others' states, and a reader checks a
transition against all of them here. Trial sharing is `service.sharing`, suites
`service.suites`, the snapshot `service.snapshot`, the end `service.finalize`.)

State machine of a sweep (the ``state`` column)::

    queued --(admitted: a driver slot is free)--> running --(job SUCCEEDED)--> finished
       |                                            |-----(job FAILED, trials failed)--> failed
       |                                            |-----(job lost or crashed)--> running
       |                                            |      (resubmitted, the driver restores;
       |                                            |      at most max_job_attempts)
       |                                            |-----(only trials other sweeps run are
       |                                            |      left)--> waiting --(they are done:
       |                                            |      admitted again)--> running
       +--(cancel)--> cancelled                     +-----(cancel: job stopped)--> cancelling
                                                           --> cancelled

The queue: a submitted sweep waits ``queued`` (at most ``max_queued_sweeps`` of them; beyond,
a 429) and is admitted when fewer than ``max_active_sweeps`` drivers run (``running`` and
``cancelling`` hold a slot; ``waiting`` does not), highest ``priority`` first, then in
submission order (`admit`). The queue is the table, so it survives a restart. At admission
each trial is claimed, adopted from the sweep that finished it, or waited for while another
sweep runs it (`service.sharing`).

Each pass also writes every active sweep's snapshot into its row (the read model the GETs read:
`service.snapshot`), refreshes its default results when a trial has finished, and hands ended
sweeps to `service.finalize`, which stores their results and report once.

Everything here is synchronous (Ray's client and MLflow are blocking): the API calls it from
worker threads, the reconciler from a thread of its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import sys
import threading
import time
import uuid
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service import crud, sharing
from service.core.config import Settings
from service.core.errors import ConflictError, TooManySweepsError, UnavailableError
from service.db.models import ACTIVE_STATES, DRIVER_STATES, TERMINAL_STATES, Suite, Sweep, utcnow
from service.finalize import Finalizer
from service.queries import Reads
from service.ray_jobs import TERMINAL_JOB_STATES, EmbeddedRayHead, RayJobs
from service.snapshot import (
    empty_counts,
    finished_runs_of,
    plan_of,
    search_plan_of,
    snapshot_fields,
    waiting_of,
)
from service.specs import CheckedSpec
from service.suites import TAG_SUITE_ID, Suites
from workers._files import SHARED_FILE, SPEC_FILE, STATUS_FILE
from workers.storage import ENDPOINT_ENV, Location, open_location

log = logging.getLogger("service.manager")

_EXIT_CODE = re.compile(r"exit code (\d+)")
#: Driver exit codes that are the sweep's own outcome (1: some trial failed; 2: a bad spec), as
#: opposed to a crash or a kill, after which the driver is resubmitted and restores.
_FINAL_EXIT_CODES = {1, 2}
#: The driver's exit code when only trials other sweeps are running are left (`workers.driver`).
_EXIT_WAITING = 3


def read_status(location: Location) -> dict[str, Any] | None:
    """The driver's status file in the sweep's location, or None (not written yet, or
    unreadable for a moment: the next pass reads it again)."""
    try:
        data = location.child(STATUS_FILE).read_json()
    except OSError as e:  # object storage unreachable for a moment
        log.warning("%s: status not read: %s", location, e)
        return None
    return data if isinstance(data, dict) else None


class SweepManager:
    """Owns the Ray side of the service: the embedded head (if any), job submission, reconciling."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions
        self.head: EmbeddedRayHead | None = None
        self.jobs: RayJobs | None = None
        self.reads = Reads(settings, sessions)
        self.finalizer = Finalizer(sessions, self.reads)
        self.suites = Suites(sessions, self.reads)
        self.python = settings.driver_python or (sys.executable if settings.embedded else "python")
        self.storage = settings.storage_location()
        self._submit_lock = threading.Lock()
        # One lock per sweep: its submission (here, or by the reconciler, which would otherwise
        # see the new row without a job and submit it a second time) and its reconciling.
        self._sweep_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self.ready = threading.Event()
        self.start_error: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start (or adopt) the embedded head, connect to the jobs API, warm MLflow's store."""
        try:
            self._init_tracking()
            if self.settings.embedded:
                self.head = EmbeddedRayHead(
                    self.settings.state_path,
                    num_cpus=self.settings.ray_num_cpus,
                    nice=self.settings.ray_nice,
                    gcs_port=self.settings.ray_head_port,
                    dashboard_port=self.settings.ray_dashboard_port,
                    start_timeout_s=self.settings.ray_start_timeout_s,
                )
                address = self.head.start()
                self.jobs = RayJobs(address, self.head.token())
            else:
                token = self.settings.ray_auth_token
                assert self.settings.ray_address is not None
                self.jobs = RayJobs(
                    self.settings.ray_address,
                    token.get_secret_value() if token else os.environ.get("RAY_AUTH_TOKEN"),
                )
            self.jobs.client()
            self.start_error = None
            self.ready.set()
        except Exception as e:
            self.start_error = f"{type(e).__name__}: {e}"
            log.error("could not start the Ray side: %s", self.start_error)
            raise

    def _init_tracking(self) -> None:
        # Create the MLflow schema once, here, before any driver can race to create it.
        from workers.tracking import make_client

        make_client(self.settings.tracking_uri).search_experiments(max_results=1)

    def shutdown(self, stop_jobs: bool = True) -> None:
        """Stop the embedded head, first stopping its jobs so their drivers end runs KILLED.
        The sweeps stay active: the next start resubmits their drivers, which restore."""
        if self.head is None:
            return
        if stop_jobs and self.jobs is not None:
            with self.sessions() as s:
                running = [sw for sw in crud.active_sweeps(s) if sw.ray_job_id]
            for sw in running:
                with contextlib.suppress(Exception):
                    self.jobs.stop(sw.ray_job_id)  # type: ignore[arg-type]
            deadline = time.monotonic() + 30
            for sw in running:
                while time.monotonic() < deadline:
                    try:
                        st = self.jobs.status(sw.ray_job_id)  # type: ignore[arg-type]
                    except Exception:
                        break
                    if st is None or st in TERMINAL_JOB_STATES:
                        break
                    time.sleep(0.5)
        self.head.stop()
        self.head = None

    def require_jobs(self) -> RayJobs:
        if self.jobs is None:
            raise UnavailableError(
                "Ray is not available yet" + (f": {self.start_error}" if self.start_error else ""),
            )
        return self.jobs

    # -- submit ----------------------------------------------------------------------------

    def create(
        self, checked: CheckedSpec, idempotency_key: str | None, priority: int = 0
    ) -> tuple[Sweep, bool]:
        """Persist a new sweep (or return the one its idempotency key names), queued; it starts
        now if a driver slot is free (`admit`).

        Returns:
            (sweep, created)
        """
        with self._submit_lock, self.sessions() as s:
            if idempotency_key:
                other = crud.find_by_idempotency_key(s, idempotency_key)
                if other is not None:
                    if other.spec_hash != checked.spec_hash:
                        raise crud.idempotency_conflict(other)
                    return other, False
            self._check_queue(s, 1)
            sweep = self._new_sweep(checked, idempotency_key, priority)
            stored = crud.create_sweep(s, sweep)
            if stored.id != sweep.id:
                return stored, False
            sweep_id = sweep.id
        self.admit()
        with self.sessions() as s:
            return crud.get_sweep(s, sweep_id), True

    def create_suite(
        self,
        name: str,
        description: str,
        members: list[tuple[str, CheckedSpec]],
        spec_hash: str,
        idempotency_key: str | None,
        priority: int = 0,
    ) -> tuple[Suite, bool]:
        """Persist a suite and its members (queued sweeps) in one transaction, then admit.

        Every member's spec is written to storage first: a storage outage is a 503 and leaves
        neither a suite nor a sweep (only spec files no row names).
        """
        with self._submit_lock, self.sessions() as s:
            if idempotency_key:
                other = crud.find_suite_by_idempotency_key(s, idempotency_key)
                if other is not None:
                    if other.spec_hash != spec_hash:
                        raise crud.suite_idempotency_conflict(other)
                    return other, False
            self._check_queue(s, len(members))
            suite_id = uuid.uuid4().hex[:16]
            now = utcnow()
            sweeps = []
            for index, (file, checked) in enumerate(members):
                sweep = self._new_sweep(checked, None, priority)
                sweep.suite_id, sweep.member_index, sweep.member_file = suite_id, index, file
                sweep.created_at = now  # one submission: members start in their listed order
                sweeps.append(sweep)
            keys = {t.trial_key for _, c in members for t in c.trials}
            suite = Suite(
                id=suite_id,
                name=name,
                description=description,
                spec_hash=spec_hash,
                idempotency_key=idempotency_key or None,
                priority=priority,
                trial_count=sum(c.trial_count for _, c in members),
                distinct_trials=len(keys),
                created_at=now,
            )
            stored = crud.create_suite(s, suite, sweeps)
            if stored.id != suite_id:
                return stored, False
        self.admit()
        with self.sessions() as s:
            return crud.get_suite(s, suite_id), True

    def _check_queue(self, s: Session, adding: int) -> None:
        queued = crud.count_in_states(s, ("queued",))
        limit = self.settings.max_queued_sweeps
        if queued + adding > limit:
            raise TooManySweepsError(
                f"{queued} sweep(s) are queued and this submission adds {adding}; at most {limit} "
                "may wait (DAB_MAX_QUEUED_SWEEPS): wait for some to start or cancel some"
            )

    def _new_sweep(self, checked: CheckedSpec, idempotency_key: str | None, priority: int) -> Sweep:
        sweep_id = uuid.uuid4().hex[:16]
        location = self.storage.child(sweep_id)
        try:  # the driver's input, written before the row that makes it visible
            location.child(SPEC_FILE).write_json(checked.data)
        except OSError as e:
            raise UnavailableError(f"cannot write the sweep to storage {self.storage}: {e}") from e
        return Sweep(
            id=sweep_id,
            name=checked.spec.name,
            experiment=checked.spec.experiment,
            state="queued",
            spec=checked.data,
            spec_hash=checked.spec_hash,
            idempotency_key=idempotency_key or None,
            trial_count=checked.trial_count,
            cell_count=checked.cells,
            sweep_dir=location.uri,
            job_attempts=0,
            priority=priority,
            wait_rounds=0,
            plan=plan_of(checked.trials),
            counts=empty_counts(checked.trial_count),
        )

    # -- the queue -------------------------------------------------------------------------

    def admit(self) -> list[str]:
        """Start queued sweeps (and waiting ones whose trials are done elsewhere) while driver
        slots are free: highest priority first, then in submission order. Returns their ids."""
        if self.jobs is None:
            return []
        started: list[str] = []
        with self._submit_lock:
            with self.sessions() as s:
                free = self.settings.max_active_sweeps - crud.count_in_states(s, DRIVER_STATES)
                candidates = [(sw.id, sw.state) for sw in crud.admission_order(s)] if free > 0 else []
            for sweep_id, state in candidates:
                if free <= 0:
                    break
                with self._sweep_lock(sweep_id):
                    sweep = self.reads.sweep(sweep_id, "plan", "trials")
                    if sweep.state != state or (state == "queued" and sweep.ray_job_id):
                        continue  # changed since the list was read (cancelled, submitted)
                    if state == "waiting":
                        with self.sessions() as s:
                            if not sharing.waits_resolved(s, sweep_id, waiting_of(sweep.trials or {})):
                                continue
                    try:
                        self._prepare(sweep)
                        self.submit_driver(sweep_id)
                    except UnavailableError as e:  # stays where it is; the next pass tries again
                        log.warning("sweep %s not started: %s", sweep_id, e)
                        break
                started.append(sweep_id)
                free -= 1
        return started

    def _prepare(self, sweep: Sweep) -> None:
        """Claim the sweep's trials, and tell its driver which to adopt or wait for."""
        keys = [row[0] for row in self.reads.plan(sweep)]
        with self.sessions() as s:
            shares = sharing.plan_shares(s, sweep.id, keys)
        try:
            self.location(sweep).child(SHARED_FILE).write_json(shares.to_json())
        except OSError as e:
            raise UnavailableError(f"cannot write to storage {self.storage}: {e}") from e
        if shares.adopt or shares.wait:
            log.info(
                "sweep %s: adopts %d trial(s), waits for %d run by other sweeps",
                sweep.id,
                len(shares.adopt),
                len(shares.wait),
            )

    def finished_elsewhere(self, keys: list[str]) -> int:
        """How many of `keys` some sweep of this service has FINISHED (a preview's "done")."""
        with self.sessions() as s:
            return sharing.finished_count(s, keys)

    def location(self, sweep: Sweep) -> Location:
        """The sweep's location in storage (its row names it: a sweep made under an earlier
        DAB_STORAGE_URI stays where it was written)."""
        here = self.storage.child(sweep.id)
        if sweep.sweep_dir == here.uri:
            return here
        return open_location(sweep.sweep_dir, self.settings.s3_endpoint_url)

    def entrypoint(self, sweep: Sweep) -> str:
        q = shlex.quote
        location = self.location(sweep)
        tags = f" --tag {q(f'{TAG_SUITE_ID}={sweep.suite_id}')}" if sweep.suite_id else ""
        return (
            f"{q(self.python)} -m workers.driver {q(location.child(SPEC_FILE).uri)} "
            f"--sweep-dir {q(location.uri)} --tracking-uri {q(self.settings.tracking_uri)} "
            f"--sweep-id {q(sweep.id)} --verbose 0{tags}"
        )

    def submit_driver(self, sweep_id: str) -> None:
        jobs = self.require_jobs()
        with self.sessions() as s:
            sweep = crud.get_sweep(s, sweep_id)
            attempt = sweep.job_attempts + 1
            job_id = f"dab-{sweep.id}-{attempt}"
            entrypoint = self.entrypoint(sweep)
        # The embedded head inherits this process's environment: a DAB_RAY_ADDRESS there must
        # not send the driver elsewhere (a Ray Job joins its cluster through RAY_ADDRESS). The
        # S3 endpoint is not a secret and travels with the job; credentials never do (they are
        # each node's own AWS variables).
        env = {"DAB_RAY_ADDRESS": ""}
        if self.settings.s3_endpoint_url:
            env[ENDPOINT_ENV] = self.settings.s3_endpoint_url
        jobs.submit(
            entrypoint,
            job_id,
            metadata={"dab_sweep_id": sweep_id, "attempt": str(attempt)},
            env=env,
        )
        with self.sessions() as s:
            sweep = crud.get_sweep(s, sweep_id)
            waited = sweep.state == "waiting"
            if attempt == 1:
                message = None
            elif waited:
                message = "the trials it waited for are done; its driver started again"
            else:
                message = f"driver resubmitted (attempt {attempt}); it restores"
            crud.update_sweep(
                s,
                sweep_id,
                ray_job_id=job_id,
                job_attempts=attempt,
                wait_rounds=sweep.wait_rounds + (1 if waited else 0),
                state="running" if sweep.state in ("queued", "waiting") else sweep.state,
                started_at=sweep.started_at or utcnow(),
                message=message,
            )
        log.info("sweep %s: submitted driver job %s", sweep_id, job_id)

    # -- cancel ----------------------------------------------------------------------------

    def cancel(self, sweep_id: str) -> Sweep:
        with self.sessions() as s:
            sweep = crud.get_sweep(s, sweep_id)
            if sweep.state in TERMINAL_STATES:
                raise ConflictError(f"sweep {sweep_id} is already {sweep.state}", field="state")
            if sweep.state == "queued" and not sweep.ray_job_id:
                crud.update_sweep(s, sweep_id, state="cancelled", finished_at=utcnow(), message="cancelled")
                sharing.release(s, sweep_id)
                return crud.get_sweep(s, sweep_id)
            waiting = sweep.state == "waiting"  # its driver has exited
            crud.update_sweep(s, sweep_id, state="cancelling", message="cancel requested")
            job_id = None if waiting else sweep.ray_job_id
        if job_id and self.jobs is not None:
            self.jobs.stop(job_id)
        if waiting:
            with self._sweep_lock(sweep_id):
                self._end(self.reads.sweep(sweep_id), "cancelled", "cancelled")
        else:
            self.reconcile_one(sweep_id)
        with self.sessions() as s:
            return crud.get_sweep(s, sweep_id)

    def cancel_suite(self, suite_id: str) -> Suite:
        """Cancel every member not ended yet (queued ones first, so none starts meanwhile)."""
        with self.sessions() as s:
            suite = crud.get_suite(s, suite_id)
            members = crud.suite_members(s, suite_id)
            if all(m.state in TERMINAL_STATES for m in members):
                raise ConflictError(
                    f"suite {suite_id} has ended: every member is finished, failed or cancelled",
                    field="state",
                )
            crud.update_suite(s, suite_id, cancel_requested=True)
        order = sorted(members, key=lambda m: m.state != "queued")
        for m in order:
            try:
                self.cancel(m.id)
            except ConflictError:
                pass  # ended meanwhile
        with self.sessions() as s:
            return crud.get_suite(s, suite.id)

    # -- reconcile -------------------------------------------------------------------------

    def reconcile_all(self) -> None:
        """Bring every active sweep in line with its Ray job (resubmitting lost ones), write
        each one's snapshot into its row, and finalize ended sweeps not finalized yet."""
        with self.sessions() as s:
            ids = [sw.id for sw in crud.active_sweeps(s)]
            pending = [sw.id for sw in crud.unfinalized_sweeps(s)]
        for sweep_id in ids:
            try:
                self.reconcile_one(sweep_id)
            except UnavailableError as e:
                log.warning("sweep %s: %s", sweep_id, e)
            except Exception:
                log.exception("sweep %s: reconcile failed", sweep_id)
        for sweep_id in pending:
            self.finalize(sweep_id)
        try:
            self.admit()
        except Exception:
            log.exception("admitting queued sweeps failed")
        self.finalize_suites()

    def finalize_suites(self) -> None:
        """Store the report of every suite whose members have all ended (once)."""
        with self.sessions() as s:
            ids = crud.unfinalized_suites(s)
        for suite_id in ids:
            self.suites.finalize(suite_id)

    def reconcile_one(self, sweep_id: str) -> None:
        with self._sweep_lock(sweep_id):
            self._reconcile(sweep_id)

    def _sweep_lock(self, sweep_id: str) -> threading.Lock:
        with self._locks_lock:
            return self._sweep_locks.setdefault(sweep_id, threading.Lock())

    def _reconcile(self, sweep_id: str) -> None:
        sweep = self.reads.sweep(sweep_id, "plan", "trials")
        if sweep.state not in ACTIVE_STATES:
            return
        status = read_status(self.location(sweep))
        self._record_snapshot(sweep, status)
        if self.jobs is None or sweep.state in ("queued", "waiting") or sweep.ray_job_id is None:
            return  # `admit` starts them
        job = self.jobs.status(sweep.ray_job_id)
        if job in ("PENDING", "RUNNING"):
            return
        if sweep.state == "cancelling":
            if job is None or job in TERMINAL_JOB_STATES:
                self._end(sweep, "cancelled", "cancelled")
            return
        if job == "SUCCEEDED":
            self._end(sweep, "finished", None)
            return
        if job == "STOPPED":
            self._end(sweep, "cancelled", "the driver job was stopped outside the service")
            return
        # FAILED, or unknown to Ray (a new head after a crash): the sweep's outcome, or a crash?
        code = None
        if job == "FAILED":
            info = self.jobs.info(sweep.ray_job_id)
            m = _EXIT_CODE.search(str(getattr(info, "message", "") or ""))
            code = int(m.group(1)) if m else None
        if code == _EXIT_WAITING and status is not None and status.get("state") == "waiting":
            waits = waiting_of(status.get("trials") or {})
            owners = sorted(set(waits.values()))
            with self.sessions() as s:
                crud.update_sweep(
                    s,
                    sweep_id,
                    state="waiting",
                    message=f"waiting for {len(waits)} trial(s) that sweep(s) {', '.join(owners)} run",
                )
            return
        if code in _FINAL_EXIT_CODES and status is not None and status.get("state") in ("failed", "finished"):
            counts = status.get("counts", {})
            self._end(sweep, "failed", f"{counts.get('failed', 0)} trial(s) failed")
            return
        if code == 2:
            self._end(sweep, "failed", self._job_tail(sweep.ray_job_id))
            return
        if sweep.job_attempts - sweep.wait_rounds >= self.settings.max_job_attempts:
            self._end(
                sweep,
                "failed",
                f"the driver job ended {job or 'lost'} {sweep.job_attempts - sweep.wait_rounds} times: "
                f"{self._job_tail(sweep.ray_job_id)}",
            )
            return
        log.warning(
            "sweep %s: driver job %s is %s; resubmitting a driver that restores",
            sweep_id,
            sweep.ray_job_id,
            job or "gone",
        )
        self.submit_driver(sweep_id)

    def _job_tail(self, job_id: str | None) -> str:
        if not job_id or self.jobs is None:
            return ""
        lines = [ln for ln in self.jobs.logs(job_id).splitlines() if ln.strip()]
        return " | ".join(lines[-3:])[-1000:]

    def _record_snapshot(self, sweep: Sweep, status: dict[str, Any] | None) -> None:
        """Write the sweep's snapshot columns (and its MLflow ids, once known) when they changed."""
        now = utcnow()
        plan = self.reads.plan(sweep)
        grown = search_plan_of(status) if status is not None else None
        fields = snapshot_fields(
            status,
            grown if grown is not None else plan,
            state=sweep.state,
            started_at=crud.as_utc(sweep.started_at),
            now=now,
            total=sweep.trial_count,
        )
        if status is None:
            fields.pop("trials")
            fields.pop("counts")
        changed = {k: v for k, v in fields.items() if getattr(sweep, k) != v}
        if grown is not None and grown != sweep.plan:  # a search's configurations, as proposed
            changed["plan"] = grown
        elif sweep.plan is None:  # a row from before the plan column: stored once, not expanded per pass
            changed["plan"] = self.reads.plan(sweep)
        if not (sweep.mlflow_experiment_id and sweep.parent_run_id):
            exp_id, parent = self._find_ids(sweep.id)
            if exp_id and exp_id != sweep.mlflow_experiment_id:
                changed["mlflow_experiment_id"] = exp_id
            if parent and parent != sweep.parent_run_id:
                changed["parent_run_id"] = parent
        counts = fields.get("counts") or sweep.counts or {}
        done = sum(int(counts.get(k, 0)) for k in ("finished", "skipped", "adopted"))
        exp_id = changed.get("mlflow_experiment_id") or sweep.mlflow_experiment_id
        if exp_id and sweep.results_runs != done:  # a trial finished: its run joins the results
            try:
                changed["results"], changed["results_runs"] = self.reads.default_results(sweep, exp_id)
            except Exception as e:
                log.warning("sweep %s: results not refreshed: %s: %s", sweep.id, type(e).__name__, e)
        if "trials" in changed:  # a trial this sweep finished is now every later sweep's to adopt
            finished = finished_runs_of(changed["trials"])
            # Only when a trial finished since the row's snapshot (progress alone changes the
            # trials every pass), and before the row is written: a crash in between leaves the
            # row as it was, so the next pass records them again.
            if finished and finished != finished_runs_of(sweep.trials or {}):
                with self.sessions() as s:
                    sharing.record_finished(s, sweep.id, finished)
        if changed or sweep.snapshot_at is None:
            with self.sessions() as s:
                crud.update_sweep(s, sweep.id, snapshot_at=now, **changed)

    def _find_ids(self, sweep_id: str) -> tuple[str | None, str | None]:
        """The sweep's MLflow experiment and parent run, derived from its id (None: not yet)."""
        from workers.tracking import find_sweep_ids

        try:
            return find_sweep_ids(self.reads.mlflow(), sweep_id)
        except Exception as e:
            log.warning("sweep %s: MLflow ids not found: %s", sweep_id, e)
            return None, None

    def _end(self, sweep: Sweep, state: str, message: str | None) -> None:
        sweep = self.reads.sweep(sweep.id, "plan", "trials")
        self._record_snapshot(sweep, read_status(self.location(sweep)))  # the driver's last word
        sweep = self.reads.sweep(sweep.id)
        if state != "finished":
            self.finalizer.end_running_runs(sweep)
        with self.sessions() as s:
            crud.update_sweep(s, sweep.id, state=state, message=message, finished_at=utcnow(), eta_s=None)
            sharing.release(s, sweep.id)  # a sweep waiting for one of its trials may run it now
        log.info("sweep %s: %s%s", sweep.id, state, f" ({message})" if message else "")
        self.finalize(sweep.id)

    def finalize(self, sweep_id: str) -> bool:
        """Store an ended sweep's results and report once (`service.finalize`)."""
        return self.finalizer.finalize(sweep_id)

    # -- the reconciler thread -------------------------------------------------------------

    def run_reconciler(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if self.ready.is_set():
                self.reconcile_all()
            stop.wait(self.settings.poll_interval_s)


__all__ = ["SweepManager", "read_status"]
