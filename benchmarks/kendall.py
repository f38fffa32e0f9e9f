"""Time ``lga_zoo.metrics.kendall_tau`` (exact tau-b by merge-sort counting) on pairs of random maps
at 32x32, 64x64 and 224x224, beside scipy.stats.kendalltau on the same pairs, and print a table.

    python benchmarks/kendall.py [--pairs 8] [--sizes 32,64,224]
"""

from __future__ import annotations

import argparse
import time

import torch
from scipy import stats

from lga_zoo.metrics import kendall_tau


def seconds(fn, repeats: int = 3) -> float:
    """The fastest of ``repeats`` runs of ``fn()`` in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8, help="map pairs per batch (default 8)")
    parser.add_argument("--sizes", default="32,64,224", help="map sides (default 32,64,224)")
    args = parser.parse_args()
    print(f"threads: {torch.get_num_threads()}, {args.pairs} map pairs per call")
    print("| map | pixels | kendall_tau s per pair | scipy s per pair | max abs difference |")
    print("|---|---:|---:|---:|---:|")
    for side in (int(s) for s in args.sizes.split(",")):
        g = torch.Generator().manual_seed(side)
        a, b = (
            torch.rand(args.pairs, side, side, generator=g),
            torch.rand(args.pairs, side, side, generator=g),
        )
        a = (a * 20).floor()  # ties, as in maps with exact zeros
        ours = seconds(lambda a=a, b=b: kendall_tau(a, b)) / args.pairs
        pairs = [(x.flatten().numpy(), y.flatten().numpy()) for x, y in zip(a, b)]
        theirs = (
            seconds(lambda pairs=pairs: [stats.kendalltau(x, y) for x, y in pairs], repeats=1) / args.pairs
        )
        expected = torch.tensor([stats.kendalltau(x, y).statistic for x, y in pairs], dtype=torch.float64)
        difference = (kendall_tau(a, b) - expected).abs().max().item()
        print(f"| {side}x{side} | {side * side:,} | {ours:.4f} | {theirs:.4f} | {difference:.1e} |")


if __name__ == "__main__":
    main()
