"""Suites, the queue and shared trials over real HTTP, without Ray: a fake jobs client says what
Ray would say of each driver job, and the test writes ``status.json`` as a driver would.

The real thing (drivers, Ray, MLflow) runs in tests/e2e/test_suite_run.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from service.db.models import TrialOwner
from tests.service.conftest import TINY
from workers._files import SHARED_FILE, STATUS_FILE
from workers.spec import load_spec, suite_document

Api = Any


class Jobs:
    """Per job: the state Ray reports and the message of a failed one."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.messages: dict[str, str] = {}
        self.submitted: list[str] = []
        self.entrypoints: dict[str, str] = {}
        self.address = "fake"

    def submit(self, entrypoint: str, job_id: str, **_: Any) -> None:
        self.submitted.append(job_id)
        self.entrypoints[job_id] = entrypoint
        self.states[job_id] = "RUNNING"

    def status(self, job_id: str) -> str | None:
        return self.states.get(job_id)

    def info(self, job_id: str) -> Any:
        class Info:
            message = self.messages.get(job_id, "")

        return Info()

    def stop(self, job_id: str) -> bool:
        self.states[job_id] = "STOPPED"
        return True

    def logs(self, job_id: str) -> str:
        return ""

    def sweep_of(self, job_id: str) -> str:
        return job_id.split("-")[1]

    def started(self) -> list[str]:
        return [self.sweep_of(j) for j in self.submitted]


def _manager(api: Api) -> Any:
    return api.server.server.config.app.state.dab.manager


def _tiny(name: str, **changes: Any) -> dict[str, Any]:
    spec = yaml.safe_load(TINY)
    spec["name"] = name
    spec.update(changes)
    return spec  # type: ignore[no-any-return]


def _suite(*members: dict[str, Any], name: str = "trio") -> dict[str, Any]:
    return {
        "name": name,
        "description": "three tiny members",
        "members": [{"file": f"{m['name']}.yaml", "spec": m} for m in members],
    }


def _trio() -> dict[str, Any]:
    # a and b share the signum-dense seed-0 trial (same config); c shares nothing
    return _suite(
        _tiny("a", replicates=1),
        _tiny("b", grid={"model": ["signum-dense"]}, replicates=[0, 1]),
        _tiny("c", params={**yaml.safe_load(TINY)["params"], "seq_len": 4}, replicates=1),
    )


def _driver_ends(api: Api, jobs: Jobs, sweep_id: str, state: str, trials: dict[str, str]) -> None:
    """The driver of `sweep_id` reports `trials` (key -> state) and ends: ``finished`` (job
    SUCCEEDED) or ``waiting`` (exit code 3)."""
    manager = _manager(api)
    sweep = manager.reads.sweep(sweep_id, "plan")
    shared = json.loads(manager.location(sweep).child(SHARED_FILE).read_bytes())
    out = {}
    for key, *_ in sweep.plan:
        st = trials.get(key, "finished")
        entry: dict[str, Any] = {"state": st, "run_id": f"run-{sweep_id}-{key}" if st == "finished" else None}
        if st == "adopted":
            entry |= {
                "run_id": shared["adopt"][key]["run_id"],
                "adopted_from": shared["adopt"][key]["sweep_id"],
            }
        if st == "waiting":
            entry["adopted_from"] = shared["wait"][key]
        out[key] = entry
    counts = {"total": len(out)}
    for t in out.values():
        counts[t["state"]] = counts.get(t["state"], 0) + 1
    manager.location(sweep).child(STATUS_FILE).write_json({"state": state, "counts": counts, "trials": out})
    job = next(j for j in reversed(jobs.submitted) if jobs.sweep_of(j) == sweep_id)
    if state == "waiting":
        jobs.states[job], jobs.messages[job] = "FAILED", "Job entrypoint command failed with exit code 3."
    else:
        jobs.states[job] = "SUCCEEDED"


def _shared(api: Api, sweep_id: str) -> dict[str, Any]:
    manager = _manager(api)
    return json.loads(manager.location(manager.reads.sweep(sweep_id)).child(SHARED_FILE).read_bytes())  # type: ignore[no-any-return]


