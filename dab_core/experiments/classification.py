"""Image classification with a hard function inside a CIFAR ResNet18 (paper 5.3, Table 2, Figure 6).

Over 400 lines because a family is one unit: its typed config (with the reasons for every open
choice), its model, its task and its registration read best together.

Model: CifarResnet18 (3x3 stem conv, no max pool, four stages of two BasicBlocks with
w, 2w, 4w, 8w channels; w = 64 is ResNet18), batchnorm, ELU (appendix 7.2), global average
pool and a linear classifier. A `DAB` bridge sits at the output of stage ``placement``
(1..4; the paper's Table 2 uses 4). Estimators: ``dab``, ``ste``, and the plain baselines
(``identity`` is Table 2's "Baseline"). Loss: cross-entropy (batch mean) plus the bridge's
DAB loss. Metrics: test accuracy (Table 2, Figure 6 left and right), test cross-entropy, and
two distances between the bridge's input and output on the test set (Figure 6 middle).

Choices the paper leaves open, and why (also in docs/image_families.md):

* After the bridge. A hard function that keeps the feature map's shape (signum, sort, kmeans)
  feeds the rest of the network unchanged (remaining stages, average pool, linear). One whose
  output is a flat vector (sort_rowcol: 2·C·H·W values; topk: k values) feeds a linear
  classifier on that vector directly: average pooling a row- or column-sorted map would undo
  the sort (a sum is permutation invariant). This is defined at placement 4 only; at
  placements 1-3 there is no feature map for the next stage, so validation refuses it
  (message names ``placement``).
* Approximator (``approximator: auto``): the per-element MLP for element-wise functions
  (signum: 1 -> 16 -> 16 -> 1, size independent of the map), otherwise the dense MLP of the
  authors' demo over the flattened map (placement 4: 8192 -> 128 -> 128 -> out; 3.2 M
  parameters for sort_rowcol, against 11 M in ResNet18). ``conv`` is a small shape-preserving
  conv net (3x3 convs, tanh) for local functions at early placements, where a dense
  approximator would be large (placement 1: 65,536 inputs).
* Hyper-parameters from appendix 7.2 (Classification): Adam, lr 1e-4, batch 128, ELU,
  batchnorm, gamma 10. No learning-rate schedule or weight decay (the appendix lists none).
  Standard CIFAR augmentation (random crop after 4-pixel zero padding, horizontal flip) is on
  by default: the paper's 92.87% baseline is out of reach of a ResNet18 without it. Inputs are
  standardised per channel with the training set's mean and std.
* ``test_emd``: per test sample, the 1-D earth mover (Wasserstein-1) distance between the
  empirical distribution of the bridge's input values and that of its output values (sizes
  may differ), averaged over samples. It is 0 for any function that only permutes values
  (sort, and sort_rowcol whose output holds every input value twice), so it carries Figure 6
  middle's signal only for value-changing functions. ``test_displacement`` is therefore also
  reported: the mean absolute difference between output and input paired by position (the
  input's flattened values repeated to the output's length, which pairs sort_rowcol's row and
  column halves with the input each), i.e. how far the function moves values; it is 0 for
  an input that is already sorted, and it falls when the preceding layer is "conditioned"
  towards sorted maps.
* Data order: the training set lives on the device as uint8 and each step's batch and
  augmentation are functions of (seed, step) only, so a resumed trial replays exactly.
  ``dataset: fake`` is generated data (class = mean colour + a wave pattern) for tests and
  smoke runs; no download.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from dab_core.bridge import DAB, dab_loss_of
from dab_core.config import ConfigError, HardName, LayerSizes
from dab_core.estimators import estimators
from dab_core.experiments import ExperimentFamily, experiments
from dab_core.experiments._bridge import (
    BridgeFields,
    EstimatorName,
    bind_hard,
    bridge_out_shape,
    build_bridge,
    check_estimator,
)
from dab_core.experiments._images import (
    TensorImages,
    TrainBatches,
    activation_module,
    conv_out,
    emd_1d,
    fake_images,
    load_torchvision,
    make_optimizer,
    random_crop_flip,
    resnet18_stages,
    resolve_data_root,
    stable_seed,
)
from dab_core.hard import BoundHardFunction
from dab_core.metrics import Metric, MetricSet
from dab_core.plots import bar_png
from dab_core.training import Stateful, Task

ApproximatorKind = Literal["auto", "elementwise", "dense", "conv"]
_FAKE_TRAIN, _FAKE_TEST = 2048, 512
_AUGMENT = 0xA06


class ClassificationConfig(BridgeFields):
    """One classification trial. Defaults: the paper's appendix 7.2 (Classification column)."""

    experiment: Literal["classification"] = "classification"
    model: Literal["resnet18"] = Field("resnet18", description="CifarResnet18 (3x3 stem, no maxpool)")
    dataset: Literal["cifar10", "fake"] = Field("cifar10", description="cifar10, or generated 'fake' data")
    data_root: str | None = Field(
        None, description="dataset directory (default: $DAB_DATA_ROOT or ~/.cache/dab_sweeps/data)"
    )
    download: bool = Field(True, description="let torchvision download the dataset when missing")
    # Fake images are generated into memory: 2,048 of 1024 x 1024 RGB are 25 GB.
    image_size: int | None = Field(
        None, ge=8, le=1024, description="side of the fake images (fake only; default 32)"
    )
    hard: HardName = Field("signum", description="hard function in the bridge (registry name)")
    estimator: EstimatorName = Field(
        "dab",
        description="a registered estimator: dab, ste, perturbed, blackbox, ..., or a plain "
        "activation (identity = Table 2 'Baseline')",
    )
    placement: int = Field(4, ge=1, le=4, description="the bridge sits at the output of residual stage 1..4")
    gamma: float = Field(10.0, ge=0, description="DAB loss weight")
    approximator: ApproximatorKind = Field(
        "auto", description="auto: elementwise for element-wise functions, else dense"
    )
    approximator_hidden: LayerSizes | None = Field(
        None, description="hidden sizes (dense/elementwise) or channels (conv)"
    )
    activation: Literal["elu", "relu"] = "elu"
    # 8 times ResNet18's 64: stage 4 then has 4,096 channels, 151M weights in one 3x3 conv.
    width: int = Field(
        64, ge=1, le=512, description="channels of stage 1 (stages: w, 2w, 4w, 8w); 64 = ResNet18"
    )
    optimizer: Literal["adam", "rmsprop", "sgd"] = "adam"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    # More than CIFAR-10's 50,000 training images is not a batch (the paper's: 128).
    batch_size: int = Field(128, ge=1, le=65_536)
    augment: bool = Field(True, description="random crop (pad 4) and horizontal flip")
    # 20 times CIFAR-10's 50,000; fake images are generated into memory (1M at 32x32 RGB: 12 GB).
    train_size: int | None = Field(
        None, ge=1, le=1_000_000, description="use the first N training images (default: all; fake: 2048)"
    )
    test_size: int | None = Field(
        None, ge=1, le=1_000_000, description="evaluate on N test images (default: all; fake: 512)"
    )
    eval_batch_size: int = Field(500, ge=1, le=65_536)  # as batch_size

    @model_validator(mode="after")
    def _consistent(self) -> ClassificationConfig:
        if self.dataset != "fake" and self.image_size not in (None, 32):
            raise ConfigError(
                f"image_size applies to dataset 'fake' only ({self.dataset} images are 32x32)",
                "image_size",
                "dataset",
            )
        if self.resolved_train_size is not None and self.resolved_train_size < self.batch_size:
            raise ConfigError(
                f"train_size ({self.resolved_train_size}) must be at least batch_size ({self.batch_size})",
                "train_size",
                "batch_size",
            )
        hard = self.bound_hard()  # bound even where a baseline replaces it
        shape = self.bridge_shape
        out = self.bridge_out_shape
        check_estimator(self.estimator, self.estimator_params, hard, shape)
        if out == shape or not estimators.get(self.estimator).exact_forward:
            return self  # a plain activation replaces the hard function: any placement works
        if self.placement != 4:
            raise ConfigError(
                f"placement: {self.hard!r} turns the feature map {shape} into shape {out}, which the next "
                "residual stage cannot take; shape-changing functions are supported at placement 4 only "
                "(a linear classifier reads their output)",
                "placement",
                "hard",
            )
        if self.approximator in ("elementwise", "conv") and estimators.get(self.estimator).uses_approximator:
            raise ConfigError(
                f"approximator: {self.approximator!r} keeps the input's shape, but {self.hard!r} maps "
                f"{shape} to {out}; use 'dense' or 'auto'",
                "approximator",
                "hard",
            )
        return self

    def bound_hard(self) -> BoundHardFunction:
        """The hard function with its parameters (a ConfigError naming hard_params when wrong)."""
        return bind_hard(self.hard, self.hard_params)

    @property
    def image_side(self) -> int:
        return self.image_size or 32

    @property
    def bridge_shape(self) -> tuple[int, int, int]:
        """Per-sample feature-map shape (C, H, W) at the output of stage `placement`."""
        side = self.image_side
        for _ in range(self.placement - 1):
            side = conv_out(side, 2)
        return (self.width * 2 ** (self.placement - 1), side, side)

    @property
    def bridge_out_shape(self) -> tuple[int, ...]:
        """Per-sample shape after the bridge (the feature map itself for plain baselines)."""
        if not estimators.get(self.estimator).exact_forward:
            return self.bridge_shape
        where = f"feature map {self.bridge_shape} at placement {self.placement}"
        return bridge_out_shape(self.bound_hard(), self.bridge_shape, where)

    @property
    def resolved_train_size(self) -> int | None:
        return self.train_size or (_FAKE_TRAIN if self.dataset == "fake" else None)

    @property
    def resolved_test_size(self) -> int | None:
        return self.test_size or (_FAKE_TEST if self.dataset == "fake" else None)


