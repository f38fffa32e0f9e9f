"""The stability score of one explanation, the comparison picture, and the bundled examples."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lga_zoo
from lga_zoo import cli
from lga_zoo.attacks import random_perturbation
from lga_zoo.comparison import compare
from lga_zoo.data import CIFAR10_CLASSES
from lga_zoo.metrics import topk_intersection

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.jpg"))
MODEL = "resnet18_w16_cifar10_lga"  # narrow and fast: the stability and compare mechanics
MAIN_JOB_MODEL = "resnet18_cifar10_lga"  # the README's main job


@pytest.fixture(scope="module")
def model():
    return lga_zoo.load(MODEL)


@pytest.fixture(scope="module")
def main_job_model():
    return lga_zoo.load(MAIN_JOB_MODEL)


@pytest.fixture(scope="module")
def photos():
    return [Image.open(REPO / "examples" / f"{name}.jpg") for name in ("cat", "ship", "frog")]


def test_stability_scores_are_seeded_bounded_and_recorded(model, photos):
    first = model.explain(photos, stability=True)
    again = model.explain(photos, stability=True)
    assert set(first.stability) == {"noise", "attack"}
    for key in ("noise", "attack"):
        values = first.stability[key]
        assert values.shape == (3,) and ((values >= 0) & (values <= 1)).all()
        assert torch.equal(values, again.stability[key])
    settings = first.stability_settings
    assert settings["seed"] == 0 and settings["attack_steps"] == 20 and settings["k"] == 0.1
    assert first.stability_text(1).startswith("stability: top-k ")
    # The attack moves the map much more than noise of the same size does.
    assert (first.stability["attack"] < first.stability["noise"]).all()


def test_noise_score_is_the_topk_intersection_with_the_noisy_maps(model, photos):
    exp = model.explain(photos[0], stability={"noise_draws": 2, "attack_steps": 1, "seed": 5})
    generator = torch.Generator().manual_seed(5)
    x = exp.inputs
    expected = torch.stack(
        [
            topk_intersection(
                exp.attribution, model.explain(random_perturbation(x, 4 / 255, generator)).attribution
            )
            for _ in range(2)
        ]
    ).mean(0)
    assert torch.allclose(exp.stability["noise"], expected.float())
    tiny = model.explain(photos[0], stability={"eps": 1e-7, "attack_steps": 1})
    assert tiny.stability["noise"].item() == 1.0  # no change, same top-k
    seeded = [
        model.explain(photos[0], stability={"seed": seed}).stability["attack"].item() for seed in (0, 1, 1)
    ]
    assert seeded[1] == seeded[2]  # a seed gives the same score every time
    assert len(set(seeded)) == 2  # and another seed another attack start, another score


def test_bad_stability_settings_name_the_setting(model, photos):
    with pytest.raises(ValueError, match="attack_steps"):
        model.explain(photos[0], stability={"attack_steps": 0})
    with pytest.raises(ValueError, match="unknown stability settings \\['draws'\\]"):
        model.explain(photos[0], stability={"draws": 3})


def test_overlay_can_show_the_stability(model, photos):
    exp = model.explain(photos[0], stability=True)
    plain, captioned = exp.overlay(), exp.overlay(show_stability=True)
    assert captioned.width == plain.width and captioned.height > plain.height
    with pytest.raises(ValueError, match="stability=True"):
        model.explain(photos[0]).overlay(show_stability=True)


def test_compare_numbers_match_an_independent_computation(photos, tmp_path):
    names = ["resnet18_w16_cifar10_standard", MODEL]
    result = compare(photos[0], names, attack="noise", seed=3)
    assert [row.model for row in result.rows] == names
    for name, row in zip(names, result.rows):
        m = lga_zoo.load(name)
        x = m.explain(photos[0]).inputs
        noisy = random_perturbation(x, 4 / 255, torch.Generator().manual_seed(3))
        expected = topk_intersection(
            m.explain(photos[0]).attribution, m.explain(noisy, target=row.predicted).attribution
        )
        assert row.topk == pytest.approx(expected.item())
        assert row.predicted == "cat"
    path = result.save(tmp_path / "noise.png")
    with Image.open(path) as picture:
        assert picture.width >= 400 and picture.height >= 200


def test_targeted_comparison_moves_the_map_more_than_noise(photos):
    names = ["resnet18_w16_cifar10_standard"]
    attacked = compare(photos[1], names, attack="targeted", steps=30).rows[0]
    noisy = compare(photos[1], names, attack="noise").rows[0]
    assert attacked.topk < noisy.topk
    with pytest.raises(ValueError, match="attack='pgd'.*targeted"):
        compare(photos[1], names, attack="pgd")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_each_bundled_example_is_predicted_as_its_file_name(main_job_model, path):
    true_class = path.stem.split("_")[0]
    assert true_class in CIFAR10_CLASSES
    classes, _ = main_job_model.predict(Image.open(path))
    assert main_job_model.labels[classes.item()] == true_class


def test_the_readme_main_job_and_ci_explain_with_the_main_job_model():
    readme = (REPO / "README.md").read_text()
    main_job = next(line for line in readme.splitlines() if line.startswith("python3 -m venv .venv"))
    assert f"lga-zoo explain examples/cat.jpg --model {MAIN_JOB_MODEL} " in main_job
    assert f"--model {MAIN_JOB_MODEL} " in (REPO / ".ci" / "run").read_text()


def test_examples_cover_every_class_and_have_a_readme():
    assert {p.stem.split("_")[0] for p in EXAMPLES} == set(CIFAR10_CLASSES)
    text = (REPO / "examples" / "README.md").read_text()
    assert all(p.name in text for p in EXAMPLES)


def test_cli_explain_several_images_with_stability_and_compare(tmp_path, capsys):
    images = [str(REPO / "examples" / "cat.jpg"), str(REPO / "examples" / "dog.jpg")]
    out = tmp_path / "maps"
    assert cli.main(["explain", *images, "--model", MODEL, "--out", str(out), "--stability"]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["cat_grad.png", "dog_grad.png"]
    assert printed.count("stability: top-k") == 2
    figure = tmp_path / "compare.png"
    names = "resnet18_w16_cifar10_standard," + MODEL
    argv = [
        "compare",
        images[0],
        "--models",
        names,
        "--attack",
        "targeted",
        "--steps",
        "10",
        "--out",
        str(figure),
    ]
    assert cli.main(argv) == 0
    assert "top-k intersection" in capsys.readouterr().out
    with Image.open(figure) as picture:
        assert picture.width >= 400 and picture.height >= 200
    assert cli.main(["explain", str(tmp_path), "--model", MODEL]) == 2
    assert "is a folder" in capsys.readouterr().err


def tiny_model(input_size, channels=3, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(channels, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(16, 10),
    )  # fmt: skip
    return lga_zoo.wrap(net, mean=(0.5,) * channels, std=(0.25,) * channels, input_size=input_size)


def test_each_comparison_row_shows_its_own_models_input(photos):
    """Two models of other input sizes: each row's input picture is what that model saw (the first
    model's 16x16 input was drawn in every row)."""
    small, large = tiny_model((3, 16, 16)), tiny_model((3, 24, 24), seed=1)
    comparison = compare(photos[0], [small, large], attack="noise")
    assert [tuple(r.input.shape) for r in comparison.rows] == [(3, 16, 16), (3, 24, 24)]
    drawn = [ax.get_images()[0].get_array().shape for ax in comparison.figure.axes[0:8:4]]
    assert drawn == [(16, 16, 3), (24, 24, 3)]
    assert torch.equal(comparison.input, comparison.rows[0].input)


