"""Load zoo models from a folder, a checkout, the Hugging Face cache or the Hub; save and push folders.

Weight sources for a zoo name, in order: ``model_cards/NAME/`` beside the package (a checkout or a
torch.hub clone); the Hugging Face cache; the Hub at the pinned revision. The sha256 and size of
``model.safetensors`` are checked against the registry after every download and every cache hit; a
bad cached file is removed so that it is never used again. ``HF_HUB_OFFLINE=1`` (read at call time)
or ``local_files_only=True`` never touches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

from .folder import (
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    WeightsError,
    atomic_write_text,
    build_config,
    load_model_folder,
    sha256_of,
    write_model_folder,
)
from .local import available_here, checkout_root
from .models import ExplainableClassifier
from .registry import UnknownModelError, ZooEntry, get_entry, list_models

RESULTS_NAME = "results.json"
TRAIN_LOG_NAME = "train_log.jsonl"  # the run's per-epoch log, copied by `lga-zoo publish`
HF_PREFIX = "hf-hub:"


def model_card_dir(name: str) -> Path:
    return checkout_root() / "model_cards" / name


def offline_mode(local_files_only: bool | None = None) -> bool:
    """True when downloads are off: ``local_files_only`` if given, else ``HF_HUB_OFFLINE``."""
    if local_files_only is not None:
        return bool(local_files_only)
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def verify_file(path: Path, sha256: str, size: int | None = None, remove_if_bad: bool = False) -> None:
    """Check ``path`` against the pinned ``sha256`` (and ``size``); a mismatch raises
    :class:`WeightsError` naming the file and both hashes. With ``remove_if_bad`` the bad file (a
    cache blob) is deleted so it is not used again."""
    actual_size = path.stat().st_size
    actual = sha256_of(path)
    if actual == sha256 and (size is None or actual_size == size):
        return
    what = (
        f"truncated ({actual_size} bytes, expected {size})"
        if size and actual_size < size
        else "corrupted or tampered"
    )
    removed = ""
    if remove_if_bad and cache_blob_is_intact(path.resolve(), actual):
        what = (
            "intact, but not the pinned file: the Hub repo holds other files at this revision than the "
            "registry pins. Load the pinned revision, or update lga-zoo (the file stays in the cache)"
        )
    elif remove_if_bad:
        _remove_from_cache(path)
        removed = " It was removed from the cache; the next load downloads it again."
    raise WeightsError(
        f"sha256 mismatch for {str(path)!r}: expected {sha256}, got {actual}; the file is {what}.{removed}"
    )


def cache_blob_is_intact(blob: Path, sha256: str) -> bool:
    """Whether a Hugging Face cache blob holds what its name says: a Git LFS file (weights) is named
    by its sha256, any other file (config.json) by its git blob sha1."""
    if blob.name == sha256:
        return True
    if len(blob.name) != 40:  # a sha256 name that is not this file's hash: corrupted
        return False
    data = blob.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == blob.name


def _remove_from_cache(path: Path) -> None:
    """Delete a cache file: its blob and the snapshot's link to it."""
    path.resolve().unlink(missing_ok=True)
    if path.is_symlink():
        path.unlink(missing_ok=True)


def _download(
    repo_id: str,
    filename: str,
    revision: str | None,
    cache_dir: str | None,
    offline: bool,
    what: str,
    downloading: bool = False,
) -> Path:
    """One file of a Hub repo from the cache or the Hub; ``downloading``: called by ``lga-zoo
    download`` itself, whose error does not send the user to the same command."""
    try:
        return Path(
            hf_hub_download(
                repo_id, filename, revision=revision, cache_dir=cache_dir, local_files_only=offline
            )
        )
    except LocalEntryNotFoundError:
        where = cache_dir or os.environ.get("HF_HUB_CACHE") or "the default Hugging Face cache"
        reason = (
            "HF_HUB_OFFLINE=1 or local_files_only=True forbids downloading"
            if offline
            else "the Hub could not be reached"
        )
        todo = (
            ("Unset HF_HUB_OFFLINE" if offline else "Run it again")
            + " where the Hub is reachable, or copy the model folder (model.safetensors + config.json) here"
            if downloading
            else f"Run `lga-zoo download {what}` where the Hub is reachable, or pass a local model folder "
            "(model.safetensors + config.json) to lga_zoo.load(path)"
        )
        raise WeightsError(
            f"{what}: {filename} of {repo_id} at revision {revision or 'main'} is not in {where}, and {reason}. "
            f"{todo}."
        ) from None
    except (RepositoryNotFoundError, EntryNotFoundError) as err:
        raise WeightsError(
            f"{what}: {filename} not found in {repo_id} at revision {revision}: {err}"
        ) from None


