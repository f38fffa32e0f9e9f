import pytest
import torch
from conftest import assert_same_figures, short_evaluation
from timm.layers import BatchNormAct2d, StdConv2d
from torch import Tensor, nn

import lga_zoo
from lga_zoo.batchnorm_folding import foldable_pairs, folded_batchnorm
from lga_zoo.models import create_backbone


def with_random_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every BatchNorm given running statistics and an affine map far from the identity, in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) - 0.5)
    return model.eval()


def resnet() -> nn.Module:
    torch.manual_seed(0)
    backbone = create_backbone("resnet18_w16_cifar", 10, activation="softplus", softplus_beta=3.0)
    return with_random_statistics(lga_zoo.wrap(backbone, input_size=(3, 32, 32)))


def input_gradient_and_hvp(model: nn.Module, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """d f_0 / dx and its derivative along v (a double backward, as in the attacks)."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[:, 0].sum(), x, create_graph=True)
    (hvp,) = torch.autograd.grad((grad * v).sum(), x)
    return grad.detach(), hvp


def test_a_resnet_folds_every_batchnorm_with_the_same_function_and_double_backward():
    model = resnet()
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 32, 32, generator=generator)
    v = torch.randn(4, 3, 32, 32, generator=generator)
    modules = list(model.modules())
    state = {k: t.clone() for k, t in model.state_dict().items()}
    with torch.no_grad():
        logits = model(x)
    grad, hvp = input_gradient_and_hvp(model, x, v)
    n_bn = sum(type(m) is nn.BatchNorm2d for m in modules)
    assert n_bn == 20  # stem, two per basic block, three downsamples
    with folded_batchnorm(model, x[:2]) as folded:
        assert folded == n_bn
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        with torch.no_grad():
            torch.testing.assert_close(model(x), logits, rtol=1e-4, atol=1e-4)
        grad_f, hvp_f = input_gradient_and_hvp(model, x, v)
        torch.testing.assert_close(grad_f, grad, rtol=1e-4, atol=1e-5 * grad.abs().max().item())
        torch.testing.assert_close(hvp_f, hvp, rtol=1e-3, atol=1e-4 * hvp.abs().max().item())
    assert all(a is b for a, b in zip(model.modules(), modules, strict=True))
    assert all(torch.equal(t, state[k]) for k, t in model.state_dict().items())


class SharedOutput(nn.Module):
    """The convolution's output is read by the BatchNorm and by the sum after it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 3))

    def forward(self, x):
        y = self.conv(x)
        return self.head(self.bn(y) + y)


class Blocks(nn.Module):
    """One plain pair, one BatchNorm that adds an activation, one BatchNorm run twice."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), BatchNormAct2d(4, act_layer=nn.ReLU)
        self.conv3, self.conv4, self.shared = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 3))

    def forward(self, x):
        x = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        return self.head(self.shared(self.conv4(self.shared(self.conv3(x)))))


class InPlaceBetween(nn.Module):
    """An in-place ReLU between the convolution and the BatchNorm: the same tensor, changed."""

    def __init__(self):
        super().__init__()
        self.conv, self.act, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 3))

    def forward(self, x):
        return self.head(self.bn(self.act(self.conv(x))))


def test_a_convolution_output_read_twice_is_not_folded():
    model = with_random_statistics(SharedOutput())
    x = torch.rand(2, 3, 8, 8)
    assert foldable_pairs(model, x) == [(model.conv, model.bn)]  # what the forward pass shows...
    with torch.no_grad():
        expected = model(x)
        with folded_batchnorm(model, x) as folded:  # ...but the folded logits differ: nothing folded
            assert folded == 0
            assert model.bn.__class__ is nn.BatchNorm2d
            assert torch.equal(model(x), expected)


def test_only_plain_unshared_unhooked_eval_batchnorms_are_folded():
    x = torch.rand(2, 3, 8, 8)
    model = with_random_statistics(Blocks())
    hooks = {name: dict(getattr(model.bn1, name)) for name in ("_forward_hooks", "_forward_pre_hooks")}
    assert foldable_pairs(model, x) == [(model.conv1, model.bn1)]
    assert {name: dict(getattr(model.bn1, name)) for name in hooks} == hooks  # the probe's hooks are gone
    assert not model.conv1._forward_hooks
    changes = {
        "hooked BatchNorm": lambda m: m.bn1.register_forward_hook(lambda module, args, output: None),
        "hooked convolution": lambda m: m.conv1.register_forward_pre_hook(lambda module, args: None),
        "BatchNorm in training mode": lambda m: m.bn1.train(),
        "convolution in training mode": lambda m: m.conv1.train(),
        "BatchNorm without running statistics": lambda m: setattr(
            m, "bn1", nn.BatchNorm2d(4, track_running_stats=False).eval()
        ),
        "BatchNorm registered at two places": lambda m: setattr(m, "alias", m.bn1),
        "weight-normed convolution": lambda m: torch.nn.utils.parametrizations.weight_norm(m.conv1),
        "StdConv2d (standardizes its weight)": lambda m: setattr(
            m, "conv1", with_random_statistics(StdConv2d(3, 4, 3, padding=1))
        ),
    }
    for change, apply in changes.items():
        model = with_random_statistics(Blocks())
        apply(model)
        assert foldable_pairs(model, x) == [], change
    model = with_random_statistics(InPlaceBetween())
    assert foldable_pairs(model, x) == []


class PartlyFoldable(nn.Module):
    """A plain pair after a pair whose convolution output is also read by a sum."""

    def __init__(self):
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv_b, self.bn_b = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 3))

    def forward(self, x):
        y = self.conv_a(x)
        return self.head(self.bn_b(self.conv_b(self.bn_a(y) + y)))


def test_a_pair_that_changes_the_logits_is_left_while_the_others_fold():
    model = with_random_statistics(PartlyFoldable())
    x = torch.rand(2, 3, 8, 8)
    assert len(foldable_pairs(model, x)) == 2
    with torch.no_grad():
        expected = model(x)
        with folded_batchnorm(model, x) as folded:
            assert folded == 1
            assert type(model.bn_a) is nn.BatchNorm2d and type(model.bn_b) is nn.Identity
            torch.testing.assert_close(model(x), expected)


def test_an_empty_probe_is_refused():
    with (
        pytest.raises(ValueError, match="at least one input"),
        folded_batchnorm(resnet(), torch.zeros(0, 3, 32, 32)),
    ):
        pass


def test_the_modules_come_back_when_the_block_raises():
    model = resnet()
    modules = list(model.modules())
    with pytest.raises(RuntimeError, match="in the block"), folded_batchnorm(model, torch.rand(2, 3, 32, 32)):
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        raise RuntimeError("in the block")
    assert all(a is b for a, b in zip(model.modules(), modules, strict=True))


@pytest.mark.parametrize("attack_amp", ["none", "bf16"])
def test_evaluation_figures_do_not_depend_on_folding(attack_amp):
    # bf16 attacks round the folded weights where BatchNorm ran on the rounded convolution's output
    from dataclasses import replace

    from lga_zoo.evaluate import evaluate

    model = resnet()
    data, settings = short_evaluation(side=32)
    settings = replace(settings, attack_amp=attack_amp)
    modules = list(model.modules())
    batch_sizes = []  # of each BatchNorm call: the folding's checks run on the 2-image probe
    forward = nn.BatchNorm2d.forward
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            nn.BatchNorm2d, "forward", lambda self, x: batch_sizes.append(len(x)) or forward(self, x)
        )
        folded = evaluate(model, data, settings, progress=False, fold_batchnorm=True)
        assert batch_sizes and set(batch_sizes) == {2}, "folded, BatchNorm runs in the probe checks only"
        batch_sizes.clear()
        plain = evaluate(model, data, settings, progress=False, fold_batchnorm=False)
        assert 8 in batch_sizes
    assert all(a is b for a, b in zip(model.modules(), modules, strict=True))
    assert_same_figures(plain, folded, tolerance=0.02)
