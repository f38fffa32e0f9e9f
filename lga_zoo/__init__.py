"""lga-zoo: image classifiers trained for robust interpretation, with ``.explain()`` built in.

import lga_zoo
model = lga_zoo.load("resnet18_cifar10_lga")
exp = model.explain(image)          # exp.attribution: (B, H, W) normalized map
lga_zoo.list_models("*lga*")

The names that need torch are imported on first use, so that ``lga-zoo --help`` and ``lga-zoo list``
start without it.
"""

import importlib
import logging

from .registry import get_entry, list_models

__version__ = "0.1.0"

_LAZY = {
    "compare": ".comparison",
    "Explanation": ".explanation",
    "load": ".hub",
    "ExplainableClassifier": ".models",
    "wrap": ".models",
}


class _NoCudaRuntimeNotice(logging.Filter):
    """Drops torch's "No CUDA runtime is found" warning: on a CPU-only machine it says nothing the
    user can act on (torch logs it when its C++ extension helper finds no GPU)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No CUDA runtime is found")


logging.getLogger("torch.utils.cpp_extension").addFilter(_NoCudaRuntimeNotice())


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'lga_zoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Explanation",
    "ExplainableClassifier",
    "compare",
    "get_entry",
    "list_models",
    "load",
    "wrap",
    "__version__",
]
