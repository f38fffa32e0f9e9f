"""How long APGD (AutoAttack's gradient part, ``lga-zoo evaluate --attacks ...,apgd`` / ``--add apgd``)
takes on a zoo model, and the projected time of the 500-image evaluation.

    python benchmarks/apgd.py MODEL --data-dir DIR [--n-images 20] [--steps 50] [--targets 3]
        [--batch-size 100] [--device cpu] [--no-fold]

Runs what the evaluation runs on the first ``--n-images`` of its seeded test images (seed 0): per norm
(L-inf 2/255, L2 0.25), torchattacks' APGD-CE on every image, then APGD-T (``--targets`` target
classes) on the images it leaves correctly classified, in fp32, with the model's Softplus fused and
its BatchNorms folded as ``lga_zoo.evaluate.evaluate`` runs it (``--no-fold``: the modules as loaded).
Prints a Markdown table: model, images, norm, robust after APGD-CE and after both, the seconds of each
attack and in all, images per second, and the projected minutes for 500 images (linear in the images:
APGD-T's share depends on how many survive APGD-CE, so use a sample of real test images; a row on
few images is a rough guide only). The total row is what ``--add apgd`` adds to an evaluation of 500
images. ``CPU s`` is the process's CPU time: on a machine busy with other work the wall-clock seconds
say little, and the CPU seconds over the threads used project an idle machine's time. Example:

    python benchmarks/apgd.py resnet18_cifar10_standard --n-images 20 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack

import numpy as np
import torch

from lga_zoo.apgd import apgd_robust, implementation
from lga_zoo.batchnorm_folding import folded_batchnorm
from lga_zoo.datasets import eval_arrays
from lga_zoo.fused_softplus import fused_softplus_activations
from lga_zoo.hub import load
from lga_zoo.state import preserved

NORMS = (("linf", 2 / 255), ("l2", 0.25))
PROJECTED_IMAGES = 500


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="zoo name or model folder")
    parser.add_argument("--data-dir", required=True, help="the model's data set (CIFAR-10 for the zoo)")
    parser.add_argument("--n-images", type=int, default=20)
    parser.add_argument("--steps", type=int, default=50, help="steps of APGD-CE and of APGD-T")
    parser.add_argument("--targets", type=int, default=3, help="APGD-T's target classes")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-fold", action="store_true", help="run the modules as loaded")
    args = parser.parse_args()

    device = torch.device(args.device)
    model = load(args.model).to(device)
    recipe = (getattr(model, "config", None) or {}).get("lga_zoo", {}).get("recipe", {})
    data = eval_arrays(model, args.data_dir, None, recipe.get("dataset", "cifar10"))
    order = torch.randperm(len(data.labels), generator=torch.Generator().manual_seed(args.seed))
    chosen = order[: args.n_images].numpy()
    images = torch.from_numpy(np.ascontiguousarray(data.images[chosen].transpose(0, 3, 1, 2)))
    labels = torch.from_numpy(data.labels[chosen])

    rows = []
    with ExitStack() as stack:
        stack.enter_context(preserved(model))
        if not args.no_fold:
            stack.enter_context(fused_softplus_activations(model))
            probe = images[:2].to(device).float().div(255)
            stack.enter_context(folded_batchnorm(model, probe))
        for norm, eps in NORMS:
            timings: dict[str, float] = {}
            robust_ce = robust = 0
            started, cpu_started = time.perf_counter(), time.process_time()
            for start in range(0, len(labels), args.batch_size):
                x = images[start : start + args.batch_size].to(device).float().div(255)
                y = labels[start : start + args.batch_size].to(device)
                after_ce, after_both = apgd_robust(
                    model, x, y, norm, eps, args.steps, args.targets, args.seed, timings=timings
                )
                robust_ce += int(after_ce.sum())
                robust += int(after_both.sum())
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            rows.append((norm, robust_ce, robust, timings["apgd-ce"], timings["apgd-t"], seconds, cpu))

    n = len(labels)
    print(
        f"{implementation()}, {args.steps} steps each, {args.targets} APGD-T targets, batch {args.batch_size}, "
        f"{device}, {torch.get_num_threads()} threads, {'modules as loaded' if args.no_fold else 'folded'}\n"
    )
    print(
        f"| model | images | norm | robust after CE | robust after CE+T | CE s | T s | seconds | images/s | "
        f"projected min for {PROJECTED_IMAGES} | CPU s | projected CPU min for {PROJECTED_IMAGES} |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for norm, robust_ce, robust, ce_s, t_s, seconds, cpu in rows:
        print(
            f"| {args.model} | {n} | {norm} | {robust_ce}/{n} | {robust}/{n} | {ce_s:.1f} | {t_s:.1f} | "
            f"{seconds:.1f} | {n / seconds:.2f} | {seconds / n * PROJECTED_IMAGES / 60:.1f} | {cpu:.1f} | "
            f"{cpu / n * PROJECTED_IMAGES / 60:.1f} |"
        )
    total, total_cpu = sum(row[-2] for row in rows), sum(row[-1] for row in rows)
    print(
        f"| {args.model} | {n} | both | | | | | {total:.1f} | {n / total:.2f} | "
        f"{total / n * PROJECTED_IMAGES / 60:.1f} | {total_cpu:.1f} | {total_cpu / n * PROJECTED_IMAGES / 60:.1f} |"
    )


if __name__ == "__main__":
    main()
