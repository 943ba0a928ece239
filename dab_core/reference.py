"""The paper's own bridge, as published (appendix 7.1: ``BaseHardFn`` + ``SignumWithMargin``).

Kept apart from `dab_core.bridge` on purpose: it is the reference our bridge is tested against
(gradients equal, tests/dab_core/test_bridge.py) and the baseline the speed benchmark times
(bench/dab_overhead.py). Not for use in models.
"""

from __future__ import annotations

from typing import Any

import torch


class PaperSignumFn(torch.autograd.Function):
    """``apply(x, soft_y)``: forward the eps=0.5 signum of x; backward the VJP of soft_y w.r.t. x."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, soft_y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        sig = torch.zeros_like(x)
        sig[x < -0.5] = -1
        sig[x > 0.5] = 1
        ctx.save_for_backward(x, soft_y)
        return sig

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        x, soft_y = ctx.saved_tensors
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(soft_y, x, grad_out, retain_graph=True)
        return grad, None


__all__ = ["PaperSignumFn"]
