"""Data: CIFAR-10 decoded once into uint8 arrays, ImageNet-100 as an image folder.

CIFAR-10 is read from any of these (``data_dir`` may point at the file or folder itself or at a
folder holding it):

* a torchvision ``cifar-10-batches-py`` folder (``data_batch_1..5``, ``test_batch``);
* an image-folder tree ``train/<class>/*.jpg|png`` and ``test/<class>/*`` (also under ``cifar10/``);
* the archive ``cifar10-jpeg.tar.gz`` (the image-folder tree, packed), unpacked once into the cache.

Decoding 60,000 JPEGs takes seconds each time, so each split is decoded once into
``<cache>/cifar10-<key>/<split>.npz`` (``LGA_ZOO_CACHE``, default ``~/.cache/lga_zoo``).
Batches come from :class:`TensorBatches`, which augments on the tensor (pad-4 random crop, flip,
optionally cutout).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .folder import remove_stale_temporaries

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
ACCEPTED_LAYOUTS = (
    "a torchvision 'cifar-10-batches-py' folder (data_batch_1..5, test_batch); "
    "an image-folder tree 'train/<class>/*.jpg' and 'test/<class>/*.jpg' (optionally under 'cifar10/'); "
    "or the archive 'cifar10-jpeg.tar.gz' or torchvision's 'cifar-10-python.tar.gz' (or a folder holding it)"
)


class DataError(ValueError):
    """A data directory that is missing or not in an accepted layout."""


@dataclass
class ImageArrays:
    """A split held in memory: ``images`` uint8 (N, H, W, C), ``labels`` int64 (N,), ``classes``."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    name: str = "CIFAR-10"

    def __len__(self) -> int:
        return len(self.labels)


def cache_root() -> Path:
    return Path(os.environ.get("LGA_ZOO_CACHE", Path.home() / ".cache" / "lga_zoo"))


def _source_key(path: Path) -> str:
    """The decoded-data cache's key of ``path``: an archive by its size and time, a folder by every
    file below it (name, size, time), so that a file replaced inside the folder, which leaves the
    folder's own time as it was, is decoded again."""
    stat = path.stat()
    text = f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"
    digest = hashlib.sha256(text.encode())
    if path.is_dir():
        for member in sorted(p for p in path.rglob("*") if p.is_file()):
            member_stat = member.stat()
            digest.update(
                f"|{member.relative_to(path)}|{member_stat.st_size}|{member_stat.st_mtime_ns}".encode()
            )
    return digest.hexdigest()[:16]


def _find_cifar_source(data_dir: Path) -> tuple[str, Path]:
    """(kind, path) of the first accepted layout found at ``data_dir``."""
    if not data_dir.exists():
        raise DataError(f"data directory {str(data_dir)!r} does not exist; accepted: {ACCEPTED_LAYOUTS}")
    if data_dir.is_file():
        if data_dir.name.endswith((".tar.gz", ".tgz")):
            return "archive", data_dir
        raise DataError(
            f"{str(data_dir)!r} is a file but not a .tar.gz archive; accepted: {ACCEPTED_LAYOUTS}"
        )
    candidates = [data_dir, data_dir / "cifar10", data_dir / "cifar-10-batches-py"]
    for folder in candidates:
        if (folder / "data_batch_1").is_file() and (folder / "test_batch").is_file():
            return "batches", folder
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            return "folder", folder
    for name in ("cifar10-jpeg.tar.gz", "cifar10.tar.gz", "cifar-10-python.tar.gz"):
        if (data_dir / name).is_file():
            return "archive", data_dir / name
    found = sorted(p.name for p in data_dir.iterdir())[:10]
    raise DataError(
        f"no CIFAR-10 found in {str(data_dir)!r} (it holds {found}); accepted: {ACCEPTED_LAYOUTS}"
    )


