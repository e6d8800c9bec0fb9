"""A diffusers VAE through the CLI: ``stats``, ``cache-latents``, ``train-dit`` (resumed), ``sample`` and ``eval`` run
end to end on a random tiny ``AutoencoderKL`` saved with diffusers' ``save_pretrained``; a cache or a DiT made for one
tokenizer refuses another; ``eval`` with two tokenizers reports both rows from one pass over the data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from drorae.cli import main

from .conftest import DIT_TINY, FAST

diffusers = pytest.importorskip("diffusers")
CPU = ["--device", "cpu"]


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A 32 px-capable AutoencoderKL (latent 4 x 16 x 16 at 32 px), SD's scaling factor."""
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        scaling_factor=0.18215,
    )
    out = tmp_path_factory.mktemp("vae") / "sd-vae-tiny"
    vae.save_pretrained(out)
    return out


def _cache(vae, data, out, *extra):
    args = ["cache-latents", "--model", str(vae), "--data", str(data), "--out", str(out), "--image-size", "32"]
    assert main([*args, "--shard-size", "8", "--num-workers", "0", *extra, *CPU]) == 0
    return json.loads((out / "meta.json").read_text())


@pytest.mark.slow
def test_vae_stats_cache_train_resume_sample(vae_dir, class_dir, tokenizer_dir, tmp_path):
    from drorae.tokenizer.factory import load_tokenizer

    # latents of the pipeline's scaling first: the cache equals the tokenizer's encode of the crops
    meta = _cache(vae_dir, class_dir, tmp_path / "cache")
    assert meta["latent_shape"] == [4, 16, 16] and meta["tokenizer_kind"] == "AutoencoderKL"
    assert meta["num_latents"] == 18 and meta["image_size"] == 32
    tok = load_tokenizer(vae_dir, image_size=32)
    assert meta["fingerprint"] == tok.fingerprint()

    # stats on a copy: per-channel statistics, a new fingerprint, normalised latents of ~unit variance
    stats = ["stats", "--model", str(vae_dir), "--data", str(class_dir), "--out", str(tmp_path / "vae_stats")]
    assert main([*stats, "--image-size", "32", "--num-workers", "0", *CPU]) == 0
    normed = load_tokenizer(tmp_path / "vae_stats", image_size=32)
    assert normed.normalisation == "stats" and normed.fingerprint() != tok.fingerprint()
    z = torch.cat(
        [normed.encode(torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(i))) for i in range(2)]
    )
    assert z.shape[1:] == (4, 16, 16) and torch.isfinite(z).all()

    # train-dit with patch 2 on the cache, stopped at step 3 and resumed to 6
    args = ["train-dit", "--tokenizer", str(vae_dir), "--latents", str(tmp_path / "cache"), "--config", str(DIT_TINY)]
    run = tmp_path / "run"
    over = [*FAST, "dit.patch_size=2", "train.device=cpu"]
    assert main([*args, "--out", str(run), "--max-steps", "3", *over]) == 0
    assert main([*args, "--out", str(run), "--resume", *over]) == 0
    cfg = json.loads((run / "model" / "config.json").read_text())
    assert cfg["patch_size"] == 2 and cfg["in_channels"] == 4 and cfg["input_size"] == 16
    assert cfg["_extra"]["steps"] == 6 and cfg["_extra"]["fingerprint"] == tok.fingerprint()

    # sample decodes through the VAE at the DiT's image size
    out = tmp_path / "samples"
    sample = ["sample", "--dit", str(run), "--tokenizer", str(vae_dir), "--num", "3", "--steps", "3"]
    assert main([*sample, "--out", str(out), "--no-png", *CPU]) == 0
    with np.load(out / "samples.npz", allow_pickle=False) as npz:
        assert npz["arr_0"].shape == (3, 32, 32, 3)

    # a DiT or a cache made for one tokenizer refuses another (fingerprint): the VAE with statistics, a DRoRAE
    for other in (tmp_path / "vae_stats", tokenizer_dir):
        assert main([*sample, "--out", str(tmp_path / "refused"), *CPU, "--tokenizer", str(other)]) == 2
    refused = ["train-dit", "--tokenizer", str(tmp_path / "vae_stats"), "--latents", str(tmp_path / "cache")]
    with pytest.raises(ValueError, match="fingerprint"):
        import os

        os.environ["DRORAE_TRACEBACK"] = "1"
        try:
            main([*refused, "--config", str(DIT_TINY), "--out", str(tmp_path / "r2"), *over])
        finally:
            del os.environ["DRORAE_TRACEBACK"]


@pytest.mark.slow
def test_eval_two_tokenizers_one_pass(vae_dir, tokenizer_dir, class_dir, tmp_path, monkeypatch, capsys):
    from drorae.evaluation import reconstruction
    from drorae.evaluation.reconstruction import evaluate

    reads = []
    real = reconstruction.adm_item

    def counting(path, index, size):
        reads.append(index)
        return real(path, index, size)

    monkeypatch.setattr(reconstruction, "adm_item", counting)
    out = tmp_path / "both"
    argv = ["eval", "--model", str(tokenizer_dir), "--model", str(vae_dir), "--fusion", "both", "--data"]
    assert (
        main([*argv, str(class_dir), "--out", str(out), "--no-rfid", "--no-stlpips", "--num-workers", "0", *CPU]) == 0
    )
    report = json.loads((out / "report.json").read_text())
    labels = [row["label"] for row in report["rows"]]
    assert labels == ["tok (RAE)", "tok (DRoRAE, fusion on)", "sd-vae-tiny (AutoencoderKL)"]
    assert [row["latent_size"] for row in report["rows"]] == [16 * 4 * 4, 16 * 4 * 4, 4 * 16 * 16]
    grid_reads = 8  # samples.png re-reads the first 8 originals once, whatever the number of rows
    assert len(reads) == report["num_images"] + grid_reads == 18 + grid_reads  # the data were read once
    assert "| sd-vae-tiny (AutoencoderKL) | 4x16x16 (1024) |" in capsys.readouterr().out

    # each row equals the one-model eval of the same tokenizer (identical crops and metrics)
    reads.clear()
    for k, (model, fusion) in enumerate([(tokenizer_dir, False), (tokenizer_dir, True), (vae_dir, None)]):
        single = evaluate(
            model, class_dir, tmp_path / f"one{k}", fusion=fusion, image_size=32 if fusion is None else None,
            stlpips=False, rfid=False, num_workers=0, device="cpu",
        )  # fmt: skip
        row = report["rows"][k]["metrics"]
        assert {m: row[m] for m in single["metrics"]} == pytest.approx(single["metrics"], abs=1e-6)
        with (
            np.load(out / "rows" / str(k) / "reconstructions.npz") as a,
            np.load(tmp_path / f"one{k}" / "reconstructions.npz") as b,
        ):  # noqa: E501
            assert np.array_equal(a["arr_0"], b["arr_0"])
    assert len(reads) == 3 * (18 + 8)  # three separate passes read the data three times
