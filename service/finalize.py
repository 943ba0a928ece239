"""The end of a sweep: its results and report computed once, stored in its row and logged on its
parent run, and the runs a killed driver left RUNNING ended KILLED."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from service import crud
from service.db.models import TERMINAL_STATES, Sweep, utcnow
from service.queries import Reads, encode_report
from workers.tracking import find_sweep_ids

log = logging.getLogger("service.finalize")

#: Passes at storing an ended sweep's results and report before this process gives up on it.
MAX_FINALIZE_ATTEMPTS = 3


class Finalizer:
    """Called by the reconciler (`service.manager`) for every sweep that has ended."""

    def __init__(self, sessions: sessionmaker[Session], reads: Reads) -> None:
        self.sessions = sessions
        self.reads = reads
        self._failures: dict[str, int] = {}

    def finalize(self, sweep_id: str) -> bool:
        """Compute an ended sweep's results and report once, store them in its row and log the
        report on its parent run. False (retried by the next reconcile) when MLflow fails."""
        sweep = self.reads.sweep(sweep_id, "plan")
        if sweep.state not in TERMINAL_STATES or sweep.finalized_at is not None:
            return True
        if self._failures.get(sweep_id, 0) >= MAX_FINALIZE_ATTEMPTS:
            return False  # its reads stay computed from MLflow; the next start tries again
        try:
            if not sweep.mlflow_experiment_id:
                exp_id, parent = find_sweep_ids(self.reads.mlflow(), sweep.id)
                if exp_id:
                    with self.sessions() as s:
                        sweep = crud.update_sweep(
                            s, sweep.id, mlflow_experiment_id=exp_id, parent_run_id=parent
                        )
            runs = self.reads.runs(sweep, fresh=True)  # one MLflow search for both
            results, results_runs = self.reads.default_results(sweep, runs=runs)
            report = self.reads.compute_report(sweep, runs=runs)
            artifact_path = self._log_report(sweep, report["markdown"], report["figures"])
        except Exception as e:
            n = self._failures[sweep_id] = self._failures.get(sweep_id, 0) + 1
            log.warning("sweep %s: results not stored (attempt %d): %s: %s", sweep_id, n, type(e).__name__, e)
            return False
        with self.sessions() as s:
            crud.update_sweep(
                s,
                sweep.id,
                results=results,
                results_runs=results_runs,
                report=encode_report(report["markdown"], report["figures"], artifact_path),
                finalized_at=utcnow(),
            )
        return True

    def _log_report(self, sweep: Sweep, markdown: str, figures: dict[str, bytes]) -> str | None:
        if not sweep.parent_run_id:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            (d / "report.md").write_text(markdown)
            for name, png in figures.items():
                (d / name).write_bytes(png)
            self.reads.mlflow().log_artifacts(sweep.parent_run_id, str(d), "report")
        return f"runs:/{sweep.parent_run_id}/report"

    def end_running_runs(self, sweep: Sweep) -> None:
        """A driver SIGKILLed before it ended its runs leaves them RUNNING: end them KILLED."""
        from workers.tracking import KILLED, RUNNING, TAG_SWEEP_ID

        if not sweep.mlflow_experiment_id:
            return
        try:
            client = self.reads.mlflow()
            runs = client.search_runs(
                [str(sweep.mlflow_experiment_id)],
                f"attributes.status = '{RUNNING}' and tags.`{TAG_SWEEP_ID}` = '{sweep.id}'",
                max_results=10_000,
            )
            for run in runs:
                client.set_tag(
                    run.info.run_id, "dab.end_reason", "sweep ended; the driver did not end this run"
                )
                client.set_terminated(run.info.run_id, KILLED)
        except Exception as e:
            log.warning("sweep %s: could not end RUNNING runs: %s", sweep.id, e)


__all__ = ["MAX_FINALIZE_ATTEMPTS", "Finalizer"]
