import json

import pytest
import torch
import torch.nn.functional as F

from drorae import ConfigError
from drorae.tokenizer.fusion import FUSION_PRESETS, DepthRoutedFusion, FusionConfig, paper_param_count

L, B, N, C = 4, 2, 9, 32


def make_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    # Layer scales that grow with depth, like a real ViT's residual stream.
    hidden = torch.randn(L, B, N, C, generator=g) * torch.arange(1, L + 1).view(L, 1, 1, 1) * 3
    z_base = F.layer_norm(hidden[-1], (C,), eps=1e-6)
    return hidden, z_base


def fusion(num_layers, dim, expert_hidden=None, **kwargs):
    return DepthRoutedFusion(FusionConfig(num_layers=num_layers, dim=dim, expert_hidden=expert_hidden, **kwargs))


def ln(x):
    return F.layer_norm(x, (C,), eps=1e-6)


def test_beta_zero_is_rae_exactly():
    hidden, z_base = make_inputs()
    out = fusion(L, C, 16, beta=0.0)(hidden, z_base)
    assert torch.equal(out.latent, z_base)


def test_replace_returns_fused():
    hidden, z_base = make_inputs()
    out = fusion(L, C, 16, correction="replace")(hidden, z_base)
    assert torch.equal(out.latent, out.fused)
    assert not torch.allclose(out.latent, z_base)


def test_eq5_incremental_correction_holds():
    hidden, z_base = make_inputs()
    out = fusion(L, C, 16, beta=0.2)(hidden, z_base)
    torch.testing.assert_close(out.latent, ln(z_base + 0.2 * (out.fused - z_base)))


def test_energy_routing_matches_equations_2_to_4():
    hidden, z_base = make_inputs()
    f = fusion(L, C, 16)
    with torch.no_grad():  # random LayerNorm affine, so that the reference must apply it per expert
        f.experts.ln_weight.normal_(1.0, 0.3)
        f.experts.ln_bias.normal_(0.0, 0.3)
    out = f(hidden, z_base)
    # Reference, layer by layer with plain functional ops on each expert's own weights (not the module's code):
    # e_k = Linear(h, C) . GELU . LayerNorm(h) . Linear(C, h)
    e = f.experts

    def expert(k, x):
        y = F.linear(x, e.w_in[k].T, e.b_in[k, 0])
        y = F.gelu(F.layer_norm(y, (e.hidden,), e.ln_weight[k, 0], e.ln_bias[k, 0], eps=e.ln_eps))
        return F.linear(y, e.w_out[k].T, e.b_out[k, 0])

    zs = [ln(hidden[k]) for k in range(L)]
    hs = [ln(expert(k, zs[k])) for k in range(L)]  # eq. 2
    w = F.linear(torch.cat(zs, dim=-1), f.router.weight, f.router.bias)  # eq. 3: [B, N, L]
    num = sum(w[..., k : k + 1] * hs[k] for k in range(L))
    z_fuse = ln(num / torch.sqrt((w**2).sum(-1, keepdim=True) + 1e-6))
    torch.testing.assert_close(out.weights, w)
    torch.testing.assert_close(out.fused, z_fuse, rtol=1e-5, atol=1e-5)


def test_energy_weights_can_be_negative_and_softmax_is_a_distribution():
    hidden, z_base = make_inputs()
    w = fusion(L, C, 16)(hidden, z_base).weights
    assert (w < 0).any() and (w > 0).any()
    ws = fusion(L, C, 16, routing="softmax")(hidden, z_base).weights
    assert (ws >= 0).all()
    torch.testing.assert_close(ws.sum(-1), torch.ones(B, N))


def test_cross_attention_ablation_runs_and_weights_are_a_distribution():
    hidden, z_base = make_inputs()
    out = fusion(L, C, 16, routing="cross_attention", attention_heads=4)(hidden, z_base)
    assert out.latent.shape == (B, N, C) and out.weights.shape == (B, N, L)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(B, N))


