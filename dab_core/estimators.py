"""Gradient estimators for a hard function inside a network, and their registry, in one module
of more than 500 lines because each estimator's formula, parameter choices and refusals are
written next to its code, where a reader checking a result will look for them.

An estimator decides what gradient reaches ``x`` through ``y = f(x)`` when ``f`` (a hard
function, `dab_core.hard`) has a zero or undefined Jacobian. Every estimator except the
baselines keeps the forward exact: the bridge's output is ``f(x)`` bit for bit, and only the
backward differs. Built in:

=========== ==================================================== ===========================
name        backward for ``grad_out = g``                        applies to
=========== ==================================================== ===========================
dab         ``J_approximator(x)^T g`` (the paper)                every function
ste         ``g`` (Bengio et al. 2013)                           shape-preserving functions
perturbed   Gaussian smoothing (Berthet et al. 2020)             every function
blackbox    ``-(f(x - lambda g) - f(x)) / lambda``               shape-preserving functions
            (Vlastelica et al. 2020)
gumbel      relaxed sample's gradient, same noise                ``bernoulli``
            (Maddison et al. 2017; Jang et al. 2017)
elu, tanh,  the activation replaces ``f`` (forward too):         every function (``f`` unused)
identity    the paper's baselines
=========== ==================================================== ===========================

A plugin registers its own with `EstimatorRegistry.register` (see there for the call contract),
or from an installed package through the entry-point group ``dab_core.estimators``.
Configs name an estimator and give ``estimator_params``; `EstimatorDef.validate_params` and
`EstimatorDef.check` refuse mistakes before any compute, with errors that carry the estimator,
the parameter and the function (`EstimatorParamError`, `EstimatorNotApplicableError`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dab_core.hard import BoundHardFunction, HardFn, Shape, bernoulli, bernoulli_with_noise
from dab_core.registry import Registry

# -- errors ------------------------------------------------------------------------------------


class EstimatorError(Exception):
    """A problem with an estimator's choice or use. ``estimator``: its name.

    Callers that locate the mistake (a config field such as ``estimator_params.sigma``) read
    the attributes of the subclasses, not the message. Attributes survive pickling (errors
    cross process boundaries in sweeps).
    """

    def __init__(self, message: str, *, estimator: str = "") -> None:
        super().__init__(message)
        self.estimator = estimator

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_error, (type(self), self.args[0], dict(vars(self))))


def _rebuild_error(cls: type[EstimatorError], message: str, state: dict[str, Any]) -> EstimatorError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class EstimatorParamError(EstimatorError):
    """An estimator's parameter is wrong.

    Attributes:
        estimator: the estimator's name.
        param: the parameter at fault (None when the parameters are not a mapping at all).
        accepted: the parameters the estimator takes.

    The concrete classes are also `TypeError` (unknown parameter) or `ValueError` (bad value),
    as `dab_core.hard.HardParamError`'s are.
    """

    def __init__(
        self, message: str, *, estimator: str = "", param: str | None = None, accepted: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, estimator=estimator)
        self.param = param
        self.accepted = accepted


class EstimatorParamTypeError(EstimatorParamError, TypeError):
    """A parameter the estimator does not take (or parameters that are not a mapping)."""


class EstimatorParamValueError(EstimatorParamError, ValueError):
    """A parameter's value the estimator cannot work with (``sigma <= 0``, ``samples=0``)."""


class EstimatorNotApplicableError(EstimatorError, ValueError):
    """The estimator cannot serve this hard function (or this input shape of it).

    Attributes:
        estimator: the estimator's name.
        function: the hard function's name.
        in_shape, out_shape: the per-sample shapes, when the refusal is about shapes (else None).
    """

    def __init__(
        self,
        message: str,
        *,
        estimator: str = "",
        function: str = "",
        in_shape: Shape | None = None,
        out_shape: Shape | None = None,
    ) -> None:
        super().__init__(message, estimator=estimator)
        self.function = function
        self.in_shape = in_shape
        self.out_shape = out_shape


