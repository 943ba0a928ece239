"""The Ray Tune trainable: a thin adapter from a trial to `dab_core.run_trial`.

A Tune trial's config holds only its ``trial_key``; the trials' configs travel once, through
`tune.with_parameters`, as a table keyed by trial_key (600 resolved configs would otherwise be
copied into every trial's state and the experiment checkpoint). The trainable:

* looks its config up and validates it (`dab_core.experiments.parse_config`) before any compute;
* resumes from `tune.get_checkpoint()` (model, optimiser, step and RNG are in the checkpoint);
* reports every ``eval_every`` steps through `tune.report`, with a checkpoint every
  ``checkpoint_every`` steps and at the end (Tune copies it into the trial's storage before
  `report` returns, which is what the temporary directory of `run_trial` needs);
* adds to every report where it runs (`placement`: node, the GPUs Ray gave it and the
  ``CUDA_VISIBLE_DEVICES`` it sees, the device it trains on); the driver tags the run with it;
* writes the trial's report history (``dab_history.json``) into every checkpoint, so a trial
  restored from checkpoint k carries every metric up to k. The driver uses it to fill in
  MLflow steps that a killed driver reported but never wrote: resuming never leaves a gap.

Trials outside ``run_keys`` return at once without reporting: a restored Tune experiment can
hold trials that already have a FINISHED MLflow run, and those must not train again.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

HISTORY_FILE = "dab_history.json"
#: The report keys `placement` adds: strings, so never taken for metrics.
PLACEMENT_KEYS = ("dab_node", "dab_gpu_ids", "dab_cuda_visible_devices", "dab_device", "dab_device_note")
HISTORY_TIME_KEY = "_time_ms"
TRIAL_KEY = "trial_key"
#: A search configuration's Tune trial config, besides `TRIAL_KEY` (`workers.driver.search`):
#: its index in proposal order, its cell (searched field -> value), and its members
#: (``[{"trial_key", "seed", "replicate", "config"}]``, one per seed).
CELL, INDEX, MEMBERS = "dab_cell", "dab_index", "dab_members"


def read_history(checkpoint_dir: str | os.PathLike[str]) -> list[dict[str, float]]:
    """The report history stored in a checkpoint directory (empty when it has none)."""
    path = Path(checkpoint_dir) / HISTORY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    return [dict(entry) for entry in data]


def read_checkpoint_history(checkpoint: Any) -> list[dict[str, float]]:
    """The report history of a `ray.tune.Checkpoint`, read on whatever filesystem holds it."""
    if checkpoint is None:
        return []
    path = f"{checkpoint.path.rstrip('/')}/{HISTORY_FILE}"
    try:
        with checkpoint.filesystem.open_input_stream(path) as f:
            data = json.loads(f.readall().decode("utf-8"))
    except (FileNotFoundError, OSError):
        return []
    return [dict(entry) for entry in data]


def _write_history(checkpoint_dir: str, history: list[dict[str, float]]) -> None:
    # allow_nan keeps a NaN loss (a diverged trial) instead of crashing the report.
    with open(Path(checkpoint_dir) / HISTORY_FILE, "w", encoding="utf-8") as f:
        json.dump(history, f, allow_nan=True)


def placement(requested_device: str) -> dict[str, str]:
    """Where this trial runs: its node, its GPUs from Ray, what CUDA it sees, its device.

    A trial that asked Ray for a GPU on a node whose torch sees no CUDA (a node declared with
    ``--num-gpus`` but no driver, or a CPU-only build of torch): with ``device: auto`` it trains
    on the CPU and says so in ``dab_device_note`` (its run and its state in the status file carry
    the note); with ``device: cuda`` it fails, naming the node and the GPUs it was given. Running
    on is the better default for a sweep (a slow trial is a result, a failed one is not), and
    the note keeps it from passing unseen.
    """
    import ray
    import torch

    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    cuda = torch.cuda.is_available()
    node = ray.util.get_node_ip_address()
    device = "cuda" if (requested_device == "cuda" or (requested_device == "auto" and cuda)) else "cpu"
    note = ""
    if gpu_ids and not cuda:
        note = (
            f"asked for a GPU; Ray gave GPU {','.join(gpu_ids)} (CUDA_VISIBLE_DEVICES={visible or '<unset>'}) "
            f"on node {node}, but torch sees no CUDA there"
        )
        if requested_device == "cuda":
            raise RuntimeError(f"{note}; the trial's config says device 'cuda'")
        note += ": trained on the CPU"
    return {
        "dab_node": node,
        "dab_gpu_ids": ",".join(gpu_ids),
        "dab_cuda_visible_devices": visible,
        "dab_device": device,
        "dab_device_note": note,
    }


def dab_trainable(
    config: Mapping[str, Any],
    *,
    trial_configs: Mapping[str, Mapping[str, Any]],
    run_keys: Iterable[str] | None = None,
) -> None:
    """Run the trial named by ``config["trial_key"]`` under Tune.

    Args:
        config: the Tune trial config, ``{"trial_key": key}``.
        trial_configs: trial_key -> the fully resolved `dab_core` trial config.
        run_keys: the keys to train; any other trial returns at once without reporting.
    """

    from dab_core import run_trial
    from dab_core.experiments import parse_config

    key = config[TRIAL_KEY]
    if run_keys is not None and key not in run_keys:
        return
    if key not in trial_configs:
        raise KeyError(f"trial_key {key!r} is not in this sweep's trial table ({len(trial_configs)} trials)")
    trial_config = dict(trial_configs[key])
    parsed = parse_config(trial_config)  # a bad config fails here, before any compute, naming the field
    where = placement(str(getattr(parsed, "device", "auto")))  # "auto" without CUDA: the CPU

    _train_under_tune(where, lambda report, directory: run_trial(trial_config, report, directory))


def _train_under_tune(where: Mapping[str, str], train: Callable[[Any, str | None], Any]) -> None:
    """Call ``train(report, checkpoint_dir)`` from Tune's checkpoint (None: from the start), with
    a ``report(metrics, checkpoint_dir)`` that reports to Tune with the placement and keeps the
    report history in every checkpoint."""
    from ray import tune

    history: list[dict[str, float]] = []

    def report(metrics: Mapping[str, float], checkpoint_dir: str | None) -> None:
        values = {k: float(v) for k, v in metrics.items()}
        history.append({**values, HISTORY_TIME_KEY: float(int(time.time() * 1000))})
        if checkpoint_dir is None:
            tune.report({**values, **where})
            return
        _write_history(checkpoint_dir, history)
        tune.report({**values, **where}, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        train(report, None)
        return
    with checkpoint.as_directory() as directory:
        history.extend(read_history(directory))
        train(report, directory)


#: Prefix of a member's own values in a configuration's report: ``m/<i>/<metric>``.
MEMBER_PREFIX = "m/"
#: Prefix of the std over members in a configuration's report: ``std/<metric>``.
STD_PREFIX = "std/"


def member_values(result: Mapping[str, Any], index: int) -> dict[str, Any]:
    """Member `index`'s own values in a configuration's report (or its history entry)."""
    prefix = f"{MEMBER_PREFIX}{index}/"
    return {k[len(prefix) :]: v for k, v in result.items() if k.startswith(prefix)}


def group_report(per_member: list[dict[str, float]]) -> dict[str, float]:
    """A configuration's report from its members': each metric every member reports as the
    mean over them (what the searcher and the scheduler read), its std (``std/<metric>``,
    population std over the seeds), and each member's own values (``m/<i>/<metric>``)."""
    import statistics

    out: dict[str, float] = {}
    common = set(per_member[0]).intersection(*per_member[1:])
    for key in sorted(common):
        values = [float(m[key]) for m in per_member]
        out[key] = statistics.fmean(values)
        if key != "step":
            out[f"{STD_PREFIX}{key}"] = statistics.pstdev(values) if len(values) > 1 else 0.0
    for i, metrics in enumerate(per_member):
        for key, value in metrics.items():
            out[f"{MEMBER_PREFIX}{i}/{key}"] = float(value)
    return out


