"""The accuracy-robustness frontier of a family: one standard model and its fine-tunes.

Every figure comes from the published ``model_cards/NAME/results.json`` files; each model's
``config.json`` says which regularizer (the method family) and which strength it was trained with and
which weights it started from. :func:`frontier_points` collects them, :func:`plot_frontier` draws two
panels: grad targeted-attack top-k (95% interval) against clean accuracy, and against robust accuracy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .folder import CONFIG_NAME, save_png

RESULTS_NAME = "results.json"
STRENGTH_KEYS = {
    "lga": "lambda_l2",
    "hessian": "lam",
    "gradnorm": "lam",
    "adversarial": "eps",
    "trades": "beta",
}
FAMILY_COLORS = {
    "lga": "tab:red",
    "hessian": "tab:blue",
    "gradnorm": "tab:green",
    "adversarial": "tab:purple",
    "trades": "tab:orange",
}
MAP_METHOD, ATTACK = "grad", "targeted"


@dataclass(frozen=True)
class FrontierPoint:
    """One evaluated model: its family (``standard``, ``control`` or the regularizer's name), the
    strength label, clean and robust accuracy, and the grad targeted-attack top-k with its interval."""

    name: str
    family: str
    strength: str
    accuracy: float
    robust_accuracy: float | None
    robust_attack: str
    topk: float
    topk_low: float
    topk_high: float
    n_images: int


def strength_label(regularizer: dict[str, Any]) -> str:
    """The regularizer's main knob as a short label: ``lambda_l2=0.15``, ``eps=2/255``, ``beta=6``."""
    key = STRENGTH_KEYS.get(regularizer.get("name", "none"))
    if key is None or key not in regularizer:
        return ""
    value = float(regularizer[key])
    if key == "eps" and abs(value * 255 - round(value * 255)) < 1e-6:
        return f"eps={round(value * 255)}/255"
    return f"{key}={value:g}"


def robust_accuracy(results: dict[str, Any]) -> tuple[float | None, str]:
    """L-inf robust accuracy and the attack that measured it: APGD (AutoAttack's gradient part) when
    the results hold it, else PGD."""
    accuracy = results.get("accuracy", {})
    for attack, label in (("apgd", "APGD"), ("pgd", "PGD")):
        record = accuracy.get(attack, {}).get("linf")
        if record:
            steps = f"-{record['steps']}" if attack == "pgd" and "steps" in record else ""
            return record["accuracy"], f"{label}{steps} L-inf {_eps_label(record['eps'])}"
    return None, ""


def _eps_label(eps: float) -> str:
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{eps:.4g}"


def _family(name: str, config: dict[str, Any], standard: str) -> str:
    regularizer = config.get("lga_zoo", {}).get("regularizer", {}).get("name", "none")
    if regularizer != "none":
        return regularizer
    return "standard" if name == standard else "control"


def frontier_points(model_cards: str | Path, standard: str) -> list[FrontierPoint]:
    """The evaluated models of ``standard``'s family under ``model_cards``: ``standard`` itself and every
    model whose config.json says it was fine-tuned from ``standard``'s published weights.

    Args:
        model_cards: the folder holding one model folder per model (``model_cards/``).
        standard: the name of the family's standard model (a folder under ``model_cards``).

    Returns:
        One point per model with a results.json that measured the grad targeted attack, sorted by name.
    """
    root = Path(model_cards)
    standard_results = _read(root / standard / RESULTS_NAME)
    if standard_results is None:
        raise ValueError(f"{standard!r} has no {RESULTS_NAME} under {root}; evaluate it first")
    standard_sha = standard_results["model"]["sha256"]
    points = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        results, config = _read(folder / RESULTS_NAME), _read(folder / CONFIG_NAME)
        if results is None or config is None:
            continue
        start = config.get("lga_zoo", {}).get("init", {})
        if folder.name != standard and start.get("sha256") != standard_sha:
            continue
        stat = results.get("robustness", {}).get(MAP_METHOD, {}).get(ATTACK, {}).get("topk")
        if not stat or stat.get("mean") is None or stat.get("ci95") is None:
            continue
        robust, attack = robust_accuracy(results)
        points.append(
            FrontierPoint(
                name=folder.name,
                family=_family(folder.name, config, standard),
                strength=strength_label(config.get("lga_zoo", {}).get("regularizer", {})),
                accuracy=results["accuracy"]["clean"],
                robust_accuracy=robust,
                robust_attack=attack,
                topk=stat["mean"],
                topk_low=stat["ci95"][0],
                topk_high=stat["ci95"][1],
                n_images=stat.get("n", 0),
            )
        )
    return points


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def plot_frontier(points: list[FrontierPoint], path: str | Path, dpi: int = 100) -> Path:
    """Draw the two frontier panels of ``points`` into the PNG ``path`` (1400x620 pixels at dpi 100).

    Args:
        points: from :func:`frontier_points`.
        path: the PNG file to write (atomically).
        dpi: dots per inch; the figure is 14 x 6.2 inches.

    Returns:
        ``path`` as a Path.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not points:
        raise ValueError("no evaluated models to draw")
    attacks = {p.robust_attack for p in points if p.robust_accuracy is not None}
    fig, axes = plt.subplots(1, 2, figsize=(14, 6.2), dpi=dpi, sharey=True)
    try:
        _panel(axes[0], points, lambda p: p.accuracy, "clean accuracy (CIFAR-10 test, 10,000 images)")
        robust_label = " / ".join(sorted(attacks)) or "robust accuracy"
        robust = [p for p in points if p.robust_accuracy is not None]
        _panel(axes[1], robust, lambda p: p.robust_accuracy, f"robust accuracy ({robust_label})")
        n_images = sorted({p.n_images for p in points})
        axes[0].set_ylabel(
            f"grad map top-k kept under the targeted attack\n(mean, 95% interval; {n_images[0]} images)"
        )
        axes[0].legend(loc="best", fontsize=9)
        fig.suptitle("Explanation robustness against accuracy: fine-tunes of one standard model")
        fig.tight_layout()
        return save_png(path, lambda file: fig.savefig(file, format="png"))
    finally:
        plt.close(fig)


def _panel(ax, points: list[FrontierPoint], x_of, xlabel: str) -> None:
    from matplotlib.ticker import PercentFormatter

    standard = next((p for p in points if p.family == "standard"), None)
    for family in sorted({p.family for p in points} - {"standard", "control"}):
        members = sorted((p for p in points if p.family == family), key=x_of, reverse=True)
        line = ([standard] if standard else []) + members  # each family starts at the standard model
        color = FAMILY_COLORS.get(family, "tab:gray")
        ax.plot([x_of(p) for p in line], [p.topk for p in line], "-", color=color, alpha=0.6, label=family)
        for p in members:
            _marker(ax, p, x_of(p), color, "o")
    for p in points:
        if p.family in ("standard", "control"):
            color, marker = ("black", "*") if p.family == "standard" else ("tab:gray", "s")
            _marker(ax, p, x_of(p), color, marker, label=p.family)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))


def _marker(ax, p: FrontierPoint, x: float, color: str, marker: str, label: str | None = None) -> None:
    yerr = [[p.topk - p.topk_low], [p.topk_high - p.topk]]
    ax.errorbar(x, p.topk, yerr=yerr, fmt=marker, color=color, ms=9, capsize=3, label=label)
    if p.strength:
        ax.annotate(
            p.strength, (x, p.topk), textcoords="offset points", xytext=(6, -12), fontsize=8, color=color
        )
