"""Over 400 lines: the shared building blocks of both image families, each small; splitting them
would scatter what the two families import together.

Shared pieces of the image families (classification, representation): datasets held as
tensors or streamed with a step-seeded sampler, generated ("fake") images, ResNet blocks,
MS-SSIM for small images, the 1-D earth mover distance, and a linear probe.

Data order: every training batch is a function of (seed, step) only, so a resumed trial
replays exactly the batches of the uninterrupted one. Datasets that fit in memory (CIFAR10,
FashionMNIST, generated data) live on the device as uint8 tensors and are indexed through an
epoch permutation seeded from (seed, epoch); ImageNet is streamed by a DataLoader whose batch
sampler is the same function of (seed, step) and can start at any step.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dab_core.approximators import ConvApproximator
from dab_core.experiments._bridge import activation_module, stable_seed

NUM_CLASSES = {"cifar10": 10, "fashion_mnist": 10, "imagenet": 1000, "fake": 10}
NATIVE_SHAPE = {"cifar10": (3, 32, 32), "fashion_mnist": (1, 28, 28)}


def resolve_data_root(data_root: str | None) -> Path:
    """`data_root`, else ``$DAB_DATA_ROOT``, else ``~/.cache/dab_sweeps/data``."""
    root = data_root or os.environ.get("DAB_DATA_ROOT") or "~/.cache/dab_sweeps/data"
    return Path(root).expanduser()


# -- datasets ------------------------------------------------------------------------------------


class TensorImages:
    """A labelled image split held as tensors: images uint8 (N, C, H, W), labels int64 (N,)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
        assert images.dtype == torch.uint8 and images.dim() == 4, (
            f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
        assert labels.shape == images.shape[:1], (
            f"labels {tuple(labels.shape)} vs images {tuple(images.shape)}"
        )
        self.images = images
        self.labels = labels.long()
        self.num_classes = num_classes

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return (c, h, w)

    def to(self, device: torch.device) -> TensorImages:
        return TensorImages(self.images.to(device), self.labels.to(device), self.num_classes)

    def head(self, n: int | None) -> TensorImages:
        """The first `n` samples (all when None)."""
        if n is None or n >= len(self):
            return self
        return TensorImages(self.images[:n], self.labels[:n], self.num_classes)

    def subset(self, n: int | None) -> TensorImages:
        """A fixed random subset of `n` samples (the same for every trial), in dataset order."""
        if n is None or n >= len(self):
            return self
        idx = fixed_subset(len(self), n).to(self.images.device)
        return TensorImages(self.images[idx], self.labels[idx], self.num_classes)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Sequential (images uint8, labels) batches over the whole split."""
        for i in range(0, len(self), batch_size):
            yield self.images[i : i + batch_size], self.labels[i : i + batch_size]


def fixed_subset(n: int, k: int) -> torch.Tensor:
    """k of n indices, drawn once with a constant seed and sorted (the same for every trial)."""
    gen = torch.Generator().manual_seed(stable_seed(n, k, 0x5EB))
    return torch.randperm(n, generator=gen)[:k].sort().values


def fake_images(n: int, channels: int, size: int, split: int, num_classes: int = 10) -> TensorImages:
    """Generated images whose class shows in their mean colour and in a wave pattern.

    Class c has a fixed colour (grey level for one channel) and a plane wave of class-specific
    frequency and direction; each image has its own phase and pixel noise. Learnable by a
    classifier, compressible by an autoencoder, linearly separable from a coarse code. The data
    depends on (n, channels, size, split) only, not on the trial's seed, so every trial of a
    sweep sees the same images. `split` 0 is the training set, 1 the test set.
    """
    gen = torch.Generator().manual_seed(stable_seed(0xFA4E, num_classes, channels, size))
    colours = 0.2 + 0.6 * torch.rand(num_classes, channels, generator=gen)  # (K, C)
    if channels == 1:
        colours = torch.linspace(0.2, 0.8, num_classes).view(num_classes, 1)
    freq = 1.0 + 2.0 * torch.rand(num_classes, generator=gen)  # cycles per image
    angle = math.pi * torch.rand(num_classes, generator=gen)
    gen.manual_seed(stable_seed(0xFA4E, n, channels, size, split))
    labels = torch.randint(num_classes, (n,), generator=gen)
    phase = 2 * math.pi * torch.rand(n, 1, 1, generator=gen)
    u = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(u, u, indexing="ij")  # (S, S)
    direction = torch.cos(angle)[labels].view(n, 1, 1) * xx + torch.sin(angle)[labels].view(n, 1, 1) * yy
    wave = torch.sin(2 * math.pi * freq[labels].view(n, 1, 1) * direction + phase)  # (n, S, S)
    x = colours[labels].view(n, channels, 1, 1) + 0.15 * wave.unsqueeze(1)
    x = x + 0.05 * torch.randn(n, channels, size, size, generator=gen)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return TensorImages(images, labels, num_classes)


def load_torchvision(name: str, root: Path, train: bool, download: bool) -> TensorImages:
    """CIFAR10 or FashionMNIST from torchvision, as uint8 tensors (N, C, H, W)."""
    import torchvision

    if name == "cifar10":
        ds = torchvision.datasets.CIFAR10(str(root), train=train, download=download)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32)
        labels = torch.as_tensor(ds.targets, dtype=torch.long)
    elif name == "fashion_mnist":
        fm = torchvision.datasets.FashionMNIST(str(root), train=train, download=download)
        images = fm.data.unsqueeze(1).contiguous()  # (N, 1, 28, 28)
        labels = fm.targets.long()
    else:
        raise ValueError(f"no in-memory loader for dataset {name!r}")
    return TensorImages(images, labels, NUM_CLASSES[name])


class StreamImages:
    """A labelled image split read through a DataLoader (ImageNet: too large for memory).

    Images come as uint8 (C, S, S): resized so the shorter side is S, centre-cropped to S.
    """

    def __init__(
        self, dataset: Any, size: int, num_classes: int, num_workers: int, indices: Any = None
    ) -> None:
        self.dataset = dataset
        self.size = size
        self.num_classes = num_classes
        self.num_workers = num_workers
        self.indices = indices  # a subset of the dataset, or None for all of it

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.dataset)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    def head(self, n: int | None) -> StreamImages:
        if n is None or n >= len(self):
            return self
        return StreamImages(self.dataset, self.size, self.num_classes, self.num_workers, self._map(range(n)))

    def subset(self, n: int | None) -> StreamImages:
        if n is None or n >= len(self):
            return self
        return StreamImages(
            self.dataset,
            self.size,
            self.num_classes,
            self.num_workers,
            self._map(fixed_subset(len(self), n).tolist()),
        )

    def _map(self, idx: Sequence[int]) -> list[int]:
        return [self.indices[i] for i in idx] if self.indices is not None else list(idx)

    def loader(self, batch_sampler: Any) -> torch.utils.data.DataLoader[Any]:
        base = self.dataset if self.indices is None else torch.utils.data.Subset(self.dataset, self.indices)
        return torch.utils.data.DataLoader(
            base,
            batch_sampler=batch_sampler,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
        )

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self)
        sampler = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
        yield from self.loader(sampler)


def load_imagenet(root: Path, train: bool, size: int, num_workers: int) -> StreamImages:
    """ImageNet (ILSVRC2012) through torchvision.datasets.ImageNet.

    torchvision cannot download ImageNet: place ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar
    and ILSVRC2012_devkit_t12.tar.gz under ``<data_root>/imagenet`` (extracted on first use).
    """
    import torchvision
    from torchvision.transforms import v2

    transform = v2.Compose([v2.PILToTensor(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    ds = torchvision.datasets.ImageNet(
        str(root / "imagenet"), split="train" if train else "val", transform=transform
    )
    return StreamImages(ds, size, NUM_CLASSES["imagenet"], num_workers)


ImageSplit = TensorImages | StreamImages


class StepBatchSampler:
    """Batches of indices for steps ``start, start+1, ...``: a function of (seed, step) only.

    Step s is batch ``s mod per_epoch`` of the permutation of epoch ``s // per_epoch``, drawn
    from a generator seeded with (seed, epoch); the last partial batch of an epoch is dropped.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int = 0) -> None:
        if n < batch_size:
            raise ValueError(f"the training set has {n} samples, fewer than batch_size ({batch_size})")
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start
        self.per_epoch = n // batch_size

    def permutation(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(stable_seed(self.seed, 0xE90C, epoch))
        return torch.randperm(self.n, generator=gen)

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        epoch, perm = -1, torch.empty(0, dtype=torch.long)
        while True:
            e, i = divmod(step, self.per_epoch)
            if e != epoch:
                epoch, perm = e, self.permutation(e)
            yield perm[i * self.batch_size : (i + 1) * self.batch_size].tolist()
            step += 1


class TrainBatches:
    """The training batch of any step, (images uint8 (B, C, H, W), labels (B,)) on `device`.

    Tensor datasets: the epoch permutation is drawn on the device from (seed, epoch), so no
    host sync or host-to-device copy happens per step. Streamed datasets: a DataLoader over a
    `StepBatchSampler` that starts at the requested step (rebuilt when a step is out of order,
    e.g. after a resume).
    """

    def __init__(self, split: ImageSplit, batch_size: int, seed: int, device: torch.device) -> None:
        if len(split) < batch_size:
            raise ValueError(
                f"the training set has {len(split)} samples, fewer than batch_size ({batch_size})"
            )
        self.split, self.batch_size, self.seed, self.device = split, batch_size, seed, device
        self.per_epoch = len(split) // batch_size
        self._gen = torch.Generator(device=device) if isinstance(split, TensorImages) else None
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long, device=device)
        self._iter: Iterator[Any] | None = None
        self._next_step = -1

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.split, TensorImages):
            epoch, i = divmod(step, self.per_epoch)
            if epoch != self._epoch:
                assert self._gen is not None
                self._gen.manual_seed(stable_seed(self.seed, 0xE90C, epoch))
                self._perm = torch.randperm(len(self.split), generator=self._gen, device=self.device)
                self._epoch = epoch
            idx = self._perm[i * self.batch_size : (i + 1) * self.batch_size]
            return self.split.images[idx], self.split.labels[idx]
        if self._iter is None or step != self._next_step:
            self._iter = iter(
                self.split.loader(StepBatchSampler(len(self.split), self.batch_size, self.seed, step))
            )
        self._next_step = step + 1
        x, y = next(self._iter)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def step_generator(device: torch.device, seed: int, step: int, salt: int) -> torch.Generator:
    """A generator on `device` seeded from (seed, step, salt): per-step randomness without RNG state."""
    gen = torch.Generator(device=device)
    gen.manual_seed(stable_seed(seed, salt, step))
    return gen


