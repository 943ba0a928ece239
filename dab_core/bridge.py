"""The differentiable approximation bridge (DAB) and its baselines.

Gradient contract of ``DAB(hard, approximator, gamma, estimator="dab")`` in training mode,
for input ``x`` and approximator ``g_phi``:

* forward returns exactly ``hard(x)``, bit for bit;
* backward gives ``x`` the gradient ``J_g(x)^T @ grad_out`` and gives ``phi`` nothing from the
  task loss (the paper's ``BaseHardFn``);
* ``.dab_loss`` holds ``gamma * mean_b sum_features d(hard(x), g_phi(x))`` (d = squared error by
  default). It trains ``phi`` only; with ``dab_loss_to_input=True`` it also reaches ``x``
  (the "conditioning of the preceding layer" of the paper's Figure 6). The authors' public code
  behaves like the default: there the hard output's custom backward and the direct path through
  ``g_phi(x)`` cancel exactly, so ``x`` gets nothing from the DAB loss.

In eval mode, or with gradients disabled, only the hard function runs and ``.dab_loss`` is None.

Other estimators: ``ste`` (forward hard, backward identity; refuses shape-changing functions)
and the plain differentiable activations ``elu``, ``tanh``, ``identity`` that replace the hard
function altogether (the paper's baselines).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dab_core.approximators import DenseApproximator, ElementwiseApproximator
from dab_core.hard import BoundHardFunction, Shape, hard_functions

Estimator = Literal["dab", "ste", "elu", "tanh", "identity"]
DabLossName = Literal["l2", "l1", "huber", "cosine"]
ESTIMATORS: tuple[str, ...] = ("dab", "ste", "elu", "tanh", "identity")
DAB_LOSSES: tuple[str, ...] = ("l2", "l1", "huber", "cosine")

_BASELINES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "elu": F.elu,
    "tanh": torch.tanh,
    "identity": lambda x: x,
}


class _DABFunction(torch.autograd.Function):
    """Forward: the hard function. Backward: the vector-Jacobian product of the approximator.

    ``soft`` is ``g_phi(x_src)`` where ``x_src`` is ``x`` itself or a detached leaf copy of it;
    the gradient for ``x`` is taken w.r.t. ``x_src`` only, so ``phi`` receives nothing here.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        soft: torch.Tensor,
        x_src: torch.Tensor,
        hard: BoundHardFunction,
    ) -> torch.Tensor:
        ctx.save_for_backward(soft, x_src)
        return hard(x)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        soft, x_src = ctx.saved_tensors
        with torch.enable_grad():
            (grad_x,) = torch.autograd.grad(soft, x_src, grad_out, retain_graph=True)
        return grad_x, None, None, None


class _STEFunction(torch.autograd.Function):
    """Forward: the hard function. Backward: the incoming gradient, unchanged."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, hard: BoundHardFunction) -> torch.Tensor:  # type: ignore[override]
        return hard(x)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad_out, None


def dab_distance(hard: torch.Tensor, soft: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Per-sample distance between hard and soft outputs, summed over features: shape (B,)."""
    h, s = hard.flatten(1), soft.flatten(1)
    if kind == "l2":
        return (h - s).pow(2).sum(dim=1)
    if kind == "l1":
        return (h - s).abs().sum(dim=1)
    if kind == "huber":
        return F.huber_loss(s, h, reduction="none").sum(dim=1)
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(s, h, dim=1)
    raise ValueError(f"unknown dab_loss {kind!r}; known: {', '.join(DAB_LOSSES)}")


def default_approximator(
    hard: BoundHardFunction, in_shape: Shape | int | None, hidden: tuple[int, ...] = (128, 128)
) -> nn.Module:
    """The approximator used when none is given.

    Element-wise hard functions get the shared per-element MLP (no shape needed); the others
    get the dense MLP, which needs the per-sample input shape.
    """
    if hard.elementwise and in_shape is None:
        return ElementwiseApproximator()
    if in_shape is None:
        raise ValueError(
            f"DAB({hard.name!r}): give in_shape (the per-sample input shape) or an approximator; "
            f"{hard.name!r} is not element-wise, so its approximator depends on the shape"
        )
    return DenseApproximator(in_shape, hard.out_shape(in_shape), hidden=hidden)


