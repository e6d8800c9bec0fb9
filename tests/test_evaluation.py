"""``drorae eval``: ADM crop, RAE-convention scores, npz, resumable shards, torchrun = one process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from drorae import BackboneConfig, DecoderConfig, DRoRAE, DRoRAEConfig, FusionConfig
from drorae.data.adm import adm_center_crop
from drorae.evaluation.reconstruction import evaluate

from .training.conftest import REPO, write_images


def test_adm_center_crop_halves_resizes_and_centres():
    # a 1000 x 400 image with a bright vertical stripe in its middle: the crop keeps it in its centre
    pixels = np.zeros((400, 1000, 3), dtype=np.uint8)
    pixels[:, 490:510] = 255
    crop = adm_center_crop(Image.fromarray(pixels), 64)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    column = crop[32].astype(int).sum(axis=1)
    assert column[31] > 600 and column[0] == 0 and column[-1] == 0
    # an image already at the size comes back unchanged
    square = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    assert np.array_equal(adm_center_crop(Image.fromarray(square), 64), square)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from .conftest import save_tiny_dinov2

    root = tmp_path_factory.mktemp("eval_model")
    save_tiny_dinov2(root / "backbone_src")
    torch.manual_seed(0)
    config = DRoRAEConfig(
        backbone=BackboneConfig(name_or_path=str(root / "backbone_src"), input_size=32),
        decoder=DecoderConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, patch_size=4),
        fusion=FusionConfig(expert_hidden=8),
    )
    DRoRAE.from_config(config).save_pretrained(root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory):
    folder = write_images(tmp_path_factory.mktemp("val") / "n01", 11, seed=3, size=(40, 52))
    (folder / "broken.png").write_text("not an image")
    return folder.parent


def _npz(path):
    with np.load(path, allow_pickle=False) as data:
        return data["arr_0"]


def test_eval_writes_the_npz_and_scores_it_the_way_rae_does(tiny_model_dir, val_dir, tmp_path, inception_fid_weights):
    from torchmetrics.functional.image import structural_similarity_index_measure

    report = evaluate(tiny_model_dir, val_dir, tmp_path / "e", batch_size=4, shard_size=5, num_workers=0)
    arr = _npz(tmp_path / "e" / "reconstructions.npz")
    assert arr.shape == (11, 32, 32, 3) and arr.dtype == np.uint8
    assert report["num_images"] == 11 and report["skipped_files"] == 1
    # recompute PSNR and SSIM from the npz and the ADM crops of the inputs
    from drorae.data.folders import list_images, load_rgb

    paths = [p for p in list_images(val_dir) if p.name != "broken.png"]
    originals = np.stack([adm_center_crop(load_rgb(p), 32) for p in paths])
    x = torch.from_numpy(originals).permute(0, 3, 1, 2).double() / 255
    y = torch.from_numpy(arr).permute(0, 3, 1, 2).double() / 255
    mse = (x - y).pow(2).flatten(1).mean(1)
    assert report["metrics"]["psnr"] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), abs=1e-4)
    ssim = structural_similarity_index_measure(y.float(), x.float(), data_range=1.0, reduction="none")
    assert report["metrics"]["ssim"] == pytest.approx(float(ssim.double().mean()), abs=1e-5)
    assert report["metrics"]["stlpips-vgg"] > 0
    # torchmetrics' FID on the same network, originals vs the npz: another implementation of the distance
    assert report["metrics"]["rfid"] is not None, report["notes"]
    from torchmetrics.image.fid import FrechetInceptionDistance

    from drorae.evaluation.metrics import load_inception_fid

    net = load_inception_fid()

    class Features(torch.nn.Module):
        num_features = 2048

        def forward(self, images):
            return net(images).double()

    fid = FrechetInceptionDistance(feature=Features(), normalize=True).double()
    fid.update(x, real=True)
    fid.update(y, real=False)
    assert report["metrics"]["rfid"] == pytest.approx(float(fid.compute()), rel=1e-3)
    saved = json.loads((tmp_path / "e" / "report.json").read_text())
    assert saved["metrics"] == report["metrics"]
    assert "| psnr |" in (tmp_path / "e" / "report.md").read_text()
    grid = Image.open(tmp_path / "e" / report["figure"])  # 8 originals over their reconstructions, 2 px padding
    assert grid.size == (8 * 32 + 9 * 2, 2 * 32 + 3 * 2)


def test_eval_resumes_from_its_shards_and_fusion_off_is_plain_rae(tiny_model_dir, val_dir, tmp_path):
    kw = dict(batch_size=4, num_workers=0, stlpips=False, rfid=False)
    first = evaluate(tiny_model_dir, val_dir, tmp_path / "e", shard_size=5, **kw)
    assert first["shards"] == {"total": 3, "reused": 0}
    (tmp_path / "e" / "shards" / "shard_00001.safetensors").unlink()  # as if killed while writing shard 1
    again = evaluate(tiny_model_dir, val_dir, tmp_path / "e", shard_size=5, **kw)
    assert again["shards"] == {"total": 3, "reused": 2} and again["metrics"] == first["metrics"]
    off = evaluate(tiny_model_dir, val_dir, tmp_path / "off", fusion=False, **kw)
    assert not off["fusion"] and off["metrics"]["psnr"] != first["metrics"]["psnr"]
    model = DRoRAE.from_pretrained(tiny_model_dir).eval()
    model.fusion_enabled = False
    from drorae.data.folders import list_images, load_rgb

    first_readable = next(p for p in list_images(val_dir) if p.name != "broken.png")
    x = torch.from_numpy(adm_center_crop(load_rgb(first_readable), 32)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        rae = (model.decode(model.encode(x)).clamp(0, 1) * 255).round().to(torch.uint8)
    assert np.array_equal(_npz(tmp_path / "off" / "reconstructions.npz")[0], rae[0].permute(1, 2, 0).numpy())


def test_two_process_eval_equals_one_process(tiny_model_dir, val_dir, tmp_path):
    common = [
        "eval",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(val_dir),
        "--batch",
        "4",
        "--shard-size",
        "3",
        "--num-workers",
        "0",
        "--no-stlpips",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    one = subprocess.run(
        [sys.executable, "-m", "drorae.cli", *common, "--out", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "drorae.cli",
            *common,
            "--out",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    a = json.loads((tmp_path / "one" / "report.json").read_text())
    b = json.loads((tmp_path / "two" / "report.json").read_text())
    assert b["world_size"] == 2 and a["metrics"] == b["metrics"] and a["num_images"] == b["num_images"] == 11
    assert np.array_equal(
        _npz(tmp_path / "one" / "reconstructions.npz"), _npz(tmp_path / "two" / "reconstructions.npz")
    )


def test_a_shard_of_only_unreadable_files_is_counted_not_fatal(tiny_model_dir, tmp_path):
    folder = write_images(tmp_path / "val", 3, seed=5)
    for name in ("a_broken.png", "b_broken.jpg"):  # sorted first: shard 0 holds nothing readable
        (folder / name).write_bytes(b"\x00garbage")
    report = evaluate(
        tiny_model_dir, folder, tmp_path / "e", shard_size=2, batch_size=2, num_workers=0, rfid=False, stlpips=False
    )
    assert report["num_images"] == 3 and report["skipped_files"] == 2
    assert _npz(tmp_path / "e" / "reconstructions.npz").shape == (3, 32, 32, 3)


def test_ref_npz_without_statistics_uses_the_users_inception_file(
    tiny_model_dir, val_dir, tmp_path, monkeypatch, inception_fid_weights
):
    """``--ref-npz`` holding only ``arr_0``: its statistics come from the network the run loaded (the user's
    ``--inception`` file, on the run's device), not from a default lookup that ignores both."""
    import shutil

    from drorae.evaluation import metrics

    installed = inception_fid_weights
    mine = tmp_path / "my-inception.pt"
    shutil.copy(installed, mine)
    monkeypatch.setattr(metrics, "_find_installed_inception", lambda: None)  # only the user's copy exists
    rng = np.random.default_rng(7)
    ref = rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", arr_0=ref)
    kw = dict(batch_size=4, num_workers=0, stlpips=False, inception=str(mine), device="cpu")
    report = evaluate(tiny_model_dir, val_dir, tmp_path / "e", ref_npz=tmp_path / "ref.npz", **kw)
    net = metrics.load_inception_fid(mine)
    with torch.no_grad():
        real = net(torch.from_numpy(ref).permute(0, 3, 1, 2).float() / 255).double().numpy()
        recs = _npz(tmp_path / "e" / "reconstructions.npz")
        fake = net(torch.from_numpy(recs).permute(0, 3, 1, 2).float() / 255).double().numpy()
    # the Frechet distance with numpy: 6 and 11 features in 2048 dimensions give covariances s_i = A_i^T A_i of rank
    # 5 and 10 (A_i the centred rows / sqrt(n_i - 1)), and tr (s1 s2)^1/2 is the nuclear norm of the 6 x 11 A1 A2^T
    a1 = (real - real.mean(0)) / np.sqrt(len(real) - 1)
    a2 = (fake - fake.mean(0)) / np.sqrt(len(fake) - 1)
    np.testing.assert_allclose(a1.T @ a1, np.cov(real, rowvar=False), rtol=1e-10, atol=1e-12)
    mean_term = np.sum((real.mean(0) - fake.mean(0)) ** 2)
    expected = mean_term + np.sum(a1**2) + np.sum(a2**2) - 2 * np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()
    assert report["metrics"]["rfid"] == pytest.approx(expected, rel=1e-4)
    assert "computed from its arr_0" in report["notes"]["rfid"]


def test_a_foreign_ref_npz_is_refused_before_any_work(tiny_model_dir, val_dir, tmp_path):
    from drorae.serialization import ForeignFileError

    (tmp_path / "ref.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ForeignFileError, match=r"ref.npz is not an ADM reference batch"):
        evaluate(tiny_model_dir, val_dir, tmp_path / "e", ref_npz=tmp_path / "ref.npz", num_workers=0)
    assert not (tmp_path / "e").exists()
