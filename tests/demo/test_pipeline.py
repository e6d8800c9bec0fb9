"""`drorae demo --quick`: the whole pipeline end to end in seconds (numbers meaningless)."""

import json

import pytest

from drorae.cli import main
from drorae.demo import ROWS


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cache = tmp_path_factory.mktemp("cache")
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
    for name in (
        "report.json",
        "report.md",
        "reconstructions.png",
        "router_weights.png",
        "layer_probe.png",
        "loss_curves.png",
    ):
        assert (demo_out / name).is_file() and (demo_out / name).stat().st_size > 0, name
    for stage in ("phase1", "phase2", "phase3", "rae_matched", "phase2_last_layer"):
        assert (demo_out / stage / "model" / "model.safetensors").is_file()


def test_report_json_shape_and_markdown_shows_its_numbers(demo_out):
    report = json.loads((demo_out / "report.json").read_text())
    assert set(report["phases"]) == set(ROWS)
    for row in ROWS:
        assert set(report["phases"][row]) >= {"psnr", "ssim", "fd"}
    assert len(report["layer_probe_psnr"]) == report["backbone"]["recipe"]["num_layers"] + 1
    assert {"backbone", "probe", "phase1", "phase2", "phase3", "rae_matched", "phase2_last_layer", "eval"} <= set(
        report["seconds"]
    )
    md = (demo_out / "report.md").read_text()
    for row in ROWS:
        r = report["phases"][row]
        assert f"| {r['psnr']:.2f} | {r['ssim']:.4f} | {r['fd']:.4f} |" in md
    assert " | ".join(f"{v:.2f}" for v in report["layer_probe_psnr"]) in md
    for claim in report["claims"]:
        assert claim["claim"] in md


def test_shared_backbone_evaluation_equals_scoring_each_model_alone(demo_out):
    """evaluate_models runs the frozen backbone once for all rows; the numbers must be those of
    the plain per-model path: ReconstructionMetrics on decode(encode(x)) with its own FD passes."""
    import torch

    from drorae.backbones import load_backbone
    from drorae.demo import evaluate_models
    from drorae.demo import photos as sample_data
    from drorae.metrics import ReconstructionMetrics
    from drorae.tokenizer import DRoRAE

    report = json.loads((demo_out / "report.json").read_text())
    crop = report["plan"]["crop"]
    backbone = load_backbone(report["backbone"]["directory"], input_size=crop)
    images = sample_data.fixed_eval_crops(sample_data.load_photos("heldout"), crop, 12, seed=3)
    dirs = {"rae": demo_out / "phase1" / "model", "phase2": demo_out / "phase2" / "model"}
    shared = evaluate_models(dirs, images, backbone, batch_size=5)  # uneven last batch on purpose
    for row, model_dir in dirs.items():
        model = DRoRAE.from_pretrained(model_dir, backbone=backbone).eval()
        alone = ReconstructionMetrics(feature_fn=lambda x: backbone(x).z_base.mean(dim=1))
        with torch.no_grad():
            alone.update(images, model.decode(model.encode(images)).clamp(0, 1))
        for name, value in alone.compute().items():
            assert shared[row][name] == pytest.approx(value, rel=1e-6, abs=1e-9), (row, name)