def _read_batches(folder: Path, split: str) -> ImageArrays:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        with open(folder / name, "rb") as f:
            # The torchvision CIFAR-10 python format is a pickle of plain arrays and lists (data, not code).
            batch = pickle.load(f, encoding="latin1")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.extend(batch["labels"])
    return ImageArrays(np.concatenate(images), np.asarray(labels, dtype=np.int64), CIFAR10_CLASSES)


def read_image_folder(
    folder: Path, classes: tuple[str, ...] | None = None, size: int | None = None
) -> ImageArrays:
    """Decode ``folder/<class>/*`` into RGB uint8 arrays (all images must share one size unless
    ``size`` resizes them); classes sorted by name unless given."""
    if not folder.is_dir():
        raise DataError(f"image folder {str(folder)!r} does not exist; expected '<class>/*.jpg' inside it")
    classes = classes or tuple(
        sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    )
    images, labels = [], []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            raise DataError(
                f"class folder {str(class_dir)!r} is missing; expected one folder per class {classes}"
            )
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
                continue  # also the ._NAME.jpg files that macOS copies leave beside each image
            img = read_rgb8(path)
            if size is not None:
                img = img.resize((size, size), Image.BILINEAR)
            images.append(np.asarray(img, dtype=np.uint8))
            labels.append(label)
    if not images:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {str(folder)!r}")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(f"images under {str(folder)!r} have different sizes {sorted(shapes)[:3]}; pass size=")
    return ImageArrays(np.stack(images), np.asarray(labels, dtype=np.int64), classes)


