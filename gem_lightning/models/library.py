"""Networks from the libraries of the field: any timm model (:class:`TimmSpec`) or torchvision model
(:class:`TorchvisionSpec`), built with a classifier sized to the data's classes.

Pretrained weights come from local files or packages that ship them (``gem_lightning.models.pretrained``),
or from the libraries' own zoos through their caches (``gem_lightning.models.zoo``: timm's through the
Hugging Face Hub, torchvision's weights enums); a fit from scratch reads them, the checkpoint holds them after.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import timm
import torchvision
from torch import nn

from gem_lightning.errors import UserInputError
from gem_lightning.models import pretrained, zoo
from gem_lightning.models.spec import NetworkSpec, Normalization


@dataclass(frozen=True)
class TimmSpec(NetworkSpec):
    """A timm classification model.

    Args:
        name: the timm model name, e.g. ``tf_efficientnet_lite0`` (``timm.list_models()``), with a
            weights tag to pick timm's pretrained set, e.g. ``convnext_tiny.fb_in22k`` (``timm.list_pretrained()``).
        weights: pretrained weights: ``pretrained`` (timm's, for the tag in ``name`` or its default
            one, through the Hugging Face Hub's cache), ``hf-hub:<org>/<repo>`` (a Hub repo of timm
            weights for ``name``'s architecture), a local state-dict file (``.pth``, ``.pt``, ``.bin``,
            ``.safetensors``) or ``efficientnet-lite0``, ``-lite1``, ``-lite2`` (shipped by the
            ``pretrained`` extra, for ``tf_efficientnet_lite0``, ``1``, ``2``). Read only when ``fit`` starts from scratch; default: none.
        kwargs: extra ``timm.create_model`` arguments, e.g. ``{drop_rate: 0.2, drop_path_rate: 0.1}``.
        frozen_stages: the stem and this many stages after it stay frozen for the whole run,
            batch-norm statistics included (the classifier and later stages train).
    """

    name: str = "tf_efficientnet_lite0"
    weights: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    frozen_stages: int = 0

    def __post_init__(self) -> None:
        if not timm.is_model(self.name):
            raise UserInputError(f"model.network: timm has no model {self.name!r} (list them with timm.list_models()).")
        named = pretrained.NAMED_WEIGHTS.get(self.weights)
        if named is not None and named.arch != self.name:
            raise UserInputError(f"model.network.weights {self.weights!r} fit model.network.name {named.arch!r}, not {self.name!r}.")
        zoo.check_timm_weights(self.name, self.weights)
        object.__setattr__(self, "kwargs", dict(self.kwargs or {}))

    def build(self, num_classes: int, image_size: int) -> nn.Module:
        try:
            network = timm.create_model(self.name, pretrained=False, num_classes=num_classes, **self.kwargs)
        except TypeError as error:
            raise UserInputError(f"model.network.kwargs {self.kwargs} do not fit timm's {self.name!r}: {error}") from None
        if self.frozen_stages:
            freeze_stages(network, self.frozen_stages)
        return network

    def load_pretrained(self, network: nn.Module) -> None:
        if zoo.is_timm_zoo(self.weights):
            pretrained.load_state(network, *zoo.timm_state_dict(self.name, self.weights, self.kwargs))
        elif self.weights is not None:
            pretrained.load_weights(network, self.weights)

    def normalization(self) -> Normalization:
        """The named weights' own statistics, else the pretrained config of the weights (a Hub repo's,
        or timm's for the model and its tag)."""
        if self.weights in pretrained.NAMED_WEIGHTS:
            named = pretrained.NAMED_WEIGHTS[self.weights]
            return Normalization(named.mean, named.std, named.input_size)
        config = zoo.timm_pretrained_cfg(self.name, self.weights)
        if config is None:
            return Normalization()
        return Normalization(tuple(config["mean"]), tuple(config["std"]), config["input_size"][-1])


def freeze_stages(network: nn.Module, stages: int) -> None:
    """Freezes the stem and the first ``stages`` stages of a timm model (timm's coarse parameter
    groups), their batch-norm statistics included (``timm.utils.freeze``).

    Early layers compute generic edges and textures that a small dataset cannot improve, and
    leaving them out of the backward pass makes each training step cheaper.
    """
    groups = timm.models.group_modules(network, network.group_matcher(coarse=True))
    head_group = max(groups)
    if not 0 <= stages < head_group:
        raise UserInputError(
            f"model.network.frozen_stages must be between 0 and {head_group - 1} for this model (its stages before the head), got {stages}."
        )
    names = [name for group, modules in groups.items() if group <= stages for name in modules]
    timm.utils.freeze(network, names)


@dataclass(frozen=True)
class TorchvisionSpec(NetworkSpec):
    """A torchvision classification model.

    Args:
        name: the model name, e.g. ``resnet18`` (``torchvision.models.list_models()``).
        weights: pretrained weights: torchvision's, by the weights enum's name (e.g.
            ``ResNet50_Weights.IMAGENET1K_V2``, loaded by torchvision through torch's cache,
            ``$TORCH_HOME/hub/checkpoints``), or a local state-dict file; read only when ``fit`` starts from scratch.
    """

    name: str = "resnet18"
    weights: str | None = None

    def __post_init__(self) -> None:
        known = torchvision.models.list_models(module=torchvision.models)
        if self.name not in known:
            raise UserInputError(
                f"model.network: torchvision has no classification model {self.name!r}. Choose one of: {', '.join(known)}."
            )
        zoo.torchvision_weights(self.name, self.weights)  # an enum name that does not fit: one line now

    def build(self, num_classes: int, image_size: int) -> nn.Module:
        return torchvision.models.get_model(self.name, weights=None, num_classes=num_classes)

    def load_pretrained(self, network: nn.Module) -> None:
        enum = zoo.torchvision_weights(self.name, self.weights)
        if enum is not None:
            pretrained.load_state(network, zoo.torchvision_state_dict(enum), f"torchvision {self.weights} ({enum.url})")
        elif self.weights is not None:
            pretrained.load_weights(network, self.weights)

    def normalization(self) -> Normalization:
        """The statistics and crop size of torchvision's weights (their ``transforms()``), else ImageNet's."""
        enum = zoo.torchvision_weights(self.name, self.weights)
        if enum is None:
            return Normalization()
        preset = enum.transforms()
        return Normalization(tuple(preset.mean), tuple(preset.std), int(preset.crop_size[0]))
