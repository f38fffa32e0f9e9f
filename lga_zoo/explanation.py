"""The result of ``model.explain()``: maps, raw attributions, predictions, and drawing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

# Anchor colours of a black-red-yellow-white heat palette (low to high attribution).
_HEAT_ANCHORS = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32
)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 with a perceptually ordered heat palette."""
    positions = np.clip(values, 0, 1) * (len(_HEAT_ANCHORS) - 1)
    low = np.floor(positions).astype(int).clip(0, len(_HEAT_ANCHORS) - 2)
    frac = (positions - low)[..., None]
    colours = _HEAT_ANCHORS[low] * (1 - frac) + _HEAT_ANCHORS[low + 1] * frac
    return colours.round().astype(np.uint8)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default()


def _with_caption(image: Image.Image, text: str) -> Image.Image:
    """``image`` with a white band below it holding ``text``: one line if it fits at a readable
    size, else broken after its commas; the font shrinks until every line fits the width."""
    from PIL import ImageDraw

    margin = max(4, image.width // 40)
    size = max(10, image.width // 18)
    lines = [text]
    while True:
        font = _font(size)
        widths = [font.getlength(line) for line in lines]
        if max(widths) <= image.width - 2 * margin:
            break
        if len(lines) == 1 and ", " in text:
            lines = [part + ("," if n < text.count(", ") else "") for n, part in enumerate(text.split(", "))]
            continue
        if size <= 8:
            break
        size -= 1
    band = len(lines) * round(size * 1.3) + margin
    captioned = Image.new("RGB", (image.width, image.height + band), "white")
    captioned.paste(image.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(captioned)
    for n, line in enumerate(lines):
        draw.text((margin, image.height + margin // 2 + n * round(size * 1.3)), line, fill="black", font=font)
    return captioned


@dataclass
class Explanation:
    """Attributions for a batch.

    ``attribution`` (B, H, W): the normalized map; ``raw`` (B, C, H, W): the signed attribution;
    ``inputs`` (B, C, H, W): the pixels explained; ``target``: the explained classes;
    ``predicted`` and ``probabilities``: the model's output; ``method`` and ``settings``; for
    ``boundary`` also ``boundary_points``, ``boundary_distances`` (L2) and ``boundary_found``.
    With ``explain(..., stability=True)``: ``stability = {"noise": (B,), "attack": (B,)}``, the top-k
    intersection of each map with the map under noise and after a short attack (1 = unchanged), and
    the ``stability_settings`` that produced it (see :mod:`lga_zoo.stability`).
    """

    attribution: Tensor
    raw: Tensor
    inputs: Tensor
    target: Tensor
    predicted: Tensor
    probabilities: Tensor
    method: str
    settings: dict[str, Any] = field(default_factory=dict)
    labels: list[str] | None = None
    boundary_points: Tensor | None = None
    boundary_distances: Tensor | None = None
    boundary_found: Tensor | None = None
    stability: dict[str, Tensor] | None = None
    stability_settings: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.attribution)

    def label_of(self, index: int) -> str:
        return self.labels[index] if self.labels else str(index)

    def describe(self, i: int = 0) -> str:
        """One line: predicted class and probability, and the explained class."""
        pred = int(self.predicted[i])
        text = f"predicted {self.label_of(pred)} ({self.probabilities[i, pred].item():.1%})"
        if int(self.target[i]) != pred:
            text += f", explaining {self.label_of(int(self.target[i]))}"
        return text

    def stability_text(self, i: int = 0) -> str:
        """``"stability: top-k 0.81 under noise, 0.42 under attack"`` for image ``i`` (needs
        ``explain(..., stability=True)``)."""
        if self.stability is None:
            raise ValueError("no stability scores: call explain(..., stability=True)")
        noise, attack = self.stability["noise"][i].item(), self.stability["attack"][i].item()
        return f"stability: top-k {noise:.2f} under noise, {attack:.2f} under attack"

    def overlay(
        self, i: int = 0, alpha: float = 0.55, min_size: int = 224, show_stability: bool = False
    ) -> Image.Image:
        """A PIL image of image ``i`` with its map drawn over it as a heatmap. Small images are
        enlarged (nearest neighbour, an integer factor) to at least ``min_size`` pixels.
        ``show_stability`` adds a caption band with :meth:`stability_text` below the picture."""
        if not 0 <= i < len(self):
            raise IndexError(f"image {i} of a batch of {len(self)}")
        heat = self.attribution[i].detach().float().cpu()
        if self.settings.get("normalize") == "none":
            heat = heat.abs() / heat.abs().max().clamp_min(1e-12)
        else:
            heat = heat / heat.max().clamp_min(1e-12)
        picture = self.inputs[i].detach().float().cpu().clamp(0, 1)
        if picture.shape[0] == 1:
            picture = picture.expand(3, -1, -1)
        picture = picture.permute(1, 2, 0).numpy()
        colours = heat_colours(heat.numpy()).astype(np.float32) / 255
        weight = alpha * np.clip(heat.numpy(), 0, 1)[..., None] ** 0.5
        blended = picture * (1 - weight) + colours * weight
        image = Image.fromarray((blended * 255).round().astype(np.uint8))
        factor = max(1, -(-min_size // min(image.size)))
        if factor > 1:
            image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
        return _with_caption(image, self.stability_text(i)) if show_stability else image

    def save(self, path: str | Path, i: int = 0, **overlay_kwargs: Any) -> Path:
        """Write the overlay of image ``i`` as a PNG (``path`` ends in .png; an existing file is
        replaced only by a complete new one); returns the path."""
        from .folder import save_png

        overlay = self.overlay(i, **overlay_kwargs)
        return save_png(path, lambda file: overlay.save(file, format="PNG"))

    def plot(self, indices: list[int] | None = None):
        """A matplotlib figure: for each image its input, map and overlay (needs matplotlib)."""
        try:
            import matplotlib.pyplot as plt
        except ImportError as err:
            raise ImportError("Explanation.plot needs matplotlib: pip install matplotlib") from err
        indices = list(range(min(len(self), 8))) if indices is None else indices
        fig, axes = plt.subplots(len(indices), 3, figsize=(9, 3 * len(indices)), squeeze=False)
        for row, i in enumerate(indices):
            axes[row, 0].imshow(self.inputs[i].detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy())
            axes[row, 0].set_title(self.describe(i), fontsize=8)
            axes[row, 1].imshow(self.attribution[i].detach().cpu().numpy(), cmap="inferno")
            axes[row, 1].set_title(f"{self.method} map", fontsize=8)
            axes[row, 2].imshow(self.overlay(i, min_size=1))
            axes[row, 2].set_title("overlay", fontsize=8)
            for ax in axes[row]:
                ax.axis("off")
        fig.tight_layout()
        return fig

    def to(self, device: str | torch.device) -> Explanation:
        """A copy with every tensor on ``device``."""
        moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        return Explanation(**moved)
