"""The DAB gradient contract, tested exactly against torch.autograd on the approximator."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dab_core import DAB, DenseApproximator, ElementwiseApproximator, hard_functions, strip_approximators
from dab_core.bridge import dab_distance, dab_loss_of
from dab_core.reference import PaperSignumFn

B, D = 6, 5


def make(seed: int = 0, **kw: Any) -> tuple[DAB, torch.Tensor]:
    torch.manual_seed(seed)
    bridge = DAB("signum", in_shape=D, gamma=3.0, approximator_hidden=(7, 7), **kw).double()
    x = (2 * torch.randn(B, D, dtype=torch.float64)).requires_grad_(True)
    return bridge, x


def approx_params(bridge: DAB) -> list[nn.Parameter]:
    assert bridge.approximator is not None
    return list(bridge.approximator.parameters())


def test_forward_is_the_hard_function_bit_for_bit() -> None:
    bridge, x = make()
    assert torch.equal(bridge(x), hard_functions.get("signum")(x.detach()))


@pytest.mark.parametrize("name", ["binary", "kmeans", "signum", "sort", "sort_rowcol", "topk"])
def test_forward_bit_for_bit_for_every_function(name: str) -> None:
    params = {"k": 5} if name == "topk" else {}
    torch.manual_seed(1)
    x = torch.randn(4, 3, 4, requires_grad=True)
    bridge = DAB(name, in_shape=(3, 4), hard_params=params)
    assert torch.equal(bridge(x), hard_functions.get(name, **params)(x.detach()))


def test_task_gradient_is_the_approximators_vjp_and_phi_gets_nothing() -> None:
    bridge, x = make()
    out = bridge(x)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(bridge.approximator(x_ref), x_ref, g)  # type: ignore[misc]
    assert torch.allclose(x.grad, ref, rtol=0, atol=1e-12)  # type: ignore[arg-type]
    assert all(p.grad is None for p in approx_params(bridge))


def test_dab_loss_value() -> None:
    bridge, x = make()
    out = bridge(x)
    soft = bridge.approximator(x.detach())  # type: ignore[misc]
    expected = 3.0 * ((out - soft) ** 2).sum(dim=1).mean()
    assert torch.allclose(bridge.dab_loss, expected, rtol=1e-12)  # type: ignore[arg-type]


def test_dab_loss_trains_only_the_approximator_by_default() -> None:
    bridge, x = make()
    out = bridge(x)
    assert bridge.dab_loss is not None
    bridge.dab_loss.backward()
    assert x.grad is None  # nothing reaches the input
    x_ref = x.detach()
    ref_loss = 3.0 * ((out.detach() - bridge.approximator(x_ref)) ** 2).sum(1).mean()  # type: ignore[misc]
    ref = torch.autograd.grad(ref_loss, approx_params(bridge))
    for p, r in zip(approx_params(bridge), ref, strict=True):
        assert torch.allclose(p.grad, r, rtol=1e-10, atol=1e-12)  # type: ignore[arg-type]


def test_dab_loss_reaches_the_input_with_the_option() -> None:
    bridge, x = make(dab_loss_to_input=True)
    out = bridge(x)
    bridge.dab_loss.backward()  # type: ignore[union-attr]
    x_ref = x.detach().clone().requires_grad_(True)
    ref_loss = 3.0 * ((out.detach() - bridge.approximator(x_ref)) ** 2).sum(1).mean()  # type: ignore[misc]
    (ref,) = torch.autograd.grad(ref_loss, x_ref)
    assert ref.abs().sum() > 0
    assert torch.allclose(x.grad, ref, rtol=1e-10, atol=1e-12)  # type: ignore[arg-type]


@pytest.mark.parametrize("to_input", [False, True])
def test_task_plus_dab_loss_in_one_backward(to_input: bool) -> None:
    bridge, x = make(dab_loss_to_input=to_input)
    out = bridge(x)
    g = torch.randn_like(out)
    ((out * g).sum() + bridge.dab_loss).backward()  # type: ignore[operator]
    x_ref = x.detach().clone().requires_grad_(True)
    soft = bridge.approximator(x_ref)  # type: ignore[misc]
    dab = 3.0 * ((out.detach() - soft) ** 2).sum(1).mean()
    task_x = torch.autograd.grad(soft, x_ref, g, retain_graph=True)[0]
    both_x = torch.autograd.grad((soft * g).sum() + dab, x_ref, retain_graph=True)[0]
    assert not torch.allclose(task_x, both_x)  # the option makes a difference here
    assert torch.allclose(x.grad, both_x if to_input else task_x, atol=1e-12)  # type: ignore[arg-type]
    phi_ref = torch.autograd.grad(dab, approx_params(bridge))
    for p, r in zip(approx_params(bridge), phi_ref, strict=True):
        assert torch.allclose(p.grad, r, atol=1e-12)  # type: ignore[arg-type]


def test_default_equals_the_authors_code_with_the_loss_on_the_undetached_hard_output() -> None:
    """Their hard output carries the custom backward into the DAB loss; it cancels the direct
    path through g(x), so the input gets only the task gradient, as in our default."""
    bridge, x = make()
    layer = nn.Linear(D, 3).double()
    out = bridge(x)
    loss = layer(out).pow(2).sum() + bridge.dab_loss  # type: ignore[operator]
    loss.backward()

    x2 = x.detach().clone().requires_grad_(True)
    soft = bridge.approximator(x2)  # type: ignore[misc]
    hard = PaperSignumFn.apply(x2, soft)
    loss2 = layer(hard).pow(2).sum() + 3.0 * F.mse_loss(soft, hard, reduction="none").sum(-1).mean()
    grads = torch.autograd.grad(loss2, [x2, *approx_params(bridge)])
    assert torch.allclose(x.grad, grads[0], atol=1e-10)  # type: ignore[arg-type]
    for p, r in zip(approx_params(bridge), grads[1:], strict=True):
        assert torch.allclose(p.grad, r, atol=1e-10)  # type: ignore[arg-type]


def test_gradcheck_when_the_approximator_is_the_function_itself() -> None:
    """With a smooth 'hard' function and g equal to it, the bridge's gradient is the true one."""

    @hard_functions.register("test_smooth_tanh", elementwise=True)
    def smooth(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)

    try:
        bridge = DAB("test_smooth_tanh", approximator=nn.Tanh()).double()
        x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(bridge, (x,))
        lin = nn.Linear(4, 4).double()
        hard_functions.register("test_linear")(lambda x: lin(x))
        bridge2 = DAB("test_linear", approximator=lin).double()
        assert torch.autograd.gradcheck(bridge2, (x,))
    finally:
        hard_functions.remove("test_smooth_tanh")
        if "test_linear" in hard_functions:
            hard_functions.remove("test_linear")


