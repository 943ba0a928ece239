"""Sequence sorting (paper section 5.1, Table 1 and Figure 3).

Data as the authors made it: sequences x ~ U(0, 1)^T, labels ``argsort(x)`` (position t's
label is the index of the t-th smallest element). Loss: cross-entropy summed over the T
positions plus the DAB loss (gamma times the per-sample distance), averaged over the batch.
Metric: all-or-none test accuracy (the paper's; a sequence counts only if every position is
right) and per-position accuracy, on a held-out set.

Choices the paper leaves open, and why (also in docs/sorting.md):

* Signum-Dense is the authors' public demo: T -> 128 -> 128 -> 256 with Tanh, the bridge,
  then a linear layer to T*T logits; approximator 256 -> 128 -> 128 -> 256 with Tanh.
* ELU-Dense is the same network with ELU hidden activations and no hard function (the bridge
  slot holds the identity): only the non-linearity differs, as in the paper's comparison.
* Signum-RNN ("LSTM (gradclip 5) + Dense(256)"): an LSTM (hidden 256) reads the sequence one
  value per step; its final state goes through Dense(256) and Tanh into the bridge. Each ponder
  step feeds the bridge's output back into an LSTM cell with no new input, then through the
  same Dense and bridge (one approximator, shared); the last bridge output feeds the T*T head.
  The DAB losses of all bridge calls are summed.
* The test set depends on T only (not the seed): every replicate and model of one T is scored
  on the same sequences. Default size 10,000 (the authors used 400,000; 10,000 gives a
  standard error under 0.3 points at the accuracies of Table 1).
* ``train_size`` > 0 draws batches from a fixed training set in epoch permutations (the
  authors' 2M rows and DataLoader shuffle); 0 draws fresh sequences every step. Either way the
  data of step s is a function of (seed, s) only, so a resumed trial sees exactly the data the
  uninterrupted one would have.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from dab_core.approximators import mlp
from dab_core.bridge import DAB
from dab_core.config import MAX_WIDTH, ConfigError, HardName, LayerSizes
from dab_core.estimators import estimators
from dab_core.experiments import ExperimentFamily, experiments
from dab_core.experiments._bridge import (
    BridgeFields,
    EstimatorName,
    activation_module,
    bind_hard,
    bridge_out_shape,
    bridge_output_shape,
    build_bridge,
    check_estimator,
    stable_seed,
)
from dab_core.metrics import Metric, MetricSet
from dab_core.plots import bar_png
from dab_core.training import Stateful, Task

SortingModel = Literal["elu-dense", "signum-dense", "signum-rnn"]
CompileMode = Literal["auto", "off", "default", "reduce-overhead"]
#: Estimators with a form TorchDynamo traces whole (`dab_core.estimators.traceable_bridges`);
#: the others (perturbed, blackbox, gumbel) call closures inside autograd Functions.
COMPILABLE_ESTIMATORS = ("dab", "ste", "elu", "tanh", "identity")
#: ``compile: auto`` compiles trials of at least this many steps. Compiling the Signum-Dense
#: step takes about 20 s on these 2 cores (once per trial process) and saves about 8 ms a step
#: (docs/sorting.md, "Compiled steps"): it pays for itself after about 2,500 steps, so auto
#: compiles where the trial is twice that long, and the tests' short trials stay eager.
COMPILE_MIN_STEPS = 5_000


@functools.cache
def _has_cxx() -> bool:
    """Inductor compiles CPU kernels with a C++ compiler (``$CXX``, else ``g++``/``c++``); a
    node without one trains eager under ``compile: auto`` rather than fail at the first step."""
    return any(shutil.which(c) for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c)


class SortingConfig(BridgeFields):
    """One sorting trial. Defaults are the paper's appendix 7.2 (Sorting column)."""

    experiment: Literal["sorting"] = "sorting"
    model: SortingModel = Field(description="elu-dense, signum-dense or signum-rnn")
    seq_len: int = Field(ge=2, le=100, description="T, the sequence length")
    ponder_steps: int = Field(0, ge=0, le=64, description="extra LSTM steps (signum-rnn only)")
    hard: HardName = Field("signum", description="hard function in the bridge (registry name)")
    estimator: EstimatorName | None = Field(
        None,
        description="a registered estimator (dab, ste, perturbed, blackbox, ...; a plain activation "
        "elu, tanh or identity replaces the hard function); default: dab, identity for elu-dense",
    )
    activation: Literal["tanh", "elu"] | None = Field(
        None, description="hidden activation (default: tanh; elu for elu-dense)"
    )
    gamma: float = Field(10.0, ge=0, description="DAB loss weight")
    # 1024 times the paper's 1024: at T=100 one batch's T*T logits alone are 42 GB.
    batch_size: int = Field(1024, ge=1, le=2**20)
    lr: float = Field(1e-4, gt=0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="constant (the paper's), or cosine from lr down to 0 over the trial's steps"
    )
    grad_clip: float | None = Field(None, gt=0, description="grad-norm clip (default: 5 for signum-rnn)")
    # The training set lives in memory: 10**8 sequences of T=100 are 40 GB (the authors': 2M).
    train_size: int = Field(
        2_000_000, ge=0, le=100_000_000, description="fixed training sequences; 0 = fresh each step"
    )
    # 25 times the authors' 400,000; held in memory and scored at every evaluation.
    test_size: int = Field(10_000, ge=1, le=10_000_000)
    dense_hidden: LayerSizes = Field((128, 128, 256), min_length=1)
    approximator_hidden: LayerSizes = Field((128, 128))
    rnn_hidden: int = Field(256, ge=1, le=MAX_WIDTH)  # see MAX_WIDTH (the paper's: 256)
    compile: CompileMode = Field(
        "auto",
        description="torch.compile the training step: off, default, reduce-overhead (CUDA graphs), "
        f"or auto (default mode on the CPU for dense models with a signum bridge and at least "
        f"{COMPILE_MIN_STEPS:,} steps, where it was measured faster; eager otherwise)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> SortingConfig:
        hard = bind_hard(self.hard, self.hard_params)  # bound even where a baseline replaces it
        if self.ponder_steps and self.model != "signum-rnn":
            raise ConfigError(
                f"ponder_steps applies to model 'signum-rnn' only, not {self.model!r}",
                "ponder_steps",
                "model",
            )
        est = estimators.get(self.resolved_estimator)
        if self.model == "elu-dense" and est.exact_forward:
            plain = ", ".join(n for n in estimators.names() if not estimators.get(n).exact_forward)
            raise ConfigError(
                f"model 'elu-dense' is the baseline without a hard function; estimator must be one of "
                f"{plain} (use signum-dense for {self.estimator!r})",
                "estimator",
                "model",
            )
        if 0 < self.train_size < self.batch_size:
            raise ConfigError(
                f"train_size ({self.train_size}) must be 0 or at least batch_size ({self.batch_size})",
                "train_size",
                "batch_size",
            )
        width = self.bridge_width
        if est.exact_forward:
            where = f"hard {hard!r} at the bridge of {self.model} (feature shape ({width},))"
            bridge_out_shape(hard, (width,), where)
        check_estimator(self.resolved_estimator, self.estimator_params, hard, (width,))
        if self.compile not in ("auto", "off"):
            if self.model == "signum-rnn":
                raise ConfigError(
                    "compile applies to the dense models (elu-dense, signum-dense); signum-rnn's "
                    "LSTM is not compiled here, use compile: off or auto",
                    "compile",
                    "model",
                )
            if self.resolved_estimator not in COMPILABLE_ESTIMATORS:
                raise ConfigError(
                    f"compile needs an estimator TorchDynamo traces whole ({', '.join(COMPILABLE_ESTIMATORS)}); "
                    f"{self.resolved_estimator!r} is not one: use compile: off or auto",
                    "compile",
                    "estimator",
                )
        return self

    def compile_mode(self, device: torch.device) -> str:
        """The ``torch.compile`` mode this trial's training step runs in, or ``"off"``.

        ``auto`` compiles (mode ``default``) only what was measured faster: the dense models
        with a signum bridge, on the CPU, for at least `COMPILE_MIN_STEPS` steps. On CUDA auto
        stays eager until bench/gpu_check.sh has measured it; ask for ``reduce-overhead``.
        """
        if self.compile != "auto":
            return self.compile
        measured = (
            self.model != "signum-rnn"
            and self.hard == "signum"
            and self.resolved_estimator in COMPILABLE_ESTIMATORS
            and device.type == "cpu"
        )
        long_enough = self.steps >= COMPILE_MIN_STEPS
        return "default" if measured and long_enough and _has_cxx() else "off"

    @property
    def resolved_estimator(self) -> str:
        return self.estimator or ("identity" if self.model == "elu-dense" else "dab")

    @property
    def resolved_activation(self) -> str:
        return self.activation or ("elu" if self.model == "elu-dense" else "tanh")

    @property
    def resolved_grad_clip(self) -> float | None:
        return self.grad_clip if self.grad_clip is not None else (5.0 if self.model == "signum-rnn" else None)

    @property
    def bridge_width(self) -> int:
        return self.rnn_hidden if self.model == "signum-rnn" else self.dense_hidden[-1]


def make_bridge(cfg: SortingConfig, width: int) -> DAB:
    """The bridge on the (width,) hidden vector: a dense approximator (the authors' model)."""
    return build_bridge(
        bind_hard(cfg.hard, cfg.hard_params),
        cfg,
        in_shape=(width,),
        estimator=cfg.resolved_estimator,
        gamma=cfg.gamma,
        approximator="dense",
        approximator_hidden=cfg.approximator_hidden,
    )


class DenseSorter(nn.Module):
    """(B, T) -> (B, T, T) logits: MLP, bridge, linear head."""

    def __init__(self, seq_len: int, hidden: tuple[int, ...], activation: str, bridge: DAB) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.body = mlp([seq_len, *hidden], activation)
        self.act = activation_module(activation)
        self.bridge = bridge
        (out,) = bridge_output_shape(bridge.estimator, bridge.hard, (hidden[-1],))
        self.head = nn.Linear(out, seq_len * seq_len)
        self.dab_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.bridge(self.act(self.body(x)))  # (B, H)
        self.dab_loss = self.bridge.dab_loss
        return self.head(z).view(-1, self.seq_len, self.seq_len)


class RNNSorter(nn.Module):
    """(B, T) -> (B, T, T) logits: LSTM reader, Dense + bridge, optional pondering."""

    def __init__(self, seq_len: int, hidden: int, ponder_steps: int, bridge: DAB) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.ponder_steps = ponder_steps
        self.reader = nn.LSTM(1, hidden, batch_first=True)
        self.dense = nn.Linear(hidden, hidden)
        self.bridge = bridge
        (out,) = bridge_output_shape(bridge.estimator, bridge.hard, (hidden,))
        self.ponder = nn.LSTMCell(out, hidden) if ponder_steps else None
        self.head = nn.Linear(out, seq_len * seq_len)
        self.dab_loss: torch.Tensor | None = None

    def _readout(self, h: torch.Tensor, losses: list[torch.Tensor]) -> torch.Tensor:
        z = self.bridge(torch.tanh(self.dense(h)))
        if self.bridge.dab_loss is not None:
            losses.append(self.bridge.dab_loss)
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, c) = self.reader(x.unsqueeze(-1))  # h, c: (1, B, H)
        h, c = h[0], c[0]
        losses: list[torch.Tensor] = []
        z = self._readout(h, losses)
        for _ in range(self.ponder_steps):
            assert self.ponder is not None
            h, c = self.ponder(z, (h, c))
            z = self._readout(h, losses)
        # The DAB losses of the P+1 calls of the one bridge are summed, not averaged (the
        # authors average over their DAB layers; a pondering model has one layer called P+1
        # times, which the paper does not discuss). So Figure 3's ponder axis also scales the
        # DAB loss by P+1, and with it the approximator's share of the gradient norm that the
        # clip in `SortingTask.train_step` sees. Kept as is: a mean would change every ponder
        # result measured so far (docs/sorting.md, "Choices in the pondering model").
        self.dab_loss = torch.stack(losses).sum() if losses else None
        return self.head(z).view(-1, self.seq_len, self.seq_len)


