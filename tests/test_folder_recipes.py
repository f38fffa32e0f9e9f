"""Recipes beyond CIFAR-10: an image folder of one's own, any timm backbone, pretrained init."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from conftest import kill_after_saves
from PIL import Image
from safetensors.torch import save_file

import lga_zoo
from lga_zoo import cli
from lga_zoo.recipe import RecipeError, recipe_from_dict
from lga_zoo.train import build_backbone

RECIPE = {
    "name": "tiny_folder_lga",
    "architecture": "resnet10t",
    "init": "scratch",
    "dataset": "folder",
    "input_size": [3, 64, 64],
    "epochs": 1,
    "batch_size": 16,
    "optimizer": {"name": "adamw", "lr": 1.0e-3, "weight_decay": 1.0e-2},
    "schedule": {"name": "cosine", "warmup_epochs": 0},
    "regularizer": {"name": "lga", "eps": "4/255", "lambda_l2": 0.01, "lambda_cos": 0.1},
    "seed": 0,
}


def write_two_class_folder(root: Path, train: int = 20, val: int = 6) -> Path:
    """airplane and automobile, 64x64 JPEGs (blue-ish and red-ish noise), plus one broken file."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for name, colour in (("airplane", (40, 80, 200)), ("automobile", (200, 60, 40))):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, 40, (64, 64, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.jpg")
    (root / "train" / "airplane" / "zz_broken.jpg").write_text("not a JPEG")
    return root


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory):
    """lga-zoo train then lga-zoo evaluate on a two-class folder, as a user runs them."""
    root = tmp_path_factory.mktemp("folder_recipe")
    data = write_two_class_folder(root / "data")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    out = root / "out"
    assert cli.main(["train", str(recipe), "--data-dir", str(data), "--out", str(out), "--no-progress"]) == 0
    argv = ["evaluate", str(out), "--data-dir", str(data), "--n-images", "16", "--attacks", "random"]
    assert cli.main([*argv, "--no-progress"]) == 0
    return out, data


def test_train_and_evaluate_a_folder_write_a_model_folder(trained_folder):
    out, _ = trained_folder
    for name in ("model.safetensors", "config.json", "README.md", "results.json"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["split"] == "val" and results["accuracy"]["n_images"] == 12
    assert "grad" in results["robustness"] and results["robustness"]["grad"]["random"]["topk"]["n"] == 12
    card = (out / "README.md").read_text()
    assert "tiny_folder_lga" in card and "top-1 accuracy" in card
    config = json.loads((out / "config.json").read_text())
    assert config["lga_zoo"]["data"]["train_images"] == 41  # the broken file is listed, then skipped
    assert config["lga_zoo"]["data"]["eval_split"] == "val"


def test_the_folder_loads_explains_and_reproduces_the_eval_transform(trained_folder):
    from timm.data import create_transform

    out, data = trained_folder
    model = lga_zoo.load(out)
    assert model.labels == ["airplane", "automobile"] and model.entry is None
    image = Image.open(data / "val" / "automobile" / "000.jpg")
    exp = model.explain(image)
    assert exp.attribution.shape == (1, 64, 64)
    config = json.loads((out / "config.json").read_text())
    recorded = config["lga_zoo"]["data"]["transforms"]
    assert config["pretrained_cfg"]["crop_pct"] == recorded["crop_pct"]
    assert config["pretrained_cfg"]["interpolation"] == recorded["interpolation"]
    big = image.resize((100, 80))
    timm_eval = create_transform(
        input_size=tuple(recorded["input_size"]),
        interpolation=recorded["interpolation"],
        crop_pct=recorded["crop_pct"],
        mean=(0, 0, 0),
        std=(1, 1, 1),
    )
    ours = model.transforms()(big)
    reference = timm_eval(big)
    assert ours.dtype == torch.float32 and ours.shape == reference.shape
    assert (ours - reference).abs().max() < 1e-6


def test_unreadable_training_files_are_reported_by_path(tiny_folder_recipe_run):
    assert "zz_broken.jpg" in tiny_folder_recipe_run


@pytest.fixture
def tiny_folder_recipe_run(tmp_path, capfd):
    data = write_two_class_folder(tmp_path / "data", train=4, val=2)
    recipe = recipe_from_dict({**RECIPE, "batch_size": 4})
    from lga_zoo.train import train

    train(recipe, data, tmp_path / "out", progress=False)
    return capfd.readouterr().err


def _timm_state_dict(architecture: str, seed: int) -> dict:
    torch.manual_seed(seed)
    return {k: v.contiguous() for k, v in timm.create_model(architecture).state_dict().items()}


def test_pretrained_init_reads_the_hf_cache_offline_and_a_local_file(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    weights = _timm_state_dict("resnet10t", seed=7)
    hub_id = timm.models.get_pretrained_cfg("resnet10t").hf_hub_id
    repo = tmp_path / "hf" / f"models--{hub_id.replace('/', '--')}"
    commit = "c" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(weights, str(repo / "snapshots" / commit / "model.safetensors"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    recipe = recipe_from_dict({**RECIPE, "init": "pretrained"})
    backbone = build_backbone(recipe, num_classes=2)
    assert torch.equal(backbone.conv1[0].weight, weights["conv1.0.weight"])
    assert backbone.get_classifier().out_features == 2  # a new 2-class head
    local = tmp_path / "mine.safetensors"
    other = _timm_state_dict("resnet10t", seed=8)
    save_file(other, str(local))
    from_file = build_backbone(
        recipe_from_dict({**RECIPE, "init": "pretrained", "pretrained_file": str(local)}), 2
    )
    assert torch.equal(from_file.conv1[0].weight, other["conv1.0.weight"])


def test_pretrained_offline_with_an_empty_cache_fails_before_training(tmp_path):
    data = write_two_class_folder(tmp_path / "data", train=2, val=1)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "init": "pretrained"}))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "empty"),
        "HF_HOME": str(tmp_path),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lga_zoo.cli",
            "train",
            str(recipe),
            "--data-dir",
            str(data),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "resnet10t" in done.stderr and "timm/resnet10t" in done.stderr and "pretrained_file" in done.stderr
    assert not (tmp_path / "o" / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dataset": "imagenet"}, "dataset='imagenet'.*folder"),
        ({"input_size": [64, 64]}, "input_size"),
        ({"input_size": [3, 64, "64"]}, "input_size"),
        ({"pretrained_file": "w.safetensors"}, "needs init: pretrained"),
    ],
)
def test_folder_recipe_values_are_checked(change, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict({**RECIPE, **change})


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["standard", "lga", "hessian", "lga_pretrained"])
def test_imagenet100_recipes_run_a_few_steps(kind, tmp_path):
    """Each ImageNet-100 GPU recipe, as written (224x224, its regularizer and optimizer), for two
    steps on a tiny generated ImageNet-100 folder (one image per class and split)."""
    from lga_zoo.data import imagenet100_wnids
    from lga_zoo.recipe import load_recipe
    from lga_zoo.train import train

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for wnid in imagenet100_wnids():
            folder = tmp_path / "in100" / split / wnid
            folder.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / "a.JPEG")
    recipe = load_recipe(
        Path(__file__).resolve().parents[1] / "recipes" / f"resnet18_imagenet100_{kind}.yaml"
    )
    recipe.epochs, recipe.batch_size, recipe.max_train_images = 1, 2, 4
    if recipe.init == "pretrained":
        weights = tmp_path / "resnet18.safetensors"
        save_file(_timm_state_dict("resnet18", seed=1), str(weights))
        recipe.pretrained_file = str(weights)
    recipe.validate()
    out = train(recipe, tmp_path / "in100", tmp_path / "out", progress=False)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and np.isfinite(log[0]["total"]) and 0 <= log[0]["test_acc"] <= 1
    model = lga_zoo.load(out)
    assert len(model.labels) == 100 and model.input_size == (3, 224, 224)


