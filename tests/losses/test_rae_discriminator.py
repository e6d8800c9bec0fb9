"""drorae's DINO discriminator and DiffAugment against RAE's own code (fixture tests/fixtures/rae_stage1, made by
RAE's DinoDisc / DiffAug at the commit in its meta.json): same logits, input gradients and power iteration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from drorae.tokenizer.losses import DiffAugment, DinoDiscriminator, load_discriminator

FIXTURE = Path(__file__).parents[1] / "fixtures" / "rae_stage1"
META = json.loads((FIXTURE / "meta.json").read_text())


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "disc.safetensors"))


def _disc(norm: str, ref: dict[str, torch.Tensor]) -> DinoDiscriminator:
    disc = DinoDiscriminator.from_dino_file(
        FIXTURE / "dino_tiny.pth", recipe="S_16", key_depths=META["dino"]["key_depths"], ks=META["ks"], norm_type=norm
    )
    heads = {k[len(f"{norm}.heads.") :]: v for k, v in ref.items() if k.startswith(f"{norm}.heads.")}
    disc.load_state_dict({**disc.dino.state_dict(prefix="dino."), **heads})
    return disc


def test_the_fixture_records_the_rae_commit() -> None:
    assert len(META["rae_commit"]) == 40 and META["rae_commit"].startswith("a4d18c4")


@pytest.mark.parametrize("norm", ["bn", "gn"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_logits_and_input_gradients_equal_raes(norm: str, mode: str, ref: dict[str, torch.Tensor]) -> None:
    disc = _disc(norm, ref)
    disc.train(mode == "train")
    x = ref["images"].clone().requires_grad_(True)
    logits = disc(x)  # drorae takes [0, 1]; RAE was given 2x - 1
    (logits * ref["logit_weights"]).sum().backward()
    torch.testing.assert_close(logits, ref[f"{norm}.{mode}.logits"], rtol=1e-4, atol=1e-5)
    grad = ref[f"{norm}.{mode}.input_grad"]
    # float32 sums over ~10^5 terms: an absolute tolerance of 1e-6 of the gradient's scale (SDPA vs RAE's matmuls)
    torch.testing.assert_close(x.grad, grad, rtol=1e-4, atol=1e-6 * grad.abs().max().item())
    if mode == "train":  # one power iteration per training forward, RAE's u and v after it
        after = {k[len(f"{norm}.train.after.") :]: v for k, v in ref.items() if k.startswith(f"{norm}.train.after.")}
        state = disc.heads.state_dict(prefix="heads.")
        for key, value in after.items():
            torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-6)


def test_the_dino_keeps_raes_numerics(ref: dict[str, torch.Tensor]) -> None:
    """The key bias is zeroed on load, and the ViT stays frozen and in eval mode when the heads train."""
    disc = _disc("bn", ref)
    raw = torch.load(FIXTURE / "dino_tiny.pth", weights_only=True)
    bias = disc.dino.blocks[0].attn.qkv.bias
    c = bias.numel() // 3
    assert raw["blocks.0.attn.qkv.bias"][c : 2 * c].abs().sum() > 0
    assert bias[c : 2 * c].abs().sum() == 0
    torch.testing.assert_close(bias[:c], raw["blocks.0.attn.qkv.bias"][:c])
    disc.train()
    assert disc.heads.training and not disc.dino.training
    assert {id(p) for p in disc.trainable_parameters()} == {id(p) for p in disc.parameters() if p.requires_grad}


def test_a_saved_discriminator_loads_back_equal(ref: dict[str, torch.Tensor], tmp_path: Path) -> None:
    disc = _disc("bn", ref).eval()
    disc.save_pretrained(tmp_path / "d")
    back = load_discriminator(tmp_path / "d").eval()
    x = ref["images"]
    torch.testing.assert_close(back(x), disc(x), rtol=0, atol=0)


@pytest.mark.parametrize("case", ["p1_cut0", "p1_cut02", "p05_cut02"])
def test_diffaug_replays_raes_draws(case: str) -> None:
    ref = load_file(str(FIXTURE / "diffaug.safetensors"))
    prob, cutout, seed = META["diffaug_cases"][case]
    aug = DiffAugment("translation,color,cutout", prob=prob, cutout=cutout)
    x01 = (ref["input"] + 1) / 2
    for k in range(4):
        out = aug(x01, generator=torch.Generator().manual_seed(seed * 10 + k))
        torch.testing.assert_close(out * 2 - 1, ref[f"{case}.{k}"], rtol=1e-5, atol=1e-5)
