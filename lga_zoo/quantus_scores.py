"""Quantus scores of the zoo's grad maps: Max-Sensitivity, Local Lipschitz Estimate, Relative Input
Stability (robustness) and ROAD (faithfulness), computed by Quantus itself (``pip install
quantus==0.6.0``, the ``eval`` extra), never re-implemented here.

The explanation is the map ``lga-zoo evaluate`` draws (:func:`lga_zoo.diffroar.grad_maps`): the input
gradient of the predicted class's logit, |.| summed over the colour channels and divided by its
maximum, a (H, W) map in [0, 1]; the model in eval mode, Softplus fused and BatchNorm folded (the same
function up to float rounding). Quantus gets it as a (B, 1, H, W) ``a_batch`` and as ``explain_func``
for the perturbed inputs, with ``normalise=False`` and ``abs=False`` (the map is normalized already).
The labels (``y_batch``) are the model's predictions on the clean images, the classes the maps explain.

Parameters (recorded in the results, :class:`QuantusSettings`):

* the three robustness scores perturb every pixel by uniform noise in [-eps, eps] (Quantus'
  ``batch_uniform_noise``), eps the zoo's L-inf radius in [0, 1] pixel space (4/255, before the
  model's normalization, which is inside the model); ``nr_samples`` draws per image, the score the
  maximum over them; every draw counts (``return_nan_when_prediction_changes=False``: the map compared
  is the same class's either way). Quantus does not clip the noisy pixels to [0, 1].
* ROAD (Rong et al. 2022): the most relevant ``road_percentages`` of the pixels replaced by Quantus'
  ``noisy_linear_imputation`` (noise ``road_noise``), the model's prediction kept or not at each;
  per image, the fraction of the percentages at which the prediction is kept (the area under its
  MoRF curve: lower is more faithful), and the curve (fraction of images kept per percentage).

Relative Input Stability divides by each pixel's value (and each map value): an image with pixels at 0
gets a denominator of eps / 1e-6 (Quantus' ``eps_min`` guard) and a figure near 0, so its per-image
values are far apart; it is reported as Quantus computes it.

Each score is reported as its mean over the images with a 95% Student-t interval
(mean +- t(0.975, n-1) s / sqrt(n)). Quantus draws its noise from numpy's global generator: each
batch and score runs seeded by (seed, first image, score), the caller's numpy state restored after,
so a batch gives the same figures whatever ran before it (and a resumed run those of a whole one).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

QUANTUS_VERSION = "0.6.0"
QUANTUS_INSTALL = f'pip install "quantus=={QUANTUS_VERSION}"'
ROBUSTNESS_SCORES = ("max_sensitivity", "local_lipschitz_estimate", "relative_input_stability")
SCORES = (*ROBUSTNESS_SCORES, "road")

MapFunction = Callable[[Tensor, Tensor], Tensor]  # (x in [0, 1], labels) -> (B, H, W) maps


@dataclass(frozen=True)
class QuantusSettings:
    """Every parameter of the Quantus scores; recorded in the results JSON.

    Sized on benchmarks/quantus_cost.py: one full-width CIFAR ResNet-18 on 200 images in about 20 to
    30 minutes of one CPU core (see the README)."""

    n_images: int = 200  # the first robustness images of the evaluation
    eps: float = 4 / 255  # L-inf radius of the uniform noise, pixels in [0, 1]
    nr_samples: int = 50  # noise draws per image, each robustness score (Quantus default: 200)
    road_percentages: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)  # % of the pixels replaced
    road_noise: float = 0.01  # the noise of the imputation (Quantus' default)
    ris_eps_min: float = 1e-6  # Relative Input Stability's guard against division by 0 (Quantus' default)
    batch_size: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_images", "nr_samples", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        if not 0 < self.eps < math.inf:
            raise ValueError(f"eps={self.eps!r} must be a positive radius (pixels in [0, 1])")
        if not self.road_percentages or not all(0 < p < 100 for p in self.road_percentages):
            raise ValueError(f"road_percentages={self.road_percentages!r} must be percentages in (0, 100)")

    def recorded(self) -> dict[str, Any]:
        """The settings as results.json holds them, with the fixed choices spelled out."""
        record = asdict(self)
        record["road_percentages"] = list(self.road_percentages)
        record["perturbation"] = "batch_uniform_noise in [-eps, eps] on every pixel, not clipped"
        record["return_nan_when_prediction_changes"] = False
        record["normalise"] = False
        record["abs"] = False
        record["road_imputation"] = "noisy_linear_imputation"
        record["labels"] = "the model's prediction on the clean image"
        record["ci95_method"] = "t"
        return record


def quantus_module():
    """The ``quantus`` module, or a RuntimeError that says how to install it."""
    try:
        import quantus
    except ImportError as error:
        raise RuntimeError(
            f"the Quantus scores need quantus ({error}): install it with `{QUANTUS_INSTALL}` "
            '(or pip install -e ".[eval]")'
        ) from None
    return quantus


def implementation() -> str:
    """The implementation as results record it: "quantus 0.6.0"."""
    return f"quantus {quantus_module().__version__}"


def t_interval(values: np.ndarray | list[float]) -> dict[str, Any]:
    """Mean and 95% Student-t interval of per-image ``values``: {"mean", "ci95", "n",
    "ci95_method": "t"}; the interval is None for fewer than two values (the mean None for none).

    Args:
        values: one number per image (finite).

    Returns:
        The statistic as results.json holds it.
    """
    from scipy import stats

    array = np.asarray(values, dtype=np.float64)
    n = len(array)
    mean = float(array.mean()) if n else None
    if n < 2:
        return {"mean": mean, "ci95": None, "n": n, "ci95_method": "t"}
    half = float(stats.t.ppf(0.975, n - 1)) * float(array.std(ddof=1)) / math.sqrt(n)
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": n, "ci95_method": "t"}


@contextlib.contextmanager
def numpy_seeded(*seed: int) -> Iterator[None]:
    """numpy's global generator seeded with ``seed`` for the block (Quantus draws from it), and given
    back as it was after."""
    saved = np.random.get_state()
    np.random.seed(list(seed))
    try:
        yield
    finally:
        np.random.set_state(saved)


def explain_func_of(map_fn: MapFunction) -> Callable[..., np.ndarray]:
    """Quantus' ``explain_func`` for ``map_fn``: (model, inputs, targets) numpy in, (B, 1, H, W) maps
    out. The model Quantus passes is the one ``map_fn`` differentiates (its wrapper's ``get_model()``)."""

    def explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **kwargs: Any) -> np.ndarray:
        x = torch.from_numpy(np.asarray(inputs, dtype=np.float32))
        y = torch.from_numpy(np.asarray(targets)).long()
        return map_fn(x, y).unsqueeze(1).numpy()

    return explain


