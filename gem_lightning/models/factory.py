"""Build the classification network a config names: the VGG-style CNN or a torchvision model."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from gem_lightning.errors import UserInputError
from gem_lightning.models.vgg import VGG, VGGConfig


def available_archs() -> list[str]:
    return ["vgg", *sorted(torchvision.models.list_models(module=torchvision.models))]


def build_network(arch: str, *, num_classes: int, image_size: int, vgg: VGGConfig, weights: str | None = None) -> nn.Module:
    """A network mapping ``(B, 3, image_size, image_size)`` floats to ``(B, num_classes)`` logits.

    Args:
        arch: ``vgg`` (ours, configured by ``vgg``) or a torchvision classification model name.
        weights: for torchvision models, a local ``state_dict`` file, or a torchvision weights name
            (e.g. ``IMAGENET1K_V1``) that torchvision downloads; the classifier is replaced to
            fit ``num_classes``. ``None`` trains from scratch.
    """
    if arch == "vgg":
        if weights is not None:
            raise UserInputError("model.weights applies to torchvision architectures; the VGG trains from scratch.")
        return VGG(num_classes=num_classes, image_size=image_size, config=vgg)
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise UserInputError(f"Unknown model.arch {arch!r}. Choose one of: {', '.join(available_archs())}.")
    if weights is None:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if Path(weights).expanduser().is_file():
        return _load_weights_file(arch, Path(weights).expanduser(), num_classes)
    network = torchvision.models.get_model(arch, weights=weights)
    replace_classifier(network, num_classes)
    return network


def _load_weights_file(arch: str, path: Path, num_classes: int) -> nn.Module:
    """Load a local state dict; tensors whose shape does not fit (the old classifier) are left fresh."""
    network = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = network.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise UserInputError(f"Weights file {str(path)!r} does not fit model.arch {arch!r}: unexpected keys {unknown[:5]}...")
    fitting = {k: v for k, v in state.items() if v.shape == own[k].shape}
    network.load_state_dict(fitting, strict=False)
    return network


def replace_classifier(network: nn.Module, num_classes: int) -> None:
    """Swap the network's last linear layer for a fresh one with ``num_classes`` outputs."""
    name, layer = [(n, m) for n, m in network.named_modules() if isinstance(m, nn.Linear)][-1]
    parent = network.get_submodule(name.rpartition(".")[0]) if "." in name else network
    setattr(parent, name.rpartition(".")[2], nn.Linear(layer.in_features, num_classes))
