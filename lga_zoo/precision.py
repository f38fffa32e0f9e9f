"""Whether bf16 autocast pays off on a device.

bf16 autocast on the CPU is a speed-up only where oneDNN has bf16 kernels for the CPU (AVX-512 or
AMX on x86, bf16 instructions on ARM). On a CPU with AVX2 only, oneDNN falls back to reference
kernels and bf16 is many times slower than fp32: on a 2-core AMD EPYC (AVX2 only), the LGA fine-tune
of resnet18_cifar at batch 128 logged 0.4 img/s for its first bf16 step and finished no second step
in three more minutes, against 22 s per step in fp32 (``benchmarks/train_step.py``: 5.8 img/s).
"""

from __future__ import annotations

import sys

import torch


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 on this CPU with native kernels (PyTorch's own check)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bf16_pays_off(device: torch.device | str) -> bool:
    """Whether bf16 autocast on ``device`` runs native kernels: always on CUDA, on the CPU only where
    :func:`cpu_has_native_bf16`."""
    return torch.device(device).type != "cpu" or cpu_has_native_bf16()


def use_bf16(device: torch.device | str, what: str) -> bool:
    """``True`` when bf16 autocast should be used for ``what`` (asked for) on ``device``; on a CPU
    without native bf16 it prints one line to stderr saying that ``what`` runs in fp32 instead and
    returns ``False``."""
    if bf16_pays_off(device):
        return True
    print(
        f"{what}: this CPU has no native bf16 kernels (oneDNN needs AVX-512 or AMX), where bf16 autocast "
        "is many times slower than fp32; running in fp32 instead",
        file=sys.stderr,
    )
    return False
