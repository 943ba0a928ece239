"""Non-differentiable ("hard") functions and their registry.

Call contract of every registered hard function: ``fn(x, **params) -> Tensor`` where ``x`` has
shape ``(B, *F)`` (a batch of samples with feature shape ``F``), and the result has shape
``(B, *out_shape(F, **params))``. Functions act on each sample independently (nothing mixes
the batch), so a result never depends on what else is in the batch or on its size.

Non-finite input has a documented result, never a silent wrong one, and costs no host sync:
an output element that depends on a NaN input is NaN. Per function:

========== ==========================================================================
signum     NaN -> NaN; +-Inf -> +-1 (they are beyond any margin).
binary     the whole sample is NaN if its mean is NaN (a NaN, or both +Inf and -Inf);
           with only +Inf present the mean is +Inf and exactly the +Inf entries are 1.
sort       NaN sorts as larger than +Inf (torch.sort's order); +-Inf sort as numbers.
sort_rowcol, topk   as sort, along each row and each column (topk reading 'largest': NaN
           counts as the largest value).
kmeans     a sample with any NaN or +-Inf gives an all-NaN sample (centroids undefined).
bernoulli  NaN -> NaN; +Inf -> 1, -Inf -> 0 (sigmoid's limits).
========== ==========================================================================

Choices the paper leaves open are written next to each function.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from dab_core.registry import Registry, UnknownNameError

Shape = tuple[int, ...]
HardFn = Callable[..., torch.Tensor]
OutShapeFn = Callable[..., Shape]


class HardParamError(Exception):
    """A hard function's parameter is wrong.

    Attributes:
        function: the hard function's name.
        param: the parameter at fault (None when the message is about several).
        accepted: the parameters the function takes.

    Callers that locate the mistake (a config field such as ``hard_params.eps``) read these,
    not the message. The concrete classes are also `TypeError` or `ValueError`, as the
    errors they replace were.
    """

    def __init__(
        self, message: str, *, function: str = "", param: str | None = None, accepted: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message)
        self.function = function
        self.param = param
        self.accepted = accepted

    def __reduce__(self) -> tuple[Any, ...]:  # keyword-only attributes survive pickling
        return (_rebuild, (type(self), str(self), self.function, self.param, self.accepted))


def _rebuild(
    cls: type[HardParamError], message: str, function: str, param: str | None, accepted: tuple[str, ...]
) -> HardParamError:
    return cls(message, function=function, param=param, accepted=accepted)


class HardParamTypeError(HardParamError, TypeError):
    """A parameter the function does not take, or a required one left out."""


class HardParamValueError(HardParamError, ValueError):
    """A parameter's value the function cannot work with (``eps < 0``, ``k`` too large)."""


def _same_shape(in_shape: Shape, **_: Any) -> Shape:
    return tuple(in_shape)


@dataclass(frozen=True)
class HardFunctionDef:
    """A registered hard function: the callable, its output shape rule and its parameters.

    ``elementwise``: each output element depends on the input element at the same place only.
    ``stochastic``: the function draws random numbers (from torch's global RNG), so two calls
    on the same input may differ; estimators that relax a random draw (``gumbel``) need it.
    """

    name: str
    fn: HardFn
    out_shape: OutShapeFn = _same_shape
    elementwise: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    stochastic: bool = False

    def bind(self, **params: Any) -> BoundHardFunction:
        unknown = sorted(set(params) - set(self.defaults))
        accepted = tuple(sorted(self.defaults))
        if unknown:
            raise HardParamTypeError(
                f"hard function {self.name!r}: unknown parameter {unknown[0]!r}; "
                f"accepts: {', '.join(accepted) or 'none'}",
                function=self.name,
                param=unknown[0],
                accepted=accepted,
            )
        for key, value in params.items():
            kind = _kind(self.defaults[key])
            if kind is not None and _kind(value) != kind:
                raise HardParamTypeError(
                    f"hard function {self.name!r}: parameter {key!r} is a {kind}, got {value!r}",
                    function=self.name,
                    param=key,
                    accepted=accepted,
                )
        merged = {**self.defaults, **params}
        missing = sorted(k for k, v in merged.items() if v is inspect.Parameter.empty)
        if missing:
            raise HardParamTypeError(
                f"hard function {self.name!r}: parameter {missing[0]!r} is required",
                function=self.name,
                param=missing[0],
                accepted=accepted,
            )
        return BoundHardFunction(self, merged)


