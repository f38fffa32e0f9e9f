"""Training engine: `lga-zoo train RECIPE.yaml` or `torchrun --nproc_per_node=N -m lga_zoo.train ...`.

One process per device; under ``torchrun`` the processes form a DDP group (NCCL on GPU, gloo on
CPU). The regularized loss is computed inside one DDP forward (:class:`LossStep`), so the double
backward of LGA and the Hessian baseline stays inside a single backward pass.

Each epoch writes ``OUT/checkpoint.pt`` atomically (model, optimizer, scheduler, scaler, RNG states,
epoch) and one JSON line to ``OUT/log.jsonl``; ``--resume`` continues from it. A non-finite loss
stops the run and keeps the last good checkpoint. At the end OUT is a model folder:
``model.safetensors``, ``config.json`` and a ``README.md`` card, beside the checkpoint and the logs.
"""

from __future__ import annotations

import argparse
import copy
import errno
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from .datasets import TrainingData, dataset_classes, prepare_data
from .distributed import join_process_group, process_device
from .distributed import rank_world as _rank_world
from .folder import (
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    atomic_write,
    atomic_write_text,
    build_config,
    remove_stale_temporaries,
    write_model_folder,
)
from .fused_softplus import fuse_softplus
from .locks import LOCK_NAME, holding
from .models import ExplainableClassifier, create_backbone
from .precision import use_bf16
from .recipe import Recipe, load_recipe, publishable_path
from .regularizers import Regularizer, build_regularizer

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
PROGRESS_NAME = "progress.log"
FINISHED_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)  # written last, in this order, by a finished run


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class LossStep(nn.Module):
    """model + regularizer as one module, so DDP sees one forward and one backward per step."""

    def __init__(self, model: ExplainableClassifier, regularizer: Regularizer):
        super().__init__()
        self.model = model
        self.regularizer = regularizer

    def forward(self, x: Tensor, y: Tensor, generator: torch.Generator | None = None):
        out = self.regularizer(self.model, x, y, generator)
        return out.loss, out.logits, out.parts


def pretrained_weights_error(recipe: Recipe, err: Exception) -> ValueError:
    """A one-line error for timm weights that cannot be had (offline, nothing cached)."""
    import timm

    cfg = (
        timm.models.get_pretrained_cfg(recipe.architecture)
        if hasattr(timm.models, "get_pretrained_cfg")
        else None
    )
    hub_id = getattr(cfg, "hf_hub_id", None) or (cfg.get("hf_hub_id") if isinstance(cfg, dict) else None)
    where = f"hf-hub:{hub_id}" if hub_id else f"timm's default weights of {recipe.architecture}"
    return ValueError(
        f"init: pretrained needs the timm weights of {recipe.architecture} ({where}), which could not be "
        f"loaded ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else 'no details'}). "
        "Offline (HF_HUB_OFFLINE=1) they must be in the Hugging Face cache: fetch them where the Hub is "
        f"reachable (`huggingface-cli download {hub_id or 'timm/<model>'}`), or set `pretrained_file: "
        "path/to/weights.safetensors` in the recipe."
    )


def build_backbone(recipe: Recipe, num_classes: int) -> nn.Module:
    """The recipe's timm architecture with ``num_classes`` outputs: from scratch, or with timm's
    pretrained weights (from the Hugging Face cache or the recipe's ``pretrained_file``; the
    classifier is new when the class count differs). Fails before any data is read."""
    kwargs: dict[str, Any] = {}
    if recipe.pretrained_file:
        weights = Path(recipe.pretrained_file).expanduser()
        if not weights.is_file():
            raise FileNotFoundError(f"pretrained_file {str(weights)!r} does not exist")
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
    try:
        return create_backbone(
            recipe.architecture,
            num_classes,
            recipe.activation,
            recipe.softplus_beta,
            pretrained=recipe.init == "pretrained",
            **kwargs,
        )
    except (OSError, RuntimeError, ValueError) as err:
        if recipe.init != "pretrained":
            raise
        raise pretrained_weights_error(recipe, err) from None


