import numpy as np
import pytest
import timm
import torch
from conftest import captum_attribution
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

import lga_zoo
from lga_zoo.attribution import normalize_attribution
from lga_zoo.inputs import InputError

LABELS = ["cat", "dog", "bird", "fish"]


def small_model(seed=0, bias=True, activation=None):
    activation = activation or nn.Softplus(beta=3)
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=bias), activation,
        nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=bias), activation, nn.Flatten(), nn.Linear(8 * 4 * 4, 4, bias=bias),
    )  # fmt: skip
    return lga_zoo.wrap(
        net, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), input_size=(3, 8, 8), labels=LABELS
    ).eval()


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def batch():
    return torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", ["grad", "input_x_grad", "integrated_gradients", "smoothgrad"])
def test_methods_match_captum_called_directly(model, batch, method):
    target = torch.tensor([0, 1, 2, 3, 1])
    exp = model.explain(batch, target=target, method=method, normalize="none")
    ref = captum_attribution(model, batch, target, method)
    assert torch.allclose(exp.raw, ref, atol=1e-6)
    assert torch.equal(exp.target, target)
    assert exp.raw.abs().sum() > 0


def test_grad_matches_finite_differences(model):
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    model64 = small_model().double()
    exp = model64.explain(x, target=2, method="grad", normalize="none")
    h = 1e-6
    for idx in [(0, 0, 1, 2), (0, 2, 7, 7), (0, 1, 4, 3)]:
        up, down = x.clone(), x.clone()
        up[idx] += h
        down[idx] -= h
        numeric = (model64(up)[0, 2] - model64(down)[0, 2]) / (2 * h)
        assert exp.raw[idx].item() == pytest.approx(numeric.item(), rel=1e-5, abs=1e-9)


def test_integrated_gradients_completeness(model, batch):
    exp = model.explain(batch, method="ig", steps=200, normalize="none")
    with torch.no_grad():
        gap = model(batch).gather(1, exp.target[:, None]) - model(torch.zeros_like(batch)).gather(
            1, exp.target[:, None]
        )
    assert torch.allclose(exp.raw.flatten(1).sum(1), gap.flatten(), rtol=1e-3, atol=1e-4)


def test_input_x_grad_equals_ig_on_homogeneous_relu_net(batch):
    relu_net = small_model(seed=3, bias=False, activation=nn.ReLU())
    # mean 0 / std 1: the normalization must not add a bias term
    relu_net = lga_zoo.wrap(relu_net.backbone, mean=(0, 0, 0), std=(1, 1, 1), input_size=(3, 8, 8)).eval()
    ixg = relu_net.explain(batch, target=1, method="input_x_grad", normalize="none").raw
    ig = relu_net.explain(batch, target=1, method="ig", steps=64, normalize="none").raw
    assert torch.allclose(ixg, ig, rtol=1e-4, atol=1e-6)


def test_boundary_point_flips_and_halfway_flips_back(model, batch):
    exp = model.explain(batch, method="boundary", epsilons=(0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2))
    assert exp.boundary_found.all()
    with torch.no_grad():
        at_boundary = model(exp.boundary_points).argmax(1)
        halfway = model(batch + 0.5 * (exp.boundary_points - batch)).argmax(1)
    assert (at_boundary != exp.predicted).all()
    assert (halfway == exp.predicted).all()
    dist = (exp.boundary_points - batch).flatten(1).norm(dim=1)
    assert torch.allclose(dist, exp.boundary_distances, atol=1e-6)
    assert exp.boundary_points.min() >= 0 and exp.boundary_points.max() <= 1
    # It is IG from the boundary point: completeness against that baseline.
    with torch.no_grad():
        gap = model(batch).gather(1, exp.target[:, None]) - model(exp.boundary_points).gather(
            1, exp.target[:, None]
        )
    assert torch.allclose(exp.raw.flatten(1).sum(1), gap.flatten(), rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("method", ["grad", "integrated_gradients", "boundary"])
def test_normalization_properties_and_logit_scale_invariance(model, batch, method):
    exp_max = model.explain(batch, method=method, normalize="max")
    assert exp_max.attribution.min() >= 0 and exp_max.attribution.max() <= 1
    assert torch.allclose(exp_max.attribution.flatten(1).amax(1), torch.ones(len(batch)))
    exp_sum = model.explain(batch, method=method, normalize="sum")
    assert torch.allclose(exp_sum.attribution.flatten(1).sum(1), torch.ones(len(batch)), atol=1e-5)
    scaled_backbone = nn.Sequential(model.backbone, _Scale(7.5))
    scaled = lga_zoo.wrap(
        scaled_backbone, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), input_size=(3, 8, 8)
    ).eval()
    exp_scaled = scaled.explain(batch, method=method, normalize="max")
    assert torch.allclose(exp_scaled.attribution, exp_max.attribution, atol=1e-4)


