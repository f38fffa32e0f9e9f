"""Images per second of one training step (forward, regularized loss, backward, optimizer step) for
each regularizer, precision and memory format, and its cost relative to plain training.

    python benchmarks/train_step.py [--arch resnet18_cifar] [--activation softplus] [--batch 128]
                                    [--steps 5] [--regularizers none,lga,hessian] [--compile]
                                    [--fused-softplus]

Prints a Markdown table: fp32 and bf16 autocast, contiguous (NCHW) and channels_last, on the CPU
(and CUDA when present); ``--compile`` adds ``torch.compile`` rows for the plain step. Random pixels
and labels: speed does not depend on the data. On a CPU without native bf16 kernels (AVX2 only) the
bf16 rows are left out, because there a single bf16 LGA step takes minutes; ``--bf16-anyway`` times them.
``--regularizers none,lga,hessian,gradnorm,adversarial,trades`` gives a row per training objective;
the attack objectives run 3 PGD steps at eps 2/255 (TRADES with beta 6), a cheap setting: each step
costs about one forward and one backward. ``--fused-softplus`` adds, below each CPU row, the same step with
:class:`lga_zoo.fused_softplus.FusedSoftplus` (as the trainer runs it).
"""

from __future__ import annotations

import argparse
import time

import torch

import lga_zoo
from lga_zoo.fused_softplus import fuse_softplus
from lga_zoo.models import create_backbone
from lga_zoo.precision import bf16_pays_off, cpu_has_native_bf16
from lga_zoo.regularizers import build_regularizer
from lga_zoo.train import LossStep

REGULARIZERS = {
    "none": {},
    "lga": {"eps": 4 / 255, "lambda_l2": 0.01, "lambda_cos": 0.1},
    "gradnorm": {"lam": 0.01},
    "hessian": {"lam": 1e-4},
    "adversarial": {"eps": 2 / 255, "steps": 3},
    "trades": {"beta": 6.0, "eps": 2 / 255, "steps": 3},
}


def images_per_second(
    device: torch.device,
    args: argparse.Namespace,
    regularizer: str,
    amp: bool,
    channels_last: bool,
    compiled: bool = False,
    fused: bool = False,
) -> float:
    """Images per second of ``args.steps`` timed training steps after two warm-up steps."""
    torch.manual_seed(0)
    backbone = create_backbone(args.arch, 10, args.activation, args.softplus_beta)
    if fused:
        fuse_softplus(backbone)
    model = lga_zoo.wrap(backbone, input_size=(3, 32, 32)).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step = LossStep(model, build_regularizer(regularizer, **REGULARIZERS[regularizer]))
    forward = torch.compile(step) if compiled else step
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), device=device)

    def one_step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _, _ = forward(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.batch * args.steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18_cifar")
    parser.add_argument("--activation", default="softplus", choices=["relu", "softplus"])
    parser.add_argument("--softplus-beta", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--regularizers", default="none,lga,hessian", help=f"from {list(REGULARIZERS)}")
    parser.add_argument("--compile", action="store_true", help="add torch.compile rows (plain step)")
    parser.add_argument("--fused-softplus", action="store_true", help="add FusedSoftplus rows (CPU)")
    parser.add_argument("--bf16-anyway", action="store_true", help="time bf16 on a CPU without native bf16")
    args = parser.parse_args()
    names = [n.strip() for n in args.regularizers.split(",") if n.strip()]
    unknown = sorted(set(names) - set(REGULARIZERS))
    if unknown:
        parser.error(f"unknown regularizers {unknown}; choose from {list(REGULARIZERS)}")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, arch {args.arch} "
        f"({args.activation}), batch {args.batch}, {args.steps} timed steps, "
        f"native bf16 on this CPU: {cpu_has_native_bf16()}\n"
    )
    print(
        "| device | precision | memory format | regularizer | images/s | s per 50k-image epoch | cost vs plain |"
    )
    print("|---|---|---|---|---:|---:|---:|")
    for device in devices:
        precisions = (False, True) if bf16_pays_off(device) or args.bf16_anyway else (False,)
        for amp in precisions:
            for channels_last in (False, True):
                plain = None
                kernels = (False, True) if args.fused_softplus and device.type == "cpu" else (False,)
                for name in names:
                    for fused in kernels:
                        rate = images_per_second(device, args, name, amp, channels_last, fused=fused)
                        plain = plain or rate
                        print(
                            f"| {device.type} | {'bf16' if amp else 'fp32'} | "
                            f"{'channels_last' if channels_last else 'NCHW'} | "
                            f"{name}{', FusedSoftplus' if fused else ''} | {rate:.1f} | "
                            f"{50_000 / rate:.0f} | {plain / rate:.2f}x |",
                            flush=True,
                        )
        if args.compile:
            for amp in precisions:
                rate = images_per_second(device, args, "none", amp, True, compiled=True)
                print(
                    f"| {device.type} | {'bf16' if amp else 'fp32'} | channels_last | none, torch.compile | "
                    f"{rate:.1f} | {50_000 / rate:.0f} | - |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
