"""The service SIGKILLed mid-sweep, its embedded Ray head with it (a crash of the whole stack),
then started again: it resubmits the sweep's driver, which restores, and the sweep finishes
with exactly one FINISHED run per trial and no step logged twice. The service DB is PostgreSQL
here (the API suite runs on both)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from tests.e2e.proc import Service, service_env

pytestmark = pytest.mark.slow


@pytest.fixture
def service(tmp_path: Path, pg_url: str) -> Iterator[Service]:
    svc = Service(tmp_path / "state", service_env(tmp_path / "state", DAB_DATABASE_URL=pg_url))
    try:
        yield svc
    finally:
        svc.stop()


def test_sigkill_mid_sweep_then_restart_finishes_without_duplicates(service: Service, tiny_spec: Any) -> None:
    service.start()
    spec = tiny_spec(steps=600, eval_every=10)
    spec["name"] = "tiny-restart"
    http = httpx.Client(base_url=service.url, timeout=60)
    sid = http.post("/v1/sweeps", json=spec).json()["id"]
    for _ in range(800):  # polls, 0.3 s apart: until a trial has trained a while (and has
        s = http.get(f"/v1/sweeps/{sid}").json()  # checkpoints), and not all trials are done
        trials = http.get(f"/v1/sweeps/{sid}/trials").json()["data"]
        if any((t["last_step"] or 0) >= 50 and t["state"] == "running" for t in trials):
            break
        assert s["state"] == "running", s
        time.sleep(0.3)
    else:
        pytest.fail(f"no trial reached step 50 in 800 polls: {s}")
    assert s["counts"]["finished"] < 4

    service.restart()  # SIGKILL: the whole embedded stack is gone, then started again
    http = httpx.Client(base_url=service.url, timeout=60)
    for _ in range(600):  # polls, 0.5 s apart
        s = http.get(f"/v1/sweeps/{sid}").json()
        if s["state"] in ("finished", "failed", "cancelled"):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the restored sweep did not end in 600 polls: {s}")
    assert s["state"] == "finished", s
    # At least one resubmission; a second is legitimate when the killed stack's orphaned driver
    # still held the sweep's lock as the first one started (bounded by max_job_attempts).
    assert s["job_attempts"] >= 2 and s["counts"]["finished"] + s["counts"]["skipped"] == 4

    client = MlflowClient(s["tracking_uri"])
    runs = client.search_runs([s["mlflow_experiment_id"]], "tags.`dab.role` = 'trial'", max_results=100)
    keys = [r.data.tags["dab.trial_key"] for r in runs]
    assert len(runs) == 4 and len(set(keys)) == 4  # no trial lost, none run twice
    assert {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "test_all_or_none")]
        assert len(steps) == len(set(steps)), f"steps logged twice in {run.info.run_name}"
        assert steps and max(steps) == 600 and len(steps) == 60
    res = http.get(f"/v1/sweeps/{sid}/results").json()
    assert [c["metrics"]["test_all_or_none"]["n"] for c in res["cells"]] == [2, 2]
