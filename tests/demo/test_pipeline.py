"""`drorae demo --quick`: the whole pipeline end to end in seconds (numbers meaningless)."""

import json

import pytest

from drorae.cli import main
from drorae.demo import ROWS


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory):
    """One backbone cache for the module: the quick backbone is pretrained once, by the first demo run."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory, demo_cache):
    out = tmp_path_factory.mktemp("demo")
    cache = demo_cache
    import os

    old = os.environ.get("DRORAE_CACHE")
    os.environ["DRORAE_CACHE"] = str(cache)
    try:
        assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    finally:
        if old is None:
            os.environ.pop("DRORAE_CACHE")
        else:
            os.environ["DRORAE_CACHE"] = old
    return out


def test_demo_writes_every_artifact(demo_out):
    """Every figure is a real, non-blank image, and every stage's model loads with the fusion switch its stage
    trains with (the report's rows are scored from these directories)."""
    import numpy as np
    from PIL import Image

    from drorae import DRoRAE

    for name in ("reconstructions.png", "router_weights.png", "layer_probe.png", "loss_curves.png"):
        with Image.open(demo_out / name) as image:
            pixels = np.asarray(image.convert("RGB"))
        assert min(pixels.shape[:2]) >= 64 and pixels.std() > 1.0, name  # drawn, not an empty canvas
    fusion = {"phase1": False, "phase2": True, "phase3": True, "rae_matched": False, "rae_decoder_matched": False,
              "phase2_last_layer": True, "layer_mean": False, "layer_mean_all": False, "layer_mean_matched": False,
              "layer_mean_phase2": True, "layer_mean_phase3": True}  # fmt: skip
    upper = None
    for stage, on in fusion.items():
        model = DRoRAE.from_pretrained(demo_out / stage / "model")
        assert model.fusion_enabled == on, stage
        L = model.backbone.num_layers
        if stage.startswith("layer_mean"):  # RAEv2's rule scaled to the demo backbone, kept through --init
            assert model.latent_global_mean and not model.rae_latent, stage
            expected = list(range(2, L + 1)) if stage == "layer_mean_all" else list(range(L, L // 2 - 1, -2))[::-1]
            assert model.latent_layers == expected, stage
            upper = upper or model.latent_layers
        else:
            assert model.rae_latent, stage
    assert upper is not None
    last_layer = DRoRAE.from_pretrained(demo_out / "phase2_last_layer" / "model").fusion
    assert last_layer.layers == [last_layer.num_layers]  # the control fuses the last block only


def test_report_json_shape_and_markdown_shows_its_numbers(demo_out):
    report = json.loads((demo_out / "report.json").read_text())
    assert set(report["phases"]) == set(ROWS)
    for row in ROWS:
        assert set(report["phases"][row]) == {"psnr", "ssim", "fd", "latent_fd"}
    assert report["phases"]["rae"]["latent_fd"] == pytest.approx(0.0, abs=1e-6)  # RAE's latent against itself
    assert len(report["layer_probe_psnr"]) == report["backbone"]["recipe"]["num_layers"] + 1
    assert {
        "backbone",
        "probe",
        "phase1",
        "phase2",
        "phase3",
        "rae_matched",
        "rae_decoder_matched",
        "phase2_last_layer",
        "layer_mean",
        "layer_mean_all",
        "layer_mean_matched",
        "layer_mean_phase2",
        "layer_mean_phase3",
        "eval",
    } <= set(report["seconds"])
    md = (demo_out / "report.md").read_text()
    for row in ROWS:
        r = report["phases"][row]
        assert f"| {r['psnr']:.2f} | {r['ssim']:.4f} | {r['fd']:.4f} |" in md
    assert " | ".join(f"{v:.2f}" for v in report["layer_probe_psnr"]) in md
    for claim in report["claims"]:
        assert claim["claim"] in md


def test_shared_backbone_evaluation_equals_scoring_each_model_alone(demo_out):
    """evaluate_models runs the frozen backbone once for all rows; the numbers must be those of the plain
    per-model path: drorae eval's per-image scores on decode(encode(x)), and an FD with its own backbone passes."""
    import torch

    from drorae.demo import evaluate_models
    from drorae.demo import photos as sample_data
    from drorae.evaluation.metrics import FeatureStats, FrechetFeatureDistance, frechet_distance
    from drorae.evaluation.reconstruction import image_scores, quantize
    from drorae.tokenizer.backbones import load_backbone
    from drorae.tokenizer.model import DRoRAE

    report = json.loads((demo_out / "report.json").read_text())
    crop = report["plan"]["crop"]
    backbone = load_backbone(report["backbone"]["directory"], input_size=crop)
    images = sample_data.fixed_eval_crops(sample_data.load_photos("heldout"), crop, 12, seed=3)
    dirs = {row: demo_out / stage / "model" for row, stage in
            (("rae", "phase1"), ("phase2", "phase2"), ("layer_mean", "layer_mean"),
             ("drorae_on_layer_mean", "layer_mean_phase3"))}  # fmt: skip
    shared = evaluate_models(dirs, images, backbone, batch_size=5)  # uneven last batch on purpose
    for row, model_dir in dirs.items():
        model = DRoRAE.from_pretrained(model_dir, backbone=backbone).eval()
        fd = FrechetFeatureDistance(lambda x: backbone(x).z_base.mean(dim=1), "fd")
        with torch.no_grad():
            rec = quantize(model.decode(model.encode(images))).float() / 255
            alone = {k: float(v.mean()) for k, v in image_scores(images, rec).items()}
            fd.update(real=images, fake=rec)
            tokens, rae = FeatureStats(), FeatureStats()
            tokens.update(model.encode_tokens(images)[0].flatten(0, 1))
            rae.update(torch.nn.functional.layer_norm(backbone(images).hidden_states[-1], (model.backbone.hidden_size,),
                                                      eps=model.backbone.norm_eps).flatten(0, 1))  # fmt: skip
        alone["fd"] = fd.compute()
        alone["latent_fd"] = max(frechet_distance(rae.mean, rae.covariance, tokens.mean, tokens.covariance), 0.0)
        assert set(shared[row]) == set(alone)
        for name, value in alone.items():
            assert shared[row][name] == pytest.approx(value, rel=1e-6, abs=1e-6), (row, name)
    assert shared["layer_mean"]["latent_fd"] > 1e-3  # a layer mean is not RAE's latent


def test_several_seeds_report_mean_and_spread(demo_out, demo_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("DRORAE_CACHE", str(demo_cache))  # the backbone demo_out pretrained: not again
    assert main(["demo", "--quick", "--seeds", "2", "--out", str(tmp_path / "d"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    assert report["seeds"] == [0, 1] and len(report["per_seed"]) == 2
    for row in ROWS:
        values = [r[row]["psnr"] for r in report["per_seed"]]
        assert report["phases"][row]["psnr"] == pytest.approx(sum(values) / 2)
        assert report["phases_std"][row]["psnr"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
        assert (tmp_path / "d" / "seed1" / "phase1" / "model" / "config.json").is_file()
    claim = report["claims"][0]
    assert len(claim["margins_db"]) == 2 and claim["exceeds_spread"] == (
        abs(claim["margin_db"]) > claim["margin_std_db"]
    )
    md = (tmp_path / "d" / "report.md").read_text()
    assert " ± " in md and "over 2 seeds" in md


def test_generation_demo_on_the_demo_tokenizers(demo_out):
    """`drorae demo --generation-only --quick`: stats, cache, train-dit, sample, eval-gen for RAE and DRoRAE."""
    assert main(["demo", "--generation-only", "--quick", "--out", str(demo_out), "--no-progress"]) == 0
    gen = demo_out / "generation"
    report = json.loads((gen / "report.json").read_text())
    from drorae.demo.generation import COMPARISONS, GUIDED, TOKENIZERS

    assert set(report["rows"]) == set(TOKENIZERS) | set(GUIDED)
    for row in report["rows"]:
        assert set(report["rows"][row]) == {"fd", "precision", "recall", "final_loss"}
        assert (gen / row / "seed0" / "samples" / "samples.npz").is_file()
    for row in TOKENIZERS:
        assert (gen / row / "tokenizer" / "latent_stats.safetensors").is_file()
    # the layer-mean rows carry RAEv2's rule into their statistics' tokenizer; their latents are their own
    lm_cfg = json.loads((gen / "layer_mean" / "tokenizer" / "config.json").read_text())
    assert lm_cfg["backbone"]["latent_global_mean"] and len(lm_cfg["backbone"]["latent_layers"]) >= 2
    assert (gen / "layer_mean" / "latents").is_dir() and (gen / "drorae_on_layer_mean" / "latents").is_dir()
    # guidance rows: one head-trained main DiT, AutoGuidance with fewer steps at matched FLOPs
    cost = report["guidance_cost"]
    assert cost["guide_forward_flops"] < cost["main_forward_flops"]
    assert cost["evaluations"]["autoguidance"] < cost["evaluations"]["none"] == cost["evaluations"]["free"]
    flops = cost["flops_per_sample"]
    assert abs(flops["autoguidance"] - flops["none"]) <= cost["main_forward_flops"] + cost["guide_forward_flops"]
    runs = {row: json.loads((gen / row / "seed0" / "samples" / "sampling_args.json").read_text()) for row in GUIDED}
    assert {r["guidance"] for r in runs.values()} == set(GUIDED.values())
    assert len({r["dit"] for r in runs.values()}) == 1  # the same main network in every mode
    # the DRoRAE row uses the fused latent, the RAE row does not
    drorae_cfg = json.loads((gen / "drorae" / "tokenizer" / "config.json").read_text())
    rae_cfg = json.loads((gen / "rae" / "tokenizer" / "config.json").read_text())
    assert drorae_cfg["fusion_enabled"] and not rae_cfg["fusion_enabled"] and drorae_cfg["latent_norm"]
    assert set(report["comparison"]) == {f"{a}_vs_{b}" for a, b in COMPARISONS}
    md = (gen / "report.md").read_text()
    assert f"{report['rows']['drorae']['fd']:.4f}" in md and "not FID" in md
    for name in ("dit_loss.png", "samples.png"):
        assert (gen / name).stat().st_size > 0


def test_generation_demo_without_the_tokenizer_demo_says_what_to_run(tmp_path, capsys):
    assert main(["demo", "--generation-only", "--quick", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "run `drorae demo --out" in capsys.readouterr().err
