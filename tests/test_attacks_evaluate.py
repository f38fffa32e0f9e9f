import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import record_attack_autocast
from torch import nn

import lga_zoo
from lga_zoo.attacks import (
    differentiable_map,
    frame_target,
    map_and_logits,
    pgd,
    random_perturbation,
    targeted_attribution_attack,
    topk_attack,
)
from lga_zoo.data import CIFAR10_CLASSES, ImageArrays
from lga_zoo.evaluate import EvalSettings, evaluate, mean_ci95
from lga_zoo.leaderboard import END_MARKER, START_MARKER, leaderboard_markdown, readme_table
from lga_zoo.metrics import topk_intersection
from lga_zoo.models import softplus_activations

REPO = Path(__file__).resolve().parents[1]
EPS = 4 / 255


def relu_cnn(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 10),
    )  # fmt: skip
    return lga_zoo.wrap(net, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(3, 16, 16)).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def in_ball(x_adv, x, eps):
    return (x_adv - x).abs().max().item() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


def test_frame_target():
    frame = frame_target(32, 32)
    assert frame.sum().item() == pytest.approx(1.0)
    assert (frame[5:27, 5:27] == 0).all() and (frame[:5] > 0).all() and (frame[:, -5:] > 0).all()
    assert (frame_target(64, 64)[10:54, 10:54] == 0).all() and (frame_target(64, 64)[:10] > 0).all()


def test_differentiable_map_matches_explain(images):
    model = relu_cnn()
    target = torch.tensor([1, 2, 3, 4, 5, 6])
    x = images.clone().requires_grad_(True)
    for method in ("grad", "input_x_grad"):
        maps = differentiable_map(model, x, target, method).detach()
        reference = model.explain(images, target=target, method=method, normalize="sum").attribution
        assert torch.allclose(maps, reference, atol=1e-6)
    ig = differentiable_map(model, x, target, "integrated_gradients", ig_steps=64).detach()
    reference = model.explain(images, target=target, method="ig", steps=64, normalize="sum").attribution
    assert torch.allclose(ig, reference, atol=2e-3)


def test_map_and_logits_gives_the_gradient_of_two_separate_forwards(images):
    """The targeted attack's loss through one shared forward has the same input gradient as through
    the map and a second forward of its own (what the attack computed before)."""
    with softplus_activations(relu_cnn()) as model:
        target = torch.tensor([1, 2, 3, 4, 5, 6])
        weights = torch.rand(6, 10, generator=torch.Generator().manual_seed(2))
        grads = []
        for shared in (True, False):
            x = images.clone().requires_grad_(True)
            if shared:
                maps, logits = map_and_logits(model, x, target)
            else:
                maps, logits = differentiable_map(model, x, target), model(x)
            loss = maps.pow(2).sum() * 100 + (logits * weights).pow(2).sum()
            grads.append(torch.autograd.grad(loss, x)[0])
        assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-8)
        assert grads[0].abs().max() > 0
        assert (
            map_and_logits(model, images.clone().requires_grad_(True), target, "integrated_gradients")[1]
            is None
        )


def test_perturbations_stay_in_ball_and_are_deterministic(images):
    model = relu_cnn()
    target = model(images).argmax(1)
    noisy = random_perturbation(images, EPS, torch.Generator().manual_seed(1))
    assert in_ball(noisy, images, EPS)
    with softplus_activations(model, 20.0):
        t1 = targeted_attribution_attack(
            model, images, target, eps=EPS, steps=15, generator=torch.Generator().manual_seed(3)
        )
        t2 = targeted_attribution_attack(
            model, images, target, eps=EPS, steps=15, generator=torch.Generator().manual_seed(3)
        )
        k1 = topk_attack(model, images, target, eps=EPS, steps=10)
    assert in_ball(t1, images, EPS) and in_ball(k1, images, EPS)
    assert torch.equal(t1, t2)
    for norm, eps in (("linf", 2 / 255), ("l2", 0.3)):
        adv = pgd(model, images, target, eps, norm=norm, steps=10)
        delta = (adv - images).flatten(1)
        size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
        assert (size <= eps + 1e-5).all() and adv.min() >= 0 and adv.max() <= 1


