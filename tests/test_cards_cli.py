import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import lga_zoo.cli as cli
import lga_zoo.hub as hub
import lga_zoo.registry as registry
from lga_zoo.cards import published_family_results, render_card, summary_metrics
from lga_zoo.hub import save_folder, untrained
from lga_zoo.leaderboard import leaderboard_markdown

REPO = Path(__file__).resolve().parents[1]
NAME = "resnet18_w16_cifar10_lga"
FLAGSHIP_FAMILY = tuple(f"resnet18_cifar10_{kind}" for kind in ("standard", "control", "lga", "hessian"))


def first_evaluated(names):
    """The first of ``names`` whose model folder holds a results.json: a member replaced by new
    weights is not evaluated for a while."""
    return next(n for n in names if (REPO / "model_cards" / n / "results.json").is_file())


def sample_results(accuracy=0.8123):
    stat = lambda m: {"mean": m, "ci95": [m - 0.01, m + 0.01], "n": 100}  # noqa: E731
    return {
        "model": {"name": NAME, "sha256": "0" * 64},
        "data": {"name": "CIFAR-10 (JPEG copy)", "split": "test", "n_robustness": 100},
        "seed": 0,
        "command": "lga-zoo evaluate resnet18_w16_cifar10_lga --data-dir DIR",
        "settings": {"eps": 4 / 255, "attack_steps": 100, "softplus_beta": 20.0, "topk_fraction": 0.1},
        "accuracy": {
            "clean": accuracy,
            "n_images": 10000,
            "pgd": {"linf": {"eps": 2 / 255, "steps": 20, "accuracy": 0.31, "n_images": 100}},
        },
        "robustness": {
            "grad": {
                "random": {
                    "topk": stat(0.7),
                    "kendall": stat(0.6),
                    "spearman": stat(0.8),
                    "cosine": stat(0.9),
                },
                "targeted": {
                    "topk": stat(0.4),
                    "kendall": stat(0.3),
                    "spearman": stat(0.45),
                    "cosine": stat(0.6),
                },
            }
        },
    }


def test_card_front_matter_carries_the_results():
    entry = registry.get_entry(NAME)
    results = sample_results()
    text = render_card(entry, results)
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["base_model"] == "lga-zoo/resnet18_w16_cifar10_standard"
    assert meta["datasets"] == ["cifar10"] and meta["library_name"] == "lga-zoo"
    index = meta["model-index"][0]
    assert index["name"] == NAME
    result = index["results"][0]
    assert (
        result["dataset"]["name"] == "CIFAR-10 (JPEG copy)"
        and result["dataset"]["args"]["attack_steps"] == 100
    )
    metrics = {m["name"]: m["value"] for m in result["metrics"]}
    assert metrics["Top-1 accuracy"] == 81.23
    assert metrics["grad map, targeted perturbation: top-k intersection"] == 0.4
    assert "lga-zoo evaluate resnet18_w16_cifar10_lga --data-dir DIR" in text
    assert "| grad | targeted | 0.400 [0.390, 0.410]" in text
    assert summary_metrics(results)["grad/targeted/topk"] == 0.4
    assert "Note:" not in render_card(replace(entry, notes=None), results)
    noted = render_card(replace(entry, notes="Below the 85% target."), results)
    assert "Note: Below the 85% target.\n\n## Evaluation" in noted


def test_published_cards_registry_and_results_agree():
    """For every model folder in model_cards/: card, registry entry and results.json say the same
    (a model not evaluated yet has no results.json and no metrics)."""
    folders = (
        sorted(p for p in (REPO / "model_cards").iterdir() if p.is_dir())
        if (REPO / "model_cards").is_dir()
        else []
    )
    if not folders:
        pytest.skip("no model_cards/ folders yet")
    for folder in folders:
        entry = registry.get_entry(folder.name)
        path = folder / "results.json"
        results = json.loads(path.read_text()) if path.is_file() else None
        if results is not None:
            assert results["model"]["name"] == entry.name
            assert results["model"]["sha256"] == entry.sha256
        assert entry.metrics == summary_metrics(results)
        card = (folder / "README.md").read_text()
        config = json.loads((folder / "config.json").read_text())
        assert card == render_card(entry, results, config, published_family_results(entry)), (
            f"{folder}/README.md is stale: run lga-zoo card {entry.name}"
        )


