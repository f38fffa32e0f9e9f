"""A model folder on disk: ``model.safetensors`` + ``config.json`` (+ ``README.md`` card).

``config.json`` uses timm's hub keys (``architecture``, ``num_classes``, ``label_names``,
``pretrained_cfg`` with mean, std, input size) and adds an ``lga_zoo`` section: activation, the
regularizer, the recipe, the data and a training summary. Weights are the backbone's state dict in
safetensors, loaded strictly and never unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save, save_file
from torchvision.transforms import InterpolationMode

from .locks import pid_alive
from .models import ACTIVATIONS, ExplainableClassifier, create_backbone

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"


class WeightsError(RuntimeError):
    """Weights that are missing, corrupted, tampered with or do not match the architecture."""


def sha256_of(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``*.tmp<PID>*`` files and folders that atomic writes of a killed process left in
    ``folder`` (those of living processes are kept); returns what was removed."""
    import re
    import shutil

    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = re.search(r"\.tmp(\d+)", path.name)
        if not match or pid_alive(int(match.group(1))):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def atomic_write(path: Path, write: Any) -> None:
    """Write ``path`` through ``write(file)`` (a binary file object) atomically: an existing file is
    replaced only by a complete new one, and a failed write leaves no temporary file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())  # on disk before it takes the name: no empty file after a power loss
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda file: file.write(text.encode()))


def save_png(path: str | os.PathLike, write: Any) -> Path:
    """Write a PNG at ``path`` through ``write(file)`` (a binary file object) with
    :func:`atomic_write`. ``path`` must end in ``.png`` and not be a folder."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path.name!r}: the picture is written as PNG; give a path ending in .png")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file path ending in .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)
    return path


def build_config(
    model: ExplainableClassifier,
    architecture: str,
    activation: str,
    softplus_beta: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """config.json for ``model``: timm's keys plus our ``lga_zoo`` section (``extra`` merged in)."""
    cfg = model.backbone_cfg
    return {
        "architecture": architecture,
        "num_classes": len(model.labels) if model.labels else cfg.get("num_classes"),
        "label_names": model.labels,
        "pretrained_cfg": {
            "input_size": list(model.input_size),
            "mean": list(cfg["mean"]),
            "std": list(cfg["std"]),
            "interpolation": model.interpolation,
            "crop_pct": model.crop_pct,
        },
        "lga_zoo": {"activation": activation, "softplus_beta": softplus_beta, **(extra or {})},
    }


def save_weights(model: ExplainableClassifier, out: Path) -> Path:
    """Write the backbone's weights as ``out/model.safetensors`` atomically."""
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.backbone.state_dict().items()}
    path = out / WEIGHTS_NAME
    tmp = out / f".{WEIGHTS_NAME}.tmp{os.getpid()}"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)
    return path


