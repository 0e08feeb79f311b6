"""Calibrated probabilities: temperature scaling fitted on held-out photos, and how calibrated a model is.

A fine-tuned network's "91 %" is rarely right 91 % of the time. Temperature scaling (Guo et al.,
2017) divides the log-probabilities by one number ``T`` fitted to minimise the negative
log-likelihood of held-out photos: the ranking (hence accuracy) is unchanged, the confidence becomes
honest. The expected calibration error (ECE) measures the gap between confidence and accuracy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

from gem_lightning.training.metrics import ECE_BINS


def with_temperature(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(log(probs) / T)``: what a model with calibration temperature ``T`` answers."""
    return (probs.double().clamp_min(1e-12).log() / temperature).softmax(dim=-1).to(probs.dtype)


def fit_temperature(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """The temperature that minimises the negative log-likelihood of ``targets`` under ``probs``.

    Args:
        probs: ``(N, C)`` held-out class probabilities (as the model answers them).
        targets: ``(N,)`` true labels.
    """
    log_probs = probs.double().clamp_min(1e-12).log()
    log_temperature = torch.zeros((), dtype=torch.float64, requires_grad=True)  # T = exp(.) stays positive
    optimizer = torch.optim.LBFGS([log_temperature], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(log_probs / log_temperature.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(nll)
    return float(log_temperature.detach().exp())


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> float:
    """The mean gap between confidence and accuracy over confidence bins, weighted by bin size."""
    return float(multiclass_calibration_error(probs.float(), targets, num_classes=probs.shape[1], n_bins=bins, norm="l1"))
