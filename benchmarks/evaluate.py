"""Images per second of each evaluation perturbation for the narrow ResNet-18, and the projected
time of a 1,000-image evaluation of the gradient method.

    python benchmarks/evaluate.py [--arch resnet18_w16_cifar] [--batch 100] [--steps 100] [--images 100]

Prints a Markdown table (CPU; CUDA too when present). Random weights and random pixels: the speed of
an attack does not depend on what the weights are.
"""

from __future__ import annotations

import argparse
import time

import torch

import lga_zoo
from lga_zoo.attacks import pgd, random_perturbation, targeted_attribution_attack, topk_attack
from lga_zoo.attribution import attribute, normalize_attribution, resolve_method
from lga_zoo.metrics import similarities
from lga_zoo.models import create_backbone, softplus_activations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18_w16_cifar")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--images", type=int, default=100, help="images timed per perturbation")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--draws", type=int, default=5)
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, arch {args.arch}, "
        f"attack steps {args.steps}, batch {args.batch}\n"
    )
    print("| device | perturbation (grad maps) | images/s | s per 1,000 images |")
    print("|---|---|---:|---:|")
    for device in devices:
        bench_device(device, args)


def bench_device(device: torch.device, args: argparse.Namespace) -> None:
    eps = 4 / 255
    settings = resolve_method("grad", {})[1]
    torch.manual_seed(0)
    model = lga_zoo.wrap(create_backbone(args.arch, 10), input_size=(3, 32, 32)).to(device).eval()
    x_all = torch.rand(args.images, 3, 32, 32, device=device)

    def maps(x, t):
        return normalize_attribution(attribute(model, x, t, "grad", settings)[0])

    def run_random(x, t):
        clean = maps(x, t)
        for _ in range(args.draws):
            similarities(clean, maps(random_perturbation(x, eps), t))

    def run_targeted(x, t):
        clean = maps(x, t)
        with softplus_activations(model, 20.0):
            x_adv = targeted_attribution_attack(model, x, t, eps=eps, steps=args.steps)
        similarities(clean, maps(x_adv, t))

    def run_topk(x, t):
        clean = maps(x, t)
        with softplus_activations(model, 20.0):
            x_adv = topk_attack(model, x, t, eps=eps, steps=args.steps)
        similarities(clean, maps(x_adv, t))

    def run_pgd(x, t):
        pgd(model, x, t, 2 / 255, "linf", steps=20)
        pgd(model, x, t, 0.25, "l2", steps=20)

    total = 0.0
    runs = (
        (f"random (x{args.draws} draws)", run_random),
        ("targeted", run_targeted),
        ("top-k", run_topk),
        ("PGD L-inf + L2 (20 steps)", run_pgd),
    )
    for name, fn in runs:
        start = time.perf_counter()
        for begin in range(0, args.images, args.batch):
            x = x_all[begin : begin + args.batch]
            with torch.no_grad():
                t = model(x).argmax(1)
            fn(x, t)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        total += seconds / args.images * 1000
        print(
            f"| {device.type} | {name} | {args.images / seconds:.2f} | {seconds / args.images * 1000:.0f} |",
            flush=True,
        )
    print(f"| {device.type} | all of the above | {1000 / total:.2f} | {total:.0f} |", flush=True)


if __name__ == "__main__":
    main()
