import json

import pytest
import torch

from drorae import DecoderConfig, DepthRoutedFusion, DRoRAE, FusionConfig, RAEDecoder, load_backbone
from drorae.serialization import CheckpointKeyError

from .model_tester import ModelTesterMixin


def tiny_decoder(latent_dim=64, num_patches=64):
    return RAEDecoder(
        DecoderConfig(
            latent_dim=latent_dim,
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            intermediate_size=64,
            patch_size=4,
            num_patches=num_patches,
        )
    )


@pytest.fixture
def model(dinov2_reg_dir):
    torch.manual_seed(0)
    bb = load_backbone(str(dinov2_reg_dir), input_size=32)
    m = DRoRAE(
        bb,
        tiny_decoder(),
        DepthRoutedFusion(
            FusionConfig(num_layers=bb.num_layers, dim=bb.hidden_size, expert_hidden=16, norm_eps=bb.norm_eps)
        ),
    )
    m.set_latent_stats(torch.randn(64, 8, 8) * 0.1, torch.rand(64, 8, 8) + 0.5)
    return m.eval()


def test_encode_decode_shapes_and_fusion_switch(model, images):
    z = model.encode(images)
    assert z.shape == (2, 64, 8, 8)
    x = model.decode(z)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    model.fusion_enabled = False
    z_rae = model.encode(images)
    feats = model.backbone(images)
    ref = (feats.z_base.transpose(1, 2).reshape(2, 64, 8, 8) - model.latent_mean) / (model.latent_std + 1e-5)
    torch.testing.assert_close(z_rae, ref)
    assert not torch.allclose(z, z_rae)


def test_tokens_from_a_shared_backbone_pass_equal_encode_tokens(model, images):
    feats = model.backbone(images)
    for fusion_on in (True, False):
        model.fusion_enabled = fusion_on
        direct, shared = model.encode_tokens(images), model.tokens_from_features(feats)
        torch.testing.assert_close(shared[0], direct[0], rtol=0, atol=0)
        torch.testing.assert_close(shared[1], direct[1], rtol=0, atol=0)


def test_forward_noise_only_in_training(model, images):
    out1, out2 = model(images, noise_tau=0.8), model(images, noise_tau=0.8)
    torch.testing.assert_close(out1.reconstruction, out2.reconstruction)  # eval: no noise
    torch.testing.assert_close(out1.reconstruction, model.decode(out1.latent), rtol=1e-4, atol=1e-4)
    model.train()
    assert not model.backbone.training  # frozen backbone stays in eval mode
    a, b = model(images, noise_tau=0.8), model(images, noise_tau=0.8)
    assert not torch.allclose(a.reconstruction, b.reconstruction)


