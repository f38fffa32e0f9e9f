"""Training losses: cross-entropy plus a gradient regularizer, or an adversarial training objective.

Local Gradient Alignment (Joo et al., AAAI 2023) and its baselines: the gradient-norm and
Hessian-norm regularizers, PGD adversarial training (Madry et al. 2018) and TRADES (Zhang et al.
2019). Every regularizer is called as ``reg(model, x, y)`` on pixels ``x`` in [0, 1] (the model
normalizes its own input) and returns a :class:`RegularizedLoss` holding the total loss, the logits
at ``x`` (at the adversarial point for ``adversarial``) and the loss parts for logging.

All of them share :func:`true_class_input_grad`, the gradient of the true-class logit (summed over
the batch, so row i is the gradient of sample i's own logit) with respect to the input.

The gradient regularizers run the model twice per call, at x and at a nearby point, in the model's
own mode: in training, BatchNorm normalizes each batch by its own statistics and its running
statistics are updated by both batches (as a training loop that calls the model twice does).
The adversarial objectives run their inner attack in eval mode instead (see :class:`Adversarial`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attacks import check_pixels, pgd
from .state import differentiates, gradients_on, keeps_model_state

PERTURBATIONS = ("uniform", "gaussian", "grad")
REGULARIZERS = ("none", "lga", "lga_l2", "lga_cos", "gradnorm", "hessian", "adversarial", "trades")
TRADES_START_STD = 0.001  # the official TRADES code starts its attack at x + 0.001 * N(0, 1)


@dataclass
class RegularizedLoss:
    """What a regularizer returns: ``loss`` to backpropagate, ``logits`` at the clean input (at the
    adversarial input for :class:`Adversarial`, whose loss sees no clean forward) and ``parts``
    (detached scalars: ``ce``, the regularizer's own terms, ``total``) for logging."""

    loss: Tensor
    logits: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)


def true_class_input_grad(
    model: nn.Module, x: Tensor, y: Tensor, create_graph: bool
) -> tuple[Tensor, Tensor]:
    """Logits of ``model`` at ``x`` and d f_y(x) / dx, one row per sample.

    ``x`` must require grad. With ``create_graph`` the gradient can itself be differentiated (the
    double backward that every gradient regularizer needs); the logits keep their graph either way.
    """
    logits = model(x)
    true_logit_sum = logits.gather(1, y[:, None]).sum()
    (grad,) = torch.autograd.grad(true_logit_sum, x, create_graph=create_graph, retain_graph=True)
    return logits, grad


def _flat(t: Tensor) -> Tensor:
    return t.flatten(1)


def _differentiates_inputs(forward):
    """Decorator of a gradient regularizer's ``forward``: input gradients also under a caller's
    ``torch.no_grad()``, and a clear error under ``torch.inference_mode()``."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        with gradients_on(f"the {self.name} regularizer"):
            return forward(self, *args, **kwargs)

    return wrapper


class Regularizer(nn.Module):
    """Base class: plain cross-entropy (``name == "none"``).

    ``label_smoothing`` (set by :func:`build_regularizer`) applies to the cross-entropy term of every
    regularizer; the gradient terms always use the raw true-class logit.
    """

    name = "none"
    label_smoothing = 0.0

    def cross_entropy(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None = None):
        logits = model(x)
        ce = self.cross_entropy(logits, y)
        return RegularizedLoss(ce, logits, {"ce": ce.detach(), "total": ce.detach()})

    def settings(self) -> dict:
        """The regularizer's name and parameters, as recorded in config.json and the model card."""
        return {"name": self.name}


