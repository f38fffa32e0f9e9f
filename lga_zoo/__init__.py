"""lga-zoo: image classifiers trained for robust interpretation, with ``.explain()`` built in."""

from .models import ExplainableClassifier, wrap

__version__ = "0.1.0"

__all__ = ["ExplainableClassifier", "wrap", "__version__"]
