"""`workers.tracking.runs`: params and tags, and finding a sweep's experiment and runs again.

Real MLflow (SQLite stores under tmp_path); no Ray is started here.
"""

from __future__ import annotations

from pathlib import Path

from workers.tracking import (
    FINISHED,
    KILLED,
    MAX_PARAM_VALUE,
    TAG_ROLE,
    TAG_SWEEP_ID,
    TAG_TRIAL_KEY,
    SweepTracker,
    find_sweep_ids,
    flatten_params,
    make_client,
    truncate,
)


def test_flatten_params_dots_nested_keys_and_cuts_long_values() -> None:
    long = "x" * (MAX_PARAM_VALUE + 500)
    params, truncated = flatten_params(
        {
            "lr": 0.001,
            "hard_params": {"eps": 0.5, "deep": {"k": 3}},
            "hidden": [16, 16],
            "none": None,
            "note": long,
        }
    )
    assert params["lr"] == "0.001"
    assert params["hard_params.eps"] == "0.5"
    assert params["hard_params.deep.k"] == "3"
    assert params["hidden"] == "[16, 16]"
    assert params["none"] == "None"
    assert len(params["note"]) == MAX_PARAM_VALUE
    assert params["note"].endswith(f"[{MAX_PARAM_VALUE + 500} chars, sha256 {params['note'][-13:-1]}]")
    assert truncated == ["note"]
    assert flatten_params({"hard_params": {}})[0] == {"hard_params": "{}"}


def test_truncate_keeps_short_values_whole() -> None:
    assert truncate("abc", 10) == ("abc", False)
    cut, was_cut = truncate("a" * 100, 60)
    assert was_cut and len(cut) == 60 and cut.startswith("a" * 10)


def test_tracker_finds_its_experiment_and_parent_again(tracking_uri: str) -> None:
    first = SweepTracker(tracking_uri, "sweep-a")
    exp = first.ensure_experiment()
    parent = first.ensure_parent({"dab.spec_name": "a"}, run_name="a")
    client = first.client
    client.set_terminated(parent, KILLED)

    second = SweepTracker(tracking_uri, "sweep-a")  # a restarted driver
    assert second.ensure_experiment() == exp
    assert second.ensure_parent({"dab.spec_name": "a2"}, run_name="a") == parent
    run = client.get_run(parent)
    assert run.info.status == "RUNNING"
    assert run.data.tags["dab.spec_name"] == "a2"
    assert run.data.tags[TAG_ROLE] == "sweep" and run.data.tags[TAG_SWEEP_ID] == "sweep-a"
    assert client.get_experiment(exp).name == "dab/sweep-a"
    assert (
        client.get_experiment(exp).artifact_location
        == (Path(tracking_uri[10:]).parent / "artifacts" / "sweep-a").as_uri()
    )
    other = SweepTracker(tracking_uri, "sweep-b")
    assert other.ensure_experiment() != exp
    assert other.ensure_parent({}, run_name="b") != parent


def test_find_sweep_ids_derives_the_ids_the_tracker_made(tracking_uri: str) -> None:
    client = make_client(tracking_uri)
    assert find_sweep_ids(client, "sweep-f") == (None, None)  # nothing created yet

    tracker = SweepTracker(tracking_uri, "sweep-f")
    exp = tracker.ensure_experiment()
    assert find_sweep_ids(client, "sweep-f") == (exp, None)  # experiment, no parent run yet
    parent = tracker.ensure_parent({}, run_name="f")
    # Trial runs and another sweep's runs in the store are not the parent.
    client.create_run(exp, tags={TAG_SWEEP_ID: "sweep-f", TAG_ROLE: "trial", TAG_TRIAL_KEY: "k"})
    SweepTracker(tracking_uri, "sweep-g").ensure_parent({}, run_name="g")
    assert find_sweep_ids(client, "sweep-f") == (exp, parent)
    assert find_sweep_ids(client, "sweep-h") == (None, None)


def test_find_sweep_ids_is_one_experiment_lookup_and_one_search(tracking_uri: str) -> None:
    SweepTracker(tracking_uri, "sweep-c").ensure_parent({}, run_name="c")
    real = make_client(tracking_uri)
    calls: list[tuple[str, dict[str, object]]] = []

    class Counting:
        def __getattr__(self, name: str) -> object:
            method = getattr(real, name)

            def call(*args: object, **kwargs: object) -> object:
                calls.append((name, kwargs))
                return method(*args, **kwargs)

            return call

    exp, parent = find_sweep_ids(Counting(), "sweep-c")  # type: ignore[arg-type]
    assert exp is not None and parent is not None
    assert [name for name, _ in calls] == ["get_experiment_by_name", "search_runs"]
    assert calls[1][1]["max_results"] == 1


def test_child_runs_reports_last_step_and_prefers_the_finished_duplicate(tracking_uri: str) -> None:
    tracker = SweepTracker(tracking_uri, "sw")
    exp = tracker.ensure_experiment()
    client = tracker.client
    tags = {TAG_SWEEP_ID: "sw", TAG_ROLE: "trial"}
    killed = client.create_run(exp, tags={**tags, TAG_TRIAL_KEY: "k1"}).info.run_id
    client.log_metric(killed, "step", 30, step=30)
    client.set_terminated(killed, KILLED)
    finished = client.create_run(exp, tags={**tags, TAG_TRIAL_KEY: "k1"}).info.run_id
    client.log_metric(finished, "step", 10, step=10)
    client.log_metric(finished, "step", 20, step=20)
    client.set_terminated(finished, FINISHED)
    running = client.create_run(exp, tags={**tags, TAG_TRIAL_KEY: "k2"}).info.run_id
    client.create_run(exp, tags={TAG_SWEEP_ID: "other", TAG_ROLE: "trial", TAG_TRIAL_KEY: "k3"})

    runs = tracker.child_runs()
    assert set(runs) == {"k1", "k2"}
    assert (runs["k1"].run_id, runs["k1"].status, runs["k1"].last_step) == (finished, FINISHED, 20.0)
    assert runs["k1"].duplicates == [killed]
    assert (runs["k2"].run_id, runs["k2"].status, runs["k2"].last_step) == (running, "RUNNING", None)

    assert tracker.end_interrupted(runs) == [running]
    assert client.get_run(running).info.status == KILLED
    assert client.get_run(finished).info.status == FINISHED
    assert runs["k2"].status == KILLED
