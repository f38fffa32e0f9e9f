"""Adversarial attacks on the input (pixels in [0, 1]): PGD in the L-inf and L2 balls.

Used for adversarial accuracy and, with a growing radius, for the boundary search of boundary
attributions. Every point stays in the ball and in the valid pixel range.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORMS = ("linf", "l2")
LOSSES = ("ce", "margin")


def margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Sum over the batch of (best other logit - logit of y): positive once x is misclassified.
    Its gradient direction does not change when the logits are scaled by a positive constant."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return (others - true).sum()


def _per_sample_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def project(delta: Tensor, eps: float | Tensor, norm: str) -> Tensor:
    """Project perturbations onto the ``norm`` ball of radius ``eps`` (per sample)."""
    if norm == "linf":
        eps_t = torch.as_tensor(eps, dtype=delta.dtype, device=delta.device)
        eps_t = eps_t.view(-1, *([1] * (delta.dim() - 1))) if eps_t.dim() == 1 else eps_t
        return torch.maximum(torch.minimum(delta, eps_t), -eps_t)
    if norm == "l2":
        eps_t = torch.as_tensor(eps, dtype=delta.dtype, device=delta.device)
        eps_t = eps_t.view(-1, *([1] * (delta.dim() - 1))) if eps_t.dim() == 1 else eps_t
        return delta * torch.clamp(eps_t / _per_sample_norm(delta), max=1.0)
    raise ValueError(f"norm={norm!r}; accepted: {NORMS}")


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    norm: str = "linf",
    steps: int = 10,
    step_size: float | Tensor | None = None,
    random_start: bool = False,
    generator: torch.Generator | None = None,
    loss: str = "ce",
) -> Tensor:
    """Untargeted projected gradient ascent on ``loss`` (``ce``: cross-entropy of ``y``, or
    ``margin``: :func:`margin_loss`): returns x' with ||x' - x|| <= eps in ``norm`` and x' in
    [0, 1]. ``eps`` may be one radius per sample. Default step size 2.5 * eps / steps (Madry et al.)."""
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r}; accepted: {NORMS}")
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r}; accepted: {LOSSES}")
    eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    step = step_size if step_size is not None else 2.5 * eps_t / steps
    step_t = torch.as_tensor(step, dtype=x.dtype, device=x.device)
    if step_t.dim() == 1:
        step_t = step_t.view(-1, *([1] * (x.dim() - 1)))
    x = x.detach()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        delta = project(noise * (eps_t.view(-1, *([1] * (x.dim() - 1))) if eps_t.dim() else eps_t), eps, norm)
    else:
        delta = torch.zeros_like(x)
    delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
    for _ in range(steps):
        logits = model(x + delta)
        objective = F.cross_entropy(logits, y, reduction="sum") if loss == "ce" else margin_loss(logits, y)
        (grad,) = torch.autograd.grad(objective, delta)
        with torch.no_grad():
            direction = grad.sign() if norm == "linf" else grad / _per_sample_norm(grad)
            delta = project(delta + step_t * direction, eps, norm)
            delta = (x + delta).clamp(0, 1) - x
        delta.requires_grad_(True)
    return (x + delta).detach()
