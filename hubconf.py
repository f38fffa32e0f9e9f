"""torch.hub entry points of lga-zoo: one per zoo model.

    model = torch.hub.load("lga-zoo/lga_zoo", "resnet18_cifar10_lga", trust_repo=True)
    exp = model.explain(image)

Weights come from this clone's model_cards/NAME/ folder, the Hugging Face cache or the Hub, and are
checked against the sha256 pinned in lga_zoo/zoo.json. ``pretrained=False`` gives the architecture
untrained. Keyword arguments go to ``lga_zoo.load`` (device, revision, cache_dir, local_files_only).
"""

# Written by tools/write_hubconf.py from lga_zoo/zoo.json: edit the registry and rerun it, not this file.

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


def resnet18_cifar10_adversarial_eps1(pretrained: bool = True, **kwargs):
    """resnet18_cifar (Softplus beta 3) on CIFAR-10 trained with the `adversarial` regularizer (eps=1/255, steps=3, step_size=0.003268, random_start=True): fine-tuned from lga-zoo/resnet18_cifar10_standard, weights not published yet.

    Recipe: recipes/resnet18_cifar10_adversarial_eps1.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_cifar10_adversarial_eps1", pretrained, **kwargs)


def resnet18_cifar10_adversarial_eps2(pretrained: bool = True, **kwargs):
    """resnet18_cifar (Softplus beta 3) on CIFAR-10 trained with the `adversarial` regularizer (eps=2/255, steps=3, step_size=0.006536, random_start=True): 1 epoch fine-tuned from lga-zoo/resnet18_cifar10_standard, weights stored in float16.

    Recipe: recipes/resnet18_cifar10_adversarial_eps2.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_cifar10_adversarial_eps2", pretrained, **kwargs)


def resnet18_cifar10_control(pretrained: bool = True, **kwargs):
    """resnet18_cifar (Softplus beta 3) on CIFAR-10: the control: same extra training as the fine-tunes, no regularizer; 1 epoch fine-tuned from lga-zoo/resnet18_cifar10_standard.

    Recipe: recipes/resnet18_cifar10_control.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_cifar10_control", pretrained, **kwargs)


def resnet18_cifar10_gradnorm_lam0p005(pretrained: bool = True, **kwargs):
    """resnet18_cifar (Softplus beta 3) on CIFAR-10 trained with the `gradnorm` regularizer (lam=0.005): fine-tuned from lga-zoo/resnet18_cifar10_standard, weights not published yet.

    Recipe: recipes/resnet18_cifar10_gradnorm_lam0p005.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_cifar10_gradnorm_lam0p005", pretrained, **kwargs)


def resnet18_cifar10_gradnorm_lam0p02(pretrained: bool = True, **kwargs):
    """resnet18_cifar (Softplus beta 3) on CIFAR-10 trained with the `gradnorm` regularizer (lam=0.02): fine-tuned from lga-zoo/resnet18_cifar10_standard, weights not published yet.

    Recipe: recipes/resnet18_cifar10_gradnorm_lam0p02.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_cifar10_gradnorm_lam0p02", pretrained, **kwargs)


def resnet18_cifar10_hessian(pretrained: bool = True, **kwargs):
    """resnet18_cifar (Softplus beta 3) on CIFAR-10 trained with the `hessian` regularizer (lam=0.0001, fd_step=0.01): 1 epoch fine-tuned from lga-zoo/resnet18_cifar10_standard.

    Recipe: recipes/resnet18_cifar10_hessian.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_cifar10_hessian", pretrained, **kwargs)


def resnet18_cifar10_hessian_lam5em6(pretrained: bool = True, **kwargs):
    """resnet18_cifar (Softplus beta 3) on CIFAR-10 trained with the `hessian` regularizer (lam=5e-06, fd_step=0.01): fine-tuned from lga-zoo/resnet18_cifar10_standard, weights not published yet.

    Recipe: recipes/resnet18_cifar10_hessian_lam5em6.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_cifar10_hessian_lam5em6", pretrained, **kwargs)


def resnet18_cifar10_lga(pretrained: bool = True, **kwargs):
    """resnet18_cifar (Softplus beta 3) on CIFAR-10 trained with the `lga` regularizer (eps=4/255, lambda_l2=0.15, lambda_cos=1.0, perturbation=uniform, detach_source=True): 1 epoch fine-tuned from lga-zoo/resnet18_cifar10_standard.

    Recipe: recipes/resnet18_cifar10_lga.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_cifar10_lga", pretrained, **kwargs)


