"""``torchrun`` data parallelism through DistributedDataParallel (gloo on CPU)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from drorae.engine import checkpoint as ckpt

from .conftest import env, train_args, wait_for_checkpoint


def torchrun(nproc: int, *launcher: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *launcher]


def assert_same_tensors(a: Path, b: Path, atol: float, skip: str = "rng.") -> None:
    ta = {k: v for k, v in load_file(str(a)).items() if not k.startswith(skip)}
    tb = {k: v for k, v in load_file(str(b)).items() if not k.startswith(skip)}
    assert ta.keys() == tb.keys() and ta
    for k in ta:
        torch.testing.assert_close(tb[k], ta[k], rtol=0, atol=atol, msg=k)


def test_torchrun_two_ranks_phase2(phase1_run, image_dir, tmp_path):
    out = tmp_path / "ddp"
    cmd = torchrun(
        2,
        *train_args(
            "2",
            image_dir,
            out,
            "--init",
            str(phase1_run),
            "train.max_steps=3",
            "train.checkpoint_every=3",
            "train.record_indices=true",
        ),
    )
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size=2" in proc.stdout
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith("."))
    assert checkpoints == ["latest", "step_00000003"]  # written once, by rank 0
    r0 = json.loads((out / "indices_rank0.json").read_text())
    r1 = json.loads((out / "indices_rank1.json").read_text())
    assert len(r0) == len(r1) == 3 * 4
    assert not set(r0) & set(r1), "the two ranks saw the same images"
    assert (out / "model" / "model.safetensors").is_file()


def test_two_processes_equal_one_process_with_the_doubled_batch(image_dir, tmp_path):
    """DDP averages the ranks' gradients: 2 x batch 4 trains the same weights as 1 x batch 8.

    Deterministic losses only (L1, no latent noise, no GAN whose adaptive weight is per rank)."""
    common = ["train.max_steps=4", "train.checkpoint_every=4", "model.noise_tau=0", "loss.discriminator=none"]
    two, one = tmp_path / "two", tmp_path / "one"
    proc = subprocess.run(
        torchrun(2, *train_args("1", image_dir, two, *common, "train.batch_size=4")),
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run(
        [sys.executable, *train_args("1", image_dir, one, *common, "train.batch_size=8")],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_tensors(one / "model" / "model.safetensors", two / "model" / "model.safetensors", atol=1e-5)
    # raw weights, EMA and AdamW moments in the last checkpoint agree too
    last = "checkpoints/step_00000004/tensors.safetensors"
    assert_same_tensors(one / last, two / last, atol=1e-5)


def _descendants(pid: int) -> list[int]:
    """Child processes of ``pid``, recursively (torchrun starts its workers in sessions of their own)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def test_torchrun_killed_mid_run_resumes_to_the_same_weights(image_dir, tmp_path):
    """Every process of a two-rank run SIGKILLed mid-run; the same torchrun command (with --resume)
    continues from the last checkpoint, each rank with its own RNG state (latent noise, DiffAugment,
    GAN on), and ends with the weights of an uninterrupted two-rank run."""
    steps = 24
    args = [f"train.max_steps={steps}", "train.checkpoint_every=2", "--resume"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    command = torchrun(2, *train_args("1", image_dir, killed, *args))
    proc = subprocess.run(
        torchrun(2, *train_args("1", image_dir, full, *args)), env=env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    run = subprocess.Popen(command, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_checkpoint(killed / "checkpoints", step=4)
    for pid in [*_descendants(run.pid), run.pid]:  # both workers, then torchrun
        os.kill(pid, signal.SIGKILL)
    run.wait()
    time.sleep(0.5)
    killed_at = ckpt.latest_checkpoint(killed / "checkpoints")
    assert killed_at is not None and killed_at.name < f"step_{steps:08d}", "the run finished before it could be killed"
    assert not (killed / "model").exists()

    proc = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed phase 1 from {killed_at}" in proc.stdout
    assert_same_tensors(full / "model" / "model.safetensors", killed / "model" / "model.safetensors", atol=1e-6)
    last = f"checkpoints/step_{steps:08d}/tensors.safetensors"
    assert_same_tensors(full / last, killed / last, atol=1e-6)
