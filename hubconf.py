"""torch.hub entry points of lga-zoo: one per zoo model, made from its registry (lga_zoo/zoo.json).

    model = torch.hub.load("lga-zoo/lga_zoo", "resnet18_cifar10_lga", trust_repo=True)
    exp = model.explain(image)

Weights come from this clone's model_cards/NAME/ folder, the Hugging Face cache or the Hub, and are
checked against the sha256 pinned in lga_zoo/zoo.json. ``pretrained=False`` gives the architecture
untrained. Keyword arguments go to ``lga_zoo.load`` (device, revision, cache_dir, local_files_only).
"""

dependencies = ["torch", "torchvision", "timm", "safetensors", "captum", "huggingface_hub", "yaml"]

from lga_zoo.torch_hub import entrypoints as _entrypoints  # noqa: E402

globals().update(_entrypoints())
