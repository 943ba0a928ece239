"""The training loop every experiment family shares. It knows nothing of Ray or MLflow: it
calls ``report(metrics, checkpoint_dir)`` as it goes and resumes from a checkpoint directory.

Checkpoints hold the model and optimiser states, the step, and the RNG states, so a trial
stopped at step k and resumed continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import abc
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from dab_core.config import TrialConfig

Report = Callable[[dict[str, float], "str | None"], None]
#: ``report(per_member_metrics, checkpoint_dir_or_None)`` of `fit_group`.
GroupReport = Callable[[list[dict[str, float]], "str | None"], None]
CHECKPOINT_FILE = "trial.pt"
ARTIFACTS_DIR = "artifacts"
CHECKPOINT_FORMAT = 1


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state_dict: dict[str, Any], /) -> Any: ...


class Task(abc.ABC):
    """One trial of an experiment family, built as ``Task(config, device)``.

    The training loop calls `train_step` for every step and `evaluate` at report points.
    `train_step` returns detached scalar tensors: converting them to floats would force a host
    sync on every step, so the loop averages them on the device and converts at report time.
    """

    #: The training step is compiled: the first `train_step` of a process includes compiling,
    #: so the loop reports its time once as ``compile_s`` and leaves it out of ``samples_per_s``.
    compiled: bool = False

    def __init__(self, config: TrialConfig, device: torch.device) -> None:
        self.config = config
        self.device = device

    @abc.abstractmethod
    def state(self) -> Mapping[str, Stateful]:
        """The objects whose state a checkpoint must hold (models, optimisers)."""

    @abc.abstractmethod
    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        """One optimiser step; `step` counts from 0. Returns detached scalar tensors."""

    @abc.abstractmethod
    def evaluate(self) -> dict[str, float]:
        """Held-out metrics for the current parameters."""

    def samples_per_step(self) -> int:
        """Training samples one step consumes; 0 for a task that trains nothing (then no
        ``samples_per_s`` is reported: it would measure nothing)."""
        return 1

    def artifacts(self, out_dir: Path) -> None:  # noqa: B027 (optional hook, no-op by default)
        """Write the family's plots or sample images at the trial's end (default: none).

        Called once, after the last step, into the ``artifacts/`` folder of the final
        checkpoint, which trackers keep with it (the workers log it to MLflow).
        """


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config asks for device 'cuda' but torch sees no CUDA device")
    return torch.device(name)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | os.PathLike[str], task: Task, step: int) -> Path:
    """Write the task's state at `step` into `directory` atomically (temp file, then rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "config": task.config.model_dump(),
        "state": {name: obj.state_dict() for name, obj in task.state().items()},
        "rng": _rng_state(),
    }
    path = directory / CHECKPOINT_FILE
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".trial-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(directory: str | os.PathLike[str], task: Task) -> int:
    """Restore the task from `directory`; returns the number of steps already done."""
    path = Path(directory) / CHECKPOINT_FILE
    payload = torch.load(path, map_location=task.device, weights_only=False)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: unsupported checkpoint format {payload.get('format')!r}")
    state = task.state()
    missing = sorted(set(state) - set(payload["state"]))
    if missing:
        raise ValueError(f"{path}: checkpoint has no state for {missing}")
    for name, obj in state.items():
        obj.load_state_dict(payload["state"][name])
    _set_rng_state(payload["rng"])
    return int(payload["step"])


def has_checkpoint(directory: str | os.PathLike[str] | None) -> bool:
    return directory is not None and (Path(directory) / CHECKPOINT_FILE).is_file()


CHECKPOINT_TMP_PREFIX = "dab-ckpt-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphan_checkpoint_dirs(root: str | None = None) -> list[Path]:
    """Remove the temporary checkpoint directories of processes that are gone.

    `fit` writes each reported checkpoint to ``dab-ckpt-<pid>-*`` in the temp dir and removes it
    once `report` returns; a process killed inside `report` (SIGKILL while Ray copies the
    checkpoint) cannot, so the next `fit` on the machine clears what dead processes left.
    """
    removed = []
    for d in Path(root or tempfile.gettempdir()).glob(f"{CHECKPOINT_TMP_PREFIX}*-*"):
        pid = d.name[len(CHECKPOINT_TMP_PREFIX) :].split("-", 1)[0]
        if d.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