def reference_topk_attack(model, x, target, eps, steps, k, method, reference_model):
    """The top-k attack as first written: a fresh map at every accepted point, a separate forward
    pass for every candidate's class, and the last point measured after the loop."""
    from lga_zoo.metrics import topk_mask

    step_size = eps / 8
    label = reference_model(x).argmax(1)
    x_req = x.clone().requires_grad_(True)
    mask = topk_mask(differentiable_map(model, x_req, target, method).detach(), k).float()
    x_adv, best = x.clone(), x.clone()
    best_mass = torch.full((len(x),), float("inf"), dtype=x.dtype)
    rejected = 0
    for _ in range(steps + 1):
        x_step = x_adv.clone().requires_grad_(True)
        mass = (differentiable_map(model, x_step, target, method) * mask).flatten(1).sum(1)
        (grad,) = torch.autograd.grad(mass.sum(), x_step)
        with torch.no_grad():
            improved = mass < best_mass
            best[improved] = x_adv[improved]
            best_mass = torch.where(improved, mass, best_mass)
            candidate = torch.min(torch.max(x_adv - step_size * grad.sign(), x - eps), x + eps).clamp(0, 1)
            keeps = reference_model(candidate).argmax(1) == label
            rejected += (~keeps).sum().item()
            x_adv = torch.where(keeps.view(-1, 1, 1, 1), candidate, x_adv)
    return best, rejected


@pytest.mark.parametrize("method", ["grad", "integrated_gradients"])
@pytest.mark.parametrize("own_reference", [True, False])
def test_topk_attack_matches_the_step_by_step_reference(method, own_reference):
    # One map per step (the class read from the map's own forward, an undone step's gradient kept)
    # gives the same points as recomputing everything at every step; in float64 they are equal.
    model = relu_cnn().double()
    reference_model = model if own_reference else relu_cnn(seed=1).double()
    x = torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = model(x).argmax(1)
    eps, steps = 32 / 255, 20  # large enough that many steps are undone
    with softplus_activations(model, 20.0):
        expected, rejected = reference_topk_attack(model, x, target, eps, steps, 0.1, method, reference_model)
        got = topk_attack(
            model, x, target, eps=eps, steps=steps, k=0.1, method=method,
            reference_model=None if own_reference else reference_model,
        )  # fmt: skip
    assert rejected > 0, "the check of undone steps needs some steps undone"
    assert not torch.equal(expected, x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_attacks_lower_similarity_more_than_noise(images):
    model = relu_cnn()
    target = model(images).argmax(1)
    clean = model.explain(images, target=target, normalize="max").attribution
    noisy = model.explain(
        random_perturbation(images, EPS, torch.Generator().manual_seed(1)), target=target
    ).attribution
    with softplus_activations(model, 20.0):
        attacked = targeted_attribution_attack(model, images, target, eps=EPS, steps=40)
        topk_point = topk_attack(model, images, target, eps=EPS, steps=40)
    targeted_map = model.explain(attacked, target=target).attribution
    topk_map = model.explain(topk_point, target=target).attribution
    noise_sim = topk_intersection(clean, noisy).mean()
    assert topk_intersection(clean, targeted_map).mean() < noise_sim - 0.1
    assert topk_intersection(clean, topk_map).mean() < noise_sim - 0.1
    # The targeted attack moved mass onto the frame.
    frame = frame_target(16, 16) > 0
    assert (targeted_map * frame).sum() > (clean * frame).sum()


def test_softplus_swap_is_restored_on_error():
    model = relu_cnn()
    with pytest.raises(RuntimeError, match="boom"):
        with softplus_activations(model, 5.0):
            assert sum(isinstance(m, nn.Softplus) for m in model.modules()) == 2
            raise RuntimeError("boom")
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 2
    assert not any(isinstance(m, nn.Softplus) for m in model.modules())


def test_pgd_lowers_accuracy(images):
    model = relu_cnn()
    target = model(images).argmax(1)
    adv = pgd(model, images, target, 0.5, norm="linf", steps=20)
    assert (model(adv).argmax(1) != target).float().mean() > 0.5


def synthetic_data(n: int) -> ImageArrays:
    """``n`` random 16x16 uint8 images with random CIFAR-10 labels (seeded)."""
    rng = np.random.default_rng(0)
    return ImageArrays(
        rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8),
        rng.integers(0, 10, n),
        CIFAR10_CLASSES,
        "synthetic",
    )


