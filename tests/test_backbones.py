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


def _families(tmp_path, dinov2_dir, dinov2_reg_dir):
    from transformers import (
        DINOv3ViTConfig,
        DINOv3ViTModel,
        SiglipVisionConfig,
        SiglipVisionModel,
        ViTMAEConfig,
        ViTMAEModel,
    )

    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, patch_size=4)
    yield "dinov2", load_backbone(str(dinov2_dir), input_size=32)
    yield "dinov2-reg", load_backbone(str(dinov2_reg_dir), input_size=32)
    yield "mae", load_backbone(str(_save(ViTMAEModel(ViTMAEConfig(**small, image_size=32)), tmp_path / "m")), 32)
    siglip = SiglipVisionModel(SiglipVisionConfig(**small, image_size=32))
    yield "siglip", load_backbone(str(_save(siglip, tmp_path / "s")), input_size=32)
    dinov3 = DINOv3ViTModel(DINOv3ViTConfig(**small, image_size=32, num_register_tokens=2))
    yield "dinov3", load_backbone(str(_save(dinov3, tmp_path / "d3")), input_size=32)


def test_asking_for_some_blocks_gives_exactly_those_without_the_full_stack(
    tmp_path, dinov2_dir, dinov2_reg_dir, images, monkeypatch
):
    """RAE's latent reads the last block only and a layer mean its blocks: read by hooks, they equal the same blocks of
    the full pass (transformers' hidden_states), bit for bit, and output_hidden_states is not requested."""
    for family, bb in _families(tmp_path, dinov2_dir, dinov2_reg_dir):
        with torch.no_grad():
            full = bb(images)
            seen = {}
            forward = bb.model.forward
            spy = lambda *a, seen=seen, forward=forward, **k: seen.update(k) or forward(*a, **k)  # noqa: E731
            monkeypatch.setattr(bb.model, "forward", spy)
            last = bb(images, [bb.num_layers])
            some = bb(images, [bb.num_layers, 1])
            monkeypatch.undo()
        assert seen["output_hidden_states"] is False, family
        assert last.layers == [bb.num_layers] and last.hidden_states.shape[0] == 1, family
        torch.testing.assert_close(last.z_base, full.z_base, rtol=0, atol=0)
        assert some.layers == [1, bb.num_layers]
        torch.testing.assert_close(some.hidden_states, full.hidden_states[[0, -1]], rtol=0, atol=0)
        torch.testing.assert_close(some.blocks([bb.num_layers, 1]), full.blocks([bb.num_layers, 1]), rtol=0, atol=0)
        first = bb(images, [1])
        assert first.z_base is None
        with pytest.raises(ValueError, match=r"blocks \[2\] were not computed"):
            first.blocks([2])
        with pytest.raises(ValueError, match="must lie in 1.."):
            bb(images, [bb.num_layers + 1])


def test_encode_reads_only_the_blocks_its_latent_needs(dinov2_reg_dir, images, monkeypatch):
    """Fusion off, RAE's latent: the last block only; RAEv2's layer mean: its blocks; fusion on: every block. The
    latent equals the one computed from the full pass."""
    from drorae import DRoRAE, DRoRAEConfig, FusionConfig
    from drorae.tokenizer.backbones import BackboneConfig
    from drorae.tokenizer.decoder import DecoderConfig

    torch.manual_seed(0)
    config = DRoRAEConfig(
        backbone=BackboneConfig(name_or_path=str(dinov2_reg_dir), input_size=32),
        decoder=DecoderConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, patch_size=4),
        fusion=FusionConfig(expert_hidden=16),
    )
    model = DRoRAE.from_config(config).eval()
    asked = []
    run = model.backbone.forward
    monkeypatch.setattr(model.backbone, "forward", lambda x, layers=None: asked.append(layers) or run(x, layers))
    with torch.no_grad():
        for fusion, latent_layers, expected in ((False, None, [3]), (False, [1, 3], [1, 3]), (True, None, None)):
            model.fusion_enabled = fusion
            model.set_latent_rule(latent_layers)
            asked.clear()
            latent = model.encode(images)
            assert asked == [expected]
            reference = model.tokens_to_latent(model.tokens_from_features(run(images))[0])  # from every block
            torch.testing.assert_close(latent, reference, rtol=0, atol=0)