def test_folder_runs_resume_mid_epoch_to_the_same_weights(tmp_path, monkeypatch):
    """The random crops and flips of folder data depend on (seed, epoch, image) only, so a run
    killed inside an epoch resumes to the same weights as an uninterrupted one."""
    from safetensors.torch import load_file

    from lga_zoo.train import train

    data = write_two_class_folder(tmp_path / "data", train=6, val=2)
    recipe = recipe_from_dict({**RECIPE, "batch_size": 4, "epochs": 2, "regularizer": {"name": "none"}})
    train(recipe, data, tmp_path / "full", progress=False, checkpoint_seconds=0)
    kill_after_saves(monkeypatch, 2)  # the second save is mid-epoch
    with pytest.raises(KeyboardInterrupt):
        train(recipe, data, tmp_path / "split", progress=False, checkpoint_seconds=0)
    assert torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)["step_in_epoch"] == 2
    train(recipe, data, tmp_path / "split", resume=True, progress=False, checkpoint_seconds=0)
    full = load_file(str(tmp_path / "full" / "model.safetensors"))
    split = load_file(str(tmp_path / "split" / "model.safetensors"))
    for key in full:
        assert torch.equal(full[key], split[key]), key


def test_resuming_a_finished_run_keeps_its_folder(tiny_cifar, tmp_path):
    from lga_zoo.train import train

    def recipe(epochs):
        return recipe_from_dict(
            {"name": "t", "architecture": "resnet18_w16_cifar", "epochs": epochs, "batch_size": 20}
        )

    train(recipe(2), tiny_cifar, tmp_path, progress=False)
    (tmp_path / "README.md").write_text("a card with evaluation results")
    train(recipe(2), tiny_cifar, tmp_path, resume=True, progress=False)
    assert (tmp_path / "README.md").read_text() == "a card with evaluation results"
    with pytest.raises(ValueError, match="trained 2 epochs, more than the 1 epochs asked for"):
        train(recipe(1), tiny_cifar, tmp_path, resume=True, progress=False)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: [p.unlink() for p in (d / "train" / "automobile").iterdir()], "holds no images"),
        (lambda d: (d / "val" / "bus").mkdir(), r"class folders \['bus'\] that the training classes"),
        (
            lambda d: [shutil.rmtree(d / split / "automobile") for split in ("train", "val")],
            r"holds 1 class folder\(s\) \['airplane'\]: a classifier needs two or more",
        ),
    ],
)
def test_a_folder_data_set_that_cannot_train_a_classifier_is_named(tmp_path, damage, message):
    data = write_two_class_folder(tmp_path / "data", train=2, val=1)
    damage(data)
    from lga_zoo.data import DataError
    from lga_zoo.datasets import prepare_data

    recipe = recipe_from_dict({**RECIPE, "batch_size": 2})
    with pytest.raises(DataError, match=message):
        prepare_data(recipe, data, build_backbone(recipe, 2).pretrained_cfg)
