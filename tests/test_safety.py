"""Issue 49: nothing lost, nothing forged. One test (at least) per numbered item."""

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

import lga_zoo
from lga_zoo import cli
from lga_zoo.folder import WeightsError

REPO = Path(__file__).resolve().parents[1]
NAME = "resnet18_w16_cifar10_lga"
RECIPE = str(REPO / "recipes" / "resnet18_w16_cifar10_standard.yaml")


def copy_of(tmp_path: Path, name: str = NAME) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(REPO / "model_cards" / name, copy)
    return copy


def swap_labels(folder: Path, a: str = "cat", b: str = "dog") -> None:
    config = json.loads((folder / "config.json").read_text())
    labels = config["label_names"]
    i, j = labels.index(a), labels.index(b)
    labels[i], labels[j] = labels[j], labels[i]
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def living_pid():
    """The PID of a process that runs during the test (a lock holder)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


# 1. a forged label copy of a zoo model
def test_a_zoo_models_weights_with_edited_labels_are_refused(tmp_path, capsys):
    copy = copy_of(tmp_path)
    swap_labels(copy)
    with pytest.raises(WeightsError, match=f"copy of the zoo model {NAME} that does not match its pins"):
        lga_zoo.load(copy)
    code = cli.main(
        ["explain", str(REPO / "examples" / "cat.jpg"), "--model", str(copy), "--out", str(tmp_path / "o")]
    )
    assert code == 2 and NAME in one_line_error(capsys)
    assert not (tmp_path / "o").exists()
    with pytest.warns(UserWarning, match="verify=False"):
        assert lga_zoo.load(copy, verify=False).labels[3] == "dog"


def test_other_weights_with_a_config_naming_a_zoo_model_must_describe_it(tmp_path):
    from lga_zoo.hub import save_folder, untrained

    own = tmp_path / "own"
    save_folder(untrained(NAME), lga_zoo.get_entry(NAME), None, own)  # a run of the zoo's recipe
    assert lga_zoo.load(own).entry is None  # same labels and preprocessing: one's own model, unpinned
    swap_labels(own)
    with pytest.raises(WeightsError, match=f"names the zoo model {NAME} but differs from it.*classes"):
        lga_zoo.load(own)
    other = copy_of(tmp_path / "x", "resnet18_w16_cifar10_standard")  # pinned weights of another model
    shutil.copyfile(own / "config.json", other / "config.json")
    with pytest.raises(WeightsError, match="resnet18_w16_cifar10_standard that does not match its pins"):
        lga_zoo.load(other)


# 2. one run per output
def test_a_second_train_into_a_held_folder_exits_2_naming_the_holder(tmp_path, living_pid, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lga-zoo.lock").write_text(f"{living_pid}\n")
    code = cli.main(["train", RECIPE, "--data-dir", str(tmp_path / "none"), "--out", str(out)])
    assert code == 2 and f"PID {living_pid}" in one_line_error(capsys)
    assert (out / ".lga-zoo.lock").read_text().strip() == str(living_pid)  # the holder's lock stays


def test_an_evaluation_into_held_results_exits_2_naming_the_holder(tmp_path, living_pid, capsys):
    out = tmp_path / "results.json"
    (tmp_path / ".results.json.lock").write_text(f"{living_pid}\n")
    code = cli.main(["evaluate", NAME, "--data-dir", str(tmp_path / "none"), "--out", str(out)])
    assert code == 2 and f"PID {living_pid}" in one_line_error(capsys)


def test_a_stale_lock_is_taken_over_and_released(tmp_path):
    from lga_zoo.locks import OutputLocked, holding

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / "new" / "deeper" / ".lga-zoo.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(f"{dead.pid}\n")
    with holding(lock, "the run"):
        assert lock.read_text().strip() == str(os.getpid())
        child = subprocess.run(
            [sys.executable, "-c", f"from lga_zoo.locks import holding\nwith holding({str(lock)!r}, 'x'): pass"],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert child.returncode != 0 and f"PID {os.getpid()}" in child.stderr
    assert not lock.exists()
    with holding(tmp_path / "made" / "here" / ".lock", "x"):
        pass
    assert not (tmp_path / "made").exists()  # folders made for the lock and left empty are removed
    assert OutputLocked.__mro__[1] is RuntimeError


# 3. no map overwrites another
def test_explain_gives_images_with_the_same_name_distinct_maps(tmp_path, capsys):
    cat = Image.open(REPO / "examples" / "cat.jpg")
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        cat.save(tmp_path / folder / "good.png")
    out = tmp_path / "D"
    code = cli.main(["explain", str(tmp_path / "a" / "good.png"), str(tmp_path / "b" / "good.png"), "--model", NAME,
                     "--out", str(out)])  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["good_1_grad.png", "good_2_grad.png"]


# 4. non-finite weights
def test_nan_weights_are_refused_at_load(tmp_path):
    folder = copy_of(tmp_path)
    state = load_file(folder / "model.safetensors")
    state["fc.weight"] = state["fc.weight"].clone()
    state["fc.weight"][0, 0] = float("nan")
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["lga_zoo"]["name"] = "my_model"  # a folder of one's own
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=r"NaN or infinite values in 1 tensor\(s\) \(fc.weight\)"):
        lga_zoo.load(folder)


# 5. an unwritable output is found before the work
def test_evaluate_into_an_unwritable_place_says_so_before_the_work(tmp_path, capsys):
    out = "/proc/lga_zoo_test/results.json"  # no one can create a folder there
    code = cli.main(["evaluate", NAME, "--data-dir", str(tmp_path / "no_data"), "--out", out])
    err = one_line_error(capsys)
    assert code == 2 and "cannot write" in err and out in err and "no_data" not in err


# 6. a full disk
def test_a_full_disk_names_the_space_needed_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import lga_zoo.folder as folder_module
    from lga_zoo.train import _atomic_torch_save

    path = tmp_path / "checkpoint.pt"
    good = {"model": torch.ones(1000)}
    _atomic_torch_save(good, path)
    real_open = open

    class FullDisk:  # a file system with 100 bytes left: what write(2) answers when the disk is full
        def __init__(self, file):
            self.file, self.written = file, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 100:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(folder_module, "open", lambda *a, **k: FullDisk(real_open(*a, **k)), raising=False)
    with pytest.raises(OSError, match=rf"^no space left on {tmp_path} \(needed about 8 MB"):
        _atomic_torch_save({"model": torch.zeros(2_000_000)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["model"], good["model"])
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


# 7. wrap's arguments
def test_wrap_names_the_argument_that_cannot_work():
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(5))
    backbone(torch.rand(2, 3, 8, 8))
    backbone.train()
    running_mean = backbone[1].running_mean.clone()
    with pytest.raises(ValueError, match="labels has 3 names, the model has 5 outputs"):
        lga_zoo.wrap(backbone, input_size=(3, 8, 8), labels=["a", "b", "c"])
    assert backbone.training and torch.equal(backbone[1].running_mean, running_mean)  # no side effect
    assert lga_zoo.wrap(backbone, input_size=(3, 8, 8), labels=list("abcde")).labels == list("abcde")
    with pytest.raises(ValueError, match="std="):
        lga_zoo.wrap(backbone, mean=(0, 0, 0), std=(1, 0, 1), input_size=(3, 8, 8))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        lga_zoo.wrap(lambda x: x)


# 8. the smaller ones
def test_explain_out_in_another_picture_format_is_refused(tmp_path, capsys):
    out = tmp_path / "x.jpg"
    assert cli.main(["explain", str(REPO / "examples" / "cat.jpg"), "--model", NAME, "--out", str(out)]) == 2
    assert "written as PNG" in one_line_error(capsys) and not out.exists()


def test_train_checkpoint_minutes_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", RECIPE, "--data-dir", str(tmp_path), "--checkpoint-minutes", "-1"])
    assert (
        stop.value.code == 2
        and "--checkpoint-minutes: -1 must be a positive number" in capsys.readouterr().err
    )


def test_early_failures_leave_no_empty_out_folders(tmp_path, capsys):
    run = tmp_path / "new" / "run"
    assert cli.main(["train", RECIPE, "--data-dir", str(tmp_path / "no_data"), "--out", str(run)]) == 2
    results = tmp_path / "eval" / "results.json"
    assert cli.main(["evaluate", NAME, "--data-dir", str(tmp_path / "no_data"), "--out", str(results)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_demo_errors_show_no_server_path():
    from lga_zoo.demo import client_message

    upload = Path(tempfile.gettempdir()) / "gradio" / "f00d" / "photo.webp"
    err = ValueError(f"image {str(upload)!r} is broken; see {upload.parent / 'other.png'}")
    assert client_message(err, str(upload)) == "image 'photo.webp' is broken; see other.png"


def test_a_meta_tensor_and_a_huge_sample_count_are_named():
    from lga_zoo.hub import untrained

    model = untrained(NAME)
    with pytest.raises(ValueError, match="meta device"):
        model.explain(torch.empty(1, 3, 32, 32, device="meta"))
    with pytest.raises(ValueError, match=r"samples.*\[1, 10000\]"):
        model.explain(torch.rand(1, 3, 32, 32), method="smoothgrad", samples=10**9)


def test_download_offline_does_not_send_the_user_to_the_same_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = cli.main(["download", "hf-hub:alice/missing", "--cache-dir", str(tmp_path)])
    err = one_line_error(capsys)
    assert code == 2 and "`lga-zoo download" not in err and "Unset HF_HUB_OFFLINE" in err


def test_the_demo_stops_within_10_seconds_on_sigterm(tmp_path):
    pytest.importorskip("gradio")
    script = tmp_path / "serve.py"
    script.write_text(
        "import signal, threading, time, urllib.request\n"
        "import gradio as gr\n"
        "from lga_zoo.demo import stop_within\n"
        "def free_port():\n"
        "    import socket\n"
        "    with socket.socket() as s:\n"
        "        s.bind(('127.0.0.1', 0))\n"
        "        return s.getsockname()[1]\n"
        "with gr.Blocks() as app:\n"
        "    gr.Markdown('hello')\n"
        "signal.signal(signal.SIGTERM, lambda s, f: stop_within(app, 5.0))\n"
        "app.queue().launch(server_name='127.0.0.1', server_port=free_port(), prevent_thread_lock=True, quiet=True)\n"
        "urllib.request.urlopen(app.local_url).read()  # it has served a request\n"
        "print('serving', flush=True)\n"
        "app.block_thread()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert any(line.strip() == "serving" for line in iter(server.stdout.readline, ""))
        import time

        start = time.monotonic()
        server.terminate()
        assert server.wait(timeout=30) == 0 and time.monotonic() - start < 10
    finally:
        server.kill()


# 9. a CLI that starts fast
def test_help_and_list_do_not_import_torch():
    code = (
        "import sys\n"
        "from lga_zoo.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "main(['list'])\n"
        "print('heavy', sorted(m for m in ('torch', 'timm', 'matplotlib') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and "heavy []" in done.stdout, done.stderr


def test_the_no_cuda_runtime_notice_does_not_reach_the_user(caplog):
    with caplog.at_level(logging.WARNING):
        logging.getLogger("torch.utils.cpp_extension").warning(
            "No CUDA runtime is found, using CUDA_HOME='/x'"
        )
    assert "No CUDA runtime" not in caplog.text
