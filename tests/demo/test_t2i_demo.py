"""``drorae demo --t2i --quick``: the whole text-to-image comparison runs and reports what the full run reports."""

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from drorae.data.shapes import TAGS
from drorae.demo.t2i import ROWS, T2IDemoPlan, run_t2i_demo


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i-demo")
    return run_t2i_demo(root, T2IDemoPlan.quick_plan(), seeds=2), root / "t2i"


def test_quick_t2i_demo_reports_ceiling_scores_and_margins(quick_demo):
    report, out = quick_demo
    assert report["ceiling"]["ground truth"]["overall"] == 1.0  # the scorer is right on its own images
    assert set(report["ceiling"]) == {"ground truth", *ROWS}
    assert set(report["summary"]) == set(ROWS) and set(report["margins"]) == {*TAGS, "overall"}
    for seed in range(2):
        assert report["per_seed"][seed]["rae"].keys() == {*TAGS, "overall"}
        assert (out / f"grid_drorae_seed{seed}.png").is_file()
    assert json.loads((out / "report.json").read_text())["seeds"] == 2
    assert "DRoRAE - RAE (paired)" in (out / "report.md").read_text()
    assert set(report["floor"]) == set(ROWS) and all(0 <= m <= 1 for m, _ in report["floor"].values())
    assert "captions shuffled across" in (out / "report.md").read_text()
    # above the floor, paired per seed: each seed's overall minus the floor of that seed's own images
    from drorae.demo.t2i import _shuffled_floor

    meta = [json.loads(line) for line in (out / "shapes_evaluation_metadata.jsonl").read_text().splitlines()]
    for name in ROWS:
        gaps = [
            report["per_seed"][seed][name]["overall"]
            - _shuffled_floor(out / f"seed{seed}" / name / "samples-eval", meta)["overall"]
            for seed in range(2)
        ]
        expected = (statistics.mean(gaps), statistics.stdev(gaps))
        assert report["above_floor"][name] == pytest.approx(expected, abs=1e-12)
    assert "Overall minus the floor, paired per seed" in (out / "report.md").read_text()


