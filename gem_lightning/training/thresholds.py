"""A decision threshold per label for multi-label models, tuned for F1 on the validation split.

A sigmoid's 0.5 is rarely the best cut: rare labels need lower thresholds, confusable ones higher.
Each label's threshold is the one that maximises its F1 on held-out photos; a label without a
positive photo there keeps 0.5.
"""

from __future__ import annotations

import torch

DEFAULT_THRESHOLD = 0.5


def f1_optimal_thresholds(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(C,)`` thresholds maximising each label's F1 over ``(N, C)`` probabilities and 0/1 targets.

    Predicting the label for the top ``k`` photos gives ``F1 = 2 TP_k / (k + P)``; the threshold is
    set midway between the ``k``-th and the next probability, so the same photos pass it.
    """
    probs, targets = probs.double(), targets.double()
    order = probs.argsort(dim=0, descending=True)
    ranked_probs, ranked_targets = probs.gather(0, order), targets.gather(0, order)
    true_positives = ranked_targets.cumsum(0)
    k = torch.arange(1, len(probs) + 1, dtype=torch.float64).unsqueeze(1)
    positives = targets.sum(0)
    f1 = 2 * true_positives / (k + positives)
    best = f1.argmax(dim=0)
    below = torch.cat([ranked_probs[1:], torch.zeros_like(ranked_probs[:1])]).gather(0, best.unsqueeze(0)).squeeze(0)
    at = ranked_probs.gather(0, best.unsqueeze(0)).squeeze(0)
    thresholds = ((at + below) / 2).float()
    return torch.where(positives > 0, thresholds, torch.full_like(thresholds, DEFAULT_THRESHOLD))


def label_sets(probs: torch.Tensor, thresholds: torch.Tensor) -> list[list[int]]:
    """Each image's labels at ``thresholds`` (``probs >= threshold``), most probable first."""
    sets = []
    for row in probs:
        chosen = (row >= thresholds.to(row.device)).nonzero().flatten()
        sets.append(chosen[row[chosen].argsort(descending=True)].tolist())
    return sets
