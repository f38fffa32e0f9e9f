import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import kill_after_saves, load_file_module, record_logit_dtypes
from safetensors.torch import load_file

from lga_zoo.folder import load_model_folder, sha256_of
from lga_zoo.recipe import RecipeError, load_recipe, recipe_from_dict, training_chain
from lga_zoo.train import TrainingDiverged, lr_factor, run_start, train

REPO = Path(__file__).resolve().parents[1]


def tiny_recipe(**overrides):
    raw = {
        "name": "tiny",
        "architecture": "resnet18_w16_cifar",
        "epochs": 2,
        "batch_size": 20,
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine", "warmup_epochs": 0},
        "regularizer": {"name": "lga", "eps": "4/255", "lambda_l2": 0.01, "lambda_cos": 0.1},
        "seed": 1,
    }
    raw.update(overrides)
    return recipe_from_dict(raw)


def test_all_shipped_recipes_validate():
    paths = sorted((REPO / "recipes").rglob("*.yaml"))
    assert len(paths) >= 6
    for path in paths:
        recipe = load_recipe(path)
        assert recipe.name == path.stem


def test_a_recipe_that_starts_from_a_run_folder_ships_the_stage_recipe_that_makes_it():
    """``init: runs/NAME`` (a multi-stage recipe) must come with ``recipes/stages/NAME.yaml``; each run
    of the chain starts from the folder the run before wrote, and each stage recipe's own comment
    gives the command that writes that folder."""
    in_chains = set()
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        chain = training_chain(path.relative_to(REPO), REPO)
        for (before, out), (after, _) in zip(chain, chain[1:]):
            assert load_recipe(REPO / after).init == out
            assert f"lga-zoo train {before} --data-dir DIR --out {out}" in (REPO / before).read_text()
        in_chains |= {recipe for recipe, _ in chain}
    stages = {p.relative_to(REPO).as_posix() for p in (REPO / "recipes" / "stages").glob("*.yaml")}
    assert stages <= in_chains, f"stage recipes no published recipe starts from: {sorted(stages - in_chains)}"
    with pytest.raises(RecipeError, match="does not exist"):
        training_chain("recipes/resnet18_cifar10_standard.yaml", REPO / "tests")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"epoch": 3}, r"unknown key 'epoch'. Did you mean \['epochs'\]"),
        ({"regularizer": {"name": "lga", "lamda_l2": 1}}, r"regularizer.'lamda_l2'.*lambda_l2"),
        ({"regularizer": {"name": "lga", "eps": 4}}, "pixel units"),
        ({"optimizer": {"name": "adam", "lr": 0.1}}, r"optimizer.name='adam'.*sgd.*adamw"),
        ({"architecture": "resnet18_cifa"}, "not a timm model.*resnet18_cifar"),
        ({"epochs": 0}, "epochs=0 must be >= 1"),
        ({"amp": "fp8"}, "amp='fp8'"),
        ({"schedule": {"name": "steps", "milestones": "10"}}, "milestones"),
        ({"cutout": 33}, "cutout=33 is the side of a square in pixels: 0 .none. to 32"),
        ({"cutout": 8.5}, "cutout=8.5 must be an integer"),
        ({"cutout": 8, "dataset": "folder"}, "cutout=8 applies to dataset: cifar10 only"),
        (
            {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 5}},
            r"optimizer.momentum=5 must be in \[0, 1\)",
        ),
        ({"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0, "nesterov": True}}, "nesterov: true needs"),
        ({"regularizer": {"name": "hessian", "lam": 1e-4, "fd_step": 0}}, "fd_step=0 must be > 0"),
        ({"schedule": {"name": "cosine", "min_lr": 1.0}}, "min_lr=1.0 is above optimizer.lr=0.05"),
        ({"schedule": {"name": "cosine", "warmup_epochs": 3}}, "warmup_epochs=3 must be at most epochs=2"),
        ({"schedule": {"name": "steps", "milestones": [True]}}, "rising list of positive epoch numbers"),
        ({"schedule": {"name": "steps", "milestones": [6, 3]}}, "rising list"),
        ({"schedule": {"name": "steps", "milestones": [3], "gamma": 0}}, "gamma=0 would stop training"),
        ({"seed": 2**40}, r"seed=1099511627776 must be below 2\*\*32"),
    ],
)
def test_bad_recipes_name_the_key(change, message):
    with pytest.raises(RecipeError, match=message):
        tiny_recipe(**change)


