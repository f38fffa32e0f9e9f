"""One picture that shows what the zoo is for: several models' maps before and after an attack.

``lga_zoo.compare(image, ["resnet18_w16_cifar10_standard", "resnet18_w16_cifar10_lga"])`` attacks
each model's own map on the same image and draws one row per model: the input, its map, the
attacked input and the attacked map, with the prediction and the top-k intersection in the titles
and one colour scale for every map. ``lga-zoo compare`` writes the same picture from the shell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .attacks import DIFFERENTIABLE_METHODS, random_perturbation, targeted_attribution_attack, topk_attack
from .attribution import _model_batch, attribute, normalize_attribution, resolve_method
from .metrics import topk_intersection
from .models import softplus_activations
from .state import gradients_on, preserved

COMPARE_ATTACKS = ("targeted", "topk", "noise")


@dataclass
class ComparisonRow:
    """One model's numbers: its name, the class it predicts before and after the attack (with the
    probability) and the top-k intersection of its map before and after."""

    model: str
    predicted: str
    probability: float
    attacked_predicted: str
    attacked_probability: float
    topk: float
    clean_map: Tensor = field(repr=False)
    attacked_map: Tensor = field(repr=False)
    attacked_input: Tensor = field(repr=False)
    input: Tensor = field(repr=False)  # the model's own clean input (C, H, W), after its preprocessing


@dataclass
class Comparison:
    """The result of :func:`compare`: ``rows`` (one :class:`ComparisonRow` per model), the
    ``settings`` used, the ``input`` (C, H, W) as the first model saw it (each row holds its own) and
    the matplotlib ``figure``."""

    rows: list[ComparisonRow]
    settings: dict[str, Any]
    input: Tensor
    figure: Any

    def save(self, path: str | Path, dpi: int = 120) -> Path:
        """Write the figure as a PNG (``path`` ends in .png; an existing file is replaced only by a
        complete new one); returns the path."""
        from .folder import save_png

        return save_png(path, lambda file: self.figure.savefig(file, dpi=dpi, format="png"))

    def table(self) -> str:
        """The numbers as text, one line per model."""
        return "\n".join(
            f"{r.model}: predicted {r.predicted} ({r.probability:.1%}) -> {r.attacked_predicted} "
            f"({r.attacked_probability:.1%}) after the {self.settings['attack']} perturbation; "
            f"top-k intersection {r.topk:.2f}"
            for r in self.rows
        )


def _load_models(models) -> list[tuple[str, nn.Module]]:
    from .hub import load

    if isinstance(models, (str, nn.Module)):
        models = [models]
    loaded = []
    for item in models:
        if isinstance(item, str):
            loaded.append((item, load(item)))
        elif isinstance(item, nn.Module):
            entry = getattr(item, "entry", None)
            loaded.append((entry.name if entry is not None else type(item).__name__, item))
        else:
            raise TypeError(
                f"models: expected zoo names, model folders or lga_zoo models, got {type(item).__name__}"
            )
    if not loaded:
        raise ValueError("compare needs at least one model")
    return loaded


def _perturb(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    method: str,
    attack: str,
    eps: float,
    steps: int,
    seed: int,
    k: float,
) -> Tensor:
    generator = torch.Generator(device=x.device).manual_seed(seed)
    if attack == "noise":
        return random_perturbation(x, eps, generator)
    attacked_method = method if method in DIFFERENTIABLE_METHODS else "grad"
    with softplus_activations(model):
        if attack == "targeted":
            return targeted_attribution_attack(
                model, x, target, eps=eps, steps=steps, method=attacked_method, generator=generator
            )
        return topk_attack(model, x, target, eps=eps, steps=steps, k=k, method=attacked_method)


def _compare_one(
    name: str,
    model: nn.Module,
    image,
    method: str,
    method_settings: dict,
    attack: str,
    eps: float,
    steps: int,
    seed: int,
    k: float,
) -> ComparisonRow:
    x = _model_batch(model, image)
    if len(x) != 1:
        raise ValueError(f"compare takes one image, got a batch of {len(x)} (shape {tuple(x.shape)})")
    labels = getattr(model, "labels", None)
    with preserved(model):
        with torch.no_grad():
            probabilities = model(x).float().softmax(1)[0]
        target = probabilities.argmax().view(1)
        clean = normalize_attribution(attribute(model, x, target, method, method_settings, target)[0])
        x_attacked = _perturb(model, x, target, method, attack, eps, steps, seed, k)
        with torch.no_grad():
            attacked_probabilities = model(x_attacked).float().softmax(1)[0]
        attacked = normalize_attribution(
            attribute(model, x_attacked, target, method, method_settings, target)[0]
        )
    pred, attacked_pred = int(target), int(attacked_probabilities.argmax())

    def label(i: int) -> str:
        return labels[i] if labels else str(i)

    row = ComparisonRow(
        model=name,
        predicted=label(pred),
        probability=probabilities[pred].item(),
        attacked_predicted=label(attacked_pred),
        attacked_probability=attacked_probabilities[attacked_pred].item(),
        topk=topk_intersection(clean, attacked, k).item(),
        clean_map=clean[0].cpu(),
        attacked_map=attacked[0].cpu(),
        attacked_input=x_attacked[0].detach().cpu(),
        input=x[0].detach().cpu(),
    )
    return row


def compare(
    image,
    models,
    attack: str = "targeted",
    method: str = "grad",
    eps: float = 4 / 255,
    steps: int = 100,
    k: float = 0.1,
    seed: int = 0,
    **method_kwargs: Any,
) -> Comparison:
    """Compare how ``models`` explain ``image`` before and after a perturbation.

    ``image``: anything :meth:`~lga_zoo.ExplainableClassifier.explain` accepts (one image).
    ``models``: zoo names, model folders or lga_zoo models. ``attack``: ``targeted`` (the frame
    attack of the evaluation, ``steps`` Adam steps), ``topk`` (Ghorbani et al.) or ``noise`` (one
    uniform draw); all inside the L-inf ball of radius ``eps`` (pixels in [0, 1]) and seeded by
    ``seed``. ``method``: the attribution method (``grad``, ``ig``, ...) with ``method_kwargs``; ``k``
    the top-k fraction. Each model is attacked through its own map (the gradient map for methods an
    attack cannot differentiate). Returns a :class:`Comparison` with the numbers and the figure; the
    models are left as they were.
    """
    if attack not in COMPARE_ATTACKS:
        raise ValueError(f"attack={attack!r} is not accepted; choose one of {COMPARE_ATTACKS}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps <= 1:
        raise ValueError(f"eps={eps!r} must be a number in (0, 1] (pixel units, e.g. 4/255)")
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 < k <= 1:
        raise ValueError(f"k={k!r} must be the top-k fraction of the pixels, in (0, 1]")
    k = float(k)  # a fraction: k=1 is all pixels, not a count of one
    method, method_settings = resolve_method(method, method_kwargs)
    gradients_on("compare")  # refuses torch.inference_mode() before any model is loaded
    rows = [
        _compare_one(name, model, image, method, method_settings, attack, eps, steps, seed, k)
        for name, model in _load_models(models)
    ]
    settings = {"attack": attack, "method": method, "eps": eps, "steps": steps, "k": k, "seed": seed}
    return Comparison(rows, settings, rows[0].input, draw_comparison(rows, settings))


def draw_comparison(rows: list[ComparisonRow], settings: dict[str, Any]):
    """The figure of :func:`compare`: one row per model (input, map, attacked input, attacked map)
    and one colorbar shared by every map."""
    from matplotlib.figure import Figure  # no pyplot: nothing global changes, no display needed

    fig = Figure(figsize=(11, 2.9 * len(rows) + 0.6))
    axes = fig.subplots(len(rows), 4, squeeze=False)
    shown = None

    def show(ax, t: Tensor) -> None:  # pixels in [0, 1], grey ones in grey
        if t.shape[0] == 3:
            ax.imshow(t.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        else:
            ax.imshow(t[0].clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")

    attack_name = {"targeted": "targeted attack", "topk": "top-k attack", "noise": "uniform noise"}[
        settings["attack"]
    ]
    for r, row in enumerate(rows):
        ax = axes[r]
        show(ax[0], row.input)  # each model's own preprocessed input (sizes may differ)
        ax[0].set_title(f"input: {row.predicted} ({row.probability:.0%})", fontsize=9)
        ax[0].set_ylabel(row.model, fontsize=9)
        shown = ax[1].imshow(row.clean_map.numpy(), cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
        ax[1].set_title(f"{settings['method']} map", fontsize=9)
        show(ax[2], row.attacked_input)
        ax[2].set_title(
            f"after {attack_name}: {row.attacked_predicted} ({row.attacked_probability:.0%})", fontsize=9
        )
        ax[3].imshow(row.attacked_map.numpy(), cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
        ax[3].set_title(f"map after: top-k {row.topk:.2f}", fontsize=9, fontweight="bold")
        for a in ax:
            a.set_xticks([])
            a.set_yticks([])
    eps_text = f"{settings['eps'] * 255:.0f}/255"
    fig.suptitle(
        f"{settings['method']} maps before and after {attack_name} (L-inf eps {eps_text}); "
        f"top-k: share of the top {settings['k']:.0%} pixels kept (1 = unchanged)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 0.9, 0.95))
    colorbar_axes = fig.add_axes((0.91, 0.1, 0.015, 0.78))
    fig.colorbar(shown, cax=colorbar_axes, label="attribution (max-normalized)")
    return fig
