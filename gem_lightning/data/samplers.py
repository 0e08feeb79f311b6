"""The training sampler under DDP: shuffles for the epoch the trainer is about to run."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch.utils.data import Dataset, DistributedSampler


class FitEpochDistributedSampler(DistributedSampler):
    """``DistributedSampler`` whose epoch is the trainer's whenever an iterator is made.

    Lightning 2.6 calls ``set_epoch`` after ``FitLoop.setup_data`` has created the first iterator,
    and a loader with workers draws its indices as that iterator is created. So a run resumed
    from an epoch-boundary checkpoint trained its first epoch in epoch 0's order, and its weights
    left the uninterrupted run's (Lightning-AI/pytorch-lightning#21938). Taking the epoch from the
    fit loop at that moment gives the value Lightning sets a moment later.

    Args:
        epoch: the epoch the fit loop is about to run, read when an iterator is made.
    """

    def __init__(self, dataset: Dataset, *, epoch: Callable[[], int], **kwargs) -> None:
        super().__init__(dataset, **kwargs)
        self._fit_epoch = epoch

    def __iter__(self) -> Iterator[int]:
        self.set_epoch(self._fit_epoch())
        return super().__iter__()