def robustness_metrics(settings: QuantusSettings) -> dict[str, Any]:
    """Quantus' three robustness metrics, configured by ``settings``, by score name."""
    quantus = quantus_module()
    from quantus.functions.perturb_func import batch_uniform_noise

    common = {
        "nr_samples": settings.nr_samples,
        "abs": False,
        "normalise": False,
        "perturb_func": batch_uniform_noise,
        "return_nan_when_prediction_changes": False,
        "disable_warnings": True,
        "display_progressbar": False,
    }
    # batch_uniform_noise draws U(-lower_bound, lower_bound) when upper_bound is None;
    # RelativeInputStability presets upper_bound=0.2, so it gets both bounds (U(-eps, eps) as well)
    return {
        "max_sensitivity": quantus.MaxSensitivity(lower_bound=settings.eps, **common),
        "local_lipschitz_estimate": quantus.LocalLipschitzEstimate(
            perturb_func_kwargs={"lower_bound": settings.eps}, **common
        ),
        "relative_input_stability": quantus.RelativeInputStability(
            perturb_func_kwargs={"lower_bound": -settings.eps, "upper_bound": settings.eps},
            eps_min=settings.ris_eps_min,
            **common,
        ),
    }


def road_kept(
    model: nn.Module, x: np.ndarray, labels: np.ndarray, maps: np.ndarray, settings: QuantusSettings
) -> np.ndarray:
    """Quantus' ROAD on each image: whether ``model`` still predicts ``labels`` after the most relevant
    ``settings.road_percentages`` of its pixels (by ``maps``) are imputed; (B, P) booleans.

    Shapes, Quantus 0.6.0: ``noisy_linear_imputation`` takes a (C, H, W) image and indices of
    *pixels*, in [0, H*W), while ``ROAD.evaluate_batch`` broadcasts the map to the image's shape
    (B, 3, H, W) and hands it the top indices of that flattened array, in [0, 3*H*W): with a (B, H, W)
    or (B, 1, H, W) map (each pixel three times) or a map repeated over the channels, an index past
    H*W comes up and the imputation raises an IndexError (tested). What works: the map in channel 0
    and the two other channels below every map value (-1), so that the top indices are exactly the
    pixels in the map's order, and ``a_size`` (the count the percentages are taken of, otherwise
    3*H*W from this map) preset to H*W. ROAD's ``custom_postprocess`` keeps only the mean over its
    first batch (``evaluation_scores[0]``), so it runs one image at a time to give each image's row.

    Args:
        model: the model (pixels in [0, 1] in, logits out), in eval mode.
        x: (B, 3, H, W) images, pixels in [0, 1].
        labels: (B,) the classes whose keeping is counted (the clean predictions).
        maps: (B, H, W) the maps whose order the pixels are removed in, values >= 0.
        settings: the percentages and the imputation's noise.

    Returns:
        (B, len(settings.road_percentages)) booleans: prediction kept.
    """
    quantus = quantus_module()
    if x.ndim != 4 or maps.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"maps {maps.shape} must be (B, H, W) of the images {x.shape}")
    layout = np.full(x.shape, -1.0, dtype=np.float32)
    layout[:, 0] = maps
    rows = []
    for i in range(len(x)):
        road = quantus.ROAD(
            percentages=list(settings.road_percentages),
            noise=settings.road_noise,
            abs=False,
            normalise=False,
            disable_warnings=True,
            display_progressbar=False,
        )
        road.a_size = x.shape[2] * x.shape[3]  # percentages of the pixels (see above)
        curve = road(
            model=model,
            x_batch=x[i : i + 1],
            y_batch=labels[i : i + 1],
            a_batch=layout[i : i + 1],
            device=str(x_device(model)),
            batch_size=1,
            softmax=False,  # the argmax of the logits: no Softmax layer added (Quantus warns each time)
        )
        rows.append([bool(curve[p]) for p in settings.road_percentages])
    return np.array(rows, dtype=bool).reshape(len(x), len(settings.road_percentages))


