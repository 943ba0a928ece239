"""Gradient estimators against closed forms, their refusals, and the registry's plugin path.

Where an estimator is exact, `torch.autograd.gradcheck` checks it in float64: the baselines
(``elu``, ``tanh``, ``identity``: plain autograd), ``blackbox`` on a symmetric linear function
(a finite difference along ``g`` of a linear map is ``S g = S^T g``), and ``ste`` on the
identity (tests/dab_core/test_bridge.py). ``perturbed`` is exact nowhere useful (its estimate
of even a linear map's VJP is random), so it is checked in expectation, within its Monte
Carlo error; ``gumbel``'s forward is a random sample, so its gradient is checked against the
relaxed sample's derivative for the very noise that was drawn.
"""

from __future__ import annotations

import math
import pickle
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from dab_core import DAB, ESTIMATORS, DenseApproximator, hard_functions
from dab_core.estimators import (
    EstimatorContext,
    EstimatorNotApplicableError,
    EstimatorParamError,
    EstimatorParamTypeError,
    EstimatorParamValueError,
    EstimatorRegistry,
    Param,
    estimators,
    positive_float,
    with_estimated_gradient,
)
from dab_core.registry import UnknownNameError

SQRT_2PI = math.sqrt(2 * math.pi)


@contextmanager
def registered_hard(name: str, fn: Callable[..., torch.Tensor], **kw: Any) -> Iterator[None]:
    hard_functions.register(name, **kw)(fn)
    try:
        yield
    finally:
        hard_functions.remove(name)


