"""Unsupervised representations through a hard latent (paper 5.2, Figures 4 and 5).

Over 500 lines because a family is one unit (config with its reasons, the six variants of
Figure 4, their tasks and metrics, the registration): the five trained variants share one
task, and the threshold baseline, which trains nothing, has its own (`ThresholdTask`).

An autoencoder whose latent code passes through a hard function: encoder -> code -> decoder,
trained to reconstruct its input (Bernoulli likelihood: binary cross-entropy with logits,
summed over pixels, averaged over the batch). Variants:

============== ============================================================================
dab-bernoulli  z ~ Bern(sigmoid(h)) through a DAB bridge (the paper: "non-reparameterized").
dab-binary     z = 1[h >= mean(h)] per sample through a DAB bridge.
dab-signum     z = sgn(h, eps) in {-1, 0, 1} through a DAB bridge (eps 0.5 unless hard_params).
bernoulli-vae  q(z|x) = Bern(sigmoid(h)), binary Concrete relaxation (Maddison et al.),
               KL to Bern(0.5) (REINFORCE-free).
gumbel-vae     q(z|x) = product of categoricals with ``gumbel_categories`` classes, Gumbel-
               softmax relaxation (Jang et al.), KL to the uniform categorical.
threshold      no network: bilinear downsampling to the bit budget, a binary threshold at tau,
               a linear classifier; tau picked on a held-out tenth of the training set.
============== ============================================================================

Metrics: test MS-SSIM between inputs and reconstructions (Figures 4, 5 left), the test
accuracy of a linear classifier trained on the training set's codes after training
(Figures 4, 5 middle/right), test reconstruction loss and MSE; train loss, reconstruction,
and the DAB loss or the KL term.

Choices the paper leaves open, and why (also in docs/image_families.md):

* BPP: ``bpp`` counts bits per input value (pixel and channel); the bit budget is
  ``bpp * C * H * W``. Binary variants get ``floor(budget)`` units, dab-signum
  ``floor(budget / log2 3)`` trinary units ("BPP is scaled by log2(3)"), gumbel-vae
  ``floor(budget / log2 K)`` K-way categoricals, threshold the largest C x s x s downsampled
  image with at most ``budget`` values. With bpp = 0.001 an ImageNet image (3 x 512 x 512)
  gets 786 bits and 496 trits, the paper's numbers (its axis label 0.00097 gives 762 / 481
  under this or any per-value mapping; see docs/image_families.md).
* The code a linear classifier sees ("the encoded posterior representation") is the code the
  decoder sees at test time: the hard output for dab-*, a hard sample for the VAEs (one-hot
  for gumbel-vae), the thresholded image for threshold. Samples at evaluation come from a
  generator seeded from the trial's seed; training's RNG stream is untouched.
* The VAEs train on relaxed samples (``relaxation: concrete``) with temperature
  ``max(temperature_min, exp(-temperature_anneal * step))`` (Jang et al.'s schedule) and are
  evaluated with hard samples; ``relaxation: straight-through`` uses hard samples with the
  relaxed gradient in training instead.
* Networks (appendix 7.2; sizes are ours): ``unet`` (FashionMNIST, "similar to U-Net"): three
  levels of double 3x3 conv + batchnorm, 2x2 max pooling, a linear bottleneck, and the mirror
  image with bilinear upsampling; no skip connections (they would carry the image around the
  bottleneck). ``coordconv-dense`` (CIFAR10): four CoordConv + batchnorm layers (strides
  1, 2, 2, 2) and a linear layer; decoder three dense layers without normalisation.
  ``resnet18-dense`` (ImageNet): a ResNet18 (7x7 stem, max pool, 4 stages, average pool) and
  a linear layer; the same dense decoder. Defaults per dataset (filled in when a field is
  left out or null): optimiser, lr, batch size, activation and gamma of appendix 7.2.
* MS-SSIM: images larger than 160 pixels use the standard 5 scales and 11-pixel window
  (pytorch_msssim's). 28x28 and 32x32 images use a 7-pixel window and 3 scales, the standard
  weights of the first 3 scales renormalised (see `dab_core.experiments._images.ms_ssim`).
* Data: FashionMNIST and CIFAR10 live on the device as uint8 and are indexed by epoch
  permutations seeded from (seed, epoch); ImageNet is streamed by a DataLoader whose batch
  sampler is the same function of (seed, step) and starts at the resumed step. The linear
  probe is trained on ``probe_train_size`` training images (all by default; ImageNet 100,000)
  at the final evaluation (every evaluation with ``probe_every_eval``).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from dab_core.bridge import DAB
from dab_core.config import MAX_WIDTH, ConfigError, LayerSizes
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
    NATIVE_SHAPE,
    ImageSplit,
    TrainBatches,
    activation_module,
    collect,
    conv_out,
    fake_images,
    linear_probe,
    load_imagenet,
    load_torchvision,
    make_optimizer,
    ms_ssim,
    resnet18_stages,
    resolve_data_root,
    stable_seed,
)
from dab_core.metrics import Metric, MetricSet
from dab_core.plots import image_rows_png
from dab_core.training import Stateful, Task

Variant = Literal["dab-bernoulli", "dab-binary", "dab-signum", "bernoulli-vae", "gumbel-vae", "threshold"]
Dataset = Literal["fashion_mnist", "cifar10", "imagenet", "fake"]
Architecture = Literal["unet", "coordconv-dense", "resnet18-dense"]

HARD_OF_VARIANT = {"dab-bernoulli": "bernoulli", "dab-binary": "binary", "dab-signum": "signum"}
LOG2_3 = math.log2(3)

# Appendix 7.2 per dataset; sizes (width, dense_hidden) and the data caps are ours.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "fashion_mnist": dict(
        architecture="unet", width=32, dense_hidden=512, activation="elu",
        optimizer="adam", lr=1e-3, batch_size=128, gamma=10.0,
    ),
    "cifar10": dict(
        architecture="coordconv-dense", width=32, dense_hidden=512, activation="relu",
        optimizer="rmsprop", lr=1e-4, batch_size=128, gamma=70.0,
    ),
    "imagenet": dict(
        architecture="resnet18-dense", width=64, dense_hidden=512, activation="elu",
        optimizer="rmsprop", lr=1e-4, batch_size=192, gamma=2.0,
        image_size=512, test_size=10_000, probe_train_size=100_000,
    ),
    "fake": dict(
        architecture="unet", width=32, dense_hidden=512, activation="elu",
        optimizer="adam", lr=1e-3, batch_size=128, gamma=10.0,
        image_size=32, channels=3, train_size=1024, test_size=256,
    ),
}  # fmt: skip

_EVAL, _PROBE = 0xE7A1, 0x960B


class RepresentationConfig(BridgeFields):
    """One representation-learning trial. Fields left out or null take the dataset's defaults
    (`DATASET_DEFAULTS`, from the paper's appendix 7.2); after validation they hold values."""

    experiment: Literal["representation"] = "representation"
    variant: Variant = Field(
        description="dab-bernoulli, dab-binary, dab-signum, bernoulli-vae, gumbel-vae, threshold"
    )
    dataset: Dataset = Field(description="fashion_mnist, cifar10, imagenet, or generated 'fake' images")
    bpp: float = Field(gt=0, le=8, description="bits per input value (pixel and channel) of the latent code")
    data_root: str | None = Field(
        None, description="dataset directory (default: $DAB_DATA_ROOT or ~/.cache/dab_sweeps/data)"
    )
    download: bool = Field(True, description="let torchvision download FashionMNIST / CIFAR10 when missing")
    # 2 times the paper's ImageNet side (512); images are held in memory at this size.
    image_size: int | None = Field(
        None, ge=8, le=1024, description="imagenet: resize side (512); fake: side (32)"
    )
    channels: int | None = Field(None, ge=1, le=4, description="fake only: image channels (3)")
    architecture: Architecture | None = Field(None, description="unet, coordconv-dense, resnet18-dense")
    # 8 times the paper's widest first level (64); deeper levels multiply it.
    width: int | None = Field(None, ge=1, le=512, description="channels of the first conv level")
    dense_hidden: int | None = Field(
        None, ge=1, le=MAX_WIDTH, description="width of the dense decoder's hidden layers"
    )  # see MAX_WIDTH
    activation: Literal["elu", "relu"] | None = None
    optimizer: Literal["adam", "rmsprop", "sgd"] | None = None
    lr: float | None = Field(None, gt=0)
    # More images than a batch of CIFAR-10's 50,000 is the whole dataset (the paper's: 128, 1024).
    batch_size: int | None = Field(None, ge=1, le=65_536)
    gamma: float | None = Field(None, ge=0, description="DAB loss weight (dab-* variants)")
    # Left out of the resolved config while "dab" (exclude_if), as estimator_params is: the
    # earlier trials' keys stay what they were.
    estimator: EstimatorName = Field(
        "dab",
        description="dab-* variants: the bridge's gradient estimator (dab, ste, perturbed, blackbox; "
        "gumbel for dab-bernoulli); the latent stays the hard code whichever it is",
        exclude_if=lambda v: v == "dab",
    )
    approximator: Literal["auto", "elementwise", "dense"] = Field(
        "auto", description="auto: elementwise for bernoulli/signum, dense for binary"
    )
    approximator_hidden: LayerSizes | None = Field(None, description="hidden sizes of the approximator")
    # The decoder reads latent_units * K one-hot values: beyond 1,024 the code is mostly zeros.
    gumbel_categories: int = Field(10, ge=2, le=1024, description="K of gumbel-vae's K-way categoricals")
    relaxation: Literal["concrete", "straight-through"] = Field(
        "concrete", description="VAEs: relaxed samples, or hard samples with the relaxed gradient"
    )
    temperature_min: float = Field(0.5, gt=0, description="VAEs: lower bound of the relaxation temperature")
    temperature_anneal: float = Field(
        1e-4, ge=0, description="VAEs: temperature = max(min, exp(-rate * step))"
    )
    # Each tau is one pass over the probe set (the paper's grid: 9).
    thresholds: tuple[float, ...] = Field(
        (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), max_length=1000, description="threshold: the tau grid"
    )
    # Image counts: ImageNet's 1.28M training images are the largest dataset; 2M leaves room for
    # fake images, which are generated into memory (2M at 32x32 RGB: 25 GB).
    train_size: int | None = Field(
        None, ge=1, le=2_000_000, description="use N training images (default: all; fake 1024)"
    )
    test_size: int | None = Field(
        None, ge=1, le=2_000_000, description="evaluate on N test images (default: all; imagenet 10k)"
    )
    probe_train_size: int | None = Field(
        None,
        ge=2,
        le=2_000_000,
        description="training images for the linear probe (default: all; imagenet 100k)",
    )
    # The probe is retrained at each evaluation that runs it (the paper's: 10 epochs).
    probe_epochs: int = Field(10, ge=1, le=1000)
    probe_lr: float = Field(1e-2, gt=0)
    probe_every_eval: bool = Field(
        False, description="train the probe at every evaluation, not only the last"
    )
    eval_batch_size: int = Field(500, ge=1, le=65_536)  # as batch_size
    # Processes on one machine: more than any machine has cores only adds contention.
    num_workers: int = Field(8, ge=0, le=256, description="imagenet: DataLoader worker processes")

    @model_validator(mode="before")
    @classmethod
    def _dataset_defaults(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("dataset") in DATASET_DEFAULTS:
            data = dict(data)
            for key, value in DATASET_DEFAULTS[data["dataset"]].items():
                if data.get(key) is None:
                    data[key] = value
        return data

    @field_validator("thresholds")
    @classmethod
    def _thresholds_in_range(cls, taus: tuple[float, ...]) -> tuple[float, ...]:
        if not taus or any(not 0 < t < 1 for t in taus):
            raise ValueError(f"thresholds must be a non-empty list of values in (0, 1), got {list(taus)}")
        return taus

    @model_validator(mode="after")
    def _consistent(self) -> RepresentationConfig:
        if self.dataset in NATIVE_SHAPE and self.image_size not in (None, NATIVE_SHAPE[self.dataset][1]):
            raise ConfigError(
                f"image_size: {self.dataset} images are {NATIVE_SHAPE[self.dataset][1]} pixels wide; leave it unset",
                "image_size",
                "dataset",
            )
        if self.dataset != "fake" and self.channels is not None:
            raise ConfigError(
                f"channels applies to dataset 'fake' only, not {self.dataset!r}", "channels", "dataset"
            )
        if self.latent_units < 1:
            raise ConfigError(
                f"bpp: {self.bpp} bits per value of {self.input_shape} images is a budget of "
                f"{self.bit_budget:.3g} bits, too small for one latent unit of variant {self.variant!r}",
                "bpp",
                "variant",
            )
        if self.variant in HARD_OF_VARIANT:
            hard = bind_hard(HARD_OF_VARIANT[self.variant], self.hard_params)
            bridge_out_shape(hard, (self.latent_units,), f"the latent of {self.latent_units} units")
            if not estimators.get(self.estimator).exact_forward:
                raise ConfigError(
                    f"estimator: {self.estimator!r} replaces the hard function, but the latent must be "
                    "the hard code (it is what the bit budget counts); use dab, ste, perturbed, "
                    "blackbox or gumbel",
                    "estimator",
                    "variant",
                )
            check_estimator(self.estimator, self.estimator_params, hard, (self.latent_units,))
        elif self.estimator != "dab" or self.estimator_params:
            raise ConfigError(
                f"estimator and estimator_params apply to the dab-* variants only, not {self.variant!r}",
                "estimator" if self.estimator != "dab" else "estimator_params",
                "variant",
            )
        elif self.hard_params:
            raise ConfigError(
                f"hard_params applies to the dab-* variants only, not {self.variant!r}",
                "hard_params",
                "variant",
            )
        assert self.batch_size is not None
        if self.train_size is not None and self.train_size < self.batch_size:
            raise ConfigError(
                f"train_size ({self.train_size}) must be at least batch_size ({self.batch_size})",
                "train_size",
                "batch_size",
            )
        return self

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the model's input images."""
        if self.dataset in NATIVE_SHAPE:
            return NATIVE_SHAPE[self.dataset]
        side = self.image_size or 32
        return (self.channels or 3, side, side) if self.dataset == "fake" else (3, side, side)

    @property
    def bit_budget(self) -> float:
        """bpp times the number of input values (C * H * W)."""
        return self.bpp * math.prod(self.input_shape)

    @property
    def latent_units(self) -> int:
        """Latent units within the bit budget: bits, trits (dab-signum), K-way categoricals
        (gumbel-vae), or downsampled values (threshold)."""
        budget = self.bit_budget + 1e-9  # absorbs float error at exact products
        if self.variant == "dab-signum":
            return math.floor(budget / LOG2_3)
        if self.variant == "gumbel-vae":
            return math.floor(budget / math.log2(self.gumbel_categories))
        if self.variant == "threshold":
            return self.input_shape[0] * self.threshold_side**2
        return math.floor(budget)

    @property
    def threshold_side(self) -> int:
        """Side s of the threshold variant's downsampled C x s x s image."""
        return math.isqrt(math.floor((self.bit_budget + 1e-9) / self.input_shape[0]))

    @property
    def code_dim(self) -> int:
        """Width of the code the decoder reads (one-hot categoricals for gumbel-vae)."""
        if self.variant == "gumbel-vae":
            return self.latent_units * self.gumbel_categories
        return self.latent_units


# -- networks -----------------------------------------------------------------------------------


def _double_conv(cin: int, cout: int, activation: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
        nn.BatchNorm2d(cout),
        activation_module(activation),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
        nn.BatchNorm2d(cout),
        activation_module(activation),
    )


class UNetEncoder(nn.Module):
    """(B, C, H, W) -> (B, out_dim): double convs at three levels (w, 2w, 4w channels), 2x2 max
    pooling between them, and a linear bottleneck."""

    def __init__(self, shape: tuple[int, int, int], width: int, activation: str, out_dim: int) -> None:
        super().__init__()
        c, h, _ = shape
        self.sides = [h, h // 2, h // 4]
        self.net = nn.Sequential(
            _double_conv(c, width, activation),
            nn.MaxPool2d(2),
            _double_conv(width, 2 * width, activation),
            nn.MaxPool2d(2),
            _double_conv(2 * width, 4 * width, activation),
        )
        self.fc = nn.Linear(4 * width * self.sides[2] ** 2, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net(x).flatten(1))


class UNetDecoder(nn.Module):
    """(B, in_dim) -> (B, C, H, W) logits: the mirror image of `UNetEncoder` (no skips)."""

    def __init__(self, shape: tuple[int, int, int], width: int, activation: str, in_dim: int) -> None:
        super().__init__()
        c, h, _ = shape
        sides = [h, h // 2, h // 4]
        self.top = (4 * width, sides[2], sides[2])
        self.fc = nn.Sequential(nn.Linear(in_dim, math.prod(self.top)), activation_module(activation))
        self.net = nn.Sequential(
            _double_conv(4 * width, 4 * width, activation),
            nn.Upsample(size=(sides[1], sides[1]), mode="bilinear", align_corners=False),
            _double_conv(4 * width, 2 * width, activation),
            nn.Upsample(size=(sides[0], sides[0]), mode="bilinear", align_corners=False),
            _double_conv(2 * width, width, activation),
            nn.Conv2d(width, c, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(-1, *self.top))


class CoordConv2d(nn.Module):
    """A convolution that also sees two coordinate channels in [-1, 1] (Liu et al., 2018)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin + 2, cout, 3, stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
        return self.conv(torch.cat([x, ys, xs], dim=1))


class CoordConvEncoder(nn.Module):
    """(B, C, H, W) -> (B, out_dim): CoordConv + batchnorm layers (w, 2w, 4w, 8w channels;
    strides 1, 2, 2, 2), then a linear layer."""

    def __init__(self, shape: tuple[int, int, int], width: int, activation: str, out_dim: int) -> None:
        super().__init__()
        c, h, _ = shape
        layers: list[nn.Module] = []
        cin, side = c, h
        for i, cout in enumerate([width, 2 * width, 4 * width, 8 * width]):
            stride = 1 if i == 0 else 2
            layers += [CoordConv2d(cin, cout, stride), nn.BatchNorm2d(cout), activation_module(activation)]
            cin, side = cout, conv_out(side, stride)
        self.net = nn.Sequential(*layers)
        self.fc = nn.Linear(cin * side * side, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net(x).flatten(1))


class ResNet18Encoder(nn.Module):
    """(B, C, H, W) -> (B, out_dim): ResNet18 (7x7 stride-2 stem, max pool, four stages of w,
    2w, 4w, 8w channels, average pool), then a linear layer."""

    def __init__(self, shape: tuple[int, int, int], width: int, activation: str, out_dim: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(shape[0], width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(width),
            activation_module(activation),
            nn.MaxPool2d(3, 2, 1),
        )
        self.stages = nn.Sequential(*resnet18_stages(width, activation))
        self.fc = nn.Linear(8 * width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1))


class DenseDecoder(nn.Module):
    """(B, in_dim) -> (B, C, H, W) logits: three dense layers, no normalisation."""

    def __init__(self, shape: tuple[int, int, int], hidden: int, activation: str, in_dim: int) -> None:
        super().__init__()
        self.shape = shape
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            activation_module(activation),
            nn.Linear(hidden, hidden),
            activation_module(activation),
            nn.Linear(hidden, math.prod(shape)),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.shape)


def build_networks(cfg: RepresentationConfig) -> tuple[nn.Module, nn.Module]:
    """(encoder, decoder) for the config's architecture: encoder (B, C, H, W) -> (B, enc_dim),
    decoder (B, code_dim) -> (B, C, H, W) logits."""
    assert cfg.width is not None and cfg.activation is not None and cfg.dense_hidden is not None
    shape, act = cfg.input_shape, cfg.activation
    enc_dim = cfg.code_dim  # logits of the code (per category for gumbel-vae)
    if cfg.architecture == "unet":
        return UNetEncoder(shape, cfg.width, act, enc_dim), UNetDecoder(shape, cfg.width, act, cfg.code_dim)
    encoder: nn.Module
    if cfg.architecture == "coordconv-dense":
        encoder = CoordConvEncoder(shape, cfg.width, act, enc_dim)
    else:
        encoder = ResNet18Encoder(shape, cfg.width, act, enc_dim)
    return encoder, DenseDecoder(shape, cfg.dense_hidden, act, cfg.code_dim)


def make_bridge(cfg: RepresentationConfig) -> DAB:
    """The DAB bridge of a dab-* variant over the (units,) latent."""
    assert cfg.gamma is not None
    return build_bridge(
        bind_hard(HARD_OF_VARIANT[cfg.variant], cfg.hard_params),
        cfg,
        in_shape=(cfg.latent_units,),
        estimator=cfg.estimator,
        gamma=cfg.gamma,
        approximator=cfg.approximator,
        approximator_hidden=cfg.approximator_hidden,
    )


class HardAutoencoder(nn.Module):
    """Encoder, latent (DAB bridge or relaxed VAE sample), decoder."""

    def __init__(self, cfg: RepresentationConfig) -> None:
        super().__init__()
        self.variant = cfg.variant
        self.units = cfg.latent_units
        self.categories = cfg.gumbel_categories
        self.straight_through = cfg.relaxation == "straight-through"
        self.encoder, self.decoder = build_networks(cfg)
        self.bridge = make_bridge(cfg) if cfg.variant in HARD_OF_VARIANT else None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (B, C, H, W) -> pre-activations h (B, code_dim)."""
        return self.encoder(2 * x - 1)

    def latent(self, h: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Training-time code and its regulariser (DAB loss or KL, batch mean), from h."""
        if self.bridge is not None:
            z = self.bridge(h)  # forward: the hard function; backward: the approximator's VJP
            return z, self.bridge.dab_loss
        if self.variant == "bernoulli-vae":
            u = torch.rand_like(h).clamp(1e-6, 1 - 1e-6)
            soft = torch.sigmoid((h + torch.log(u) - torch.log1p(-u)) / temperature)  # binary Concrete
            z = (soft > 0.5).to(h.dtype) + soft - soft.detach() if self.straight_through else soft
            p, log_p, log_q = torch.sigmoid(h), F.logsigmoid(h), F.logsigmoid(-h)
            kl = (p * (log_p + math.log(2)) + (1 - p) * (log_q + math.log(2))).sum(dim=1).mean()
            return z, kl
        logits = h.view(-1, self.units, self.categories)  # (B, V, K)
        z = F.gumbel_softmax(logits, tau=temperature, hard=self.straight_through, dim=-1)
        log_q = F.log_softmax(logits, dim=-1)
        kl = (log_q.exp() * (log_q + math.log(self.categories))).sum(dim=(1, 2)).mean()
        return z.flatten(1), kl

    def code(self, h: torch.Tensor) -> torch.Tensor:
        """The hard code the decoder reads at test time (samples from the global RNG)."""
        if self.bridge is not None:
            return self.bridge.hard(h)
        if self.variant == "bernoulli-vae":
            return torch.bernoulli(torch.sigmoid(h))
        logits = h.view(-1, self.units, self.categories)
        u = torch.rand_like(logits).clamp(1e-10, 1 - 1e-10)
        idx = (logits - torch.log(-torch.log(u))).argmax(dim=-1)  # Gumbel-max sample, (B, V)
        return F.one_hot(idx, self.categories).to(h.dtype).flatten(1)


class _Progress:
    """Steps done, kept in checkpoints so that a resumed trial knows its final evaluation."""

    def __init__(self) -> None:
        self.steps = 0

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any], /) -> None:
        self.steps = int(state["steps"])


def _load_splits(cfg: RepresentationConfig, device: torch.device) -> tuple[ImageSplit, ImageSplit]:
    """(train, test) splits: train capped by train_size (first N), test a fixed subset of test_size."""
    c, side, _ = cfg.input_shape
    if cfg.dataset == "fake":
        assert cfg.train_size is not None and cfg.test_size is not None
        return fake_images(cfg.train_size, c, side, split=0).to(device), fake_images(
            cfg.test_size, c, side, split=1
        ).to(device)
    root = resolve_data_root(cfg.data_root)
    if cfg.dataset == "imagenet":
        train: ImageSplit = load_imagenet(root, True, side, cfg.num_workers).subset(cfg.train_size)
        test: ImageSplit = load_imagenet(root, False, side, cfg.num_workers).subset(cfg.test_size)
        return train, test
    train = load_torchvision(cfg.dataset, root, True, cfg.download).head(cfg.train_size).to(device)
    test = load_torchvision(cfg.dataset, root, False, cfg.download).subset(cfg.test_size).to(device)
    return train, test


class _CodesTask(Task):
    """What the trained variants and the threshold baseline share: the splits, the step count,
    evaluation's own RNG, the linear probe and the reconstructions figure."""

    config: RepresentationConfig

    def __init__(self, config: RepresentationConfig, device: torch.device) -> None:  # type: ignore[override]
        super().__init__(config, device)
        self.train, self.test = _load_splits(config, device)
        self.progress = _Progress()

    @contextmanager
    def _eval_rng(self, salt: int) -> Iterator[None]:
        """Evaluation samples from a generator seeded by (seed, salt); training's RNG is restored after."""
        devices = [self.device.index or torch.cuda.current_device()] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(stable_seed(self.config.seed, salt))
            yield

    def _first_test_images(self, n: int) -> torch.Tensor:
        for x, _ in self.test.batches(n):
            return x.to(self.device).float()[:n] / 255
        raise ValueError("the test split is empty")

    @abc.abstractmethod
    def sample_images(self, n: int) -> torch.Tensor:
        """The first `n` test images and their reconstructions: (2, n, C, H, W) in [0, 1]."""

    def artifacts(self, out_dir: Path) -> None:
        """Eight test images and their reconstructions (the paper's Figure 4, right)."""
        image_rows_png(
            out_dir / "reconstructions.png",
            self.sample_images(8),
            ["input", f"{self.config.variant}\nbpp {self.config.bpp:g}"],
        )

    def _probe_split(self) -> ImageSplit:
        return self.train.subset(self.config.probe_train_size)

    def _probe(
        self, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor
    ) -> float:
        cfg = self.config
        return linear_probe(
            train_x, train_y, test_x, test_y, self.train.num_classes,
            epochs=cfg.probe_epochs, lr=cfg.probe_lr, seed=stable_seed(cfg.seed, _PROBE),
        )  # fmt: skip


class RepresentationTask(_CodesTask):
    """The trained variants: an autoencoder with a DAB-bridged hard latent, or a VAE."""

    def __init__(self, config: RepresentationConfig, device: torch.device) -> None:  # type: ignore[override]
        if config.variant == "threshold":
            raise ValueError("variant 'threshold' trains nothing: its task is ThresholdTask (make_task)")
        super().__init__(config, device)
        cfg = config
        assert cfg.batch_size is not None and cfg.optimizer is not None and cfg.lr is not None
        self.batches = TrainBatches(self.train, cfg.batch_size, cfg.seed, device)
        self.model = HardAutoencoder(cfg).to(device)
        self.optimizer = make_optimizer(cfg.optimizer, self.model.parameters(), cfg.lr, 0.0)

    def state(self) -> Mapping[str, Stateful]:
        return {"model": self.model, "optimizer": self.optimizer, "progress": self.progress}

    def samples_per_step(self) -> int:
        assert self.config.batch_size is not None
        return self.config.batch_size

    def temperature(self, step: int) -> float:
        """The VAEs' relaxation temperature at `step`: max(temperature_min, exp(-anneal * step))."""
        return max(self.config.temperature_min, math.exp(-self.config.temperature_anneal * step))

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        self.progress.steps = step + 1
        self.model.train()
        images, _ = self.batches(step)
        x = images.float() / 255  # (B, C, H, W) in [0, 1]
        z, reg = self.model.latent(self.model.encode(x), self.temperature(step))
        logits = self.model.decoder(z)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(dim=1).mean()
        loss = recon + reg if reg is not None else recon
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        out = {"train_loss": loss.detach(), "train_recon": recon.detach()}
        if reg is not None:
            out["dab_loss" if self.model.bridge is not None else "train_kl"] = reg.detach()
        return out

    def encode_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> the hard codes the decoder sees at test time, (B, code_dim)."""
        return self.model.code(self.model.encode(x))

    @torch.no_grad()
    def sample_images(self, n: int) -> torch.Tensor:
        x = self._first_test_images(n)
        self.model.eval()
        try:
            with self._eval_rng(_EVAL):
                recon = torch.sigmoid(self.model.decoder(self.encode_codes(x)))
        finally:
            self.model.train()
        return torch.stack([x, recon])

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        cfg = self.config
        final = cfg.probe_every_eval or self.progress.steps >= cfg.steps
        metrics: dict[str, float] = {}
        self.model.eval()
        zero = torch.zeros((), device=self.device)
        ssim_sum, bce_sum, mse_sum = zero.clone(), zero.clone(), zero.clone()
        codes, labels = [], []
        try:
            with self._eval_rng(_EVAL):
                for images, y in self.test.batches(cfg.eval_batch_size):
                    x = images.to(self.device).float() / 255
                    code = self.encode_codes(x)
                    logits = self.model.decoder(code)
                    recon = torch.sigmoid(logits)
                    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
                    ssim_sum += ms_ssim(x, recon, data_range=1.0).sum()
                    bce_sum += bce.flatten(1).sum(dim=1).sum()
                    mse_sum += (recon - x).pow(2).flatten(1).mean(dim=1).sum()
                    if final:
                        codes.append(code)
                        labels.append(y.to(self.device))
                if final:
                    train_codes, train_y = collect(
                        self._probe_split(), cfg.eval_batch_size, self.device, self.encode_codes
                    )
                    metrics["test_linear_accuracy"] = self._probe(
                        train_codes, train_y, torch.cat(codes), torch.cat(labels)
                    )
        finally:
            self.model.train()
        n = len(self.test)
        metrics.update(
            test_ms_ssim=float(ssim_sum) / n, test_recon_loss=float(bce_sum) / n, test_mse=float(mse_sum) / n
        )
        return metrics


class ThresholdTask(_CodesTask):
    """The threshold baseline: no network. Bilinear downsampling to the bit budget, one bit per
    value at a threshold tau picked on held-out probe codes, and a 1-bit reconstruction.

    It trains nothing, so it reports no training metric and no ``samples_per_s``
    (`samples_per_step` is 0), and every evaluation gives the same numbers (computed once)."""

    def __init__(self, config: RepresentationConfig, device: torch.device) -> None:  # type: ignore[override]
        super().__init__(config, device)
        self._cache: dict[str, float] | None = None

    def state(self) -> Mapping[str, Stateful]:
        return {"progress": self.progress}

    def samples_per_step(self) -> int:
        return 0

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        self.progress.steps = step + 1
        return {}

    def _downsample(self, x: torch.Tensor) -> torch.Tensor:
        s = self.config.threshold_side
        return F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)

    def encode_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> the downsampled values, (B, code_dim); thresholding is per tau."""
        return self._downsample(x).flatten(1)

    def _recon(self, x: torch.Tensor, tau: float, levels: tuple[float, float]) -> torch.Tensor:
        bits = self._downsample(x) >= tau
        coarse = torch.where(bits, levels[1], levels[0]).to(x.dtype)
        return F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)

    def fit(self) -> tuple[float, tuple[float, float], torch.Tensor, torch.Tensor]:
        """Pick tau on a held-out tenth of the probe's training codes; (tau, levels, codes, labels).

        levels: the mean training value below and at-or-above tau (the 1-bit reconstruction)."""
        vals, labels = collect(
            self._probe_split(), self.config.eval_batch_size, self.device, self.encode_codes
        )
        n_val = max(1, len(vals) // 10)
        fit_x, fit_y, val_x, val_y = vals[:-n_val], labels[:-n_val], vals[-n_val:], labels[-n_val:]
        best_tau, best_acc = self.config.thresholds[0], -1.0
        for tau in self.config.thresholds:
            acc = self._probe((fit_x >= tau).float(), fit_y, (val_x >= tau).float(), val_y)
            if acc > best_acc:
                best_tau, best_acc = tau, acc
        hi_mask = vals >= best_tau
        lo = float(vals[~hi_mask].mean()) if bool((~hi_mask).any()) else best_tau / 2
        hi = float(vals[hi_mask].mean()) if bool(hi_mask.any()) else (1 + best_tau) / 2
        return best_tau, (lo, hi), vals, labels

    @torch.no_grad()
    def sample_images(self, n: int) -> torch.Tensor:
        x = self._first_test_images(n)
        tau, levels = self.fit()[:2]
        return torch.stack([x, self._recon(x, tau, levels)])

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self._cache is not None:
            return dict(self._cache)
        cfg = self.config
        tau, levels, train_vals, train_y = self.fit()
        zero = torch.zeros((), device=self.device)
        ssim_sum, bce_sum, mse_sum = zero.clone(), zero.clone(), zero.clone()
        codes, labels = [], []
        for images, y in self.test.batches(cfg.eval_batch_size):
            x = images.to(self.device).float() / 255
            recon = self._recon(x, tau, levels)
            bce = F.binary_cross_entropy(recon.clamp(1e-6, 1 - 1e-6), x, reduction="none")
            ssim_sum += ms_ssim(x, recon, data_range=1.0).sum()
            bce_sum += bce.flatten(1).sum(dim=1).sum()
            mse_sum += (recon - x).pow(2).flatten(1).mean(dim=1).sum()
            codes.append((self.encode_codes(x) >= tau).float())
            labels.append(y.to(self.device))
        n = len(self.test)
        self._cache = {
            "threshold_tau": tau,
            "test_linear_accuracy": self._probe(
                (train_vals >= tau).float(), train_y, torch.cat(codes), torch.cat(labels)
            ),
            "test_ms_ssim": float(ssim_sum) / n,
            "test_recon_loss": float(bce_sum) / n,
            "test_mse": float(mse_sum) / n,
        }
        return dict(self._cache)


def make_task(config: RepresentationConfig, device: torch.device) -> Task:
    """The family's task: `ThresholdTask` for the threshold baseline, else `RepresentationTask`."""
    if config.variant == "threshold":
        return ThresholdTask(config, device)
    return RepresentationTask(config, device)


experiments.add(
    "representation",
    ExperimentFamily(
        name="representation",
        config_cls=RepresentationConfig,
        task_cls=make_task,
        metrics=MetricSet(
            (
                # agg "final": Figures 4 and 5 plot the trained model's test quality at each bpp.
                Metric("test_ms_ssim", "max", display="test MS-SSIM"),
                Metric("test_linear_accuracy", "max", "fraction", "linear-probe accuracy"),
                Metric("test_recon_loss", "min", display="test reconstruction BCE"),
                Metric("test_mse", "min", display="test MSE"),
                Metric(
                    "threshold_tau",
                    "max",
                    display="threshold tau",
                    description="the fitted threshold (threshold variant)",
                ),
                Metric("train_loss", "min"),
                Metric("train_recon", "min"),
                Metric("train_kl", "min"),
                Metric("dab_loss", "min", description="the bridge's approximation loss"),
            ),
            default="test_ms_ssim",
        ),
        description="autoencoders with a hard latent vs VAEs and thresholding (paper 5.2): Figures 4, 5",
    ),
)

__all__ = [
    "DATASET_DEFAULTS",
    "HardAutoencoder",
    "RepresentationConfig",
    "RepresentationTask",
    "ThresholdTask",
    "build_networks",
    "make_task",
]
