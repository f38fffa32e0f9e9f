"""Robust accuracy under AutoAttack's gradient part (APGD-CE, then APGD-T on the images left), by
torchattacks, in fp32: against direct torchattacks calls, side effects, the ``--add apgd`` merge into an
existing results.json, cards and leaderboard."""

import json
import sys
from dataclasses import replace
from importlib.util import find_spec

import pytest
import torch
from torch import nn

import lga_zoo
from lga_zoo import cli
from lga_zoo.apgd import apgd_robust, global_rng_kept, torchattacks_module, wilson_interval
from lga_zoo.data import CIFAR10_CLASSES, ImageArrays
from lga_zoo.evaluate import EvalSettings, evaluate, merge_apgd

needs_torchattacks = pytest.mark.skipif(
    find_spec("torchattacks") is None,
    reason="torchattacks is not installed (pip install --no-deps torchattacks==3.5.1)",
)
MODEL = "resnet18_w16_cifar10_lga"  # published in model_cards/: loads offline
L2_EPS, STEPS = 0.05, 5  # on the toy net below, APGD-T breaks an image that APGD-CE left


def toy_net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Dropout(0.5), nn.Linear(128, 10),
    )  # fmt: skip
    return lga_zoo.wrap(net, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(3, 16, 16)).eval()


def images_and_predictions(model, n=16):
    x = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 10  # two images misclassified from the start
    return x, y


def direct_torchattacks(model, x, y, norm, eps, steps, targets, seed=0):
    """What AutoAttack's gradient part gives, by torchattacks called directly: APGD-CE on all images,
    APGD-T (``targets`` target classes) on the ones it leaves correctly classified."""
    import torchattacks

    name = {"linf": "Linf", "l2": "L2"}[norm]
    x_ce = torchattacks.APGD(model, norm=name, eps=eps, steps=steps, seed=seed, loss="ce")(x, y)
    with torch.no_grad():
        robust_ce = model(x_ce).argmax(1) == y
    left = robust_ce.nonzero().squeeze(1)
    apgdt = torchattacks.APGDT(model, norm=name, eps=eps, steps=steps, seed=seed, n_classes=targets + 1)
    x_t = apgdt(x[left], y[left])
    with torch.no_grad():
        robust_t = model(x_t).argmax(1) == y[left]
    return robust_ce, left, robust_t


@needs_torchattacks
def test_apgd_is_the_per_image_worst_case_of_torchattacks_apgd_ce_then_apgd_t():
    model = toy_net()
    x, y = images_and_predictions(model)
    robust_ce, robust = apgd_robust(model, x, y, "l2", L2_EPS, steps=STEPS, n_target_classes=3)
    expected_ce, left, robust_t = direct_torchattacks(model, x, y, "l2", L2_EPS, STEPS, 3)
    assert torch.equal(robust_ce, expected_ce)
    expected = torch.zeros_like(robust)
    expected[left] = robust_t  # robust only if robust under both
    assert torch.equal(robust, expected)
    assert not robust_ce[:2].any()  # misclassified images are never robust
    assert (robust_ce & ~robust).any(), "APGD-T should break an image APGD-CE left (the test's premise)"
    assert torch.equal(apgd_robust(model, x, y, "l2", L2_EPS, steps=STEPS)[1], robust)  # seeded
    with pytest.raises(ValueError, match="n_target_classes=10 must be between 1 and 9"):
        apgd_robust(model, x, y, "linf", 2 / 255, steps=1, n_target_classes=10)
    with pytest.raises(ValueError, match="norm='l1'"):
        apgd_robust(model, x, y, "l1", 2 / 255)


@needs_torchattacks
def test_apgd_leaves_the_callers_model_and_global_random_state_as_they_were():
    model = toy_net().train()
    model.backbone[1].eval()  # a frozen BatchNorm inside a training model
    model.backbone[0].weight.requires_grad_(False)
    x, y = images_and_predictions(model.eval())
    model.train()
    model.backbone[1].eval()
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    before = torch.get_rng_state()
    apgd_robust(model, x, y, "linf", 2 / 255, steps=2, n_target_classes=2)
    assert torch.equal(torch.get_rng_state(), before), "the global random generator moved"
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())
    with global_rng_kept():
        torch.manual_seed(7)
        torch.cuda.manual_seed(7)  # queued until CUDA starts where it has not: dropped too
    assert torch.equal(torch.get_rng_state(), before)


