import pytest
import torch
from torch import nn
from torch.func import functional_call

from lga_zoo.recipe import RecipeError, recipe_from_dict
from lga_zoo.regularizers import (
    LGA,
    TRADES,
    Adversarial,
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


@pytest.mark.parametrize(
    "reg",
    [
        LGA(eps=0.2),
        HessianNorm(lam=1.0),
        GradNorm(lam=1.0),
        Adversarial(eps=0.1, steps=2),
        TRADES(eps=0.1, steps=2),
    ],
    ids=lambda r: r.name,
)
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


# --- Adversarial training and TRADES ---------------------------------------------------------------


def tiny_bn_net() -> nn.Module:
    """A small conv net with BatchNorm on (B, 3, 4, 4) images, in float64, in train mode."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.Softplus(beta=5),
        nn.Flatten(),
        nn.Linear(64, 3),
    ).double()


def bn_batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def eval_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).eval()


def buffers_of(model: nn.Module) -> list[torch.Tensor]:
    return [b.detach().clone() for b in model.buffers()]


def reference_linf_pgd(model, x, y, eps, steps, step_size):
    """PGD on the cross-entropy written out here, from x (no random start), model already in eval."""
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x_adv), y), x_adv)
        with torch.no_grad():
            x_adv = torch.clamp(torch.min(torch.max(x_adv + step_size * grad.sign(), x - eps), x + eps), 0, 1)
    return x_adv.detach()


def eval_ce(model, x, y) -> float:
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(eval_copy(model)(x), y).item()


def test_adversarial_attack_reaches_at_least_the_ce_of_a_reference_pgd():
    model = tiny_bn_net().train()
    x, y = bn_batch()
    reg = Adversarial(eps=0.05, steps=5, random_start=False)
    assert reg.step_size == pytest.approx(2.5 * 0.05 / 5)
    x_adv = reg.attack(model, x, y)
    x_ref = reference_linf_pgd(eval_copy(model), x, y, 0.05, 5, reg.step_size)
    ce_adv, ce_ref, ce_clean = eval_ce(model, x_adv, y), eval_ce(model, x_ref, y), eval_ce(model, x, y)
    assert ce_adv >= ce_ref - 1e-9
    assert ce_adv > ce_clean + 1e-3
    assert (x_adv - x).abs().max() <= 0.05 + 1e-12
    assert (x_adv - x).abs().max() > 0.04  # it moved to the edge of the ball
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_adversarial_loss_is_the_cross_entropy_at_x_adv_with_random_start():
    model = tiny_bn_net().train()
    x, y = bn_batch()
    reg = Adversarial(eps=0.05, steps=3)
    x_adv = reg.attack(eval_copy(model), x, y, torch.Generator().manual_seed(2))
    assert (x_adv - x).abs().max() <= 0.05 + 1e-12 and x_adv.min() >= 0 and x_adv.max() <= 1
    reference = eval_copy(model).train()
    out = reg(model, x, y, torch.Generator().manual_seed(2))
    expected_logits = reference(x_adv)
    assert torch.allclose(out.logits, expected_logits, atol=1e-12)  # logits at x_adv, caller's mode
    assert out.loss.item() == pytest.approx(torch.nn.functional.cross_entropy(expected_logits, y).item())
    assert out.loss.item() > eval_ce(model, x, y)


def test_adversarial_is_deterministic_given_the_generator_seed():
    model = tiny_bn_net().eval()
    x, y = bn_batch()
    reg = Adversarial(eps=0.05, steps=2)
    first = reg.attack(model, x, y, torch.Generator().manual_seed(3))
    again = reg.attack(model, x, y, torch.Generator().manual_seed(3))
    other = reg.attack(model, x, y, torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    losses = [reg(model, x, y, torch.Generator().manual_seed(3)).loss for _ in range(2)]
    assert torch.equal(losses[0], losses[1])


def test_adversarial_matches_torchattacks_pgd():
    torchattacks = pytest.importorskip(
        "torchattacks", reason="torchattacks is not installed (optional check)"
    )
    model = tiny_bn_net().train()
    x, y = bn_batch()
    reg = Adversarial(eps=0.05, steps=5, random_start=False)
    theirs = torchattacks.PGD(eval_copy(model), eps=0.05, alpha=reg.step_size, steps=5, random_start=False)
    assert eval_ce(model, reg.attack(model, x, y), y) >= eval_ce(model, theirs(x, y), y) - 1e-6


def reference_trades_attack(model, x, eps, steps, step_size, generator):
    """TRADES' attack written out here (model already in eval): KL(p || q) = sum p (log p - log q)."""
    with torch.no_grad():
        log_p = model(x).log_softmax(1)
    start = x + 0.001 * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    x_adv = start.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        kl = (log_p.exp() * (log_p - model(x_adv).log_softmax(1))).sum()
        (grad,) = torch.autograd.grad(kl, x_adv)
        with torch.no_grad():
            x_adv = torch.clamp(torch.min(torch.max(x_adv + step_size * grad.sign(), x - eps), x + eps), 0, 1)
    return start, x_adv.detach()


def batch_kl(logits, logits_adv):
    log_p = logits.log_softmax(1)
    return (log_p.exp() * (log_p - logits_adv.log_softmax(1))).sum(1).mean()


def test_trades_loss_equals_a_direct_computation():
    model = tiny_bn_net().train()
    reference = eval_copy(model)
    x, y = bn_batch()
    reg = TRADES(beta=6.0, eps=0.05, steps=4)
    out = reg(model, x, y, torch.Generator().manual_seed(5))
    start, x_adv = reference_trades_attack(
        reference, x, 0.05, 4, reg.step_size, torch.Generator().manual_seed(5)
    )
    with torch.no_grad():
        kl_start, kl_adv = batch_kl(reference(x), reference(start)), batch_kl(reference(x), reference(x_adv))
    assert kl_adv > kl_start > 0  # the attack raised the KL it maximizes
    reference.train()
    logits, logits_adv = reference(x), reference(x_adv)  # the caller's mode, clean batch first
    kl = batch_kl(logits, logits_adv)
    expected = torch.nn.functional.cross_entropy(logits, y) + 6.0 * kl
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-9)
    assert out.parts["kl"].item() == pytest.approx(kl.item(), rel=1e-9)
    assert out.parts["kl"] > 0
    assert torch.allclose(out.logits, logits, atol=1e-12)  # clean logits
    for got, want in zip(model.buffers(), reference.buffers()):  # running stats: the two batches only
        assert torch.allclose(got, want, atol=1e-12)


