import pytest
import torch
from torch import nn
from torch.func import functional_call

from lga_zoo.regularizers import (
    LGA,
    GradNorm,
    HessianNorm,
    Regularizer,
    build_regularizer,
    true_class_input_grad,
)


class Quadratic(nn.Module):
    """Logit k is 0.5 x^T A_k x (x flattened): gradient A_k x, Hessian A_k."""

    def __init__(self, mats: torch.Tensor):
        super().__init__()
        self.mats = nn.Parameter(mats)

    def forward(self, x):
        flat = x.flatten(1)
        return 0.5 * torch.einsum("bi,kij,bj->bk", flat, self.mats, flat)


def sym(n, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(k, n, n, generator=g, dtype=torch.float64)
    return a + a.transpose(1, 2)


def tiny_softplus_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Softplus(beta=5), nn.Linear(6, 3)).double()


def test_linear_model_has_zero_lga_terms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 4))
    x, y = torch.rand(5, 2, 3, 3), torch.randint(0, 4, (5,))
    for perturbation in ("uniform", "gaussian", "grad"):
        out = LGA(eps=0.1, perturbation=perturbation)(model, x, y)
        assert out.parts["l2"].item() == pytest.approx(0.0, abs=1e-10)
        assert out.parts["cos"].item() == pytest.approx(0.0, abs=1e-6)
        assert out.loss.item() == pytest.approx(out.parts["ce"].item(), abs=1e-6)


def test_l2_term_of_quadratic_is_norm_of_A_z():
    n = 6
    mats = sym(n)
    model = Quadratic(mats)
    x = torch.rand(4, 1, 2, 3, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2])
    reg = LGA(eps=0.05, lambda_l2=1.0, lambda_cos=0.0)
    out = reg(model, x, y, generator=torch.Generator().manual_seed(7))
    z = reg.perturb(x, torch.zeros_like(x), torch.Generator().manual_seed(7)) - x
    expected = torch.stack([(mats[y[i]] @ z[i].flatten()).pow(2).sum() for i in range(4)]).mean()
    assert out.parts["l2"].item() == pytest.approx(expected.item(), rel=1e-9)
    assert out.parts["l2"].item() > 0


def test_cosine_term_matches_direct_formula():
    mats = sym(6, seed=1)
    model = Quadratic(mats)
    x = torch.rand(3, 6, dtype=torch.float64)
    y = torch.tensor([1, 0, 2])
    reg = LGA(eps=0.3, lambda_l2=0.0, lambda_cos=1.0, perturbation="gaussian")
    out = reg(model, x, y, generator=torch.Generator().manual_seed(3))
    x_near = reg.perturb(x, torch.zeros_like(x), torch.Generator().manual_seed(3))
    cos = []
    for i in range(3):
        g, g_near = mats[y[i]] @ x[i], mats[y[i]] @ x_near[i]
        cos.append((1 - g @ g_near / (g.norm() * g_near.norm())) / 2)
    assert out.parts["cos"].item() == pytest.approx(torch.stack(cos).mean().item(), rel=1e-9)


def test_grad_perturbation_steps_along_gradient_sign():
    mats = sym(4, seed=2)
    model = Quadratic(mats)
    x = torch.rand(2, 4, dtype=torch.float64)
    y = torch.tensor([0, 1])
    x_req = x.clone().requires_grad_(True)
    _, g = true_class_input_grad(model, x_req, y, create_graph=False)
    reg = LGA(eps=0.01, perturbation="grad")
    assert torch.allclose(reg.perturb(x, g) - x, 0.01 * g.sign(), atol=1e-12, rtol=0)


def test_perturbation_stays_in_eps_ball():
    x = torch.rand(8, 3, 4, 4)
    z = LGA(eps=4 / 255).perturb(x, torch.zeros_like(x)) - x
    assert z.abs().max() <= 4 / 255 + 1e-7
    assert z.abs().max() > 2 / 255  # not degenerate


def test_hessian_estimate_mean_equals_frobenius_norm():
    n = 5
    mats = sym(n, seed=4)
    model = Quadratic(mats)
    x = torch.rand(1, n, dtype=torch.float64)
    y = torch.tensor([2])
    reg = HessianNorm(lam=1.0)
    gen = torch.Generator().manual_seed(0)
    draws = torch.cat([reg.hessian_vector_sq_norm(model, x, y, gen)[1] for _ in range(4000)])
    frob = mats[2].pow(2).sum().item()
    assert draws.mean().item() == pytest.approx(frob, rel=0.05)
    assert draws.std().item() > 0  # a real random estimate, not the closed form


