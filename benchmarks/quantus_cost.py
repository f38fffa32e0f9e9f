"""What the Quantus scores cost per image: each score of :mod:`lga_zoo.quantus_scores` timed on a
few of the evaluation's robustness images, and the projection to a whole run.

    python benchmarks/quantus_cost.py MODEL --data-dir DIR [--images 4] [--nr-samples 10]
                                      [--project 200]

Prints one row per score: the wall and the process CPU seconds per image, and the projected minutes of
``--project`` images from each; the last row sums them. On a machine shared with other jobs the wall time
is inflated by the waiting; the CPU time is what the work itself took on its threads (with one thread,
OMP_NUM_THREADS=1, it is the wall time of an unshared run). The first batch of maps (warm-up) is left out.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import replace

import numpy as np
import torch

from lga_zoo.datasets import eval_arrays
from lga_zoo.diffroar import grad_maps
from lga_zoo.evaluate import _dataset, robustness_order
from lga_zoo.hub import load
from lga_zoo.quantus_scores import SCORES, QuantusSettings, measure_batch, quantus_module


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="zoo name or model folder")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--images", type=int, default=4, help="images timed (default 4)")
    parser.add_argument("--nr-samples", type=int, default=QuantusSettings().nr_samples)
    parser.add_argument("--project", type=int, default=200, help="images of the projected run (default 200)")
    parser.add_argument("--scores", default=",".join(SCORES), help=f"comma-separated, of {','.join(SCORES)}")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # Quantus warns on every call
    quantus_module()  # its import (scikit-learn, OpenCV, ...) is not timed

    model = load(args.model)
    data = eval_arrays(model, args.data_dir, None, _dataset(model))
    order = robustness_order(len(data.labels), 0)[: args.images].numpy()
    x = torch.from_numpy(np.ascontiguousarray(data.images[order].transpose(0, 3, 1, 2))).float().div(255)
    settings = QuantusSettings(nr_samples=args.nr_samples, batch_size=args.images)
    scores = tuple(s.strip() for s in args.scores.split(",") if s.strip())
    rows = []
    with grad_maps(model, torch.device("cpu"), x[:8]) as maps:
        maps(x, torch.zeros(len(x), dtype=torch.long))  # warm-up
        measure_batch(model, maps, x[:1], 0, replace(settings, nr_samples=1), scores)  # Quantus' first calls
        wall, cpu = time.perf_counter(), time.process_time()
        maps(x, torch.zeros(len(x), dtype=torch.long))
        rows.append(("one grad map", time.perf_counter() - wall, time.process_time() - cpu))
        for score in scores:
            wall, cpu = time.perf_counter(), time.process_time()
            values = measure_batch(model, maps, x, 0, settings, (score,))
            rows.append((score, time.perf_counter() - wall, time.process_time() - cpu))
            print(f"{score}: {np.round(values[score], 4).tolist()}", flush=True)
    n = len(x)
    print(
        f"\n{args.model}: {n} images, nr_samples {args.nr_samples}, ROAD at {len(settings.road_percentages)} "
        f"percentages, torch threads {torch.get_num_threads()}"
    )
    print(f"| score | wall s/image | CPU s/image | {args.project} images, min (wall) | (CPU) |")
    print("|---|---:|---:|---:|---:|")
    total_wall = total_cpu = 0.0
    for name, wall, cpu in rows:
        if name != "one grad map":
            total_wall, total_cpu = total_wall + wall, total_cpu + cpu
        print(
            f"| {name} | {wall / n:.3f} | {cpu / n:.3f} | {wall / n * args.project / 60:.1f} | "
            f"{cpu / n * args.project / 60:.1f} |"
        )
    print(
        f"| all scores | {total_wall / n:.3f} | {total_cpu / n:.3f} | {total_wall / n * args.project / 60:.1f} | "
        f"{total_cpu / n * args.project / 60:.1f} |"
    )


if __name__ == "__main__":
    main()
