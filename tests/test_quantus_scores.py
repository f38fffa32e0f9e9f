"""The Quantus scores (lga_zoo.quantus_scores): our calls against direct computations on a tiny model,
Quantus' shapes, the t interval, ``lga-zoo evaluate --add quantus`` (merge, resume, refusals), the card
and the leaderboard's --columns."""

import json
from dataclasses import replace
from importlib.util import find_spec

import numpy as np
import pytest
import torch
from torch import nn

from lga_zoo import cli
from lga_zoo.diffroar import grad_maps
from lga_zoo.quantus_scores import (
    QuantusSettings,
    measure_batch,
    merge_quantus,
    numpy_seeded,
    road_kept,
    t_interval,
)

needs_quantus = pytest.mark.skipif(
    find_spec("quantus") is None,
    reason='quantus is not installed (pip install "quantus==0.6.0", the eval extra)',
)
MODEL = "resnet18_w16_cifar10_lga"  # published in model_cards/: loads offline
EPS = 4 / 255


def tiny_model(seed: int = 0) -> nn.Module:
    """A 3-class CNN on 8x8 images; Softplus, so that its grad maps have no exact ties."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.Softplus(beta=5), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
    )
    return net.eval()


def tiny_images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@needs_quantus
def test_max_sensitivity_equals_a_direct_computation_with_the_same_noise_draws():
    model, x = tiny_model(), tiny_images()
    settings = QuantusSettings(nr_samples=3, eps=EPS, seed=7)
    with grad_maps(model, torch.device("cpu"), x) as maps:
        ours = measure_batch(model, maps, x, 5, settings, ("max_sensitivity",))["max_sensitivity"]
        predicted = model(x).argmax(1)
        clean = maps(x, predicted).flatten(1).numpy()
        direct = np.zeros((len(x), settings.nr_samples))
        # Quantus draws U(-eps, eps) over the whole batch, one draw per sample, from numpy's generator:
        # score index 0 of batch start 5
        with numpy_seeded(7, 5, 0):
            for step in range(settings.nr_samples):
                noise = np.random.uniform(-EPS, EPS, size=(len(x), 3 * 8 * 8)).astype(np.float32)
                noisy = x + torch.from_numpy(noise).view_as(x)
                moved = maps(noisy, predicted).flatten(1).numpy()
                direct[:, step] = np.linalg.norm(clean - moved, axis=1) / np.linalg.norm(clean, axis=1)
    assert ours.shape == (3,)
    np.testing.assert_allclose(ours, direct.max(1), rtol=1e-4)
    assert (ours > 0).all()


@needs_quantus
def test_road_equals_a_direct_accuracy_curve_with_the_same_imputation():
    from quantus.functions.perturb_func import noisy_linear_imputation

    model, x = tiny_model(), tiny_images()
    settings = QuantusSettings(road_percentages=(10, 50, 90), seed=3)
    with grad_maps(model, torch.device("cpu"), x) as maps:
        predicted = model(x).argmax(1)
        saliency = maps(x, predicted).numpy()
        ours = measure_batch(model, maps, x, 0, settings, ("road",))
    kept = np.zeros((len(x), 3), dtype=bool)
    with numpy_seeded(3, 0, 3), torch.no_grad():  # ROAD is score index 3
        for i in range(len(x)):
            order = np.argsort(-saliency[i].reshape(-1))  # the most relevant pixels first
            for j, percent in enumerate(settings.road_percentages):
                pixels = order[: int(64 * percent / 100)]
                imputed = noisy_linear_imputation(x[i].numpy(), pixels, noise=settings.road_noise)
                kept[i, j] = (
                    model(torch.from_numpy(imputed)[None].float()).argmax(1).item() == predicted[i].item()
                )
    assert ours["road_kept"].shape == (3, 3) and ours["road"].shape == (3,)
    np.testing.assert_array_equal(ours["road_kept"], kept)
    np.testing.assert_allclose(ours["road"], kept.mean(1))


@needs_quantus
def test_quantus_road_fails_on_colour_images_with_a_plain_map_and_works_with_ours():
    """Quantus 0.6.0's ROAD hands the imputation indices of the map broadcast to (B, 3, H, W); past H*W
    they raise. If a later Quantus fixes this, road_kept's workaround can go."""
    import quantus

    model, x = tiny_model(), tiny_images(2).numpy()
    y = np.zeros(2, dtype=np.int64)
    saliency = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    with pytest.raises(IndexError):
        quantus.ROAD(percentages=[50], abs=False, normalise=False, disable_warnings=True)(
            model=model, x_batch=x, y_batch=y, a_batch=saliency[:, None], device="cpu"
        )
    assert road_kept(model, x, y, saliency, QuantusSettings(road_percentages=(50,))).shape == (2, 1)
    with pytest.raises(ValueError, match="must be"):
        road_kept(model, x, y, saliency[:, None], QuantusSettings())


