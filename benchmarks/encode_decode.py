"""Tokenizer inference: encode + decode images/s of drorae's DRoRAE (fusion off) beside diffusers' ``AutoencoderRAE``
holding the same weights, and of DRoRAE with fusion on.

Builds a random-weight diffusers ``AutoencoderRAE`` (default: the paper's shapes, DINOv2-B with registers at 224 px
and RAE's ViT-XL decoder to 256 px), saves it with its own ``save_pretrained``, loads it into drorae with
``drorae.import_rae`` (so both hold identical weights; their outputs are compared), adds a fresh fusion module for
the fusion-on row, and times ``decode(encode(x))`` for each under ``no_grad`` (optionally bf16 autocast and
``torch.compile``). Nothing is downloaded.

    python benchmarks/encode_decode.py --device cpu --smoke --iters 2
    python benchmarks/encode_decode.py --device cuda --batch 64 --precision bf16 --json enc.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from drorae import DepthRoutedFusion, DRoRAE, FusionConfig, import_rae  # noqa: E402

PAPER = dict(
    encoder_type="dinov2", encoder_hidden_size=768, encoder_patch_size=14, encoder_num_hidden_layers=12,
    decoder_hidden_size=1152, decoder_num_hidden_layers=28, decoder_num_attention_heads=16,
    decoder_intermediate_size=4096, patch_size=16, encoder_input_size=224, image_size=256,
)  # fmt: skip
SMOKE = dict(
    encoder_type="dinov2", encoder_hidden_size=64, encoder_patch_size=4, encoder_num_hidden_layers=2,
    decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=2,
    decoder_intermediate_size=64, patch_size=4, encoder_input_size=32, image_size=32,
)  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict, x, iters: int, warmup: int, device) -> dict[str, tuple[list[float], float | None]]:
    """Seconds of each call of each ``fns[name](x)``, the rows interleaved round by round (so drift in the machine's
    speed hits every row alike), and each row's peak memory (GiB, CUDA only)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn(x)
    times = {name: [] for name in fns}
    peaks = dict.fromkeys(fns, 0.0 if device.type == "cuda" else None)
    for _ in range(iters):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            t0 = time.perf_counter()
            fn(x)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
            if device.type == "cuda":
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device) / 2**30)
    return {name: (times[name], peaks[name]) for name in fns}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="tiny shapes (CPU tests)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    from diffusers import AutoencoderRAE

    device = torch.device(args.device)
    shapes = SMOKE if args.smoke else PAPER
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        AutoencoderRAE(**shapes).save_pretrained(Path(tmp) / "rae")
        theirs = AutoencoderRAE.from_pretrained(Path(tmp) / "rae").to(device).eval()
        ours = import_rae(Path(tmp) / "rae").to(device).eval()
    bf16 = args.precision == "bf16"
    size = shapes["image_size"]
    x = torch.rand(args.batch, 3, size, size, device=device)

    def run(fn):
        def call(images):
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                return fn(images)

        return torch.compile(call) if args.compile else call

    rows = {}
    candidates = {
        "diffusers AutoencoderRAE": lambda im: theirs.decode(theirs.encode(im).latent).sample,
        "drorae (fusion off)": lambda im: ours.decode(ours.encode(im)),
    }
    with torch.no_grad():
        max_diff = float((candidates["drorae (fusion off)"](x) - candidates["diffusers AutoencoderRAE"](x)).abs().max())
    bb = ours.backbone  # the same backbone and decoder with a fresh fusion module: what fusion adds
    fusion = DepthRoutedFusion(
        FusionConfig(num_layers=bb.num_layers, dim=bb.hidden_size, norm_eps=bb.norm_eps,
                     preset=None if args.smoke else "paper-text-29m", expert_hidden=32 if args.smoke else None)
    )  # fmt: skip
    ours_fused = DRoRAE(bb, ours.decoder, fusion, ours.config).to(device).eval()
    ours_fused.set_latent_stats(ours.latent_mean, ours.latent_std, ours.config.latent_std_eps)
    candidates["drorae (fusion on)"] = lambda im: ours_fused.decode(ours_fused.encode(im))
    timed = time_interleaved({name: run(fn) for name, fn in candidates.items()}, x, args.iters, args.warmup, device)
    reference = timed["diffusers AutoencoderRAE"][0]
    for name, (times, peak) in timed.items():
        seconds = statistics.median(times)
        ratios = [t / r for t, r in zip(times, reference)]  # paired by round
        rows[name] = {
            "seconds_per_batch": seconds,
            "images_per_s": args.batch / seconds,
            "peak_memory_gib": peak,
            "time_ratio_to_diffusers": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
            "seconds": times,
        }
        print(f"{name}: {args.batch / seconds:.2f} img/s, {statistics.median(ratios):.3f}x diffusers' time "
              f"(rounds {min(ratios):.3f}-{max(ratios):.3f})", flush=True)  # fmt: skip
    results = {
        "shapes": shapes,
        "batch": args.batch,
        "precision": args.precision,
        "compile": args.compile,
        "device": str(device),
        "max_abs_diff_drorae_vs_diffusers": max_diff,
        "rows": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
