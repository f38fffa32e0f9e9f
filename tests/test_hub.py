import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

import lga_zoo
import lga_zoo.hub as hub
import lga_zoo.registry as registry
from lga_zoo.folder import WeightsError, load_model_folder, sha256_of
from lga_zoo.hub import push, save_folder, untrained

NAME = "resnet18_w16_cifar10_lga"
COMMIT = "a" * 40
OTHER_COMMIT = "b" * 40


def make_folder(out: Path, seed: int = 0):
    torch.manual_seed(seed)
    model = untrained(NAME)
    entry = registry.get_entry(NAME)
    save_folder(model, entry, None, out)
    return model, out


@pytest.fixture
def pinned_registry(monkeypatch, tmp_path):
    """A registry whose entry for NAME pins the weights of a freshly made folder."""
    model, folder = make_folder(tmp_path / "published")
    weights = folder / "model.safetensors"
    entry = replace(
        registry.get_entry(NAME),
        sha256=sha256_of(weights),
        size=weights.stat().st_size,
        config_sha256=sha256_of(folder / "config.json"),
        revision=COMMIT,
        hf_repo_id="lga-zoo-test/tiny",
    )
    entries = {e.name: e for e in registry.all_entries()}
    entries[NAME] = entry
    monkeypatch.setattr(registry, "_entries", lambda: entries)
    monkeypatch.setattr(hub, "model_card_dir", lambda name: tmp_path / "no_checkout" / name)
    return model, folder, entry


