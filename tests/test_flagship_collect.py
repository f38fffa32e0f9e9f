"""scripts/flagship_collect.py: the GPU run's returned files go into a checkout only when complete and
verified, and replace each model's folder as a whole."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from conftest import load_file_module

REPO = Path(__file__).resolve().parents[1]
collect_module = load_file_module("scripts/flagship_collect.py")
CollectError = collect_module.CollectError

NAMES = ("resnet18_cifar10_standard", "resnet18_cifar10_lga")


def _tarball(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _returned(tmp_path: Path, chunk: int = 700, pins: dict[str, bytes] | None = None):
    """Two fake models' weights chunked over two folders, as three device calls would return them."""
    weights = {name: os.urandom(1000 + 300 * i) for i, name in enumerate(NAMES)}
    pins = pins or weights
    manifest = {
        "models": [
            {"name": n, "bytes": len(w), "sha256": hashlib.sha256(w).hexdigest()} for n, w in weights.items()
        ]
    }
    zoo = {
        "models": [
            {"name": n, "sha256": hashlib.sha256(w).hexdigest(), "size": len(w)} for n, w in pins.items()
        ]
    }
    members = {"lga_zoo/zoo.json": json.dumps(zoo).encode(), "README.md": b"# zoo\n"}
    members |= {f"model_cards/{n}/README.md": f"card of {n}\n".encode() for n in NAMES}
    blob = b"".join(weights.values())
    chunks = [blob[i : i + chunk] for i in range(0, len(blob), chunk)]
    folders = [tmp_path / "call0", tmp_path / "call1"]
    for folder in folders:
        folder.mkdir()
    (folders[0] / "manifest.json").write_text(json.dumps(manifest))
    (folders[0] / "publish.tar.gz").write_bytes(_tarball(members))
    for i, data in enumerate(chunks):
        (folders[0 if i < 2 else 1] / f"weights.{i:02d}").write_bytes(data)
    return folders, weights


def _checkout(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    stale = repo / "model_cards" / NAMES[0]
    stale.mkdir(parents=True)
    (stale / "train_log_stage1.jsonl").write_text("{}\n")
    (stale / "model.safetensors").write_bytes(b"old weights")
    (repo / "README.md").write_text("old readme\n")
    return repo


def test_collect_writes_verified_weights_and_replaces_model_folders(tmp_path):
    folders, weights = _returned(tmp_path)
    assert len(list(tmp_path.glob("call*/weights.*"))) == 4  # the weights really are spread over both
    repo = _checkout(tmp_path)

    assert collect_module.collect(folders, repo) == list(NAMES)

    for name, data in weights.items():
        assert (repo / "model_cards" / name / "model.safetensors").read_bytes() == data
        assert (repo / "model_cards" / name / "README.md").read_text() == f"card of {name}\n"
    assert not (repo / "model_cards" / NAMES[0] / "train_log_stage1.jsonl").exists()
    assert (repo / "README.md").read_text() == "# zoo\n"


def _untouched(repo: Path) -> bool:
    folder = repo / "model_cards" / NAMES[0]
    return (folder / "model.safetensors").read_bytes() == b"old weights" and (
        repo / "README.md"
    ).read_text() == "old readme\n"


def test_a_missing_chunk_is_named_and_nothing_is_written(tmp_path):
    folders, _ = _returned(tmp_path)
    (folders[1] / "weights.02").unlink()
    repo = _checkout(tmp_path)
    with pytest.raises(CollectError, match=r"chunks \[2\] are missing"):
        collect_module.collect(folders, repo)
    assert _untouched(repo)


def test_a_missing_last_part_is_caught_by_the_manifest_size(tmp_path):
    folders, _ = _returned(tmp_path)
    repo = _checkout(tmp_path)
    with pytest.raises(CollectError, match="a chunk is missing"):
        collect_module.collect(folders[:1], repo)  # only the 'run' call's folder
    assert _untouched(repo)


def test_a_corrupted_chunk_fails_the_sha256(tmp_path):
    folders, _ = _returned(tmp_path)
    chunk = folders[0] / "weights.00"
    data = bytearray(chunk.read_bytes())
    data[10] ^= 0xFF
    chunk.write_bytes(bytes(data))
    repo = _checkout(tmp_path)
    with pytest.raises(CollectError, match=f"{NAMES[0]}: the weights hash to"):
        collect_module.collect(folders, repo)
    assert _untouched(repo)


def test_a_zoo_json_that_pins_other_weights_is_refused(tmp_path):
    other = {name: b"other" for name in NAMES}
    folders, _ = _returned(tmp_path, pins=other)
    repo = _checkout(tmp_path)
    with pytest.raises(CollectError, match="does not pin these weights"):
        collect_module.collect(folders, repo)
    assert _untouched(repo)


def test_the_command_line_says_what_is_missing(tmp_path, capsys):
    repo = _checkout(tmp_path)
    (tmp_path / "empty").mkdir()
    assert collect_module.main([str(tmp_path / "empty"), "--repo", str(repo)]) == 1
    assert "no manifest.json" in capsys.readouterr().err
    assert _untouched(repo)
