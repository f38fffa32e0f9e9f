"""Adversarial attacks on the input (pixels in [0, 1]): PGD in the L-inf and L2 balls.

Used for adversarial accuracy and, with a growing radius, for the boundary search of boundary
attributions. Every point stays in the ball and in the valid pixel range.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .inputs import check_pixels as check_pixel_range
from .state import differentiates, keeps_model_state, preserved

NORMS = ("linf", "l2")
LOSSES = ("ce", "margin")


def margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Sum over the batch of (best other logit - logit of y): positive once x is misclassified.
    Its gradient direction does not change when the logits are scaled by a positive constant."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return (others - true).sum()


def check_pixels(x: Tensor, what: str = "x") -> None:
    """Refuse anything but a floating batch of pixels in [0, 1]: the attacks clip x' to that box,
    so an x outside it would leave the eps ball without a word."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        kind = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"{what} must be a floating tensor of pixels in [0, 1], got {kind}")
    check_pixel_range(x)


def check_labels(x: Tensor, labels: Tensor, what: str = "target") -> None:
    """Refuse anything but a batch of images (B, C, H, W) with one class index per image."""
    if x.dim() != 4:
        raise ValueError(f"x must be a batch of images (B, C, H, W), got shape {tuple(x.shape)}")
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.shape != (len(x),):
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(
            f"{what} must be an integer tensor of {len(x)} class indices, one per image, got {shape}"
        )


def check_radius(eps: float | Tensor, what: str = "eps") -> None:
    """Refuse a negative or non-finite radius (a negative one would push every pixel by |eps|)."""
    values = torch.as_tensor(eps, dtype=torch.float64)
    if not (torch.isfinite(values).all() and (values >= 0).all()):
        raise ValueError(f"{what}={eps!r} must be a finite radius >= 0")


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


@differentiates
@keeps_model_state
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
    check_pixels(x)
    check_labels(x, y, "y")
    check_radius(eps)
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


# --- Attribution attacks -------------------------------------------------------------------------

DIFFERENTIABLE_METHODS = ("grad", "input_x_grad", "integrated_gradients")


def differentiable_map(
    model: nn.Module, x: Tensor, target: Tensor, method: str = "grad", ig_steps: int = 8
) -> Tensor:
    """The sum-normalized saliency map (B, H, W) of ``method`` at ``x``, differentiable with respect
    to ``x`` (a double backward; integrated gradients by a ``ig_steps`` midpoint Riemann sum from a
    black baseline). Used inside attacks, where the model's ReLUs are usually swapped for Softplus."""
    return map_and_logits(model, x, target, method, ig_steps)[0]


def map_and_logits(
    model: nn.Module, x: Tensor, target: Tensor, method: str = "grad", ig_steps: int = 8
) -> tuple[Tensor, Tensor | None]:
    """:func:`differentiable_map` and the logits at ``x`` of the map's own forward pass, both
    differentiable with respect to ``x`` (an attack that needs both runs one forward instead of two);
    None for integrated gradients, whose forward passes are along the path, not at ``x``."""
    if method not in DIFFERENTIABLE_METHODS:
        raise ValueError(f"attacks differentiate through {DIFFERENTIABLE_METHODS}, not {method!r}")
    if method == "integrated_gradients":
        alphas = (torch.arange(ig_steps, device=x.device, dtype=x.dtype) + 0.5) / ig_steps
        path = (alphas.view(-1, 1, 1, 1, 1) * x[None]).flatten(0, 1)
        path_logits = model(path).view(ig_steps, len(x), -1)
        chosen = path_logits.gather(2, target.view(1, -1, 1).expand(ig_steps, -1, 1)).sum()
        (grad,) = torch.autograd.grad(chosen, path, create_graph=True)
        raw = x * grad.view(ig_steps, *x.shape).mean(0)
        logits = None
    else:
        logits = model(x)
        (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x, create_graph=True)
        raw = grad * x if method == "input_x_grad" else grad
    saliency = raw.abs().sum(1)
    return saliency / saliency.flatten(1).sum(1).clamp_min(1e-12).view(-1, 1, 1), logits


def frame_target(height: int, width: int, frame: int | None = None) -> Tensor:
    """The target map of the targeted attack: a frame along the border (width 5 on 32x32 images,
    scaled with the image), sum-normalized: attribution moved off the object."""
    frame = frame if frame is not None else max(1, round(5 * min(height, width) / 32))
    target = torch.ones(height, width)
    target[frame : height - frame, frame : width - frame] = 0
    return target / target.sum()


def random_perturbation(x: Tensor, eps: float, generator: torch.Generator | None = None) -> Tensor:
    """x + uniform noise in [-eps, eps] per pixel, clipped to [0, 1]."""
    check_pixels(x)
    check_radius(eps)
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
    return (x + eps * noise).clamp(0, 1)


def _project_linf(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)


