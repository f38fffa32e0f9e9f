"""DiffROAR (Shah, Jain and Netrapalli, NeurIPS 2021): does a model's map rank the pixels the task needs?

For a model M, every CIFAR-10 train and test image gets M's grad map (the input gradient of the
true label's logit, absolute value summed over channels, as ``explain(..., method="grad")`` draws
it; the true label on both splits, so the masks of a test image do not depend on M's mistakes). The
pixels of each image are ranked by that map (ties by pixel index, lower first). For a fraction k a
masked copy of the data keeps only the top-k pixels (or only the bottom-k), all three channels of a
pixel together, and sets every other pixel to the CIFAR-10 train mean. A fresh small classifier
(the same cheap recipe for every M) is trained on each masked train set and tested on the test set
masked the same way:

    DiffROAR(k) = accuracy(top-k) - accuracy(bottom-k)

A larger value means the map puts the pixels the task needs first. At k = 20% a second retrainer
seed gives the spread.

A run folder holds everything a stopped run needs to go on (one CPU job; a rerun skips finished
parts): ``run.json`` (the weights, the data and the settings it measures), ``ranks/`` (the pixel
orders, in safetensors chunks), ``retrain/`` (one JSON per finished retraining) and, at the end,
``diffroar.json`` (the section ``lga-zoo diffroar --publish`` merges into ``results.json``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor, nn

from .data import ImageArrays, augment_cifar
from .folder import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

METHOD = "DiffROAR (Shah et al. 2021)"
RUN_FORMAT = "lga_zoo.diffroar.v1"
MapFunction = Callable[[Tensor, Tensor], Tensor]  # (pixels (B, C, H, W), labels (B,)) -> (B, H, W)


@dataclass(frozen=True)
class RetrainerRecipe:
    """The classifier trained on every masked train set, the same for every model measured.

    SGD (Nesterov momentum) on batches of ``batch_size`` with a one-cycle learning rate: linear from
    0 to ``lr`` over the first ``warmup_fraction`` of the steps, then linear to 0; weight decay on
    the weights (not on BatchNorm or biases); pad-4 crops and flips of the masked images when
    ``augment``; bf16 autocast (where the device has native bf16 kernels) and channels_last. At
    the end the BatchNorm statistics are recomputed over ``batchnorm_batches`` train batches.
    """

    architecture: str = "resnet18_w16_cifar"
    epochs: int = 4
    batch_size: int = 256
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.2
    augment: bool = True
    amp: str = "bf16"
    channels_last: bool = True
    batchnorm_batches: int = 20


@dataclass(frozen=True)
class DiffRoarSettings:
    """What a DiffROAR run measures: the kept ``fractions``, the retrainer and its seeds (``seeds[0]``
    at every fraction, every seed at ``spread_fraction``)."""

    fractions: tuple[float, ...] = (0.1, 0.2, 0.5)
    seeds: tuple[int, ...] = (0, 1)
    spread_fraction: float = 0.2
    retrainer: RetrainerRecipe = field(default_factory=RetrainerRecipe)
    map_batch_size: int = 250
    chunk_size: int = 5000

    def jobs(self) -> list[tuple[float, str, int]]:
        """Every retraining as (fraction, "top" or "bottom", seed), in the order a run does them."""
        runs = [(k, which, self.seeds[0]) for k in self.fractions for which in ("top", "bottom")]
        runs += [(self.spread_fraction, which, s) for s in self.seeds[1:] for which in ("top", "bottom")]
        return runs

    def record(self) -> dict[str, Any]:
        """The settings as results record them (what makes two runs comparable)."""
        record = asdict(self)
        for key in ("map_batch_size", "chunk_size"):  # how the work is cut, not what it measures
            record.pop(key)
        return json.loads(json.dumps(record))


def fraction_key(fraction: float) -> str:
    """A fraction as results.json names it: 0.2 -> "20"."""
    return f"{fraction * 100:g}"


def kept_count(fraction: float, pixels: int) -> int:
    """How many of ``pixels`` a fraction keeps (rounded, at least one)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction} must be in (0, 1]")
    return max(1, round(fraction * pixels))


