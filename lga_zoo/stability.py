"""How stable is one explanation? The top-k intersection of a map with the map after small changes.

``model.explain(img, stability=True)`` fills ``Explanation.stability`` with two numbers per image,
both the zoo's top-k intersection (the fraction of the map's top ``k`` pixels, 10% by default, that
stay in the top ``k``; 1.0 = the same pixels, about ``k`` = chance):

* ``noise``: the mean over ``noise_draws`` draws of uniform noise in [-eps, eps] per pixel
  (eps 4/255 by default, clipped to [0, 1]);
* ``attack``: after a short targeted attribution attack (Dombrowski et al. 2019; ``attack_steps``
  Adam steps inside the same L-inf ball, pushing the map towards a frame along the border while
  keeping the logits, with ReLUs swapped for Softplus(``softplus_beta``) during the attack).

Both are deterministic for a given ``seed``. Cost: ``noise_draws`` more maps, plus ``attack_steps``
double-backward steps and one more map. Measured on 2 CPU cores with the gradient map
(``python benchmarks/explain.py --stability --arch ARCH --batches 1,16``): the narrow ResNet-18
adds 0.37 s for one image and 0.11 s per image in a batch of 16; the full ResNet-18 adds 2.1 s and
0.76 s; with integrated gradients the narrow one adds about 0.5-0.6 s per image.
The published cards measure the same quantities with 100 attack steps over 1,000 test images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from .attacks import DIFFERENTIABLE_METHODS, random_perturbation, targeted_attribution_attack
from .metrics import topk_intersection
from .models import attack_activation, softplus_activations

# Methods whose own map the stability attack differentiates; the others are attacked through the
# gradient map (their own maps need sampling or a boundary search, which an attack cannot follow).
SELF_ATTACKED_METHODS = ("grad", "input_x_grad")


@dataclass(frozen=True)
class StabilitySettings:
    """Settings of the stability score (recorded on the Explanation as ``stability_settings``)."""

    eps: float = 4 / 255
    noise_draws: int = 4
    attack_steps: int = 20
    k: float = 0.1
    softplus_beta: float = 20.0
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not 0 < self.eps <= 1:
            raise ValueError(
                f"stability eps={self.eps!r} must be a number in (0, 1] (pixel units, e.g. 4/255)"
            )
        for name in ("noise_draws", "attack_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"stability {name}={value!r} must be an integer >= 1")
        if isinstance(self.k, bool) or not isinstance(self.k, (int, float)) or not 0 < self.k <= 1:
            raise ValueError(f"stability k={self.k!r} must be a fraction of the pixels in (0, 1]")
        object.__setattr__(self, "k", float(self.k))  # k=1 is all pixels, not a count of one
        if isinstance(self.softplus_beta, bool) or not isinstance(self.softplus_beta, (int, float)):
            raise ValueError(f"stability softplus_beta={self.softplus_beta!r} must be a positive number")
        if not 0 < self.softplus_beta < math.inf:  # also NaN
            raise ValueError(
                f"stability softplus_beta={self.softplus_beta!r} must be a finite positive number"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"stability seed={self.seed!r} must be an integer")

    @classmethod
    def from_option(cls, option: bool | dict[str, Any]) -> StabilitySettings:
        """``True`` for the defaults, or a dict of settings to change."""
        if option is True:
            return cls()
        if not isinstance(option, dict):
            raise ValueError(f"stability={option!r}: pass True, False or a dict of settings")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(option) - set(known))
        if unknown:
            raise ValueError(f"unknown stability settings {unknown}; accepted: {known}")
        return cls(**option)


def stability_scores(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    method: str,
    clean_map: Tensor,
    map_fn: Callable[[Tensor], Tensor],
    settings: StabilitySettings,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``({"noise": (B,), "attack": (B,)}, recorded settings)`` for the maps ``clean_map`` of
    ``method`` at ``x``; ``map_fn(x')`` gives the method's maps at other inputs (same target).
    Call it with ``model`` in eval mode (explain does)."""
    generator = torch.Generator(device=x.device).manual_seed(settings.seed)
    noise_scores = [
        topk_intersection(clean_map, map_fn(random_perturbation(x, settings.eps, generator)), settings.k)
        for _ in range(settings.noise_draws)
    ]
    attacked_method = method if method in SELF_ATTACKED_METHODS else "grad"
    assert attacked_method in DIFFERENTIABLE_METHODS
    with softplus_activations(model, settings.softplus_beta):
        x_attacked = targeted_attribution_attack(
            model,
            x,
            target,
            eps=settings.eps,
            steps=settings.attack_steps,
            method=attacked_method,
            generator=generator,
        )
    attack_score = topk_intersection(clean_map, map_fn(x_attacked), settings.k)
    scores = {
        "noise": torch.stack(noise_scores).mean(0).float().cpu(),
        "attack": attack_score.float().cpu(),
    }
    recorded = {
        **asdict(settings),
        "attack": "targeted",
        "attacked_map": attacked_method,
        "attack_activation": attack_activation(model, settings.softplus_beta),
    }
    return scores, recorded
