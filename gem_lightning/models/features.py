"""The penultimate features and logits of a network as it classifies: what the "unknown" scores measure.

A forward hook on the classifier head (``NetworkSpec.classifier``) keeps its input (the features)
and output (the logits) on every forward pass, so they come from the very pass that answers the
probabilities: nothing runs twice. Test-time augmentation's views are averaged, as their
probabilities are.
"""

from __future__ import annotations

import torch
from torch import nn

from gem_lightning.models.classifier import TTA, tta_views
from gem_lightning.models.spec import NetworkSpec


def view_count(tta: TTA) -> int:
    """How many forward passes test-time augmentation ``tta`` makes per batch."""
    return len(tta_views(torch.empty(0, 3, 1, 1), tta))


class PenultimateTap:
    """Keeps the head's input and output of each forward pass of ``network`` until :meth:`take`.

    Args:
        spec: the network's spec, which knows its head.
        network: the network (``ImageClassifier.network``).

    Raises:
        UserInputError: the spec has no head of its own (an ensemble).
    """

    def __init__(self, spec: NetworkSpec, network: nn.Module) -> None:
        self.views: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.handle = spec.classifier(network).register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self.views.append((inputs[0].detach().flatten(1).float(), output.detach().float()))

    def take(self, views: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, d)`` features and ``(B, C)`` logits averaged over the last ``views`` forward passes (the
        views of one test-time augmented batch); forgets every pass kept so far (a Grad-CAM pass, say)."""
        if len(self.views) < views:
            raise RuntimeError(f"the network ran {len(self.views)} time(s) since the last take(), not {views}")
        features, logits = (torch.stack(kept).mean(0) for kept in zip(*self.views[-views:]))
        self.views = []
        return features, logits

    def close(self) -> None:
        self.handle.remove()
        self.views = []
