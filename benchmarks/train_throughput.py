"""Training throughput of one phase-1, phase-2 and phase-3 step (images/s, peak memory).

Runs the real engine (``drorae.tokenizer.training.Trainer.train_step``: forward, losses, backward, optimizer,
EMA, discriminator step) on random images with random weights, so nothing is downloaded. Default
shapes are the paper's: DINOv2-B-with-registers (224 px input, 16x16 tokens of width 768) and the
ViT-XL decoder (256 px output); ``--preset cpu-tiny`` uses configs/tokenizer/cpu-tiny.yaml instead.

    python benchmarks/train_throughput.py --device cpu --batch 2 --iters 2
    python benchmarks/train_throughput.py --device cuda --batch 64 --precision bf16 fp32 --compile off on

Perceptual loss defaults to ST-LPIPS (VGG, ships with stlpips-pytorch; same network cost as LPIPS-VGG)
and the discriminator to the from-scratch patch discriminator, since the DINO discriminator needs
local weights; pass ``--perceptual none`` / ``--discriminator none`` to time the tokenizer alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # fusion_overhead's FLOP counters

from drorae.tokenizer.training import Trainer, build_model, load_config  # noqa: E402


def decoder_flops(cfg) -> int:
    """Forward FLOPs per image (2 per multiply-add, matmuls and attention) of RAE's ViT decoder: the latent embedding
    on N tokens, ``num_layers`` pre-norm ViT blocks on N + 1 tokens (with the cls token), the pixel projection."""
    c = cfg.resolved() if hasattr(cfg, "resolved") else cfg
    n, d, i = c.num_patches, c.hidden_size, c.intermediate_size
    t = n + 1
    block = t * (4 * d * d + 2 * d * i) + 2 * t * t * d
    return 2 * (n * c.latent_dim * d + c.num_layers * block + t * d * c.patch_size**2 * c.num_channels)


def phase_flops(model, phase: str) -> dict[str, int]:
    """Per-image FLOPs of one training step by the usual rule (backward = 2x the forward of what gets gradients):
    encoder forward (frozen, no backward); phase 1: decoder x3; phase 2: fusion x3, decoder forward + the
    input-gradient half of its backward (x2); phase 3: fusion forward, decoder x3. Losses and discriminators are
    not counted. The forward counts are checked against torch.utils.flop_counter in tests/test_benchmarks.py."""
    from fusion_overhead import encoder_flops, fusion_flops

    bb = model.backbone
    enc = encoder_flops(bb.hidden_size, bb.num_layers, bb.num_tokens, bb.num_prefix_tokens, bb.patch_size)["total"]
    dec = decoder_flops(model.decoder.config)
    fus = 0
    if model.fusion is not None:
        fus = fusion_flops(bb.hidden_size, len(model.fusion.layers), bb.num_tokens, model.fusion.expert_hidden)["fwd"]
    train = {"1": 3 * dec, "2": 3 * fus + 2 * dec, "3": fus + 3 * dec}[phase]
    return {"encoder_fwd": enc, "fusion_fwd": fus, "decoder_fwd": dec, "step": enc + train}


PAPER = [
    "model.backbone.random.hidden_size=768",
    "model.backbone.random.num_hidden_layers=12",
    "model.backbone.random.num_attention_heads=12",
    "model.backbone.random.patch_size=14",
    "model.backbone.random.num_register_tokens=4",
    "model.backbone.input_size=224",
    "model.decoder.preset=ViT-XL",
    "model.decoder.hidden_size=null",
    "model.decoder.num_layers=null",
    "model.decoder.num_heads=null",
    "model.decoder.intermediate_size=null",
    "model.decoder.patch_size=16",
    "data.image_size=256",
    "model.fusion.preset=paper-text-29m",
    "model.fusion.expert_hidden=null",
]


class RandomImages(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int):
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {"image": torch.rand(3, self.size, self.size, generator=g), "index": i}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (KiB on Linux)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_phase(cfg, phase: str, model, batch: int, warmup: int, iters: int, out: Path) -> dict:
    dataset = RandomImages(4 * batch, cfg.data.image_size)
    trainer = Trainer(cfg, phase, out / f"phase{phase}", dataset=dataset, model=model, progress=False)
    device = trainer.device
    x = torch.stack([dataset[i]["image"] for i in range(batch)]).to(device)
    flag = torch.zeros((), dtype=torch.bool, device=device)
    trainer.model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        trainer.train_step([x], flag)
    times = []
    for _ in range(iters):
        sync(device)
        t = time.perf_counter()
        trainer.train_step([x], flag)
        sync(device)
        times.append(time.perf_counter() - t)
    step = statistics.median(times)
    trainable = sum(p.numel() for _, p in trainer.trained)
    return {
        "phase": phase,
        "seconds_per_step": step,
        "images_per_s": batch / step,
        "peak_memory_mb": peak_memory_mb(device),
        "trainable_parameters": trainable,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["paper", "cpu-tiny"], default="paper")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--phases", nargs="+", default=["1", "2", "3"])
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    ap.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"])
    ap.add_argument("--perceptual", default="stlpips", choices=["stlpips", "lpips", "none"])
    ap.add_argument("--discriminator", default="patch", choices=["patch", "none"])
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--flops", action="store_true", help="add analytic FLOPs per image and the achieved TFLOP/s")
    ap.add_argument("--json", help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    base = REPO / "configs" / "tokenizer" / "cpu-tiny.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precision:
            for compile_ in args.compile:
                overrides = (PAPER if args.preset == "paper" else []) + [
                    f"train.device={'cuda' if args.device.startswith('cuda') else 'cpu'}",
                    f"train.batch_size={args.batch}",
                    f"train.precision={precision}",
                    f"train.compile={'true' if compile_ == 'on' else 'false'}",
                    f"loss.perceptual={args.perceptual}",
                    f"loss.discriminator={args.discriminator}",
                    "loss.disc_start_step=0",
                    "loss.disc_update_start_step=0",
                    "loss.disc_channels=64",
                    "train.max_steps=1000",
                ]
                cfg = load_config(base, overrides)
                model = build_model(cfg, "joint", None)  # random backbone + decoder + fusion, built once
                for phase in args.phases:
                    row = bench_phase(cfg, phase, model, args.batch, args.warmup, args.iters, Path(tmp))
                    row.update(precision=precision, compile=compile_, batch=args.batch, device=args.device)
                    if args.flops:
                        row["flops_per_image"] = phase_flops(model, phase)
                        row["achieved_tflops_per_s"] = row["flops_per_image"]["step"] * row["images_per_s"] / 1e12
                    rows.append(row)
                    print(
                        f"phase {phase} {precision} compile={compile_}: {row['images_per_s']:.3f} img/s, "
                        f"{row['seconds_per_step']:.2f} s/step, peak {row['peak_memory_mb']:.0f} MB",
                        flush=True,
                    )
    print()
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads {torch.get_num_threads()}, "
        f"preset {args.preset}, batch {args.batch}, perceptual {args.perceptual}, discriminator {args.discriminator}"
    )
    print("| phase | trains | precision | compile | s/step | images/s | peak memory (MB) |")
    print("|---|---|---|---|---|---|---|")
    trains = {"1": "decoder", "2": "fusion", "3": "decoder"}
    for r in rows:
        print(
            f"| {r['phase']} | {trains.get(r['phase'], '?')} ({r['trainable_parameters'] / 1e6:.1f}M) | "
            f"{r['precision']} | "
            f"{r['compile']} | {r['seconds_per_step']:.3f} | {r['images_per_s']:.3f} | {r['peak_memory_mb']:.0f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
