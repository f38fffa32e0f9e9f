from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lga_zoo.data import CIFAR10_CLASSES

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Each test session decodes data into its own cache, never the user's."""
    monkeypatch.setenv("LGA_ZOO_CACHE", str(tmp_path_factory.getbasetemp() / "lga_cache"))


def write_tiny_cifar(root: Path, train_per_class: int = 6, test_per_class: int = 2, seed: int = 0) -> Path:
    """A CIFAR-10-shaped image-folder tree: each class a different mean colour plus noise."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label, name in enumerate(CIFAR10_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array([label * 25, 255 - label * 25, (label * 97) % 256])
            for i in range(count):
                pixels = np.clip(colour + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> Path:
    return write_tiny_cifar(tmp_path_factory.mktemp("tiny_cifar"))


@pytest.fixture(scope="session")
def real_cifar() -> Path:
    if not SHARED_CIFAR.is_file():
        pytest.skip(f"real CIFAR-10 archive not found at {SHARED_CIFAR} (../shared/data beside the checkout)")
    return SHARED_CIFAR
