"""Tar shards (`drorae data shard`) read like the image folder they came from."""

import json
import tarfile

import pytest
import torch

from drorae.cli import main
from drorae.data.folders import ImageFolderDataset, ResumableSampler, SkipCounter, collate_skipping, list_images
from drorae.data.shards import expand_shards, index_shards, is_shard_spec, write_shards

from .training.conftest import CPU_TINY, write_images


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    write_images(root / "cat", 7, seed=1)
    write_images(root / "dog", 6, seed=2)
    return root


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    assert main(["data", "shard", str(folder), str(out), "--shard-size", "5"]) == 0
    return out


def batches(dataset, seed=0, batch=4):
    sampler = ResumableSampler(len(dataset), seed=seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, collate_fn=collate_skipping)
    return [b["images"] for b in loader]


def test_shards_hold_the_folder_in_order_with_labels(folder, shards):
    assert sorted(p.name for p in shards.iterdir()) == [
        "classes.json", "shard-000000.tar", "shard-000001.tar", "shard-000002.tar",
    ]  # fmt: skip
    assert json.loads((shards / "classes.json").read_text()) == ["cat", "dog"]
    members, labels, names = index_shards(shards)
    paths = list_images(folder)
    assert [m.read() for m in members] == [p.read_bytes() for p in paths]
    assert labels == [0] * 7 + [1] * 6 and names == ["cat", "dog"]
    assert is_shard_spec(shards) and is_shard_spec(shards / "shard-000001.tar") and not is_shard_spec(folder)
    assert expand_shards(str(shards / "shard-{000000..000002}.tar")) == sorted(shards.glob("*.tar"))


def test_folder_and_shards_give_the_same_batches(folder, shards):
    a = batches(ImageFolderDataset(folder, 32, random_flip=True, seed=3), seed=5)
    b = batches(ImageFolderDataset(shards, 32, random_flip=True, seed=3), seed=5)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_a_corrupt_member_is_skipped_and_counted(folder, tmp_path):
    out = tmp_path / "s"
    write_shards(folder, out, shard_size=20)
    with tarfile.open(out / "shard-000000.tar", "a") as tar:
        import io

        info = tarfile.TarInfo("999999.png")
        info.size = 9
        tar.addfile(info, io.BytesIO(b"not a png"))
    dataset = ImageFolderDataset(out, 32, random_flip=False)
    assert len(dataset) == 14
    skips = SkipCounter()
    for batch in torch.utils.data.DataLoader(dataset, batch_size=5, collate_fn=collate_skipping):
        skips.update(batch)
    assert skips.count == 1 and skips.paths[0].endswith("shard-000000.tar:999999.png")


def test_pipe_urls_and_missing_shards_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match=r"pipe: URLs have no random access"):
        list_images("pipe:curl -s https://example.invalid/shard-000000.tar")
    with pytest.raises(FileNotFoundError, match=r"shard files not found: .*shard-000001.tar"):
        expand_shards(str(tmp_path / "shard-{000000..000001}.tar"))


def test_training_from_shards_resumes_mid_epoch_to_the_uninterrupted_weights(shards, tmp_path):
    """The sampler's epoch and position are dataset indices: a resume from shards continues at the same sample."""
    from safetensors.torch import load_file

    from drorae.tokenizer.training import Trainer, load_config

    cfg = load_config(CPU_TINY, ["train.max_steps=5", "train.checkpoint_every=2", "loss.discriminator=none"])
    Trainer(cfg, "1", tmp_path / "full", data_dir=shards, progress=False).run()
    Trainer(cfg, "1", tmp_path / "part", data_dir=shards, progress=False).run(max_steps=2)  # 8 of 13: mid-epoch
    Trainer(cfg, "1", tmp_path / "part", data_dir=shards, progress=False, resume=True).run()
    a = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)


def test_generation_reads_shard_labels(shards, folder):
    from drorae.generation.latents import LabeledImageFolder

    a, b = LabeledImageFolder(folder, 32), LabeledImageFolder(shards, 32)
    assert a.classes == b.classes and a.labels == b.labels
    assert all(torch.equal(a[i]["image"], b[i]["image"]) for i in range(len(a)))