def lay_out_hf_cache(cache: Path, repo_id: str, folder: Path, commit: str, ref: str | None = "main") -> Path:
    """The Hugging Face cache layout: blobs named by hash (the LFS weights by sha256, the other files
    by their git blob sha1), snapshot symlinks, refs/<branch>."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "config.json", "README.md"):
        data = (folder / name).read_bytes()
        git_sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        blob = repo / "blobs" / (sha256_of(folder / name) if name == "model.safetensors" else git_sha1)
        blob.write_bytes(data)
        link = snapshot / name
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, snapshot))
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def same_outputs(a, b):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_local_folder_round_trip(tmp_path):
    model, folder = make_folder(tmp_path / "m", seed=3)
    loaded = lga_zoo.load(folder)
    assert not loaded.training and same_outputs(model, loaded)
    # A folder of one's own (its config.json is not the pinned one) loads unpinned.
    assert loaded.entry is None and loaded.source.startswith("folder:")
    assert loaded.sha256 == sha256_of(folder / "model.safetensors")
    assert loaded.labels == list(registry.get_entry(NAME).classes)
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "resnet18_w16_cifar" and config["num_classes"] == 10
    assert config["pretrained_cfg"]["mean"] == pytest.approx([0.4914, 0.4822, 0.4465])
    # A timm user can rebuild the backbone from config.json alone and load the weights strictly.
    import timm
    from safetensors.torch import load_file

    backbone = timm.create_model(config["architecture"], num_classes=config["num_classes"])
    backbone.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)


def test_strict_loading_refuses_missing_keys_and_garbage(tmp_path):
    _, folder = make_folder(tmp_path / "m")
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    state.pop("fc.weight")
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(WeightsError, match="(?s)do not match the architecture.*fc.weight"):
        load_model_folder(folder)
    (folder / "model.safetensors").write_bytes(b"\x80\x04not safetensors at all")
    with pytest.raises(WeightsError, match="corrupted or not safetensors"):
        load_model_folder(folder)
    (folder / "model.safetensors").unlink()
    torch.save({}, folder / "pytorch_model.bin")  # a pickle beside it is never used
    with pytest.raises(WeightsError, match="model.safetensors' is missing"):
        load_model_folder(folder)


def test_hf_cache_offline_default_revision_and_commit(pinned_registry, tmp_path, monkeypatch):
    model, folder, entry = pinned_registry
    cache = tmp_path / "hf"
    lay_out_hf_cache(cache, entry.hf_repo_id, folder, COMMIT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    by_pin = lga_zoo.load(NAME, cache_dir=str(cache))
    assert same_outputs(model, by_pin) and by_pin.source == f"hub:{entry.hf_repo_id}@{COMMIT}"
    # hf-hub: form, by branch (refs/main) and by commit id
    with pytest.warns(UserWarning, match="revision main is not the one the zoo pins"):
        by_branch = lga_zoo.load(f"hf-hub:{entry.hf_repo_id}@main", cache_dir=str(cache))
    by_commit = lga_zoo.load(f"hf-hub:{entry.hf_repo_id}@{COMMIT}", cache_dir=str(cache))
    assert same_outputs(model, by_branch) and same_outputs(model, by_commit)
    assert by_commit.entry.name == NAME


def cache_with_a_dev_revision(tmp_path, folder, repo_id, seed):
    """An offline HF cache holding ``folder`` at COMMIT (main) and another model's folder at
    OTHER_COMMIT (ref ``dev``); returns the cache, the other model and its folder."""
    cache = tmp_path / "hf"
    lay_out_hf_cache(cache, repo_id, folder, COMMIT)
    other_model, other = make_folder(tmp_path / "other", seed=seed)
    lay_out_hf_cache(cache, repo_id, other, OTHER_COMMIT, ref="dev")
    return cache, other_model, other


def test_hf_cache_other_revision_is_a_different_snapshot(pinned_registry, tmp_path, monkeypatch):
    model, folder, entry = pinned_registry
    cache, other_model, _ = cache_with_a_dev_revision(tmp_path, folder, entry.hf_repo_id, seed=9)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.warns(UserWarning, match="not the pinned"):
        loaded = lga_zoo.load(NAME, revision=OTHER_COMMIT, cache_dir=str(cache))
    assert same_outputs(other_model, loaded) and not same_outputs(model, loaded)


def test_tampered_cache_blob_is_refused_and_removed(pinned_registry, tmp_path, monkeypatch):
    _, folder, entry = pinned_registry
    cache = tmp_path / "hf"
    snapshot = lay_out_hf_cache(cache, entry.hf_repo_id, folder, COMMIT)
    blob = (snapshot / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-10] ^= 0xFF  # flip bits in the last tensor
    blob.write_bytes(bytes(data))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        WeightsError, match=f"sha256 mismatch.*expected {entry.sha256}, got [0-9a-f]{{64}}.*tampered.*removed"
    ):
        lga_zoo.load(NAME, cache_dir=str(cache))
    assert not blob.exists()
    with pytest.raises(WeightsError, match="not in .*HF_HUB_OFFLINE=1.*lga-zoo download"):
        lga_zoo.load(NAME, cache_dir=str(cache))


def test_pinned_files_read_at_a_main_that_moved_on_stay_in_the_cache(pinned_registry, tmp_path, monkeypatch):
    """An entry without a commit is read at main; once main holds newer weights, the pinned load
    fails, but the newer files are intact (each blob matches its name) and are not deleted: the
    revision that holds them still loads, and reports that revision."""
    _, folder, entry = pinned_registry
    registry._entries()[NAME] = replace(entry, revision=None)
    cache = tmp_path / "hf"
    lay_out_hf_cache(cache, entry.hf_repo_id, folder, COMMIT, ref=None)
    _, newer = make_folder(tmp_path / "newer", seed=1)
    moved = lay_out_hf_cache(cache, entry.hf_repo_id, newer, OTHER_COMMIT)  # main: the newer weights
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="intact, but not the pinned file.*stays in the cache"):
        lga_zoo.load(NAME, cache_dir=str(cache))
    assert (moved / "model.safetensors").resolve().is_file()
    with pytest.warns(UserWarning, match="not the pinned"):
        model = lga_zoo.load(NAME, revision=OTHER_COMMIT, cache_dir=str(cache))
    assert model.sha256 == sha256_of(newer / "model.safetensors")
    assert model.pretrained_cfg["revision"] == OTHER_COMMIT


def test_a_folder_named_like_a_zoo_model_is_not_taken_for_it(tmp_path, monkeypatch):
    """A folder in the working directory that has a zoo model's name is ambiguous: an error says
    how to name either, instead of loading (or pushing) the folder as if it were the zoo model."""
    from lga_zoo import cli

    make_folder(tmp_path / NAME, seed=1)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsError, match=f"both a zoo model and a folder.*'./{NAME}'"):
        lga_zoo.load(NAME)
    assert lga_zoo.load(f"./{NAME}").entry is None  # the folder, named as a path
    api = RecordingApi()
    monkeypatch.setattr(hub, "HfApi", lambda token=None: api)
    assert cli.main(["push", NAME, "--repo-id", "me/x"]) == 2
    assert api.calls == []


def test_truncated_checkout_file_is_refused(pinned_registry, tmp_path, monkeypatch):
    _, folder, entry = pinned_registry
    checkout = tmp_path / "checkout" / NAME
    checkout.mkdir(parents=True)
    for name in ("model.safetensors", "config.json"):
        (checkout / name).write_bytes((folder / name).read_bytes())
    monkeypatch.setattr(hub, "model_card_dir", lambda name: tmp_path / "checkout" / name)
    assert lga_zoo.load(NAME).source.startswith("checkout:")
    weights = checkout / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(WeightsError, match=r"truncated \(\d+ bytes, expected \d+\)"):
        lga_zoo.load(NAME)


def test_offline_with_nothing_cached_says_what_to_do(pinned_registry, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        WeightsError, match=r"model.safetensors of lga-zoo-test/tiny at revision a{40} is not in .*empty"
    ):
        lga_zoo.load(NAME, cache_dir=str(tmp_path / "empty"))
    with pytest.raises(WeightsError, match="local_files_only"):
        lga_zoo.load(NAME, cache_dir=str(tmp_path / "empty"), local_files_only=True)


def test_model_without_weights_points_to_its_recipe():
    unpublished = [e for e in registry.all_entries() if not e.has_weights]
    if not unpublished:
        pytest.skip("every zoo model has weights")
    with pytest.raises(WeightsError, match=f"no published weights yet.*{unpublished[0].recipe}"):
        lga_zoo.load(unpublished[0].name)


class RecordingApi:
    """A stand-in for huggingface_hub.HfApi that records the calls."""

    def __init__(self):
        self.calls = []

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))
        return f"https://huggingface.co/{kwargs['repo_id']}"

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        files = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
        self.uploaded = files

        class Info:
            oid = "c" * 40

        return Info()


def test_push_creates_repo_then_uploads(tmp_path):
    _, folder = make_folder(tmp_path / "m")
    api = RecordingApi()
    commit = push(folder, "lga-zoo/test-model", private=True, api=api)
    assert commit == "c" * 40
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][1] == {
        "repo_id": "lga-zoo/test-model",
        "repo_type": "model",
        "private": True,
        "exist_ok": True,
    }
    upload = api.calls[1][1]
    assert upload["repo_id"] == "lga-zoo/test-model" and Path(upload["folder_path"]) == folder
    assert {"model.safetensors", "config.json", "README.md"} <= set(upload["allow_patterns"])
    (folder / "README.md").unlink()
    with pytest.raises(WeightsError, match="lacks \\['README.md'\\]"):
        push(folder, "lga-zoo/test-model", api=RecordingApi())


def test_push_refuses_results_measured_on_other_weights(tmp_path):
    _, folder = make_folder(tmp_path / "m")
    weights_sha256 = sha256_of(folder / "model.safetensors")
    results = {"model": {"name": NAME, "sha256": "e" * 64}, "metrics": {}}
    (folder / "results.json").write_text(json.dumps(results))
    api = RecordingApi()
    with pytest.raises(
        WeightsError, match=f"measured other weights .sha256 e{{64}}. than .*{weights_sha256}"
    ):
        push(folder, "lga-zoo/test-model", api=api)
    assert api.calls == []
    results["model"]["sha256"] = weights_sha256
    (folder / "results.json").write_text(json.dumps(results))
    push(folder, "lga-zoo/test-model", api=api)
    assert "results.json" in api.uploaded


def test_hf_hub_load_at_another_revision_of_a_zoo_repo_warns(pinned_registry, tmp_path, monkeypatch):
    _, folder, entry = pinned_registry
    cache, _, other = cache_with_a_dev_revision(tmp_path, folder, entry.hf_repo_id, seed=1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.warns(UserWarning, match=f"revision dev is not the one the zoo pins for {entry.hf_repo_id}"):
        model = lga_zoo.load(f"hf-hub:{entry.hf_repo_id}@dev", cache_dir=str(cache))
    assert model.entry is None and model.sha256 == sha256_of(other / "model.safetensors")


def test_saved_card_front_matter_is_valid_yaml(tmp_path):
    _, folder = make_folder(tmp_path / "m")
    text = (folder / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["license"] == "apache-2.0" and meta["pipeline_tag"] == "image-classification"
    assert meta["base_model"] == "lga-zoo/resnet18_w16_cifar10_standard"
    assert "model-index" not in meta  # no results yet: nothing invented


def _copy_of_published(tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(REPO / "model_cards" / NAME, copy)
    return copy


REPO = Path(__file__).resolve().parents[1]


def test_a_copy_of_a_zoo_model_is_checked_against_its_pins(tmp_path):
    copy = _copy_of_published(tmp_path)
    loaded = lga_zoo.load(copy)
    assert loaded.entry.name == NAME and loaded.sha256 == registry.get_entry(NAME).sha256
    weights = bytearray((copy / "model.safetensors").read_bytes())
    weights[-5] ^= 0x01  # one flipped bit in the last weight
    (copy / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        lga_zoo.load(copy)
    with pytest.warns(UserWarning, match="verify=False"):
        unverified = lga_zoo.load(copy, verify=False)
    assert unverified.entry is None and unverified.sha256 != registry.get_entry(NAME).sha256


def test_a_checkout_with_swapped_labels_is_refused(tmp_path, monkeypatch):
    copy = _copy_of_published(tmp_path)
    config = json.loads((copy / "config.json").read_text())
    config["label_names"][3], config["label_names"][5] = config["label_names"][5], config["label_names"][3]
    (copy / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    monkeypatch.setattr(hub, "model_card_dir", lambda name: copy)
    with pytest.raises(WeightsError, match="config.json is pinned"):
        lga_zoo.load(NAME)
    with pytest.raises(WeightsError, match="config.json is pinned"):
        lga_zoo.load(copy)  # the checkout's own folder, by path


def test_a_missing_folder_is_named():
    with pytest.raises(WeightsError, match="model folder '/no/such/dir' does not exist"):
        lga_zoo.load("/no/such/dir")


def test_push_of_a_zoo_model_checks_its_pins_before_uploading_and_pinning(
    pinned_registry, tmp_path, monkeypatch
):
    """`lga-zoo push NAME --pin` uploads only the files its registry entry pins: other weights would
    make every verified download of the new revision fail."""
    from lga_zoo import cli

    _, folder, entry = pinned_registry
    api = RecordingApi()
    monkeypatch.setattr(hub, "HfApi", lambda token=None: api)
    written = []
    monkeypatch.setattr(registry, "write_entries", lambda entries: written.append(entries))
    _, other = make_folder(tmp_path / "other", seed=1)  # other weights, the same config
    argv = ["push", NAME, "--repo-id", "me/tiny", "--pin"]
    assert cli.main([*argv, "--folder", str(other)]) == 2
    assert api.calls == [] and written == []
    assert cli.main([*argv, "--folder", str(folder)]) == 0
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    pinned = {e.name: e for e in written[0]}[NAME]
    assert (pinned.hf_repo_id, pinned.revision, pinned.sha256) == ("me/tiny", "c" * 40, entry.sha256)
    # this folder has no results.json: a stale one on the Hub (of other weights) is deleted
    assert api.calls[1][1]["delete_patterns"] == ["results.json"]


def test_an_entry_without_a_pinned_commit_is_checked_at_main(pinned_registry, tmp_path, monkeypatch):
    """Today's entries pin no commit (revision None): they are read at main, so main, named or
    not, is checked against the sha256 pin on every route; verify=False is honoured on hf-hub: too."""
    _, folder, entry = pinned_registry
    registry._entries()[NAME] = replace(entry, revision=None)
    cache = tmp_path / "hf"
    snapshot = lay_out_hf_cache(cache, entry.hf_repo_id, folder, COMMIT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = lga_zoo.load(NAME, revision="main", cache_dir=str(cache))
    assert loaded.sha256 == entry.sha256 and loaded.source == f"hub:{entry.hf_repo_id}@main"
    blob = (snapshot / "model.safetensors").resolve()
    blob.write_bytes(blob.read_bytes()[:-4] + b"\x00\x00\x00\x01")  # tampered in the cache
    with pytest.warns(UserWarning, match="verify=False"):
        unchecked = lga_zoo.load(f"hf-hub:{entry.hf_repo_id}@main", cache_dir=str(cache), verify=False)
    assert unchecked.entry is None and unchecked.sha256 != entry.sha256
    for name, revision in ((NAME, "main"), (f"hf-hub:{entry.hf_repo_id}@main", None)):
        lay_out_hf_cache(cache, entry.hf_repo_id, folder, COMMIT)  # the removed blob, tampered again
        blob.write_bytes(blob.read_bytes()[:-4] + b"\x00\x00\x00\x01")
        with pytest.raises(WeightsError, match="sha256 mismatch"):
            lga_zoo.load(name, revision=revision, cache_dir=str(cache))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.pop("pretrained_cfg"), "'pretrained_cfg' is missing"),
        (lambda c: c.pop("architecture"), "'architecture' is missing"),
        (lambda c: c["pretrained_cfg"].pop("mean"), r"pretrained_cfg lacks the lists \['mean'\]"),
        (lambda c: c.update(label_names=["a", "b"]), "label_names must be a list of num_classes=10"),
        (lambda c: c.update(lga_zoo=None), "'lga_zoo' must be an object"),
        (lambda c: c.clear() or c.update(a=1), "'architecture' is missing"),  # e.g. a transformers config
        # values that loaded and failed later (or fetched a remote model definition)
        (
            lambda c: c.update(architecture="hf-hub:someone/model"),
            "'hf-hub:someone/model' is not a timm model",
        ),
        (lambda c: c["pretrained_cfg"].update(std=[0, 0, 0]), r"std=\[0, 0, 0\] must be > 0"),
        (lambda c: c["pretrained_cfg"].update(mean=["a", "b", "c"]), "must be one finite number per input"),
        (lambda c: c["pretrained_cfg"].update(input_size=[3]), r"must be \[channels, height, width\]"),
        (lambda c: c["pretrained_cfg"].update(interpolation="nope"), "interpolation='nope' is not one of"),
        (lambda c: c["pretrained_cfg"].update(crop_pct=1.5), "crop_pct=1.5 must be a fraction in"),
        (lambda c: c["lga_zoo"].update(softplus_beta="3"), "softplus_beta='3' must be a finite number > 0"),
        (lambda c: c["lga_zoo"].update(activation="gelu"), "activation='gelu' is not one of"),
        (lambda c: c.update(label_names=list(range(10))), "label_names must be a list of num_classes=10"),
    ],
)
def test_a_foreign_or_broken_config_is_named(tmp_path, change, message, capsys):
    from lga_zoo import cli

    _, folder = make_folder(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=message):
        lga_zoo.load(folder)
    assert cli.main(["explain", str(REPO / "examples" / "cat.jpg"), "--model", str(folder)]) == 2
    err = capsys.readouterr().err
    assert message.replace("\\", "") in err and "Traceback" not in err


def test_loading_leaves_the_global_random_state_alone(tmp_path):
    """The backbone's random initialisation, overwritten by the weights, draws from a forked RNG."""
    _, folder = make_folder(tmp_path / "m")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    lga_zoo.load(folder)
    assert torch.equal(torch.rand(3), expected)


