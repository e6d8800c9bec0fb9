import json

import pytest
import torch

from drorae import (
    DecoderConfig,
    DepthRoutedFusion,
    DRoRAE,
    FusionConfig,
    RAEDecoder,
    export_rae,
    import_rae,
    load_backbone,
)
from drorae.interop.decoder_keys import export_decoder_state_dict
from drorae.serialization import CheckpointKeyError

from .conftest import randomize


def test_import_diffusers_autoencoder_rae_matches_source(diffusers_rae_dir, images, tmp_path):
    from diffusers import AutoencoderRAE

    src = AutoencoderRAE.from_pretrained(diffusers_rae_dir).eval()
    ours = import_rae(diffusers_rae_dir).eval()
    assert not ours.fusion_enabled and ours.fusion is None
    with torch.no_grad():
        z_src = src.encode(images).latent
        z = ours.encode(images)
        torch.testing.assert_close(z, z_src, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.decode(z_src), src.decode(z_src).sample, rtol=1e-5, atol=1e-5)
    # and it survives our own save/load
    ours.save_pretrained(tmp_path / "ours")
    again = DRoRAE.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(again.decode(again.encode(images)), ours.decode(ours.encode(images)), rtol=0, atol=0)


def test_export_to_diffusers_round_trip(diffusers_rae_dir, images, tmp_path):
    from diffusers import AutoencoderRAE

    ours = import_rae(diffusers_rae_dir).eval()
    export_rae(ours, tmp_path / "exported")
    back = AutoencoderRAE.from_pretrained(tmp_path / "exported").eval()
    with torch.no_grad():
        z = ours.encode(images)
        torch.testing.assert_close(back.encode(images).latent, z, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(back.decode(z).sample, ours.decode(z), rtol=1e-5, atol=1e-5)


def test_export_with_fusion_on_is_refused(diffusers_rae_dir, tmp_path):
    ours = import_rae(diffusers_rae_dir)
    ours.add_fusion(DepthRoutedFusion(FusionConfig(num_layers=2, dim=64, expert_hidden=8)))
    with pytest.raises(ValueError, match="fusion enabled.*reads only the backbone's last layer"):
        export_rae(ours, tmp_path / "x")


def test_transformers4_encoder_names_are_converted_and_foreign_keys_refused(diffusers_rae_dir, images):
    from safetensors.torch import load_file, save_file

    path = diffusers_rae_dir / "diffusion_pytorch_model.safetensors"
    ref = import_rae(diffusers_rae_dir).eval()
    state = load_file(str(path))
    legacy = {
        k.replace(".attention.q_proj.", ".attention.attention.query.").replace(
            ".attention.o_proj.", ".attention.output.dense."
        ): v
        for k, v in state.items()
    }
    save_file(legacy, str(path))
    conv = import_rae(diffusers_rae_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(conv.encode(images), ref.encode(images), rtol=0, atol=0)
    # An encoder saved under names we do not know is an error, never random weights.
    foreign = {k.replace("encoder.encoder.layer.", "encoder.blocks."): v for k, v in state.items()}
    save_file(foreign, str(path))
    with pytest.raises(CheckpointKeyError, match=r"unmatched keys \['encoder.blocks.0"):
        import_rae(diffusers_rae_dir)


def test_import_rae_decoder_file_with_stats(dinov2_reg_dir, images, tmp_path):
    """An RAE-format decoder state dict (ViT-MAE names) + backbone + {'mean','var'} stats."""
    bb = load_backbone(str(dinov2_reg_dir), input_size=32)
    cfg = DecoderConfig(
        latent_dim=64, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, patch_size=4, num_patches=64
    )
    dec = randomize(RAEDecoder(cfg), 3)
    state = export_decoder_state_dict(dec, layout="rae", prefix="")
    assert "decoder_layers.0.attention.attention.query.weight" in state and "trainable_cls_token" in state
    torch.save(state, tmp_path / "decoder.pt")
    mean, var = torch.randn(1, 64, 8, 8) * 0.1, torch.rand(1, 64, 8, 8) + 0.5
    torch.save({"mean": mean, "var": var}, tmp_path / "stats.pt")
    tok = import_rae(
        tmp_path / "decoder.pt", backbone=str(dinov2_reg_dir), stats=tmp_path / "stats.pt", input_size=32, num_heads=2
    ).eval()
    with torch.no_grad():
        feats = bb(images)
        z_ref = (feats.z_base.transpose(1, 2).reshape(2, 64, 8, 8) - mean) / torch.sqrt(var + 1e-5)  # RAE's encode
        torch.testing.assert_close(tok.encode(images), z_ref, rtol=1e-5, atol=1e-5)
        tokens = (z_ref * torch.sqrt(var + 1e-5) + mean).flatten(2).transpose(1, 2)  # RAE's decode
        x_ref = dec.unpatchify(dec(tokens)) * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + torch.tensor(
            [0.485, 0.456, 0.406]
        ).view(1, 3, 1, 1)
        torch.testing.assert_close(tok.decode(z_ref), x_ref, rtol=1e-5, atol=1e-5)

    state["decoder_layers.0.attention.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointKeyError, match=r"decoder_layers.0.attention.extra.weight"):
        import_rae(tmp_path / "bad.pt", backbone=str(dinov2_reg_dir), input_size=32, num_heads=2)


def test_non_rae_directory_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ValueError, match="not a diffusers AutoencoderRAE directory.*'AutoencoderKL'"):
        import_rae(tmp_path)