def pixel_order(saliency: Tensor) -> Tensor:
    """Per image, the flat pixel indices of a (B, H, W) map from the largest value to the smallest,
    ties by index (lower first), as int16 (B, H*W)."""
    flat = saliency.flatten(1).float()
    if not torch.isfinite(flat).all():
        raise ValueError("a map holds NaN or inf values; its pixels cannot be ranked")
    if flat.shape[1] > torch.iinfo(torch.int16).max:
        raise ValueError(f"{flat.shape[1]} pixels per image do not fit the int16 pixel order")
    return torch.sort(-flat, dim=1, stable=True).indices.to(torch.int16)


def keep_mask(order: Tensor, fraction: float, which: str) -> Tensor:
    """(B, H*W) bool: the pixels kept, the first ``fraction`` of ``order`` (``which="top"``) or the
    last (``"bottom"``)."""
    pixels = order.shape[1]
    n = kept_count(fraction, pixels)
    if which == "top":
        chosen = order[:, :n]
    elif which == "bottom":
        chosen = order[:, pixels - n :]
    else:
        raise ValueError(f"which={which!r}; accepted: 'top', 'bottom'")
    return torch.zeros(order.shape, dtype=torch.bool).scatter_(1, chosen.long(), True)


def mask_images(x: Tensor, keep: Tensor, fill: Tensor) -> Tensor:
    """Pixels (B, C, H, W) where ``keep`` (B, H*W) holds, ``fill`` (C,) everywhere else."""
    b, c, h, w = x.shape
    return torch.where(keep.view(b, 1, h, w), x, fill.to(x.dtype).view(1, c, 1, 1))


def channel_mean(data: ImageArrays) -> Tensor:
    """The per-channel mean of uint8 HWC images, as pixels in [0, 1]."""
    sums = data.images.reshape(-1, data.images.shape[-1]).sum(0, dtype=np.float64)
    return torch.tensor(
        sums / (255.0 * len(data.images) * np.prod(data.images.shape[1:3])), dtype=torch.float32
    )


@contextlib.contextmanager
def grad_maps(model: nn.Module, device: torch.device, probe: Tensor) -> Iterator[MapFunction]:
    """For the block, ``model``'s grad map of given labels: |d logit_y / d x| summed over channels,
    (B, H, W) on the CPU. As ``lga-zoo evaluate`` draws maps: in eval mode, Softplus fused and
    BatchNorm folded into the convolutions (``probe``, a few input images, finds the pairs), the
    same function up to float rounding; the model is given back as it was."""
    from .attribution import attribute, normalize_attribution
    from .batchnorm_folding import folded_batchnorm
    from .fused_softplus import fused_softplus_activations
    from .state import preserved

    def maps(x: Tensor, labels: Tensor) -> Tensor:
        raw, _ = attribute(model, x.to(device), labels.to(device), "grad", {})
        return normalize_attribution(raw, "max").cpu()

    with preserved(model), fused_softplus_activations(model), folded_batchnorm(model, probe.to(device)):
        yield maps


def _chunk_path(run_dir: Path, split: str, start: int) -> Path:
    return run_dir / "ranks" / f"{split}_{start:06d}.safetensors"


def _orders_of(map_fn: MapFunction, data: ImageArrays, start: int, stop: int, batch_size: int) -> Tensor:
    """The pixel orders of images ``start:stop`` of ``data``, maps computed in batches."""
    parts = []
    for s in range(start, stop, batch_size):
        e = min(stop, s + batch_size)
        x = torch.from_numpy(np.ascontiguousarray(data.images[s:e])).permute(0, 3, 1, 2).float().div_(255)
        parts.append(pixel_order(map_fn(x, torch.from_numpy(data.labels[s:e]))))
    return torch.cat(parts)


def _read_chunk(path: Path, count: int, pixels: int) -> Tensor | None:
    """A cached chunk of pixel orders, or None when it is unreadable or of another shape."""
    try:
        with safe_open(str(path), framework="pt") as f:
            order = f.get_tensor("order")
    except Exception as err:  # safetensors raises several types for a damaged file
        log.warning("pixel-order cache %s is unreadable (%s); computing it again", path, err)
        return None
    return order if tuple(order.shape) == (count, pixels) else None


