"""Flags the README and docs show that no other test runs: `stats --flip`, `sample --seed/--shift/--precision`,
`eval-gen --nearest-k/--pr-num/--inception`, `sample-t2i --interval/--sampler/--shift`; each test checks the flag's
effect, not only the exit code."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from drorae.cli import main
from drorae.evaluation.generation import load_samples_npz

from .test_sampling import pipeline, sample_cli  # noqa: F401  (pipeline: the module's fixture)
from .test_train_t2i import llm_dir, pairs, train  # noqa: F401  (llm_dir, pairs: fixtures)


def _squares(root, n=5, seed=0):
    """32 px squares, the tokenizer's input size: no resize or crop, so an image's mirror is its latent's input
    mirrored."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def _stats(directory):
    from drorae import DRoRAE

    model = DRoRAE.from_pretrained(directory)
    return model.latent_mean.clone(), model.latent_std.clone()


def test_stats_flip_counts_every_image_and_its_mirror(tokenizer_dir, tmp_path):
    images = _squares(tmp_path / "images")
    both = _squares(tmp_path / "both")
    for path in sorted(images.iterdir()):
        Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(both / f"mirror_{path.name}")
    cpu = ["--num-workers", "0", "--device", "cpu", "--batch", "4"]
    assert main(["stats", "--model", str(tokenizer_dir), "--data", str(images), "--out", str(tmp_path / "f"),
                 "--flip", *cpu]) == 0  # fmt: skip
    assert main(["stats", "--model", str(tokenizer_dir), "--data", str(both), "--out", str(tmp_path / "b"), *cpu]) == 0
    assert (
        main(["stats", "--model", str(tokenizer_dir), "--data", str(images), "--out", str(tmp_path / "p"), *cpu]) == 0
    )
    flipped, mirrored, plain = _stats(tmp_path / "f"), _stats(tmp_path / "b"), _stats(tmp_path / "p")
    for a, b in zip(flipped, mirrored):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(flipped[0], plain[0])


def test_sample_seed_shift_and_precision(pipeline, tmp_path):  # noqa: F811
    def run(name, *flags):
        assert main(sample_cli(pipeline, tmp_path / name, "--num", "4", "--no-png", *flags)) == 0
        args = json.loads((tmp_path / name / "sampling_args.json").read_text())
        return load_samples_npz(tmp_path / name / "samples.npz"), args

    base, base_args = run("base")
    assert base_args["shift"] != 2.5
    seed1, _ = run("seed1", "--seed", "1")
    shifted, shifted_args = run("shift", "--shift", "2.5")
    fp32, _ = run("fp32", "--precision", "fp32")  # auto is fp32 on a CPU
    bf16, _ = run("bf16", "--precision", "bf16")
    assert shifted_args["shift"] == 2.5
    assert not np.array_equal(seed1, base) and not np.array_equal(shifted, base)
    assert np.array_equal(fp32, base) and not np.array_equal(bf16, base)


def test_eval_gen_nearest_k_pr_num_and_inception(tokenizer_dir, tmp_path, capsys):
    from prdc import compute_prdc

    from drorae.evaluation.generation import backbone_features
    from drorae.evaluation.metrics import features_of

    rng = np.random.default_rng(0)
    samples = rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
    ref = (samples.astype(int) + rng.integers(-90, 90, samples.shape)).clip(0, 255).astype(np.uint8)
    np.savez(tmp_path / "s.npz", arr_0=samples)
    np.savez(tmp_path / "r.npz", arr_0=ref)
    common = ["eval-gen", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "r.npz"), "--features", "backbone",
              "--tokenizer", str(tokenizer_dir), "--device", "cpu"]  # fmt: skip
    names = ("precision", "recall", "density", "coverage")

    def run(name, *flags):
        assert main([*common, "--out", str(tmp_path / name), *flags]) == 0
        report = json.loads((tmp_path / name / "eval_gen.json").read_text())
        return report, [report["metrics"][n] for n in names]

    (default, default_pr), (k1, k1_pr) = run("d"), run("k", "--nearest-k", "1")
    assert default["nearest_k"] == 3 and k1["nearest_k"] == 1 and k1_pr != default_pr
    # k = 1 on all 12 rows per side: prdc itself on the same features
    feature_fn, _ = backbone_features(tokenizer_dir, torch.device("cpu"))
    with torch.no_grad():
        real, fake = (features_of(a, feature_fn, "cpu", 4).numpy() for a in (ref, samples))
    expected = compute_prdc(real, fake, 1)
    assert k1_pr == pytest.approx([expected[n] for n in names], rel=1e-5)
    few, few_pr = run("few", "--nearest-k", "1", "--pr-num", "6")  # 6 of the 12 rows per side
    assert few["metrics"]["num_real"] == few["metrics"]["num_fake"] == 6 and few_pr != k1_pr
    assert k1["metrics"]["num_real"] == 12
    # --inception: the file named is the one read (not the installed package's)
    code = main([*common[:4], "--inception", str(tmp_path / "no_such_inception.pt"), "--device", "cpu"])
    assert code == 2 and "no_such_inception.pt" in capsys.readouterr().err


def test_sample_t2i_interval_sampler_and_shift(pairs, llm_dir, tokenizer_dir, tmp_path):  # noqa: F811
    # Bagel's network: under the demo's adaLN-Zero (gates start at 0) two steps leave the caption almost no effect,
    # and CFG's interval would change no pixel
    train(tmp_path / "run", tokenizer_dir, llm_dir, pairs, "train.max_steps=2", "mot.gen_adaln=false")
    (tmp_path / "prompts.txt").write_text("a photo of a red circle\n")

    def run(name, *flags):
        argv = ["sample-t2i", "--model", str(tmp_path / "run"), "--tokenizer", str(tokenizer_dir), "--prompts",
                str(tmp_path / "prompts.txt"), "--out", str(tmp_path / name), "--per-prompt", "2", "--steps", "3",
                "--scale", "3", "--device", "cpu", "--precision", "fp32", *flags]  # fmt: skip
        assert main(argv) == 0
        args = json.loads((tmp_path / name / "sampling_args.json").read_text())
        images = [np.asarray(Image.open(tmp_path / name / "00000" / "samples" / f"{k:04d}.png")) for k in range(2)]
        return np.stack(images), args

    base, base_args = run("base")
    for name, flags, key, value in (
        ("interval", ["--interval", "0.5", "1.0"], "interval", [0.5, 1.0]),
        ("heun", ["--sampler", "heun"], "sampler", "heun"),
        ("shift", ["--shift", "2.5"], "shift", 2.5),
    ):
        images, args = run(name, *flags)
        assert args[key] == value != base_args[key], (name, args)
        assert not np.array_equal(images, base), name
