from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lga_zoo.data import CIFAR10_CLASSES

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def load_file_module(relative_path: str):
    """A Python file of the checkout that is not part of the package (``scripts/*.py``,
    ``hubconf.py``), imported as a module."""
    import importlib.util

    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def kill_after_saves(monkeypatch, saves: int) -> None:
    """Make the next training run raise KeyboardInterrupt right after its ``saves``-th checkpoint
    write (the file is written first), as a kill at that moment would."""
    import lga_zoo.train as train_module

    real_save = train_module._atomic_torch_save
    count = {"n": 0}

    def save_then_maybe_die(obj, path):
        real_save(obj, path)
        count["n"] += 1
        if count["n"] == saves:
            monkeypatch.setattr(train_module, "_atomic_torch_save", real_save)
            raise KeyboardInterrupt(f"killed after checkpoint {saves}")

    monkeypatch.setattr(train_module, "_atomic_torch_save", save_then_maybe_die)


def captum_attribution(model, x, target, method: str):
    """The attribution of ``method`` computed by captum directly, with explain()'s default settings
    (IG: 50 steps from black; SmoothGrad: 25 samples, noise 0.15, torch seed 0)."""
    import torch
    from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency

    x = x.clone().requires_grad_(True)
    if method == "grad":
        return Saliency(model).attribute(x, target=target, abs=False)
    if method == "input_x_grad":
        return InputXGradient(model).attribute(x, target=target)
    if method == "integrated_gradients":
        return IntegratedGradients(model).attribute(
            x, baselines=torch.zeros_like(x), target=target, n_steps=50
        )
    torch.manual_seed(0)
    return NoiseTunnel(Saliency(model)).attribute(
        x, nt_type="smoothgrad", nt_samples=25, stdevs=0.15, target=target, abs=False
    )


def record_logit_dtypes(monkeypatch) -> list:
    """The dtype of the logits of every training step from now on (the autocast actually used)."""
    import lga_zoo.train as train_module

    seen = []
    real_forward = train_module.LossStep.forward

    def record_dtype(self, x, y, generator=None):
        loss, logits, parts = real_forward(self, x, y, generator)
        seen.append(logits.dtype)
        return loss, logits, parts

    monkeypatch.setattr(train_module.LossStep, "forward", record_dtype)
    return seen


def record_attack_autocast(monkeypatch) -> list:
    """Whether CPU autocast was on at every targeted attack of an evaluation from now on."""
    import lga_zoo.evaluate as evaluate_module

    seen = []
    real_attack = evaluate_module.targeted_attribution_attack

    def recording_attack(model, x, *args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return real_attack(model, x, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "targeted_attribution_attack", recording_attack)
    return seen


def short_evaluation(n_images: int = 8, side: int = 16):
    """Random images and the settings of a short grad-map evaluation (5 attack steps): what the tests
    that run an evaluation two ways (kernels, folding) compare. Returns (ImageArrays, EvalSettings)."""
    from lga_zoo.data import ImageArrays
    from lga_zoo.evaluate import EvalSettings

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_images, side, side, 3), dtype=np.uint8)
    data = ImageArrays(images, rng.integers(0, 10, n_images), CIFAR10_CLASSES, "synthetic")
    settings = EvalSettings(
        methods=("grad",), n_robustness=n_images, attack_steps=5, random_draws=2, batch_size=n_images,
        similarities=("topk", "kendall", "cosine"), pgd_steps=3,
    )  # fmt: skip
    return data, settings


def assert_same_figures(reference: dict, candidate: dict, tolerance: float) -> None:
    """Two evaluations' results agree: the same accuracy and counts, every mean within ``tolerance``."""
    assert candidate["accuracy"] == reference["accuracy"]
    for attack, metrics in reference["robustness"]["grad"].items():
        for metric, value in metrics.items():
            other = candidate["robustness"]["grad"][attack][metric]
            if isinstance(value, dict):
                assert other["mean"] == pytest.approx(value["mean"], abs=tolerance), (attack, metric)
            else:
                assert other == value, (attack, metric)
