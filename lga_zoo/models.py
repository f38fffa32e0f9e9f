"""Architectures and the explainable wrapper.

* ``resnet18_cifar`` and ``resnet18_w16_cifar`` are registered with timm (``timm.create_model``
  builds them): ResNet-18 with a 3x3 stride-1 stem and no max-pool for 32x32 images, the second with
  base width 16 (about 0.7 M parameters). Any other timm architecture works too.
* :class:`ExplainableClassifier` puts the input normalization inside the model (inputs are pixels
  in [0, 1]) and adds ``.explain()``, ``.predict()`` and ``.transforms()``.
* :func:`set_activation` swaps ReLU for Softplus(beta) (an architecture option recorded in
  config.json); :func:`softplus_activations` does so temporarily, e.g. during an attribution attack.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import timm
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, ResNet
from torch import Tensor, nn

from .state import swapped_children

ACTIVATIONS = ("relu", "softplus")
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _cfg(architecture: str) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (4, 4),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "mean": CIFAR_MEAN,
        "std": CIFAR_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        "architecture": architecture,
    }


default_cfgs = generate_default_cfgs(
    {"resnet18_cifar": _cfg("resnet18_cifar"), "resnet18_w16_cifar": _cfg("resnet18_w16_cifar")}
)


def _cifar_resnet18(variant: str, width: int, pretrained: bool, **kwargs: Any) -> ResNet:
    if pretrained:
        raise ValueError(f"{variant} has no timm weights; use lga_zoo.load('{variant[:-6]}_cifar10_...')")
    kwargs.setdefault("num_classes", 10)
    channels = tuple(width * 2**i for i in range(4))
    model = build_model_with_cfg(
        ResNet,
        variant,
        pretrained=False,
        block=BasicBlock,
        layers=(2, 2, 2, 2),
        channels=channels,
        stem_width=width,
        **kwargs,
    )
    in_chans = kwargs.get("in_chans", 3)
    # timm's plain stem always has 64 channels; the CIFAR stem is a 3x3 stride-1 conv of `width`.
    model.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    model.maxpool = nn.Identity()
    if model.layer1[0].conv1.in_channels != width:
        first_block = BasicBlock(width, width)
        first_block.zero_init_last()
        model.layer1[0] = first_block
    return model


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-18 for 32x32 images: 3x3 stride-1 stem, no max-pool (about 11.2 M parameters)."""
    return _cifar_resnet18("resnet18_cifar", 64, pretrained, **kwargs)


@register_model
def resnet18_w16_cifar(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Narrow ResNet-18 (base width 16, about 0.7 M parameters) for 32x32 images, sized for CPUs."""
    return _cifar_resnet18("resnet18_w16_cifar", 16, pretrained, **kwargs)


def set_activation(module: nn.Module, activation: str = "relu", beta: float = 20.0) -> nn.Module:
    """Replace every ReLU (or Softplus) in ``module`` by ``activation`` (``relu`` or ``softplus``
    with ``beta``), in place; returns ``module``."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not one of {ACTIVATIONS}")
    for name, child in module.named_children():
        if isinstance(child, (nn.ReLU, nn.Softplus)):
            new = nn.ReLU(inplace=False) if activation == "relu" else nn.Softplus(beta=beta)
            setattr(module, name, new)
        else:
            set_activation(child, activation, beta)
    return module


@contextlib.contextmanager
def softplus_activations(module: nn.Module, beta: float = 20.0) -> Iterator[nn.Module]:
    """Temporarily swap every ReLU module for Softplus(beta); the originals come back on exit,
    also when the body raises. Functional ``F.relu`` calls are not affected."""
    with swapped_children(
        module, lambda child: nn.Softplus(beta=beta) if isinstance(child, nn.ReLU) else None
    ):
        yield module


def attack_activation(module: nn.Module, beta: float) -> str:
    """What the attacks differentiate when they run ``module`` under
    ``softplus_activations(module, beta)``: its ReLUs as Softplus(beta), and its own Softplus."""
    parts = []
    if any(isinstance(m, nn.ReLU) for m in module.modules()):
        parts.append(f"ReLU swapped for Softplus(beta={beta:g})")
    own = sorted({float(m.beta) for m in module.modules() if isinstance(m, nn.Softplus)})
    if own:
        parts.append("the model's own " + ", ".join(f"Softplus(beta={b:g})" for b in own))
    return " and ".join(parts) or "no ReLU or Softplus (the model's own activations)"