@pytest.mark.parametrize(
    "reg", [Adversarial(eps=0.05, steps=2), TRADES(eps=0.05, steps=2)], ids=lambda r: r.name
)
def test_attack_objectives_leave_running_stats_modes_and_grads_alone(reg):
    model = tiny_bn_net().train()
    x, y = bn_batch()
    reference = eval_copy(model)
    x_adv = (
        reg.attack(reference, x, y, torch.Generator().manual_seed(6)) if reg.name == "adversarial" else None
    )
    out = reg(model, x, y, torch.Generator().manual_seed(6))
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    if x_adv is not None:  # BatchNorm saw one train-mode batch: x_adv, and nothing of the attack
        reference.train()(x_adv)
        for got, want in zip(model.buffers(), reference.buffers()):
            assert torch.allclose(got, want, atol=1e-12)
        assert model[1].num_batches_tracked.item() == 1
    model.eval()
    model[1].train()  # mixed modes come back exactly as they were
    flags = [m.training for m in model.modules()]
    before = buffers_of(eval_copy(model))
    reg(model, x, y, torch.Generator().manual_seed(6))
    assert [m.training for m in model.modules()] == flags
    model.eval()
    reg(model, x, y, torch.Generator().manual_seed(6))
    assert not any(m.training for m in model.modules())
    changed = [not torch.equal(a, b) for a, b in zip(before, model.buffers())]
    assert any(changed)  # only the train-mode BatchNorm call above moved them...
    eval_before = buffers_of(model)
    reg(model, x, y, torch.Generator().manual_seed(6))
    assert all(torch.equal(a, b) for a, b in zip(eval_before, model.buffers()))  # ...not an eval call


