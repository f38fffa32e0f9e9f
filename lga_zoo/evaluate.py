"""Evaluation: clean and adversarial accuracy, and attribution robustness, into a results JSON.

``lga-zoo evaluate NAME_OR_PATH --data-dir D`` measures

* top-1 accuracy on the split (all images, or ``--n-accuracy``);
* adversarial accuracy under PGD (L-inf and L2) on the robustness images (``pgd`` attack), and
  under AutoAttack's gradient part (``apgd``: APGD-CE, then APGD-T on the images it leaves; torchattacks,
  fp32; :mod:`lga_zoo.apgd`) at the same radii;
* for each attribution method, the similarity of the map at x and at x' (top-k intersection,
  Kendall, Spearman, cosine, Pearson, SSIM, MSE) for x' from: ``random`` uniform noise in the
  L-inf ball (several draws), the ``targeted`` attribution attack (frame target) and the
  untargeted ``topk`` attack, the attacks run with ReLU swapped for Softplus(beta).

Each similarity is reported as the mean over images and a 95% confidence interval (normal
approximation), an APGD accuracy with a Wilson 95% interval, with the model's sha256, the data,
every setting, the seed, the package versions and the command line.

:func:`run_apgd_addition` (``lga-zoo evaluate NAME --add apgd``) measures APGD on the robustness
images of an existing results JSON (same weights, data, seed and radii) and merges it in.

Under ``torchrun --nproc_per_node N`` (:mod:`lga_zoo.distributed`) both shard the work across the N
processes: the seeded robustness images in rounds of one whole batch per process (batch k on rank
k mod N) and the clean-accuracy batches likewise; after each round every process gathers every
batch's per-image measurements, in batch order, and rank 0 alone saves the state and writes. Each
batch holds the same images as in one process and starts from the same state of the evaluation's
random generator (each process draws, without measuring, what the batches of the others draw), and
APGD seeds itself per batch; so every per-image value is computed by the same operations on the same
inputs as in one process, and the figures are exactly those of one process on the same kind of
device with the same number of threads per process. A stopped run resumes with any number of
processes (the state does not depend on it).
"""

from __future__ import annotations

import copy
import logging
import math
import platform
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from .apgd import apgd_record, apgd_robust, implementation, torchattacks_module
from .attacks import (
    DIFFERENTIABLE_METHODS,
    pgd,
    random_perturbation,
    targeted_attribution_attack,
    topk_attack,
)
from .attribution import ALIASES, attribute, normalize_attribution, resolve_method
from .batchnorm_folding import folded_batchnorm
from .data import ImageArrays
from .distributed import (
    all_gathered,
    from_rank0,
    group_rank_world,
    join_process_group,
    process_device,
    rank_world,
)
from .eval_state import Measured, evaluation_fingerprint, load_state, save_state
from .fused_softplus import fused_softplus_activations
from .metrics import SIMILARITIES, similarities
from .models import attack_activation, softplus_activations
from .precision import use_bf16
from .state import preserved

ATTACKS = ("random", "targeted", "topk", "pgd", "apgd")
DEFAULT_ATTACKS = ("random", "targeted", "topk", "pgd")
ACCURACY_ATTACKS = ("pgd", "apgd")  # robust accuracy; the others perturb the maps
APGD_SETTINGS = ("apgd_steps", "apgd_targets")  # recorded only when apgd runs
SLOW_METHODS = ("integrated_gradients", "smoothgrad", "boundary")
# how many random tensors of the batch's shape each attack draws from the evaluation's generator
RANDOM_TENSORS = {"random": "random_draws", "targeted": 1, "topk": 0}

log = logging.getLogger(__name__)


