"""`workers.tracking.runs`: params and tags, and finding a sweep's experiment and runs again.

Real MLflow (SQLite stores under tmp_path); no Ray is started here.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import ViewType

import workers.tracking.runs as runs_module
from workers.spec.schema import _NAME_PATTERN
from workers.tracking import (
    EXPERIMENT_KIND_ML,
    FINISHED,
    KILLED,
    MAX_EXPERIMENT_NAME,
    MAX_PARAM_VALUE,
    MLFLOW_EXPERIMENT_KIND,
    MLFLOW_NOTE,
    TAG_ROLE,
    TAG_SWEEP_ID,
    TAG_TRIAL_KEY,
    SweepTracker,
    experiment_name,
    find_experiment,
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
    first = SweepTracker(tracking_uri, "sweep-a", name="spec-a")
    exp = first.ensure_experiment()
    parent = first.ensure_parent({"dab.spec_name": "a"}, run_name="a")
    client = first.client
    client.set_terminated(parent, KILLED)

    second = SweepTracker(tracking_uri, "sweep-a", name="spec-a")  # a restarted driver
    assert second.ensure_experiment() == exp
    assert second.ensure_parent({"dab.spec_name": "a2"}, run_name="a") == parent
    run = client.get_run(parent)
    assert run.info.status == "RUNNING"
    assert run.data.tags["dab.spec_name"] == "a2"
    assert run.data.tags[TAG_ROLE] == "sweep" and run.data.tags[TAG_SWEEP_ID] == "sweep-a"
    assert client.get_experiment(exp).name == "dab/spec-a (sweep-a)"
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


def test_find_sweep_ids_is_one_experiment_search_and_one_run_search(tracking_uri: str) -> None:
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
    assert [name for name, _ in calls] == ["search_experiments", "search_runs"]
    assert calls[0][1]["max_results"] == 1 and calls[1][1]["max_results"] == 1


def test_experiment_name_is_the_spec_name_with_the_sweep_id(tracking_uri: str) -> None:
    assert (
        experiment_name("0123456789abcdef", "dab-ste.table1_v2") == "dab/dab-ste.table1_v2 (0123456789abcdef)"
    )
    assert experiment_name("sw") == experiment_name("sw", "") == experiment_name("sw", " \n") == "dab/sw"
    assert experiment_name("sw", "two\nlines\t and  tabs") == "dab/two lines and tabs (sw)"
    long = experiment_name("0123456789abcdef", "x" * 1000)  # cut to fit; the id stays whole
    assert len(long) == MAX_EXPERIMENT_NAME and long.endswith("x (0123456789abcdef)")
    # The longest spec name, of every character a spec name may have, is a name MLflow takes.
    spec_name = ("Az9_.-" * 20)[:100]
    assert re.match(_NAME_PATTERN, spec_name)
    tracker = SweepTracker(tracking_uri, "0123456789abcdef", name=spec_name)
    exp = tracker.client.get_experiment(tracker.ensure_experiment())
    assert exp.name == f"dab/{spec_name} (0123456789abcdef)"


def test_experiment_is_tagged_and_found_by_its_tag_not_its_name(tracking_uri: str) -> None:
    tracker = SweepTracker(tracking_uri, "sweep-t", name="spec-t", description="Table 1, rerun")
    exp = tracker.ensure_experiment()
    client = tracker.client
    tags = client.get_experiment(exp).tags
    assert tags[TAG_SWEEP_ID] == "sweep-t"
    assert tags[MLFLOW_EXPERIMENT_KIND] == EXPERIMENT_KIND_ML == "custom_model_development"
    assert tags[MLFLOW_NOTE] == "Table 1, rerun"
    assert MLFLOW_NOTE not in client.get_experiment(SweepTracker(tracking_uri, "x").ensure_experiment()).tags

    client.rename_experiment(exp, "renamed by someone in the UI")
    assert find_sweep_ids(client, "sweep-t") == (exp, None)
    # A driver whose spec has another name still continues the sweep's experiment.
    assert SweepTracker(tracking_uri, "sweep-t", name="other-name").ensure_experiment() == exp
    assert [
        e.experiment_id for e in client.search_experiments(filter_string="tags.`dab.sweep_id` = 'sweep-t'")
    ] == [exp]
    assert find_sweep_ids(client, "sweep-u") == (None, None)  # the tag's value, not any tag

    client.delete_experiment(exp)  # deleted in the UI: found, and restored by the next driver
    assert find_sweep_ids(client, "sweep-t") == (exp, None)
    assert SweepTracker(tracking_uri, "sweep-t", name="spec-t").ensure_experiment() == exp
    assert client.get_experiment(exp).lifecycle_stage == "active"


@pytest.mark.parametrize("old_tags", [{}, {TAG_SWEEP_ID: "sweep-old"}], ids=["untagged", "id-tagged"])
def test_legacy_named_experiment_is_found_not_duplicated_and_gets_the_kind_tag(
    tracking_uri: str, old_tags: dict[str, str]
) -> None:
    """Experiments of earlier versions: named ``dab/<id>``, with the id tag or (older) without."""
    client = make_client(tracking_uri)
    old = client.create_experiment("dab/sweep-old", tags={**old_tags, MLFLOW_NOTE: "edited in the UI"})
    parent = client.create_run(old, tags={TAG_ROLE: "sweep", TAG_SWEEP_ID: "sweep-old"}).info.run_id
    assert find_sweep_ids(client, "sweep-old") == (old, parent)
    before = {e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)}

    tracker = SweepTracker(tracking_uri, "sweep-old", name="spec-old", description="the spec's")
    assert tracker.ensure_experiment() == old
    assert tracker.ensure_parent({}, run_name="spec-old") == parent
    assert {e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)} == before  # none new
    exp = client.get_experiment(old)
    assert exp.name == "dab/sweep-old"  # left under its name: old drivers and services look it up so
    assert exp.tags[MLFLOW_EXPERIMENT_KIND] == EXPERIMENT_KIND_ML
    assert exp.tags[TAG_SWEEP_ID] == "sweep-old"
    assert exp.tags[MLFLOW_NOTE] == "edited in the UI"  # a tag it had is left as it is
    assert find_sweep_ids(client, "sweep-old") == (old, parent)


def test_concurrent_ensure_experiment_creates_one_experiment(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two drivers starting at once both find nothing, both create: one experiment results."""
    found: list[Any] = []
    both_looked = threading.Barrier(2, timeout=30)
    real_find = runs_module.find_experiment

    def find_then_wait(client: Any, sweep_id: str) -> Any:
        experiment = real_find(client, sweep_id)
        found.append(experiment)
        both_looked.wait()  # neither creates before both have looked
        return experiment

    monkeypatch.setattr(runs_module, "find_experiment", find_then_wait)
    trackers = [SweepTracker(tracking_uri, "sweep-r", name="spec-r", description="d") for _ in range(2)]
    ids: list[str] = []
    errors: list[BaseException] = []

    def start(tracker: SweepTracker) -> None:
        try:
            ids.append(tracker.ensure_experiment())
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start, args=(t,)) for t in trackers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and found == [None, None]  # both went on to create
    assert len(ids) == 2 and ids[0] == ids[1]
    client = make_client(tracking_uri)
    tagged = client.search_experiments(filter_string="tags.`dab.sweep_id` = 'sweep-r'")
    assert [e.experiment_id for e in tagged] == [ids[0]]
    assert tagged[0].name == "dab/spec-r (sweep-r)"
    assert tagged[0].tags[MLFLOW_EXPERIMENT_KIND] == EXPERIMENT_KIND_ML


