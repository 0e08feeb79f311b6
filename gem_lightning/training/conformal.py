"""Prediction sets that hold the true class with a chosen probability: split-conformal RAPS, deterministic.

The score of a photo and a class is the probability mass of the classes ranked above it, plus
``lam * max(0, rank - k_reg)`` (RAPS, Angelopoulos et al. 2021: the penalty keeps the long tail of
unlikely classes out of the sets; ``lam = 0`` is APS, Romano et al. 2020). On ``n`` held-out photos
the threshold ``q`` is the ``ceil((n + 1) * coverage)``-th smallest score of their true class; a new
photo's set is every class whose score is at most ``q``: the top classes until their mass passes
``q``. For a photo exchangeable with the held-out ones, the set then holds its true class with
probability at least ``coverage`` (and at most ``coverage + 1 / (n + 1)`` where scores do not tie).

The scores here are deterministic (the "u = 0" form of the randomised score, the mass strictly above
the class): the same photo always gets the same set, and the top class is always in it. Where the top
class alone is right more often than promised, the set is that class, and coverage is the accuracy.

Each held-out photo's mass above its true class and the true class's rank are kept in the checkpoint,
so any coverage (and penalty) is answered later without the photos.

Why not a library: TorchCP (1.2) needs transformers, torch_geometric and torchsort for these lines,
and its non-randomised APS score includes the class's own mass, so its sets can be empty; MAPIE
(1.6) works on a scikit-learn estimator (a wrapper around stored probabilities) and keeps one fitted
threshold per confidence level in a Python object, which a weights-only checkpoint cannot hold:
answering another coverage later means keeping every held-out photo's probabilities and adding
scikit-learn and SciPy to ``predict`` and ``serve``; crepes has no APS or RAPS score. Tried in
``docs/answers.md``.
"""

from __future__ import annotations

import math

import torch


def true_class_standing(probs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each photo's probability mass strictly above its true class, and that class's rank (1 = top).

    Args:
        probs: ``(N, C)`` calibrated class probabilities.
        targets: ``(N,)`` true labels.
    """
    probs = probs.double()
    own = probs.gather(1, targets.view(-1, 1))
    above = probs > own
    return (probs * above).sum(1).float(), above.sum(1) + 1


def raps_scores(mass_above: torch.Tensor, rank: torch.Tensor, lam: float, k_reg: int) -> torch.Tensor:
    """The RAPS score of each photo's true class (``mass_above`` and ``rank`` as :func:`true_class_standing` gives)."""
    return mass_above.double() + lam * (rank - k_reg).clamp_min(0).double()


def conformal_threshold(scores: torch.Tensor, coverage: float) -> float:
    """The ``ceil((n + 1) * coverage)``-th smallest of ``n`` held-out scores; ``inf`` (every class)
    when there are too few photos to promise ``coverage``."""
    position = math.ceil((len(scores) + 1) * coverage)
    if position > len(scores):
        return math.inf
    return float(scores.double().sort().values[position - 1])


def prediction_sets(probs: torch.Tensor, threshold: float, lam: float, k_reg: int) -> list[list[int]]:
    """Each photo's set: the labels, most probable first, whose RAPS score is at most ``threshold``."""
    ordered, labels = probs.double().sort(dim=1, descending=True)
    ranks = torch.arange(1, probs.shape[1] + 1, dtype=torch.float64)
    scores = (ordered.cumsum(1) - ordered) + lam * (ranks - k_reg).clamp_min(0)
    sizes = (scores <= threshold).sum(1).clamp_min(1)  # the top class has score 0
    return [row[:size].tolist() for row, size in zip(labels, sizes.tolist())]


# Several labels a photo ------------------------------------------------------------------------------
# The promise of a multi-label set is about a photo's labels, not one class: conformal risk control
# (Angelopoulos et al. 2022) of the share of a photo's true labels its set misses. A photo's set is
# every label whose probability is at least a threshold; on ``n`` held-out photos the threshold is the
# highest at which their mean missed share, ``R``, keeps ``n / (n + 1) * R + 1 / (n + 1) <= 1 - coverage``.
# For a photo exchangeable with them, the set then holds on average at least ``coverage`` of its true
# labels (the expected false-negative rate is at most ``1 - coverage``).


def true_label_probs(probs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The probabilities of each photo's true labels, one after the other, and how many each photo has.

    Args:
        probs: ``(N, C)`` label probabilities.
        targets: ``(N, C)`` multi-hot true labels.
    """
    truth = targets.bool()
    return probs.float()[truth], truth.sum(1)


def label_coverage_threshold(probs: torch.Tensor, counts: torch.Tensor, coverage: float) -> float:
    """The highest probability threshold whose sets keep the promise on the held-out photos
    (``probs`` and ``counts`` as :func:`true_label_probs` gives); 0 (every label) when they are too few."""
    n = len(counts)
    weights = (1 / counts.clamp_min(1).double()).repeat_interleave(counts) / n  # each photo's missed share weighs 1 / n
    order = probs.double().argsort()
    ordered, weights = probs.double()[order], weights[order]
    missed_below = weights.cumsum(0) - weights  # the mean missed share when the threshold is that label's probability
    keeps = n / (n + 1) * missed_below + 1 / (n + 1) <= 1 - coverage
    return float(ordered[keeps.nonzero().max()]) if keeps.any() else 0.0


def labels_above(probs: torch.Tensor, threshold: float) -> list[list[int]]:
    """Each photo's set: the labels whose probability is at least ``threshold``, most probable first."""
    ordered, labels = probs.double().sort(dim=1, descending=True)
    return [row[:size].tolist() for row, size in zip(labels, (ordered >= threshold).sum(1).tolist())]