def test_the_shuffled_caption_floor_scores_images_against_another_prompt(tmp_path):
    """Ground-truth images as 'samples': their own prompts score 1.0, the next prompt's rules far less (a floor that
    drawing right objects without reading the caption would reach); identical prompts give 1.0 both ways."""
    import shutil

    from drorae.data.shapes import write_shapes
    from drorae.demo.t2i import _shuffled_floor
    from drorae.evaluation.shapes import run_shapes_eval

    write_shapes(tmp_path / "gt", 24, 64, seed=3)
    meta = [json.loads(line) for line in (tmp_path / "gt" / "metadata.jsonl").read_text().splitlines()]

    def samples(metadata, image_of):
        folder = tmp_path / f"samples{len(list(tmp_path.iterdir()))}"
        for i, m in enumerate(metadata):
            (folder / f"{i:05d}" / "samples").mkdir(parents=True)
            (folder / f"{i:05d}" / "metadata.jsonl").write_text(json.dumps(m) + "\n")
            shutil.copy(tmp_path / "gt" / f"{image_of(i):06d}.png", folder / f"{i:05d}" / "samples" / "0000.png")
        (tmp_path / "meta.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metadata))
        return folder

    folder = samples(meta, lambda i: i)
    assert run_shapes_eval(folder, metadata=tmp_path / "meta.jsonl")["overall"] == 1.0
    assert _shuffled_floor(folder, meta)["overall"] < 0.5
    same = samples([meta[0]] * 6, lambda i: 0)  # one prompt six times: shuffling changes nothing
    assert _shuffled_floor(same, [meta[0]] * 6)["overall"] == 1.0


def test_renoise_probe_ends_on_the_reconstructions_at_t0_0_and_on_sample_t2i_at_t0_1(quick_demo, tmp_path):
    from PIL import Image

    from drorae.demo.t2i_probe import renoise_probe
    from drorae.evaluation.shapes import score_shapes
    from drorae.generation.sampling import to_uint8
    from drorae.generation.text.sampling import T2ISampleSettings, run_t2i_sampling
    from drorae.tokenizer.model import DRoRAE

    out = quick_demo[1]
    run, tok, held = out / "seed0" / "rae", out / "tokenizers" / "rae" / "model", out / "shapes-heldout"
    result = renoise_probe(run, tok, held, t0s=(0.0, 0.6, 1.0), num=5, scale=2.0, steps=4, seed=3)
    meta = [json.loads(line) for line in (held / "metadata.jsonl").read_text().splitlines()][:5]
    images = np.stack([np.asarray(Image.open(held / f"{i:06d}.png").convert("RGB")) for i in range(5)])
    model = DRoRAE.from_pretrained(tok).eval()
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        recon = to_uint8(model.decode(model.encode(x))).numpy()
    assert np.array_equal(result[0.0]["pixels"], recon)  # no noise, no step: the tokenizer's reconstruction
    assert result[0.0]["accuracy"] == np.mean([score_shapes(p, m)[0] for p, m in zip(recon, meta)])
    assert result[0.0]["latent_mse"] == 0.0
    # from pure noise: exactly what sample-t2i draws for these captions (image p of per-prompt 1 is sample p)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(m) + "\n" for m in meta))
    s = T2ISampleSettings(scale=2.0, steps=4, seed=3, precision="fp32")
    run_t2i_sampling(run, tok, prompts, tmp_path / "s", per_prompt=1, settings=s, device="cpu", progress=False)
    drawn = np.stack([np.asarray(Image.open(tmp_path / "s" / f"{p:05d}" / "samples" / "0000.png")) for p in range(5)])
    assert np.array_equal(result[1.0]["pixels"], drawn)
    assert not np.array_equal(result[0.6]["pixels"], drawn)


@pytest.mark.slow
def test_the_unconditional_controls_run_and_resume(tmp_path):
    """`python -m drorae.demo.t2i_controls` at the quick sizes: two controls, one seed; a second call skips both."""
    from drorae.demo.t2i_controls import main

    args = ["--out", str(tmp_path), "--control", "bagel", "--control", "t1000=mot.time_scale=1000", "--seeds", "0"]
    assert main([*args, "--steps", "3", "--quick"]) == 0
    results = json.loads((tmp_path / "controls.json").read_text())
    assert set(results) == {"bagel/seed0/3", "t1000/seed0/3"}
    assert results["t1000/seed0/3"]["overrides"] == ["mot.time_scale=1000"]
    from drorae.generation.text.mot import MoTGenerator

    assert MoTGenerator.from_pretrained(tmp_path / "t1000" / "seed0-3" / "model").config.time_scale == 1000.0
    assert all(0 <= a <= 1 for a in results["bagel/seed0/3"]["probe"].values())
    before = (tmp_path / "controls.json").stat().st_mtime_ns
    assert main([*args, "--steps", "3", "--quick"]) == 0
    assert (tmp_path / "controls.json").stat().st_mtime_ns == before


@pytest.mark.slow
def test_the_captioned_controls_are_scored_as_the_demo_scores(tmp_path):
    """`--captions`: trained with captions, the evaluation prompts sampled and scored, the shuffled floor beside;
    `--curve`: the same at an earlier step of the one schedule."""
    from drorae.demo.t2i import _shuffled_floor
    from drorae.demo.t2i_controls import main
    from drorae.evaluation.shapes import run_shapes_eval

    args = ["--out", str(tmp_path), "--control", "toy=mot.gen_adaln=true,mot.latent_rope=2d", "--seeds", "0"]
    assert main([*args, "--steps", "3", "--quick", "--captions", "--curve", "2"]) == 0
    result = json.loads((tmp_path / "controls.json").read_text())["toy/seed0/3/captions"]
    samples = tmp_path / "toy" / "seed0-3-captions" / "samples-eval"
    meta_path = tmp_path / "shapes_evaluation_metadata.jsonl"
    meta = [json.loads(line) for line in meta_path.read_text().splitlines()]
    assert len(list(samples.glob("*/samples/*.png"))) == len(meta)  # the quick plan: one image per prompt
    assert result["scores"]["overall"] == run_shapes_eval(samples, metadata=meta_path)["overall"]
    assert result["floor"] == _shuffled_floor(samples, meta)["overall"]
    assert (tmp_path / "toy" / "seed0-3-captions" / "grid.png").is_file()
    early = tmp_path / "toy" / "seed0-3-captions" / "samples-eval-2"
    assert result["curve"]["2"]["scores"]["overall"] == run_shapes_eval(early, metadata=meta_path)["overall"]
    assert result["curve"]["2"]["floor"] == _shuffled_floor(early, meta)["overall"]
    assert json.loads((tmp_path / "toy" / "seed0-3-captions" / "model" / "config.json").read_text())["steps"] == 3
    with pytest.raises(SystemExit):  # a curve without captions has nothing to score
        main([*args, "--steps", "3", "--quick", "--curve", "2"])


def _write_samples(folder: Path, gt: Path, per_prompt: int, image_of) -> None:
    """A sample folder in sample-t2i's layout whose image ``k`` of prompt ``i`` is ground-truth image
    ``image_of(i, k)``."""
    import shutil

    meta = [json.loads(line) for line in (gt / "metadata.jsonl").read_text().splitlines()]
    for i, m in enumerate(meta):
        (folder / f"{i:05d}" / "samples").mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}" / "metadata.jsonl").write_text(json.dumps(m) + "\n")
        for k in range(per_prompt):
            shutil.copy(gt / f"{image_of(i, k) % len(meta):06d}.png", folder / f"{i:05d}" / "samples" / f"{k:04d}.png")