def test_mean_ci95_closed_form():
    values = np.array([1.0, 2.0, 3.0, 4.0])
    stat = mean_ci95(values)
    half = 1.96 * values.std(ddof=1) / 2
    assert stat["mean"] == 2.5 and stat["ci95"] == pytest.approx([2.5 - half, 2.5 + half]) and stat["n"] == 4


def test_evaluate_end_to_end_small():
    model = relu_cnn()
    data = synthetic_data(12)
    settings = EvalSettings(
        methods=("grad", "ig"),
        n_robustness=8,
        attack_steps=5,
        random_draws=2,
        batch_size=4,
        ig_steps=8,
        similarities=("topk", "kendall", "cosine"),
    )
    results = evaluate(model, data, settings, progress=False)
    with torch.no_grad():
        x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255
        expected_acc = (model(x).argmax(1).numpy() == data.labels).mean()
    assert (
        results["accuracy"]["clean"] == pytest.approx(expected_acc) and results["accuracy"]["n_images"] == 12
    )
    assert set(results["accuracy"]["pgd"]) == {"linf", "l2"}
    assert set(results["robustness"]) == {"grad", "integrated_gradients"}
    grad = results["robustness"]["grad"]
    assert set(grad) == {"random", "targeted", "topk"}
    assert grad["random"]["topk"]["n"] == 8 and 0 <= grad["random"]["topk"]["mean"] <= 1
    lo, hi = grad["targeted"]["kendall"]["ci95"]
    assert lo <= grad["targeted"]["kendall"]["mean"] <= hi
    assert 0 <= grad["targeted"]["prediction_changed"] <= 1
    again = evaluate(model, data, settings, progress=False)
    assert json.dumps(again, sort_keys=True) == json.dumps(
        results, sort_keys=True
    )  # deterministic under a seed


def test_partial_results_equal_a_shorter_run():
    # A stopped evaluation keeps its figures: the summary after the first batch is exactly the
    # evaluation of those images alone.
    data = synthetic_data(12)
    settings = dict(methods=("grad",), n_robustness=12, attack_steps=3, random_draws=2, batch_size=4,
                    similarities=("topk", "cosine"))  # fmt: skip
    partials = []
    full = evaluate(relu_cnn(), data, EvalSettings(**settings), progress=False, on_batch=partials.append)
    assert [p["data"]["n_robustness"] for p in partials] == [4, 8]
    assert full["data"]["n_robustness"] == 12
    first_batch_only = evaluate(
        relu_cnn(), data, EvalSettings(**{**settings, "n_robustness": 4}), progress=False
    )
    assert json.dumps(partials[0], sort_keys=True) == json.dumps(first_batch_only, sort_keys=True)