@needs_quantus
def test_every_score_has_a_value_per_image_and_the_numpy_state_is_given_back():
    model, x = tiny_model(), tiny_images(2)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    with grad_maps(model, torch.device("cpu"), x) as maps:
        out = measure_batch(model, maps, x, 0, QuantusSettings(nr_samples=1, road_percentages=(20,)))
    assert (np.random.get_state()[1] == before).all()
    assert set(out) == {
        "max_sensitivity",
        "local_lipschitz_estimate",
        "relative_input_stability",
        "road",
        "road_kept",
    }
    assert all(v.shape[0] == 2 and np.isfinite(v).all() for v in out.values())


def test_t_interval_is_scipys():
    from scipy import stats

    values = [0.2, 0.5, 0.4, 0.9, 0.3]
    stat = t_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert stat["ci95"] == pytest.approx([low, high]) and stat["ci95_method"] == "t" and stat["n"] == 5
    assert t_interval([0.5]) == {"mean": 0.5, "ci95": None, "n": 1, "ci95_method": "t"}
    with pytest.raises(ValueError, match="nr_samples"):
        QuantusSettings(nr_samples=0)


def test_merge_quantus_changes_nothing_else():
    results = {"model": {"sha256": "a"}, "accuracy": {"clean": 0.5}, "additions": {"apgd": {"command": "x"}}}
    merged = merge_quantus(results, {"scores": {}}, {"command": "c"})
    assert merged == {
        **results,
        "quantus": {"scores": {}},
        "additions": {"apgd": {"command": "x"}, "quantus": {"command": "c"}},
    }
    assert "quantus" not in results and results["additions"] == {"apgd": {"command": "x"}}


def quantus_results(mean: float = 0.3) -> dict:
    from test_cards_cli import sample_results

    results = sample_results()

    def stat(m: float) -> dict:
        return {"mean": m, "ci95": [m * 0.9, m * 1.1], "n": 200, "ci95_method": "t", "lower_is_better": True}

    results["quantus"] = {
        "implementation": "quantus 0.6.0",
        "n_images": 200,
        "settings": {**QuantusSettings().recorded()},
        "scores": {
            "max_sensitivity": stat(mean),
            "local_lipschitz_estimate": stat(4.2),
            "relative_input_stability": stat(31250.0),
            "road": {**stat(0.55), "curve": {"10": 0.9, "50": 0.5}},
        },
    }
    results["additions"] = {"quantus": {"command": "lga-zoo evaluate NAME --data-dir DIR --add quantus"}}
    return results


def test_card_and_leaderboard_columns_show_the_quantus_scores(monkeypatch):
    from test_cards_cli import sample_results

    import lga_zoo.leaderboard as leaderboard
    from lga_zoo import registry
    from lga_zoo.cards import render_card, summary_metrics

    entry = registry.get_entry(MODEL)
    card = render_card(entry, quantus_results())
    assert "Quantus scores of the grad map (quantus 0.6.0" in card and "95% Student-t interval" in card
    assert (
        "| Max-Sensitivity | 0.3 [0.27, 0.33] |" in card and "| Relative Input Stability | 3.125e+04" in card
    )
    assert "radius 0.01569 (4/255)" in card and "10%: 90.0%, 50%: 50.0%" in card
    assert "--add quantus" in card and "Quantus" not in render_card(entry, sample_results())
    metrics = summary_metrics(quantus_results(0.123456))
    assert (
        metrics["quantus/max_sensitivity"] == 0.1235
        and metrics["quantus/relative_input_stability"] == 31250.0
    )

    plain = leaderboard.leaderboard_markdown()
    assert leaderboard.leaderboard_markdown(["default"]) == plain  # the README's table unchanged
    entries = [
        replace(e, metrics={**e.metrics, **metrics}) if e.name == MODEL else e for e in registry.all_entries()
    ]
    monkeypatch.setattr(leaderboard, "all_entries", lambda: entries)
    board = leaderboard.leaderboard_markdown(["accuracy", "quantus/max_sensitivity", "quantus/road"])
    assert board.splitlines()[0].endswith("| accuracy | Max-Sensitivity (Quantus) | ROAD kept (Quantus) |")
    row = next(line for line in board.splitlines() if line.startswith(f"| {MODEL} |"))
    assert row.endswith("| 0.1235 | 0.55 |")
    with pytest.raises(ValueError, match="Did you mean"):
        leaderboard.leaderboard_markdown(["quantus/max_sensitivty"])


