"""Discriminators: RAE's DINO one on tiny random DINO files (its numerics against RAE's code are in
test_rae_discriminator.py), and the patch one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from drorae.serialization import ForeignFileError
from drorae.tokenizer.losses import (
    DinoDiscriminator,
    DinoViT,
    DinoViTConfig,
    PatchDiscriminator,
    build_discriminator,
    load_discriminator,
)


def _dino_file(path: Path, **sizes) -> Path:
    """A random DINO ViT in RAE's flat .pth layout (what dino_vit_small_patch8_224.pth holds)."""
    cfg = DinoViTConfig(**{"embed_dim": 48, "depth": 2, "num_heads": 6, "patch_size": 16, **sizes})
    torch.manual_seed(0)
    torch.save({k: torch.randn_like(v) for k, v in DinoViT(cfg).state_dict().items()}, path)
    return path


def test_heads_train_and_the_dino_stays_frozen(tmp_path: Path) -> None:
    disc = build_discriminator("dino", path=_dino_file(tmp_path / "d.pth"), recipe="S_16", key_depths=[0], ks=3)
    assert isinstance(disc, DinoDiscriminator) and len(disc.heads) == 2  # the last block + block 0
    images = torch.rand(2, 3, 40, 40, requires_grad=True)  # resized to 224 inside, as RAE
    logits = disc(images)
    assert logits.shape == (2, 2 * 14 * 14)
    logits.mean().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in disc.dino.parameters())
    heads = list(disc.trainable_parameters())
    assert heads and all(p.grad is not None for p in heads if not p.shape == (48,))


def test_a_dino_file_of_another_layout_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "hf.pth"
    torch.save({"embeddings.cls_token": torch.zeros(1, 1, 48)}, path)
    with pytest.raises(ForeignFileError, match=r"not a DINO ViT weights file.*embeddings.cls_token"):
        DinoDiscriminator.from_dino_file(path, recipe="S_16")
    with pytest.raises(ValueError, match="not divisible by recipe B_16's 12 heads"):
        DinoDiscriminator.from_dino_file(_dino_file(tmp_path / "d.pth", num_heads=2, embed_dim=20), recipe="B_16")
    with pytest.raises(ValueError, match="unknown DINO recipe 'S_32'"):
        DinoDiscriminator.from_dino_file(tmp_path / "d.pth", recipe="S_32")


def test_load_discriminator_refuses_another_directory(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "dinov2"}')
    with pytest.raises(ValueError, match="not a drorae discriminator directory"):
        load_discriminator(tmp_path)
    with pytest.raises(FileNotFoundError, match="config"):
        load_discriminator(tmp_path / "missing")


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