def resolve_init_folder(init: str) -> Path:
    """``init: <model folder>`` as a path: relative paths are read from the working directory, then
    from the lga-zoo checkout (``model_cards/NAME`` in the shipped recipes)."""
    from .hub import checkout_root

    for candidate in (Path(init).expanduser(), checkout_root() / init):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"init folder {init!r} does not exist (read from the working directory and from the lga-zoo "
        "checkout); it must hold model.safetensors and config.json"
    )


def load_init_folder(recipe: Recipe, classes: tuple[str, ...]) -> ExplainableClassifier:
    """``init: <model folder>``: one of our folders to fine-tune, loaded like ``lga_zoo.load`` (a zoo
    model's folder is checked against its sha256 pins); it must hold the recipe's architecture and
    the data set's classes."""
    from .hub import load

    model = load(resolve_init_folder(recipe.init))
    if model.config["architecture"] != recipe.architecture:
        raise ValueError(
            f"init folder {recipe.init!r} holds a {model.config['architecture']}, "
            f"but the recipe trains a {recipe.architecture}"
        )
    if model.labels and tuple(model.labels) != tuple(classes):
        raise ValueError(
            f"init folder {recipe.init!r} has classes {model.labels[:5]}..., the data set {list(classes)[:5]}...: "
            "fine-tune from a model of the same classes"
        )
    from .models import set_activation

    set_activation(model.backbone, recipe.activation, recipe.softplus_beta)
    model.init_record = {"kind": "folder", "folder": publishable_path(recipe.init), "sha256": model.sha256,
                         "zoo_name": model.entry.name if model.entry is not None else None}  # fmt: skip
    return model.train()


def wrap_for_data(backbone: nn.Module, data: TrainingData) -> ExplainableClassifier:
    """The backbone as an :class:`ExplainableClassifier` with the data set's classes and geometry."""
    cfg = backbone.pretrained_cfg
    return ExplainableClassifier(
        backbone,
        mean=cfg["mean"],
        std=cfg["std"],
        input_size=data.input_size,
        labels=data.classes,
        interpolation=data.interpolation,
        crop_pct=data.crop_pct,
    ).train()


def build_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    opt = dict(recipe.optimizer)
    name = opt.pop("name")
    decay, no_decay = [], []
    for pname, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or pname.endswith(".bias") else decay).append(p)
    wd = opt.pop("weight_decay", 0.0)
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(
            groups, lr=opt["lr"], momentum=opt.get("momentum", 0.9), nesterov=opt.get("nesterov", False)
        )
    return torch.optim.AdamW(groups, lr=opt["lr"], betas=tuple(opt.get("betas", (0.9, 0.999))))


def lr_factor(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (warmup, then cosine or steps)."""
    sched = recipe.schedule
    epoch = step / steps_per_epoch
    warmup = sched.get("warmup_epochs", 0)
    if warmup and epoch < warmup:
        return (step + 1) / (warmup * steps_per_epoch)
    if sched["name"] == "steps":
        passed = sum(epoch >= m for m in sched["milestones"])
        return sched.get("gamma", 0.1) ** passed
    total = recipe.epochs * steps_per_epoch
    progress = (step - warmup * steps_per_epoch) / max(1, total - warmup * steps_per_epoch)
    min_factor = sched.get("min_lr", 0.0) / recipe.optimizer["lr"] if recipe.optimizer["lr"] else 0.0
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save(obj)`` into ``path`` atomically: a failed write leaves the last good file. A full
    disk is an ``OSError`` saying so, with the space needed."""
    try:
        atomic_write(path, lambda file: torch.save(obj, file))
    except (OSError, RuntimeError) as err:
        needed = _tensor_bytes(obj)
        free = shutil.disk_usage(path.parent).free
        if not _is_disk_full(err) and free >= needed:
            raise
        kept = f"the last good {path.name} is kept" if path.is_file() else f"no {path.name} was written"
        raise OSError(
            f"no space left on {path.parent} (needed about {needed / 1e6:.0f} MB, {free / 1e6:.0f} MB free); "
            f"{kept}: free some space and continue with --resume",
        ) from None


def _is_disk_full(err: BaseException | None) -> bool:
    """Whether ``err`` or an error it arose from is ENOSPC (torch.save turns one into a RuntimeError
    "unexpected pos")."""
    while err is not None:
        if getattr(err, "errno", None) == errno.ENOSPC:
            return True
        err = err.__cause__ or err.__context__
    return False


def _tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors in ``obj`` (nested dicts, lists and tuples): about a checkpoint's size."""
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


RESUMABLE_CHANGES = ("epochs", "eval_every")


def _check_same_recipe(saved: dict, current: dict, ckpt_path: Path) -> None:
    """A resumed run must use the recipe its checkpoint was made with (epochs may grow)."""
    current = json.loads(json.dumps(current))  # tuples become lists, as in the saved copy
    from dataclasses import fields as dataclass_fields

    defaults = {f.name: f.default for f in dataclass_fields(Recipe) if not callable(f.default_factory)}
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}  # keys added later
    changed = sorted(
        k for k in set(saved) | set(current) if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k)
    )
    if changed:
        detail = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise ValueError(
            f"cannot resume {ckpt_path}: the recipe changed ({detail}). "
            "Use a new --out folder, or restore the recipe."
        )


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    device: torch.device,
    channels_last: bool = False,
    world_size: int = 1,
) -> float:
    """Top-1 accuracy over ``batches`` (summed over DDP ranks when ``world_size`` > 1)."""
    was_training = model.training
    model.eval()
    if world_size > 1:  # every rank measures the model rank 0 saves: its BatchNorm statistics
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
    correct = torch.zeros((), device=device)
    count = torch.zeros((), device=device)
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        correct += (model(x).argmax(1) == y).sum()
        count += len(y)
    if world_size > 1:
        dist.all_reduce(correct)
        dist.all_reduce(count)
    model.train(was_training)
    return (correct / count.clamp(min=1)).item()


