"""The text-to-image MoT: its text path is transformers' Qwen2, text never sees the image, the cached-text pass equals
the joint pass, CFG's combination, the flow loss at its analytic minimum, save/load."""

import pytest
import torch
from transformers import Qwen2Model

from drorae.generation.flow import gaussian_velocity
from drorae.generation.text.mot import MoTConfig, MoTGenerator, patchify, unpatchify
from drorae.generation.text.sampling import cfg_velocity
from drorae.generation.text.trainer import t2i_flow_loss

IDS = dict(bos=1, eos=2, vision_start=3, vision_end=4, pad=0)


def build(qk_norm=True, patch=1, seed=0):
    torch.manual_seed(seed)
    cfg = MoTConfig(
        preset="tiny", qk_norm=qk_norm, latent_channels=8, latent_size=4, latent_patch_size=patch, token_ids=IDS
    )
    model = MoTGenerator(cfg).eval()
    torch.nn.init.normal_(model.latent_out.weight, std=0.5)  # zero-initialised: give the output something to show
    return model


def qwen2(model, seed=1):
    torch.manual_seed(seed)
    cfg = model.config.qwen2_config()
    cfg._attn_implementation = "eager"  # the reference path, not the SDPA the MoT uses
    return Qwen2Model(cfg).eval()


def captions():
    ids = torch.randint(5, 500, (3, 7), generator=torch.Generator().manual_seed(3))
    lengths = torch.tensor([7, 4, 0])
    return ids, lengths


@torch.no_grad()
def test_text_path_equals_transformers_qwen2_and_the_generation_expert_starts_as_its_copy():
    model = build(qk_norm=False)
    ref = qwen2(model)
    model.load_llm_state(ref.state_dict())
    for (name, a), (_, b) in zip(model.und.named_parameters(), model.gen.named_parameters()):
        assert torch.equal(a, b), name
    ids, lengths = captions()
    context = model.encode_text(ids, lengths)
    for row in (0, 1):
        n = int(lengths[row])
        expected = ref(input_ids=ids[row : row + 1, :n]).last_hidden_state[0]
        torch.testing.assert_close(context.hidden[row, :n], expected, rtol=0, atol=2e-5)


@torch.no_grad()
def test_text_never_sees_the_image_and_the_cached_pass_equals_the_joint_pass():
    model = build(qk_norm=True)
    ids, lengths = captions()
    x_t, t = torch.randn(3, 8, 4, 4), torch.tensor([0.2, 0.5, 0.9])
    mask = MoTGenerator.joint_mask(lengths, ids.shape[1], 2 + 16)
    assert not mask[:, :, :7, 7:].any()  # no caption token attends to an image-block token
    assert mask[0, 0, 7:, :7].all() and not mask[1, 0, 7:, 4:7].any()  # the image sees the real caption only
    joint = model(x_t, t, ids, lengths)
    cached = model.forward_image(x_t, t, model.encode_text(ids, lengths))  # caption encoded with no image at all
    torch.testing.assert_close(cached, joint, rtol=0, atol=2e-5)
    # padding and batch-mates change nothing: sample 1 alone, unpadded
    alone = model(x_t[1:2], t[1:2], ids[1:2, :4], lengths[1:2])
    torch.testing.assert_close(alone, joint[1:2], rtol=0, atol=2e-5)
    # and the caption matters (the test can fail): another caption, another velocity
    other = model(x_t[:1], t[:1], ids[1:2], lengths[:1])
    assert (other - joint[:1]).abs().max() > 1e-3


def test_patchify_is_bagels_order_and_inverts():
    x = torch.randn(2, 3, 4, 4)
    tokens = patchify(x, 2)
    assert tokens.shape == (2, 4, 12)
    # token (row 0, col 1), feature (p_row 1, p_col 0, channel 2) = x[:, 2, 1, 2]
    assert torch.equal(tokens[:, 1, (1 * 2 + 0) * 3 + 2], x[:, 2, 1, 2])
    assert torch.equal(unpatchify(tokens, 2, 3), x)
    model = build(patch=2)
    out = model(torch.randn(1, 8, 4, 4), torch.tensor([0.3]), *[c[:1] for c in captions()])
    assert out.shape == (1, 8, 4, 4)


