"""Which training photos look like another class than their folder says.

Every training photo gets class probabilities from a model that never saw it (out of fold: k
linear heads, each fitted on the other k-1 folds' frozen features), and cleanlab's confident
learning (``cleanlab.filter.find_label_issues``) picks the photos whose given label is unlikely
given how often the model confuses each pair of classes, ranked by their label quality (the
out-of-fold probability of the given label: lowest first).

Folds keep near-duplicate groups together (``StratifiedGroupKFold``): a copy of a photo in the
training folds would otherwise vouch for the photo's own label, or against it.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold

from gem_lightning.errors import UserInputError

HEAD_C = 1.0
"""Inverse L2 strength of the logistic-regression heads."""
FEATURE_SCALE = 10.0
"""Unit-length features are scaled to length 10 before the heads: on the gemstones photos (features
alone) C = 1 at length 10 gave the best out-of-fold log-loss of those tried (1.23; C = 0.3: 1.30,
C = 3: 1.23, length 1: 2.70), probabilities neither flattened by the penalty nor overconfident."""
COLOUR_WEIGHT = 0.5
"""The colour histogram's length beside the unit-length network features (0.5 and 1 were best of 0, 0.5, 1, 2)."""


def head_inputs(features: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """What the linear heads see: the network's features and, at ``COLOUR_WEIGHT``, the colour histogram."""
    return np.hstack([features, COLOUR_WEIGHT * colours]).astype(np.float32)


@dataclass(frozen=True)
class Suspect:
    """A training photo whose label looks wrong.

    Args:
        index: its row in the audit's training records.
        given: its class index as the folder says.
        suggested: the class the out-of-fold model finds most likely (other than ``given``).
        score: label quality, the out-of-fold probability of ``given`` (0 to 1; low is suspect).
    """

    index: int
    given: int
    suggested: int
    score: float


def check_folds(labels: np.ndarray, class_names: list[str], folds: int) -> None:
    """Refuse a fold count the smallest class cannot fill (each fold must hold one photo of every class)."""
    if folds < 2:
        raise UserInputError(f"--folds must be at least 2 (each photo is scored by a model fitted on the other folds), got {folds}.")
    counts = Counter(labels.tolist())
    smallest = min(range(len(class_names)), key=lambda label: counts[label])
    if counts[smallest] < folds:
        raise UserInputError(
            f"--folds {folds} is larger than the smallest class of train/: {class_names[smallest]!r} has {counts[smallest]} usable "
            f"photo(s); use --folds {max(2, counts[smallest])} or fewer, or add photos to that class."
        )


def out_of_fold_probabilities(
    features: np.ndarray, labels: np.ndarray, groups: np.ndarray, num_classes: int, *, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """``(N, num_classes)`` probabilities, each row from a head fitted without that photo's fold."""
    probabilities = np.zeros((len(labels), num_classes), dtype=np.float64)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a group too large for perfect stratification: the split is still valid
        warnings.simplefilter("ignore", UserWarning)
        splits = list(splitter.split(features, labels, groups))
    for train_index, held_out in splits:
        head = LogisticRegression(C=HEAD_C, max_iter=300)
        head.fit(features[train_index] * FEATURE_SCALE, labels[train_index])
        probabilities[np.ix_(held_out, head.classes_)] = head.predict_proba(features[held_out] * FEATURE_SCALE)
    return probabilities


def rank_label_issues(labels: np.ndarray, probabilities: np.ndarray) -> list[Suspect]:
    """cleanlab's label issues, most suspect first, each with the class the model suggests."""
    flagged = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(labels, probabilities, method="self_confidence")
    suspects = []
    for index in flagged:
        ranked = np.argsort(-probabilities[index])
        suggested = int(ranked[0] if ranked[0] != labels[index] else ranked[1])
        suspects.append(Suspect(int(index), int(labels[index]), suggested, float(quality[index])))
    return suspects
