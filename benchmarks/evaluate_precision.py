"""Do bf16 attacks (or the fused Softplus kernel, or BatchNorm folded into the convolutions) give the
same evaluation figures, and how much faster are they?

    python benchmarks/evaluate_precision.py MODEL --data-dir DIR [--n-images 50] [--methods grad]
        [--compare precision|softplus|batchnorm]

Evaluates MODEL twice on the same seeded test images and prints a Markdown table: each figure of the
reference run (mean [95% interval]) and of the candidate run, whether the candidate's mean lies
inside the reference's interval, and the time of each run.

- ``--compare precision`` (default): every attack in fp32 against the attacks under bf16 autocast
  (``lga-zoo evaluate --attack-amp bf16``; maps and similarities stay fp32). Only when every figure
  matches is ``--attack-amp bf16`` used for a published evaluation.
- ``--compare softplus``: bf16 attacks with PyTorch's Softplus (how the evaluations before the fused
  kernel ran) against the same with :class:`lga_zoo.fused_softplus.FusedSoftplus`, which
  ``lga_zoo.evaluate.evaluate`` uses on the CPU.
- ``--compare batchnorm``: bf16 attacks with the model's modules as loaded against the same with
  every BatchNorm that follows a convolution folded into it (:mod:`lga_zoo.batchnorm_folding`, what
  ``lga_zoo.evaluate.evaluate`` does by default).

Whatever a comparison does not vary runs as ``lga-zoo evaluate`` runs it (on a CPU without native
bf16 kernels the "bf16" runs are fp32, as there).
"""

from __future__ import annotations

import argparse
import time

import torch

from lga_zoo.evaluate import EvalSettings, run_evaluation

RUNS = {  # --compare: (label, attack_amp, fused_softplus, fold_batchnorm) of the reference run, then the candidate
    "precision": (("fp32 attacks", "none", True, True), ("bf16 attacks", "bf16", True, True)),
    "softplus": (("PyTorch Softplus", "bf16", False, True), ("fused Softplus", "bf16", True, True)),
    "batchnorm": (("BatchNorm as loaded", "bf16", True, False), ("BatchNorm folded", "bf16", True, True)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="zoo name or model folder")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--n-images", type=int, default=50)
    parser.add_argument("--methods", default="grad")
    parser.add_argument("--attack-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--compare", default="precision", choices=sorted(RUNS))
    args = parser.parse_args()
    common = dict(
        methods=tuple(args.methods.split(",")),
        n_robustness=args.n_images,
        n_accuracy=args.n_images,
        attack_steps=args.attack_steps,
        batch_size=args.batch_size,
        attack_map="grad",
    )
    (ref_label, *ref_run), (new_label, *new_run) = RUNS[args.compare]
    results, seconds = [], []
    for amp, fused, folded in (ref_run, new_run):
        started = time.perf_counter()
        settings = EvalSettings(**common, attack_amp=amp)
        results.append(
            run_evaluation(
                args.model,
                args.data_dir,
                None,
                settings,
                progress=False,
                fused_softplus=fused,
                fold_batchnorm=folded,
            )
        )
        seconds.append(time.perf_counter() - started)
    reference, candidate = results
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, model {args.model}, "
        f"{args.n_images} test images, {args.attack_steps} attack steps\n"
    )
    print(f"| figure | {ref_label}: mean [95% interval] | {new_label}: mean | inside the interval |")
    print("|---|---|---:|:---:|")
    all_inside = True
    for norm, record in reference["accuracy"].get("pgd", {}).items():
        other = candidate["accuracy"]["pgd"][norm]["accuracy"]
        print(f"| PGD {norm} accuracy | {record['accuracy']:.3f} | {other:.3f} | (a count, no interval) |")
    for method, attacks in reference["robustness"].items():
        for attack, metrics in attacks.items():
            for metric, value in metrics.items():
                if not isinstance(value, dict):
                    continue
                low, high = value["ci95"]
                other = candidate["robustness"][method][attack][metric]["mean"]
                inside = low <= other <= high
                all_inside &= inside
                print(
                    f"| {method} {attack} {metric} | {value['mean']:.4f} [{low:.4f}, {high:.4f}] | "
                    f"{other:.4f} | {'yes' if inside else 'NO'} |"
                )
    print(
        f"\n{ref_label} {seconds[0]:.0f} s, {new_label} {seconds[1]:.0f} s "
        f"({seconds[0] / seconds[1]:.2f}x); every figure inside: {all_inside}"
    )


if __name__ == "__main__":
    main()
