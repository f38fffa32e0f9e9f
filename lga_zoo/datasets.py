"""Data sets a recipe can name: ``cifar10``, ``imagenet100`` and ``folder`` (your own images).

* ``cifar10``: the 32x32 tensors of :mod:`lga_zoo.data` (decoded once, augmented on the tensor).
* ``folder``: ``DATA_DIR/train/<class>/*`` and ``DATA_DIR/val/<class>/*`` (``test/`` when there
  is no ``val/``), any size and format Pillow opens; the classes are the sorted folder names.
* ``imagenet100``: the same layout (``train/`` and ``val/``) restricted to the 100 WordNet ids of
  ``imagenet100_wnids.txt`` (Tian et al.'s subset; about 126,689 training and 5,000 validation
  images: 1,300 and 50 per class, as in ImageNet-1k).

Folder data go through timm's transforms (``resolve_data_config`` / ``create_transform``: random
resized crop and flip for training, resize and center crop for evaluation) without the final
normalization, which lives inside the model. A file that cannot be read is reported once by path
and replaced by the next image, so a bad file never stops a run.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .data import IMAGE_SUFFIXES, DataError, TensorBatches, imagenet100_wnids, load_cifar10, read_rgb8

DATASETS = ("cifar10", "imagenet100", "folder")
FOLDER_LAYOUT = "'train/<class>/*' and 'val/<class>/*' (or 'test/<class>/*') under the data directory"
EXTRA_SUFFIXES = (".tif", ".tiff", ".gif", ".ppm", ".pgm")


def folder_classes(data_dir: Path, split: str = "train") -> tuple[str, ...]:
    """The sorted class-folder names of ``data_dir/split``."""
    root = data_dir / split
    if not root.is_dir():
        raise DataError(f"{str(root)!r} does not exist; a folder data set holds {FOLDER_LAYOUT}")
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not classes:
        raise DataError(f"{str(root)!r} holds no class folders; a folder data set holds {FOLDER_LAYOUT}")
    return classes


def check_classes(data_dir: Path, eval_split: str, classes: tuple[str, ...]) -> None:
    """A folder data set needs two classes or more, and its evaluation split no class the model
    lacks (its images would be left out without a word)."""
    if len(classes) < 2:
        raise DataError(
            f"{str(data_dir)!r} holds {len(classes)} class folder(s) {list(classes)}: a classifier needs two or more"
        )
    extra = sorted(set(folder_classes(data_dir, eval_split)) - set(classes))
    if extra:
        raise DataError(
            f"{str(data_dir / eval_split)!r} has class folders {extra} that the training classes "
            f"{list(classes)[:10]} lack; remove them, or add them to 'train/'"
        )


def eval_split_name(data_dir: Path) -> str:
    """``val`` when the folder has one, else ``test``."""
    for split in ("val", "test"):
        if (data_dir / split).is_dir():
            return split
    raise DataError(
        f"{str(data_dir)!r} has neither 'val/' nor 'test/'; a folder data set holds {FOLDER_LAYOUT}"
    )


class ImageFiles(torch.utils.data.Dataset):
    """(image, label) pairs from ``root/<class>/*`` for the given ``classes``, with ``transform``
    applied to the RGB PIL image. Unreadable files are reported by path (once) and replaced by the
    next readable file of the list."""

    def __init__(
        self,
        root: Path,
        classes: tuple[str, ...],
        transform=None,
        seed: int | None = None,
        every_class: bool = False,
        substitute_unreadable: bool = True,
    ):
        self.root, self.classes, self.transform = root, classes, transform
        # Training keeps its batch sizes by taking the next readable image for an unreadable one;
        # an evaluation split leaves it out instead (None), so that no image is counted twice.
        self.substitute_unreadable = substitute_unreadable
        # With a seed, the random transform of sample i in epoch e draws from a generator seeded by
        # (seed, e, i) alone: the same augmentation whatever the worker, the batch or a resume.
        self.seed, self.epoch = seed, 0
        suffixes = IMAGE_SUFFIXES + EXTRA_SUFFIXES
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(classes):
            class_dir = root / name
            if not class_dir.is_dir():
                raise DataError(f"class folder {str(class_dir)!r} is missing; expected one folder per class")
            found = [
                (p, label)
                for p in sorted(class_dir.iterdir())
                if p.suffix.lower() in suffixes and p.is_file() and not p.name.startswith(".")
            ]
            if every_class and not found:
                raise DataError(
                    f"class folder {str(class_dir)!r} holds no images ({', '.join(suffixes)}); "
                    "every training class needs some, or remove the folder"
                )
            self.samples += found
        if not self.samples:
            raise DataError(f"no images ({', '.join(suffixes)}) under {str(root)!r}")
        self.reported: set[Path] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def _open(self, path: Path) -> Image.Image | None:
        try:
            return read_rgb8(path)
        except DataError as err:
            if path not in self.reported:
                self.reported.add(path)
                print(f"lga-zoo: skipping an unreadable image: {err}", file=sys.stderr)
            return None

    def _transformed(self, image: Image.Image, index: int) -> Any:
        if self.transform is None:
            return image
        if self.seed is None:
            return self.transform(image)
        sample_seed = (self.seed * 1_000_003 + self.epoch) * 10_000_019 + index
        python_state = random.getstate()  # timm's crops draw from Python's random, flips from torch
        try:
            with torch.random.fork_rng(devices=[]):
                random.seed(sample_seed)
                torch.random.default_generator.manual_seed(sample_seed % (2**63))  # not the GPUs'
                return self.transform(image)
        finally:
            random.setstate(python_state)

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        if not self.substitute_unreadable:
            path, label = self.samples[index]
            image = self._open(path)
            return None if image is None else (self._transformed(image, index), label)
        for offset in range(len(self.samples)):
            path, label = self.samples[(index + offset) % len(self.samples)]
            image = self._open(path)
            if image is not None:
                return self._transformed(image, index), label
        raise DataError(f"no image under {str(self.root)!r} can be read")


class FolderBatches:
    """Batches of (pixels in [0, 1] (B, C, H, W), labels) from :class:`ImageFiles`, in an order
    seeded by ``seed + epoch`` (shuffled) and split across DDP ranks like :class:`TensorBatches`."""

    def __init__(
        self,
        files: ImageFiles,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        workers: int = 0,
    ):
        self.files, self.batch_size, self.shuffle, self.seed = files, batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last, self.workers = rank, world_size, drop_last, workers
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.files.epoch = epoch

    def _order(self) -> list[list[int]]:
        n = len(self.files)
        order = (
            torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
            if self.shuffle
            else torch.arange(n)
        )
        if self.world_size > 1:  # as TensorBatches: a whole evaluation split, equal training shards
            order = order[self.rank :: self.world_size]
            if self.drop_last:
                order = order[: n // self.world_size]
        batches = [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def __len__(self) -> int:
        return len(self._order())

    def iterate(self, start_step: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """The epoch's batches from ``start_step`` on (the skipped ones are not decoded)."""
        batches = self._order()[start_step:]
        if not batches:
            return iter(())
        loader = torch.utils.data.DataLoader(
            self.files, batch_sampler=batches, num_workers=self.workers, collate_fn=_collate_readable
        )
        return ((x, torch.as_tensor(y)) for x, y in (batch for batch in loader if batch is not None))

    def __iter__(self):
        return self.iterate(0)


def _collate_readable(samples: list[tuple[Any, int] | None]) -> Any:
    """The default collation of the samples that could be read (None: none could)."""
    readable = [sample for sample in samples if sample is not None]
    return torch.utils.data.default_collate(readable) if readable else None


@dataclass
class TrainingData:
    """What training needs of a data set: the batches, the class names, the input geometry the model
    records (``input_size``, ``interpolation``, ``crop_pct``) and a ``record`` for config.json."""

    train: Any
    test: Any
    classes: tuple[str, ...]
    input_size: tuple[int, int, int]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    record: dict[str, Any] = field(default_factory=dict)


def timm_transforms(data_config: dict[str, Any]):
    """timm's training and evaluation transforms for ``data_config`` without the normalization
    (our models normalize inside)."""
    from timm.data import create_transform

    def without_normalize(transform):
        transform.transforms = [t for t in transform.transforms if type(t).__name__ != "Normalize"]
        return transform

    train = without_normalize(create_transform(**data_config, is_training=True))
    evaluation = without_normalize(create_transform(**data_config, is_training=False))
    return train, evaluation


def resolve_input(recipe, backbone_cfg: dict[str, Any]) -> dict[str, Any]:
    """timm's data config for the recipe: its ``input_size`` when given, else the architecture's."""
    from timm.data import resolve_data_config

    args = {"input_size": tuple(recipe.input_size)} if recipe.input_size else {}
    return resolve_data_config(args, pretrained_cfg=backbone_cfg)


def prepare_data(
    recipe,
    data_dir: str | os.PathLike,
    backbone_cfg: dict[str, Any],
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
) -> TrainingData:
    """The recipe's data set from ``data_dir``, batched for training (shuffled, augmented, the last
    partial batch dropped) and for evaluation."""
    if recipe.dataset == "cifar10":
        return _cifar10(recipe, data_dir, backbone_cfg, rank, world_size)
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(
            f"data directory {str(root)!r} does not exist; a {recipe.dataset} data set holds {FOLDER_LAYOUT}"
        )
    if recipe.dataset == "imagenet100":
        classes = tuple(sorted(imagenet100_wnids()))
        missing = [c for c in classes if not (root / "train" / c).is_dir()]
        if missing:
            raise DataError(
                f"ImageNet-100 at {str(root / 'train')!r} lacks {len(missing)} of the 100 class folders "
                f"(e.g. {missing[:3]}); expected 'train/<wnid>/*' and 'val/<wnid>/*' for every id in imagenet100_wnids.txt"
            )
    else:
        classes = folder_classes(root)
    eval_split = eval_split_name(root)
    if recipe.dataset == "folder":  # ImageNet-100 is a subset of the folders by design
        check_classes(root, eval_split, classes)
    data_config = resolve_input(recipe, backbone_cfg)
    train_transform, eval_transform = timm_transforms(data_config)
    train_files = ImageFiles(root / "train", classes, train_transform, seed=recipe.seed, every_class=True)
    if recipe.max_train_images:
        keep = torch.randperm(len(train_files), generator=torch.Generator().manual_seed(recipe.seed))
        train_files.samples = [train_files.samples[i] for i in keep[: recipe.max_train_images].tolist()]
    eval_files = ImageFiles(root / eval_split, classes, eval_transform, substitute_unreadable=False)
    common = {"seed": recipe.seed, "rank": rank, "world_size": world_size, "workers": workers}
    train = FolderBatches(train_files, recipe.batch_size, shuffle=True, drop_last=True, **common)
    test = FolderBatches(eval_files, max(recipe.batch_size, 64), **common)
    return TrainingData(
        train=train,
        test=test,
        classes=classes,
        input_size=tuple(data_config["input_size"]),
        interpolation=data_config.get("interpolation", "bilinear"),
        crop_pct=float(data_config.get("crop_pct", 1.0)),
        record={
            "name": "ImageNet-100" if recipe.dataset == "imagenet100" else f"image folder ({root.name})",
            "dataset": recipe.dataset,
            "train_images": len(train_files),
            "eval_split": eval_split,
            "test_images": len(eval_files),
            "transforms": {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_config.items()},
        },
    )


def _cifar10(recipe, data_dir, backbone_cfg, rank: int, world_size: int) -> TrainingData:
    from .data import CIFAR10_CLASSES, ImageArrays

    train_data = load_cifar10(data_dir, "train")
    test_data = load_cifar10(data_dir, "test")
    if recipe.max_train_images:
        # A seeded random subset: the arrays are ordered by class.
        subset = torch.randperm(len(train_data), generator=torch.Generator().manual_seed(recipe.seed))
        subset = subset[: recipe.max_train_images].numpy()
        train_data = ImageArrays(
            train_data.images[subset], train_data.labels[subset], train_data.classes, train_data.name
        )
    common = {"seed": recipe.seed, "rank": rank, "world_size": world_size}
    train = TensorBatches(
        train_data,
        recipe.batch_size,
        shuffle=True,
        augment=True,
        drop_last=True,
        cutout=recipe.cutout,
        cutout_fill=tuple(backbone_cfg.get("mean", ())) if recipe.cutout else None,
        **common,
    )
    test = TensorBatches(test_data, 500, rank=rank, world_size=world_size)
    input_size = (
        tuple(recipe.input_size) if recipe.input_size else tuple(backbone_cfg.get("input_size", (3, 32, 32)))
    )
    if input_size != (3, 32, 32):
        raise DataError(f"input_size={list(input_size)}: CIFAR-10 images are [3, 32, 32]")
    return TrainingData(
        train=train,
        test=test,
        classes=CIFAR10_CLASSES,
        input_size=input_size,
        interpolation=backbone_cfg.get("interpolation", "bilinear"),
        crop_pct=1.0,
        record={
            "name": train_data.name,
            "dataset": "cifar10",
            "train_images": len(train_data),
            "eval_split": "test",
            "test_images": len(test_data),
        },
    )


def eval_arrays(model, data_dir: str | os.PathLike, split: str | None, dataset: str):
    """An evaluation split as uint8 arrays at the model's input size (its eval transform), for
    :func:`lga_zoo.evaluate.evaluate`: CIFAR-10's ``test`` (or ``train``), or a folder's ``val``
    (or ``test``) split resized and center-cropped as ``model.transforms()`` does."""
    from .data import ImageArrays
    from .inputs import resize_transform

    if dataset == "cifar10":
        return load_cifar10(data_dir, split or "test")
    root = Path(data_dir).expanduser()
    split = split or eval_split_name(root)
    classes = tuple(model.labels) if model.labels else folder_classes(root, split)
    if dataset == "folder":
        check_classes(root, split, classes)
    files = ImageFiles(root / split, classes)
    transform = resize_transform(model.input_size[1:], model.interpolation, model.crop_pct)
    images, labels = [], []
    for path, label in files.samples:
        picture = files._open(path)  # unreadable files are reported and left out
        if picture is not None:
            images.append(np.asarray(transform(picture), dtype=np.uint8))
            labels.append(label)
    return ImageArrays(
        np.stack(images), np.asarray(labels, dtype=np.int64), classes, f"{root.name} ({split})"
    )


def dataset_classes(recipe, data_dir: str | os.PathLike) -> tuple[str, ...]:
    """The class names of the recipe's data set, read before anything is decoded (so the model,
    and its pretrained weights, can be checked first)."""
    from .data import CIFAR10_CLASSES

    if recipe.dataset == "cifar10":
        return CIFAR10_CLASSES
    if recipe.dataset == "imagenet100":
        return tuple(sorted(imagenet100_wnids()))
    return folder_classes(Path(data_dir).expanduser())