@torch.no_grad()
def test_cfg_scale_one_is_conditional_and_scale_three_the_hand_combination():
    model = build()
    ids, lengths = captions()
    ids, lengths = ids[:2], lengths[:2]
    x_t, t = torch.randn(2, 8, 4, 4), torch.tensor([0.4, 0.4])
    v_c = model(x_t, t, ids, lengths)  # the joint pass as the reference
    v_u = model(x_t, t, ids, torch.zeros_like(lengths))  # the empty context: no caption tokens
    both = torch.cat([ids, torch.zeros_like(ids)])
    context = model.encode_text(both, torch.cat([lengths, torch.zeros_like(lengths)]))
    v3 = cfg_velocity(model, context, 3.0, (0.0, 1.0))(x_t, t, 0.4)
    torch.testing.assert_close(v3, v_u + 3.0 * (v_c - v_u), rtol=0, atol=5e-5)
    outside = cfg_velocity(model, context, 3.0, (0.5, 1.0))(x_t, t, 0.4)  # t outside the interval: conditional
    torch.testing.assert_close(outside, v_c, rtol=0, atol=2e-5)
    v1 = cfg_velocity(model, model.encode_text(ids, lengths), 1.0, (0.0, 1.0))(x_t, t, 0.4)
    torch.testing.assert_close(v1, v_c, rtol=0, atol=2e-5)


def test_flow_loss_of_the_exact_velocity_is_the_analytic_minimum():
    mu, sigma = torch.tensor(0.5), torch.tensor(0.7)
    exact = gaussian_velocity(mu, sigma)

    class Exact(torch.nn.Module):  # a "caption-conditional" model that ignores the caption
        def forward(self, x_t, t, ids, lengths):
            return exact(x_t, t)

    g = torch.Generator().manual_seed(0)
    n = 20000
    x = mu + sigma * torch.randn(n, 1, 1, 1, generator=g)
    noise, t = torch.randn(n, 1, 1, 1, generator=g), torch.rand(n, generator=g)
    ids, lengths = torch.zeros(n, 1, dtype=torch.long), torch.ones(n, dtype=torch.long)
    loss = float(t2i_flow_loss(Exact(), x, noise, t, ids, lengths))
    a, s2 = 1 - t, sigma**2  # E Var[eps - x | x_t] in closed form, averaged over t
    analytic = float((s2 + 1 - (t - a * s2) ** 2 / (a**2 * s2 + t**2)).mean())
    assert abs(loss - analytic) < 0.02 * analytic
    shifted = float(t2i_flow_loss(lambda *a: Exact()(*a) + 0.3, x, noise, t, ids, lengths))
    assert shifted > loss + 0.08  # any other velocity is worse by its squared error (0.09)


def test_initialisation_is_bagels():
    """Bagel's own modules (time embedder, vae2llm) keep PyTorch's default Linear init, U(+-1/sqrt(fan_in)) for
    weight and bias (Bagel.__init__ re-initialises only llm2vae, to zero); the experts and embeddings are Qwen2's
    N(0, 0.02), biases 0."""
    model = MoTGenerator(MoTConfig(preset="tiny", latent_channels=128, latent_size=8, token_ids=IDS))
    for layer in [model.latent_in, model.time_embed.mlp[0], model.time_embed.mlp[2]]:
        bound = layer.weight.shape[1] ** -0.5
        for p in (layer.weight, layer.bias):
            assert p.abs().max() <= bound and p.abs().max() > 0.9 * bound  # uniform up to the bound
        assert abs(layer.weight.std().item() - bound / 3**0.5) < 0.1 * bound  # a uniform's std, not 0.02
    assert not model.latent_out.weight.any() and not model.latent_out.bias.any()
    q = model.gen[0].self_attn.q_proj
    assert abs(q.weight.std().item() - 0.02) < 0.002 and not q.bias.any()
    assert abs(model.embed_tokens.weight.std().item() - 0.02) < 0.002


def test_save_and_load_give_the_same_velocity(tmp_path):
    model = build()
    ids, lengths = captions()
    x_t, t = torch.randn(3, 8, 4, 4), torch.rand(3)
    model.save_pretrained(tmp_path / "m", extra={"shift": 1.5})
    back = MoTGenerator.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x_t, t, ids, lengths), model(x_t, t, ids, lengths), rtol=0, atol=0)
    assert MoTGenerator.read_extra(tmp_path / "m")["shift"] == 1.5


def test_gradient_checkpointing_gives_the_same_gradients():
    model = build()
    ids, lengths = captions()
    x_t, t = torch.randn(3, 8, 4, 4), torch.rand(3)
    model.train()
    model(x_t, t, ids, lengths).square().mean().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.config.gradient_checkpointing = True
    model(x_t, t, ids, lengths).square().mean().backward()
    for n, g in plain.items():
        torch.testing.assert_close(model.get_parameter(n).grad, g, rtol=1e-5, atol=1e-6, msg=n)


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match="latent_patch_size 3"):
        MoTConfig(preset="tiny", latent_channels=8, latent_size=4, latent_patch_size=3, token_ids=IDS).resolved()
    with pytest.raises(ValueError, match="unknown mot.preset 'huge'"):
        MoTConfig(preset="huge", latent_channels=8, latent_size=4, token_ids=IDS).resolved()
    with pytest.raises(ValueError, match="token_ids lacks"):
        MoTConfig(preset="tiny", latent_channels=8, latent_size=4).resolved()
    with pytest.raises(ValueError, match="train_experts 'both'"):
        build().trainable("both")