class FailsOnSecondCall(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("boom")
        return x


@pytest.mark.parametrize(
    "reg", [Adversarial(eps=0.05, steps=3), TRADES(eps=0.05, steps=3)], ids=lambda r: r.name
)
def test_attack_objectives_restore_modes_on_error(reg):
    model = tiny_bn_net()
    model.insert(0, FailsOnSecondCall())
    model.train()
    x, y = bn_batch()
    with pytest.raises(RuntimeError, match="boom"):
        reg(model, x, y)
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "reg", [Adversarial(eps=0.05, steps=2), TRADES(eps=0.05, steps=2)], ids=lambda r: r.name
)
def test_attack_objectives_run_under_bf16_autocast(reg):
    model = tiny_bn_net().float().train()
    x, y = (t.float() if t.is_floating_point() else t for t in bn_batch())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = reg(model, x, y, torch.Generator().manual_seed(0))
    assert out.logits.dtype == torch.bfloat16
    assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_attack_objectives_settings_and_errors():
    adversarial = build_regularizer("adversarial", eps=2 / 255, steps=3)
    assert adversarial.settings() == {
        "name": "adversarial",
        "eps": 2 / 255,
        "steps": 3,
        "step_size": pytest.approx(2.5 * 2 / 255 / 3),
        "random_start": True,
    }
    assert build_regularizer(**adversarial.settings()).settings() == adversarial.settings()
    trades = build_regularizer("trades", eps=2 / 255, steps=3, step_size=1 / 255)
    assert trades.settings() == {
        "name": "trades",
        "beta": 6.0,
        "eps": 2 / 255,
        "steps": 3,
        "step_size": 1 / 255,
    }
    with pytest.raises(ValueError, match="steps=0 must be an integer >= 1"):
        Adversarial(steps=0)
    with pytest.raises(ValueError, match="steps=2.5 must be an integer"):
        TRADES(steps=2.5)
    with pytest.raises(ValueError, match="pixel units"):
        TRADES(eps=8)
    with pytest.raises(ValueError, match="beta=-1"):
        TRADES(beta=-1)
    with pytest.raises(ValueError, match="step_size=0"):
        Adversarial(step_size=0)


def attack_recipe(regularizer: dict):
    raw = {"name": "tiny", "architecture": "resnet18_w16_cifar", "regularizer": regularizer}
    return recipe_from_dict(raw, source="r.yaml")


def test_recipes_take_the_attack_objectives():
    recipe = attack_recipe({"name": "adversarial", "eps": "2/255", "steps": 3, "step_size": "1/255"})
    reg = build_regularizer(recipe.regularizer["name"], **recipe.regularizer_params())
    assert (reg.eps, reg.steps, reg.step_size, reg.random_start) == (2 / 255, 3, 1 / 255, True)
    recipe = attack_recipe({"name": "trades", "beta": 6, "eps": "8/255", "steps": 10})
    reg = build_regularizer(recipe.regularizer["name"], **recipe.regularizer_params())
    assert (reg.beta, reg.eps, reg.steps) == (6.0, 8 / 255, 10)


@pytest.mark.parametrize(
    "regularizer, message",
    [
        ({"name": "adversarial", "eps": "2/255", "steps": 0}, r"r.yaml: regularizer.steps=0 must be >= 1"),
        ({"name": "adversarial", "steps": 2.5}, "regularizer.steps=2.5 must be an integer"),
        (
            {"name": "adversarial", "random_start": "yes"},
            "regularizer.random_start='yes' must be true or false",
        ),
        ({"name": "adversarial", "beta": 6}, r"unknown key regularizer.'beta'.*Valid keys"),
        ({"name": "trades", "random_start": False}, r"unknown key regularizer.'random_start'"),
        ({"name": "trades", "stpes": 3}, r"regularizer.'stpes'. Did you mean \['steps'\]"),
        ({"name": "trades", "eps": 8}, "pixel units"),
        ({"name": "trades", "step_size": 0}, "regularizer.step_size=0 must be > 0"),
        ({"name": "trades", "beta": -1}, "regularizer.beta=-1 must be >= 0"),
    ],
)
def test_recipes_refuse_bad_attack_settings_in_one_line(regularizer, message):
    with pytest.raises(RecipeError, match=message) as err:
        attack_recipe(regularizer)
    assert "\n" not in str(err.value)