class _Stepper:
    """One task's way through its steps, one report interval at a time (`fit`, `fit_group`)."""

    def __init__(self, task: Task, start: int) -> None:
        self.task = task
        self.step = start
        self.first = True  # this process has not run a step of the task yet

    @property
    def done(self) -> bool:
        return self.step >= self.task.config.steps

    def advance(self) -> dict[str, float]:
        """Train to the next report point (every ``eval_every`` steps, and the last step) and
        return its metrics: the training losses averaged over the interval, the evaluation, and
        ``samples_per_s`` over the training alone."""
        cfg, task = self.task.config, self.task
        sums: dict[str, torch.Tensor] = {}
        count = 0
        compile_s: float | None = None
        began = time.perf_counter()
        while True:
            for key, value in task.train_step(self.step).items():
                sums[key] = sums[key] + value if key in sums else value.clone()
            count += 1
            self.step += 1
            if self.first and task.compiled:  # the compiling step: timed apart, reported once
                float(next(iter(sums.values()), torch.zeros(())))  # wait for the step itself
                compile_s = time.perf_counter() - began
                began = time.perf_counter()
            self.first = False
            if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                break
        train = {key: float(total) / count for key, total in sums.items()}
        seconds = time.perf_counter() - began
        metrics = {"step": float(self.step), **train, **task.evaluate()}
        timed = count - (compile_s is not None)
        if compile_s is not None:
            metrics["compile_s"] = compile_s
        if task.samples_per_step() and timed:
            metrics["samples_per_s"] = timed * task.samples_per_step() / max(seconds, 1e-9)
        return metrics

    def checkpoint_due(self) -> bool:
        cfg = self.task.config
        return self.step % cfg.checkpoint_interval == 0 or self.step == cfg.steps

    def save(self, directory: str | os.PathLike[str]) -> None:
        save_member(directory, self.task, self.step)


def save_member(directory: str | os.PathLike[str], task: Task, step: int) -> None:
    """A trial's checkpoint at `step`, with the family's artifacts once it reached its end."""
    save_checkpoint(directory, task, step)
    if step == task.config.steps:
        task.artifacts(Path(directory) / ARTIFACTS_DIR)


