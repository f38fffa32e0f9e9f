"""Nothing lost, nothing forged: image modes, one-line CLI errors, recipe values, trial evaluations."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import record_attack_autocast
from PIL import Image

import lga_zoo
from lga_zoo import cli
from lga_zoo.inputs import InputError, open_image
from lga_zoo.recipe import RecipeError, load_recipe, recipe_from_dict

REPO = Path(__file__).resolve().parents[1]
MODEL = "resnet18_w16_cifar10_lga"


@pytest.fixture(scope="module")
def model():
    return lga_zoo.load(MODEL)


@pytest.fixture(scope="module")
def grey8():
    """An 8-bit grayscale version of the ship example."""
    return Image.open(REPO / "examples" / "ship.jpg").convert("L")


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_deep_and_float_images_match_the_8_bit_image(model, grey8, mode, tmp_path):
    pixels8 = np.asarray(grey8, dtype=np.float64)
    if mode == "F":
        deep = Image.fromarray((pixels8 / 255).astype(np.float32), mode="F")
    else:
        deep = Image.fromarray((pixels8 * 257).astype(np.uint16))  # 16-bit: 255 -> 65535
        if mode == "I;16":
            path = tmp_path / "deep.png"
            deep.save(path)  # a real 16-bit PNG, as a scanner or a microscope writes it
            deep = open_image(path)
            assert deep.mode in ("I;16", "I")
        else:
            deep = deep.convert("I")
    reference = model.explain(grey8)
    got = model.explain(deep)
    assert torch.allclose(got.inputs, reference.inputs, atol=1e-6)
    assert got.predicted.tolist() == reference.predicted.tolist()
    assert torch.allclose(got.attribution, reference.attribution, atol=1e-4)


def test_float_images_outside_the_unit_range_are_refused(model):
    with pytest.raises(InputError, match="mode 'F'.*\\[0, 1\\]"):
        model.explain(Image.fromarray(np.full((8, 8), 200.0, dtype=np.float32), mode="F"))


def test_not_an_image_and_a_folder_get_one_line_errors(tmp_path, capsys):
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is text, not a JPEG")
    with pytest.raises(InputError, match="not an image file"):
        open_image(fake)
    assert cli.main(["explain", str(fake), "--model", MODEL, "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "not an image file" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_out_below_a_file_is_a_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    image = str(REPO / "examples" / "cat.jpg")
    assert cli.main(["explain", image, image, "--model", MODEL, "--out", str(blocker / "maps")]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_cli_steps_zero_is_refused_not_replaced(capsys):
    image = str(REPO / "examples" / "cat.jpg")
    assert cli.main(["explain", image, "--model", MODEL, "--method", "ig", "--steps", "0"]) == 2
    assert "steps=0" in capsys.readouterr().err


def _tiny_recipe(tmp_path, **changes):
    raw = {
        "name": "tiny",
        "architecture": "resnet18_w16_cifar",
        "epochs": 1,
        "batch_size": 20,
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "regularizer": {"name": "none"},
    }
    raw.update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"regularizer": {"name": "lga", "detach_source": "false"}},
            "detach_source='false' must be true or false",
        ),
        ({"optimizer": {"name": "sgd", "lr": 0.1, "momentum": "0.9"}}, "momentum='0.9' must be a number"),
        ({"optimizer": {"name": "adamw", "lr": 0.1, "betas": "0.9"}}, "betas='0.9'"),
        ({"schedule": {"name": "cosine", "min_lr": "0"}}, "min_lr='0' must be a number"),
        ({"optimizer": {"name": "sgd", "lr": 0.1, "nesterov": "yes"}}, "nesterov"),
    ],
)
def test_recipe_values_are_refused_before_any_data_is_read(tmp_path, changes, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(_tiny_recipe(tmp_path, **changes))


def test_yaml_number_forms_are_read_as_numbers(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "name: r\narchitecture: resnet18_w16_cifar\noptimizer: {name: adamw, lr: 1e-3, weight_decay: 5e-4}\n"
        "regularizer: {name: lga, eps: 4/255, lambda_l2: 1e-2}\n"
    )
    recipe = load_recipe(path)
    assert recipe.optimizer["lr"] == 1e-3 and recipe.optimizer["weight_decay"] == 5e-4
    assert recipe.regularizer["lambda_l2"] == 0.01 and recipe.regularizer["eps"] == pytest.approx(4 / 255)
    with pytest.raises(RecipeError, match="lr='fast' must be a number"):
        recipe_from_dict(
            {"name": "r", "architecture": "resnet18_w16_cifar", "optimizer": {"name": "sgd", "lr": "fast"}}
        )


def test_malformed_yaml_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("name: r\narchitecture: [resnet18\n")
    assert cli.main(["train", str(path), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML at line" in err and "Traceback" not in err


def test_second_train_without_resume_keeps_the_checkpoint(tiny_cifar, tmp_path, capsys):
    recipe = _tiny_recipe(tmp_path)
    out = tmp_path / "run"
    argv = ["train", str(recipe), "--data-dir", str(tiny_cifar), "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    before = (out / "checkpoint.pt").read_bytes()
    assert cli.main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == before
    assert cli.main([*argv, "--overwrite"]) == 0
    assert len((out / "log.jsonl").read_text().splitlines()) == 1
    assert cli.main([*argv, "--epochs", "0"]) == 2
    assert "epochs=0" in capsys.readouterr().err


def test_a_pickle_with_code_as_checkpoint_is_refused_without_running_it(tiny_cifar, tmp_path, capsys):
    import pickle

    class Boom:
        def __reduce__(self):
            return (print, ("code ran",))

    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(pickle.dumps(Boom()))
    recipe = _tiny_recipe(tmp_path)
    argv = [
        "train",
        str(recipe),
        "--data-dir",
        str(tiny_cifar),
        "--out",
        str(out),
        "--resume",
        "--no-progress",
    ]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert "code ran" not in captured.out + captured.err
    assert "cannot read the training checkpoint" in captured.err and "weights_only=False" not in captured.err


def _digest(paths):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_a_trial_evaluation_leaves_published_files_alone(tiny_cifar, tmp_path, monkeypatch, capsys):
    published = sorted((REPO / "model_cards").rglob("*")) + [REPO / "lga_zoo" / "zoo.json"]
    published = [p for p in published if p.is_file()]
    before = _digest(published)
    monkeypatch.chdir(tmp_path)
    argv = ["evaluate", MODEL, "--data-dir", str(tiny_cifar), "--n-images", "2", "--n-accuracy", "10"]
    argv += ["--methods", "grad", "--attacks", "random", "--random-draws", "1", "--no-progress"]
    assert cli.main(argv) == 0
    results = json.loads((tmp_path / "runs" / "evaluate" / MODEL / "results.json").read_text())
    assert results["accuracy"]["n_images"] == 10
    assert "published files unchanged" in capsys.readouterr().out
    assert _digest(published) == before
    assert "/" not in results["model"]["source"].split(":", 1)[1].replace("model_cards/", "")


@pytest.mark.parametrize("native", [True, False])
def test_bf16_attacks_fall_back_to_fp32_on_a_cpu_without_native_bf16(native, tiny_cifar, tmp_path,
                                                                     monkeypatch, capsys):  # fmt: skip
    """``--attack-amp bf16`` runs in fp32 where the CPU has no bf16 kernels (there it is many times
    slower), says so, and the results record the precision that was run."""
    seen = record_attack_autocast(monkeypatch)
    monkeypatch.setattr("lga_zoo.precision.cpu_has_native_bf16", lambda: native)
    monkeypatch.chdir(tmp_path)
    argv = ["evaluate", MODEL, "--data-dir", str(tiny_cifar), "--n-images", "2", "--n-accuracy", "10"]
    argv += ["--methods", "grad", "--attacks", "targeted", "--attack-steps", "1", "--attack-amp", "bf16"]
    assert cli.main([*argv, "--device", "cpu", "--no-progress"]) == 0
    results = json.loads((tmp_path / "runs" / "evaluate" / MODEL / "results.json").read_text())
    assert seen == [native]
    assert results["settings"]["attack_amp"] == ("bf16" if native else "none")
    assert ("no native bf16" in capsys.readouterr().err) == (not native)


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--eps", "4/0", "4/0"),
        ("--n-images", "0", "at least 1"),
        ("--batch-size", "0", "at least 1"),
        ("--softplus-beta", "0", "0 must be a positive number"),
        ("--softplus-beta", "-5", "-5 must be a positive number"),
    ],
)
def test_bad_evaluation_arguments_exit_2(flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", MODEL, "--data-dir", "x", flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_recorded_commands_hold_no_paths():
    from lga_zoo.cli import _without_paths

    argv = ["m", "--data-dir", "/home/me/data", "--out=/tmp/r.json", "--n-images", "5"]
    assert _without_paths(argv) == ["m", "--data-dir", "DIR", "--out=OUT", "--n-images", "5"]
    argv = ["m", "--state", "/tmp/s", "--resume", "--max-minutes", "30", "--seed", "1", "--max-minutes=5"]
    assert _without_paths(argv) == ["m", "--state", "STATE", "--seed", "1"]
    argv = ["/home/me/runs/mine", "--data-dir=/d", "--n-images", "5"]
    assert _without_paths(argv, "/home/me/runs/mine") == ["MODEL_DIR", "--data-dir=DIR", "--n-images", "5"]


def test_evaluate_takes_no_abbreviated_flags(capsys):
    """An abbreviation (``--data`` for ``--data-dir``) would slip its path past the recorded command."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", MODEL, "--data", "/home/me/data"])
    assert exit_info.value.code == 2
    assert "--data-dir" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, message",
    [
        ({"input_size": [1, 32, 32]}, "input_size"),
        ({"label_smoothing": float("nan")}, "finite"),
        ({"softplus_beta": float("inf")}, "finite"),
    ],
)
def test_recipes_refuse_grey_input_and_non_finite_numbers(change, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict({"name": "r", "architecture": "resnet18_w16_cifar", **change})


def test_evaluate_max_minutes_stops_and_resume_completes(tiny_cifar, tmp_path, monkeypatch, capsys):
    """``--max-minutes`` ends after a batch with exit code 3 and the figures so far; the same command
    with ``--resume`` completes from the saved state (removed after), recording the command without
    the flags that only say how it ran."""
    monkeypatch.chdir(tmp_path)
    argv = ["evaluate", MODEL, "--data-dir", str(tiny_cifar), "--n-images", "4", "--n-accuracy", "10"]
    argv += ["--methods", "grad", "--attacks", "random", "--random-draws", "1", "--batch-size", "2"]
    argv += ["--device", "cpu", "--no-progress"]
    folder = tmp_path / "runs" / "evaluate" / MODEL
    assert cli.main([*argv, "--max-minutes", "1e-9"]) == 3
    assert "stopped after 2 of 4" in capsys.readouterr().err
    partial = json.loads((folder / "results.partial.json").read_text())
    assert partial["complete"] is False and partial["data"]["n_robustness"] == 2
    assert (folder / "results.state.safetensors").is_file() and not (folder / "results.json").exists()
    assert cli.main(argv) == 2  # a saved state is not overwritten without --resume
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr("sys.argv", ["lga-zoo", *argv, "--resume", "--max-minutes", "60"])
    assert cli.main([*argv, "--resume", "--max-minutes", "60"]) == 0
    results = json.loads((folder / "results.json").read_text())
    assert results["complete"] is True and results["data"]["n_robustness"] == 4
    assert (
        not (folder / "results.state.safetensors").exists() and not (folder / "results.partial.json").exists()
    )
    assert "--resume" not in results["command"] and "--max-minutes" not in results["command"]
    assert results["execution"] == {"fused_softplus": True, "fold_batchnorm": True}
