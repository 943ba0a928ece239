"""A cell's seeds trained together: R replicates of one configuration as ONE stacked model.

`fit_stacked` has the contract of `dab_core.training.fit_group` (the same argument checks, the
same ``report(per_member_metrics, checkpoint_dir)`` calls at the same steps with the same
metric keys, the same checkpoint layout), but it does not step the members one after the
other: their parameters are stacked into leaf tensors of shape ``(R, ...)`` and one step runs
``torch.func.vmap`` over ``torch.func.functional_call`` of the family's own loss, so R small
models cost about the kernel launches of one. Each member keeps what makes it a replicate:

* its initialisation: every member's task is built by `build_task`, which seeds torch with the
  member's seed, so the stacked slice ``i`` starts as the lone run's parameters;
* its data order: ``SortingTask.batch(step)`` is a function of (seed, step) only, so each
  member's batch comes from its own task and the batches are stacked to ``(R, B, T)``;
* its optimiser: Adam is element-wise, so one Adam over the stacked leaves equals R Adams
  with the same hyperparameters; the members' Adam states (step, moments) are stacked in and
  sliced back out;
* its gradient: the backward pass runs on the *sum* of the member losses, and member ``i``'s
  loss depends on slice ``i`` only, so each slice receives its own gradient; a grad-norm clip
  is computed per member over that member's slices (never one norm over all members);
* its RNG: the dense sorting step draws nothing from the global RNG (``vmap`` runs with
  ``randomness="error"``, so a draw inside the stacked model raises, and the global state is
  checked unchanged after each interval); evaluation, checkpoints and artifacts run under each
  member's own saved RNG state, as in `fit_group`, so a checkpoint holds the member's own.

At report points each member's slices are copied back into its task's model and Adam state,
so ``task.evaluate()``, `save_checkpoint` and the artifacts run unchanged: a group checkpointed
by `fit_stacked` resumes with `fit_group` and vice versa. Results equal R separate runs within
float tolerance, not bit for bit: the batched kernels sum in another order than the lone ones
(tests/dab_core/test_stacked.py states the tolerance). What it saves is per-step overhead
(kernel launches, Python), not arithmetic: bench/stacked_seeds.py measures where it pays.

What is stacked, and what is refused (a ValueError before any training, naming why): the
sorting family's dense models only (``signum-dense``, ``elu-dense``). ``signum-rnn`` is refused
(``vmap`` has no batching rule for ``nn.LSTM``'s ``aten::lstm``); so are
estimators without a traceable form (only ``dab`` and ``ste`` have one, under
`traceable_bridges`; the plain activations ``elu``, ``tanh``, ``identity`` need none), hard
functions not checked under ``vmap`` or stochastic ones (``bernoulli`` draws from the global
RNG inside the step, which one stacked call cannot give each member its own of), other
families, and members that differ in anything but ``seed`` (one stacked model has one
architecture, one learning rate, one schedule).

Choices made here (the paper says nothing about how replicates are run):

* ``samples_per_s`` of a member is its samples over its share of the interval's training time
  (the wall time divided by R). In `fit_group` each member reports its samples over its own
  training time, and the members' times add up to the wall time; here too, so the figures of
  the two read alike and a stacked member's figure shows the speed-up per member.
* The learning rate of a step is ``SortingTask.lr_at(step)`` of the first member (the members
  share lr, schedule and steps, so it is every member's).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from dab_core.config import TrialConfig
from dab_core.estimators import estimators, traceable_bridges
from dab_core.experiments.sorting import SortingConfig, SortingTask
from dab_core.hard import hard_functions
from dab_core.training import (
    GroupReport,
    build_task,
    has_checkpoint,
    load_checkpoint,
    member_dir,
    parse_group,
    remove_orphan_checkpoint_dirs,
    report_group_checkpoint,
)

# The RNG capture and restore `fit_group` uses (the same functions, so the two keep the same
# RNG contents in their checkpoints).
from dab_core.training import _rng_state as rng_state
from dab_core.training import _set_rng_state as set_rng_state

#: The sorting models a stacked run supports: the dense ones (``signum-rnn``'s ``nn.LSTM``
#: does not run under ``vmap`` over stacked weights).
STACKABLE_MODELS = ("signum-dense", "elu-dense")
#: Estimators with a form that runs under ``vmap``: ``dab`` and ``ste`` through
#: `traceable_bridges`, the plain activations as they are.
TRACEABLE_ESTIMATORS = ("dab", "ste", "elu", "tanh", "identity")
#: Hard functions checked under ``vmap`` of the stacked dense sorter (deterministic ones).
VMAP_HARD_FUNCTIONS = ("signum", "binary", "sort", "topk", "kmeans")


def check_stackable(configs: Sequence[TrialConfig]) -> None:
    """Raise ValueError, naming what is refused and why, unless `configs` can train stacked."""
    for cfg in configs:
        if cfg.experiment != "sorting":
            raise ValueError(
                f"fit_stacked supports the sorting family's dense models only, not experiment "
                f"{cfg.experiment!r} (use fit_group)"
            )
        assert isinstance(cfg, SortingConfig)
        model = cfg.model
        if model not in STACKABLE_MODELS:
            raise ValueError(
                f"fit_stacked cannot stack model {model!r}: "
                + (
                    "torch.func.vmap has no batching rule for its nn.LSTM (aten::lstm), so it "
                    "cannot run over stacked LSTM weights"
                    if model == "signum-rnn"
                    else "not a dense sorting model"
                )
                + f"; stackable: {', '.join(STACKABLE_MODELS)} (use fit_group)"
            )
        est = cfg.resolved_estimator
        if est not in TRACEABLE_ESTIMATORS:
            raise ValueError(
                f"fit_stacked cannot stack estimator {est!r}: it has no traceable form that runs "
                f"under torch.func.vmap; stackable: {', '.join(TRACEABLE_ESTIMATORS)} (use fit_group)"
            )
        if estimators.get(est).exact_forward:  # the hard function runs in the stacked step
            hard = hard_functions.lookup(cfg.hard)
            if hard.stochastic:
                raise ValueError(
                    f"fit_stacked cannot stack hard function {cfg.hard!r}: it draws from the global "
                    "RNG inside the step, and one stacked call cannot give each member its own "
                    "RNG (use fit_group)"
                )
            if cfg.hard not in VMAP_HARD_FUNCTIONS:
                raise ValueError(
                    f"fit_stacked cannot stack hard function {cfg.hard!r}: not checked under "
                    f"torch.func.vmap; stackable: {', '.join(VMAP_HARD_FUNCTIONS)} (use fit_group)"
                )
    first = configs[0].model_dump(exclude={"seed"})
    for cfg in configs[1:]:
        other = cfg.model_dump(exclude={"seed"})
        differ = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
        if differ:
            raise ValueError(
                "fit_stacked trains the seeds of one configuration: its members may differ in "
                f"seed only, but these differ: {', '.join(differ)} (use fit_group)"
            )


class _MemberLoss(nn.Module):
    """``task.loss(x, y)`` as a module whose only submodule is ``task.model``: under
    ``functional_call`` its tensors are swapped for one member's slices of the stacked ones."""

    def __init__(self, task: SortingTask) -> None:
        super().__init__()
        self.model = task.model
        self._loss = task.loss  # a bound method, not a submodule

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        loss, ce, dab = self._loss(x, y)
        out = {"train_loss": loss, "train_ce": ce}  # the keys and order of SortingTask.train_step
        if dab is not None:
            out["dab_loss"] = dab
        return out


