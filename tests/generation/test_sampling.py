"""``drorae sample`` and ``drorae eval-gen``, and the stage-2 commands end to end through the CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from drorae.cli import main
from drorae.evaluation.generation import evaluate_generation, load_samples_npz
from drorae.generation.sampling import label_pool, resolve_labels

from .conftest import DIT_TINY, FAST, env


def test_label_pool_has_exactly_k_per_class_in_a_seeded_order():
    pool = label_pool(10, 50, seed=0)
    assert pool.numel() == 500 and torch.equal(torch.bincount(pool), torch.full((10,), 50))
    assert torch.equal(pool, label_pool(10, 50, seed=0)) and not torch.equal(pool, label_pool(10, 50, seed=1))
    assert not torch.equal(pool, pool.sort().values)  # shuffled
    with pytest.raises(ValueError, match=r"--num 7 contradicts --per-class 2 x 3 classes = 6"):
        resolve_labels(3, 7, 2, 0)
    assert resolve_labels(3, 7, None, 0).numel() == 7


@pytest.fixture(scope="module")
def pipeline(tokenizer_dir, class_dir, tmp_path_factory):
    """stats -> cache-latents -> train-dit through the CLI, as the README runs them."""
    root = tmp_path_factory.mktemp("pipeline")
    tok, cache, run = root / "tok", root / "cache", root / "run"
    cpu = ["--num-workers", "0", "--device", "cpu"]
    assert main(["stats", "--model", str(tokenizer_dir), "--data", str(class_dir), "--out", str(tok), *cpu]) == 0
    assert main(["cache-latents", "--model", str(tok), "--data", str(class_dir), "--out", str(cache), *cpu]) == 0
    train = ["--tokenizer", str(tok), "--latents", str(cache), "--config", str(DIT_TINY), "--out", str(run), *FAST]
    assert main(["train-dit", *train]) == 0
    return root


def sample_cli(root, out, *extra):
    return [
        "sample", "--dit", str(root / "run"), "--tokenizer", str(root / "tok"), "--out", str(out),
        "--steps", "3", "--device", "cpu", *extra,
    ]  # fmt: skip


def test_sample_writes_the_adm_npz_and_does_not_depend_on_the_batch(pipeline, tmp_path):
    assert main(sample_cli(pipeline, tmp_path / "a", "--per-class", "4", "--batch", "5", "--sampler", "sde")) == 0
    images = load_samples_npz(tmp_path / "a" / "samples.npz")
    assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8
    with np.load(tmp_path / "a" / "samples.npz") as npz:
        assert np.array_equal(np.bincount(npz["arr_1"]), [4, 4, 4])
    assert len(list((tmp_path / "a" / "images").glob("*.png"))) == 12 and (tmp_path / "a" / "grid.png").is_file()
    # sample i's noise comes from (seed, i): another chunking gives the same images
    assert main(sample_cli(pipeline, tmp_path / "b", "--per-class", "4", "--batch", "12", "--sampler", "sde")) == 0
    assert np.array_equal(load_samples_npz(tmp_path / "b" / "samples.npz"), images)
    # a rerun with other settings into the same folder is refused
    code = main(sample_cli(pipeline, tmp_path / "a", "--per-class", "4", "--batch", "5", "--sampler", "heun"))
    assert code == 2


def test_guidance_of_the_cli(pipeline, tmp_path):
    from drorae.generation import DiT

    base = sample_cli(pipeline, tmp_path / "plain", "--num", "6")
    assert main(base) == 0
    plain = load_samples_npz(tmp_path / "plain" / "samples.npz").astype(int)
    # a guide that differs from the main network: its weights perturbed
    guide = DiT.from_pretrained(pipeline / "run")
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    guide.save_pretrained(tmp_path / "guide", extra=DiT.read_extra(pipeline / "run"))

    def auto(name, scale, guide_dir):
        args = sample_cli(pipeline, tmp_path / name, "--num", "6", "--guidance", "autoguidance", "--scale", scale)
        assert main([*args, "--guide", str(guide_dir)]) == 0
        return load_samples_npz(tmp_path / name / "samples.npz").astype(int)

    assert np.array_equal(auto("same", "1.7", pipeline / "run"), plain)  # guide == main: v_g + w (v_m - v_g) = v_m
    assert np.abs(auto("w1", "1", tmp_path / "guide") - plain).max() <= 1  # w = 1: v_m up to float rounding
    assert np.abs(auto("w17", "1.7", tmp_path / "guide") - plain).max() > 10  # a real guide at w = 1.7 moves them
    assert main(sample_cli(pipeline, tmp_path / "x", "--num", "6", "--guidance", "autoguidance")) == 2  # no --guide


def test_two_torchrun_ranks_write_the_samples_of_one(pipeline, tmp_path):
    one = tmp_path / "one"
    args = ["--num-samples", "9", "--batch", "2", "--guidance", "cfg", "--scale", "2"]
    assert main(sample_cli(pipeline, one, *args)) == 0
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "drorae.cli",
        *sample_cli(pipeline, tmp_path / "two", *args),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.array_equal(load_samples_npz(tmp_path / "two" / "samples.npz"), load_samples_npz(one / "samples.npz"))


def test_eval_gen_of_a_set_against_itself(pipeline, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", arr_0=images)
    np.savez(tmp_path / "ref.npz", arr_0=images)
    report = evaluate_generation(
        tmp_path / "s.npz", tmp_path / "ref.npz", features="backbone", tokenizer=pipeline / "tok", device="cpu"
    )
    m = report["metrics"]
    assert m["fd_backbone"] < 1e-6 and m["precision"] == 1.0 and m["recall"] == 1.0
    assert m["inception_score"] is None and "--isc-weights" in report["notes"]["inception_score"]
    other = rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8) // 4
    np.savez(tmp_path / "o.npz", arr_0=other)
    far = evaluate_generation(tmp_path / "o.npz", tmp_path / "ref.npz", features="backbone", tokenizer=pipeline / "tok")
    assert json.loads((tmp_path / "eval_gen.json").read_text())["metrics"] == far["metrics"]
    # by hand: the backbone's mean-pooled z_base, numpy moments and the closed form with scipy's sqrtm
    from scipy import linalg

    from drorae import DRoRAE

    backbone = DRoRAE.from_pretrained(pipeline / "tok").backbone.eval()

    def feats(arr):
        with torch.no_grad():
            return backbone(torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255).z_base.mean(1).double().numpy()

    a, b = feats(other), feats(images)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert far["metrics"]["fd_backbone"] == pytest.approx(expected, rel=1e-4) and expected > 1e-3


def test_eval_gen_refuses_what_is_not_an_adm_npz(tmp_path):
    np.savez(tmp_path / "f.npz", arr_0=np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"arr_0 is float32 \[2, 8, 8, 3\], expected uint8"):
        load_samples_npz(tmp_path / "f.npz")
    np.savez(tmp_path / "k.npz", images=np.zeros((2, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"has no arr_0"):
        load_samples_npz(tmp_path / "k.npz")


def test_gfid_with_the_real_inception_network(pipeline, tmp_path, inception_fid_weights):
    """The TF-Inception pool3 FID against an ADM-style reference with stored mu/sigma."""
    assert main(sample_cli(pipeline, tmp_path / "s", "--num", "6", "--no-png")) == 0
    samples = load_samples_npz(tmp_path / "s" / "samples.npz")
    from drorae.evaluation.metrics import load_inception_fid

    # the reference statistics straight from the network and numpy (ADM's np.mean / np.cov), not through eval-gen
    net = load_inception_fid()
    with torch.no_grad():
        feats = net(torch.from_numpy(samples).permute(0, 3, 1, 2).float() / 255).double().numpy()
    np.savez(tmp_path / "ref.npz", arr_0=samples, mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))
    code = main(
        ["eval-gen", str(tmp_path / "s" / "samples.npz"), "--ref", str(tmp_path / "ref.npz"), "--device", "cpu"]
    )
    assert code == 0
    report = json.loads((tmp_path / "s" / "eval_gen.json").read_text())
    assert report["metrics"]["gfid"] < 1e-3 and "TF-Inception pool3" in report["features"]
    assert report["notes"]["reference_statistics"].startswith("mu/sigma stored in")
    # statistics of other images give the distance of the closed form on the two mean vectors (same covariance)
    shifted = {"mu": feats.mean(0) + 0.5, "sigma": np.cov(feats, rowvar=False)}
    np.savez(tmp_path / "ref2.npz", **shifted)
    code = main(["eval-gen", str(tmp_path / "s" / "samples.npz"), "--ref", str(tmp_path / "ref2.npz"), "--device",
                 "cpu", "--out", str(tmp_path / "e2")])  # fmt: skip
    assert code == 0
    gfid = json.loads((tmp_path / "e2" / "eval_gen.json").read_text())["metrics"]["gfid"]
    assert gfid == pytest.approx(0.25 * feats.shape[1], rel=1e-3)  # |mu1 - mu2|^2 = 2048 * 0.5^2


def test_sampling_json_records_the_shift_that_was_used(pipeline, tmp_path):
    from drorae.generation import DiT

    assert main(sample_cli(pipeline, tmp_path / "s", "--num", "3", "--no-png")) == 0
    summary = json.loads((tmp_path / "s" / "sampling.json").read_text())
    assert summary["shift"] == DiT.read_extra(pipeline / "run")["shift"] and summary["num"] == 3