def test_decoder_noise_is_z_plus_sigma_eps_with_sigma_uniform_per_sample(model, images):
    """RAE's rule, reproduced with a seeded generator: sigma ~ U(0, tau) drawn once per sample (first), then
    eps ~ N(0, I) over the tokens; the decoder reads z + sigma * eps."""
    tau = 0.8
    with torch.no_grad():
        tokens = model.encode_tokens(images)[0]  # [B, N, C], the same in train mode (no dropout in the encoder)
        model.train()
        out = model(images, noise_tau=tau, generator=torch.Generator().manual_seed(7))
        g = torch.Generator().manual_seed(7)
        sigma = tau * torch.rand(tokens.shape[0], generator=g)
        eps = torch.randn(tokens.shape, generator=g)
        noisy = tokens + sigma.view(-1, 1, 1) * eps
        assert sigma[0] != sigma[1]  # one level per sample, not one per batch
        torch.testing.assert_close(out.reconstruction, model.decode_tokens(noisy), rtol=1e-5, atol=1e-5)
        # the config's tau is the default, and tau = 0 is the clean reconstruction
        model.config.noise_tau = tau
        default = model(images, generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(default.reconstruction, out.reconstruction, rtol=0, atol=0)
        clean = model(images, noise_tau=0.0, generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(clean.reconstruction, model.decode_tokens(tokens), rtol=1e-5, atol=1e-5)
        assert (out.reconstruction - clean.reconstruction).abs().max() > 1e-2


def test_backbone_runs_without_graph_but_fusion_gets_gradients(model, images):
    model.train()
    out = model(images)
    out.reconstruction.mean().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.fusion.router.weight.grad is not None and model.decoder.pred.weight.grad is not None


@pytest.mark.parametrize("save_backbone", [True, False])
def test_save_pretrained_round_trip_is_identical(model, images, tmp_path, save_backbone):
    model.save_pretrained(tmp_path / "m", save_backbone=save_backbone)
    assert (tmp_path / "m" / "backbone").is_dir() == save_backbone
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["_class_name"] == "DRoRAE" and cfg["fusion"]["expert_hidden"] == 16
    loaded = DRoRAE.from_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(loaded.encode(images), model.encode(images), rtol=0, atol=0)
    z = model.encode(images)
    torch.testing.assert_close(loaded.decode(z), model.decode(z), rtol=0, atol=0)
    assert loaded.parameter_counts() == model.parameter_counts()


def test_checkpoint_for_another_backbone_width_is_refused(model, tmp_path):
    from tests.conftest import save_tiny_dinov2

    model.save_pretrained(tmp_path / "m", save_backbone=False)
    save_tiny_dinov2(tmp_path / "wide", hidden=128, heads=2)
    with pytest.raises(ValueError, match="has hidden_size=128, but backbone.hidden_size=64 was recorded"):
        DRoRAE.from_pretrained(tmp_path / "m", backbone=str(tmp_path / "wide"))


def test_corrupt_or_truncated_weights_are_clear_errors(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors is corrupt or truncated"):
        DRoRAE.from_pretrained(tmp_path / "m")
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        DRoRAE.from_pretrained(tmp_path / "m")


def test_weights_with_missing_keys_are_refused(model, tmp_path):
    from safetensors.torch import load_file, save_file

    model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    state = load_file(str(path))
    del state["decoder.pred.weight"]
    save_file(state, str(path))
    with pytest.raises(CheckpointKeyError, match=r"missing keys \['decoder.pred.weight'\]"):
        DRoRAE.from_pretrained(tmp_path / "m")


def test_bad_inputs(model):
    with pytest.raises(ValueError, match="3 channels"):
        model.encode(torch.rand(1, 1, 32, 32))
    with pytest.raises(TypeError, match="floating-point"):
        model.encode(torch.zeros(1, 3, 32, 32, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"latent must be \[B, C=64, h, w\], got \(1, 32, 8, 8\)"):
        model.decode(torch.zeros(1, 32, 8, 8))
    with pytest.raises(ValueError, match="decoder expects latent width 32, but the backbone width is 64"):
        DRoRAE(model.backbone, tiny_decoder(latent_dim=32))


def test_a_drorae_0_1_directory_still_loads(model, images, tmp_path):
    """drorae 0.1 wrote the backbone as flat fields and the parts as plain kwargs dicts."""
    model.save_pretrained(tmp_path / "m")
    new = json.loads((tmp_path / "m" / "config.json").read_text())
    f, d = model.fusion, model.decoder.config
    legacy = {
        "_class_name": "DRoRAE",
        "_drorae_version": "0.1.0",
        "backbone": "backbone",
        "input_size": 32,
        "hidden_size": 64,
        "num_layers": 3,
        "decoder": {
            "latent_dim": 64,
            "hidden_size": d.hidden_size,
            "num_layers": d.num_layers,
            "num_heads": d.num_heads,
            "intermediate_size": d.intermediate_size,
            "patch_size": 4,
            "num_patches": 64,
            "num_channels": 3,
            "layer_norm_eps": 1e-12,
            "pos_embed_base_grid": None,
        },
        "fusion": {
            "num_layers": 3,
            "dim": 64,
            "expert_hidden": 16,
            "beta": f.beta,
            "routing": "energy",
            "correction": "incremental",
            "norm_eps": f.norm_eps,
            "layers": [1, 2, 3],
            "energy_eps": 1e-6,
            "activation": "gelu",
            "attention_heads": 8,
        },
        "fusion_enabled": True,
        "pixel_mean": [0.485, 0.456, 0.406],
        "pixel_std": [0.229, 0.224, 0.225],
        "latent_norm": True,
        "latent_stats_shape": [64, 8, 8],
        "latent_std_eps": 1e-5,
        "scaling_factor": 1.0,
        "noise_tau": 0.0,
    }
    (tmp_path / "m" / "config.json").write_text(json.dumps(legacy))
    loaded = DRoRAE.from_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(loaded.encode(images), model.encode(images), rtol=0, atol=0)
    torch.testing.assert_close(loaded.decode(model.encode(images)), model.decode(model.encode(images)), rtol=0, atol=0)
    assert loaded.config.backbone.hidden_size == 64 and loaded.config.fusion.expert_hidden == 16
    # saved again, it is written in today's format
    loaded.save_pretrained(tmp_path / "again")
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert again["backbone"]["name_or_path"] == "backbone" and set(again) == set(new)


def test_from_config_builds_from_one_typed_config(dinov2_reg_dir, images):
    from drorae import BackboneConfig, DRoRAEConfig

    config = DRoRAEConfig(
        backbone=BackboneConfig(name_or_path=str(dinov2_reg_dir), input_size=32),
        decoder=DecoderConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, patch_size=4),
        fusion=FusionConfig(expert_hidden=16),
    )
    m = DRoRAE.from_config(config).eval()
    assert m.decoder.config.latent_dim == 64 and m.decoder.config.num_patches == 64  # from the backbone
    assert m.fusion.num_layers == 3 and m.fusion.norm_eps == m.backbone.norm_eps
    assert m.decode(m.encode(images)).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="decoder.latent_dim=32 does not match the backbone, which gives 64"):
        DRoRAE.from_config(DRoRAEConfig(backbone=config.backbone, decoder=DecoderConfig(preset="ViT-B", latent_dim=32)))
    with pytest.raises(
        ValueError, match=r"decoder.preset='ViT-B' sets decoder.num_layers=12, but decoder.num_layers=2"
    ):
        DRoRAE.from_config(DRoRAEConfig(backbone=config.backbone, decoder=DecoderConfig(preset="ViT-B", num_layers=2)))
    with pytest.raises(ValueError, match="backbone.name_or_path not set"):
        DRoRAE.from_config(DRoRAEConfig(decoder=config.decoder))


def test_the_model_package_does_not_import_the_training_code(dinov2_reg_dir):
    import subprocess
    import sys

    code = (
        "import sys, drorae\n"
        "from drorae import BackboneConfig, DecoderConfig, DRoRAE, DRoRAEConfig, FusionConfig\n"
        f"m = DRoRAE.from_config(DRoRAEConfig(backbone=BackboneConfig(name_or_path={str(dinov2_reg_dir)!r}, "
        "input_size=32),"
        " decoder=DecoderConfig(preset='ViT-B', patch_size=4), fusion=FusionConfig(expert_hidden=8)))\n"
        "bad = sorted(k for k in sys.modules\n"
        "             if k.startswith(('drorae.tokenizer.training', 'drorae.engine', 'drorae.demo')))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


class TestDRoRAEModel(ModelTesterMixin):
    model_class = DRoRAE

    def make_model(self, tmp_path):
        from drorae import BackboneConfig, DRoRAEConfig
        from drorae.tokenizer.backbones import RandomBackboneConfig

        torch.manual_seed(0)
        config = DRoRAEConfig(
            backbone=BackboneConfig(
                random=RandomBackboneConfig(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, patch_size=8),
                input_size=32,
            ),
            decoder=DecoderConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, patch_size=8),
            fusion=FusionConfig(expert_hidden=8, beta=0.2),
        )
        return DRoRAE.from_config(config)

    def make_inputs(self):
        return (torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),)

    def run(self, model, inputs):
        return model(*inputs).reconstruction
