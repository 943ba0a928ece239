"""MLflow runs of a sweep: names, tags and params, and finding or creating them exactly once.

Layout in MLflow: one experiment per sweep, named ``dab/<spec name> (<sweep id>)`` so a person
browsing the UI recognises it, and tagged ``dab.sweep_id`` (how it is found: the name is for
people and may differ between versions; earlier ones named it ``dab/<sweep id>``) and
``mlflow.experimentKind`` (so MLflow 3's UI opens it on its runs table). In it one parent run for
the sweep (tag ``dab.role=sweep``) and one child run per trial (``dab.role=trial``,
``mlflow.parentRunId``, ``dab.trial_key``). Runs are found again by those tags, so a restarted
or resubmitted driver continues the runs it finds instead of making new ones, and nobody needs
to keep the experiment or parent run id anywhere but MLflow (and the service's database):
`find_sweep_ids` derives both from the sweep id.

`SweepTracker` is the driver's synchronous start-up work (experiment, parent run, the existing
child runs with their status and the last step they hold); `trial_run_spec` says what a child
run is created with.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workers.tracking.store import default_artifact_root, make_client

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger("workers.tracking")

# Tags. ``dab.*`` are ours; the ``mlflow.*`` ones are MLflow's own (the UI reads them).
TAG_SWEEP_ID = "dab.sweep_id"
TAG_ROLE = "dab.role"
TAG_TRIAL_KEY = "dab.trial_key"
TAG_TRIAL_INDEX = "dab.trial_index"
TAG_CELL = "dab.cell"
TAG_CELL_KEY = "dab.cell_key"
TAG_SEED = "dab.seed"
TAG_REPLICATE = "dab.replicate"
TAG_FAMILY = "dab.family"
TAG_VERSION = "dab.version"
TAG_GIT_COMMIT = "dab.git_commit"
TAG_SPEC_NAME = "dab.spec_name"
TAG_TRIAL_COUNT = "dab.trial_count"
TAG_SKIPPED_COUNT = "dab.skipped_count"
TAG_SKIPPED = "dab.skipped"
TAG_ATTEMPTS = "dab.attempts"
TAG_END_REASON = "dab.end_reason"
TAG_TRUNCATED_PARAMS = "dab.truncated_params"
#: A search configuration the scheduler stopped before its budget: its runs end FINISHED with
#: ``dab.stopped_early=true`` and the last step they reached.
TAG_STOPPED_EARLY = "dab.stopped_early"
TAG_STOPPED_AT = "dab.stopped_at_step"
#: A search's configuration number (proposal order) on each of its seeds' runs.
TAG_CONFIG_INDEX = "dab.config_index"
MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"
MLFLOW_RUN_NAME = "mlflow.runName"
MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"
# The description the UI shows for a run (mlflow.utils.mlflow_tags.MLFLOW_RUN_NOTE) and, read from
# an experiment's tags, in the experiment list's "Description" column (ExperimentListTable.tsx in
# mlflow/server/js/build/static/js, 3.17).
MLFLOW_NOTE = "mlflow.note.content"
# What MLflow 3's UI opens an experiment on. MLflow's Python package has no constant for it (the
# key appears only as a literal, in mlflow/demo/generators/traces.py, 3.17); the key and values
# are the UI's: mlflow/server/js/build/static/js/main.*.js reads the experiment tag
# "mlflow.experimentKind" and lists the kinds ("genai_development", "custom_model_development",
# ..., shown as "GenAI apps & agents" and "Machine learning"). Only "genai_development" opens on
# the traces page; any other kind opens on the runs table, and with no tag the UI guesses from
# the experiment's contents and may open on traces or ask the user which kind it is.
MLFLOW_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_ML = "custom_model_development"
ROLE_SWEEP = "sweep"
ROLE_TRIAL = "trial"

FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"
TERMINAL = frozenset({FINISHED, FAILED, KILLED})

# MLflow's limits (mlflow.utils.validation, 3.17): values past them are rejected.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_EXPERIMENT_TAG_VALUE = 20_000
# MLflow validates experiment names up to 500 characters, but its SQL schema's column is
# VARCHAR(256) (mlflow.store.tracking.dbmodels.models.SqlExperiment.name), which PostgreSQL and
# MySQL enforce: names are kept to 250.
MAX_EXPERIMENT_NAME = 250


def legacy_experiment_name(sweep_id: str) -> str:
    """The name earlier versions gave a sweep's experiment, still looked up so their sweeps are
    found (and not created twice); also the name of a sweep whose tracker has no spec name."""
    return f"dab/{sweep_id}"


def experiment_name(sweep_id: str, name: str | None = None) -> str:
    """The MLflow experiment name of a sweep: ``dab/<name> (<sweep id>)``, for people.

    MLflow allows any non-empty name (``_validate_experiment_name`` checks only the type and
    the length), and a spec's name is letters, digits, ``.``, ``_`` and ``-`` (the schema's
    ``_NAME_PATTERN``), so a spec name is used as it is. Any other `name` has its runs of
    whitespace and control characters folded to one space, so the UI shows it on one line. The
    name is cut, never the id, to fit `MAX_EXPERIMENT_NAME`: the id is what makes the name
    unique, and a name that is deterministic for the sweep is what makes creating it
    exactly-once (`SweepTracker.ensure_experiment`). No usable name: `legacy_experiment_name`.

    It is not how the experiment is found: `find_sweep_ids` looks for the ``dab.sweep_id`` tag.
    """
    legacy = legacy_experiment_name(sweep_id)
    label = " ".join("".join(c if c.isprintable() else " " for c in name or "").split())
    room = MAX_EXPERIMENT_NAME - len(f"dab/ ({sweep_id})")
    if not label or room < 1:
        return legacy
    return f"dab/{label[:room].rstrip()} ({sweep_id})"


# --------------------------------------------------------------------------------------------
# Params and tags


def clean_key(key: str) -> str:
    # MLflow keys: alphanumerics, _ - . space / ; anything else would be rejected.
    out = "".join(c if c.isalnum() or c in "_-. /" else "_" for c in key)
    if len(out) > MAX_KEY:
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        out = f"{out[: MAX_KEY - 10]}~{digest}"
    return out


def _scalar_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None or isinstance(value, int | float):
        return str(value)
    return json.dumps(value, sort_keys=True, default=str)


def truncate(value: str, limit: int) -> tuple[str, bool]:
    """`value` cut to `limit` characters with a marker naming the full value's hash."""
    if len(value) <= limit:
        return value, False
    digest = hashlib.sha256(value.encode()).hexdigest()[:12]
    marker = f"...[{len(value)} chars, sha256 {digest}]"
    return value[: limit - len(marker)] + marker, True


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> tuple[dict[str, str], list[str]]:
    """A nested config as MLflow params: dotted keys, JSON for lists, values cut to MLflow's limit.

    Returns:
        (params, truncated): the params, and the keys whose values were too long and were cut
        (the caller logs the whole config as an artifact then).
    """
    params: dict[str, str] = {}
    truncated: list[str] = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            sub, sub_truncated = flatten_params(value, prefix=f"{name}.")
            params.update(sub)
            truncated.extend(sub_truncated)
            continue
        text, cut = truncate(_scalar_text(value), MAX_PARAM_VALUE)
        clean = clean_key(name)
        params[clean] = text
        if cut:
            truncated.append(clean)
    return params, truncated


