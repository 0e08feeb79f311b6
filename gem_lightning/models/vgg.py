"""The seed notebook's VGG-style CNN, built from a table of blocks.

Each block is ``conv 3x3 (same padding) -> [batch norm] -> ReLU -> pool``; the head is either the
seed's ``flatten -> dropout -> dense -> ReLU -> dense`` or a global-average-pooling head.
The flatten size is derived from the input size, so any ``image_size`` from 32 px up works.
:class:`VGGSpec` is the table (``model.network``, the default); :class:`VGG` the network it builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from gem_lightning.errors import UserInputError
from gem_lightning.models.spec import NetworkSpec

PoolKind = Literal["max", "avg", "none"]
HeadKind = Literal["flatten", "gap"]


@dataclass(frozen=True)
class VGGSpec(NetworkSpec):
    """The VGG-style network, trained from scratch; the defaults are the seed notebook's.

    Args:
        channels: output channels of each 3x3 conv block.
        pools: pooling after each block (2x2, stride 2): ``max``, ``avg`` or ``none``.
        convs_per_block: 3x3 convs stacked in each block (the seed has one): one number for every
            block, or one per block, e.g. VGG-11's ``(1, 1, 2, 2, 2)``.
        batch_norm: batch norm after each conv (the seed has none).
        head: ``flatten`` (the seed's dense head on the flattened map) or ``gap``
            (global average pooling, independent of the input size).
        hidden_units: width of the hidden dense layer; 0 goes straight to the classifier.
        dropout: dropout before the dense layers.
    """

    channels: tuple[int, ...] = (32, 64, 128, 128, 128)
    pools: tuple[PoolKind, ...] = ("max", "max", "max", "avg", "max")
    convs_per_block: int | tuple[int, ...] = 1
    batch_norm: bool = False
    head: HeadKind = "flatten"
    hidden_units: int = 256
    dropout: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "pools", tuple(self.pools))
        if len(self.channels) != len(self.pools):
            raise UserInputError(
                f"model.network: `channels` has {len(self.channels)} blocks but `pools` has "
                f"{len(self.pools)}; give one pool kind per block."
            )
        if not self.channels:
            raise UserInputError("model.network: `channels` must list at least one block.")
        blocks = self.convs_per_block
        object.__setattr__(self, "convs_per_block", (blocks,) * len(self.channels) if isinstance(blocks, int) else tuple(blocks))
        if len(self.convs_per_block) != len(self.channels):
            raise UserInputError(
                f"model.network: `convs_per_block` has {len(self.convs_per_block)} entries but `channels` has "
                f"{len(self.channels)} blocks; give one number, or one per block."
            )
        if min(self.convs_per_block) < 1:
            raise UserInputError(f"model.network: `convs_per_block` must be >= 1 in every block, got {list(self.convs_per_block)}.")
        if not 0.0 <= self.dropout < 1.0:
            raise UserInputError(f"model.network: `dropout` must be at least 0 and below 1, got {self.dropout}.")

    def build(self, num_classes: int, image_size: int) -> nn.Module:
        return VGG(num_classes=num_classes, image_size=image_size, config=self)

    def input_size_fixed(self) -> str | None:
        return "its `head: flatten` takes only the feature map of data.image_size (use `head: gap`)" if self.head == "flatten" else None

    def cam_layer(self, network: nn.Module) -> nn.Module:
        """The last block's ReLU, before its pooling: the finest map that has seen the whole network."""
        return [module for module in network.features if isinstance(module, nn.ReLU)][-1]


def _pool(kind: PoolKind) -> nn.Module:
    if kind == "max":
        return nn.MaxPool2d(2)
    if kind == "avg":
        return nn.AvgPool2d(2)
    if kind == "none":
        return nn.Identity()
    raise UserInputError(f"Unknown pool kind {kind!r}; expected 'max', 'avg' or 'none'.")


def _feature_size(size: int, pools: tuple[PoolKind, ...]) -> int:
    for kind in pools:
        if kind != "none":
            size //= 2
    return size


class VGG(nn.Module):
    """A VGG-style classifier: ``features`` (conv blocks) then ``head`` (classifier).

    Args:
        num_classes: number of output logits.
        image_size: side of the square input; sets the flatten size of the ``flatten`` head.
        config: the architecture table.
    """

    def __init__(self, *, num_classes: int, image_size: int, config: VGGSpec = VGGSpec()) -> None:
        super().__init__()
        final_size = _feature_size(image_size, config.pools)
        if final_size < 1:
            raise UserInputError(
                f"image_size={image_size} is too small for {len(config.pools)} pooling blocks: the "
                f"feature map would vanish. Use image_size >= {2 ** sum(p != 'none' for p in config.pools)}."
            )
        self.config = config
        self.features = self._make_features(config)
        self.head = self._make_head(config, num_classes, final_size)

    @staticmethod
    def _make_features(config: VGGSpec) -> nn.Sequential:
        layers: list[nn.Module] = []
        in_channels = 3
        for out_channels, pool, convs in zip(config.channels, config.pools, config.convs_per_block):
            for _ in range(convs):
                layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not config.batch_norm))
                if config.batch_norm:
                    layers.append(nn.BatchNorm2d(out_channels))
                layers.append(nn.ReLU(inplace=True))
                in_channels = out_channels
            layers.append(_pool(pool))
        return nn.Sequential(*layers)

    @staticmethod
    def _make_head(config: VGGSpec, num_classes: int, final_size: int) -> nn.Sequential:
        channels = config.channels[-1]
        if config.head == "gap":
            layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            in_features = channels
        elif config.head == "flatten":
            layers = [nn.Flatten()]
            in_features = channels * final_size * final_size
        else:
            raise UserInputError(f"Unknown head {config.head!r}; expected 'flatten' or 'gap'.")
        layers.append(nn.Dropout(config.dropout))
        if config.hidden_units:
            layers += [nn.Linear(in_features, config.hidden_units), nn.ReLU(inplace=True)]
            in_features = config.hidden_units
        layers.append(nn.Linear(in_features, num_classes))
        return nn.Sequential(*layers)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)  # (B, 3, S, S) -> (B, C, s, s)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)  # (B, C, s, s) -> (B, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))