@differentiates
@keeps_model_state
def targeted_attribution_attack(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    eps: float = 4 / 255,
    steps: int = 100,
    lr: float | None = None,
    gamma: float = 0.9,
    method: str = "grad",
    target_map: Tensor | None = None,
    ig_steps: int = 8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Targeted attribution attack (Dombrowski et al. 2019): Adam on x' in the L-inf ball of radius
    ``eps`` (and in [0, 1]) for ``steps`` steps, minimizing
    ``gamma * ||map(x') - target_map||^2 * N + (1 - gamma) * ||f(x') - f(x)||^2 / K`` (N pixels, K
    classes; maps sum-normalized). ``target_map`` defaults to :func:`frame_target`. Pass the model
    with its ReLUs swapped for Softplus (see :func:`lga_zoo.models.softplus_activations`)."""
    check_pixels(x)
    check_labels(x, target)
    check_radius(eps)
    x = x.detach()
    num_pixels = x.shape[-1] * x.shape[-2]
    goal = (target_map if target_map is not None else frame_target(*x.shape[-2:])).to(x.device, x.dtype)
    with torch.no_grad():
        logits_clean = model(x)
    start = random_perturbation(x, eps * 0.5, generator)  # a small random start breaks ties at x
    x_adv = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x_adv], lr=lr if lr is not None else eps / 8)
    for _ in range(steps):
        maps, logits = map_and_logits(model, x_adv, target, method, ig_steps)
        map_loss = (maps - goal).pow(2).flatten(1).sum(1) * num_pixels
        logits = logits if logits is not None else model(x_adv)
        logit_loss = (logits - logits_clean).pow(2).mean(1)
        loss = (gamma * map_loss + (1 - gamma) * logit_loss).sum()
        optimizer.zero_grad()
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv.grad = grad
        optimizer.step()
        with torch.no_grad():
            x_adv.copy_(_project_linf(x_adv, x, eps))
    return x_adv.detach()


@differentiates
@keeps_model_state
def topk_attack(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    eps: float = 4 / 255,
    steps: int = 100,
    step_size: float | None = None,
    k: float | int = 0.1,
    method: str = "grad",
    ig_steps: int = 8,
    reference_model: nn.Module | None = None,
) -> Tensor:
    """Untargeted top-k attack (Ghorbani et al. 2019): signed-gradient steps that lower the map's
    mass on the original top-k pixels, inside the L-inf ball and [0, 1]; a step that changes an
    image's predicted class (under ``reference_model``, default ``model``) is undone for that image.
    Returns for each image the point that lowered the top-k mass most.

    One map (a double backward) per step, for the images still moving: with ``reference_model``
    the model itself, a candidate's class is read from the logits of its map's own forward pass.
    An image whose step was undone stops there for good, because recomputing the gradient at the same
    point would give the same step and the same undoing; it is not computed again."""
    check_pixels(x)
    check_labels(x, target)
    check_radius(eps)
    reference_model = reference_model or model
    # the model is preserved by the decorator; a separate reference model is run in eval mode too
    # and left as it was
    separate = reference_model is not model and isinstance(reference_model, nn.Module)
    keep_reference = preserved(reference_model) if separate else contextlib.nullcontext()
    with keep_reference:
        return _topk_search(model, x, target, eps, steps, step_size, k, method, ig_steps, reference_model)


def _topk_search(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    eps: float,
    steps: int,
    step_size: float | None,
    k: float | int,
    method: str,
    ig_steps: int,
    reference_model: nn.Module,
) -> Tensor:
    """The search of :func:`topk_attack`, on models already in eval mode."""
    from .metrics import topk_mask

    x = x.detach()
    step_size = step_size if step_size is not None else eps / 8
    with torch.no_grad():
        label = reference_model(x).argmax(1)
    x_req = x.clone().requires_grad_(True)
    maps, _ = map_and_logits(model, x_req, target, method, ig_steps)
    mask = topk_mask(maps.detach(), k).float()
    mass = (maps * mask).flatten(1).sum(1)
    (grad,) = torch.autograd.grad(mass.sum(), x_req)
    x_adv, best, mass = x.clone(), x.clone(), mass.detach()
    best_mass = torch.full_like(mass, float("inf"))
    moving = torch.arange(len(x), device=x.device)  # images whose steps have not been undone
    for step in range(steps + 1):
        improved = mass < best_mass  # the point x_adv reached after `step` steps
        best[improved] = x_adv[improved]
        best_mass = torch.where(improved, mass, best_mass)
        if step == steps or len(moving) == 0:
            break
        candidate = _project_linf(x_adv[moving] - step_size * grad[moving].sign(), x[moving], eps)
        candidate_mass, candidate_grad, logits = _masked_mass(
            model, candidate, target[moving], mask[moving], method, ig_steps
        )
        with torch.no_grad():
            if logits is None or reference_model is not model:
                logits = reference_model(candidate)
            keeps = logits.argmax(1) == label[moving]
        kept = moving[keeps]
        x_adv[kept], grad[kept], mass[kept] = candidate[keeps], candidate_grad[keeps], candidate_mass[keeps]
        moving = kept
    return best.detach()


def _masked_mass(
    model: nn.Module, x: Tensor, target: Tensor, mask: Tensor, method: str, ig_steps: int
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The map's mass on ``mask`` at ``x`` (B,), its gradient with respect to ``x``, and the logits
    of the map's forward pass (None for integrated gradients), all detached."""
    x_req = x.detach().clone().requires_grad_(True)
    maps, logits = map_and_logits(model, x_req, target, method, ig_steps)
    mass = (maps * mask).flatten(1).sum(1)
    (grad,) = torch.autograd.grad(mass.sum(), x_req)
    return mass.detach(), grad, None if logits is None else logits.detach()