class _Scale(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def test_normalize_attribution_closed_form():
    raw = torch.tensor([[[[1.0, -3.0]], [[-1.0, 1.0]]]])  # (1, 2, 1, 2)
    assert torch.equal(normalize_attribution(raw, "max"), torch.tensor([[[0.5, 1.0]]]))
    assert torch.equal(normalize_attribution(raw, "sum"), torch.tensor([[[1 / 3, 2 / 3]]]))
    assert torch.equal(normalize_attribution(raw, "none"), torch.tensor([[[0.0, -2.0]]]))
    assert torch.equal(normalize_attribution(torch.zeros(1, 3, 2, 2), "max"), torch.zeros(1, 2, 2))


@settings(max_examples=15, deadline=None)
@given(height=st.integers(4, 12), width=st.integers(4, 12), seed=st.integers(0, 1000))
def test_all_input_kinds_give_the_same_map(height, width, seed):
    model = small_model()
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    reference = model.explain(pixels, method="grad").attribution
    kinds = [
        Image.fromarray(pixels),
        Image.fromarray(pixels).convert("RGBA"),
        pixels.astype(np.float64) / 255,
        np.concatenate([pixels, np.full((height, width, 1), 255, np.uint8)], axis=2),
        torch.from_numpy(pixels).permute(2, 0, 1).contiguous(),  # uint8 CHW
        torch.from_numpy(pixels).permute(2, 0, 1).float() / 255,  # float CHW
        (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)[None],  # BCHW
        [Image.fromarray(pixels)],
    ]
    for kind in kinds:
        assert torch.allclose(model.explain(kind, method="grad").attribution, reference, atol=1e-5), type(
            kind
        )


def test_grayscale_image_is_expanded():
    model = small_model()
    gray = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    from_pil = model.explain(Image.fromarray(gray)).attribution
    as_rgb = model.explain(np.repeat(gray[:, :, None], 3, axis=2)).attribution
    assert torch.allclose(from_pil, as_rgb, atol=1e-6)


@pytest.mark.parametrize(
    "inputs, message",
    [
        (torch.rand(1, 2, 8, 8), "has 2 channels.*takes 3"),
        (torch.rand(1, 1, 3, 8, 8), "CHW or BCHW, got 5-D"),
        (torch.rand(0, 3, 8, 8), "empty"),
        ([], "empty"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN or infinite"),
        (torch.randn(1, 3, 8, 8) * 2, r"pixels in \[0, 1\].*do not normalize"),
        (torch.randint(0, 9, (1, 3, 8, 8), dtype=torch.int32), "dtype torch.int32"),
        ("cat.jpg", "type str"),
        (np.zeros((8, 8, 2), np.uint8), "1, 3 or 4 channels"),
    ],
)
def test_bad_inputs_say_what_is_accepted(model, inputs, message):
    with pytest.raises(InputError, match=message):
        model.explain(inputs)


def test_bad_targets_methods_and_keywords(model, batch):
    with pytest.raises(ValueError, match="out of range.*0..3"):
        model.explain(batch, target=4)
    with pytest.raises(ValueError, match="unknown class name 'dgo'.*Did you mean \\['dog'\\]"):
        model.explain(batch, target="dgo")
    with pytest.raises(ValueError, match="unknown attribution method 'smothgrad'.*smoothgrad"):
        model.explain(batch, method="smothgrad")
    with pytest.raises(TypeError, match="unexpected keyword 'step'.*Did you mean \\['steps'\\]"):
        model.explain(batch, method="ig", step=10)
    with pytest.raises(ValueError, match="normalize='maxx'.*did you mean 'max'"):
        model.explain(batch, normalize="maxx")
    with pytest.raises(ValueError, match="got 2 targets for a batch of 5"):
        model.explain(batch, target=[0, 1])


def test_target_by_class_name_and_predict(model, batch):
    by_name = model.explain(batch, target="dog")
    by_index = model.explain(batch, target=1)
    assert torch.equal(by_name.attribution, by_index.attribution)
    classes, probabilities = model.predict(batch)
    assert torch.equal(classes, by_index.predicted)
    assert torch.allclose(probabilities.sum(1), torch.ones(len(batch)))
    model.train()
    model.predict(batch)
    assert model.training  # the mode is restored
    model.eval()


@pytest.mark.parametrize("method", ["grad", "input_x_grad", "integrated_gradients"])
def test_probabilities_with_a_given_target_match_predict(model, batch, method):
    # grad and input_x_grad take the probabilities from captum's own forward when the target is
    # given; they must be those of predict(), whatever the target.
    classes, probabilities = model.predict(batch)
    exp = model.explain(batch, target=[3, 2, 1, 0, 3], method=method)
    assert torch.equal(exp.predicted, classes)
    assert torch.allclose(exp.probabilities, probabilities, atol=1e-6)


def test_target_range_is_checked_for_models_without_labels(batch):
    unlabeled = lga_zoo.wrap(timm.create_model("resnet10t", num_classes=3), input_size=(3, 8, 8)).eval()
    with pytest.raises(ValueError, match="out of range.*0..2"):
        unlabeled.explain(batch, target=3)
    exp = unlabeled.explain(batch, target=2)
    assert exp.probabilities.shape == (len(batch), 3)


def test_real_photo_through_timm_resnet(tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    torch.manual_seed(0)
    model = lga_zoo.wrap(timm.create_model("resnet18", num_classes=1000), input_size=(3, 96, 96))
    cat = skimage_data.chelsea()  # (300, 451, 3) uint8
    exp = model.explain(cat, method="smoothgrad", samples=4)
    assert exp.attribution.shape == (1, 96, 96)
    assert exp.inputs.shape == (1, 3, 96, 96)
    overlay = exp.overlay()
    assert overlay.size == (288, 288)  # 96 enlarged by 3 to reach 224
    path = exp.save(tmp_path / "cat.png")
    with Image.open(path) as reloaded:
        assert reloaded.format == "PNG" and reloaded.size == (288, 288)
    # The overlay is not the bare photo: the heat shows where the map is high.
    bare = exp.inputs[0].permute(1, 2, 0).numpy()
    shown = np.asarray(exp.overlay(min_size=1), dtype=np.float32) / 255
    assert np.abs(shown - bare).max() > 0.1


def test_plot_draws_input_map_and_overlay(model, batch):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    exp = model.explain(batch[:2], method="grad")
    fig = exp.plot()
    assert len(fig.axes) == 6
    assert fig.axes[0].get_title() == exp.describe(0)
    shown = fig.axes[1].images[0].get_array()
    assert np.allclose(np.asarray(shown), exp.attribution[0].numpy())


@pytest.mark.parametrize(
    "method, settings, named",
    [
        ("ig", {"steps": 0}, "steps"),
        ("ig", {"steps": "50"}, "steps"),
        ("ig", {"internal_batch_size": 0}, "internal_batch_size"),
        ("smoothgrad", {"samples": 0}, "samples"),
        ("smoothgrad", {"noise": -1}, "noise"),
        ("smoothgrad", {"noise": float("nan")}, "noise"),
        ("boundary", {"epsilons": ()}, "epsilons"),
        ("boundary", {"epsilons": (1.0, -2.0)}, "epsilons"),
        ("boundary", {"attack_steps": 0}, "attack_steps"),
        ("ig", {"baseline": "black"}, "baseline"),
    ],
)
def test_method_settings_out_of_range_name_the_setting(model, batch, method, settings, named):
    with pytest.raises(ValueError, match=f"{named}="):
        model.explain(batch, method=method, **settings)


def test_numpy_integer_targets_are_class_indices(model, batch):
    by_numpy = model.explain(batch, target=np.int64(2))
    assert by_numpy.target.tolist() == [2] * len(batch)
    per_image = model.explain(batch, target=np.array([0, 1, 2, 3, 0]))
    assert per_image.target.tolist() == [0, 1, 2, 3, 0]
