"""Attribution methods and their normalization, through captum where captum has the method.

Methods (``method=``), all with respect to pixels in [0, 1]:

* ``grad``: the input gradient of the target logit (captum ``Saliency``, signed);
* ``input_x_grad``: input times gradient (captum ``InputXGradient``);
* ``integrated_gradients``: ``steps`` (50), ``baseline`` (0.0: a black image; a float or a tensor),
  ``internal_batch_size`` (captum ``IntegratedGradients``, Gauss-Legendre);
* ``smoothgrad``: ``samples`` (25), ``noise`` (0.15, the noise standard deviation in pixel units),
  ``seed`` (0) (captum ``NoiseTunnel`` over ``Saliency``);
* ``boundary``: boundary attributions (Wang et al., ICML 2022): integrated gradients from the nearest
  point across the decision boundary, found by L2 PGD on the logit margin with a growing radius (``epsilons``,
  ``attack_steps``) and refined along the segment to x; ``steps`` for the integral.

Normalization (``normalize=``): ``max`` (absolute value, sum over channels, divided by the map's
maximum), ``sum`` (the same, divided by the map's sum) or ``none`` (the signed sum over channels).
The raw signed attribution (B, C, H, W) stays in :attr:`Explanation.raw`.
"""

from __future__ import annotations

import contextlib
import difflib
import secrets
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency
from torch import Tensor, nn

from .attacks import pgd
from .explanation import Explanation
from .inputs import InputError, to_batch
from .stability import StabilitySettings, stability_scores
from .state import differentiates, gradients_on, preserved

METHODS: dict[str, dict[str, Any]] = {
    "grad": {},
    "input_x_grad": {},
    "integrated_gradients": {"steps": 50, "baseline": 0.0, "internal_batch_size": None},
    "smoothgrad": {"samples": 25, "noise": 0.15, "seed": 0, "samples_batch_size": None},
    "boundary": {
        "epsilons": (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0),
        "attack_steps": 20,
        "steps": 50,
        "internal_batch_size": None,
    },
}
ALIASES = {"ig": "integrated_gradients", "saliency": "grad", "gradient": "grad", "big": "boundary",
           "ixg": "input_x_grad"}  # fmt: skip
NORMALIZATIONS = ("max", "sum", "none")