def _run(monkeypatch, argv):
    monkeypatch.setattr("sys.argv", ["lga-zoo", *argv])  # the command the results record
    return cli.main(argv)


@needs_quantus
def test_add_quantus_merges_only_quantus_resumes_and_refuses_other_weights(
    tiny_cifar, tmp_path, monkeypatch, capsys
):
    """On results written by hand for the published w16 model's weights and the tiny data (a full
    evaluation first would take minutes): the first 2 robustness images, one noise draw."""
    import lga_zoo
    from lga_zoo.evaluate import _model_data

    monkeypatch.chdir(tmp_path)
    model = lga_zoo.load(MODEL)
    data = _model_data(model, str(tiny_cifar), "test")
    from test_cards_cli import sample_results

    before = sample_results()
    before["model"] = {"name": MODEL, "sha256": model.sha256, "source": "zoo"}
    before["data"] = {"name": data.name, "split": "test", "n_robustness": 4, "n_accuracy": len(data.labels)}
    before["complete"] = True
    path = tmp_path / "runs" / "evaluate" / MODEL / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(before, indent=2) + "\n")
    add = ["evaluate", MODEL, "--data-dir", str(tiny_cifar), "--add", "quantus", "--quantus-images", "2"]
    add += ["--quantus-samples", "1", "--batch-size", "1", "--device", "cpu", "--no-progress"]
    # stopped after one batch, the results untouched; the same command with --resume completes it
    assert _run(monkeypatch, [*add, "--max-minutes", "1e-9"]) == 3
    assert "stopped after 1 of 2" in capsys.readouterr().err
    assert json.loads(path.read_text()) == before
    state = path.parent / "results.quantus.state.safetensors"
    assert state.is_file()
    assert _run(monkeypatch, add) == 2 and "--resume" in capsys.readouterr().err  # a state is not overwritten
    assert _run(monkeypatch, [*add, "--resume"]) == 0
    assert not state.exists() and "Quantus scores added" in capsys.readouterr().out
    after = json.loads(path.read_text())
    for key in before:  # every other figure byte-identical
        assert json.dumps(after[key], indent=2) == json.dumps(before[key], indent=2), key
    section = after["quantus"]
    assert (
        section["n_images"] == 2
        and section["settings"]["nr_samples"] == 1
        and section["settings"]["seed"] == 0
    )
    assert set(section["scores"]) == {
        "max_sensitivity",
        "local_lipschitz_estimate",
        "relative_input_stability",
        "road",
    }
    assert all(s["n"] == 2 and s["ci95_method"] == "t" for s in section["scores"].values())
    assert "--add quantus" in after["additions"]["quantus"]["command"] and str(tmp_path) not in json.dumps(
        after
    )
    assert after["additions"]["quantus"]["versions"]["quantus"] == "0.6.0"

    # one uninterrupted run gives the same figures as the stopped and resumed one
    assert _run(monkeypatch, [*add, "--out", str(tmp_path / "again.json")]) == 2  # no results there
    (tmp_path / "again.json").write_text(json.dumps(before))
    assert _run(monkeypatch, [*add, "--out", str(tmp_path / "again.json")]) == 0
    assert json.loads((tmp_path / "again.json").read_text())["quantus"] == section

    # results of other weights: refused in one line, the file untouched
    path.write_text(json.dumps({**before, "model": {**before["model"], "sha256": "f" * 64}}, indent=2))
    capsys.readouterr()
    assert _run(monkeypatch, add) == 2
    err = capsys.readouterr().err
    assert "other weights (sha256 ffffffffffff...)" in err and "adding the Quantus scores" in err
    path.write_text(json.dumps({**before, "complete": False}))
    assert _run(monkeypatch, add) == 2 and "before adding the Quantus scores" in capsys.readouterr().err


def test_cli_default_samples_match_the_settings():
    assert cli.QUANTUS_SAMPLES == QuantusSettings().nr_samples
