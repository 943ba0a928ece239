"""A suite over real HTTP on the embedded default (`dab serve` with its own Ray head and MLflow
on SQLite), everything real: three tiny members with two driver slots, so one waits queued; two
members share a trial, which runs once (one MLflow run) and the other adopts; the service is
SIGKILLed with its head mid-suite and started again, and nothing is lost or run twice. Then
``dab submit configs/paper.yaml`` is accepted with 650 trials to run and cancelled at once."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from tests.e2e.proc import DAB, Service, service_env

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    svc = Service(tmp_path / "state", service_env(tmp_path / "state", DAB_MAX_ACTIVE_SWEEPS="2"))
    try:
        svc.start()
        yield svc
    finally:
        svc.stop()


def _poll(
    url: str, path: str, until: Callable[[dict[str, Any]], bool], timeout_s: float = 240
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=60) as http:
        while True:
            body = http.get(path).json()
            if until(body):
                return dict(body)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path}: {body}")
            time.sleep(0.5)


def test_a_suite_queues_shares_survives_a_sigkill_and_reports(service: Service, tiny_spec: Any) -> None:
    a = tiny_spec()  # 2 cells x 1 seed
    a.update(name="a", replicates=1)
    b = tiny_spec()  # signum-dense seeds 0 and 1: seed 0 is a's trial too
    b.update(name="b", grid={"model": ["signum-dense"]}, replicates=[0, 1])
    c = tiny_spec(seq_len=4)
    c.update(name="c", grid={"model": ["elu-dense"]}, replicates=1, paper=[])
    body = {
        "name": "trio",
        "description": "three tiny members",
        "members": [{"file": f"{m['name']}.yaml", "spec": m} for m in (a, b, c)],
    }
    http = httpx.Client(base_url=service.url, timeout=60)
    r = http.post("/v1/suites", json=body)
    assert r.status_code == 202, r.text
    suite = r.json()
    sid = suite["id"]
    ida, idb, idc = (m["sweep_id"] for m in suite["members"])
    assert (suite["trial_count"], suite["distinct_trials"]) == (5, 4)
    assert [m["state"] for m in suite["members"]] == ["running", "running", "queued"]  # 2 slots

    # b waits for the trial a runs; c starts when a slot frees; then SIGKILL the whole stack
    _poll(service.url, f"/v1/sweeps/{idc}", lambda s: s["state"] != "queued")
    service.restart()
    http = httpx.Client(base_url=service.url, timeout=60)
    done = _poll(
        service.url, f"/v1/suites/{sid}", lambda s: s["state"] in ("finished", "failed", "cancelled")
    )
    assert done["state"] == "finished", done
    assert [m["state"] for m in done["members"]] == ["finished"] * 3

    # b was told to wait for the trial a was running (both started together), then adopted it
    logs = "".join(p.read_text() for p in service.state_dir.parent.glob("serve-*.log"))
    assert f"sweep {idb}: adopts 0 trial(s), waits for 1 run by other sweeps" in logs
    assert f"sweep {idb}: adopts 1 trial(s), waits for 0" in logs

    # the shared trial: one MLflow run, a's; b adopted it
    trials_b = http.get(f"/v1/sweeps/{idb}/trials").json()["data"]
    shared = next(t for t in trials_b if t["seed"] == 0)
    assert (shared["state"], shared["adopted_from"], shared["run_status"]) == ("adopted", ida, "FINISHED")
    detail = http.get(f"/v1/sweeps/{ida}").json()
    client = MlflowClient(detail["tracking_uri"])
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, "tags.`dab.role` = 'trial'", max_results=1000)
    keys = [run.data.tags["dab.trial_key"] for run in runs]
    assert len(runs) == 4 and len(set(keys)) == 4  # 5 trials listed, 4 distinct, each run once
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert next(run for run in runs if run.info.run_id == shared["run_id"]).data.tags["dab.sweep_id"] == ida
    res = http.get(f"/v1/sweeps/{idb}/results").json()
    [cell] = res["cells"]
    assert cell["metrics"]["test_all_or_none"]["n"] == 2 and cell["adopted"] == {"0": ida}

    # the suite's runs by one tag; experiments named for people; the report stored and logged.
    # The suite's own run is made when its report is stored, after the suite reads "finished".
    report = _poll(service.url, f"/v1/suites/{sid}/report", lambda rep: rep["artifact_path"] is not None, 60)
    exps = [e.experiment_id for e in client.search_experiments()]
    tagged = client.search_runs(exps, f"tags.`dab.suite_id` = '{sid}'", max_results=1000)
    roles = sorted(run.data.tags.get("dab.role") for run in tagged)
    assert roles == ["suite"] + ["sweep"] * 3 + ["trial"] * 4
    exp = client.get_experiment(detail["mlflow_experiment_id"])
    assert exp.name == f"dab/a ({ida})" and exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert report["state"] == "finished" and "trio" in report["markdown"]
    assert {s["id"] for s in report["data"]["sections"]} >= {"table1"}
    suite_run = http.get(f"/v1/suites/{sid}").json()["mlflow_run_id"]
    assert {f.path for f in client.list_artifacts(suite_run, "report")} >= {"report/report.md"}

    # the paper: accepted with 650 trials to run, then cancelled; nothing is left running
    env = {**service.env, "DAB_API_URL": service.url}
    out = subprocess.run(
        [str(DAB), "submit", str(ROOT / "configs" / "paper.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "670 trials listed, 650 distinct" in out.stdout and "650 trials to run" in out.stdout
    paper = out.stdout.splitlines()[1].strip()
    cancel = subprocess.run([str(DAB), "cancel", paper], env=env, capture_output=True, text=True, timeout=120)
    assert cancel.returncode == 0, cancel.stderr
    ended = _poll(service.url, f"/v1/suites/{paper}", lambda s: s["state"] == "cancelled", 120)
    assert {m["state"] for m in ended["members"]} == {"cancelled"}
    # a cancelled suite's report too is logged to its own run, which runs while it is written
    _poll(service.url, f"/v1/suites/{paper}/report", lambda rep: rep["artifact_path"] is not None, 60)
    running = client.search_runs(
        exps + [e.experiment_id for e in client.search_experiments()], "attributes.status = 'RUNNING'"
    )
    assert running == []
