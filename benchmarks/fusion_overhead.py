#!/usr/bin/env python
"""How much does depth-routed fusion cost on top of the frozen encoder?

Measures, for one backbone and one or more expert widths h (median over ``--iters`` timed
iterations after ``--warmup``, with ``torch.cuda.synchronize`` around every iteration on GPU):

  encoder             backbone forward (no_grad): images -> hidden_states [L,B,N,C], z_base
  encoder+fusion      backbone forward + DepthRoutedFusion forward (no_grad): a DRoRAE encode
  fusion fwd          fusion forward alone on cached hidden states (no_grad)
  fusion fwd+bwd      fusion forward + backward alone on cached hidden states, i.e. what a
                      phase-2 step pays per batch besides the encoder (no optimizer step)

and puts next to the measured times the analytic FLOP counts (``encoder_flops``, ``fusion_flops``),
so the measured overhead ratio can be compared with the FLOP ratio of the paper's setup (fusion ~31%
/ ~62% of a DINOv2-B encoder for h = 1536 / 3072). Peak memory per stage is the increase over what
was already held when the stage started (weights, inputs, cached hidden states):
``torch.cuda.max_memory_allocated`` on GPU; on CPU the process's peak resident set (Linux VmHWM,
reset through /proc/self/clear_refs after a malloc_trim), else ``resource`` ru_maxrss, which cannot
be reset and is a lower bound.

The default backbone is a RANDOM-weight Dinov2WithRegisters with DINOv2-B shapes (hidden 768,
12 blocks, 12 heads, patch 14, input 224, 4 registers): nothing is downloaded, and the speed
of a ViT does not depend on its weights. ``--backbone DIR`` loads a real one instead.

    PYTHONPATH=src python benchmarks/fusion_overhead.py --batch 4 --expert-hidden 1536 3072
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import datetime as _dt
import gc
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

try:
    import drorae  # noqa: F401
except ImportError:  # run from a checkout without PYTHONPATH=src
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from drorae.tokenizer.backbones import FrozenBackbone, load_backbone  # noqa: E402
from drorae.tokenizer.fusion import DepthRoutedFusion, FusionConfig  # noqa: E402

MB = 1024**2


# --------------------------------------------------------------------------------------------
# Analytic FLOPs (per image; one multiply-add = 2 FLOPs; matmuls only: LayerNorm, GELU,
# softmax, biases and residual adds are left out, they are < 1% of a ViT-B block).
# --------------------------------------------------------------------------------------------


def encoder_flops(
    hidden: int,
    layers: int,
    num_patches: int,
    prefix_tokens: int,
    patch: int,
    *,
    mlp_hidden: int | None = None,
    gated_mlp: bool = False,
    channels: int = 3,
) -> dict:
    """FLOPs of one image through a ViT encoder, by term.

    Per block, with N = num_patches + prefix_tokens tokens (CLS and registers take part in
    every block), width C and MLP width H (4C by default), in multiply-adds:
    qkv 3NC^2, attention output projection NC^2, MLP 2NCH (gated/SwiGLU: 3NCH),
    attention scores QK^T N^2 C and weighted sum AV N^2 C. Patch embedding:
    num_patches * (channels * patch^2) * C. Everything times 2.
    """
    c, n = hidden, num_patches + prefix_tokens
    h_mlp = 4 * c if mlp_hidden is None else mlp_hidden
    per_block = {
        "qkv": 2 * 3 * n * c * c,
        "attn_proj": 2 * n * c * c,
        "mlp": 2 * (3 if gated_mlp else 2) * n * c * h_mlp,
        "attention": 2 * 2 * n * n * c,
    }
    block = sum(per_block.values())
    patch_embed = 2 * num_patches * channels * patch * patch * c
    return {
        "tokens": n,
        "per_block": per_block,
        "block": block,
        "blocks": layers * block,
        "patch_embed": patch_embed,
        "total": layers * block + patch_embed,
    }


def fusion_flops(
    hidden: int, layers: int, num_tokens: int, expert_hidden: int, fused_layers: int | None = None
) -> dict:
    """FLOPs of one image through DepthRoutedFusion (energy routing), by term.

    N = num_tokens (patch tokens only; prefix tokens are dropped before fusion), C = hidden,
    K = fused_layers (default L), h = expert_hidden. Forward, in multiply-adds:
    experts K * (NCh + NhC), router (one Linear(C*K -> K) per token) N * CK * K. Times 2.
    The energy-weighted sum (NKC) and the LayerNorms are left out (< 0.3% of the total).

    Backward on cached hidden states (they do not require grad, as in phase 2): the first
    expert matmul and the router need only their weight gradient (1x forward), the second
    expert matmul needs weight and input gradients (2x forward).
    """
    c, n, h = hidden, num_tokens, expert_hidden
    k = layers if fused_layers is None else fused_layers
    expert_in = 2 * k * n * c * h
    expert_out = 2 * k * n * h * c
    router = 2 * n * (c * k) * k
    fwd = expert_in + expert_out + router
    bwd = expert_in + 2 * expert_out + router
    return {"experts": expert_in + expert_out, "router": router, "fwd": fwd, "bwd": bwd, "fwd_bwd": fwd + bwd}


def backbone_flops(backbone: FrozenBackbone) -> dict:
    """``encoder_flops`` for a FrozenBackbone, reading the MLP width from its config."""
    cfg = backbone.model.config
    c = backbone.hidden_size
    gated = bool(getattr(cfg, "use_swiglu_ffn", False))
    if backbone.family == "dinov2":  # Dinov2Config ignores intermediate_size, uses mlp_ratio
        mlp = int(c * float(getattr(cfg, "mlp_ratio", 4)))
        if gated:  # transformers' Dinov2SwiGLUFFN
            mlp = (int(mlp * 2 / 3) + 7) // 8 * 8
    else:
        mlp = int(getattr(cfg, "intermediate_size", 4 * c))
    return encoder_flops(
        c,
        backbone.num_layers,
        backbone.num_tokens,
        backbone.num_prefix_tokens,
        backbone.patch_size,
        mlp_hidden=mlp,
        gated_mlp=gated,
        channels=int(getattr(cfg, "num_channels", 3)),
    )


# --------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------


class PeakMemory:
    """Peak memory of one call above what was held before it, on CUDA or on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self._libc = None
        if device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated"
        elif self._can_reset_hwm():
            self.method = "peak RSS (Linux VmHWM reset via /proc/self/clear_refs, after malloc_trim)"
            name = ctypes.util.find_library("c")
            with contextlib.suppress(OSError, AttributeError):
                self._libc = ctypes.CDLL(name) if name else None
                self._libc.malloc_trim  # noqa: B018 (glibc only)
        else:
            self.method = "resource ru_maxrss (process-lifetime peak, cannot be reset: lower bound)"

    @staticmethod
    def _can_reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return PeakMemory._status("VmHWM") is not None
        except OSError:
            return False

    @staticmethod
    def _status(key: str) -> int | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    @staticmethod
    def _ru_maxrss() -> int:
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r if sys.platform == "darwin" else r * 1024

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self.method.startswith("peak RSS"):
            if self._libc is not None:
                self._libc.malloc_trim(0)  # give freed heap pages back, so reuse shows as new pages
            self._base = self._status("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM := VmRSS
        else:
            self._base = self._ru_maxrss()

    def stop(self) -> tuple[int, int]:
        """(peak above the start, absolute peak) in bytes."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("peak RSS"):
            peak = self._status("VmHWM")
        else:
            peak = self._ru_maxrss()
        return max(0, peak - self._base), peak


def measure(stages: dict, *, device: torch.device, warmup: int, iters: int, memory: PeakMemory) -> dict:
    """Median wall time and peak memory of each ``stages[name]()`` call, with device synchronisation.

    Each stage first gets its warm-up calls; its peak memory is taken on the last one (or on one
    extra untimed call when warmup=0), so the timed calls are not disturbed by the allocator trim.
    The timed calls are then INTERLEAVED (round r times every stage once), so that a slow
    drift of the machine (other processes, clocks, thermals) hits every stage alike and the
    ratios between stages stay meaningful.
    """
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    out = {}
    for name, fn in stages.items():
        calls = max(warmup, 1)
        for i in range(calls):
            if i == calls - 1:
                memory.start()
            fn()
            sync()
        mem_extra, mem_peak = memory.stop()
        out[name] = {"times_s": [], "mem_extra_bytes": mem_extra, "mem_peak_bytes": mem_peak}
    for _ in range(iters):
        for name, fn in stages.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            out[name]["times_s"].append(time.perf_counter() - t0)
    for m in out.values():
        m["median_s"] = statistics.median(m["times_s"])
    return out


# --------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------


def random_dinov2(hidden: int, layers: int, heads: int, patch: int, input_size: int, registers: int) -> FrozenBackbone:
    """A random-weight Dinov2WithRegisters (or Dinov2 when registers=0) wrapped as FrozenBackbone."""
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    if hidden % heads:
        raise SystemExit(f"--hidden {hidden} must be divisible by --heads {heads}")
    common = dict(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, patch_size=patch, image_size=input_size
    )
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **common))
    else:
        model = Dinov2Model(Dinov2Config(**common))
    return FrozenBackbone(model, "dinov2", input_size=input_size, name_or_path="random")


def _cpu_has_fast_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True  # cannot tell: do not warn


def cpu_model_name() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):  # no "(default: None)" after defaults spelled out in the help
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Time the DRoRAE fusion module against its frozen encoder and compare with analytic FLOPs.",
        formatter_class=_HelpFormatter,
    )
    g = p.add_argument_group("backbone (random weights unless --backbone)")
    g.add_argument(
        "--backbone",
        metavar="DIR",
        help="load a real backbone (save_pretrained dir or cached hub id) with drorae.load_backbone",
    )
    g.add_argument("--hidden", type=int, default=768, help="width C")
    g.add_argument("--layers", type=int, default=12, help="number of blocks L")
    g.add_argument("--heads", type=int, default=12)
    g.add_argument("--patch", type=int, default=14)
    g.add_argument("--registers", type=int, default=4, help="register tokens (0: plain Dinov2Model)")
    g.add_argument("--input-size", type=int, default=224)
    p.add_argument(
        "--expert-hidden", type=int, nargs="+", default=[1536, 3072], metavar="H", help="expert widths h to time"
    )
    p.add_argument("--batch", type=int, default=4)
    p.add_argument(
        "--compile",
        nargs="+",
        default=["off"],
        choices=["off", "on"],
        help="fusion variants: eager (off) and/or torch.compile (on; compiled during the warm-up calls)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    p.add_argument(
        "--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 = torch.autocast(bfloat16) around every forward"
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per stage (default: 1 on CPU, 5 on GPU)")
    p.add_argument(
        "--iters", type=int, default=None, help="timed calls per stage, median reported (default: 3 on CPU, 20 on GPU)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write all numbers (and the per-iteration times) as JSON")
    return p


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    warmup = args.warmup if args.warmup is not None else (5 if device.type == "cuda" else 1)
    iters = args.iters if args.iters is not None else (20 if device.type == "cuda" else 3)
    if iters < 1 or warmup < 0:
        raise SystemExit("--iters must be >= 1 and --warmup >= 0")
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, device, warmup, iters)
    finally:  # main() may be called in-process (tests): leave the thread count as found
        torch.set_num_threads(threads_before)


def _run(args: argparse.Namespace, device: torch.device, warmup: int, iters: int) -> dict:
    started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    torch.manual_seed(args.seed)
    if device.type == "cpu" and args.dtype == "bf16" and not _cpu_has_fast_bf16():
        print(
            "warning: this CPU has no native bf16 matmul (no AVX512-BF16/AMX, oneDNN bf16 unsupported); "
            "bf16 autocast falls back to a slow path (measured ~1 GFLOP/s vs ~150 GFLOP/s fp32 on a "
            "2-core AMD EPYC): expect a paper-scale run to take hours",
            file=sys.stderr,
            flush=True,
        )

    if args.backbone:
        backbone = load_backbone(args.backbone, input_size=args.input_size)
    else:
        backbone = random_dinov2(args.hidden, args.layers, args.heads, args.patch, args.input_size, args.registers)
    backbone = backbone.to(device)
    C, L, N = backbone.hidden_size, backbone.num_layers, backbone.num_tokens
    enc_flops = backbone_flops(backbone)

    autocast = (
        (lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16))
        if args.dtype == "bf16"
        else contextlib.nullcontext
    )
    memory = PeakMemory(device)
    images = torch.rand(args.batch, 3, args.input_size, args.input_size, device=device)
    B = args.batch

    def row(stage, h, m, flops_per_img, enc_time=None, enc_fl=None):
        t = m["median_s"]
        return {
            "stage": stage,
            "expert_hidden": h,
            "ms_per_batch": 1e3 * t,
            "images_per_s": B / t,
            "time_vs_encoder": None if enc_time is None else t / enc_time,
            "gflop_per_image": flops_per_img / 1e9,
            "flop_vs_encoder": None if enc_fl is None else flops_per_img / enc_fl,
            "achieved_gflop_s": B * flops_per_img / t / 1e9,
            "peak_mem_extra_mb": m["mem_extra_bytes"] / MB,
            "peak_mem_abs_mb": m["mem_peak_bytes"] / MB,
            "times_s": m["times_s"],
        }

    # 1. encoder alone
    def encode():
        with torch.no_grad(), autocast():
            return backbone(images)

    cached = encode()  # hidden states as phase 2 sees them (same dtype as under autocast)
    hidden_states, z_base = cached.hidden_states.detach(), cached.z_base.detach()
    del cached
    grad_latent = torch.randn(B, N, C, device=device)

    def make_stages(fusion):
        # 2. encoder + fusion forward
        def encode_fuse():
            with torch.no_grad(), autocast():
                out = backbone(images)
                return fusion(out.hidden_states, out.z_base).latent

        # 3a. fusion forward alone on cached hidden states
        def fuse():
            with torch.no_grad(), autocast():
                return fusion(hidden_states, z_base).latent

        # 3b. fusion forward + backward alone (phase 2's extra work per step, no optimizer step)
        def fuse_fwd_bwd():
            with autocast():
                latent = fusion(hidden_states, z_base).latent
            latent.backward(grad_latent.to(latent.dtype))
            # The gradients count in this call's peak memory; freeing them here keeps the
            # memory baseline of the next call (and of the other stages) free of them.
            fusion.zero_grad(set_to_none=True)

        return {"encoder+fusion": encode_fuse, "fusion fwd": fuse, "fusion fwd+bwd": fuse_fwd_bwd}

    stages, fusions, fusion_params = {("encoder", None): encode}, {}, {}
    variants = [v == "on" for v in args.compile]
    for h in args.expert_hidden:
        torch.manual_seed(args.seed)
        fusions[h] = DepthRoutedFusion(
            FusionConfig(num_layers=L, dim=C, expert_hidden=h, norm_eps=backbone.norm_eps)
        ).to(device)
        fusion_params[h] = sum(p.numel() for p in fusions[h].parameters())
        for compiled in variants:
            # torch.compile (inductor) fuses the memory-bound LayerNorm/affine/GELU passes over [K, M, h] and the
            # bias adds into the matmuls; compilation happens in the untimed warm-up calls
            module = torch.compile(fusions[h]) if compiled else fusions[h]
            stages.update({(name, h, compiled): fn for name, fn in make_stages(module).items()})

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    t_start = time.perf_counter()
    ms = measure(stages, device=device, warmup=warmup, iters=iters, memory=memory)
    wall = time.perf_counter() - t_start
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    m_enc = ms[("encoder", None)]
    t_enc, f_enc = m_enc["median_s"], enc_flops["total"]
    rows, summary = [row("encoder", None, m_enc, f_enc, t_enc, f_enc)], []
    for h, compiled in ((h, c) for h in args.expert_hidden for c in variants):
        fus = fusion_flops(C, L, N, h)
        tag = " (compiled)" if compiled else ""
        m_ef, m_f, m_fb = (ms[(name, h, compiled)] for name in ("encoder+fusion", "fusion fwd", "fusion fwd+bwd"))
        rows += [
            row("encoder+fusion" + tag, h, m_ef, f_enc + fus["fwd"], t_enc, f_enc),
            row("fusion fwd" + tag, h, m_f, fus["fwd"], t_enc, f_enc),
            row("fusion fwd+bwd" + tag, h, m_fb, fus["fwd_bwd"], t_enc, f_enc),
        ]
        summary.append(
            {
                "expert_hidden": h,
                "variant": "compiled" if compiled else "eager",
                "fwd_time_share_over_flop_share": (m_f["median_s"] / t_enc) / (fus["fwd"] / f_enc),
                "fusion_params": fusion_params[h],
                "fusion_gflop_fwd": fus["fwd"] / 1e9,
                "measured_encfusion_over_enc": m_ef["median_s"] / t_enc,
                "analytic_encfusion_over_enc": (f_enc + fus["fwd"]) / f_enc,
                "measured_fusionfwd_over_enc": m_f["median_s"] / t_enc,
                "measured_difference_over_enc": (m_ef["median_s"] - t_enc) / t_enc,
                "analytic_fusionfwd_over_enc": fus["fwd"] / f_enc,
                "measured_fwdbwd_over_enc": m_fb["median_s"] / t_enc,
                "analytic_fwdbwd_over_enc": fus["fwd_bwd"] / f_enc,
            }
        )

    meta = {
        "command": " ".join(shlex.quote(a) for a in getattr(args, "argv", sys.argv)),
        "date": started,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU: {cpu_model_name()}",
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "dtype": "fp32" if args.dtype == "fp32" else "bf16 autocast",
        "warmup": warmup,
        "iters": iters,
        "batch": B,
        "memory_method": memory.method,
        "loadavg_1min_before_after": None
        if load_before is None
        else [round(load_before[0], 2), round(load_after[0], 2)],
        "measure_wall_s": wall,
        "backbone": args.backbone
        or (f"random Dinov2WithRegisters ({args.registers} registers)" if args.registers else "random Dinov2"),
        "hidden": C,
        "layers": L,
        "patch": backbone.patch_size,
        "input_size": backbone.input_size,
        "patch_tokens": N,
        "prefix_tokens": backbone.num_prefix_tokens,
        "encoder_params": sum(p.numel() for p in backbone.parameters()),
        "fusion_params": fusion_params,
    }
    return {"meta": meta, "encoder_flops": enc_flops, "rows": rows, "summary": summary}


def _f(x, fmt):
    return "-" if x is None else format(x, fmt)


def to_markdown(result: dict) -> str:
    m = result["meta"]
    lines = [
        f"{m['backbone']}: C={m['hidden']}, L={m['layers']}, patch {m['patch']}, input {m['input_size']} "
        f"({m['patch_tokens']} patch + {m['prefix_tokens']} prefix tokens), "
        f"encoder {m['encoder_params'] / 1e6:.1f}M params; "
        f"batch {m['batch']}, {m['dtype']}, {m['device']}, {m['threads']} threads, "
        f"median of {m['iters']} interleaved rounds (warm-up {m['warmup']}), torch {m['torch']}",
        "",
        "| stage | h | ms/batch | img/s | time / encoder | GFLOP/img (analytic) | FLOP / encoder | achieved GFLOP/s "
        "| peak mem (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['stage']} | {_f(r['expert_hidden'], 'd')} | {r['ms_per_batch']:.1f} | {r['images_per_s']:.2f} | "
            f"{_f(r['time_vs_encoder'], '.3f')} | {r['gflop_per_image']:.4g} | {_f(r['flop_vs_encoder'], '.3f')} | "
            f"{r['achieved_gflop_s']:.3g} | {r['peak_mem_extra_mb']:.0f} |"
        )
    lines += [
        "",
        "| h | variant | fusion params | (enc+fusion)/enc measured | analytic | fusion fwd/enc measured (cached) | "
        "(enc+fusion-enc)/enc | analytic | fwd+bwd/enc measured | analytic | fwd time share / FLOP share |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["summary"]:
        lines.append(
            f"| {s['expert_hidden']} | {s['variant']} | {s['fusion_params'] / 1e6:.1f}M | "
            f"{s['measured_encfusion_over_enc']:.3f} | "
            f"{s['analytic_encfusion_over_enc']:.3f} | {s['measured_fusionfwd_over_enc']:.3f} | "
            f"{s['measured_difference_over_enc']:.3f} | {s['analytic_fusionfwd_over_enc']:.3f} | "
            f"{s['measured_fwdbwd_over_enc']:.3f} | {s['analytic_fwdbwd_over_enc']:.3f} | "
            f"{s['fwd_time_share_over_flop_share']:.2f}x |"
        )
    lines += ["", f"peak mem = increase over the memory held when the stage started; method: {m['memory_method']}"]
    if m.get("loadavg_1min_before_after"):
        before, after = m["loadavg_1min_before_after"]
        busy = max(before, after) > m["threads"] + 0.75
        lines.append(
            f"1-min load average before/after: {before} / {after} on {m['cpu_count']} CPUs"
            + (" - other processes shared the CPU: timings are noisy" if busy else "")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    args.argv = ["benchmarks/fusion_overhead.py", *(sys.argv[1:] if argv is None else argv)]
    result = run(args)
    print(to_markdown(result), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