def x_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def measure_batch(
    model: nn.Module,
    map_fn: MapFunction,
    x: Tensor,
    start: int,
    settings: QuantusSettings,
    scores: tuple[str, ...] = SCORES,
) -> dict[str, np.ndarray]:
    """The Quantus scores of one batch of images, per image.

    Args:
        model: the model ``map_fn`` differentiates (pixels in [0, 1] in, logits out), in eval mode.
        map_fn: the grad map, e.g. from :func:`lga_zoo.diffroar.grad_maps`.
        x: (B, 3, H, W) images, pixels in [0, 1], on the CPU.
        start: the index of the batch's first image among the measured ones (seeds its noise).
        settings: the parameters.
        scores: which of :data:`SCORES` to measure.

    Returns:
        ``{score: (B,) float64}`` for the robustness scores, and for ROAD ``"road"`` (B,) (the fraction
        of the percentages at which the prediction is kept) and ``"road_kept"`` (B, P) booleans.
    """
    device = x_device(model)
    with torch.no_grad():
        predicted = model(x.to(device)).argmax(1).cpu()
    maps = map_fn(x, predicted)
    x_np, y_np = x.numpy().astype(np.float32), predicted.numpy()
    a_batch = maps.unsqueeze(1).numpy()
    explain = explain_func_of(map_fn)
    out: dict[str, np.ndarray] = {}
    metrics = robustness_metrics(settings) if any(s in ROBUSTNESS_SCORES for s in scores) else {}
    for index, name in enumerate(SCORES):
        if name not in scores:
            continue
        with numpy_seeded(settings.seed, start, index):
            if name == "road":
                kept = road_kept(model, x_np, y_np, maps.numpy(), settings)
                out["road_kept"] = kept
                out["road"] = kept.mean(1).astype(np.float64)
            else:
                values = metrics[name](
                    model=model,
                    x_batch=x_np,
                    y_batch=y_np,
                    a_batch=a_batch,
                    explain_func=explain,
                    device=str(device),
                    batch_size=len(x_np),
                )
                out[name] = np.asarray(values, dtype=np.float64).reshape(len(x_np))
    return out


