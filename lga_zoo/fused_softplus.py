"""Softplus(beta) for training on the CPU: the same function as ``nn.Softplus``, faster: a bf16
ResNet-18 plain step about 25%, an LGA step about 8% (``benchmarks/train_step.py --fused-softplus``).

PyTorch's CPU softplus kernel spends most of its time in an elementwise ``log1p`` that is not
vectorized (a bf16 ResNet-18 step with ReLU runs about a third faster than with Softplus beta 3).
:class:`FusedSoftplus` computes ``relu(x) + log(1 + exp(-beta |x|)) / beta`` (exactly softplus, with
no overflow for any x) in fp32 in one ``torch.compile``-d kernel and casts back to the input's dtype;
its backward, ``grad * sigmoid(beta x)``, is made of differentiable ops, so double backward (LGA,
the Hessian norm) works. Off the CPU, or where ``torch.compile`` cannot build the kernel (no C++
compiler), it is plain ``nn.Softplus`` (the latter with one warning).

The trainer puts it into the model it trains on the CPU (:func:`fuse_softplus`), and the evaluation
into the caller's model for the length of the run (:func:`fused_softplus_activations`); published
models load with plain ``nn.Softplus`` (neither has parameters, so the weights are the same). Unlike
``nn.Softplus`` it has no linear regime above ``threshold`` (it differs there by < exp(-20) / beta).
Measured by ``python benchmarks/train_step.py --fused-softplus``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .state import HOOK_DICTS, swapped_children

_compiled_kernel = None
_compile_failed = False


def _softplus_fp32(x: Tensor, beta: float) -> Tensor:
    """Softplus of ``x`` computed in fp32 (or fp64 for fp64), returned in ``x``'s dtype (the kernel
    that is compiled)."""
    x32 = x if x.dtype == torch.float64 else x.float()
    return (torch.relu(x32) + torch.log(1 + torch.exp(-beta * x32.abs())) / beta).to(x.dtype)


def _kernel():
    """The compiled kernel, built on first use (torch.compile is lazy: a missing compiler shows on
    the first call)."""
    global _compiled_kernel
    if _compiled_kernel is None:
        _compiled_kernel = torch.compile(_softplus_fp32, dynamic=True)
    return _compiled_kernel


class _SoftplusFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, beta: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.beta = beta
        return _kernel()(x, beta)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        # in fp32 (fp64 for fp64), as PyTorch's softplus backward computes bf16; differentiable
        x32 = x if x.dtype == torch.float64 else x.float()
        return (grad * torch.sigmoid(ctx.beta * x32)).to(x.dtype), None


class FusedSoftplus(nn.Softplus):
    """``nn.Softplus(beta)`` whose CPU forward runs one fused kernel (see the module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        global _compile_failed
        if x.device.type != "cpu" or _compile_failed:
            return super().forward(x)
        try:
            return _SoftplusFunction.apply(x, float(self.beta))
        except Exception as error:  # the compiler is missing or failed: fall back for good
            _compile_failed = True
            warnings.warn(
                f"FusedSoftplus: torch.compile could not build the CPU kernel ({type(error).__name__}); "
                "using nn.Softplus",
                stacklevel=2,
            )
            return super().forward(x)


def _fused_replacement(child: nn.Module) -> FusedSoftplus | None:
    """A :class:`FusedSoftplus` like ``child`` if it is a plain ``nn.Softplus`` without hooks (a
    swapped-out module's hooks would silently stop firing), else None."""
    if type(child) is not nn.Softplus or any(getattr(child, hooks, None) for hooks in HOOK_DICTS):
        return None
    return FusedSoftplus(beta=child.beta, threshold=child.threshold).train(child.training)


def fuse_softplus(module: nn.Module) -> nn.Module:
    """Replace every hook-free ``nn.Softplus`` in ``module`` by a :class:`FusedSoftplus` of the same
    beta and threshold, in place; returns ``module``. For a model one built oneself (the trainer's own)."""
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if (fused := _fused_replacement(child)) is not None:
                setattr(parent, name, fused)
    return module


@contextmanager
def fused_softplus_activations(module: nn.Module) -> Iterator[nn.Module]:
    """Run the block with every plain, hook-free ``nn.Softplus`` of ``module`` swapped for a
    :class:`FusedSoftplus` of the same beta (the same function, faster on the CPU); the original
    modules come back on exit, also when the block raises. For a caller's model (the evaluation)."""
    with swapped_children(module, _fused_replacement):
        yield module
