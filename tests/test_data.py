"""Tests for drorae.data.folders: listing, robust decoding, skip accounting, determinism, resuming."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from drorae.data.folders import (
    ImageFolderDataset,
    ResumableSampler,
    SkipCounter,
    collate_skipping,
    derive_seed,
    list_images,
    load_rgb,
    sample_generator,
)


def _rgb(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _jpeg_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A folder with good images, awkward modes and two unreadable files, in class sub-folders."""
    root = tmp_path_factory.mktemp("messy")
    (root / "cats").mkdir()
    (root / "dogs").mkdir()
    files: dict[str, Path] = {}

    def path(key: str, relative: str) -> Path:
        files[key] = root / relative
        return files[key]

    Image.fromarray(_rgb(40, 60, 0)).save(path("rgb_png", "cats/rgb.png"))
    Image.fromarray(_rgb(50, 30, 1)).save(path("rgb_jpg", "dogs/rgb.JPG"), quality=90)
    Image.fromarray(_rgb(32, 32, 2)).save(path("rgb_bmp", "rgb.bmp"))
    Image.fromarray(_rgb(32, 32, 3)).save(path("rgb_webp", "dogs/rgb.webp"))
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))
    Image.fromarray(gray).save(path("gray", "gray.png"))
    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (16, 1))
    Image.fromarray(ramp).save(path("sixteen", "sixteen.png"))
    cmyk = Image.new("CMYK", (32, 32), (255, 0, 0, 0))  # pure cyan ink
    cmyk.save(path("cmyk", "cmyk.jpeg"), quality=95)
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[:, :16] = (255, 0, 0, 255)  # opaque red
    rgba[:, 16:] = (0, 0, 0, 0)  # transparent black: must come out white
    Image.fromarray(rgba).save(path("rgba", "cats/rgba.png"))
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)  # index 0 blue, 1 green
    palette.paste(1, (0, 0, 16, 32))
    palette.save(path("palette", "palette.png"), transparency=0)  # blue is transparent
    data = _jpeg_bytes(_rgb(64, 64, 4))
    path("truncated", "cats/truncated.jpg").write_bytes(data[: len(data) // 2])
    path("text", "dogs/notes.png").write_text("this is not an image\n")
    (root / "readme.txt").write_text("ignored: not an image extension\n")
    (root / "._rgb.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # hidden: ignored
    return {"root": root, **files}


# ------------------------------------------------------------------------------------------
# list_images
# ------------------------------------------------------------------------------------------


def test_list_images_recursive_sorted_case_insensitive(messy_folder: dict[str, Path]) -> None:
    root = messy_folder["root"]
    found = list_images(root)
    assert found == sorted(found, key=lambda p: p.relative_to(root).as_posix())
    names = {p.relative_to(root).as_posix() for p in found}
    assert names == {
        "cats/rgb.png",
        "cats/rgba.png",
        "cats/truncated.jpg",
        "cmyk.jpeg",
        "dogs/notes.png",
        "dogs/rgb.JPG",
        "dogs/rgb.webp",
        "gray.png",
        "palette.png",
        "rgb.bmp",
        "sixteen.png",
    }


def test_list_images_missing_and_empty_folders_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        list_images(missing)
    empty = tmp_path / "empty-folder"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "labels.txt").write_text("x")
    with pytest.raises(ValueError, match="empty-folder"):
        list_images(empty)
    with pytest.raises(ValueError, match="empty-folder"):
        ImageFolderDataset(empty, 16)


# ------------------------------------------------------------------------------------------
# load_rgb
# ------------------------------------------------------------------------------------------


def test_load_rgb_unreadable_files_return_none(messy_folder: dict[str, Path]) -> None:
    assert load_rgb(messy_folder["truncated"]) is None
    assert load_rgb(messy_folder["text"]) is None
    assert load_rgb(messy_folder["root"] / "no-such-file.png") is None


def test_load_rgb_grayscale_replicates_channels(messy_folder: dict[str, Path]) -> None:
    image = load_rgb(messy_folder["gray"])
    assert image is not None and image.mode == "RGB"
    array = np.asarray(image)
    assert (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()
    np.testing.assert_array_equal(array[0, :, 0], np.arange(0, 256, 4))


def test_load_rgb_sixteen_bit_is_scaled_not_clipped(messy_folder: dict[str, Path]) -> None:
    with Image.open(messy_folder["sixteen"]) as raw:
        assert raw.mode in ("I;16", "I;16B", "I")  # really a 16-bit file
    image = load_rgb(messy_folder["sixteen"])
    assert image is not None and image.mode == "RGB"
    row = np.asarray(image)[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert (np.diff(row) >= 0).all()
    expected = np.linspace(0, 255, 64)
    assert np.abs(row - expected).max() <= 1  # a ramp, not a wall at 255


def test_load_rgb_cmyk_alpha_and_palette(messy_folder: dict[str, Path]) -> None:
    cyan = np.asarray(load_rgb(messy_folder["cmyk"])).astype(int)
    assert np.abs(cyan - np.array([0, 255, 255])).max() <= 8  # JPEG rounding

    rgba = np.asarray(load_rgb(messy_folder["rgba"]))
    assert (rgba[:, :16] == (255, 0, 0)).all()
    assert (rgba[:, 16:] == (255, 255, 255)).all()  # composited on white

    palette = np.asarray(load_rgb(messy_folder["palette"]))
    assert (palette[:, :16] == (0, 255, 0)).all()
    assert (palette[:, 16:] == (255, 255, 255)).all()  # transparent index -> white


def test_load_rgb_half_transparent_pixels_blend_with_white(tmp_path: Path) -> None:
    Image.new("LA", (4, 4), (0, 128)).save(tmp_path / "la.png")  # black at ~50% opacity
    array = np.asarray(load_rgb(tmp_path / "la.png")).astype(int)
    assert np.abs(array - 127).max() <= 1


# ------------------------------------------------------------------------------------------
# Dataset, collate, skip accounting
# ------------------------------------------------------------------------------------------


def test_dataloader_with_workers_skips_exactly_the_unreadable_files(
    messy_folder: dict[str, Path],
) -> None:
    dataset = ImageFolderDataset(messy_folder["root"], image_size=24, random_flip=True, seed=3)
    assert len(dataset) == 11
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate_skipping)
    skips = SkipCounter()
    indices: list[int] = []
    drawn = 0
    for batch in loader:
        skips.update(batch)
        images = batch["images"]
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 24, 24)
        assert images.shape[0] == len(batch["indices"])
        assert 0.0 <= images.min() and images.max() <= 1.0
        indices += batch["indices"].tolist()
        drawn += batch["num_samples"]

    unreadable = {str(messy_folder["truncated"]), str(messy_folder["text"])}
    readable = {i for i, p in enumerate(dataset.paths) if str(p) not in unreadable}
    assert sorted(indices) == sorted(readable) and len(indices) == 9
    assert drawn == len(dataset)
    assert skips.count == 2 and set(skips.paths) == unreadable
    summary = skips.summary()
    assert summary.startswith("skipped 2 unreadable files (first: ")
    assert all(path in summary for path in unreadable)


def test_dataset_output_is_resized_and_centre_cropped(tmp_path: Path) -> None:
    # A wide image whose central square is green and whose side bands are red.
    array = np.zeros((40, 120, 3), dtype=np.uint8)
    array[:] = (255, 0, 0)
    array[:, 40:80] = (0, 255, 0)
    Image.fromarray(array).save(tmp_path / "wide.png")
    sample = ImageFolderDataset(tmp_path, image_size=16, random_flip=False)[0]
    image = sample["image"]
    assert sample["index"] == 0 and image.shape == (3, 16, 16)
    assert torch.allclose(image[1, :, 2:-2], torch.ones(16, 12), atol=0.02)
    assert image[0, :, 2:-2].max() < 0.02


def test_collate_all_skipped_and_skip_counter() -> None:
    batch = collate_skipping([{"image": None, "index": 3, "skipped": "a.png"}])
    assert batch["images"].shape[0] == 0 and batch["indices"].numel() == 0
    assert batch["skipped"] == ["a.png"] and batch["num_samples"] == 1

    skips = SkipCounter()
    assert skips.summary() == "skipped 0 unreadable files"
    skips.update(batch)
    skips.update(["b.jpg", "a.png"])  # the same file again (next epoch) counts once
    assert skips.count == 2 and skips.total == 3
    assert skips.first(1) == ["a.png"]
    assert skips.summary() == "skipped 2 unreadable files (first: a.png, b.jpg)"
    restored = SkipCounter()
    restored.load_state_dict(skips.state_dict())
    assert restored.paths == skips.paths and restored.total == 3


# ------------------------------------------------------------------------------------------
# Reproducible flips
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def asymmetric_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("asymmetric")
    ramp = np.tile(np.linspace(0, 255, 16).astype(np.uint8)[None, :, None], (16, 1, 3))
    for i in range(16):
        Image.fromarray(ramp).save(root / f"{i:02d}.png")
    return root


def _flips(loader: DataLoader) -> dict[int, bool]:
    """index -> was the horizontal ramp mirrored (bright on the left)."""
    result = {}
    for batch in loader:
        for index, image in zip(batch["indices"].tolist(), batch["images"]):
            result[index] = bool(image[0, 0, 0] > image[0, 0, -1])
    return result


def test_flips_depend_only_on_seed_epoch_index(asymmetric_folder: Path) -> None:
    dataset = ImageFolderDataset(asymmetric_folder, image_size=16, seed=7)

    def flipped(epoch: int, index: int) -> bool:
        return bool(torch.rand((), generator=sample_generator(7, epoch, index)) < 0.5)

    expected = {epoch: {i: flipped(epoch, i) for i in range(16)} for epoch in (0, 1)}
    assert expected[0] != expected[1]
    assert 0 < sum(expected[0].values()) < 16

    # No workers, main process.
    serial = DataLoader(dataset, batch_size=5, collate_fn=collate_skipping)
    assert _flips(serial) == expected[0]

    # Two persistent workers and another batch size: set_epoch must still reach the workers.
    parallel = DataLoader(dataset, batch_size=3, num_workers=2, persistent_workers=True, collate_fn=collate_skipping)
    dataset.set_epoch(0)
    assert _flips(parallel) == expected[0]
    dataset.set_epoch(1)
    assert _flips(parallel) == expected[1]

    # A fresh dataset with the same seed, set directly to epoch 1 (a resumed run).
    resumed = ImageFolderDataset(asymmetric_folder, image_size=16, seed=7)
    resumed.set_epoch(1)
    assert _flips(DataLoader(resumed, batch_size=16, collate_fn=collate_skipping)) == expected[1]


def test_derive_seed_separates_key_lengths_and_orders() -> None:
    assert derive_seed(1, 2) != derive_seed(1, 2, 0)
    assert derive_seed(1, 2, 3) != derive_seed(1, 3, 2)
    # the documented construction, computed with numpy directly: SeedSequence over (number of keys, *keys)
    expected = int(np.random.SeedSequence([3, 1, 2, 3]).generate_state(1, np.uint64)[0])
    assert derive_seed(1, 2, 3) == expected
    assert len({derive_seed(0, 0, i) for i in range(1000)}) == 1000  # no collisions among sample seeds
    with pytest.raises(ValueError):
        derive_seed(-1)


# ------------------------------------------------------------------------------------------
# ResumableSampler
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("drop_last", [True, False])
def test_sampler_shards_are_disjoint_equal_and_cover_the_permutation(drop_last: bool) -> None:
    num_samples, world_size = 103, 4
    shards = [
        list(ResumableSampler(num_samples, rank=r, world_size=world_size, seed=5, drop_last=drop_last))
        for r in range(world_size)
    ]
    lengths = {len(s) for s in shards}
    assert len(lengths) == 1
    merged = [shard[k] for k in range(len(shards[0])) for shard in shards]  # undo the striding
    full = ResumableSampler(num_samples, seed=5, drop_last=False)
    permutation = list(full)
    assert sorted(permutation) == list(range(num_samples)) and permutation != sorted(permutation)
    if drop_last:
        assert lengths == {num_samples // world_size}
        assert merged == permutation[: len(merged)]
        assert len(set(merged)) == len(merged)  # disjoint
    else:
        assert lengths == {26}
        assert merged == permutation + permutation[: 26 * world_size - num_samples]
        assert set(merged) == set(range(num_samples))


def test_sampler_same_seed_same_order_and_epochs_differ() -> None:
    a, b = ResumableSampler(50, seed=1), ResumableSampler(50, seed=1)
    c = ResumableSampler(50, seed=2)
    assert list(a) == list(b) != list(c)
    epoch0 = list(a)
    a.set_epoch(1)
    assert list(a) != epoch0 and sorted(a) == sorted(epoch0)
    assert list(ResumableSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def test_sampler_resumes_exactly_where_it_stopped() -> None:
    sampler = ResumableSampler(40, rank=1, world_size=2, seed=9)
    sampler.set_epoch(3)
    shard = list(sampler)
    assert len(sampler) == 20
    for _ in range(3):  # a training loop consumed three batches of 4
        sampler.advance(4)
    assert len(sampler) == 8
    state = sampler.state_dict()
    assert state["epoch"] == 3 and state["position"] == 12

    resumed = ResumableSampler(40, rank=1, world_size=2, seed=9)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # the engine's loop sets the same epoch again: position is kept
    assert len(resumed) == 8 and list(resumed) == shard[12:]

    resumed.advance(8)
    assert len(resumed) == 0 and list(resumed) == []
    with pytest.raises(ValueError):
        resumed.advance(1)
    resumed.set_epoch(4)  # a new epoch starts from the beginning
    assert resumed.position == 0 and len(resumed) == 20


def test_sampler_resume_through_a_dataloader() -> None:
    sampler = ResumableSampler(30, seed=0)
    loader = DataLoader(list(range(30)), batch_size=4, sampler=sampler, drop_last=False)
    seen: list[int] = []
    for step, batch in enumerate(loader):
        seen += batch.tolist()
        sampler.advance(len(batch))
        if step == 2:
            break  # "crash" after three batches; prefetching must not lose samples
    resumed = ResumableSampler(30, seed=0)
    resumed.load_state_dict(sampler.state_dict())
    loader = DataLoader(list(range(30)), batch_size=4, sampler=resumed)
    rest = [i for batch in loader for i in batch.tolist()]
    assert seen + rest == list(ResumableSampler(30, seed=0))


def test_sampler_state_of_another_configuration_is_refused() -> None:
    sampler = ResumableSampler(40, world_size=2, seed=9)
    sampler.advance(5)
    with pytest.raises(ValueError, match=r"world_size: 2 -> 4"):
        ResumableSampler(40, world_size=4, seed=9).load_state_dict(sampler.state_dict())
    sampler.set_epoch(1)
    with pytest.raises(ValueError, match=r"num_samples: 40 -> 41"):
        ResumableSampler(41, world_size=2, seed=9).load_state_dict(sampler.state_dict())


def test_sampler_validates_arguments() -> None:
    with pytest.raises(ValueError):
        ResumableSampler(0)
    with pytest.raises(ValueError):
        ResumableSampler(10, rank=2, world_size=2)
    with pytest.raises(ValueError):
        ResumableSampler(3, world_size=4, drop_last=True)
    assert len(ResumableSampler(3, rank=3, world_size=4, drop_last=False)) == 1
