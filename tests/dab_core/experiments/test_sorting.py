"""The sorting family (paper 5.1): config validation, data, models, metric, learning."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from dab_core import DAB, run_trial
from dab_core.experiments import experiments, parse_config
from dab_core.experiments.sorting import DenseSorter, RNNSorter, SortingConfig, SortingTask

BASE: dict[str, Any] = {"experiment": "sorting", "model": "signum-dense", "seq_len": 4, "steps": 10}


def cfg(**kw: Any) -> SortingConfig:
    return SortingConfig.model_validate({**BASE, **kw})


def task(**kw: Any) -> SortingTask:
    torch.manual_seed(0)
    small = {
        "dense_hidden": [16, 16],
        "approximator_hidden": [8],
        "rnn_hidden": 12,
        "test_size": 50,
        "train_size": 0,
    }
    return SortingTask(cfg(**{**small, **kw}), torch.device("cpu"))


def test_family_is_registered_with_its_config() -> None:
    fam = experiments.lookup("sorting")
    assert fam.config_cls is SortingConfig
    parsed = parse_config(BASE)
    assert isinstance(parsed, SortingConfig)
    # Paper appendix 7.2, sorting column.
    assert (parsed.lr, parsed.batch_size, parsed.gamma) == (1e-4, 1024, 10.0)
    assert parsed.resolved_estimator == "dab" and parsed.resolved_activation == "tanh"
    elu = cfg(model="elu-dense")
    assert (elu.resolved_estimator, elu.resolved_activation) == ("identity", "elu")
    assert cfg(model="signum-rnn").resolved_grad_clip == 5.0 and parsed.resolved_grad_clip is None


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"model": "signum-dnese"}, "model", "Input should be 'elu-dense', 'signum-dense' or 'signum-rnn'"),
        ({"seq_len": 1}, "seq_len", "greater than or equal to 2"),
        ({"seq_len": "five"}, "seq_len", "valid integer"),
        ({"steps": 0}, "steps", "greater than or equal to 1"),
        ({"hard": "sgn"}, "hard", "unknown hard function 'sgn'; known: "),
        ({"ponder_steps": 3}, None, "ponder_steps applies to model 'signum-rnn' only"),
        ({"model": "elu-dense", "estimator": "dab"}, None, "model 'elu-dense' is the baseline"),
        ({"train_size": 100}, None, r"train_size \(100\) must be 0 or at least batch_size \(1024\)"),
        ({"hard": "sort_rowcol"}, None, "sort_rowcol needs at least 2 feature dimensions"),
        (
            {"hard": "topk", "hard_params": {"k": 8}},
            None,
            r"hard topk\(k=8, descending=True, reading='rowcol'\) at the bridge",
        ),
        # the field is in the ConfigError's fields (the next test), as for every family's bridge
        ({"hard_params": {"epsilon": 0.1}}, None, "unknown parameter 'epsilon'; accepts: eps"),
        ({"learning_rate": 0.1}, "learning_rate", "Extra inputs are not permitted"),
        ({"dense_hidden": [16, 0]}, "dense_hidden", "layer sizes must be integers >= 1"),
        ({"steps": 10**15}, "steps", "less than or equal to 100000000"),
        ({"batch_size": 2**21}, "batch_size", "less than or equal to 1048576"),
        ({"dense_hidden": [16, 10**6]}, "dense_hidden", r"at most 16,384 \(MAX_WIDTH\)"),
        ({"dense_hidden": [4] * 65}, "dense_hidden", "at most 64 items"),
    ],
)
def test_bad_configs_name_the_problem(overrides: dict[str, Any], field: str | None, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        cfg(**overrides)
    text = str(err.value)
    assert re.search(message, text), text
    if field is not None:
        assert err.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"ponder_steps": 3}, (("ponder_steps",), ("model",))),
        ({"model": "elu-dense", "estimator": "dab"}, (("estimator",), ("model",))),
        ({"train_size": 100}, (("train_size",), ("batch_size",))),
        ({"hard_params": {"epsilon": 0.1}}, (("hard_params", "epsilon"),)),
        ({"hard_params": {"eps": -1.0}}, (("hard_params", "eps"),)),
        ({"checkpoint_every": 7, "eval_every": 5}, (("checkpoint_every",), ("eval_every",))),
    ],
)
def test_rules_over_fields_name_them(overrides: dict[str, Any], fields: tuple[tuple[str, ...], ...]) -> None:
    from dab_core.config import ConfigError

    with pytest.raises(ValidationError) as err:
        cfg(**overrides)
    cause = (err.value.errors()[0].get("ctx") or {}).get("error")
    assert isinstance(cause, ConfigError) and cause.fields == fields


def test_ste_with_a_shape_changing_user_function_is_refused() -> None:
    from dab_core import hard_functions

    hard_functions.register("test_halve", out_shape=lambda s: (s[0] // 2,))(lambda x: x[:, ::2])
    try:
        assert cfg(hard="test_halve").hard == "test_halve"  # fine for dab
        with pytest.raises(
            ValidationError,
            match=r"'ste' needs a shape-preserving hard function, but test_halve\(\) maps feature shape \(256,\) to \(128,\)",
        ):
            cfg(hard="test_halve", estimator="ste")
    finally:
        hard_functions.remove("test_halve")


def test_labels_are_argsort_and_data_is_a_function_of_seed_and_step() -> None:
    t = task(train_size=0, batch_size=64)
    x, y = t.batch(7)
    assert torch.equal(x.gather(1, y), x.sort(dim=1).values)  # label t = index of t-th smallest
    assert ((x >= 0) & (x < 1)).all()
    x2, _ = task(train_size=0, batch_size=64).batch(7)
    assert torch.equal(x, x2)
    assert not torch.equal(x, t.batch(8)[0])
    assert not torch.equal(x, task(train_size=0, batch_size=64, seed=1).batch(7)[0])


def test_fixed_train_set_is_visited_in_epoch_permutations() -> None:
    t = task(train_size=40, batch_size=8)  # 5 steps an epoch
    assert t.train_x is not None
    epoch0 = torch.cat([t.batch(s)[0] for s in range(5)])
    epoch1 = torch.cat([t.batch(s)[0] for s in range(5, 10)])
    for e in (epoch0, epoch1):
        assert torch.equal(e.sort(dim=0).values, t.train_x.sort(dim=0).values)  # every row once
    assert not torch.equal(epoch0, epoch1)  # reshuffled
    assert torch.equal(t.batch(3)[0], task(train_size=40, batch_size=8).batch(3)[0])


def test_test_set_depends_on_seq_len_only() -> None:
    a, b = task(seed=0), task(seed=5, model="elu-dense")
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, a.test_x.argsort(dim=1))
    assert not torch.equal(a.test_x, task(seq_len=5).test_x[:, :4])


def test_models_and_shapes() -> None:
    dense = task().model
    assert isinstance(dense, DenseSorter) and isinstance(dense.bridge, DAB)
    assert dense(torch.rand(3, 4)).shape == (3, 4, 4) and dense.dab_loss is not None
    elu = task(model="elu-dense").model
    assert not any(isinstance(m, DAB) and m.approximator is not None for m in elu.modules())
    assert elu(torch.rand(3, 4)).shape == (3, 4, 4) and elu.dab_loss is None
    assert sum(p.numel() for p in elu.parameters()) < sum(p.numel() for p in dense.parameters())


def test_rnn_ponder_loop_calls_the_bridge_once_per_step_and_sums_losses() -> None:
    t = task(model="signum-rnn", ponder_steps=3)
    model = t.model
    assert isinstance(model, RNNSorter)
    losses: list[torch.Tensor] = []
    model.bridge.register_forward_hook(lambda m, i, o: losses.append(m.dab_loss))
    out = model(torch.rand(5, 4))
    assert out.shape == (5, 4, 4)
    assert len(losses) == 4  # the readout, then one per ponder step
    assert torch.allclose(model.dab_loss, torch.stack(losses).sum())  # type: ignore[arg-type]


def test_cosine_schedule_anneals_the_optimiser_lr_to_zero() -> None:
    t = task(lr=1e-3, lr_schedule="cosine", steps=10)
    assert [round(t.lr_at(s), 8) for s in (0, 5, 10)] == [1e-3, 5e-4, 0.0]
    seen = []
    for step in range(10):
        t.train_step(step)
        seen.append(t.optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([t.lr_at(s) for s in range(10)])
    assert seen[0] == 1e-3 and seen[-1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.9)))
    constant = task(lr=1e-3)
    constant.train_step(0)
    assert constant.optimizer.param_groups[0]["lr"] == 1e-3 == constant.lr_at(9)


def test_all_or_none_metric() -> None:
    t = task()

    class Oracle(torch.nn.Module):
        def __init__(self, flip: int | None) -> None:
            super().__init__()
            self.flip = flip

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x.argsort(dim=1)
            if self.flip is not None:  # swap the labels of the first two positions
                y[: self.flip, [0, 1]] = y[: self.flip, [1, 0]]
            return torch.nn.functional.one_hot(y, 4).float()

    t.model = Oracle(None)
    assert t.evaluate() == {"test_all_or_none": 1.0, "test_per_position": 1.0}
    t.model = Oracle(10)  # 10 of 50 sequences get two positions wrong
    m = t.evaluate()
    assert m["test_all_or_none"] == pytest.approx(40 / 50)
    assert m["test_per_position"] == pytest.approx(1 - 20 / 200)


def test_signum_dense_t3_learns_well_above_chance() -> None:
    """Chance all-or-none for T=3 is 1/6; a few hundred steps reach far beyond it."""
    config = {
        "experiment": "sorting",
        "model": "signum-dense",
        "seq_len": 3,
        "steps": 300,
        "eval_every": 300,
        "batch_size": 256,
        "lr": 1e-3,
        "train_size": 0,
        "test_size": 2000,
        "seed": 0,
        "num_threads": 1,
    }
    final = run_trial(config)
    assert final["test_all_or_none"] > 0.6, final
    assert final["test_per_position"] > 0.8, final
    assert final["dab_loss"] > 0  # the approximator is being trained, not skipped


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("model", ["signum-dense", "signum-rnn"])
def test_training_steps_make_no_host_sync_on_cuda(model: str) -> None:
    """Batches are made on the device and nothing is read back between reports."""
    t = task(
        model=model,
        device="cuda",
        train_size=4096,
        batch_size=512,
        ponder_steps=2 if model == "signum-rnn" else 0,
    )
    t.train_step(0)  # first-call allocations and lazy init may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 12):  # crosses an epoch boundary (8 steps an epoch)
            t.train_step(step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