def make_bridge(cfg: ClassificationConfig) -> DAB:
    """The DAB bridge for the feature map at `cfg.placement`, with the approximator the config picks."""
    return build_bridge(
        cfg.bound_hard(),
        cfg,
        in_shape=cfg.bridge_shape,
        estimator=cfg.estimator,
        gamma=cfg.gamma,
        approximator=cfg.approximator,
        approximator_hidden=cfg.approximator_hidden,
    )


class CifarResNet18(nn.Module):
    """(B, C, S, S) images -> (B, classes) logits, with `bridge` at the output of stage `placement`."""

    def __init__(
        self,
        width: int,
        activation: str,
        num_classes: int,
        placement: int,
        bridge: DAB,
        bridge_shape: tuple[int, ...],
        bridge_out_shape: tuple[int, ...],
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            activation_module(activation),
        )
        self.stages = resnet18_stages(width, activation)
        self.placement = placement
        self.bridge = bridge
        self.flat_head = tuple(bridge_out_shape) != tuple(bridge_shape)
        assert not self.flat_head or placement == 4, (
            "a shape-changing bridge is supported at placement 4 only"
        )
        in_features = math.prod(bridge_out_shape) if self.flat_head else 8 * width
        self.head = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.stem(x)  # (B, w, S, S)
        for i, stage in enumerate(self.stages, start=1):
            z = stage(z)  # (B, w * 2^(i-1), S / 2^(i-1), ...)
            if i == self.placement:
                z = self.bridge(z)
        if self.flat_head:
            return self.head(z.flatten(1))  # the bridge's flat output: (B, prod(out_shape))
        return self.head(F.adaptive_avg_pool2d(z, 1).flatten(1))  # (B, 8w)


