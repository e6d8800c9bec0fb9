"""Discriminators: the DINO-feature one on tiny random ViTs saved to disk, and the patch one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from drorae.tokenizer.losses import DinoFeatureDiscriminator, PatchDiscriminator, build_discriminator


def _save(model: torch.nn.Module, path: Path) -> Path:
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=2,
        patch_size=8,
        image_size=32,
    )
    return _save(Dinov2Model(config), tmp_path_factory.mktemp("dinov2"))


def test_dino_discriminator_gradients(dinov2_dir: Path) -> None:
    disc = build_discriminator("dino", backbone_path=dinov2_dir, input_size=32, head_dim=16)
    assert isinstance(disc, DinoFeatureDiscriminator)
    assert disc.hook_layers == [1, 2, 3, 4]

    images = torch.rand(2, 3, 40, 40, requires_grad=True)  # resized to 32 inside
    logits = disc(images)
    assert logits.shape == (2, 4 * 16)  # 4 hooked blocks x 4x4 patch tokens
    logits.mean().backward()

    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in disc.backbone.parameters())
    heads = list(disc.trainable_parameters())
    assert heads and all(p.requires_grad and p.grad is not None for p in heads)
    head_ids = {id(p) for p in heads}
    trainable = [p for p in disc.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == head_ids


def test_dino_backbone_stays_in_eval(dinov2_dir: Path) -> None:
    disc = DinoFeatureDiscriminator(dinov2_dir, hook_layers=[2, 4], input_size=32, head_dim=8)
    disc.train()
    assert disc.training and disc.heads.training
    assert not any(m.training for m in disc.backbone.modules())


def test_dino_with_registers_drops_prefix_tokens(tmp_path: Path) -> None:
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    config = Dinov2WithRegistersConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        patch_size=8,
        image_size=32,
        num_register_tokens=4,
    )
    path = _save(Dinov2WithRegistersModel(config), tmp_path / "reg")
    disc = DinoFeatureDiscriminator(path, input_size=48, head_dim=8)
    assert disc(torch.rand(1, 3, 48, 48)).shape == (1, 2 * 36)


def test_vit_backbone_at_another_resolution(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=8,
        image_size=32,
    )
    path = _save(ViTModel(config), tmp_path / "vit")
    disc = DinoFeatureDiscriminator(path, hook_layers=[2], input_size=48, head_dim=8)
    assert disc(torch.rand(1, 3, 32, 32)).shape == (1, 36)


def test_dino_missing_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no_dino_here"
    with pytest.raises(FileNotFoundError, match="no_dino_here"):
        DinoFeatureDiscriminator(missing)


def test_dino_rejects_bad_settings(dinov2_dir: Path) -> None:
    with pytest.raises(ValueError, match="multiple of the patch"):
        DinoFeatureDiscriminator(dinov2_dir, input_size=30)
    with pytest.raises(ValueError, match="hook_layers"):
        DinoFeatureDiscriminator(dinov2_dir, hook_layers=[5], input_size=32)


def test_patch_discriminator() -> None:
    disc = build_discriminator("patch", base_channels=8, num_layers=2)
    assert isinstance(disc, PatchDiscriminator)
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    logits = disc(images)
    assert logits.ndim == 2 and logits.shape[0] == 2
    logits.mean().backward()
    assert images.grad is not None
    assert all(p.grad is not None for p in disc.trainable_parameters())


def test_unknown_discriminator() -> None:
    with pytest.raises(ValueError, match="unknown discriminator"):
        build_discriminator("stylegan")
