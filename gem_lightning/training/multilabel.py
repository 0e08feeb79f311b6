"""What a multi-label model adds to the module: its loss, its per-label thresholds and its metrics.

Each class is a yes/no question (a sigmoid each, binary cross-entropy); a photo's answer is the set
of labels whose probability reaches that label's threshold, tuned for F1 on the validation split
at the end of each validation during ``fit`` and stored in the checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from gem_lightning.training.metrics import multilabel_decision_metrics, multilabel_ranking_metrics
from gem_lightning.training.thresholds import DEFAULT_THRESHOLD, f1_optimal_thresholds


class MultilabelObjective(nn.Module):
    """The thresholds (a buffer: saved in checkpoints), the metrics per stage and the held-out
    probabilities the thresholds are tuned on.

    Args:
        num_labels: how many classes (labels) there are.
    """

    def __init__(self, num_labels: int) -> None:
        super().__init__()
        self.register_buffer("thresholds", torch.full((num_labels,), DEFAULT_THRESHOLD))
        self.train_metrics = multilabel_decision_metrics(num_labels, "train/")
        self.ranking = nn.ModuleDict({stage: multilabel_ranking_metrics(num_labels, f"{stage}/") for stage in ("val", "test")})
        self.decisions = nn.ModuleDict({stage: multilabel_decision_metrics(num_labels, f"{stage}/") for stage in ("val", "test")})
        self.losses = nn.ModuleDict({stage: MeanMetric() for stage in ("val", "test")})
        self.held_out: list[tuple[torch.Tensor, torch.Tensor]] = []

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float())

    def decide(self, probs: torch.Tensor) -> torch.Tensor:
        """0/1 answers at the stored thresholds."""
        return (probs >= self.thresholds).int()

    def update(self, stage: str, probs: torch.Tensor, targets: torch.Tensor, *, keep: bool) -> None:
        """Add a batch of evaluation probabilities; ``keep`` them for tuning the thresholds."""
        targets = targets.int()
        self.ranking[stage].update(probs, targets)
        self.decisions[stage].update(self.decide(probs), targets)
        self.losses[stage].update(F.binary_cross_entropy(probs.clamp(1e-7, 1 - 1e-7), targets.float(), reduction="none").mean(1))
        if keep:
            self.held_out.append((probs.detach().cpu(), targets.cpu()))

    def tune_thresholds(self) -> None:
        """Set each label's threshold for the best F1 on the kept probabilities of every process."""
        if not self.held_out:
            return
        probs, targets = (torch.cat(parts) for parts in zip(*self.held_out))
        self.held_out.clear()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            shares: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(shares, (probs, targets))
            probs, targets = (torch.cat(parts) for parts in zip(*shares))
        self.thresholds.copy_(f1_optimal_thresholds(probs, targets).to(self.thresholds.device))