@dataclass
class EvalSettings:
    """Every setting of an evaluation; recorded in the results JSON."""

    methods: tuple[str, ...] = ("grad", "integrated_gradients")
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    n_robustness: int = 1000
    n_accuracy: int | None = None
    eps: float = 4 / 255
    attack_steps: int = 100
    random_draws: int = 5
    softplus_beta: float = 20.0
    gamma: float = 0.9
    topk_fraction: float = 0.1
    ig_steps: int = 32
    attack_map: str = "same"  # "same": attack the evaluated method's map; "grad": attack the gradient map
    attack_ig_steps: int = 8
    pgd_linf_eps: float = 2 / 255
    pgd_l2_eps: float = 0.25
    pgd_steps: int = 20
    apgd_steps: int = 50  # each of APGD-CE and APGD-T (AutoAttack's standard version: 100), at the PGD radii
    apgd_targets: int = 3  # APGD-T's target classes, the most likely wrong ones (AutoAttack: 9 on CIFAR-10)
    similarities: tuple[str, ...] = SIMILARITIES
    batch_size: int = 100
    n_slow: int | None = None  # images for integrated_gradients, smoothgrad, boundary (default: all)
    attack_amp: str = "none"  # "bf16": the attacks (not the maps) under bf16 autocast
    seed: int = 0
    method_settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.methods = tuple(ALIASES.get(m, m) for m in self.methods)
        for method in self.methods:
            resolve_method(method, {})
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise ValueError(f"unknown attacks {unknown}; accepted: {ATTACKS}")
        if self.n_slow is not None and (
            isinstance(self.n_slow, bool) or not isinstance(self.n_slow, int) or self.n_slow < 1
        ):
            raise ValueError(f"n_slow={self.n_slow!r} must be None or an integer >= 1")
        if self.attack_amp not in ("none", "bf16"):
            raise ValueError(f"attack_amp={self.attack_amp!r}; accepted: 'none', 'bf16'")
        k = self.topk_fraction
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 < k <= 1:
            raise ValueError(f"topk_fraction={k!r} must be a fraction of the pixels in (0, 1]")
        self.topk_fraction = float(k)  # 1 is every pixel, not a count of one
        beta = self.softplus_beta
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 < beta < math.inf:
            raise ValueError(
                f"softplus_beta={beta!r} must be a positive number (the attacks' Softplus for ReLU)"
            )
        for name in ("eps", "pgd_linf_eps", "pgd_l2_eps"):
            radius = getattr(self, name)
            if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not 0 <= radius < math.inf:
                raise ValueError(f"{name}={radius!r} must be a finite radius >= 0 (pixels in [0, 1])")
        for name in APGD_SETTINGS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        if self.attack_map not in ("same", "grad"):
            raise ValueError(f"attack_map={self.attack_map!r}; accepted: 'same', 'grad'")
        for method in self.methods:
            kwargs = {"steps": self.ig_steps} if method in ("integrated_gradients", "boundary") else {}
            self.method_settings[method] = resolve_method(method, kwargs)[1]

    def images_for(self, method: str) -> int:
        """How many of the robustness images ``method`` is measured on."""
        if method in SLOW_METHODS and self.n_slow is not None:
            return min(self.n_slow, self.n_robustness)
        return self.n_robustness

    def recorded(self) -> dict[str, Any]:
        record = asdict(self)
        if "apgd" not in self.attacks:  # results and saved states of evaluations without APGD as before
            for name in APGD_SETTINGS:
                del record[name]
        record["methods"] = list(self.methods)
        record["attacks"] = list(self.attacks)
        record["similarities"] = list(self.similarities)
        record["method_settings"] = {
            m: {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()}
            for m, s in self.method_settings.items()
        }
        return record


def mean_ci95(values: Tensor | np.ndarray) -> dict[str, Any]:
    """Mean and a 95% confidence interval (mean +- 1.96 standard errors) of per-image values; the
    interval is None for fewer than two values (and the mean None for none), which JSON can hold
    where it cannot hold NaN."""
    array = np.asarray(values, dtype=np.float64)
    n = len(array)
    mean = float(array.mean()) if n else None
    if n < 2:
        return {"mean": mean, "ci95": None, "n": n}
    half = 1.96 * float(array.std(ddof=1)) / math.sqrt(n)
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": n}


def _maps(model: nn.Module, x: Tensor, target: Tensor, method: str, settings: EvalSettings) -> Tensor:
    raw, _ = attribute(model, x, target, method, settings.method_settings[method])
    return normalize_attribution(raw, "max")


def attacked_map(method: str, settings: EvalSettings) -> str:
    """The attribution method whose map the attacks on ``method`` optimize: the method itself when
    ``attack_map="same"`` and it is differentiable, else the gradient."""
    return method if settings.attack_map == "same" and method in DIFFERENTIABLE_METHODS else "grad"