def _is_moment(value: Any, like: torch.Tensor) -> bool:
    """An optimiser state entry shaped like its parameter (Adam's moments), not its step."""
    return isinstance(value, torch.Tensor) and value.shape == like.shape


class StackedTasks:
    """R sorting tasks of one configuration (built, possibly resumed) as one stacked model.

    `train_step` does one optimiser step of every member and returns each training loss as an
    ``(R,)`` tensor; `sync_to_tasks` writes the stacked parameters and Adam state back into the
    members' own models and optimisers (before their evaluation or checkpoint).
    """

    def __init__(self, tasks: Sequence[SortingTask]) -> None:
        if not tasks:
            raise ValueError("StackedTasks needs at least one task")
        self.tasks = list(tasks)
        self.size = len(self.tasks)
        self.config: SortingConfig = self.tasks[0].config
        self._members = [_MemberLoss(t) for t in self.tasks]
        self._template = self._members[0]
        with torch.no_grad():
            self.params = {
                name: torch.stack([dict(m.named_parameters())[name].detach() for m in self._members])
                .clone()
                .requires_grad_(True)
                for name, _ in self._template.named_parameters()
            }
            self.buffers = {
                name: torch.stack([dict(m.named_buffers())[name] for m in self._members]).clone()
                for name, _ in self._template.named_buffers()
            }
        self.optimizer = self._stacked_optimizer()
        self.grad_clip = self.tasks[0].grad_clip
        self._loss = vmap(self._member_loss, randomness="error")

    # -- the optimiser -------------------------------------------------------------------

    def _member_params(self, i: int) -> list[torch.Tensor]:
        params = dict(self._members[i].named_parameters())
        return [params[name] for name in self.params]

    def _stacked_optimizer(self) -> torch.optim.Optimizer:
        opts = [t.optimizer for t in self.tasks]
        for opt in opts:
            if not isinstance(opt, torch.optim.Adam) or len(opt.param_groups) != 1:
                raise ValueError(
                    "fit_stacked stacks one torch.optim.Adam with one parameter group per member "
                    f"(element-wise, so one over stacked tensors equals R), got {type(opt).__name__}"
                )
        groups = [{k: v for k, v in o.param_groups[0].items() if k != "params"} for o in opts]
        if any(g != groups[0] for g in groups[1:]):
            raise ValueError(f"fit_stacked: the members' optimiser settings differ: {groups}")
        for i, opt in enumerate(opts):
            if [id(p) for p in opt.param_groups[0]["params"]] != [id(p) for p in self._member_params(i)]:
                raise ValueError("fit_stacked: a member's optimiser does not hold its model's parameters")
        stacked = type(opts[0])(list(self.params.values()), lr=groups[0]["lr"])
        stacked.param_groups[0].update(groups[0])
        # The members' Adam states (empty on a fresh start), stacked: moments along dim 0, the
        # step (a scalar, equal across members that are at one step) taken once.
        for j, (name, leaf) in enumerate(self.params.items()):
            states = [opt.state.get(self._member_params(i)[j]) or {} for i, opt in enumerate(opts)]
            if all(not s for s in states):
                continue
            if any(not s for s in states):
                raise ValueError(f"fit_stacked: some members have optimiser state for {name!r}, others not")
            entry: dict[str, Any] = {}
            for key, value in states[0].items():
                values = [s[key] for s in states]
                if _is_moment(value, leaf[0]):
                    entry[key] = torch.stack(values).clone()
                else:
                    if any(not torch.equal(torch.as_tensor(v), torch.as_tensor(value)) for v in values):
                        raise ValueError(f"fit_stacked: the members' optimiser {key!r} differ for {name!r}")
                    entry[key] = value.clone() if isinstance(value, torch.Tensor) else value
            stacked.state[leaf] = entry
        return stacked

    # -- one step ------------------------------------------------------------------------

    def _member_loss(
        self,
        params: dict[str, torch.Tensor],
        buffers: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        return functional_call(self._template, (params, buffers), (x, y))  # type: ignore[no-any-return]

    def _clip(self, max_norm: float) -> None:
        """`nn.utils.clip_grad_norm_` of each member over its own slices."""
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        if not grads:
            return
        norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), 2, dim=1) for g in grads])  # (P, R)
        total = torch.linalg.vector_norm(norms, 2, dim=0)  # (R,): one norm per member
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for g in grads:
            g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        """One optimiser step of every member; `step` counts from 0. Returns ``(R,)`` tensors."""
        lead = self.tasks[0]
        if self.config.lr_schedule != "constant":
            for group in self.optimizer.param_groups:
                group["lr"] = lead.lr_at(step)
        self._template.train()
        xs, ys = zip(*(t.batch(step) for t in self.tasks), strict=True)
        with traceable_bridges():
            out = self._loss(self.params, self.buffers, torch.stack(xs), torch.stack(ys))
        self._drop_side_outputs()
        self.optimizer.zero_grad(set_to_none=True)
        out["train_loss"].sum().backward()  # member i's loss reaches slice i only
        if self.grad_clip is not None:
            self._clip(self.grad_clip)
        self.optimizer.step()
        return {key: value.detach() for key, value in out.items()}

    def _drop_side_outputs(self) -> None:
        """The model and its bridges keep their last DAB loss as an attribute; under ``vmap``
        that is a batched tensor that must not outlive the call (it also holds the graph)."""
        for module in self._template.modules():
            if getattr(module, "dab_loss", None) is not None:
                setattr(module, "dab_loss", None)  # noqa: B010 (any module with one)

    # -- back to the members -------------------------------------------------------------

    @torch.no_grad()
    def sync_to_tasks(self) -> None:
        """Copy each member's slices into its task's model and Adam state (and the lr)."""
        group = {k: v for k, v in self.optimizer.param_groups[0].items() if k != "params"}
        for i, (member, task) in enumerate(zip(self._members, self.tasks, strict=True)):
            params = dict(member.named_parameters())
            buffers = dict(member.named_buffers())
            opt: torch.optim.Optimizer = task.optimizer
            for name, leaf in self.params.items():
                params[name].copy_(leaf[i])
                state = self.optimizer.state.get(leaf)
                if state:
                    opt.state[params[name]] = {
                        key: (
                            value[i].clone()
                            if _is_moment(value, leaf)
                            else value.clone()
                            if isinstance(value, torch.Tensor)
                            else value
                        )
                        for key, value in state.items()
                    }
            for name, stacked in self.buffers.items():
                buffers[name].copy_(stacked[i])
            opt.param_groups[0].update(group)