def cached_pixel_orders(
    map_fn: MapFunction, data: ImageArrays, split: str, run_dir: Path, settings: DiffRoarSettings
) -> Tensor:
    """Pixel orders (N, H*W) int16 of every image of ``data``, by ``map_fn`` of its label; computed
    in chunks of ``settings.chunk_size`` images, each written to ``run_dir/ranks/`` (atomically) as
    it finishes, and read back from there on a rerun.

    Args:
        map_fn: (pixels (B, C, H, W) in [0, 1], labels (B,)) -> maps (B, H, W).
        data: the split's images and labels.
        split: "train" or "test", the cache's file names.
        run_dir: the run folder.
        settings: chunk and batch sizes.

    Returns:
        The pixel orders, most important pixel first.
    """
    n, pixels = len(data), data.images.shape[1] * data.images.shape[2]
    (run_dir / "ranks").mkdir(parents=True, exist_ok=True)
    orders = []
    for start in range(0, n, settings.chunk_size):
        stop = min(n, start + settings.chunk_size)
        path = _chunk_path(run_dir, split, start)
        cached = _read_chunk(path, stop - start, pixels) if path.is_file() else None
        if cached is None:
            began = time.perf_counter()
            cached = _orders_of(map_fn, data, start, stop, settings.map_batch_size)
            blob = save({"order": cached.contiguous()}, metadata={"split": split, "start": str(start)})
            atomic_write(path, lambda file, blob=blob: file.write(blob))
            seconds = time.perf_counter() - began
            log.info("%s maps %d-%d of %d: %.1f images/s", split, start, stop, n, (stop - start) / seconds)
        orders.append(cached)
    return torch.cat(orders)


@dataclass
class MaskedSplit:
    """A split and the pixels each image keeps: ``images`` uint8 (N, C, H, W), ``labels`` (N,),
    ``keep`` bool (N, H*W)."""

    images: Tensor
    labels: Tensor
    keep: Tensor

    @classmethod
    def of(cls, data: ImageArrays, order: Tensor, fraction: float, which: str) -> MaskedSplit:
        images = torch.from_numpy(np.ascontiguousarray(data.images.transpose(0, 3, 1, 2)))
        return cls(images, torch.from_numpy(data.labels), keep_mask(order, fraction, which))

    def __len__(self) -> int:
        return len(self.labels)