_TRAIN, _PERM, _FRESH, _TEST = 1, 2, 3, 4


class SortingTask(Task):
    config: SortingConfig

    def __init__(self, config: SortingConfig, device: torch.device) -> None:  # type: ignore[override]
        super().__init__(config, device)
        cfg = config
        bridge = make_bridge(cfg, cfg.bridge_width)
        if cfg.model == "signum-rnn":
            self.model: DenseSorter | RNNSorter = RNNSorter(
                cfg.seq_len, cfg.rnn_hidden, cfg.ponder_steps, bridge
            )
        else:
            self.model = DenseSorter(cfg.seq_len, cfg.dense_hidden, cfg.resolved_activation, bridge)
        self.model.to(device)
        # Compiled: the forward and its loss go through torch.compile, so AOTAutograd compiles
        # the backward with them (fullgraph=True: a graph break is an error at the first step,
        # never a silent slowdown), and Adam is PyTorch's fused one-kernel Adam (the same update
        # within float rounding; 7% of a compiled step here, bench/dab_overhead.py). Evaluation
        # stays eager (it runs on other shapes).
        mode = cfg.compile_mode(device)
        self.compiled = mode != "off"
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, fused=self.compiled or None)
        self.grad_clip = cfg.resolved_grad_clip
        self._loss = self.loss if not self.compiled else torch.compile(self.loss, mode=mode, fullgraph=True)
        self.gen = torch.Generator(device=device)
        self.train_x: torch.Tensor | None = None
        if cfg.train_size:
            self.gen.manual_seed(stable_seed(cfg.seed, _TRAIN))
            self.train_x = torch.rand(cfg.train_size, cfg.seq_len, generator=self.gen, device=device)
        self._perm_epoch = -1
        self._perm = torch.empty(0, dtype=torch.long, device=device)
        # The test set depends on T only: every seed and model of one T sees the same sequences.
        self.gen.manual_seed(stable_seed(cfg.seq_len, _TEST))
        self.test_x = torch.rand(cfg.test_size, cfg.seq_len, generator=self.gen, device=device)
        self.test_y = self.test_x.argsort(dim=1)

    def state(self) -> Mapping[str, Stateful]:
        return {"model": self.model, "optimizer": self.optimizer}

    def samples_per_step(self) -> int:
        return self.config.batch_size

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (inputs, labels) of `step`: a function of (seed, step) only."""
        cfg = self.config
        if self.train_x is None:
            self.gen.manual_seed(stable_seed(cfg.seed, _FRESH, step))
            x = torch.rand(cfg.batch_size, cfg.seq_len, generator=self.gen, device=self.device)
        else:
            per_epoch = cfg.train_size // cfg.batch_size  # the last partial batch is dropped
            epoch, i = divmod(step, per_epoch)
            if epoch != self._perm_epoch:
                self.gen.manual_seed(stable_seed(cfg.seed, _PERM, epoch))
                self._perm = torch.randperm(cfg.train_size, generator=self.gen, device=self.device)
                self._perm_epoch = epoch
            x = self.train_x[self._perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]]
        return x, x.argsort(dim=1)

    def loss(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        T = self.config.seq_len
        logits = self.model(x)  # (B, T, T)
        ce = F.cross_entropy(logits.reshape(-1, T), y.reshape(-1), reduction="none").view(-1, T).sum(1).mean()
        dab = self.model.dab_loss
        return (ce + dab if dab is not None else ce), ce, dab

    def lr_at(self, step: int) -> float:
        """The learning rate of `step` (0-based): a function of the step, so resuming is exact."""
        cfg = self.config
        if cfg.lr_schedule == "cosine":
            return 0.5 * cfg.lr * (1 + math.cos(math.pi * step / cfg.steps))
        return cfg.lr

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        self.model.train()
        if self.config.lr_schedule != "constant":
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(step)
        x, y = self.batch(step)
        loss, ce, dab = self._loss(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            # One norm over every parameter, the approximator's included (the paper: "gradclip
            # 5" for the LSTM, without saying over what). The approximator's gradient is its
            # DAB loss's only, so a large DAB loss (long pondering, the sum above) shrinks the
            # task's share of the clipped step too (docs/sorting.md).
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        out = {"train_loss": loss.detach(), "train_ce": ce.detach()}
        if dab is not None:
            out["dab_loss"] = dab.detach()
        return out

    @torch.no_grad()
    def _test_correct(self) -> torch.Tensor:
        """(test_size, T) booleans: each position of each test sequence right or not."""
        self.model.eval()
        correct = []
        for xs, ys in zip(self.test_x.split(10_000), self.test_y.split(10_000), strict=True):
            correct.append(self.model(xs).argmax(dim=-1) == ys)  # (b, T)
        self.model.train()
        return torch.cat(correct)

    def evaluate(self) -> dict[str, float]:
        c = self._test_correct()
        return {
            "test_all_or_none": float(c.all(dim=1).float().mean()),
            "test_per_position": float(c.float().mean()),
        }

    def artifacts(self, out_dir: Path) -> None:
        """Per-position test accuracy (where in the sorted order the model errs), as PNG and JSON."""
        per_position = self._test_correct().float().mean(dim=0).tolist()
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "per_position_accuracy.json").write_text(json.dumps(per_position))
        bar_png(
            out_dir / "per_position_accuracy.png",
            [str(t) for t in range(len(per_position))],
            per_position,
            f"{self.config.model}, T={self.config.seq_len}: test accuracy by sorted position",
            "accuracy",
        )


experiments.add(
    "sorting",
    ExperimentFamily(
        name="sorting",
        config_cls=SortingConfig,
        task_cls=SortingTask,
        metrics=MetricSet(
            (
                # agg "best": Figure 3 reports "the maximum test all-or-none accuracy" of each run
                # (its caption); Table 1 shares its trials (the 5-ponder cells), so both read a
                # run's maximum and the two agree on the cells they share.
                Metric(
                    "test_all_or_none",
                    "max",
                    "fraction",
                    "all-or-none accuracy",
                    agg="best",
                    description="held-out sequences sorted entirely right",
                ),
                Metric(
                    "test_per_position",
                    "max",
                    "fraction",
                    "per-position accuracy",
                    agg="best",
                    description="held-out positions sorted right",
                ),
                Metric("train_loss", "min", description="cross-entropy plus gamma times the DAB loss"),
                Metric("train_ce", "min", description="cross-entropy summed over positions"),
                Metric("dab_loss", "min", description="the bridge's approximation loss"),
            ),
            default="test_all_or_none",
        ),
        description="sequence sorting (paper 5.1): Table 1, Figure 3",
    ),
)

__all__ = ["DenseSorter", "RNNSorter", "SortingConfig", "SortingTask"]