def vjp(
    bridge: nn.Module, x: torch.Tensor, g: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(forward output, gradient for x) of one forward/backward with upstream gradient g."""
    x = x.detach().clone().requires_grad_(True)
    out = bridge(x)
    out.backward(torch.ones_like(out) if g is None else g)
    assert x.grad is not None
    return out.detach(), x.grad


# -- the registry ------------------------------------------------------------------------------


def test_registry_holds_the_builtins_with_their_declarations() -> None:
    assert set(ESTIMATORS) <= set(estimators.names())
    uses = {n for n in ESTIMATORS if estimators.get(n).uses_approximator}
    shape = {n for n in ESTIMATORS if estimators.get(n).requires_shape_preserving}
    replace = {n for n in ESTIMATORS if not estimators.get(n).exact_forward}
    assert (uses, shape, replace) == ({"dab"}, {"ste", "blackbox"}, {"elu", "tanh", "identity"})
    assert estimators.get("perturbed").defaults == {"sigma": 1.0, "samples": 10, "antithetic": True}
    assert estimators.get("blackbox").defaults == {"lambda": 10.0, "sense": "max"}
    assert estimators.get("gumbel").defaults == {"temperature": 1.0}
    assert estimators.get("dab").accepted == ()


def test_applies_to() -> None:
    def get(name: str, **p: Any) -> Any:
        return hard_functions.get(name, **p)

    gumbel, blackbox, perturbed = (estimators.get(n) for n in ("gumbel", "blackbox", "perturbed"))
    served = [
        n for n in hard_functions.names() if gumbel.applies_to(get(n, **({"k": 2} if n == "topk" else {})))
    ]
    assert served == ["bernoulli"]
    assert blackbox.applies_to(get("sort_rowcol"))  # no shape given: refused at the first call
    assert not blackbox.applies_to(get("sort_rowcol"), (3, 4))
    assert blackbox.applies_to(get("sort"), (3, 4)) and blackbox.applies_to(get("signum"), 5)
    assert perturbed.applies_to(get("topk", k=3), (3, 4))


def test_validate_params_fills_defaults_and_normalises() -> None:
    perturbed = estimators.get("perturbed")
    assert perturbed.validate_params({"sigma": 2}) == {"sigma": 2.0, "samples": 10, "antithetic": True}
    assert perturbed.validate_params({"samples": 20.0})["samples"] == 20  # JSON numbers
    assert isinstance(perturbed.validate_params({"sigma": 2})["sigma"], float)
    assert estimators.get("blackbox").validate_params(None) == {"lambda": 10.0, "sense": "max"}


# -- perturbed: Gaussian smoothing -------------------------------------------------------------


def smoothed_signum(x: torch.Tensor, eps: float, sigma: float) -> torch.Tensor:
    """E[signum_eps(x + sigma Z)] for hard.py's signum: +1 above eps, -1 below -eps, else 0.

    P(x + sigma Z > eps) - P(x + sigma Z < -eps) = Phi((x - eps)/sigma) - Phi((-eps - x)/sigma).
    """
    return torch.special.ndtr((x - eps) / sigma) - torch.special.ndtr((-eps - x) / sigma)


def smoothed_signum_grad(x: torch.Tensor, eps: float, sigma: float) -> torch.Tensor:
    """d/dx of `smoothed_signum`: (phi((x - eps)/sigma) + phi((x + eps)/sigma)) / sigma."""

    def phi(t: torch.Tensor) -> torch.Tensor:
        return torch.exp(-(t**2) / 2) / SQRT_2PI

    return (phi((x - eps) / sigma) + phi((x + eps) / sigma)) / sigma


XS = torch.tensor([-2.5, -0.7, -0.5, 0.0, 0.3, 0.5, 1.2, 3.0], dtype=torch.float64)


@pytest.mark.parametrize(("eps", "sigma"), [(0.5, 1.0), (0.2, 0.4)])
def test_the_closed_form_is_that_of_hard_pys_signum(eps: float, sigma: float) -> None:
    torch.manual_seed(0)
    z = torch.randn(200_000, 1, dtype=torch.float64)
    signum = hard_functions.get("signum", eps=eps)
    mc = signum(XS + sigma * z)  # (N, len(XS))
    mean = smoothed_signum(XS, eps, sigma)
    # the exact standard error (a sample's can be 0 where the other side is a 1e-9 event):
    # E[f^2] = P(|x + sigma Z| > eps)
    second = torch.special.ndtr((XS - eps) / sigma) + torch.special.ndtr((-eps - XS) / sigma)
    se = ((second - mean**2) / mc.shape[0]).sqrt()
    assert ((mc.mean(dim=0) - mean).abs() < 4 * se).all()
    h = 1e-5
    fd = (smoothed_signum(XS + h, eps, sigma) - smoothed_signum(XS - h, eps, sigma)) / (2 * h)
    assert torch.allclose(fd, smoothed_signum_grad(XS, eps, sigma), atol=1e-8)


@pytest.mark.parametrize("antithetic", [True, False])
@pytest.mark.parametrize("elementwise", [True, False])
@pytest.mark.parametrize(("eps", "sigma"), [(0.5, 1.0), (0.2, 0.4)])
def test_perturbed_mean_gradient_is_the_smoothed_signums(
    antithetic: bool, elementwise: bool, eps: float, sigma: float
) -> None:
    """Each row of a batch of copies of XS is an independent estimate: their mean is within 4
    standard errors of the closed form, at every x, and the error bar is tight enough that a
    factor (a lost 2 of the antithetic pairs, a sigma too many) could not pass."""

    def signum_dense(x: torch.Tensor, eps: float = 0.5) -> torch.Tensor:
        return hard_functions.get("signum", eps=eps)(x)

    n = 4000
    with registered_hard("test_signum_not_elementwise", signum_dense):
        name = "signum" if elementwise else "test_signum_not_elementwise"
        bridge = DAB(
            name,
            estimator="perturbed",
            hard_params={"eps": eps},
            estimator_params={"sigma": sigma, "antithetic": antithetic, "samples": 10},
        )
        torch.manual_seed(1)
        w = torch.linspace(0.5, 2.0, len(XS), dtype=torch.float64)  # upstream gradient, per x
        out, grad = vjp(bridge, XS.repeat(n, 1), w.repeat(n, 1))
    assert torch.equal(out, hard_functions.get("signum", eps=eps)(XS.repeat(n, 1)))  # forward exact
    ref = w * smoothed_signum_grad(XS, eps, sigma)  # the VJP of the smoothed function
    mean, se = grad.mean(dim=0), grad.std(dim=0) / math.sqrt(n)
    # + 1e-6: far from both breakpoints (x = -2.5 at sigma = 0.4) a crossing is a 1e-8 event
    # that no sample sees, so the sample standard error there is 0
    assert ((mean - ref).abs() < 4 * se + 1e-6).all(), ((mean - ref) / se).tolist()
    assert (se < 0.05 * ref.max()).all()


def test_perturbed_diagonal_form_for_elementwise_functions_has_less_variance() -> None:
    """Same expectation (previous test); the general form's inner product brings in the other
    features' terms, which the diagonal form of an element-wise function leaves out."""
    with registered_hard("test_signum_not_elementwise", lambda x: hard_functions.get("signum")(x)):
        spread = {}
        for name in ("signum", "test_signum_not_elementwise"):
            torch.manual_seed(2)
            _, grad = vjp(DAB(name, estimator="perturbed"), XS.repeat(2000, 1))
            spread[name] = grad.std(dim=0)
    assert (spread["test_signum_not_elementwise"] > 1.5 * spread["signum"]).all()


def test_perturbed_on_a_shape_changing_function_estimates_the_vjp() -> None:
    """For linear f(x) = x A, (B, 6) -> (B, 3), smoothing changes nothing: the estimator's mean
    is the VJP g A^T, through the inner product over the output's features."""
    torch.manual_seed(3)
    a = torch.randn(6, 3, dtype=torch.float64)
    with registered_hard("test_linear_6_to_3", lambda x: x @ a, out_shape=lambda f: (3,)):
        n = 4000
        x = torch.randn(1, 6, dtype=torch.float64).repeat(n, 1)
        g = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64).repeat(n, 1)
        for antithetic in (True, False):
            bridge = DAB(
                "test_linear_6_to_3", estimator="perturbed", estimator_params={"antithetic": antithetic}
            )
            _, grad = vjp(bridge, x, g)
            ref = (g @ a.T)[0]
            mean, se = grad.mean(dim=0), grad.std(dim=0) / math.sqrt(n)
            assert ((mean - ref).abs() < 4 * se).all(), ((mean - ref) / se).tolist()
            assert (se < 0.1 * ref.abs().max()).all()