def aligned_displacement(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample mean |y - x| with x's flattened values repeated to y's length: shape (B,).

    For a shape-preserving function this pairs each output with the input at its position; for
    sort_rowcol (output = row-sorted map ⊕ column-sorted map) each half is paired with the map.
    """
    xf, yf = x.flatten(1), y.flatten(1)
    reps = -(-yf.shape[1] // xf.shape[1])
    ref = xf.repeat(1, reps)[:, : yf.shape[1]]
    return (yf - ref).abs().mean(dim=1)


def _load_splits(cfg: ClassificationConfig) -> tuple[TensorImages, TensorImages]:
    if cfg.dataset == "fake":
        train_n, test_n = cfg.resolved_train_size, cfg.resolved_test_size
        assert train_n is not None and test_n is not None
        return fake_images(train_n, 3, cfg.image_side, split=0), fake_images(
            test_n, 3, cfg.image_side, split=1
        )
    root = resolve_data_root(cfg.data_root)
    train = load_torchvision(cfg.dataset, root, train=True, download=cfg.download).head(
        cfg.resolved_train_size
    )
    test = load_torchvision(cfg.dataset, root, train=False, download=cfg.download).subset(
        cfg.resolved_test_size
    )
    return train, test


def channel_stats(images: torch.Tensor, chunk: int = 5000) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images (N, C, H, W), scaled to [0, 1]: shapes (1, C, 1, 1)."""
    total = torch.zeros(images.shape[1], dtype=torch.float64, device=images.device)
    total_sq = torch.zeros_like(total)
    for part in images.split(chunk):
        p = part.double() / 255
        total += p.sum(dim=(0, 2, 3))
        total_sq += p.pow(2).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp_min(1e-12).sqrt()
    return mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1)