def test_a_store_with_two_tagged_experiments_is_read_as_the_first_created(tracking_uri: str) -> None:
    """Should a sweep have two (an earlier version's driver making ``dab/<id>`` while this one
    made its own), the driver and the service agree on the first created, as for parent runs."""
    client = make_client(tracking_uri)
    first = client.create_experiment("dab/sweep-2", tags={TAG_SWEEP_ID: "sweep-2"})
    client.create_experiment("dab/spec (sweep-2)", tags={TAG_SWEEP_ID: "sweep-2"})
    found = find_experiment(client, "sweep-2")
    assert found is not None and found.experiment_id == first
    assert find_sweep_ids(client, "sweep-2") == (first, None)
    assert SweepTracker(tracking_uri, "sweep-2", name="spec").ensure_experiment() == first


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


def test_a_name_taken_by_another_sweeps_experiment_is_refused(tracking_uri: str) -> None:
    """The name's owner is checked by tag: adopting another sweep's experiment would mix runs."""
    client = make_client(tracking_uri)
    client.create_experiment("dab/spec (sweep-n)", tags={TAG_SWEEP_ID: "another"})
    with pytest.raises(ValueError, match="belongs to sweep 'another'"):
        SweepTracker(tracking_uri, "sweep-n", name="spec").ensure_experiment()
    untagged = client.create_experiment("dab/spec (sweep-m)")  # made by hand: taken over
    assert SweepTracker(tracking_uri, "sweep-m", name="spec").ensure_experiment() == untagged
    assert client.get_experiment(untagged).tags[TAG_SWEEP_ID] == "sweep-m"
