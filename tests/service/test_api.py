"""The REST API over real HTTP, on SQLite and on PostgreSQL (no Ray here: sweeps stay queued).

Bad input of every kind is a 4xx with a JSON body that names the field."""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TINY = (ROOT / "tests" / "e2e" / "tiny.yaml").read_text()
TINY_DATA = yaml.safe_load(TINY)
Api = Any  # tests/service/conftest.py: Api


def _spec(**changes: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(TINY_DATA))
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    return data


def test_submit_get_list_and_filter(api: Api) -> None:
    r = api.submit()
    assert r.status_code == 202, r.text
    sweep = r.json()
    assert sweep["state"] == "queued" and sweep["trial_count"] == 4 and sweep["cell_count"] == 2
    assert r.headers["location"] == f"/v1/sweeps/{sweep['id']}"
    got = api.http.get(f"/v1/sweeps/{sweep['id']}").json()
    assert got["spec"]["params"]["seq_len"] == 3 and got["progress"] == 0.0
    assert got["links"]["results"].endswith(f"/v1/sweeps/{sweep['id']}/results")
    assert "mlflow" in got["links"]["mlflow_ui_command"] and got["tracking_uri"].startswith("sqlite:///")
    second = api.submit(json.dumps(_spec(name="other")), "application/json").json()
    page = api.http.get("/v1/sweeps", params={"limit": 1}).json()
    assert page["count"] == 2 and len(page["data"]) == 1 and page["data"][0]["id"] == second["id"]
    page2 = api.http.get("/v1/sweeps", params={"limit": 1, "offset": 1}).json()
    assert page2["data"][0]["id"] == sweep["id"]
    assert api.http.get("/v1/sweeps", params={"state": "finished"}).json() == {"data": [], "count": 0}
    assert api.http.get("/v1/sweeps", params={"state": "queued"}).json()["count"] == 2
    trials = api.http.get(f"/v1/sweeps/{sweep['id']}/trials").json()
    assert trials["count"] == 4 and {t["state"] for t in trials["data"]} == {"pending"}
    assert {t["seed"] for t in trials["data"]} == {0, 1} and all(t["steps"] == 30 for t in trials["data"])


def test_idempotency_key(api: Api) -> None:
    first = api.submit(**{"Idempotency-Key": "k-1"})
    assert first.status_code == 202
    # the same spec as JSON is the same body: the same sweep comes back
    again = api.submit(json.dumps(TINY_DATA), "application/json", **{"Idempotency-Key": "k-1"})
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers.get("idempotent-replayed") == "true"
    other = api.submit(json.dumps(_spec(replicates=3)), "application/json", **{"Idempotency-Key": "k-1"})
    assert other.status_code == 409
    assert other.json()["field"] == "Idempotency-Key" and first.json()["id"] in other.json()["message"]
    assert api.http.get("/v1/sweeps").json()["count"] == 1


@pytest.mark.parametrize(
    ("body", "content_type", "field", "words"),
    [
        ("name: x\n  experiment: [sorting\n", "application/yaml", None, "invalid YAML"),
        ('{"name": "x", "experiment": ', "application/json", None, "invalid JSON"),
        (json.dumps(_spec(colour="red")), "application/json", "colour", "unknown key 'colour'"),
        (json.dumps(_spec(replicates="two")), "application/json", "replicates", "expected a count"),
        (json.dumps(_spec(replicates=-2)), "application/json", "replicates", "got -2"),
        (
            json.dumps(_spec(params={**TINY_DATA["params"], "steps": "30"})),
            "application/json",
            "params.steps",
            "int",
        ),
        (
            json.dumps(_spec(params={**TINY_DATA["params"], "hard": "rm_rf"})),
            "application/json",
            "params.hard",
            "unknown hard function 'rm_rf'",
        ),
        (
            json.dumps(_spec(params={**TINY_DATA["params"], "compile": "always"})),
            "application/json",
            "params.compile",
            "unknown compile 'always'; known: auto, off, default, reduce-overhead",
        ),
        (
            json.dumps(_spec(execution={"seeds": "fused"})),
            "application/json",
            "execution.seeds",
            "unknown seeds 'fused'; known: separate, stacked",
        ),
        (
            json.dumps(
                _spec(
                    params={**TINY_DATA["params"], "estimator": "perturbed"}, execution={"seeds": "stacked"}
                )
            ),
            "application/json",
            "execution.seeds",
            "use execution.seeds: separate",
        ),
        (json.dumps(_spec(experiment="os.system")), "application/json", "experiment", "experiment"),
        (json.dumps(_spec(experiment="nope")), "application/json", "experiment", "unknown experiment family"),
        ("[1, 2, 3]", "application/json", None, "mapping"),
        ("", "application/yaml", None, "empty"),
        *[
            (
                json.dumps(
                    _spec(
                        grid=None,
                        paper=None,
                        params={**TINY_DATA["params"], "model": "signum-dense"},
                        **search,
                    )
                ),
                "application/json",
                field,
                words,
            )
            for search, field, words in [
                (
                    {"search": {"algorithm": "tpe"}, "space": {"lr": {"uniform": [0.1, 1]}}},
                    "search.num_samples",
                    "num_samples",
                ),
                (
                    {
                        "search": {"algorithm": "sobol", "num_samples": 2},
                        "space": {"lr": {"uniform": [0.1, 1]}},
                    },
                    "search.algorithm",
                    "tpe",
                ),
                (
                    {"search": {"algorithm": "random", "num_samples": 2}, "space": {"lr": {"beta": [1, 2]}}},
                    "space.lr.beta",
                    "unknown distribution",
                ),
                (
                    {
                        "search": {"algorithm": "random", "num_samples": 2},
                        "space": {"lr": {"uniform": [1, 0.5]}},
                    },
                    "space.lr.uniform[1]",
                    "empty range",
                ),
                (
                    {"search": {"algorithm": "random", "num_samples": 2}, "space": {"lr": "0.1"}},
                    "space.lr",
                    "one of",
                ),
                (
                    {
                        "search": {"algorithm": "random", "num_samples": 2},
                        "space": {"lr": {"uniform": [0.1, 1]}},
                        "scheduler": {"type": "asha", "grace_steps": 0},
                    },
                    "scheduler.grace_steps",
                    "greater than or equal to 1",
                ),
                (
                    {
                        "search": {"algorithm": "random", "num_samples": 2},
                        "space": {"colour": {"int": [1, 2]}},
                    },
                    "space.colour.int[0]",
                    "unknown field 'colour'",
                ),
                ({"space": {"lr": {"uniform": [0.1, 1]}}}, "space", "sampled by a search"),
            ]
        ],
    ],
)
def test_bad_specs_are_422_naming_the_problem(
    api: Api, body: str, content_type: str, field: str | None, words: str
) -> None:
    r = api.submit(body, content_type)
    assert r.status_code == 422, r.text
    err = r.json()
    assert err["error"] == "invalid_spec"
    assert words in err["message"], err
    if field is not None:
        assert err["field"] == field, err


