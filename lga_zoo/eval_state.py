"""Checkpoints of a long evaluation, so that ``lga-zoo evaluate --resume`` continues a stopped run.

After every batch of robustness images the evaluation saves what it has measured so far: the
per-image similarities, the PGD, APGD and prediction-change counts, the clean accuracy and the state of
its random generator. A resumed run skips the batches already done and ends with the same figures
as an uninterrupted one. The file is safetensors (never a pickle): one tensor per (method, attack,
similarity) and the generator's state, with JSON metadata that also holds a fingerprint of the
settings, the weights and the data; a resume with anything else is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

STATE_FORMAT = "lga_zoo.evaluation_state.v1"


@dataclass
class Measured:
    """What an evaluation has measured over its first ``done`` robustness images."""

    accuracy: dict[str, Any]
    per_image: dict[str, dict[str, dict[str, list[Tensor]]]]
    pgd_correct: dict[str, int] = field(default_factory=lambda: {"linf": 0, "l2": 0})
    changed: dict[str, dict[str, int]] = field(default_factory=dict)
    done: int = 0
    # images still correctly classified after APGD-CE ("ce") and after APGD-CE then APGD-T ("ce_then_t")
    apgd_correct: dict[str, dict[str, int]] = field(default_factory=lambda: no_apgd_counts())


def no_apgd_counts() -> dict[str, dict[str, int]]:
    return {norm: {"ce": 0, "ce_then_t": 0} for norm in ("linf", "l2")}


def weights_digest(model: nn.Module) -> str:
    """sha256 over every parameter and buffer of ``model``, by name."""
    digest = hashlib.sha256()
    for name, tensor in sorted({**dict(model.named_parameters()), **dict(model.named_buffers())}.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def evaluation_fingerprint(
    model: nn.Module, images: Tensor, labels: Tensor, settings_record: dict[str, Any]
) -> dict:
    """What a resumed evaluation must share with the saved one: every setting, the weights, the data."""
    data = hashlib.sha256(images.contiguous().numpy().tobytes() + labels.contiguous().numpy().tobytes())
    return json.loads(
        json.dumps({"settings": settings_record, "weights": weights_digest(model), "data": data.hexdigest()})
    )


def save_state(
    path: Path, measured: Measured, generator: torch.Generator, fingerprint: dict[str, Any]
) -> None:
    """Write ``measured`` and the generator's state to ``path`` atomically."""
    tensors = {"generator_state": generator.get_state().cpu()}
    for method, attacks in measured.per_image.items():
        for attack, sims in attacks.items():
            for name, values in sims.items():
                tensors[f"{method}|{attack}|{name}"] = (
                    torch.cat(values).float().contiguous() if values else torch.zeros(0)
                )
    metadata = {
        "format": STATE_FORMAT,
        "fingerprint": json.dumps(fingerprint),
        "accuracy": json.dumps(measured.accuracy),
        "pgd_correct": json.dumps(measured.pgd_correct),
        "changed": json.dumps(measured.changed),
        "apgd_correct": json.dumps(measured.apgd_correct),
        "done": str(measured.done),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    found = [f"settings.{k}" for k in sorted(set(saved["settings"]) | set(current["settings"]))
             if saved["settings"].get(k) != current["settings"].get(k)]  # fmt: skip
    return found + [key for key in ("weights", "data") if saved[key] != current[key]]


def read_state_file(
    path: Path, framework: str, state_format: str, what: str
) -> tuple[dict[str, str], dict[str, Any]]:
    """(metadata, tensors) of the safetensors state file ``path``, read as ``framework`` ("pt" or
    "numpy"); a ValueError naming ``what`` when it is unreadable or not of ``state_format``."""
    try:
        with safe_open(str(path), framework=framework) as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as error:  # safetensors raises its own error types for a damaged file
        raise ValueError(f"{path} is not a readable {what} ({error})") from None
    if metadata.get("format") != state_format:
        raise ValueError(f"{path} is not an lga-zoo {what} (format {metadata.get('format')!r})")
    return metadata, tensors


def load_state(path: Path, fingerprint: dict[str, Any], generator: torch.Generator) -> Measured:
    """The measurements saved in ``path``; sets ``generator`` to the saved state. Raises ValueError
    when the file is not an evaluation state or was made with other settings, weights or data."""
    metadata, tensors = read_state_file(path, "pt", STATE_FORMAT, "evaluation state")
    different = _differences(json.loads(metadata["fingerprint"]), fingerprint)
    if different:
        raise ValueError(
            f"{path} was saved by an evaluation with other {', '.join(different)}; resume with the same "
            "model, data and settings, or delete it to start afresh"
        )
    generator.set_state(tensors.pop("generator_state"))
    per_image: dict[str, dict[str, dict[str, list[Tensor]]]] = {}
    for key, values in tensors.items():
        method, attack, name = key.split("|")
        per_image.setdefault(method, {}).setdefault(attack, {})[name] = [values] if len(values) else []
    return Measured(
        accuracy=json.loads(metadata["accuracy"]),
        per_image=per_image,
        pgd_correct=json.loads(metadata["pgd_correct"]),
        changed=json.loads(metadata["changed"]),
        done=int(metadata["done"]),
        # a state saved before APGD existed measured none
        apgd_correct=json.loads(metadata["apgd_correct"]) if "apgd_correct" in metadata else no_apgd_counts(),
    )
