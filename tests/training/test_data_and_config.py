"""Robust data loading and config validation of the tokenizer trainer."""

import numpy as np
import pytest
import torch
from PIL import Image

from drorae.tokenizer.training import ConfigError, Trainer, load_config

from .conftest import CPU_TINY, REPO, write_images


def test_unreadable_and_odd_images_train_and_two_are_reported(tmp_path, capsys):
    data = write_images(tmp_path / "data" / "good", 8)
    odd = tmp_path / "data" / "odd"
    odd.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(odd / "full.jpg")
    (odd / "truncated.jpg").write_bytes((odd / "full.jpg").read_bytes()[:200])  # corrupt JPEG
    (odd / "text.png").write_text("this is not a png")
    Image.fromarray(rgb[..., 0]).save(odd / "gray.png")
    Image.fromarray((rng.integers(0, 65535, (40, 40))).astype(np.uint16)).save(odd / "deep16.png")
    Image.fromarray(rgb).convert("CMYK").save(odd / "cmyk.jpg")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(odd / "rgba.png")
    assert Image.open(odd / "deep16.png").mode.startswith("I")
    cfg = load_config(CPU_TINY, ["train.max_steps=6", "train.batch_size=5", "data.num_workers=2"])
    result = Trainer(cfg, "1", tmp_path / "run", data_dir=data.parent, progress=False).run()
    assert result.skipped_files == 2
    out = capsys.readouterr().out
    assert "skipped 2" in out and "truncated.jpg" in out and "text.png" in out


def test_missing_or_empty_data_folder_fails_at_start(tmp_path):
    cfg = load_config(CPU_TINY)
    with pytest.raises(FileNotFoundError, match="nope"):
        Trainer(cfg, "1", tmp_path / "run", data_dir=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        Trainer(cfg, "1", tmp_path / "run", data_dir=tmp_path / "empty")


def test_config_unknown_key_and_wrong_type_fail_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_base_: {CPU_TINY}\ntrain:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError, match=r"'train.max_stepz'"):
        load_config(bad)
    bad.write_text(f"_base_: {CPU_TINY}\noptim:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=r"'optim.lr'"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"'train.batch_size'"):
        load_config(CPU_TINY, ["train.batch_size=many"])
    with pytest.raises(ConfigError, match=r"'loss.perceptual'.*'lpipz'"):
        load_config(CPU_TINY, ["loss.perceptual=lpipz"])


def test_cli_reports_config_errors_in_one_line(tmp_path, capsys):
    from drorae.cli import main

    code = main(
        [
            "train",
            "--config",
            str(CPU_TINY),
            "--phase",
            "1",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "model.fusion.betta=0.3",
        ]
    )
    assert code == 2
    assert "'model.fusion.betta'" in capsys.readouterr().err


def test_a_preset_and_a_contradicting_size_fail_naming_both(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"model.decoder.preset='ViT-XL' sets model.decoder.hidden_size=1152, "
        r"but model.decoder.hidden_size=512 was given",
    ):
        load_config(REPO / "configs" / "tokenizer" / "paper" / "phase1.yaml", ["model.decoder.hidden_size=512"])
    with pytest.raises(
        ConfigError,
        match=r"model.fusion.preset='paper-appendix-a' sets model.fusion.expert_hidden=3072, "
        r"but model.fusion.expert_hidden=1536 was given",
    ):
        load_config(
            REPO / "configs" / "tokenizer" / "paper" / "phase2-appendix-a.yaml", ["model.fusion.expert_hidden=1536"]
        )
    # agreeing values are fine, and so is a preset switched off for explicit sizes
    assert load_config(REPO / "configs" / "tokenizer" / "paper" / "phase1.yaml", ["model.decoder.hidden_size=1152"])
    cfg = load_config(
        REPO / "configs" / "tokenizer" / "paper" / "phase1.yaml",
        [
            "model.decoder.preset=null",
            "model.decoder.hidden_size=512",
            "model.decoder.num_layers=8",
            "model.decoder.num_heads=8",
            "model.decoder.intermediate_size=2048",
        ],
    )
    assert cfg.model.decoder.hidden_size == 512 and cfg.model.decoder.preset is None


def _dinov2_base_shaped_backbone():
    """DINOv2-B-with-registers' architecture (C=768, L=12, patch 14, 224 px -> 16 x 16 tokens), no weights."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from drorae import FrozenBackbone

    hf = Dinov2WithRegistersConfig(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        patch_size=14,
        num_register_tokens=4,
        image_size=224,
    )
    with torch.device("meta"):
        model = Dinov2WithRegistersModel(hf)
    return FrozenBackbone(model, "dinov2", input_size=224, name_or_path="meta")


def _dinov3_large_shaped_backbone():
    """A DINOv3 ViT-L/16 with the released checkpoint's shapes (24 blocks, width 1024, 4 registers), on meta."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    from drorae.tokenizer.backbones import FrozenBackbone

    hf = DINOv3ViTConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                         patch_size=16, num_register_tokens=4, image_size=256)  # fmt: skip
    with torch.device("meta"):
        model = DINOv3ViTModel(hf)
    return FrozenBackbone(model, "dinov3", input_size=256, name_or_path="meta")


TOKENIZER_CONFIGS = sorted((REPO / "configs" / "tokenizer").rglob("*.yaml"))


@pytest.mark.parametrize("path", TOKENIZER_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_builds_its_model(path):
    """Paper-size models are built on the meta device (shapes and parameter counts, no memory)."""
    from drorae import DRoRAE
    from drorae.tokenizer.fusion import paper_param_count

    cfg = load_config(path)
    paper = cfg.model.backbone.name_or_path is not None
    dinov3 = paper and "dinov3" in cfg.model.backbone.name_or_path
    backbone = (_dinov3_large_shaped_backbone() if dinov3 else _dinov2_base_shaped_backbone()) if paper else None
    with torch.device("meta" if paper else "cpu"):
        model = DRoRAE.from_config(cfg.model, backbone=backbone)
    counts = model.parameter_counts()
    assert model.decoder.config.image_size == cfg.data.image_size
    if cfg.model.fusion is None:  # RAE's own recipe (configs/tokenizer/rae): no fusion module
        assert path.parent.name == "rae" and model.fusion is None and model.rae_latent
        assert model.decoder.config.hidden_size == 1152 and model.decoder.config.num_layers == 28
        return
    assert model.fusion is not None and counts["fusion"] > 0
    if paper:  # the paper's ViT-XL decoder and the fusion size appendix C gives for its expert width
        assert model.decoder.config.hidden_size == 1152 and model.decoder.config.num_layers == 28
        h, c, n = model.fusion.expert_hidden, model.backbone.hidden_size, model.backbone.num_layers
        assert abs(counts["fusion"] - paper_param_count(c, n, h)) / paper_param_count(c, n, h) < 0.01
    if cfg.model.backbone.latent_layers is not None:  # RAEv2's layer mean, as the file lists it
        assert model.latent_layers == cfg.model.backbone.latent_layers and not model.rae_latent