def test_lr_schedules():
    cosine = tiny_recipe(epochs=10, schedule={"name": "cosine", "warmup_epochs": 1})
    assert lr_factor(cosine, 0, 100) == pytest.approx(0.01)
    assert lr_factor(cosine, 99, 100) == pytest.approx(1.0)
    assert lr_factor(cosine, 550, 100) == pytest.approx(0.5)
    assert lr_factor(cosine, 1000, 100) == pytest.approx(0.0, abs=1e-12)
    steps = tiny_recipe(epochs=10, schedule={"name": "steps", "milestones": [3, 6], "gamma": 0.1})
    assert [lr_factor(steps, s, 10) for s in (0, 29, 30, 59, 60)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_train_writes_model_and_resume_matches_uninterrupted(tiny_cifar, tmp_path, monkeypatch):
    recipe = tiny_recipe()
    folder = train(recipe, tiny_cifar, tmp_path / "full", progress=False)
    log = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert {"ce", "l2", "cos", "total", "train_acc", "test_acc"} <= set(log[-1])
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "resnet18_w16_cifar" and config["num_classes"] == 10
    assert config["lga_zoo"]["regularizer"]["name"] == "lga"
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    model = load_model_folder(folder)
    assert not model.training and model(torch.rand(2, 3, 32, 32)).shape == (2, 10)

    # Kill the same run right after its first checkpoint, then resume: the same final weights.
    kill_after_saves(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tiny_cifar, tmp_path / "split", progress=False)
    assert torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "split" / "model.safetensors").exists()
    train(recipe, tiny_cifar, tmp_path / "split", resume=True, progress=False)
    full = load_file(str(tmp_path / "full" / "model.safetensors"))
    split = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert full.keys() == split.keys()
    for key in full:
        assert torch.equal(full[key], split[key]), key


def test_nan_loss_stops_and_keeps_last_checkpoint(tiny_cifar, tmp_path, monkeypatch):
    import lga_zoo.train as train_module

    recipe = tiny_recipe(epochs=3)
    real_forward = train_module.LossStep.forward
    calls = {"n": 0}

    def nan_in_epoch_two(self, x, y, generator=None):
        calls["n"] += 1
        loss, logits, parts = real_forward(self, x, y, generator)
        return (loss * float("nan") if calls["n"] > 3 else loss), logits, parts  # 3 steps an epoch

    monkeypatch.setattr(train_module.LossStep, "forward", nan_in_epoch_two)
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 2.*last good checkpoint"):
        train(recipe, tiny_cifar, tmp_path, progress=False)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_resume_refuses_a_changed_recipe(tiny_cifar, tmp_path):
    train(tiny_recipe(epochs=1), tiny_cifar, tmp_path, progress=False)
    changed = tiny_recipe(epochs=2, optimizer={"name": "sgd", "lr": 0.5})
    with pytest.raises(ValueError, match="recipe changed.*optimizer"):
        train(changed, tiny_cifar, tmp_path, resume=True, progress=False)