def test_the_report_pairs_each_seed_with_its_own_floor(quick_demo, tmp_path):
    """Samples that score far from zero (ground-truth images, some of them another prompt's): overall minus floor
    per seed, its mean and spread, against the scorer's numbers taken one seed at a time."""
    import shutil

    from drorae.data.shapes import write_shapes
    from drorae.demo.t2i import _shuffled_floor, score_t2i_demo
    from drorae.evaluation.shapes import run_shapes_eval

    _, quick_out = quick_demo
    out = tmp_path / "t2i"
    shutil.copytree(quick_out / "tokenizers", out / "tokenizers")
    shutil.copytree(quick_out / "shapes-heldout", out / "shapes-heldout")
    gt = tmp_path / "gt"
    write_shapes(gt, 18, 64, seed=3)
    shutil.copy(gt / "metadata.jsonl", out / "shapes_evaluation_metadata.jsonl")
    meta = [json.loads(line) for line in (gt / "metadata.jsonl").read_text().splitlines()]
    wrong = {("rae", 0): 0, ("rae", 1): 5, ("drorae", 0): 9, ("drorae", 1): 2}  # prompts drawn off their caption
    for (name, seed), n_wrong in wrong.items():
        _write_samples(out / f"seed{seed}" / name / "samples-eval", gt, 2,
                       lambda i, k, n=n_wrong: i + (k + 1) * (i < n))  # fmt: skip
    plan = T2IDemoPlan.quick_plan()
    report = score_t2i_demo(out, plan, 2, {"rae": [0.0, 0.0], "drorae": [0.0, 0.0]}, {})
    for name in ROWS:
        gaps = []
        for seed in range(2):
            folder = out / f"seed{seed}" / name / "samples-eval"
            own = run_shapes_eval(folder, metadata=out / "shapes_evaluation_metadata.jsonl")["overall"]
            gaps.append(own - _shuffled_floor(folder, meta)["overall"])
        assert len(set(gaps)) == 2 and min(gaps) > 0  # the check can tell a pairing or a sign apart
        assert report["above_floor"][name] == pytest.approx((statistics.mean(gaps), statistics.stdev(gaps)), abs=1e-12)
    assert report["summary"]["rae"]["overall"][0] < 1.0 and report["per_seed"][0]["rae"]["overall"] == 1.0


def test_controls_score_the_prompts_they_sampled_against_their_own_and_the_next_captions(tmp_path, monkeypatch):
    """score_prompts on samples that are the prompts' own ground truth: overall 1.0 (GenEval's rules on right images),
    the floor that of the same images against the next prompt's rules."""
    from drorae.data.shapes import write_shapes
    from drorae.demo.t2i import _shuffled_floor
    from drorae.demo.t2i_controls import score_prompts
    from drorae.generation.text import sampling

    gt = tmp_path / "gt"
    write_shapes(gt, 24, 64, seed=3)
    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes_evaluation_metadata.jsonl").write_text((gt / "metadata.jsonl").read_text())
    meta = [json.loads(line) for line in (gt / "metadata.jsonl").read_text().splitlines()]
    seen = {}

    def fake_sampling(model, tokenizer, prompts, out, *, per_prompt, settings, device, progress):
        seen.update(prompts=Path(prompts), per_prompt=per_prompt, scale=settings.scale, steps=settings.steps)
        _write_samples(Path(out), gt, per_prompt, lambda i, k: i)

    monkeypatch.setattr(sampling, "run_t2i_sampling", fake_sampling)
    paths = {"shapes": tmp_path / "shapes", "tokenizer": tmp_path / "tok"}
    result = score_prompts(paths, tmp_path / "run", seed=0, suffix="-7")
    assert seen == {
        "prompts": tmp_path / "shapes_evaluation_metadata.jsonl",
        "per_prompt": 4,
        "scale": 2.0,
        "steps": 25,
    }
    assert result["scores"]["overall"] == 1.0
    expected = _shuffled_floor(tmp_path / "run" / "samples-eval-7", meta)["overall"]
    assert result["floor"] == expected < 0.5
    assert (tmp_path / "run" / "grid-7.png").is_file()