@functools.cache
def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("dab-sweeps")
    except Exception:  # not installed as a distribution: fall back on the library's own
        import dab_core

        return dab_core.__version__


_git_commit: str | None = None


def git_commit() -> str:
    """The commit of the code the driver runs: ``DAB_GIT_COMMIT`` (set in images), else git."""
    global _git_commit
    if _git_commit is None:
        commit = os.environ.get("DAB_GIT_COMMIT", "").strip()
        if not commit:
            try:
                commit = subprocess.run(
                    ["git", "rev-parse", "HEAD"],
                    cwd=Path(__file__).resolve().parent,
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=True,
                ).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                commit = ""
        _git_commit = commit or "unknown"
    return _git_commit


@dataclass(frozen=True)
class RunSpec:
    """What a child run is created with: its name, tags and params."""

    run_name: str
    tags: dict[str, str]
    params: dict[str, str]
    config: dict[str, Any]
    truncated: tuple[str, ...] = ()


def trial_run_spec(trial: Any, *, sweep_id: str, parent_run_id: str, family: str) -> RunSpec:
    """The run of one expanded trial (a `workers.spec.Trial`)."""
    params, truncated = flatten_params(trial.config)
    cell_json = json.dumps(trial.cell, sort_keys=True, default=str)
    tags = {
        MLFLOW_PARENT_RUN_ID: parent_run_id,
        TAG_SWEEP_ID: sweep_id,
        TAG_ROLE: ROLE_TRIAL,
        TAG_TRIAL_KEY: trial.trial_key,
        TAG_TRIAL_INDEX: str(trial.index),
        TAG_CELL: truncate(cell_json, MAX_TAG_VALUE)[0],
        TAG_CELL_KEY: truncate(str(trial.cell_key), MAX_TAG_VALUE)[0],
        TAG_SEED: str(trial.seed),
        TAG_REPLICATE: str(trial.replicate),
        TAG_FAMILY: family,
        TAG_VERSION: package_version(),
        TAG_GIT_COMMIT: git_commit(),
        MLFLOW_GIT_COMMIT: git_commit(),
    }
    if truncated:
        tags[TAG_TRUNCATED_PARAMS] = truncate(",".join(truncated), MAX_TAG_VALUE)[0]
    name = f"{trial.index:04d} {trial.cell_key} seed={trial.seed}"
    return RunSpec(
        run_name=truncate(name, 250)[0],
        tags=tags,
        params=params,
        config=dict(trial.config),
        truncated=tuple(truncated),
    )