def test_finetune_from_our_folder_checks_architecture(tiny_cifar, tmp_path):
    folder = train(
        tiny_recipe(epochs=1, regularizer={"name": "none"}), tiny_cifar, tmp_path / "a", progress=False
    )
    tuned = train(
        tiny_recipe(epochs=1, init=str(folder), regularizer={"name": "hessian", "lam": 1e-4}),
        tiny_cifar,
        tmp_path / "b",
        progress=False,
    )
    ours = json.loads((tuned / "config.json").read_text())["lga_zoo"]
    assert ours["regularizer"]["name"] == "hessian"
    # config.json is pushed to the Hub: the absolute init path is published by its name only
    assert ours["recipe"]["init"] == ours["init"]["folder"] == folder.name
    assert str(tmp_path) not in (tuned / "config.json").read_text()
    with pytest.raises(ValueError, match="holds a resnet18_w16_cifar"):
        train(
            tiny_recipe(epochs=1, architecture="resnet18_cifar", init=str(folder)),
            tiny_cifar,
            tmp_path / "c",
            progress=False,
        )


def test_resume_refuses_a_finetune_whose_start_was_published_anew(tiny_cifar, tmp_path):
    """A fine-tune resumed after its init folder got other weights (same path) would mix two
    starting points; it is refused, finished runs too, also from checkpoints without the record."""
    plain = tiny_recipe(epochs=1, regularizer={"name": "none"})
    start = train(plain, tiny_cifar, tmp_path / "start", progress=False)
    first_sha = sha256_of(start / "model.safetensors")
    tune = tiny_recipe(epochs=1, init=str(start), regularizer={"name": "none"})
    tuned = train(tune, tiny_cifar, tmp_path / "tuned", progress=False)
    assert run_start(tuned)["sha256"] == first_sha
    train(tune, tiny_cifar, tuned, resume=True, progress=False)  # the same start: nothing to train

    train(tiny_recipe(epochs=1, regularizer={"name": "none"}, seed=2), tiny_cifar, start, progress=False,
          overwrite=True)  # fmt: skip
    assert sha256_of(start / "model.safetensors") != first_sha
    with pytest.raises(ValueError, match="mix two starting points"):
        train(tune, tiny_cifar, tuned, resume=True, progress=False)
    # a checkpoint written before it recorded its start: the finished folder's config.json says
    ckpt = torch.load(tuned / "checkpoint.pt", weights_only=True)
    del ckpt["init"]
    torch.save(ckpt, tuned / "checkpoint.pt")
    assert run_start(tuned)["sha256"] == first_sha
    with pytest.raises(ValueError, match="mix two starting points"):
        train(tune, tiny_cifar, tuned, resume=True, progress=False)


