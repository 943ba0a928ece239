"""`fit_group`: the seeds of one configuration trained in lockstep equal their lone runs."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from dab_core import run_trial
from dab_core.training import CHECKPOINT_FILE, fit_group, member_dir
from tests.dab_core.test_training import TINY, Recorder, assert_same_state, final_state


class GroupRecorder:
    def __init__(self, root: Path, stop_at: int | None = None) -> None:
        self.root, self.stop_at = root, stop_at
        self.metrics: list[list[dict[str, float]]] = []
        self.checkpoints: dict[int, Path] = {}

    def __call__(self, metrics: list[dict[str, float]], checkpoint_dir: str | None) -> None:
        step = int(metrics[0]["step"])
        assert all(int(m["step"]) == step for m in metrics)
        self.metrics.append(metrics)
        if checkpoint_dir is not None:
            kept = self.root / f"ckpt-{step}"
            shutil.copytree(checkpoint_dir, kept)
            self.checkpoints[step] = kept
        if step == self.stop_at:
            raise KeyboardInterrupt


def member_state(rec: GroupRecorder, step: int, i: int) -> Any:
    return torch.load(member_dir(rec.checkpoints[step], i) / CHECKPOINT_FILE, weights_only=False)["state"]


def _no_time(m: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in m.items() if k != "samples_per_s"}


@pytest.mark.parametrize("model", ["signum-dense", "signum-rnn"])
def test_group_equals_lone_runs(tmp_path: Path, model: str) -> None:
    base = {**TINY, "model": model, "steps": 20, **({"rnn_hidden": 12} if model == "signum-rnn" else {})}
    seeds = [3, 11, 0]
    group = GroupRecorder(tmp_path / "g")
    finals = fit_group([{**base, "seed": s} for s in seeds], report=group)
    for i, seed in enumerate(seeds):
        lone = Recorder(tmp_path / f"lone-{seed}")
        final = run_trial({**base, "seed": seed}, report=lone)
        assert [_no_time(m) for m in lone.metrics] == [_no_time(ms[i]) for ms in group.metrics]
        assert _no_time(final) == _no_time(finals[i])
        assert_same_state(final_state(lone, 20), member_state(group, 20, i))
    # different seeds really differ (the test would pass vacuously otherwise)
    assert _no_time(group.metrics[-1][0]) != _no_time(group.metrics[-1][1])


def test_group_resumes_exactly(tmp_path: Path) -> None:
    configs = [{**TINY, "steps": 30, "seed": s} for s in (1, 2)]
    whole = GroupRecorder(tmp_path / "whole")
    fit_group(configs, report=whole)
    cut = GroupRecorder(tmp_path / "cut", stop_at=10)
    with pytest.raises(KeyboardInterrupt):
        fit_group(configs, report=cut)
    rest = GroupRecorder(tmp_path / "rest")
    fit_group(configs, report=rest, checkpoint_dir=str(cut.checkpoints[10]))
    assert [[_no_time(m) for m in ms] for ms in rest.metrics] == [
        [_no_time(m) for m in ms] for ms in whole.metrics if ms[0]["step"] > 10
    ]
    for i in range(2):
        assert_same_state(member_state(whole, 30, i), member_state(rest, 30, i))
    again = fit_group(configs, checkpoint_dir=str(rest.checkpoints[30]))  # resumed at the end
    assert [m["step"] for m in again] == [30.0, 30.0]


def test_group_members_must_share_their_schedule() -> None:
    with pytest.raises(ValueError, match="share steps"):
        fit_group([{**TINY, "seed": 0}, {**TINY, "seed": 1, "steps": 45}])
    with pytest.raises(ValueError, match="at least one"):
        fit_group([])
