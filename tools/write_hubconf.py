"""Write hubconf.py from the zoo registry (lga_zoo/zoo.json): one torch.hub entry point per model.

    python tools/write_hubconf.py          # rewrite hubconf.py (atomically)
    python tools/write_hubconf.py --check  # exit 1 if hubconf.py differs from what would be written

Each entry point's docstring (what ``torch.hub.help`` shows) is derived from the registry entry and,
for a published model, its model_cards/NAME/config.json: architecture and activation, dataset,
regularizer and its settings, the length of the last training run, the weights it was fine-tuned
from and the stored precision. Run it after every change to the registry or to a published
config.json; tests/test_registry.py fails while hubconf.py is stale.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HUBCONF = REPO / "hubconf.py"

# Everything above the entry points, kept verbatim.
HEADER = '''"""torch.hub entry points of lga-zoo: one per zoo model.

    model = torch.hub.load("lga-zoo/lga_zoo", "resnet18_cifar10_lga", trust_repo=True)
    exp = model.explain(image)

Weights come from this clone's model_cards/NAME/ folder, the Hugging Face cache or the Hub, and are
checked against the sha256 pinned in lga_zoo/zoo.json. ``pretrained=False`` gives the architecture
untrained. Keyword arguments go to ``lga_zoo.load`` (device, revision, cache_dir, local_files_only).
"""

# Written by tools/write_hubconf.py from lga_zoo/zoo.json: edit the registry and rerun it, not this file.

dependencies = ["torch", "torchvision", "timm", "safetensors", "captum", "huggingface_hub", "yaml"]


_LOAD_KEYWORDS = ("device", "revision", "cache_dir", "local_files_only", "verify")


def _load(name, pretrained, **kwargs):
    import lga_zoo
    from lga_zoo.hub import untrained

    unknown = sorted(set(kwargs) - set(_LOAD_KEYWORDS if pretrained else ("device",)))
    if unknown:
        accepted = list(_LOAD_KEYWORDS) if pretrained else ["device"]
        raise TypeError(f"{name}: unexpected keyword arguments {unknown}; accepted: {accepted}")
    return lga_zoo.load(name, **kwargs) if pretrained else untrained(name, device=kwargs.get("device"))
'''

ENTRY_POINT = '''

def {name}(pretrained: bool = True, **kwargs):
    """{summary}

    Recipe: {recipe}. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("{name}", pretrained, **kwargs)
'''

PIXEL_KEYS = ("eps", "step_size")  # settings in pixel units: shown as k/255 where they are
ACTIVATIONS = {"relu": "ReLU", "gelu": "GELU", "silu": "SiLU"}


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


def _activation(entry) -> str:
    if entry.activation == "softplus":
        return f"Softplus beta {entry.softplus_beta:g}"
    return ACTIVATIONS.get(entry.activation, entry.activation)


def _dataset(entry) -> str:
    try:
        from lga_zoo.cards import DATASET_NAMES
    except ImportError:
        DATASET_NAMES = {}
    return DATASET_NAMES.get(entry.dataset, entry.dataset)


def published_config(entry, repo: Path = REPO) -> dict[str, Any] | None:
    """The config.json of a published model (sha256 pinned and the model card present), else None."""
    path = repo / "model_cards" / entry.name / "config.json"
    return json.loads(path.read_text()) if entry.sha256 and path.is_file() else None


def summary(entry, config: dict[str, Any] | None) -> str:
    """The first docstring line of ``entry``'s entry point, from its fields and published config.json."""
    ours = (config or {}).get("lga_zoo", {})
    init = ours.get("recipe", {}).get("init")
    reg = dict(entry.regularizer)
    reg_name = reg.pop("name")
    head = f"{entry.architecture} ({_activation(entry)}) on {_dataset(entry)}"
    scratch = " from scratch" if init == "scratch" else ""
    if entry.method == "control":
        head += ": the control: same extra training as the fine-tunes, no regularizer"
    elif reg_name == "none":
        head += f" trained{scratch} with plain cross-entropy"
    else:
        settings = ", ".join(_setting(k, v) for k, v in reg.items())
        head += f" trained{scratch} with the `{reg_name}` regularizer"
        head += f" ({settings})" if settings else ""

    epochs = ours.get("training", {}).get("epochs")
    run = [f"{epochs} epoch{'' if epochs == 1 else 's'}"] if epochs else []
    if entry.base_model:
        run.append(f"fine-tuned from {entry.base_model}")
    elif config is not None and init not in (None, "scratch", "pretrained"):
        run.append("continuing an earlier checkpoint that is not in the zoo")
    clauses = [" ".join(run)] if run else []
    if (config or {}).get("torch_dtype") == "float16":
        clauses.append("weights stored in float16")
    if not entry.has_weights:
        clauses.append("weights not published yet")
    separator = "; " if entry.method == "control" else ": "
    return head + (separator + ", ".join(clauses) if clauses else "") + "."


def render(entries=None, repo: Path = REPO) -> str:
    """The text of hubconf.py for ``entries`` (default: the whole registry), sorted by name."""
    if entries is None:
        from lga_zoo.registry import all_entries

        entries = all_entries()
    parts = [HEADER]
    for entry in sorted(entries, key=lambda e: e.name):
        line = summary(entry, published_config(entry, repo))
        if not entry.name.isidentifier() or any(bad in line + entry.recipe for bad in ('"""', "\\", "\n")):
            raise ValueError(f"{entry.name}: cannot be written as an entry point docstring: {line!r}")
        parts.append(ENTRY_POINT.format(name=entry.name, summary=line, recipe=entry.recipe))
    return "".join(parts)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then move it over ``path``."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if hubconf.py is not up to date")
    args = parser.parse_args(argv)
    text = render()
    current = HUBCONF.read_text(encoding="utf-8") if HUBCONF.is_file() else None
    if args.check:
        if current != text:
            print(
                "hubconf.py is out of date with lga_zoo/zoo.json and model_cards/; "
                "run: python tools/write_hubconf.py",
                file=sys.stderr,
            )
            return 1
        return 0
    if current != text:
        write_atomic(HUBCONF, text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # the checkout's lga_zoo, not another installed copy
    sys.exit(main())