def test_gradcheck_ste_on_a_shape_preserving_identity_function() -> None:
    hard_functions.register("test_identity")(lambda x: x * 1.0)
    try:
        bridge = DAB("test_identity", estimator="ste").double()
        x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(bridge, (x,))
    finally:
        hard_functions.remove("test_identity")


def test_ste_passes_the_gradient_through() -> None:
    x = torch.randn(4, 5, requires_grad=True)
    bridge = DAB("signum", estimator="ste")
    out = bridge(x)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    assert torch.equal(x.grad, g)  # type: ignore[arg-type]
    assert bridge.approximator is None and bridge.dab_loss is None


def test_ste_refuses_shape_changing_functions() -> None:
    with pytest.raises(ValueError, match=r"'ste' needs a shape-preserving hard function.*sort_rowcol"):
        DAB("sort_rowcol", estimator="ste", in_shape=(4, 4))
    lazy = DAB("sort_rowcol", estimator="ste")  # shape unknown until the first call
    with pytest.raises(ValueError, match="use estimator 'dab'"):
        lazy(torch.randn(2, 4, 4, requires_grad=True))
    DAB("sort", estimator="ste", in_shape=(4, 4))  # flattened sort keeps the shape: allowed


@pytest.mark.parametrize(("name", "fn"), [("elu", F.elu), ("tanh", torch.tanh), ("identity", lambda x: x)])
def test_baseline_estimators_replace_the_hard_function(name: str, fn: Any) -> None:
    x = torch.randn(3, 4)
    bridge = DAB("signum", estimator=name)
    assert torch.equal(bridge(x), fn(x))
    assert bridge.dab_loss is None and bridge.approximator is None


def test_eval_and_no_grad_run_only_the_hard_function() -> None:
    bridge, x = make()
    calls = []
    bridge.approximator.register_forward_hook(lambda *a: calls.append(1))  # type: ignore[union-attr]
    bridge.eval()
    assert torch.equal(bridge(x), hard_functions.get("signum")(x.detach()))
    bridge.train()
    with torch.no_grad():
        bridge(x)
    assert calls == [] and bridge.dab_loss is None
    bridge(x)
    assert calls == [1] and bridge.dab_loss is not None


def test_strip_approximators_drops_the_weights_and_keeps_outputs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), DAB("signum", in_shape=8), nn.Linear(8, 2))
    x = torch.randn(5, 3)
    model.eval()
    before = model(x)
    n_all = sum(p.numel() for p in model.parameters())
    n_approx = sum(p.numel() for p in model[1].approximator.parameters())  # type: ignore[union-attr]
    strip_approximators(model)
    assert sum(p.numel() for p in model.parameters()) == n_all - n_approx
    assert not any("approximator" in k for k in model.state_dict())
    assert torch.equal(model(x), before)
    model.train()
    with pytest.raises(RuntimeError, match="stripped for inference"):
        model(x)


def test_input_without_grad_still_trains_the_approximator() -> None:
    for to_input in (False, True):
        bridge = DAB("signum", in_shape=4, dab_loss_to_input=to_input)
        x = torch.randn(8, 4)  # e.g. the bridge right on the data
        out = bridge(x)
        (out.sum() + bridge.dab_loss).backward()  # type: ignore[operator]
        assert all(p.grad is not None for p in approx_params(bridge))


