"""Learning-rate schedules whose length follows the run (no step counts typed in YAML)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosineLR(LambdaLR):
    """Linear warmup from ``start_factor`` to the base LR, then cosine decay to ``final_factor``.

    Stepped every optimizer step. The total length comes from the trainer
    (``trainer.estimated_stepping_batches``) through :meth:`set_total_steps`, which the
    module calls, so the same config fits any dataset size, batch size or device count.
    With ``warmup_fraction`` around 0.3 this is the one-cycle shape.

    Args:
        optimizer: the optimizer whose learning rates are scheduled.
        warmup_fraction: share of all steps spent warming up.
        start_factor: LR at step 0, as a fraction of the base LR.
        final_factor: LR at the last step, as a fraction of the base LR.
    """

    steps_per_run = True

    def __init__(self, optimizer: Optimizer, warmup_fraction: float = 0.05, start_factor: float = 0.01, final_factor: float = 0.01) -> None:
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}.")
        self.warmup_fraction = warmup_fraction
        self.start_factor = start_factor
        self.final_factor = final_factor
        self.total_steps = 1
        super().__init__(optimizer, self.factor)

    def set_total_steps(self, total_steps: int) -> None:
        self.total_steps = max(1, int(total_steps))

    def factor(self, step: int) -> float:
        warmup = self.warmup_fraction * self.total_steps
        if step < warmup:
            return self.start_factor + (1.0 - self.start_factor) * step / warmup
        progress = min(1.0, (step - warmup) / max(1.0, self.total_steps - warmup))
        return self.final_factor + (1.0 - self.final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