def _kind(value: Any) -> str | None:
    """A parameter's kind as its default declares it: what a given value must match, so that
    a config's string where a number belongs is refused naming the parameter."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


@dataclass(frozen=True)
class BoundHardFunction:
    """A hard function with its parameters fixed: what a `DAB` bridge holds."""

    definition: HardFunctionDef
    params: dict[str, Any]

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def elementwise(self) -> bool:
        return self.definition.elementwise

    @property
    def stochastic(self) -> bool:
        return self.definition.stochastic

    def out_shape(self, in_shape: Shape | int) -> Shape:
        """Per-sample output shape for per-sample input shape `in_shape`."""
        shape = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
        return tuple(self.definition.out_shape(shape, **self.params))

    def preserves_shape(self, in_shape: Shape | int) -> bool:
        shape = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
        return self.out_shape(shape) == shape

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear ValueError unless `x` is a batch ``(B, *F)`` this function accepts."""
        if x.dim() < 2:
            raise ValueError(
                f"hard function {self.name!r} expects a batch of shape (B, *features), "
                f"got shape {tuple(x.shape)}"
            )
        self.out_shape(tuple(x.shape[1:]))  # validates the shape with a clear message

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.definition.fn(x, **self.params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.name}({args})"


class HardFunctionRegistry(Registry[HardFunctionDef]):
    """Registry of hard functions.

    ``get(name, **params)`` returns a `BoundHardFunction`, called as ``f(x)`` on ``(B, *F)``.
    Register your own with the decorator::

        @hard_functions.register("clip01", elementwise=True)
        def clip01(x, lo: float = 0.0):
            return x.clamp(lo, 1.0)

    or from an installed package through the entry-point group ``dab_core.hard_functions``.
    """

    def register(  # type: ignore[override]
        self,
        name: str,
        *,
        out_shape: OutShapeFn | None = None,
        elementwise: bool = False,
        stochastic: bool = False,
    ) -> Callable[[HardFn], HardFn]:
        def deco(fn: HardFn) -> HardFn:
            sig = inspect.signature(fn)
            params = list(sig.parameters.values())[1:]  # the first is the input tensor
            defaults = {p.name: p.default for p in params}
            self.add(
                name,
                HardFunctionDef(name, fn, out_shape or _same_shape, elementwise, defaults, stochastic),
            )
            return fn

        return deco

    def get(self, name: str, **params: Any) -> BoundHardFunction:
        return self.lookup(name).bind(**params)


hard_functions = HardFunctionRegistry("hard function", entry_point_group="dab_core.hard_functions")


def _nan_where(mask: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, torch.full_like(out, math.nan), out)


# -- signum ------------------------------------------------------------------------------------


def _signum_shape(in_shape: Shape, eps: float = 0.5) -> Shape:
    if not eps >= 0:
        raise HardParamValueError(f"signum: eps must be >= 0, got {eps!r}", function="signum", param="eps")
    return in_shape


@hard_functions.register("signum", out_shape=_signum_shape, elementwise=True)
def signum(x: torch.Tensor, eps: float = 0.5) -> torch.Tensor:
    """Epsilon-margin signum (paper eq. 11): -1 below -eps, +1 above eps, 0 in [-eps, eps]."""
    out = (x > eps).to(x.dtype) - (x < -eps).to(x.dtype)
    return torch.where(torch.isnan(x), x, out)


