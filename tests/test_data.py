import pickle
import tarfile

import numpy as np
import pytest
import torch

from lga_zoo.data import (
    CIFAR10_CLASSES,
    DataError,
    TensorBatches,
    augment_cifar,
    cutout,
    imagenet100_folder,
    imagenet100_wnids,
    load_cifar10,
)


def test_image_folder_layout(tiny_cifar):
    train = load_cifar10(tiny_cifar, "train")
    test = load_cifar10(tiny_cifar, "test")
    assert train.images.shape == (60, 32, 32, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (20, 32, 32, 3)
    assert np.bincount(train.labels).tolist() == [6] * 10
    assert train.classes == CIFAR10_CLASSES
    # The cache gives back the same arrays.
    again = load_cifar10(tiny_cifar, "train")
    assert np.array_equal(again.images, train.images) and np.array_equal(again.labels, train.labels)


def test_a_file_replaced_inside_the_data_folder_is_decoded_again(tiny_cifar, tmp_path):
    """Rewriting an image in place leaves its folder's time as it was: the cache must still see it."""
    import os
    import shutil

    from PIL import Image

    data = shutil.copytree(tiny_cifar, tmp_path / "cifar")
    before = load_cifar10(data, "test")
    folder_times = [(d, d.stat().st_mtime_ns) for d in (data, data / "test", data / "test" / "airplane")]
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(data / "test" / "airplane" / "0000.png")
    for folder, time_ns in folder_times:
        os.utime(folder, ns=(time_ns, time_ns))
    after = load_cifar10(data, "test")
    changed = [i for i in range(len(after.labels)) if not np.array_equal(after.images[i], before.images[i])]
    assert len(changed) == 1 and (after.images[changed[0]] == 7).all()


def test_archive_and_batches_layouts_agree(tiny_cifar, tmp_path):
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny_cifar / "train", arcname="cifar10/train")
        tar.add(tiny_cifar / "test", arcname="cifar10/test")
    from_archive = load_cifar10(tmp_path, "test")  # the folder holding the archive
    reference = load_cifar10(tiny_cifar, "test")
    assert np.array_equal(from_archive.images, reference.images)

    batches = tmp_path / "b" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    train = load_cifar10(tiny_cifar, "train")
    chunks = np.array_split(np.arange(len(train)), 5)
    for i, idx in enumerate(chunks, 1):
        data = train.images[idx].transpose(0, 3, 1, 2).reshape(len(idx), -1)
        with open(batches / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": data, "labels": train.labels[idx].tolist()}, f)
    data = reference.images.transpose(0, 3, 1, 2).reshape(len(reference), -1)
    with open(batches / "test_batch", "wb") as f:
        pickle.dump({"data": data, "labels": reference.labels.tolist()}, f)
    from_batches = load_cifar10(tmp_path / "b", "train")
    assert np.array_equal(from_batches.images, train.images)
    assert np.array_equal(from_batches.labels, train.labels)


def test_missing_and_malformed_data_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist.*cifar-10-batches-py"):
        load_cifar10(tmp_path / "nope")
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(DataError, match="no CIFAR-10 found.*junk.txt.*accepted"):
        load_cifar10(tmp_path)
    with pytest.raises(ValueError, match="split='val'"):
        load_cifar10(tmp_path, "val")


def test_augment_is_a_padded_crop_or_its_mirror():
    x = torch.rand(64, 3, 8, 8)
    out = augment_cifar(x, torch.Generator().manual_seed(0), padding=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    kinds = set()
    for i in range(64):
        found = None
        for dy in range(5):
            for dx in range(5):
                crop = padded[i, :, dy : dy + 8, dx : dx + 8]
                if torch.equal(out[i], crop):
                    found = "plain"
                elif torch.equal(out[i], crop.flip(-1)):
                    found = "flip"
        assert found is not None, f"image {i} is not a crop of the padded input"
        kinds.add(found)
    assert kinds == {"plain", "flip"}


def _cutout_by_loops(images, size, centres, fill):
    """Cutout written pixel by pixel: the square of side ``size`` whose top-left corner is
    (cy - size // 2, cx - size // 2), clipped at the border, holds ``fill``."""
    out = images.clone()
    _, c, h, w = images.shape
    for i, (cy, cx) in enumerate(centres):
        for r in range(cy - size // 2, cy - size // 2 + size):
            for col in range(cx - size // 2, cx - size // 2 + size):
                if 0 <= r < h and 0 <= col < w:
                    for ch in range(c):
                        out[i, ch, r, col] = fill[ch]
    return out


@pytest.mark.parametrize("size", [1, 4, 5, 8])
def test_cutout_matches_a_pixel_loop_and_leaves_the_input_alone(size):
    images = torch.rand(40, 3, 8, 8)
    before = images.clone()
    fill = (0.1, 0.2, 0.3)
    out = cutout(images, size, fill, torch.Generator().manual_seed(size))
    # The same draws as cutout's: the centre rows of every image, then their columns.
    gen = torch.Generator().manual_seed(size)
    cy, cx = torch.randint(0, 8, (40,), generator=gen), torch.randint(0, 8, (40,), generator=gen)
    expected = _cutout_by_loops(images, size, zip(cy.tolist(), cx.tolist()), fill)
    assert torch.equal(out, expected)
    assert torch.equal(images, before)
    filled = (out != images).any(dim=1).sum(dim=(1, 2))  # pixels changed per image
    assert filled.min() >= 1 and filled.max() <= size * size  # the centre is always inside the image
    assert torch.equal(cutout(images, 0, fill), images)


def test_cutout_refuses_bad_sizes():
    with pytest.raises(ValueError, match="size=-1 must be a non-negative integer"):
        cutout(torch.rand(2, 3, 8, 8), -1, (0.5,) * 3)
    with pytest.raises(ValueError, match="3 values for 1 channels"):
        cutout(torch.rand(2, 1, 8, 8), 2, (0.5,) * 3)


def test_tensor_batches_cutout_keeps_the_crops_and_flips(tiny_cifar):
    """Cutout draws from a generator of its own: the batches with it are those without it, but for
    one square per image filled with the given mean."""
    data = load_cifar10(tiny_cifar, "train")
    mean = (0.4914, 0.4822, 0.4465)  # no pixel k/255 equals these: every square changes its pixels
    plain = TensorBatches(data, 16, shuffle=True, augment=True, seed=2)
    cut = TensorBatches(data, 16, shuffle=True, augment=True, seed=2, cutout=3, cutout_fill=mean)
    for (x, y), (xc, yc) in zip(plain, cut):
        assert torch.equal(y, yc)
        changed = x != xc
        per_image = changed.any(dim=1).sum(dim=(1, 2))
        assert per_image.min() >= 1 and per_image.max() <= 9
        fill = torch.tensor(mean).view(1, 3, 1, 1).expand_as(xc)
        assert torch.equal(xc[changed], fill[changed])
    with pytest.raises(ValueError, match="cutout=3 needs augment=True and a cutout_fill"):
        TensorBatches(data, 16, augment=False, cutout=3, cutout_fill=mean)


def test_tensor_batches_shard_without_overlap(tiny_cifar):
    data = load_cifar10(tiny_cifar, "train")
    seen = []
    for rank in range(2):
        batches = TensorBatches(data, 7, shuffle=True, seed=3, rank=rank, world_size=2)
        batches.set_epoch(1)
        for x, _ in batches:
            assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
            seen.append(x)
    images = torch.cat(seen)
    assert len(images) == 60
    assert len({tuple(im.flatten()[:20].tolist()) for im in images}) == 60


def test_imagenet100_list_and_folder_errors(tmp_path):
    wnids = imagenet100_wnids()
    assert len(wnids) == 100 == len(set(wnids))
    assert all(w.startswith("n") and len(w) == 9 for w in wnids)
    with pytest.raises(DataError, match="lacks 100 of the 100"):
        imagenet100_folder(tmp_path, "train")


def _dead_pid() -> int:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def test_a_damaged_cache_is_rebuilt_with_a_note(tiny_cifar, capsys):
    from lga_zoo.data import _find_cifar_source, _source_key, cache_root, load_cifar10

    first = load_cifar10(tiny_cifar, "test")
    cached = cache_root() / f"cifar10-{_source_key(_find_cifar_source(tiny_cifar)[1])}" / "test.npz"
    assert cached.is_file()
    capsys.readouterr()
    cached.write_bytes(b"PK\x03\x04 truncated zip")
    again = load_cifar10(tiny_cifar, "test")
    assert np.array_equal(first.images, again.images) and np.array_equal(first.labels, again.labels)
    note = capsys.readouterr().err
    assert "decoded-data cache" in note and "damaged" in note and str(cached) in note
    with np.load(cached) as arrays:
        assert np.array_equal(arrays["images"], first.images)


def test_temporaries_of_killed_processes_are_removed(tmp_path):
    import os

    from lga_zoo.folder import remove_stale_temporaries

    dead = _dead_pid()
    stale = [tmp_path / f".checkpoint.pt.tmp{dead}", tmp_path / f"train.tmp{dead}.npz"]
    for path in stale:
        path.write_text("partial")
    (tmp_path / f"unpacked.tmp{dead}").mkdir()
    live = tmp_path / f".model.safetensors.tmp{os.getpid()}"
    live.write_text("being written")
    keep = tmp_path / "checkpoint.pt"
    keep.write_text("real")
    removed = remove_stale_temporaries(tmp_path)
    assert len(removed) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, keep.name])


def test_a_cutout_recipe_reaches_the_training_batches(tiny_cifar):
    from lga_zoo.datasets import prepare_data
    from lga_zoo.models import create_backbone
    from lga_zoo.recipe import recipe_from_dict

    recipe = recipe_from_dict({"name": "r", "architecture": "resnet18_w16_cifar", "cutout": 5})
    backbone = create_backbone("resnet18_w16_cifar", 10)
    data = prepare_data(recipe, tiny_cifar, backbone.pretrained_cfg)
    assert data.train.cutout == 5 and data.train.augment and data.test.cutout == 0
    assert data.train.cutout_fill == (0.4914, 0.4822, 0.4465)  # resnet18_w16_cifar's normalization mean
