"""Spectra, latent statistics and ``drorae analyze``."""

import json

import pytest
import torch

from drorae.studies.analysis import fused_vs_base, pca_rgb, radial_power_spectrum, spectral_mad
from drorae.studies.analysis.spectra import luma


def test_mad_of_identical_images_is_zero_and_grows_with_detail_loss():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=g)
    assert torch.equal(spectral_mad(x, x), torch.zeros(3, dtype=torch.float64))
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    assert (spectral_mad(x, blurred) > 0.1).all()


def test_radial_power_curve_sums_to_the_total_spectral_energy():
    x = torch.rand(2, 3, 24, 20, generator=torch.Generator().manual_seed(1))
    mean, count = radial_power_spectrum(x)
    assert int(count.sum()) == 24 * 20
    energy = (mean * count).sum(-1)
    torch.testing.assert_close(energy, 24 * 20 * luma(x).pow(2).flatten(1).sum(1))  # Parseval
    # a constant image has all its energy at frequency 0
    flat = torch.full((1, 3, 16, 16), 0.5)
    mean, count = radial_power_spectrum(flat)
    assert mean[0, 0] > 0 and torch.allclose(mean[0, 1:], torch.zeros_like(mean[0, 1:]), atol=1e-9)


def test_pca_rgb_of_a_constant_latent_is_constant_and_of_a_ramp_is_ordered():
    constant = torch.ones(2, 16, 8) * 3.0
    rgb = pca_rgb(constant, (4, 4))
    assert rgb.shape == (2, 3, 4, 4) and torch.equal(rgb, torch.full_like(rgb, 0.5))
    ramp = torch.arange(16.0).view(1, 16, 1) * torch.randn(1, 1, 8, generator=torch.Generator().manual_seed(2))
    first = pca_rgb(ramp, (4, 4))[0, 0].flatten()
    assert first.min() == 0 and first.max() == 1
    assert torch.all(first.diff() > 0) or torch.all(first.diff() < 0)  # the component follows the ramp


def test_fused_vs_base_numbers():
    z = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(3))
    same = fused_vs_base(z, z)
    torch.testing.assert_close(same["cos"], torch.ones(2, dtype=torch.float64))
    assert torch.equal(same["distance"], torch.zeros(2, dtype=torch.float64))
    opposite = fused_vs_base(-z, z)
    torch.testing.assert_close(opposite["cos"], -torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(opposite["distance"], 2 * z.double().norm(dim=-1).mean(1))


def test_analyze_command_writes_every_number_and_figure(tmp_path, dinov2_reg_dir):
    from PIL import Image

    from drorae import BackboneConfig, DecoderConfig, DRoRAE, DRoRAEConfig, FusionConfig
    from drorae.cli import main

    torch.manual_seed(0)
    config = DRoRAEConfig(
        backbone=BackboneConfig(name_or_path=str(dinov2_reg_dir), input_size=32),
        decoder=DecoderConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, patch_size=4),
        fusion=FusionConfig(expert_hidden=8, layers=[2, 3]),
    )
    DRoRAE.from_config(config).save_pretrained(tmp_path / "m")
    g = torch.Generator().manual_seed(4)
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray((torch.rand(40, 48, 3, generator=g) * 255).byte().numpy()).save(paths[-1])
    (tmp_path / "bad.png").write_text("no")
    assert (
        main(
            [
                "analyze",
                "--model",
                str(tmp_path / "m"),
                *map(str, paths),
                str(tmp_path / "bad.png"),
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert len(report["images"]) == 2 and report["skipped"] == [str(tmp_path / "bad.png")]
    assert set(report["router_weights"]) == {"block 2", "block 3"}
    assert len(report["cos_z_fuse_z_base"]) == 2 and all(-1 <= c <= 1 for c in report["cos_z_fuse_z_base"])
    assert report["spectral_mad"]["rae"]["mean"] > 0 and len(report["radial_power"]["original"]) > 10
    for name in report["figures"].values():
        assert (tmp_path / "a" / name).read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="has no fusion module"):
        from drorae.studies.analysis import analyze

        model = DRoRAE.from_pretrained(tmp_path / "m")
        model.fusion = None
        model.config.fusion = None
        model.save_pretrained(tmp_path / "rae")
        analyze(tmp_path / "rae", paths, tmp_path / "b")