def test_a_suite_queues_beyond_the_limit_shares_a_trial_once_and_ends(serve: Any) -> None:
    api = serve(max_active_sweeps=2)
    manager = _manager(api)
    jobs = manager.jobs = Jobs()
    r = api.http.post("/v1/suites", json=_trio())
    assert r.status_code == 202, r.text
    suite = r.json()
    assert r.headers["location"] == f"/v1/suites/{suite['id']}"
    a, b, c = (m["sweep_id"] for m in suite["members"])
    assert [m["file"] for m in suite["members"]] == ["a.yaml", "b.yaml", "c.yaml"]
    assert (suite["trial_count"], suite["distinct_trials"]) == (6, 5)
    # two driver slots: a and b start, c waits queued
    assert jobs.started() == [a, b]
    assert [m["state"] for m in suite["members"]] == ["running", "running", "queued"]
    assert suite["state"] == "running"
    key_ab = next(
        k
        for k, *_ in manager.reads.sweep(b, "plan").plan
        if k in {p[0] for p in manager.reads.sweep(a, "plan").plan}
    )
    # a claimed the shared trial first: b is told to wait for it, and runs its own seed 1
    assert _shared(api, a) == {"adopt": {}, "wait": {}}
    assert _shared(api, b) == {"adopt": {}, "wait": {key_ab: a}}
    assert f"--tag dab.suite_id={suite['id']}" in jobs.entrypoints[f"dab-{a}-1"]

    _driver_ends(api, jobs, b, "waiting", {key_ab: "waiting"})
    manager.reconcile_all()  # b waits (its slot frees): c starts
    got = api.http.get(f"/v1/sweeps/{b}").json()
    assert got["state"] == "waiting" and a in got["message"]
    assert jobs.started() == [a, b, c]

    _driver_ends(api, jobs, a, "finished", {})
    manager.reconcile_all()  # a finished its trial: b is admitted again and adopts it
    assert jobs.started() == [a, b, c, b]
    assert _shared(api, b) == {"adopt": {key_ab: {"run_id": f"run-{a}-{key_ab}", "sweep_id": a}}, "wait": {}}
    got = api.http.get(f"/v1/sweeps/{b}").json()
    assert got["state"] == "running" and got["job_attempts"] == 2

    _driver_ends(api, jobs, b, "finished", {key_ab: "adopted"})
    _driver_ends(api, jobs, c, "finished", {})
    manager.reconcile_all()
    # a preview of b again: every trial is done in this service, nothing would run
    pre = api.http.post("/v1/sweeps/preview", json=_trio()["members"][1]["spec"]).json()["total"]
    assert (pre["distinct_trials"], pre["already_finished"], pre["to_run"]) == (2, 2, 0)
    suite = api.http.get(f"/v1/suites/{suite['id']}").json()
    assert suite["state"] == "finished" and suite["progress"] == 1.0
    assert suite["counts"]["finished"] == 5 and suite["counts"]["adopted"] == 1
    trials = api.http.get(f"/v1/sweeps/{b}/trials").json()["data"]
    shared = next(t for t in trials if t["trial_key"] == key_ab)
    assert (shared["state"], shared["adopted_from"]) == ("adopted", a)
    # the owners: every trial once, each by the sweep that ran it
    with manager.sessions() as s:
        owners = {o.trial_key: (o.sweep_id, o.state) for o in s.query(TrialOwner)}
    assert len(owners) == 5 and owners[key_ab] == (a, "finished")
    assert {v[1] for v in owners.values()} == {"finished"}


def test_queued_sweeps_start_by_priority_then_submission_order(serve: Any) -> None:
    api = serve(max_active_sweeps=1)
    manager = _manager(api)
    ids = []
    for name, priority in (("p0-first", 0), ("p0-second", 0), ("p5", 5), ("p-1", -1)):
        r = api.http.post(
            "/v1/sweeps", params={"priority": priority}, json=_tiny(name, replicates=[len(ids)])
        )
        assert r.status_code == 202 and r.json()["state"] == "queued" and r.json()["priority"] == priority
        ids.append(r.json()["id"])
    jobs = manager.jobs = Jobs()  # Ray comes up: one slot
    order = []
    for _ in ids:
        manager.reconcile_all()
        [running] = [i for i in ids if api.http.get(f"/v1/sweeps/{i}").json()["state"] == "running"]
        order.append(running)
        _driver_ends(api, jobs, running, "finished", {})
        manager.reconcile_all()
    assert order == [ids[2], ids[0], ids[1], ids[3]]
    assert api.http.post("/v1/sweeps", params={"priority": 5000}, json=_tiny("x")).status_code == 422


def test_the_queue_limit_refuses_a_suite_whole(serve: Any) -> None:
    api = serve(max_queued_sweeps=2)  # no Ray: everything stays queued
    assert api.http.post("/v1/sweeps", json=_tiny("one")).status_code == 202
    r = api.http.post("/v1/suites", json=_trio())
    assert r.status_code == 429 and "DAB_MAX_QUEUED_SWEEPS" in r.json()["message"]
    assert api.http.get("/v1/suites").json()["count"] == 0
    assert api.http.get("/v1/sweeps").json()["count"] == 1  # nothing half-written