@pytest.fixture
def private_zoo(tmp_path, monkeypatch):
    """A private copy of the registry and of model_cards/ so that the CLI can write to them."""
    zoo = tmp_path / "zoo.json"
    zoo.write_text((REPO / "lga_zoo" / "zoo.json").read_text())
    monkeypatch.setattr(registry, "zoo_file", lambda: zoo)
    monkeypatch.setattr(hub, "model_card_dir", lambda name: tmp_path / "model_cards" / name)
    (tmp_path / "README.md").write_text((REPO / "README.md").read_text())
    monkeypatch.setattr(hub, "checkout_root", lambda: tmp_path)  # the zoo table of a private README
    registry.reload()
    yield zoo
    monkeypatch.undo()
    registry.reload()


def test_cli_card_publish_list_and_explain(private_zoo, tmp_path, capsys):

    model = untrained(NAME)
    save_folder(model, registry.get_entry(NAME), None, tmp_path / "run" / "model")
    (tmp_path / "run" / "log.jsonl").write_text('{"epoch": 1, "test_acc": 0.5}\n')
    stale = tmp_path / "model_cards" / NAME / "results.json"  # figures of the weights being replaced
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps(sample_results()))
    assert cli.main(["card", NAME]) == 0 and registry.get_entry(NAME).metrics["accuracy"] == 0.8123
    assert cli.main(["publish", NAME, "--from", str(tmp_path / "run" / "model")]) == 0
    assert not stale.exists() and registry.get_entry(NAME).metrics == {}
    card = (tmp_path / "model_cards" / NAME / "README.md").read_text()
    assert "81.23" not in card and "81.23" not in (tmp_path / "README.md").read_text()
    entry = registry.get_entry(NAME)
    assert (
        entry.sha256 and entry.size == (tmp_path / "model_cards" / NAME / "model.safetensors").stat().st_size
    )
    # the run's per-epoch log travels with the weights
    assert (
        tmp_path / "model_cards" / NAME / "train_log.jsonl"
    ).read_text() == '{"epoch": 1, "test_acc": 0.5}\n'

    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(sample_results()))
    assert cli.main(["card", NAME, "--results", str(results_path)]) == 0
    assert registry.get_entry(NAME).metrics["accuracy"] == 0.8123
    assert "81.23" in (tmp_path / "model_cards" / NAME / "README.md").read_text()

    capsys.readouterr()
    assert cli.main(["list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["name", "params", "accuracy"]
    row = next(line for line in table if line.startswith(NAME))
    assert "81.23%" in row and "0.400" in row and row.rstrip().endswith("checkout")

    out = tmp_path / "heat.png"
    assert (
        cli.main(
            [
                "explain",
                str(REPO / "examples" / "cat.jpg"),
                "--model",
                NAME,
                "--method",
                "ig",
                "--steps",
                "8",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "cat.jpg: predicted" in printed and str(out) in printed
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (224, 224)

    assert cli.main(["explain", "missing.jpg", "--model", NAME]) == 2
    assert "missing.jpg" in capsys.readouterr().err
    assert (
        cli.main(["explain", str(REPO / "examples" / "cat.jpg"), "--model", "resnet18_w16_cifar10_lag"]) == 2
    )
    assert "Did you mean" in capsys.readouterr().err


def test_console_script_is_installed():
    done = subprocess.run(
        [sys.executable, "-m", "lga_zoo.cli", "list", "--all"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0
    assert all(name in done.stdout for name in registry.list_models(pretrained=False))
    entry = replace(registry.get_entry(NAME))
    assert entry.name in done.stdout


def test_a_card_refresh_redraws_the_family_and_the_readme_table(private_zoo, tmp_path):
    for name in ("resnet18_w16_cifar10_standard", "resnet18_w16_cifar10_lga"):
        shutil.copytree(REPO / "model_cards" / name, tmp_path / "model_cards" / name)
    results_path = tmp_path / "model_cards" / "resnet18_w16_cifar10_lga" / "results.json"
    results = json.loads(results_path.read_text())
    results["accuracy"]["clean"] = 0.4321
    results_path.write_text(json.dumps(results))
    assert cli.main(["card", "resnet18_w16_cifar10_lga"]) == 0
    sibling = (tmp_path / "model_cards" / "resnet18_w16_cifar10_standard" / "README.md").read_text()
    assert "| **resnet18_w16_cifar10_standard** |" in sibling and "43.21%" in sibling
    assert "43.21%" in (tmp_path / "README.md").read_text()
    assert "43.21%" not in (REPO / "README.md").read_text()


def test_the_comparison_names_how_many_images_each_model_was_measured_on():
    from lga_zoo.cards import _images_measured

    ig_on_fewer = {
        "data": {"n_robustness": 500},
        "robustness": {"integrated_gradients": {"random": {"topk": {"n": 200}}}},
    }
    assert _images_measured(ig_on_fewer) == "500 (IG 200)"
    ig_on_all = {
        "data": {"n_robustness": 100},
        "robustness": {"integrated_gradients": {"random": {"topk": {"n": 100}}}},
    }
    assert _images_measured(ig_on_all) == "100"
    assert _images_measured({"data": {"n_robustness": 80}, "robustness": {"grad": {}}}) == "80"
    name = first_evaluated(sorted(FLAGSHIP_FAMILY))
    card = (REPO / "model_cards" / name / "README.md").read_text()
    row = next(line for line in card.splitlines() if line.startswith(f"| **{name}**"))
    results = json.loads((REPO / "model_cards" / name / "results.json").read_text())
    assert row.split(" | ")[3] == _images_measured(results)
    config = json.loads((REPO / "model_cards" / name / "config.json").read_text())
    epochs, images = config["lga_zoo"]["training"]["epochs"], config["lga_zoo"]["data"]["train_images"]
    batch = config["lga_zoo"]["recipe"]["batch_size"]
    steps = epochs * (images // config["lga_zoo"]["training"].get("world_size", 1) // batch)
    unit = "epoch" if epochs == 1 else "epochs"
    expected = f"{epochs} {unit} over {images:,} images ({steps:,} steps of batch {batch})"
    assert row.split(" | ")[2] == expected  # e.g. 1 epoch over 50,000 images (390 steps of batch 128)
    board_row = next(line for line in leaderboard_markdown().splitlines() if f"| {name} |" in line)
    assert board_row.split(" | ")[3] == str(results["data"]["n_robustness"])


def test_the_comparison_stars_fine_tunes_of_earlier_standard_weights(private_zoo, tmp_path):
    """A fine-tune whose config.json records other start weights than the standard's pinned ones is
    starred, with a note naming both sha256; a standard not yet evaluated shows its training accuracy."""
    standard, fine_tunes = "resnet18_cifar10_standard", ["resnet18_cifar10_control", "resnet18_cifar10_lga"]
    for name in fine_tunes:
        (tmp_path / "model_cards" / name).mkdir(parents=True)
        shutil.copyfile(
            REPO / "model_cards" / name / "config.json", tmp_path / "model_cards" / name / "config.json"
        )
    (tmp_path / "model_cards" / standard).mkdir()
    config = json.loads((REPO / "model_cards" / standard / "config.json").read_text())
    config["lga_zoo"]["training"]["final_test_acc"] = 0.9123
    (tmp_path / "model_cards" / standard / "config.json").write_text(json.dumps(config))
    start = json.loads((tmp_path / "model_cards" / fine_tunes[1] / "config.json").read_text())["lga_zoo"][
        "init"
    ]
    control_path = tmp_path / "model_cards" / fine_tunes[0] / "config.json"
    control = json.loads(control_path.read_text())
    control["lga_zoo"]["init"] = start  # both fine-tunes from the same weights, whatever the checkout holds
    control_path.write_text(json.dumps(control))

    def card_with_standard_pinned_at(sha256: str) -> str:
        entries = registry.all_entries()
        registry.write_entries([replace(e, sha256=sha256) if e.name == standard else e for e in entries])
        return cli.write_published_card("resnet18_cifar10_lga").read_text()

    card = card_with_standard_pinned_at(start["sha256"])  # the weights the fine-tunes started from
    assert "| resnet18_cifar10_control |" in card and "earlier weights" not in card
    card = card_with_standard_pinned_at("f" * 64)  # republished since
    rows = {line.split(" | ")[0]: line for line in card.splitlines() if line.startswith("| ")}
    assert "| **resnet18_cifar10_lga** *" in rows and "| resnet18_cifar10_control *" in rows
    assert rows["| resnet18_cifar10_standard"].split(" | ")[3:5] == ["not evaluated yet", "91.23% (training)"]
    assert f"earlier weights of {standard} (sha256 {start['sha256'][:12]}...)" in card
    assert f"published ones (sha256 {'f' * 12}...)" in card
    assert "compare starred rows with each other" in card
    control["lga_zoo"]["init"] = {**start, "sha256": "f" * 64}  # the control retrained from the pinned ones
    control_path.write_text(json.dumps(control))
    card = card_with_standard_pinned_at("f" * 64)
    rows = {line.split(" | ")[0]: line for line in card.splitlines() if line.startswith("| ")}
    assert "| **resnet18_cifar10_lga** *" in rows and "| resnet18_cifar10_control" in rows
    assert "no other row started from those weights" in card and "with each other" not in card


def test_the_comparison_credits_a_regularizer_beyond_more_training_only_beside_an_evaluated_control():
    from lga_zoo.cards import comparison_section, published_family_results

    control = "resnet18_cifar10_control"

    def text(name: str, control_evaluated: bool) -> str:
        entry = registry.get_entry(name)
        own = json.loads((REPO / "model_cards" / name / "results.json").read_text())
        family = {**published_family_results(entry), entry.name: own}
        family.pop(control, None)  # a retrained control is not evaluated for a while: stand in for it
        if control_evaluated:
            family[control] = {**own, "model": {**own["model"], "name": control}}
        return " ".join(comparison_section(entry, family).split())

    beyond = "is what the regularizer adds beyond more training"
    missing = "No control (the same extra training without a regularizer) is evaluated yet"
    name = first_evaluated(("resnet18_cifar10_lga", "resnet18_cifar10_hessian"))
    assert beyond in text(name, True) and missing not in text(name, True)
    assert missing in text(name, False) and beyond not in text(name, False)


def test_the_card_of_a_model_of_ones_own_names_commands_that_load_it(tmp_path):
    """A folder of one's own is in no registry: its card loads it by its folder (or its Hub id once
    pushed), and names no Hub data set for a folder data set."""
    import re

    import lga_zoo
    from lga_zoo.cards import entry_from_config
    from lga_zoo.folder import build_config, write_model_folder
    from lga_zoo.hub import untrained

    model = untrained(NAME)
    recipe = {"name": "my_model_lga", "dataset": "folder", "init": "scratch"}
    config = build_config(
        model, "resnet18_w16_cifar", "relu", 20.0, {"name": "my_model_lga", "recipe": recipe}
    )
    folder = write_model_folder(model, config, tmp_path / "my_model_lga")
    card = render_card(entry_from_config(config), None, config)
    meta = yaml.safe_load(card.split("---")[1])
    assert "datasets" not in meta
    (loaded_name,) = set(re.findall(r'lga_zoo\.load\("([^"]+)"\)  #', card))
    assert loaded_name == "path/to/my_model_lga" and "--model path/to/my_model_lga" in card
    assert 'lga_zoo.load("hf-hub:ORG/my_model_lga")' in card
    loaded = lga_zoo.load(loaded_name.replace("path/to", str(tmp_path)))
    assert loaded.entry is None and loaded.weights_path == folder / "model.safetensors"


def test_a_card_refresh_keeps_registry_edits_made_after_the_process_read_it(private_zoo, tmp_path):
    """`lga-zoo evaluate --publish` runs for hours and then refreshes the card from the registry: a
    note edited in zoo.json meanwhile used to be overwritten by the copy read at the start."""
    shutil.copytree(
        REPO / "model_cards" / "resnet18_w16_cifar10_lga",
        tmp_path / "model_cards" / "resnet18_w16_cifar10_lga",
    )
    registry.get_entry(
        "resnet18_w16_cifar10_lga"
    )  # the registry is read and cached, as at the start of a run
    raw = json.loads(private_zoo.read_text())
    for item in raw["models"]:
        if item["name"] == "resnet18_w16_cifar10_standard":
            item["notes"] = "Edited while an evaluation ran."
    private_zoo.write_text(json.dumps(raw))
    results_path = tmp_path / "model_cards" / "resnet18_w16_cifar10_lga" / "results.json"
    results = json.loads(results_path.read_text())
    results["accuracy"]["clean"] = 0.4321  # new figures, so the registry is written back
    results_path.write_text(json.dumps(results))
    assert cli.main(["card", "resnet18_w16_cifar10_lga"]) == 0
    written = {item["name"]: item for item in json.loads(private_zoo.read_text())["models"]}
    assert written["resnet18_w16_cifar10_standard"]["notes"] == "Edited while an evaluation ran."
    assert written["resnet18_w16_cifar10_lga"]["metrics"]["accuracy"] == 0.4321
    assert not list(tmp_path.glob(".zoo.json.tmp*"))


def test_publish_refuses_a_run_trained_otherwise_than_its_entry(private_zoo, tmp_path, capsys):
    """Architecture and parameter count are not enough: a run with another activation, other
    regularizer settings, other class names or other normalization would be pinned under a name that
    describes something else."""
    entry = registry.get_entry(NAME)
    save_folder(untrained(NAME), entry, None, tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["label_names"].reverse()
    config["pretrained_cfg"]["mean"] = [0.5, 0.5, 0.5]
    config["lga_zoo"]["regularizer"] = {**entry.regularizer, "lambda_l2": 0.15}
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert cli.main(["publish", NAME, "--from", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"is not the model {NAME} describes" in err and "classes ['truck'" in err and "mean [0.5" in err
    assert "'lambda_l2': 0.15" in err  # a stronger regularizer than the card would name
    assert registry.get_entry(NAME).sha256 == entry.sha256
    assert not (tmp_path / "model_cards" / NAME / "model.safetensors").exists()


def test_publish_refuses_a_run_whose_only_difference_is_a_stronger_regularizer(private_zoo, tmp_path, capsys):
    entry = registry.get_entry(NAME)
    save_folder(untrained(NAME), entry, None, tmp_path / "run")
    assert cli.main(["publish", NAME, "--from", str(tmp_path / "run")]) == 0  # as trained: accepted
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["lga_zoo"]["regularizer"] = {**entry.regularizer, "lambda_l2": entry.regularizer["lambda_l2"] * 2}
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert cli.main(["publish", NAME, "--from", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"is not the model {NAME} describes: regularizer" in err and "classes" not in err


def test_publish_forgets_the_pinned_commit_of_the_replaced_weights(private_zoo, tmp_path):
    entries = [replace(e, revision="d" * 40) if e.name == NAME else e for e in registry.all_entries()]
    registry.write_entries(entries)
    save_folder(untrained(NAME), registry.get_entry(NAME), None, tmp_path / "run")
    assert cli.main(["publish", NAME, "--from", str(tmp_path / "run")]) == 0
    assert registry.get_entry(NAME).revision is None  # `lga-zoo push --pin` records the new one


def test_publish_in_half_precision_stores_float16_that_loads_as_the_run_rounded(private_zoo, tmp_path):
    from safetensors.torch import load_file

    from lga_zoo.folder import load_model_folder

    save_folder(untrained(NAME), registry.get_entry(NAME), None, tmp_path / "run")
    assert cli.main(["publish", NAME, "--from", str(tmp_path / "run"), "--dtype", "float16"]) == 0
    folder = tmp_path / "model_cards" / NAME
    stored, trained = (
        load_file(str(folder / "model.safetensors")),
        load_file(str(tmp_path / "run" / "model.safetensors")),
    )
    assert stored.keys() == trained.keys()
    for key, value in stored.items():  # floats halved, integer buffers (batch counters) as they were
        assert value.dtype == (torch.float16 if trained[key].is_floating_point() else trained[key].dtype), key
        assert torch.equal(value, trained[key].to(value.dtype)), key
    assert json.loads((folder / "config.json").read_text())["torch_dtype"] == "float16"
    entry = registry.get_entry(NAME)
    assert entry.size == (folder / "model.safetensors").stat().st_size
    assert entry.size < 0.6 * (tmp_path / "run" / "model.safetensors").stat().st_size
    model = load_model_folder(folder, expected_sha256=entry.sha256)
    assert next(model.parameters()).dtype == torch.float32  # loads as float32 for explanations and attacks
    assert "stored in half precision (float16)" in (folder / "README.md").read_text()