def test_perturbed_noise_comes_from_the_global_rng() -> None:
    bridge = DAB("signum", estimator="perturbed")
    x = torch.randn(4, 5, dtype=torch.float64)
    torch.manual_seed(4)
    _, a = vjp(bridge, x)
    torch.manual_seed(4)
    _, b = vjp(bridge, x)
    _, c = vjp(bridge, x)
    assert torch.equal(a, b) and not torch.equal(a, c)


# -- blackbox ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["signum", "kmeans", "sort", "binary"])
@pytest.mark.parametrize("lam", [0.5, 10.0])
def test_blackbox_matches_its_definition_exactly(name: str, lam: float) -> None:
    torch.manual_seed(5)
    x = torch.randn(6, 8, dtype=torch.float64)
    g = torch.randn(6, 8, dtype=torch.float64)
    f = hard_functions.get(name, **({"k": 3} if name == "kmeans" else {}))
    params = {"k": 3} if name == "kmeans" else {}
    # sense "max" (the default, for functions that grow with x): x' = x - lambda g
    _, grad = vjp(DAB(name, estimator="blackbox", hard_params=params, estimator_params={"lambda": lam}), x, g)
    assert torch.equal(grad, -(f(x - lam * g) - f(x)) / lam)
    # sense "min" (the paper's solvers of min <w, y>): w' = w + lambda g, -(f(w) - f(w')) / lambda
    bridge = DAB(
        name, estimator="blackbox", hard_params=params, estimator_params={"lambda": lam, "sense": "min"}
    )
    _, grad = vjp(bridge, x, g)
    assert torch.equal(grad, -(f(x) - f(x + lam * g)) / lam)
    assert grad.abs().sum() > 0  # the step crossed breakpoints: the comparison is not 0 == 0


