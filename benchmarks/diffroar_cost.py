"""What one model's DiffROAR costs: the grad-map rate of the model and the retrainer's step rate,
measured on slices of the real data, and the projected time of a whole run.

    python benchmarks/diffroar_cost.py MODEL --data-dir DIR [--map-images 256] [--train-images 512]
                                       [--epochs 1]

Prints, for the maps (MODEL's grad map of every train and test image) and for one retraining
(the default retrainer of :mod:`lga_zoo.diffroar` on ``--train-images`` masked train images), the
wall time and the process CPU time per image or step, and the projection of a full run (60,000
maps; 8 retrainings of ``RetrainerRecipe().epochs`` epochs over 50,000 images with their BatchNorm
pass and a 10,000-image test) from each. On a machine shared with other jobs the wall time is
inflated by the waiting; the CPU time is what the work itself took on its threads (with one thread
it is the wall time of an unshared run).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from torch import Tensor

from lga_zoo.data import ImageArrays, load_cifar10
from lga_zoo.diffroar import (
    DiffRoarSettings,
    MaskedSplit,
    _orders_of,
    build_retrainer,
    channel_mean,
    grad_maps,
    masked_accuracy,
    recompute_batchnorm,
    train_retrainer,
)
from lga_zoo.hub import load


def timed(work) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``work()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def subset(data: ImageArrays, n: int) -> ImageArrays:
    """``n`` images drawn evenly from ``data`` (the folder layouts are sorted by class)."""
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n].numpy()
    return ImageArrays(data.images[idx], data.labels[idx], data.classes, data.name)


def time_maps(model_name: str, sample: ImageArrays, n_maps: int, settings: DiffRoarSettings) -> None:
    """Print the grad-map rate of ``model_name`` on ``sample`` and the projection to ``n_maps``."""
    model = load(model_name)
    probe = torch.from_numpy(sample.images[:8]).permute(0, 3, 1, 2).float().div(255)
    with grad_maps(model, torch.device("cpu"), probe) as maps:
        _orders_of(maps, sample, 0, 8, 8)  # warm-up
        wall, cpu = timed(lambda: _orders_of(maps, sample, 0, len(sample), settings.map_batch_size))
    n = len(sample)
    print(
        f"threads {torch.get_num_threads()}; {model_name} grad maps of {n} images, batch {settings.map_batch_size}:"
    )
    print(f"  {1000 * wall / n:.1f} ms/image wall, {1000 * cpu / n:.1f} ms/image CPU")
    print(f"  {n_maps} maps: {n_maps * wall / n / 60:.1f} min wall, {n_maps * cpu / n / 60:.1f} min CPU")


def time_retraining(
    split: MaskedSplit, fill: Tensor, epochs: int, n_train: int, n_test: int, settings: DiffRoarSettings
) -> None:
    """Print the retrainer's step rate over ``epochs`` on ``split`` and the projection of a full run."""
    device, recipe = torch.device("cpu"), replace(settings.retrainer, epochs=epochs)
    model = build_retrainer(recipe, 10, 0)
    steps = epochs * (len(split) // recipe.batch_size)
    train_wall, train_cpu = timed(lambda: train_retrainer(model, split, fill, recipe, 0, device))
    bn_wall, bn_cpu = timed(lambda: recompute_batchnorm(model, split, fill, recipe.batch_size, 0, device, 2))
    test_wall, test_cpu = timed(lambda: masked_accuracy(model, split, fill, recipe.batch_size, device))
    print(f"retrainer {recipe.architecture}, batch {recipe.batch_size}, amp {recipe.amp}, {steps} steps:")
    full_steps = settings.retrainer.epochs * (n_train // recipe.batch_size)
    jobs = len(settings.jobs())
    for what, step_s, bn_s, test_s in (
        ("wall", train_wall / steps, bn_wall / 2, test_wall / len(split)),
        ("CPU", train_cpu / steps, bn_cpu / 2, test_cpu / len(split)),
    ):
        one = full_steps * step_s + settings.retrainer.batchnorm_batches * bn_s + n_test * test_s
        print(
            f"  {what}: {step_s:.2f} s/step, BatchNorm pass {bn_s:.2f} s/batch, test {1000 * test_s:.2f} ms/image; "
            f"one retraining ({settings.retrainer.epochs} epochs, {full_steps} steps) {one / 60:.1f} min, "
            f"{jobs} retrainings {jobs * one / 60:.1f} min"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--map-images", type=int, default=256)
    parser.add_argument("--train-images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    settings = DiffRoarSettings()
    train, test = load_cifar10(args.data_dir, "train"), load_cifar10(args.data_dir, "test")
    time_maps(args.model, subset(train, args.map_images), len(train) + len(test), settings)
    small = subset(train, args.train_images)
    # which pixels are kept does not change the speed: random pixel orders stand in for the maps'
    orders = torch.rand(len(small), 32 * 32, generator=torch.Generator().manual_seed(0)).argsort(1)
    split = MaskedSplit.of(small, orders.to(torch.int16), 0.2, "top")
    time_retraining(split, channel_mean(train), args.epochs, len(train), len(test), settings)


if __name__ == "__main__":
    main()