class LGA(Regularizer):
    """Local Gradient Alignment: CE + lambda_l2 * mean ||g - g'||^2 + lambda_cos * mean (1 - cos(g, g'))/2.

    g is the true-class logit gradient at x, g' at x' = x + z. ``eps`` is in pixel units ([0, 1]
    images, 4/255 for CIFAR-10). ``perturbation``: ``uniform`` (z ~ U[-eps, eps] per pixel),
    ``gaussian`` (z ~ N(0, eps^2)) or ``grad`` (z = eps * sign(g), a step along the gradient).
    ``detach_source`` (default) treats g as a constant: only g' carries the double backward.
    Set ``lambda_l2`` or ``lambda_cos`` to 0 for the l2-only or cosine-only ablations.
    """

    name = "lga"

    def __init__(
        self,
        eps: float = 4 / 255,
        lambda_l2: float = 0.01,
        lambda_cos: float = 0.1,
        perturbation: str = "uniform",
        detach_source: bool = True,
    ):
        super().__init__()
        if perturbation not in PERTURBATIONS:
            raise ValueError(f"perturbation={perturbation!r} is not one of {PERTURBATIONS}")
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"eps={eps} must be in [0, 1] (pixel units; 4/255 for CIFAR-10)")
        if lambda_l2 < 0 or lambda_cos < 0:
            raise ValueError(f"lambda_l2={lambda_l2} and lambda_cos={lambda_cos} must be >= 0")
        self.eps = float(eps)
        self.lambda_l2 = float(lambda_l2)
        self.lambda_cos = float(lambda_cos)
        self.perturbation = perturbation
        self.detach_source = bool(detach_source)

    def perturb(self, x: Tensor, grad: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The nearby point x' = x + z (no clipping to [0, 1])."""
        if self.perturbation == "uniform":
            z = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
            z = z * self.eps
        elif self.perturbation == "gaussian":
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * self.eps
        else:
            z = self.eps * grad.detach().sign()
        return x.detach() + z

    @_differentiates_inputs
    def forward(self, model, x, y, generator=None):
        x = x.detach().requires_grad_(True)
        logits, g = true_class_input_grad(model, x, y, create_graph=not self.detach_source)
        if self.detach_source:
            g = g.detach()
        x_near = self.perturb(x, g, generator).requires_grad_(True)
        _, g_near = true_class_input_grad(model, x_near, y, create_graph=True)
        ce = self.cross_entropy(logits, y)
        l2 = (_flat(g) - _flat(g_near)).pow(2).sum(1).mean()
        cos = ((1 - F.cosine_similarity(_flat(g), _flat(g_near), dim=1, eps=1e-12)) / 2).mean()
        total = ce + self.lambda_l2 * l2 + self.lambda_cos * cos
        parts = {"ce": ce.detach(), "l2": l2.detach(), "cos": cos.detach(), "total": total.detach()}
        return RegularizedLoss(total, logits, parts)

    def settings(self):
        return {
            "name": self.name,
            "eps": self.eps,
            "lambda_l2": self.lambda_l2,
            "lambda_cos": self.lambda_cos,
            "perturbation": self.perturbation,
            "detach_source": self.detach_source,
        }


class GradNorm(Regularizer):
    """Gradient-norm baseline: CE + lam * mean_i ||g_i||^2."""

    name = "gradnorm"

    def __init__(self, lam: float = 0.01):
        super().__init__()
        self.lam = float(lam)

    @_differentiates_inputs
    def forward(self, model, x, y, generator=None):
        x = x.detach().requires_grad_(True)
        logits, g = true_class_input_grad(model, x, y, create_graph=True)
        ce = self.cross_entropy(logits, y)
        gradnorm = _flat(g).pow(2).sum(1).mean()
        total = ce + self.lam * gradnorm
        parts = {"ce": ce.detach(), "gradnorm": gradnorm.detach(), "total": total.detach()}
        return RegularizedLoss(total, logits, parts)

    def settings(self):
        return {"name": self.name, "lam": self.lam}


class HessianNorm(Regularizer):
    """Hessian-norm baseline: CE + lam * mean_i ||H_i v_i||^2 with v ~ N(0, I).

    E_v ||H v||^2 = ||H||_F^2, so this is a one-sample estimate of the squared Frobenius norm of the
    input Hessian of the true-class logit. H v is a finite difference of input gradients,
    (g(x + h v) - g(x)) / h, exact for quadratics; it needs only a double backward (an exact
    Hessian-vector product would need third derivatives, which batch norm in training mode lacks)
    and, like CURE, it also sees the curvature of piecewise-linear ReLU networks. ``fd_step`` is h.
    """

    name = "hessian"

    def __init__(self, lam: float = 1e-4, fd_step: float = 1e-2):
        super().__init__()
        if fd_step <= 0:
            raise ValueError(f"fd_step={fd_step} must be > 0")
        self.lam = float(lam)
        self.fd_step = float(fd_step)

    def hessian_vector_sq_norm(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Logits at ``x`` and ||H_i v_i||^2 per sample for one draw of v."""
        x = x.detach().requires_grad_(True)
        logits, g = true_class_input_grad(model, x, y, create_graph=True)
        v = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_step = (x.detach() + self.fd_step * v).requires_grad_(True)
        _, g_step = true_class_input_grad(model, x_step, y, create_graph=True)
        hv = (g_step - g) / self.fd_step
        return logits, _flat(hv).pow(2).sum(1)

    @_differentiates_inputs
    def forward(self, model, x, y, generator=None):
        logits, hv_sq = self.hessian_vector_sq_norm(model, x, y, generator)
        ce = self.cross_entropy(logits, y)
        hessian = hv_sq.mean()
        total = ce + self.lam * hessian
        parts = {"ce": ce.detach(), "hessian": hessian.detach(), "total": total.detach()}
        return RegularizedLoss(total, logits, parts)

    def settings(self):
        return {"name": self.name, "lam": self.lam, "fd_step": self.fd_step}


def _check_attack(eps: float, steps: int, step_size: float | None) -> float:
    """Validate an L-inf attack's settings; returns the step size (default 2.5 * eps / steps)."""
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps={eps} must be in [0, 1] (pixel units; e.g. 8/255 for CIFAR-10)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1")
    if step_size is None:
        return 2.5 * float(eps) / steps
    if not step_size > 0:
        raise ValueError(f"step_size={step_size} must be > 0 (pixel units)")
    return float(step_size)


class Adversarial(Regularizer):
    """PGD adversarial training (Madry et al. 2018): the cross-entropy at x_adv.

    x_adv maximizes the (unsmoothed) cross-entropy by ``steps`` signed-gradient steps of
    ``step_size`` (pixel units; default 2.5 * eps / steps) in the L-inf ball of radius ``eps`` around
    x, each step clamped to that ball and to [0, 1] (pixels before the model's own normalization).
    With ``random_start`` (default) the attack starts at x + U[-eps, eps] per pixel (clamped to
    [0, 1]), drawn from the ``generator`` passed to the call, so runs are reproducible and resumable.

    Modes: the inner attack runs the model in eval mode (BatchNorm uses its running statistics and
    does not update them); every module's training flag, every buffer and every parameter's ``.grad``
    are restored exactly afterwards, also on error (:func:`lga_zoo.state.preserved`), and the attack
    differentiates with respect to the input only (``torch.autograd.grad``), never the parameters.
    The final loss forward on x_adv runs in the caller's mode: in training, BatchNorm normalizes the
    adversarial batch by its own statistics and its running statistics are updated once.

    The returned ``logits`` are those at x_adv (the training accuracy a trainer logs from them is the
    accuracy on the adversarial batch); ``parts``: ``ce`` (at x_adv, with label smoothing), ``total``.

    Args:
        eps: radius of the L-inf ball in pixel units, in [0, 1] (8/255 is usual for CIFAR-10).
        steps: PGD steps, >= 1.
        step_size: size of each signed-gradient step in pixel units; None: 2.5 * eps / steps.
        random_start: start at a uniform random point of the ball rather than at x.
    """

    name = "adversarial"

    def __init__(
        self, eps: float = 8 / 255, steps: int = 10, step_size: float | None = None, random_start: bool = True
    ):
        super().__init__()
        self.step_size = _check_attack(eps, steps, step_size)
        self.eps = float(eps)
        self.steps = steps
        self.random_start = bool(random_start)

    def attack(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """The adversarial batch x_adv (detached), found with the model in eval mode."""
        return pgd(
            model,
            x,
            y,
            self.eps,
            norm="linf",
            steps=self.steps,
            step_size=self.step_size,
            random_start=self.random_start,
            generator=generator,
            loss="ce",
        )

    @_differentiates_inputs
    def forward(self, model, x, y, generator=None):
        logits = model(self.attack(model, x, y, generator))
        ce = self.cross_entropy(logits, y)
        return RegularizedLoss(ce, logits, {"ce": ce.detach(), "total": ce.detach()})

    def settings(self):
        return {
            "name": self.name,
            "eps": self.eps,
            "steps": self.steps,
            "step_size": self.step_size,
            "random_start": self.random_start,
        }


def _at_least_fp32(t: Tensor) -> Tensor:
    """``t`` in fp32 if it is in a lower precision (bf16/fp16 logits under autocast)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _kl_from_clean(logits_adv: Tensor, p_clean: Tensor, reduction: str) -> Tensor:
    """KL(p_clean || softmax(logits_adv)), as ``nn.KLDivLoss`` computes it (at least in fp32)."""
    return F.kl_div(_at_least_fp32(logits_adv).log_softmax(1), p_clean, reduction=reduction)


@differentiates
@keeps_model_state
def trades_attack(
    model: nn.Module,
    x: Tensor,
    eps: float,
    steps: int,
    step_size: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """TRADES' inner maximization, as in the official code: x' starts at x + 0.001 * N(0, 1) (drawn
    from ``generator``) and takes ``steps`` signed-gradient steps of ``step_size`` up
    KL(softmax f(x) || softmax f(x')), each clamped to the L-inf ball of radius ``eps`` and to
    [0, 1]. The model runs in eval mode and is restored afterwards; returns x' (detached)."""
    check_pixels(x)
    x = x.detach()
    with torch.no_grad():
        p_clean = _at_least_fp32(model(x)).softmax(1)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_adv = x + TRADES_START_STD * noise
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(_kl_from_clean(model(x_adv), p_clean, "sum"), x_adv)
        with torch.no_grad():
            x_adv = x_adv + step_size * grad.sign()
            x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


class TRADES(Regularizer):
    """TRADES (Zhang et al. 2019): CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x')).

    The KL is ``batchmean``, as the official code's ``KLDivLoss(log_softmax(f(x')), softmax(f(x)))``
    summed and divided by the batch size; gradients flow through both f(x) and f(x'). x' comes from
    :func:`trades_attack` (L-inf ball of radius ``eps``, ``steps`` steps of ``step_size``, default
    2.5 * eps / steps, start x + 0.001 * N(0, 1) drawn from the call's ``generator``).

    Modes: the inner attack runs the model in eval mode (BatchNorm uses its running statistics and
    does not update them); every module's training flag, every buffer and every parameter's ``.grad``
    are restored exactly afterwards, also on error, and the attack differentiates with respect to the
    input only. The two final forwards, on x and on x', run in the caller's mode: in training each
    batch is normalized by its own statistics and the running statistics are updated by both.

    The returned ``logits`` are the clean ones; ``parts``: ``ce`` (clean, with label smoothing),
    ``kl``, ``total``.

    Args:
        beta: weight of the KL term, >= 0 (6 in the paper's CIFAR-10 runs).
        eps: radius of the L-inf ball in pixel units, in [0, 1].
        steps: attack steps, >= 1.
        step_size: size of each signed-gradient step in pixel units; None: 2.5 * eps / steps.
    """

    name = "trades"

    def __init__(
        self, beta: float = 6.0, eps: float = 8 / 255, steps: int = 10, step_size: float | None = None
    ):
        super().__init__()
        if not beta >= 0:
            raise ValueError(f"beta={beta} must be >= 0")
        self.step_size = _check_attack(eps, steps, step_size)
        self.beta = float(beta)
        self.eps = float(eps)
        self.steps = steps

    def attack(self, model: nn.Module, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x' (detached), found with the model in eval mode."""
        return trades_attack(model, x, self.eps, self.steps, self.step_size, generator)

    @_differentiates_inputs
    def forward(self, model, x, y, generator=None):
        x_adv = self.attack(model, x, generator)
        logits = model(x)
        logits_adv = model(x_adv)
        ce = self.cross_entropy(logits, y)
        kl = _kl_from_clean(logits_adv, _at_least_fp32(logits).softmax(1), "batchmean")
        total = ce + self.beta * kl
        parts = {"ce": ce.detach(), "kl": kl.detach(), "total": total.detach()}
        return RegularizedLoss(total, logits, parts)

    def settings(self):
        return {
            "name": self.name,
            "beta": self.beta,
            "eps": self.eps,
            "steps": self.steps,
            "step_size": self.step_size,
        }


def build_regularizer(name: str, label_smoothing: float = 0.0, **params) -> Regularizer:
    """A regularizer by name: ``none``, ``lga``, ``lga_l2`` (cosine term off), ``lga_cos`` (l2 term
    off), ``gradnorm``, ``hessian``, ``adversarial`` or ``trades``, with its parameters as keywords. ``label_smoothing`` is that of
    the cross-entropy term (0 to 1)."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1)")
    regularizer = _regularizer_by_name(name, **params)
    regularizer.label_smoothing = float(label_smoothing)
    return regularizer


def _regularizer_by_name(name: str, **params) -> Regularizer:
    if name == "none":
        if params:
            raise ValueError(f"regularizer 'none' takes no parameters, got {sorted(params)}")
        return Regularizer()
    if name == "lga":
        return LGA(**params)
    if name == "lga_l2":
        return LGA(**{**params, "lambda_cos": 0.0})
    if name == "lga_cos":
        return LGA(**{**params, "lambda_l2": 0.0})
    if name == "gradnorm":
        return GradNorm(**params)
    if name == "hessian":
        return HessianNorm(**params)
    if name == "adversarial":
        return Adversarial(**params)
    if name == "trades":
        return TRADES(**params)
    raise ValueError(f"unknown regularizer {name!r}; choose one of {REGULARIZERS}")