def fit_stacked(
    configs: Sequence[Mapping[str, Any]],
    report: GroupReport | None = None,
    checkpoint_dir: str | None = None,
) -> list[dict[str, float]]:
    """Train the seeds of one configuration as one stacked model; the contract of `fit_group`.

    The members must share ``steps``, ``eval_every`` and ``checkpoint_every`` (ValueError
    otherwise, as `fit_group`), and beyond that differ in ``seed`` only, on a stackable model
    (`check_stackable`: ValueError naming what is refused, before any training). Reports are
    ``report(per_member_metrics, checkpoint_dir_or_None)`` every ``eval_every`` steps and at the
    end, with a checkpoint directory every ``checkpoint_every`` steps and at the end, holding
    each member's checkpoint in ``member-<i>/`` (`member_dir`, artifacts in the last); it is
    temporary and removed once `report` returns. `checkpoint_dir` resumes a group checkpoint
    written by `fit_stacked` or `fit_group`.

    Returns:
        Each member's last metrics (a group resumed from its final checkpoint trains no more
        and returns fresh evaluations).
    """
    parsed = parse_group(configs, "fit_stacked")
    check_stackable(parsed)
    if report is not None:
        remove_orphan_checkpoint_dirs()
    tasks: list[SortingTask] = []
    starts: list[int] = []
    rngs: list[dict[str, Any]] = []
    for i, cfg in enumerate(parsed):
        task = build_task(cfg)  # seeds the global RNG with the member's seed, then builds
        assert isinstance(task, SortingTask)  # check_stackable let sorting configs only through
        own = member_dir(checkpoint_dir, i) if checkpoint_dir else None
        starts.append(load_checkpoint(own, task) if own is not None and has_checkpoint(own) else 0)
        tasks.append(task)
        rngs.append(rng_state())
    if len(set(starts)) > 1:
        raise ValueError(f"a group checkpoint whose members are at different steps: {starts}")
    cfg0, step = parsed[0], starts[0]

    def evaluate_all() -> list[dict[str, float]]:
        out = []
        for i, task in enumerate(tasks):
            set_rng_state(rngs[i])  # as fit_group: each member under its own RNG state
            out.append({"step": float(step), **task.evaluate()})
            rngs[i] = rng_state()
        return out

    if step >= cfg0.steps:  # resumed from the final checkpoint: nothing left to train
        return evaluate_all()
    stack = StackedTasks(tasks)
    batch = tasks[0].samples_per_step()
    metrics: list[dict[str, float]] = []
    while step < cfg0.steps:
        sums: dict[str, torch.Tensor] = {}
        count = 0
        before = rng_state()
        began = time.perf_counter()
        while True:
            for key, value in stack.train_step(step).items():
                sums[key] = sums[key] + value if key in sums else value.clone()
            count += 1
            step += 1
            if step % cfg0.eval_every == 0 or step == cfg0.steps:
                break
        # per member as `_Stepper.advance` averages: float(sum) / count (one host sync)
        train = {key: [float(v) / count for v in total.tolist()] for key, total in sums.items()}
        seconds = time.perf_counter() - began
        _check_rng_untouched(before)
        stack.sync_to_tasks()
        metrics = evaluate_all()
        metrics = [  # the keys in _Stepper.advance's order: step, training losses, evaluation
            {"step": m["step"], **{key: values[i] for key, values in train.items()}, **m}
            for i, m in enumerate(metrics)
        ]
        if batch:  # a member's samples over its share of the interval's training time
            for m in metrics:
                m["samples_per_s"] = count * batch / max(seconds / len(tasks), 1e-9)
        if report is None:
            continue
        if not (step % cfg0.checkpoint_interval == 0 or step == cfg0.steps):
            report(metrics, None)
            continue
        report_group_checkpoint(report, metrics, tasks, step, rngs)
    return metrics


def _check_rng_untouched(before: Mapping[str, Any]) -> None:
    """The stacked step must not draw from the global RNG: one draw there would be shared by
    all members (or, under ``vmap``, refused), so the members would no longer be their lone runs."""
    now = rng_state()
    same = torch.equal(now["torch"], before["torch"]) and all(
        torch.equal(a, b) for a, b in zip(now.get("cuda", []), before.get("cuda", []), strict=True)
    )
    if not same:
        raise RuntimeError("fit_stacked: the stacked training step drew from the global RNG")


__all__ = ["STACKABLE_MODELS", "TRACEABLE_ESTIMATORS", "StackedTasks", "check_stackable", "fit_stacked"]