def test_other_bad_requests(api: Api) -> None:
    huge = "name: big\n" + "# padding\n" * 40_000
    r = api.submit(huge)
    assert r.status_code == 413 and "DAB_MAX_BODY_BYTES" in r.json()["message"]
    r = api.http.post("/v1/sweeps", content=b"x" * 10, headers={"Content-Type": "application/xml"})
    assert r.status_code == 415 and r.json()["field"] == "Content-Type"
    r = api.http.get("/v1/sweeps", params={"state": "sleeping"})
    assert r.status_code == 422 and r.json()["field"] == "state.0"
    r = api.http.get("/v1/sweeps", params={"limit": -1})
    assert r.status_code == 422 and r.json()["field"] == "limit"
    r = api.http.get("/v1/sweeps/0123456789abcdef")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    sid = api.submit().json()["id"]
    r = api.http.get(f"/v1/sweeps/{sid}/results", params={"agg": "median"})
    assert r.status_code == 422 and r.json()["field"] == "agg"
    r = api.http.get(f"/v1/sweeps/{sid}/results", params={"reference": "model=nope"})
    assert r.status_code == 422 and r.json()["field"] == "reference"
    r = api.submit(**{"Idempotency-Key": "x" * 300})
    assert r.status_code == 422 and "Idempotency-Key" in r.json()["field"]


def test_limits_from_settings(serve: Any) -> None:
    api = serve(max_trials_per_sweep=3, max_queued_sweeps=1)
    r = api.submit()  # 4 trials
    assert r.status_code == 422 and "DAB_MAX_TRIALS_PER_SWEEP" in r.json()["message"]
    assert r.json()["field"] == "grid"
    assert api.submit(json.dumps(_spec(replicates=1)), "application/json").status_code == 202
    r = api.submit(json.dumps(_spec(replicates=[5])), "application/json")  # the queue is full
    assert r.status_code == 429 and "DAB_MAX_QUEUED_SWEEPS" in r.json()["message"]


def test_bearer_token(serve: Any) -> None:
    api = serve(api_token="s3cret")
    assert api.submit().status_code == 202
    anon = api.http.get("/v1/sweeps", headers={"Authorization": ""})
    assert anon.status_code == 401 and anon.headers["www-authenticate"] == "Bearer"
    assert anon.json()["field"] == "Authorization"
    wrong = api.http.get("/v1/sweeps", headers={"Authorization": "Bearer s3cre7"})
    assert wrong.status_code == 403 and wrong.json()["error"] == "forbidden"
    basic = api.http.get("/v1/sweeps", headers={"Authorization": "Basic czNjcmV0"})
    assert basic.status_code == 401
    assert api.http.get("/healthz", headers={"Authorization": ""}).status_code == 200


