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
    # torchvision's own archive of those batches, as the file or the folder holding it
    (tmp_path / "tv").mkdir()
    with tarfile.open(tmp_path / "tv" / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(batches, arcname="cifar-10-batches-py")
    for given in (tmp_path / "tv", tmp_path / "tv" / "cifar-10-python.tar.gz"):
        assert np.array_equal(load_cifar10(given, "train").images, train.images)


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


def _grey_gradient_png(path, sixteen_bit: bool) -> None:
    from PIL import Image

    ramp = np.linspace(0, 1, 32 * 32).reshape(32, 32)
    if sixteen_bit:
        Image.fromarray((ramp * 65535).round().astype(np.uint16)).save(path)
    else:
        Image.fromarray((ramp * 255).round().astype(np.uint8)).save(path)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    """Pillow's convert("RGB") clips a 16-bit PNG at 255 (almost white); the data sets read it as
    explain does, and as its 8-bit copy reads."""
    from PIL import Image

    from lga_zoo.data import read_image_folder
    from lga_zoo.datasets import ImageFiles
    from lga_zoo.inputs import open_image, to_batch

    for split in ("train", "test"):
        for name in CIFAR10_CLASSES[:2]:
            (tmp_path / split / name).mkdir(parents=True)
            _grey_gradient_png(tmp_path / split / name / "a16.png", sixteen_bit=True)
            _grey_gradient_png(tmp_path / split / name / "b8.png", sixteen_bit=False)
    with Image.open(tmp_path / "train" / "airplane" / "a16.png") as img:
        assert img.mode.startswith("I")  # as Pillow opens a 16-bit PNG
    arrays = read_image_folder(tmp_path / "train", CIFAR10_CLASSES[:2])
    assert np.abs(arrays.images[0].astype(int) - arrays.images[1].astype(int)).max() <= 1
    assert abs(arrays.images[0].mean() - 127.5) < 1
    files = ImageFiles(tmp_path / "train", CIFAR10_CLASSES[:2])
    sixteen, _ = files[0]
    explained = to_batch(open_image(tmp_path / "train" / "airplane" / "a16.png"), (3, 32, 32))[0]
    assert np.allclose(np.asarray(sixteen) / 255, explained.permute(1, 2, 0).numpy(), atol=1 / 255)


def test_hidden_files_are_not_images_and_an_unreadable_evaluation_image_is_left_out(tmp_path, capsys):
    """macOS copies leave ._NAME.jpg beside each image: not samples. An evaluation split leaves out
    an image it cannot read instead of counting the next image twice."""
    from PIL import Image

    from lga_zoo.data import read_image_folder
    from lga_zoo.datasets import FolderBatches, ImageFiles

    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / name / f"{i}.jpg")
            (tmp_path / name / f"._{i}.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    assert read_image_folder(tmp_path).classes == ("cat", "dog")
    assert len(read_image_folder(tmp_path)) == 6
    assert len(ImageFiles(tmp_path, ("cat", "dog"))) == 6
    (tmp_path / "dog" / "1.jpg").write_bytes(b"broken")
    from torchvision.transforms import PILToTensor

    evaluation = ImageFiles(tmp_path, ("cat", "dog"), PILToTensor(), substitute_unreadable=False)
    labels = torch.cat([y for _, y in FolderBatches(evaluation, batch_size=4)])
    assert labels.tolist() == [0, 0, 0, 1, 1]  # 5 readable images, each once
    assert "1.jpg" in capsys.readouterr().err
    with pytest.raises(DataError, match=r"cannot read image .*dog/1.jpg"):
        read_image_folder(tmp_path)


def test_an_augmented_sample_leaves_the_gpu_generators_alone(tmp_path, monkeypatch):
    """The per-sample seed goes to the CPU generator only (torch.manual_seed would also reseed
    every GPU's, which dropout then draws from)."""
    from PIL import Image
    from torchvision.transforms import RandomHorizontalFlip

    from lga_zoo.datasets import ImageFiles

    (tmp_path / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "0.jpg")
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    files = ImageFiles(tmp_path, ("cat",), RandomHorizontalFlip(), seed=0)
    files[0]
    assert reseeded == []


def test_a_second_process_waits_while_one_decodes_the_archive(tiny_cifar, tmp_path):
    """torchrun starts every rank at once: one unpacks and decodes the archive into the cache while
    the others wait for its lock (none deletes a folder another reads), then they read the cache."""
    import os
    import subprocess
    import sys

    from lga_zoo.data import _source_key

    fcntl = pytest.importorskip("fcntl", reason="the lock is fcntl's (POSIX)")
    archive_dir = tmp_path / "data"
    archive_dir.mkdir()
    with tarfile.open(archive_dir / "cifar10-jpeg.tar.gz", "w:gz") as tar:
        tar.add(tiny_cifar / "train", arcname="cifar10/train")
        tar.add(tiny_cifar / "test", arcname="cifar10/test")
    cache = tmp_path / "cache"
    lock_path = cache / f"cifar10-{_source_key(archive_dir / 'cifar10-jpeg.tar.gz')}" / ".lock"
    lock_path.parent.mkdir(parents=True)
    code = "import sys; from lga_zoo.data import load_cifar10; print(len(load_cifar10(sys.argv[1], 'test')))"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a rank that is decoding holds it
        rank = subprocess.Popen(
            [sys.executable, "-c", code, str(archive_dir)],
            env={**os.environ, "LGA_ZOO_CACHE": str(cache)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        with pytest.raises(subprocess.TimeoutExpired):
            rank.communicate(timeout=15)  # it waits, and has unpacked nothing
        assert not (lock_path.parent / "unpacked").exists()
        fcntl.flock(lock, fcntl.LOCK_UN)
    out, err = rank.communicate(timeout=120)
    assert rank.returncode == 0, err
    assert out.strip() == "20"
