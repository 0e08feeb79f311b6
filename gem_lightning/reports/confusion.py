"""Numbers read off a confusion matrix: normalisation, class clusters, per-class metrics, worst pairs.

Pure numpy, nothing drawn or written, so the figures, the CSV table and the Markdown report all
share one definition of every number (and tests can check them against torchmetrics).

Conventions
-----------
* A confusion matrix is a ``C x C`` array of counts, rows = true class,
  columns = predicted class.
* Metrics follow torchmetrics' ``zero_division=0``: a ratio whose denominator is
  zero is reported as ``0.0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def check_confusion(confusion: np.ndarray) -> np.ndarray:
    """Validate a square, non-negative confusion matrix and return it as float64."""
    cm = np.asarray(confusion, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion must be a square 2-D array, got shape {cm.shape}")
    if cm.size and (not np.all(np.isfinite(cm)) or cm.min() < 0):
        raise ValueError("confusion must contain finite, non-negative counts")
    return cm


def check_names(cm: np.ndarray, class_names: Sequence[str]) -> list[str]:
    """Ensure there is exactly one name per confusion-matrix row; return them as strings."""
    names = [str(n) for n in class_names]
    if len(names) != cm.shape[0]:
        raise ValueError(f"{len(names)} class names given for a {cm.shape[0]}x{cm.shape[0]} confusion matrix")
    return names


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Element-wise ``num / den`` with 0.0 where ``den == 0`` (zero_division=0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def row_normalise(confusion: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the recall view); all-zero rows stay zero."""
    cm = check_confusion(confusion)
    return _safe_div(cm, cm.sum(axis=1, keepdims=True))


# --------------------------------------------------------------------------- #
# Ordering classes so that mutually confused ones sit together
# --------------------------------------------------------------------------- #
def confusion_similarity(confusion: np.ndarray) -> np.ndarray:
    """Symmetric class similarity: mean of the two row-normalised confusion rates.

    ``S[i, j] = (P(pred=j | true=i) + P(pred=i | true=j)) / 2`` with a zero
    diagonal. Row normalisation stops big classes from dominating the ordering.
    """
    norm = row_normalise(confusion)
    sim = (norm + norm.T) / 2.0
    np.fill_diagonal(sim, 0.0)
    return sim


def confusion_clusters(confusion: np.ndarray) -> list[list[int]]:
    """Groups of mutually confused classes, each in a chain-friendly order.

    Average-linkage agglomerative clustering on :func:`confusion_similarity`,
    numpy only. Merging stops when no two groups share any confusion, so each
    group is a connected set of confused classes and never-confused classes stay
    singletons. When two groups merge, the orientation (A+B, A+rev B, rev A+B,
    B+A) that puts the two most similar endpoints next to each other wins, so
    chains like a<->b<->c come out as a, b, c. Groups are returned sorted by
    their smallest class index, which keeps the original (usually alphabetical)
    order wherever there is nothing to group.
    """
    sim = confusion_similarity(confusion)
    n = sim.shape[0]
    groups: list[list[int] | None] = [[i] for i in range(n)]
    link = sim.copy()  # link[a, b] = sum of similarities between groups a and b
    sizes = np.ones(n, dtype=np.float64)
    active = np.ones(n, dtype=bool)
    for _ in range(max(0, n - 1)):
        a, b, similarity = _most_similar_groups(link, sizes, active)
        if similarity <= 0.0:
            break
        groups[a] = _join_chains(groups[a], groups[b], sim)  # type: ignore[arg-type]
        groups[b] = None
        link[a, :] += link[b, :]
        link[:, a] += link[:, b]
        sizes[a] += sizes[b]
        active[b] = False
    found = [g for g in groups if g is not None]
    return sorted(found, key=min)


def _most_similar_groups(link: np.ndarray, sizes: np.ndarray, active: np.ndarray) -> tuple[int, int, float]:
    """The two active groups with the highest average similarity (lower index first) and that similarity."""
    avg = link / np.outer(sizes, sizes)
    avg[~active, :] = -1.0
    avg[:, ~active] = -1.0
    np.fill_diagonal(avg, -1.0)
    a, b = np.unravel_index(int(np.argmax(avg)), avg.shape)
    return int(min(a, b)), int(max(a, b)), float(avg[a, b])


def _join_chains(first: list[int], second: list[int], sim: np.ndarray) -> list[int]:
    """Concatenate two ordered groups in the orientation with the closest seam."""
    # (left part, right part): the seam is between left[-1] and right[0].
    candidates = [
        (first, second),
        (first, second[::-1]),
        (first[::-1], second),
        (second, first),
    ]
    seams = [sim[left[-1], right[0]] for left, right in candidates]
    left, right = candidates[int(np.argmax(seams))]
    return left + right


def cluster_order(confusion: np.ndarray) -> np.ndarray:
    """Permutation of class indices that puts mutually confused classes side by side."""
    cm = check_confusion(confusion)
    if cm.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return np.asarray([i for g in confusion_clusters(cm) for i in g], dtype=np.int64)


# --------------------------------------------------------------------------- #
# Per-class metrics and confused pairs
# --------------------------------------------------------------------------- #
def per_class_metrics(confusion: np.ndarray, class_names: Sequence[str] | None = None) -> list[dict]:
    """Precision, recall, F1 and support for every class.

    Matches torchmetrics' multiclass metrics with ``average=None`` and
    ``zero_division=0``: precision is 0.0 for a class that is never predicted,
    recall is 0.0 for a class with no samples, F1 is 0.0 when both are 0.
    ``class`` is the class name when ``class_names`` is given, else the index.
    """
    cm = check_confusion(confusion)
    labels: Sequence = check_names(cm, class_names) if class_names is not None else range(len(cm))
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2.0 * tp, predicted + support)  # == 2PR/(P+R), zero-safe
    return [
        {
            "class": label,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(round(support[i])),
        }
        for i, label in enumerate(labels)
    ]


def most_confused_pairs(confusion: np.ndarray, class_names: list[str], k: int = 15) -> list[tuple[str, str, int, float]]:
    """The ``k`` largest off-diagonal cells as (true, predicted, count, fraction).

    ``fraction`` is the share of the true class sent to the predicted class.
    Sorted by count, then fraction (both descending), then names for stability;
    cells with a zero count are never returned.
    """
    cm = check_confusion(confusion)
    names = check_names(cm, class_names)
    norm = row_normalise(cm)
    true_idx, pred_idx = np.nonzero(cm)
    pairs = [(names[t], names[p], int(round(cm[t, p])), float(norm[t, p])) for t, p in zip(true_idx.tolist(), pred_idx.tolist()) if t != p]
    pairs.sort(key=lambda r: (-r[2], -r[3], r[0], r[1]))
    return pairs[: max(0, k)]