def test_layer_subset_uses_the_deepest_blocks():
    hidden, z_base = make_inputs()
    f = fusion(L, C, 16, layers=[3, 4])
    out = f(hidden, z_base)
    assert len(f.experts) == 2 and out.weights.shape == (B, N, 2)
    assert f.router.in_features == 2 * C
    # Changing a block that is not fused changes nothing.
    hidden2 = hidden.clone()
    hidden2[0] += 5
    torch.testing.assert_close(f(hidden2, z_base).latent, out.latent)
    with pytest.raises(ValueError, match=r"layers=\[0, 4\] must be distinct block indices in 1..4"):
        fusion(L, C, 16, layers=[0, 4])


@pytest.mark.parametrize("h", [128, 1536, 3072, 6144])
def test_parameter_count_matches_appendix_c(h):
    with torch.device("meta"):  # shapes only: 113M parameters at h = 6144 need no memory
        f = fusion(12, 768, h)
    n = sum(p.numel() for p in f.parameters())
    c, k = 768, 12
    # from the layer shapes: per expert Linear(C, h) + LayerNorm(h) (weight and bias) + Linear(h, C); one router
    # Linear(C L, L)
    expert = (c * h + h) + 2 * h + (h * c + c)
    assert n == k * expert + (c * k * k + k)
    # appendix C counts L (C h + h + h C + h) + C L^2 + L: it leaves out the experts' LayerNorm (2h) and counts the
    # output bias as h instead of C, so each expert has h + C parameters more than the formula
    assert n - paper_param_count(c, k, h) == k * (h + c)
    assert f.router.weight.shape == (12, 768 * 12)  # C*L^2 + L router


def test_presets_give_the_papers_two_sizes():
    with torch.device("meta"):
        n29 = sum(p.numel() for p in fusion(12, 768, preset="paper-text-29m").parameters())
        n57 = sum(p.numel() for p in fusion(12, 768, preset="paper-appendix-a").parameters())
    # 12 experts of (768 h + h) + 2 h + (h 768 + 768), and the router 768 * 12 * 12 + 12
    assert n29 == 12 * (2 * 768 * 1536 + 3 * 1536 + 768) + 768 * 144 + 12 == 28_486_668
    assert n57 == 12 * (2 * 768 * 3072 + 3 * 3072 + 768) + 768 * 144 + 12 == 56_853_516
    assert set(FUSION_PRESETS) == {"paper-text-29m", "paper-appendix-a"}
    # an explicit size that agrees with the preset is fine; one that contradicts it names both
    assert fusion(12, 768, 1536, preset="paper-text-29m").expert_hidden == 1536
    with pytest.raises(
        ConfigError,
        match=r"fusion.preset='paper-appendix-a' sets fusion.expert_hidden=3072, "
        r"but fusion.expert_hidden=1536 was given",
    ):
        fusion(12, 768, 1536, preset="paper-appendix-a")
    with pytest.raises(ConfigError, match="fusion.expert_hidden not set"):
        fusion(12, 768)
    with pytest.raises(ConfigError, match="unknown fusion.preset 'paper-30m'"):
        fusion(12, 768, preset="paper-30m")


def test_config_round_trips_through_a_dict():
    f = fusion(L, C, 16, routing="softmax", layers=[2, 4], beta=0.1)
    again = DepthRoutedFusion(FusionConfig.from_dict(json.loads(json.dumps(f.config.to_dict()))))
    assert again.config == f.config and again.layers == [2, 4]
    with pytest.raises(ConfigError, match=r"unknown fusion config keys \['betta'\]"):
        FusionConfig.from_dict({**f.config.to_dict(), "betta": 0.3})


