"""lga-zoo: image classifiers trained for robust interpretation, with ``.explain()`` built in.

import lga_zoo
model = lga_zoo.load("resnet18_cifar10_lga")
exp = model.explain(image)          # exp.attribution: (B, H, W) normalized map
lga_zoo.list_models("*lga*")
"""

from .compare import compare
from .explanation import Explanation
from .hub import load
from .models import ExplainableClassifier, wrap
from .registry import get_entry, list_models

__version__ = "0.1.0"

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
