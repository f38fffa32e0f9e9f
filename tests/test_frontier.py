"""The frontier picture: points from published results.json and config.json files, and the drawing."""

import json
import re
from pathlib import Path

import pytest
from PIL import Image

import lga_zoo.cli as cli
from lga_zoo.frontier import frontier_points, plot_frontier, robust_accuracy, strength_label

STANDARD_SHA = "a" * 64


def _results(sha: str, accuracy: float, topk: float, pgd: float, apgd: float | None = None) -> dict:
    robust = {"pgd": {"linf": {"eps": 2 / 255, "steps": 20, "accuracy": pgd, "n_images": 500}}}
    if apgd is not None:
        robust["apgd"] = {"linf": {"eps": 2 / 255, "accuracy": apgd, "n_images": 500}}
    stat = {"mean": topk, "ci95": [topk - 0.01, topk + 0.01], "n": 500}
    return {
        "model": {"sha256": sha},
        "accuracy": {"clean": accuracy, **robust},
        "robustness": {"grad": {"targeted": {"topk": stat}}},
    }


def _folder(root: Path, name: str, regularizer: dict, init_sha: str | None, results: dict | None) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    ours = {"regularizer": regularizer, **({"init": {"sha256": init_sha}} if init_sha else {})}
    (folder / "config.json").write_text(json.dumps({"lga_zoo": ours}))
    if results is not None:
        (folder / "results.json").write_text(json.dumps(results))


@pytest.fixture
def family(tmp_path) -> Path:
    root = tmp_path / "model_cards"
    _folder(root, "std", {"name": "none"}, None, _results(STANDARD_SHA, 0.92, 0.20, 0.48))
    _folder(root, "std_control", {"name": "none"}, STANDARD_SHA, _results("c" * 64, 0.921, 0.21, 0.49))
    lga = {"name": "lga", "lambda_l2": 0.15}
    _folder(root, "std_lga", lga, STANDARD_SHA, _results("d" * 64, 0.90, 0.35, 0.56))
    adversarial = {"name": "adversarial", "eps": 2 / 255}
    _folder(root, "std_adv", adversarial, STANDARD_SHA, _results("e" * 64, 0.89, 0.50, 0.70, apgd=0.65))
    _folder(root, "std_older", lga, "b" * 64, _results("f" * 64, 0.80, 0.9, 0.6))  # other start weights
    _folder(root, "std_unevaluated", lga, STANDARD_SHA, None)
    return root


def test_points_are_the_standard_and_its_evaluated_fine_tunes(family):
    points = {p.name: p for p in frontier_points(family, "std")}
    assert sorted(points) == ["std", "std_adv", "std_control", "std_lga"]
    assert points["std"].family == "standard" and points["std_control"].family == "control"
    assert points["std_adv"].family == "adversarial" and points["std_adv"].strength == "eps=2/255"
    assert points["std_lga"].topk_low == pytest.approx(0.34) and points["std_lga"].accuracy == 0.90
    assert points["std_adv"].robust_accuracy == 0.65 and points["std_lga"].robust_accuracy == 0.56


def test_robust_accuracy_prefers_apgd_and_names_the_attack():
    assert robust_accuracy(_results("x", 0.9, 0.3, 0.5, apgd=0.4)) == (0.4, "APGD L-inf 2/255")
    assert robust_accuracy(_results("x", 0.9, 0.3, 0.5)) == (0.5, "PGD-20 L-inf 2/255")
    assert robust_accuracy({"accuracy": {"clean": 0.9}}) == (None, "")


def test_strength_labels():
    assert strength_label({"name": "lga", "lambda_l2": 0.05, "eps": 4 / 255}) == "lambda_l2=0.05"
    assert strength_label({"name": "adversarial", "eps": 1 / 255}) == "eps=1/255"
    assert strength_label({"name": "hessian", "lam": 5e-6}) == "lam=5e-06"
    assert strength_label({"name": "none"}) == ""


def test_plot_and_cli_write_a_wide_png(family, tmp_path, capsys):
    path = plot_frontier(frontier_points(family, "std"), tmp_path / "a.png")
    assert Image.open(path).size[0] >= 1000 and Image.open(path).size[1] >= 500
    out = tmp_path / "b.png"
    args = ["leaderboard", "--plot", str(out), "--family", "std", "--model-cards", str(family)]
    assert cli.main(args) == 0 and out.is_file() and "4 models" in capsys.readouterr().out
    assert cli.main([*args[:3], "--family", "nope", "--model-cards", str(family)]) == 2
    assert "no model folder 'nope'" in capsys.readouterr().err


def test_a_standard_without_results_is_refused(family):
    (family / "std" / "results.json").unlink()
    with pytest.raises(ValueError, match="'std' has no results.json"):
        frontier_points(family, "std")


REPO = Path(__file__).resolve().parents[1]
MENTION = re.compile(
    r"`(resnet18_\w+)`\s+\((\d+\.\d\d)%\):\s+top-k\s+(\d\.\d{3})\s+\[(\d\.\d{3}),\s+(\d\.\d{3})\]"
)


def test_readme_frontier_figures_match_the_published_results():
    """The README's frontier paragraph quotes each model as "`NAME` (A%): top-k T [L, H]"; every
    such figure is its results.json's, and the picture beside it is at least 1000x500."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("### The frontier") :]
    section = section[: section.index("\n## ")]
    mentions = MENTION.findall(section)
    assert len(mentions) == section.count("top-k 0.") + section.count("top-k\n0."), (
        "a quote the test cannot read"
    )
    assert mentions, "the frontier paragraph quotes no model"
    for name, accuracy, topk, low, high in mentions:
        results = json.loads((REPO / "model_cards" / name / "results.json").read_text())
        stat = results["robustness"]["grad"]["targeted"]["topk"]
        assert accuracy == f"{results['accuracy']['clean'] * 100:.2f}", name
        assert [topk, low, high] == [f"{v:.3f}" for v in (stat["mean"], *stat["ci95"])], name
    with Image.open(REPO / "examples" / "frontier.png") as picture:
        assert picture.size[0] >= 1000 and picture.size[1] >= 500
