"""explain, compare and stability as a caller's surroundings find them: inside torch.no_grad() or
torch.inference_mode(), with a half-precision or float64 model, with the global random state of
every device untouched, and with baselines, k and --steps given in the forms users give them."""

import numpy as np
import pytest
import torch
from torch import nn

import lga_zoo
from lga_zoo import cli
from lga_zoo.inputs import InputError

LABELS = ["cat", "dog", "bird", "fish"]
FAST = {
    "integrated_gradients": {"steps": 8},
    "smoothgrad": {"samples": 4},
    "boundary": {"steps": 8, "attack_steps": 3, "epsilons": (1.0, 8.0)},
}


def small_model(activation: nn.Module | None = None) -> lga_zoo.ExplainableClassifier:
    activation = activation or nn.Softplus(beta=3)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), activation,
        nn.Conv2d(8, 8, 3, stride=2, padding=1), activation, nn.Flatten(), nn.Linear(8 * 4 * 4, 4),
    )  # fmt: skip
    return lga_zoo.wrap(net, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), input_size=(3, 8, 8), labels=LABELS)


@pytest.fixture(scope="module")
def batch():
    return torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", ["grad", "integrated_gradients", "smoothgrad", "boundary"])
def test_explain_under_no_grad_gives_the_same_maps(batch, method):
    model = small_model().eval()
    outside = model.explain(batch, method=method, stability=True, **FAST.get(method, {}))
    with torch.no_grad():
        inside = model.explain(batch, method=method, stability=True, **FAST.get(method, {}))
        assert not torch.is_grad_enabled()  # the caller's mode, back after the call
    assert torch.allclose(inside.attribution, outside.attribution, atol=1e-6)
    assert torch.equal(inside.stability["attack"], outside.stability["attack"])


def test_compare_under_no_grad_and_a_clear_error_under_inference_mode(batch):
    model = small_model().eval()
    outside = lga_zoo.compare(batch[:1], [model], steps=3)
    with torch.no_grad():
        inside = lga_zoo.compare(batch[:1], [model], steps=3)
    assert inside.rows[0].topk == outside.rows[0].topk
    for call in (lambda: model.explain(batch), lambda: lga_zoo.compare(batch[:1], [model], steps=3)):
        with torch.inference_mode(), pytest.raises(RuntimeError, match="outside that block"):
            call()
    with torch.inference_mode():  # a prediction needs no gradient
        assert model.predict(batch)[0].shape == (3,)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", ["smoothgrad", "boundary"])
def test_half_precision_models_explain_like_float32(batch, dtype, method):
    model = small_model().eval()
    reference = model.explain(batch, target=0, method=method, **FAST[method])
    half = small_model().eval().to(dtype)
    exp = half.explain(batch, target=0, method=method, **FAST[method])
    assert torch.isfinite(exp.raw).all()
    cosine = nn.functional.cosine_similarity(exp.attribution.flatten(1), reference.attribution.flatten(1))
    assert cosine.min() > 0.9


def test_ig_baselines_are_pixels_like_the_input(batch):
    model = small_model().eval()
    grey = torch.full((3, 8, 8), 128, dtype=torch.uint8)
    as_uint8 = model.explain(batch, target=1, method="ig", baseline=grey, steps=8, normalize="none")
    as_float = model.explain(batch, target=1, method="ig", baseline=grey / 255, steps=8, normalize="none")
    assert torch.allclose(as_uint8.raw, as_float.raw, atol=1e-6)
    as_numpy = model.explain(
        batch, target=1, method="ig", baseline=np.float32(0.5), steps=8, normalize="none"
    )
    as_number = model.explain(batch, target=1, method="ig", baseline=0.5, steps=8, normalize="none")
    assert torch.allclose(as_numpy.raw, as_number.raw)
    with pytest.raises(InputError, match=r"shape \(3, 16, 16\) does not fit the model's input"):
        model.explain(batch, method="ig", baseline=torch.zeros(3, 16, 16))
    with pytest.raises(InputError, match=r"pixels in \[0, 1\]"):
        model.explain(batch, method="ig", baseline=torch.full((3, 8, 8), 128.0))
    with pytest.raises(ValueError, match=r"baseline=128 must be a pixel value in \[0, 1\]"):
        model.explain(batch, method="ig", baseline=128)


