"""The read model over real HTTP, without Ray: the reconciler writes each sweep's snapshot into
its row and stores an ended sweep's results and report; GETs read rows and write nothing.

The driver's side is played by the test: it writes ``status.json`` as the driver does and the
MLflow runs (a real SQLite tracking store) with the driver's tags, and a fake jobs client says
what Ray would say of the driver job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.s3 import S3Server, s3_server
from workers._files import SHARED_FILE, SPEC_FILE, STATUS_FILE
from workers.tracking import (
    ROLE_SWEEP,
    ROLE_TRIAL,
    TAG_CELL_KEY,
    TAG_ROLE,
    TAG_SEED,
    TAG_SWEEP_ID,
    TAG_TRIAL_KEY,
    experiment_name,
    make_client,
)

Api = Any

#: Each trial's test_all_or_none history: the last value is below the best, so the declared
#: aggregation (sorting reads each run's maximum, as Figure 3 does) shows in the numbers.
HISTORIES = {0: [0.2, 0.9, 0.5], 1: [0.1, 0.7, 0.6]}  # by trial index


class FakeJobs:
    """What the Ray jobs API answers of the driver job, set by the test."""

    def __init__(self) -> None:
        self.state = "RUNNING"
        self.submitted: list[str] = []
        self.entrypoints: list[str] = []
        self.envs: list[dict[str, str]] = []
        self.address = "fake"

    def submit(self, entrypoint: str, job_id: str, env: dict[str, str] | None = None, **_: Any) -> None:
        self.submitted.append(job_id)
        self.entrypoints.append(entrypoint)
        self.envs.append(dict(env or {}))

    def status(self, job_id: str) -> str:
        return self.state

    def info(self, job_id: str) -> Any:
        return None

    def stop(self, job_id: str) -> bool:
        self.state = "STOPPED"
        return True

    def logs(self, job_id: str) -> str:
        return ""


def _manager(api: Api) -> Any:
    return api.server.server.config.app.state.dab.manager


def _play_driver(api: Api, sweep_id: str) -> dict[str, Any]:
    """MLflow runs and a status file as the driver leaves them mid-sweep."""
    manager = _manager(api)
    client = make_client(api.settings.tracking_uri)
    sweep = manager.reads.sweep(sweep_id, "plan")
    # Named and tagged as the driver makes it: the service finds it by the tag.
    exp = client.create_experiment(experiment_name(sweep_id, sweep.name), tags={TAG_SWEEP_ID: sweep_id})
    parent = client.create_run(exp, tags={TAG_ROLE: ROLE_SWEEP, TAG_SWEEP_ID: sweep_id}).info.run_id
    trials: dict[str, Any] = {}
    states = ["finished", "finished", "running", "failed"]
    for (key, index, cell_key, seed, _steps), state in zip(sweep.plan, states, strict=True):
        run = client.create_run(
            exp,
            tags={
                TAG_ROLE: ROLE_TRIAL,
                TAG_SWEEP_ID: sweep_id,
                TAG_TRIAL_KEY: key,
                TAG_CELL_KEY: cell_key,
                TAG_SEED: str(seed),
                "mlflow.parentRunId": parent,
            },
        ).info.run_id
        for step, value in enumerate(HISTORIES.get(index, [0.3])):
            client.log_metric(run, "test_all_or_none", value, step=(step + 1) * 10)
        if state in ("finished", "failed"):
            client.set_terminated(run, "FINISHED" if state == "finished" else "FAILED")
        trials[key] = {
            "index": index,
            "cell_key": cell_key,
            "seed": seed,
            "state": state,
            "attempts": 1,
            "last_step": 15 if state == "running" else 30,
            "run_id": run,
            "error": "RuntimeError: boom" if state == "failed" else None,
        }
    counts = {"total": 4, "finished": 2, "running": 1, "failed": 1, "pending": 0}
    manager.location(sweep).child(STATUS_FILE).write_json(
        {"state": "running", "counts": counts, "trials": trials}
    )
    return {"client": client, "parent": parent, "trials": trials}


@pytest.fixture
def running(api: Api) -> tuple[Api, str, FakeJobs, dict[str, Any]]:
    sweep_id = api.submit().json()["id"]
    jobs = FakeJobs()
    manager = _manager(api)
    manager.jobs = jobs
    manager.reconcile_all()  # queued without a job: the reconciler submits the driver
    assert jobs.submitted == [f"dab-{sweep_id}-1"]
    played = _play_driver(api, sweep_id)
    manager.reconcile_all()
    return api, sweep_id, jobs, played


def test_the_reconciler_writes_the_snapshot_and_gets_read_it(running: Any) -> None:
    api, sweep_id, _jobs, played = running
    r = api.http.get(f"/v1/sweeps/{sweep_id}")
    body = r.json()
    assert body["state"] == "running"
    # 2 finished + 1 failed (done) + 1 at step 15 of 30 = 3.5 of 4 trials
    assert body["progress"] == pytest.approx(0.875)
    assert body["counts"]["failed"] == 1 and body["counts"]["running"] == 1
    failed = next(k for k, t in played["trials"].items() if t["state"] == "failed")
    assert body["last_error"] == f"trial {failed} (failed): RuntimeError: boom"
    assert body["parent_run_id"] == played["parent"] and body["mlflow_experiment_id"]
    assert body["snapshot_at"] is not None and body["eta_s"] is not None
    # a client that holds this answer revalidates for free
    again = api.http.get(f"/v1/sweeps/{sweep_id}", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    trials = api.http.get(f"/v1/sweeps/{sweep_id}/trials").json()["data"]
    by_key = {t["trial_key"]: t for t in trials}
    assert by_key[failed]["state"] == "failed" and by_key[failed]["error"] == "RuntimeError: boom"
    assert sorted(t["last_step"] for t in trials) == [15, 30, 30, 30]


def test_no_get_writes_anything(running: Any) -> None:
    api, sweep_id, _jobs, played = running
    manager = _manager(api)
    before = manager.reads.sweep(sweep_id).updated_at
    for path in ("", "/trials", "/results", "/results?format=markdown", "/report", "/report?format=markdown"):
        assert api.http.get(f"/v1/sweeps/{sweep_id}{path}").status_code == 200, path
    assert manager.reads.sweep(sweep_id).updated_at == before
    assert played["client"].list_artifacts(played["parent"]) == []  # the running report is not logged


def test_an_ended_sweep_is_finalized_once_and_read_from_its_row(running: Any, tmp_path: Path) -> None:
    api, sweep_id, jobs, played = running
    manager = _manager(api)
    jobs.state = "SUCCEEDED"
    manager.reconcile_all()
    row = manager.reads.sweep(sweep_id, "results", "report")
    assert row.state == "finished" and row.finalized_at is not None and row.eta_s is None
    # trials 0 and 1 (seed 0 of each cell) finished; 2 runs, 3 failed: one value per cell,
    # each run's maximum (0.9, 0.7; their last values were 0.5, 0.6), as sorting declares
    stored = json.loads(row.results)
    assert stored["state"] == "finished" and row.results_runs == 2
    stats = [c["metrics"]["test_all_or_none"] for c in stored["cells"]]
    assert [(s["n"], s["values"], s["seeds"]) for s in stats] == [(1, [0.9], [0]), (1, [0.7], [0])]
    # logged once on the parent run
    names = {a.path for a in played["client"].list_artifacts(played["parent"], "report")}
    assert "report/report.md" in names
    queries = manager.reads.mlflow_queries
    results = api.http.get(f"/v1/sweeps/{sweep_id}/results").json()
    assert results == stored and manager.reads.mlflow_queries == queries
    report = api.http.get(f"/v1/sweeps/{sweep_id}/report").json()
    assert report["artifact_path"] == f"runs:/{played['parent']}/report"
    assert "Table 1" in report["markdown"]
    for fig in report["figures"]:
        png = api.http.get(fig["url"])
        assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    # reconciling again does not log the report a second time
    manager.reconcile_all()
    assert manager.reads.sweep(sweep_id).finalized_at == row.finalized_at
    assert json.dumps(results) == json.dumps(api.http.get(f"/v1/sweeps/{sweep_id}/results").json())


def test_a_failed_finalize_is_retried_and_reads_fall_back_to_mlflow(running: Any, monkeypatch: Any) -> None:
    api, sweep_id, jobs, _played = running
    manager = _manager(api)
    calls = {"n": 0}
    real = manager.reads.compute_report

    def flaky(*a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("MLflow is down")
        return real(*a, **kw)

    monkeypatch.setattr(manager.reads, "compute_report", flaky)
    jobs.state = "SUCCEEDED"
    manager.reconcile_all()
    assert manager.reads.sweep(sweep_id).finalized_at is None  # nothing half-written
    assert manager.reads.sweep(sweep_id, "report").report is None
    assert api.http.get(f"/v1/sweeps/{sweep_id}/report").status_code == 200  # from MLflow meanwhile
    manager.reconcile_all()
    # calls: the failed pass, the GET above (computed, not stored), the pass that stored it
    assert manager.reads.sweep(sweep_id).finalized_at is not None and calls["n"] == 3


def test_a_running_sweeps_results_are_the_rows_and_follow_finished_trials(running: Any) -> None:
    api, sweep_id, _jobs, played = running
    manager = _manager(api)
    row = manager.reads.sweep(sweep_id, "results")
    assert row.results_runs == 2  # the two FINISHED runs
    queries = manager.reads.mlflow_queries
    for _ in range(5):
        body = api.http.get(f"/v1/sweeps/{sweep_id}/results").json()
    assert manager.reads.mlflow_queries == queries  # read from the row, not from MLflow
    assert body["state"] == "running" and [c["metrics"]["test_all_or_none"]["n"] for c in body["cells"]] == [
        1,
        1,
    ]
    manager.reconcile_all()  # nothing finished since: not recomputed
    assert manager.reads.mlflow_queries == queries
    # the running trial finishes: the next pass recomputes the results with it
    key = next(k for k, t in played["trials"].items() if t["state"] == "running")
    played["client"].set_terminated(played["trials"][key]["run_id"], "FINISHED")
    status_file = manager.location(manager.reads.sweep(sweep_id)).child(STATUS_FILE)
    status = status_file.read_json()
    status["trials"][key]["state"] = "finished"
    status["counts"] = {**status["counts"], "finished": 3, "running": 0}
    status_file.write_json(status)
    manager.reconcile_all()
    assert manager.reads.sweep(sweep_id).results_runs == 3
    body = api.http.get(f"/v1/sweeps/{sweep_id}/results").json()
    cell = next(c for c in body["cells"] if c["metrics"]["test_all_or_none"]["n"] == 2)
    assert sorted(cell["metrics"]["test_all_or_none"]["values"]) == [0.3, 0.9]
    # a query other than the default is computed from MLflow
    final = api.http.get(f"/v1/sweeps/{sweep_id}/results", params={"agg": "final"}).json()
    assert sorted(v for c in final["cells"] for v in c["metrics"]["test_all_or_none"]["values"]) == [
        0.3,
        0.5,
        0.6,
    ]


def test_a_new_sweep_is_submitted_once_while_the_reconciler_runs(api: Api) -> None:
    """The reconciler sees a new row before its submission has recorded the job: it waits for
    the sweep's lock and then finds the job, instead of submitting a second driver."""
    import threading

    manager = _manager(api)
    jobs = FakeJobs()
    entered, release = threading.Event(), threading.Event()
    real_submit = jobs.submit

    def slow_submit(entrypoint: str, job_id: str, **kw: Any) -> None:
        real_submit(entrypoint, job_id, **kw)
        entered.set()
        release.wait(10)

    jobs.submit = slow_submit  # type: ignore[method-assign]
    manager.jobs = jobs
    submitter = threading.Thread(target=api.submit)
    submitter.start()
    assert entered.wait(10)
    (sweep_id,) = [s["id"] for s in api.http.get("/v1/sweeps").json()["data"]]
    reconciler = threading.Thread(target=manager.reconcile_one, args=(sweep_id,))
    reconciler.start()
    reconciler.join(0.5)
    assert reconciler.is_alive()  # waiting for the sweep's lock, not submitting
    release.set()
    submitter.join(10)
    reconciler.join(10)
    assert jobs.submitted == [f"dab-{sweep_id}-1"]
    assert manager.reads.sweep(sweep_id).job_attempts == 1


