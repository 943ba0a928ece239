"""`fit_stacked`: a cell's seeds trained as one stacked model equal their lone runs.

Tolerance: parameters, Adam moments and reported losses are compared with
``torch.testing.assert_close(atol=1e-5, rtol=1e-5)``. On this project's CPU the stacked run is
bit-identical to the lone runs at these tiny sizes, but a batched kernel (``bmm`` over the
stacked weights, a CUDA GEMM, another BLAS) may sum in another order than the lone ``mm``: at
the paper's size (T=10, batch 1024, 128-128-256, grad clip 1) the parameters after 30 steps
differ by at most 4e-8 here, and Adam's bounded steps (about lr = 1e-4 each at most) keep such
rounding far under 1e-5. A wrong member gradient, clip or learning rate moves parameters
by far more (the tests below check that each of those cases does). Evaluation accuracies are
counts over 64 test sequences and are compared exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from dab_core import parse_config, run_trial
from dab_core.stacked import StackedTasks, fit_stacked
from dab_core.training import CHECKPOINT_FILE, build_task, fit_group, member_dir
from tests.dab_core.experiments.test_classification import TINY as TINY_CLASSIFICATION
from tests.dab_core.test_fit_group import GroupRecorder
from tests.dab_core.test_training import Recorder

TOL = {"atol": 1e-5, "rtol": 1e-5}
SEEDS = (3, 11, 0)
BASE: dict[str, Any] = {
    "experiment": "sorting",
    "model": "signum-dense",
    "seq_len": 4,
    "steps": 30,
    "eval_every": 10,
    "batch_size": 32,
    "train_size": 0,
    "test_size": 64,
    "dense_hidden": [16, 16],
    "approximator_hidden": [16],
    "num_threads": 1,
}


def configs(**overrides: Any) -> list[dict[str, Any]]:
    return [{**BASE, **overrides, "seed": s} for s in SEEDS]


def payload(directory: Path) -> dict[str, Any]:
    return torch.load(Path(directory) / CHECKPOINT_FILE, weights_only=False)  # type: ignore[no-any-return]


def assert_state_close(a: Any, b: Any) -> None:
    """Tensors within `TOL`, everything else (steps, lr, betas, keys) equal."""
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, **TOL)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_state_close(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_state_close(x, y)
    else:
        assert a == b


def assert_metrics_close(a: dict[str, float], b: dict[str, float]) -> None:
    assert a.keys() == b.keys()  # the same keys in the same order
    assert list(a) == list(b)
    for key in a:
        if key == "samples_per_s":
            assert a[key] > 0 and b[key] > 0
        elif key.startswith("test_") or key == "step":
            assert a[key] == b[key], key
        else:
            assert a[key] == pytest.approx(b[key], rel=TOL["rtol"], abs=TOL["atol"]), key


def assert_equals_lone_runs(tmp_path: Path, cfgs: list[dict[str, Any]], stacked: GroupRecorder) -> None:
    steps = cfgs[0]["steps"]
    for i, cfg in enumerate(cfgs):
        lone = Recorder(tmp_path / f"lone-{i}")
        run_trial(cfg, report=lone)
        assert len(lone.metrics) == len(stacked.metrics)
        for ms, m in zip(stacked.metrics, lone.metrics, strict=True):
            assert_metrics_close(ms[i], m)
        assert sorted(lone.checkpoints) == sorted(stacked.checkpoints)
        mine, theirs = payload(member_dir(stacked.checkpoints[steps], i)), payload(lone.checkpoints[steps])
        assert mine["step"] == theirs["step"] == steps
        assert mine["config"] == theirs["config"]
        assert_state_close(mine["state"], theirs["state"])  # model and Adam state (moments, step, lr)
        assert torch.equal(mine["rng"]["torch"], theirs["rng"]["torch"])  # the member's own RNG
        assert (member_dir(stacked.checkpoints[steps], i) / "artifacts").is_dir()
    # the seeds really differ (the comparisons would pass vacuously otherwise)
    last = stacked.metrics[-1]
    assert last[0]["train_loss"] != last[1]["train_loss"] != last[2]["train_loss"]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"train_size": 96},  # a fixed set, 3 batches an epoch: the epoch permutations matter
        {"estimator": "ste"},
        {"model": "elu-dense"},  # (c): no hard function, no DAB loss
    ],
    ids=["dab-fresh", "dab-fixed-set", "ste", "elu-dense"],
)
def test_stacked_equals_lone_runs(tmp_path: Path, overrides: dict[str, Any]) -> None:
    cfgs = configs(**overrides)
    rec = GroupRecorder(tmp_path / "stacked")
    finals = fit_stacked(cfgs, report=rec)
    assert [int(ms[0]["step"]) for ms in rec.metrics] == [10, 20, 30]
    assert sorted(rec.checkpoints) == [10, 20, 30]
    assert finals == rec.metrics[-1]
    assert_equals_lone_runs(tmp_path, cfgs, rec)


def test_stacked_clips_each_member_by_its_own_norm_under_a_cosine_schedule(tmp_path: Path) -> None:
    # lr 1e-2 and a clip of 0.5: the clip is active (checked below), and the members' gradient
    # norms differ, so one norm over all members would give other parameters.
    cfgs = configs(grad_clip=0.5, lr_schedule="cosine", lr=1e-2, train_size=96)
    rec = GroupRecorder(tmp_path / "stacked")
    fit_stacked(cfgs, report=rec)
    assert_equals_lone_runs(tmp_path, cfgs, rec)
    unclipped = Recorder(tmp_path / "unclipped")
    run_trial({**cfgs[0], "grad_clip": None}, report=unclipped)
    clipped = payload(member_dir(rec.checkpoints[30], 0))["state"]["model"]
    plain = payload(unclipped.checkpoints[30])["state"]["model"]
    assert any((clipped[k] - plain[k]).abs().max() > 1e-3 for k in clipped)


def test_the_clip_is_each_members_own() -> None:
    """`StackedTasks._clip` against `clip_grad_norm_` of each member alone, on gradients whose
    norms differ by 1000 between members (one norm over all would clip the small ones too)."""
    stack = StackedTasks([build_task(parse_config(c)) for c in configs(grad_clip=0.5)])
    scale = torch.tensor([1.0, 10.0, 0.01])
    for p in stack.params.values():
        p.grad = torch.randn_like(p) * scale.view(-1, *[1] * (p.dim() - 1))
    raw = {k: p.grad.clone() for k, p in stack.params.items() if p.grad is not None}
    stack._clip(0.5)
    for i in range(len(SEEDS)):
        alone = [torch.nn.Parameter(g[i].clone()) for g in raw.values()]
        for p in alone:
            p.grad = p.detach().clone()
        torch.nn.utils.clip_grad_norm_(alone, 0.5)
        for k, p in zip(raw, alone, strict=True):
            torch.testing.assert_close(stack.params[k].grad[i], p.grad, **TOL)  # type: ignore[index]
    assert torch.equal(stack.params[next(iter(raw))].grad[2], raw[next(iter(raw))][2])  # not clipped


def test_stacked_resumes_its_own_checkpoint_exactly(tmp_path: Path) -> None:
    cfgs = configs(train_size=96)
    whole = GroupRecorder(tmp_path / "whole")
    fit_stacked(cfgs, report=whole)
    cut = GroupRecorder(tmp_path / "cut", stop_at=10)
    with pytest.raises(KeyboardInterrupt):
        fit_stacked(cfgs, report=cut)
    rest = GroupRecorder(tmp_path / "rest")
    fit_stacked(cfgs, report=rest, checkpoint_dir=str(cut.checkpoints[10]))
    assert [int(ms[0]["step"]) for ms in rest.metrics] == [20, 30]  # continues, not from 0
    for ms_rest, ms_whole in zip(rest.metrics, whole.metrics[1:], strict=True):
        for a, b in zip(ms_rest, ms_whole, strict=True):
            assert_metrics_close(a, b)
    for i in range(len(cfgs)):
        a, b = payload(member_dir(rest.checkpoints[30], i)), payload(member_dir(whole.checkpoints[30], i))
        assert_state_close(a["state"], b["state"])
        assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    again = GroupRecorder(tmp_path / "again")
    finals = fit_stacked(cfgs, report=again, checkpoint_dir=str(rest.checkpoints[30]))
    assert again.metrics == [] and [m["step"] for m in finals] == [30.0] * 3  # trains no more
    assert [m["test_all_or_none"] for m in finals] == [m["test_all_or_none"] for m in whole.metrics[-1]]


@pytest.mark.parametrize("first", ["fit_group", "fit_stacked"])
def test_group_and_stacked_resume_each_other(tmp_path: Path, first: str) -> None:
    cfgs = configs(train_size=96, lr_schedule="cosine", grad_clip=1.0)
    then = fit_stacked if first == "fit_group" else fit_group
    cut = GroupRecorder(tmp_path / "cut", stop_at=20)
    with pytest.raises(KeyboardInterrupt):
        (fit_group if first == "fit_group" else fit_stacked)(cfgs, report=cut)
    rest = GroupRecorder(tmp_path / "rest")
    then(cfgs, report=rest, checkpoint_dir=str(cut.checkpoints[20]))
    assert [int(ms[0]["step"]) for ms in rest.metrics] == [30]
    whole = GroupRecorder(tmp_path / "whole")
    fit_group(cfgs, report=whole)
    for a, b in zip(rest.metrics[-1], whole.metrics[-1], strict=True):
        assert_metrics_close(a, b)
    for i in range(len(cfgs)):
        assert_state_close(
            payload(member_dir(rest.checkpoints[30], i))["state"],
            payload(member_dir(whole.checkpoints[30], i))["state"],
        )


def _never(*_: Any) -> None:
    raise AssertionError("report called: training started before the refusal")


@pytest.mark.parametrize(
    ("cfgs", "match"),
    [
        ([{**BASE, "model": "signum-rnn", "rnn_hidden": 8, "seed": s} for s in SEEDS], "nn.LSTM"),
        ([{**BASE, "seed": 0}, {**BASE, "seed": 1, "lr": 1e-3}], "seed only.*lr"),
        ([{**BASE, "seed": 0}, {**BASE, "seed": 1, "grad_clip": 1.0}], "seed only.*grad_clip"),
        (configs(estimator="perturbed"), "estimator 'perturbed'.*traceable"),
        (configs(hard="bernoulli", estimator="dab"), "hard function 'bernoulli'.*RNG"),
        ([{**TINY_CLASSIFICATION, "seed": s} for s in SEEDS], "experiment 'classification'"),
        ([{**BASE, "seed": 0}, {**BASE, "seed": 1, "steps": 40}], "share steps"),
    ],
    ids=["signum-rnn", "lr-differs", "clip-differs", "perturbed", "bernoulli", "classification", "steps"],
)
def test_stacked_refuses_what_it_cannot_stack(cfgs: list[dict[str, Any]], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit_stacked(cfgs, report=_never)


def test_stacked_needs_a_config() -> None:
    with pytest.raises(ValueError, match="at least one"):
        fit_stacked([])