def resolve_method(method: str, method_kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The canonical method name and its full settings; unknown names and keywords raise with close
    matches."""
    name = ALIASES.get(method, method)
    if name not in METHODS:
        close = difflib.get_close_matches(method, list(METHODS) + list(ALIASES), n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(f"unknown attribution method {method!r}.{hint} Accepted: {sorted(METHODS)}")
    defaults = METHODS[name]
    for key in method_kwargs:
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=3)
            hint = f" Did you mean {close}?" if close else ""
            accepted = sorted(defaults) or "no keywords"
            raise TypeError(f"method {name!r} got an unexpected keyword {key!r}.{hint} Accepted: {accepted}")
    settings = {**defaults, **method_kwargs}
    for key, value in method_kwargs.items():
        _check_setting(name, key, value)
    return name, settings


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


MAX_STEPS = 10_000  # steps or samples per map: more is hours of work per image, never needed


def _check_setting(method: str, key: str, value: Any) -> None:
    """Raise ValueError naming ``key`` when a method setting is out of range or of the wrong type."""
    problem = None
    if key in ("steps", "samples", "attack_steps"):
        if not _is_int(value) or not 1 <= value <= MAX_STEPS:
            problem = f"must be an integer in [1, {MAX_STEPS}]"
    elif key in ("internal_batch_size", "samples_batch_size"):
        if value is not None and (not _is_int(value) or value < 1):
            problem = "must be None or an integer >= 1"
    elif key == "noise":
        if not _is_number(value) or not value >= 0 or not np.isfinite(value):
            problem = "must be a number >= 0 (the noise standard deviation in pixel units)"
    elif key == "seed":
        if value is not None and not _is_int(value):
            problem = "must be an integer or None"
    elif key == "baseline":
        if not (isinstance(value, Tensor) or _is_number(value)):
            problem = "must be a number (e.g. 0.0 for black) or a tensor shaped like the input"
        elif _is_number(value) and not 0 <= value <= 1:
            problem = "must be a pixel value in [0, 1] (0.0 is black), as the input's pixels are"
    elif key == "epsilons":
        if (
            not isinstance(value, (list, tuple))
            or not value
            or not all(_is_number(e) and e > 0 for e in value)
        ):
            problem = "must be a non-empty list of positive L2 radii, e.g. (0.25, 0.5, 1.0, 2.0)"
    if problem:
        raise ValueError(f"method {method!r}: {key}={value!r} {problem}")


def normalize_attribution(raw: Tensor, mode: str = "max") -> Tensor:
    """(B, C, H, W) attribution to a (B, H, W) map: ``max`` or ``sum`` of |raw| summed over channels,
    or ``none`` (signed channel sum). A map that is all zero stays zero."""
    if mode not in NORMALIZATIONS:
        close = difflib.get_close_matches(str(mode), NORMALIZATIONS, n=1)
        raise ValueError(
            f"normalize={mode!r} is not accepted{f' (did you mean {close[0]!r}?)' if close else ''}; "
            f"choose one of {NORMALIZATIONS}"
        )
    if mode == "none":
        return raw.sum(1)
    saliency = raw.abs().sum(1)
    flat = saliency.flatten(1)
    scale = flat.amax(1) if mode == "max" else flat.sum(1)
    return saliency / scale.clamp_min(torch.finfo(saliency.dtype).tiny).view(-1, 1, 1)


def resolve_target(target, predicted: Tensor, labels: Sequence[str] | None, num_classes: int) -> Tensor:
    """Target classes as a (B,) long tensor: ``None`` (the prediction), an int, a class name, or a
    list/tensor of them (one per image)."""
    batch = len(predicted)
    if target is None:
        return predicted.clone()
    items = target.tolist() if isinstance(target, (Tensor, np.ndarray)) else target
    if not isinstance(items, (list, tuple)):
        items = [items] * batch
    if len(items) != batch:
        raise ValueError(
            f"got {len(items)} targets for a batch of {batch} images; pass one, or one per image"
        )
    resolved = []
    for item in items:
        if isinstance(item, str):
            if not labels or item not in labels:
                close = difflib.get_close_matches(item, labels or [], n=3)
                hint = f" Did you mean {close}?" if close else ""
                known = f"classes are {list(labels)[:20]}" if labels else "this model has no class names"
                raise ValueError(f"unknown class name {item!r}.{hint} ({known})")
            item = list(labels).index(item)
        if isinstance(item, np.integer):
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(f"target {item!r} must be a class index (int) or a class name")
        if not 0 <= item < num_classes:
            raise ValueError(f"target {item} is out of range: this model has classes 0..{num_classes - 1}")
        resolved.append(item)
    return torch.tensor(resolved, dtype=torch.long, device=predicted.device)


def _baseline_tensor(baseline, x: Tensor) -> Tensor:
    """The IG baseline as pixels like ``x``: a number, or a tensor of pixels in [0, 1] (a uint8 one
    divided by 255, as inputs are) that broadcasts to the model-size batch ``x``."""
    if _is_number(baseline):
        return torch.full_like(x, float(baseline))
    if not isinstance(baseline, Tensor):
        raise ValueError(
            f"baseline={baseline!r}: pass a float (e.g. 0.0 for black) or a tensor shaped like the input"
        )
    if baseline.dtype == torch.uint8:
        baseline = baseline.float() / 255
    elif not baseline.is_floating_point():
        raise InputError(
            f"a baseline tensor of dtype {baseline.dtype} is not accepted: use float pixels in [0, 1] or uint8"
        )
    if baseline.numel() and not (
        torch.isfinite(baseline).all() and 0 <= baseline.min() and baseline.max() <= 1
    ):
        raise InputError("a baseline tensor must hold pixels in [0, 1], as the input does (do not normalize)")
    try:
        return baseline.to(x.device, x.dtype).expand_as(x)
    except RuntimeError:
        raise InputError(
            f"a baseline tensor of shape {tuple(baseline.shape)} does not fit the model's input "
            f"{tuple(x.shape)}: pass it at the model's input size, (C, H, W) or (B, C, H, W)"
        ) from None


def find_boundary_points(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    epsilons: Sequence[float],
    attack_steps: int = 20,
    line_points: int = 16,
    bisections: int = 10,
) -> tuple[Tensor, Tensor, Tensor]:
    """The nearest points found across the decision boundary of ``labels``.

    For each radius in ``epsilons`` (growing, L2 in pixel units) an L2 PGD attack runs on the images
    not yet flipped; the first flipped point is then pulled back along the segment from x (a scan,
    then bisection) to just across the boundary. Returns (points, L2 distances, found mask); where
    no radius flips the class, the point is the last attack's and ``found`` is False.
    """
    points = x.clone()
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for eps in epsilons:
        todo = (~found).nonzero().flatten()
        if len(todo) == 0:
            break
        adv = pgd(model, x[todo], labels[todo], eps, norm="l2", steps=attack_steps, loss="margin")
        with torch.no_grad():
            flipped = model(adv).argmax(1) != labels[todo]
        points[todo] = adv
        found[todo[flipped]] = True
    with torch.no_grad():
        idx = found.nonzero().flatten()
        if len(idx):
            x_f, direction, y_f = x[idx], points[idx] - x[idx], labels[idx]
            ts = torch.linspace(0, 1, line_points + 1, device=x.device, dtype=x.dtype)[1:]
            flips = torch.stack([model(x_f + t * direction).argmax(1) != y_f for t in ts], 1)
            first = flips.float().argmax(1)  # the last point (t = 1) flips, so one exists
            hi = ts[first]
            lo = torch.where(first > 0, ts[(first - 1).clamp_min(0)], torch.zeros_like(hi))
            for _ in range(bisections):
                mid = (lo + hi) / 2
                mid_flips = model(x_f + mid.view(-1, 1, 1, 1) * direction).argmax(1) != y_f
                hi = torch.where(mid_flips, mid, hi)
                lo = torch.where(mid_flips, lo, mid)
            points[idx] = x_f + hi.view(-1, 1, 1, 1) * direction
    distances = (points - x).flatten(1).norm(dim=1)
    return points.detach(), distances, found


@differentiates
def attribute(
    model: nn.Module | Callable[[Tensor], Tensor],
    x: Tensor,
    target: Tensor,
    method: str,
    settings: dict[str, Any],
    predicted: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Raw (B, C, H, W) attributions of ``target`` at ``x`` (pixels in [0, 1]) by ``method`` with
    full ``settings``; also returns extras (boundary points and distances)."""
    extras: dict[str, Tensor] = {}
    x = x.detach().clone().requires_grad_(True)  # captum warns when it has to set this itself
    if method == "grad":
        raw = Saliency(model).attribute(x, target=target, abs=False)
    elif method == "input_x_grad":
        raw = InputXGradient(model).attribute(x, target=target)
    elif method == "integrated_gradients":
        raw = IntegratedGradients(model).attribute(
            x,
            baselines=_baseline_tensor(settings["baseline"], x),
            target=target,
            n_steps=settings["steps"],
            internal_batch_size=settings["internal_batch_size"],
        )
    elif method == "smoothgrad":
        # captum draws the noise from the global generator of x's device: seeded here (a fresh seed
        # for seed=None) inside a fork, so the caller's random state is left as it was; the noisy
        # copies are cast back to the model's dtype (captum's noise is float32).
        seed = settings["seed"] if settings["seed"] is not None else secrets.randbits(63)
        with _seeded_generator_of(x.device, seed):
            raw = NoiseTunnel(Saliency(_InDtype(model, x.dtype))).attribute(
                x,
                nt_type="smoothgrad",
                nt_samples=settings["samples"],
                stdevs=float(settings["noise"]),
                nt_samples_batch_size=settings["samples_batch_size"],
                target=target,
                abs=False,
            )
    elif method == "boundary":
        labels = predicted if predicted is not None else target
        points, distances, found = find_boundary_points(
            model, x.detach(), labels, settings["epsilons"], settings["attack_steps"]
        )
        raw = IntegratedGradients(model).attribute(
            x,
            baselines=points,
            target=target,
            n_steps=settings["steps"],
            internal_batch_size=settings["internal_batch_size"],
        )
        extras = {"boundary_points": points, "boundary_distances": distances, "boundary_found": found}
    else:  # resolve_method guards this
        raise ValueError(method)
    return raw.detach(), extras


@contextlib.contextmanager
def _seeded_generator_of(device: torch.device, seed: int) -> Iterator[None]:
    """The default generator of ``device`` (the CPU's, or that CUDA device's) seeded with ``seed``
    for the block and restored after; no other generator is touched (``torch.manual_seed`` would
    seed every device's, and queue a seed for CUDA not yet initialized)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        else:
            torch.random.default_generator.manual_seed(seed)
        yield


class _InDtype:
    """The model called on inputs cast to ``dtype`` (a half-precision model under captum's float32
    noise)."""

    def __init__(self, model, dtype: torch.dtype):
        self.model, self.dtype = model, dtype

    def __call__(self, x: Tensor) -> Tensor:
        return self.model(x.to(self.dtype))


def _model_batch(model: nn.Module, inputs) -> Tensor:
    input_size = getattr(model, "input_size", None)
    if input_size is None:
        raise TypeError(
            "explain/predict need an lga_zoo model; turn yours into one with lga_zoo.wrap(model, ...)"
        )
    batch = to_batch(inputs, input_size, model.interpolation, model.crop_pct, device=model.device)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), batch.dtype)
    return batch.to(dtype)


SINGLE_PASS_METHODS = ("grad", "input_x_grad")  # one forward at x: its logits give the probabilities


class _RecordingForward:
    """Calls the model and keeps its last output (detached), for methods whose forward runs at x."""

    def __init__(self, model: nn.Module):
        self.model, self.output = model, None

    def __call__(self, x: Tensor) -> Tensor:
        output = self.model(x)
        self.output = output.detach()
        return output


def _known_num_classes(model: nn.Module) -> int | None:
    """The number of classes when the model says it without a forward pass (labels or timm's
    ``num_classes``), else ``None``."""
    labels = getattr(model, "labels", None)
    if labels:
        return len(labels)
    count = getattr(getattr(model, "backbone", None), "num_classes", None)
    return count if isinstance(count, int) and count > 0 else None


def predict(model: nn.Module, inputs) -> tuple[Tensor, Tensor]:
    """``(classes (B,), probabilities (B, K))`` for ``inputs`` of any accepted kind."""
    x = _model_batch(model, inputs)
    with preserved(model), torch.no_grad():
        probabilities = model(x).float().softmax(1)
    return probabilities.argmax(1), probabilities


def explain(
    model: nn.Module,
    inputs,
    target=None,
    method: str = "grad",
    normalize: str = "max",
    stability: bool | dict[str, Any] = False,
    **method_kwargs: Any,
) -> Explanation:
    """Explain ``model``'s decision on ``inputs``.

    ``inputs``: a PIL image or a list of them, an HWC numpy array, a CHW/BCHW tensor of pixels in
    [0, 1] or a uint8 tensor, resized to the model's input size. ``target``: ``None`` (the predicted
    class), an int, a class name, or one per image. ``method`` and ``normalize``: see the module
    docstring; ``method_kwargs`` are the method's settings. ``stability=True`` (or a dict of
    :class:`~lga_zoo.stability.StabilitySettings`) also scores how stable each map is under noise and
    a short attack (see :mod:`lga_zoo.stability`). Returns an :class:`Explanation`; ``model`` is left
    exactly as it was (modes, requires_grad, buffers, hooks).
    """
    method, settings = resolve_method(method, method_kwargs)
    gradients_on("explain")  # refuses torch.inference_mode() before any work
    stability_settings = StabilitySettings.from_option(stability) if stability is not False else None
    if normalize not in NORMALIZATIONS:
        normalize_attribution(torch.zeros(1, 1, 1, 1), normalize)  # raises with the accepted values
    x = _model_batch(model, inputs)
    labels = getattr(model, "labels", None)
    num_classes = _known_num_classes(model)
    with preserved(model), gradients_on("explain"):
        if method in SINGLE_PASS_METHODS and target is not None and num_classes is not None:
            # The target is known before the attribution: reuse the forward captum runs for the
            # probabilities instead of a separate forward pass.
            placeholder = torch.zeros(len(x), dtype=torch.long, device=x.device)
            target_t = resolve_target(target, placeholder, labels, num_classes)
            recording = _RecordingForward(model)
            raw, extras = attribute(recording, x, target_t, method, settings)
            probabilities = recording.output.float().softmax(1)
            predicted = probabilities.argmax(1)
        else:
            with torch.no_grad():
                probabilities = model(x).float().softmax(1)
            predicted = probabilities.argmax(1)
            target_t = resolve_target(target, predicted, labels, probabilities.shape[1])
            raw, extras = attribute(model, x, target_t, method, settings, predicted)
        if not torch.isfinite(raw).all():
            raise InputError(f"the {method} attribution holds NaN or inf values; check the model's outputs")
        scores, recorded = None, None
        if stability_settings is not None:

            def map_at(x_other: Tensor) -> Tensor:
                return normalize_attribution(
                    attribute(model, x_other, target_t, method, settings, predicted)[0]
                )

            scores, recorded = stability_scores(
                model, x, target_t, method, normalize_attribution(raw), map_at, stability_settings
            )
    return Explanation(
        attribution=normalize_attribution(raw, normalize),
        raw=raw,
        inputs=x,
        target=target_t,
        predicted=predicted,
        probabilities=probabilities,
        method=method,
        settings={**settings, "normalize": normalize},
        labels=getattr(model, "labels", None),
        stability=scores,
        stability_settings=recorded,
        **extras,
    )
