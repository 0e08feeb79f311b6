"""How unlike every class a photo is: four scores, their statistics, and the threshold for a false-rejection rate.

Every score is an "unknown-ness": higher means less like the training photos.

- ``msp``: one minus the maximum calibrated class probability (Hendrycks & Gimpel, 2017): the baseline.
- ``energy``: minus the log-sum-exp of the logits (Liu et al., 2020): the logits' scale, which
  softmax throws away, says how much of any class the network saw.
- ``mahalanobis``: the smallest Mahalanobis distance of the penultimate features (the classifier
  head's input) to a class mean, with one covariance shared by the classes (Lee et al., 2018),
  shrunk towards its mean variance so that it inverts with fewer photos than dimensions.
- ``knn``: one minus the cosine similarity of the normalised penultimate features to their k-th
  nearest training photo (Sun et al., 2022).

The class statistics (means and covariance, the bank of training features) come from the training
photos; the threshold from held-out photos: for a false-rejection rate ``r`` it is the
``ceil((n + 1) * (1 - r))``-th smallest of their ``n`` scores, so a photo exchangeable with them is
rejected with probability at most ``r`` (the conformal argument of :mod:`gem_lightning.training.conformal`).
"""

from __future__ import annotations

import torch

from gem_lightning.training.conformal import conformal_threshold

SCORES = ("msp", "energy", "mahalanobis", "knn")
NEEDS_LOGITS = {"energy"}
NEEDS_FEATURES = {"mahalanobis", "knn"}
SHRINKAGE = 0.1
"""Share of the shared covariance replaced by its mean variance times the identity."""
KNN_K = 5
KNN_BANK = 20_000
"""Most training photos whose features the ``knn`` score keeps (a seeded sample beyond: 2.5 KB a photo for 1280 features)."""


def msp_score(probs: torch.Tensor) -> torch.Tensor:
    return 1 - probs.float().max(dim=1).values


def energy_score(logits: torch.Tensor) -> torch.Tensor:
    return -torch.logsumexp(logits.float(), dim=1)


def fit_mahalanobis(features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Class means and the whitening matrix of the shared, shrunk covariance, in whitened coordinates
    (``means``: ``(C, d)``, ``whiten``: ``(d, d)``): the score is then a squared Euclidean distance."""
    features = features.double()
    present = torch.unique(labels)
    means = torch.stack([features[labels == c].mean(0) for c in present.tolist()])
    centred = features - means[torch.searchsorted(present, labels)]
    covariance = centred.T @ centred / max(1, len(features) - len(present))
    covariance = (1 - SHRINKAGE) * covariance + SHRINKAGE * covariance.diagonal().mean() * torch.eye(len(covariance), dtype=torch.float64)
    values, vectors = torch.linalg.eigh(covariance)
    whiten = (vectors * values.clamp_min(1e-12).rsqrt()).T
    return {"means": (means @ whiten.T).float(), "whiten": whiten.float()}


def mahalanobis_score(features: torch.Tensor, statistics: dict[str, torch.Tensor]) -> torch.Tensor:
    whitened = features.float() @ statistics["whiten"].T
    return torch.cdist(whitened, statistics["means"]).min(dim=1).values.square()


def fit_knn(features: torch.Tensor, k: int = KNN_K, bank: int = KNN_BANK, seed: int = 0) -> dict[str, torch.Tensor]:
    """The normalised features of at most ``bank`` training photos (float16), and ``k``."""
    if len(features) > bank:
        features = features[torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))[:bank]]
    return {"bank": torch.nn.functional.normalize(features.float(), dim=1).half(), "k": torch.tensor(min(k, len(features)))}


def knn_score(features: torch.Tensor, statistics: dict[str, torch.Tensor], chunk: int = 4096) -> torch.Tensor:
    queries = torch.nn.functional.normalize(features.float(), dim=1)
    k = int(statistics["k"])
    similarities = torch.cat([queries @ part.float().T for part in statistics["bank"].split(chunk)], dim=1)
    return 1 - similarities.topk(k, dim=1).values[:, -1]


def unknown_scores(
    kinds: tuple[str, ...], statistics: dict, probs: torch.Tensor, logits: torch.Tensor | None, features: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """Each score of ``kinds`` for a batch: ``probs`` calibrated, ``logits`` and ``features`` where the kind needs them."""
    computed = {}
    for kind in kinds:
        if kind == "msp":
            computed[kind] = msp_score(probs)
        elif kind == "energy":
            computed[kind] = energy_score(logits)
        elif kind == "mahalanobis":
            computed[kind] = mahalanobis_score(features, statistics["mahalanobis"])
        else:
            computed[kind] = knn_score(features, statistics["knn"])
    return computed


def rejection_threshold(held_out: torch.Tensor, rate: float) -> float:
    """The score above which a photo is answered ``unknown`` so that at most ``rate`` of photos like the
    ``held_out`` ones are (``inf``: too few held-out photos to promise ``rate``; nothing is rejected)."""
    return conformal_threshold(held_out, 1 - rate)
