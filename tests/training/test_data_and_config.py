"""Robust data loading and config validation of the tokenizer trainer."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from drorae.training import ConfigError, Trainer, load_config

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

    code = main(["train", "--config", str(CPU_TINY), "--phase", "1", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                 "model.fusion.betta=0.3"])
    assert code == 2
    assert "'model.fusion.betta'" in capsys.readouterr().err


def test_paper_configs_load():
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        cfg = load_config(path)
        assert cfg.train.max_steps >= 1, path