@pytest.mark.parametrize("attack_map, calls_per_batch", [("grad", 1), ("same", 2)])
def test_methods_sharing_the_attacked_map_share_the_attack(monkeypatch, attack_map, calls_per_batch):
    import lga_zoo.evaluate as evaluate_module

    calls = []
    real_attack = evaluate_module.targeted_attribution_attack

    def counting_attack(*args, **kwargs):
        calls.append(kwargs["method"])
        return real_attack(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "targeted_attribution_attack", counting_attack)
    data = synthetic_data(8)
    settings = EvalSettings(
        methods=("grad", "ig"), attacks=("targeted",), n_robustness=8, attack_steps=2, batch_size=4,
        ig_steps=4, attack_ig_steps=2, attack_map=attack_map, similarities=("cosine",),
    )  # fmt: skip
    evaluate(relu_cnn(), data, settings, progress=False)
    assert len(calls) == 2 * calls_per_batch
    expected = ["grad"] if attack_map == "grad" else ["grad", "integrated_gradients"]
    assert sorted(set(calls)) == expected


def test_readme_zoo_table_is_the_leaderboard():
    readme = (REPO / "README.md").read_text()
    assert START_MARKER in readme and END_MARKER in readme
    assert readme_table(readme) == leaderboard_markdown(), (
        "README zoo table is stale: paste `lga-zoo leaderboard`"
    )


def test_slow_methods_on_fewer_images_leave_the_gradient_figures_unchanged():
    data = synthetic_data(12)
    common = dict(methods=("grad", "ig"), n_robustness=12, attack_steps=2, random_draws=1, batch_size=4,
                  ig_steps=4, attack_map="grad", attacks=("random", "targeted"), similarities=("topk", "cosine"))  # fmt: skip
    full = evaluate(relu_cnn(), data, EvalSettings(**common), progress=False)
    fewer = evaluate(relu_cnn(), data, EvalSettings(**common, n_slow=6), progress=False)
    assert json.dumps(full["robustness"]["grad"], sort_keys=True) == json.dumps(
        fewer["robustness"]["grad"], sort_keys=True
    )
    ig = fewer["robustness"]["integrated_gradients"]
    assert ig["random"]["topk"]["n"] == 6 and ig["targeted"]["cosine"]["n"] == 6
    assert full["robustness"]["integrated_gradients"]["random"]["topk"]["n"] == 12
    # The same figures whichever method comes first.
    ig_first = evaluate(
        relu_cnn(), data, EvalSettings(**{**common, "methods": ("ig", "grad")}, n_slow=6), progress=False
    )
    assert json.dumps(ig_first["robustness"], sort_keys=True) == json.dumps(
        fewer["robustness"], sort_keys=True
    )
    with pytest.raises(ValueError, match="n_slow=0"):
        EvalSettings(n_slow=0)


@pytest.mark.parametrize(
    "counts, expected",
    [  # IG measured in this batch: its x' come first; past n_slow: in the gradient's order
        ({"integrated_gradients": 3, "grad": 4},
         [("targeted", "integrated_gradients", 3), ("random", "-", 4), ("topk", "integrated_gradients", 3),
          ("targeted", "grad", 4), ("topk", "grad", 4)]),
        ({"integrated_gradients": 0, "grad": 4}, [("targeted", "grad", 4), ("random", "-", 4), ("topk", "grad", 4)]),
    ],
)  # fmt: skip
def test_perturbed_inputs_are_made_in_the_order_first_needed(monkeypatch, counts, expected):
    """The shared random generator draws the x' of a batch in the order the methods measuring images
    in it need them, so the figures of a batch where a slow method is done do not change."""
    import lga_zoo.evaluate as evaluate_module

    made = []

    def record(model, x, target, attack, attack_method, settings, generator, fused_softplus):
        made.append((attack, attack_method, len(x)))
        return [x]

    monkeypatch.setattr(evaluate_module, "_attacked_inputs", record)
    settings = EvalSettings(methods=("ig", "grad"), attacks=("targeted", "random", "topk"), attack_map="same")
    x = torch.rand(4, 3, 8, 8)
    shared = evaluate_module._shared_perturbations(
        None, x, torch.zeros(4, dtype=torch.long), counts, settings, torch.Generator(), False
    )
    assert made == expected and len(shared) == len(expected)


