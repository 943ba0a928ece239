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

Other estimators come from the registry `dab_core.estimators.estimators` (``ste``, ``perturbed``,
``blackbox``, ``gumbel``, the paper's baselines ``elu``, ``tanh``, ``identity`` that replace the
hard function altogether, and any a plugin registers); ``estimator_params`` are validated
against the chosen one, and an estimator that cannot serve the hard function is refused at
construction (or, for shape rules with no ``in_shape`` given, at the first call).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dab_core.approximators import DenseApproximator, ElementwiseApproximator
from dab_core.estimators import ESTIMATORS, EstimatorContext, EstimatorDef, estimators
from dab_core.hard import BoundHardFunction, Shape, hard_functions

#: The estimators the experiment families' configs accept today (a pydantic ``Literal``); the
#: registry holds more (`ESTIMATORS`, and plugins), and `DAB` takes any registered name.
Estimator = Literal["dab", "ste", "elu", "tanh", "identity"]
DabLossName = Literal["l2", "l1", "huber", "cosine"]
DAB_LOSSES: tuple[str, ...] = ("l2", "l1", "huber", "cosine")


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
        approximator: ``g_phi``; built by `default_approximator` when None (for estimators
            that use one: ``dab``).
        gamma: weight of the DAB loss (the paper's gamma).
        estimator: a name in `dab_core.estimators.estimators`: ``dab``; ``ste``;
            ``perturbed``, ``blackbox``, ``gumbel``; or a plain activation baseline (``elu``,
            ``tanh``, ``identity``), which replaces the hard function altogether.
        estimator_params: the estimator's parameters (``{"sigma": 0.5}`` for ``perturbed``);
            defaults fill the rest. Unknown or invalid ones raise `EstimatorParamError`.
        in_shape: per-sample input shape, needed to build a dense approximator, and used to
            check an estimator's shape rule and the approximator's output shape up front.
        dab_loss: distance of the DAB loss: ``l2`` (the paper's), ``l1``, ``huber``, ``cosine``.
        dab_loss_to_input: let the DAB loss reach ``x`` as well (off: the authors' behaviour).
        hard_params: parameters of the hard function when ``hard`` is a name.
        check_finite: raise on non-finite input (costs one host sync per call; off by default,
            where non-finite input follows each hard function's documented result).

    Attributes:
        estimator: the estimator's name; ``estimator_def``: its `EstimatorDef`;
        ``estimator_params``: its validated parameters.
    """

    def __init__(
        self,
        hard: str | BoundHardFunction,
        approximator: nn.Module | None = None,
        gamma: float = 10.0,
        estimator: str = "dab",
        *,
        estimator_params: dict[str, Any] | None = None,
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
        est = estimators.get(estimator)  # UnknownNameError: "unknown estimator ...; known: ..."
        params = est.validate_params(estimator_params)
        if dab_loss not in DAB_LOSSES:
            raise ValueError(f"unknown dab_loss {dab_loss!r}; known: {', '.join(DAB_LOSSES)}")
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
        est.check(hard, in_shape)
        self.hard = hard
        # the name, not the definition: a bridge pickles (its definition holds closures) and
        # finds its estimator in the registry of the process it runs in
        self._estimator = est.name
        self.estimator_params: dict[str, Any] = params
        self.gamma = float(gamma)
        self.dab_loss_kind = dab_loss
        self.dab_loss_to_input = dab_loss_to_input
        self.check_finite = check_finite
        self.approximator: nn.Module | None = None
        if est.uses_approximator:
            if approximator is None:
                approximator = default_approximator(hard, in_shape, approximator_hidden)
            elif in_shape is not None:
                _check_declared_shape(hard, approximator, in_shape)
            self.approximator = approximator
        elif approximator is not None:
            raise ValueError(f"estimator {estimator!r} uses no approximator; do not pass one")
        self.dab_loss: torch.Tensor | None = None

    @property
    def estimator(self) -> str:
        return self._estimator

    @property
    def estimator_def(self) -> EstimatorDef:
        return estimators.get(self._estimator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.dab_loss = None
        est = self.estimator_def
        ctx = EstimatorContext(self.hard, self.estimator_params, self.approximator, self.dab_loss_to_input)
        if not est.exact_forward:
            return est.fn(x, ctx)  # type: ignore[no-any-return]
        if self.check_finite and not bool(torch.isfinite(x).all()):
            raise FloatingPointError(f"DAB({self.hard!r}): non-finite values in the input")
        if not (self.training and torch.is_grad_enabled()):
            return self.hard(x)
        if est.requires_shape_preserving:
            est.check(self.hard, tuple(x.shape[1:]))  # cheap: compares shapes
        if not est.uses_approximator:
            return est.fn(x, ctx)  # type: ignore[no-any-return]
        out, soft = est.fn(x, ctx)
        if soft.shape != out.shape:  # the DAB loss would broadcast one onto the other
            raise ValueError(
                f"DAB({self.hard!r}): the approximator ({type(self.approximator).__name__}) produced "
                f"shape {tuple(soft.shape)}, but the hard function {self.hard.name!r} gives "
                f"{tuple(out.shape)} for input shape {tuple(x.shape)}; the approximator must "
                "output the hard function's shape"
            )
        dist = dab_distance(out.detach(), soft, self.dab_loss_kind)  # (B,)
        self.dab_loss = self.gamma * dist.mean()
        return out

    def extra_repr(self) -> str:
        params = f", estimator_params={self.estimator_params}" if self.estimator_params else ""
        return f"hard={self.hard!r}, estimator={self.estimator!r}, gamma={self.gamma}{params}"


def _check_declared_shape(hard: BoundHardFunction, approximator: nn.Module, in_shape: Shape | int) -> None:
    """Compare an approximator's shapes with the hard function's before any data, where the
    approximator declares them (dab_core's own); any other module is checked at the first call."""
    shape = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
    expected = hard.out_shape(shape)
    if isinstance(approximator, DenseApproximator):
        if approximator.in_shape != shape:
            raise ValueError(
                f"DAB({hard!r}): the approximator (DenseApproximator) takes per-sample shape "
                f"{approximator.in_shape}, but in_shape is {shape}"
            )
        declared = approximator.out_shape
    elif isinstance(approximator, ElementwiseApproximator):
        declared = shape
    else:
        return
    if declared != expected:
        raise ValueError(
            f"DAB({hard!r}): the approximator ({type(approximator).__name__}) outputs per-sample "
            f"shape {declared}, but the hard function {hard.name!r} gives {expected} for feature "
            f"shape {shape}; the approximator must output the hard function's shape"
        )


def strip_approximators(model: nn.Module) -> nn.Module:
    """Drop every bridge's approximator for inference and export (the paper: "at inference,
    we drop the DAB network entirely"). The model is changed in place, put in eval mode, and
    returned; its bridges then refuse to train."""
    for module in model.modules():
        if isinstance(module, DAB) and module.approximator is not None:
            module.approximator = None
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
