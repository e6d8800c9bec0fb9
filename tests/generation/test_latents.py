"""``drorae stats`` (exact moments) and ``drorae cache-latents`` (shards, resume, flips, skips)."""

import json

import pytest
import torch

from drorae import DRoRAE
from drorae.generation.latents import (
    LabeledImageFolder,
    LatentDataset,
    LatentMoments,
    cache_latents,
    compute_latent_stats,
    list_classes,
)


def all_images(tokenizer, data_dir):
    ds = LabeledImageFolder(data_dir, tokenizer.decoder.config.image_size)
    return torch.stack([ds[i]["image"] for i in range(len(ds))]), torch.tensor(ds.labels)


def test_moments_merge_equals_one_pass():
    x = torch.randn(37, 4, 3, 3, dtype=torch.float64) * 3 + 5
    a, b, whole = LatentMoments(), LatentMoments(), LatentMoments()
    for chunk in x[:20].split(6):
        a.update(chunk)
    b.update(x[20:])
    a.merge(b)
    whole.update(x)
    torch.testing.assert_close(a.mean, x.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(a.var, x.var(0, unbiased=False), rtol=0, atol=1e-11)
    assert a.count == 37


def test_stats_equal_the_one_pass_moments_and_normalise_encode(tokenizer_dir, class_dir, tmp_path):
    out = tmp_path / "tok"
    result = compute_latent_stats(tokenizer_dir, class_dir, out_dir=out, batch_size=5, num_workers=0, device="cpu")
    tok = DRoRAE.from_pretrained(tokenizer_dir)
    # without statistics and at scale 1, encode() is the raw latent: the reference is its moments by hand
    assert not tok.config.latent_norm and tok.config.scaling_factor == 1.0
    with torch.no_grad():
        z = tok.encode(all_images(tok, class_dir)[0]).double()  # [18, C, h, w]
    stats = json.loads((out / "latent_stats.json").read_text())
    assert result["count"] == stats["count"] == z.shape[0] == 18
    from safetensors.torch import load_file

    saved = load_file(str(out / "latent_stats.safetensors"))
    mean = z.sum(0) / z.shape[0]  # per position [C, h, w] (RAE's statistics), over the images
    var = ((z - mean) ** 2).sum(0) / z.shape[0]  # population variance
    assert saved["mean"].shape == saved["var"].shape == z.shape[1:]
    torch.testing.assert_close(saved["mean"].double(), mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(saved["var"].double(), var, rtol=0, atol=1e-6)
    # the tokenizer copy now normalises: (z - mean) / sqrt(var + 1e-5)
    normed = DRoRAE.from_pretrained(out)
    assert normed.config.latent_norm and normed.fusion_enabled
    with torch.no_grad():
        x = all_images(tok, class_dir)[0]
        expected = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)
        torch.testing.assert_close(normed.encode(x).double(), expected, rtol=0, atol=1e-4)
        # decode undoes it: the reconstruction is the un-normalised model's
        torch.testing.assert_close(normed.decode(normed.encode(x)), tok.decode(tok.encode(x)), rtol=0, atol=1e-4)


def test_stats_in_place_keeps_the_backbone_and_fusion_off_differs(tokenizer_dir, class_dir, tmp_path):
    import shutil

    target = tmp_path / "inplace"
    shutil.copytree(tokenizer_dir, target)
    before = sorted(p.name for p in (target / "backbone").iterdir())
    on = compute_latent_stats(target, class_dir, num_workers=0, device="cpu")
    assert sorted(p.name for p in (target / "backbone").iterdir()) == before
    assert DRoRAE.from_pretrained(target).config.latent_norm
    off = compute_latent_stats(target, class_dir, out_dir=tmp_path / "off", fusion=False, num_workers=0, device="cpu")
    assert off["fusion_enabled"] is False and off["fingerprint"] != on["fingerprint"]


def test_stats_read_a_caption_folder_without_classes(tokenizer_dir, class_dir, tmp_path):
    """A text-to-image user's folder (``name.png`` + ``name.txt``, no class sub-folders) gets the same statistics as
    the same images in class folders: ``drorae stats`` does not read labels."""
    import shutil

    from safetensors.torch import load_file

    flat = tmp_path / "captions"
    flat.mkdir()
    images = sorted(p for p in class_dir.rglob("*") if p.suffix == ".png")
    for i, path in enumerate(images):
        shutil.copy(path, flat / f"{i:03d}.png")
        (flat / f"{i:03d}.txt").write_text("a caption\n")
    compute_latent_stats(tokenizer_dir, class_dir, out_dir=tmp_path / "classes", num_workers=0, device="cpu")
    result = compute_latent_stats(tokenizer_dir, flat, out_dir=tmp_path / "flat", num_workers=0, device="cpu")
    assert result["count"] == len(images) == 18
    a, b = (load_file(str(tmp_path / d / "latent_stats.safetensors")) for d in ("classes", "flat"))
    torch.testing.assert_close(a["mean"], b["mean"], rtol=0, atol=1e-6)
    torch.testing.assert_close(a["var"], b["var"], rtol=0, atol=1e-6)


def test_flat_folder_is_refused_with_the_reason(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "loose.png")
    with pytest.raises(ValueError, match=r"holds 1 images directly \(e.g. loose.png\).*one sub-folder per class"):
        list_classes(tmp_path)


def test_cache_holds_encode_and_labels_resumes_and_skips_corrupt_files(tokenizer_dir, class_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(class_dir, data)
    (data / "class_1" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "cache"
    meta = cache_latents(tokenizer_dir, data, out, flip=True, shard_size=5, batch_size=3, num_workers=0, device="cpu")
    assert (
        meta["num_latents"] == 18
        and meta["skipped_files"] == 1
        and meta["classes"] == ["class_0", "class_1", "class_2"]
    )
    tok = DRoRAE.from_pretrained(tokenizer_dir)
    ds = LatentDataset(out, random_flip=False)
    folder = LabeledImageFolder(data, tok.decoder.config.image_size)
    readable = [i for i in range(len(folder)) if folder[i]["image"] is not None]
    with torch.no_grad():
        for k, i in enumerate(readable):
            item, src = ds[k], folder[i]
            assert item["label"] == src["label"]
            torch.testing.assert_close(item["latent"], tok.encode(src["image"][None])[0], rtol=0, atol=1e-5)
    # with flips, about half the items come from the mirror image's latent, decided by (seed, epoch, index)
    flipped = LatentDataset(out, random_flip=True, seed=0)
    picks = [not torch.equal(flipped[k]["latent"], ds[k]["latent"]) for k in range(len(ds))]
    assert 0 < sum(picks) < len(picks)
    with torch.no_grad():
        for k, i in enumerate(readable):
            image = folder[i]["image"][None]
            expected = tok.encode(image.flip(-1) if picks[k] else image)[0]  # encode() of the mirrored image
            torch.testing.assert_close(flipped[k]["latent"], expected, rtol=0, atol=1e-5)
            if picks[k]:  # not a mirror of the latent: the backbone's positions are not mirror-symmetric
                assert (flipped[k]["latent"] - ds[k]["latent"].flip(-1)).abs().max() > 1e-3
    assert picks == [not torch.equal(LatentDataset(out, True, 0)[k]["latent"], ds[k]["latent"]) for k in range(len(ds))]
    # a rerun reuses every finished shard
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.safetensors")}
    (out / "shard_00001.safetensors").unlink()
    cache_latents(tokenizer_dir, data, out, flip=True, shard_size=5, batch_size=3, num_workers=0, device="cpu")
    for name, stamp in stamps.items():
        if name != "shard_00001.safetensors":
            assert (out / name).stat().st_mtime_ns == stamp
    assert (out / "shard_00001.safetensors").is_file()


def test_stats_of_two_torchrun_ranks_equal_one_process(tokenizer_dir, class_dir, tmp_path):
    import subprocess
    import sys

    from safetensors.torch import load_file

    from .conftest import env

    one, two = tmp_path / "one", tmp_path / "two"
    compute_latent_stats(tokenizer_dir, class_dir, out_dir=one, num_workers=0, device="cpu")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "drorae.cli",
        "stats", "--model", str(tokenizer_dir), "--data", str(class_dir), "--out", str(two), "--num-workers", "0",
        "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(str(one / "latent_stats.safetensors")), load_file(str(two / "latent_stats.safetensors"))
    assert int(a["count"]) == int(b["count"]) == 18
    for key in ("mean", "var"):
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)


class _Items(torch.utils.data.Dataset):
    """A base dataset of labelled dummy items, as LatentDataset / LabeledImageFolder give them."""

    classes = ["a", "b"]

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"latent": torch.zeros(2), "label": i % 2, "index": i}

    def set_epoch(self, epoch):
        pass


def test_label_dropout_rate_and_draws_are_per_sample_and_epoch():
    from drorae.data.folders import derive_seed, sample_generator
    from drorae.generation.latents import FlowMatchingSamples

    ds = FlowMatchingSamples(_Items(4000), (3,), label_dropout=0.1, seed=7)
    drops = [ds[i]["drop"] for i in range(4000)]
    rate = sum(drops) / 4000
    assert abs(rate - 0.1) < 3 * (0.1 * 0.9 / 4000) ** 0.5  # within 3 standard errors of RAE's 0.1
    # each sample's draws come from (seed, epoch, index), in the order noise, u, drop: recomputed by hand
    g = sample_generator(derive_seed(7, 2), 0, 123)
    noise, u, drop = torch.randn(3, generator=g), torch.rand((), generator=g), torch.rand((), generator=g) < 0.1
    item = ds[123]
    assert torch.equal(item["noise"], noise) and float(item["u"]) == float(u) and item["drop"] == bool(drop)
    ds.set_epoch(1)
    assert sum(ds[i]["drop"] for i in range(4000)) != sum(drops) or [ds[i]["drop"] for i in range(50)] != drops[:50]
    assert not any(FlowMatchingSamples(_Items(500), (3,), 0.0, 7)[i]["drop"] for i in range(500))
    assert all(FlowMatchingSamples(_Items(500), (3,), 1.0, 7)[i]["drop"] for i in range(500))