def test_default_approximators() -> None:
    assert isinstance(DAB("signum").approximator, ElementwiseApproximator)
    dense = DAB("sort_rowcol", in_shape=(2, 3)).approximator
    assert isinstance(dense, DenseApproximator) and dense.out_shape == (12,)
    with pytest.raises(ValueError, match="give in_shape"):
        DAB("sort")


def test_elementwise_approximator_is_shared_across_elements() -> None:
    approx = ElementwiseApproximator(hidden=(4,))
    x = torch.randn(2, 3, 5)
    y = approx(x)
    assert y.shape == x.shape
    flat = approx(x.reshape(-1, 1)).reshape(x.shape)
    assert torch.allclose(y, flat)
    assert sum(p.numel() for p in approx.parameters()) == (1 * 4 + 4) + (4 * 1 + 1)


@pytest.mark.parametrize("kind", ["l2", "l1", "huber", "cosine"])
def test_dab_distances(kind: str) -> None:
    h = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 1.0]])
    s = torch.tensor([[0.5, 0.0, 1.0], [0.0, 3.0, 1.0]])
    expected = {
        "l2": [0.25 + 4.0, 9.0],
        "l1": [0.5 + 2.0, 3.0],
        "huber": [0.125 + 1.5, 2.5],
        "cosine": [1 - (0.5 - 1.0) / (2**0.5 * 1.25**0.5), 1 - 1.0 / 10**0.5],
    }[kind]
    assert dab_distance(h, s, kind).tolist() == pytest.approx(expected)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="unknown estimator 'sfe'"):
        DAB("signum", estimator="sfe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        DAB("signum", gamma=-1.0)
    with pytest.raises(ValueError, match="unknown dab_loss 'l3'"):
        DAB("signum", dab_loss="l3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uses no approximator"):
        DAB("signum", approximator=nn.Identity(), estimator="ste")


def test_check_finite_raises_naming_the_function() -> None:
    bridge = DAB("signum", check_finite=True)
    with pytest.raises(FloatingPointError, match="signum"):
        bridge(torch.tensor([[float("nan"), 1.0]], requires_grad=True))


def test_dab_loss_of_sums_the_bridges() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(DAB("signum", in_shape=3), nn.Linear(3, 3), DAB("binary", in_shape=3))
    model(torch.randn(4, 3))
    total = dab_loss_of(model)
    assert total is not None
    assert torch.allclose(total, model[0].dab_loss + model[2].dab_loss)  # type: ignore[operator]
    model.eval()
    model(torch.randn(4, 3))
    assert dab_loss_of(model) is None


# -- the traceable forms (torch.compile, vmap of stacked seeds) ---------------------------------


def _forward_backward(bridge: DAB, x: torch.Tensor, traceable: bool) -> list[torch.Tensor]:
    from dab_core.estimators import traceable_bridges

    x = x.detach().clone().requires_grad_(True)
    bridge.zero_grad(set_to_none=True)
    if traceable:
        with traceable_bridges():
            y = bridge(x)
    else:
        y = bridge(x)
    weights = torch.arange(1.0, y[0].numel() + 1, dtype=y.dtype)
    loss = (y.flatten(1) * weights).sum() + (bridge.dab_loss if bridge.dab_loss is not None else 0)
    loss.backward()
    assert x.grad is not None
    return [
        y.detach(),
        x.grad,
        *(p.grad if p.grad is not None else torch.zeros(()) for p in bridge.parameters()),
    ]


@pytest.mark.parametrize(
    "kw",
    [{}, {"dab_loss_to_input": True}, {"estimator": "ste"}, {"estimator": "ste", "dab_loss_to_input": True}],
)
def test_traceable_forms_give_the_eager_values_and_gradients(kw: dict[str, Any]) -> None:
    bridge, x = make(**kw)
    eager = _forward_backward(bridge, x, traceable=False)
    traced = _forward_backward(bridge, x, traceable=True)
    assert torch.equal(traced[0], eager[0])  # the hard output, exactly
    for a, b in zip(traced[1:], eager[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    if "estimator" not in kw:  # the task loss reaches phi through neither form
        assert any(g.abs().sum() > 0 for g in eager[2:])


def test_traceable_dab_runs_under_vmap_of_stacked_bridges() -> None:
    from torch.func import functional_call, stack_module_state, vmap

    from dab_core.estimators import traceable_bridges

    bridges = [make(seed)[0] for seed in range(3)]
    params, buffers = stack_module_state(bridges)  # type: ignore[arg-type]
    xs = torch.randn(3, B, D, dtype=torch.float64)

    def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        out = functional_call(bridges[0], (p, b), (x,))
        return (out * torch.arange(1.0, D + 1, dtype=x.dtype)).sum() + bridges[0].dab_loss

    with traceable_bridges():
        losses = vmap(one)(params, buffers, xs)
    losses.sum().backward()
    for i, bridge in enumerate(bridges):  # each stacked member's gradient is its lone bridge's
        lone = _forward_backward(bridge, xs[i], traceable=False)
        for (name, stacked), grad in zip(params.items(), lone[2:], strict=True):
            assert stacked.grad is not None, name
            torch.testing.assert_close(stacked.grad[i], grad, rtol=1e-10, atol=1e-12)
