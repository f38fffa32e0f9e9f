"""``lga-zoo evaluate`` under torchrun: 2 processes (gloo, CPU) give the figures of one process."""

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import lga_zoo
from lga_zoo.data import CIFAR10_CLASSES, ImageArrays
from lga_zoo.evaluate import (
    EvalSettings,
    _empty_measured,
    _measure_batch,
    _skip_batch,
    clean_accuracy,
    evaluate,
)

REPO = Path(__file__).resolve().parents[1]
MODEL = "resnet18_w16_cifar10_lga"  # published in model_cards/: loads offline
ATTACKS = "random,targeted,topk,pgd" + (",apgd" if find_spec("torchattacks") else "")


def _environment() -> dict[str, str]:
    """This checkout's code, one thread per process (what torchrun gives each worker: the same
    thread count in every run, so the same rounding), no accelerator."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def _lga_zoo(processes: int, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``lga-zoo ARGV`` in one process, or under torchrun in ``processes`` (``--standalone``: the
    rendezvous takes a free port at run time)."""
    if processes == 1:
        launcher = [sys.executable, "-m", "lga_zoo.cli"]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launcher += ["--nproc_per_node", str(processes), "-m", "lga_zoo.cli"]
    return subprocess.run(
        [*launcher, *argv], cwd=cwd, env=_environment(), capture_output=True, text=True, timeout=600
    )


def _evaluation(data: Path, out: Path) -> list[str]:
    """8 robustness images in 4 batches of 2 (two rounds on 2 processes), every attack, 2 steps."""
    argv = ["evaluate", MODEL, "--data-dir", str(data), "--n-images", "8", "--batch-size", "2"]
    argv += ["--methods", "grad", "--attacks", ATTACKS, "--attack-steps", "2", "--random-draws", "2"]
    argv += ["--apgd-steps", "2", "--apgd-targets", "2", "--device", "cpu", "--no-progress"]
    return [*argv, "--out", str(out)]


def _figures(path: Path) -> dict:
    results = json.loads(path.read_text())
    return {key: results[key] for key in ("accuracy", "robustness", "data", "settings", "complete")}


def test_torchrun_evaluation_gives_the_figures_of_one_process_and_resumes_with_any_count(
    tiny_cifar, tmp_path
):
    """Exactly the same figures (the same per-image computations, gathered in batch order), rank 0
    alone writing; a 2-process run stopped after its first round resumes in one process to them too."""
    one = _lga_zoo(1, _evaluation(tiny_cifar, tmp_path / "one.json"), tmp_path)
    assert one.returncode == 0, one.stderr
    two = _lga_zoo(2, _evaluation(tiny_cifar, tmp_path / "two.json"), tmp_path)
    assert two.returncode == 0, two.stderr
    assert _figures(tmp_path / "two.json") == _figures(tmp_path / "one.json")
    assert two.stdout.count("results in") == 1  # rank 0 alone reports (and writes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.json", "two.json"]  # no state left

    stopped = _evaluation(tiny_cifar, tmp_path / "resumed.json")
    run = _lga_zoo(2, [*stopped, "--max-minutes", "1e-9"], tmp_path)
    # each process exits with 3, which torchrun reports as its workers' failure (exit code 1)
    assert run.returncode != 0 and re.search(r"exitcode\s*: 3", run.stderr), run.stderr
    assert "stopped after 4 of 8" in run.stderr  # one round: a batch of 2 on each process
    run = _lga_zoo(1, [*stopped, "--resume"], tmp_path)
    assert run.returncode == 0, run.stderr
    assert _figures(tmp_path / "resumed.json") == _figures(tmp_path / "one.json")


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 10)
    )  # fmt: skip
    return lga_zoo.wrap(net, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(3, 8, 8)).eval()


