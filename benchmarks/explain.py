"""Milliseconds per image of model.explain() against calling captum directly, per method.

    python benchmarks/explain.py [--arch resnet18_w16_cifar] [--size 32] [--batches 1,64] [--repeats 3]
    python benchmarks/explain.py --stability [--arch resnet18_cifar]

Prints a Markdown table. The model is the architecture with random weights (speed does not depend
on the weights); inputs are random pixels. CUDA rows are added when a GPU is present.
``--stability`` instead times ``explain(stability=True)`` against plain ``explain()`` per method:
what the stability score costs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency

import lga_zoo
from lga_zoo.models import create_backbone

METHODS = {
    "grad": ({}, lambda m, x, t: Saliency(m).attribute(x, target=t, abs=False)),
    "input_x_grad": ({}, lambda m, x, t: InputXGradient(m).attribute(x, target=t)),
    "integrated_gradients": (
        {"steps": 50},
        lambda m, x, t: IntegratedGradients(m).attribute(
            x, baselines=torch.zeros_like(x), target=t, n_steps=50
        ),
    ),
    "smoothgrad": (
        {"samples": 25, "noise": 0.15},
        lambda m, x, t: NoiseTunnel(Saliency(m)).attribute(
            x, nt_type="smoothgrad", nt_samples=25, stdevs=0.15, target=t, abs=False
        ),
    ),
}


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18_w16_cifar")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--stability", action="store_true", help="time explain(stability=True) instead")
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, arch {args.arch}, {args.size}px\n")
    if args.stability:
        stability_table(devices, args)
        return
    print("| device | method | batch | explain() ms/img | captum ms/img | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for device in devices:
        for method in args.methods.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                ours, theirs = bench(device, args.arch, args.size, method, batch, args.repeats)
                print(
                    f"| {device.type} | {method} | {batch} | {1000 * ours / batch:.2f} | "
                    f"{1000 * theirs / batch:.2f} | {ours / theirs:.3f} |",
                    flush=True,
                )


def stability_costs(
    model, x: torch.Tensor, method: str, repeats: int, device: torch.device
) -> tuple[float, float]:
    """Median seconds of explain() and of explain(stability=True) on the batch ``x``."""
    kwargs = METHODS[method][0]
    plain = timed(lambda: model.explain(x, method=method, **kwargs), repeats, device)
    scored = timed(lambda: model.explain(x, method=method, stability=True, **kwargs), repeats, device)
    return plain, scored


def stability_table(devices: list[torch.device], args: argparse.Namespace) -> None:
    print("| device | method | batch | explain() ms/img | explain(stability=True) ms/img | extra s/img |")
    print("|---|---|---:|---:|---:|---:|")
    for device in devices:
        torch.manual_seed(0)
        model = lga_zoo.wrap(create_backbone(args.arch, num_classes=10), input_size=(3, args.size, args.size))
        model = model.to(device).eval()
        for method in args.methods.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                x = torch.rand(batch, 3, args.size, args.size, device=device)
                plain, scored = stability_costs(model, x, method, args.repeats, device)
                print(
                    f"| {device.type} | {method} | {batch} | {1000 * plain / batch:.1f} | "
                    f"{1000 * scored / batch:.1f} | {(scored - plain) / batch:.3f} |",
                    flush=True,
                )


def bench(
    device: torch.device, arch: str, size: int, method: str, batch: int, repeats: int
) -> tuple[float, float]:
    """Median seconds per call of explain() and of captum directly, for one batch."""
    torch.manual_seed(0)
    model = lga_zoo.wrap(create_backbone(arch, num_classes=10), input_size=(3, size, size)).to(device).eval()
    kwargs, direct = METHODS[method]
    x = torch.rand(batch, 3, size, size, device=device)
    target = model(x).argmax(1)
    ours = timed(lambda: model.explain(x, target=target, method=method, **kwargs), repeats, device)
    theirs = timed(lambda: direct(model, x.clone().requires_grad_(True), target), repeats, device)
    return ours, theirs


if __name__ == "__main__":
    main()
