"""torch.hub entry points, one per zoo model, made from the registry (as timm's hubconf does).

``hubconf.py`` at the repository root puts :func:`entrypoints` into its namespace, so
``torch.hub.list``, ``torch.hub.help`` and ``torch.hub.load`` see one function per registry entry,
whose docstring is derived from that entry's fields.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from lga_zoo.registry import ZooEntry, all_entries

LOAD_KEYWORDS = ("device", "revision", "cache_dir", "local_files_only", "verify")
PIXEL_KEYS = ("eps", "step_size")  # settings in pixel units: shown as k/255 where they are
ACTIVATIONS = {"relu": "ReLU", "gelu": "GELU", "silu": "SiLU"}
DATASET_NAMES = {"cifar10": "CIFAR-10", "imagenet100": "ImageNet-100", "folder": "an image folder"}

USAGE = """Recipe: {recipe}. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().

Args:
    pretrained: the published weights, checked against their pinned sha256 (default); False gives
        the architecture untrained.
    **kwargs: for lga_zoo.load: device, revision, cache_dir, local_files_only, verify (only device
        with pretrained=False).
"""


def _number(value: float) -> str:
    text = f"{value:.4g}"
    return text if any(c in text for c in ".en") else f"{text}.0"  # 1.0, not 1


def _setting(key: str, value: Any) -> str:
    if isinstance(value, float):
        if key in PIXEL_KEYS and value > 0:
            k = value * 255
            if math.isclose(k, round(k), rel_tol=0, abs_tol=1e-9):
                return f"{key}={round(k)}/255"
        return f"{key}={_number(value)}"
    return f"{key}={value}"


def _activation(entry: ZooEntry) -> str:
    if entry.activation == "softplus":
        return f"Softplus beta {entry.softplus_beta:g}"
    return ACTIVATIONS.get(entry.activation, entry.activation)


def summary(entry: ZooEntry) -> str:
    """One line on what ``entry`` is: architecture, activation, data, objective, start, availability.

    Args:
        entry: a registry entry.

    Returns:
        The first line of the entry point's docstring.
    """
    regularizer = dict(entry.regularizer)
    name = regularizer.pop("name")
    line = f"{entry.architecture} ({_activation(entry)}) on {DATASET_NAMES.get(entry.dataset, entry.dataset)}"
    if entry.method == "control":
        line += ": the control, the fine-tunes' extra training without a regularizer"
    elif name == "none":
        line += " trained with plain cross-entropy"
    else:
        settings = ", ".join(_setting(k, v) for k, v in regularizer.items())
        line += f" trained with the `{name}` regularizer" + (f" ({settings})" if settings else "")
    clauses = [f"fine-tuned from {entry.base_model}"] if entry.base_model else []
    if not entry.has_weights:
        clauses.append("weights not published yet")
    return line + ("; " + ", ".join(clauses) if clauses else "") + "."


def _entrypoint(entry: ZooEntry) -> Callable[..., Any]:
    name = entry.name

    def load_model(pretrained: bool = True, **kwargs: Any) -> Any:
        from lga_zoo.hub import load, untrained

        accepted = LOAD_KEYWORDS if pretrained else ("device",)
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise TypeError(f"{name}: unexpected keyword arguments {unknown}; accepted: {list(accepted)}")
        return load(name, **kwargs) if pretrained else untrained(name, device=kwargs.get("device"))

    load_model.__name__ = load_model.__qualname__ = name
    load_model.__doc__ = summary(entry) + "\n\n" + USAGE.format(recipe=entry.recipe)
    return load_model


def entrypoints() -> dict[str, Callable[..., Any]]:
    """Every zoo model's torch.hub entry point, by name.

    Returns:
        ``{name: function(pretrained=True, **kwargs)}`` for each registry entry, sorted by name.
    """
    return {entry.name: _entrypoint(entry) for entry in sorted(all_entries(), key=lambda e: e.name)}