@pytest.mark.parametrize("sense", ["max", "min"])
def test_gradcheck_blackbox_on_a_symmetric_linear_function(sense: str) -> None:
    """A finite difference along g of x -> x S is g S, the VJP when S is symmetric (the
    paper's solvers have symmetric Jacobians). With the step's sign flipped (x + lambda g
    under the "max" rule) this would be -g S, and gradcheck would fail."""
    torch.manual_seed(6)
    m = torch.randn(4, 4, dtype=torch.float64)
    s = m + m.T
    with registered_hard("test_symmetric_linear", lambda x: x @ s):
        bridge = DAB("test_symmetric_linear", estimator="blackbox", estimator_params={"sense": sense})
        x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(bridge, (x,))


def test_blackbox_on_sort_is_a_finite_difference_along_g() -> None:
    """Documented bias: for sort (J = P, a permutation) the result is P g, not the VJP P^T g."""
    x = torch.tensor([[2.0, -1.0, 0.3, 0.9]], dtype=torch.float64)
    g = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    order = x.argsort(dim=1)  # [1, 2, 3, 0]: a 4-cycle, so P != P^T
    # the gaps (>= 0.6) exceed lambda |g| (<= 0.4): nothing reorders at x - lambda g
    _, grad = vjp(DAB("sort", estimator="blackbox", estimator_params={"lambda": 0.1}), x, g)
    assert torch.allclose(grad, g.gather(1, order), atol=1e-12)  # P g
    exact = torch.zeros_like(g).scatter_(1, order, g)  # P^T g, what autograd through sort gives
    assert not torch.allclose(grad, exact)


# -- gumbel ------------------------------------------------------------------------------------


def test_gumbel_forward_is_the_bernoulli_sample_and_backward_the_relaxed_gradient() -> None:
    x = 2 * torch.randn(64, 7, dtype=torch.float64)
    g = torch.randn(64, 7, dtype=torch.float64)
    tau = 0.7
    torch.manual_seed(7)
    out, grad = vjp(DAB("bernoulli", estimator="gumbel", estimator_params={"temperature": tau}), x, g)
    torch.manual_seed(7)
    assert torch.equal(out, hard_functions.get("bernoulli")(x))  # the same draw, bit for bit
    torch.manual_seed(7)
    u = torch.rand_like(x)  # the uniforms bernoulli drew
    x_ref = x.clone().requires_grad_(True)
    relaxed = torch.sigmoid((x_ref + torch.log1p(-u) - torch.log(u)) / tau)
    assert torch.equal(out, (relaxed > 0.5).to(out.dtype))  # hard = 1[relaxed > 1/2], same noise
    (ref,) = torch.autograd.grad(relaxed, x_ref, g)
    assert torch.allclose(grad, ref, rtol=1e-12, atol=1e-15)
    s = relaxed.detach()
    assert torch.allclose(grad, g * s * (1 - s) / tau, rtol=1e-12, atol=1e-15)


def test_gumbel_temperature_changes_the_gradient_not_the_sample() -> None:
    n = 20_000
    x = torch.tensor([[-1.5, 0.0, 0.4, 2.0]], dtype=torch.float64).repeat(n, 1)
    outs, grads = {}, {}
    for tau in (0.1, 1.0, 10.0, 1000.0):
        torch.manual_seed(8)
        outs[tau], grads[tau] = vjp(
            DAB("bernoulli", estimator="gumbel", estimator_params={"temperature": tau}), x
        )
    assert all(torch.equal(o, outs[1.0]) for o in outs.values())
    mean, se = outs[1.0].mean(dim=0), outs[1.0].std(dim=0) / math.sqrt(n)
    assert ((mean - torch.sigmoid(x[0])).abs() < 4 * se).all()  # E[z] = sigmoid(x) at any temperature
    # the relaxed sample flattens to 1/2 as the temperature grows: slope -> 1 / (4 tau)
    assert torch.allclose(grads[1000.0] * 1000.0, torch.full_like(x, 0.25), atol=1e-3)
    assert not torch.allclose(grads[0.1], grads[1.0])


