"""DiffROAR: the masks, the retraining on a toy task, resuming, and merging into results.json."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import lga_zoo.cli as cli
import lga_zoo.diffroar as diffroar
import lga_zoo.hub as hub
import lga_zoo.registry as registry
from lga_zoo.data import CIFAR10_CLASSES, ImageArrays
from lga_zoo.diffroar import (
    DiffRoarSettings,
    RetrainerRecipe,
    keep_mask,
    kept_count,
    mask_images,
    merge_into_results,
    pixel_order,
    run_diffroar,
    run_folder_lock,
)

REPO = Path(__file__).resolve().parents[1]
W16_FAMILY = ("resnet18_w16_cifar10_standard", "resnet18_w16_cifar10_control", "resnet18_w16_cifar10_lga")


def _ranked_by_hand(values: list[float]) -> list[int]:
    """Pixel indices from the largest value to the smallest, ties by the lower index first."""
    return sorted(range(len(values)), key=lambda i: (-values[i], i))


def test_masks_keep_exactly_the_top_or_bottom_fraction_ties_by_index():
    maps = torch.tensor(
        [
            [[0.5, 0.9, 0.5, 0.1], [0.5, 0.0, 0.9, 0.5], [0.2, 0.2, 0.2, 0.2], [0.0, 0.7, 0.5, 0.3]],
            [[1.0] * 4, [1.0] * 4, [0.0] * 4, [0.0] * 4],  # all ties: the order is the index order
        ]
    )
    x = torch.rand(2, 3, 4, 4)
    fill = torch.tensor([0.1, 0.2, 0.3])
    order = pixel_order(maps)
    assert order.dtype == torch.int16
    for fraction in (0.25, 0.3, 0.5):
        n = round(fraction * 16)
        for b in range(2):
            ranked = _ranked_by_hand(maps[b].flatten().tolist())
            assert order[b].tolist() == ranked
            for which, chosen in (("top", ranked[:n]), ("bottom", ranked[-n:])):
                keep = keep_mask(order, fraction, which)
                assert sorted(keep[b].nonzero().flatten().tolist()) == sorted(chosen)
                masked = mask_images(x, keep, fill)[b].flatten(1)  # (C, H*W)
                for pixel in range(16):
                    expected = x[b].flatten(1)[:, pixel] if pixel in chosen else fill
                    assert torch.equal(masked[:, pixel], expected), (fraction, which, pixel)
    assert kept_count(0.1, 1024) == 102 and kept_count(0.2, 1024) == 205 and kept_count(0.5, 1024) == 512
    with pytest.raises(ValueError, match="NaN"):
        pixel_order(torch.full((1, 2, 2), float("nan")))


def _patch_task(n: int, seed: int, side: int = 8) -> ImageArrays:
    """Two classes told apart only by a patch (the first two rows: white for class 1, black for
    class 0); every other pixel is uniform noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    labels = np.arange(n) % 2
    images[:, :2] = (labels * 255).astype(np.uint8)[:, None, None, None]
    return ImageArrays(images, labels.astype(np.int64), CIFAR10_CLASSES, "patch task")


