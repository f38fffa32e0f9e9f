"""The zoo's registry: one entry per published model, read from ``lga_zoo/zoo.json``.

Like timm's ``pretrained_cfg`` and torchvision's ``Weights.meta``: each entry says what the model is
(architecture, activation, preprocessing, classes), how it was made (dataset, regularizer, recipe),
where its weights are (Hub repo id, pinned revision, sha256 and size of ``model.safetensors``) and how
it measured (``metrics``, copied from ``model_cards/NAME/results.json`` by ``lga-zoo card``).
Names follow ``{arch}_{dataset}_{method}``, and a variant at another strength adds its main knob and
value: ``resnet18_cifar10_lga_l2_0p05`` (lambda_l2 0.05), ``_hessian_lam5em6`` (lam 5e-6),
``_gradnorm_lam0p02``, ``_adversarial_eps2`` (eps 2/255), ``_trades_beta6``; ``p`` stands for the
decimal point and ``em`` for ``e-``.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

ZOO_FILE = "zoo.json"
PAPERS = {
    "lga": "Joo et al., Towards More Robust Interpretation via Local Gradient Alignment, AAAI 2023",
    "boundary": "Wang et al., Robust Models Are More Interpretable Because Attributions Look Normal, ICML 2022",
}


class UnknownModelError(KeyError):
    """A model name that is not in the zoo."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


@dataclass(frozen=True)
class ZooEntry:
    """One published model. ``sha256``/``size``/``revision`` are None until its weights exist."""

    name: str
    architecture: str
    dataset: str
    method: str
    regularizer: dict[str, Any]
    recipe: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int, int]
    interpolation: str
    crop_pct: float
    classes: tuple[str, ...]
    activation: str
    softplus_beta: float
    num_params: int
    license: str
    papers: tuple[str, ...]
    hf_repo_id: str
    revision: str | None = None
    sha256: str | None = None
    size: int | None = None
    config_sha256: str | None = None  # of config.json: its labels and preprocessing are pinned too
    base_model: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    notes: str | None = None  # what a user must know beyond the card's figures (e.g. a missed target)

    @property
    def has_weights(self) -> bool:
        return self.sha256 is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ENTRY_FIELDS = tuple(f.name for f in fields(ZooEntry))
REQUIRED_FIELDS = tuple(
    f.name for f in fields(ZooEntry) if f.default is MISSING and f.default_factory is MISSING
)


def _entry_from_dict(raw: dict[str, Any]) -> ZooEntry:
    unknown = sorted(set(raw) - set(ENTRY_FIELDS))
    if unknown:
        raise ValueError(f"zoo entry {raw.get('name')!r} has unknown fields {unknown}; known: {ENTRY_FIELDS}")
    values = dict(raw)
    for key in ("mean", "std", "input_size", "classes", "papers"):
        if key in values:
            values[key] = tuple(values[key])
    return ZooEntry(**values)


@lru_cache(maxsize=1)
def _entries() -> dict[str, ZooEntry]:
    raw = json.loads(zoo_file().read_text())
    return {item["name"]: _entry_from_dict(item) for item in raw["models"]}


def reload() -> None:
    """Forget the cached registry (after ``zoo.json`` was rewritten)."""
    _entries.cache_clear()


def zoo_file() -> Path:
    return Path(str(resources.files("lga_zoo").joinpath(ZOO_FILE)))


def list_models(pattern: str = "*", pretrained: bool = True) -> list[str]:
    """Names of zoo models matching the shell-style ``pattern`` (``"*lga*"``), sorted. With
    ``pretrained=True`` (like timm) only models whose weights are published."""
    return sorted(
        name
        for name, entry in _entries().items()
        if fnmatch.fnmatch(name, pattern) and (entry.has_weights or not pretrained)
    )


def get_entry(name: str) -> ZooEntry:
    """The registry entry of ``name``; an unknown name raises with the closest names."""
    entries = _entries()
    if name not in entries:
        close = difflib.get_close_matches(name, list(entries), n=3, cutoff=0.5)
        hint = f" Did you mean {close}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}.{hint} Known models: {sorted(entries)}")
    return entries[name]


def write_entries(entries: list[ZooEntry], path: Path | None = None) -> Path:
    """Rewrite ``zoo.json`` with ``entries`` (sorted by name)."""
    path = path or zoo_file()
    from .folder import atomic_write_text

    payload = {"models": [e.to_dict() for e in sorted(entries, key=lambda e: e.name)]}
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    reload()
    return path


def all_entries() -> list[ZooEntry]:
    return [_entries()[name] for name in sorted(_entries())]