# -- parameters --------------------------------------------------------------------------------

Check = Callable[[Any], Any]
"""Validates one parameter value: returns it normalised (``10`` -> ``10.0`` for a float) or
raises `ValueError`/`TypeError` with a message that reads after the parameter's name
("must be a finite number > 0, got -1")."""


def positive_float(value: Any) -> float:
    """A finite number > 0 (bools refused: ``True`` is not a scale)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"must be a finite number > 0, got {value!r}")
    return float(value)


def int_between(lo: int, hi: int) -> Check:
    """An integer in ``[lo, hi]`` (an integral float such as ``10.0`` from JSON is accepted)."""

    def check(value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"must be an integer in [{lo}, {hi}], got {value!r}")
        return value

    return check


def boolean(value: Any) -> bool:
    """``True`` or ``False`` only (``0``/``"no"`` are mistakes in a config, not booleans)."""
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def one_of(*choices: str) -> Check:
    """One of the given strings."""

    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return str(value)

    return check


@dataclass(frozen=True)
class Param:
    """One estimator parameter: its default, its check, and why the default is what it is."""

    default: Any
    check: Check
    doc: str = ""


# -- the estimator interface -------------------------------------------------------------------


@dataclass(frozen=True)
class EstimatorContext:
    """What a bridge hands its estimator on each training forward.

    Attributes:
        hard: the bound hard function.
        params: the estimator's validated parameters (defaults filled in).
        approximator: the bridge's approximator (None unless the estimator uses one).
        dab_loss_to_input: the bridge's option (meaningful to approximator estimators only).
    """

    hard: BoundHardFunction
    params: Mapping[str, Any]
    approximator: nn.Module | None = None
    dab_loss_to_input: bool = False


EstimatorFn = Callable[[torch.Tensor, EstimatorContext], Any]
Applies = Callable[[BoundHardFunction], str | None]
"""Returns why the estimator cannot serve this hard function, or None when it can."""


@dataclass(frozen=True)
class EstimatorDef:
    """A registered estimator: how it computes the bridge's output, and what it declares.

    Attributes:
        name: the registry name.
        fn: ``fn(x, ctx) -> out`` (see `EstimatorRegistry` for the contract).
        params: its parameters, by name.
        uses_approximator: it needs the bridge's learned approximator (``dab``) and returns
            ``(out, soft)``; the bridge forms the DAB loss from ``soft``.
        requires_shape_preserving: it needs ``out_shape(F) == F`` (its backward maps a gradient
            of the output's shape onto the input as it is).
        exact_forward: the forward is ``f(x)`` bit for bit (False: a baseline replacing ``f``).
        shape_reason: what a shape-preserving requirement is for, said in a refusal.
        applies: which hard functions it serves, beyond shapes (`Applies`); None: all.
    """

    name: str
    fn: EstimatorFn
    params: Mapping[str, Param] = field(default_factory=dict)
    uses_approximator: bool = False
    requires_shape_preserving: bool = False
    exact_forward: bool = True
    shape_reason: str = ""
    applies: Applies | None = None

    @property
    def accepted(self) -> tuple[str, ...]:
        """The parameter names it takes, sorted."""
        return tuple(sorted(self.params))

    @property
    def defaults(self) -> dict[str, Any]:
        return {k: p.default for k, p in self.params.items()}

    def validate_params(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The parameters with defaults filled in and values normalised.

        Raises:
            EstimatorParamTypeError: an unknown parameter, or `params` not a mapping.
            EstimatorParamValueError: a value its check refuses.
        """
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise EstimatorParamTypeError(
                f"estimator {self.name!r}: estimator_params must be a mapping of parameter names "
                f"to values, got {type(params).__name__}",
                estimator=self.name,
                accepted=self.accepted,
            )
        unknown = sorted(str(k) for k in params if k not in self.params)
        if unknown:
            raise EstimatorParamTypeError(
                f"estimator {self.name!r}: unknown parameter {unknown[0]!r}; "
                f"accepts: {', '.join(self.accepted) or 'none'}",
                estimator=self.name,
                param=unknown[0],
                accepted=self.accepted,
            )
        out: dict[str, Any] = {}
        for name, spec in self.params.items():
            value = params.get(name, spec.default)
            try:
                out[name] = spec.check(value)
            except (TypeError, ValueError) as e:
                raise EstimatorParamValueError(
                    f"estimator {self.name!r}: parameter {name!r} {e}",
                    estimator=self.name,
                    param=name,
                    accepted=self.accepted,
                ) from None
        return out

    def refusal(self, hard: BoundHardFunction, in_shape: Shape | int | None = None) -> str | None:
        """Why this estimator cannot serve `hard` (at per-sample shape `in_shape`, when given),
        or None when it can. The shape rule is checked only when `in_shape` is given."""
        try:
            self.check(hard, in_shape)
        except EstimatorNotApplicableError as e:
            return str(e)
        return None

    def check(self, hard: BoundHardFunction, in_shape: Shape | int | None = None) -> None:
        """Raise `EstimatorNotApplicableError` (naming this estimator and the function, and
        both shapes when the refusal is about shapes) unless this estimator can serve `hard`.
        The shape rule is checked only when `in_shape` is given."""
        if self.applies is not None:
            reason = self.applies(hard)
            if reason is not None:
                raise EstimatorNotApplicableError(
                    f"estimator {self.name!r} cannot serve hard function {hard.name!r}: {reason}",
                    estimator=self.name,
                    function=hard.name,
                )
        if self.requires_shape_preserving and in_shape is not None:
            shape = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
            out = hard.out_shape(shape)
            if out != shape:
                raise EstimatorNotApplicableError(
                    f"estimator {self.name!r} needs a shape-preserving hard function, but {hard!r} "
                    f"maps feature shape {shape} to {out}: {self.shape_reason}",
                    estimator=self.name,
                    function=hard.name,
                    in_shape=shape,
                    out_shape=out,
                )

    def applies_to(self, hard: BoundHardFunction, in_shape: Shape | int | None = None) -> bool:
        """Whether this estimator can serve `hard` (at `in_shape`, when given)."""
        return self.refusal(hard, in_shape) is None


class EstimatorRegistry(Registry[EstimatorDef]):
    """Registry of gradient estimators.

    Call contract: ``fn(x, ctx)`` with ``x`` of shape ``(B, *F)`` and ``ctx`` an
    `EstimatorContext`; it returns the bridge's output ``(B, *out_shape(F))``, or
    ``(out, soft)`` when it declares ``uses_approximator`` (``soft``: the approximator's
    output, from which the bridge forms the DAB loss). An estimator with an exact forward is
    called only in training mode with gradients enabled (elsewhere the bridge runs ``f(x)``
    itself), must return ``f(x)`` bit for bit, and puts its gradient in the backward, most
    simply through `with_estimated_gradient`::

        @estimators.register("scaled_ste", params={"scale": Param(1.0, positive_float)},
                             requires_shape_preserving=True)
        def scaled_ste(x, ctx):
            scale = ctx.params["scale"]
            return with_estimated_gradient(x, lambda x: (ctx.hard(x), lambda g, x, out: scale * g))

    From an installed package, declare ``[project.entry-points."dab_core.estimators"]``; the
    registry imports it on first use, which registers through the decorator.
    """

    def register(  # type: ignore[override]
        self,
        name: str,
        *,
        params: Mapping[str, Param] | None = None,
        uses_approximator: bool = False,
        requires_shape_preserving: bool = False,
        exact_forward: bool = True,
        shape_reason: str = "its backward needs the gradient in the input's shape",
        applies: Applies | None = None,
    ) -> Callable[[EstimatorFn], EstimatorFn]:
        def deco(fn: EstimatorFn) -> EstimatorFn:
            definition = EstimatorDef(
                name,
                fn,
                dict(params or {}),
                uses_approximator,
                requires_shape_preserving,
                exact_forward,
                shape_reason,
                applies,
            )
            definition.validate_params()  # a plugin's bad default fails at registration
            self.add(name, definition)
            return fn

        return deco

    def get(self, name: str) -> EstimatorDef:
        """The estimator registered as `name` (`UnknownNameError` listing the known ones)."""
        return self.lookup(name)


estimators = EstimatorRegistry("estimator", entry_point_group="dab_core.estimators")


# -- a custom backward behind an exact forward -------------------------------------------------

Backward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``backward(grad_out, x, out) -> grad_x``."""


class _EstimatedGradient(torch.autograd.Function):
    """Forward: ``forward(x)``'s output. Backward: the backward it returned.

    ``x`` and the output go through ``save_for_backward`` (in-place changes are caught, and a
    closure holding the output would be a reference cycle through the graph).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, forward: Callable[[torch.Tensor], tuple[torch.Tensor, Backward]]
    ) -> torch.Tensor:
        out, backward = forward(x)
        ctx.backward_fn = backward
        ctx.save_for_backward(x, out)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None]:  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None
        x, out = ctx.saved_tensors
        return ctx.backward_fn(grad_out, x, out), None


