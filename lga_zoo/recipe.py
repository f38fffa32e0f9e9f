"""Training recipes: one YAML per checkpoint, validated key by key.

A recipe names the architecture, the initialization, the data, the schedule, the regularizer and
the seed. Every key is checked: an unknown key or a bad value raises :class:`RecipeError` naming the
key and what is valid (with close matches for misspellings).
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .models import ACTIVATIONS
from .regularizers import PERTURBATIONS, REGULARIZERS

DATASETS = ("cifar10", "imagenet100", "folder")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "steps")
AMP_MODES = ("none", "bf16", "fp16")


class RecipeError(ValueError):
    """A recipe with an unknown key or an invalid value."""


def _check_keys(section: str, given: dict, allowed: list[str]) -> None:
    for key in given:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=3)
            hint = f" Did you mean {close}?" if close else ""
            raise RecipeError(f"unknown key {section}{key!r}.{hint} Valid keys: {sorted(allowed)}")


def _check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise RecipeError(f"{key}={value!r} is not valid; choose one of {list(choices)}")


def _check_bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise RecipeError(f"{key}={value!r} must be true or false (unquoted in YAML)")


def _check_number(key: str, value: Any, low: float | None = None, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise RecipeError(f"{key}={value!r} must be {'an integer' if integer else 'a number'}")
    if not math.isfinite(value):
        raise RecipeError(f"{key}={value!r} must be a finite number")
    if low is not None and value < low:
        raise RecipeError(f"{key}={value!r} must be >= {low}")


REGULARIZER_PARAMS = {
    "none": [],
    "lga": ["eps", "lambda_l2", "lambda_cos", "perturbation", "detach_source"],
    "lga_l2": ["eps", "lambda_l2", "perturbation", "detach_source"],
    "lga_cos": ["eps", "lambda_cos", "perturbation", "detach_source"],
    "gradnorm": ["lam"],
    "hessian": ["lam", "fd_step"],
    "adversarial": ["eps", "steps", "step_size", "random_start"],
    "trades": ["beta", "eps", "steps", "step_size"],
}


@dataclass
class Recipe:
    """A validated training recipe (see ``recipes/*.yaml`` for commented examples)."""

    name: str
    architecture: str
    init: str = "scratch"  # scratch | pretrained (timm weights) | path to one of our model folders
    pretrained_file: str | None = None  # with init: pretrained, timm weights from this local file
    activation: str = "relu"
    softplus_beta: float = 20.0
    dataset: str = "cifar10"  # cifar10 | imagenet100 | folder (DATA_DIR/train/<class>, DATA_DIR/val/<class>)
    input_size: list[int] | None = None  # [C, H, W]; default: the architecture's pretrained_cfg
    epochs: int = 1
    batch_size: int = 128
    optimizer: dict = field(
        default_factory=lambda: {
            "name": "sgd",
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "nesterov": True,
        }
    )
    schedule: dict = field(default_factory=lambda: {"name": "cosine", "warmup_epochs": 0})
    regularizer: dict = field(default_factory=lambda: {"name": "none"})
    label_smoothing: float = 0.0  # of the cross-entropy term
    cutout: int = 0  # side in pixels of the cutout square (CIFAR-10 training batches); 0: none
    seed: int = 0
    amp: str = "bf16"  # bf16 autocast on CPU and GPU; fp16 (with a grad scaler) on GPU only
    channels_last: bool = True  # used on GPU only
    eval_every: int = 1
    max_train_images: int | None = None  # a subset, for smoke tests
    notes: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise RecipeError(f"name={self.name!r} must be a non-empty string")
        if not isinstance(self.architecture, str) or not self.architecture:
            raise RecipeError(f"architecture={self.architecture!r} must name a timm architecture")
        import timm

        if not timm.is_model(self.architecture):
            close = difflib.get_close_matches(self.architecture, timm.list_models(), n=3)
            raise RecipeError(f"architecture={self.architecture!r} is not a timm model; close: {close}")
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_number("softplus_beta", self.softplus_beta, low=1e-6)
        _check_choice("dataset", self.dataset, DATASETS)
        _check_number("epochs", self.epochs, low=1, integer=True)
        _check_number("batch_size", self.batch_size, low=1, integer=True)
        _check_number("seed", self.seed, low=0, integer=True)
        if self.seed >= 2**32:
            raise RecipeError(
                f"seed={self.seed!r} must be below 2**32 (a 32-bit seed, as numpy and torch take)"
            )
        _check_number("label_smoothing", self.label_smoothing, low=0)
        if self.label_smoothing >= 1:
            raise RecipeError(f"label_smoothing={self.label_smoothing!r} must be in [0, 1)")
        _check_number("cutout", self.cutout, low=0, integer=True)
        if self.cutout > 32:
            raise RecipeError(f"cutout={self.cutout!r} is the side of a square in pixels: 0 (none) to 32")
        if self.cutout and self.dataset != "cifar10":
            raise RecipeError(
                f"cutout={self.cutout!r} applies to dataset: cifar10 only (this recipe's is {self.dataset!r}); "
                "use 0 or leave it out"
            )
        _check_number("eval_every", self.eval_every, low=1, integer=True)
        _check_choice("amp", self.amp, AMP_MODES)
        _check_bool("channels_last", self.channels_last)
        if self.max_train_images is not None:
            _check_number("max_train_images", self.max_train_images, low=1, integer=True)
        if not isinstance(self.init, str):
            raise RecipeError(
                f"init={self.init!r} must be 'scratch', 'pretrained' or a path to a model folder"
            )
        if self.pretrained_file is not None:
            if self.init != "pretrained":
                raise RecipeError(
                    f"pretrained_file={self.pretrained_file!r} needs init: pretrained (init is {self.init!r})"
                )
            if not isinstance(self.pretrained_file, str) or not self.pretrained_file.endswith(
                (".safetensors", ".pth", ".bin")
            ):
                raise RecipeError(
                    f"pretrained_file={self.pretrained_file!r} must be the path of a .safetensors (or .pth/.bin) file"
                )
        if self.input_size is not None:
            size = self.input_size
            if (
                not isinstance(size, (list, tuple))
                or len(size) != 3
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
                or size[0] != 3
            ):
                raise RecipeError(f"input_size={size!r} must be [3, H, W] (RGB), e.g. [3, 64, 64]")
            self.input_size = list(size)

        opt = dict(self.optimizer)
        _check_choice("optimizer.name", opt.get("name"), OPTIMIZERS)
        allowed = ["name", "lr", "weight_decay"] + (
            ["momentum", "nesterov"] if opt["name"] == "sgd" else ["betas"]
        )
        _check_keys("optimizer.", opt, allowed)
        _check_number("optimizer.lr", opt.get("lr"), low=0)
        _check_number("optimizer.weight_decay", opt.get("weight_decay", 0.0), low=0)
        if opt["name"] == "sgd":
            momentum = opt.get("momentum", 0.9)
            _check_number("optimizer.momentum", momentum, low=0)
            if momentum >= 1:
                raise RecipeError(f"optimizer.momentum={momentum!r} must be in [0, 1), e.g. 0.9")
            _check_bool("optimizer.nesterov", opt.get("nesterov", False))
            if opt.get("nesterov") and momentum == 0:
                raise RecipeError("optimizer.nesterov: true needs optimizer.momentum > 0")
        else:
            betas = opt.get("betas", [0.9, 0.999])
            if (
                not isinstance(betas, (list, tuple))
                or len(betas) != 2
                or not all(
                    isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas
                )
            ):
                raise RecipeError(
                    f"optimizer.betas={betas!r} must be a list of two numbers in [0, 1), e.g. [0.9, 0.999]"
                )

        sched = dict(self.schedule)
        _check_choice("schedule.name", sched.get("name"), SCHEDULES)
        allowed = ["name", "warmup_epochs"] + (
            ["milestones", "gamma"] if sched["name"] == "steps" else ["min_lr"]
        )
        _check_keys("schedule.", sched, allowed)
        warmup = sched.get("warmup_epochs", 0)
        _check_number("schedule.warmup_epochs", warmup, low=0)
        if warmup > self.epochs:
            raise RecipeError(f"schedule.warmup_epochs={warmup!r} must be at most epochs={self.epochs}")
        if sched["name"] == "steps":
            milestones = sched.get("milestones")
            if (
                not isinstance(milestones, list)
                or not all(isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in milestones)
                or milestones != sorted(set(milestones))
            ):
                raise RecipeError(
                    f"schedule.milestones={milestones!r} must be a rising list of positive epoch numbers"
                )
            gamma = sched.get("gamma", 0.1)
            _check_number("schedule.gamma", gamma, low=0)
            if gamma == 0:
                raise RecipeError("schedule.gamma=0 would stop training at the first milestone: use e.g. 0.1")
        else:
            min_lr = sched.get("min_lr", 0.0)
            _check_number("schedule.min_lr", min_lr, low=0)
            if min_lr > opt["lr"]:
                raise RecipeError(
                    f"schedule.min_lr={min_lr!r} is above optimizer.lr={opt['lr']!r}: the schedule decays to it"
                )

        reg = dict(self.regularizer)
        _check_choice("regularizer.name", reg.get("name"), REGULARIZERS)
        _check_keys("regularizer.", reg, ["name"] + REGULARIZER_PARAMS[reg["name"]])
        for key in ("eps", "lambda_l2", "lambda_cos", "lam", "fd_step", "step_size", "beta"):
            if key in reg:
                _check_number(f"regularizer.{key}", reg[key], low=0)
        if reg.get("fd_step") == 0:
            raise RecipeError("regularizer.fd_step=0 must be > 0 (the finite-difference step, e.g. 0.01)")
        if reg.get("step_size") == 0:
            raise RecipeError(
                "regularizer.step_size=0 must be > 0 (pixel units; leave it out for 2.5 * eps / steps)"
            )
        if "steps" in reg:
            _check_number("regularizer.steps", reg["steps"], low=1, integer=True)
        if "random_start" in reg:
            _check_bool("regularizer.random_start", reg["random_start"])
        if "eps" in reg and reg["eps"] > 1:
            raise RecipeError(
                f"regularizer.eps={reg['eps']} is in pixel units and must be <= 1 (CIFAR-10: 4/255)"
            )
        if "perturbation" in reg:
            _check_choice("regularizer.perturbation", reg["perturbation"], PERTURBATIONS)
        if "detach_source" in reg:
            _check_bool("regularizer.detach_source", reg["detach_source"])

    def regularizer_params(self) -> dict:
        return {k: v for k, v in self.regularizer.items() if k != "name"}

    def to_dict(self) -> dict:
        return asdict(self)

    def published_dict(self) -> dict:
        """:meth:`to_dict` as config.json publishes it: ``init`` and ``pretrained_file`` reduced by
        :func:`publishable_path`, so no machine path reaches the Hub."""
        values = self.to_dict()
        for key in ("init", "pretrained_file"):
            if values[key] not in (None, "scratch", "pretrained"):
                values[key] = publishable_path(values[key])
        return values


def publishable_path(path: str) -> str:
    """``path`` as a published file may hold it: a relative path inside the working folder (such as
    ``model_cards/NAME`` or ``runs/NAME``) as it is; an absolute one, one from ``~`` or one leaving
    the folder (``..``) by its last name only."""
    parts = Path(path).parts
    if Path(path).is_absolute() or path.startswith("~") or ".." in parts:
        return Path(path).name
    return path


_SCIENTIFIC = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+$")


def _parse_number(value: Any) -> Any:
    """Numbers that YAML leaves as strings: scientific notation without a dot (``1e-3``; YAML 1.1
    wants ``1.0e-3``) and fractions such as ``4/255``. Any other string (``"0.9"`` in quotes) is
    returned unchanged, for the validation to refuse by name."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if _SCIENTIFIC.match(text):
        return float(text)
    if "/" in text:
        num, den = text.split("/", 1)
        try:
            return float(num) / float(den)
        except (ValueError, ZeroDivisionError):
            return value
    return value


NUMBER_KEYS = {
    "optimizer": ("lr", "weight_decay", "momentum"),
    "schedule": ("warmup_epochs", "gamma", "min_lr"),
    "regularizer": ("eps", "lambda_l2", "lambda_cos", "lam", "fd_step", "step_size", "beta"),
}
TOP_LEVEL_NUMBER_KEYS = ("softplus_beta", "label_smoothing")


def recipe_from_dict(raw: dict, source: str = "recipe") -> Recipe:
    """Validate a parsed recipe; errors name ``source`` and the offending key."""
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe is a mapping of keys, got {type(raw).__name__}")
    allowed = [f.name for f in fields(Recipe)]
    try:
        _check_keys("", raw, allowed)
        for required in ("name", "architecture"):
            if required not in raw:
                raise RecipeError(f"missing required key {required!r}")
        raw = dict(raw)
        for section in ("optimizer", "schedule", "regularizer"):
            if section in raw and not isinstance(raw[section], dict):
                raise RecipeError(f"{section} must be a mapping with a 'name', got {raw[section]!r}")
        for section, keys in NUMBER_KEYS.items():
            if section in raw:
                raw[section] = {k: (_parse_number(v) if k in keys else v) for k, v in raw[section].items()}
        for key in TOP_LEVEL_NUMBER_KEYS:
            if key in raw:
                raw[key] = _parse_number(raw[key])
        return Recipe(**raw)
    except RecipeError as err:
        raise RecipeError(f"{source}: {err}") from None


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {str(path)!r} does not exist")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise RecipeError(f"{path}: not valid YAML{at} ({problem})") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a text file; a recipe is YAML") from None
    return recipe_from_dict(raw, source=str(path))


STAGE_FOLDER_PREFIX = "runs/"  # ``init: runs/NAME`` starts from the run of recipes/stages/NAME.yaml


def training_chain(recipe_path: str | Path, root: str | Path = ".") -> list[tuple[str, str]]:
    """The runs that make ``recipe_path``, first to last, as (recipe path, --out folder) pairs, paths
    relative to ``root`` (the checkout). A recipe whose ``init`` is ``runs/NAME`` is preceded by the
    chain of ``recipes/stages/NAME.yaml``; any other recipe is a chain of one."""
    root = Path(root)
    chain: list[tuple[str, str]] = []
    path = Path(recipe_path)
    while True:
        recipe = load_recipe(root / path)
        if any(earlier == path.as_posix() for earlier, _ in chain):
            raise RecipeError(f"{path}: its init chain comes back to itself")
        chain.insert(0, (path.as_posix(), f"{STAGE_FOLDER_PREFIX}{recipe.name}"))
        if not recipe.init.startswith(STAGE_FOLDER_PREFIX):
            return chain
        path = Path("recipes") / "stages" / f"{Path(recipe.init).name}.yaml"
