"""Turn what a user passes (PIL images, numpy arrays, tensors) into a model's input batch.

Every kind goes the same way: to a float (B, C, H, W) tensor of pixels in [0, 1], then the model's
resize-and-center-crop (:func:`resize_transform`), so the same picture gives the same batch whatever
its container. Bad input raises :class:`InputError` naming what was given and what is accepted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Resize

ACCEPTED = (
    "a PIL image (RGB, L or RGBA) or a list of them, an HWC uint8 or float numpy array, "
    "a CHW or BCHW float tensor of pixels in [0, 1], or a uint8 tensor"
)


class InputError(ValueError):
    """Input that is not an image batch the model accepts."""


def resize_transform(size: Sequence[int], interpolation: str = "bilinear", crop_pct: float = 1.0) -> Compose:
    """Resize the shorter side to ``size / crop_pct`` and center-crop to ``size`` (H, W), as timm's
    eval transform does; works on PIL images and on (B, C, H, W) tensors."""
    height, width = int(size[0]), int(size[1])
    scale = int(np.floor(min(height, width) / crop_pct))
    mode = InterpolationMode(interpolation)
    return Compose([Resize(scale, interpolation=mode, antialias=True), CenterCrop((height, width))])


class ToPixels:
    """A PIL image (any mode :func:`to_batch` accepts) or a CHW uint8 or float tensor to a CHW float
    tensor of pixels in [0, 1] with ``channels`` channels: the last step of :func:`eval_transform`."""

    def __init__(self, channels: int):
        self.channels = int(channels)

    def __call__(self, picture) -> Tensor:
        if isinstance(picture, Tensor) and picture.dim() != 3:
            raise InputError(f"the transform takes one CHW image, got shape {tuple(picture.shape)}")
        if isinstance(picture, Tensor) and picture.is_floating_point():
            picture = picture.clamp(0, 1)  # a bicubic resize of a tensor overshoots [0, 1] a little
        return to_batch(picture, (self.channels, *_size_of(picture)))[0].float()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channels={self.channels})"


def _size_of(picture) -> tuple[int, int]:
    if isinstance(picture, Image.Image):
        return picture.height, picture.width
    if isinstance(picture, Tensor):
        return int(picture.shape[-2]), int(picture.shape[-1])
    raise InputError(f"the transform takes a PIL image or a CHW tensor, got {type(picture).__name__}")


def eval_transform(
    input_size: Sequence[int], interpolation: str = "bilinear", crop_pct: float = 1.0
) -> Compose:
    """The evaluation transform of a model taking ``input_size`` (C, H, W): resize and center crop
    (:func:`resize_transform`, on the PIL image as timm and torchvision do), then :class:`ToPixels`."""
    resize = resize_transform(input_size[1:], interpolation, crop_pct)
    return Compose([*resize.transforms, ToPixels(input_size[0])])


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _pil_to_tensor(img: Image.Image, channels: int) -> Tensor:
    """(C, H, W) pixels in [0, 1]: 8-bit modes by 255, 16-bit integer modes (``I;16*`` and ``I``, as
    Pillow opens 16-bit PNGs) by 65535, float mode ``F`` as it is (must lie in [0, 1])."""
    if img.mode in SIXTEEN_BIT_MODES:
        array = np.asarray(img, dtype=np.float64)
        if array.min() < 0 or array.max() > 65535:
            raise InputError(
                f"a mode {img.mode!r} image must hold 16-bit values 0..65535, got "
                f"[{array.min():.0f}, {array.max():.0f}]"
            )
        return torch.from_numpy(array / 65535).float()[None]
    if img.mode == "F":
        array = np.asarray(img, dtype=np.float32)
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise InputError(
                f"a mode 'F' (float) image must hold pixels in [0, 1], got "
                f"[{np.nanmin(array):.3g}, {np.nanmax(array):.3g}]; scale it, or pass a uint8 image"
            )
        return torch.from_numpy(array.copy())[None]
    img = img.convert("L" if channels == 1 else "RGB")
    array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(255)


def rgb8_image(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB with the pixel values :func:`to_batch` reads: 16-bit and float (``F``)
    grey images are scaled to 0..255 (Pillow's ``convert("RGB")`` clips them at 255); every other
    mode goes through ``convert("RGB")``. A 16-bit or float image out of range raises
    :class:`InputError`."""
    if img.mode in SIXTEEN_BIT_MODES or img.mode == "F":
        grey = _pil_to_tensor(img, 1)[0].mul(255).round().to(torch.uint8).numpy()
        return Image.fromarray(grey).convert("RGB")
    return img.convert("RGB")


