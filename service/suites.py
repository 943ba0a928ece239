"""Suites on the read side: a suite's state and counts from its members' rows, its report, and
the end of a suite (its report stored once and logged to a suite-level MLflow run).

A suite is a row (`service.db.models.Suite`) and its members are ordinary sweeps that name it
(``Sweep.suite_id``): they queue, run, share trials and end exactly like any sweep, and the
reconciler writes each one's snapshot. Nothing of the suite's state is stored: it is derived
from the members on every read (`suite_state`), a handful of small rows.

The report (`service.suite_report`) is computed from MLflow while members run (behind the same
short TTL as a sweep's live reads) and stored in the row once every member has ended, when it
is also logged to the suite's own MLflow run: experiment ``dab/suite <name> (<id>)``, one run
tagged ``dab.suite_id`` (`TAG_SUITE_ID`), which every member's parent and trial runs carry too,
so ``tags.`dab.suite_id` = '<id>'`` finds all of a suite's runs in the MLflow UI.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service import crud
from service.api.schemas import (
    FigureLink,
    SuiteLinks,
    SuiteMemberPublic,
    SuitePublic,
    SuiteReportPublic,
    SuitesPublic,
)
from service.db.models import TERMINAL_STATES, Suite, Sweep, utcnow
from service.queries import Reads, decode_figures

log = logging.getLogger("service.suites")

TAG_SUITE_ID = "dab.suite_id"
ROLE_SUITE = "suite"
#: Passes at storing an ended suite's report before this process gives up on it.
MAX_FINALIZE_ATTEMPTS = 3


def suite_state(states: Sequence[str], cancel_requested: bool = False) -> str:
    """A suite's state from its members' states.

    Any member active: ``cancelling`` after a cancel, ``queued`` while none has started, else
    ``running``. All ended: ``finished`` if every member finished, ``cancelled`` if one was
    cancelled, else ``failed``.
    """
    active = [s for s in states if s not in TERMINAL_STATES]
    if active:
        if cancel_requested:
            return "cancelling"
        if all(s == "queued" for s in states):
            return "queued"
        return "running"
    if all(s == "finished" for s in states):
        return "finished"
    if any(s == "cancelled" for s in states):
        return "cancelled"
    return "failed"


def _finished_at(members: Sequence[Sweep]) -> datetime | None:
    if any(m.state not in TERMINAL_STATES for m in members):
        return None
    ends = [crud.as_utc(m.finished_at) for m in members if m.finished_at]
    return max(e for e in ends if e is not None) if ends else None


def _counts(members: Sequence[Sweep]) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in members:
        for k, v in (m.counts or {}).items():
            out[k] = out.get(k, 0) + int(v)
    return out


class Suites:
    """The suite queries and the suite's end, over the service's sessions and `Reads`."""

    def __init__(self, sessions: sessionmaker[Session], reads: Reads) -> None:
        self.sessions = sessions
        self.reads = reads
        self._failures: dict[str, int] = {}

    def _load(self, suite_id: str, with_report: bool = False) -> tuple[Suite, list[Sweep]]:
        """The suite's row (its deferred report too when asked) and its members'."""
        with self.sessions() as s:
            suite = crud.get_suite(s, suite_id)
            if with_report:
                _ = suite.report  # load the deferred column before the rows leave the session
            members = crud.suite_members(s, suite_id)
            s.expunge_all()
        return suite, members

    def public(self, suite: Suite, members: Sequence[Sweep], base_url: str) -> SuitePublic:
        base = f"{base_url}v1/suites/{suite.id}"
        total = sum(m.trial_count for m in members) or 1
        progress = (
            sum((1.0 if m.state == "finished" else m.progress) * m.trial_count for m in members) / total
        )
        return SuitePublic(
            id=suite.id,
            name=suite.name,
            description=suite.description,
            state=suite_state([m.state for m in members], suite.cancel_requested),  # type: ignore[arg-type]
            priority=suite.priority,
            trial_count=suite.trial_count,
            distinct_trials=suite.distinct_trials,
            progress=round(progress, 4),
            counts=_counts(members),
            created_at=crud.as_utc(suite.created_at),  # type: ignore[arg-type]
            finished_at=_finished_at(members),
            mlflow_run_id=suite.mlflow_run_id,
            members=[
                SuiteMemberPublic(
                    file=m.member_file or m.name,
                    sweep_id=m.id,
                    name=m.name,
                    state=m.state,  # type: ignore[arg-type]
                    trial_count=m.trial_count,
                    progress=1.0 if m.state == "finished" else m.progress,
                    counts=m.counts,
                    message=m.message,
                )
                for m in members
            ],
            links=SuiteLinks(
                self=base,
                report=f"{base}/report",
                cancel=f"{base}/cancel",
                sweeps=[f"{base_url}v1/sweeps/{m.id}" for m in members],
                mlflow_runs_filter=f"tags.`{TAG_SUITE_ID}` = '{suite.id}'",
            ),
        )

    def get(self, suite_id: str, base_url: str) -> SuitePublic:
        suite, members = self._load(suite_id)
        return self.public(suite, members, base_url)

    def list(self, limit: int, offset: int, base_url: str) -> SuitesPublic:
        with self.sessions() as s:
            rows, count = crud.list_suites(s, limit=limit, offset=offset)
            members = crud.members_of_suites(s, [r.id for r in rows])
            out = [self.public(r, members.get(r.id, []), base_url) for r in rows]
        return SuitesPublic(data=out, count=count)

    # -- the report --------------------------------------------------------------------------

    def report(self, suite_id: str) -> dict[str, Any]:
        """{markdown, figures: {name: PNG bytes}, data, artifact_path, state}: stored once every
        member has ended; computed from MLflow behind the TTL before."""
        suite, members = self._load(suite_id, with_report=True)
        state = suite_state([m.state for m in members], suite.cancel_requested)
        report = suite.report
        if report is not None:
            return {**report, "figures": decode_figures(report), "state": state}
        key = ("suite-report", suite_id, tuple((m.id, m.state, m.results_runs) for m in members))
        live = self.reads.live(key, lambda: self.compute(suite, members))
        return {**live, "artifact_path": None, "state": state}

    def compute(self, suite: Suite, members: Sequence[Sweep]) -> dict[str, Any]:
        from service.queries import history_points
        from service.suite_report import Member, build_suite_report

        built = []
        for m in members:
            row = self.reads.sweep(m.id, "plan", "trials")
            spec, trials = self.reads.expansion(row)
            snapshot = row.trials or {}
            built.append(
                Member(
                    file=m.member_file or m.name,
                    sweep_id=m.id,
                    state=m.state,
                    spec=spec,
                    trials=trials,
                    runs=self.reads.runs(row),
                    trial_states={k: str(t.get("state") or "pending") for k, t in snapshot.items()},
                    adopted={
                        k: str(t["adopted_from"])
                        for k, t in snapshot.items()
                        if t.get("state") == "adopted" and t.get("adopted_from")
                    },
                )
            )
        report = build_suite_report(
            suite.id, suite.name, suite.description, built, history_points(self.reads.mlflow())
        )
        return {"markdown": report.markdown, "figures": report.figures, "data": report.data}

    def report_public(self, suite_id: str, base_url: str) -> SuiteReportPublic:
        r = self.report(suite_id)
        base = f"{base_url}v1/suites/{suite_id}/report/figures"
        return SuiteReportPublic(
            suite_id=suite_id,
            state=r["state"],
            markdown=r["markdown"],
            figures=[FigureLink(name=n, url=f"{base}/{n}") for n in r["figures"]],
            data=r["data"],
            artifact_path=r.get("artifact_path"),
        )

    # -- the end -----------------------------------------------------------------------------

    def finalize(self, suite_id: str) -> bool:
        """Once every member has ended and been finalized: compute the report, log it to the
        suite's MLflow run and store it in the row. False (retried next pass) on failure."""
        suite, members = self._load(suite_id)
        if suite.finalized_at is not None:
            return True
        if any(m.state not in TERMINAL_STATES or m.finalized_at is None for m in members):
            return False
        if self._failures.get(suite_id, 0) >= MAX_FINALIZE_ATTEMPTS:
            return False
        try:
            report = self.compute(suite, members)
            run_id = self._log(suite, members, report)
        except Exception as e:
            n = self._failures[suite_id] = self._failures.get(suite_id, 0) + 1
            log.warning("suite %s: report not stored (attempt %d): %s: %s", suite_id, n, type(e).__name__, e)
            return False
        from service.queries import encode_report

        stored = encode_report(report["markdown"], report["figures"], f"runs:/{run_id}/report")
        stored["data"] = report["data"]
        with self.sessions() as s:
            crud.update_suite(s, suite_id, report=stored, mlflow_run_id=run_id, finalized_at=utcnow())
        log.info("suite %s: report stored (run %s)", suite_id, run_id)
        return True

    def _log(self, suite: Suite, members: Sequence[Sweep], report: dict[str, Any]) -> str:
        """The suite's own MLflow run (found by its tag, else created) with the report on it."""
        from workers.tracking import EXPERIMENT_KIND_ML, FINISHED, MLFLOW_EXPERIMENT_KIND, TAG_ROLE

        client = self.reads.mlflow()
        name = f"dab/suite {suite.name} ({suite.id})"
        exp = client.get_experiment_by_name(name)
        tags = {
            TAG_SUITE_ID: suite.id,
            MLFLOW_EXPERIMENT_KIND: EXPERIMENT_KIND_ML,  # MLflow's UI opens it on its runs table
            "mlflow.note.content": suite.description or suite.name,
        }
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(name, tags=tags)
        found = client.search_runs([exp_id], f"tags.`{TAG_SUITE_ID}` = '{suite.id}'", max_results=1)
        if found:
            run_id = found[0].info.run_id
        else:
            tags = {TAG_SUITE_ID: suite.id, TAG_ROLE: ROLE_SUITE}
            run_id = client.create_run(exp_id, tags=tags, run_name=suite.name).info.run_id
        for m in members:
            client.set_tag(
                run_id, f"dab.member.{m.member_index or 0:02d}", f"{m.member_file} {m.id} {m.state}"
            )
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            (d / "report.md").write_text(report["markdown"])
            for fig, png in report["figures"].items():
                (d / fig).write_bytes(png)
            client.log_artifacts(run_id, str(d), "report")
        client.set_terminated(run_id, FINISHED)
        return str(run_id)


__all__ = ["MAX_FINALIZE_ATTEMPTS", "ROLE_SUITE", "TAG_SUITE_ID", "Suites", "suite_state"]
