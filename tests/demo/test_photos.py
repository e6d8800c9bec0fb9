"""Tests for drorae.demo.photos: the offline photo set, its split, crops and image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from drorae.data.folders import ImageFolderDataset, collate_skipping, list_images
from drorae.demo.photos import (
    HELDOUT_PHOTOS,
    PHOTO_NAMES,
    TRAIN_PHOTOS,
    RandomCropDataset,
    fixed_eval_crops,
    load_photos,
    write_sample_dataset,
)


def test_split_is_by_photo_and_disjoint() -> None:
    assert HELDOUT_PHOTOS == ("coffee", "rocket", "brick")
    assert not set(TRAIN_PHOTOS) & set(HELDOUT_PHOTOS)
    assert set(TRAIN_PHOTOS) | set(HELDOUT_PHOTOS) == set(PHOTO_NAMES)
    train, heldout = load_photos("train"), load_photos("heldout")
    assert tuple(train) == TRAIN_PHOTOS and tuple(heldout) == HELDOUT_PHOTOS
    assert not set(train) & set(heldout)
    # Not only the names: no pixel array of one split appears in the other.
    for photo in heldout.values():
        assert not any(p.shape == photo.shape and np.array_equal(p, photo) for p in train.values())
    with pytest.raises(ValueError, match="split"):
        load_photos("validation")


def test_photos_are_uint8_rgb_and_match_skimage() -> None:
    import skimage.data

    photos = load_photos("all")
    assert len(photos) == len(PHOTO_NAMES) >= 15
    for name, photo in photos.items():
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3, name
        assert min(photo.shape[:2]) >= 128, name
    np.testing.assert_array_equal(photos["astronaut"], skimage.data.astronaut())
    brick = photos["brick"]  # grayscale, replicated to three channels
    np.testing.assert_array_equal(brick[..., 0], skimage.data.brick())
    assert (brick[..., 0] == brick[..., 2]).all()


def test_random_crops_are_deterministic_per_seed_epoch_index() -> None:
    photos = load_photos("train")
    dataset = RandomCropDataset(photos, crop_size=32, length=8, seed=3)
    sample = dataset[5]
    assert sample["index"] == 5 and sample["image"].shape == (3, 32, 32)
    assert sample["image"].dtype == torch.float32
    assert 0.0 <= sample["image"].min() and sample["image"].max() <= 1.0

    epoch0 = torch.stack([dataset[i]["image"] for i in range(8)])
    again = RandomCropDataset(photos, crop_size=32, length=8, seed=3)
    assert torch.equal(epoch0, torch.stack([again[i]["image"] for i in range(8)]))
    dataset.set_epoch(1)
    assert not torch.equal(epoch0, torch.stack([dataset[i]["image"] for i in range(8)]))
    other_seed = RandomCropDataset(photos, crop_size=32, length=8, seed=4)
    assert not torch.equal(epoch0, torch.stack([other_seed[i]["image"] for i in range(8)]))

    # Independent of worker count and batch size.
    again.set_epoch(1)
    loader = DataLoader(again, batch_size=3, num_workers=2, collate_fn=collate_skipping)
    batched = torch.cat([batch["images"] for batch in loader])
    assert torch.equal(batched, torch.stack([dataset[i]["image"] for i in range(8)]))


def test_fixed_eval_crops_are_fixed() -> None:
    heldout = load_photos("heldout")
    crops = fixed_eval_crops(heldout, crop_size=32, count=12, seed=0)
    assert crops.shape == (12, 3, 32, 32) and crops.dtype == torch.float32
    assert 0.0 <= crops.min() and crops.max() <= 1.0
    assert torch.equal(crops, fixed_eval_crops(heldout, crop_size=32, count=12, seed=0))
    assert not torch.equal(crops, fixed_eval_crops(heldout, crop_size=32, count=12, seed=1))
    # A longer set starts with the shorter one: crop i depends on i only.
    assert torch.equal(crops, fixed_eval_crops(heldout, crop_size=32, count=15, seed=0)[:12])


def test_write_sample_dataset_is_readable_by_image_folder(tmp_path: Path) -> None:
    counts = write_sample_dataset(tmp_path, crop_size=48)
    assert counts == {"train": len(TRAIN_PHOTOS), "heldout": len(HELDOUT_PHOTOS)}
    assert {p.stem for p in list_images(tmp_path / "train")} == set(TRAIN_PHOTOS)
    assert {p.stem for p in list_images(tmp_path / "heldout")} == set(HELDOUT_PHOTOS)

    dataset = ImageFolderDataset(tmp_path / "train", image_size=48, random_flip=False)
    batch = collate_skipping([dataset[i] for i in range(len(dataset))])
    assert batch["images"].shape == (len(TRAIN_PHOTOS), 3, 48, 48)
    assert batch["skipped"] == []