def test_bf16_attacks_stay_in_the_ball_and_are_recorded(monkeypatch):
    seen = record_attack_autocast(monkeypatch)
    data = synthetic_data(4)
    settings = EvalSettings(methods=("grad",), attacks=("targeted",), n_robustness=4, attack_steps=3,
                            batch_size=4, attack_amp="bf16", similarities=("topk",))  # fmt: skip
    results = evaluate(relu_cnn(), data, settings, progress=False)  # asserts x' stays in the ball
    assert seen == [True]
    assert settings.recorded()["attack_amp"] == "bf16"
    assert 0 <= results["robustness"]["grad"]["targeted"]["topk"]["mean"] <= 1
    with pytest.raises(ValueError, match="attack_amp='fp16'"):
        EvalSettings(attack_amp="fp16")


def _stoppable_settings(**overrides):
    base = dict(methods=("grad",), attacks=("random", "targeted", "pgd"), n_robustness=6, attack_steps=2,
                random_draws=2, pgd_steps=2, batch_size=2, similarities=("topk", "cosine"))  # fmt: skip
    return EvalSettings(**{**base, **overrides})


def test_a_stopped_evaluation_resumes_to_the_figures_of_an_uninterrupted_one(tmp_path):
    from safetensors import safe_open

    model, data = relu_cnn(), synthetic_data(8)
    full = evaluate(model, data, _stoppable_settings(), progress=False)
    state = tmp_path / "state.safetensors"
    first = evaluate(
        model, data, _stoppable_settings(), progress=False, state_path=state, stop_after_seconds=0
    )
    assert first["data"]["n_robustness"] == 2 and full["data"]["n_robustness"] == 6
    with safe_open(str(state), framework="pt") as f:  # safetensors, not a pickle
        assert f.metadata()["done"] == "2" and f.get_tensor("grad|random|topk").shape == (2,)
    with pytest.raises(FileExistsError, match="--resume"):
        evaluate(model, data, _stoppable_settings(), progress=False, state_path=state)
    second = evaluate(model, data, _stoppable_settings(), progress=False, state_path=state, resume=True,
                      stop_after_seconds=0)  # fmt: skip
    assert second["data"]["n_robustness"] == 4
    resumed = evaluate(model, data, _stoppable_settings(), progress=False, state_path=state, resume=True)
    assert json.dumps(resumed, sort_keys=True) == json.dumps(full, sort_keys=True)


def test_a_resume_with_other_settings_or_weights_is_refused(tmp_path):
    model, data = relu_cnn(), synthetic_data(8)
    state = tmp_path / "state.safetensors"
    evaluate(model, data, _stoppable_settings(), progress=False, state_path=state, stop_after_seconds=0)
    with pytest.raises(ValueError, match=r"other settings\.attack_steps"):
        evaluate(
            model, data, _stoppable_settings(attack_steps=3), progress=False, state_path=state, resume=True
        )
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1
    with pytest.raises(ValueError, match="other weights"):
        evaluate(model, data, _stoppable_settings(), progress=False, state_path=state, resume=True)
    state.write_bytes(b"not a state")
    with pytest.raises(ValueError, match="not a readable evaluation state"):
        evaluate(model, data, _stoppable_settings(), progress=False, state_path=state, resume=True)


ATTACKS_ON = {
    "pgd": lambda m, x, y, eps: pgd(m, x, y, eps, steps=2),
    "random": lambda m, x, y, eps: random_perturbation(x, eps, torch.Generator().manual_seed(0)),
    "targeted": lambda m, x, y, eps: targeted_attribution_attack(m, x, y, eps=eps, steps=2),
    "topk": lambda m, x, y, eps: topk_attack(m, x, y, eps=eps, steps=2),
}


