"""``train-dit``: gradient accumulation, cached = on-the-fly latents, resume after SIGKILL, torchrun."""

import json
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch
from safetensors.torch import load_file

from drorae.configuration import ConfigError
from drorae.engine import checkpoint as ckpt
from drorae.generation.latents import cache_latents, compute_latent_stats
from drorae.generation.trainer import DiTTrainer, load_dit_config

from .conftest import DIT_TINY, FAST, env


@pytest.fixture(scope="module")
def normed(tokenizer_dir, class_dir, tmp_path_factory):
    """The test tokenizer with its latent statistics, and a cache of its latents (no flips)."""
    root = tmp_path_factory.mktemp("normed")
    compute_latent_stats(tokenizer_dir, class_dir, out_dir=root / "tok", num_workers=0, device="cpu")
    cache_latents(root / "tok", class_dir, root / "cache", flip=True, shard_size=7, num_workers=0, device="cpu")
    return root


def train(out, tok, *overrides, **data):
    cfg = load_dit_config(DIT_TINY, [*FAST, *overrides])
    trainer = DiTTrainer(cfg, tok, out, progress=False, **data)
    trainer.run()
    return out


def weights(run):
    return load_file(str(run / "model" / "model.safetensors"))


def assert_same(a, b, atol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=atol, msg=k)


def test_gradient_accumulation_of_two_equals_one_doubled_batch(normed, tmp_path):
    lat = {"latents_dir": normed / "cache"}
    one = train(tmp_path / "one", normed / "tok", "train.batch_size=8", **lat)
    two = train(tmp_path / "two", normed / "tok", "train.batch_size=4", "train.grad_accum=2", **lat)
    assert_same(weights(one), weights(two), atol=1e-6)
    a = ckpt.read_checkpoint(ckpt.latest_checkpoint(one / "checkpoints"))[0]
    b = ckpt.read_checkpoint(ckpt.latest_checkpoint(two / "checkpoints"))[0]
    assert_same(
        {k: v for k, v in a.items() if k.startswith("opt.")}, {k: v for k, v in b.items() if k.startswith("opt.")}, 1e-6
    )


