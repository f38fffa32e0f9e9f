"""torch.hub entry points of lga-zoo: one per zoo model.

    model = torch.hub.load("lga-zoo/lga_zoo", "resnet18_cifar10_lga", trust_repo=True)
    exp = model.explain(image)

Weights come from this clone's model_cards/NAME/ folder, the Hugging Face cache or the Hub, and are
checked against the sha256 pinned in lga_zoo/zoo.json. ``pretrained=False`` gives the architecture
untrained. Keyword arguments go to ``lga_zoo.load`` (device, revision, cache_dir, local_files_only).
"""

dependencies = ["torch", "torchvision", "timm", "safetensors", "captum", "huggingface_hub", "yaml"]


_LOAD_KEYWORDS = ("device", "revision", "cache_dir", "local_files_only", "verify")


def _load(name, pretrained, **kwargs):
    import lga_zoo
    from lga_zoo.hub import untrained

    unknown = sorted(set(kwargs) - set(_LOAD_KEYWORDS if pretrained else ("device",)))
    if unknown:
        accepted = list(_LOAD_KEYWORDS) if pretrained else ["device"]
        raise TypeError(f"{name}: unexpected keyword arguments {unknown}; accepted: {accepted}")
    return lga_zoo.load(name, **kwargs) if pretrained else untrained(name, device=kwargs.get("device"))


def resnet18_cifar10_control(pretrained: bool = True, **kwargs):
    """resnet18_cifar (Softplus beta 3) on CIFAR-10: the control: 1 epoch fine-tuned from lga-zoo/resnet18_cifar10_standard with no regularizer, as long as the LGA and Hessian fine-tunes. Compare LGA against it.

    Recipe: recipes/resnet18_cifar10_control.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_cifar10_control", pretrained, **kwargs)


def resnet18_cifar10_hessian(pretrained: bool = True, **kwargs):
    """resnet18_cifar (Softplus beta 3) on CIFAR-10 trained with the `hessian` regularizer (lam=0.0001, fd_step=0.01): 1 epoch fine-tuned from lga-zoo/resnet18_cifar10_standard.

    Recipe: recipes/resnet18_cifar10_hessian.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_cifar10_hessian", pretrained, **kwargs)


def resnet18_cifar10_lga(pretrained: bool = True, **kwargs):
    """resnet18_cifar (Softplus beta 3) on CIFAR-10 trained with the `lga` regularizer (eps=4/255, lambda_l2=0.15, lambda_cos=1.0, perturbation=uniform, detach_source=True): 1 epoch fine-tuned from lga-zoo/resnet18_cifar10_standard.

    Recipe: recipes/resnet18_cifar10_lga.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_cifar10_lga", pretrained, **kwargs)


def resnet18_cifar10_standard(pretrained: bool = True, **kwargs):
    """resnet18_cifar (Softplus beta 3) on CIFAR-10 trained from scratch with plain cross-entropy (label smoothing 0.1) in eight runs, 104 epochs in all: 16 epochs, cosine cycles of 12 and 8 epochs, then cycles with cutout 16 of 8, 16, 16, 14 and 14 epochs (recipes/stages/ holds the first seven).

    Recipe: recipes/resnet18_cifar10_standard.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_cifar10_standard", pretrained, **kwargs)


def resnet18_imagenet100_standard(pretrained: bool = True, **kwargs):
    """resnet18 (Softplus beta 3) on ImageNet-100 (224x224) trained from scratch with plain cross-entropy. GPU recipe, weights not published yet.

    Recipe: recipes/resnet18_imagenet100_standard.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_imagenet100_standard", pretrained, **kwargs)


def resnet18_imagenet100_lga(pretrained: bool = True, **kwargs):
    """resnet18 (Softplus beta 3) on ImageNet-100 (224x224) trained from scratch with LGA (eps=4/255, lambda_l2=1.0, lambda_cos=0.01). GPU recipe, weights not published yet.

    Recipe: recipes/resnet18_imagenet100_lga.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_imagenet100_lga", pretrained, **kwargs)


def resnet18_imagenet100_hessian(pretrained: bool = True, **kwargs):
    """resnet18 (Softplus beta 3) on ImageNet-100 (224x224) trained from scratch with the Hessian-norm baseline (lam=1e-3). GPU recipe, weights not published yet.

    Recipe: recipes/resnet18_imagenet100_hessian.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_imagenet100_hessian", pretrained, **kwargs)


def resnet18_imagenet100_lga_pretrained(pretrained: bool = True, **kwargs):
    """resnet18 (Softplus beta 3) on ImageNet-100: timm's ImageNet-1k weights fine-tuned with LGA for 10 epochs. GPU recipe, weights not published yet.

    Recipe: recipes/resnet18_imagenet100_lga_pretrained.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_imagenet100_lga_pretrained", pretrained, **kwargs)


def resnet18_w16_cifar10_hessian(pretrained: bool = True, **kwargs):
    """resnet18_w16_cifar on CIFAR-10 trained with the `hessian` regularizer (lam=0.0001, fd_step=0.01): 2 epochs fine-tuned from lga-zoo/resnet18_w16_cifar10_standard.

    Recipe: recipes/resnet18_w16_cifar10_hessian.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_w16_cifar10_hessian", pretrained, **kwargs)


def resnet18_w16_cifar10_control(pretrained: bool = True, **kwargs):
    """resnet18_w16_cifar on CIFAR-10: the control: 2 epochs fine-tuned from lga-zoo/resnet18_w16_cifar10_standard with no regularizer, as long as the LGA fine-tune. Compare LGA against it.

    Recipe: recipes/resnet18_w16_cifar10_control.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_w16_cifar10_control", pretrained, **kwargs)


def resnet18_w16_cifar10_lga(pretrained: bool = True, **kwargs):
    """resnet18_w16_cifar on CIFAR-10 trained with the `lga` regularizer (eps=0.01569, lambda_l2=0.01, lambda_cos=0.1, perturbation=uniform, detach_source=True): 2 epochs fine-tuned from lga-zoo/resnet18_w16_cifar10_standard.

    Recipe: recipes/resnet18_w16_cifar10_lga.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_w16_cifar10_lga", pretrained, **kwargs)


def resnet18_w16_cifar10_standard(pretrained: bool = True, **kwargs):
    """resnet18_w16_cifar on CIFAR-10 trained from scratch with plain cross-entropy, 10 epochs.

    Recipe: recipes/resnet18_w16_cifar10_standard.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_w16_cifar10_standard", pretrained, **kwargs)