def summarize(per_image: dict[str, np.ndarray], settings: QuantusSettings) -> dict[str, Any]:
    """The ``scores`` of the ``quantus`` section from per-image values (all images done).

    Args:
        per_image: what :func:`measure_batch` returns, concatenated over the batches.
        settings: the parameters (ROAD's percentages name the curve).

    Returns:
        ``{score: t_interval(...)}``, ROAD's also with ``curve``: per percentage, the fraction of the
        images whose prediction is kept (and ``lower_is_better`` for every score).
    """
    section: dict[str, Any] = {}
    for name in SCORES:
        if name not in per_image:
            continue
        values = per_image[name]
        finite = values[np.isfinite(values)]
        if len(finite) < len(values):
            log.warning(
                "%s: %d of %d images gave no finite value", name, len(values) - len(finite), len(values)
            )
        section[name] = {**t_interval(finite), "lower_is_better": True}
        if name == "road":
            kept = per_image["road_kept"]
            section[name]["curve"] = {
                str(p): float(kept[:, i].mean()) for i, p in enumerate(settings.road_percentages)
            }
    return section


STATE_FORMAT = "lga_zoo.quantus_state.v1"


def save_state(path: Path, per_image: dict[str, np.ndarray], done: int, fingerprint: dict[str, Any]) -> None:
    """Write the per-image values of the first ``done`` images to ``path`` atomically (safetensors)."""
    from safetensors.numpy import save_file

    metadata = {"format": STATE_FORMAT, "fingerprint": json.dumps(fingerprint), "done": str(done)}
    tensors = {name: np.ascontiguousarray(values) for name, values in per_image.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_state(path: Path, fingerprint: dict[str, Any]) -> tuple[dict[str, np.ndarray], int]:
    """(per-image values, images done) saved in ``path``; a ValueError when it is no Quantus state or
    was saved with other settings, weights or data."""
    from .eval_state import read_state_file

    metadata, per_image = read_state_file(path, "numpy", STATE_FORMAT, "Quantus state")
    if json.loads(metadata["fingerprint"]) != fingerprint:
        raise ValueError(
            f"{path} was saved with other settings, weights or data; resume with the same ones, or delete it"
        )
    return per_image, int(metadata["done"])


def measure(
    model: nn.Module,
    images: Tensor,
    settings: QuantusSettings,
    device: torch.device,
    state_path: Path | None = None,
    resume: bool = False,
    stop_after_seconds: float | None = None,
    fingerprint: dict[str, Any] | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any] | None, int]:
    """The Quantus scores of ``model``'s grad maps on ``images``, batch by batch.

    Args:
        model: pixels in [0, 1] in, logits out; given back as it was.
        images: (N, 3, H, W) uint8, the images in the order measured (N = ``settings.n_images``).
        settings: the parameters.
        device: where the model runs (Quantus gets the maps and images back on the CPU).
        state_path: save the per-image values there after every batch; removed by the caller.
        resume: continue from ``state_path`` (an existing state is refused without it).
        stop_after_seconds: end after the batch that passes this time.
        fingerprint: what a resumed state must have been saved with (settings, weights, data).
        progress: log each batch.

    Returns:
        (the ``scores`` of :func:`summarize`, or None when stopped early; the number of images done).
    """
    from .diffroar import grad_maps

    quantus_module()
    fingerprint = fingerprint or {"settings": settings.recorded()}
    if state_path is not None and state_path.is_file() and not resume:
        raise FileExistsError(f"{state_path} holds a stopped run; pass --resume (resume=True), or delete it")
    per_image: dict[str, np.ndarray] = {}
    done = 0
    if state_path is not None and state_path.is_file():
        per_image, done = load_state(state_path, fingerprint)
        log.info("resumed from %s after %d images", state_path, done)
    started = time.monotonic()
    probe = images[:8].float().div(255).to(device)
    with grad_maps(model, device, probe) as map_fn:  # CPU tensors in and out, the model on ``device``
        for start in range(done, len(images), settings.batch_size):
            x = images[start : start + settings.batch_size].float().div(255)
            batch = measure_batch(model, map_fn, x, start, settings)
            per_image = {
                k: np.concatenate([per_image[k], v]) if k in per_image else v for k, v in batch.items()
            }
            done = start + len(x)
            if state_path is not None:
                save_state(state_path, per_image, done, fingerprint)
            if progress:
                log.info("quantus: %d of %d images, %.0f s", done, len(images), time.monotonic() - started)
            if done < len(images) and stop_after_seconds is not None:
                if time.monotonic() - started >= stop_after_seconds:
                    return None, done
    return summarize(per_image, settings), done