def with_estimated_gradient(
    x: torch.Tensor, forward: Callable[[torch.Tensor], tuple[torch.Tensor, Backward]]
) -> torch.Tensor:
    """``forward(x)`` returns ``(out, backward)``: the result is ``out`` exactly, and its
    gradient for ``x`` is ``backward(grad_out, x, out)``.

    ``forward`` runs without autograd recording; ``backward`` is called at most once per
    backward pass and should not hold the output itself (it is passed in).
    """
    return _EstimatedGradient.apply(x, forward)  # type: ignore[no-any-return]


# -- dab: the paper's learned approximator -----------------------------------------------------


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


# -- traceable forms: under torch.compile and torch.func.vmap ---------------------------------
#
# `_DABFunction.backward` calls `torch.autograd.grad`, which TorchDynamo cannot trace (a graph
# break on every bridge call) and which an old-style autograd.Function cannot run under `vmap`
# (stacked seeds). The traceable forms below build the same gradients from plain autograd:
#
#   out = f(x).detach() + (g_frozen(x) - g_frozen(x).detach())
#
# where ``g_frozen`` is the approximator with its parameters detached. The forward value is
# ``f(x) + 0``: equal to ``f(x)`` for a finite approximator output (a ``-0.0`` of ``f`` reads
# ``+0.0``, the only bit that can differ); the backward gives ``x`` exactly ``J_g(x)^T
# grad_out`` and ``phi`` nothing, as `_DABFunction` does. The cost is one more forward of the
# approximator (the DAB loss's ``g(x_src)`` and the frozen ``g(x)`` are two calls where the
# eager form shares one); bench/dab_overhead.py measures compiled against eager whole steps.