def test_smoothgrad_leaves_every_random_generator_alone(batch, monkeypatch):
    model = small_model().eval()
    seeded_devices = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: seeded_devices.append(seed))
    state = torch.get_rng_state()
    first = model.explain(batch, method="smoothgrad", samples=4)
    again = model.explain(batch, method="smoothgrad", samples=4)
    assert torch.equal(first.raw, again.raw)  # seed 0 by default: reproducible
    unseeded = [model.explain(batch, method="smoothgrad", samples=4, seed=None).raw for _ in range(2)]
    assert not torch.equal(unseeded[0], unseeded[1])  # seed=None: fresh noise on every call
    assert torch.equal(torch.get_rng_state(), state) and seeded_devices == []


def test_k_one_is_every_pixel_whatever_its_type(batch):
    model = small_model().eval()
    as_int = model.explain(batch, method="grad", stability={"k": 1, "attack_steps": 2})
    assert isinstance(as_int.stability_settings["k"], float) and as_int.stability_settings["k"] == 1.0
    assert torch.equal(as_int.stability["noise"], torch.ones(3))  # every pixel is in the top 100%
    comparison = lga_zoo.compare(batch[:1], [model], steps=2, k=1)
    assert comparison.rows[0].topk == 1.0 and isinstance(comparison.settings["k"], float)


def test_the_recorded_attack_activation_is_the_one_used(batch):
    softplus = small_model().eval().explain(batch, stability={"attack_steps": 2, "softplus_beta": 50.0})
    assert softplus.stability_settings["attack_activation"] == "the model's own Softplus(beta=3)"
    relu = small_model(nn.ReLU()).eval().explain(batch, stability={"attack_steps": 2, "softplus_beta": 50.0})
    assert relu.stability_settings["attack_activation"] == "ReLU swapped for Softplus(beta=50)"


def test_inputs_are_copied_and_float64_kept_for_a_float64_model(batch):
    model = small_model().eval().double()
    x = batch.double()
    exp = model.explain(x, target=2, method="input_x_grad", normalize="none")
    assert exp.inputs.dtype == torch.float64 and exp.inputs.data_ptr() != x.data_ptr()
    x_leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x_leaf)[:, 2].sum(), x_leaf)
    assert torch.allclose(exp.raw, grad * x, atol=1e-14, rtol=0)


def test_explain_cli_steps_reach_aliased_methods_and_are_refused_elsewhere(tmp_path, monkeypatch, capsys):
    from PIL import Image

    seen = []
    original = lga_zoo.ExplainableClassifier.explain

    def spy(self, *args, **kwargs):
        seen.append((kwargs.get("method"), kwargs.get("steps")))
        return original(self, *args, **{**kwargs, "attack_steps": 1, "epsilons": (8.0,)})

    monkeypatch.setattr(lga_zoo.ExplainableClassifier, "explain", spy)
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    argv = ["explain", str(image), "--model", "resnet18_w16_cifar10_lga", "--out", str(tmp_path / "o.png")]
    assert cli.main([*argv, "--method", "big", "--steps", "2"]) == 0
    assert seen == [("big", 2)]
    assert cli.main([*argv, "--method", "grad", "--steps", "2"]) == 2
    assert "--steps applies to the methods ['boundary', 'integrated_gradients']" in capsys.readouterr().err


def test_the_transform_gives_float32_pixels_for_any_tensor():
    """model.transforms() on a float64 or bicubic-resized tensor: float32 pixels in [0, 1], so that
    model(model.transforms()(t)[None]) runs (a bicubic resize overshoots [0, 1] a little)."""
    from lga_zoo.inputs import eval_transform

    transform = eval_transform((3, 8, 8), interpolation="bicubic")
    checker = torch.zeros(3, 16, 16, dtype=torch.float64)
    checker[:, ::2, ::2] = checker[:, 1::2, 1::2] = 1.0
    pixels = transform(checker)
    assert pixels.dtype == torch.float32 and pixels.shape == (3, 8, 8)
    assert 0 <= pixels.min() and pixels.max() <= 1
    assert small_model().eval()(pixels[None]).shape == (1, 4)


def test_evaluation_topk_fraction_is_a_fraction():
    from lga_zoo.evaluate import EvalSettings

    assert isinstance(EvalSettings(topk_fraction=1).topk_fraction, float)
    with pytest.raises(ValueError, match=r"topk_fraction=2 must be a fraction of the pixels in \(0, 1\]"):
        EvalSettings(topk_fraction=2)