def test_gradnorm_equals_closed_form():
    mats = sym(4, seed=5)
    model = Quadratic(mats)
    x = torch.rand(3, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    out = GradNorm(lam=1.0)(model, x, y)
    expected = torch.stack([(mats[y[i]] @ x[i]).pow(2).sum() for i in range(3)]).mean()
    assert out.parts["gradnorm"].item() == pytest.approx(expected.item(), rel=1e-9)


@pytest.mark.parametrize(
    "reg",
    [
        Regularizer(),
        LGA(eps=0.1, lambda_l2=1.0, lambda_cos=1.0, detach_source=False),
        LGA(eps=0.1, lambda_l2=1.0, lambda_cos=0.0, perturbation="gaussian", detach_source=False),
        LGA(eps=0.1, lambda_l2=0.0, lambda_cos=1.0, perturbation="grad", detach_source=False),
        GradNorm(lam=1.0),
        HessianNorm(lam=1.0),
    ],
    ids=["none", "lga", "lga_l2_gauss", "lga_cos_grad", "gradnorm", "hessian"],
)
def test_gradcheck_through_regularizer(reg):
    net = tiny_softplus_net()
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    names = list(params)
    x = torch.rand(4, 3, 2, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])

    def loss_of(*weights):
        model = lambda inp: functional_call(net, dict(zip(names, weights)), (inp,))
        return reg(model, x, y, generator=torch.Generator().manual_seed(0)).loss

    inputs = tuple(params[k].requires_grad_(True) for k in names)
    assert torch.autograd.gradcheck(loss_of, inputs, eps=1e-6, atol=1e-5)


