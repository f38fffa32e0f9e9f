from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

import lga_zoo
from lga_zoo.data import imagenet100_folder, imagenet100_wnids, timm_eval_transform
from lga_zoo.models import create_backbone, set_activation, softplus_activations


def test_cifar_resnets_keep_32x32_resolution_in_the_stem():
    for name, params in (("resnet18_cifar", 11_173_962), ("resnet18_w16_cifar", 701_466)):
        model = timm.create_model(name)
        assert sum(p.numel() for p in model.parameters()) == params
        assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
        assert isinstance(model.maxpool, nn.Identity)
        features = model.forward_features(torch.rand(2, 3, 32, 32))
        assert features.shape[-2:] == (4, 4)  # 32 / 8: only the three stage strides
    assert 0.65e6 < 701_466 < 0.75e6


def test_activation_option_and_temporary_softplus():
    backbone = create_backbone("resnet18_w16_cifar", 10, activation="softplus", softplus_beta=7.0)
    softplus = [m for m in backbone.modules() if isinstance(m, nn.Softplus)]
    assert softplus and all(m.beta == 7.0 for m in softplus)
    assert not any(isinstance(m, nn.ReLU) for m in backbone.modules())
    relu_net = set_activation(backbone, "relu")
    count = sum(isinstance(m, nn.ReLU) for m in relu_net.modules())
    x = torch.rand(2, 3, 32, 32)
    relu_net.eval()
    before = relu_net(x)
    with softplus_activations(relu_net, beta=1.0):
        assert sum(isinstance(m, nn.Softplus) for m in relu_net.modules()) == count
        assert not torch.allclose(relu_net(x), before)
    assert torch.equal(relu_net(x), before)
    with pytest.raises(ValueError, match="activation='gelu'"):
        set_activation(relu_net, "gelu")


def test_normalization_lives_inside_the_model():
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    model = lga_zoo.wrap(backbone, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0), input_size=(3, 2, 2))
    x = torch.rand(3, 3, 2, 2)
    mean = torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    assert torch.allclose(model(x), backbone((x - mean) / std))
    assert set(model.state_dict()) == {"backbone.1.weight", "backbone.1.bias"}  # mean/std are not weights
    with pytest.raises(ValueError, match="one value per channel"):
        lga_zoo.wrap(backbone, mean=(0.5,), std=(0.5, 0.5, 0.5), input_size=(3, 2, 2))


def test_wrap_reads_timm_pretrained_cfg_and_transforms():
    model = lga_zoo.wrap(timm.create_model("resnet18", num_classes=3))
    assert model.input_size == (3, 224, 224) and model.pretrained_cfg["crop_pct"] == 0.95
    photo = Image.fromarray(np.full((300, 400, 3), 255, np.uint8))
    pixels = model.transforms()(photo)
    assert pixels.shape == (3, 224, 224) and pixels.dtype == torch.float32
    assert torch.equal(pixels, torch.ones_like(pixels))  # [0, 1], not normalized
    # timm's own pipeline, fed the wrapper's data config, gives the wrapper its [0, 1] input; the
    # backbone's normalization (applied inside) stays in backbone_cfg
    data_config = timm.data.resolve_data_config({}, model=model)
    assert data_config["mean"] == (0.0, 0.0, 0.0) and data_config["std"] == (1.0, 1.0, 1.0)
    assert model.backbone_cfg["mean"] == pytest.approx(timm.data.IMAGENET_DEFAULT_MEAN)


def test_timm_and_torchvision_pipelines_give_a_loaded_model_its_input():
    """A published model through timm's resolve_data_config + create_transform, or through
    model.transforms() as torchvision's weights.transforms() is used, gets the same pixels as
    model.explain builds from the photo, and predicts the same."""
    from timm.data import create_transform, resolve_data_config

    from lga_zoo.inputs import to_batch

    model = lga_zoo.load("resnet18_w16_cifar10_lga")
    photo = Image.open(Path(__file__).parents[1] / "examples" / "cat.jpg").convert("RGB").resize((32, 32))
    reference = to_batch(photo, model.input_size)
    timm_input = create_transform(**resolve_data_config({}, model=model))(photo)[None]
    torchvision_input = model.transforms()(photo)[None]
    assert torch.allclose(timm_input, reference, atol=1e-6)
    assert torch.allclose(torchvision_input, reference, atol=1e-6)
    with torch.no_grad():
        assert model(timm_input).argmax(1).item() == model(reference).argmax(1).item() == 3  # cat


def test_imagenet100_folder_and_timm_transform(tmp_path):
    wnids = imagenet100_wnids()
    for i, wnid in enumerate(wnids + ("n99999999",)):  # one extra class that must be left out
        folder = tmp_path / "val" / wnid
        folder.mkdir(parents=True)
        Image.fromarray(np.full((40, 50, 3), i, np.uint8)).save(folder / "a.JPEG")
    backbone = timm.create_model("resnet18", num_classes=100)
    dataset = imagenet100_folder(tmp_path, "val", transform=timm_eval_transform(backbone))
    assert len(dataset) == 100 and dataset.classes == sorted(wnids)
    image, label = dataset[5]
    assert image.shape == (3, 224, 224) and 0 <= image.min() and image.max() <= 1  # not normalized
    assert label == 5