def random_crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding by `pad`, then a random horizontal flip, per sample."""
    b, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    off = torch.randint(0, 2 * pad + 1, (b, 2), generator=gen, device=x.device)
    rows = off[:, :1] + torch.arange(h, device=x.device)  # (B, H)
    cols = off[:, 1:] + torch.arange(w, device=x.device)  # (B, W)
    bi = torch.arange(b, device=x.device).view(b, 1, 1)
    out = xp.permute(0, 2, 3, 1)[bi, rows.view(b, h, 1), cols.view(b, 1, w)].permute(
        0, 3, 1, 2
    )  # (B, C, H, W)
    flip = torch.rand(b, generator=gen, device=x.device) < 0.5
    # contiguous: a channels-last view here made the CPU convolution backward abort (torch 2.14.1)
    return torch.where(flip.view(b, 1, 1, 1), out.flip(-1), out).contiguous()


# -- networks ------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """The ResNet18 residual block: two 3x3 convs with batchnorm, identity or 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, activation: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act1 = activation_module(activation)
        self.act2 = activation_module(activation)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet_stage(cin: int, cout: int, stride: int, activation: str, blocks: int = 2) -> nn.Sequential:
    """One ResNet18 stage: `blocks` BasicBlocks, the first one strided."""
    layers = [BasicBlock(cin, cout, stride, activation)]
    layers += [BasicBlock(cout, cout, 1, activation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def resnet18_stages(width: int, activation: str) -> nn.ModuleList:
    """The four stages of ResNet18 with channels w, 2w, 4w, 8w (w = 64 is the original)."""
    chans = [width, 2 * width, 4 * width, 8 * width]
    return nn.ModuleList(
        resnet_stage(cin, cout, 1 if i == 0 else 2, activation)
        for i, (cin, cout) in enumerate(zip([width, *chans[:-1]], chans, strict=True))
    )


def conv_out(side: int, stride: int) -> int:
    """Output side of a 3x3 convolution with padding 1 (or a k=3,s=2,p=1 max pool)."""
    return (side - 1) // stride + 1


def make_optimizer(name: str, params: object, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam, RMSProp, or SGD with momentum 0.9."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)  # type: ignore[arg-type]
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)  # type: ignore[arg-type]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)  # type: ignore[arg-type]
    raise ValueError(f"unknown optimizer {name!r}; known: adam, rmsprop, sgd")


# -- metrics -------------------------------------------------------------------------------------


def emd_1d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample earth mover (1-Wasserstein) distance between empirical value distributions.

    ``a``: (B, n), ``b``: (B, m), each row an empirical distribution with equal weights on its
    values; n and m may differ. W1 = ∫_0^1 |Q_a(u) - Q_b(u)| du with Q the empirical quantile
    functions, computed exactly on the merged grid {i/n} ∪ {j/m} in integer arithmetic.
    Returns shape (B,). For n == m it is ``mean |sort(a) - sort(b)|``.
    """
    n, m = a.shape[1], b.shape[1]
    sa, sb = a.sort(dim=1).values, b.sort(dim=1).values
    if n == m:
        return (sa - sb).abs().mean(dim=1)
    dev = a.device
    # Breakpoints in units of 1/(n*m): i*m for the quantiles of a, j*n for those of b.
    t = (
        torch.cat([torch.arange(1, n + 1, device=dev) * m, torch.arange(1, m + 1, device=dev) * n])
        .sort()
        .values
    )
    prev = torch.cat([torch.zeros(1, dtype=t.dtype, device=dev), t[:-1]])
    mid2 = prev + t  # twice the interval midpoint
    ia = (mid2 // (2 * m)).clamp_max(n - 1)  # floor(u * n) at the midpoint u
    ib = (mid2 // (2 * n)).clamp_max(m - 1)
    dt = (t - prev).to(a.dtype) / (n * m)
    return ((sa[:, ia] - sb[:, ib]).abs() * dt).sum(dim=1)


def _gauss_1d(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _ssim_and_cs(
    x: torch.Tensor, y: torch.Tensor, win: torch.Tensor, data_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(sample, channel) SSIM and contrast-structure term, valid (unpadded) Gaussian filter."""
    c = x.shape[1]
    wh = win.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    wv = win.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, wv, groups=c), wh, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    cs_map = (2 * sxy + c2) / (sxx + syy + c2)
    ssim_map = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs_map
    return ssim_map.flatten(2).mean(-1), cs_map.flatten(2).mean(-1)


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_levels(side: int) -> tuple[int, int]:
    """(scales, window) used for images whose smaller side is `side`.

    Images larger than 160 pixels get the standard MS-SSIM (5 scales, 11-pixel window). Smaller
    ones keep a 7-pixel window and as many scales as leave the window inside the image.
    """
    if side > 160:
        return 5, 11
    if side < 7:
        raise ValueError(f"MS-SSIM needs images of at least 7x7 pixels, got a smaller side of {side}")
    return min(5, 1 + math.floor(math.log2(side / 7) + 1e-9)), 7


def ms_ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    levels: int | None = None,
    win_size: int | None = None,
) -> torch.Tensor:
    """Per-sample MS-SSIM of (B, C, H, W) images: shape (B,).

    Wang et al.'s definition as pytorch_msssim computes it (Gaussian window sigma 1.5, valid
    filtering, 2x2 average pooling with odd-size padding, negative terms clipped to 0), with the
    first `levels` of the standard scale weights renormalised to sum to 1 when fewer than 5
    scales fit. With ``levels=5, win_size=11`` it equals ``pytorch_msssim.ms_ssim``.
    """
    auto_levels, auto_win = ms_ssim_levels(min(x.shape[-2:]))
    levels = levels or auto_levels
    win_size = win_size or auto_win
    weights = torch.tensor(MS_SSIM_WEIGHTS[:levels], dtype=x.dtype, device=x.device)
    weights = weights / weights.sum()
    win = _gauss_1d(win_size, 1.5, x.dtype, x.device)
    terms = []
    for i in range(levels):
        ssim_c, cs_c = _ssim_and_cs(x, y, win, data_range)
        if i < levels - 1:
            terms.append(cs_c.relu())
            padding = [s % 2 for s in x.shape[2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=padding)
            y = F.avg_pool2d(y, kernel_size=2, padding=padding)
    terms.append(ssim_c.relu())
    stacked = torch.stack(terms, dim=0)  # (levels, B, C)
    return torch.prod(stacked ** weights.view(-1, 1, 1), dim=0).mean(dim=1)


@torch.no_grad()
def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    *,
    epochs: int,
    lr: float,
    seed: int,
    batch_size: int = 256,
) -> float:
    """Test accuracy of a logistic-regression classifier trained on (train_x, train_y).

    Features are standardised with the training mean and std; the classifier is one linear
    layer trained with Adam and cross-entropy for `epochs` epochs of minibatches. Seeded from
    `seed` alone (its own generators; the global RNG is untouched).
    """
    dev = train_x.device
    mean = train_x.float().mean(dim=0, keepdim=True)
    std = (
        train_x.float().std(dim=0, keepdim=True).clamp_min(1e-6)
        if len(train_x) > 1
        else torch.ones_like(mean)
    )
    xtr = (train_x.float() - mean) / std
    xte = (test_x.float() - mean) / std
    gen = torch.Generator(device="cpu").manual_seed(stable_seed(seed, 0x9B0B))
    bound = 1.0 / math.sqrt(xtr.shape[1])
    weight = ((torch.rand(num_classes, xtr.shape[1], generator=gen) * 2 - 1) * bound).to(dev)
    bias = torch.zeros(num_classes, device=dev)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    opt = torch.optim.Adam([weight, bias], lr=lr)
    n = xtr.shape[0]
    bs = min(batch_size, n)
    with torch.enable_grad():
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen).to(dev)
            for i in range(0, n - bs + 1, bs):
                idx = perm[i : i + bs]
                loss = F.cross_entropy(F.linear(xtr[idx], weight, bias), train_y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    pred = F.linear(xte, weight, bias).argmax(dim=1)
    return float((pred == test_y).float().mean())


def collect(
    split: ImageSplit,
    batch_size: int,
    device: torch.device,
    fn: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn`` applied to every batch of `split` (images as floats in [0, 1]): (features, labels)."""
    feats, labels = [], []
    for x, y in split.batches(batch_size):
        feats.append(fn(x.to(device).float() / 255))
        labels.append(y.to(device))
    return torch.cat(feats), torch.cat(labels)


__all__ = [
    "NUM_CLASSES",
    "BasicBlock",
    "ConvApproximator",
    "StepBatchSampler",
    "StreamImages",
    "TensorImages",
    "TrainBatches",
    "emd_1d",
    "fake_images",
    "linear_probe",
    "ms_ssim",
    "random_crop_flip",
    "resnet18_stages",
]
