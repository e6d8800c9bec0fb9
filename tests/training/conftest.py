from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CPU_TINY = REPO / "configs" / "tokenizer" / "cpu-tiny.yaml"


def write_images(folder: Path, count: int, seed: int = 0, size=(40, 48)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        # smooth random images (a decoder can make progress on them in a few steps)
        small = rng.integers(0, 255, (5, 6, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size[::-1], Image.Resampling.BICUBIC).save(folder / f"img_{i:03d}.png")
    return folder


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("data") / "cls_a", 24).parent


@pytest.fixture(scope="session")
def phase1_run(tmp_path_factory, image_dir):
    """A short phase-1 run shared by tests of the later phases."""
    from drorae.tokenizer.training import Trainer, load_config

    out = tmp_path_factory.mktemp("phase1")
    cfg = load_config(CPU_TINY, ["train.max_steps=3"])
    Trainer(cfg, "1", out, data_dir=image_dir, progress=False).run()
    return out


def wait_for_checkpoint(root: Path, step: int, timeout: float = 120) -> None:
    """Poll until a run under ``root`` has a complete checkpoint at ``step`` or later."""
    from drorae.engine.checkpoint import latest_checkpoint

    deadline = time.time() + timeout
    while time.time() < deadline:
        latest = latest_checkpoint(root)
        if latest is not None and latest.name >= f"step_{step:08d}":
            return
        time.sleep(0.01)
    raise TimeoutError(f"no checkpoint at step >= {step} under {root} after {timeout} s")


def env() -> dict:
    """The environment of a training subprocess: one thread, this checkout's sources."""
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))


def train_args(phase: str, image_dir: Path, out: Path, *extra: str) -> list[str]:
    """``-m drorae.cli train ...`` on the tiny config (prefix with the python or torchrun command)."""
    return [
        "-m",
        "drorae.cli",
        "train",
        "--config",
        str(CPU_TINY),
        "--phase",
        phase,
        "--data",
        str(image_dir),
        "--out",
        str(out),
        *extra,
    ]