def test_a_grey_comparison_is_drawn_in_grey_on_the_pixel_scale():
    grey = Image.fromarray((np.linspace(0.2, 0.25, 16 * 16).reshape(16, 16) * 255).astype(np.uint8), "L")
    comparison = compare(grey, [tiny_model((1, 16, 16), channels=1)], attack="noise")
    picture = comparison.figure.axes[0].get_images()[0]
    assert picture.get_cmap().name == "gray" and picture.get_clim() == (0, 1)


def test_compare_refuses_a_batch_and_saves_only_complete_pngs(photos, tmp_path, monkeypatch):
    model = tiny_model((3, 16, 16))
    with pytest.raises(ValueError, match=r"compare takes one image, got a batch of 3"):
        compare(photos, [model], attack="noise")
    comparison = compare(photos[0], [model], attack="noise")
    with pytest.raises(ValueError, match=r"'fig.jpg': the picture is written as PNG"):
        comparison.save(tmp_path / "fig.jpg")
    (tmp_path / "maps.png").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        comparison.save(tmp_path / "maps.png")
    good = comparison.save(tmp_path / "fig.png")
    before = good.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(comparison.figure, "savefig", disk_full)
    with pytest.raises(OSError, match="No space left"):
        comparison.save(good)
    assert good.read_bytes() == before and Image.open(good).size[0] > 0  # the old picture is whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png", "maps.png"]  # no temporary left


def test_an_explanation_saves_only_pngs(model, photos, tmp_path):
    exp = model.explain(photos[0])
    with pytest.raises(ValueError, match=r"'cat.jpg': the picture is written as PNG"):
        exp.save(tmp_path / "cat.jpg")
    assert Image.open(exp.save(tmp_path / "cat.png")).format == "PNG"


@pytest.mark.parametrize("beta", [float("nan"), float("inf"), 0.0])
def test_stability_refuses_a_softplus_beta_that_is_not_finite_and_positive(model, photos, beta):
    """A NaN beta made the attacked input NaN and still gave a plausible attack score (0.19)."""
    with pytest.raises(ValueError, match="softplus_beta=.* must be a finite positive number"):
        model.explain(photos[0], stability={"softplus_beta": beta})


def test_the_package_compare_stays_the_function_after_its_module_is_imported():
    import importlib

    importlib.import_module("lga_zoo.comparison")
    assert lga_zoo.compare is compare