def test_cancel_a_suite_cancels_every_member(serve: Any) -> None:
    api = serve(max_active_sweeps=1)
    manager = _manager(api)
    jobs = manager.jobs = Jobs()
    suite = api.http.post("/v1/suites", json=_trio()).json()
    a = suite["members"][0]["sweep_id"]
    assert jobs.started() == [a]
    r = api.http.post(f"/v1/suites/{suite['id']}/cancel")
    assert r.status_code == 202
    states = [m["state"] for m in r.json()["members"]]
    assert states[1:] == ["cancelled", "cancelled"] and states[0] in ("cancelling", "cancelled")
    assert jobs.states[f"dab-{a}-1"] == "STOPPED"
    manager.reconcile_all()
    got = api.http.get(f"/v1/suites/{suite['id']}").json()
    assert got["state"] == "cancelled" and {m["state"] for m in got["members"]} == {"cancelled"}
    assert jobs.started() == [a]  # the queued ones never started
    with manager.sessions() as s:  # the claims are released: a later sweep runs those trials
        assert s.query(TrialOwner).filter(TrialOwner.state == "claimed").count() == 0
    r = api.http.post(f"/v1/suites/{suite['id']}/cancel")
    assert r.status_code == 409 and r.json()["field"] == "state"


def test_suite_idempotency_and_errors_name_the_member_field(serve: Any) -> None:
    api = serve()
    body = _trio()
    first = api.http.post("/v1/suites", json=body, headers={"Idempotency-Key": "k1"})
    again = api.http.post("/v1/suites", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    other = _trio()
    other["members"][2]["spec"]["replicates"] = 2
    r = api.http.post("/v1/suites", json=other, headers={"Idempotency-Key": "k1"})
    assert r.status_code == 409 and r.json()["suite_id"] == first.json()["id"]

    bad = _trio()
    bad["members"][1]["spec"]["grid"]["model"] = ["signum-dense", "nope"]
    r = api.http.post("/v1/suites", json=bad)
    assert r.status_code == 422 and r.json()["field"].startswith("members[1].spec.")
    assert "member 1 (b.yaml)" in r.json()["message"]
    r = api.http.post("/v1/suites", json={"name": "x", "members": [{"file": "a.yaml"}]})
    assert r.status_code == 422 and r.json()["field"] == "members[0]"
    r = api.http.post(
        "/v1/suites",
        content=b"name: paper\ninclude: [a.yaml]\n",
        headers={"Content-Type": "application/yaml"},
    )
    assert r.status_code == 422 and r.json()["field"] == "include" and "inline" in r.json()["message"]
    r = api.http.post("/v1/sweeps", json=_trio())  # a suite sent to the sweeps route
    assert r.status_code == 422 and "/v1/suites" in r.json()["message"]
    assert api.http.get("/v1/suites").json()["count"] == 1
    assert api.http.get("/v1/suites/nope").status_code == 404


def test_the_paper_suite_previews_650_distinct_trials(serve: Any) -> None:
    api = serve()
    body = suite_document(load_spec("configs/paper.yaml"))  # type: ignore[arg-type]
    r = api.http.post("/v1/suites/preview", json=body)
    assert r.status_code == 200, r.text
    total = r.json()["total"]
    assert (total["trials"], total["distinct_trials"], total["already_finished"], total["to_run"]) == (
        670,
        650,
        0,
        650,
    )
    assert [f["file"] for f in r.json()["files"]][:2] == ["table1_sorting.yaml", "fig3_pondering.yaml"]
    assert api.http.get("/v1/sweeps").json()["count"] == 0  # a preview creates nothing


@pytest.mark.parametrize("state", ["queued", "waiting"])
def test_cancelling_a_sweep_without_a_live_driver_ends_it_at_once(serve: Any, state: str) -> None:
    api = serve(max_active_sweeps=2)
    manager = _manager(api)
    jobs = manager.jobs = Jobs()
    suite = api.http.post("/v1/suites", json=_trio()).json()
    a, b, c = (m["sweep_id"] for m in suite["members"])
    target = c
    if state == "waiting":
        key = next(iter(_shared(api, b)["wait"]))
        _driver_ends(api, jobs, b, "waiting", {key: "waiting"})
        manager.reconcile_all()
        target = b
    assert api.http.get(f"/v1/sweeps/{target}").json()["state"] == state
    r = api.http.post(f"/v1/sweeps/{target}/cancel")
    assert r.status_code == 202 and r.json()["state"] == "cancelled"
    assert a in jobs.started()