def test_cli_train_and_torchrun_ddp_two_processes(tiny_cifar, tmp_path):
    recipe_path = tmp_path / "tiny.yaml"
    raw = tiny_recipe(epochs=1).to_dict()
    recipe_path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29517",
        "-m",
        "lga_zoo.train",
        str(recipe_path),
        "--data-dir",
        str(tiny_cifar),
        "--out",
        str(tmp_path / "ddp"),
        "--device",
        "cpu",
        "--no-progress",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["lga_zoo"]["training"]["world_size"] == 2
    log = json.loads((tmp_path / "ddp" / "log.jsonl").read_text().splitlines()[-1])
    # the logged accuracy is the saved model's (rank 0's BatchNorm statistics) on the whole test split
    from lga_zoo.data import load_cifar10

    test = load_cifar10(tiny_cifar, "test")
    saved = load_model_folder(tmp_path / "ddp")
    with torch.no_grad():
        predicted = saved(torch.from_numpy(test.images).permute(0, 3, 1, 2).float() / 255).argmax(1)
    assert log["test_acc"] == pytest.approx((predicted.numpy() == test.labels).mean(), abs=1e-6)
    # The single-process CLI path, and its error message for a bad recipe.
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**raw, "epoch": 1}))
    done = subprocess.run(
        [sys.executable, "-m", "lga_zoo.cli", "train", str(bad), "--data-dir", str(tiny_cifar)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "unknown key 'epoch'" in done.stderr


@pytest.mark.slow
def test_short_run_on_real_cifar10_learns(real_cifar, tmp_path):
    recipe = tiny_recipe(
        epochs=2,
        batch_size=64,
        max_train_images=3000,
        regularizer={"name": "none"},
        optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    )
    folder = train(recipe, real_cifar, tmp_path, progress=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[-1]["test_acc"] > 0.25  # chance is 0.10
    config = json.loads((folder / "config.json").read_text())
    assert config["lga_zoo"]["data"] == {
        "name": "CIFAR-10 (JPEG copy)",
        "dataset": "cifar10",
        "train_images": 3000,
        "eval_split": "test",
        "test_images": 10000,
    }


def test_mid_epoch_checkpoint_resumes_to_the_same_weights(tiny_cifar, tmp_path, monkeypatch):
    """A run killed inside an epoch (after a time-based checkpoint) resumes from that step and ends
    with the same weights and the same epoch log as an uninterrupted run."""
    recipe = tiny_recipe()  # 3 steps an epoch
    train(recipe, tiny_cifar, tmp_path / "full", progress=False, checkpoint_seconds=0)
    kill_after_saves(monkeypatch, 2)  # the second save is mid-epoch: after step 2 of 3
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tiny_cifar, tmp_path / "split", progress=False, checkpoint_seconds=0)
    ckpt = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (0, 2)
    train(recipe, tiny_cifar, tmp_path / "split", resume=True, progress=False, checkpoint_seconds=0)
    full = load_file(str(tmp_path / "full" / "model.safetensors"))
    split = load_file(str(tmp_path / "split" / "model.safetensors"))
    for key in full:
        assert torch.equal(full[key], split[key]), key
    logs = [
        [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        for run in ("full", "split")
    ]
    for record in logs:
        for r in record:
            r.pop("seconds"), r.pop("images_per_second")
    assert logs[0] == logs[1]


def test_a_fresh_run_never_overwrites_a_checkpoint(tiny_cifar, tmp_path):
    train(tiny_recipe(epochs=1), tiny_cifar, tmp_path, progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_recipe(epochs=1), tiny_cifar, tmp_path, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 1
    # a model folder without a checkpoint (published, or its checkpoint deleted) is refused as well
    (tmp_path / "checkpoint.pt").unlink()
    weights = (tmp_path / "model.safetensors").read_bytes()
    for resume in (False, True):
        with pytest.raises(FileExistsError, match="model.safetensors, config.json, which a fresh run"):
            train(tiny_recipe(epochs=1), tiny_cifar, tmp_path, progress=False, resume=resume)
    assert (tmp_path / "model.safetensors").read_bytes() == weights


def test_an_epoch_logged_before_a_kill_is_logged_once(tiny_cifar, tmp_path, monkeypatch):
    """The epoch record is written before the epoch's checkpoint; a kill between the two leaves a
    record the resumed run drops and writes again, so every epoch is logged exactly once."""
    import lga_zoo.train as train_module

    real_save = train_module.save_checkpoint

    def die_at_the_end_of_epoch_one(run, path, epochs_done, step_in_epoch, tally):
        if (epochs_done, step_in_epoch) == (1, 0):
            monkeypatch.setattr(train_module, "save_checkpoint", real_save)
            raise KeyboardInterrupt("killed before the epoch's checkpoint")
        real_save(run, path, epochs_done, step_in_epoch, tally)

    monkeypatch.setattr(train_module, "save_checkpoint", die_at_the_end_of_epoch_one)
    plain = tiny_recipe(regularizer={"name": "none"})
    with pytest.raises(KeyboardInterrupt):
        train(plain, tiny_cifar, tmp_path, progress=False, checkpoint_seconds=0)
    logged = [json.loads(line)["epoch"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert logged == [1]  # the record made it, the checkpoint did not
    with open(tmp_path / "log.jsonl", "a") as log:
        log.write('{"epoch": 2, "ce": 0.4')  # and a line cut off by a kill while it was written
    train(plain, tiny_cifar, tmp_path, progress=False, resume=True, checkpoint_seconds=0)
    logged = [json.loads(line)["epoch"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert logged == [1, 2]


def test_a_run_killed_while_it_writes_its_folder_writes_it_again_on_resume(tiny_cifar, tmp_path):
    """The finished run writes weights, config.json, then the card: a kill between them leaves a
    folder that a resume completes from the checkpoint instead of calling it finished."""
    recipe = tiny_recipe(epochs=1, regularizer={"name": "none"})
    train(recipe, tiny_cifar, tmp_path, progress=False)
    weights = (tmp_path / "model.safetensors").read_bytes()
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").unlink()
    (tmp_path / "README.md").unlink()
    train(recipe, tiny_cifar, tmp_path, progress=False, resume=True)
    assert (tmp_path / "model.safetensors").read_bytes() == weights
    assert json.loads((tmp_path / "config.json").read_text()) == config
    assert (tmp_path / "README.md").is_file()
    assert load_model_folder(tmp_path)(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_resume_refuses_to_stop_a_run_before_the_epoch_it_has_started(tiny_cifar, tmp_path, monkeypatch):
    """A checkpoint 2 steps into epoch 2 holds weights past epoch 1: stopping it at 1 epoch would
    publish them as a 1-epoch run, so it is refused."""
    plain = tiny_recipe(regularizer={"name": "none"})  # 2 epochs of 3 steps
    kill_after_saves(monkeypatch, 5)  # saves after steps 1, 2, the epoch, 1, 2: the 5th is epoch 1 + 2 steps
    with pytest.raises(KeyboardInterrupt):
        train(plain, tiny_cifar, tmp_path, progress=False, checkpoint_seconds=0)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (1, 2)
    stop_early = tiny_recipe(epochs=1, regularizer={"name": "none"})
    with pytest.raises(ValueError, match="trained 1 epochs and 2 steps of the next, more than the 1 epochs"):
        train(stop_early, tiny_cifar, tmp_path, progress=False, resume=True)
    assert not (tmp_path / "model.safetensors").exists()


def test_resume_on_another_kind_of_device_names_the_problem(tiny_cifar, tmp_path):
    """A CUDA noise generator's state (16 bytes) cannot seed a CPU one: a clear error, not torch's."""
    recipe = tiny_recipe(epochs=1, regularizer={"name": "none"})
    train(recipe, tiny_cifar, tmp_path, progress=False)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    ckpt["rng"][0]["noise"] = torch.zeros(16, dtype=torch.uint8)
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="noise generator was saved on another kind of device"):
        train(recipe, tiny_cifar, tmp_path, progress=False, resume=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mid_epoch_resume_on_cuda(tiny_cifar, tmp_path, monkeypatch):
    """The checkpoint's random states are read on the CPU, where torch.set_rng_state needs them."""
    recipe = tiny_recipe()
    on_cuda = {"progress": False, "device": "cuda", "checkpoint_seconds": 0}
    train(recipe, tiny_cifar, tmp_path / "full", **on_cuda)
    kill_after_saves(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tiny_cifar, tmp_path / "split", **on_cuda)
    train(recipe, tiny_cifar, tmp_path / "split", resume=True, **on_cuda)
    full = load_file(str(tmp_path / "full" / "model.safetensors"))
    split = load_file(str(tmp_path / "split" / "model.safetensors"))
    for key in full:
        assert torch.allclose(full[key], split[key], atol=1e-5), key


def test_resume_refuses_more_epochs_of_a_cosine_schedule(tiny_cifar, tmp_path):
    """The cosine schedule's learning rates depend on the number of epochs: a longer resumed run
    would follow no recipe; a step schedule may grow."""
    plain = {"regularizer": {"name": "none"}}
    train(tiny_recipe(epochs=1, **plain), tiny_cifar, tmp_path / "cosine", progress=False)
    with pytest.raises(ValueError, match="epochs 1 -> 2: the cosine schedule's learning rates depend"):
        train(tiny_recipe(epochs=2, **plain), tiny_cifar, tmp_path / "cosine", progress=False, resume=True)
    steps = {"name": "steps", "milestones": [1], "gamma": 0.1}
    train(tiny_recipe(epochs=1, schedule=steps, **plain), tiny_cifar, tmp_path / "steps", progress=False)
    grown = tiny_recipe(epochs=2, schedule=steps, **plain)
    train(grown, tiny_cifar, tmp_path / "steps", progress=False, resume=True)
    logged = (tmp_path / "steps" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in logged] == [1, 2]


def test_device_cuda_takes_the_gpu_of_the_local_rank(tiny_cifar, tmp_path, monkeypatch):
    """--device cuda (no index) is each process's LOCAL_RANK GPU; an index other than it under
    torchrun is refused (every process would share one GPU)."""
    import lga_zoo.train as train_module

    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: chosen.append(device) or _stop())
    monkeypatch.setattr(train_module, "_rank_world", lambda: (1, 2, 1))
    monkeypatch.setattr(train_module.dist, "is_initialized", lambda: True)

    def _stop():
        raise KeyboardInterrupt("stop before any CUDA work")

    with pytest.raises(KeyboardInterrupt):
        train(tiny_recipe(), tiny_cifar, tmp_path / "a", progress=False, device="cuda")
    assert chosen == [torch.device("cuda", 1)]
    with pytest.raises(ValueError, match="every process on one GPU"):
        train(tiny_recipe(), tiny_cifar, tmp_path / "b", progress=False, device="cuda:0")


def test_progress_log_and_bf16_autocast_on_the_cpu(tiny_cifar, tmp_path, monkeypatch):
    seen_dtypes = record_logit_dtypes(monkeypatch)
    monkeypatch.setattr("lga_zoo.precision.cpu_has_native_bf16", lambda: True)
    folder = train(
        tiny_recipe(epochs=1, amp="bf16"),
        tiny_cifar,
        tmp_path / "bf16",
        device="cpu",
        progress=False,
        progress_seconds=0,
    )
    assert set(seen_dtypes) == {torch.bfloat16}
    assert json.loads((folder / "config.json").read_text())["lga_zoo"]["training"]["amp"] == "bfloat16"
    lines = (tmp_path / "bf16" / "progress.log").read_text().splitlines()
    assert len(lines) == 3 and "img/s" in lines[-1] and "ETA" in lines[-1] and " l2 " in lines[-1]
    seen_dtypes.clear()
    train(tiny_recipe(epochs=1, amp="none"), tiny_cifar, tmp_path / "fp32", device="cpu", progress=False)
    assert set(seen_dtypes) == {torch.float32}


def test_bf16_recipe_trains_in_fp32_on_a_cpu_without_native_bf16(tiny_cifar, tmp_path, monkeypatch, capsys):
    """Where oneDNN has no bf16 kernels (an AVX2-only CPU), bf16 autocast is many times slower than
    fp32: ``amp: bf16`` then trains in fp32, says so, and config.json records what was run."""
    seen_dtypes = record_logit_dtypes(monkeypatch)
    monkeypatch.setattr("lga_zoo.precision.cpu_has_native_bf16", lambda: False)
    folder = train(tiny_recipe(epochs=1, amp="bf16"), tiny_cifar, tmp_path, device="cpu", progress=False)
    assert seen_dtypes and set(seen_dtypes) == {torch.float32}
    assert json.loads((folder / "config.json").read_text())["lga_zoo"]["training"]["amp"] == "none"
    assert "no native bf16" in capsys.readouterr().err


def test_nan_in_the_first_epoch_says_no_checkpoint_exists(tiny_cifar, tmp_path, monkeypatch):
    import lga_zoo.train as train_module

    real_forward = train_module.LossStep.forward

    def nan_at_once(self, x, y, generator=None):
        loss, logits, parts = real_forward(self, x, y, generator)
        return loss * float("nan"), logits, parts

    monkeypatch.setattr(train_module.LossStep, "forward", nan_at_once)
    with pytest.raises(TrainingDiverged, match="at epoch 1.*no checkpoint was written yet"):
        train(tiny_recipe(epochs=1), tiny_cifar, tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_a_stage_chain_that_comes_back_to_itself_is_refused(tmp_path):
    stages = tmp_path / "recipes" / "stages"
    stages.mkdir(parents=True)
    shipped = yaml.safe_load((REPO / "recipes" / "resnet18_cifar10_control.yaml").read_text())
    for name, init in (("a", "runs/b"), ("b", "runs/a")):
        (stages / f"{name}.yaml").write_text(yaml.safe_dump({**shipped, "name": name, "init": init}))
    with pytest.raises(RecipeError, match="comes back to itself"):
        training_chain("recipes/stages/a.yaml", tmp_path)


def test_the_flagship_cpu_queue_names_shipped_recipes_and_zoo_entries():
    import re

    from lga_zoo.registry import get_entry

    script = (REPO / "scripts" / "flagship_cpu.sh").read_text()
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "flagship_cpu.sh")], check=True)
    trained = re.findall(r"^step \w+ train (\S+)$", script, re.M)
    evaluated = re.findall(r"^step \w+ evaluate (\S+) (\d+) (\d+)$", script, re.M)
    assert trained == ["resnet18_cifar10_lga", "resnet18_cifar10_control", "resnet18_cifar10_hessian"]
    for name in trained:
        assert load_recipe(REPO / "recipes" / f"{name}.yaml").init == "model_cards/resnet18_cifar10_standard"
    for name, n_images, n_slow in evaluated:
        get_entry(name)
        assert int(n_slow) <= int(n_images)
    assert {name for name, n, _ in evaluated if int(n) >= 500} == set(trained) | {"resnet18_cifar10_standard"}


def test_the_flagship_queue_skips_what_the_checkout_already_publishes(tmp_path):
    """The queue's steps are done when the published files say so: weights trained from today's
    recipe, results of the pinned weights on enough images; anything else runs again."""
    import shutil

    from lga_zoo.registry import get_entry

    state = load_file_module("scripts/flagship_state.py")
    fine_tunes = ("resnet18_cifar10_lga", "resnet18_cifar10_control", "resnet18_cifar10_hessian")
    evaluated = [name for name in fine_tunes if state.evaluated_reason(name, 500) is None]
    if not evaluated:
        pytest.skip("no fine-tune of the flagship family is published with results on 500 images")
    name = evaluated[0]  # a fine-tune, published and evaluated on 500 images
    assert "fewer than 501" in state.evaluated_reason(name, 501)
    assert "not published" in state.trained_reason("resnet18_imagenet100_lga")

    (tmp_path / "recipes").mkdir()
    shutil.copytree(REPO / "model_cards" / name, tmp_path / "model_cards" / name,
                    ignore=shutil.ignore_patterns("*.safetensors"))  # fmt: skip
    recipe = json.loads((REPO / "model_cards" / name / "config.json").read_text())["lga_zoo"]["recipe"]
    (tmp_path / "recipes" / f"{name}.yaml").write_text(yaml.safe_dump({**recipe, "epochs": 5}))
    assert "another recipe" in state.trained_reason(name, tmp_path)
    (tmp_path / "recipes" / f"{name}.yaml").write_text(yaml.safe_dump({**recipe, "cutout": 8}))
    assert "another recipe" in state.trained_reason(name, tmp_path)
    (tmp_path / "recipes" / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
    config_path = tmp_path / "model_cards" / name / "config.json"
    config = json.loads(config_path.read_text())
    config["lga_zoo"]["init"]["sha256"] = get_entry("resnet18_cifar10_standard").sha256
    config["lga_zoo"]["recipe"].pop("cutout", None)  # published before the key existed: its default
    config_path.write_text(json.dumps(config))
    assert state.trained_reason(name, tmp_path) is None  # today's recipe, from the pinned standard
    config["lga_zoo"]["init"]["sha256"] = "0" * 64  # the standard was republished since
    config_path.write_text(json.dumps(config))
    assert "other weights of resnet18_cifar10_standard" in state.trained_reason(name, tmp_path)
    results_path = tmp_path / "model_cards" / name / "results.json"
    results = json.loads(results_path.read_text())
    results_path.write_text(json.dumps({**results, "complete": False}))
    assert "fewer than 500" in state.evaluated_reason(name, 500, tmp_path)
    results_path.write_text(json.dumps({**results, "model": {**results["model"], "sha256": "0" * 64}}))
    assert "other weights" in state.evaluated_reason(name, 500, tmp_path)
    assert state.main(["evaluated", name, "500"]) == 0 and state.main(["trained"]) == 2


def test_the_flagship_queue_sets_aside_a_run_from_older_standard_weights(tmp_path):
    """A fine-tune's run folder left from before the standard was published anew is not resumed (a
    resume would call it finished and publish it again); runs from the pinned weights are."""
    from lga_zoo.registry import get_entry

    state = load_file_module("scripts/flagship_state.py")
    standard = get_entry("resnet18_cifar10_standard").sha256
    run = tmp_path / "run"
    run.mkdir()
    assert state.started_elsewhere(run) is None  # no run yet
    init = {
        "kind": "folder",
        "folder": "model_cards/resnet18_cifar10_standard",
        "zoo_name": "resnet18_cifar10_standard",
    }
    for sha256, elsewhere in ((standard, False), ("0" * 64, True)):
        (run / "config.json").write_text(json.dumps({"lga_zoo": {"init": {**init, "sha256": sha256}}}))
        assert (state.started_elsewhere(run) is not None) == elsewhere
        assert state.main(["started-elsewhere", str(run)]) == (0 if elsewhere else 1)
    (run / "config.json").write_text(json.dumps({"lga_zoo": {"init": {"kind": "scratch"}}}))
    assert state.started_elsewhere(run) is None
    script = (REPO / "scripts" / "flagship_cpu.sh").read_text()
    assert 'flagship_state.py started-elsewhere "$out"' in script and 'mv "$out"' in script


def test_the_fine_tunes_differ_only_in_their_regularizer():
    """The LGA, Hessian and control fine-tunes made from the pinned standard weights share the start,
    data, length, schedule, seed and precision: what separates their figures is the regularizer alone.
    A fine-tune made from earlier weights (starred on the cards until it is retrained, as after a GPU
    session that lands the standard and LGA models only) is left out of the comparison."""
    from lga_zoo.registry import get_entry

    def differ_only_in_regularizer(recipes: dict[str, dict]) -> None:
        if not recipes:  # no fine-tune made from the pinned standard yet
            return
        first, *others = recipes
        for kind in others:
            differ = {key for key in recipes[first] if recipes[first][key] != recipes[kind][key]}
            assert differ == {"name", "regularizer"}, (first, kind)

    kinds = ("lga", "hessian", "control")
    for folder in ("recipes", "recipes/gpu"):  # the queues' recipes
        recipes = {
            kind: load_recipe(REPO / folder / f"resnet18_cifar10_{kind}.yaml").to_dict() for kind in kinds
        }
        assert [recipes[kind]["regularizer"]["name"] for kind in kinds] == ["lga", "hessian", "none"]
        if folder == "recipes/gpu":
            differ_only_in_regularizer(recipes)
    standard = get_entry("resnet18_cifar10_standard").sha256
    published = {}  # the recipes the current fine-tunes were trained with
    for kind in kinds:
        config = json.loads((REPO / "model_cards" / f"resnet18_cifar10_{kind}" / "config.json").read_text())
        if config["lga_zoo"]["init"]["sha256"] == standard:
            published[kind] = recipe_from_dict(config["lga_zoo"]["recipe"]).to_dict()
    differ_only_in_regularizer(published)