class ClassificationTask(Task):
    config: ClassificationConfig

    def __init__(self, config: ClassificationConfig, device: torch.device) -> None:  # type: ignore[override]
        super().__init__(config, device)
        cfg = config
        train, test = _load_splits(cfg)
        self.train = train.to(device)
        self.test = test.to(device)
        self.mean, self.std = channel_stats(self.train.images)
        self.batches = TrainBatches(self.train, cfg.batch_size, cfg.seed, device)
        self.model = CifarResNet18(
            cfg.width,
            cfg.activation,
            self.train.num_classes,
            cfg.placement,
            make_bridge(cfg),
            cfg.bridge_shape,
            cfg.bridge_out_shape,
            in_channels=self.train.shape[0],
        ).to(device)
        self.optimizer = make_optimizer(cfg.optimizer, self.model.parameters(), cfg.lr, cfg.weight_decay)
        self._aug_gen = torch.Generator(device=device)

    def state(self) -> Mapping[str, Stateful]:
        return {"model": self.model, "optimizer": self.optimizer}

    def samples_per_step(self) -> int:
        return self.config.batch_size

    def inputs(self, images: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """uint8 images -> standardised floats; augmented (seeded by (seed, step)) when `step` is given."""
        x = images.float() / 255
        if step is not None and self.config.augment:
            self._aug_gen.manual_seed(stable_seed(self.config.seed, _AUGMENT, step))
            x = random_crop_flip(x, self._aug_gen)
        return (x - self.mean) / self.std

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        self.model.train()
        images, y = self.batches(step)
        logits = self.model(self.inputs(images, step))
        ce = F.cross_entropy(logits, y)
        dab = dab_loss_of(self.model)
        loss = ce + dab if dab is not None else ce
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        out = {
            "train_loss": loss.detach(),
            "train_ce": ce.detach(),
            "train_accuracy": (logits.detach().argmax(dim=1) == y).float().mean(),
        }
        if dab is not None:
            out["dab_loss"] = dab.detach()
        return out

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        captured: dict[str, torch.Tensor] = {}

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            captured["in"], captured["out"] = args[0], output

        handle = self.model.bridge.register_forward_hook(hook)
        zero = torch.zeros((), device=self.device)
        correct, ce_sum, emd_sum, disp_sum = zero.clone(), zero.clone(), zero.clone(), zero.clone()
        try:
            for images, y in self.test.batches(self.config.eval_batch_size):
                logits = self.model(self.inputs(images))
                correct += (logits.argmax(dim=1) == y).sum()
                ce_sum += F.cross_entropy(logits, y, reduction="sum")
                z_in, z_out = captured["in"].flatten(1).float(), captured["out"].flatten(1).float()
                emd_sum += emd_1d(z_in, z_out).sum()
                disp_sum += aligned_displacement(z_in, z_out).sum()
        finally:
            handle.remove()
            self.model.train()
        n = len(self.test)
        return {
            "test_accuracy": float(correct) / n,
            "test_loss": float(ce_sum) / n,
            "test_emd": float(emd_sum) / n,
            "test_displacement": float(disp_sum) / n,
        }

    @torch.no_grad()
    def artifacts(self, out_dir: Path) -> None:
        """Test accuracy per class, as PNG and JSON."""
        self.model.eval()
        classes = self.train.num_classes
        hits = torch.zeros(classes, device=self.device)
        counts = torch.zeros(classes, device=self.device)
        try:
            for images, y in self.test.batches(self.config.eval_batch_size):
                right = (self.model(self.inputs(images)).argmax(dim=1) == y).float()
                hits.index_add_(0, y, right)
                counts.index_add_(0, y, torch.ones_like(right))
        finally:
            self.model.train()
        per_class = (hits / counts.clamp_min(1)).tolist()
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "per_class_accuracy.json").write_text(json.dumps(per_class))
        title = f"{self.config.hard} ({self.config.estimator}) at block {self.config.placement}: test accuracy by class"
        bar_png(
            out_dir / "per_class_accuracy.png", [str(c) for c in range(classes)], per_class, title, "accuracy"
        )


experiments.add(
    "classification",
    ExperimentFamily(
        name="classification",
        config_cls=ClassificationConfig,
        task_cls=ClassificationTask,
        metrics=MetricSet(
            (
                # agg "final": Table 2 and Figure 6 give "test accuracy" with no word of a maximum;
                # the trained model's accuracy is the one a reader can reproduce.
                Metric("test_accuracy", "max", "fraction", "test accuracy"),
                Metric("test_loss", "min", display="test cross-entropy"),
                Metric("test_emd", "min", display="test EMD"),
                Metric("test_displacement", "min", display="test displacement"),
                Metric("train_loss", "min"),
                Metric("train_ce", "min"),
                Metric("train_accuracy", "max", "fraction", "train accuracy"),
                Metric("dab_loss", "min", description="the bridge's approximation loss"),
            ),
            default="test_accuracy",
        ),
        description="CIFAR10 ResNet18 with a hard function after a residual stage (paper 5.3): Table 2, Figure 6",
    ),
)

__all__ = [
    "CifarResNet18",
    "ClassificationConfig",
    "ClassificationTask",
    "aligned_displacement",
    "make_bridge",
]