def attack_precision(settings: EvalSettings, device: torch.device):
    """bf16 autocast around the attacks when ``settings.attack_amp == "bf16"`` (the perturbed
    inputs stay fp32 and inside the ball; every map and similarity is measured in fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.attack_amp == "bf16")


def _attacked_inputs(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    attack: str,
    attack_method: str,
    settings: EvalSettings,
    generator: torch.Generator,
    fused_softplus: bool,
) -> list[Tensor]:
    """The x' of ``attack`` (``random``: ``settings.random_draws`` of them), the attacks optimizing the
    map of ``attack_method``."""
    if attack == "random":
        return [random_perturbation(x, settings.eps, generator) for _ in range(settings.random_draws)]
    with (
        softplus_activations(model, settings.softplus_beta),
        # also the Softplus just swapped in for a ReLU model's ReLUs
        fused_softplus_activations(model) if fused_softplus else nullcontext(),
        attack_precision(settings, x.device),
    ):
        if attack == "targeted":
            x_adv = targeted_attribution_attack(
                model,
                x,
                target,
                eps=settings.eps,
                steps=settings.attack_steps,
                gamma=settings.gamma,
                method=attack_method,
                ig_steps=settings.attack_ig_steps,
                generator=generator,
            )
        else:
            x_adv = topk_attack(
                model,
                x,
                target,
                eps=settings.eps,
                steps=settings.attack_steps,
                k=settings.topk_fraction,
                method=attack_method,
                ig_steps=settings.attack_ig_steps,
            )
    return [x_adv]


@torch.no_grad()
def clean_accuracy(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    batch_size: int,
    device: torch.device,
    progress: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> float:
    """Top-1 accuracy of ``model`` on ``images`` (uint8, NCHW) in batches of ``batch_size``.

    Args:
        model: pixels in [0, 1] in, logits out.
        images: uint8 images, (N, C, H, W).
        labels: their labels, (N,).
        batch_size: images per forward.
        device: where the model runs.
        progress: show a progress bar.
        rank: this process's rank in an initialized process group of ``world_size`` processes: it
            measures batches ``rank``, ``rank + world_size``, ... and the counts are summed over all
            of them (the same batches as one process, so the same figure).
        world_size: the number of processes (1: no process group).

    Returns:
        The fraction of ``labels`` predicted.
    """
    correct = 0
    starts = range(rank * batch_size, len(labels), world_size * batch_size)
    for start in tqdm(starts, desc="accuracy", disable=not progress, leave=False):
        x = images[start : start + batch_size].to(device).float().div(255)
        correct += (model(x).argmax(1).cpu() == labels[start : start + batch_size]).sum().item()
    if world_size > 1:
        correct = sum(all_gathered(correct))
    return correct / len(labels)


def evaluate(
    model: nn.Module,
    data: ImageArrays,
    settings: EvalSettings,
    device: str | torch.device = "cpu",
    progress: bool = True,
    on_batch: Callable[[dict[str, Any]], None] | None = None,
    state_path: str | Path | None = None,
    resume: bool = False,
    stop_after_seconds: float | None = None,
    fused_softplus: bool = True,
    fold_batchnorm: bool = True,
    measure_clean: bool = True,
) -> dict[str, Any]:
    """Measure ``model`` (pixels in [0, 1] in, logits out) on ``data``; returns the ``accuracy``,
    ``robustness`` and ``data`` sections of the results JSON. ``on_batch``, if given, receives the
    same sections over the images done so far after each robustness batch but the last.

    ``state_path``: save what was measured after every robustness batch (safetensors, see
    :mod:`lga_zoo.eval_state`); ``resume=True`` continues from it with the same figures as an
    uninterrupted run (an existing state is refused without it). ``stop_after_seconds``: end after
    the batch that passes this time; the returned ``data.n_robustness`` says how many images are done.
    ``fused_softplus``: run the model's Softplus activations as
    :class:`lga_zoo.fused_softplus.FusedSoftplus` on the CPU (the same function, faster: see
    ``benchmarks/evaluate.py --fused-softplus``); False keeps PyTorch's kernel.
    ``fold_batchnorm``: run with each eval-mode BatchNorm that follows a convolution folded into it
    (:mod:`lga_zoo.batchnorm_folding`: the same function up to float rounding, faster attacks: see
    ``benchmarks/evaluate.py --fold-batchnorm``); False runs the modules as they are.
    ``measure_clean=False`` leaves out the clean accuracy (``accuracy`` then holds only the attacks'
    figures): what :func:`run_apgd_addition` uses, the clean accuracy being measured already.

    ``model`` is left as it was: evaluated in eval mode with everything restored after, and on
    another ``device`` through a copy.

    Under an initialized process group of several processes (``torchrun``; see the module's
    docstring) every process calls this with the same arguments and gets the same figures, those of
    one process; each measures its share of the batches, rank 0 alone reads and writes
    ``state_path``, calls ``on_batch`` and decides when ``stop_after_seconds`` has passed."""
    device = torch.device(device)
    if "apgd" in settings.attacks:
        torchattacks_module()  # before any work: a clear error where it is not installed
    state = Path(state_path) if state_path is not None else None
    if state is not None and from_rank0(state.is_file()) and not resume:
        raise FileExistsError(
            f"{state} holds a stopped evaluation; pass --resume (resume=True) to continue it, or delete it"
        )
    model_device = next((p.device for p in model.parameters()), device)
    same_device = model_device.type == device.type and device.index in (None, model_device.index)
    if not same_device:
        model = copy.deepcopy(model).to(device)
    with preserved(model), fused_softplus_activations(model) if fused_softplus else nullcontext():
        return _evaluate(
            model, data, settings, device, progress, on_batch, state, stop_after_seconds,
            fused_softplus, fold_batchnorm, measure_clean,
        )  # fmt: skip


def _empty_measured(settings: EvalSettings, accuracy: dict[str, Any] | None = None) -> Measured:
    """Nothing measured yet on the robustness images (``accuracy``: the clean accuracy, if measured).

    Args:
        settings: the evaluation's settings (its methods, attacks and similarities).
        accuracy: the ``accuracy`` section so far.

    Returns:
        An empty :class:`Measured`.
    """
    per_image: dict[str, dict[str, dict[str, list[Tensor]]]] = {
        m: {a: {s: [] for s in settings.similarities} for a in settings.attacks if a not in ACCURACY_ATTACKS}
        for m in settings.methods
    }
    changed = {m: {a: 0 for a in ("targeted", "topk")} for m in settings.methods}
    return Measured(dict(accuracy or {}), per_image, {"linf": 0, "l2": 0}, changed)


def _start(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    order: Tensor,
    settings: EvalSettings,
    device: torch.device,
    progress: bool,
    measure_clean: bool = True,
) -> Measured:
    """A fresh evaluation: the clean accuracy measured (unless ``measure_clean`` is False; under a
    process group, each process a share of the batches), no robustness images done."""
    accuracy: dict[str, Any] = {}
    if measure_clean:
        rank, world_size = group_rank_world()
        n_acc = min(settings.n_accuracy or len(labels), len(labels))
        acc_idx = order[:n_acc] if n_acc < len(labels) else torch.arange(len(labels))
        clean = clean_accuracy(
            model, images[acc_idx], labels[acc_idx], 500, device, progress and rank == 0, rank, world_size
        )
        accuracy = {"clean": clean, "n_images": n_acc}
    return _empty_measured(settings, accuracy)


def robustness_order(n: int, seed: int) -> Tensor:
    """The order the evaluation draws the ``n`` images of a split in: its robustness images are the
    first ``n_robustness`` (and the clean accuracy's, with ``n_accuracy``, the first ``n_accuracy``).

    Args:
        n: the number of images in the split.
        seed: the evaluation's seed.

    Returns:
        A permutation of range(n).
    """
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _evaluate(
    model: nn.Module,
    data: ImageArrays,
    settings: EvalSettings,
    device: torch.device,
    progress: bool,
    on_batch: Callable[[dict[str, Any]], None] | None,
    state: Path | None = None,
    stop_after_seconds: float | None = None,
    fused_softplus: bool = True,
    fold_batchnorm: bool = True,
    measure_clean: bool = True,
) -> dict[str, Any]:
    started = time.monotonic()
    images = torch.from_numpy(np.ascontiguousarray(data.images.transpose(0, 3, 1, 2)))
    labels = torch.from_numpy(data.labels)
    # of the weights as given: a state is resumed whether or not BatchNorm is folded (rank 0 reads and
    # writes the state)
    on_rank0 = group_rank_world()[0] == 0
    fingerprint = (
        evaluation_fingerprint(model, images, labels, settings.recorded()) if state and on_rank0 else {}
    )
    probe = images[:2].to(device).float().div(255)
    with folded_batchnorm(model, probe) if fold_batchnorm and len(probe) else nullcontext():
        return _measure(
            model, images, labels, data.name, settings, device, progress, on_batch,
            state, fingerprint, started, stop_after_seconds, fused_softplus, measure_clean,
        )  # fmt: skip


def _resumed_or_started(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    order: Tensor,
    settings: EvalSettings,
    device: torch.device,
    progress: bool,
    measure_clean: bool,
    state: Path | None,
    fingerprint: dict[str, Any],
    generator: torch.Generator,
) -> Measured:
    """The measurements saved in ``state`` (``generator`` set to its saved state), else a fresh start.
    Under a process group rank 0 reads the state and every process gets its contents (or its error).
    """
    loaded: tuple[Measured, Tensor] | str | None = None
    if group_rank_world()[0] == 0 and state is not None and state.is_file():
        try:
            loaded = (load_state(state, fingerprint, generator), generator.get_state())
        except ValueError as error:
            loaded = str(error)
    loaded = from_rank0(loaded)
    if isinstance(loaded, str):
        raise ValueError(loaded)
    if loaded is None:
        return _start(model, images, labels, order, settings, device, progress, measure_clean)
    measured, generator_state = loaded
    generator.set_state(generator_state)
    if progress and group_rank_world()[0] == 0:
        print(f"resumed from {state} after {measured.done} robustness images", file=sys.stderr)
    return measured


def _measure(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    data_name: str,
    settings: EvalSettings,
    device: torch.device,
    progress: bool,
    on_batch: Callable[[dict[str, Any]], None] | None,
    state: Path | None,
    fingerprint: dict[str, Any],
    started: float,
    stop_after_seconds: float | None,
    fused_softplus: bool,
    measure_clean: bool = True,
) -> dict[str, Any]:
    """The clean accuracy (or the resumed state) and the robustness batches of :func:`_evaluate`, in
    rounds of one batch per process (one batch a round without a process group). After each round
    every process holds every batch's measurements so far; rank 0 saves the state, calls
    ``on_batch`` and decides whether to stop."""
    rank, world_size = group_rank_world()
    order = robustness_order(len(labels), settings.seed)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    measured = _resumed_or_started(
        model, images, labels, order, settings, device, progress, measure_clean, state, fingerprint, generator
    )
    rob_idx = order[: min(settings.n_robustness, len(labels))]
    starts = list(range(measured.done, len(rob_idx), settings.batch_size))
    rounds = range(0, len(starts), world_size)
    if world_size > 1 and rank == 0:
        log.info("%d robustness batches on %d processes, one batch each a round", len(starts), world_size)
    for first in tqdm(rounds, desc="robustness", disable=not progress or rank != 0):
        round_starts = starts[first : first + world_size]
        mine = _measure_round(
            model, images, labels, rob_idx, round_starts, rank, settings, generator, fused_softplus
        )
        over_time = stop_after_seconds is not None and time.monotonic() - started >= stop_after_seconds
        gathered = all_gathered((mine, over_time))
        for part, _ in gathered:  # in rank order: the order of the batches
            if part is not None:
                _merge(measured, part)
        measured.done = min(round_starts[-1] + settings.batch_size, len(rob_idx))
        if state is not None and rank == 0:
            save_state(state, measured, generator, fingerprint)
        if measured.done == len(rob_idx):
            break
        if on_batch is not None and rank == 0:
            on_batch(_summary(measured, settings, data_name))
        if gathered[0][1]:  # rank 0's clock decides
            break
    return _summary(measured, settings, data_name)


def _measure_round(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    rob_idx: Tensor,
    round_starts: list[int],
    rank: int,
    settings: EvalSettings,
    generator: torch.Generator,
    fused_softplus: bool,
) -> Measured | None:
    """Measure the batch of this round that is ``rank``'s (the one at ``round_starts[rank]``), and move
    ``generator`` over the other batches of the round as their measurement would, so that every
    process's generator draws what one process's draws at each batch.

    Args:
        model: the model, ready to measure.
        images: every image of the split, uint8 (N, C, H, W).
        labels: their labels.
        rob_idx: the robustness images, in the seeded order.
        round_starts: the first position in ``rob_idx`` of each batch of this round.
        rank: which of them this process measures.
        settings: the evaluation's settings.
        generator: the evaluation's random generator, at the state before the round.
        fused_softplus: see :func:`evaluate`.

    Returns:
        The measurements of this process's batch, or None when the round has no batch for it.
    """
    mine = None
    for position, start in enumerate(round_starts):
        idx = rob_idx[start : start + settings.batch_size]
        if position != rank:
            _skip_batch((len(idx), *images.shape[1:]), start, settings, generator)
            continue
        x = images[idx].to(generator.device).float().div(255)  # the generator is on the evaluation's device
        y = labels[idx].to(generator.device)
        mine = _empty_measured(settings)
        _measure_batch(model, x, y, start, settings, generator, fused_softplus, mine)
    return mine


def _skip_batch(
    shape: tuple[int, ...], start: int, settings: EvalSettings, generator: torch.Generator
) -> None:
    """Draw from ``generator`` what :func:`_measure_batch` draws for a batch of images of ``shape``
    whose first is robustness image ``start`` (see :data:`RANDOM_TENSORS`), without measuring it."""
    counts = {m: min(shape[0], max(0, settings.images_for(m) - start)) for m in settings.methods}
    for (attack, _), n in _needed_perturbations(counts, settings).items():
        tensors = RANDOM_TENSORS[attack]
        for _ in range(getattr(settings, tensors) if isinstance(tensors, str) else tensors):
            torch.rand((n, *shape[1:]), generator=generator, device=generator.device, dtype=torch.float32)


def _merge(measured: Measured, part: Measured) -> None:
    """Add the measurements of the batch ``part`` (the next one) to ``measured``."""
    for method, attacks in part.per_image.items():
        for attack, sims in attacks.items():
            for name, values in sims.items():
                measured.per_image[method][attack][name].extend(values)
    for norm in ("linf", "l2"):
        measured.pgd_correct[norm] += part.pgd_correct[norm]
        for count in ("ce", "ce_then_t"):
            measured.apgd_correct[norm][count] += part.apgd_correct[norm][count]
    for method, attacks in part.changed.items():
        for attack, count in attacks.items():
            measured.changed[method][attack] += count


def _measure_batch(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    start: int,
    settings: EvalSettings,
    generator: torch.Generator,
    fused_softplus: bool,
    measured: Measured,
) -> None:
    """Add one batch of robustness images (``x``, labels ``y``; the first is image ``start``) to
    ``measured``: the PGD and APGD counts, and each method's similarities and prediction changes."""
    with torch.no_grad():
        predicted = model(x).argmax(1)
    if "pgd" in settings.attacks:
        for norm, eps in (("linf", settings.pgd_linf_eps), ("l2", settings.pgd_l2_eps)):
            with attack_precision(settings, x.device):
                x_adv = pgd(model, x, y, eps, norm=norm, steps=settings.pgd_steps)
            with torch.no_grad():
                measured.pgd_correct[norm] += (model(x_adv).argmax(1) == y).sum().item()
    if "apgd" in settings.attacks:
        for norm, eps in (("linf", settings.pgd_linf_eps), ("l2", settings.pgd_l2_eps)):
            # fp32 whatever attack_amp says (apgd_robust turns autocast off)
            robust_ce, robust = apgd_robust(
                model, x, y, norm, eps, settings.apgd_steps, settings.apgd_targets, settings.seed
            )
            measured.apgd_correct[norm]["ce"] += int(robust_ce.sum())
            measured.apgd_correct[norm]["ce_then_t"] += int(robust.sum())
    counts = {m: min(len(x), max(0, settings.images_for(m) - start)) for m in settings.methods}
    perturbed_by_key = _shared_perturbations(model, x, predicted, counts, settings, generator, fused_softplus)
    for method in settings.methods:
        count = counts[method]
        if count == 0:
            continue  # a slow method measured on the first images only
        x_m, predicted_m = x[:count], predicted[:count]
        clean_maps = _maps(model, x_m, predicted_m, method, settings)
        for attack in settings.attacks:
            if attack in ACCURACY_ATTACKS:
                continue
            perturbed = [
                x_prime[:count] for x_prime in perturbed_by_key[_perturbation_key(method, attack, settings)]
            ]
            draws = []
            for x_prime in perturbed:
                assert (x_prime - x_m).abs().max() <= settings.eps + 1e-5, "perturbation left the ball"
                perturbed_maps = _maps(model, x_prime, predicted_m, method, settings)
                draws.append(
                    similarities(clean_maps, perturbed_maps, settings.similarities, settings.topk_fraction)
                )
                if attack in measured.changed[method]:
                    with torch.no_grad():
                        measured.changed[method][attack] += (
                            (model(x_prime).argmax(1) != predicted_m).sum().item()
                        )
            for name in settings.similarities:
                measured.per_image[method][attack][name].append(
                    torch.stack([d[name] for d in draws]).mean(0).cpu()
                )


def _perturbation_key(method: str, attack: str, settings: EvalSettings) -> tuple[str, str]:
    """(attack, attacked map): the methods with the same key are measured on the same x'."""
    return (attack, "-" if attack == "random" else attacked_map(method, settings))


def _shared_perturbations(
    model: nn.Module,
    x: Tensor,
    predicted: Tensor,
    counts: dict[str, int],
    settings: EvalSettings,
    generator: torch.Generator,
    fused_softplus: bool,
) -> dict[tuple[str, str], list[Tensor]]:
    """The perturbed inputs x' of a batch by :func:`_perturbation_key`, for the first ``counts[method]``
    images of each method. Methods that share the attacked map (all of them with attack_map="grad",
    and every method for random noise) are measured on the same x'. Each shared x' is made once, for
    the most images any method sharing it measures, so with attack_map="grad" the figures do not
    depend on the order of the methods or on n_slow. The x' are made in the order the methods that
    measure images in this batch first need them (the random generator is shared)."""
    return {
        (attack, map_method): _attacked_inputs(
            model, x[:n], predicted[:n], attack, map_method, settings, generator, fused_softplus
        )
        for (attack, map_method), n in _needed_perturbations(counts, settings).items()
    }


def _needed_perturbations(counts: dict[str, int], settings: EvalSettings) -> dict[tuple[str, str], int]:
    """How many images of a batch each perturbation of :func:`_shared_perturbations` is made for, by
    :func:`_perturbation_key`, in the order they are made (the order first needed)."""
    needed: dict[tuple[str, str], int] = {}
    for method in (m for m in settings.methods if counts[m] > 0):
        for attack in settings.attacks:
            if attack not in ACCURACY_ATTACKS:
                key = _perturbation_key(method, attack, settings)
                needed[key] = max(needed.get(key, 0), counts[method])
    return needed


def _summary(measured: Measured, settings: EvalSettings, data_name: str) -> dict[str, Any]:
    """The ``accuracy``, ``robustness`` and ``data`` sections over the ``measured.done`` images."""
    n_rob, per_image, pgd_correct, changed = (
        measured.done,
        measured.per_image,
        measured.pgd_correct,
        measured.changed,
    )
    accuracy = dict(measured.accuracy)
    if "pgd" in settings.attacks:
        accuracy["pgd"] = {
            norm: {
                "eps": eps,
                "steps": settings.pgd_steps,
                "accuracy": pgd_correct[norm] / n_rob,
                "n_images": n_rob,
            }
            for norm, eps in (("linf", settings.pgd_linf_eps), ("l2", settings.pgd_l2_eps))
        }
    if "apgd" in settings.attacks:
        accuracy["apgd"] = {
            norm: apgd_record(
                eps,
                measured.apgd_correct[norm]["ce_then_t"],
                measured.apgd_correct[norm]["ce"],
                n_rob,
                settings.apgd_steps,
                settings.apgd_targets,
                settings.seed,
                settings.batch_size,
            )
            for norm, eps in (("linf", settings.pgd_linf_eps), ("l2", settings.pgd_l2_eps))
        }
    robustness = {
        method: {
            attack: {name: mean_ci95(torch.cat(values)) for name, values in sims.items()}
            for attack, sims in attacks.items()
        }
        for method, attacks in per_image.items()
    }
    for method, attacks in changed.items():
        for attack, count in attacks.items():
            if attack in robustness[method]:
                n_method = min(n_rob, settings.images_for(method))
                robustness[method][attack]["prediction_changed"] = count / max(1, n_method)
    return {
        "accuracy": accuracy,
        "robustness": robustness,
        "data": {"name": data_name, "n_robustness": n_rob},
    }


def package_versions() -> dict[str, str]:
    import captum
    import timm

    from . import __version__

    return {
        "lga_zoo": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "captum": captum.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def run_evaluation(
    name_or_path: str,
    data_dir: str,
    split: str | None,
    settings: EvalSettings,
    device: str | None = None,
    progress: bool = True,
    command: str | None = None,
    on_partial: Callable[[dict[str, Any]], None] | None = None,
    state_path: str | Path | None = None,
    resume: bool = False,
    stop_after_seconds: float | None = None,
    fused_softplus: bool = True,
    fold_batchnorm: bool = True,
) -> dict[str, Any]:
    """Load the model and the data, evaluate, and assemble the full results JSON.

    ``on_partial``, if given, receives a results JSON over the robustness images done so far
    (``"complete": false``) after each batch, so a long run that is stopped still leaves its figures.
    ``state_path``, ``resume``, ``stop_after_seconds``, ``fused_softplus`` and ``fold_batchnorm`` are
    :func:`evaluate`'s; a run that stopped early returns ``"complete": false``.
    """
    from .hub import load

    if "apgd" in settings.attacks:
        torchattacks_module()  # before loading anything
    device = _process_device(device)
    model = load(name_or_path)
    data = _model_data(model, data_dir, split)
    split = split or ("test" if _dataset(model) == "cifar10" else data.name.rsplit("(", 1)[-1].rstrip(")"))
    if settings.attack_amp == "bf16" and not use_bf16(device, "attack_amp bf16"):
        # recorded as run; the caller's settings are left as they were
        settings = replace(settings, attack_amp="none", method_settings=dict(settings.method_settings))
    source = getattr(model, "source", "") or ""
    if source.startswith("folder:"):
        source = f"folder:{Path(source[len('folder:') :]).name}"  # no machine paths in results
    weights_sha = model.sha256
    name = (
        model.entry.name
        if model.entry is not None
        else model.config.get("lga_zoo", {}).get("name", str(name_or_path))
    )

    def results_json(measured: dict[str, Any], complete: bool) -> dict[str, Any]:
        return {
            "model": {"name": name, "sha256": weights_sha, "source": source},
            "data": {**measured["data"], "split": split, "n_accuracy": measured["accuracy"]["n_images"]},
            "seed": settings.seed,
            "settings": {k: v for k, v in settings.recorded().items() if k not in ("methods", "attacks")},
            "methods": list(settings.methods),
            "attacks": list(settings.attacks),
            "accuracy": measured["accuracy"],
            "robustness": measured["robustness"],
            "complete": complete,
            "versions": package_versions(),
            "device": str(device),
            # how this call ran the model (the same function either way; a resumed state's earlier
            # batches may have run otherwise)
            "execution": {"fused_softplus": fused_softplus, "fold_batchnorm": fold_batchnorm},
            # softplus_beta applies to ReLUs only: what the attacks really differentiated
            "attack_activation": attack_activation(model, settings.softplus_beta),
            "command": command or " ".join(["lga-zoo", *sys.argv[1:]]),
        }

    on_batch = None if on_partial is None else (lambda measured: on_partial(results_json(measured, False)))
    measured = evaluate(
        model,
        data,
        settings,
        device,
        progress,
        on_batch,
        state_path,
        resume,
        stop_after_seconds,
        fused_softplus,
        fold_batchnorm,
    )
    wanted = min(settings.n_robustness, len(data.labels))
    return results_json(measured, measured["data"]["n_robustness"] == wanted)


def _process_device(device: str | None) -> str | torch.device:
    """The device of this process (default: CUDA if available, else the CPU); under ``torchrun`` with
    several processes, each one's (a GPU: its LOCAL_RANK's), with the process group started (see
    :mod:`lga_zoo.distributed`).

    Args:
        device: what the user asked for ("cpu", "cuda", "cuda:1") or None.

    Returns:
        The device to evaluate on.
    """
    _, world_size, local_rank = rank_world()
    if world_size == 1:
        return device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = process_device(device, local_rank, world_size)
    join_process_group(device, world_size)
    return device


def _dataset(model: nn.Module) -> str:
    """The data set the model's recipe names: "cifar10", "imagenet100" or "folder"."""
    recipe = (getattr(model, "config", None) or {}).get("lga_zoo", {}).get("recipe", {})
    entry = getattr(model, "entry", None)
    return recipe.get("dataset") or (entry.dataset if entry is not None else "cifar10")


def _model_data(model: nn.Module, data_dir: str, split: str | None) -> ImageArrays:
    from .datasets import eval_arrays

    return eval_arrays(model, data_dir, split, _dataset(model))


def merge_apgd(results: dict[str, Any], apgd: dict[str, Any], addition: dict[str, Any]) -> dict[str, Any]:
    """``results`` with ``accuracy.apgd`` set to ``apgd`` and ``additions.apgd`` to ``addition`` (how
    the APGD figures were made: command, versions, device); every other section as it was."""
    merged = copy.deepcopy(results)
    merged["accuracy"]["apgd"] = apgd
    merged.setdefault("additions", {})["apgd"] = addition
    return merged


def apgd_settings_of(results: dict[str, Any], steps: int, targets: int, batch_size: int) -> EvalSettings:
    """The settings that measure APGD alone on the robustness images of ``results``: its seed, image
    count and PGD radii, no attribution method."""
    recorded = results.get("settings", {})
    defaults = EvalSettings()
    return EvalSettings(
        methods=(),
        attacks=("apgd",),
        n_robustness=results["data"]["n_robustness"],
        n_accuracy=recorded.get("n_accuracy"),
        pgd_linf_eps=recorded.get("pgd_linf_eps", defaults.pgd_linf_eps),
        pgd_l2_eps=recorded.get("pgd_l2_eps", defaults.pgd_l2_eps),
        seed=results.get("seed", recorded.get("seed", 0)),
        batch_size=batch_size,
        apgd_steps=steps,
        apgd_targets=targets,
        similarities=(),
    )


def check_addable(results: dict[str, Any], what: str, adding: str = "APGD") -> None:
    """Refuse a results JSON that ``adding`` (APGD, the Quantus scores) cannot be added to: a partial or
    malformed one."""
    missing = [key for key in ("model", "data", "accuracy") if not isinstance(results.get(key), dict)]
    if missing or "n_robustness" not in results["data"] or "sha256" not in results["model"]:
        raise ValueError(f"{what} is not an lga-zoo evaluation's results (no {', '.join(missing) or 'data'})")
    if results.get("complete") is not True:
        raise ValueError(f"{what} holds a stopped evaluation; complete it (--resume) before adding {adding}")


def addition_model_and_data(
    name_or_path: str, data_dir: str, results: dict[str, Any], what: str, adding: str
) -> tuple[nn.Module, ImageArrays]:
    """The model and the data of an addition to ``results`` (``adding``: "APGD", "the Quantus scores"):
    the same weights (sha256) and the same data set and split as ``results`` measured, else a ValueError.

    Args:
        name_or_path: a zoo name or a model folder.
        data_dir: the data, as ``lga-zoo evaluate --data-dir`` takes it.
        results: a complete evaluation's results JSON.
        what: names the results in errors.
        adding: names the addition in errors.

    Returns:
        (the loaded model, the split's images).
    """
    from .hub import load

    model = load(name_or_path)
    measured_sha = results["model"]["sha256"]
    if model.sha256 != measured_sha:
        raise ValueError(
            f"{what} measured other weights (sha256 {str(measured_sha)[:12]}...) than {name_or_path} "
            f"(sha256 {model.sha256[:12]}...); evaluate these weights in full instead of adding {adding}"
        )
    data = _model_data(model, data_dir, results["data"].get("split"))
    expected = {
        "data set": results["data"].get("name"),
        "images in the split": results["data"].get("n_accuracy"),
    }
    found = {"data set": data.name, "images in the split": len(data.labels)}
    if results.get("settings", {}).get("n_accuracy") is not None:
        # the accuracy was measured on a subset: no count of the split
        del expected["images in the split"], found["images in the split"]
    different = [
        f"{key} {found[key]!r} (the results': {expected[key]!r})"
        for key in expected
        if found[key] != expected[key]
    ]
    if different:
        raise ValueError(
            f"{data_dir} is not the data {what} measured: {'; '.join(different)}; pass the same --data-dir"
        )
    return model, data


def run_apgd_addition(
    name_or_path: str,
    data_dir: str,
    results: dict[str, Any],
    steps: int = 50,
    targets: int = 3,
    batch_size: int = 100,
    device: str | None = None,
    progress: bool = True,
    command: str | None = None,
    state_path: str | Path | None = None,
    resume: bool = False,
    stop_after_seconds: float | None = None,
    fused_softplus: bool = True,
    fold_batchnorm: bool = True,
    what: str = "the results",
) -> tuple[dict[str, Any], int]:
    """APGD (see :mod:`lga_zoo.apgd`) on the robustness images of ``results``, a complete evaluation of
    ``name_or_path``: the same weights (sha256, else a ValueError), the same data set and split, the
    same seeded images (its seed and ``data.n_robustness``) and the PGD radii. Returns (``results``
    with the APGD figures merged in by :func:`merge_apgd`, the number of images done): fewer than
    ``data.n_robustness`` when ``stop_after_seconds`` ended it early (then nothing is merged, and the
    state at ``state_path`` continues it with ``resume=True``). ``what`` names the results in errors."""
    check_addable(results, what)
    torchattacks_module()
    settings = apgd_settings_of(results, steps, targets, batch_size)
    model, data = addition_model_and_data(name_or_path, data_dir, results, what, "APGD")
    device = _process_device(device)
    measured = evaluate(
        model, data, settings, device, progress, None, state_path, resume, stop_after_seconds,
        fused_softplus, fold_batchnorm, measure_clean=False,
    )  # fmt: skip
    done = measured["data"]["n_robustness"]
    if done < settings.n_robustness:
        return results, done
    addition = {
        "command": command or " ".join(["lga-zoo", *sys.argv[1:]]),
        "implementation": implementation(),
        "versions": package_versions(),
        "device": str(device),
        "execution": {"fused_softplus": fused_softplus, "fold_batchnorm": fold_batchnorm},
    }
    return merge_apgd(results, measured["accuracy"]["apgd"], addition), done