def _attach(
    model: ExplainableClassifier,
    entry: ZooEntry | None,
    source: str,
    verified_sha256: str | None = None,
    revision: str | None = None,
) -> ExplainableClassifier:
    """Set ``.entry``, ``.source`` and ``.sha256`` (the pin just verified, else hashed here); the
    ``pretrained_cfg`` names ``revision``, the one read (default: the entry's pinned one)."""
    model.entry = entry
    model.source = source
    if verified_sha256 is not None:
        model.sha256 = verified_sha256
    else:
        model.sha256 = sha256_of(model.weights_path) if getattr(model, "weights_path", None) else None
    if entry is not None:
        model.pretrained_cfg = {
            **model.pretrained_cfg,
            "hf_hub_id": entry.hf_repo_id,
            "revision": revision or entry.revision,
            "architecture": entry.architecture,
            "tag": entry.name,
        }
    return model


def is_pinned_revision(revision: str | None, entry: ZooEntry) -> bool:
    """Whether loading ``revision`` of ``entry``'s repo reads the files its sha256 pins describe:
    no revision, the pinned one, or ``main`` while the entry pins no commit (it is then read at
    ``main``, and checked all the same)."""
    return revision in (None, entry.revision) or (entry.revision is None and revision == "main")


def _entry_for_config(config: dict[str, Any]) -> ZooEntry | None:
    name = config.get("lga_zoo", {}).get("name")
    try:
        return get_entry(name) if name else None
    except UnknownModelError:
        return None


def verify_config(path: Path, entry: ZooEntry) -> None:
    """Check ``config.json`` against the registry's pin (labels, preprocessing, architecture)."""
    if entry.config_sha256 is None:
        return
    actual = sha256_of(path)
    if actual != entry.config_sha256:
        raise WeightsError(
            f"sha256 mismatch for {str(path)!r}: {entry.name}'s config.json is pinned at "
            f"{entry.config_sha256}, this one is {actual}; it was changed (labels, preprocessing or "
            "architecture would no longer be what the weights were trained with)"
        )


def _load_folder(folder: Path, device, verify: bool) -> ExplainableClassifier:
    """A local folder. A zoo model's copy (its weights or its config.json match a registry pin, or its
    config names a zoo model) must match that entry's pins (:func:`_zoo_entry_of_folder`); any other
    folder is a user's own model: loaded unpinned, ``.entry`` None."""
    if not verify:
        warnings.warn(
            f"loading {folder} with verify=False: its files are not checked against any pin", stacklevel=3
        )
        model = load_model_folder(folder, device)
        return _attach(model, None, f"folder:{folder}")
    entry = _zoo_entry_of_folder(folder)
    if entry is None:
        return _attach(load_model_folder(folder, device), None, f"folder:{folder}")
    is_checkout_copy = folder.resolve() == model_card_dir(entry.name).resolve()
    source = f"checkout:model_cards/{entry.name}" if is_checkout_copy else f"folder:{folder}"
    return _attach(load_model_folder(folder, device), entry, source, entry.sha256)