def test_gumbel_non_finite() -> None:
    x = torch.tensor([[math.nan, math.inf, -math.inf, 0.0]], requires_grad=True)
    out = DAB("bernoulli", estimator="gumbel")(x)
    out.sum().backward()
    out = out.detach()
    assert math.isnan(out[0, 0]) and out[0, 1:3].tolist() == [1.0, 0.0]
    assert x.grad is not None and math.isnan(x.grad[0, 0]) and x.grad[0, 1:3].tolist() == [0.0, 0.0]


# -- every exact estimator: forward bit for bit, eval mode -------------------------------------

PAIRS = [
    (est, fn)
    for est in ("dab", "ste", "perturbed", "blackbox", "gumbel")
    for fn in ("signum", "binary", "sort", "sort_rowcol", "topk", "kmeans", "bernoulli")
    if estimators.get(est).applies_to(hard_functions.get(fn, **({"k": 5} if fn == "topk" else {})), (3, 4))
]


@pytest.mark.parametrize(("est", "fn"), PAIRS)
def test_forward_is_the_hard_function_bit_for_bit(est: str, fn: str) -> None:
    params = {"k": 5} if fn == "topk" else {}
    x = torch.randn(4, 3, 4, requires_grad=True)
    bridge = DAB(fn, estimator=est, in_shape=(3, 4), hard_params=params)
    torch.manual_seed(9)
    out = bridge(x)
    out.sum().backward()  # the backward runs (and draws noise after the forward's own draws)
    torch.manual_seed(9)
    assert torch.equal(out, hard_functions.get(fn, **params)(x.detach()))
    bridge.eval()
    torch.manual_seed(9)
    assert torch.equal(bridge(x), out)


def test_pairs_cover_each_new_estimator() -> None:
    assert {e for e, _ in PAIRS} == {"dab", "ste", "perturbed", "blackbox", "gumbel"}
    assert [f for e, f in PAIRS if e == "gumbel"] == ["bernoulli"]
    assert "sort_rowcol" not in [f for e, f in PAIRS if e == "blackbox"]


@pytest.mark.parametrize("name", ["elu", "tanh", "identity"])
def test_gradcheck_baselines(name: str) -> None:
    bridge = DAB("signum", estimator=name)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(bridge, (x,))


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fn", "params", "out"), [("sort_rowcol", {}, (32,)), ("topk", {"k": 5}, (5,))])
def test_blackbox_refuses_shape_changing_functions(fn: str, params: dict[str, Any], out: tuple[int]) -> None:
    with pytest.raises(EstimatorNotApplicableError) as e:
        DAB(fn, estimator="blackbox", in_shape=(4, 4), hard_params=params)
    msg = str(e.value)
    assert "'blackbox' needs a shape-preserving hard function" in msg and fn in msg
    assert "(4, 4)" in msg and str(out) in msg
    assert (e.value.estimator, e.value.function, e.value.in_shape, e.value.out_shape) == (
        "blackbox",
        fn,
        (4, 4),
        out,
    )
    lazy = DAB(fn, estimator="blackbox", hard_params=params)  # shape unknown until the first call
    with pytest.raises(EstimatorNotApplicableError, match=rf"'blackbox' needs a shape-preserving.*{fn}"):
        lazy(torch.randn(2, 4, 4, requires_grad=True))


@pytest.mark.parametrize("fn", ["signum", "binary", "kmeans"])
def test_gumbel_refuses_deterministic_functions(fn: str) -> None:
    with pytest.raises(
        EstimatorNotApplicableError, match=rf"'gumbel' cannot serve hard function '{fn}'.*deterministic"
    ) as e:
        DAB(fn, estimator="gumbel", in_shape=4)
    assert (e.value.estimator, e.value.function, e.value.in_shape) == ("gumbel", fn, None)


def test_gumbel_refuses_a_stochastic_function_it_cannot_relax() -> None:
    with registered_hard("test_coin", lambda x: (torch.rand_like(x) < 0.5).to(x.dtype), stochastic=True):
        with pytest.raises(
            EstimatorNotApplicableError, match=r"no Concrete relaxation is known for 'test_coin'"
        ):
            DAB("test_coin", estimator="gumbel")


def test_unknown_estimator_lists_the_known() -> None:
    with pytest.raises(
        UnknownNameError, match=r"unknown estimator 'reinforce'; known: .*blackbox.*perturbed"
    ) as e:
        DAB("signum", estimator="reinforce")
    assert e.value.kind == "estimator" and "gumbel" in e.value.known