def report_group_checkpoint(
    report: GroupReport,
    metrics: list[dict[str, float]],
    tasks: Sequence[Task],
    step: int,
    rngs: list[dict[str, Any]],
) -> None:
    """Write every member's checkpoint into ``member-<i>/`` of a temporary directory, each under
    its own RNG state (`rngs`, updated), report it with `metrics`, and remove it (the group
    fits', `fit_group` and `dab_core.stacked.fit_stacked`)."""
    tmp = tempfile.mkdtemp(prefix=f"{CHECKPOINT_TMP_PREFIX}{os.getpid()}-")
    try:
        for i, task in enumerate(tasks):
            _set_rng_state(rngs[i])  # the checkpoint holds the member's own RNG state
            save_member(member_dir(tmp, i), task, step)
            rngs[i] = _rng_state()
        report(metrics, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fit(task: Task, report: Report | None = None, checkpoint_dir: str | None = None) -> dict[str, float]:
    """Train `task` to ``config.steps``, reporting every ``eval_every`` steps and at the end.

    Reports carry a checkpoint directory every ``checkpoint_every`` steps and at the end (the
    last one also holds the family's artifacts under ``artifacts/``); the
    directory is temporary and removed once `report` returns (a caller that keeps it copies it,
    as Ray Tune does). Returns the last report's metrics (a trial resumed from its final
    checkpoint trains no more and returns a fresh evaluation).
    """
    if report is not None:
        remove_orphan_checkpoint_dirs()
    start = load_checkpoint(checkpoint_dir, task) if checkpoint_dir and has_checkpoint(checkpoint_dir) else 0
    run = _Stepper(task, start)
    if run.done:  # resumed from the final checkpoint: nothing left to train
        return {"step": float(start), **task.evaluate()}
    metrics: dict[str, float] = {}
    while not run.done:
        metrics = run.advance()
        if report is None:
            continue
        if not run.checkpoint_due():
            report(metrics, None)
            continue
        tmp = tempfile.mkdtemp(prefix=f"{CHECKPOINT_TMP_PREFIX}{os.getpid()}-")
        try:
            run.save(tmp)
            report(metrics, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return metrics


def member_dir(directory: str | os.PathLike[str], index: int) -> Path:
    """Where member `index` of a group checkpoint keeps its own checkpoint (`fit_group`)."""
    return Path(directory) / f"member-{index}"


def parse_group(configs: Sequence[Mapping[str, Any]], fit: str) -> list[TrialConfig]:
    """The members' typed configs, checked to report together (the same ``steps``,
    ``eval_every`` and ``checkpoint_every``): what `fit_group` and `fit_stacked` (`fit`) take."""
    from dab_core.experiments import parse_config

    if not configs:
        raise ValueError(f"{fit} needs at least one trial config")
    parsed = [parse_config(c) for c in configs]
    timing = {(p.steps, p.eval_every, p.checkpoint_interval) for p in parsed}
    if len(timing) > 1:
        raise ValueError(
            "the members of a group must share steps, eval_every and checkpoint_every: got "
            + ", ".join(f"{t}" for t in sorted(timing))
        )
    return parsed


def fit_group(
    configs: Sequence[Mapping[str, Any]],
    report: GroupReport | None = None,
    checkpoint_dir: str | None = None,
) -> list[dict[str, float]]:
    """Train several trials in one process in lockstep: the seeds of one configuration.

    Each member trains exactly as `run_trial` would train it alone: it is built from its own
    seed, and the global RNG is switched to the member's own state around each of its report
    intervals, so its parameters, data order and sampling are the lone run's, bit for bit on
    the CPU. The members must share ``steps``, ``eval_every`` and ``checkpoint_every`` (they
    differ in ``seed``): they report together, ``report(per_member_metrics, checkpoint_dir)``,
    once every member reached the report point. A checkpoint directory holds each member's
    checkpoint in ``member-<i>/`` (`member_dir`), artifacts included at the end.

    Returns:
        Each member's last metrics (a group resumed from its final checkpoint trains no more
        and returns fresh evaluations).
    """
    parsed = parse_group(configs, "fit_group")
    if report is not None:
        remove_orphan_checkpoint_dirs()
    runs: list[_Stepper] = []
    rngs: list[dict[str, Any]] = []
    for i, cfg in enumerate(parsed):
        task = build_task(cfg)  # seeds the global RNG with the member's seed, then builds
        own = member_dir(checkpoint_dir, i) if checkpoint_dir else None
        start = load_checkpoint(own, task) if own is not None and has_checkpoint(own) else 0
        runs.append(_Stepper(task, start))
        rngs.append(_rng_state())
    if len({r.step for r in runs}) > 1:
        raise ValueError(f"a group checkpoint whose members are at different steps: {[r.step for r in runs]}")
    if runs[0].done:
        return [{"step": float(r.step), **r.task.evaluate()} for r in runs]
    metrics: list[dict[str, float]] = []
    while not runs[0].done:
        metrics = []
        for i, run in enumerate(runs):
            _set_rng_state(rngs[i])
            metrics.append(run.advance())
            rngs[i] = _rng_state()
        if report is None:
            continue
        if not runs[0].checkpoint_due():
            report(metrics, None)
            continue
        report_group_checkpoint(report, metrics, [r.task for r in runs], runs[0].step, rngs)
    return metrics


def build_task(config: TrialConfig) -> Task:
    """Seed torch, pick the device and build the family's task for `config`."""
    from dab_core.experiments import experiments

    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    return experiments.lookup(config.experiment).task_cls(config, device)


def run_trial(
    config: Mapping[str, Any],
    report: Report | None = None,
    checkpoint_dir: str | None = None,
) -> dict[str, float]:
    """Run one trial of any registered experiment family from a plain config dict.

    Args:
        config: the trial's config; ``config["experiment"]`` names the family, whose typed
            config validates the rest (pydantic ValidationError naming the field otherwise).
        report: called as ``report(metrics, checkpoint_dir_or_None)`` at every report point.
        checkpoint_dir: a directory written by an earlier report of this trial; the trial
            resumes from it (model, optimiser, step, RNG state).

    Returns:
        The metrics of the final report.
    """
    from dab_core.experiments import parse_config

    return fit(build_task(parse_config(config)), report, checkpoint_dir)


__all__ = [
    "GroupReport",
    "Report",
    "Task",
    "build_task",
    "fit",
    "fit_group",
    "has_checkpoint",
    "load_checkpoint",
    "member_dir",
    "parse_group",
    "report_group_checkpoint",
    "resolve_device",
    "run_trial",
    "save_checkpoint",
    "save_member",
]