def test_without_torchattacks_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # import fails
    with pytest.raises(RuntimeError, match=r"pip install --no-deps torchattacks==3\.5\.1"):
        torchattacks_module()
    with pytest.raises(RuntimeError, match="torchattacks"):
        evaluate(toy_net(), synthetic_data(2), EvalSettings(methods=(), attacks=("apgd",)), progress=False)


def test_wilson_interval_closed_form():
    assert wilson_interval(5, 10) == pytest.approx([0.2366, 0.7634], abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx([0.0, 0.2775], abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx([0.7225, 1.0], abs=1e-4)
    assert wilson_interval(0, 0) is None


def synthetic_data(n):
    x = torch.rand(n, 16, 16, 3, generator=torch.Generator().manual_seed(3))
    labels = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(4))
    return ImageArrays((x * 255).to(torch.uint8).numpy(), labels.numpy(), CIFAR10_CLASSES, "synthetic")


def apgd_settings(**overrides):
    base = dict(methods=(), attacks=("pgd", "apgd"), n_robustness=8, batch_size=4, pgd_steps=2,
                pgd_l2_eps=L2_EPS, apgd_steps=STEPS, apgd_targets=2, seed=0)  # fmt: skip
    return EvalSettings(**{**base, **overrides})


@needs_torchattacks
def test_the_evaluation_counts_apgd_per_batch_as_direct_calls_do_on_its_seeded_images():
    model, data = toy_net(), synthetic_data(12)
    settings = apgd_settings()
    results = evaluate(model, data, settings, progress=False, fold_batchnorm=False, fused_softplus=False)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0))[:8]  # evaluate's selection
    x = torch.from_numpy(data.images[order.numpy()]).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(data.labels[order.numpy()])
    for norm, eps in (("linf", 2 / 255), ("l2", L2_EPS)):
        correct = correct_ce = 0
        for start in (0, 4):
            xb, yb = x[start : start + 4], y[start : start + 4]
            robust_ce, left, robust_t = direct_torchattacks(model, xb, yb, norm, eps, STEPS, 2)
            correct_ce += int(robust_ce.sum())
            correct += int(robust_t.sum())
        record = results["accuracy"]["apgd"][norm]
        assert record["accuracy"] == correct / 8 and record["accuracy_apgd_ce"] == correct_ce / 8
        assert record["ci95"] == wilson_interval(correct, 8) and record["ci95_method"] == "wilson"
        assert record["accuracy"] <= record["accuracy_apgd_ce"]
        assert {k: record[k] for k in ("eps", "steps", "n_images", "n_target_classes", "precision")} == {
            "eps": eps, "steps": STEPS, "n_images": 8, "n_target_classes": 2, "precision": "fp32"
        }  # fmt: skip
        assert record["attacks"] == ["apgd-ce", "apgd-t"] and record["implementation"] == "torchattacks 3.5.1"
    assert set(results["accuracy"]["pgd"]) == {"linf", "l2"}  # PGD kept beside APGD
    assert settings.recorded()["apgd_targets"] == 2
    assert "apgd_steps" not in EvalSettings(attacks=("pgd",)).recorded()  # evaluations without APGD as before


@needs_torchattacks
def test_apgd_runs_in_fp32_under_bf16_attacks_and_a_callers_autocast(monkeypatch):
    import lga_zoo.evaluate as evaluate_module

    model, data = toy_net(), synthetic_data(8)
    reference = evaluate(model, data, apgd_settings(attacks=("apgd",)), progress=False)
    seen = []
    real = evaluate_module.apgd_robust

    def recording(model, *args, **kwargs):
        handle = model.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
        try:
            return real(model, *args, **kwargs)
        finally:
            handle.remove()

    monkeypatch.setattr(evaluate_module, "apgd_robust", recording)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = evaluate(model, data, apgd_settings(attacks=("apgd",), attack_amp="bf16"), progress=False)
    assert seen and set(seen) == {torch.float32}
    assert bf16["accuracy"]["apgd"] == reference["accuracy"]["apgd"]


