"""BatchNorm folded into the convolution before it, for the length of a block (evaluation speed).

In eval mode a ``BatchNorm2d`` is a per-channel affine map of its input, so when that input is the
output of a ``Conv2d`` the two are one convolution with scaled weights and a bias
(``torch.nn.utils.fusion.fuse_conv_bn_eval``). The function, and so every gradient and double
gradient of it, is the same up to float rounding; the attacks of an evaluation (a double backward per
step) skip BatchNorm's forward, backward and double backward. ``python benchmarks/evaluate.py
--fold-batchnorm`` measures the gain.

:func:`folded_batchnorm` finds the candidate pairs by one forward pass of a probe batch: a plain
``nn.Conv2d`` (not a subclass or a parametrized one, whose forward may change the weight) whose
output, untouched by any in-place op, is the input of a plain ``nn.BatchNorm2d`` that uses running
statistics; each called once, registered at one place, neither hooked. Each pair is kept only if
folding it leaves the logits on the probe the same (it would not, say, when another module also reads
the convolution's output). The caller's modules come back on exit, also when the block raises.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .state import CALL_HOOKS, swapped_children

# The folded logits may differ from the model's by rounding only: this share of their scale is above
# the rounding of fp32 and of TF32 convolutions on a GPU, and far below what folding a BatchNorm whose
# convolution output is read elsewhere changes.
RELATIVE_TOLERANCE = 1e-3


def _hooked(module: nn.Module) -> bool:
    return any(getattr(module, name, None) for name in CALL_HOOKS)


def foldable_pairs(model: nn.Module, probe: Tensor) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """The (convolution, BatchNorm) candidates of ``model`` (in eval mode) that one forward pass of
    ``probe`` shows: see the module docstring. :func:`folded_batchnorm` still checks each one's logits."""
    places = Counter(
        id(child)
        for _, parent in model.named_modules(remove_duplicate=False)
        for child in parent._modules.values()
        if child is not None
    )
    calls: Counter[int] = Counter()
    conv_outputs: dict[int, tuple[Tensor, int, nn.Conv2d]] = {}
    bn_inputs: list[tuple[nn.BatchNorm2d, Tensor, int]] = []

    def after_conv(module, args, output):
        calls[id(module)] += 1
        # the tensor is kept so that its id stays unique; its version tells an in-place op after
        conv_outputs[id(output)] = (output, output._version, module)

    def before_bn(module, args):
        calls[id(module)] += 1
        bn_inputs.append((module, args[0], args[0]._version))

    handles = []
    for module in model.modules():
        if type(module) is nn.Conv2d:
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
    for bn, bn_input, version in bn_inputs:
        output, output_version, conv = conv_outputs.get(id(bn_input), (None, None, None))
        if output is not bn_input or version != output_version:
            continue
        once = all(calls[id(m)] == 1 and places[id(m)] == 1 for m in (conv, bn))
        running = bn.track_running_stats and bn.running_mean is not None and not bn.training
        if once and running and not conv.training and not _hooked(conv) and not _hooked(bn):
            pairs.append((conv, bn))
    return pairs


@contextlib.contextmanager
def folded_batchnorm(model: nn.Module, probe: Tensor) -> Iterator[int]:
    """Run the block with every foldable BatchNorm of ``model`` (in eval mode) folded into its
    convolution: the convolution swapped for a folded copy, the BatchNorm for ``nn.Identity``.
    ``probe``: a small batch of valid inputs (two images do). Yields the number of BatchNorms folded:
    a pair whose folding changes the logits on ``probe`` by more than rounding is left as it is."""
    if len(probe) == 0:
        raise ValueError("folded_batchnorm needs a probe batch of at least one input; got an empty batch")
    with torch.no_grad():
        reference = model(probe).float()
    candidates = foldable_pairs(model, probe)
    folded_convs = {conv: fuse_conv_bn_eval(conv, bn) for conv, bn in candidates}
    kept = [
        pair for pair in candidates if _same_logits(model, probe, _swaps([pair], folded_convs), reference)
    ]
    if not _same_logits(model, probe, _swaps(kept, folded_convs), reference):  # each alone, not together
        kept = []
    with swapped_children(model, _swaps(kept, folded_convs).get):
        yield len(kept)


def _swaps(
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]], folded_convs: dict[nn.Module, nn.Module]
) -> dict[nn.Module, nn.Module]:
    """What each module of ``pairs`` is swapped for: its folded copy, or ``nn.Identity`` for a BatchNorm."""
    return {
        module: folded_convs[module] if module in folded_convs else nn.Identity()
        for pair in pairs
        for module in pair
    }


def _same_logits(
    model: nn.Module, probe: Tensor, swaps: dict[nn.Module, nn.Module], reference: Tensor
) -> bool:
    """Whether ``model`` with ``swaps`` made gives ``reference`` on ``probe``, up to rounding."""
    if not swaps:
        return True
    with torch.no_grad(), swapped_children(model, swaps.get):
        folded = model(probe).float()
    scale = reference.abs().max().clamp_min(1.0)
    return bool((folded - reference).abs().max() <= RELATIVE_TOLERANCE * scale)