def quantus_section(scores: dict[str, Any], settings: QuantusSettings, n_images: int) -> dict[str, Any]:
    """The ``quantus`` section of results.json around ``scores``."""
    return {
        "implementation": implementation(),
        "map": "grad (|d logit / d x| of the predicted class, summed over channels, divided by its max)",
        "n_images": n_images,
        "images": "the first n_images robustness images of this evaluation (its seed)",
        "settings": settings.recorded(),
        "scores": scores,
    }


def merge_quantus(
    results: dict[str, Any], section: dict[str, Any], addition: dict[str, Any]
) -> dict[str, Any]:
    """``results`` with ``quantus`` set to ``section`` and ``additions.quantus`` to ``addition`` (how the
    figures were made: command, versions, device); every other section as it was.

    Args:
        results: a results JSON.
        section: what :func:`quantus_section` returns.
        addition: the command, versions and device.

    Returns:
        A new results JSON (``results`` is left as it was).
    """
    merged = copy.deepcopy(results)
    merged["quantus"] = section
    merged.setdefault("additions", {})["quantus"] = addition
    return merged


def run_quantus_addition(
    name_or_path: str,
    data_dir: str,
    results: dict[str, Any],
    settings: QuantusSettings | None = None,
    device: str | None = None,
    progress: bool = True,
    command: str | None = None,
    state_path: str | Path | None = None,
    resume: bool = False,
    stop_after_seconds: float | None = None,
    what: str = "the results",
) -> tuple[dict[str, Any], int, int]:
    """The Quantus scores on the first ``settings.n_images`` robustness images of ``results``, a complete
    evaluation of ``name_or_path`` (same weights, data set and split, and seed), merged in.

    Args:
        name_or_path: a zoo name or a model folder.
        data_dir: the data, as ``lga-zoo evaluate --data-dir`` takes it.
        results: the results JSON to add to.
        settings: the parameters (default :class:`QuantusSettings`; its seed is set to the results');
            ``n_images`` is capped at the results' robustness images.
        device: where the model runs (default: cuda if available, else cpu).
        progress: log each batch.
        command: the command line to record.
        state_path: saved after every batch (resumable with ``resume=True``).
        resume: continue the run saved at ``state_path``.
        stop_after_seconds: end after the batch that passes this time (then nothing is merged).
        what: names the results in errors.

    Returns:
        (``results`` with the ``quantus`` section merged in by :func:`merge_quantus`, or ``results``
        unchanged when stopped early; the images done; the images wanted).
    """
    from .eval_state import evaluation_fingerprint
    from .evaluate import addition_model_and_data, check_addable, package_versions, robustness_order

    check_addable(results, what, "the Quantus scores")
    quantus_module()
    settings = settings or QuantusSettings()
    n_robustness = results["data"]["n_robustness"]
    seed = results.get("seed", results.get("settings", {}).get("seed", 0))
    if settings.n_images > n_robustness:
        log.warning("%s holds %d robustness images: the Quantus scores run on those", what, n_robustness)
    settings = replace(settings, n_images=min(settings.n_images, n_robustness), seed=seed)
    model, data = addition_model_and_data(name_or_path, data_dir, results, what, "the Quantus scores")
    device_t = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device_t)
    order = robustness_order(len(data.labels), seed)[: settings.n_images]
    images = torch.from_numpy(np.ascontiguousarray(data.images[order.numpy()].transpose(0, 3, 1, 2)))
    labels = torch.from_numpy(data.labels[order.numpy()])
    state = Path(state_path) if state_path is not None else None
    fingerprint = evaluation_fingerprint(model, images, labels, settings.recorded()) if state else None
    scores, done = measure(
        model, images, settings, device_t, state, resume, stop_after_seconds, fingerprint, progress
    )
    if scores is None:
        return results, done, settings.n_images
    addition = {
        "command": command or " ".join(["lga-zoo", *sys.argv[1:]]),
        "implementation": implementation(),
        "versions": {**package_versions(), "quantus": quantus_module().__version__},
        "device": str(device_t),
    }
    section = quantus_section(scores, settings, done)
    return merge_quantus(results, section, addition), done, settings.n_images