def test_gradients_reach_every_expert_and_the_router():
    hidden, z_base = make_inputs()
    f = fusion(L, C, 16)
    f(hidden, z_base).latent.square().sum().backward()
    for name, p in f.named_parameters():
        assert p.grad is not None, name
        if p.ndim == 3:  # stacked expert weights: every expert slice gets a gradient
            assert all(p.grad[k].abs().sum() > 0 for k in range(L)), name
    assert f.router.weight.grad.abs().sum() > 0


def test_bad_shapes_name_the_values():
    hidden, z_base = make_inputs()
    f = fusion(L, C, 16)
    with pytest.raises(ValueError, match=r"hidden_states must be \[L=4, B, N, C=32\], got \(3, 2, 9, 32\)"):
        f(hidden[:3], z_base)
    with pytest.raises(ValueError, match="routing='topk'"):
        fusion(L, C, 16, routing="topk")


def test_energy_normalisation_is_cancelled_by_the_layernorm_up_to_its_eps():
    """eq. 4 divides the mixed experts by ||w||; LN_bb after it removes any per-token scale, except that its
    eps (1e-6) weighs relatively more on the unnormalised sum: the outputs agree closely, not exactly."""
    hidden, z_base = make_inputs()
    torch.manual_seed(0)
    on = fusion(L, C, 16)
    off = fusion(L, C, 16, energy_norm=False)
    off.load_state_dict(on.state_dict())
    a, b = on(hidden, z_base), off(hidden, z_base)
    torch.testing.assert_close(b.fused, a.fused, rtol=1e-3, atol=1e-3)
    assert not torch.equal(a.fused, b.fused)


@pytest.mark.parametrize("activation", ["gelu", "silu", "relu", "identity"])
def test_inference_path_equals_the_autograd_path(activation):
    """Without autograd the experts run in place (fewer [K, M, h] passes); the numbers are the same."""
    hidden, z_base = make_inputs()
    f = fusion(L, C, 16, activation=activation)
    with torch.no_grad():
        fast = f(hidden, z_base)
    reference = f(hidden, z_base)
    torch.testing.assert_close(fast.latent, reference.latent.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(fast.weights, reference.weights.detach(), rtol=0, atol=1e-6)


def test_router_without_the_concatenation_equals_the_linear_layer_on_it():
    hidden, _ = make_inputs()
    f = fusion(L, C, 16)
    z = ln(hidden).reshape(L, B * N, C)
    concatenated = z.permute(1, 0, 2).reshape(B * N, L * C)
    torch.testing.assert_close(f.route(z), f.router(concatenated), rtol=1e-6, atol=1e-5)


def test_compiled_fusion_matches_eager_forward_and_gradients():
    """torch.compile (the fast variant of benchmarks/fusion_overhead.py and train.compile) keeps eqs. 2-5."""
    hidden, z_base = make_inputs()
    f = fusion(L, C, 16)
    compiled = torch.compile(f)
    grad = torch.randn(B, N, C, generator=torch.Generator().manual_seed(1))
    outputs, grads = [], []
    for module in (f, compiled):
        f.zero_grad(set_to_none=True)
        out = module(hidden, z_base)
        out.latent.backward(grad)
        outputs.append(out.latent.detach())
        grads.append({n: p.grad.clone() for n, p in f.named_parameters()})
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-5, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(compiled(hidden, z_base).latent, outputs[0], rtol=1e-5, atol=1e-5)


def test_frozen_fusion_takes_the_inference_path_and_still_passes_input_gradients():
    """Phase 3: the fusion is frozen (no parameter needs a gradient) but its input may; both paths agree."""
    hidden, z_base = make_inputs()
    f = fusion(L, C, 16)
    f.requires_grad_(False)
    frozen = f(hidden, z_base).latent
    assert not frozen.requires_grad
    torch.testing.assert_close(frozen, f.requires_grad_(True)(hidden, z_base).latent.detach(), rtol=0, atol=1e-6)
    x = hidden.clone().requires_grad_(True)
    f.requires_grad_(False)(x, z_base).latent.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