# -- binary ------------------------------------------------------------------------------------


@hard_functions.register("binary")
def binary(x: torch.Tensor) -> torch.Tensor:
    """1 where x >= the mean of its own sample (over all features), else 0 (paper, section 5.2)."""
    mean = x.flatten(1).mean(dim=1).view(-1, *([1] * (x.dim() - 1)))  # (B, 1, ..., 1)
    out = (x >= mean).to(x.dtype)
    return _nan_where(torch.isnan(mean).expand_as(out), out)


# -- sorting family ----------------------------------------------------------------------------


@hard_functions.register("sort")
def sort(x: torch.Tensor, descending: bool = False) -> torch.Tensor:
    """Flatten each sample, sort it, and give it back in the input's shape.

    Keeping the shape is what lets STE run on it (paper, Figure 6 right: "flatten the feature
    map and run a single sort operation. This allows us to utilize the STE").
    """
    return x.flatten(1).sort(dim=1, descending=descending).values.view_as(x)


def _rowcol_shape(in_shape: Shape, descending: bool = False) -> Shape:
    if len(in_shape) < 2:
        raise ValueError(
            "sort_rowcol needs at least 2 feature dimensions (rows, columns) per sample, "
            f"got feature shape {in_shape}"
        )
    return (2 * math.prod(in_shape),)


@hard_functions.register("sort_rowcol", out_shape=_rowcol_shape)
def sort_rowcol(x: torch.Tensor, descending: bool = False) -> torch.Tensor:
    """sort-row(x) ⊕ sort-col(x) (paper, Table 2), flattened: (B, *F) -> (B, 2 * prod(F)).

    Rows and columns are the last two feature dimensions; leading feature dimensions
    (channels) are kept apart. The result is flat because the concatenation changes the size.
    """
    rows = x.sort(dim=-1, descending=descending).values
    cols = x.sort(dim=-2, descending=descending).values
    return torch.cat([rows.flatten(1), cols.flatten(1)], dim=1)


TOPK_READINGS = ("rowcol", "largest")


def _topk_shape(in_shape: Shape, k: int, descending: bool = True, reading: str = "rowcol") -> Shape:
    if reading not in TOPK_READINGS:
        raise HardParamValueError(
            f"topk: reading must be one of {', '.join(TOPK_READINGS)}, got {reading!r}",
            function="topk",
            param="reading",
        )
    if reading == "largest" and not descending:
        raise HardParamValueError(
            "topk: reading 'largest' takes the k largest values; descending applies to 'rowcol' only",
            function="topk",
            param="descending",
        )
    total = _rowcol_shape(in_shape)[0] if reading == "rowcol" else math.prod(in_shape)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= total:
        raise HardParamValueError(
            f"topk: k must be an integer in [1, {total}] for feature shape {in_shape} "
            f"(reading {reading!r}), got {k!r}",
            function="topk",
            param="k",
        )
    return (k,)


@hard_functions.register("topk", out_shape=_topk_shape)
def topk(x: torch.Tensor, k: int, descending: bool = True, reading: str = "rowcol") -> torch.Tensor:
    """Top-k of a sample, in one of two readings of the paper's Table 2 row
    "(sort-row(x) ⊕ sort-col(x))[0:k]":

    * ``rowcol`` (the default, the formula as written): the first k entries of `sort_rowcol`,
      sorted descending by default so that they are the largest of each sorted row. On a
      (C, H, W) map with k <= C*H*W this is the row-sorted values of the first channels only:
      on Table 2's 512x4x4 map, ``k: 512`` keeps channels 0-31 and no column sort at all.
    * ``largest``: the k largest values of the whole sample, in descending order
      (``x.flatten(1).topk(k)``): what a reader means by "Topk", and what every channel can reach.
      NaN counts as larger than every number (torch.topk's order).

    The default stays ``rowcol`` so that a config written before ``reading`` existed keeps its
    meaning (and its trial key); `configs/table2_cifar10.yaml` chooses ``largest`` and says why.
    """
    if reading == "largest":
        return x.flatten(1).topk(k, dim=1).values
    return sort_rowcol(x, descending=descending)[:, :k]