@pytest.mark.parametrize("attack", ATTACKS_ON)
def test_attacks_refuse_pixels_outside_the_unit_box_and_negative_radii(attack, images):
    """x outside [0, 1] would be clipped into the box, far outside the eps ball (0.25 away for x in
    [-0.25, 1.25]); a negative eps pushed every pixel by |eps|."""
    model, y, run = relu_cnn(), torch.arange(6), ATTACKS_ON[attack]
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\].*\[-0.25, 1.25\]"):
        run(model, images * 1.5 - 0.25, y, EPS)
    with pytest.raises(ValueError, match="eps=-0.1 must be a finite radius >= 0"):
        run(model, images, y, -0.1)
    with pytest.raises(TypeError, match="floating tensor"):
        run(model, (images * 255).to(torch.uint8), y, EPS)
    if attack != "random":  # the attacks that take labels: one integer class per image
        with pytest.raises(ValueError, match=r"integer tensor of 6 class indices, one per image, got \(5,\)"):
            run(model, images, y[:5], EPS)
        with pytest.raises(ValueError, match=r"a batch of images \(B, C, H, W\), got shape \(3, 16, 16\)"):
            run(model, images[0], y[:1], EPS)
    assert in_ball(run(model, images, y, EPS), images, EPS)


def test_topk_attack_leaves_a_separate_reference_model_as_it_was(images):
    """The reference model (the one whose class a step must keep) runs in eval mode, and a caller's
    train-mode model keeps its mode and its BatchNorm statistics."""
    torch.manual_seed(0)
    reference = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10)
    )
    reference(images)  # materializes the lazy layer
    reference.train()
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    with torch.no_grad():
        label_eval = reference.eval()(images).argmax(1)
    reference.train()
    x_adv = topk_attack(relu_cnn(), images, torch.arange(6), eps=EPS, steps=3, reference_model=reference)
    assert reference.training and all(m.training for m in reference.modules())
    assert all(torch.equal(before[k], v) for k, v in reference.state_dict().items())
    with torch.no_grad():  # every returned point keeps the eval-mode class
        assert torch.equal(reference.eval()(x_adv).argmax(1), label_eval)


def test_evaluation_settings_refuse_negative_radii():
    for name in ("eps", "pgd_linf_eps", "pgd_l2_eps"):
        with pytest.raises(ValueError, match=f"{name}=-0.25 must be a finite radius"):
            EvalSettings(**{name: -0.25})


def test_mean_ci95_of_one_value_has_no_interval_and_stays_valid_json():
    stat = mean_ci95(np.array([0.5]))
    assert stat == {"mean": 0.5, "ci95": None, "n": 1}
    assert json.loads(json.dumps(stat, allow_nan=False)) == stat
    from lga_zoo.cards import mean_and_interval

    assert mean_and_interval(stat) == "0.500 (1 image, no interval)"
    assert mean_and_interval(mean_ci95(np.array([0.2, 0.4, 0.6]))) == "0.400 [0.174, 0.626]"


def test_leaderboard_shows_a_null_or_nan_metric_as_missing_and_ranks_it_last(monkeypatch):
    """A hand-edited null in zoo.json crashed the sort (-None); a NaN was ranked first."""
    from dataclasses import replace

    import lga_zoo.leaderboard as leaderboard
    from lga_zoo.registry import get_entry

    base = get_entry("resnet18_w16_cifar10_lga")
    metrics = {"accuracy": 0.8, "n_robustness": 10}
    entries = [
        replace(base, name="a_null", metrics={**metrics, "grad/targeted/topk": None}),
        replace(base, name="b_nan", metrics={**metrics, "grad/targeted/topk": float("nan")}),
        replace(base, name="c_real", metrics={**metrics, "grad/targeted/topk": 0.3}),
    ]
    monkeypatch.setattr(leaderboard, "all_entries", lambda: entries)
    rows = leaderboard_markdown().splitlines()[2:]
    assert [row.split(" | ")[0].strip("| ") for row in rows] == ["c_real", "a_null", "b_nan"]
    assert all("| nan |" not in row and "nan%" not in row for row in rows) and rows[1].count(" - ") >= 1