def test_a_sweep_on_object_storage_is_read_from_there(serve: Any, tmp_path: Path) -> None:
    """With s3:// storage the service writes the driver's spec to the bucket, names it in the
    driver job (with the endpoint, never credentials) and reads progress from the bucket; the
    state directory keeps only the service's own files."""
    server: S3Server
    with s3_server() as server:
        api = serve(storage_uri=f"s3://{server.bucket}/sweeps", s3_endpoint_url=server.endpoint_url)
        sweep_id = api.submit().json()["id"]
        jobs = FakeJobs()
        manager = _manager(api)
        manager.jobs = jobs
        manager.reconcile_all()
        location = f"s3://{server.bucket}/sweeps/{sweep_id}"
        assert manager.reads.sweep(sweep_id).sweep_dir == location
        # the spec, and what the admission told the driver to adopt or wait for (nothing)
        assert server.keys() == [f"sweeps/{sweep_id}/{SHARED_FILE}", f"sweeps/{sweep_id}/{SPEC_FILE}"]
        spec = manager.location(manager.reads.sweep(sweep_id)).child(SPEC_FILE).read_json()
        assert spec["name"] == "tiny"
        [entrypoint] = jobs.entrypoints
        assert f" {location}/{SPEC_FILE} --sweep-dir {location} " in entrypoint
        assert jobs.envs == [{"DAB_RAY_ADDRESS": "", "DAB_S3_ENDPOINT_URL": server.endpoint_url}]

        _play_driver(api, sweep_id)
        manager.reconcile_all()
        body = api.http.get(f"/v1/sweeps/{sweep_id}").json()
        assert body["counts"]["finished"] == 2 and body["counts"]["failed"] == 1
        assert body["last_error"].endswith("RuntimeError: boom")
        state = {p.name for p in (tmp_path / "state").iterdir()}
        assert "sweeps" not in state and state <= {
            "service.db",
            "mlflow.db",
            "mlflow.db-wal",
            "mlflow.db-shm",
            "artifacts",
        }


def test_storage_that_cannot_be_written_is_a_503_and_leaves_no_sweep(serve: Any) -> None:
    """The spec is written before the row: a storage outage refuses the sweep whole."""
    api = serve(storage_uri="s3://no-such-server/sweeps", s3_endpoint_url="http://127.0.0.1:1")
    r = api.submit()
    assert r.status_code == 503, r.text
    body = r.json()
    assert "cannot write the sweep to storage s3://no-such-server/sweeps" in body["message"]
    assert api.http.get("/v1/sweeps").json()["data"] == []