def test_cached_latents_train_the_same_weights_as_on_the_fly_encoding(normed, class_dir, tmp_path):
    """The flip of sample i in epoch e is drawn from (seed, e, i) in both paths, so with flips on they agree too."""
    cached = train(tmp_path / "cached", normed / "tok", latents_dir=normed / "cache")
    fly = train(tmp_path / "fly", normed / "tok", data_dir=class_dir)
    assert_same(weights(cached), weights(fly), atol=1e-4)
    history = [line for line in (fly / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(history) == 6


def test_a_cache_of_other_statistics_is_refused(normed, tokenizer_dir, tmp_path):
    cfg = load_dit_config(DIT_TINY, FAST)
    with pytest.raises(ValueError, match=r"cached from latents with fingerprint .* re-run cache-latents"):
        DiTTrainer(cfg, tokenizer_dir, tmp_path, latents_dir=normed / "cache", progress=False)


def test_class_count_mismatch_is_named(normed, class_dir, tmp_path):
    cfg = load_dit_config(DIT_TINY, [*FAST, "dit.num_classes=1000"])
    with pytest.raises(
        ConfigError, match=r"dit.num_classes=1000 does not match the data's class folders, which gives 3"
    ):
        DiTTrainer(cfg, normed / "tok", tmp_path, data_dir=class_dir, progress=False)


def test_sample_grids_and_classes_are_written(normed, class_dir, tmp_path):
    run = train(
        tmp_path / "r", normed / "tok", "train.image_every=3", "samples.num=3", "samples.steps=2", data_dir=class_dir
    )
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_00000003.png", "step_00000006.png"]
    assert (run / "classes.json").read_text().count("class_") == 3


def cli(out, tok, cache, *extra):
    return [
        "-m", "drorae.cli", "train-dit", "--tokenizer", str(tok), "--latents", str(cache),
        "--config", str(DIT_TINY), "--out", str(out), *FAST, "data.num_workers=0", *extra,
    ]  # fmt: skip


def test_sigkill_then_resume_equals_the_uninterrupted_run(normed, tmp_path):
    steps = ["train.max_steps=40", "train.checkpoint_every=2", "train.batch_size=4"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    tok, cache = normed / "tok", normed / "cache"
    subprocess.run([sys.executable, *cli(full, tok, cache, *steps)], check=True, env=env(), capture_output=True)
    proc = subprocess.Popen(
        [sys.executable, *cli(killed, tok, cache, *steps)],
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        latest = ckpt.latest_checkpoint(killed / "checkpoints")
        if latest is not None and latest.name >= "step_00000004":
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = ckpt.latest_checkpoint(killed / "checkpoints")
    assert killed_at is not None and killed_at.name < "step_00000040" and not (killed / "model").exists()
    done = subprocess.run(
        [sys.executable, *cli(killed, tok, cache, *steps, "--resume")], env=env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed train-dit from {killed_at}" in done.stdout
    assert_same(weights(full), weights(killed), atol=1e-6)
    a = ckpt.read_checkpoint(ckpt.latest_checkpoint(full / "checkpoints"))[0]
    b = ckpt.read_checkpoint(ckpt.latest_checkpoint(killed / "checkpoints"))[0]
    assert_same(
        {k: v for k, v in a.items() if not k.startswith("rng.")},
        {k: v for k, v in b.items() if not k.startswith("rng.")},
        1e-6,
    )


def test_two_torchrun_processes_equal_one_process_with_the_doubled_batch(normed, tmp_path):
    tok, cache = normed / "tok", normed / "cache"
    two, one = tmp_path / "two", tmp_path / "one"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*launcher, *cli(two, tok, cache, "train.batch_size=4")], env=env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size=2" in proc.stdout
    proc = subprocess.run(
        [sys.executable, *cli(one, tok, cache, "train.batch_size=8")], env=env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same(weights(one), weights(two), atol=1e-5)


def test_nonfinite_loss_stops_with_the_last_good_checkpoint_intact(normed, tmp_path):
    from drorae.engine import NonFiniteLossError

    cfg = load_dit_config(DIT_TINY, [*FAST, "train.checkpoint_every=2", "train.log_every=2"])

    class DivergesAtStep5(DiTTrainer):
        def latents_of(self, batch):
            x = super().latents_of(batch)
            return x * float("nan") if self.step == 4 else x

    trainer = DivergesAtStep5(cfg, normed / "tok", tmp_path, latents_dir=normed / "cache", progress=False)
    with pytest.raises(NonFiniteLossError, match=r"at or before step 6.*last good checkpoint is .*step_00000004"):
        trainer.run()
    tensors, _ = ckpt.read_checkpoint(ckpt.latest_checkpoint(tmp_path / "checkpoints"))
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())


def first_step_terms_by_hand(normed, *overrides):
    """(flow loss, head loss) of a DiT with a free-guidance head at its initial weights on the run's first batch:
    x_t = (1 - t) x + t eps, the flow loss mean |v - (eps - x)|^2 and the head's mean |(x - x_hat) / max(t, 0.05)|^2,
    t = shift(sigmoid(sqrt(2) erfinv(2u - 1))) (logit-normal) with s = sqrt(C h w / 4096)."""
    import math

    with tempfile.TemporaryDirectory() as out:
        trainer = DiTTrainer(load_dit_config(DIT_TINY, [*FAST, *overrides]), normed / "tok", out, progress=False,
                             latents_dir=normed / "cache")  # fmt: skip
        batch = next(trainer._batches())
        dit, cfg = trainer.dit, trainer.config.flow
        assert cfg.time_distribution == "logit-normal" and cfg.shift is None and dit.training
        s = math.sqrt(16 * 4 * 4 / 4096)
        t = torch.sigmoid(math.sqrt(2.0) * torch.erfinv(2 * batch["u"].double() - 1))
        t = (s * t / (1 + (s - 1) * t)).float()
        x, eps = batch["latents"], batch["noise"]
        tt = t.view(-1, 1, 1, 1)
        y = torch.where(batch["drop"], torch.full_like(batch["labels"], dit.config.num_classes), batch["labels"])
        with torch.no_grad():
            v, x_hat = dit((1 - tt) * x + tt * eps, t, y, return_guidance=True)
        flow = (v - (eps - x)).pow(2).mean().item()
        head = ((x - x_hat) / tt.clamp_min(0.05)).pow(2).mean().item()
    return flow, head


def test_free_guidance_head_trains_with_its_weighted_loss_and_samples(normed, tmp_path):
    """train-dit with dit.guidance_head_block: the logged loss is flow + weight * head loss; sample --guidance free."""
    from drorae.cli import main

    run = train(tmp_path / "run", normed / "tok", "dit.guidance_head_block=1", "flow.guidance_head_weight=0.5",
                latents_dir=normed / "cache")  # fmt: skip
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "guidance_head_loss" in r]
    assert len(records) == 6 and all(r["guidance_head_loss"] > 0 for r in records)
    # step 1 recomputed by hand: the same initial weights (the run's seed) on the same first batch
    flow, head = first_step_terms_by_hand(normed, "dit.guidance_head_block=1", "flow.guidance_head_weight=0.5")
    assert records[0]["step"] == 1 and head > 0.1 * flow
    assert records[0]["guidance_head_loss"] == pytest.approx(head, rel=1e-5)
    assert records[0]["loss"] == pytest.approx(flow + 0.5 * head, rel=1e-5)
    assert "guidance_head.linear.weight" in weights(run)
    common = ["sample", "--dit", str(run), "--tokenizer", str(normed / "tok"), "--steps", "3", "--device", "cpu"]
    common += ["--num", "3"]
    assert main([*common, "--out", str(tmp_path / "s"), "--guidance", "free", "--scale", "1.78"]) == 0
    assert (tmp_path / "s" / "samples.npz").is_file()
    plain = train(tmp_path / "plain", normed / "tok", latents_dir=normed / "cache")
    common[2] = str(plain)
    assert main([*common, "--out", str(tmp_path / "p"), "--guidance", "free"]) == 2  # no head: a clear error
