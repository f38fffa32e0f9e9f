"""FusedSoftplus is nn.Softplus: values, first and second derivatives, in a model and in the LGA loss."""

import pytest
import torch
from conftest import assert_same_figures, short_evaluation
from torch import nn

import lga_zoo
import lga_zoo.fused_softplus as fused
from lga_zoo.fused_softplus import FusedSoftplus, fuse_softplus
from lga_zoo.models import create_backbone
from lga_zoo.regularizers import build_regularizer


def wide_inputs(dtype=torch.float64) -> torch.Tensor:
    """Values from -30 to 30 (beyond nn.Softplus's linear threshold) and a dense band around 0."""
    torch.manual_seed(0)
    return torch.cat([torch.linspace(-30, 30, 121), torch.randn(300)]).to(dtype).view(1, 1, -1)


def value_and_derivatives(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """module(x), the gradient of sum(module(x)^2) and the gradient of that gradient's sum."""
    x = x.detach().requires_grad_()
    y = module(x)
    (g,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)
    return y, g, h


@pytest.mark.parametrize("beta", [1.0, 3.0, 20.0])
def test_values_and_derivatives_match_exact_softplus(beta):
    # the exact function: nn.Softplus without its linear regime (fp64 holds exp(600))
    exact = nn.Softplus(beta=beta, threshold=1e6)
    for ours, reference in zip(value_and_derivatives(FusedSoftplus(beta=beta), wide_inputs()),
                               value_and_derivatives(exact, wide_inputs())):  # fmt: skip
        torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-9)


def test_close_to_nn_softplus_default_threshold():
    # nn.Softplus is linear above beta * x > 20, where it differs from softplus by < exp(-20) / beta
    for ours, reference in zip(value_and_derivatives(FusedSoftplus(beta=3.0), wide_inputs()),
                               value_and_derivatives(nn.Softplus(beta=3.0), wide_inputs())):  # fmt: skip
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_finite_differences_first_and_second_order():
    x = (torch.randn(2, 3, 4, dtype=torch.float64) * 3).requires_grad_()
    module = FusedSoftplus(beta=3.0)
    assert torch.autograd.gradcheck(module, (x,))
    assert torch.autograd.gradgradcheck(module, (x,))


def test_bf16_no_less_accurate_than_nn_softplus():
    x = wide_inputs(torch.float32).bfloat16()
    exact = nn.functional.softplus(x.double(), beta=3.0)
    ours = FusedSoftplus(beta=3.0)(x)
    theirs = nn.Softplus(beta=3.0)(x)
    assert ours.dtype == torch.bfloat16
    assert (ours.double() - exact).abs().max() <= (theirs.double() - exact).abs().max() + 1e-12
    # and the first derivative (of sum(softplus(x)), i.e. sigmoid(beta x)), also in bf16
    exact_grad = torch.sigmoid(3.0 * x.double())
    grads = []
    for module in (FusedSoftplus(beta=3.0), nn.Softplus(beta=3.0)):
        x_req = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(module(x_req).sum(), x_req)
        assert grad.dtype == torch.bfloat16
        grads.append((grad.double() - exact_grad).abs().max())
    assert grads[0] <= grads[1] + 1e-12


def test_fuse_softplus_keeps_the_model_function_and_weights():
    torch.manual_seed(0)
    model = lga_zoo.wrap(create_backbone("resnet18_w16_cifar", 10, "softplus", 3.0), input_size=(3, 32, 32))
    model.eval()
    x = torch.rand(4, 3, 32, 32)
    before = model(x)
    keys = list(model.state_dict())
    fuse_softplus(model)
    kinds = {type(m) for m in model.modules() if isinstance(m, nn.Softplus)}
    assert kinds == {FusedSoftplus}
    assert {m.beta for m in model.modules() if isinstance(m, nn.Softplus)} == {3.0}
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def test_lga_parameter_gradient_matches_nn_softplus():
    torch.manual_seed(0)
    backbone = create_backbone("resnet18_w16_cifar", 10, "softplus", 3.0)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    regularizer = build_regularizer("lga", eps=4 / 255, lambda_l2=0.01, lambda_cos=0.1)
    grads = []
    for prepare in (lambda m: m, fuse_softplus):
        model = prepare(lga_zoo.wrap(backbone, input_size=(3, 32, 32))).train()
        out = regularizer(model, x, y, torch.Generator().manual_seed(1))
        grads.append(torch.autograd.grad(out.loss, list(backbone.parameters())))
    for ours, reference in zip(grads[1], grads[0]):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)


def test_falls_back_to_nn_softplus_with_a_warning(monkeypatch):
    def broken_kernel():
        def kernel(x, beta):
            raise RuntimeError("no C++ compiler")

        return kernel

    monkeypatch.setattr(fused, "_kernel", broken_kernel)
    monkeypatch.setattr(fused, "_compile_failed", False)
    x = wide_inputs()
    with pytest.warns(UserWarning, match="could not build the CPU kernel"):
        y = FusedSoftplus(beta=3.0)(x)
    torch.testing.assert_close(y, nn.Softplus(beta=3.0)(x))
    assert fused._compile_failed


def small_cnn(activation: str = "softplus") -> nn.Module:
    torch.manual_seed(0)
    act = (lambda: nn.Softplus(beta=3.0)) if activation == "softplus" else nn.ReLU
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), act(), nn.Conv2d(8, 8, 3, padding=1), act(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 10),
    )  # fmt: skip
    return lga_zoo.wrap(net, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(3, 16, 16)).eval()


def test_fused_softplus_activations_swaps_for_the_block_only():
    model = small_cnn()
    originals = [m for m in model.modules() if type(m) is nn.Softplus]
    hooked = originals[1]
    hooked.register_forward_hook(lambda module, args, output: None)
    with fused.fused_softplus_activations(model):
        inside = [m for m in model.modules() if isinstance(m, nn.Softplus)]
        assert type(inside[0]) is FusedSoftplus and inside[0].beta == 3.0
        assert inside[1] is hooked  # a hooked module stays, so its hook still fires
    assert [m for m in model.modules() if isinstance(m, nn.Softplus)] == originals
    with pytest.raises(RuntimeError, match="in the block"), fused.fused_softplus_activations(model):
        raise RuntimeError("in the block")
    after = [m for m in model.modules() if isinstance(m, nn.Softplus)]
    assert all(a is b for a, b in zip(after, originals, strict=True))


@pytest.mark.parametrize("activation", ["softplus", "relu"])
def test_evaluation_figures_do_not_depend_on_the_softplus_kernel(monkeypatch, activation):
    # The same function to < 1e-6: every figure of a small evaluation (fp32 attacks) agrees. A ReLU
    # model gets the fused kernel in the attacks, for the Softplus(20) swapped in for its ReLUs.
    from lga_zoo.evaluate import evaluate

    calls = []
    forward = FusedSoftplus.forward
    monkeypatch.setattr(FusedSoftplus, "forward", lambda self, x: calls.append(1) or forward(self, x))
    data, settings = short_evaluation()
    model = small_cnn(activation)
    modules = list(model.modules())
    plain = evaluate(model, data, settings, progress=False, fused_softplus=False)
    assert not calls
    with_fused = evaluate(model, data, settings, progress=False, fused_softplus=True)
    assert calls, "the fused kernel ran"
    assert all(a is b for a, b in zip(model.modules(), modules, strict=True))  # the caller's modules
    assert_same_figures(plain, with_fused, tolerance=0.01)
