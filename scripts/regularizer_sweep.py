"""A short look at a regularizer's strength before a fine-tune is spent on it: from a trained zoo
model, a few SGD steps per lambda, then the test accuracy. It shows at which lambda the
regularizer starts to eat the accuracy, in minutes instead of a whole run per value.

    python scripts/regularizer_sweep.py resnet18_w16_cifar10_standard --data-dir DIR \\
        --regularizer hessian --lams 0,1e-4,1e-5,1e-6 --steps 40

Every lambda starts from the same weights and sees the same batches (seeded crops and flips of the
training split); SGD with the recipes' fine-tune settings (lr 0.01, momentum 0.9, nesterov, weight
decay 5e-4), fp32. Prints a Markdown table: the mean cross-entropy and regularizer term over the
last half of the steps, the training accuracy over them and the accuracy on ``--n-test`` seeded
test images.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

import lga_zoo
from lga_zoo.data import augment_cifar, load_cifar10
from lga_zoo.evaluate import clean_accuracy
from lga_zoo.regularizers import build_regularizer
from lga_zoo.state import preserved


def batches(images: torch.Tensor, labels: torch.Tensor, steps: int, batch: int, seed: int):
    """``steps`` seeded, augmented training batches of pixels in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)[: steps * batch]
    for step in range(steps):
        index = order[step * batch : (step + 1) * batch]
        x = images[index].permute(0, 3, 1, 2).float() / 255
        yield augment_cifar(x, generator), labels[index]


def test_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy on uint8 (N, H, W, C) ``images``, in eval mode (the evaluation's own count)."""
    x = images.permute(0, 3, 1, 2)
    with preserved(model), torch.no_grad():
        return clean_accuracy(model, x, labels, 500, torch.device("cpu"))


def run_one(base, regularizer_name, lam, train, test, args) -> dict[str, float]:
    model = copy.deepcopy(base).train()
    regularizer = build_regularizer(regularizer_name, lam=lam) if lam > 0 else build_regularizer("none")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(args.seed + 1)
    late = {"ce": [], "term": [], "correct": 0, "seen": 0}
    start = time.perf_counter()
    for step, (x, y) in enumerate(batches(*train, args.steps, args.batch, args.seed)):
        out = regularizer(model, x, y, generator)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        if step >= args.steps // 2:
            late["ce"].append(out.parts["ce"].item())
            term = [v.item() for k, v in out.parts.items() if k not in ("ce", "total")]
            late["term"].append(sum(term) if term else 0.0)
            late["correct"] += (out.logits.argmax(1) == y).sum().item()
            late["seen"] += len(y)
    return {
        "ce": sum(late["ce"]) / len(late["ce"]),
        "term": sum(late["term"]) / len(late["term"]),
        "train_acc": late["correct"] / late["seen"],
        "test_acc": test_accuracy(model, *test),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="zoo name or model folder to start from")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--regularizer", default="hessian", choices=("hessian", "gradnorm"))
    parser.add_argument("--lams", default="0,1e-4,1e-5,1e-6", help="comma-separated; 0 is plain training")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    lams = [float(v) for v in args.lams.split(",")]
    base = lga_zoo.load(args.model)
    train_split, test_split = load_cifar10(args.data_dir, "train"), load_cifar10(args.data_dir, "test")
    train = (torch.from_numpy(train_split.images), torch.from_numpy(train_split.labels))
    # a seeded subset: the split may be stored class by class
    chosen = torch.randperm(len(test_split), generator=torch.Generator().manual_seed(args.seed))[
        : args.n_test
    ]
    test = (torch.from_numpy(test_split.images)[chosen], torch.from_numpy(test_split.labels)[chosen])
    print(
        f"start: {args.model}, test accuracy {test_accuracy(base, *test):.2%} on {len(chosen)} seeded test images"
    )
    print(
        f"{args.steps} steps of batch {args.batch} per lambda, {args.regularizer}; means over the last half\n"
    )
    print("| lambda | cross-entropy | regularizer term | lambda x term | train acc. | test acc. | seconds |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for lam in lams:
        row = run_one(base, args.regularizer, lam, train, test, args)
        print(
            f"| {lam:g} | {row['ce']:.3f} | {row['term']:.4g} | {lam * row['term']:.3g} | "
            f"{row['train_acc']:.2%} | {row['test_acc']:.2%} | {row['seconds']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
