"""Text-to-image throughput: the MoT generator's training steps (img/s, TFLOP/s, peak memory) and CFG sampling.

A training step is what ``drorae train-t2i`` does per batch after the tokenizer: the joint MoT forward over
``[caption; markers; latents]``, the flow-matching loss, backward, clipping, AdamW and the EMA update, under bf16
autocast when asked, with gradient checkpointing on or off, training the generation expert (``gen``, the paper's
``freeze_und``) or both experts (``all``). The tokenizer's encode is not in the step (``encode_decode`` measures it).
Sampling is ``sample-t2i``'s Euler ODE with CFG: the captions and the empty context encoded once, then one image-block
forward of the doubled batch per step. Random weights, latents and caption ids: nothing is downloaded (a network's
speed does not depend on its weights).

    python benchmarks/mot_throughput.py --device cpu --preset tiny --latent 16 4 4 --text 8 --batch 2 --iters 1
    python benchmarks/mot_throughput.py --device cuda --preset qwen2.5-0.5b --batch 32 64 --precision bf16 \
        --checkpointing off on --find-max-batch 512 --json mot.json

The FLOP count is analytic (:func:`mot_flops`: every matmul and the attention products as SDPA computes them, over
the whole ``S x S`` mask; a step counts 3x the forward: exact when every matmul trains, an upper count for
``gen``, whose caption path needs no backward) and checked against
``torch.utils.flop_counter`` in tests/test_benchmarks.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]  # drorae from this checkout; the shared benchmark helpers

from dit_throughput import _sync, largest_batch  # noqa: E402

from drorae.data.captions import SPECIAL_TOKENS  # noqa: E402
from drorae.engine.ema import EMA  # noqa: E402
from drorae.generation.flow import SamplerConfig, sample  # noqa: E402
from drorae.generation.text.mot import MoTConfig, MoTGenerator  # noqa: E402
from drorae.generation.text.sampling import cfg_velocity  # noqa: E402
from drorae.generation.text.trainer import t2i_flow_loss  # noqa: E402


def build_config(preset: str, latent: list[int]) -> MoTConfig:
    c, h, _ = latent
    ids = {name: i for i, name in enumerate(SPECIAL_TOKENS)}
    return MoTConfig(preset=preset, latent_channels=c, latent_size=h, token_ids=ids).resolved()


def mot_flops(cfg: MoTConfig, text_tokens: int) -> dict[str, int]:
    """Forward FLOPs (2 per multiply-add) per sample of the joint pass with ``text_tokens`` caption tokens: per layer
    every token's q, k, v, o projections and SwiGLU MLP (one expert each), the two attention products over the whole
    sequence (SDPA computes the masked ``S x S`` scores in full), the latent projections and the timestep MLP."""
    c = cfg.resolved()
    llm = c.llm
    h, inter, layers = llm["hidden_size"], llm["intermediate_size"], llm["num_hidden_layers"]
    kv = llm["num_key_value_heads"] * (h // llm["num_attention_heads"])
    n = c.grid**2
    s = text_tokens + 2 + n  # caption, <|vision_start|> <|vision_end|>, latents
    per_token = h * h + 2 * h * kv + h * h + 3 * h * inter
    out = {
        "layers": layers * 2 * (s * per_token + 2 * s * s * h),
        "latent_in_out": 2 * 2 * n * c.token_dim * h,
        "time_mlp": 2 * (c.timestep_frequency_size * h + h * h),
    }
    out["total"] = sum(out.values())
    return out


def _inputs(cfg: MoTConfig, batch: int, text: int, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.latent_channels, cfg.latent_size, cfg.latent_size, generator=g).to(device)
    ids = torch.randint(len(SPECIAL_TOKENS), cfg.llm["vocab_size"], (batch, text), generator=g).to(device)
    return x, ids, torch.full((batch,), text, device=device)


def train_throughput(cfg: MoTConfig, batch: int, text: int, device, bf16: bool, checkpointing: bool, experts: str,
                     iters: int, warmup: int) -> dict:  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: a 0.9B-parameter init on the host takes seconds
        model = MoTGenerator(cfg).train()
    model.config.gradient_checkpointing = checkpointing  # read at every forward
    trained = model.train_only(experts)
    params = [p for _, p in trained]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
    ema = EMA(trained, 0.9999)
    x, ids, lengths = _inputs(cfg, batch, text, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + iters):
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = t2i_flow_loss(model, x, torch.randn_like(x), torch.rand(batch, device=device), ids, lengths)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(i)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    seconds = sorted(times)[len(times) // 2]
    out = {"batch": batch, "experts": experts, "checkpointing": checkpointing, "step_s": seconds,
           "img_per_s": batch / seconds, "trained_parameters": sum(p.numel() for p in params)}  # fmt: skip
    out["train_tflops_per_s_upper"] = 3 * mot_flops(cfg, text)["total"] * batch / seconds / 1e12
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def find_max_batch(cfg, start, cap, text, device, bf16, checkpointing, experts) -> dict:
    """The largest training batch (doubling from ``start`` up to ``cap``) that runs without running out of memory."""
    step = partial(train_throughput, cfg, text=text, device=device, bf16=bf16, checkpointing=checkpointing,
                   experts=experts, iters=1, warmup=1)  # fmt: skip
    return largest_batch(lambda b: step(batch=b), start, cap, device)


@torch.no_grad()
def sampling_speed(cfg: MoTConfig, batch: int, text: int, device, bf16: bool, steps: int, scale: float) -> dict:
    """``sample-t2i``'s path: encode the captions and the empty context once, then Euler steps of the image block."""
    torch.manual_seed(0)
    with torch.device(device):
        model = MoTGenerator(cfg).eval()
    x, ids, lengths = _inputs(cfg, batch, text, device)
    both = torch.cat([ids, torch.full_like(ids, cfg.token_ids["pad"])])
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        _sync(device)
        t0 = time.perf_counter()
        context = model.encode_text(both, torch.cat([lengths, torch.zeros_like(lengths)]))
        velocity = cfg_velocity(model, context, scale, (0.0, 1.0))
        sample(velocity, torch.randn_like(x), SamplerConfig("euler", steps, 1.0))
        _sync(device)
    seconds = time.perf_counter() - t0
    return {"batch": batch, "steps": steps, "scale": scale, "images_per_s": batch / seconds}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="qwen2.5-0.5b", help="the LLM's shapes (drorae.generation.text.mot presets)")
    p.add_argument("--latent", type=int, nargs=3, default=[768, 16, 16], metavar=("C", "H", "W"))
    p.add_argument("--text", type=int, default=128, help="caption tokens per sample (the paper config's maximum)")
    p.add_argument("--batch", type=int, nargs="+", default=[2])
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--checkpointing", nargs="+", default=["on"], choices=["off", "on"])
    p.add_argument("--experts", nargs="+", default=["gen"], choices=["gen", "all"])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--scale", type=float, default=4.0)
    p.add_argument("--no-sampling", action="store_true")
    p.add_argument("--find-max-batch", type=int, metavar="CAP", help="also find the largest training batch <= CAP")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cfg = build_config(args.preset, args.latent)
    bf16 = args.precision == "bf16"
    with torch.device("meta"):
        count = MoTGenerator(cfg).parameter_count()
    results = {"preset": args.preset, "latent": args.latent, "text_tokens": args.text, "parameters": count,
               "precision": args.precision, "forward_gflops_per_sample": mot_flops(cfg, args.text)["total"] / 1e9,
               "train": [], "sampling": []}  # fmt: skip
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    for experts in args.experts:
        for ckpt in args.checkpointing:
            for batch in args.batch:
                r = train_throughput(cfg, batch, args.text, device, bf16, ckpt == "on", experts, args.iters,
                                     args.warmup)  # fmt: skip
                results["train"].append(r)
                print(json.dumps(r), flush=True)
    if args.find_max_batch:
        ckpt = args.checkpointing[-1] == "on"
        found = find_max_batch(cfg, max(args.batch), args.find_max_batch, args.text, device, bf16, ckpt,
                               args.experts[0])  # fmt: skip
        results["max_batch"] = {**found, "checkpointing": ckpt, "experts": args.experts[0]}
        print(json.dumps(results["max_batch"]), flush=True)
    if not args.no_sampling:
        r = sampling_speed(cfg, max(args.batch), args.text, device, bf16, args.sample_steps, args.scale)
        results["sampling"].append(r)
        print(json.dumps(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