def test_detached_source_gradient_treats_g_as_constant():
    # detach_source=True: the parameter gradient equals gradcheck-verified differentiation of the loss
    # in which g comes from a frozen copy of the weights.
    net = tiny_softplus_net()
    names = [k for k, _ in net.named_parameters()]
    frozen = {k: v.detach().clone() for k, v in net.named_parameters()}
    x = torch.rand(4, 3, 2, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    reg = LGA(eps=0.1, lambda_l2=1.0, lambda_cos=1.0, perturbation="uniform")
    full = LGA(eps=0.1, lambda_l2=1.0, lambda_cos=1.0, perturbation="uniform", detach_source=False)

    def reference_loss(*weights):
        live = lambda inp: functional_call(net, dict(zip(names, weights)), (inp,))
        fixed = lambda inp: functional_call(net, frozen, (inp,))
        xr = x.clone().requires_grad_(True)
        _, g = true_class_input_grad(fixed, xr, y, create_graph=False)
        x_near = reg.perturb(x, g, torch.Generator().manual_seed(0)).requires_grad_(True)
        _, g_near = true_class_input_grad(live, x_near, y, create_graph=True)
        logits = live(x)
        diff = (g - g_near).flatten(1)
        cos = torch.nn.functional.cosine_similarity(g.flatten(1), g_near.flatten(1), dim=1)
        return (
            torch.nn.functional.cross_entropy(logits, y) + diff.pow(2).sum(1).mean() + ((1 - cos) / 2).mean()
        )

    weights = tuple(v.clone().requires_grad_(True) for v in frozen.values())
    assert torch.autograd.gradcheck(reference_loss, weights, eps=1e-6, atol=1e-5)
    expected = torch.autograd.grad(reference_loss(*weights), weights)
    out = reg(net, x, y, generator=torch.Generator().manual_seed(0))
    got = torch.autograd.grad(out.loss, list(net.parameters()))
    for e, g in zip(expected, got):
        assert torch.allclose(e, g, atol=1e-10)
    # ...and differs from the gradient that also flows through g.
    out_full = full(net, x, y, generator=torch.Generator().manual_seed(0))
    got_full = torch.autograd.grad(out_full.loss, list(net.parameters()))
    assert any(not torch.allclose(a, b, atol=1e-8) for a, b in zip(got, got_full))


def test_regularizer_terms_reach_parameters():
    # With a curved model the LGA loss must differ from CE and carry gradient through g'.
    net = tiny_softplus_net()
    x = torch.rand(4, 3, 2, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    reg_only = LGA(eps=0.2, lambda_l2=1.0, lambda_cos=1.0)
    out = reg_only(net, x, y)
    extra = out.loss - torch.nn.functional.cross_entropy(out.logits, y)
    grads = torch.autograd.grad(extra, list(net.parameters()), allow_unused=True)
    assert extra.item() > 0
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_build_regularizer_by_name_and_errors():
    assert build_regularizer("lga_l2", eps=0.1).lambda_cos == 0.0
    assert build_regularizer("lga_cos", eps=0.1).lambda_l2 == 0.0
    assert isinstance(build_regularizer("hessian", lam=1e-4), HessianNorm)
    with pytest.raises(ValueError, match="unknown regularizer 'lgaa'"):
        build_regularizer("lgaa")
    with pytest.raises(ValueError, match="perturbation"):
        LGA(perturbation="laplace")
    with pytest.raises(ValueError, match="pixel units"):
        LGA(eps=4.0)


def _real_photos_32px() -> torch.Tensor:
    """28 real photos (skimage's, flipped and shifted) at 32x32, pixels in [0, 1]."""
    import numpy as np
    from PIL import Image
    from skimage import data

    names = ("chelsea", "astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "cat")
    photos = [np.asarray(Image.fromarray(getattr(data, n)()[..., :3]).resize((32, 32))) for n in names]
    x = torch.from_numpy(np.stack(photos)).permute(0, 3, 1, 2).float() / 255
    return torch.cat([x, x.flip(3), x.flip(2), x.roll(5, 2)])


@pytest.mark.parametrize(
    "name, settings",
    [("lga", {"eps": 4 / 255, "lambda_l2": 0.01, "lambda_cos": 0.1}), ("hessian", {"lam": 1e-4})],
)
def test_bf16_autocast_keeps_the_regularizer_parameter_gradient_on_a_trained_softplus_model(name, settings):
    """bf16 autocast on the CPU: the regularizer's parameter gradient (the double backward) points
    the same way as in fp32 on a trained model with Softplus(beta=3) (measured 0.995 for LGA, 0.9995
    for the Hessian norm)."""
    import copy

    import torch.nn.functional as F

    import lga_zoo
    from lga_zoo.models import set_activation

    model = copy.deepcopy(lga_zoo.load("resnet18_w16_cifar10_standard"))
    set_activation(model.backbone, "softplus", 3.0).train()
    x = _real_photos_32px()
    with torch.no_grad():
        y = model(x).argmax(1)
    regularizer = build_regularizer(name, **settings)
    params = list(model.parameters())
    flat_grads = []
    for use_bf16 in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            out = regularizer(model, x, y, torch.Generator().manual_seed(0))
            regularizer_term = out.loss - F.cross_entropy(out.logits, y)
        assert (out.logits.dtype == torch.bfloat16) == use_bf16
        grads = torch.autograd.grad(regularizer_term, params)
        flat_grads.append(torch.cat([g.float().flatten() for g in grads]))
    assert F.cosine_similarity(flat_grads[0], flat_grads[1], dim=0) >= 0.95


def test_label_smoothing_applies_to_the_cross_entropy_term():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    y = torch.tensor([0])
    net = nn.Sequential(nn.Flatten(), nn.Identity())
    smooth = build_regularizer("none", label_smoothing=0.3)
    out = smooth(net, logits, y)
    log_p = logits.log_softmax(1)[0]
    expected = -(0.7 * log_p[0] + 0.3 * log_p.mean())
    assert torch.allclose(out.loss, expected)
    with pytest.raises(ValueError, match="label_smoothing"):
        build_regularizer("lga", label_smoothing=1.0)


@pytest.mark.parametrize("reg", [LGA(eps=0.2), HessianNorm(lam=1.0), GradNorm(lam=1.0)], ids=lambda r: r.name)
def test_gradient_regularizers_work_under_no_grad_and_refuse_inference_mode(reg):
    """Inside a caller's torch.no_grad() a gradient regularizer still differentiates the model (as
    captum does) and gives the same loss; under inference_mode it names itself and the way out."""
    net = tiny_softplus_net()
    x = torch.rand(4, 3, 2, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    expected = reg(net, x, y, torch.Generator().manual_seed(0)).loss
    with torch.no_grad():
        under_no_grad = reg(net, x, y, torch.Generator().manual_seed(0)).loss
        assert not torch.is_grad_enabled()  # the caller's mode is back
    assert torch.allclose(under_no_grad, expected)
    with torch.inference_mode(), pytest.raises(RuntimeError, match=f"the {reg.name} regularizer.*no_grad"):
        reg(net, x, y)
