"""The lga-zoo demo as a Hugging Face Space: the package's own app, nothing copied.

Locally: `lga-zoo demo` (or `python app.py` with lga-zoo installed). On the Space the models load
from the Hugging Face Hub at the revisions pinned in the package's registry.
"""

import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from lga_zoo.demo import build_app  # noqa: E402

# The Space's own copy of the examples (the installed package does not carry the checkout's).
demo = build_app(examples=Path(__file__).parent / "examples")

if __name__ == "__main__":
    demo.queue().launch()