_TRACEABLE = False


class traceable_bridges:
    """Within this block every bridge uses the traceable forms (`torch.func.vmap` of a stacked
    model needs them; under ``torch.compile`` they are chosen on their own)."""

    def __enter__(self) -> None:
        global _TRACEABLE
        self._before = _TRACEABLE
        _TRACEABLE = True

    def __exit__(self, *exc: object) -> None:
        global _TRACEABLE
        _TRACEABLE = self._before


def _tracing() -> bool:
    return _TRACEABLE or torch.compiler.is_compiling()


def _frozen_call(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with its parameters and buffers detached: gradients reach ``x`` only."""
    state = {name: t.detach() for name, t in (*module.named_parameters(), *module.named_buffers())}
    return torch.func.functional_call(module, state, (x,))  # type: ignore[no-any-return]


def _dab_traceable(x: torch.Tensor, ctx: EstimatorContext) -> tuple[torch.Tensor, torch.Tensor]:
    assert ctx.approximator is not None, "estimator 'dab' needs an approximator"
    with torch.no_grad():
        hard = ctx.hard(x)
    g_x = _frozen_call(ctx.approximator, x)
    soft = ctx.approximator(x if ctx.dab_loss_to_input else x.detach())
    return hard + (g_x - g_x.detach()), soft


@estimators.register("dab", uses_approximator=True)
def dab(x: torch.Tensor, ctx: EstimatorContext) -> tuple[torch.Tensor, torch.Tensor]:
    """DAB (the paper): forward ``f(x)``, backward ``J_g(x)^T grad_out`` through the learned
    approximator ``g``; returns ``(f(x), g(x))`` and the bridge adds the DAB loss.

    A detached leaf stands in for ``x`` unless the DAB loss should reach ``x``: the task
    gradient for ``x`` is then a VJP through ``g`` w.r.t. this leaf only. Under
    ``torch.compile`` or `traceable_bridges`, the traceable form above gives the same result.
    """
    if _tracing():
        return _dab_traceable(x, ctx)
    assert ctx.approximator is not None, "estimator 'dab' needs an approximator"
    x_src = x if ctx.dab_loss_to_input else x.detach().requires_grad_(True)
    soft = ctx.approximator(x_src)
    out: torch.Tensor = _DABFunction.apply(x, soft, x_src, ctx.hard)
    return out, soft


# -- ste ---------------------------------------------------------------------------------------


class _STEFunction(torch.autograd.Function):
    """Forward: the hard function. Backward: the incoming gradient, unchanged."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, hard: BoundHardFunction) -> torch.Tensor:  # type: ignore[override]
        return hard(x)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad_out, None


@estimators.register(
    "ste",
    requires_shape_preserving=True,
    shape_reason="there is no identity gradient between them (use estimator 'dab')",
)
def ste(x: torch.Tensor, ctx: EstimatorContext) -> torch.Tensor:
    """Straight-through (Bengio et al. 2013, "Estimating or propagating gradients through
    stochastic neurons"): forward ``f(x)``, backward ``grad_out`` as it is."""
    if _tracing():  # the same value and gradient in plain autograd (see `traceable_bridges`)
        with torch.no_grad():
            hard = ctx.hard(x)
        return hard + (x - x.detach())
    return _STEFunction.apply(x, ctx.hard)  # type: ignore[no-any-return]


# -- the paper's baselines: a smooth activation instead of f -----------------------------------


@estimators.register("elu", exact_forward=False)
def elu(x: torch.Tensor, ctx: EstimatorContext) -> torch.Tensor:
    """A paper baseline: ELU replaces the hard function, forward too."""
    return F.elu(x)


@estimators.register("tanh", exact_forward=False)
def tanh(x: torch.Tensor, ctx: EstimatorContext) -> torch.Tensor:
    """A paper baseline: tanh replaces the hard function, forward too."""
    return torch.tanh(x)


@estimators.register("identity", exact_forward=False)
def identity(x: torch.Tensor, ctx: EstimatorContext) -> torch.Tensor:
    """A paper baseline: no non-linearity at all where the hard function was."""
    return x


# -- perturbed: Gaussian smoothing (Berthet et al. 2020) ---------------------------------------

#: Most noise draws (``samples``) of ``perturbed``: the authors' own library defaults to 1000
#: (google-research ``perturbations.perturbed(num_samples=1000)``); each draw is one or two
#: calls of f on the whole batch, all held in memory at once (``samples x B x F``), so more is
#: a mistake, not a study.
MAX_PERTURBED_SAMPLES = 1000


@estimators.register(
    "perturbed",
    params={
        "sigma": Param(
            1.0,
            positive_float,
            "noise scale; the activations feeding the paper's hard functions are O(1) (tanh "
            "outputs, normalised features) and signum's margin is 0.5, so a unit scale reaches a "
            "breakpoint from anywhere in that range; the variance grows as 1/sigma^2",
        ),
        "samples": Param(
            10,
            int_between(1, MAX_PERTURBED_SAMPLES),
            "noise draws per step; the variance falls as 1/samples and the cost is 2 x samples "
            "evaluations of f (antithetic): 10 is about 10x dab's bridge step for signum on a "
            "(1024, 256) batch (bench/estimators_cost.py), where the authors' library's 1000 "
            "would be 50x that",
        ),
        "antithetic": Param(
            True,
            boolean,
            "pair z with -z: the even part of f around x (its mean among it) cancels exactly",
        ),
    },
)
def perturbed(x: torch.Tensor, ctx: EstimatorContext) -> torch.Tensor:
    """Gaussian smoothing (Berthet et al. 2020, "Learning with differentiable perturbed
    optimizers", Prop. 3.1): forward ``f(x)`` exactly; backward the VJP of the smoothed
    ``F_sigma(x) = E_Z[f(x + sigma Z)]``, ``Z ~ N(0, I)``, by the score-function identity
    ``J_{F_sigma}(x) = E[f(x + sigma Z) Z^T] / sigma``.

    Per sample, with ``M = samples`` draws ``z_m`` (shape ``F``) and ``g = grad_out``:

    * plain (``antithetic=False``), the paper's estimator:
      ``grad_x = 1/(M sigma) sum_m <g, f(x + sigma z_m)> z_m``;
    * antithetic (default): ``grad_x = 1/(2 M sigma) sum_m <g, f(x + sigma z_m) - f(x - sigma
      z_m)> z_m`` (``2M`` evaluations of f). Unbiased for the same gradient (``-z`` is as
      likely as ``z``); the even part of ``f`` around ``x``, its mean ``E f`` among it, cancels
      in each pair instead of averaging out, which it does only as ``1/M`` in the plain form
      (where ``E[f] z`` has variance ``|E f|^2 / sigma^2`` per draw).
    * element-wise functions (``hard.elementwise``: output element i depends on input element
      i only) use the diagonal form ``grad_x = g * 1/(M sigma) sum_m f(x + sigma z_m) * z_m``
      (antithetic likewise): the same expectation, since the smoothed Jacobian is diagonal
      too, without the other elements' terms ``g_j f_j z_i`` (zero mean, but their variance
      grows with the feature count).

    ``<., .>`` is over output features, so shape-changing functions work. The draws come from
    torch's global RNG (in the backward only; trial checkpoints restore it); the evaluations of
    ``f`` run as one or two batches of ``M x B`` samples (hard functions act per sample, so
    stacking is exact), holding ``M x B x F`` values at once. ``f(x)`` itself is not used as a
    baseline: antithetic pairs already remove it.
    """
    sigma = float(ctx.params["sigma"])
    samples = int(ctx.params["samples"])
    antithetic = bool(ctx.params["antithetic"])
    hard = ctx.hard

    def backward(g: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return _perturbed_vjp(hard, x, g, sigma, samples, antithetic)

    return with_estimated_gradient(x, lambda x: (hard(x), backward))


def _perturbed_vjp(
    hard: BoundHardFunction, x: torch.Tensor, g: torch.Tensor, sigma: float, samples: int, antithetic: bool
) -> torch.Tensor:
    b, feat = x.shape[0], tuple(x.shape[1:])
    z = torch.randn((samples, *x.shape), dtype=x.dtype, device=x.device)  # (M, B, *F)

    def f_at(shift: torch.Tensor) -> torch.Tensor:  # f on all M perturbed batches in one call
        y = hard((x + shift).reshape(-1, *feat))  # (M*B, *out)
        return y.reshape(samples, b, *y.shape[1:])  # (M, B, *out)

    sz = sigma * z
    diff = f_at(sz) - f_at(-sz) if antithetic else f_at(sz)  # (M, B, *out)
    scale = 1.0 / ((2.0 if antithetic else 1.0) * samples * sigma)
    if hard.elementwise:
        return g * (diff * z).sum(dim=0) * scale  # (B, *F)
    inner = (diff.flatten(2) * g.flatten(1).unsqueeze(0)).sum(dim=2)  # (M, B)
    return (inner.view(samples, b, *([1] * len(feat))) * z).sum(dim=0) * scale  # (B, *F)


# -- blackbox: Vlastelica et al. 2020 ----------------------------------------------------------


@estimators.register(
    "blackbox",
    params={
        "lambda": Param(
            10.0,
            positive_float,
            "interpolation range, a per-task hyperparameter in the paper (the authors' README "
            "example uses 5); 10 is of that order. lambda multiplies grad_out, so it must grow "
            "with the loss's reduction (a mean over a batch of B shrinks grad_out by B)",
        ),
        "sense": Param(
            "max",
            one_of("max", "min"),
            "'max' for functions non-decreasing in their input (every built-in: y = argmax "
            "<x, y>), 'min' for solvers of min <w, y> (the paper's: shortest path, TSP)",
        ),
    },
    requires_shape_preserving=True,
    shape_reason="its backward steps the input along grad_out, which has the output's shape "
    "(use estimator 'dab' or 'perturbed')",
)
def blackbox(x: torch.Tensor, ctx: EstimatorContext) -> torch.Tensor:
    """Blackbox differentiation (Vlastelica et al. 2020, "Differentiation of blackbox
    combinatorial solvers", Algorithm 1): forward ``f(x)``; backward one more call of ``f`` at
    an input moved along ``g = grad_out``, giving the gradient of a piecewise-affine
    interpolation of the loss whose range is ``lambda``.

    The paper's solvers minimise ``<w, y>``: ``w' = w + lambda g``, ``grad_w = -(f(w) -
    f(w')) / lambda`` (``sense="min"``). The built-in hard functions instead grow with their
    input (signum is ``argmax_y <x, y> - eps |y|``); as ``f(x) = y(w)`` at ``w = -x`` the
    same rule reads (``sense="max"``, the default)::

        x' = x - lambda g,        grad_x = -(f(x') - f(x)) / lambda.

    Both are a finite difference of ``f`` along ``-/+ g`` that moves towards outputs with lower
    loss (the interpolation the paper proves exists). Written ``x + lambda g`` with the ``-``
    of the second line, the rule would return ``-g`` for the identity: an ascent direction.

    A finite difference along ``g`` gives ``J g``, not ``J^T g``: the VJP only where ``J`` is
    symmetric, as for the paper's solvers (gradients of concave functions) and element-wise
    or cluster-averaging functions (signum, bernoulli, kmeans). For ``sort`` (``J`` a
    permutation ``P``) it gives ``P g`` where the true VJP is ``P^T g``; it is served, as STE
    is, but is a biased estimate there.
    """
    step = float(ctx.params["lambda"])
    sign = -1.0 if ctx.params["sense"] == "max" else 1.0
    hard = ctx.hard

    def backward(g: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        moved = hard(x + (sign * step) * g)
        return (moved - out) / (sign * step)

    return with_estimated_gradient(x, lambda x: (hard(x), backward))


# -- gumbel: straight-through relaxed Bernoulli ------------------------------------------------


def _bernoulli_logistic(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``bernoulli``'s sample and the logistic noise ``L`` behind it: sample = 1[x + L > 0].

    ``z = 1[u < sigmoid(x)] = 1[x - logit(u) > 0]``, and ``-logit(u) = log(1-u) - log(u)`` is
    standard logistic for uniform ``u``. ``u = 0`` (which ``rand`` can give) is ``L = +inf``:
    the sample is 1 and the relaxed sample's slope 0.
    """
    out, u = bernoulli_with_noise(x)
    return out, torch.log1p(-u) - torch.log(u)


#: The stochastic hard functions whose random draw ``gumbel`` knows how to relax, by function:
#: each returns ``(sample, L)`` with ``sample = 1[x + L > 0]`` from the function's own draw.
_RELAXATIONS: dict[HardFn, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
    bernoulli: _bernoulli_logistic,
}


def _gumbel_applies(hard: BoundHardFunction) -> str | None:
    if not hard.stochastic:
        return (
            f"{hard.name!r} is deterministic: 'gumbel' relaxes a random draw, and there is none to "
            "relax (use 'dab', 'ste', 'perturbed' or 'blackbox')"
        )
    if hard.definition.fn not in _RELAXATIONS:
        known = ", ".join(sorted(fn.__name__ for fn in _RELAXATIONS))
        return (
            f"no Concrete relaxation is known for {hard.name!r} (known: {known}); register an "
            "estimator of your own for it"
        )
    return None


@estimators.register(
    "gumbel",
    params={
        "temperature": Param(
            1.0,
            positive_float,
            "the highest temperature at which the binary Concrete density is log-convex "
            "(Maddison et al. 2017, Prop. 1: temperature <= 1/(n-1), n = 2), i.e. keeps its mass "
            "near 0 and 1; lower is less biased, with larger gradients nearer the threshold",
        )
    },
    applies=_gumbel_applies,
)
def gumbel(x: torch.Tensor, ctx: EstimatorContext) -> torch.Tensor:
    """Straight-through relaxed Bernoulli (binary Concrete / Gumbel-softmax: Maddison et al.
    2017, "The Concrete distribution"; Jang et al. 2017, "Categorical reparameterization with
    Gumbel-softmax"), for ``bernoulli``.

    Forward: the ``bernoulli`` sample itself, ``z = 1[x + L > 0]`` with ``L`` the logistic
    noise of its own uniform draw (the same numbers as ``bernoulli(x)`` draws, so ``z`` equals
    it bit for bit under the same RNG state). Backward: the gradient of the relaxed sample
    made from the same noise, ``s = sigmoid((x + L) / temperature)``, so ``z = 1[s > 1/2]``:
    ``grad_x = grad_out * s (1 - s) / temperature``.

    ``binary`` is refused: it is deterministic (``1[x >= mean of its sample]``), so there is no
    draw to relax; ``sigmoid((x - mean) / temperature)`` would be a deterministic smooth
    surrogate, a different estimator (``perturbed`` smooths that threshold with a stated
    noise, ``ste``/``dab`` serve it too).
    """
    tau = float(ctx.params["temperature"])
    relax = _RELAXATIONS[ctx.hard.definition.fn]
    hard = ctx.hard

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, Backward]:
        hard.check_input(x)  # the relaxation calls the function's body, not the bound function
        out, noise = relax(x)
        s = torch.sigmoid((x + noise) / tau)
        slope = s * (1 - s) / tau
        return out, lambda g, x, out: g * slope

    return with_estimated_gradient(x, forward)


#: The built-in estimators' names (a plugin's are in `estimators` as well).
ESTIMATORS: tuple[str, ...] = ("dab", "ste", "elu", "tanh", "identity", "perturbed", "blackbox", "gumbel")


__all__ = [
    "ESTIMATORS",
    "MAX_PERTURBED_SAMPLES",
    "Backward",
    "EstimatorContext",
    "EstimatorDef",
    "EstimatorError",
    "EstimatorNotApplicableError",
    "EstimatorParamError",
    "EstimatorParamTypeError",
    "EstimatorParamValueError",
    "EstimatorRegistry",
    "Param",
    "boolean",
    "estimators",
    "int_between",
    "one_of",
    "positive_float",
    "traceable_bridges",
    "with_estimated_gradient",
]