@pytest.mark.parametrize(
    ("methods", "attack_map", "n_slow", "start"),
    [(("grad",), "same", None, 0), (("grad", "ig"), "same", 3, 2), (("ig", "grad"), "grad", 1, 2)],
)
def test_skipping_a_batch_draws_what_measuring_it_draws(methods, attack_map, n_slow, start):
    """A process that leaves a batch to another moves the random generator exactly as measuring it
    would (what makes the figures independent of the number of processes)."""
    settings = EvalSettings(
        methods=methods, attacks=("random", "targeted", "topk", "pgd"), attack_map=attack_map, n_slow=n_slow,
        attack_steps=1, random_draws=3, pgd_steps=1, ig_steps=2, attack_ig_steps=2, similarities=("topk",),
    )  # fmt: skip
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    measured, skipped = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    _measure_batch(
        _tiny_model(), x, torch.arange(4), start, settings, measured, False, _empty_measured(settings)
    )
    _skip_batch(tuple(x.shape), start, settings, skipped)
    assert torch.equal(measured.get_state(), skipped.get_state())


def _library_case() -> tuple[nn.Module, ImageArrays, EvalSettings]:
    """A tiny model, 10 random images, and settings that measure 7 of them in batches of 2 (on 2
    processes: two rounds, the second with one batch)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    data = ImageArrays(images, rng.integers(0, 10, 10), CIFAR10_CLASSES, "synthetic")
    settings = EvalSettings(
        methods=("grad",), attacks=tuple(ATTACKS.split(",")), n_robustness=7, batch_size=2,
        attack_steps=2, random_draws=2, pgd_steps=2, apgd_steps=2, apgd_targets=2,
        similarities=("topk", "kendall", "cosine"),
    )  # fmt: skip
    return _tiny_model(), data, settings


def _clean_accuracy(rank: int, world_size: int) -> float:
    """The clean accuracy of the library case in batches of 3 (4 batches: 2 on each of 2 processes)."""
    model, data, _ = _library_case()
    images = torch.from_numpy(np.ascontiguousarray(data.images.transpose(0, 3, 1, 2)))
    return clean_accuracy(
        model, images, torch.from_numpy(data.labels), 3, torch.device("cpu"), False, rank, world_size
    )


def _in_group(rank: int, world_size: int, folder: Path) -> None:
    """One of ``world_size`` processes: a full evaluation, the clean accuracy in batches, and an
    evaluation with a state stopped after its first round; writes what it got to rank<N>.json."""
    dist.init_process_group(
        "gloo", init_method=f"file://{folder / 'rendezvous'}", rank=rank, world_size=world_size
    )
    try:
        model, data, settings = _library_case()
        full = evaluate(model, data, settings, progress=False, fused_softplus=False)
        clean = _clean_accuracy(rank, world_size)
        stopped = evaluate(model, data, settings, progress=False, fused_softplus=False,
                           state_path=folder / "state.safetensors", stop_after_seconds=0)  # fmt: skip
        (folder / f"rank{rank}.json").write_text(
            json.dumps({"full": full, "clean": clean, "stopped": stopped})
        )
    finally:
        dist.destroy_process_group()


@contextmanager
def _one_thread() -> Iterator[None]:
    """One torch thread in this process and in the processes it forks (the same rounding in all)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def test_every_process_of_a_group_gets_the_figures_of_one_process(tmp_path):
    """evaluate() in a gloo group of 2 (forked: no second import) returns, on every process, exactly
    the figures of one process; rank 0 alone writes the state, which one process resumes to them."""
    model, data, settings = _library_case()
    with _one_thread():
        reference = evaluate(model, data, settings, progress=False, fused_softplus=False)
        clean = _clean_accuracy(0, 1)
        mp.start_processes(_in_group, args=(2, tmp_path), nprocs=2, start_method="fork")
        resumed = evaluate(model, data, settings, progress=False, fused_softplus=False,
                           state_path=tmp_path / "state.safetensors", resume=True)  # fmt: skip
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["full"] == json.loads(json.dumps(reference)), rank
        assert got["clean"] == clean, rank
        assert got["stopped"]["data"]["n_robustness"] == 4  # one round: a batch of 2 on each process
    assert resumed == reference