def test_merge_apgd_changes_nothing_but_the_apgd_entries():
    results = {"model": {"sha256": "a"}, "accuracy": {"clean": 0.5, "pgd": {"linf": {}}}, "complete": True}
    merged = merge_apgd(results, {"linf": {"accuracy": 0.25}}, {"command": "c"})
    assert merged["accuracy"] == {**results["accuracy"], "apgd": {"linf": {"accuracy": 0.25}}}
    assert merged["additions"] == {"apgd": {"command": "c"}} and "apgd" not in results["accuracy"]


def _run(monkeypatch, argv):
    monkeypatch.setattr("sys.argv", ["lga-zoo", *argv])  # the command the results record
    return cli.main(argv)


@needs_torchattacks
def test_add_apgd_to_existing_results_merges_only_apgd_resumes_and_refuses_other_weights(
    tiny_cifar, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    first = ["evaluate", MODEL, "--data-dir", str(tiny_cifar), "--n-images", "4", "--n-accuracy", "10"]
    first += ["--methods", "grad", "--attacks", "random,pgd", "--random-draws", "1", "--device", "cpu"]
    assert _run(monkeypatch, [*first, "--no-progress"]) == 0
    path = tmp_path / "runs" / "evaluate" / MODEL / "results.json"
    before = json.loads(path.read_text())
    add = ["evaluate", MODEL, "--data-dir", str(tiny_cifar), "--add", "apgd", "--apgd-steps", "2"]
    add += ["--apgd-targets", "2", "--batch-size", "2", "--device", "cpu", "--no-progress"]
    # stopped after one batch, the results untouched; the same command with --resume completes it
    assert _run(monkeypatch, [*add, "--max-minutes", "1e-9"]) == 3
    assert "stopped after 2 of 4" in capsys.readouterr().err
    assert json.loads(path.read_text()) == before
    assert (path.parent / "results.apgd.state.safetensors").is_file()
    assert _run(monkeypatch, [*add, "--resume"]) == 0
    assert not (path.parent / "results.apgd.state.safetensors").exists()
    after = json.loads(path.read_text())
    for key in before:  # every other section byte-identical
        if key != "accuracy":
            assert json.dumps(after[key], indent=2) == json.dumps(before[key], indent=2), key
    assert {k: v for k, v in after["accuracy"].items() if k != "apgd"} == before["accuracy"]
    assert json.dumps(after["accuracy"], indent=2).startswith(json.dumps(before["accuracy"], indent=2)[:-2])
    addition = after["additions"]["apgd"]
    assert "--add apgd" in addition["command"] and str(tmp_path) not in addition["command"]
    assert "APGD linf" in capsys.readouterr().out

    # the same figures as a full evaluation that includes apgd, on the same seeded images
    full = ["evaluate", MODEL, "--data-dir", str(tiny_cifar), "--n-images", "4", "--n-accuracy", "10"]
    full += ["--methods", "grad", "--attacks", "random,pgd,apgd", "--random-draws", "1", "--apgd-steps", "2"]
    full += ["--apgd-targets", "2", "--batch-size", "2", "--device", "cpu", "--no-progress"]
    assert _run(monkeypatch, [*full, "--out", str(tmp_path / "full.json")]) == 0
    assert json.loads((tmp_path / "full.json").read_text())["accuracy"] == after["accuracy"]

    # results of other weights: refused in one line, the file untouched
    path.write_text(json.dumps({**before, "model": {**before["model"], "sha256": "f" * 64}}, indent=2))
    capsys.readouterr()
    assert _run(monkeypatch, add) == 2
    err = capsys.readouterr().err
    assert "other weights (sha256 ffffffffffff...)" in err and len(err.strip().splitlines()) == 1
    assert json.loads(path.read_text())["model"]["sha256"] == "f" * 64
    path.write_text(json.dumps({**before, "complete": False}))
    assert _run(monkeypatch, add) == 2 and "stopped evaluation" in capsys.readouterr().err
    path.write_text(json.dumps(before))
    assert _run(monkeypatch, [*add, "--n-images", "3"]) == 2
    assert "leave out --n-images" in capsys.readouterr().err
    assert _run(monkeypatch, [*add, "--out", str(tmp_path / "none.json")]) == 2
    assert "evaluate in full first" in capsys.readouterr().err


def apgd_results(accuracy, apgd=None):
    from test_cards_cli import sample_results

    results = sample_results(accuracy)
    if apgd is not None:
        record = {"eps": 2 / 255, "steps": 50, "accuracy": apgd, "n_images": 100, "ci95": [apgd - 0.05, apgd + 0.05],
                  "ci95_method": "wilson", "accuracy_apgd_ce": apgd + 0.02, "attacks": ["apgd-ce", "apgd-t"],
                  "n_target_classes": 3, "implementation": "torchattacks 3.5.1", "precision": "fp32"}  # fmt: skip
        results["accuracy"]["apgd"] = {"linf": record, "l2": {**record, "eps": 0.25}}
        results["additions"] = {"apgd": {"command": "lga-zoo evaluate NAME --data-dir DIR --add apgd"}}
    return results


def test_cards_and_leaderboard_show_apgd_where_measured_else_pgd_marked(monkeypatch):
    import lga_zoo.leaderboard as leaderboard
    from lga_zoo import registry
    from lga_zoo.cards import comparison_section, render_card, summary_metrics

    entry = registry.get_entry(MODEL)
    with_apgd = apgd_results(0.81, apgd=0.2)
    metrics = summary_metrics(with_apgd)
    assert metrics["apgd_linf"] == 0.2 and metrics["apgd_l2"] == 0.2 and metrics["pgd_linf"] == 0.31
    card = render_card(entry, with_apgd)
    assert "| APGD linf accuracy (eps 0.007843, APGD-CE then APGD-T with 3 target classes" in card
    assert "| 20.00% [15.00%, 25.00%]; APGD-CE alone 22.00% |" in card
    assert "by `lga-zoo evaluate NAME --data-dir DIR --add apgd`" in card
    assert "name: APGD l2 accuracy (eps 0.25, APGD-CE then APGD-T with 3 targets, 50 steps, fp32)" in card
    assert "APGD" not in render_card(entry, apgd_results(0.81))

    family = registry.get_entry("resnet18_w16_cifar10_standard")
    members = {family.name: apgd_results(0.8, apgd=0.2), MODEL: apgd_results(0.81)}
    table = comparison_section(entry, members)
    assert "| L-inf robust acc. |" in table and "| 20.00% |" in table and "| 31.00% (PGD) |" in table
    assert "| PGD L-inf |" in comparison_section(
        entry, {family.name: apgd_results(0.8), MODEL: members[MODEL]}
    )

    without = [replace(e, metrics={k: v for k, v in e.metrics.items() if not k.startswith("apgd_")})
               for e in registry.all_entries()]  # fmt: skip
    monkeypatch.setattr(leaderboard, "all_entries", lambda: without)
    plain = leaderboard.leaderboard_markdown()
    entries = [replace(e, metrics={**e.metrics, "apgd_linf": 0.1}) if e.name == MODEL else e for e in without]
    monkeypatch.setattr(leaderboard, "all_entries", lambda: entries)
    board = leaderboard.leaderboard_markdown()
    assert "L-inf robust acc. (APGD; PGD where marked)" in board and "PGD L-inf acc." in plain
    rows = {line.split(" | ")[0][2:]: line for line in board.splitlines()[2:]}
    assert "| 10.00% |" in rows[MODEL]
    assert all("(PGD)" in row for name, row in rows.items() if name != MODEL and "%" in row)
