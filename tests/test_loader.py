"""Loader workers start from a single-threaded forkserver, never by forking the training process."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch
from conftest import datamodule_kwargs
from lightning.pytorch import seed_everything
from torch.utils.data import Dataset

from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.data.loader import DEFAULT_START_METHOD, Loader, SignalSafeDataLoader
from gem_lightning.errors import UserInputError


class WorkerParent(Dataset):
    """Each item: the pid of the process the worker was forked from, and how many threads it has."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        parent = os.getppid()
        return torch.tensor([parent, len(os.listdir(f"/proc/{parent}/task"))])


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads threads from /proc (Linux)")
def test_workers_are_forked_from_a_single_threaded_process_not_from_the_busy_trainer():
    """A trainer has threads (observers, queue feeders, gloo); a child forked from it can deadlock in
    ``fork()`` itself (seen on Python 3.11). The workers' parent must be another, thread-free process."""
    stop = threading.Event()
    busy = [threading.Thread(target=stop.wait, daemon=True) for _ in range(3)]
    for thread in busy:
        thread.start()
    try:
        assert len(os.listdir("/proc/self/task")) > 3
        loader = SignalSafeDataLoader(WorkerParent(), batch_size=2, num_workers=2)
        parents = torch.cat(list(loader))
    finally:
        stop.set()
    assert DEFAULT_START_METHOD == "forkserver"
    assert os.getpid() not in parents[:, 0].tolist()
    assert parents[:, 1].tolist() == [1, 1, 1, 1], "the workers' parent has threads"


def epoch_of_batches(datamodule: GemDataModule) -> list[torch.Tensor]:
    seed_everything(7, workers=True)
    return [images for images, _, _ in datamodule.train_dataloader()]


def test_forkserver_workers_draw_the_same_augmented_batches_as_forked_ones(tiny_dataset, isolated_cache):
    """The start method changes how workers start, not what they yield: same seed, same bytes."""
    batches = {}
    for method in ("fork", "forkserver"):
        datamodule = GemDataModule(
            str(tiny_dataset),
            **datamodule_kwargs(isolated_cache, loader=Loader(num_workers=2, multiprocessing_context=method, persistent_workers=False)),
        )
        datamodule.setup("fit")
        batches[method] = epoch_of_batches(datamodule)
    assert len(batches["fork"]) > 1
    for forked, served in zip(batches["fork"], batches["forkserver"], strict=True):
        assert torch.equal(forked, served)


def test_a_start_method_the_platform_lacks_is_refused_by_name(tiny_dataset):
    with pytest.raises(UserInputError, match="data.loader.multiprocessing_context must be one of"):
        GemDataModule(str(tiny_dataset), loader=Loader(multiprocessing_context="threads"))
