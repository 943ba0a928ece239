"""The shared training loop: report schedule, checkpoints, and exact resume."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from dab_core import run_trial
from dab_core.training import CHECKPOINT_FILE

TINY: dict[str, Any] = {
    "experiment": "sorting",
    "model": "signum-dense",
    "seq_len": 3,
    "steps": 40,
    "eval_every": 5,
    "checkpoint_every": 10,
    "batch_size": 32,
    "train_size": 96,  # 3 steps an epoch: the resume point falls mid-epoch
    "test_size": 64,
    "dense_hidden": [16, 16],
    "approximator_hidden": [8],
    "seed": 3,
    "num_threads": 1,
}


class Recorder:
    """A report callback that keeps the metrics and copies every checkpoint it is handed."""

    def __init__(self, root: Path, stop_at: int | None = None) -> None:
        self.root, self.stop_at = root, stop_at
        self.metrics: list[dict[str, float]] = []
        self.checkpoints: dict[int, Path] = {}
        self.handed: list[str] = []

    def __call__(self, metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        step = int(metrics["step"])
        self.metrics.append(metrics)
        if checkpoint_dir is not None:
            self.handed.append(checkpoint_dir)
            kept = self.root / f"ckpt-{step}"
            shutil.copytree(checkpoint_dir, kept)
            self.checkpoints[step] = kept
        if step == self.stop_at:
            raise KeyboardInterrupt  # the trial is stopped right after this report


def final_state(rec: Recorder, steps: int) -> dict[str, Any]:
    return torch.load(rec.checkpoints[steps] / CHECKPOINT_FILE, weights_only=False)["state"]


def assert_same_state(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_state(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_state(x, y)
    else:
        assert a == b


def test_report_and_checkpoint_schedule(tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    final = run_trial({**TINY, "steps": 23}, report=rec)
    assert [m["step"] for m in rec.metrics] == [5, 10, 15, 20, 23]  # the last step always reports
    assert sorted(rec.checkpoints) == [10, 20, 23]
    assert final == rec.metrics[-1]
    for key in (
        "train_loss",
        "train_ce",
        "dab_loss",
        "test_all_or_none",
        "test_per_position",
        "samples_per_s",
    ):
        assert isinstance(final[key], float)
    # The checkpoint directories handed to report are temporary: gone once report returned.
    assert len(rec.handed) == 3 and not any(Path(p).exists() for p in rec.handed)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"train_size": 0},
        {"model": "signum-rnn", "ponder_steps": 2, "rnn_hidden": 12},
        {"hard": "bernoulli"},  # draws from the global RNG: the checkpoint must restore it
        {"lr_schedule": "cosine", "lr": 1e-2},
    ],
    ids=["fixed-set", "fresh-data", "rnn-ponder", "bernoulli-rng", "cosine-lr"],
)
def test_resume_from_checkpoint_matches_the_uninterrupted_run(
    tmp_path: Path, overrides: dict[str, Any]
) -> None:
    config = {**TINY, **overrides}
    straight = Recorder(tmp_path / "straight")
    run_trial(config, report=straight)

    stopped = Recorder(tmp_path / "stopped", stop_at=20)
    with pytest.raises(KeyboardInterrupt):
        run_trial(config, report=stopped)
    assert max(stopped.checkpoints) == 20

    resumed = Recorder(tmp_path / "resumed")
    run_trial(config, report=resumed, checkpoint_dir=str(stopped.checkpoints[20]))
    assert [m["step"] for m in resumed.metrics] == [25, 30, 35, 40]  # continues, not from 0
    assert_same_state(final_state(straight, 40), final_state(resumed, 40))
    for a, b in zip(straight.metrics[-4:], resumed.metrics, strict=True):
        assert a["test_all_or_none"] == b["test_all_or_none"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


def test_resume_from_a_finished_checkpoint_trains_no_more(tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    run_trial({**TINY, "steps": 10}, report=rec)
    again = Recorder(tmp_path / "again")
    final = run_trial({**TINY, "steps": 10}, report=again, checkpoint_dir=str(rec.checkpoints[10]))
    assert again.metrics == []  # nothing new to report
    assert final["step"] == 10
    assert final["test_all_or_none"] == rec.metrics[-1]["test_all_or_none"]


def test_checkpoint_from_another_family_state_is_refused(tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    run_trial({**TINY, "steps": 10}, report=rec)
    rnn = {**TINY, "model": "signum-rnn", "rnn_hidden": 12}
    with pytest.raises(RuntimeError, match="state_dict"):
        run_trial(rnn, checkpoint_dir=str(rec.checkpoints[10]))


def test_checkpoint_every_must_be_a_multiple_of_eval_every() -> None:
    from pydantic import ValidationError

    with pytest.raises(
        ValidationError, match=r"checkpoint_every \(7\) must be a multiple of eval_every \(5\)"
    ):
        run_trial({**TINY, "checkpoint_every": 7})


def test_final_checkpoint_carries_the_sorting_artifacts(tmp_path: Path) -> None:
    import json

    rec = Recorder(tmp_path)
    final = run_trial({**TINY, "steps": 20}, report=rec)
    assert not (rec.checkpoints[10] / "artifacts").exists()  # only the final checkpoint
    art = rec.checkpoints[20] / "artifacts"
    per_position = json.loads((art / "per_position_accuracy.json").read_text())
    assert len(per_position) == 3 and all(0 <= p <= 1 for p in per_position)
    assert sum(per_position) / 3 == pytest.approx(final["test_per_position"], abs=1e-6)
    assert (art / "per_position_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_dirs_of_dead_processes_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import subprocess
    import sys
    import tempfile

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    orphan = tmp_path / f"dab-ckpt-{dead_pid}-abc"
    mine = tmp_path / f"dab-ckpt-{os.getpid()}-def"
    other = tmp_path / "dab-ckpt-notapid"
    for d in (orphan, mine, other):
        (d / "sub").mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rec = Recorder(tmp_path / "rec")
    run_trial({**TINY, "steps": 10}, report=rec)  # fit clears orphans before it starts
    assert not orphan.exists() and mine.exists() and other.exists()
    assert all(Path(p).name.startswith(f"dab-ckpt-{os.getpid()}-") for p in rec.handed)
