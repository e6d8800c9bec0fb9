from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
DIT_TINY = REPO / "configs" / "generation" / "dit-tiny-cpu.yaml"  # _base_: the packaged demo config
#: overrides that make the tiny DiT config take a fraction of a second per step on the test tokenizer
FAST = [
    "dit.hidden_size=32",
    "dit.depth=1",
    "dit.num_heads=2",
    "dit.head_hidden_size=32",
    "dit.head_depth=1",
    "dit.head_num_heads=2",
    "dit.preset=null",
    "train.batch_size=4",
    "train.max_steps=6",
    "train.log_every=1",
    "train.image_every=0",
    "train.checkpoint_every=3",
    "optim.warmup_steps=1",
    "optim.decay_steps=3",
]


def write_class_images(root: Path, classes: int = 3, per_class: int = 6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            small = (rng.integers(0, 255, (4, 4, 3)) * (0.3 + 0.35 * c)).clip(0, 255).astype(np.uint8)
            Image.fromarray(small).resize((40, 36), Image.Resampling.BICUBIC).save(folder / f"img_{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def class_dir(tmp_path_factory):
    return write_class_images(tmp_path_factory.mktemp("classes"))


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A tiny random-backbone DRoRAE with fusion on (latent [16, 4, 4], 32 px), saved with save_pretrained."""
    from drorae import BackboneConfig, DecoderConfig, DRoRAE, DRoRAEConfig, FusionConfig
    from drorae.tokenizer.backbones import RandomBackboneConfig

    torch.manual_seed(0)
    config = DRoRAEConfig(
        backbone=BackboneConfig(
            random=RandomBackboneConfig(
                hidden_size=16, num_hidden_layers=3, num_attention_heads=2, patch_size=8, num_register_tokens=0
            ),
            input_size=32,
        ),
        decoder=DecoderConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, patch_size=8),
        fusion=FusionConfig(expert_hidden=8, beta=0.2),
    )
    out = tmp_path_factory.mktemp("tokenizer") / "tok"
    DRoRAE.from_config(config).save_pretrained(out)
    return out


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