# -- kmeans ------------------------------------------------------------------------------------


def _kmeans_shape(in_shape: Shape, k: int = 10, iters: int = 10) -> Shape:
    if not isinstance(k, int) or k < 1:
        raise HardParamValueError(
            f"kmeans: k must be an integer >= 1, got {k!r}", function="kmeans", param="k"
        )
    if not isinstance(iters, int) or iters < 0:
        raise HardParamValueError(
            f"kmeans: iters must be an integer >= 0, got {iters!r}", function="kmeans", param="iters"
        )
    return in_shape


@hard_functions.register("kmeans", out_shape=_kmeans_shape)
def kmeans(x: torch.Tensor, k: int = 10, iters: int = 10) -> torch.Tensor:
    """Per-sample 1-D k-means: each value is replaced by the centroid of its cluster.

    Axis (the paper leaves it open): the scalar values of one sample are clustered, not the
    samples of a batch. Clustering across the batch would make a sample's output depend on
    its batch-mates and on the batch size (eval with batch 1 would be meaningless); clustering
    spatial positions would need a minimum number of positions. Values quantised to k levels
    keep the input's shape, so STE applies too. Lloyd's algorithm, `iters` rounds, centroids
    initialised at evenly spaced quantiles (deterministic, no RNG); an empty cluster keeps
    its centroid; ties go to the lower centroid.
    """
    v = x.flatten(1)  # (B, N)
    n = v.shape[1]
    finite = torch.isfinite(v).all(dim=1, keepdim=True)  # (B, 1)
    v_safe = torch.where(finite, v, torch.zeros_like(v))
    idx = torch.linspace(0, n - 1, k, device=x.device).round().long()
    centroids = v_safe.sort(dim=1).values[:, idx]  # (B, k)
    ones = torch.ones_like(v_safe)

    def nearest(c: torch.Tensor) -> torch.Tensor:
        return (v_safe.unsqueeze(2) - c.unsqueeze(1)).abs().argmin(dim=2)  # (B, N)

    for _ in range(iters):
        assign = nearest(centroids)
        sums = torch.zeros_like(centroids).scatter_add_(1, assign, v_safe)
        counts = torch.zeros_like(centroids).scatter_add_(1, assign, ones)
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
    out = centroids.gather(1, nearest(centroids))
    return _nan_where((~finite).expand_as(out), out).view_as(x)


# -- bernoulli ---------------------------------------------------------------------------------


@hard_functions.register("bernoulli", elementwise=True, stochastic=True)
def bernoulli(x: torch.Tensor) -> torch.Tensor:
    """A sample z ~ Bern(sigmoid(x)), no reparameterisation (paper, dab-bernoulli).

    Draws one uniform per element from torch's global RNG, which trial checkpoints save and
    restore.
    """
    return bernoulli_with_noise(x)[0]


def bernoulli_with_noise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The `bernoulli` sample and the uniforms ``u`` behind it: ``z = 1[u < sigmoid(x)]``.

    The same draw as `bernoulli` (it is `bernoulli`'s body), so an estimator that needs the
    noise (``gumbel``) has a forward equal to `bernoulli` bit for bit under the same RNG state.
    """
    p = torch.sigmoid(x)
    u = torch.rand_like(p)
    out = (u < p).to(x.dtype)
    return torch.where(torch.isnan(x), x, out), u


__all__ = [
    "BoundHardFunction",
    "HardFunctionDef",
    "HardFunctionRegistry",
    "HardParamError",
    "HardParamTypeError",
    "HardParamValueError",
    "UnknownNameError",
    "bernoulli_with_noise",
    "hard_functions",
]