def dab_group_trainable(
    config: Mapping[str, Any],
    *,
    stacked: bool = False,
    groups: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> None:
    """Run several seeds of one configuration as one Tune trial: a search's configuration, or a
    grid cell's pending seeds with ``execution.seeds: stacked``. In lockstep
    (`dab_core.training.fit_group`), or as one vmapped model (`dab_core.stacked.fit_stacked`,
    with `stacked`); both report `group_report` of the seeds' metrics and write the same
    checkpoints, so either resumes the other's.

    Args:
        config: the Tune trial config: a search's configuration holds its key, index, cell and
            members (each seed's trial key, replicate, seed and resolved config); a grid's
            stacked cell is ``{"trial_key": group_key}``, its members in `groups`.
        groups: group key -> members, the grid's stacked cells (a table passed once through
            `tune.with_parameters`, as `dab_trainable`'s trial table).
    """

    from dab_core.experiments import parse_config
    from dab_core.training import fit_group

    members = config[MEMBERS] if MEMBERS in config else (groups or {})[config[TRIAL_KEY]]
    configs = [dict(m["config"]) for m in members]
    parsed = [parse_config(c) for c in configs]  # a bad config fails here, before any compute
    where = placement(str(getattr(parsed[0], "device", "auto")))
    fit = fit_group
    if stacked:
        from dab_core.stacked import fit_stacked as fit
    _train_under_tune(
        where,
        lambda report, directory: fit(
            configs, lambda per_member, c: report(group_report(per_member), c), directory
        ),
    )


def make_group_trainable(
    resources: Mapping[str, float],
    stacked: bool = False,
    groups: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> Callable[..., Any]:
    """`dab_group_trainable` as a Tune trainable with `resources`, restoring as `make_trainable`'s."""
    from ray import tune

    table = {k: [dict(m) for m in v] for k, v in (groups or {}).items()}
    bound = tune.with_parameters(dab_group_trainable, stacked=stacked, groups=table)
    return tune.with_resources(_restoring(bound, "dab_group_trainable"), dict(resources))


def resolve_resources(
    requested: Mapping[str, float | int | None], cluster: Mapping[str, float]
) -> tuple[dict[str, float], list[str]]:
    """Per-trial resources for `tune.with_resources`, fitted to what the cluster has.

    A GPU request (fractions included: 0.25 packs four trials on a GPU) is kept when the cluster
    has GPUs and dropped with a note when it has none, so a spec written for the GPU cluster also
    runs on a laptop (the trial's ``device: auto`` then picks the CPU). A request larger than
    the whole cluster is an error: Tune would keep the trial PENDING forever.

    Returns:
        (resources, notes): the resource dict and human-readable notes on what was changed.
    """
    notes: list[str] = []
    out: dict[str, float] = {}
    for name, value in requested.items():
        if value is None or value == 0:
            continue
        if value < 0 or not math.isfinite(float(value)):
            raise ValueError(f"resources.{name} must be a finite number >= 0, got {value!r}")
        out[name.lower()] = float(value)
    out.setdefault("cpu", 1.0)
    have_gpu = float(cluster.get("GPU", 0.0))
    if out.get("gpu", 0.0) > 0 and have_gpu <= 0:
        notes.append(f"resources.gpu={out.pop('gpu')} dropped: the Ray cluster has no GPU")
    for name, ray_name in (("cpu", "CPU"), ("gpu", "GPU"), ("memory", "memory")):
        if name in out and ray_name in cluster and out[name] > float(cluster[ray_name]):
            raise ValueError(
                f"resources.{name}={out[name]:g} per trial exceeds the whole cluster's {cluster[ray_name]:g}"
            )
    return out, notes


def make_trainable(
    trial_configs: Mapping[str, Mapping[str, Any]],
    resources: Mapping[str, float],
    run_keys: Iterable[str] | None = None,
) -> Callable[..., Any]:
    """`dab_trainable` bound to its trial table (via `tune.with_parameters`) and resources."""
    from ray import tune

    keys = None if run_keys is None else frozenset(run_keys)
    bound = tune.with_parameters(dab_trainable, trial_configs=dict(trial_configs), run_keys=keys)
    return tune.with_resources(_restoring(bound, "dab_trainable"), dict(resources))


def _restoring(function: Callable[..., Any], name: str) -> Any:
    """The class Tune makes of a function trainable, made here so that `restore` can be ours."""
    from ray.tune.trainable import wrap_function

    base = wrap_function(function, name=name)

    class DabTrainable(base):  # type: ignore[misc,valid-type]
        """Restores from the newest whole checkpoint when the one Tune names is gone (see
        `existing_checkpoint`)."""

        def restore(self, checkpoint_path: Any) -> Any:
            checkpoint = existing_checkpoint(checkpoint_path)
            if checkpoint is None:  # none left whole: the trial starts over (get_checkpoint: None)
                return None
            return super().restore(checkpoint)

    DabTrainable.__name__ = DabTrainable.__qualname__ = name  # Tune's name for it
    return DabTrainable


def existing_checkpoint(named: Any) -> Any:
    """The checkpoint to restore: the one Tune names, or, when it is gone, the trial's newest
    whole checkpoint beside it (None: start over).

    Tune deletes a trial's checkpoint k-K the moment checkpoint k registers (``num_to_keep=K``)
    but saves its experiment state, which names the checkpoint a restore reads, only every K
    checkpoints or every 10 s and more: a driver lost in between (a lost head) leaves a state
    naming a deleted checkpoint, and Tune fails the trial ("Could not recover from checkpoint as
    it does not exist on storage anymore"; 2 of 8 trials in tests/e2e/test_cluster.py, and the
    killed driver of tests/workers/test_faults.py). The newer checkpoints are in the same trial
    directory; the newest with every file of `CHECKPOINT_FILES` is whole (Tune registers a
    checkpoint only once uploaded; a trial killed mid-upload leaves one without them). Its
    history covers every step up to it, so the run gets no gap, and the driver drops the
    steps it already holds.
    """
    from pyarrow.fs import FileSelector, FileType
    from ray import tune

    checkpoint = getattr(named, "checkpoint", named)
    if not isinstance(checkpoint, tune.Checkpoint):
        return named
    fs: Any = checkpoint.filesystem
    path = checkpoint.path.rstrip("/")
    if fs.get_file_info(path).type != FileType.NotFound:
        return named
    parent = path.rsplit("/", 1)[0]
    dirs = [
        i.path
        for i in fs.get_file_info(FileSelector(parent, allow_not_found=True))
        if i.type == FileType.Directory and i.base_name.startswith("checkpoint_")
    ]
    for candidate in sorted(dirs, reverse=True):  # checkpoint_000012 sorts after _000011
        # what a whole checkpoint holds (each file one object on S3: there whole or not at all)
        if _whole(fs, candidate):
            return tune.Checkpoint(candidate, filesystem=fs)
    return None


def _whole(fs: Any, directory: str) -> bool:
    """A checkpoint directory holds its history and its state: one trial's ``trial.pt``, or a
    configuration's ``member-<i>/trial.pt`` for each of its members (`fit_group`)."""
    from pyarrow.fs import FileSelector, FileType

    from dab_core.training import CHECKPOINT_FILE

    history, own = fs.get_file_info([f"{directory}/{HISTORY_FILE}", f"{directory}/{CHECKPOINT_FILE}"])
    if history.type != FileType.File:
        return False
    if own.type == FileType.File:
        return True
    members = [
        f"{i.path}/{CHECKPOINT_FILE}"
        for i in fs.get_file_info(FileSelector(directory, allow_not_found=True))
        if i.type == FileType.Directory and i.base_name.startswith("member-")
    ]
    return bool(members) and all(f.type == FileType.File for f in fs.get_file_info(members))


def trial_dirname_suffix(trial_key: str) -> str:
    """What ends the Tune trial directory (and trial name) of `trial_key`."""
    return trial_key[:16]


def trial_dirname(trial: Any) -> str:
    """Tune trial directory name: short and stable (the default embeds the whole config)."""
    return f"{trial.trial_id}-{trial_dirname_suffix(str(trial.config.get(TRIAL_KEY, '')))}"


def trial_name(trial: Any) -> str:
    return trial_dirname(trial)


__all__ = [
    "CELL",
    "HISTORY_FILE",
    "INDEX",
    "MEMBERS",
    "PLACEMENT_KEYS",
    "TRIAL_KEY",
    "dab_group_trainable",
    "dab_trainable",
    "existing_checkpoint",
    "group_report",
    "make_group_trainable",
    "make_trainable",
    "member_values",
    "placement",
    "read_checkpoint_history",
    "read_history",
    "resolve_resources",
    "trial_dirname",
    "trial_dirname_suffix",
    "trial_name",
]