def _zoo_entry_of_folder(folder: Path) -> ZooEntry | None:
    """The zoo entry whose pinned files ``folder`` holds (both checked), or None for a model of one's
    own. A folder that holds one pinned file (weights or config.json) but not its pinned partner, or
    whose config.json names a zoo model but describes it otherwise (labels, preprocessing,
    architecture), is a forgery of that model: a :class:`WeightsError` naming the entry."""
    from .folder import read_config

    config = read_config(folder)
    weights_sha = sha256_of(folder / WEIGHTS_NAME) if (folder / WEIGHTS_NAME).is_file() else None
    config_sha = sha256_of(folder / CONFIG_NAME)
    named = _entry_for_config(config)
    claimed = [
        e
        for e in _all_entries()
        if e.has_weights and (e.sha256 == weights_sha or e.config_sha256 == config_sha)
    ]
    if named is not None and named.has_weights and folder.resolve() == model_card_dir(named.name).resolve():
        claimed.append(named)  # the checkout's own folder is that model, whatever it holds
    for entry in claimed:
        try:
            verify_config(folder / CONFIG_NAME, entry)
            verify_file(folder / WEIGHTS_NAME, entry.sha256, entry.size)
        except WeightsError as err:
            raise WeightsError(
                f"{folder} is a copy of the zoo model {entry.name} that does not match its pins: {err}"
            ) from None
        return entry
    differences = _differences_from_entry(config, named) if named is not None else []
    if differences:
        raise WeightsError(
            f"{folder}'s config.json names the zoo model {named.name} but differs from it ({'; '.join(differences)}): "
            f"load {named.name} by name, or give your own model its own name in config.json's lga_zoo.name"
        )
    return None


