import json
import re
import shutil
from dataclasses import fields
from pathlib import Path

import pytest
import timm
import torch

import lga_zoo
from lga_zoo.recipe import load_recipe
from lga_zoo.registry import (
    ENTRY_FIELDS,
    REQUIRED_FIELDS,
    UnknownModelError,
    ZooEntry,
    all_entries,
    get_entry,
)
from lga_zoo.regularizers import build_regularizer

REPO = Path(__file__).resolve().parents[1]


def raw_entries():
    return json.loads((REPO / "lga_zoo" / "zoo.json").read_text())["models"]


def test_schema_fields_present_and_known():
    for raw in raw_entries():
        missing = [f for f in REQUIRED_FIELDS if f not in raw]
        unknown = [f for f in raw if f not in ENTRY_FIELDS]
        assert not missing and not unknown, (raw["name"], missing, unknown)
        base = f"{raw['architecture'].replace('_cifar', '')}_{raw['dataset']}_{raw['method']}"
        assert raw["name"] == base or _strength_in_name(raw["name"][len(base) + 1 :]) == pytest.approx(
            _strength(raw["regularizer"])
        ), raw["name"]
        assert len(raw["mean"]) == len(raw["std"]) == raw["input_size"][0]
        assert raw["hf_repo_id"].count("/") == 1
        if raw["sha256"] is not None:
            assert len(raw["sha256"]) == 64 and raw["size"] > 0


NAME_KNOBS = {"lga": ("l2_", "lambda_l2"), "hessian": ("lam", "lam"), "gradnorm": ("lam", "lam")}
NAME_KNOBS |= {"adversarial": ("eps", "eps"), "trades": ("beta", "beta")}


def _strength_in_name(suffix: str) -> float | None:
    """The strength a variant's name states: ``l2_0p05`` -> 0.05, ``lam5em6`` -> 5e-6, ``eps2`` -> 2/255
    (p for the decimal point, em for e-; eps in 1/255 pixel steps)."""
    for prefix, key in NAME_KNOBS.values():
        if suffix.startswith(prefix):
            value = float(suffix[len(prefix) :].replace("em", "e-").replace("p", "."))
            return value / 255 if key == "eps" else value
    return None


def _strength(regularizer: dict) -> float | None:
    prefix_and_key = NAME_KNOBS.get(regularizer["name"])
    return regularizer[prefix_and_key[1]] if prefix_and_key else None


@pytest.mark.parametrize("entry", all_entries(), ids=lambda e: e.name)
def test_parameter_count_and_preprocessing_match_built_model(entry):
    backbone = timm.create_model(entry.architecture, num_classes=len(entry.classes))
    assert sum(p.numel() for p in backbone.parameters()) == entry.num_params
    assert tuple(backbone.pretrained_cfg["mean"]) == pytest.approx(entry.mean)
    assert tuple(backbone.pretrained_cfg["input_size"]) == entry.input_size


def test_every_recipe_maps_to_an_entry_and_back():
    recipes = {p.stem: p for p in (REPO / "recipes").glob("*.yaml")}
    names = {e.name for e in all_entries()}
    assert set(recipes) == names
    for entry in all_entries():
        recipe = load_recipe(REPO / entry.recipe)
        assert recipe.name == entry.name
        assert recipe.architecture == entry.architecture
        assert recipe.activation == entry.activation
        reg = build_regularizer(recipe.regularizer["name"], **recipe.regularizer_params()).settings()
        assert reg == entry.regularizer
        if recipe.init.startswith("model_cards/"):
            assert entry.base_model == f"lga-zoo/{Path(recipe.init).name}"


def test_list_models_filters_like_timm(monkeypatch):
    everything = lga_zoo.list_models(pretrained=False)
    assert everything == sorted(e.name for e in all_entries())
    assert lga_zoo.list_models("*_lga", pretrained=False) == [n for n in everything if n.endswith("_lga")]
    published = lga_zoo.list_models()
    assert published == [e.name for e in all_entries() if e.sha256]


def test_unknown_name_lists_closest():
    with pytest.raises(
        UnknownModelError,
        match=r"unknown model 'resnet18_w16_cifar10_lag'.*Did you mean.*resnet18_w16_cifar10_lga",
    ):
        get_entry("resnet18_w16_cifar10_lag")
    with pytest.raises(UnknownModelError):
        lga_zoo.load("no_such_model")


def test_entry_dataclass_matches_schema_constants():
    assert ENTRY_FIELDS == tuple(f.name for f in fields(ZooEntry))


