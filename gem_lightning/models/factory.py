"""Build the classification network a config names: the VGG-style CNN, a timm or a torchvision model."""

from __future__ import annotations

import timm
import torchvision
from torch import nn

from gem_lightning.errors import UserInputError
from gem_lightning.models import pretrained
from gem_lightning.models.vgg import VGG, VGGConfig

TIMM_PREFIX = "timm/"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def available_archs() -> list[str]:
    return ["vgg", f"{TIMM_PREFIX}<any timm model, e.g. {TIMM_PREFIX}tf_efficientnet_lite0>", *sorted(torchvision.models.list_models(module=torchvision.models))]


def build_network(
    arch: str, *, num_classes: int, image_size: int, vgg: VGGConfig, weights: str | None = None, backbone_kwargs: dict | None = None
) -> nn.Module:
    """A network mapping ``(B, 3, image_size, image_size)`` floats to ``(B, num_classes)`` logits.

    Args:
        arch: ``vgg`` (ours, configured by ``vgg``), ``timm/<name>`` (any timm classification
            model) or a torchvision classification model name.
        weights: pretrained weights (``gem_lightning.models.pretrained``): a local state-dict file or
            a shipped name such as ``efficientnet-lite0``; the classifier stays fresh, sized to
            ``num_classes``. ``None`` trains from scratch.
        backbone_kwargs: extra arguments of ``timm.create_model`` (``drop_rate``, ``drop_path_rate``).
    """
    if arch == "vgg":
        if weights is not None:
            raise UserInputError("model.weights applies to timm and torchvision architectures; the VGG trains from scratch.")
        return VGG(num_classes=num_classes, image_size=image_size, config=vgg)
    network = _build_library_model(arch, num_classes, backbone_kwargs or {})
    if weights is not None:
        pretrained.load_weights(network, weights)
    return network


def _build_library_model(arch: str, num_classes: int, backbone_kwargs: dict) -> nn.Module:
    if arch.startswith(TIMM_PREFIX):
        name = arch.removeprefix(TIMM_PREFIX)
        if not timm.is_model(name):
            raise UserInputError(f"Unknown model.arch {arch!r}: timm has no model {name!r} (list them with timm.list_models()).")
        try:
            return timm.create_model(name, pretrained=False, num_classes=num_classes, **backbone_kwargs)
        except TypeError as error:
            raise UserInputError(f"model.backbone_kwargs {backbone_kwargs} do not fit {arch!r}: {error}") from None
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise UserInputError(f"Unknown model.arch {arch!r}. Choose one of: {', '.join(available_archs())}.")
    if backbone_kwargs:
        raise UserInputError("model.backbone_kwargs applies to timm architectures only.")
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def default_normalization(arch: str, weights: str | None) -> tuple[tuple[float, ...], tuple[float, ...], int | None]:
    """The mean, std and input size the weights expect: a named set's own, else timm's pretrained
    config for a timm ``arch``, else ImageNet's statistics (and no preferred size)."""
    if weights in pretrained.NAMED_WEIGHTS:
        named = pretrained.NAMED_WEIGHTS[weights]
        return named.mean, named.std, named.input_size
    if arch.startswith(TIMM_PREFIX) and timm.is_model(arch.removeprefix(TIMM_PREFIX)):
        config = timm.models.get_pretrained_cfg(arch.removeprefix(TIMM_PREFIX))
        if config is not None:
            return tuple(config.mean), tuple(config.std), config.input_size[-1]
    return IMAGENET_MEAN, IMAGENET_STD, None


def classifier_head(network: nn.Module) -> nn.Module:
    """The layer mapping features to logits: what is new when fine-tuning; the rest is the backbone."""
    if hasattr(network, "get_classifier"):  # timm models
        return network.get_classifier()
    return [module for module in network.modules() if isinstance(module, nn.Linear)][-1]