def _differences_from_entry(config: dict[str, Any], entry: ZooEntry) -> list[str]:
    """What a config.json says otherwise than ``entry`` about what its weights mean: architecture,
    classes, preprocessing, activation (empty when nothing)."""
    cfg, ours = config["pretrained_cfg"], config.get("lga_zoo", {})
    said = {
        "architecture": config["architecture"],
        "classes": config.get("label_names"),
        "mean": cfg["mean"],
        "std": cfg["std"],
        "input_size": cfg["input_size"],
        "activation": ours.get("activation", "relu"),
    }
    zoo = {key: _plain(getattr(entry, key)) for key in said}
    return [
        f"{key} {value!r}, the zoo's {zoo[key]!r}" for key, value in said.items() if _plain(value) != zoo[key]
    ]


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def load(
    name_or_path: str | os.PathLike,
    device: str | torch.device | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    local_files_only: bool | None = None,
    verify: bool = True,
) -> ExplainableClassifier:
    """A zoo model in eval mode, with ``.explain()``, ``.predict()``, ``.transforms()``,
    ``.pretrained_cfg``, ``.entry`` and ``.sha256`` (of the weights read).

    ``name_or_path``: a zoo name (``lga_zoo.list_models()``), a local folder holding
    ``model.safetensors`` and ``config.json``, or ``hf-hub:org/name[@revision]``. ``revision``
    overrides the pinned one (the sha256 pin then no longer applies); ``cache_dir`` is the Hugging
    Face cache; ``local_files_only`` (default: ``HF_HUB_OFFLINE``) forbids downloads.

    Every route checks what it reads against the registry's sha256 pins of ``model.safetensors``
    and ``config.json``: a zoo name, a Hub download or cache hit, and a folder that is a zoo model's
    copy. A folder of your own (your config.json) loads unpinned with ``.entry = None``.
    ``verify=False`` skips every check (with a warning).
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        refuse_a_folder_named_like_a_zoo_model(text)
        return _load_folder(path, device, verify)
    if not text.startswith(HF_PREFIX) and (text.startswith((".", "/", "~")) or os.sep in text):
        raise WeightsError(
            f"model folder {text!r} does not exist (a folder holds model.safetensors and config.json); "
            f"zoo names are {list_models(pretrained=False)}"
        )
    offline = offline_mode(local_files_only)
    if text.startswith(HF_PREFIX):
        repo_id, revision, pinned = download_target(text, revision)
        if not verify:
            warnings.warn(
                f"loading {text} with verify=False: its files are not checked against any pin", stacklevel=2
            )
        checked = pinned if verify else None
        if verify and pinned is None and any(e.hf_repo_id == repo_id for e in _all_entries()):
            warnings.warn(
                f"{text}: revision {revision} is not the one the zoo pins for {repo_id}; "
                "its sha256 cannot be checked against the registry",
                stacklevel=2,
            )
        folder = _fetch(repo_id, revision, cache_dir, offline, checked, text)
        return _attach(
            load_model_folder(folder, device),
            checked,
            f"hub:{repo_id}@{revision or 'main'}",
            checked.sha256 if checked is not None else None,
        )

    entry = get_entry(text)
    if not entry.has_weights:
        raise WeightsError(
            f"{entry.name} has no published weights yet; train it with `lga-zoo train {entry.recipe} "
            f"--data-dir DIR` and load the folder it writes (lga_zoo.load('runs/{entry.name}'))"
        )
    if not verify:
        warnings.warn(
            f"loading {entry.name} with verify=False: its files are not checked against the pins",
            stacklevel=2,
        )
    local = model_card_dir(entry.name)
    pinned = is_pinned_revision(revision, entry)
    if pinned and (local / WEIGHTS_NAME).is_file():
        if verify:
            verify_config(local / CONFIG_NAME, entry)
            verify_file(local / WEIGHTS_NAME, entry.sha256, entry.size)
        return _attach(
            load_model_folder(local, device),
            entry,
            f"checkout:model_cards/{entry.name}",
            entry.sha256 if verify else None,
        )
    if not pinned:
        warnings.warn(
            f"{entry.name}: revision {revision} is not the pinned {entry.revision}; "
            "its sha256 cannot be checked against the registry",
            stacklevel=2,
        )
        folder = _fetch(entry.hf_repo_id, revision, cache_dir, offline, None, entry.name)
    else:
        folder = _fetch(
            entry.hf_repo_id, entry.revision, cache_dir, offline, entry if verify else None, entry.name
        )
    return _attach(
        load_model_folder(folder, device),
        entry,
        f"hub:{entry.hf_repo_id}@{revision or entry.revision or 'main'}",
        entry.sha256 if verify and pinned else None,
        revision,
    )


def refuse_a_folder_named_like_a_zoo_model(text: str) -> None:
    """A bare zoo name that is also a folder here (other than the checkout's own copy) is ambiguous:
    a :class:`WeightsError` says how to name the folder (``./NAME``) instead."""
    if text.startswith((".", "/", "~")) or os.sep in text or text not in list_models(pretrained=False):
        return
    if Path(text).resolve() != model_card_dir(text).resolve():
        raise WeightsError(
            f"{text!r} is both a zoo model and a folder in the current directory; name the folder as "
            f"a path ('./{text}'), or use the zoo model from another directory"
        )


def _all_entries() -> list[ZooEntry]:
    from .registry import all_entries

    return all_entries()


def _fetch(
    repo_id: str,
    revision: str | None,
    cache_dir: str | None,
    offline: bool,
    entry: ZooEntry | None,
    what: str,
    downloading: bool = False,
) -> Path:
    """Download (or find in the cache) config.json and model.safetensors; verify the weights against
    ``entry``'s pin. Returns the snapshot folder."""
    weights = _download(repo_id, WEIGHTS_NAME, revision, cache_dir, offline, what, downloading)
    if entry is not None and entry.sha256:
        verify_file(weights, entry.sha256, entry.size, remove_if_bad=True)
    config = _download(repo_id, CONFIG_NAME, revision, cache_dir, offline, what, downloading)
    if entry is not None and entry.config_sha256:
        try:
            verify_config(config, entry)
        except WeightsError:
            if not cache_blob_is_intact(config.resolve(), sha256_of(config)):
                _remove_from_cache(config)  # corrupted: never used again
            raise
    if config.parent != weights.parent:
        raise WeightsError(
            f"{what}: config and weights resolved to different snapshots ({config.parent}, {weights.parent})"
        )
    return weights.parent


def untrained(name: str, device: str | torch.device | None = None) -> ExplainableClassifier:
    """A zoo model's architecture with fresh weights (no download), with ``.entry`` set."""
    from .models import create_backbone

    entry = get_entry(name)
    backbone = create_backbone(entry.architecture, len(entry.classes), entry.activation, entry.softplus_beta)
    model = ExplainableClassifier(
        backbone, entry.mean, entry.std, entry.input_size, entry.classes, entry.interpolation, entry.crop_pct
    ).eval()
    model = model.to(device) if device is not None else model
    return _attach(model, entry, "untrained")


def download_target(name: str, revision: str | None = None) -> tuple[str, str | None, ZooEntry | None]:
    """``(repo_id, revision, pinned entry or None)`` that :func:`download` fetches for ``name`` (a
    zoo name or ``hf-hub:org/name[@revision]``); the files are checked when an entry pins them."""
    if name.startswith(HF_PREFIX):
        repo_id, _, rev = name[len(HF_PREFIX) :].partition("@")
        revision = revision or rev or None
        pinned = next(
            (e for e in _all_entries() if e.hf_repo_id == repo_id and is_pinned_revision(revision, e)), None
        )
        return repo_id, revision or (pinned.revision if pinned else None), pinned
    entry = get_entry(name)
    if not entry.has_weights:
        raise WeightsError(f"{name} has no published weights yet (train it with {entry.recipe})")
    pinned = entry if is_pinned_revision(revision, entry) else None
    return entry.hf_repo_id, revision or entry.revision, pinned


def download(name: str, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """Fetch a model's folder into the Hugging Face cache, verified against its pins where the
    registry has them (:func:`download_target`); returns the snapshot folder. ``name``: a zoo name
    or ``hf-hub:org/name[@revision]``."""
    repo_id, revision, pinned = download_target(name, revision)
    folder = _fetch(repo_id, revision, cache_dir, offline_mode(None), pinned, name, downloading=True)
    for extra in (CARD_NAME, RESULTS_NAME):
        try:
            _download(repo_id, extra, revision, cache_dir, offline_mode(None), name)
        except WeightsError:
            pass
    return folder


def save_folder(
    model: ExplainableClassifier,
    entry: ZooEntry,
    results: dict[str, Any] | None,
    out: str | os.PathLike,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write a pushable model folder: ``model.safetensors``, ``config.json`` (timm keys plus our
    section), ``results.json`` when given, and the ``README.md`` model card."""
    from .cards import render_card

    out = Path(out)
    config = build_config(
        model,
        entry.architecture,
        entry.activation,
        entry.softplus_beta,
        extra={
            "name": entry.name,
            "regularizer": entry.regularizer,
            "recipe_file": entry.recipe,
            **(extra_config or {}),
        },
    )
    write_model_folder(model, config, out)
    if results is not None:
        atomic_write_text(out / RESULTS_NAME, json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / CARD_NAME, render_card(entry, results, config))
    return out


def push(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    api: HfApi | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload ``folder`` to the Hub repo ``repo_id`` (created if missing) with ``create_repo`` and
    ``upload_folder``; returns the commit id to pin as the registry's ``revision``."""
    folder = Path(folder)
    missing = [n for n in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME) if not (folder / n).is_file()]
    if missing:
        raise WeightsError(
            f"{str(folder)!r} lacks {missing}; a pushable folder holds weights, config and card"
        )
    _refuse_results_of_other_weights(folder)
    api = api or HfApi(token=token)
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    # A folder without results (`lga-zoo publish` drops those of replaced weights) also removes the
    # Hub's results.json, which measured other weights.
    stale = [] if (folder / RESULTS_NAME).is_file() else [RESULTS_NAME]
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        commit_message=commit_message or f"Upload {folder.name} with lga-zoo",
        allow_patterns=[WEIGHTS_NAME, CONFIG_NAME, CARD_NAME, RESULTS_NAME],
        delete_patterns=stale or None,
    )
    return getattr(info, "oid", None) or str(info)


def _refuse_results_of_other_weights(folder: Path) -> None:
    """A results.json measured on other weights than the folder's would put their figures on the
    Hub's card: refused, naming both hashes."""
    if not (folder / RESULTS_NAME).is_file():
        return
    measured = json.loads((folder / RESULTS_NAME).read_text()).get("model", {}).get("sha256")
    weights = sha256_of(folder / WEIGHTS_NAME)
    if measured != weights:
        raise WeightsError(
            f"{str(folder / RESULTS_NAME)!r} measured other weights (sha256 {measured}) than "
            f"{WEIGHTS_NAME} ({weights}); evaluate these weights again or remove it before pushing"
        )


__all__ = [
    "load",
    "untrained",
    "download",
    "save_folder",
    "push",
    "verify_file",
    "list_models",
    "available_here",
]
