"""``make bench-gpu``: every GPU benchmark in one command, one process per benchmark, a JSON per benchmark under
``benchmarks/results/gpu/`` and a summary table at the end. Fits in 10 minutes on one H100/H200; ``--device cpu
--smoke`` runs the same benchmarks with tiny sizes (that is what the test suite runs).

    python benchmarks/gpu_suite.py                              # on the GPU, full sizes
    python benchmarks/gpu_suite.py --device cpu --smoke --out /tmp/bench
    python benchmarks/gpu_suite.py --only dit_train stability   # a subset

- ``dit_train``: DiT^DH-XL on 16x16x768 (1000 classes): training img/s and MFU, bf16 autocast, eager and
  compiled; the largest batch that fits; peak memory;
- ``dit_sample``: 50-point Euler sampling img/s: unguided, CFG, AutoGuidance with a DiT^DH-S guide, free guidance;
- ``tokenizer_train``: phase 1, 2, 3 training img/s at 256 px (DINOv2-B-with-registers-shaped random backbone,
  ViT-XL decoder, bf16, compiled), analytic FLOPs per image, peak memory;
- ``encode_decode``: encode + decode img/s of drorae beside diffusers' AutoencoderRAE with the same weights, and
  with fusion on;
- ``fusion_share``: the fusion module's share of the encoder forward, time against FLOPs;
- ``t2i_mot``: the paper's text-to-image MoT (Qwen2.5-0.5B shapes, 16x16x768 latent, 128 caption tokens):
  training img/s and peak memory, generation expert only and both experts, gradient checkpointing off and on; the
  largest batch; 50-step CFG sampling img/s;
- ``stability``: 2,000 DiT^DH-S steps in bf16 and in fp32 from the same weights and data: any non-finite loss or
  gradient, and both loss curves.

Each benchmark runs in its own process with its own time limit, so one that fails or runs out of memory does not
take the others with it: its JSON records the failure and the summary says so.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "gpu"


def commands(device: str, smoke: bool, out: Path) -> dict[str, tuple[list[str], int]]:
    """name -> (argv of its process, time limit in seconds). Full sizes fit 10 minutes on one H100/H200 in all."""
    py = [sys.executable]
    if smoke:
        dit = ["--preset", "DiTDH-tiny", "--latent", "16", "4", "4", "--classes", "10"]
        return {
            "dit_train": (py + [str(HERE / "dit_throughput.py"), *dit, "--batch", "2", "4", "--precision", "bf16",
                                "--compile", "off", "--iters", "1", "--no-sampling", "--find-max-batch", "16",
                                "--device", device, "--json", str(out / "dit_train.json")], 300),
            "dit_sample": (py + [str(HERE / "dit_throughput.py"), *dit, "--batch", "2", "--precision", "bf16",
                                 "--no-train", "--sample-steps", "3", "--guide-preset", "DiT-tiny", "--device", device,
                                 "--json", str(out / "dit_sample.json")], 300),
            "tokenizer_train": (py + [str(HERE / "train_throughput.py"), "--preset", "cpu-tiny", "--batch", "2",
                                      "--precision", "bf16", "--perceptual", "none", "--discriminator", "none",
                                      "--iters", "1", "--flops", "--device", device,
                                      "--json", str(out / "tokenizer_train.json")], 300),
            "encode_decode": (py + [str(HERE / "encode_decode.py"), "--smoke", "--iters", "1", "--device", device,
                                    "--json", str(out / "encode_decode.json")], 300),
            "fusion_share": (py + [str(HERE / "fusion_overhead.py"), "--hidden", "64", "--layers", "2", "--heads",
                                   "2", "--patch", "8", "--input-size", "32", "--expert-hidden", "32", "--batch", "2",
                                   "--iters", "1", "--device", device, "--json", str(out / "fusion_share.json")], 300),
            "stability": (py + [str(HERE / "bf16_stability.py"), *dit, "--batch", "4", "--steps", "6", "--window",
                                "2", "--device", device, "--json", str(out / "stability.json")], 300),
            "t2i_mot": (py + [str(HERE / "mot_throughput.py"), "--preset", "tiny", "--latent", "16", "4", "4",
                              "--text", "8", "--batch", "2", "--checkpointing", "off", "on", "--iters", "1",
                              "--sample-steps", "3", "--find-max-batch", "8", "--device", device,
                              "--json", str(out / "t2i_mot.json")], 300),
        }  # fmt: skip
    return {
        "dit_train": (py + [str(HERE / "dit_throughput.py"), "--preset", "DiTDH-XL", "--batch", "64", "256",
                            "--precision", "bf16", "--compile", "off", "on", "--iters", "10", "--warmup", "3",
                            "--no-sampling", "--find-max-batch", "2048", "--device", device,
                            "--json", str(out / "dit_train.json")], 150),
        "dit_sample": (py + [str(HERE / "dit_throughput.py"), "--preset", "DiTDH-XL", "--batch", "256",
                             "--precision", "bf16", "--no-train", "--sample-steps", "50", "--guide-preset", "DiTDH-S",
                             "--device", device, "--json", str(out / "dit_sample.json")], 90),
        "tokenizer_train": (py + [str(HERE / "train_throughput.py"), "--preset", "paper", "--batch", "64",
                                  "--precision", "bf16", "--compile", "on", "--perceptual", "none", "--discriminator",
                                  "patch", "--iters", "5", "--warmup", "2", "--flops", "--device", device,
                                  "--json", str(out / "tokenizer_train.json")], 120),
        "encode_decode": (py + [str(HERE / "encode_decode.py"), "--batch", "64", "--precision", "bf16", "--iters",
                                "10", "--warmup", "3", "--device", device, "--json", str(out / "encode_decode.json")],
                          45),
        "fusion_share": (py + [str(HERE / "fusion_overhead.py"), "--batch", "64", "--expert-hidden", "1536", "3072",
                               "--dtype", "bf16", "--device", device, "--json", str(out / "fusion_share.json")], 30),
        "stability": (py + [str(HERE / "bf16_stability.py"), "--preset", "DiTDH-S", "--batch", "256", "--steps",
                            "2000", "--device", device, "--json", str(out / "stability.json")], 45),
        "t2i_mot": (py + [str(HERE / "mot_throughput.py"), "--preset", "qwen2.5-0.5b", "--batch", "32", "--experts",
                          "gen", "all", "--checkpointing", "off", "on", "--iters", "5", "--warmup", "2",
                          "--find-max-batch", "512", "--sample-steps", "50", "--device", device,
                          "--json", str(out / "t2i_mot.json")], 90),
    }  # fmt: skip


def run_suite(device: str, smoke: bool, out: Path, only: list[str] | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    todo = commands(device, smoke, out)
    unknown = sorted(set(only or ()) - set(todo))
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {sorted(todo)}")
    meta = {"device": device, "smoke": smoke, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    meta.update(_environment(device))
    status = {}
    for name, (argv, limit) in todo.items():
        if only and name not in only:
            continue
        print(f"\n== {name} (limit {limit} s) ==", flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=limit)
            ok, tail = proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        except subprocess.TimeoutExpired as err:
            ok, tail = False, f"timed out after {limit} s\n{(err.stdout or b'')[-2000:]!r}"
        wall = time.perf_counter() - t0
        print(tail if not ok else (proc.stdout[-1500:]), flush=True)
        path = out / f"{name}.json"
        result = json.loads(path.read_text()) if ok and path.is_file() else None
        record = {"benchmark": name, "ok": ok and result is not None, "wall_s": round(wall, 1), "argv": argv[1:],
                  **meta, "result": result}  # fmt: skip
        if not record["ok"]:
            record["error_tail"] = tail
        path.write_text(json.dumps(record, indent=2) + "\n")
        status[name] = record
    summary = summarize(status)
    (out / "summary.md").write_text(summary + "\n")
    print("\n" + summary, flush=True)
    return status


def _environment(device: str) -> dict:
    import torch

    env = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def summarize(status: dict) -> str:
    """The table ``make bench-gpu`` prints: one line per measured quantity."""
    lines = ["| benchmark | setting | result |", "|---|---|---|"]

    def add(name, setting, value):
        lines.append(f"| {name} | {setting} | {value} |")

    for name, rec in status.items():
        r = rec["result"]
        if not rec["ok"]:
            add(name, "FAILED", (rec.get("error_tail") or "").strip().splitlines()[-1:] or "")
            continue
        if name == "dit_train":
            for row in r["train"]:
                peak = row.get("peak_memory_gib")
                add(name, f"batch {row['batch']}, {row['precision']}, compile {row['compile']}",
                    f"{row['img_per_s']:.1f} img/s, MFU {row['mfu']:.1%}"
                    + (f", peak {peak:.1f} GiB" if peak is not None else ""))  # fmt: skip
            if r.get("max_batch"):
                add(name, "largest batch that fits", str(r["max_batch"]["batch"]))
        elif name == "dit_sample":
            for row in r["sampling"]:
                add(name, f"{row['guidance']}, {row['evaluations']} evaluations, batch {row['batch']}",
                    f"{row['latents_per_s']:.1f} latents/s")  # fmt: skip
        elif name == "tokenizer_train":
            for row in r:
                add(name, f"phase {row['phase']}, {row['precision']}, compile {row['compile']}",
                    f"{row['images_per_s']:.1f} img/s, peak {row['peak_memory_mb'] / 1024:.1f} GiB")  # fmt: skip
        elif name == "encode_decode":
            for label, row in r["rows"].items():
                add(name, f"{label}, batch {r['batch']}", f"{row['images_per_s']:.1f} img/s")
            add(name, "max |drorae - diffusers|", f"{r['max_abs_diff_drorae_vs_diffusers']:.2e}")
        elif name == "fusion_share":
            for row in r["summary"]:
                add(name, f"h = {row['expert_hidden']}, {row['variant']}",
                    f"fusion forward: time {row['measured_fusionfwd_over_enc']:.1%} of the encoder's, FLOPs "
                    f"{row['analytic_fusionfwd_over_enc']:.1%}")  # fmt: skip
        elif name == "t2i_mot":
            for row in r["train"]:
                peak = row.get("peak_memory_gib")
                add(name, f"batch {row['batch']}, train {row['experts']}, checkpointing {row['checkpointing']}",
                    f"{row['img_per_s']:.1f} img/s" + (f", peak {peak:.1f} GiB" if peak else ""))  # fmt: skip
            if r.get("max_batch"):
                add(name, "largest batch that fits", str(r["max_batch"]["batch"]))
            for row in r["sampling"]:
                add(name, f"CFG {row['scale']}, {row['steps']} steps, batch {row['batch']}",
                    f"{row['images_per_s']:.1f} img/s")  # fmt: skip
        elif name == "stability":
            add(name, f"{r['preset']}, {r['steps']} steps, batch {r['batch']}",
                f"bf16 finite: {r['stable_bf16']}; last-window loss bf16 {r['curves']['bf16'][-1]:.4f} / fp32 "
                f"{r['curves']['fp32'][-1]:.4f}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CPU tests)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--only", nargs="+", help="run only these benchmarks")
    args = p.parse_args(argv)
    status = run_suite(args.device, args.smoke, Path(args.out), args.only)
    return 0 if all(r["ok"] for r in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
