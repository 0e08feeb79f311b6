"""What a network spec is: plain data that builds a classification network, stored in checkpoints.

``model.network`` names a spec with ``class_path`` (:class:`~gem_lightning.models.VGGSpec`,
:class:`~gem_lightning.models.TimmSpec`, :class:`~gem_lightning.models.TorchvisionSpec`, or a
user's own subclass). The module saves :meth:`NetworkSpec.to_config` in its hyperparameters, so a
checkpoint alone rebuilds the same network, with plain values only (it loads with ``weights_only``).
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from abc import ABC, abstractmethod
from typing import Any, NamedTuple

import torch
from torch import nn

from gem_lightning.errors import UserInputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 220
"""The side networks without a preferred input size train at: the seed notebook's."""


class Normalization(NamedTuple):
    """The input statistics a network expects (images scaled to [0, 1]) and its preferred image side."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = DEFAULT_IMAGE_SIZE


class NetworkSpec(ABC):
    """Plain data that builds a network mapping ``(B, 3, S, S)`` normalised floats to ``(B, C)`` logits.

    Subclasses are frozen dataclasses: their fields are the settings a config gives under
    ``model.network.init_args`` and what a checkpoint stores.
    """

    @abstractmethod
    def build(self, num_classes: int, image_size: int) -> nn.Module:
        """The network with fresh (random) weights; checkpoints and :meth:`load_pretrained` fill them."""

    def load_pretrained(self, network: nn.Module) -> None:
        """Initialise ``network`` from the pretrained weights the spec names, if any.

        Only a ``fit`` that starts from scratch calls it: a checkpoint holds its effect, so
        evaluating or predicting never needs the weights file.
        """
        return None  # no pretrained weights: the network keeps its fresh initialisation

    def normalization(self) -> Normalization:
        """The mean, std and input size the network's weights expect; ImageNet's statistics by default."""
        return Normalization()

    def input_size_fixed(self) -> str | None:
        """Why the network takes only the ``image_size`` it was built for (e.g. a head on the flattened
        feature map), or ``None`` if it takes any size, as progressive resizing needs."""
        return None

    def classifier(self, network: nn.Module) -> nn.Module:
        """The layer mapping features to logits: what is new when fine-tuning; the rest is the backbone."""
        return classifier_head(network)

    def cam_layer(self, network: nn.Module) -> nn.Module:
        """The layer whose activations class activation maps weigh (Grad-CAM, ``gem_lightning.reports.cam``):
        the last feature map before pooling, which still says where things are."""
        return feature_map_module(network)

    def to_config(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": {...}}`` with plain values, as a config would give it."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": _plain(dataclasses.asdict(self))}


def classifier_head(network: nn.Module) -> nn.Module:
    """timm's ``get_classifier()``, else the network's last ``nn.Linear``."""
    if hasattr(network, "get_classifier"):
        return network.get_classifier()
    return [module for module in network.modules() if isinstance(module, nn.Linear)][-1]


def feature_map_module(network: nn.Module, probe_size: int = 64) -> nn.Module:
    """The outermost module whose output is ``network.forward_features``' (timm's last feature map:
    EfficientNet's ``bn2``, ResNet's ``layer4``), found with one probe image in eval mode; the last
    ``nn.Conv2d`` for networks without ``forward_features``."""
    if not hasattr(network, "forward_features"):
        return [module for module in network.modules() if isinstance(module, nn.Conv2d)][-1]
    outputs: list[tuple[nn.Module, object]] = []
    hooks = [m.register_forward_hook(lambda module, _, out: outputs.append((module, out))) for m in network.modules() if m is not network]
    training = network.training
    try:
        with torch.no_grad():
            probe = torch.zeros(1, 3, probe_size, probe_size, device=next(network.parameters()).device)
            result = network.eval().forward_features(probe)
    finally:
        network.train(training)
        for hook in hooks:
            hook.remove()
    return [module for module, out in outputs if out is result][-1]  # hooks fire inner first: the last is outermost


def spec_from_config(config: dict[str, Any] | NetworkSpec) -> NetworkSpec:
    """The spec a ``to_config`` dict describes (or ``config`` itself when it is already a spec).

    Only classes of gem-lightning or of modules already imported are resolved, so a checkpoint
    cannot make this import code the user did not load.

    Raises:
        UserInputError: the class is unknown, not a :class:`NetworkSpec`, or its settings do not fit it.
    """
    if isinstance(config, NetworkSpec):
        return config
    class_path = str(config.get("class_path", ""))
    module_name, _, name = class_path.rpartition(".")
    if module_name.startswith("gem_lightning."):
        importlib.import_module(module_name)
    cls = getattr(sys.modules.get(module_name), name, None)
    if not (isinstance(cls, type) and issubclass(cls, NetworkSpec)):
        raise UserInputError(
            f"model.network: {class_path!r} is not a network spec that is loaded here (a subclass of "
            "gem_lightning.models.NetworkSpec): import the module that defines it first."
        )
    try:
        return cls(**dict(config.get("init_args") or {}))
    except TypeError as error:
        raise UserInputError(
            f"model.network: the settings {dict(config.get('init_args') or {})} do not fit {class_path}: {error}."
        ) from None


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: what YAML, JSON and ``weights_only`` checkpoints hold without tags."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
