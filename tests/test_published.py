"""The published checkpoints in model_cards/: they load offline, match their pins and their cards."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lga_zoo
from lga_zoo.data import load_cifar10
from lga_zoo.folder import sha256_of
from lga_zoo.hub import model_card_dir

REPO = Path(__file__).resolve().parents[1]

PUBLISHED = lga_zoo.list_models()


def seeded_test_images(archive, n, seed):
    """``n`` CIFAR-10 test images (B, 3, 32, 32) in [0, 1] and their labels, drawn by a seeded
    permutation of the 10,000."""
    test = load_cifar10(archive, "test")
    idx = np.random.default_rng(seed).permutation(len(test))[:n]
    x = torch.from_numpy(test.images[idx]).permute(0, 3, 1, 2).float() / 255
    return x, torch.from_numpy(test.labels[idx]).long()


def own_accuracy(model, images, labels):
    """The fraction of ``images`` the model classifies as ``labels``: this file's own count."""
    with torch.no_grad():
        predicted = torch.cat([model(chunk).argmax(1) for chunk in images.split(500)])
    return (predicted == labels).float().mean().item()


def card_accuracy(name, model):
    """The accuracy the card states: the evaluation's, else the one measured at the end of training."""
    return lga_zoo.get_entry(name).metrics.get(
        "accuracy", model.config["lga_zoo"]["training"]["final_test_acc"]
    )


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_checkpoint_loads_offline_and_explains_the_bundled_photo(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    entry = lga_zoo.get_entry(name)
    weights = model_card_dir(name) / "model.safetensors"
    assert sha256_of(weights) == entry.sha256 and weights.stat().st_size == entry.size
    model = lga_zoo.load(name)
    assert model.source.startswith("checkout:") and not model.training
    with Image.open(REPO / "examples" / "cat.jpg") as photo:
        exp = model.explain(photo, method="grad")
    assert exp.attribution.shape == (1, 32, 32) and exp.attribution.max() == 1
    assert exp.probabilities.sum().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_checkpoint_through_torch_hub_local(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = torch.hub.load(str(REPO), name, source="local", trust_repo=True)
    reference = lga_zoo.load(name)
    assert model.entry.sha256 == lga_zoo.get_entry(name).sha256 and not model.training
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
        assert not torch.equal(
            model(x), lga_zoo.hub.untrained(name).eval()(x)
        )  # trained weights, not a fresh init


@pytest.mark.slow
@pytest.mark.parametrize("name", PUBLISHED)
def test_published_accuracy_matches_card_on_2000_test_images(name, real_cifar):
    """An independent count on a seeded sample of 2,000 test images agrees with the card's accuracy
    (the evaluation's, else the one measured at the end of training) within 4 binomial standard
    errors (about 3 points at 88%); a wrong or untrained model does not."""
    model = lga_zoo.load(name)
    accuracy = own_accuracy(model, *seeded_test_images(real_cifar, 2000, seed=0))
    card = card_accuracy(name, model)
    allowed = 4 * np.sqrt(card * (1 - card) / 2000)
    assert abs(accuracy - card) <= allowed, (accuracy, card, allowed)


@pytest.mark.slow
@pytest.mark.parametrize("name", PUBLISHED)
def test_published_accuracy_reproduces_on_the_full_test_split(name, real_cifar, monkeypatch):
    """As RobustBench checks its entries: a fresh offline load by name classifies the whole test
    split (10,000 images) as its results.json says, to within 0.05 points (5 images)."""
    results_path = model_card_dir(name) / "results.json"
    if not results_path.is_file():
        pytest.skip(f"{name} is not evaluated yet")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    test = load_cifar10(real_cifar, "test")
    images = torch.from_numpy(test.images).permute(0, 3, 1, 2).float() / 255
    accuracy = own_accuracy(lga_zoo.load(name), images, torch.from_numpy(test.labels).long())
    published = json.loads(results_path.read_text())["accuracy"]
    assert published["n_images"] == len(test.labels)
    assert abs(accuracy - published["clean"]) <= 0.0005, (accuracy, published["clean"])


@pytest.mark.slow
def test_real_cifar10_archive_decodes_to_the_known_data(real_cifar):
    train = load_cifar10(real_cifar, "train")
    test = load_cifar10(real_cifar, "test")
    assert train.images.shape == (50000, 32, 32, 3) and test.images.shape == (10000, 32, 32, 3)
    assert (
        np.bincount(train.labels).tolist() == [5000] * 10 and np.bincount(test.labels).tolist() == [1000] * 10
    )
    assert train.name == "CIFAR-10 (JPEG copy)"
    mean = train.images.reshape(-1, 3).mean(0) / 255
    assert np.allclose(mean, [0.4913, 0.4821, 0.4465], atol=2e-3)  # the data README's figures


def _own_grad_maps(model, x, y, create_graph=False):
    """|d logit_y / dx| summed over channels: this test's own code, not lga_zoo.attacks."""
    x = x if x.requires_grad else x.clone().requires_grad_(True)
    return _own_saliency(model(x), x, y, create_graph)


def _own_saliency(logits, x, y, create_graph=False):
    """|d logit_y / dx| summed over channels, from ``logits`` computed from ``x``."""
    (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), x, create_graph=create_graph)
    return grad.abs().sum(1)


def _own_frame_attack(model, x, y, eps=4 / 255, steps=10, frame=5):
    """Signed-gradient steps inside the L-inf ball that move the saliency mass into a border frame;
    each image keeps its last step that still has the clean prediction. A step's forward pass also
    gives the previous step's prediction, so each step costs one forward pass."""
    border = torch.ones(x.shape[-2:])
    border[frame:-frame, frame:-frame] = 0
    best = x.clone()
    x_adv = x.clone()
    for step_done in range(steps + 1):
        x_adv.requires_grad_(step_done < steps)
        with torch.set_grad_enabled(step_done < steps):
            logits = model(x_adv)
        if step_done > 0:
            same = logits.argmax(1) == y
            best[same] = x_adv.detach()[same]
        if step_done == steps:
            return best
        maps = _own_saliency(logits, x_adv, y, create_graph=True)
        frame_mass = (maps * border).flatten(1).sum(1) / maps.flatten(1).sum(1)
        (step,) = torch.autograd.grad(frame_mass.sum(), x_adv)
        with torch.no_grad():
            x_adv = (x + (x_adv + eps / 4 * step.sign() - x).clamp(-eps, eps)).clamp(0, 1)


def _own_topk_overlap(a, b, k):
    top_a = np.argsort(-a.reshape(len(a), -1), axis=1)[:, :k]
    top_b = np.argsort(-b.reshape(len(b), -1), axis=1)[:, :k]
    return np.array([len(np.intersect1d(p, q)) / k for p, q in zip(top_a, top_b)])


def own_frame_attack_topk(model, images, labels, batch=50):
    """Mean top-10% overlap of the grad map before and after :func:`_own_frame_attack`."""
    overlaps = []
    for x, y in zip(images.split(batch), labels.split(batch)):
        x_adv = _own_frame_attack(model, x, y)
        before, after = (_own_grad_maps(model, v, y).detach().numpy() for v in (x, x_adv))
        overlaps.append(_own_topk_overlap(before, after, k=before[0].size // 10))
    return float(np.concatenate(overlaps).mean())


@pytest.fixture(scope="module")
def frame_attack_top_k(real_cifar):
    """The issue's independent check, with this file's own attack and overlap code: the grad top-k
    overlap under a 10-step frame attack on 200 seeded test images, for the standard and LGA models."""
    pair = ("resnet18_cifar10_standard", "resnet18_cifar10_lga")
    if not all(name in PUBLISHED for name in pair):
        pytest.skip(f"{pair[1]} is not published yet")
    x, y = seeded_test_images(real_cifar, 200, seed=1)
    return {name.rsplit("_", 1)[1]: own_frame_attack_topk(lga_zoo.load(name), x, y) for name in pair}


@pytest.mark.slow
def test_lga_keeps_more_of_its_top_k_under_an_independent_frame_attack(frame_attack_top_k):
    """A clear gain (measured 0.353 for the standard, 0.476 for its LGA fine-tune, 0.330 for its
    control fine-tune and 0.682 for its Hessian fine-tune; 0.472 for the LGA fine-tune of its stage-5
    weights, which gave 0.366)."""
    assert frame_attack_top_k["lga"] >= frame_attack_top_k["standard"] + 0.05, frame_attack_top_k


@pytest.mark.slow
def test_lga_reaches_the_issue_target_under_an_independent_frame_attack(frame_attack_top_k):
    """Issue 12's target: the LGA model's top-k under the frame attack is the standard's + 0.10
    (measured +0.123 with lambda_l2 0.15; from the stage-5 standard, 0.15 gave +0.106 and 0.1 gave
    +0.096)."""
    assert frame_attack_top_k["lga"] >= frame_attack_top_k["standard"] + 0.10, frame_attack_top_k


def independent_apgd_ce_accuracy(model, images, labels, eps=2 / 255, steps=50, batch=100):
    """Accuracy under torchattacks' APGD-CE (fp32, L-inf ``eps``; seeded) on ``images``: a maintained
    attack that shares no code with lga_zoo's evaluation."""
    torchattacks = pytest.importorskip(
        "torchattacks", reason="torchattacks is not installed (the eval extra)"
    )
    attack = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, loss="ce", seed=0)
    with torch.random.fork_rng(devices=[]):
        correct = sum(
            (model(attack(x, y)).argmax(1) == y).sum().item()
            for x, y in zip(images.split(batch), labels.split(batch))
        )
    return correct / len(labels)


@pytest.mark.slow
def test_adversarial_training_is_clearly_more_robust_under_an_independent_apgd_ce(real_cifar):
    """Issue 46's check: an adversarially trained fine-tune keeps at least 10 points more accuracy
    than the standard model under fp32 APGD-CE at L-inf 2/255 on 200 seeded test images."""
    adversarial = [name for name in PUBLISHED if name.startswith("resnet18_cifar10_adversarial_")]
    if not adversarial:
        pytest.skip("no adversarially trained resnet18_cifar10 model is published yet")
    x, y = seeded_test_images(real_cifar, 200, seed=2)
    standard = independent_apgd_ce_accuracy(lga_zoo.load("resnet18_cifar10_standard"), x, y)
    robust = {name: independent_apgd_ce_accuracy(lga_zoo.load(name), x, y) for name in adversarial}
    assert max(robust.values()) >= standard + 0.10, (standard, robust)


def print_independent_check(archive, names=()) -> None:
    """Print issue 12's independent check for every published resnet18_cifar10 model (or those of
    ``names``): this file's accuracy on the 2,000 seeded test images and frame-attack top-k on the
    200 the tests use."""
    accuracy_sample = seeded_test_images(archive, 2000, seed=0)
    attack_sample = seeded_test_images(archive, 200, seed=1)
    print("| model | card accuracy | own accuracy (2,000) | frame-attack top-k (200) |")
    print("|---|---|---|---|")
    for name in names or [n for n in PUBLISHED if n.startswith("resnet18_cifar10_")]:
        model = lga_zoo.load(name)
        print(
            f"| {name} | {card_accuracy(name, model):.4f} | {own_accuracy(model, *accuracy_sample):.4f} "
            f"| {own_frame_attack_topk(model, *attack_sample):.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    # python tests/test_published.py [CIFAR-10 ARCHIVE [NAME ...]]: the figures the slow tests assert on
    import sys

    from conftest import SHARED_CIFAR

    print_independent_check(Path(sys.argv[1]) if len(sys.argv) > 1 else SHARED_CIFAR, sys.argv[2:])
