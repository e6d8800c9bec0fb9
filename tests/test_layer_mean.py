"""RAEv2's layer-mean base latent (arXiv 2605.18324) as a tokenizer option, and DRoRAE's fusion on top of it."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from drorae import BackboneConfig, ConfigError, DecoderConfig, DRoRAE, DRoRAEConfig, FusionConfig
from drorae.generation.latents import stats_fingerprint
from drorae.tokenizer.backbones import rae_v2_layers

FIXTURE = __import__("pathlib").Path(__file__).parent / "fixtures" / "raev2_latent"


def tokenizer(backbone_dir, layers=None, global_mean=False, fusion=None, seed=0):
    torch.manual_seed(seed)
    config = DRoRAEConfig(
        backbone=BackboneConfig(
            name_or_path=str(backbone_dir), input_size=32, latent_layers=layers, latent_global_mean=global_mean
        ),
        decoder=DecoderConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, patch_size=4),
        fusion=fusion,
    )
    return DRoRAE.from_config(config).eval()


def by_hand(backbone_dir, images, layers, global_mean):
    """The formula from the transformers model's own hidden_states: plain F.layer_norm, mean, token mean."""
    from transformers import AutoModel

    hf = AutoModel.from_pretrained(backbone_dir).eval()
    pixels = F.interpolate(images, size=(32, 32), mode="bicubic", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        hs = hf(pixel_values=(pixels - mean) / std, output_hidden_states=True).hidden_states
    prefix = 1 + hf.config.num_register_tokens
    normed = [F.layer_norm(hs[k][:, prefix:], (hf.config.hidden_size,), eps=hf.config.layer_norm_eps) for k in layers]
    z = sum(normed) / len(normed)
    if global_mean:
        z = z + normed[layers.index(max(layers))].mean(dim=1, keepdim=True)
    return z


@pytest.mark.parametrize("global_mean", [False, True])
def test_layer_mean_latent_is_the_formula_on_the_backbones_hidden_states(dinov2_reg_dir, images, global_mean):
    tok = tokenizer(dinov2_reg_dir, [1, 3], global_mean)
    tokens, base, fused = tok.encode_tokens(images)
    assert fused is None and torch.equal(tokens, base)
    torch.testing.assert_close(tokens, by_hand(dinov2_reg_dir, images, [1, 3], global_mean), rtol=1e-5, atol=1e-5)
    # the global term is one vector per image, broadcast to every token
    if global_mean:
        without = tokenizer(dinov2_reg_dir, [1, 3], False).encode_tokens(images)[0]
        shift = tokens - without
        torch.testing.assert_close(shift, shift[:, :1].expand_as(shift))


def test_default_config_is_raes_latent_bit_for_bit(dinov2_reg_dir, images):
    default = tokenizer(dinov2_reg_dir)
    explicit = tokenizer(dinov2_reg_dir, [3])  # the last block only, no global term: RAE
    feats = default.backbone(images)
    z_rae = F.layer_norm(feats.hidden_states[-1], (64,), eps=default.backbone.norm_eps)
    assert default.rae_latent and explicit.rae_latent
    assert torch.equal(default.encode_tokens(images)[0], z_rae)
    assert torch.equal(explicit.encode_tokens(images)[0], z_rae)
    assert stats_fingerprint(default) == stats_fingerprint(explicit)


def test_the_rule_against_raev2s_own_combination():
    """RAEv2's forward_features (DINOv2 and DINOv3 multi-layer encoders, run by tests/fixtures/raev2_latent/
    make_fixture.py on LN_bb outputs) against drorae's base_latent on the same per-layer tensors."""
    from drorae.tokenizer.backbones import base_latent

    data = load_file(FIXTURE / "combination.safetensors")
    meta = json.loads((FIXTURE / "meta.json").read_text())
    layers = meta["layers_1based"]
    # hidden_states whose LN_bb outputs are the fixture's inputs: LN_bb is idempotent up to its eps
    hidden = torch.zeros(meta["num_layers"], *data["normed"].shape[1:])
    hidden[torch.tensor(layers) - 1] = data["normed"]
    z_last = hidden[-1]
    for name, global_mean in (("dinov3", True), ("dinov2", False)):
        ours = base_latent(hidden, z_last, layers, global_mean, eps=0.0)
        torch.testing.assert_close(ours, data[f"out_{name}"], rtol=0, atol=1e-6)


def test_saved_tokenizer_keeps_its_rule_and_its_latent(dinov2_reg_dir, images, tmp_path):
    tok = tokenizer(dinov2_reg_dir, [2, 3], True)
    tok.save_pretrained(tmp_path / "tok")
    cfg = json.loads((tmp_path / "tok" / "config.json").read_text())
    assert cfg["backbone"]["latent_layers"] == [2, 3] and cfg["backbone"]["latent_global_mean"] is True
    back = DRoRAE.from_pretrained(tmp_path / "tok").eval()
    assert torch.equal(back.encode(images), tok.encode(images))
    assert stats_fingerprint(back) == stats_fingerprint(tok)


def test_switching_the_rule_of_a_loaded_model_drops_the_old_latents_statistics(dinov2_reg_dir, images):
    tok = tokenizer(dinov2_reg_dir)
    tok.set_latent_stats(torch.zeros(64, 8, 8), torch.ones(64, 8, 8) * 2)
    tok.set_latent_rule([2, 3], global_mean=True)
    assert tok.latent_layers == [2, 3] and not tok.config.latent_norm and "latent_mean" not in tok.state_dict()
    expected = by_hand(dinov2_reg_dir, images, [2, 3], True)
    torch.testing.assert_close(tok.encode(images).flatten(2).transpose(1, 2), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="latent_layers"):
        tok.set_latent_rule([5])


def test_a_cache_or_dit_made_for_one_latent_refuses_another(dinov2_reg_dir, tmp_path):
    from drorae.generation import DiT, DiTConfig
    from drorae.generation.latents import cache_latents
    from drorae.generation.sampling import run_sampling
    from drorae.generation.trainer import DiTTrainer, load_dit_config

    from .generation.conftest import write_class_images

    rules = ((None, False), ([2, 3], False), ([2, 3], True), ([1, 3], True))
    fingerprints = []
    for i, (layers, gm) in enumerate(rules):
        tok = tokenizer(dinov2_reg_dir, layers, gm)
        tok.save_pretrained(tmp_path / f"tok{i}")
        fingerprints.append(stats_fingerprint(tok))
    assert len(set(fingerprints)) == 4
    # a DiT trained on the latents of the last rule: sampling refuses every other tokenizer before any work
    size = dict(hidden_size=16, depth=1, num_heads=1, head_hidden_size=0, head_depth=0, head_num_heads=0)
    dit = DiT(DiTConfig(in_channels=64, input_size=8, num_classes=2, **size))
    dit.save_pretrained(tmp_path / "dit", extra={"fingerprint": fingerprints[3], "classes": ["a", "b"]})
    for i in range(3):
        with pytest.raises(ValueError, match=rf"was trained on latents with fingerprint {fingerprints[3]}, but "):
            run_sampling(tmp_path / "dit", tmp_path / f"tok{i}", tmp_path / f"s{i}", num=1, device="cpu")
        assert not (tmp_path / f"s{i}" / "samples.npz").exists()
    # a latent cache of the first rule: train-dit with the layer-mean tokenizer refuses it
    data = write_class_images(tmp_path / "data", classes=2, per_class=2)
    cache_latents(tmp_path / "tok0", data, tmp_path / "cache", shard_size=4, batch_size=4, num_workers=0, device="cpu")
    with pytest.raises(ValueError, match=rf"was cached from latents with fingerprint {fingerprints[0]} .* gives "):
        DiTTrainer(load_dit_config(), tmp_path / "tok2", tmp_path / "run", latents_dir=tmp_path / "cache")


@pytest.mark.parametrize("bad", [[0], [4], [2, 2], [], ["3"]])
def test_bad_layer_lists_are_named(dinov2_reg_dir, bad):
    with pytest.raises(ConfigError, match=r"backbone.latent_layers=.*1\.\.3"):
        tokenizer(dinov2_reg_dir, bad)


def test_drorae_on_a_layer_mean_base(dinov2_reg_dir, images):
    base = tokenizer(dinov2_reg_dir, [2, 3], True)
    z_base = base.encode_tokens(images)[0]
    # beta = 0: exactly the layer-mean latent
    zero = tokenizer(dinov2_reg_dir, [2, 3], True, fusion=FusionConfig(expert_hidden=16, beta=0.0))
    assert torch.equal(zero.encode_tokens(images)[0], z_base)
    # beta > 0: eq. 5's correction of the base it is given, without the outer LN_bb (the base is not on LN's sphere)
    fused = tokenizer(dinov2_reg_dir, [2, 3], True, fusion=FusionConfig(expert_hidden=16, beta=0.2))
    tokens, base_tokens, out = fused.encode_tokens(images)
    assert torch.equal(base_tokens, z_base)
    torch.testing.assert_close(tokens, z_base + 0.2 * (out.fused - z_base))
    # and on RAE's base, eq. 5 as printed
    rae = tokenizer(dinov2_reg_dir, fusion=FusionConfig(expert_hidden=16, beta=0.2))
    tokens, base_tokens, out = rae.encode_tokens(images)
    torch.testing.assert_close(tokens, F.layer_norm(base_tokens + 0.2 * (out.fused - base_tokens), (64,), eps=1e-6))


def test_export_rae_refuses_a_layer_mean_latent(dinov2_reg_dir, tmp_path):
    from drorae import export_rae

    with pytest.raises(ValueError, match=r"base latent is a layer mean \(backbone.latent_layers=\[2, 3\]"):
        export_rae(tokenizer(dinov2_reg_dir, [2, 3], True), tmp_path / "out")


def test_raev2_layer_sets_scaled_to_a_depth():
    assert rae_v2_layers(24) == [12, 14, 16, 18, 20, 22, 24]  # RAEv2's "k7" on DINOv3-L (0-based 11, 13, ..., 23)
    assert rae_v2_layers(24, "all") == list(range(2, 25))  # its "k23"
    assert rae_v2_layers(12) == [6, 8, 10, 12]
    assert rae_v2_layers(6) == [4, 6]


def test_a_dinov3_backbone_gives_raev2s_latent(tmp_path, images):
    """RAEv2's own backbone family: a tiny random DINOv3ViTModel saved with save_pretrained loads through our loader,
    and its layer mean is the formula on its hidden_states (CLS + registers dropped, non-affine final LN)."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    from drorae import load_backbone

    torch.manual_seed(0)
    hf = DINOv3ViTModel(
        DINOv3ViTConfig(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=64,
            patch_size=4,
            image_size=32,
            num_register_tokens=4,
        )
    )
    hf.eval().save_pretrained(tmp_path / "dinov3")  # fmt: skip
    backbone = load_backbone(str(tmp_path / "dinov3"), input_size=32)
    assert backbone.family == "dinov3" and backbone.num_prefix_tokens == 5 and backbone.num_tokens == 64
    feats = backbone(images)
    pixels = backbone.preprocess(images)
    with torch.no_grad():
        hs = hf(pixel_values=pixels, output_hidden_states=True).hidden_states
        last = hf(pixel_values=pixels).last_hidden_state
    ln = [F.layer_norm(h[:, 5:], (32,), eps=hf.config.layer_norm_eps) for h in hs[1:]]
    torch.testing.assert_close(feats.z_base, ln[-1])
    # RAE's latent is the affine-free version of the model's own final norm
    w, b = hf.norm.weight, hf.norm.bias
    torch.testing.assert_close(feats.z_base * w + b, last[:, 5:], rtol=1e-4, atol=1e-5)
    from drorae.tokenizer.backbones import base_latent

    z = base_latent(feats.hidden_states, feats.z_base, [2, 4], True, backbone.norm_eps)
    torch.testing.assert_close(z, (ln[1] + ln[3]) / 2 + ln[3].mean(dim=1, keepdim=True))