@dataclass
class EpochTally:
    """Running sums of one epoch (loss parts weighted by batch size, correct, seen, seconds), kept in
    mid-epoch checkpoints so a resumed epoch logs the same figures as an uninterrupted one."""

    sums: dict[str, float] = field(default_factory=dict)
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    steps: int = 0

    def add(self, parts: dict[str, Tensor], logits: Tensor, y: Tensor) -> None:
        for key, value in parts.items():
            self.sums[key] = self.sums.get(key, 0.0) + value.item() * len(y)
        self.correct += (logits.argmax(1) == y).sum().item()
        self.seen += len(y)
        self.steps += 1

    def means(self) -> dict[str, float]:
        return {k: v / max(1, self.seen) for k, v in self.sums.items()}


def amp_dtype_for(recipe: Recipe, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 on GPU and on CPUs with native bf16 kernels (elsewhere fp32, with a
    note on stderr), fp16 on GPU only (None: full precision)."""
    if recipe.amp == "bf16":
        return torch.bfloat16 if use_bf16(device, "amp: bf16") else None
    if recipe.amp == "fp16":
        if device.type != "cuda":
            print(
                "amp: fp16 autocast needs a GPU; training in fp32 (use amp: bf16 on the CPU)", file=sys.stderr
            )
            return None
        return torch.float16
    return None


def _guard_existing_run(out: Path, resume: bool) -> None:
    """Refuse to start a fresh run over a folder that holds a run or a model: its checkpoint, or its
    weights and config.json (a trained or published model folder), would be overwritten."""
    ckpt_path = out / CHECKPOINT_NAME
    if resume and ckpt_path.is_file():
        return
    held = [name for name in (CHECKPOINT_NAME, WEIGHTS_NAME, CONFIG_NAME) if (out / name).is_file()]
    if not held:
        return
    how = (
        f"there is no {CHECKPOINT_NAME} to resume from"
        if resume
        else "pass --resume to continue a run from its checkpoint"
    )
    raise FileExistsError(
        f"{out} already holds {', '.join(held)}, which a fresh run would overwrite; {how}, "
        "--overwrite to start afresh, or choose a new --out folder"
    )


class ProgressLog:
    """Human-readable progress lines (images/s, loss terms, ETA) appended to ``OUT/progress.log``
    about every ``every_seconds``; ``tail -f`` it during a long run."""

    def __init__(self, path: Path | None, total_steps: int, every_seconds: float = 60.0):
        self.path = path
        self.total_steps = total_steps
        self.every_seconds = every_seconds
        self.last = time.time()
        self.window_start = time.time()
        self.window_images = 0

    def step(
        self, global_step: int, epoch: int, epochs: int, tally: EpochTally, steps_per_epoch: int, batch: int
    ) -> None:
        self.window_images += batch
        now = time.time()
        if self.path is None or now - self.last < self.every_seconds:
            return
        rate = self.window_images / max(1e-9, now - self.window_start)
        steps_left = self.total_steps - global_step
        eta_minutes = steps_left * batch / max(rate, 1e-9) / 60
        parts = " ".join(f"{k} {v:.4f}" for k, v in tally.means().items())
        line = (
            f"{time.strftime('%Y-%m-%d %H:%M:%S')} epoch {epoch + 1}/{epochs} "
            f"step {tally.steps}/{steps_per_epoch} | {rate:.1f} img/s | {parts} "
            f"acc {tally.correct / max(1, tally.seen):.4f} | ETA {eta_minutes:.1f} min\n"
        )
        with open(self.path, "a") as f:
            f.write(line)
        self.last = self.window_start = now
        self.window_images = 0


def prepare_model_and_data(
    recipe: Recipe, data_dir: str | os.PathLike, rank: int = 0, world_size: int = 1, workers: int = 0
) -> tuple[ExplainableClassifier, TrainingData]:
    """The model to train and its data: the classes are read first and the model built (so missing
    pretrained weights fail before any image is decoded), then the batches."""
    classes = dataset_classes(recipe, data_dir)
    if recipe.init in ("scratch", "pretrained"):
        backbone = build_backbone(recipe, len(classes))
        data = prepare_data(recipe, data_dir, backbone.pretrained_cfg, rank, world_size, workers)
        model = wrap_for_data(backbone, data)
        model.init_record = {"kind": recipe.init}
        if recipe.init == "pretrained":
            model.init_record["weights"] = (
                Path(recipe.pretrained_file).name
                if recipe.pretrained_file
                else backbone.pretrained_cfg.get("hf_hub_id")
            )
    else:
        model = load_init_folder(recipe, classes)
        data = prepare_data(recipe, data_dir, model.backbone_cfg, rank, world_size, workers)
        geometry = (tuple(data.input_size), data.interpolation, data.crop_pct)
        if (tuple(model.input_size), model.interpolation, model.crop_pct) != geometry:
            raise ValueError(
                f"init folder {recipe.init!r} takes input {list(model.input_size)} ({model.interpolation}, "
                f"crop_pct {model.crop_pct}) but the recipe's data is {list(data.input_size)} "
                f"({data.interpolation}, crop_pct {data.crop_pct}); set input_size to the folder's"
            )
    if len(data.train) == 0:
        raise ValueError(
            f"batch_size={recipe.batch_size} is larger than the {data.record['train_images']} training images"
        )
    return model, data


def write_trained_folder(
    model: ExplainableClassifier,
    recipe: Recipe,
    regularizer: Regularizer,
    data: TrainingData,
    out: Path,
    test_acc: float,
    world_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> Path:
    """Write ``OUT/model.safetensors``, ``OUT/config.json`` and the ``OUT/README.md`` card: a model
    folder that ``lga_zoo.load(OUT)`` reads, ``lga-zoo evaluate OUT`` measures and ``lga-zoo push
    OUT`` uploads."""
    from .cards import entry_from_config, render_card

    model_cpu = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).eval()
    config = build_config(
        model_cpu,
        recipe.architecture,
        recipe.activation,
        recipe.softplus_beta,
        extra={
            "name": recipe.name,
            "regularizer": regularizer.settings(),
            "recipe": recipe.published_dict(),
            "init": getattr(model, "init_record", {"kind": recipe.init}),
            "data": data.record,
            "training": {
                "epochs": recipe.epochs,
                "final_test_acc": test_acc,
                "world_size": world_size,
                "device": device.type,
                "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "none",
            },
        },
    )
    write_model_folder(model_cpu, config, out)
    atomic_write_text(out / CARD_NAME, render_card(entry_from_config(config), None, config))
    return out


@dataclass
class Run:
    """Everything a training run carries from step to step, and checkpoints."""

    recipe: Recipe
    model: ExplainableClassifier
    step_module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    noise_gen: torch.Generator
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    rank: int = 0
    world_size: int = 1


def build_run(recipe: Recipe, model: ExplainableClassifier, regularizer: Regularizer, steps_per_epoch: int,
              device: torch.device, rank: int, world_size: int) -> Run:  # fmt: skip
    """Model on its device and memory format, the loss module (DDP-wrapped under torchrun), the
    optimizer, the learning-rate schedule, the grad scaler and the regularizer's noise generator."""
    model = model.to(device)
    # channels_last helps convolutions on the GPU and with bf16 on the CPU (benchmarks/train_step.py).
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_module: nn.Module = LossStep(model, regularizer)
    if world_size > 1:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = build_optimizer(recipe, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(recipe, s, steps_per_epoch))
    amp_dtype = amp_dtype_for(recipe, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    noise_gen = torch.Generator(device=device).manual_seed(recipe.seed * 1000 + rank)
    return Run(recipe, model, step_module, optimizer, scheduler, scaler, noise_gen, device, amp_dtype,
               recipe.channels_last, rank, world_size)  # fmt: skip


def _rng_states(run: Run) -> list[dict[str, Tensor]]:
    """Every rank's random states (the global CPU generator and the regularizer's noise), by rank."""
    mine = {"cpu": torch.get_rng_state(), "noise": run.noise_gen.get_state().cpu()}
    if run.world_size == 1:
        return [mine]
    gathered: list[Any] = [None] * run.world_size
    dist.all_gather_object(gathered, mine)
    return gathered


def save_checkpoint(run: Run, path: Path, epochs_done: int, step_in_epoch: int, tally: EpochTally) -> None:
    """Write the run's state atomically (rank 0 writes; every rank must call it under DDP)."""
    rng = _rng_states(run)
    if run.rank != 0:
        return
    _atomic_torch_save(
        {
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(),
            "rng": rng,
            "world_size": run.world_size,
            "epoch": epochs_done,
            "step_in_epoch": step_in_epoch,
            "tally": json.dumps(asdict(tally)),
            "recipe": json.dumps(run.recipe.to_dict()),
            "init": json.dumps(getattr(run.model, "init_record", None)),
        },
        path,
    )


def run_start(out: Path) -> dict | None:
    """Where the run in ``out`` started (the ``init`` record: ``kind``, and for a fine-tune the init
    folder and the sha256 of its weights), read from its checkpoint or, for a finished run whose
    checkpoint predates that record, its config.json; ``None`` when neither says."""
    ckpt_path = out / CHECKPOINT_NAME
    return _saved_start(_load_checkpoint(ckpt_path) if ckpt_path.is_file() else {}, out)


def _saved_start(ckpt: dict, out: Path) -> dict | None:
    if ckpt.get("init") is not None:
        return json.loads(ckpt["init"])
    config_path = out / CONFIG_NAME
    if config_path.is_file():
        return json.loads(config_path.read_text()).get("lga_zoo", {}).get("init")
    return None


def _check_same_start(ckpt: dict, model: ExplainableClassifier, ckpt_path: Path) -> None:
    """A resumed fine-tune must go on from the weights it started from: an init folder published
    anew since then (the same path, other weights) would make it a mix of two starting points."""
    saved, current = _saved_start(ckpt, ckpt_path.parent), getattr(model, "init_record", None)
    if not saved or not current or saved.get("sha256") == current.get("sha256"):
        return
    raise ValueError(
        f"cannot resume {ckpt_path}: it started from {saved.get('folder')} with weights sha256 "
        f"{str(saved.get('sha256'))[:12]}..., but {current.get('folder')} now holds {str(current.get('sha256'))[:12]}...; "
        "the resumed run would mix two starting points. Start afresh (--overwrite, or a new --out folder), "
        "or restore the weights it started from."
    )


def _check_schedule_length(saved: dict, recipe: Recipe, epochs_done: int, ckpt_path: Path) -> None:
    """Epochs may change on a resume only where the learning rates do not depend on them: a step
    schedule, or stopping a run where it stands (epochs = the epochs done)."""
    schedule = saved.get("schedule", {}).get("name")
    if recipe.epochs in (saved.get("epochs"), epochs_done) or schedule == "steps":
        return
    raise ValueError(
        f"cannot resume {ckpt_path} with epochs {saved.get('epochs')} -> {recipe.epochs}: the {schedule} "
        "schedule's learning rates depend on the number of epochs, so the resumed run would follow no "
        "recipe's schedule (a step schedule may change). Train more epochs as a new run from this one "
        "(init: its folder), or restore the recipe's epochs."
    )


def restore_checkpoint(run: Run, path: Path) -> tuple[int, int, EpochTally]:
    """Load ``path`` into the run; returns (epochs done, steps done in the next epoch, its tally)."""
    ckpt = _load_checkpoint(path)
    _check_same_recipe(json.loads(ckpt["recipe"]), run.recipe.to_dict(), path)
    _check_same_start(ckpt, run.model, path)
    saved_world = int(ckpt.get("world_size", 1))
    if saved_world != run.world_size:
        raise ValueError(
            f"cannot resume {path}: it was written by {saved_world} process(es), this run has {run.world_size}; "
            "resume with the same number of processes"
        )
    step = int(ckpt.get("step_in_epoch", 0))
    if ckpt["epoch"] + (1 if step else 0) > run.recipe.epochs:
        trained = f"{ckpt['epoch']} epochs" + (f" and {step} steps of the next" if step else "")
        raise ValueError(
            f"cannot resume {path}: it has trained {trained}, more than the {run.recipe.epochs} epochs "
            "asked for; resume with at least as many epochs as it has started"
        )
    _check_schedule_length(json.loads(ckpt["recipe"]), run.recipe, int(ckpt["epoch"]), path)
    run.model.load_state_dict(ckpt["model"], strict=True)
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    # Checkpoints written before per-rank states held rank 0's states as cpu_rng / noise_rng.
    states = ckpt.get("rng") or [{"cpu": ckpt["cpu_rng"], "noise": ckpt["noise_rng"]}]
    torch.set_rng_state(states[run.rank]["cpu"])
    try:
        run.noise_gen.set_state(states[run.rank]["noise"])
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(
            f"cannot resume {path} on {run.device.type}: its noise generator was saved on another kind of "
            "device; resume on the kind of device it was trained on"
        ) from None
    tally = EpochTally(**json.loads(ckpt["tally"])) if step else EpochTally()
    return int(ckpt["epoch"]), step, tally


def _time_to_checkpoint(run: Run, last_save: float, every_seconds: float) -> bool:
    """Rank 0's clock decides, so that every rank checkpoints at the same step."""
    due = time.time() - last_save >= every_seconds
    if run.world_size == 1:
        return due
    flag = torch.tensor([int(due)], device=run.device)
    dist.broadcast(flag, 0)
    return bool(flag.item())


def train_step(
    run: Run, x: Tensor, y: Tensor, epoch: int, ckpt_path: Path
) -> tuple[Tensor, dict[str, Tensor]]:
    """One optimizer step on (x, y); returns the logits and the loss parts."""
    x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
    if run.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(
        run.device.type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None
    ):
        loss, logits, parts = run.step_module(x, y, run.noise_gen)
    if not torch.isfinite(loss):
        kept = (
            f"the last good checkpoint {ckpt_path} is kept"
            if ckpt_path.is_file()
            else "no checkpoint was written yet"
        )
        raise TrainingDiverged(
            f"loss became {loss.item()} at epoch {epoch + 1} (parts: "
            f"{ {k: round(v.item(), 4) for k, v in parts.items()} }); {kept}. "
            "Lower the learning rate or the regularizer's lambdas."
        )
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    return logits, parts


def _last_test_accuracy(out: Path) -> float:
    log = out / LOG_NAME
    records = (
        [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    )
    return next((r["test_acc"] for r in reversed(records) if "test_acc" in r), float("nan"))


def train(
    recipe: Recipe,
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    checkpoint_seconds: float = 600.0,
    progress_seconds: float = 60.0,
    workers: int = 0,
    overwrite: bool = False,
) -> Path:
    """Train ``recipe`` on the data in ``data_dir``, writing checkpoints, the logs and, at the end,
    the model folder itself into ``out`` (``model.safetensors``, ``config.json``, ``README.md``);
    returns ``out``. ``workers`` decode folder images in that many processes.

    ``OUT/checkpoint.pt`` is written atomically at the end of every epoch and, within an epoch, every
    ``checkpoint_seconds``; a line of progress (images/s, loss terms, ETA) goes to ``OUT/progress.log``
    every ``progress_seconds``. ``resume=True`` continues from it (mid-epoch too, with the same batches
    and random draws as an uninterrupted run); a fine-tune whose init folder holds other weights than
    when it started is refused. Without ``resume`` a folder that already holds a run is
    refused rather than overwritten, unless ``overwrite=True`` (which starts afresh). The run holds
    ``OUT/.lga-zoo.lock`` (:mod:`lga_zoo.locks`): a second run into the same ``out`` is refused while
    this one lives, naming its PID.
    """
    settings = dict(resume=resume, device=device, progress=progress, checkpoint_seconds=checkpoint_seconds,
                    progress_seconds=progress_seconds, workers=workers, overwrite=overwrite)  # fmt: skip
    if _rank_world()[0] != 0:  # the main process holds the lock for all of them
        return _train(recipe, data_dir, Path(out), **settings)
    with holding(Path(out) / LOCK_NAME, f"the run folder {out}"):
        return _train(recipe, data_dir, Path(out), **settings)


def _train(
    recipe: Recipe,
    data_dir: str | os.PathLike,
    out: Path,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    checkpoint_seconds: float = 600.0,
    progress_seconds: float = 60.0,
    workers: int = 0,
    overwrite: bool = False,
) -> Path:
    """:func:`train` once the run folder's lock is held."""
    rank, world_size, local_rank = _rank_world()
    out = Path(out)
    if overwrite and resume:
        raise ValueError("--overwrite starts afresh and --resume continues: choose one")
    device = process_device(device, local_rank, world_size)
    if not overwrite:
        _guard_existing_run(out, resume)
    join_process_group(device, world_size)
    is_main = rank == 0
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        if overwrite:
            for name in (CHECKPOINT_NAME, LOG_NAME, PROGRESS_NAME):
                (out / name).unlink(missing_ok=True)

    torch.manual_seed(recipe.seed + rank)
    model, data = prepare_model_and_data(recipe, data_dir, rank, world_size, workers)
    if device.type == "cpu":
        fuse_softplus(model)  # our own model: CPU softplus in one compiled kernel (lga_zoo.fused_softplus)
    regularizer = build_regularizer(
        recipe.regularizer["name"], label_smoothing=recipe.label_smoothing, **recipe.regularizer_params()
    )
    steps_per_epoch = len(data.train)
    run = build_run(recipe, model, regularizer, steps_per_epoch, device, rank, world_size)

    start_epoch, start_step, tally = 0, 0, EpochTally()
    ckpt_path = out / CHECKPOINT_NAME
    if resume and ckpt_path.is_file():
        start_epoch, start_step, tally = restore_checkpoint(run, ckpt_path)
        if is_main:
            where = f"epoch {start_epoch}" + (f" and step {start_step} of the next" if start_step else "")
            print(f"resumed from {ckpt_path} after {where}", file=sys.stderr)
        if start_epoch == recipe.epochs and all((out / name).is_file() for name in FINISHED_FILES):
            if is_main:
                print(
                    f"{out} already holds the finished run ({recipe.epochs} epochs); nothing to train",
                    file=sys.stderr,
                )
            return out
    elif resume and is_main:
        print(f"--resume: no checkpoint at {ckpt_path}; starting from epoch 0", file=sys.stderr)
    if is_main:
        _keep_log_until(out / LOG_NAME, start_epoch)

    progress_log = ProgressLog(
        out / PROGRESS_NAME if is_main else None, recipe.epochs * steps_per_epoch, progress_seconds
    )
    test_acc = _last_test_accuracy(out) if start_epoch == recipe.epochs else float("nan")
    last_save = time.time()
    for epoch in range(start_epoch, recipe.epochs):
        run.model.train()
        data.train.set_epoch(epoch)
        if epoch > start_epoch or not start_step:
            tally = EpochTally()
        resumed_at = start_step if epoch == start_epoch else 0
        started = time.time() - tally.seconds
        bar = tqdm(
            total=steps_per_epoch,
            initial=resumed_at,
            desc=f"epoch {epoch + 1}/{recipe.epochs}",
            disable=not (progress and is_main),
            dynamic_ncols=True,
            leave=False,
        )
        for step_in_epoch, (x, y) in enumerate(data.train.iterate(resumed_at), start=resumed_at):
            logits, parts = train_step(run, x, y, epoch, ckpt_path)
            tally.add(parts, logits, y.to(logits.device))
            bar.update(1)
            bar.set_postfix(
                {
                    **{k: f"{v:.3f}" for k, v in tally.means().items()},
                    "acc": f"{tally.correct / tally.seen:.3f}",
                }
            )
            progress_log.step(epoch * steps_per_epoch + step_in_epoch + 1, epoch, recipe.epochs, tally,
                              steps_per_epoch, len(y) * world_size)  # fmt: skip
            done_in_epoch = step_in_epoch + 1
            if done_in_epoch < steps_per_epoch and _time_to_checkpoint(run, last_save, checkpoint_seconds):
                tally.seconds = time.time() - started
                save_checkpoint(run, ckpt_path, epoch, done_in_epoch, tally)
                last_save = time.time()
        bar.close()
        seconds = time.time() - started
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            **tally.means(),
            "train_acc": tally.correct / tally.seen,
            "lr": run.optimizer.param_groups[0]["lr"],
            "seconds": round(seconds, 1),
            "images_per_second": round(tally.seen * world_size / max(seconds, 1e-9), 1),
        }
        if (epoch + 1) % recipe.eval_every == 0 or epoch + 1 == recipe.epochs:
            test_acc = evaluate_accuracy(run.model, data.test, device, run.channels_last, world_size)
            record["test_acc"] = test_acc
        if is_main:  # the record first: a resume drops it again if the checkpoint below is not written
            with open(out / LOG_NAME, "a") as log:
                log.write(json.dumps(record) + "\n")
            print(json.dumps(record), file=sys.stderr if progress else sys.stdout)
        save_checkpoint(run, ckpt_path, epoch + 1, 0, EpochTally())
        last_save = time.time()

    if is_main:
        write_trained_folder(
            run.model, recipe, regularizer, data, out, test_acc, world_size, device, run.amp_dtype
        )
    if world_size > 1:
        dist.barrier()
    return out


def _keep_log_until(log_path: Path, epochs_done: int) -> None:
    """Drop the records of ``log_path`` past ``epochs_done`` (the checkpoint's): an epoch logged just
    before a kill that came before its checkpoint is trained, and logged, again."""
    if not log_path.is_file():
        return
    lines = log_path.read_text().splitlines(keepends=True)
    kept = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            if number == len(lines):  # cut off by a kill while it was written: trained again
                continue
            raise ValueError(
                f"{log_path} line {number} is damaged (not JSON); mend or delete that line to resume"
            ) from None
        if record is not None and record.get("epoch", 0) <= epochs_done:
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
        atomic_write_text(log_path, "".join(kept))


def _load_checkpoint(ckpt_path: Path) -> dict:
    """A training checkpoint, read by the safe loader (tensors and plain containers only)."""
    try:
        # On the CPU: the random states must stay there, and load_state_dict moves the rest.
        return torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise ValueError(
            f"cannot read the training checkpoint {ckpt_path}: it is damaged or not one this program "
            f"wrote ({type(err).__name__}). Delete it to start over, or use a new --out folder."
        ) from None


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The parser of ``python -m lga_zoo.train`` (or ``parser`` with the same arguments added)."""
    from .arguments import add_train_arguments

    parser = parser or argparse.ArgumentParser(prog="lga-zoo train", description=__doc__.splitlines()[0])
    return add_train_arguments(parser)


def run_from_args(args: argparse.Namespace) -> Path:
    recipe = load_recipe(args.recipe)
    if args.epochs is not None:
        recipe.epochs = args.epochs
        recipe.validate()
    out = args.out or os.path.join("runs", recipe.name)
    folder = train(
        recipe,
        args.data_dir,
        out,
        resume=args.resume,
        device=args.device,
        progress=not args.no_progress,
        checkpoint_seconds=args.checkpoint_minutes * 60,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    if _rank_world()[0] == 0:
        print(f"model folder: {folder}")
    return folder


def main(argv: list[str] | None = None) -> None:
    run_from_args(build_parser().parse_args(argv))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
