"""Put the files that scripts/flagship_gpu.sh sent back into this checkout, verified.

    python scripts/flagship_collect.py DIR [DIR ...]     # the device calls' files_at folders

The folders hold, between them, ``manifest.json`` (each model's name, size and sha256, in the order
the weights were concatenated), ``publish.tar.gz`` (the published files but weights: the family's
model_cards/NAME/, recipes/NAME.yaml of the models sent back, lga_zoo/zoo.json, README.md) and the
weight chunks ``weights.00``, ``weights.01``, ... Nothing is written unless every chunk is there, every model's
bytes hash to the manifest's sha256 and the tarball's zoo.json pins that same sha256 and size. Each
model's ``model_cards/NAME/`` is then replaced as a whole (files the GPU run did not write, like an
older run's logs, go), and the other published files are overwritten.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class CollectError(RuntimeError):
    """The returned files are incomplete or do not match their manifest."""


def find_one(folders: list[Path], name: str) -> Path:
    """The one file called ``name`` in ``folders``."""
    found = [folder / name for folder in folders if (folder / name).is_file()]
    if not found:
        raise CollectError(f"no {name} in {', '.join(map(str, folders))}: the 'run' call sends it back")
    return found[0]


def joined_weights(folders: list[Path]) -> bytes:
    """The chunks ``weights.NN`` of all folders, in order, joined; an error when one is missing."""
    chunks = {p.name: p for folder in folders for p in folder.glob("weights.[0-9][0-9]")}
    if not chunks:
        raise CollectError("no weights.NN chunks in the folders given")
    numbers = sorted(int(name.split(".")[1]) for name in chunks)
    missing = sorted(set(range(numbers[-1] + 1)) - set(numbers))
    if missing:
        raise CollectError(f"weight chunks {missing} are missing: fetch the part that holds them")
    return b"".join(chunks[f"weights.{n:02d}"].read_bytes() for n in numbers)


def split_models(blob: bytes, manifest: dict) -> dict[str, bytes]:
    """``blob`` cut into the manifest's models, each checked against its size and sha256."""
    expected = sum(model["bytes"] for model in manifest["models"])
    if len(blob) != expected:
        raise CollectError(
            f"the chunks hold {len(blob)} bytes, the manifest's models {expected}: a chunk is missing"
        )
    models, offset = {}, 0
    for model in manifest["models"]:
        data = blob[offset : offset + model["bytes"]]
        offset += model["bytes"]
        digest = hashlib.sha256(data).hexdigest()
        if digest != model["sha256"]:
            raise CollectError(
                f"{model['name']}: the weights hash to {digest}, the manifest says {model['sha256']}"
            )
        models[model["name"]] = data
    return models


def check_pins(archive: tarfile.TarFile, models: dict[str, bytes]) -> None:
    """The tarball's zoo.json must pin each model's sha256 and size."""
    zoo = json.load(archive.extractfile("lga_zoo/zoo.json"))
    entries = {entry["name"]: entry for entry in zoo["models"]}
    for name, data in models.items():
        entry = entries.get(name)
        digest = hashlib.sha256(data).hexdigest()
        if entry is None or entry.get("sha256") != digest or entry.get("size") != len(data):
            raise CollectError(
                f"{name}: the returned zoo.json does not pin these weights ({digest}, {len(data)} bytes)"
            )


def collect(folders: list[Path], repo: Path = REPO) -> list[str]:
    """Verify the returned files in ``folders`` and write them into ``repo``; returns the model names."""
    manifest = json.loads(find_one(folders, "manifest.json").read_text())
    models = split_models(joined_weights(folders), manifest)
    tar_bytes = find_one(folders, "publish.tar.gz").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as archive:
        check_pins(archive, models)
        for name in models:
            shutil.rmtree(repo / "model_cards" / name, ignore_errors=True)
        archive.extractall(repo, filter="data")
    for name, data in models.items():
        (repo / "model_cards" / name / "model.safetensors").write_bytes(data)
    return list(models)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="folders holding the returned files")
    parser.add_argument(
        "--repo", type=Path, default=REPO, help="the checkout to write into (default: this one)"
    )
    args = parser.parse_args(argv)
    try:
        names = collect(args.folders, args.repo)
    except CollectError as error:
        print(f"flagship_collect: {error}; nothing was written", file=sys.stderr)
        return 1
    print(f"collected {', '.join(names)} into {args.repo}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