def test_a_config_that_is_not_an_object_is_named(tmp_path):
    _, folder = make_folder(tmp_path / "m")
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(WeightsError, match="holds a JSON list, not an object"):
        lga_zoo.load(folder)


def test_the_offline_hint_for_a_hub_model_names_a_command_that_fetches_it(tmp_path, monkeypatch, capsys):
    from lga_zoo import cli

    _, folder = make_folder(tmp_path / "m")
    repo = "alice/my_model_lga"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty = str(tmp_path / "empty")
    with pytest.raises(WeightsError, match=f"Run `lga-zoo download hf-hub:{repo}`"):
        lga_zoo.load(f"hf-hub:{repo}", cache_dir=empty)
    assert cli.main(["download", f"hf-hub:{repo}", "--cache-dir", empty]) == 2
    assert "HF_HUB_OFFLINE=1" in capsys.readouterr().err  # not "unknown model"
    lay_out_hf_cache(
        tmp_path / "hf", repo, folder, COMMIT
    )  # as a download where the Hub is reachable leaves it
    assert cli.main(["download", f"hf-hub:{repo}", "--cache-dir", str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    assert f"files in {tmp_path / 'hf'}" in out and "(no zoo pins: not checked)" in out
    assert lga_zoo.load(f"hf-hub:{repo}", cache_dir=str(tmp_path / "hf")).entry is None
