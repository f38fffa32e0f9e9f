"""Images per second of each part of an evaluation, and the projected time of a whole one.

    python benchmarks/evaluate.py [--arch resnet18_w16_cifar] [--activation relu|softplus]
        [--softplus-beta 3] [--attack-amp none|bf16] [--fused-softplus] [--fold-batchnorm] [--batch 50]
        [--images 50] [--steps 100] [--n-robustness 500] [--n-slow 200]

Prints a Markdown table (CPU; CUDA too when present): each perturbation of ``lga-zoo evaluate``
with grad maps (random noise, the targeted and the top-k attacks, PGD), the integrated-gradients
maps the slow images add (a clean map, the random draws and two attacked inputs at 32 steps each),
and the projected minutes of an evaluation of ``--n-robustness`` images with IG on ``--n-slow`` (the
10,000-image accuracy pass not included). The attacks run as in the evaluation with ``--attack-map
grad`` (the flagship's): under bf16 autocast with ``--attack-amp bf16``, the model's ReLUs swapped
for Softplus(20). ``--fused-softplus`` adds a column with :class:`lga_zoo.fused_softplus.FusedSoftplus`
and ``--fold-batchnorm`` one with the BatchNorms folded into their convolutions
(:mod:`lga_zoo.batchnorm_folding`; on top of the fused Softplus when both are given): the two are what
``lga_zoo.evaluate.evaluate`` does by default. The first column is PyTorch's Softplus, unfolded.
Random weights and random pixels: the speed of an attack step does not depend on what the weights
are (a real model's top-k attack may stop early for an image whose class a step would change, so its
row bounds that attack's time from above). For the flagship:

    python benchmarks/evaluate.py --arch resnet18_cifar --activation softplus --softplus-beta 3 \\
        --attack-amp bf16 --fused-softplus --fold-batchnorm
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager, nullcontext

import torch
from torch import Tensor

import lga_zoo
from lga_zoo.attacks import pgd, random_perturbation, targeted_attribution_attack, topk_attack
from lga_zoo.attribution import attribute, normalize_attribution, resolve_method
from lga_zoo.batchnorm_folding import folded_batchnorm
from lga_zoo.fused_softplus import fused_softplus_activations
from lga_zoo.metrics import similarities
from lga_zoo.models import create_backbone, softplus_activations

EPS = 4 / 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18_w16_cifar")
    parser.add_argument("--activation", default="relu", choices=("relu", "softplus"))
    parser.add_argument("--softplus-beta", type=float, default=3.0)
    parser.add_argument("--attack-amp", default="none", choices=("none", "bf16"))
    parser.add_argument("--fused-softplus", action="store_true", help="a column with the fused Softplus")
    parser.add_argument("--fold-batchnorm", action="store_true", help="a column with BatchNorm folded")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--images", type=int, default=50, help="images timed per row")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--ig-steps", type=int, default=32)
    parser.add_argument("--n-robustness", type=int, default=500, help="images of the projected evaluation")
    parser.add_argument("--n-slow", type=int, default=200, help="of which also measured with IG")
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    kernels = variants(args)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, arch {args.arch} "
        f"({args.activation}), attack steps {args.steps}, attacks amp {args.attack_amp}, "
        f"batch {args.batch}, {args.images} images per row\n"
    )
    print("| device | part of the evaluation | " + " | ".join(f"images/s ({k})" for k in kernels) + " |")
    print("|---|---|" + "---:|" * len(kernels))
    for device in devices:
        bench_device(device, args, kernels)


def variants(args: argparse.Namespace) -> dict[str, tuple[bool, bool]]:
    """The columns, as label: (fused Softplus, BatchNorm folded): PyTorch's Softplus, then the fused
    one and the folded BatchNorm as asked."""
    columns = {"PyTorch Softplus": (False, False)}
    if args.fused_softplus:
        columns["fused Softplus"] = (True, False)
    if args.fold_batchnorm:
        columns["fused Softplus, BN folded" if args.fused_softplus else "BN folded"] = (
            args.fused_softplus,
            True,
        )
    return columns


def bench_device(
    device: torch.device, args: argparse.Namespace, kernels: dict[str, tuple[bool, bool]]
) -> None:
    torch.manual_seed(0)
    backbone = create_backbone(args.arch, 10, activation=args.activation, softplus_beta=args.softplus_beta)
    model = lga_zoo.wrap(backbone, input_size=(3, 32, 32)).to(device).eval()
    x_all = torch.rand(args.images, 3, 32, 32, device=device)

    @contextmanager
    def kernel_context(kernel):
        fused, folded = kernels[kernel]
        with ExitStack() as stack:
            if fused:
                stack.enter_context(fused_softplus_activations(model))
            if folded and not stack.enter_context(folded_batchnorm(model, x_all[:2])):
                raise SystemExit(f"--fold-batchnorm: no BatchNorm of {args.arch} can be folded")
            yield

    parts = {kernel: evaluation_parts(model, args, device, fused) for kernel, (fused, _) in kernels.items()}
    for kernel in kernels:  # warm-up: every part on two images (and the fused kernel's compiles)
        with kernel_context(kernel):
            for fn in parts[kernel].values():
                time_per_image(model, x_all[:2], 2, fn, device)
    seconds = {kernel: {} for kernel in kernels}
    first = next(iter(kernels))
    for name in parts[first]:  # the kernels in turn, part by part: a drift in speed hits both
        for kernel in kernels:
            with kernel_context(kernel):
                seconds[kernel][name] = time_per_image(model, x_all, args.batch, parts[kernel][name], device)
    for name in seconds[first]:
        print(
            f"| {device.type} | {name} | " + " | ".join(f"{1 / seconds[k][name]:.3g}" for k in kernels) + " |"
        )
    projected = []
    for kernel in kernels:
        ig = sum(s for name, s in seconds[kernel].items() if name.startswith("IG"))
        every_image = sum(seconds[kernel].values()) - ig
        projected.append((args.n_robustness * every_image + min(args.n_slow, args.n_robustness) * ig) / 60)
    print(
        f"| {device.type} | projected minutes for {args.n_robustness} images, IG on {args.n_slow} | "
        + " | ".join(f"{m:.1f} min" for m in projected)
        + " |",
        flush=True,
    )


def evaluation_parts(
    model: torch.nn.Module, args: argparse.Namespace, device: torch.device, fused: bool
) -> dict[str, Callable[[Tensor, Tensor], None]]:
    """Each part of an evaluation as ``fn(images, predicted classes)``, by row name. The attacks run
    as ``lga_zoo.evaluate`` runs them: ReLUs swapped for Softplus(20) (fused too with ``fused``),
    under bf16 autocast with ``--attack-amp bf16``, on the grad map (``--attack-map grad``)."""
    grad_settings = resolve_method("grad", {})[1]
    ig_settings = resolve_method("integrated_gradients", {"steps": args.ig_steps})[1]

    def maps(x, t, method="grad", settings=grad_settings):
        return normalize_attribution(attribute(model, x, t, method, settings)[0])

    @contextmanager
    def attacking():
        amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.attack_amp == "bf16")
        with (
            softplus_activations(model, 20.0),
            fused_softplus_activations(model) if fused else nullcontext(),
            amp,
        ):
            yield

    def run_random(x, t):
        clean = maps(x, t)
        for _ in range(args.draws):
            similarities(clean, maps(random_perturbation(x, EPS), t))

    def run_targeted(x, t):
        clean = maps(x, t)
        with attacking():
            x_adv = targeted_attribution_attack(model, x, t, eps=EPS, steps=args.steps)
        similarities(clean, maps(x_adv, t))

    def run_topk(x, t):
        clean = maps(x, t)
        with attacking():
            x_adv = topk_attack(model, x, t, eps=EPS, steps=args.steps)
        similarities(clean, maps(x_adv, t))

    def run_pgd(x, t):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.attack_amp == "bf16"):
            pgd(model, x, t, 2 / 255, "linf", steps=20)
            pgd(model, x, t, 0.25, "l2", steps=20)

    def run_ig_maps(x, t):  # on the grad rows' perturbed inputs (attack_map "grad"): noise stands in
        clean = maps(x, t, "integrated_gradients", ig_settings)
        for _ in range(args.draws + 2):
            similarities(clean, maps(random_perturbation(x, EPS), t, "integrated_gradients", ig_settings))

    return {
        f"random (x{args.draws} draws)": run_random,
        "targeted": run_targeted,
        "top-k": run_topk,
        "PGD L-inf + L2 (20 steps)": run_pgd,
        f"IG maps ({args.draws + 3} per image, {args.ig_steps} steps)": run_ig_maps,
    }


def time_per_image(
    model: torch.nn.Module,
    x_all: Tensor,
    batch: int,
    fn: Callable[[Tensor, Tensor], None],
    device: torch.device,
) -> float:
    """Seconds per image of ``fn(x, predicted class)`` over ``x_all`` in batches of ``batch``."""
    start = time.perf_counter()
    for begin in range(0, len(x_all), batch):
        x = x_all[begin : begin + batch]
        with torch.no_grad():
            t = model(x).argmax(1)
        fn(x, t)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / len(x_all)


if __name__ == "__main__":
    main()
