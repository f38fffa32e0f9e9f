"""Where a zoo model's files are on this machine, without torch: the checkout's ``model_cards/``
and the Hugging Face cache (what ``lga-zoo list`` shows)."""

from __future__ import annotations

from pathlib import Path

from .registry import get_entry

WEIGHTS_NAME = "model.safetensors"


def checkout_root() -> Path:
    """The folder holding ``lga_zoo/`` (a git checkout or a torch.hub clone has ``model_cards/`` there)."""
    return Path(__file__).resolve().parents[1]


def model_card_dir(name: str) -> Path:
    """The checkout's folder of the zoo model ``name``."""
    return checkout_root() / "model_cards" / name


def available_here(name: str) -> str:
    """Where ``name``'s weights are on this machine without a network: ``checkout``, ``cache`` or ``-``.

    Args:
        name: a zoo name.

    Returns:
        ``"checkout"``, ``"cache"`` or ``"-"``.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    entry = get_entry(name)
    if not entry.has_weights:
        return "-"
    if (model_card_dir(name) / WEIGHTS_NAME).is_file():
        return "checkout"
    try:
        hf_hub_download(entry.hf_repo_id, WEIGHTS_NAME, revision=entry.revision, local_files_only=True)
        return "cache"
    except (LocalEntryNotFoundError, OSError, ValueError):
        return "-"