@pytest.mark.parametrize(
    ("est", "param", "value", "says"),
    [
        ("perturbed", "sigma", -1.0, "must be a finite number > 0"),
        ("perturbed", "sigma", math.nan, "must be a finite number > 0"),
        ("perturbed", "sigma", True, "must be a finite number > 0"),
        ("perturbed", "sigma", "1", "must be a finite number > 0"),
        ("perturbed", "samples", 0, r"must be an integer in \[1, 1000\]"),
        ("perturbed", "samples", 2.5, r"must be an integer in \[1, 1000\]"),
        ("perturbed", "samples", 10**6, r"must be an integer in \[1, 1000\]"),
        ("perturbed", "antithetic", 1, "must be true or false"),
        ("blackbox", "lambda", 0, "must be a finite number > 0"),
        ("blackbox", "sense", "up", "must be one of 'max', 'min'"),
        ("gumbel", "temperature", 0.0, "must be a finite number > 0"),
    ],
)
def test_invalid_params_name_the_estimator_and_the_param(est: str, param: str, value: Any, says: str) -> None:
    fn = "bernoulli" if est == "gumbel" else "signum"
    with pytest.raises(
        EstimatorParamValueError, match=rf"estimator '{est}': parameter '{param}' {says}"
    ) as e:
        DAB(fn, estimator=est, estimator_params={param: value})
    assert isinstance(e.value, ValueError) and (e.value.estimator, e.value.param) == (est, param)


def test_unknown_params_name_the_estimator_and_the_param() -> None:
    with pytest.raises(
        EstimatorParamTypeError,
        match=r"'perturbed': unknown parameter 'sigmaa'; accepts: antithetic, samples, sigma",
    ) as e:
        DAB("signum", estimator="perturbed", estimator_params={"sigmaa": 1.0})
    assert isinstance(e.value, TypeError)
    assert (e.value.estimator, e.value.param, e.value.accepted) == (
        "perturbed",
        "sigmaa",
        ("antithetic", "samples", "sigma"),
    )
    with pytest.raises(EstimatorParamTypeError, match=r"'ste': unknown parameter 'scale'; accepts: none"):
        DAB("signum", estimator="ste", estimator_params={"scale": 2.0})
    with pytest.raises(EstimatorParamTypeError, match=r"'perturbed': estimator_params must be a mapping"):
        DAB("signum", estimator="perturbed", estimator_params=[("sigma", 1.0)])  # type: ignore[arg-type]


def test_errors_survive_pickling() -> None:
    with pytest.raises(EstimatorParamError) as p:
        estimators.get("perturbed").validate_params({"sigma": 0})
    with pytest.raises(EstimatorNotApplicableError) as n:
        estimators.get("blackbox").check(hard_functions.get("sort_rowcol"), (2, 3))
    for err in (p.value, n.value):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err) and vars(back) == vars(err)


# -- the approximator's output shape -----------------------------------------------------------


def test_an_approximator_with_the_wrong_output_shape_is_refused_at_the_first_call() -> None:
    bridge = DAB("signum", approximator=nn.Linear(8, 1))  # (B, 1) would broadcast in the DAB loss
    with pytest.raises(
        ValueError, match=r"approximator \(Linear\) produced shape \(4, 1\).*'signum' gives \(4, 8\)"
    ):
        bridge(torch.randn(4, 8))


def test_a_declared_approximator_shape_is_checked_at_construction() -> None:
    with pytest.raises(
        ValueError, match=r"\(DenseApproximator\) outputs per-sample shape \(1,\).*'signum' gives \(8,\)"
    ):
        DAB("signum", approximator=DenseApproximator(8, 1), in_shape=8)
    with pytest.raises(ValueError, match=r"takes per-sample shape \(6,\), but in_shape is \(8,\)"):
        DAB("signum", approximator=DenseApproximator(6, 8), in_shape=8)
    DAB("sort_rowcol", approximator=DenseApproximator((2, 3), 12), in_shape=(2, 3))  # right: accepted


