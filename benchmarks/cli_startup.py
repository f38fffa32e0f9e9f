"""Time how long the CLI takes to start: ``lga-zoo --help`` and ``lga-zoo list`` beside
``python -c "import torch"`` in the same run, each the median of a few runs, and print a table with
each one's ratio to the torch import.

    python benchmarks/cli_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "lga-zoo --help": [sys.executable, "-m", "lga_zoo.cli", "--help"],
    "lga-zoo list": [sys.executable, "-m", "lga_zoo.cli", "list"],
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
}


def median_seconds(command: list[str], runs: int) -> float:
    """The median wall time of ``runs`` runs of ``command`` (output discarded)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env, cwd=REPO)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per command (default 5)")
    args = parser.parse_args()
    subprocess.run(COMMANDS['python -c "import torch"'], check=True)  # warm the file cache first
    seconds = {name: median_seconds(command, args.runs) for name, command in COMMANDS.items()}
    torch_seconds = seconds['python -c "import torch"']
    width = max(map(len, seconds))
    print(f"{'command':{width}s}  median s  / import torch")
    for name, value in seconds.items():
        print(f"{name:{width}s}  {value:8.2f}  {value / torch_seconds:13.2f}")


if __name__ == "__main__":
    main()
