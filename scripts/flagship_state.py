"""What of the flagship queue is already published in this checkout (scripts/flagship_cpu.sh asks).

    python scripts/flagship_state.py trained NAME       # exit 0: model_cards/NAME was trained from recipes/NAME.yaml and the pinned start
    python scripts/flagship_state.py evaluated NAME N   # exit 0: its results cover >= N images of the pinned weights
    python scripts/flagship_state.py started-elsewhere RUN  # exit 0: the run in folder RUN fine-tunes other weights than the pinned ones
    python scripts/flagship_state.py has-apgd NAME      # exit 0: its results hold accuracy.apgd
    python scripts/flagship_state.py has-quantus NAME   # exit 0: its results hold the Quantus scores

Exit 1 (with the reason on stderr) when the step still has to run. The queue reads the published
files, not markers on the machine, so a new machine picks up where the last one stopped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def trained_reason(name: str, repo: Path = REPO) -> str | None:
    """``None`` when ``model_cards/NAME`` holds pinned weights whose config records the recipe
    ``recipes/NAME.yaml`` says today and, for a fine-tune of a zoo model, that model's pinned weights
    as its start; else why it does not."""
    from lga_zoo.recipe import RecipeError, load_recipe, recipe_from_dict
    from lga_zoo.registry import get_entry

    folder = repo / "model_cards" / name
    if get_entry(name).sha256 is None or not (folder / "config.json").is_file():
        return f"{name} is not published"
    ours = json.loads((folder / "config.json").read_text())["lga_zoo"]
    try:  # read again, so that a recipe key added since then counts at its default value
        published = recipe_from_dict(ours.get("recipe") or {}).to_dict()
    except RecipeError:
        published = None
    if published != load_recipe(repo / "recipes" / f"{name}.yaml").published_dict():
        return f"{name} was published from another recipe than recipes/{name}.yaml"
    init = ours.get("init") or {}
    if init.get("zoo_name") and init.get("sha256") != get_entry(init["zoo_name"]).sha256:
        return f"{name} was fine-tuned from other weights of {init['zoo_name']} than the pinned ones"
    return None


def evaluated_reason(name: str, n_images: int, repo: Path = REPO) -> str | None:
    """``None`` when ``model_cards/NAME/results.json`` is a complete evaluation of the pinned
    weights on at least ``n_images`` robustness images; else why it is not."""
    from lga_zoo.registry import get_entry

    path = repo / "model_cards" / name / "results.json"
    if not path.is_file():
        return f"{name} has no results.json"
    results = json.loads(path.read_text())
    if results["model"]["sha256"] != get_entry(name).sha256:
        return f"{name}'s results are of other weights than the pinned ones"
    measured = results["settings"]["n_robustness"]
    if not results.get("complete") or measured < n_images:
        return f"{name}'s results cover {measured} images, fewer than {n_images}"
    return None


def addition_reason(name: str, section: str, repo: Path = REPO) -> str | None:
    """``None`` when ``model_cards/NAME/results.json`` holds ``section`` ("apgd": accuracy.apgd;
    "quantus": the Quantus scores); else why not."""
    path = repo / "model_cards" / name / "results.json"
    if not path.is_file():
        return f"{name} has no results.json"
    results = json.loads(path.read_text())
    held = results.get("accuracy", {}) if section == "apgd" else results
    return None if section in held else f"{name}'s results hold no {section} figures"


def started_elsewhere(run: Path) -> str | None:
    """Why the (finished or stopped) run in folder ``run`` must not be resumed: it fine-tunes a zoo
    model from other weights than the ones pinned today (the model was published anew since it
    started); ``None`` when it started from the pinned weights, from scratch, or is no run."""
    from lga_zoo.registry import get_entry
    from lga_zoo.train import run_start

    start = run_start(run) or {}
    if start.get("zoo_name") and start.get("sha256") != get_entry(start["zoo_name"]).sha256:
        return f"{run} fine-tunes other weights of {start['zoo_name']} than the pinned ones"
    return None


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "trained":
        reason = trained_reason(argv[1])
    elif len(argv) == 3 and argv[0] == "evaluated" and argv[2].isdigit():
        reason = evaluated_reason(argv[1], int(argv[2]))
    elif len(argv) == 2 and argv[0] in ("has-apgd", "has-quantus"):
        reason = addition_reason(argv[1], argv[0].removeprefix("has-"))
    elif len(argv) == 2 and argv[0] == "started-elsewhere":
        elsewhere = started_elsewhere(Path(argv[1]))
        print(
            elsewhere or f"{argv[1]} holds no run started from other weights than the pinned ones",
            file=sys.stderr,
        )
        return 0 if elsewhere else 1
    else:
        print(__doc__, file=sys.stderr)
        return 2
    if reason:
        print(reason, file=sys.stderr)
    return 1 if reason else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