def _patch_map(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A "model" whose map is the informative patch (and a fixed faint ramp elsewhere)."""
    b, _, h, w = x.shape
    ramp = torch.arange(h * w, dtype=torch.float32).view(h, w) / (10 * h * w)
    ramp[:2] = 1.0
    return ramp.expand(b, h, w).clone()


TOY = DiffRoarSettings(
    fractions=(0.25,),
    seeds=(0,),
    spread_fraction=0.25,
    retrainer=RetrainerRecipe(
        epochs=3, batch_size=32, lr=0.05, augment=False, amp="none", channels_last=False
    ),
    map_batch_size=64,
    chunk_size=100,
)


def test_diffroar_is_positive_where_the_map_points_at_the_informative_pixels(tmp_path):
    train, test = _patch_task(256, 0), _patch_task(128, 1)
    accuracies = run_diffroar(_patch_map, train, test, tmp_path / "run", {"model": "patch"}, TOY)
    summary = diffroar.summarize(accuracies, TOY)["k"]["25"]
    assert summary["top"] >= 0.9, summary  # the top 25% is exactly the patch
    assert summary["bottom"] <= 0.7, summary  # noise only: about chance
    assert summary["diffroar"] == summary["top"] - summary["bottom"] > 0.3


def test_a_rerun_skips_finished_retrainings_and_cached_maps(tmp_path, monkeypatch):
    calls = {"retrain": 0, "maps": 0}

    def fake_retraining(train, test, fill, recipe, seed, device):
        calls["retrain"] += 1
        kept = train.keep[0].nonzero().flatten()
        return {"accuracy": 0.5 + kept.float().mean().item() / 1000 + seed / 100, "seconds": 0.0,
                "precision": "fp32"}  # fmt: skip

    def counted_map(x, labels):
        calls["maps"] += 1
        return _patch_map(x, labels)

    monkeypatch.setattr(diffroar, "retrain_and_test", fake_retraining)
    settings = DiffRoarSettings(map_batch_size=16, chunk_size=32)  # 3 fractions, 2 seeds at 20%
    train, test = _patch_task(80, 0), _patch_task(40, 1)
    run = tmp_path / "run"
    first = run_diffroar(counted_map, train, test, run, {"model": "patch"}, settings)
    assert calls == {"retrain": 8, "maps": 5 + 3}  # chunks of 32: 32+32+16 and 32+8 images
    assert len(list((run / "retrain").glob("*.json"))) == 8
    assert len(list((run / "ranks").glob("*.safetensors"))) == 5

    calls.update(retrain=0, maps=0)
    assert run_diffroar(counted_map, train, test, run, {"model": "patch"}, settings) == first
    assert calls == {"retrain": 0, "maps": 0}

    (run / "retrain" / "bottom_k20_seed1.json").unlink()
    (run / "ranks" / "test_000032.safetensors").unlink()
    assert run_diffroar(counted_map, train, test, run, {"model": "patch"}, settings) == first
    assert calls == {"retrain": 1, "maps": 1}
    summary = diffroar.summarize(first, settings)
    assert list(summary["k"]) == ["10", "20", "50"] and len(summary["seeds_at_20"]) == 2

    with pytest.raises(ValueError, match="other model"):
        run_diffroar(counted_map, train, test, run, {"model": "another"}, settings)
    with run_folder_lock(run), pytest.raises(RuntimeError, match="in use by another DiffROAR run"):
        run_diffroar(counted_map, train, test, run, {"model": "patch"}, settings)


def _section(sha256: str) -> dict:
    return {
        "method": diffroar.METHOD,
        "map": "grad",
        "map_target": "true label (train and test images)",
        "model": {"name": "m", "sha256": sha256},
        "retrainer": {"architecture": "resnet18_w16_cifar", "epochs": 4},
        "k": {"10": {"top": 0.5, "bottom": 0.4, "diffroar": 0.1}, "20": {"top": 0.6, "bottom": 0.4, "diffroar": 0.2}},
        "seeds_at_20": [0.2, 0.25],
        "n_train": 50000,
        "n_test": 10000,
        "command": "lga-zoo diffroar m --data-dir DIR",
    }  # fmt: skip


def test_merging_keeps_every_other_section_byte_identical_and_refuses_other_weights(tmp_path):
    path = tmp_path / "results.json"
    shutil.copyfile(REPO / "model_cards" / "resnet18_w16_cifar10_lga" / "results.json", path)
    before = path.read_text()
    sha = json.loads(before)["model"]["sha256"]

    with pytest.raises(ValueError) as refused:
        merge_into_results(path, _section("0" * 64))
    assert "other weights" in str(refused.value) and "\n" not in str(refused.value)
    assert path.read_text() == before

    merge_into_results(path, _section(sha))
    after = path.read_text()
    assert before.endswith("\n}\n") and after.startswith(before[: -len("\n}\n")] + ',\n  "faithfulness": {')
    merged = json.loads(after)
    assert merged.pop("faithfulness") == {"diffroar": _section(sha)}
    assert merged == json.loads(before)

    results = json.loads(after)  # another faithfulness figure already there is kept
    results["faithfulness"] = {"road": {"auc": 0.3}, "diffroar": {"old": True}}
    path.write_text(json.dumps(results, indent=2) + "\n")
    merge_into_results(path, _section(sha))
    assert json.loads(path.read_text())["faithfulness"] == {"road": {"auc": 0.3}, "diffroar": _section(sha)}


@pytest.fixture
def private_zoo(tmp_path, monkeypatch):
    """A private copy of the registry and of the w16 family's model_cards/ for the CLI to write to."""
    zoo = tmp_path / "zoo.json"
    zoo.write_text((REPO / "lga_zoo" / "zoo.json").read_text())
    monkeypatch.setattr(registry, "zoo_file", lambda: zoo)
    monkeypatch.setattr(hub, "model_card_dir", lambda name: tmp_path / "model_cards" / name)
    (tmp_path / "README.md").write_text((REPO / "README.md").read_text())
    monkeypatch.setattr(hub, "checkout_root", lambda: tmp_path)
    for name in W16_FAMILY:
        shutil.copytree(REPO / "model_cards" / name, tmp_path / "model_cards" / name)
    registry.reload()
    yield tmp_path / "model_cards"
    monkeypatch.undo()
    registry.reload()


def test_cli_diffroar_publish_merges_into_results_and_the_card(
    private_zoo, tiny_cifar, tmp_path, monkeypatch
):
    def fake_retraining(train, test, fill, recipe, seed, device):
        return {"accuracy": 0.3 if train.keep[0, 0] else 0.2, "seconds": 0.0, "precision": "fp32"}

    monkeypatch.setattr(diffroar, "retrain_and_test", fake_retraining)
    name = "resnet18_w16_cifar10_lga"
    folder = private_zoo / name
    before = {n: (private_zoo / n / "README.md").read_text() for n in W16_FAMILY}
    results_before = json.loads((folder / "results.json").read_text())
    args = ["diffroar", name, "--data-dir", str(tiny_cifar), "--out", str(tmp_path / "run"), "--publish"]
    assert cli.main(args) == 0
    results = json.loads((folder / "results.json").read_text())
    section = results.pop("faithfulness")["diffroar"]
    assert results == results_before
    assert section["n_train"] == 60 and section["n_test"] == 20 and set(section["k"]) == {"10", "20", "50"}
    assert section["model"]["sha256"] == results["model"]["sha256"]
    assert section["command"] == f"lga-zoo diffroar {name} --data-dir DIR --publish"
    card = (folder / "README.md").read_text()
    assert card.startswith(before[name].split("\n## Comparison")[0].rstrip("\n"))  # an addition only
    assert "Faithfulness: DiffROAR (Shah et al. 2021) of the grad map" in card
    assert "| 20% |" in card and "2 retrainer seeds" in card
    for sibling in W16_FAMILY[:2]:  # the siblings' cards show no DiffROAR: unchanged
        assert (private_zoo / sibling / "README.md").read_text() == before[sibling]

    section["model"]["sha256"] = "0" * 64  # results of other weights: refused before any work
    (tmp_path / "run" / "diffroar.json").unlink()
    (folder / "results.json").write_text(json.dumps({**results, "model": section["model"]}, indent=2))
    assert cli.main(args) == 2
    assert not (tmp_path / "run" / "diffroar.json").exists()