def open_image(path, max_pixels: int | None = None) -> Image.Image:
    """Open an image file fully (decoded, the file closed again); a missing path, a folder, a file
    PIL cannot read or (with ``max_pixels``) one larger than that raises :class:`InputError` naming
    the path. The size is checked before the pixels are decoded."""
    from pathlib import Path

    from PIL import UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{str(path)!r} is a folder, not an image file; pass image files (jpg, png, ...)")
    if not path.is_file():
        raise InputError(f"image {str(path)!r} does not exist")
    try:
        with Image.open(path) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise InputError(
                    f"{str(path)!r}: the image is {img.width}x{img.height} pixels, more than {max_pixels:,}"
                )
            img.load()
            return img.copy() if img.mode != "P" else img.convert("RGBA")
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(
            f"{str(path)!r} is too large to decode safely (Pillow's decompression-bomb limit)"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(
            f"{str(path)!r} is not an image file Pillow can read ({type(err).__name__}); "
            "accepted: JPEG, PNG, BMP, WebP, TIFF, GIF and the other formats Pillow opens"
        ) from None


def _array_to_tensor(array: np.ndarray, channels: int) -> Tensor:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise InputError(
            f"a numpy array must be HWC (or HW for grayscale), got shape {array.shape}; accepted: {ACCEPTED}"
        )
    if array.shape[2] == 4:
        array = array[:, :, :3]  # RGBA: drop alpha
    if array.shape[2] not in (1, 3):
        raise InputError(
            f"a numpy array must be HWC with 1, 3 or 4 channels last, got shape {array.shape}; accepted: {ACCEPTED}"
        )
    if array.dtype == np.uint8:
        tensor = torch.from_numpy(array.copy()).float().div(255)
    elif np.issubdtype(array.dtype, np.floating):
        tensor = torch.from_numpy(array.astype(np.float32))
    else:
        raise InputError(f"numpy dtype {array.dtype} is not accepted: use uint8 (0..255) or float (0..1)")
    return tensor.permute(2, 0, 1)


def check_pixels(batch: Tensor) -> None:
    """Refuse an empty batch and values that are not finite pixels in [0, 1] (an :class:`InputError`)."""
    if batch.numel() == 0 or batch.shape[0] == 0:
        raise InputError(f"the batch is empty (shape {tuple(batch.shape)}); pass at least one image")
    if not torch.isfinite(batch).all():
        bad = (~torch.isfinite(batch)).sum().item()
        raise InputError(f"the input holds {bad} NaN or infinite values; pixels must be finite, in [0, 1]")
    low, high = batch.min().item(), batch.max().item()
    if low < -1e-6 or high > 1 + 1e-6:
        raise InputError(
            f"float inputs must be pixels in [0, 1], got values in [{low:.3g}, {high:.3g}]; do not normalize "
            "(mean/std normalization happens inside the model), and divide 0..255 values by 255"
        )


def _match_channels(batch: Tensor, channels: int) -> Tensor:
    if batch.shape[1] == channels:
        return batch
    if batch.shape[1] == 1 and channels == 3:
        return batch.expand(-1, 3, -1, -1)
    if batch.shape[1] == 3 and channels == 1:
        return batch.mean(1, keepdim=True)
    raise InputError(
        f"the input has {batch.shape[1]} channels (shape {tuple(batch.shape)}); this model takes {channels} "
        f"(1-channel grayscale is expanded). Tensors are CHW or BCHW with channels first"
    )


def to_batch(
    inputs,
    input_size: Sequence[int],
    interpolation: str = "bilinear",
    crop_pct: float = 1.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """A float (B, C, H, W) batch of pixels in [0, 1] at ``input_size`` (C, H, W) from any accepted kind."""
    channels = int(input_size[0])
    if isinstance(inputs, Image.Image):
        batch = _pil_to_tensor(inputs, channels)[None]
    elif isinstance(inputs, np.ndarray):
        batch = _array_to_tensor(inputs, channels)[None]
    elif isinstance(inputs, Tensor):
        if inputs.device.type == "meta":
            raise InputError(
                "the tensor is on the meta device and holds no values; pass real pixels (a CPU or GPU "
                f"tensor); accepted: {ACCEPTED}"
            )
        batch = inputs.detach()
        if batch.dim() == 3:
            batch = batch[None]
        if batch.dim() != 4:
            raise InputError(
                f"a tensor must be CHW or BCHW, got {batch.dim()}-D shape {tuple(batch.shape)}; "
                f"accepted: {ACCEPTED}"
            )
        if batch.dtype == torch.uint8:
            batch = batch.float().div(255)
        elif not batch.is_floating_point():
            raise InputError(
                f"tensor dtype {batch.dtype} is not accepted: use float pixels in [0, 1] or uint8"
            )
        else:  # float64 stays float64 (for a float64 model); a copy, never the caller's tensor
            batch = batch.float() if batch.dtype in (torch.float16, torch.bfloat16) else batch.clone()
    elif isinstance(inputs, (list, tuple)):
        if len(inputs) == 0:
            raise InputError(f"the list of images is empty; accepted: {ACCEPTED}")
        singles = [to_batch(item, input_size, interpolation, crop_pct) for item in inputs]
        return torch.cat(singles).to(device) if device is not None else torch.cat(singles)
    else:
        raise InputError(f"inputs of type {type(inputs).__name__} are not accepted; accepted: {ACCEPTED}")
    check_pixels(batch)
    batch = _match_channels(batch, channels)
    target_hw = tuple(int(s) for s in input_size[1:])
    if tuple(batch.shape[-2:]) != target_hw:
        batch = resize_transform(target_hw, interpolation, crop_pct)(batch).clamp(0, 1)
    batch = batch.contiguous()
    return batch.to(device) if device is not None else batch
