"""Phase-2 sweeps: the scaling study's fits, parameter counts, and a resumable 2 x 2 run."""

import json

import pytest
import torch

from drorae.studies.sweeps import expected_fusion_params, fit_log_linear, parse_int_list
from drorae.tokenizer.fusion import DepthRoutedFusion, FusionConfig

from .conftest import CPU_TINY


def sweep_args(command, init, data, out, *extra):
    """A sweep command on the tiny config: 2-step points, no GAN, held-out PSNR."""
    return [
        command,
        "--config",
        str(CPU_TINY),
        "--init",
        str(init),
        "--data",
        str(data),
        "--eval-data",
        str(data),
        "--out",
        str(out),
        "--metric",
        "psnr",
        *extra,
        "train.max_steps=2",
        "loss.discriminator=none",
    ]


def test_the_fit_recovers_a_line_exactly_and_scores_noise_lower():
    params = [1e5, 4e5, 2e6, 9e6]
    fit = fit_log_linear(params, [-2.5 * torch.log10(torch.tensor(p)).item() + 40.0 for p in params])
    assert fit["a"] == pytest.approx(-2.5) and fit["b"] == pytest.approx(40.0) and fit["r2"] == pytest.approx(1.0)
    noisy = fit_log_linear(params, [25.0, 23.0, 24.5, 21.0])
    assert 0 < noisy["r2"] < 1 and noisy["a"] < 0
    with pytest.raises(ValueError, match="at least 2 distinct"):
        fit_log_linear([1e5, 1e5], [1.0, 2.0])


@pytest.mark.parametrize("dim,layers,hidden", [(64, 4, 32), (768, 12, 1536), (128, 3, 384)])
def test_fusion_parameters_match_appendix_c_plus_the_named_extras(dim, layers, hidden):
    with torch.device("meta"):
        f = DepthRoutedFusion(FusionConfig(num_layers=layers, dim=dim, expert_hidden=hidden))
    assert sum(p.numel() for p in f.parameters()) == expected_fusion_params(dim, layers, hidden)


def test_layer_mean_sets_follow_raev2s_on_24_blocks():
    from drorae.studies.sweeps import layer_mean_set

    assert layer_mean_set(24, 7) == [12, 14, 16, 18, 20, 22, 24]  # "k7" (0-based 11, 13, ..., 23)
    assert layer_mean_set(24, 23) == list(range(2, 25))  # "k23"
    assert layer_mean_set(24, 1) == [24]  # RAE
    assert layer_mean_set(6, 2) == [4, 6] and layer_mean_set(6, 5) == [2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="--latent-layers 7 is not in 1..6"):
        layer_mean_set(6, 7)


def test_parse_int_list_names_the_bad_entry():
    assert parse_int_list("128,512") == [128, 512]
    with pytest.raises(ValueError, match="'x' in '128,x'"):
        parse_int_list("128,x")


def test_scaling_command_fits_and_draws_a_2x2_grid_and_skips_finished_points(phase1_run, image_dir, tmp_path):
    from drorae.cli import main

    args = sweep_args("scaling", phase1_run, image_dir, tmp_path / "s", "--expert-hidden", "8,32", "--layers", "2,4",
                      "--latent-layers", "1,3")  # fmt: skip
    assert main(args) == 0
    report = json.loads((tmp_path / "s" / "scaling.json").read_text())
    assert report["metric"] == "psnr" and len(report["points"]) == 4
    # RAEv2's K axis: the phase-1 decoder continued on the layer mean, no fusion parameters
    means = {p["name"]: p for p in report["layer_mean_points"]}
    assert means["mean_k1"]["latent_layers"] == [4] and not means["mean_k1"]["latent_global_mean"]
    assert means["mean_k3"]["latent_layers"] == [2, 3, 4] and means["mean_k3"]["latent_global_mean"]
    assert all(p["fusion_params"] == 0 and p["phase"] == "1" for p in means.values())
    assert means["mean_k1"]["latent_shift_fd"] == pytest.approx(0.0, abs=1e-6)  # RAE's own latent
    assert means["mean_k3"]["latent_shift_fd"] > 1e-3
    assert set(report["fits"]["expert_axis"]) == {"N=2", "N=4"} and set(report["fits"]["layer_axis"]) == {"h=8", "h=32"}
    assert 0 <= report["fits"]["joint"]["r2"] <= 1
    by_name = {p["name"]: p for p in report["points"]}
    assert by_name["h32_n2"]["fusion_params"] == expected_fusion_params(64, 2, 32)
    assert by_name["h8_n4"]["num_fused_layers"] == 4 and by_name["h8_n4"]["latent_shift_fd"] > 0
    assert (tmp_path / "s" / "scaling.png").read_bytes().startswith(b"\x89PNG")
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "s" / "points").glob("*/point.json")}
    assert main(args) == 0  # everything finished: nothing is trained again
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert json.loads((tmp_path / "s" / "scaling.json").read_text())["points"] == report["points"]


def test_ablation_command_runs_every_table_once_per_distinct_run(phase1_run, image_dir, tmp_path):
    from drorae.cli import main
    from drorae.studies.sweeps import BETAS, ablation_cells

    cells = ablation_cells(("design", "beta", "energy_norm", "strategy"), max_steps=2)
    points = {c["point"] for c in cells}
    assert len(cells) == 6 + len(BETAS) + 2 + 4 and len(points) == 6 + 4 + 1 + 3  # the default cell is shared
    args = sweep_args("ablate", phase1_run, image_dir, tmp_path / "a")
    assert main(args) == 0
    report = json.loads((tmp_path / "a" / "ablation.json").read_text())
    assert set(report["points"]) == points and len(report["cells"]) == len(cells)
    runs = {p.parent.name for p in (tmp_path / "a" / "points").glob("*/point.json")}
    assert runs == points
    by_point = report["points"]
    assert by_point["three_phase"]["phase"] == "3" and by_point["joint"]["steps"] == 4
    # beta = 0 would be RAE; every fusion cell moves the latent, replacement much more than a 0.05 correction
    assert by_point["energy_replace"]["latent_shift_fd"] > by_point["beta_0.05"]["latent_shift_fd"] > 0
    assert (tmp_path / "a" / report["figure"]).read_bytes().startswith(b"\x89PNG")
    table = (tmp_path / "a" / "ablation.md").read_text()
    assert "| cross_attention routing, replace | `cross_attention_replace` |" in table
