"""Robust accuracy under AutoAttack's gradient part, by a maintained implementation, in fp32.

As AutoAttack (Croce and Hein, 2020) runs it: APGD on the cross-entropy (APGD-CE) on every image,
then targeted APGD on the DLR loss (APGD-T, one run per target: the most likely wrong classes) on the
images APGD-CE left correctly classified. An image counts as robust only if it is classified
correctly after both (the per-image worst case). Both attacks are torchattacks' ``APGD`` and
``APGDT`` (version 3.5.1), run in fp32 whatever autocast the caller has on.

torchattacks seeds torch's global random generators at every call (its random start); here it runs
inside a fork of them, so the caller's random streams go on as if nothing had run, and the same seed
gives the same figures. The caller's model is left as it was (:func:`lga_zoo.state.preserved`).

Installing: torchattacks 3.5.1 declares ``requests~=2.25.1``, which would downgrade urllib3 and idna
(and break gradio and selenium beside it), though its code never imports requests. Install it with
``pip install --no-deps torchattacks==3.5.1``; its real imports (torch, torchvision, numpy, scipy,
tqdm) come with lga-zoo and its ``eval`` extra.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .attacks import check_labels, check_pixels, check_radius
from .state import differentiates, keeps_model_state

TORCHATTACKS_INSTALL = "pip install --no-deps torchattacks==3.5.1"
NORMS = {"linf": "Linf", "l2": "L2"}  # ours -> torchattacks'


def torchattacks_module():
    """The ``torchattacks`` module, or a RuntimeError that says how to install it."""
    try:
        import torchattacks
    except ImportError as error:
        raise RuntimeError(
            f"APGD needs torchattacks ({error}): install it with `{TORCHATTACKS_INSTALL}` (without its "
            "requests pin, which would downgrade urllib3), or leave apgd out of the attacks"
        ) from None
    return torchattacks


def implementation() -> str:
    """The attack implementation as results record it: "torchattacks 3.5.1"."""
    return f"torchattacks {torchattacks_module().__version__}"


@contextlib.contextmanager
def global_rng_kept() -> Iterator[None]:
    """Run the block and give torch's global random generators back as they were: the CPU one, the
    current CUDA device's where CUDA is initialized, and (CUDA present but not initialized yet) the
    seed that a ``torch.cuda.manual_seed`` in the block would otherwise queue for CUDA's start."""
    cuda_ready = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = [torch.cuda.current_device()] if cuda_ready else []
    tracker = getattr(torch.cuda, "_lazy_seed_tracker", None)
    queued = dict(vars(tracker)) if tracker is not None else None
    try:
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            yield
    finally:
        if tracker is not None and queued is not None:
            vars(tracker).clear()
            vars(tracker).update(queued)


@differentiates
@keeps_model_state
def apgd_robust(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str,
    eps: float,
    steps: int = 50,
    n_target_classes: int = 3,
    seed: int = 0,
    timings: dict[str, float] | None = None,
) -> tuple[Tensor, Tensor]:
    """Which images of ``x`` (pixels in [0, 1], labels ``y``) stay correctly classified: returns
    (after APGD-CE, after APGD-CE and then APGD-T on the images APGD-CE left), two boolean tensors.

    ``norm``: "linf" or "l2", radius ``eps`` in pixels. ``steps``: iterations of each run (AutoAttack's
    standard version: 100). ``n_target_classes``: APGD-T's targets, the classes ranked 2nd, 3rd, ...
    by the model at x (AutoAttack: 9 on CIFAR-10). ``seed``: torchattacks' seed of the random start
    (global generators forked, see :func:`global_rng_kept`). Always fp32: autocast is off inside.
    ``timings``, if given, gets the seconds of each attack added under "apgd-ce" and "apgd-t"."""
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r}; accepted: {tuple(NORMS)}")
    check_pixels(x)
    check_labels(x, y, "y")
    check_radius(eps)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1")
    torchattacks = torchattacks_module()
    x, y = x.detach().float(), y.detach()
    with global_rng_kept(), torch.autocast(x.device.type, enabled=False):
        with torch.no_grad():
            n_classes = model(x[:1]).shape[1]
        if isinstance(n_target_classes, bool) or not 1 <= n_target_classes <= n_classes - 1:
            raise ValueError(
                f"n_target_classes={n_target_classes!r} must be between 1 and {n_classes - 1} (the other "
                f"classes of a {n_classes}-class model)"
            )
        common = {"norm": NORMS[norm], "eps": float(eps), "steps": steps, "n_restarts": 1, "seed": seed}
        started = time.perf_counter()
        x_ce = torchattacks.APGD(model, loss="ce", **common)(x, y)
        with torch.no_grad():
            robust_ce = model(x_ce).argmax(1) == y
        robust = robust_ce.clone()
        left = robust_ce.nonzero().squeeze(1)
        ce_done = time.perf_counter()
        if len(left):
            # torchattacks' APGDT runs n_classes - 1 targets
            targeted = torchattacks.APGDT(model, n_classes=n_target_classes + 1, **common)
            x_t = targeted(x[left], y[left])
            with torch.no_grad():
                robust[left] = model(x_t).argmax(1) == y[left]
    if timings is not None:
        timings["apgd-ce"] = timings.get("apgd-ce", 0.0) + ce_done - started
        timings["apgd-t"] = timings.get("apgd-t", 0.0) + time.perf_counter() - ce_done
    return robust_ce, robust


def wilson_interval(successes: int, n: int, z: float = 1.96) -> list[float] | None:
    """The Wilson score interval (95% for z=1.96) of a fraction ``successes / n``; None for n = 0."""
    if n == 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return [max(0.0, center - half), min(1.0, center + half)]


def apgd_record(
    eps: float, correct: int, correct_ce: int, n: int, steps: int, n_target_classes: int, seed: int,
    batch_size: int,
) -> dict[str, Any]:  # fmt: skip
    """One norm's ``accuracy.apgd`` entry of the results: ``correct`` of ``n`` images robust under
    both attacks (``correct_ce`` under APGD-CE alone), with its Wilson 95% interval."""
    return {
        "eps": eps,
        "steps": steps,
        "accuracy": correct / n if n else None,
        "n_images": n,
        "ci95": wilson_interval(correct, n),
        "ci95_method": "wilson",
        "accuracy_apgd_ce": correct_ce / n if n else None,
        "attacks": ["apgd-ce", "apgd-t"],
        "n_target_classes": n_target_classes,
        "implementation": implementation(),
        "precision": "fp32",
        "seed": seed,
        "batch_size": batch_size,
    }
