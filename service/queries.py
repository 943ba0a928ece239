"""The read side of the API: typed queries the routers call. No query writes anything.

(About 400 lines: every read of the API is here, one method each, so that routers stay thin.)

* A sweep and the list: the row, and nothing else (the reconciler keeps it current).
* A sweep's default results (its metric as declared): the row's, which the reconciler
  recomputes whenever a trial finishes; an ended sweep's report: stored in the row when it ended.
* A running sweep's trials and report, and non-default results queries: from
  MLflow (the record of trials) behind a short TTL (`LIVE_TTL_S`, cachetools with a condition,
  so that fifty clients asking at once cost one MLflow query).
* Expansions of stored specs (for results and reports): an LRU keyed by the spec's hash; a
  sweep's spec never changes, so nothing ever needs invalidating.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache, TTLCache, cached
from cachetools.keys import hashkey
from sqlalchemy import Engine, bindparam, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from service import crud
from service.api.schemas import (
    FigureLink,
    Links,
    ReportPublic,
    SweepDetail,
    SweepPublic,
    SweepsPublic,
    TrialPublic,
    TrialsPublic,
)
from service.core.config import Settings
from service.core.errors import InvalidRequestError, NotFoundError
from service.db.models import Sweep
from workers.spec import SweepSpec, Trial, expand, parse_spec
from workers.spec.expand import search_trials

#: How long a running sweep's MLflow-backed answers are reused (seconds).
LIVE_TTL_S = 2.0


#: The columns every read of a sweep loads; the large ones only on request. The spec is large
#: and never changes: `Reads.spec` keeps it in an LRU.
_LARGE = ("spec", "plan", "trials", "results", "report")
_SMALL_COLUMNS = tuple(c for c in Sweep.__table__.c if c.name not in _LARGE)


@functools.cache
def _select_sweep(columns: tuple[str, ...]) -> Any:
    """The statement, built once per set of columns (building it costs more than running it)."""
    table = Sweep.__table__
    return select(*_SMALL_COLUMNS, *(table.c[c] for c in columns)).where(table.c.id == bindparam("sweep_id"))


def _public_fields(sweep: Sweep) -> dict[str, Any]:
    return {
        "id": sweep.id,
        "name": sweep.name,
        "experiment": sweep.experiment,
        "state": sweep.state,
        "trial_count": sweep.trial_count,
        "cell_count": sweep.cell_count,
        "created_at": crud.as_utc(sweep.created_at),
        "started_at": crud.as_utc(sweep.started_at),
        "finished_at": crud.as_utc(sweep.finished_at),
        "message": sweep.message,
        "counts": sweep.counts,
        "priority": sweep.priority or 0,
        "suite_id": sweep.suite_id,
    }


def as_public(sweep: Sweep) -> SweepPublic:
    return SweepPublic(**_public_fields(sweep))


def _elapsed(sweep: Sweep) -> float | None:
    started = crud.as_utc(sweep.started_at)
    if started is None:
        return None
    ended = crud.as_utc(sweep.finished_at) or crud.as_utc(sweep.snapshot_at) or started
    return round((ended - started).total_seconds(), 1)


def history_points(client: Any) -> Callable[[str, str], list[tuple[float, float]]]:
    """(run_id, metric) -> the run's (step, value) pairs: what results and the report both take."""

    def history(run_id: str, metric: str) -> list[tuple[float, float]]:
        return sorted((float(m.step), m.value) for m in client.get_metric_history(run_id, metric))

    return history


def decode_figures(report: dict[str, Any]) -> dict[str, bytes]:
    return {n: base64.b64decode(b) for n, b in (report.get("figures") or {}).items()}


def encode_report(markdown: str, figures: dict[str, bytes], artifact_path: str | None) -> dict[str, Any]:
    return {
        "markdown": markdown,
        "figures": {n: base64.b64encode(png).decode() for n, png in figures.items()},
        "artifact_path": artifact_path,
    }


