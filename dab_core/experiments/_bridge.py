"""What the three experiment families share about their bridge: the config fields every family's
bridge takes (`BridgeFields`), binding and shaping the hard function with errors that name the
config field (`bind_hard`, `bridge_out_shape`), and building the bridge with the approximator a
config picks (`build_bridge`). Also the small helpers every family used a copy of: `stable_seed`
and `activation_module`.

Each family keeps what differs on its own: which hard function (``hard`` in sorting and
classification, the variant in representation), the estimator's default (sorting's depends on
the model) and the approximator's kinds and sizes (classification also has a conv one).
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field
from torch import nn

from dab_core.approximators import ConvApproximator, DenseApproximator, ElementwiseApproximator, activation
from dab_core.bridge import DAB, DabLossName
from dab_core.config import ConfigError, TrialConfig
from dab_core.estimators import EstimatorDef, EstimatorNotApplicableError, EstimatorParamError, estimators
from dab_core.hard import BoundHardFunction, Shape, hard_functions

ApproximatorKind = Literal["auto", "elementwise", "dense", "conv"]
#: Each approximator kind's hidden sizes when the config gives none.
DEFAULT_HIDDEN: dict[str, tuple[int, ...]] = {"elementwise": (16, 16), "dense": (128, 128), "conv": (64,)}


def stable_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes and machines."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


#: The activation layer a config names: `dab_core.approximators.activation`, the one map.
activation_module = activation


def _known_estimator(name: str) -> str:
    estimators.lookup(name)  # UnknownNameError (a ValueError): "unknown estimator ...; known: ..."
    return name


EstimatorName = Annotated[str, AfterValidator(_known_estimator)]
"""A registered estimator's name (`dab_core.estimators`; the error lists the known names)."""


class BridgeFields(TrialConfig):
    """The bridge's config fields that mean the same in every family: each family's config is
    a `BridgeFields` (hence a `TrialConfig`) with the fields that differ added."""

    hard_params: dict[str, float | int | bool | str] = Field(
        default_factory=dict, description="parameters of the hard function, e.g. {eps: 0.5}"
    )
    dab_loss: DabLossName = Field(
        "l2", description="distance of the DAB loss: l2 (the paper's), l1, huber, cosine"
    )
    dab_loss_to_input: bool = Field(
        False, description="let the DAB loss reach the bridge's input (Figure 6-middle's conditioning)"
    )
    # Left out of the resolved config while empty (exclude_if): a field added after trial keys
    # were published must not change the key of every earlier trial (docs/configs.md).
    estimator_params: dict[str, float | int | bool | str] = Field(
        default_factory=dict,
        description="parameters of the estimator, e.g. {sigma: 0.5, samples: 20} for perturbed",
        exclude_if=lambda v: not v,
    )


def _fields_of(e: Exception) -> tuple[tuple[str, ...], ...]:
    """The fields a hard function's error is about: its parameter, else the function."""
    param = getattr(e, "param", None)
    return (("hard_params", param),) if param else (("hard_params",),)


def bind_hard(name: str, params: dict[str, Any]) -> BoundHardFunction:
    """The hard function with its parameters; a ConfigError naming ``hard_params.<param>``."""
    try:
        return hard_functions.get(name, **params)
    except TypeError as e:
        raise ConfigError(f"hard_params: {e}", *_fields_of(e)) from None


def bridge_out_shape(hard: BoundHardFunction, in_shape: Shape, where: str) -> Shape:
    """The per-sample shape after `hard` for input `in_shape`; a ConfigError naming the
    parameter at fault (``where`` says where the bridge sits, for the message)."""
    try:
        return hard.out_shape(in_shape)
    except ValueError as e:
        raise ConfigError(f"hard_params: {e} ({where})", *_fields_of(e)) from None


def check_estimator(
    name: str, params: dict[str, Any], hard: BoundHardFunction, in_shape: Shape
) -> EstimatorDef:
    """The estimator, after checking its parameters (a ConfigError naming
    ``estimator_params.<param>``) and that it can serve `hard` at `in_shape` (one naming
    ``estimator`` and ``hard``: STE or blackbox on a shape-changing function, gumbel on a
    deterministic one)."""
    est = estimators.get(name)
    try:
        est.validate_params(params)
    except EstimatorParamError as e:
        raise ConfigError(
            f"estimator_params: {e}", ("estimator_params", e.param) if e.param else ("estimator_params",)
        ) from None
    try:
        est.check(hard, in_shape)
    except EstimatorNotApplicableError as e:
        raise ConfigError(str(e), "estimator", "hard") from None
    return est


def bridge_output_shape(estimator: str, hard: BoundHardFunction, in_shape: Shape) -> Shape:
    """What the layer after the bridge reads: the hard function's output, or the input's shape
    where a plain activation replaces the hard function."""
    return hard.out_shape(in_shape) if estimators.get(estimator).exact_forward else in_shape


def build_approximator(
    kind: ApproximatorKind, hard: BoundHardFunction, in_shape: Shape, hidden: tuple[int, ...] | None
) -> nn.Module:
    """The approximator `kind` names (``auto``: element-wise for an element-wise,
    shape-preserving function, else dense), with its default sizes unless `hidden` is given."""
    out = hard.out_shape(in_shape)
    if kind == "auto":
        kind = "elementwise" if hard.elementwise and out == in_shape else "dense"
    sizes = DEFAULT_HIDDEN[kind] if hidden is None else hidden
    if kind == "elementwise":
        return ElementwiseApproximator(sizes)
    if kind == "conv":
        return ConvApproximator(in_shape[0], sizes)
    return DenseApproximator(in_shape, out, sizes)


def build_bridge(
    hard: BoundHardFunction,
    cfg: BridgeFields,
    *,
    in_shape: Shape,
    estimator: str,
    gamma: float,
    approximator: ApproximatorKind = "auto",
    approximator_hidden: tuple[int, ...] | None = None,
) -> DAB:
    """The family's bridge: an approximator only for an estimator that uses one (``dab``)."""
    uses = estimators.get(estimator).uses_approximator
    g = build_approximator(approximator, hard, in_shape, approximator_hidden) if uses else None
    return DAB(
        hard,
        g,
        gamma=gamma,
        estimator=estimator,  # type: ignore[arg-type]
        in_shape=in_shape,
        dab_loss=cfg.dab_loss,
        dab_loss_to_input=cfg.dab_loss_to_input,
        estimator_params=dict(cfg.estimator_params),
    )


__all__ = [
    "DEFAULT_HIDDEN",
    "ApproximatorKind",
    "BridgeFields",
    "EstimatorName",
    "activation_module",
    "bind_hard",
    "bridge_out_shape",
    "bridge_output_shape",
    "build_approximator",
    "build_bridge",
    "check_estimator",
    "stable_seed",
]