# --------------------------------------------------------------------------------------------
# Start-up: experiment, parent run, existing child runs


def _parent_run(client: MlflowClient, experiment_id: str, sweep_id: str) -> Any | None:
    """The sweep's parent run in its experiment: the first started run tagged role=sweep.

    The driver (`SweepTracker.ensure_parent`) and the service (`find_sweep_ids`) both pick it
    this way, so they agree even on a store that somehow holds two.
    """
    runs = client.search_runs(
        [experiment_id],
        f"tags.`{TAG_ROLE}` = '{ROLE_SWEEP}' and tags.`{TAG_SWEEP_ID}` = '{sweep_id}'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    return runs[0] if runs else None


def find_experiment(client: MlflowClient, sweep_id: str) -> Any | None:
    """The sweep's experiment (an ``mlflow.entities.Experiment``, deleted ones included), or None.

    Found by its ``dab.sweep_id`` tag, not its name: the name is for people (it carries the
    spec's name, and earlier versions named it otherwise). Should a store somehow hold two so
    tagged, the first created is the one, as the driver and the service both pick it here. One
    without the tag is looked for under the name earlier versions gave it
    (`legacy_experiment_name`), so their sweeps are still found.

    Deleted experiments count, as ``get_experiment_by_name`` returns them too: the driver
    restores its sweep's experiment rather than make a second one for the same sweep.
    """
    from mlflow.entities import ViewType

    found = client.search_experiments(
        view_type=ViewType.ALL,
        max_results=1,
        filter_string=f"tags.`{TAG_SWEEP_ID}` = '{sweep_id}'",
        order_by=["creation_time ASC", "experiment_id ASC"],
    )
    if found:
        return found[0]
    return client.get_experiment_by_name(legacy_experiment_name(sweep_id))


def find_sweep_ids(client: MlflowClient, sweep_id: str) -> tuple[str | None, str | None]:
    """The MLflow experiment id and parent run id of a sweep, derived from its id.

    Two requests when the sweep has an experiment (``search_experiments`` by tag, see
    `find_experiment`, and one ``search_runs`` with ``max_results=1``), two when it has none
    (the tag search, then ``get_experiment_by_name`` of the legacy name), three for an untagged
    experiment under the legacy name. Nothing is created or changed. The parent run is the one
    tagged ``dab.role=sweep``, as the sweep's driver makes it.

    Returns:
        (experiment id, parent run id); None for what the driver has not created yet.
    """
    experiment = find_experiment(client, sweep_id)
    if experiment is None:
        return None, None
    run = _parent_run(client, experiment.experiment_id, sweep_id)
    return experiment.experiment_id, run.info.run_id if run is not None else None


@dataclass
class ChildRun:
    """A trial's run as found in MLflow at start-up."""

    run_id: str
    trial_key: str
    status: str
    last_step: float | None
    duplicates: list[str] = field(default_factory=list)


def _status_rank(status: str) -> int:
    return {FINISHED: 0, RUNNING: 1, KILLED: 2, FAILED: 3}.get(status, 4)


class SweepTracker:
    """Synchronous MLflow work of the driver: find or make the sweep's experiment and runs.

    `name` (the spec's name) names the experiment for people (`experiment_name`); `description`
    (the spec's) is the experiment's description in the UI. Neither is needed to find the
    sweep again, which goes by the sweep id alone.
    """

    def __init__(
        self,
        tracking_uri: str,
        sweep_id: str,
        artifact_root: str | None = None,
        *,
        name: str | None = None,
        description: str = "",
    ) -> None:
        self.tracking_uri = tracking_uri
        self.sweep_id = sweep_id
        self.name = name
        self.description = description
        self.artifact_root = (
            artifact_root if artifact_root is not None else default_artifact_root(tracking_uri)
        )
        self.client = make_client(tracking_uri)
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None

    def experiment_tags(self) -> dict[str, str]:
        """The tags the sweep's experiment is made with: its id (how it is found), the kind
        (so MLflow 3's UI opens its runs table) and the description when there is one."""
        tags = {TAG_SWEEP_ID: self.sweep_id, MLFLOW_EXPERIMENT_KIND: EXPERIMENT_KIND_ML}
        if self.description:
            tags[MLFLOW_NOTE] = truncate(self.description, MAX_EXPERIMENT_TAG_VALUE)[0]
        return tags

    def ensure_experiment(self) -> str:
        """The sweep's experiment id: found (`find_experiment`), or created, once per tracker.

        Exactly one experiment per sweep even when two trackers (two drivers) get here at once:
        it is created under a name determined by the sweep (`experiment_name`), which MLflow
        keeps unique, so the second creation fails and its tracker takes the first one's, found
        under that name. An experiment found without some of `experiment_tags` (one an earlier
        version made) gets the missing ones, so old sweeps open on their runs table too; tags it
        has are left as they are, so a description or kind edited in the UI outlives a driver
        restart. It keeps its name: drivers and services of earlier versions look it up by that.

        Raises:
            ValueError: the name is taken by an experiment tagged as another sweep's.
        """
        from mlflow.exceptions import MlflowException

        if self.experiment_id is not None:
            return self.experiment_id
        experiment = find_experiment(self.client, self.sweep_id)
        if experiment is None:
            name = experiment_name(self.sweep_id, self.name)
            location = f"{self.artifact_root.rstrip('/')}/{self.sweep_id}" if self.artifact_root else None
            try:
                self.experiment_id = self.client.create_experiment(
                    name, artifact_location=location, tags=self.experiment_tags()
                )
                return self.experiment_id
            except MlflowException:  # created meanwhile by someone else: use theirs
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
                other = experiment.tags.get(TAG_SWEEP_ID)
                if other not in (None, self.sweep_id):
                    raise ValueError(
                        f"MLflow experiment {name!r} belongs to sweep {other!r}, not {self.sweep_id!r}"
                    ) from None
        if experiment.lifecycle_stage == "deleted":
            self.client.restore_experiment(experiment.experiment_id)
        for key, value in self.experiment_tags().items():
            if key not in experiment.tags:
                self.client.set_experiment_tag(experiment.experiment_id, key, value)
        self.experiment_id = experiment.experiment_id
        return self.experiment_id

    def _search(self, filter_string: str) -> Iterator[Any]:
        assert self.experiment_id is not None
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string, max_results=10_000, page_token=token
            )
            yield from page
            token = page.token
            if not token:
                return

    def ensure_parent(self, tags: Mapping[str, str], run_name: str) -> str:
        """The sweep's parent run, found by tag or created; set RUNNING with `tags` updated."""
        experiment_id = self.ensure_experiment()
        run = _parent_run(self.client, experiment_id, self.sweep_id)
        all_tags = {TAG_ROLE: ROLE_SWEEP, TAG_SWEEP_ID: self.sweep_id, **tags}
        if run is not None:
            self.parent_run_id = run.info.run_id
            if run.info.status != RUNNING:
                self.client.update_run(self.parent_run_id, status=RUNNING)
            set_run_tags(self.client, self.parent_run_id, all_tags)
        else:
            run = self.client.create_run(experiment_id, tags=all_tags, run_name=run_name)
            self.parent_run_id = run.info.run_id
        return self.parent_run_id

    def child_runs(self) -> dict[str, ChildRun]:
        """trial_key -> its run. Should a key ever have several, the best (FINISHED first, then
        the furthest along) is the run; the others are listed in `ChildRun.duplicates`."""
        by_key: dict[str, list[Any]] = {}
        filter_string = f"tags.`{TAG_ROLE}` = '{ROLE_TRIAL}' and tags.`{TAG_SWEEP_ID}` = '{self.sweep_id}'"
        for run in self._search(filter_string):
            key = run.data.tags.get(TAG_TRIAL_KEY)
            if key:
                by_key.setdefault(key, []).append(run)
        out: dict[str, ChildRun] = {}
        for key, runs in by_key.items():
            runs.sort(
                key=lambda r: (
                    _status_rank(r.info.status),
                    -(r.data.metrics.get("step") or 0),
                    r.info.start_time or 0,
                )
            )
            best = runs[0]
            out[key] = ChildRun(
                run_id=best.info.run_id,
                trial_key=key,
                status=best.info.status,
                last_step=best.data.metrics.get("step"),
                duplicates=[r.info.run_id for r in runs[1:]],
            )
            if len(runs) > 1:
                log.warning("trial %s has %d MLflow runs; continuing %s", key, len(runs), best.info.run_id)
        return out

    def end_interrupted(self, runs: Mapping[str, ChildRun]) -> list[str]:
        """End every run still RUNNING (its driver died): KILLED, until its trial runs again."""
        ended = []
        for run in runs.values():
            if run.status == RUNNING:
                set_run_tags(
                    self.client, run.run_id, {TAG_END_REASON: "driver stopped before the trial ended"}
                )
                self.client.set_terminated(run.run_id, KILLED)
                run.status = KILLED
                ended.append(run.run_id)
        return ended


def set_run_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    """Set `tags` on a run in as few ``log_batch`` calls as MLflow allows, values cut to its limit."""
    from mlflow.entities import RunTag

    items = [RunTag(clean_key(k), truncate(str(v), MAX_TAG_VALUE)[0]) for k, v in tags.items()]
    for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, tags=items[i : i + MAX_PARAMS_TAGS_PER_BATCH])
