"""Compiled sorting steps (`compile`): which trials compile, refusals, equality with eager,
exact resume, and the compile time reported once and left out of samples/s."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from dab_core import run_trial
from dab_core.experiments.sorting import COMPILE_MIN_STEPS, SortingConfig, SortingTask

TINY: dict[str, Any] = {
    "experiment": "sorting",
    "model": "signum-dense",
    "seq_len": 4,
    "steps": 20,
    "eval_every": 10,
    "batch_size": 32,
    "dense_hidden": [16, 16],
    "approximator_hidden": [8],
    "test_size": 64,
    "train_size": 0,
    "num_threads": 1,
    "device": "cpu",
}
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def cfg(**kw: Any) -> SortingConfig:
    return SortingConfig.model_validate({**TINY, **kw})


def test_auto_compiles_only_what_was_measured_faster() -> None:
    long = COMPILE_MIN_STEPS
    assert cfg(steps=long).compile_mode(CPU) == "default"
    assert cfg(steps=long - 1).compile_mode(CPU) == "off"  # the tests' short trials stay eager
    assert cfg(steps=long, model="elu-dense").compile_mode(CPU) == "default"
    assert cfg(steps=long).compile_mode(CUDA) == "off"  # not measured on a GPU: ask for it
    assert cfg(steps=long, model="signum-rnn").compile_mode(CPU) == "off"
    assert cfg(steps=long, estimator="perturbed").compile_mode(CPU) == "off"
    assert cfg(steps=long, hard="binary").compile_mode(CPU) == "off"
    assert cfg(compile="reduce-overhead").compile_mode(CPU) == "reduce-overhead"
    assert cfg(steps=long, compile="off").compile_mode(CPU) == "off"


def test_auto_stays_eager_on_a_node_without_a_cxx_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    from dab_core.experiments import sorting

    sorting._has_cxx.cache_clear()
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CXX", raising=False)
    try:
        assert cfg(steps=COMPILE_MIN_STEPS).compile_mode(CPU) == "off"
    finally:
        sorting._has_cxx.cache_clear()


@pytest.mark.parametrize(
    ("kw", "fields"),
    [
        ({"model": "signum-rnn", "rnn_hidden": 8}, ("compile", "model")),
        ({"estimator": "perturbed"}, ("compile", "estimator")),
    ],
)
def test_compile_is_refused_where_it_cannot_run_whole(kw: dict[str, Any], fields: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError, match="compile") as e:
        cfg(compile="default", **kw)
    err = e.value.errors()[0]["ctx"]["error"]
    assert err.fields == tuple((f,) for f in fields)


def _losses(n: int, **kw: Any) -> tuple[list[float], SortingTask]:
    torch.manual_seed(0)
    task = SortingTask(cfg(**kw), CPU)
    return [float(task.train_step(s)["train_loss"]) for s in range(n)], task


@pytest.mark.slow
@pytest.mark.parametrize("kw", [{}, {"estimator": "ste"}, {"model": "elu-dense"}])
def test_compiled_steps_equal_eager_ones(kw: dict[str, Any]) -> None:
    eager, a = _losses(12, **kw)
    compiled, b = _losses(12, compile="default", **kw)
    assert b.compiled and not a.compiled
    # fullgraph=True: a graph break would have raised at the first step
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=1e-5, atol=1e-5)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
    assert eager[0] > eager[-1]  # it learns at all, so equal losses say something


@pytest.mark.slow
def test_compiled_trial_reports_compile_time_once_and_resumes_exactly() -> None:
    reports: list[dict[str, float]] = []
    keep = Path(tempfile.mkdtemp())

    def report(metrics: dict[str, float], ckpt: str | None) -> None:
        reports.append(metrics)
        if ckpt is not None and metrics["step"] == 10:
            shutil.copytree(ckpt, keep, dirs_exist_ok=True)

    config = {**TINY, "compile": "default"}
    whole = run_trial(config, report)
    assert [m["step"] for m in reports] == [10, 20]
    assert reports[0]["compile_s"] > 0 and "compile_s" not in reports[1]
    assert reports[0]["samples_per_s"] > 0 and reports[1]["samples_per_s"] > 0

    resumed_reports: list[dict[str, float]] = []
    resumed = run_trial(config, lambda m, c: resumed_reports.append(m), str(keep))
    assert [m["step"] for m in resumed_reports] == [20]
    assert resumed_reports[0]["compile_s"] > 0  # a new process compiles again, and says so
    # the resumed half is the uninterrupted half: same losses, same evaluation
    assert resumed["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-6)
    assert resumed["test_all_or_none"] == whole["test_all_or_none"]
    assert resumed["test_per_position"] == whole["test_per_position"]
    shutil.rmtree(keep)