@dataclass
class Reads:
    """The queries, over the service's sessions and its MLflow client."""

    settings: Settings
    sessions: sessionmaker[Session]
    _mlflow: Any = None
    _expansions: LRUCache[Any, tuple[SweepSpec, list[Trial]]] = field(default_factory=lambda: LRUCache(64))
    _specs: LRUCache[str, dict[str, Any]] = field(default_factory=lambda: LRUCache(1024))
    _live: TTLCache[Any, Any] = field(default_factory=lambda: TTLCache(maxsize=512, ttl=LIVE_TTL_S))
    _adopted: LRUCache[str, Any] = field(default_factory=lambda: LRUCache(10_000))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _local: threading.local = field(default_factory=threading.local)
    _done: threading.Condition = field(init=False)
    mlflow_queries: int = 0  # MLflow searches made, for tests

    def __post_init__(self) -> None:
        self._done = threading.Condition(self._lock)
        self._ui_command = self.settings.mlflow_ui_command()  # looks on disk: once

    # -- rows --------------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        return self.sessions.kw["bind"]  # type: ignore[no-any-return]

    def sweep(self, sweep_id: str, *columns: str) -> Sweep:
        """The row (a read-only `Sweep`-shaped record), with the large `columns` loaded too.

        A Core select on a pooled connection: a quarter of an ORM session's cost, which is
        most of what the hot ``GET /v1/sweeps/{id}`` spends (docs/service.md, Benchmark).
        """
        row = self._read(_select_sweep(columns), {"sweep_id": sweep_id})
        if row is None:
            raise NotFoundError(f"no sweep {sweep_id!r}", field="sweep_id")
        return row  # type: ignore[return-value]  # a Row has the Sweep's attributes

    def _read(self, query: Any, params: dict[str, Any]) -> Any:
        """One row, on this thread's own AUTOCOMMIT connection: each statement is its own
        transaction (it sees every commit before it), and no pool checkout and rollback per read.
        A connection the database dropped is replaced once."""
        for attempt in (0, 1):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self.engine.connect().execution_options(
                    isolation_level="AUTOCOMMIT"
                )
            try:
                return conn.execute(query, params).first()
            except DBAPIError as e:
                self._local.conn = None
                if attempt or not e.connection_invalidated:
                    raise
        return None

    def spec(self, sweep_id: str) -> dict[str, Any]:
        """The sweep's stored spec (immutable once submitted, so an LRU never serves it stale)."""
        with self._lock:
            hit = self._specs.get(sweep_id)
        if hit is None:
            hit = self.sweep(sweep_id, "spec").spec
            with self._lock:
                self._specs[sweep_id] = hit
        return hit

    def sweeps(self, states: Sequence[str] | None, limit: int, offset: int) -> SweepsPublic:
        with self.sessions() as s:
            rows, count = crud.list_sweeps(s, states=states, limit=limit, offset=offset)
        return SweepsPublic(data=[as_public(r) for r in rows], count=count)

    def detail(self, sweep: Sweep, base_url: str) -> SweepDetail:
        return SweepDetail(
            **_public_fields(sweep),
            progress=1.0 if sweep.state == "finished" else sweep.progress,
            eta_s=sweep.eta_s,
            elapsed_s=_elapsed(sweep),
            snapshot_at=crud.as_utc(sweep.snapshot_at),
            last_error=sweep.last_error,
            ray_job_id=sweep.ray_job_id,
            job_attempts=sweep.job_attempts,
            mlflow_experiment_id=sweep.mlflow_experiment_id,
            parent_run_id=sweep.parent_run_id,
            tracking_uri=self.settings.tracking_uri,
            spec=self.spec(sweep.id),
            links=self._links(sweep, base_url),
        )

    def _links(self, sweep: Sweep, base_url: str) -> Links:
        base = f"{base_url}v1/sweeps/{sweep.id}"
        exp, ui = sweep.mlflow_experiment_id, self.settings.mlflow_ui_url
        return Links(
            self=base,
            trials=f"{base}/trials",
            results=f"{base}/results",
            report=f"{base}/report",
            cancel=f"{base}/cancel",
            mlflow_experiment=f"{ui.rstrip('/')}/#/experiments/{exp}"
            if ui and exp
            else (f"experiment {exp}" if exp else None),
            mlflow_ui_command=self._ui_command,
        )

    # -- MLflow-backed -----------------------------------------------------------------------

    def mlflow(self) -> Any:
        if self._mlflow is None:
            from workers.tracking import make_client

            self._mlflow = make_client(self.settings.tracking_uri)
        return self._mlflow

    def expansion(self, sweep: Sweep) -> tuple[SweepSpec, list[Trial]]:
        """The sweep's spec and trials. A search's trials are those of the configurations its
        searcher proposed so far (the plan the reconciler keeps), rebuilt from their cells."""
        key: tuple[Any, ...] = (sweep.id, sweep.spec_hash)
        with self._lock:
            hit = self._expansions.get(key)
        if hit is None:
            spec = parse_spec(dict(self.spec(sweep.id)), source=f"sweep {sweep.id}")
            hit = (spec, [] if spec.search is not None else expand(spec))
            with self._lock:
                self._expansions[key] = hit
        spec = hit[0]
        if spec.search is None:
            return hit
        plan = getattr(sweep, "plan", None)
        if plan is None:
            plan = self.sweep(sweep.id, "plan").plan or []
        seeds = len(spec.seeds)
        cells = {int(row[1]) // seeds: row[5] for row in plan if len(row) > 5}
        key = (*key, len(cells))
        with self._lock:
            found = self._expansions.get(key)
        if found is None:
            found = (spec, search_trials(spec, [cells[i] for i in sorted(cells)]) if cells else [])
            with self._lock:
                self._expansions[key] = found
        return found

    def live(self, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        """`compute()` behind the TTL cache; concurrent callers of one key wait for one compute."""
        return cached(self._live, key=lambda *_: hashkey(*key), lock=self._lock, condition=self._done)(
            compute
        )()

    def runs(self, sweep: Sweep, fresh: bool = False, experiment_id: str | None = None) -> dict[str, Any]:
        """trial_key -> its MLflow run (`service.results.TrialRun`): the sweep's own, and the
        FINISHED runs of other sweeps it adopted (`service.sharing`); `fresh`: bypass the TTL."""
        exp_id = experiment_id or sweep.mlflow_experiment_id
        if not exp_id:
            return {}
        from service.results import trial_runs

        def compute() -> dict[str, Any]:
            self.mlflow_queries += 1
            own = trial_runs(self.mlflow(), str(exp_id), sweep.id)
            return {**self.adopted_runs(sweep, own), **own}

        if fresh:
            return compute()
        return self.live(("runs", sweep.id, sweep.state), compute)  # type: ignore[no-any-return]

    def adopted_runs(self, sweep: Sweep, own: dict[str, Any]) -> dict[str, Any]:
        """trial_key -> the other sweep's run, for the trials this sweep adopted (its snapshot
        says which) and has no run of its own for. A FINISHED run never changes: each is read
        from MLflow once (`_adopted` LRU)."""
        from service.results import trial_run_of

        trials = getattr(sweep, "trials", None)
        if trials is None:
            trials = self.sweep(sweep.id, "trials").trials
        out: dict[str, Any] = {}
        for key, t in (trials or {}).items():
            if t.get("state") != "adopted" or not t.get("run_id") or key in own:
                continue
            run_id = str(t["run_id"])
            with self._lock:
                hit = self._adopted.get(run_id)
            if hit is None:
                self.mlflow_queries += 1
                hit = trial_run_of(self.mlflow().get_run(run_id), key, t.get("adopted_from"))
                if hit.status == "FINISHED":
                    with self._lock:
                        self._adopted[run_id] = hit
            out[key] = hit
        return out

    def trials(self, sweep_id: str, states: Sequence[str] | None, limit: int, offset: int) -> TrialsPublic:
        sweep = self.sweep(sweep_id, "plan", "trials")
        snapshot = sweep.trials or {}
        runs = self.runs(sweep)
        out = []
        for key, index, cell_key, seed, steps, *_ in self.plan(sweep):
            s = snapshot.get(key) or {}
            run = runs.get(key)
            state = s.get("state") or (
                "finished" if run is not None and run.status == "FINISHED" else "pending"
            )
            if states and state not in states:
                continue
            out.append(
                TrialPublic(
                    trial_key=key,
                    index=index,
                    cell_key=cell_key,
                    seed=seed,
                    state=state,  # type: ignore[arg-type]
                    attempts=int(s.get("attempts") or 0),
                    last_step=s.get("last_step"),
                    steps=steps,
                    run_id=(run.run_id if run else None) or s.get("run_id"),
                    run_status=run.status if run else None,
                    metrics={
                        k: v
                        for k, v in (run.metrics if run else {}).items()
                        if isinstance(v, float | int) and math.isfinite(v)
                    },
                    error=s.get("error"),
                    nodes=list(s.get("nodes") or []),
                    device=(s.get("placement") or {}).get("device") or None,
                    note=(s.get("placement") or {}).get("device_note") or None,
                    adopted_from=s.get("adopted_from"),
                    stopped_at=s.get("stopped_at"),
                )
            )
        return TrialsPublic(data=out[offset : offset + limit], count=len(out))

    def plan(self, sweep: Sweep) -> list[list[Any]]:
        if sweep.plan is not None:
            return sweep.plan
        from service.snapshot import plan_of  # a row from before the plan column: expand

        return plan_of(self.expansion(sweep)[1])

    def results(
        self,
        sweep_id: str,
        metrics: Sequence[str] | None,
        agg: str | None,
        reference: str | None,
        include_stopped: bool = False,
    ) -> str:
        """The results body as JSON text. The default query is the row's (the reconciler keeps
        it current); any other is computed from MLflow behind the TTL."""
        if not metrics and agg is None and reference is None and not include_stopped:
            sweep = self.sweep(sweep_id, "results")
            if sweep.results is not None:
                return sweep.results
        else:
            sweep = self.sweep(sweep_id)
        key = ("results", sweep.id, sweep.state, tuple(metrics or ()), agg, reference, include_stopped)
        return self.live(  # type: ignore[no-any-return]
            key,
            lambda: json.dumps(
                self.compute_results(sweep, metrics, agg, reference, include_stopped=include_stopped)
            ),
        )

    def default_results(
        self, sweep: Sweep, experiment_id: str | None = None, runs: dict[str, Any] | None = None
    ) -> tuple[str, int]:
        """(the default results body as JSON text, the FINISHED runs it holds), from `runs` or
        fresh from MLflow: what the reconciler stores in the row."""
        if runs is None:
            runs = self.runs(sweep, fresh=True, experiment_id=experiment_id)
        body = self.compute_results(sweep, None, None, None, runs=runs, check_metrics=False)
        return json.dumps(body), finished_runs(runs)

    def compute_results(
        self,
        sweep: Sweep,
        metrics: Sequence[str] | None,
        agg: str | None,
        reference: str | None,
        runs: dict[str, Any] | None = None,
        check_metrics: bool = True,
        include_stopped: bool = False,
    ) -> dict[str, Any]:
        """Results from MLflow. `check_metrics`: a metric no run reports is a 422 (a query's
        typo), not an empty table; the finalizer turns it off (no run may have reported)."""
        from service.results import compute_results

        spec, trials = self.expansion(sweep)
        cells = {t.cell_key for t in trials}
        if reference is not None and reference not in cells:
            raise InvalidRequestError(
                f"reference {reference!r} is not a cell of this sweep; cells: {', '.join(sorted(cells))}",
                field="reference",
            )
        runs = self.runs(sweep) if runs is None else runs
        chosen = list(metrics or [spec.resolved_metric])
        known = {k for r in runs.values() for k in r.metrics}
        unknown = [m for m in chosen if check_metrics and known and m not in known]
        if unknown:
            raise InvalidRequestError(
                f"no trial of this sweep reports {unknown[0]!r}; metrics: {', '.join(sorted(known))}",
                field="metric",
            )
        res = compute_results(
            spec,
            trials,
            runs,
            metrics=chosen,
            agg=agg,  # type: ignore[arg-type]  # the route validated it: final, best or None
            reference=reference,
            history=history_points(self.mlflow()),
            include_stopped=include_stopped,
        )
        if spec.search is not None:  # the best configurations, Welch's p, each field's importance
            from service.search_report import search_summary

            own = [spec.resolved_metric]
            every = (
                res
                if include_stopped and chosen == own
                else compute_results(
                    spec,
                    trials,
                    runs,
                    metrics=own,
                    history=history_points(self.mlflow()),
                    include_stopped=True,
                )
            )
            res["search"] = search_summary(spec, every, include_stopped=include_stopped)
        return {"sweep_id": sweep.id, "state": sweep.state, **res}

    def report(self, sweep_id: str) -> dict[str, Any]:
        """{markdown, figures: {name: PNG bytes}, artifact_path}: stored once the sweep ended."""
        sweep = self.sweep(sweep_id, "report")
        if sweep.report is not None:
            return {**sweep.report, "figures": decode_figures(sweep.report)}
        return self.live(("report", sweep.id, sweep.state), lambda: self.compute_report(sweep))  # type: ignore[no-any-return]

    def compute_report(self, sweep: Sweep, runs: dict[str, Any] | None = None) -> dict[str, Any]:
        from service.report import build_report

        spec, trials = self.expansion(sweep)
        runs = self.runs(sweep) if runs is None else runs
        markdown, figures = build_report(sweep.id, spec, trials, runs, history_points(self.mlflow()))
        return {"markdown": markdown, "figures": figures, "artifact_path": None}

    def report_public(self, sweep_id: str, base_url: str) -> ReportPublic:
        report = self.report(sweep_id)
        base = f"{base_url}v1/sweeps/{sweep_id}/report/figures"
        return ReportPublic(
            sweep_id=sweep_id,
            markdown=report["markdown"],
            figures=[FigureLink(name=n, url=f"{base}/{n}") for n in report["figures"]],
            artifact_path=report["artifact_path"],
        )

    def figure(self, sweep_id: str, name: str) -> bytes:
        figures = self.report(sweep_id)["figures"]
        if name not in figures:
            raise NotFoundError(
                f"no figure {name!r} in this sweep's report; figures: {', '.join(figures) or 'none'}",
                field="name",
            )
        return figures[name]  # type: ignore[no-any-return]


def finished_runs(runs: dict[str, Any]) -> int:
    """How many trials have a FINISHED run: what a sweep's results are made of."""
    return sum(1 for r in runs.values() if r.status == "FINISHED")


__all__ = [
    "LIVE_TTL_S",
    "Reads",
    "as_public",
    "decode_figures",
    "encode_report",
    "finished_runs",
    "history_points",
]