def masked_batches(
    split: MaskedSplit, fill: Tensor, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches (pixels in [0, 1], labels) of the masked split: in order, or, with ``generator``,
    shuffled, augmented (pad-4 crop and flip, after masking) and without a last short batch."""
    n = len(split)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if generator is not None and len(idx) < min(batch_size, n):
            break
        x = mask_images(split.images[idx].float().div_(255), split.keep[idx], fill)
        yield (augment_cifar(x, generator) if generator is not None else x), split.labels[idx]


def build_retrainer(recipe: RetrainerRecipe, num_classes: int, seed: int) -> nn.Module:
    """A freshly initialized retrainer (pixels in [0, 1] in, CIFAR-10 normalization inside), its
    initialization drawn from ``seed`` without touching the global generator."""
    from .models import CIFAR_MEAN, CIFAR_STD, ExplainableClassifier, create_backbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = create_backbone(recipe.architecture, num_classes)
    return ExplainableClassifier(backbone, CIFAR_MEAN, CIFAR_STD, input_size=(3, 32, 32))


def _optimizer(model: nn.Module, recipe: RetrainerRecipe, total_steps: int):
    """SGD with weight decay on the weights only, and the one-cycle schedule over ``total_steps``."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=True,
    )
    warmup = max(1, round(recipe.warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast_dtype(recipe: RetrainerRecipe, device: torch.device) -> torch.dtype | None:
    """bf16 where the recipe asks for it and ``device`` has native bf16 kernels, else None (fp32)."""
    from .precision import bf16_pays_off

    return torch.bfloat16 if recipe.amp == "bf16" and bf16_pays_off(device) else None


def train_retrainer(
    model: nn.Module,
    split: MaskedSplit,
    fill: Tensor,
    recipe: RetrainerRecipe,
    seed: int,
    device: torch.device,
) -> None:
    """Train ``model`` on the masked ``split`` with ``recipe`` (batches and augmentation from ``seed``)."""
    batch_size = min(recipe.batch_size, len(split))
    total = recipe.epochs * (len(split) // batch_size)
    optimizer, scheduler = _optimizer(model, recipe, total)
    generator = torch.Generator().manual_seed(seed)
    dtype = autocast_dtype(recipe, device)
    memory_format = torch.channels_last if recipe.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format).train()
    for epoch in range(recipe.epochs):
        began, losses = time.perf_counter(), []
        for x, y in masked_batches(split, fill, batch_size, generator):
            x, y = x.to(device, memory_format=memory_format), y.to(device)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = nn.functional.cross_entropy(model(x), y)
            if not torch.isfinite(loss):
                raise RuntimeError(f"the retrainer's loss became {loss.item()} in epoch {epoch + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        log.info(
            "  epoch %d/%d: loss %.3f, %.1f images/s",
            epoch + 1, recipe.epochs, float(np.mean(losses)), len(losses) * batch_size / (time.perf_counter() - began),
        )  # fmt: skip


@torch.no_grad()
def recompute_batchnorm(
    model: nn.Module,
    split: MaskedSplit,
    fill: Tensor,
    batch_size: int,
    seed: int,
    device: torch.device,
    batches: int = 20,
) -> None:
    """Set every BatchNorm's running statistics to their average over ``batches`` shuffled,
    augmented train batches of the final weights (a short training leaves running averages that
    lag the weights and can ruin the eval-mode accuracy)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
    model.train()
    generator = torch.Generator().manual_seed(seed + 1_000_003)
    for i, (x, _) in enumerate(masked_batches(split, fill, batch_size, generator)):
        if i == batches:
            break
        model(x.to(device))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum


@torch.no_grad()
def masked_accuracy(
    model: nn.Module, split: MaskedSplit, fill: Tensor, batch_size: int, device: torch.device
) -> float:
    """Top-1 accuracy (fp32, eval mode) of ``model`` on the masked ``split``."""
    model.eval()
    correct = 0
    for x, y in masked_batches(split, fill, batch_size):
        correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
    return correct / len(split)


def retrain_and_test(
    train: MaskedSplit,
    test: MaskedSplit,
    fill: Tensor,
    recipe: RetrainerRecipe,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    """One retraining: a fresh retrainer trained on the masked ``train`` split, tested on ``test``.

    Returns:
        ``{"accuracy", "seconds", "precision"}``: the masked-test accuracy, the wall time and
        whether the training ran under bf16 autocast or in fp32.
    """
    began = time.perf_counter()
    model = build_retrainer(recipe, int(max(train.labels.max(), test.labels.max())) + 1, seed)
    train_retrainer(model, train, fill, recipe, seed, device)
    batch_size = min(recipe.batch_size, len(train))
    recompute_batchnorm(model, train, fill, batch_size, seed, device, recipe.batchnorm_batches)
    accuracy = masked_accuracy(model, test, fill, recipe.batch_size, device)
    precision = "bf16 autocast" if autocast_dtype(recipe, device) is not None else "fp32"
    return {"accuracy": accuracy, "seconds": round(time.perf_counter() - began, 1), "precision": precision}


def _job_path(run_dir: Path, fraction: float, which: str, seed: int) -> Path:
    return run_dir / "retrain" / f"{which}_k{fraction_key(fraction)}_seed{seed}.json"


def data_digest(data: ImageArrays) -> str:
    """sha256 of a split's images and labels (which images, in which order)."""
    digest = hashlib.sha256(np.ascontiguousarray(data.images).tobytes())
    digest.update(np.ascontiguousarray(data.labels).tobytes())
    return digest.hexdigest()


def claim_run_folder(run_dir: Path, identity: dict[str, Any]) -> None:
    """Record what ``run_dir`` measures in ``run.json``; refuse a folder that measures something else
    (other weights, data or settings), whose finished parts would otherwise be mixed in."""
    path = run_dir / "run.json"
    identity = json.loads(json.dumps(identity))
    if not path.is_file():
        atomic_write_text(path, json.dumps(identity, indent=2) + "\n")
        return
    saved = json.loads(path.read_text())
    changed = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
    if changed:
        raise ValueError(
            f"{run_dir} holds a DiffROAR run of other {', '.join(changed)} (see its run.json); "
            "pass another --out, or remove the folder to start afresh"
        )


@contextlib.contextmanager
def run_folder_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` for the block; a second run on the same folder is refused at once."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise RuntimeError(
                f"{run_dir} is in use by another DiffROAR run (pid {holder}); wait for it, or pass another --out"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_diffroar(
    map_fn: MapFunction,
    train: ImageArrays,
    test: ImageArrays,
    run_dir: str | os.PathLike,
    identity: dict[str, Any],
    settings: DiffRoarSettings = DiffRoarSettings(),
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """DiffROAR of the maps ``map_fn`` draws, resumable in ``run_dir``.

    Args:
        map_fn: (pixels (B, C, H, W) in [0, 1], labels (B,)) -> maps (B, H, W).
        train: the train split (the retrainers learn from it; its mean is the fill).
        test: the test split (the accuracies are measured on it).
        run_dir: the run folder; finished parts in it are read back, not redone.
        identity: what the maps are of (e.g. the model's name and sha256), recorded in run.json.
        settings: fractions, seeds and the retrainer.
        device: where the retrainers train.

    Returns:
        ``{(fraction, which, seed): accuracy}`` for every retraining of ``settings.jobs()``.
    """
    run_dir, device = Path(run_dir), torch.device(device)
    with run_folder_lock(run_dir):
        claim_run_folder(
            run_dir,
            {
                "format": RUN_FORMAT,
                **identity,
                "data": {"train": data_digest(train), "test": data_digest(test)},
                "settings": settings.record(),
            },
        )
        orders = {split: cached_pixel_orders(map_fn, data, split, run_dir, settings)
                  for split, data in (("train", train), ("test", test))}  # fmt: skip
        fill = channel_mean(train)
        accuracies = {}
        for job in settings.jobs():
            accuracies[job] = _finished_or_run(job, train, test, orders, fill, run_dir, settings, device)
    return accuracies


def _finished_or_run(
    job: tuple[float, str, int],
    train: ImageArrays,
    test: ImageArrays,
    orders: dict[str, Tensor],
    fill: Tensor,
    run_dir: Path,
    settings: DiffRoarSettings,
    device: torch.device,
) -> float:
    """The masked-test accuracy of one retraining: read back when it finished before, else run and
    written to ``run_dir/retrain/`` (atomically) as soon as it finishes."""
    fraction, which, seed = job
    path = _job_path(run_dir, fraction, which, seed)
    if path.is_file():
        log.info("%s-%s%% seed %d: finished before (%s)", which, fraction_key(fraction), seed, path.name)
        return json.loads(path.read_text())["accuracy"]
    log.info("%s-%s%% seed %d: training the retrainer", which, fraction_key(fraction), seed)
    result = retrain_and_test(
        MaskedSplit.of(train, orders["train"], fraction, which),
        MaskedSplit.of(test, orders["test"], fraction, which),
        fill,
        settings.retrainer,
        seed,
        device,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"fraction": fraction, "which": which, "seed": seed, **result}
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    log.info("%s-%s%% seed %d: accuracy %.2f%% (%.0f s)", which, fraction_key(fraction), seed,
             100 * result["accuracy"], result["seconds"])  # fmt: skip
    return result["accuracy"]


def summarize(accuracies: dict[tuple[float, str, int], float], settings: DiffRoarSettings) -> dict[str, Any]:
    """The ``k`` table (top, bottom and their difference per fraction, first seed) and the
    differences of every seed at the spread fraction."""
    first = settings.seeds[0]
    table = {}
    for k in settings.fractions:
        top, bottom = accuracies[(k, "top", first)], accuracies[(k, "bottom", first)]
        table[fraction_key(k)] = {"top": top, "bottom": bottom, "diffroar": top - bottom}
    spread = settings.spread_fraction
    seeds = [accuracies[(spread, "top", s)] - accuracies[(spread, "bottom", s)] for s in settings.seeds]
    return {"k": table, f"seeds_at_{fraction_key(spread)}": seeds}


def _cifar10_model(name_or_path: str, device: torch.device) -> tuple[nn.Module, str]:
    """The model and its name; a model of another data set or input size is refused."""
    from .hub import load

    model = load(name_or_path, device=device)
    config = getattr(model, "config", None) or {}
    recipe = config.get("lga_zoo", {}).get("recipe", {})
    dataset = recipe.get("dataset") or (model.entry.dataset if model.entry is not None else "cifar10")
    if dataset != "cifar10" or tuple(model.input_size) != (3, 32, 32):
        raise ValueError(
            f"DiffROAR here ranks CIFAR-10 pixels; {name_or_path} is a {dataset} model of input size "
            f"{tuple(model.input_size)}"
        )
    name = model.entry.name if model.entry is not None else config.get("lga_zoo", {}).get("name")
    return model, name or Path(str(name_or_path)).name


def measure_model(
    name_or_path: str,
    data_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    settings: DiffRoarSettings = DiffRoarSettings(),
    device: str | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """DiffROAR of a zoo model's (or a model folder's) grad maps on CIFAR-10, resumable in ``run_dir``.

    Args:
        name_or_path: a zoo name or a model folder, as ``lga_zoo.load`` takes it.
        data_dir: CIFAR-10 in any layout ``lga_zoo.data.load_cifar10`` accepts.
        run_dir: the run folder (see the module docstring); ``diffroar.json`` is written into it.
        settings: fractions, seeds and the retrainer.
        device: where the maps and retrainers run (default: cuda if available, else cpu).
        command: the command line to record.

    Returns:
        The ``faithfulness.diffroar`` section of results.json (with the model's name and sha256).
    """
    from .data import load_cifar10

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, name = _cifar10_model(name_or_path, device)
    train, test = load_cifar10(data_dir, "train"), load_cifar10(data_dir, "test")
    identity = {"model": {"name": name, "sha256": model.sha256}, "map": "grad"}
    probe = torch.from_numpy(test.images[:8]).permute(0, 3, 1, 2).float().div(255)
    with grad_maps(model, device, probe) as map_fn:
        accuracies = run_diffroar(map_fn, train, test, run_dir, identity, settings, device)
    precision = "bf16 autocast" if autocast_dtype(settings.retrainer, device) is not None else "fp32"
    section = {
        "method": METHOD,
        "map": "grad",
        "map_target": "true label (train and test images)",
        "model": identity["model"],
        "retrainer": {**asdict(settings.retrainer), "seeds": list(settings.seeds), "precision": precision},
        "fill": [round(v, 4) for v in channel_mean(train).tolist()],
        **summarize(accuracies, settings),
        "n_train": len(train),
        "n_test": len(test),
        "data": test.name,
        "command": command,
    }
    atomic_write_text(Path(run_dir) / "diffroar.json", json.dumps(section, indent=2) + "\n")
    return section


def merge_into_results(results_path: str | os.PathLike, section: dict[str, Any]) -> None:
    """Put ``section`` at ``faithfulness.diffroar`` of the results JSON at ``results_path``, leaving
    every other section as it was; refused (one line) when those results measured other weights."""
    path = Path(results_path)
    results = check_same_weights(path, section["model"]["sha256"])
    results["faithfulness"] = {**results.get("faithfulness", {}), "diffroar": section}
    atomic_write_text(path, json.dumps(results, indent=2) + "\n")


def check_same_weights(results_path: str | os.PathLike, sha256: str | None) -> dict[str, Any]:
    """The results JSON at ``results_path``, if it measured the weights of ``sha256``; else (or if it
    is missing) a one-line ValueError."""
    path = Path(results_path)
    if not path.is_file():
        raise ValueError(
            f"{path} does not exist; DiffROAR joins the results of the same weights: "
            "run `lga-zoo evaluate NAME --publish` first"
        )
    results = json.loads(path.read_text())
    measured = results.get("model", {}).get("sha256")
    if measured != sha256:
        raise ValueError(
            f"{path} measured other weights (sha256 {str(measured)[:12]}...) than DiffROAR's "
            f"(sha256 {str(sha256)[:12]}...); not merged"
        )
    return results