def write_model_folder(model: ExplainableClassifier, config: dict[str, Any], out: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``out``; returns the folder."""
    out = Path(out)
    save_weights(model, out)
    atomic_write_text(out / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return out


def write_half_precision_folder(source: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy the model folder ``source`` into ``dest`` with its floating-point weights in float16
    (integer buffers such as BatchNorm's batch counters unchanged) and ``"torch_dtype": "float16"``
    in its config.json; returns ``dest``. Both files are written atomically.

    Args:
        source: a model folder (config.json and model.safetensors).
        dest: the folder to write; created when missing.

    Returns:
        ``dest`` as a Path.
    """
    source, dest = Path(source), Path(dest)
    config = read_config(source)
    try:
        state = load_file(str(source / WEIGHTS_NAME))
    except (SafetensorError, OSError) as err:
        raise WeightsError(f"cannot read weights {str(source / WEIGHTS_NAME)!r}: {err}") from None
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    overflow = [k for k, v in half.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if overflow:
        raise WeightsError(f"{str(source)!r}: {overflow[:3]} overflow float16; publish it as float32")
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write(dest / WEIGHTS_NAME, lambda file: file.write(save(half, metadata={"format": "pt"})))
    atomic_write_text(dest / CONFIG_NAME, json.dumps({**config, "torch_dtype": "float16"}, indent=2) + "\n")
    return dest


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise WeightsError(f"{str(path)!r} is missing; a model folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise WeightsError(f"{str(path)!r} is not valid JSON: {err}") from None
    _check_config(config, path)
    return config


CONFIG_KEYS = {"architecture": str, "num_classes": int, "pretrained_cfg": dict}
PREPROCESSING_KEYS = ("input_size", "mean", "std")


def _check_config(config: Any, path: Path) -> None:
    """Refuse a config.json that is not one of ours (timm's hub keys), naming what is missing."""
    accepted = (
        f"an lga-zoo config.json holds {sorted(CONFIG_KEYS)} (pretrained_cfg with {list(PREPROCESSING_KEYS)}), "
        "optional label_names and an lga_zoo section"
    )
    if not isinstance(config, dict):
        raise WeightsError(f"{str(path)!r} holds a JSON {type(config).__name__}, not an object; {accepted}")
    for key, kind in CONFIG_KEYS.items():
        if not isinstance(config.get(key), kind) or isinstance(config.get(key), bool):
            raise WeightsError(f"{str(path)!r}: {key!r} is missing or not a {kind.__name__}; {accepted}")
    missing = [k for k in PREPROCESSING_KEYS if not isinstance(config["pretrained_cfg"].get(k), list)]
    if missing:
        raise WeightsError(f"{str(path)!r}: pretrained_cfg lacks the lists {missing}; {accepted}")
    labels = config.get("label_names")
    if labels is not None and (
        not isinstance(labels, list)
        or len(labels) != config["num_classes"]
        or not all(isinstance(label, str) for label in labels)
    ):
        raise WeightsError(
            f"{str(path)!r}: label_names must be a list of num_classes={config['num_classes']} names"
        )
    if not isinstance(config.get("lga_zoo", {}), dict):
        raise WeightsError(f"{str(path)!r}: 'lga_zoo' must be an object; {accepted}")
    problems = _config_value_problems(config)
    if problems:
        raise WeightsError(f"{str(path)!r}: " + "; ".join(problems))


INTERPOLATIONS = tuple(mode.value for mode in InterpolationMode)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _config_value_problems(config: dict[str, Any]) -> list[str]:
    """What is wrong with the values of a config.json that has every key (empty when nothing): the
    architecture must be a timm model registered here (no ``hf-hub:`` or other prefix that would
    fetch a remote definition), the preprocessing and activation numbers must make sense."""
    problems = []
    architecture = config["architecture"]
    if ":" in architecture or not timm.is_model(architecture):
        problems.append(f"architecture={architecture!r} is not a timm model name (such as 'resnet18_cifar')")
    if config["num_classes"] < 1:
        problems.append(f"num_classes={config['num_classes']} must be >= 1")
    cfg = config["pretrained_cfg"]
    size = cfg["input_size"]
    size_ok = len(size) == 3 and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in size)
    if not size_ok:
        problems.append(f"input_size={size!r} must be [channels, height, width], positive integers")
    channels = size[0] if size_ok else None
    for key in ("mean", "std"):
        values = cfg[key]
        if not all(_is_number(v) for v in values) or (channels is not None and len(values) != channels):
            problems.append(f"{key}={values!r} must be one finite number per input channel")
        elif key == "std" and not all(v > 0 for v in values):
            problems.append(f"std={values!r} must be > 0 (images are divided by it)")
    interpolation = cfg.get("interpolation", "bilinear")
    if interpolation not in INTERPOLATIONS:
        problems.append(f"interpolation={interpolation!r} is not one of {INTERPOLATIONS}")
    crop_pct = cfg.get("crop_pct", 1.0)
    if not _is_number(crop_pct) or not 0 < crop_pct <= 1:
        problems.append(f"crop_pct={crop_pct!r} must be a fraction in (0, 1]")
    ours = config.get("lga_zoo", {})
    if ours.get("activation", "relu") not in ACTIVATIONS:
        problems.append(f"lga_zoo.activation={ours.get('activation')!r} is not one of {ACTIVATIONS}")
    beta = ours.get("softplus_beta", 20.0)
    if not _is_number(beta) or beta <= 0:
        problems.append(f"lga_zoo.softplus_beta={beta!r} must be a finite number > 0")
    return problems


def model_from_config(config: dict[str, Any]) -> ExplainableClassifier:
    """An untrained :class:`ExplainableClassifier` with the architecture config.json describes."""
    ours = config.get("lga_zoo", {})
    cfg = config["pretrained_cfg"]
    with torch.random.fork_rng(devices=[]):  # the random init, overwritten by the weights, draws here
        backbone = create_backbone(
            config["architecture"],
            num_classes=config["num_classes"],
            activation=ours.get("activation", "relu"),
            softplus_beta=ours.get("softplus_beta", 20.0),
        )
    return ExplainableClassifier(
        backbone,
        mean=cfg["mean"],
        std=cfg["std"],
        input_size=cfg["input_size"],
        labels=config.get("label_names"),
        interpolation=cfg.get("interpolation", "bilinear"),
        crop_pct=cfg.get("crop_pct", 1.0),
    )


def _refuse_non_finite(state: dict[str, torch.Tensor], weights: str | os.PathLike) -> None:
    """A :class:`WeightsError` naming the tensors of ``state`` that hold NaN or infinite values: such a
    model predicts NaN probabilities and draws meaningless maps."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise WeightsError(
            f"weights {str(weights)!r} hold NaN or infinite values in {len(bad)} tensor(s) "
            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); a model must have finite weights"
        )


def load_weights_strict(model: ExplainableClassifier, weights: str | os.PathLike) -> None:
    """Load safetensors ``weights`` into ``model.backbone`` strictly; a corrupted file or a key or
    shape mismatch raises :class:`WeightsError` naming the file."""
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(
            f"cannot read weights {str(weights)!r} (corrupted or not safetensors): {err}"
        ) from None
    _refuse_non_finite(state, weights)
    try:
        model.backbone.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsError(f"weights {str(weights)!r} do not match the architecture: {err}") from None


def load_model_folder(
    folder: str | os.PathLike, device: str | torch.device | None = None, expected_sha256: str | None = None
) -> ExplainableClassifier:
    """The model in ``folder`` (config.json + model.safetensors), in eval mode, optionally checked
    against ``expected_sha256``."""
    folder = Path(folder)
    config = read_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise WeightsError(
            f"{str(weights)!r} is missing; a model folder holds {CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    if expected_sha256 is not None:
        actual = sha256_of(weights)
        if actual != expected_sha256:
            raise WeightsError(
                f"sha256 mismatch for {str(weights)!r}: expected {expected_sha256}, got {actual} "
                "(the file is corrupted, truncated or was changed)"
            )
    model = model_from_config(config)
    load_weights_strict(model, weights)
    model.config = config
    model.weights_path = weights
    model.eval()
    return model.to(device) if device is not None else model