def read_rgb8(path: Path) -> Image.Image:
    """The image file at ``path`` as 8-bit RGB, its pixels read as ``explain`` reads them (16-bit
    and float grey images scaled, not clipped at 255); a file Pillow cannot read raises
    :class:`DataError` naming it."""
    from .inputs import InputError, rgb8_image

    try:
        with Image.open(path) as img:
            return rgb8_image(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        detail = str(err) if isinstance(err, InputError) else type(err).__name__
        raise DataError(f"cannot read image {str(path)!r} ({detail})") from None


def _unpack_archive(archive: Path, dest: Path) -> tuple[str, Path]:
    """Unpack ``archive`` into ``dest`` once (atomically: a partial unpack is never used); returns
    the layout found in it, ``("folder", path)`` or ``("batches", path)``."""
    done = dest / ".unpacked"
    if not done.exists():
        if not hasattr(tarfile, "data_filter"):  # Python 3.10.12, 3.11.4 and later have it
            raise DataError(
                f"this Python's tarfile cannot unpack {str(archive)!r} safely (no 'data' filter: "
                "Python 3.10.12 / 3.11.4 or later has it); upgrade Python, or unpack the archive "
                "and pass the folder"
            )
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        if dest.exists():
            import shutil

            shutil.rmtree(dest)
        os.replace(tmp, dest)
        done.touch()
    try:
        return _find_cifar_source(dest)
    except DataError:
        raise DataError(
            f"archive {str(archive)!r} holds no CIFAR-10 ('train/<class>' and 'test/<class>' folders, "
            "or torchvision's cifar-10-batches-py)"
        ) from None


def _read_cache(cached: Path) -> ImageArrays | None:
    """The decoded split in ``cached``, or None (and the file removed, with a note) when it is damaged
    or from an older version: the caller decodes the images again."""
    import sys
    import zipfile

    try:
        with np.load(cached, allow_pickle=False) as arrays:
            if {"images", "labels", "name"} <= set(arrays.files):
                images, labels, name = arrays["images"], arrays["labels"], str(arrays["name"])
                if images.ndim == 4 and images.dtype == np.uint8 and len(images) == len(labels) > 0:
                    return ImageArrays(images, labels, CIFAR10_CLASSES, name)
        problem = "from an older version or incomplete"
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        problem = f"damaged ({type(err).__name__})"
    print(
        f"lga-zoo: the decoded-data cache {cached} is {problem}; decoding the images again", file=sys.stderr
    )
    cached.unlink(missing_ok=True)
    return None


def load_cifar10(data_dir: str | os.PathLike, split: str = "train") -> ImageArrays:
    """CIFAR-10 ``split`` (``train`` or ``test``) from ``data_dir`` in any accepted layout, decoded
    once into a cached ``.npz``."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; accepted: 'train', 'test'")
    kind, source = _find_cifar_source(Path(data_dir).expanduser())
    cache_dir = cache_root() / f"cifar10-{_source_key(source)}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(cache_dir / ".lock"):  # DDP ranks (or two runs) decode it once, in turn
        return _load_cifar10_cached(kind, source, split, cache_dir)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a file created for it) for the block: other processes
    that take it wait. Where ``fcntl`` is missing (Windows) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _load_cifar10_cached(kind: str, source: Path, split: str, cache_dir: Path) -> ImageArrays:
    cached = cache_dir / f"{split}.npz"
    remove_stale_temporaries(cache_dir)
    remove_stale_temporaries(cache_dir.parent)
    if cached.exists():
        data = _read_cache(cached)
        if data is not None:
            return data
    if kind == "archive":
        kind, source = _unpack_archive(source, cache_dir / "unpacked")
    if kind == "batches":
        data = _read_batches(source, split)
    else:
        folder = source
        data = read_image_folder(folder / split, CIFAR10_CLASSES)
        first_class = folder / split / CIFAR10_CLASSES[0]
        if any(p.suffix.lower() in (".jpg", ".jpeg") for p in first_class.iterdir()):
            data.name = "CIFAR-10 (JPEG copy)"
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f"{split}.tmp{os.getpid()}.npz"
    np.savez(tmp, images=data.images, labels=data.labels, name=np.array(data.name))
    os.replace(tmp, cached)
    return data


def imagenet100_wnids() -> tuple[str, ...]:
    """The 100 WordNet ids of the commonly used ImageNet-100 subset (Tian et al., CMC, 2019)."""
    text = resources.files("lga_zoo").joinpath("imagenet100_wnids.txt").read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def imagenet100_folder(data_dir: str | os.PathLike, split: str = "train", transform=None):
    """ImageNet-100 as a torchvision ``ImageFolder`` over ``data_dir/<split>/<wnid>/*``, restricted to
    the 100 classes of :func:`imagenet100_wnids` (labels 0..99 in that sorted order). ``transform``
    defaults to none; take it from timm's data config for 224 px models."""
    from torchvision.datasets import ImageFolder

    root = Path(data_dir).expanduser() / split
    wnids = tuple(sorted(imagenet100_wnids()))
    missing = [w for w in wnids if not (root / w).is_dir()]
    if missing:
        raise DataError(
            f"ImageNet-100 at {str(root)!r} lacks {len(missing)} of the 100 class folders "
            f"(e.g. {missing[:3]}); expected '{split}/<wnid>/*.JPEG' for every id in imagenet100_wnids.txt"
        )

    class _Subset(ImageFolder):
        def find_classes(self, directory):
            return list(wnids), {w: i for i, w in enumerate(wnids)}

    return _Subset(str(root), transform=transform)


def timm_eval_transform(backbone, normalize: bool = False):
    """The evaluation transform of a timm model from its data config (e.g. 224 px: resize 256,
    center crop 224). Without ``normalize`` it stops at pixels in [0, 1], for models that normalize
    inside (every lga-zoo model does)."""
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config(model=backbone)
    transform = create_transform(**config, is_training=False)
    if not normalize:
        transform.transforms = [t for t in transform.transforms if type(t).__name__ != "Normalize"]
    return transform


def augment_cifar(images: Tensor, generator: torch.Generator | None = None, padding: int = 4) -> Tensor:
    """Pad-``padding`` random crop and random horizontal flip of a float batch (B, C, H, W), one
    crop offset and flip per image, by gathering from the zero-padded batch."""
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(images.device)
    flip = (torch.rand(b, generator=generator) < 0.5).to(images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device)[None]).view(b, 1, h, 1)
    cols = torch.arange(w, device=images.device)[None].expand(b, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + dx[:, None]
    cols = cols.view(b, 1, 1, w)
    batch_index = torch.arange(b, device=images.device).view(b, 1, 1, 1)
    channel_index = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
    return padded[batch_index, channel_index, rows, cols]


def cutout(
    images: Tensor,
    size: int,
    fill: tuple[float, ...],
    generator: torch.Generator | None = None,
) -> Tensor:
    """Cutout (DeVries & Taylor, 2017) of a float batch (B, C, H, W): a new batch where, for each
    image, a ``size`` x ``size`` square centred on a uniformly drawn pixel (clipped at the border, so
    it may be smaller) holds the per-channel ``fill``. Pass the model's normalization mean, the zero
    of its normalized input, as the paper does. ``images`` is not written to."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"cutout size={size!r} must be a non-negative integer number of pixels")
    b, c, h, w = images.shape
    if len(fill) != c:
        raise ValueError(f"cutout fill has {len(fill)} values for {c} channels")
    if size == 0:
        return images.clone()
    cy = torch.randint(0, h, (b,), generator=generator).to(images.device)
    cx = torch.randint(0, w, (b,), generator=generator).to(images.device)
    top, left = cy - size // 2, cx - size // 2
    rows = torch.arange(h, device=images.device)[None]
    cols = torch.arange(w, device=images.device)[None]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)  # (B, W)
    square = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (B, 1, H, W)
    fill_values = torch.tensor(fill, dtype=images.dtype, device=images.device).view(1, c, 1, 1)
    return torch.where(square, fill_values, images)


class TensorBatches:
    """Batches of (pixels in [0, 1] as float (B, C, H, W), labels) from an :class:`ImageArrays`.

    ``shuffle`` reorders each epoch from ``seed + epoch``; ``augment`` applies :func:`augment_cifar`,
    then, when ``cutout`` > 0, :func:`cutout` with squares of that side filled with ``cutout_fill``
    (the model's mean). Cutout draws from a generator of its own, so the crops and flips are the same
    with or without it.
    Under DDP pass ``rank``/``world_size``: each process takes every ``world_size``-th index of the
    shared order (the tail is dropped so every rank gets the same number of batches).
    """

    def __init__(
        self,
        data: ImageArrays,
        batch_size: int,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        cutout: int = 0,
        cutout_fill: tuple[float, ...] | None = None,
    ):
        if cutout and not (augment and cutout_fill):
            raise ValueError(f"cutout={cutout} needs augment=True and a cutout_fill (the model's mean)")
        self.images = torch.from_numpy(np.ascontiguousarray(data.images.transpose(0, 3, 1, 2)))
        self.labels = torch.from_numpy(data.labels)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.cutout = cutout
        self.cutout_fill = tuple(cutout_fill) if cutout_fill else None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> Tensor:
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            # every rank the same number of training steps (DDP's collectives); an evaluation split
            # (drop_last False) is shared out whole: its counts are summed across the ranks
            order = order[self.rank :: self.world_size]
            if self.drop_last:
                order = order[: n // self.world_size]
        return order

    def __len__(self) -> int:
        n = len(self._indices())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def iterate(self, start_step: int = 0):
        """The epoch's batches from ``start_step`` on; the skipped ones are replayed (cheap) so that
        the augmentation draws match an uninterrupted epoch."""
        for step, batch in enumerate(self):
            if step >= start_step:
                yield batch

    def __iter__(self):
        order = self._indices()
        aug_seed = 10_000 + self.seed * 1_000 + self.epoch * 7 + self.rank
        aug_gen = torch.Generator().manual_seed(aug_seed)
        cutout_gen = torch.Generator().manual_seed(aug_seed + 500_000)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                break
            x = self.images[idx].float().div_(255)
            if self.augment:
                x = augment_cifar(x, aug_gen)
                if self.cutout:
                    x = cutout(x, self.cutout, self.cutout_fill, cutout_gen)
            yield x, self.labels[idx]
