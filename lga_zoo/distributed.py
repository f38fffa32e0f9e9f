"""The ``torchrun`` conventions that ``lga-zoo train`` and ``lga-zoo evaluate`` share.

``torchrun --nproc_per_node N`` starts N processes with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``
in their environment. With ``WORLD_SIZE`` > 1 they form one process group, NCCL on GPUs and gloo on
the CPU, each process on the GPU of its ``LOCAL_RANK``. Outside ``torchrun`` (or with one process)
nothing here starts a group, and the helpers below are the identity.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def rank_world() -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK) from torchrun's environment; (0, 1, 0) without it.

    Returns:
        The rank of this process, the number of processes and the rank on this machine.
    """
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def process_device(device: str | torch.device | None, local_rank: int, world_size: int) -> torch.device:
    """The device of this process: ``device`` (default: CUDA if available, else the CPU), with "cuda"
    taken as the GPU of ``local_rank``.

    Args:
        device: what the user asked for ("cpu", "cuda", "cuda:1") or None.
        local_rank: this process's rank on its machine (torchrun's LOCAL_RANK).
        world_size: the number of processes.

    Returns:
        The device this process runs on.

    Raises:
        ValueError: a GPU index other than ``local_rank`` under torchrun (every process on one GPU).
    """
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank)  # "cuda": each torchrun process its LOCAL_RANK's GPU
    if device.type == "cuda" and world_size > 1 and device.index != local_rank:
        raise ValueError(
            f"--device {device} under torchrun would put every process on one GPU; pass --device cuda "
            "(or none): each process takes the GPU of its LOCAL_RANK"
        )
    return device


def join_process_group(device: torch.device, world_size: int) -> None:
    """Start torchrun's process group (NCCL on a GPU, gloo on the CPU) unless it runs already or
    there is one process; select ``device`` when it is a GPU.

    Args:
        device: this process's device (see :func:`process_device`).
        world_size: the number of processes.
    """
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)


def leave_process_group() -> None:
    """End the process group if one was started (at the end of a command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def group_rank_world() -> tuple[int, int]:
    """(rank, world size) of the started process group; (0, 1) without one.

    Returns:
        This process's rank and the number of processes.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gathered(value: Any) -> list[Any]:
    """Every process's ``value`` (picklable), in rank order; ``[value]`` without a process group.

    Args:
        value: this process's contribution.

    Returns:
        The values of ranks 0, 1, ..., the same list on every process.
    """
    if group_rank_world()[1] == 1:
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` (picklable) on every process, so that every process takes the same branch;
    ``value`` itself without a process group.

    Args:
        value: this process's value (only rank 0's is used).

    Returns:
        Rank 0's value.
    """
    if group_rank_world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