def resnet18_cifar10_lga_l2_0p05(pretrained: bool = True, **kwargs):
    """resnet18_cifar (Softplus beta 3) on CIFAR-10 trained with the `lga` regularizer (eps=4/255, lambda_l2=0.05, lambda_cos=1.0, perturbation=uniform, detach_source=True): 1 epoch fine-tuned from lga-zoo/resnet18_cifar10_standard, weights stored in float16.

    Recipe: recipes/resnet18_cifar10_lga_l2_0p05.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_cifar10_lga_l2_0p05", pretrained, **kwargs)


def resnet18_cifar10_lga_l2_0p4(pretrained: bool = True, **kwargs):
    """resnet18_cifar (Softplus beta 3) on CIFAR-10 trained with the `lga` regularizer (eps=4/255, lambda_l2=0.4, lambda_cos=1.0, perturbation=uniform, detach_source=True): fine-tuned from lga-zoo/resnet18_cifar10_standard, weights not published yet.

    Recipe: recipes/resnet18_cifar10_lga_l2_0p4.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_cifar10_lga_l2_0p4", pretrained, **kwargs)


def resnet18_cifar10_standard(pretrained: bool = True, **kwargs):
    """resnet18_cifar (Softplus beta 3) on CIFAR-10 trained with plain cross-entropy: 14 epochs continuing an earlier checkpoint that is not in the zoo.

    Recipe: recipes/resnet18_cifar10_standard.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_cifar10_standard", pretrained, **kwargs)


def resnet18_cifar10_trades_beta6(pretrained: bool = True, **kwargs):
    """resnet18_cifar (Softplus beta 3) on CIFAR-10 trained with the `trades` regularizer (beta=6.0, eps=2/255, steps=3, step_size=0.006536): fine-tuned from lga-zoo/resnet18_cifar10_standard, weights not published yet.

    Recipe: recipes/resnet18_cifar10_trades_beta6.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_cifar10_trades_beta6", pretrained, **kwargs)


def resnet18_imagenet100_hessian(pretrained: bool = True, **kwargs):
    """resnet18 (Softplus beta 3) on ImageNet-100 trained with the `hessian` regularizer (lam=0.001, fd_step=0.01): weights not published yet.

    Recipe: recipes/resnet18_imagenet100_hessian.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_imagenet100_hessian", pretrained, **kwargs)


def resnet18_imagenet100_lga(pretrained: bool = True, **kwargs):
    """resnet18 (Softplus beta 3) on ImageNet-100 trained with the `lga` regularizer (eps=4/255, lambda_l2=1.0, lambda_cos=0.01, perturbation=uniform, detach_source=True): weights not published yet.

    Recipe: recipes/resnet18_imagenet100_lga.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_imagenet100_lga", pretrained, **kwargs)


def resnet18_imagenet100_lga_pretrained(pretrained: bool = True, **kwargs):
    """resnet18 (Softplus beta 3) on ImageNet-100 trained with the `lga` regularizer (eps=4/255, lambda_l2=1.0, lambda_cos=0.01, perturbation=uniform, detach_source=True): fine-tuned from timm/resnet18.a1_in1k, weights not published yet.

    Recipe: recipes/resnet18_imagenet100_lga_pretrained.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_imagenet100_lga_pretrained", pretrained, **kwargs)


def resnet18_imagenet100_standard(pretrained: bool = True, **kwargs):
    """resnet18 (Softplus beta 3) on ImageNet-100 trained with plain cross-entropy: weights not published yet.

    Recipe: recipes/resnet18_imagenet100_standard.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_imagenet100_standard", pretrained, **kwargs)


def resnet18_w16_cifar10_control(pretrained: bool = True, **kwargs):
    """resnet18_w16_cifar (ReLU) on CIFAR-10: the control: same extra training as the fine-tunes, no regularizer; 2 epochs fine-tuned from lga-zoo/resnet18_w16_cifar10_standard.

    Recipe: recipes/resnet18_w16_cifar10_control.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_w16_cifar10_control", pretrained, **kwargs)


def resnet18_w16_cifar10_hessian(pretrained: bool = True, **kwargs):
    """resnet18_w16_cifar (ReLU) on CIFAR-10 trained with the `hessian` regularizer (lam=1e-06, fd_step=0.01): fine-tuned from lga-zoo/resnet18_w16_cifar10_standard, weights not published yet.

    Recipe: recipes/resnet18_w16_cifar10_hessian.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_w16_cifar10_hessian", pretrained, **kwargs)


def resnet18_w16_cifar10_lga(pretrained: bool = True, **kwargs):
    """resnet18_w16_cifar (ReLU) on CIFAR-10 trained with the `lga` regularizer (eps=4/255, lambda_l2=0.01, lambda_cos=0.1, perturbation=uniform, detach_source=True): 2 epochs fine-tuned from lga-zoo/resnet18_w16_cifar10_standard.

    Recipe: recipes/resnet18_w16_cifar10_lga.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_w16_cifar10_lga", pretrained, **kwargs)


def resnet18_w16_cifar10_standard(pretrained: bool = True, **kwargs):
    """resnet18_w16_cifar (ReLU) on CIFAR-10 trained from scratch with plain cross-entropy: 10 epochs.

    Recipe: recipes/resnet18_w16_cifar10_standard.yaml. Returns an lga_zoo.ExplainableClassifier (pixels in [0, 1]) with .explain().
    """
    return _load("resnet18_w16_cifar10_standard", pretrained, **kwargs)
