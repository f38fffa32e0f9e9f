"""No side effects: explaining, predicting, attacking and evaluating leave the caller's model exactly
as it was (every module's mode, every parameter's requires_grad and grad, every buffer, every hook
list), also when they raise; and wrap() keeps the model's mode."""

import numpy as np
import pytest
import timm
import torch
from conftest import captum_attribution

import lga_zoo
from lga_zoo.attacks import pgd, targeted_attribution_attack, topk_attack
from lga_zoo.data import ImageArrays
from lga_zoo.evaluate import EvalSettings, evaluate
from lga_zoo.state import HOOK_DICTS

METHODS = ["grad", "input_x_grad", "integrated_gradients", "smoothgrad", "boundary"]
FAST = {"integrated_gradients": {"steps": 8}, "smoothgrad": {"samples": 4}, "boundary": {"steps": 8, "attack_steps": 3, "epsilons": (1.0, 8.0)}}  # fmt: skip


def timm_net(mode: str) -> torch.nn.Module:
    """timm's small test ResNet, in eval mode, train mode or a mix (some submodules in eval mode,
    some parameters frozen), with a hook registered by the 'user'."""
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", num_classes=5)
    if mode == "eval":
        net.eval()
    elif mode == "train":
        net.train()
    else:
        net.train()
        net.layer1.eval()  # a frozen first stage, as in fine-tuning
        for p in net.layer1.parameters():
            p.requires_grad_(False)
        net.get_classifier().weight.grad = torch.ones_like(net.get_classifier().weight)
    net.register_forward_hook(lambda module, args, output: None)
    return net


def snapshot(model: torch.nn.Module) -> dict:
    return {
        "modes": [(name, m.training) for name, m in model.named_modules()],
        "requires_grad": [(name, p.requires_grad) for name, p in model.named_parameters()],
        "grads": [(name, None if p.grad is None else p.grad.clone()) for name, p in model.named_parameters()],
        "buffers": [(name, b.clone()) for name, b in model.named_buffers()],
        "hooks": [
            (name, h, tuple(getattr(m, h).keys()))
            for name, m in model.named_modules()
            for h in HOOK_DICTS
            if hasattr(m, h)
        ],
        "params": [(name, p.detach().clone()) for name, p in model.named_parameters()],
        "module_types": [(name, type(m).__name__) for name, m in model.named_modules()],
    }


def assert_same(before: dict, after: dict) -> None:
    for key in ("modes", "requires_grad", "hooks", "module_types"):
        assert before[key] == after[key], key
    for key in ("grads", "buffers", "params"):
        for (name_a, a), (name_b, b) in zip(before[key], after[key], strict=True):
            assert name_a == name_b
            assert (a is None and b is None) or torch.equal(a, b), (key, name_a)


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("mode", ["eval", "train", "mixed"])
def test_wrap_keeps_the_mode_and_every_method_leaves_the_model_as_it_was(mode, images):
    net = timm_net(mode)
    before = snapshot(net)
    model = lga_zoo.wrap(net, input_size=(3, 64, 64))
    assert model.training == net.training
    assert_same(before, snapshot(net))
    wrapped_before = snapshot(model)
    for method in METHODS:
        model.explain(images, method=method, **FAST.get(method, {}))
        assert_same(wrapped_before, snapshot(model))
    model.predict(images)
    model.explain(images, stability={"noise_draws": 1, "attack_steps": 2})
    assert_same(wrapped_before, snapshot(model))
    assert_same(before, snapshot(net))


@pytest.mark.parametrize("mode", ["train", "mixed"])
def test_attacks_and_evaluation_leave_the_model_as_it_was(mode, images):
    model = lga_zoo.wrap(timm_net(mode), input_size=(3, 64, 64))
    before = snapshot(model)
    target = torch.tensor([0, 1])
    pgd(model, images, target, 2 / 255, steps=2)
    targeted_attribution_attack(model, images, target, steps=2)
    topk_attack(model, images, target, steps=2)
    assert_same(before, snapshot(model))
    data = ImageArrays(
        (images.permute(0, 2, 3, 1) * 255).byte().numpy(), np.array([0, 1]), tuple("abcde"), "tiny"
    )
    settings = EvalSettings(methods=("grad",), n_robustness=2, attack_steps=2, random_draws=1, pgd_steps=1)
    evaluate(model, data, settings, progress=False)
    assert_same(before, snapshot(model))


def test_the_model_is_restored_when_explaining_raises(images):
    model = lga_zoo.wrap(timm_net("mixed"), input_size=(3, 64, 64))
    before = snapshot(model)
    calls = {"n": 0}

    def fail_on_third_forward(module, args, output):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom in the middle of an attribution")

    handle = model.backbone.register_forward_hook(fail_on_third_forward)
    before_with_hook = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        model.explain(images, method="integrated_gradients", steps=4, internal_batch_size=2)
    assert_same(before_with_hook, snapshot(model))
    calls["n"] = -100
    with pytest.raises(ValueError, match="out of range"):
        model.explain(images, target=7)
    handle.remove()
    assert_same(before, snapshot(model))


@pytest.mark.parametrize("which", ["timm", "zoo"])
@pytest.mark.parametrize("method", ["grad", "input_x_grad", "integrated_gradients", "smoothgrad"])
def test_maps_agree_with_captum_on_eval_mode_models(which, method):
    """Cosine >= 0.99 between explain()'s raw attribution and captum called on its own."""
    if which == "timm":
        model = lga_zoo.wrap(timm_net("eval"), input_size=(3, 64, 64))
        x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    else:
        model = lga_zoo.load("resnet18_w16_cifar10_lga")
        x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 1, 2])
    exp = model.explain(x, target=target, method=method, normalize="none")
    ref = captum_attribution(model, x, target, method)
    cosine = torch.nn.functional.cosine_similarity(exp.raw.flatten(1), ref.flatten(1), dim=1)
    assert (cosine >= 0.99).all(), cosine


def test_swapped_children_swaps_a_child_registered_under_two_names():
    from torch import nn

    from lga_zoo.state import swapped_children

    relu = nn.ReLU()
    parent = nn.Sequential(nn.Conv2d(3, 3, 1))
    parent.a, parent.b = relu, relu
    with swapped_children(parent, lambda child: nn.Softplus() if isinstance(child, nn.ReLU) else None):
        assert isinstance(parent.a, nn.Softplus) and isinstance(parent.b, nn.Softplus)
    assert parent.a is relu and parent.b is relu
