"""The MoT's two toy-scale options (off in Bagel): RoPE-2D on the latent tokens (``mot.latent_rope: 2d``) and DiT's
adaLN-Zero on the generation expert (``mot.gen_adaln``). Each is checked against rotations and modulations written
out here from their definitions, and both keep the cached-text pass equal to the joint pass."""

import math

import pytest
import torch

from drorae.generation.text.mot import MoTConfig, MoTGenerator

from .test_mot import IDS, captions


def build(seed=0, **options):
    torch.manual_seed(seed)
    cfg = MoTConfig(preset="tiny", latent_channels=8, latent_size=4, token_ids=IDS, **options)
    model = MoTGenerator(cfg).eval()
    torch.nn.init.normal_(model.latent_out.weight, std=0.5)  # zero-initialised: give the output something to show
    return model


def test_rope_2d_angles_are_row_on_even_and_column_on_odd_frequencies():
    model = build(latent_rope="2d")
    head_dim, theta, g = model.head_dim, model.config.llm["rope_theta"], model.config.grid
    lengths = torch.tensor([5, 0])
    cos, sin = model._image_rope(lengths, torch.zeros(1))
    assert cos.shape == (2, 2 + g * g, head_dim)
    for b, T in enumerate(lengths.tolist()):
        for token, (r, c) in [(0, (0, 0)), (1, (0, 0)), (2, (0, 0)), (2 + g + 3, (1, 3)), (2 + 3 * g + 2, (3, 2))]:
            for j in range(head_dim // 2):
                position = T + (r if j % 2 == 0 else c)
                angle = position * theta ** (-2 * j / head_dim)
                for col in (j, j + head_dim // 2):  # Qwen2's rotate_half pairs dimension j with j + head_dim / 2
                    assert cos[b, token, col].item() == pytest.approx(math.cos(angle), abs=1e-6)
                    assert sin[b, token, col].item() == pytest.approx(math.sin(angle), abs=1e-6)


def test_rope_2d_on_the_diagonal_is_qwen2s_1d_rope_and_bagel_keeps_one_id():
    """A token whose row and column ids are equal rotates as transformers' rotary embedding rotates that position."""
    two_d, bagel = build(latent_rope="2d"), build(latent_rope="bagel")
    lengths, g = torch.tensor([3, 6]), two_d.config.grid
    cos, sin = two_d._image_rope(lengths, torch.zeros(1))
    diagonal = [0, 1] + [2 + r * g + r for r in range(g)]
    ids = torch.stack([lengths + k for k in [0, 0, *range(g)]], 1)
    ref_cos, ref_sin = two_d.rotary(torch.zeros(1), ids)
    torch.testing.assert_close(cos[:, diagonal], ref_cos, rtol=0, atol=0)
    torch.testing.assert_close(sin[:, diagonal], ref_sin, rtol=0, atol=0)
    cos_b, _ = bagel._image_rope(lengths, torch.zeros(1))
    ref_b, _ = bagel.rotary(torch.zeros(1), lengths[:, None].expand(2, 2 + g * g))
    torch.testing.assert_close(cos_b, ref_b, rtol=0, atol=0)


def test_rope_2d_attention_depends_on_the_offset_between_latent_tokens_only():
    """q(r1, c1) . k(r2, c2) after rotation is a function of (r1 - r2, c1 - c2): what makes it a 2-D position code."""
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

    model, g = build(latent_rope="2d"), 4
    cos, sin = model._image_rope(torch.tensor([2]), torch.zeros(1))
    q0, k0 = torch.randn(1, 1, 1, model.head_dim), torch.randn(1, 1, 1, model.head_dim)
    n = cos.shape[1]
    q, k = apply_rotary_pos_emb(q0.expand(1, 1, n, -1), k0.expand(1, 1, n, -1), cos, sin)
    logits = (q[0, 0] @ k[0, 0].T)[2:, 2:].reshape(g, g, g, g)  # [r1, c1, r2, c2]
    torch.testing.assert_close(logits[0, 0, 1, 2], logits[2, 1, 3, 3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[1, 3, 0, 1], logits[3, 2, 2, 0], rtol=1e-5, atol=1e-5)
    assert (logits[0, 0, 1, 2] - logits[0, 0, 2, 1]).abs() > 1e-3  # rows and columns are told apart


@torch.no_grad()
@pytest.mark.parametrize(
    "options", [dict(latent_rope="2d"), dict(gen_adaln=True), dict(latent_rope="2d", gen_adaln=True)]
)
def test_the_cached_pass_equals_the_joint_pass_under_the_options(options):
    model = build(**options)
    if model.config.gen_adaln:
        for lin in [*model.gen_modulation, model.final_modulation]:
            torch.nn.init.normal_(lin.weight, std=0.1)
    ids, lengths = captions()
    x_t, t = torch.randn(3, 8, 4, 4), torch.tensor([0.2, 0.5, 0.9])
    joint = model(x_t, t, ids, lengths)
    cached = model.forward_image(x_t, t, model.encode_text(ids, lengths))
    torch.testing.assert_close(cached, joint, rtol=0, atol=2e-5)
    plain = build()
    plain.load_state_dict(model.state_dict(), strict=False)
    assert (plain(x_t, t, ids, lengths) - joint).abs().max() > 1e-3  # the option changes the network


@torch.no_grad()
def test_adaln_zero_starts_as_the_identity_and_modulates_as_dit():
    model = build(gen_adaln=True)
    ids, lengths = captions()
    x_t, t = torch.randn(3, 8, 4, 4), torch.tensor([0.2, 0.5, 0.9])
    h = model.latent_tokens(x_t, t)

    def by_hand(h_last, shift=0.0, scale=0.0):  # W_out (Norm_gen(h) (1 + scale) + shift), unpatchified (patch 1)
        y = model.latent_out(model.norm_gen(h_last) * (1 + scale) + shift)
        return y.transpose(1, 2).reshape(3, 8, 4, 4)

    # zero-initialised modulation: every generation layer gated off, the latent tokens reach the output unchanged
    torch.testing.assert_close(model(x_t, t, ids, lengths), by_hand(h), rtol=0, atol=1e-5)
    # the final layer's shift and scale, as DiT's
    h_dim = model.hidden_size
    model.final_modulation.bias.copy_(torch.cat([torch.full((h_dim,), 0.3), torch.full((h_dim,), -0.5)]))
    torch.testing.assert_close(model(x_t, t, ids, lengths), by_hand(h, 0.3, -0.5), rtol=0, atol=1e-5)
    # gates at 1 with no shift or scale: Bagel's network with the same weights
    model.final_modulation.bias.zero_()
    for lin in model.gen_modulation:
        lin.bias.zero_()
        lin.bias[2 * h_dim : 3 * h_dim] = 1.0  # gate of the attention
        lin.bias[5 * h_dim :] = 1.0  # gate of the MLP
    plain = build()
    plain.load_state_dict(model.state_dict(), strict=False)
    torch.testing.assert_close(model(x_t, t, ids, lengths), plain(x_t, t, ids, lengths), rtol=0, atol=1e-5)


def test_adaln_trains_in_both_expert_settings_and_saves(tmp_path):
    model = build(gen_adaln=True, latent_rope="2d")
    for experts in ("gen", "all"):
        names = {n for n, _ in model.trainable(experts)}
        assert {"gen_modulation.0.weight", "final_modulation.weight"} <= names
    model.save_pretrained(tmp_path)
    back = MoTGenerator.from_pretrained(tmp_path)
    assert back.config.gen_adaln and back.config.latent_rope == "2d"
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_an_unknown_rope_mode_is_named():
    with pytest.raises(ValueError, match="'3d'"):
        build(latent_rope="3d")
