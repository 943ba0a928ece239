"""A search end to end over REST on the embedded default (real Ray, MLflow on SQLite): its
budget in the preview, its configurations in the plan, trials and results, the stopped ones
left out by default, and the report's Search section with a figure per searched field."""

from __future__ import annotations

import json
import statistics
from typing import Any

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

METRIC = "test_per_position"


def search_spec() -> dict[str, Any]:
    return {
        "name": "tiny-search",
        "experiment": "sorting",
        "params": {
            "model": "signum-dense",
            "seq_len": 3,
            "steps": 40,
            "eval_every": 10,
            "batch_size": 32,
            "train_size": 0,
            "test_size": 100,
            "approximator_hidden": [8],
            "num_threads": 1,
        },
        "search": {"algorithm": "random", "num_samples": 5, "seed": 3},
        "space": {"lr": {"loguniform": [1e-6, 3e-2]}, "dense_hidden": {"choice": [[8], [8, 8]]}},
        "scheduler": {"type": "asha", "grace_steps": 10, "reduction_factor": 2},
        "replicates": 2,
        "metric": METRIC,
        "resources": {"cpu": 1},
        "limits": {"max_concurrent": 2, "max_failures": 1},
        "duration_hours": 0.01,
    }


def test_a_search_over_rest(stack: Any, wait_for: Any) -> None:
    _, settings, http = stack
    bad = {**search_spec(), "space": {"lr": {"loguniform": [0, 1]}}}
    r = http.post("/v1/sweeps", json=bad)
    assert r.status_code == 422 and r.json()["field"] == "space.lr.loguniform[0]", r.text
    r = http.post("/v1/sweeps", json={**search_spec(), "space": {"bogus": {"int": [1, 3]}}})
    assert r.status_code == 422 and r.json()["field"].startswith("space.bogus"), r.text

    preview = http.post("/v1/sweeps/preview", json=search_spec()).json()
    f = preview["files"][0]
    assert f["search"]["max_configurations"] == 5 and f["search"]["max_trials"] == 10
    assert preview["total"]["trials"] == 10 and preview["total"]["to_run"] == 10
    assert preview["total"]["cpu_hours"] == pytest.approx(10 * 1 * 0.01)

    r = http.post("/v1/sweeps", json=search_spec())
    assert r.status_code == 202, r.text
    sid = r.json()["id"]
    assert r.json()["trial_count"] == 10 and r.json()["cell_count"] == 5
    done = wait_for(http, sid, lambda s: s["state"] in ("finished", "failed", "cancelled"))
    assert done["state"] == "finished", done
    assert done["progress"] == 1.0 and done["counts"]["finished"] == 10

    client = MlflowClient(settings.tracking_uri)
    children = [
        r
        for r in client.search_runs([done["mlflow_experiment_id"]], max_results=1000)
        if r.data.tags.get("dab.role") == "trial"
    ]
    assert len(children) == 10 and {r.info.status for r in children} == {"FINISHED"}
    stopped = {r.data.tags["dab.cell_key"] for r in children if r.data.tags.get("dab.stopped_early")}
    assert stopped and len(stopped) < 5  # ASHA stopped some configurations, kept some

    trials = http.get(f"/v1/sweeps/{sid}/trials", params={"limit": 100}).json()
    assert trials["count"] == 10
    assert sorted(t["index"] for t in trials["data"]) == list(range(10))
    assert {t["cell_key"] for t in trials["data"] if t["stopped_at"] is not None} == stopped

    res = http.get(f"/v1/sweeps/{sid}/results").json()
    assert res["stopped_cells"] == len(stopped)
    assert {c["cell_key"] for c in res["cells"]} == {r.data.tags["dab.cell_key"] for r in children} - stopped
    best = res["metric_info"][METRIC]["agg"] == "best"  # each run's maximum, as the family declares
    for cell in res["cells"]:
        values = [
            max(m.value for m in client.get_metric_history(r.info.run_id, METRIC))
            if best
            else r.data.metrics[METRIC]
            for r in children
            if r.data.tags["dab.cell_key"] == cell["cell_key"]
        ]
        m = cell["metrics"][METRIC]
        assert m["n"] == 2 and m["mean"] == pytest.approx(statistics.fmean(values))
        assert (
            json.loads(
                next(
                    r.data.tags["dab.cell"]
                    for r in children
                    if r.data.tags["dab.cell_key"] == cell["cell_key"]
                )
            )
            == cell["cell"]
        )
    summary = res["search"]
    assert summary["configurations"] == 5 and summary["stopped"] == len(stopped)
    assert summary["best"][0]["mean"] == max(c["metrics"][METRIC]["mean"] for c in res["cells"])
    every = http.get(f"/v1/sweeps/{sid}/results", params={"include_stopped": "true"}).json()
    assert len(every["cells"]) == 5 and every["stopped_cells"] == 0
    md = http.get(f"/v1/sweeps/{sid}/results", params={"format": "markdown"}).text
    assert f"{len(stopped)} configuration(s) stopped early" in md

    report = http.get(f"/v1/sweeps/{sid}/report").json()
    names = {f["name"] for f in report["figures"]}
    assert {"search_lr.png", "search_dense_hidden.png"} <= names
    assert "## Search" in report["markdown"]
    png = http.get(f"/v1/sweeps/{sid}/report/figures/search_lr.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
