"""Do bf16 attacks give the same evaluation figures as fp32 attacks, and how much faster are they?

    python benchmarks/evaluate_precision.py MODEL --data-dir DIR [--n-images 50] [--methods grad]

Evaluates MODEL twice on the same seeded test images, with every attack in fp32 and with the
attacks under bf16 autocast (``lga-zoo evaluate --attack-amp bf16``; maps and similarities stay
fp32), and prints a Markdown table: each figure in fp32 (mean [95% interval]) and in bf16, whether
the bf16 mean lies inside the fp32 interval, and the time of each run. Only when every figure
matches is ``--attack-amp bf16`` used for a published evaluation.
"""

from __future__ import annotations

import argparse
import time

import torch

from lga_zoo.evaluate import EvalSettings, run_evaluation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="zoo name or model folder")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--n-images", type=int, default=50)
    parser.add_argument("--methods", default="grad")
    parser.add_argument("--attack-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args()
    common = dict(
        methods=tuple(args.methods.split(",")),
        n_robustness=args.n_images,
        n_accuracy=args.n_images,
        attack_steps=args.attack_steps,
        batch_size=args.batch_size,
        attack_map="grad",
    )
    runs = {}
    for amp in ("none", "bf16"):
        started = time.perf_counter()
        runs[amp] = run_evaluation(
            args.model, args.data_dir, None, EvalSettings(**common, attack_amp=amp), progress=False
        )
        runs[amp]["seconds"] = time.perf_counter() - started
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, model {args.model}, "
        f"{args.n_images} test images, {args.attack_steps} attack steps\n"
    )
    print(
        "| figure | fp32 attacks: mean [95% interval] | bf16 attacks: mean | bf16 inside the fp32 interval |"
    )
    print("|---|---|---:|:---:|")
    all_inside = True
    for norm, record in runs["none"]["accuracy"].get("pgd", {}).items():
        other = runs["bf16"]["accuracy"]["pgd"][norm]["accuracy"]
        print(f"| PGD {norm} accuracy | {record['accuracy']:.3f} | {other:.3f} | (a count, no interval) |")
    for method, attacks in runs["none"]["robustness"].items():
        for attack, metrics in attacks.items():
            for metric, value in metrics.items():
                if not isinstance(value, dict):
                    continue
                low, high = value["ci95"]
                other = runs["bf16"]["robustness"][method][attack][metric]["mean"]
                inside = low <= other <= high
                all_inside &= inside
                print(
                    f"| {method} {attack} {metric} | {value['mean']:.4f} [{low:.4f}, {high:.4f}] | "
                    f"{other:.4f} | {'yes' if inside else 'NO'} |"
                )
    print(
        f"\nfp32 attacks {runs['none']['seconds']:.0f} s, bf16 attacks {runs['bf16']['seconds']:.0f} s "
        f"({runs['none']['seconds'] / runs['bf16']['seconds']:.2f}x); every figure inside: {all_inside}"
    )


if __name__ == "__main__":
    main()
