"""Images per second of one training step (forward, regularized loss, backward, optimizer step) for
each regularizer, and its cost relative to plain training.

    python benchmarks/train_step.py [--arch resnet18_w16_cifar] [--batch 128] [--steps 10] [--amp bf16]

Prints a Markdown table; on CUDA it uses AMP and channels_last like the recipes. Random pixels and
labels: speed does not depend on the data.
"""

from __future__ import annotations

import argparse
import time

import torch

import lga_zoo
from lga_zoo.models import create_backbone
from lga_zoo.regularizers import build_regularizer
from lga_zoo.train import LossStep

REGULARIZERS = {
    "none": {},
    "lga": {"eps": 4 / 255, "lambda_l2": 0.01, "lambda_cos": 0.1},
    "gradnorm": {"lam": 0.01},
    "hessian": {"lam": 1e-4},
}


def images_per_second(
    device: torch.device, arch: str, regularizer: str, batch: int, steps: int, amp: str
) -> float:
    torch.manual_seed(0)
    model = lga_zoo.wrap(create_backbone(arch, 10), input_size=(3, 32, 32)).to(device).train()
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step = LossStep(model, build_regularizer(regularizer, **REGULARIZERS[regularizer]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp) if device.type == "cuda" else None
    x = torch.rand(batch, 3, 32, 32, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)

    def one_step():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, _, _ = step(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    one_step()
    one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18_w16_cifar")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--amp", default="bf16", choices=["none", "bf16", "fp16"])
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, arch {args.arch}, batch {args.batch}\n"
    )
    print("| device | regularizer | images/s | cost vs plain |")
    print("|---|---|---:|---:|")
    for device in devices:
        plain = None
        for name in REGULARIZERS:
            rate = images_per_second(device, args.arch, name, args.batch, args.steps, args.amp)
            plain = plain or rate
            print(f"| {device.type} | {name} | {rate:.1f} | {plain / rate:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