# -- plugins -----------------------------------------------------------------------------------


def test_a_plugin_estimator_through_the_decorator() -> None:
    @estimators.register(
        "test_scaled_ste", params={"scale": Param(1.0, positive_float)}, requires_shape_preserving=True
    )
    def scaled_ste(x: torch.Tensor, ctx: EstimatorContext) -> torch.Tensor:
        scale = ctx.params["scale"]
        return with_estimated_gradient(x, lambda x: (ctx.hard(x), lambda g, x, out: scale * g))

    try:
        bridge = DAB("signum", estimator="test_scaled_ste", estimator_params={"scale": 3.0})
        x = torch.randn(4, 5)
        g = torch.randn(4, 5)
        out, grad = vjp(bridge, x, g)
        assert torch.equal(out, hard_functions.get("signum")(x)) and torch.equal(grad, 3.0 * g)
        assert bridge.estimator == "test_scaled_ste" and bridge.dab_loss is None
        with pytest.raises(EstimatorParamValueError, match="'test_scaled_ste': parameter 'scale'"):
            DAB("signum", estimator="test_scaled_ste", estimator_params={"scale": -3.0})
        with pytest.raises(EstimatorNotApplicableError, match="'test_scaled_ste' needs a shape-preserving"):
            DAB("sort_rowcol", estimator="test_scaled_ste", in_shape=(2, 2))
        with pytest.raises(ValueError, match="'test_scaled_ste' is already registered"):
            estimators.register("test_scaled_ste")(scaled_ste)
    finally:
        estimators.remove("test_scaled_ste")
    assert "test_scaled_ste" not in estimators


def test_a_plugin_with_a_bad_default_fails_at_registration() -> None:
    reg = EstimatorRegistry("estimator")
    with pytest.raises(EstimatorParamValueError, match="'bad': parameter 'sigma'"):
        reg.register("bad", params={"sigma": Param(0.0, positive_float)})(lambda x, ctx: x)
    assert "bad" not in reg


def test_plugins_register_through_their_entry_point_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dab_estimator_plugin_demo.py").write_text(
        textwrap.dedent(
            """
            import dab_core.estimators as e

            @e.estimators.register("plugin_half_ste", requires_shape_preserving=True)
            def half(x, ctx):
                return e.with_estimated_gradient(x, lambda x: (ctx.hard(x), lambda g, x, out: g / 2))
            """
        )
    )
    dist = tmp_path / "dab_estimator_plugin_demo-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dab-estimator-plugin-demo\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[dab_core.estimators]\nhalf = dab_estimator_plugin_demo\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fresh = EstimatorRegistry("estimator", entry_point_group="dab_core.estimators")
    monkeypatch.setattr(sys.modules["dab_core.estimators"], "estimators", fresh)
    try:
        assert "plugin_half_ste" in fresh.names()
        fn = fresh.get("plugin_half_ste").fn
        x = torch.randn(2, 3, requires_grad=True)
        fn(x, EstimatorContext(hard_functions.get("signum"), {})).sum().backward()
        assert torch.equal(x.grad, torch.full((2, 3), 0.5))  # type: ignore[arg-type]
    finally:
        sys.modules.pop("dab_estimator_plugin_demo", None)


@pytest.mark.parametrize(
    ("est", "fn"), [("perturbed", "signum"), ("gumbel", "bernoulli"), ("tanh", "signum")]
)
def test_a_bridge_pickles_with_its_estimator_and_params(est: str, fn: str) -> None:
    """Bridges hold their estimator's name (its definition holds closures), and find it again."""
    params = {"perturbed": {"sigma": 0.3}, "gumbel": {"temperature": 0.5}}.get(est, {})
    bridge = DAB(fn, estimator=est, estimator_params=params)
    back = pickle.loads(pickle.dumps(bridge))
    assert (back.estimator, back.estimator_params) == (est, bridge.estimator_params)
    x = torch.randn(5, 6, dtype=torch.float64)
    torch.manual_seed(10)
    a = vjp(bridge, x)
    torch.manual_seed(10)
    b = vjp(back, x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