def test_data_roots_only_under_the_data_dirs(api: Api, tmp_path: Path) -> None:
    allowed = tmp_path / "data"
    (allowed / "cifar").mkdir(parents=True)
    base = {
        "name": "cls",
        "experiment": "classification",
        "params": {"dataset": "fake", "steps": 2, "eval_every": 1, "download": False},
    }
    for root, field in (
        (str(allowed / ".." / ".." / "etc"), "params.data_root"),
        ("/etc", "params.data_root"),
        ("relative/dir", "params.data_root"),
    ):
        r = api.submit(
            json.dumps({**base, "params": {**base["params"], "data_root": root}}), "application/json"
        )
        assert r.status_code == 422, r.text
        assert r.json()["field"] == field and "data_root" in r.json()["message"]
    grid = {**base, "grid": {"data_root": [str(allowed / "cifar"), "/tmp/../root"]}}
    r = api.submit(json.dumps(grid), "application/json")
    assert r.status_code == 422 and r.json()["field"] == "grid.data_root[1]"
    ok = {**base, "params": {**base["params"], "data_root": str(allowed / "cifar")}}
    assert api.submit(json.dumps(ok), "application/json").status_code == 202


def test_preview(api: Api) -> None:
    r = api.http.post(
        "/v1/sweeps/preview", content=TINY.encode(), headers={"Content-Type": "application/yaml"}
    )
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["total"]["trials"] == 4 and p["total"]["cells"] == 2
    cells = p["files"][0]["cell_list"]
    assert [c["cell_key"] for c in cells] == ["model=signum-dense", "model=elu-dense"]
    assert cells[0]["paper"][0]["value"] == 0.993
    assert p["limits"]["max_trials_per_sweep"] == api.settings.max_trials_per_sweep
    assert api.http.get("/v1/sweeps").json()["count"] == 0  # nothing stored


def test_cancel_a_queued_sweep(api: Api) -> None:
    sid = api.submit().json()["id"]
    assert api.http.get(f"/v1/sweeps/{sid}").json()["state"] == "queued"
    r = api.http.post(f"/v1/sweeps/{sid}/cancel")
    assert r.status_code == 202 and r.json()["state"] == "cancelled"
    assert api.http.get(f"/v1/sweeps/{sid}").json()["state"] == "cancelled"
    again = api.http.post(f"/v1/sweeps/{sid}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["message"]


def test_the_serving_app_keeps_its_startup_heap_out_of_the_collector(serve: Any) -> None:
    api = serve()
    assert gc.get_freeze_count() > 10_000  # MLflow, SQLAlchemy, FastAPI: frozen at startup
    api.server.stop()
    assert gc.get_freeze_count() == 0  # and given back at shutdown


def test_health_metrics_and_docs(api: Api) -> None:
    assert api.http.get("/healthz").json()["status"] == "ok"
    api.submit()
    text = api.http.get("/metrics").text
    assert 'dab_sweeps{state="queued"} 1.0' in text
    assert "dab_http_requests_total" in text and "dab_http_request_seconds_bucket" in text
    schema = api.http.get("/openapi.json").json()
    assert "/v1/sweeps/{sweep_id}/results" in schema["paths"]
    assert "SweepSpec" in schema["components"]["schemas"]
    assert api.http.get("/docs").status_code == 200


def test_sweeps_survive_a_restart(serve: Any) -> None:
    api = serve()
    sid = api.submit(**{"Idempotency-Key": "keep"}).json()["id"]
    api.server.stop()
    again = serve()
    assert again.http.get(f"/v1/sweeps/{sid}").json()["state"] == "queued"
    assert again.submit(**{"Idempotency-Key": "keep"}).json()["id"] == sid


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("[" * 100_000 + "]" * 100_000, "application/json"),
        ('{"name": ' + "[" * 100_000 + "]" * 100_000 + "}", "application/json"),
        ("name: " + "[" * 100_000 + "]" * 100_000, "application/yaml"),
        ("name: x\nparams:\n  " + "- " * 100_000 + "1", "application/yaml"),
    ],
    ids=["json-list", "json-in-object", "yaml-flow", "yaml-block"],
)
@pytest.mark.parametrize("route", ["/v1/sweeps", "/v1/sweeps/preview"])
def test_a_body_nested_100000_deep_is_a_4xx_naming_the_limit(
    api: Api, body: str, content_type: str, route: str
) -> None:
    r = api.http.post(route, content=body.encode(), headers={"Content-Type": content_type})
    assert 400 <= r.status_code < 500, r.text[:300]
    err = r.json()
    assert "deep" in err["message"] or "nest" in err["message"] or "DAB_MAX_BODY_BYTES" in err["message"], err
    assert api.http.get("/v1/sweeps").json()["count"] == 0  # nothing stored


def test_an_absurd_budget_is_a_422_naming_the_field_and_the_bound(api: Api) -> None:
    spec = _spec(params={**TINY_DATA["params"], "steps": 10**15})
    r = api.submit(json.dumps(spec), "application/json")
    assert r.status_code == 422, r.text
    err = r.json()
    assert err["field"] == "params.steps"
    assert any(ch.isdigit() for ch in err["message"]) and "less than or equal" in err["message"], err
    assert api.http.get("/v1/sweeps").json()["count"] == 0
