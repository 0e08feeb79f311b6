"""The data module: layout checks, bad files, the split, the decoded-image cache, transforms."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import COLOURS, datamodule_kwargs, make_dataset, write_image
from torchvision.transforms import v2

from gem_lightning.data.augmentation import Augmentation
from gem_lightning.data.cache import Cache, DecodeSettings, DiskCache
from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.data.folders import BadFilesError
from gem_lightning.data.scan import DatasetLayoutError, ImageRecord, scan_split
from gem_lightning.data.split import stratified_split
from gem_lightning.data.transforms import eval_transform, torchvision_transform, train_transform
from gem_lightning.errors import UserInputError


def fitted(data_dir: Path, cache_root: Path, **overrides) -> GemDataModule:
    datamodule = GemDataModule(str(data_dir), **datamodule_kwargs(cache_root, **overrides))
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


# Layout -----------------------------------------------------------------------------------------


def test_class_names_are_sorted_folder_names(tiny_dataset, isolated_cache):
    (tiny_dataset / "train" / ".hidden").mkdir()
    assert GemDataModule(str(tiny_dataset)).class_names == sorted(COLOURS)


@pytest.mark.parametrize(
    "arrange, message",
    [
        (lambda root: root.mkdir(), "no 'train/' folder"),
        (lambda root: root.write_text("not a folder"), "is a file"),
        (lambda root: None, "does not exist"),
        (lambda root: make_dataset(root, classes={"Only": (1, 2, 3)}), "at least two"),
        (lambda root: (make_dataset(root), (root / "test" / "Extra").mkdir()), "lacks: Extra"),
    ],
    ids=["empty folder", "path is a file", "missing", "one class", "test class not in train"],
)
def test_layout_errors_name_the_path_and_the_expected_layout(tmp_path, arrange, message):
    root = tmp_path / "dataset"
    arrange(root)
    with pytest.raises(DatasetLayoutError, match=message) as error:
        GemDataModule(str(root))
    assert "dataset" in str(error.value)


def test_folder_without_usable_images_is_an_error(tmp_path, isolated_cache):
    for name in ("A", "B"):
        (tmp_path / "d" / "train" / name).mkdir(parents=True)
        (tmp_path / "d" / "train" / name / "notes.txt").write_text("hello")
    with pytest.raises(DatasetLayoutError, match="no usable images"):
        fitted(tmp_path / "d", isolated_cache)


# Bad files --------------------------------------------------------------------------------------


def add_bad_files(root: Path) -> dict[str, str]:
    blue = root / "train" / "Blue Stone"
    (blue / "empty.jpg").write_bytes(b"")
    (blue / "Thumbs.db").write_bytes(b"\x00\x01junk" * 10)
    (blue / "readme.txt").write_text("notes")
    good = write_image(blue / "to_truncate.jpg", (0, 0, 255), size=64, seed=99).read_bytes()
    (blue / "to_truncate.jpg").write_bytes(good[: len(good) // 2])
    (blue / ".DS_Store").write_bytes(b"hidden files are ignored silently")
    return {"empty.jpg": "empty", "Thumbs.db": "not an image", "readme.txt": "not an image", "to_truncate.jpg": "truncated"}


def test_bad_files_are_skipped_and_reported(tiny_dataset, isolated_cache, caplog):
    expected = add_bad_files(tiny_dataset)
    datamodule = fitted(tiny_dataset, isolated_cache)
    rejected = {item.path.name: item.reason for item in datamodule.rejected["train"]}
    assert set(rejected) == set(expected)
    for name, reason in expected.items():
        assert reason in rejected[name]
    used = {r.path.name for split in ("train", "val") for r in datamodule.source.records[split]}
    assert not used & set(expected) and ".DS_Store" not in used
    assert len(used) == 3 * 10


def test_strict_policy_fails_before_training_with_the_summary(tiny_dataset, isolated_cache):
    add_bad_files(tiny_dataset)
    with pytest.raises(BadFilesError) as error:
        fitted(tiny_dataset, isolated_cache, bad_files="strict")
    message = str(error.value)
    assert "Blue Stone/empty.jpg: empty" in message and "--data.bad_files skip" in message


def test_duplicates_stay_on_one_side_and_label_conflicts_are_reported(tiny_dataset, isolated_cache):
    train = tiny_dataset / "train"
    for i in range(4):
        shutil.copy(train / "Red Stone" / f"red stone {i}.jpg", train / "Red Stone" / f"copy {i}.jpg")
    shutil.copy(train / "Red Stone" / "red stone 5.jpg", train / "Green Stone" / "misfiled.jpg")
    scan = scan_split(train, sorted(COLOURS))
    from gem_lightning.data.scan import format_summary

    summary = format_summary({"train": scan})
    assert "LABEL CONFLICT" in summary and "misfiled.jpg" in summary
    for seed in range(5):
        datamodule = fitted(tiny_dataset, isolated_cache, seed=seed)
        digests = {split: {r.digest for r in datamodule.source.records[split]} for split in ("train", "val")}
        assert not digests["train"] & digests["val"]


# Split ------------------------------------------------------------------------------------------


def records(per_class: dict[int, int]) -> list[ImageRecord]:
    return [ImageRecord(Path(f"{label}/{i}.jpg"), label, f"{label:02d}{i:04d}") for label, n in per_class.items() for i in range(n)]


def test_split_is_stratified_and_deterministic():
    items = records({0: 10, 1: 20, 2: 5})
    train, val = stratified_split(items, 0.2, seed=42)
    assert sorted(train + val) == list(range(len(items)))
    assert Counter(items[i].label for i in val) == {0: 2, 1: 4, 2: 1}
    assert stratified_split(list(reversed(items)), 0.2, seed=42) != (train, val)  # index-based...
    shuffled_again = stratified_split(items, 0.2, seed=42)
    assert shuffled_again == (train, val)
    assert stratified_split(items, 0.2, seed=7) != (train, val)


def test_split_depends_on_contents_not_listing_order():
    items = records({0: 10, 1: 10})
    _, val = stratified_split(items, 0.3, seed=3)
    _, val_reversed = stratified_split(list(reversed(items)), 0.3, seed=3)
    assert {items[i].path for i in val} == {list(reversed(items))[i].path for i in val_reversed}


def test_split_keeps_one_image_each_side_for_small_classes():
    train, val = stratified_split(records({0: 2, 1: 1}), 0.05, seed=0)
    assert len(val) == 1 and len(train) == 2


def test_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(records({0: 3}), 1.0, seed=0)


def test_same_split_in_every_datamodule(tiny_dataset, isolated_cache):
    first = fitted(tiny_dataset, isolated_cache)
    second = fitted(tiny_dataset, isolated_cache, cache=Cache(dir=None))
    assert first.paths("val") == second.paths("val")
    assert len(first.paths("val")) == 9  # 30% of 10 per class


# Cache ------------------------------------------------------------------------------------------


def test_disk_cache_is_filled_once_and_reused(tiny_dataset, isolated_cache):
    first = fitted(tiny_dataset, isolated_cache)
    cache = DiskCache(isolated_cache, first.settings)
    entries = sorted(cache.root.rglob("*.npy"))
    assert len(entries) == 30 + 9  # every train and test image
    mtimes = [p.stat().st_mtime_ns for p in entries]
    fitted(tiny_dataset, isolated_cache)
    assert [p.stat().st_mtime_ns for p in entries] == mtimes
    assert cache.fill(scan_split(tiny_dataset / "train", sorted(COLOURS)).records, 0) == 0


def test_changed_file_is_decoded_again_never_stale(tiny_dataset, isolated_cache):
    target = tiny_dataset / "train" / "Red Stone" / "red stone 0.jpg"
    datamodule = fitted(tiny_dataset, isolated_cache, val_fraction=0.0)
    index = datamodule.paths("train").index(target)
    before = datamodule.datasets["train"].store[index].float().mean(dim=(0, 1))
    write_image(target, (0, 255, 0), seed=1234)
    datamodule = fitted(tiny_dataset, isolated_cache, val_fraction=0.0)
    index = datamodule.paths("train").index(target)
    after = datamodule.datasets["train"].store[index].float().mean(dim=(0, 1))
    assert before[0] > 150 and after[1] > 150 and after[0] < 100


def test_cache_key_includes_size_and_crop():
    tags = {
        DecodeSettings(64).tag,
        DecodeSettings(72).tag,
        DecodeSettings(64, autocrop=True).tag,
        DecodeSettings(64, background=(0, 0, 0)).tag,
    }
    assert len(tags) == 4


def test_disk_mode_and_memory_mode_serve_the_same_pixels(tiny_dataset, isolated_cache):
    memory = fitted(tiny_dataset, isolated_cache)
    disk = fitted(tiny_dataset, isolated_cache, cache=Cache(mode="disk", dir=str(isolated_cache)))
    assert memory.datasets["train"].store.images is not None and disk.datasets["train"].store.images is None
    for i in range(len(memory.datasets["train"].store)):
        assert torch.equal(memory.datasets["train"].store[i], disk.datasets["train"].store[i])


def test_memory_budget_falls_back_to_disk(tiny_dataset, isolated_cache):
    datamodule = fitted(tiny_dataset, isolated_cache, cache=Cache(dir=str(isolated_cache), memory_gb=1e-9))
    assert datamodule.datasets["train"].store.images is None


# Transforms and batches -------------------------------------------------------------------------


def test_batches_are_uint8_at_image_size_with_labels(tiny_dataset, isolated_cache):
    datamodule = fitted(tiny_dataset, isolated_cache)
    images, labels, indices = next(iter(datamodule.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 32, 32)
    assert images.is_contiguous(memory_format=torch.channels_last)  # stacked as (H, W, 3) pixels
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1, 2}
    paths = datamodule.paths("val")
    _, val_labels, val_indices = next(iter(datamodule.val_dataloader()))
    for label, index in zip(val_labels.tolist(), val_indices.tolist()):
        assert paths[index].parent.name == datamodule.class_names[label]


def test_training_augmentation_is_random_and_evaluation_is_not():
    image = torch.randint(0, 256, (3, 80, 80), dtype=torch.uint8)
    augment = train_transform(64, Augmentation())
    assert augment(image).shape == (3, 64, 64) and augment(image).dtype == torch.uint8
    assert not torch.equal(augment(image), augment(image))
    evaluate = eval_transform(64)
    assert torch.equal(evaluate(image), evaluate(image))


def test_augmentation_options_change_the_pipeline():
    names = lambda t: [type(step).__name__ for step in t.transforms]  # noqa: E731
    assert train_transform(64, Augmentation()).jitter is None
    assert isinstance(train_transform(64, Augmentation(brightness=0.2)).jitter, v2.ColorJitter)
    custom = Augmentation(crop_scale=(0.5, 1.0), rotation=0, shear=0, vflip=True, brightness=0.2)
    assert names(torchvision_transform(64, custom)) == ["RandomResizedCrop", "RandomHorizontalFlip", "RandomVerticalFlip", "ColorJitter"]
    assert names(torchvision_transform(64, Augmentation(rotation=0, zoom=0, shift=0, shear=0, hflip=False))) == ["Resize"]


def test_test_split_and_predict_path(tiny_dataset, isolated_cache):
    datamodule = GemDataModule(str(tiny_dataset), predict_path=str(tiny_dataset / "test"), **datamodule_kwargs(isolated_cache))
    datamodule.setup("test")
    assert len(datamodule.datasets["test"]) == 9
    datamodule.setup("predict")
    assert len(datamodule.datasets["predict"]) == 9
    glob_module = GemDataModule(predict_path=str(tiny_dataset / "test" / "Red*" / "*.jpg"), **datamodule_kwargs(isolated_cache))
    glob_module.setup("predict")
    assert len(glob_module.datasets["predict"]) == 3


def test_predict_path_that_matches_nothing_is_a_clear_error(tmp_path):
    datamodule = GemDataModule(predict_path=str(tmp_path / "nothing*.jpg"))
    with pytest.raises(UserInputError, match="matches no files"):
        datamodule.setup("predict")


def test_affine_fill_leaves_no_seam_on_the_border():
    white = torch.full((3, 80, 80), 255, dtype=torch.uint8)
    warp = train_transform(64, Augmentation(rotation=30, zoom=0.2, shift=0.1, shear=10, fill=(255, 255, 255)))
    assert all(warp(white).min() >= 254 for _ in range(10))
    black_fill = train_transform(64, Augmentation(rotation=45, zoom=0, shift=0, shear=0, hflip=False, fill=(0, 0, 0)))
    rotated = torch.stack([black_fill(white) for _ in range(20)])
    assert rotated[..., 0, 0].float().mean() < 60  # corners uncovered by a large rotation take the fill
