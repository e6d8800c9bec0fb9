import pytest
import torch
import torch.nn.functional as F

from drorae.tokenizer.backbones import BackboneNotFoundError, load_backbone


@pytest.mark.parametrize("fixture,prefix", [("dinov2_reg_dir", 5), ("dinov2_dir", 1)])
def test_hidden_states_and_z_base_match_transformers(request, fixture, prefix, images):
    from transformers import AutoModel

    path = request.getfixturevalue(fixture)
    bb = load_backbone(str(path), input_size=32)
    assert bb.num_layers == 3 and bb.num_prefix_tokens == prefix and bb.hidden_size == 64
    assert all(not p.requires_grad for p in bb.parameters()) and not bb.training
    out = bb(images)
    assert out.hidden_states.shape == (3, 2, 64, 64)  # [L, B, N=(32/4)^2, C]
    assert out.z_base.shape == (2, 64, 64)

    ref = AutoModel.from_pretrained(path).eval()
    pixels = F.interpolate(images, size=(32, 32), mode="bicubic", align_corners=False)
    pixels = (pixels - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        r = ref(pixel_values=pixels, output_hidden_states=True)
    for k in range(3):
        torch.testing.assert_close(out.hidden_states[k], r.hidden_states[k + 1][:, prefix:], rtol=0, atol=1e-6)
    # z_base = the backbone's final LayerNorm without its affine parameters.
    torch.testing.assert_close(
        out.z_base, F.layer_norm(r.hidden_states[-1][:, prefix:], (64,), eps=1e-6), rtol=0, atol=1e-6
    )
    # and it differs from the affine last_hidden_state (our fixture randomised the LN affine)
    assert not torch.allclose(out.z_base, r.last_hidden_state[:, prefix:], atol=1e-3)


def test_backbone_stays_frozen_in_train_mode(dinov2_reg_dir):
    bb = load_backbone(str(dinov2_reg_dir), input_size=32)
    bb.train()
    assert not bb.training


def test_missing_backbone_names_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(
        BackboneNotFoundError,
        match="facebook/dinov2-made-up.*not in the local Hugging Face cache.*huggingface-cli download",
    ):
        load_backbone("facebook/dinov2-made-up")
    with pytest.raises(BackboneNotFoundError, match="does not exist"):
        load_backbone(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneNotFoundError, match="no config.json"):
        load_backbone(str(tmp_path / "empty"))


def test_bad_images_raise_clear_errors(dinov2_reg_dir):
    bb = load_backbone(str(dinov2_reg_dir), input_size=32)
    with pytest.raises(ValueError, match="3 channels.*got 4"):
        bb(torch.rand(1, 4, 32, 32))
    with pytest.raises(ValueError, match="rank 3"):
        bb(torch.rand(3, 32, 32))
    with pytest.raises(TypeError, match="torch.uint8"):
        bb(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    x = torch.rand(1, 3, 32, 32)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="1 non-finite"):
        bb(x)


def test_input_size_must_be_patch_multiple(dinov2_reg_dir):
    with pytest.raises(ValueError, match="input_size=30 must be a multiple of the backbone patch size 4"):
        load_backbone(str(dinov2_reg_dir), input_size=30)


def _save(model, path):
    model.save_pretrained(path)
    return path


def test_vit_mae_keeps_every_token_in_order(tmp_path, images):
    from transformers import ViTMAEConfig, ViTMAEModel

    torch.manual_seed(0)
    cfg = ViTMAEConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=4,
        image_size=32,
        mask_ratio=0.75,
    )
    ref = ViTMAEModel(cfg).eval()
    bb = load_backbone(str(_save(ref, tmp_path / "mae")), input_size=32)
    out = bb(images)
    assert bb.family == "mae" and bb.num_prefix_tokens == 1 and out.hidden_states.shape == (2, 2, 64, 32)
    pixels = bb.preprocess(images)
    noise = torch.arange(64, dtype=torch.float32).expand(2, 64)  # identity order
    ref.config.mask_ratio = 0.0
    with torch.no_grad():
        r = ref(pixel_values=pixels, noise=noise, output_hidden_states=True)
    torch.testing.assert_close(out.hidden_states[-1], r.hidden_states[-1][:, 1:], rtol=0, atol=1e-6)
    torch.testing.assert_close(
        out.z_base, F.layer_norm(r.hidden_states[-1][:, 1:], (32,), eps=cfg.layer_norm_eps), rtol=0, atol=1e-5
    )


def test_siglip_vision_tower_has_no_prefix_tokens(tmp_path, images):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    cfg = SiglipVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=4, image_size=32
    )
    ref = SiglipVisionModel(cfg).eval()
    bb = load_backbone(str(_save(ref, tmp_path / "siglip")), input_size=32)
    assert bb.family == "siglip" and bb.num_prefix_tokens == 0
    torch.testing.assert_close(bb.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))
    out = bb(images)
    with torch.no_grad():
        r = ref(pixel_values=bb.preprocess(images), output_hidden_states=True)
    assert out.hidden_states.shape == (2, 2, 64, 32)
    torch.testing.assert_close(out.hidden_states[0], r.hidden_states[1], rtol=0, atol=1e-6)
