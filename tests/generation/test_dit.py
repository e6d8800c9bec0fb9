"""The DiT^DH / DiT network: published sizes, adaLN-Zero start, save/load, config errors."""

import pytest
import torch

from drorae.configuration import ConfigError
from drorae.generation import DiT, DiTConfig

from ..model_tester import ModelTesterMixin


def count(preset: str, **kw) -> int:
    with torch.device("meta"):
        return DiT(DiTConfig(preset=preset, num_classes=1000, **kw)).parameter_count()


@pytest.mark.parametrize(
    "preset, rae_count",
    # counted from RAE's own classes (bytetriper/RAE a4d18c4) built on the meta device on the 16 x 16 x 768 latent
    # with 1000 classes: DiTwDDTHead [1152, 2048] x [28, 2], DiTwDDTHead [384, 2048] x [12, 2], LightningDiT-XL
    [("DiTDH-XL", 838_380_628), ("DiTDH-S", 196_357_204), ("DiT-XL", 676_953_216)],
)
def test_trainable_parameter_counts_equal_raes_exactly(preset, rae_count):
    assert count(preset, in_channels=768, input_size=16, patch_size=1) == rae_count


def test_fresh_model_outputs_zero_and_has_nonzero_gradient():
    torch.manual_seed(0)
    model = DiT(DiTConfig(preset="DiTDH-tiny", in_channels=16, input_size=4, num_classes=3))
    x = torch.randn(2, 16, 4, 4)
    v = model(x, torch.rand(2), torch.tensor([0, 3]))  # 3 = the null class
    assert v.shape == x.shape and torch.equal(v, torch.zeros_like(v))
    (v - torch.randn_like(v)).pow(2).mean().backward()
    assert model.final_layer.linear.weight.grad.abs().sum() > 0


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = DiT(DiTConfig(preset="DiT-tiny", in_channels=8, input_size=4, num_classes=5))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # leave the zero init, so outputs differ from 0
    model.save_pretrained(tmp_path, extra={"classes": list("abcde")})
    loaded = DiT.from_pretrained(tmp_path)
    x, t, y = torch.randn(3, 8, 4, 4), torch.rand(3), torch.tensor([0, 4, 5])
    assert torch.equal(model(x, t, y), loaded(x, t, y))
    assert DiT.read_extra(tmp_path)["classes"] == list("abcde")


def test_preset_contradiction_and_missing_sizes_are_named():
    with pytest.raises(ConfigError, match=r"dit.preset='DiTDH-XL' sets dit.hidden_size=1152, but dit.hidden_size=512"):
        DiT(DiTConfig(preset="DiTDH-XL", hidden_size=512, in_channels=768, input_size=16, num_classes=10))
    with pytest.raises(ConfigError, match=r"dit.num_classes not set"):
        DiTConfig(preset="DiT-tiny", in_channels=8, input_size=4).resolved()
    with pytest.raises(ConfigError, match=r"dit.num_heads=3"):
        DiTConfig(preset="DiT-tiny", num_heads=3, in_channels=8, input_size=4, num_classes=2).resolved()


def test_rope_rotation_preserves_norm_and_relative_positions():
    from drorae.generation.dit import Rope2D

    rope = Rope2D(8, grid=4)
    q = torch.randn(1, 1, 16, 8)
    assert torch.allclose(rope(q).norm(dim=-1), q.norm(dim=-1), atol=1e-5)
    # the same vector at every position: <R_i q, R_j q> depends only on the offset of i and j
    same = q[:, :, :1].expand(1, 1, 16, 8)
    r = rope(same)[0, 0]
    dots = r @ r.T
    assert torch.allclose(dots[0, 1], dots[4, 5], atol=1e-5) and torch.allclose(dots[0, 4], dots[1, 5], atol=1e-5)


def test_a_dit_learns_a_fixed_small_set():
    """Flow matching on 4 fixed latents (one per class): the loss falls well below where it starts."""
    from drorae.generation.flow import flow_matching_loss, time_from_uniform

    torch.manual_seed(0)
    model = DiT(DiTConfig(hidden_size=32, depth=2, num_heads=2, head_hidden_size=48, head_depth=1, head_num_heads=2,
                          in_channels=4, input_size=4, num_classes=4))  # fmt: skip
    data = torch.randn(4, 4, 4, 4) * 0.5 + torch.arange(4.0).view(4, 1, 1, 1) - 1.5
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        y = torch.randint(0, 4, (16,))
        t = time_from_uniform(torch.rand(16), "logit-normal", 1.0)
        loss = flow_matching_loss(model, data[y], torch.randn(16, 4, 4, 4), t, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first, (first, last)


class TestDiTModel(ModelTesterMixin):
    model_class = DiT

    def make_model(self, tmp_path):
        torch.manual_seed(0)
        model = DiT(DiTConfig(preset="DiTDH-tiny", in_channels=8, input_size=4, num_classes=3))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))  # leave the zero init, so outputs depend on every part
        return model

    def make_inputs(self):
        g = torch.Generator().manual_seed(1)
        return torch.randn(2, 8, 4, 4, generator=g), torch.rand(2, generator=g), torch.tensor([0, 3])
