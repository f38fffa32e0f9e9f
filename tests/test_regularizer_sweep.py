"""scripts/regularizer_sweep.py: every lambda sees the same batches from the same weights, and its
table's figures are what they say."""

import argparse

import pytest
import torch
from conftest import load_file_module

import lga_zoo

sweep = load_file_module("scripts/regularizer_sweep.py")


def tiny_model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 10),
    )  # fmt: skip
    return lga_zoo.wrap(net, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(3, 8, 8)).eval()


@pytest.fixture
def split():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 8, 8, 3), generator=g, dtype=torch.uint8)
    return images, torch.randint(0, 10, (64,), generator=g)


def test_every_lambda_sees_the_same_batches(split):
    first = list(sweep.batches(*split, steps=3, batch=8, seed=0))
    again = list(sweep.batches(*split, steps=3, batch=8, seed=0))
    assert len(first) == 3 and all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again)
    )
    assert all(x.min() >= 0 and x.max() <= 1 and x.shape == (8, 3, 8, 8) for x, _ in first)


def test_a_row_reports_the_regularizer_and_the_accuracy_of_the_trained_copy(split):
    base = tiny_model()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    args = argparse.Namespace(steps=4, batch=8, seed=0)
    plain = sweep.run_one(base, "hessian", 0.0, split, split, args)
    regularized = sweep.run_one(base, "hessian", 1e-3, split, split, args)
    assert plain["term"] == 0 and regularized["term"] > 0
    assert all(
        torch.equal(before[k], v) for k, v in base.state_dict().items()
    )  # the start is shared, untouched
    images, labels = split
    with torch.no_grad():
        expected = (base(images.permute(0, 3, 1, 2).float() / 255).argmax(1) == labels).float().mean().item()
    assert sweep.test_accuracy(base, *split) == pytest.approx(expected)
    assert sweep.run_one(base, "hessian", 1e-3, split, split, args)["ce"] == regularized["ce"]  # seeded
