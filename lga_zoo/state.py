"""No side effects: run code on a caller's model and give the model back exactly as it was.

:func:`preserved` records, for every module of a model, its ``training`` flag and its hook lists,
for every parameter its ``requires_grad`` and its ``.grad``, and a copy of every buffer (BatchNorm's
running statistics); inside the block the model is in eval mode (every module), and on exit,
also when the block raises, everything recorded is put back. Explaining, predicting, attacking and
evaluating all run inside it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

CALL_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
HOOK_DICTS = (*CALL_HOOKS, "_state_dict_hooks", "_load_state_dict_pre_hooks")


@dataclass
class ModelState:
    """What :func:`preserved` restores: modes, requires_grad flags, gradients, buffers, hooks."""

    modes: list[tuple[nn.Module, bool]]
    requires_grad: list[tuple[nn.Parameter, bool]]
    grads: list[tuple[nn.Parameter, Tensor | None]]
    buffers: list[tuple[Tensor, Tensor]]
    hooks: list[tuple[nn.Module, str, dict]]

    @classmethod
    def capture(cls, model: nn.Module) -> ModelState:
        modules = list(model.modules())
        params = list(model.parameters())
        return cls(
            modes=[(m, m.training) for m in modules],
            requires_grad=[(p, p.requires_grad) for p in params],
            grads=[(p, p.grad) for p in params],
            buffers=[(b, b.detach().clone()) for b in model.buffers()],
            hooks=[
                (m, name, dict(getattr(m, name))) for m in modules for name in HOOK_DICTS if hasattr(m, name)
            ],
        )

    def restore(self) -> None:
        for module, training in self.modes:
            module.training = training
        for param, flag in self.requires_grad:
            param.requires_grad_(flag)
        for param, grad in self.grads:
            param.grad = grad
        with torch.no_grad():
            for buffer, saved in self.buffers:
                if buffer.shape == saved.shape and not torch.equal(buffer, saved):
                    buffer.copy_(saved)
        for module, name, saved in self.hooks:
            hooks = getattr(module, name)
            if hooks.keys() != saved.keys():
                hooks.clear()
                hooks.update(saved)


@contextlib.contextmanager
def preserved(model: nn.Module, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Run the block on ``model`` (in eval mode unless ``eval_mode=False``) and restore every
    module's mode, every parameter's ``requires_grad`` and ``.grad``, every buffer and every hook
    list afterwards, also when the block raises."""
    state = ModelState.capture(model)
    try:
        if eval_mode:
            for module in model.modules():
                module.training = False
        yield model
    finally:
        state.restore()


@contextlib.contextmanager
def swapped_children(
    module: nn.Module, replacement: Callable[[nn.Module], nn.Module | None]
) -> Iterator[nn.Module]:
    """Run the block with every submodule of ``module`` for which ``replacement(child)`` returns a
    module swapped for that module; the originals come back on exit, also when the block raises."""
    swapped = [
        (parent, name, child, new)
        for parent in module.modules()
        for name, child in list(parent._modules.items())  # also a child registered under two names
        if child is not None and (new := replacement(child)) is not None
    ]
    try:
        for parent, name, _, new in swapped:
            setattr(parent, name, new)
        yield module
    finally:
        for parent, name, child, _ in swapped:
            setattr(parent, name, child)


def keeps_model_state(function):
    """Decorator for functions called as ``function(model, ...)``: the call runs inside
    :func:`preserved` (eval mode, everything restored after); a plain callable passes through."""

    @functools.wraps(function)
    def wrapper(model, *args, **kwargs):
        if not isinstance(model, nn.Module):
            return function(model, *args, **kwargs)
        with preserved(model):
            return function(model, *args, **kwargs)

    return wrapper


def gradients_on(what: str) -> contextlib.AbstractContextManager:
    """Gradients on for a block that differentiates a model, also under a caller's
    ``torch.no_grad()`` (as captum does); under ``torch.inference_mode()``, whose tensors cannot take
    gradients, a clear error naming ``what`` instead."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{what} differentiates the model, which torch.inference_mode() forbids; call it outside "
            "that block (inside torch.no_grad() is fine)"
        )
    return torch.enable_grad()


def differentiates(function):
    """Decorator: the call runs inside :func:`gradients_on` (named by the function)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with gradients_on(function.__name__):
            return function(*args, **kwargs)

    return wrapper
