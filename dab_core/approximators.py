"""Approximator networks g_phi: small, smooth networks that stand in for a hard function's
gradient. Two kinds: a dense MLP over the flattened sample (the authors' demo), and a tiny MLP
shared by every element (for element-wise hard functions: size independent of the input)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

Shape = tuple[int, ...]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "elu": nn.ELU, "relu": nn.ReLU}


def activation(name: str) -> nn.Module:
    """The activation layer `name` names: the one map every family and approximator uses."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def mlp(sizes: Sequence[int], activation: str = "tanh") -> nn.Sequential:
    """Linear layers of the given sizes with `activation` between them (none after the last)."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; known: {', '.join(_ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class DenseApproximator(nn.Module):
    """MLP from the flattened sample to the flattened hard output: (B, *in) -> (B, *out).

    With ``hidden=(128, 128)`` and tanh this is the approximator of the authors' public demo
    (Linear 256->128, Tanh, Linear 128->128, Tanh, Linear 128->256).
    """

    def __init__(
        self,
        in_shape: Shape | int,
        out_shape: Shape | int,
        hidden: Sequence[int] = (128, 128),
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        self.in_shape = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
        self.out_shape = (out_shape,) if isinstance(out_shape, int) else tuple(out_shape)
        sizes = [math.prod(self.in_shape), *hidden, math.prod(self.out_shape)]
        self.net = mlp(sizes, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert tuple(x.shape[1:]) == self.in_shape, (
            f"DenseApproximator built for feature shape {self.in_shape}, got {tuple(x.shape[1:])}"
        )
        return self.net(x.flatten(1)).view(x.shape[0], *self.out_shape)


class ElementwiseApproximator(nn.Module):
    """One scalar MLP (1 -> hidden -> 1) applied to every element: shape-preserving, and its
    size does not grow with the input (the right prior for signum, bernoulli, ...)."""

    def __init__(self, hidden: Sequence[int] = (16, 16), activation: str = "tanh") -> None:
        super().__init__()
        self.net = mlp([1, *hidden, 1], activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(-1, 1)).view_as(x)


class ConvApproximator(nn.Module):
    """Shape-preserving approximator for feature maps: 3x3 convs with tanh, then a 1x1 conv.

    Its size grows with the channel count only, not with the map's area; its receptive field is
    local (2 + number of hidden layers pixels), which suits local functions (signum, kmeans
    quantisation) and not global ones (a flattened sort).
    """

    def __init__(self, channels: int, hidden: Sequence[int] = (64,)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = channels
        for h in hidden:
            layers += [nn.Conv2d(cin, h, 3, 1, 1), nn.Tanh()]
            cin = h
        layers.append(nn.Conv2d(cin, channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


__all__ = ["ConvApproximator", "DenseApproximator", "ElementwiseApproximator", "activation", "mlp"]
