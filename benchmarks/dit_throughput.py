"""Stage-2 throughput: DiT^DH training steps (images/s, MFU, peak memory) and sampling speed.

A training step is what ``drorae train-dit`` does per batch on cached latents: the flow-matching forward,
backward, gradient clipping, AdamW and the EMA update, under bf16 autocast when asked, optionally compiled.
Sampling is the Euler ODE of ``drorae sample`` (one forward per step; CFG doubles the batch, AutoGuidance adds
the guide's forward). Random weights and latents: nothing is downloaded.

    python benchmarks/dit_throughput.py --device cpu --preset DiTDH-tiny --latent 128 8 8 --batch 32 --iters 3
    python benchmarks/dit_throughput.py --device cuda --preset DiTDH-XL --batch 64 128 256 --precision bf16 fp32 \
        --compile off on --json dit.json

MFU = achieved model FLOP/s / the device's peak (``--peak-tflops``, default 989 for H100/H200 dense bf16).
The FLOP count is analytic (:func:`dit_flops`: every matmul and the attention products, 3x the forward for a
training step) and checked against ``torch.utils.flop_counter`` in tests/test_benchmarks.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from drorae.engine.ema import EMA  # noqa: E402
from drorae.generation import DiT, DiTConfig  # noqa: E402
from drorae.generation.flow import SamplerConfig, flow_matching_loss, guided_velocity, sample  # noqa: E402


def block_flops(dim: int, tokens: int, mlp_ratio: float = 4.0, per_token_condition: bool = False) -> int:
    """Forward FLOPs (2 per multiply-add) of one DiT block on ``tokens`` tokens of one sample: qkv, projection,
    SwiGLU, the two attention products and the adaLN map (once per sample, or per token in the DiT^DH head)."""
    hidden = int(2 / 3 * mlp_ratio * dim)
    linear = tokens * (3 * dim * dim + dim * dim + 2 * dim * hidden + hidden * dim)
    attention = 2 * tokens * tokens * dim
    adaln = 6 * dim * dim * (tokens if per_token_condition else 1)
    return 2 * (linear + attention + adaln)


def dit_flops(cfg: DiTConfig) -> dict[str, int]:
    """Forward FLOPs per sample of a DiT config (matmuls and attention; norms, activations and RoPE ignored)."""
    c = cfg.resolved()
    n = c.grid_size**2
    patch_in = c.patch_size**2 * c.in_channels
    patch_out = c.patch_size**2 * c.out_channels
    d = c.hidden_size
    out = {
        "time_mlp": 2 * (2 * c.frequency_size * d + d * d),  # [sin, cos] of frequency_size frequencies
        "trunk_embed": 2 * n * patch_in * d,
        "trunk": c.depth * block_flops(d, n, c.mlp_ratio),
    }
    if c.head_depth:
        dh = c.head_hidden_size
        out["projector"] = 2 * n * d * dh if dh != d else 0  # RAE: no projection at equal widths
        out["head_embed"] = 2 * n * patch_in * dh
        out["head"] = c.head_depth * block_flops(dh, n, c.mlp_ratio, per_token_condition=True)
        out["final"] = 2 * n * (2 * dh * dh + dh * patch_out)
    else:
        out["final"] = 2 * (2 * d * d) + 2 * n * d * patch_out
    out["total"] = sum(out.values())
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_throughput(cfg: DiTConfig, batch: int, device, bf16: bool, compile_: bool, iters: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model = DiT(cfg).to(device)
    step_model = torch.compile(model) if compile_ else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
    ema = EMA(list(model.named_parameters()), 0.9995)
    c = model.config
    x = torch.randn(batch, c.in_channels, c.input_size, c.input_size, device=device)
    y = torch.randint(0, c.num_classes, (batch,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + iters):
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = flow_matching_loss(step_model, x, torch.randn_like(x), torch.rand(batch, device=device), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(i)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    seconds = sorted(times)[len(times) // 2]
    out = {"batch": batch, "step_s": seconds, "img_per_s": batch / seconds}
    out["train_tflops_per_s"] = 3 * dit_flops(c)["total"] * batch / seconds / 1e12
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def largest_batch(step, start: int, cap: int, device) -> dict:
    """The largest batch (doubling from ``start`` up to ``cap``) for which ``step(batch)`` runs without running out
    of memory (shared by the stage-2 and text-to-image benchmarks)."""
    tried, best = [], None
    batch = start
    while batch <= cap:
        try:
            step(batch)
            tried.append({"batch": batch, "fits": True})
            best = batch
        except torch.OutOfMemoryError:
            tried.append({"batch": batch, "fits": False})
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        batch *= 2
    return {"batch": best, "tried": tried, "cap": cap}


def find_max_batch(cfg: DiTConfig, start: int, cap: int, device, bf16: bool, compile_: bool) -> dict:
    """The largest training batch whose step runs; each try is one warm-up step and one timed step."""
    return largest_batch(lambda b: train_throughput(cfg, b, device, bf16, compile_, iters=1, warmup=1), start, cap,
                         device)  # fmt: skip


@torch.no_grad()
def sampling_speed(
    cfg: DiTConfig, batch: int, device, bf16: bool, steps: int, guidance: str, guide_cfg: DiTConfig | None = None
) -> dict:
    """Euler sampling speed. AutoGuidance uses a separate guide network (``guide_cfg``, e.g. DiT^DH-S), free guidance
    the main network with a guidance head after block ``round(depth * 8 / 28)`` (RAEv2's block 8 of 28)."""
    torch.manual_seed(0)
    if guidance == "free":
        cfg = replace(cfg, guidance_head_block=max(1, round(cfg.resolved().depth * 8 / 28)))
    model = DiT(cfg).to(device).eval()
    c = model.config
    noise = torch.randn(batch, c.in_channels, c.input_size, c.input_size, device=device)
    y = torch.randint(0, c.num_classes, (batch,), device=device)
    guide = None
    if guidance == "autoguidance":
        guide = DiT(guide_cfg).to(device).eval() if guide_cfg is not None else model
    velocity = guided_velocity(model, y, guidance, 1.5, guide=guide, null_class=c.num_classes)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        sample(velocity, noise, SamplerConfig("euler", 2, 1.0))  # warm-up: one step (RAE grid of 2 points)
        _sync(device)
        t0 = time.perf_counter()
        sample(velocity, noise, SamplerConfig("euler", steps, 1.0))
        _sync(device)
    seconds = time.perf_counter() - t0
    evaluations = SamplerConfig("euler", steps, 1.0).evaluations
    return {
        "batch": batch,
        "steps": steps,
        "evaluations": evaluations,
        "guidance": guidance,
        "latents_per_s": batch / seconds,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="DiTDH-XL")
    p.add_argument("--latent", type=int, nargs=3, default=[768, 16, 16], metavar=("C", "H", "W"))
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--batch", type=int, nargs="+", default=[2])
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    p.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--no-sampling", action="store_true")
    p.add_argument("--no-train", action="store_true", help="sampling only")
    p.add_argument("--find-max-batch", type=int, metavar="CAP", help="also find the largest training batch <= CAP")
    p.add_argument("--guide-preset", help="the AutoGuidance guide's preset (default: the main network itself)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="device peak for MFU (H100/H200 dense bf16: 989)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    c, h, w = args.latent
    cfg = DiTConfig(preset=args.preset, in_channels=c, input_size=h, num_classes=args.classes)
    flops = dit_flops(cfg)
    results = {"preset": args.preset, "latent": args.latent, "forward_gflops_per_sample": flops["total"] / 1e9}
    with torch.device("meta"):
        results["parameters"] = DiT(cfg).parameter_count()
    results["train"], results["sampling"] = [], []
    guide_cfg = None
    if args.guide_preset:
        guide_cfg = DiTConfig(preset=args.guide_preset, in_channels=c, input_size=h, num_classes=args.classes)
        results["guide_preset"] = args.guide_preset
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    for precision in args.precision:
        for comp in args.compile if not args.no_train else ():
            for batch in args.batch:
                r = train_throughput(cfg, batch, device, precision == "bf16", comp == "on", args.iters, args.warmup)
                r.update(precision=precision, compile=comp, mfu=r["train_tflops_per_s"] / args.peak_tflops)
                results["train"].append(r)
                print(json.dumps(r), flush=True)
        if args.find_max_batch and not args.no_train:
            comp = args.compile[-1]
            found = find_max_batch(cfg, max(args.batch), args.find_max_batch, device, precision == "bf16", comp == "on")
            results["max_batch"] = {**found, "precision": precision, "compile": comp}
            print(json.dumps(results["max_batch"]), flush=True)
        if not args.no_sampling:
            for guidance in ("none", "cfg", "autoguidance", "free"):
                r = sampling_speed(
                    cfg, max(args.batch), device, precision == "bf16", args.sample_steps, guidance, guide_cfg
                )
                r["precision"] = precision
                results["sampling"].append(r)
                print(json.dumps(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
