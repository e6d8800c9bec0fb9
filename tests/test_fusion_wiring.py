"""``DRoRAE.encode`` with fusion on, end to end, against the paper's eqs. 2-5 computed by hand.

The reference reads the transformers model's own ``hidden_states`` and the tokenizer's saved weights (safetensors),
and computes every step with plain ``F.linear`` / ``F.layer_norm`` / ``F.gelu``: nothing of drorae's fusion module
or backbone wrapper runs in it. The fusion weights are random (router, experts, the experts' LayerNorm affine), so a
swapped expert order, a missing LayerNorm or a wrong eps changes the result.
"""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from drorae import BackboneConfig, DecoderConfig, DRoRAE, DRoRAEConfig, FusionConfig

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
BETA, SCALE, STD_EPS = 0.3, 0.7, 1e-5


@pytest.fixture(scope="module")
def saved_tokenizer(dinov2_reg_dir, tmp_path_factory):
    """A DRoRAE on the tiny DINOv2-with-registers, random fusion weights and latent statistics, saved."""
    torch.manual_seed(0)
    config = DRoRAEConfig(
        backbone=BackboneConfig(name_or_path=str(dinov2_reg_dir), input_size=32),
        decoder=DecoderConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, patch_size=4),
        fusion=FusionConfig(expert_hidden=16, beta=BETA),
        scaling_factor=SCALE,
    )
    tok = DRoRAE.from_config(config)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in tok.fusion.named_parameters():
            centre = 1.0 if name.endswith("ln_weight") else 0.0  # every term non-zero, the LN gain around 1
            p.copy_(centre + torch.randn(p.shape, generator=g) * (0.3 if "ln_" in name else 0.2))
    tok.set_latent_stats(torch.randn(64, 8, 8, generator=g) * 0.1, torch.rand(64, 8, 8, generator=g) + 0.5, STD_EPS)
    out = tmp_path_factory.mktemp("wiring") / "tok"
    tok.save_pretrained(out)
    return out


def hidden_states_by_hand(backbone_dir, images):
    """Blocks 1..L of the transformers model itself, prefix (CLS + registers) dropped, and its LN eps."""
    from transformers import AutoModel

    hf = AutoModel.from_pretrained(backbone_dir).eval()
    pixels = F.interpolate(images, size=(32, 32), mode="bicubic", align_corners=False)
    with torch.no_grad():
        hs = hf(pixel_values=(pixels - IMAGENET_MEAN) / IMAGENET_STD, output_hidden_states=True).hidden_states
    prefix = 1 + hf.config.num_register_tokens
    assert len(hs) == hf.config.num_hidden_layers + 1  # the embeddings, then blocks 1..L
    return [h[:, prefix:] for h in hs[1:]], hf.config.layer_norm_eps


def encode_by_hand(backbone_dir, weights, images, fusion_on=True):
    blocks, eps = hidden_states_by_hand(backbone_dir, images)
    c = blocks[0].shape[-1]

    def ln_bb(x):  # the backbone's final LayerNorm without its affine parameters
        return F.layer_norm(x, (c,), eps=eps)

    z_base = ln_bb(blocks[-1])
    if fusion_on:
        w_in, b_in = weights["fusion.experts.w_in"], weights["fusion.experts.b_in"]  # [L, C, h], [L, 1, h]
        g, b = weights["fusion.experts.ln_weight"], weights["fusion.experts.ln_bias"]  # [L, 1, h]
        w_out, b_out = weights["fusion.experts.w_out"], weights["fusion.experts.b_out"]  # [L, h, C], [L, 1, C]
        hidden = w_in.shape[-1]

        def expert(k, x):  # Linear(C, h) -> LayerNorm(h) (its own affine, eps 1e-5) -> GELU -> Linear(h, C)
            y = F.linear(x, w_in[k].T, b_in[k, 0])
            y = F.gelu(F.layer_norm(y, (hidden,), g[k, 0], b[k, 0], eps=1e-5))
            return F.linear(y, w_out[k].T, b_out[k, 0])

        zs = [ln_bb(z) for z in blocks]  # block order 1..L
        h = [ln_bb(expert(k, z)) for k, z in enumerate(zs)]  # eq. 2
        w = F.linear(torch.cat(zs, dim=-1), weights["fusion.router.weight"], weights["fusion.router.bias"])  # eq. 3
        mixed = sum(w[..., k : k + 1] * h[k] for k in range(len(h)))
        z_fuse = ln_bb(mixed / torch.sqrt((w * w).sum(-1, keepdim=True) + 1e-6))  # eq. 4
        tokens = ln_bb(z_base + BETA * (z_fuse - z_base))  # eq. 5
    else:
        tokens = z_base
    bsz, n, _ = tokens.shape
    side = int(n**0.5)
    z = tokens.transpose(1, 2).reshape(bsz, c, side, side)  # token i = row i // side, column i % side
    return (z - weights["latent_mean"]) / (weights["latent_std"] + STD_EPS) * SCALE


def test_encode_with_fusion_is_equations_2_to_5_on_the_backbones_hidden_states(saved_tokenizer, images):
    weights = load_file(str(saved_tokenizer / "model.safetensors"))
    tok = DRoRAE.from_pretrained(saved_tokenizer).eval()
    assert tok.fusion_enabled and tok.backbone.num_layers == 3
    with torch.no_grad():
        latent = tok.encode(images)
    expected = encode_by_hand(saved_tokenizer / "backbone", weights, images)
    assert latent.shape == (2, 64, 8, 8)
    torch.testing.assert_close(latent, expected, rtol=1e-4, atol=1e-4)
    # the correction is a real one: the fused latent differs from RAE's by far more than the tolerance
    rae = encode_by_hand(saved_tokenizer / "backbone", weights, images, fusion_on=False)
    assert (latent - rae).abs().max() > 0.1
    tok.fusion_enabled = False
    with torch.no_grad():
        torch.testing.assert_close(tok.encode(images), rae, rtol=1e-4, atol=1e-4)
