"""BatchNorm folded into the convolution before it, for the length of a block (evaluation speed).

In eval mode a ``BatchNorm2d`` is a per-channel affine map of its input, so when that input is the
output of a ``Conv2d`` the two are one convolution with scaled weights and a bias
(``torch.nn.utils.fusion.fuse_conv_bn_eval``). The function, and so every gradient and double
gradient of it, is the same up to float rounding; the attacks of an evaluation (a double backward per
step) skip BatchNorm's forward, backward and double backward. ``python benchmarks/evaluate.py
--fold-batchnorm`` measures the gain.

:func:`folded_batchnorm` finds the pairs by one forward pass of a probe batch: a BatchNorm is folded
when its input is the output of a convolution, each called once, neither shared nor hooked, and the
BatchNorm uses running statistics. It then checks that the folded model gives the same logits on the
probe; if not (say, another module also reads the convolution's output) it folds nothing. The
caller's modules come back on exit, also when the block raises.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .state import HOOK_DICTS, swapped_children

# the folded logits may differ from the model's by float rounding only: this share of their scale
RELATIVE_TOLERANCE = 1e-3


def _hooked(module: nn.Module) -> bool:
    return any(getattr(module, name, None) for name in HOOK_DICTS[:4])


def foldable_pairs(model: nn.Module, probe: Tensor) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """The (convolution, BatchNorm) pairs of ``model`` (in eval mode) that one forward pass of
    ``probe`` shows can be folded: the BatchNorm reads the convolution's output, both run once and
    sit at one place in the model, neither has hooks, and the BatchNorm (exactly ``nn.BatchNorm2d``,
    not a subclass that adds an activation) uses running statistics."""
    places = Counter(
        id(child)
        for _, parent in model.named_modules(remove_duplicate=False)
        for child in parent._modules.values()
        if child is not None
    )
    calls: Counter[int] = Counter()
    conv_outputs: dict[int, tuple[Tensor, nn.Conv2d]] = {}
    bn_inputs: list[tuple[nn.BatchNorm2d, Tensor]] = []

    def after_conv(module, args, output):
        calls[id(module)] += 1
        conv_outputs[id(output)] = (output, module)  # the tensor is kept so that its id stays unique

    def before_bn(module, args):
        calls[id(module)] += 1
        bn_inputs.append((module, args[0]))

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(after_conv))
        elif type(module) is nn.BatchNorm2d:
            handles.append(module.register_forward_pre_hook(before_bn))
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
    pairs = []
    for bn, bn_input in bn_inputs:
        tensor_and_conv = conv_outputs.get(id(bn_input))
        if tensor_and_conv is None or tensor_and_conv[0] is not bn_input:
            continue
        conv = tensor_and_conv[1]
        once = calls[id(conv)] == 1 and calls[id(bn)] == 1 and places[id(conv)] == 1 and places[id(bn)] == 1
        running = bn.track_running_stats and bn.running_mean is not None and not bn.training
        if once and running and not conv.training and not _hooked(conv) and not _hooked(bn):
            pairs.append((conv, bn))
    return pairs


@contextlib.contextmanager
def folded_batchnorm(model: nn.Module, probe: Tensor) -> Iterator[int]:
    """Run the block with every foldable BatchNorm of ``model`` (see :func:`foldable_pairs`; the
    model in eval mode) folded into its convolution: the convolution swapped for a folded copy, the
    BatchNorm for ``nn.Identity``. ``probe``: a small batch of valid inputs (two images do). Yields
    the number of BatchNorms folded: 0 when the folded model's logits on ``probe`` differ from the
    model's by more than rounding, and the block then runs on the model as it is."""
    if len(probe) == 0:
        raise ValueError("folded_batchnorm needs a probe batch of at least one input; got an empty batch")
    pairs = foldable_pairs(model, probe)
    replacements: dict[int, nn.Module] = {}
    for conv, bn in pairs:
        replacements[id(conv)] = fuse_conv_bn_eval(conv, bn)
        replacements[id(bn)] = nn.Identity()
    if pairs and not _same_logits(model, probe, replacements):
        pairs, replacements = [], {}
    with swapped_children(model, lambda child: replacements.get(id(child))):
        yield len(pairs)


def _same_logits(model: nn.Module, probe: Tensor, replacements: dict[int, nn.Module]) -> bool:
    with torch.no_grad():
        reference = model(probe).float()
        with swapped_children(model, lambda child: replacements.get(id(child))):
            folded = model(probe).float()
    scale = reference.abs().max().clamp_min(1.0)
    return bool((folded - reference).abs().max() <= RELATIVE_TOLERANCE * scale)