def create_backbone(
    architecture: str,
    num_classes: int,
    activation: str = "relu",
    softplus_beta: float = 20.0,
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """A timm model by name with ``num_classes`` outputs and the given activation."""
    backbone = timm.create_model(architecture, pretrained=pretrained, num_classes=num_classes, **kwargs)
    return set_activation(backbone, activation, softplus_beta)


class ExplainableClassifier(nn.Module):
    """An image classifier over pixels in [0, 1] with explanations built in.

    ``backbone`` is any classifier over normalized images; ``mean``/``std`` are its normalization,
    applied inside ``forward``. ``input_size`` is (C, H, W); ``labels`` the class names;
    ``interpolation`` and ``crop_pct`` describe the resize-and-center-crop of :meth:`transforms`.
    The state dict holds the backbone's weights under ``backbone.``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        input_size: Sequence[int] = (3, 224, 224),
        labels: Sequence[str] | None = None,
        interpolation: str = "bilinear",
        crop_pct: float = 1.0,
    ):
        super().__init__()
        if len(mean) != len(std) or len(mean) != input_size[0]:
            raise ValueError(
                f"mean {tuple(mean)} and std {tuple(std)} need one value per channel of {input_size}"
            )
        self.backbone = backbone
        # The wrapper takes the backbone's mode without touching the backbone's own modules.
        self.training = backbone.training
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.input_size = tuple(int(s) for s in input_size)
        self.labels = list(labels) if labels is not None else None
        self.interpolation = interpolation
        self.crop_pct = float(crop_pct)
        self.entry = None  # the registry entry, set by lga_zoo.load
        self.source = None  # where lga_zoo.load read it from
        self.sha256 = None  # sha256 of the weights file lga_zoo.load read
        self.backbone_mean = tuple(float(m) for m in mean)
        self.backbone_std = tuple(float(s) for s in std)
        # timm's data config of what this model takes: pixels in [0, 1], so mean 0 and std 1 (the
        # backbone's normalization is applied inside forward). timm's resolve_data_config and
        # create_transform then give the model its input, not an input normalized a second time.
        self.pretrained_cfg = {
            "input_size": self.input_size,
            "mean": (0.0,) * self.input_size[0],
            "std": (1.0,) * self.input_size[0],
            "interpolation": interpolation,
            "crop_pct": self.crop_pct,
            "num_classes": None if labels is None else len(self.labels),
        }

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return self.mean.device

    @property
    def backbone_cfg(self) -> dict:
        """``pretrained_cfg`` of the backbone inside: the mean and std it is fed with (what
        ``forward`` applies to the [0, 1] input), as config.json records them."""
        return {**self.pretrained_cfg, "mean": self.backbone_mean, "std": self.backbone_std}

    def transforms(self):
        """The torchvision evaluation transform, as torchvision's ``weights.transforms()``: a PIL
        image (or a CHW uint8 or float tensor) to a CHW float tensor of pixels in [0, 1] at this
        model's input size (resize by ``crop_pct``, center crop), so ``model(model.transforms()(img)[None])``
        gives the logits. No normalization: it lives in the model."""
        from .inputs import eval_transform

        return eval_transform(self.input_size, self.interpolation, self.crop_pct)

    def explain(self, inputs, target=None, method: str = "grad", normalize: str = "max", **method_kwargs):
        """Attribution maps for ``inputs``; see :func:`lga_zoo.attribution.explain`."""
        from .attribution import explain

        return explain(self, inputs, target=target, method=method, normalize=normalize, **method_kwargs)

    def predict(self, inputs):
        """``(classes, probabilities)`` for ``inputs`` (any kind :meth:`explain` accepts)."""
        from .attribution import predict

        return predict(self, inputs)


def wrap(
    model: nn.Module,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_size: Sequence[int] | None = None,
    labels: Sequence[str] | None = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
) -> ExplainableClassifier:
    """Turn any image classifier over normalized images into an :class:`ExplainableClassifier`.

    Values not given are read from a timm model's ``pretrained_cfg`` where it has one; otherwise
    mean 0, std 1 (no normalization) and input size (3, 224, 224).

    Args:
        model: a ``torch.nn.Module`` mapping normalized (B, C, H, W) images to logits.
        mean, std: the normalization the model expects, one number per channel (std > 0).
        input_size: (C, H, W).
        labels: one class name per output of the model.
        interpolation, crop_pct: the resize-and-crop of ``transforms()``.

    Returns:
        The wrapper; ``model`` itself is not changed.

    Raises:
        TypeError: ``model`` is not a module.
        ValueError: a value that cannot work, named (a zero std, a label count that is not the
            number of outputs).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (an image classifier), got {type(model).__name__}")
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    in_size = tuple(input_size or cfg.get("input_size") or (3, 224, 224))
    channels = in_size[0]
    mean = mean if mean is not None else cfg.get("mean", (0.0,) * channels)
    std = std if std is not None else cfg.get("std", (1.0,) * channels)
    if not all(math.isfinite(float(m)) for m in mean):
        raise ValueError(f"mean={tuple(mean)} must hold finite numbers")
    if not all(math.isfinite(float(v)) and float(v) > 0 for v in std):
        raise ValueError(f"std={tuple(std)} must hold finite numbers > 0 (images are divided by it)")
    if labels is not None:
        _check_label_count(model, list(labels), in_size)
    return ExplainableClassifier(
        model,
        mean=mean,
        std=std,
        input_size=in_size,
        labels=labels,
        interpolation=interpolation or cfg.get("interpolation", "bilinear"),
        crop_pct=crop_pct if crop_pct is not None else cfg.get("crop_pct", 1.0),
    )


def _check_label_count(model: nn.Module, labels: list[str], input_size: tuple[int, ...]) -> None:
    """``labels`` must name every output of ``model``: counted on one black image, with the model
    given back as it was (modes, buffers, gradients)."""
    from .state import preserved

    reference = next(iter(model.parameters()), None)
    x = torch.zeros(1, *input_size, device=reference.device if reference is not None else None,
                    dtype=reference.dtype if reference is not None else None)  # fmt: skip
    try:
        with preserved(model), torch.no_grad():
            outputs = model(x)
    except Exception as err:  # noqa: BLE001 - any failure gets the same one-line answer
        raise ValueError(
            f"input_size={input_size}: the model does not take a (1, {', '.join(map(str, input_size))}) "
            f"batch ({type(err).__name__}: {err}); give the input_size it takes"
        ) from None
    count = outputs.shape[-1] if isinstance(outputs, Tensor) and outputs.dim() == 2 else None
    if count is not None and count != len(labels):
        raise ValueError(
            f"labels has {len(labels)} names, the model has {count} outputs: give one per output"
        )
