"""Exact resume after SIGKILL, atomic checkpoints, NaN stop."""

import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from drorae.engine import checkpoint as ckpt
from drorae.tokenizer.training import NonFiniteLossError, Trainer, load_config

from .conftest import CPU_TINY, env, train_args, wait_for_checkpoint

STEPS = 24
ARGS = [f"train.max_steps={STEPS}", "train.log_every=1", "data.num_workers=1"]


def train_cmd(image_dir, out, *extra):
    return [sys.executable, *train_args("1", image_dir, out, "--checkpoint-every", "2", *extra, *ARGS)]


def test_sigkill_then_resume_equals_uninterrupted_run(image_dir, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(train_cmd(image_dir, full), check=True, env=env(), capture_output=True)

    proc = subprocess.Popen(
        train_cmd(image_dir, killed), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_checkpoint(killed / "checkpoints", step=4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = ckpt.latest_checkpoint(killed / "checkpoints")
    assert killed_at is not None and killed_at.name < f"step_{STEPS:08d}", "the run finished before it could be killed"
    assert not (killed / "model").exists()

    subprocess.run(train_cmd(image_dir, killed, "--resume"), check=True, env=env(), capture_output=True)
    a = load_file(str(full / "model" / "model.safetensors"))
    b = load_file(str(killed / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    # raw (non-EMA) weights and optimizer state in the final checkpoints agree too
    ta, _ = ckpt.read_checkpoint(ckpt.latest_checkpoint(full / "checkpoints"))
    tb, _ = ckpt.read_checkpoint(ckpt.latest_checkpoint(killed / "checkpoints"))
    for k in ta:
        if not k.startswith("rng."):
            torch.testing.assert_close(tb[k], ta[k], rtol=0, atol=1e-6, msg=k)


def test_half_written_checkpoint_is_never_latest(image_dir, tmp_path):
    cfg = load_config(CPU_TINY, ["train.max_steps=2", "train.checkpoint_every=2"])
    Trainer(cfg, "1", tmp_path, data_dir=image_dir, progress=False).run()
    root = tmp_path / "checkpoints"
    # simulate a crash while writing the next checkpoint
    (root / ".tmp-step_00000004").mkdir()
    (root / ".tmp-step_00000004" / "tensors.safetensors").write_bytes(b"partial")
    assert ckpt.latest_checkpoint(root).name == "step_00000002"
    tensors, state = ckpt.read_checkpoint(ckpt.latest_checkpoint(root))
    assert state["step"] == 2 and any(k.startswith("ema.") for k in tensors)


def test_nan_loss_stops_and_previous_checkpoint_loads(image_dir, tmp_path):
    cfg = load_config(CPU_TINY, ["train.max_steps=10", "train.checkpoint_every=2", "train.log_every=5"])

    class DivergesAtStep6(Trainer):
        def generator_losses(self, images, out):
            losses = super().generator_losses(images, out)
            if self.step == 5:  # the 6th optimizer step
                losses = dict(losses, total=losses["total"] * float("nan"))
            return losses

    trainer = DivergesAtStep6(cfg, "1", tmp_path, data_dir=image_dir, progress=False)
    with pytest.raises(
        NonFiniteLossError, match=r"NaN/inf at or before step 6.*last good checkpoint is .*step_00000004"
    ):
        trainer.run()
    latest = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    assert latest.name == "step_00000004"
    tensors, _ = ckpt.read_checkpoint(latest)
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if v.is_floating_point())
    resumed = Trainer(cfg, "1", tmp_path, data_dir=image_dir, progress=False, resume=True)
    assert resumed.step == 4