def test_hubconf_has_one_documented_entry_per_model():
    from conftest import load_file_module

    hubconf = load_file_module("hubconf.py")
    names = sorted(n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_"))
    assert names == lga_zoo.list_models(pretrained=False)
    for name in names:
        doc = getattr(hubconf, name).__doc__
        assert get_entry(name).recipe in doc and "Args:" in doc, name
    assert len((REPO / "hubconf.py").read_text().splitlines()) <= 40


def test_hub_entrypoint_summaries_come_from_registry_fields():
    from dataclasses import replace

    from lga_zoo.torch_hub import summary

    lga = get_entry("resnet18_cifar10_lga")
    adversarial = replace(
        lga,
        name="resnet18_cifar10_adversarial_eps1",
        method="adversarial",
        regularizer={"name": "adversarial", "eps": 1 / 255, "steps": 3, "step_size": 2.5 / 255 / 3},
    )
    assert summary(adversarial) == (
        "resnet18_cifar (Softplus beta 3) on CIFAR-10 trained with the `adversarial` regularizer "
        "(eps=1/255, steps=3, step_size=0.003268); fine-tuned from lga-zoo/resnet18_cifar10_standard."
    )
    trades = replace(lga, regularizer={"name": "trades", "beta": 6.0, "eps": 2 / 255}, sha256=None)
    assert summary(trades).endswith(
        "(beta=6.0, eps=2/255); fine-tuned from lga-zoo/resnet18_cifar10_standard, weights not published yet."
    )
    control = replace(lga, method="control", regularizer={"name": "none"})
    assert ": the control, the fine-tunes' extra training without a regularizer;" in summary(control)


def test_torch_hub_list_help_and_load_offline(tmp_path, monkeypatch):
    # torch.hub.list/help take a GitHub repo; lay this checkout out as its cached clone so that no
    # network is needed (a ref is given, validation skipped), as a user's second call would find it.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub_dir = tmp_path / "torch" / "hub"
    clone = hub_dir / "lga-zoo_lga_zoo_main"
    shutil.copytree(
        REPO, clone, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__", "*.egg-info")
    )
    torch.hub.set_dir(str(hub_dir))
    try:
        listed = torch.hub.list("lga-zoo/lga_zoo:main", skip_validation=True, trust_repo=True, verbose=False)
        assert sorted(listed) == lga_zoo.list_models(pretrained=False)
        doc = torch.hub.help(
            "lga-zoo/lga_zoo:main", "resnet18_w16_cifar10_lga", skip_validation=True, trust_repo=True
        )
        assert "recipes/resnet18_w16_cifar10_lga.yaml" in doc
    finally:
        torch.hub.set_dir(str(Path.home() / ".cache" / "torch" / "hub"))
    model = torch.hub.load(
        str(REPO), "resnet18_w16_cifar10_lga", source="local", trust_repo=True, pretrained=False
    )
    assert isinstance(model, lga_zoo.ExplainableClassifier)
    assert model.entry.name == "resnet18_w16_cifar10_lga"
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_published_files_hold_no_machine_paths():
    published = [
        p for p in (REPO / "model_cards").rglob("*") if p.is_file() and p.suffix in (".json", ".md", ".jsonl")
    ]
    published += [REPO / "README.md", REPO / "lga_zoo" / "zoo.json", *(REPO / "recipes").rglob("*.yaml")]
    published += list((REPO / "docs").rglob("*.md"))
    for path in published:
        text = path.read_text()
        for marker in ("/work/", "/root/", "/home/", "/tmp/", "../shared/", "C:\\\\"):
            assert marker not in text, f"{path.relative_to(REPO)} holds a machine path ({marker})"


def test_hubconf_refuses_unknown_keywords():
    from conftest import load_file_module

    hubconf = load_file_module("hubconf.py")
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['devcie'\\]"):
        hubconf.resnet18_w16_cifar10_lga(devcie="cpu")
    with pytest.raises(TypeError, match="accepted: \\['device'\\]"):
        hubconf.resnet18_w16_cifar10_lga(pretrained=False, revision="x")


def _published_family_figures(entry) -> tuple[set[str], set[str]]:
    """Every robustness mean and CI bound (3 decimals) and every PGD accuracy (percent, 1 and 2
    decimals) in the published results.json of ``entry``'s family, as a note would quote them."""
    from lga_zoo.cards import family_of

    try:
        family = family_of(entry) or [entry]
    except UnknownModelError:  # fine-tuned from a timm checkpoint, not a zoo model
        family = [entry]
    figures, pgd_percents = set(), set()
    for member in family:
        path = REPO / "model_cards" / member.name / "results.json"
        if not path.is_file():
            continue
        results = json.loads(path.read_text())
        for attacks in results["robustness"].values():
            for stats in attacks.values():
                for stat in stats.values():
                    if not isinstance(stat, dict):  # a count, e.g. of changed predictions
                        continue
                    figures.update(f"{v:.3f}" for v in (stat["mean"], *(stat["ci95"] or ())))
        linf = results["accuracy"].get("pgd", {}).get("linf", {}).get("accuracy")
        if linf is not None:
            pgd_percents.update({f"{100 * linf:.1f}%", f"{100 * linf:.2f}%"})
    return figures, pgd_percents


@pytest.mark.parametrize("entry", [e for e in all_entries() if e.notes], ids=lambda e: e.name)
def test_figures_quoted_in_notes_match_the_published_results(entry):
    """Notes are typed by hand; a re-evaluation must not leave a stale figure in them. Every
    attribution figure (0.xxx) and every PGD L-inf accuracy a note quotes is one of its family's
    published results."""
    figures, pgd_percents = _published_family_figures(entry)
    for quoted in re.findall(r"\b\d\.\d{3}\b", entry.notes):
        assert quoted in figures, (
            f"{entry.name}'s note quotes {quoted}, found in no published result of its family"
        )
    # the first percentage after each mention ("PGD L-inf 55.6%", "PGD L-inf accuracy 34.80% vs ..."):
    # a later one in the sentence may be a clean accuracy
    for quoted in re.findall(r"PGD L-inf[^%;]{0,40}?(\d+\.\d+%)", entry.notes):
        assert quoted in pgd_percents, (
            f"{entry.name}'s note quotes PGD L-inf {quoted}, not a published result"
        )


def test_registry_notes_and_recipe_headers_stay_short():
    """A note says what a user must know in one sentence; a recipe header what the recipe is and how
    to run it. Histories belong in docs/experiments/."""
    long_notes = {e.name: len(e.notes) for e in all_entries() if e.notes and len(e.notes) > 300}
    assert not long_notes, f"zoo.json notes over 300 characters: {long_notes}"
    long_headers = {}
    for recipe in sorted((REPO / "recipes").rglob("*.yaml")):
        lines = recipe.read_text().splitlines()
        header = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
        if header > 4:
            long_headers[recipe.name] = header
    assert not long_headers, f"recipe headers over 4 comment lines: {long_headers}"