class DAB(nn.Module):
    """A hard function inside a network, with a learned approximator for its gradient.

    Args:
        hard: a registry name (``"signum"``) or a bound function (``hard_functions.get(...)``).
        approximator: ``g_phi``; built by `default_approximator` when None.
        gamma: weight of the DAB loss (the paper's gamma).
        estimator: ``dab``, ``ste``, or a plain activation baseline (``elu``, ``tanh``,
            ``identity``), which replaces the hard function altogether.
        in_shape: per-sample input shape, needed to build a dense approximator or to check
            STE's shape requirement up front.
        dab_loss: distance of the DAB loss: ``l2`` (the paper's), ``l1``, ``huber``, ``cosine``.
        dab_loss_to_input: let the DAB loss reach ``x`` as well (off: the authors' behaviour).
        hard_params: parameters of the hard function when ``hard`` is a name.
        check_finite: raise on non-finite input (costs one host sync per call; off by default,
            where non-finite input follows each hard function's documented result).
    """

    def __init__(
        self,
        hard: str | BoundHardFunction,
        approximator: nn.Module | None = None,
        gamma: float = 10.0,
        estimator: Estimator = "dab",
        *,
        in_shape: Shape | int | None = None,
        dab_loss: DabLossName = "l2",
        dab_loss_to_input: bool = False,
        hard_params: dict[str, Any] | None = None,
        approximator_hidden: tuple[int, ...] = (128, 128),
        check_finite: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(hard, str):
            hard = hard_functions.get(hard, **(hard_params or {}))
        elif hard_params:
            raise ValueError("hard_params applies only when hard is given by name")
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; known: {', '.join(ESTIMATORS)}")
        if dab_loss not in DAB_LOSSES:
            raise ValueError(f"unknown dab_loss {dab_loss!r}; known: {', '.join(DAB_LOSSES)}")
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
        if estimator == "ste" and in_shape is not None and not hard.preserves_shape(in_shape):
            raise ValueError(self._ste_error(hard, in_shape))
        self.hard = hard
        self.estimator = estimator
        self.gamma = float(gamma)
        self.dab_loss_kind = dab_loss
        self.dab_loss_to_input = dab_loss_to_input
        self.check_finite = check_finite
        self.approximator: nn.Module | None = None
        if estimator == "dab":
            self.approximator = approximator or default_approximator(hard, in_shape, approximator_hidden)
        elif approximator is not None:
            raise ValueError(f"estimator {estimator!r} uses no approximator; do not pass one")
        self.dab_loss: torch.Tensor | None = None

    @staticmethod
    def _ste_error(hard: BoundHardFunction, in_shape: Shape | int) -> str:
        return (
            f"estimator 'ste' needs a shape-preserving hard function, but {hard!r} maps feature "
            f"shape {in_shape} to {hard.out_shape(in_shape)}: there is no identity gradient "
            "between them (use estimator 'dab')"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.dab_loss = None
        if self.estimator in _BASELINES:
            return _BASELINES[self.estimator](x)
        if self.check_finite and not bool(torch.isfinite(x).all()):
            raise FloatingPointError(f"DAB({self.hard!r}): non-finite values in the input")
        if not (self.training and torch.is_grad_enabled()):
            return self.hard(x)
        if self.estimator == "ste":
            if x.shape[1:] != torch.Size(self.hard.out_shape(tuple(x.shape[1:]))):
                raise ValueError(self._ste_error(self.hard, tuple(x.shape[1:])))
            return _STEFunction.apply(x, self.hard)  # type: ignore[no-any-return]
        assert self.approximator is not None
        # A detached leaf stands in for x unless the DAB loss should reach x: the task
        # gradient for x is then a VJP through g w.r.t. this leaf only.
        x_src = x if self.dab_loss_to_input else x.detach().requires_grad_(True)
        soft = self.approximator(x_src)
        out: torch.Tensor = _DABFunction.apply(x, soft, x_src, self.hard)
        dist = dab_distance(out.detach(), soft, self.dab_loss_kind)  # (B,)
        self.dab_loss = self.gamma * dist.mean()
        return out

    def extra_repr(self) -> str:
        return f"hard={self.hard!r}, estimator={self.estimator!r}, gamma={self.gamma}"


def strip_approximators(model: nn.Module) -> nn.Module:
    """Drop every bridge's approximator for inference and export (the paper: "at inference,
    we drop the DAB network entirely"). The model is changed in place, put in eval mode, and
    returned; its bridges then refuse to train."""
    for module in model.modules():
        if isinstance(module, DAB) and module.approximator is not None:
            module.approximator = None
            module.estimator = "dab"
            module.register_forward_pre_hook(_refuse_training)
    return model.eval()


def _refuse_training(module: nn.Module, args: Any) -> None:
    if module.training and torch.is_grad_enabled():
        raise RuntimeError("this DAB bridge was stripped for inference; it cannot train")


def dab_loss_of(model: nn.Module) -> torch.Tensor | None:
    """Sum of the DAB losses the model's bridges left on their last forward, or None."""
    losses = [m.dab_loss for m in model.modules() if isinstance(m, DAB) and m.dab_loss is not None]
    return torch.stack(losses).sum() if losses else None


__all__ = [
    "DAB",
    "DAB_LOSSES",
    "ESTIMATORS",
    "dab_distance",
    "dab_loss_of",
    "default_approximator",
    "strip_approximators",
]
