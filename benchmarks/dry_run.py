"""Every shipped paper config, 2 steps at its real shapes, from random weights, on the CPU (``make dry-run``).

What a new user would try before booking a cluster: the three DRoRAE phases chained (``--init``) with RAE's DINO
discriminator, RAE's own stage-1 recipe, then ``stats`` and DiT^DH-S / DiT^DH-XL on the phase-3 tokenizer. The
pretrained files are replaced by random ones of the real shapes, written here: DINOv2-B with registers
(``save_pretrained``), a DINO ViT-S/8 in RAE's ``.pth`` layout, and ST-LPIPS (its weights install with the package)
for the VGG LPIPS file. Each job runs in its own process; its wall time and peak resident memory are printed and
written to ``<out>/dry_run.json``. Nothing is downloaded. About 25 minutes and 21 GB peak memory (DiT^DH-XL) on 2
cores. The paper-size runs write tens of GB (a ViT-XL checkpoint with its optimizer state is ~5 GB): each job's
checkpoints are deleted when it ends, and its run directory when no later job reads it (``--keep`` keeps all).

    python benchmarks/dry_run.py [--out dry-run-out] [--only phase1 rae ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# runs a drorae command and reports its own peak resident memory (ru_maxrss is in KiB on Linux)
LAUNCH = (
    "import resource, sys\n"
    "from drorae.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('PEAK_RSS_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, flush=True)\n"
    "sys.exit(code)\n"
)


def make_inputs(root: Path) -> dict[str, Path]:
    """Random stand-ins of the real shapes for every pretrained file the configs name, and a tiny image folder."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from drorae.tokenizer.losses import DINO_RECIPES, DinoViT

    paths = {"backbone": root / "dinov2-with-registers-base", "dino": root / "dino_vit_small_patch8_224.pth"}
    paths["data"] = root / "images"
    torch.manual_seed(0)
    if not (paths["backbone"] / "config.json").is_file():  # facebook/dinov2-with-registers-base's sizes
        config = Dinov2WithRegistersConfig(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12, patch_size=14, image_size=518,
            num_register_tokens=4,
        )  # fmt: skip
        Dinov2WithRegistersModel(config).save_pretrained(paths["backbone"])
    if not paths["dino"].is_file():
        torch.save({k: 0.02 * torch.randn_like(v) for k, v in DinoViT(DINO_RECIPES["S_8"]).state_dict().items()},
                   paths["dino"])  # fmt: skip
    rng = np.random.default_rng(0)
    for cls in ("n01", "n02"):
        folder = paths["data"] / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(2):
            pixels = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.jpg")
    return paths


def jobs(paths: dict[str, Path], out: Path) -> dict[str, list[str]]:
    tok = CONFIGS / "tokenizer"
    small = [
        f"model.backbone.name_or_path={paths['backbone']}",
        f"loss.disc_backbone={paths['dino']}",
        "loss.perceptual=stlpips",  # stands in for the LPIPS VGG file
        "loss.disc_start_step=0",
        "loss.disc_update_start_step=0",  # the GAN and the discriminator step run in both steps
        "train.batch_size=2",
        "train.max_steps=2",
        "train.device=cpu",
        "train.precision=fp32",
        "train.log_every=1",
        "train.image_every=0",
        "train.checkpoint_every=100",
        "data.num_workers=0",
    ]
    data = str(paths["data"])

    def train(config: Path, phase: str, name: str, init: str | None = None) -> list[str]:
        args = ["train", "--config", str(config), "--phase", phase, "--data", data, "--out", str(out / name)]
        return args + (["--init", str(out / init)] if init else []) + small

    def dit(config: str, name: str) -> list[str]:
        return [
            "train-dit", "--tokenizer", str(out / "phase3" / "model"), "--config", str(CONFIGS / "generation" / config),
            "--data", data, "--out", str(out / name), "train.batch_size=2", "train.max_steps=2", "train.device=cpu",
            "train.precision=fp32", "train.compile=false", "train.image_every=0", "train.checkpoint_every=100",
            "train.log_every=1", "data.num_workers=0",
        ]  # fmt: skip

    return {
        "phase1": train(tok / "paper" / "phase1.yaml", "1", "phase1"),
        "phase2": train(tok / "paper" / "phase2.yaml", "2", "phase2", "phase1"),
        "phase3": train(tok / "paper" / "phase3.yaml", "3", "phase3", "phase2"),
        "rae": train(tok / "rae" / "dinov2-b-decxl.yaml", "1", "rae"),
        "stats": [
            "stats",
            "--model",
            str(out / "phase3" / "model"),
            "--data",
            data,
            "--device",
            "cpu",
            "--batch",
            "2",
            "--num-workers",
            "0",
        ],  # fmt: skip
        "dit-dh-s": dit("dit-dh-s.yaml", "dit-dh-s"),
        "dit-dh-xl": dit("dit-dh-xl.yaml", "dit-dh-xl"),
    }


# which jobs read which earlier run (--init, --tokenizer): a run is deleted once none still to come reads it
READS = {"phase2": "phase1", "phase3": "phase2", "stats": "phase3", "dit-dh-s": "phase3", "dit-dh-xl": "phase3"}


def run(name: str, args: list[str], out: Path) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", LAUNCH, *args], capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
    peak = next((float(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_MB")), None)
    result = {"ok": proc.returncode == 0, "seconds": round(seconds, 1), "peak_rss_gb": peak and round(peak / 1024, 2)}
    if proc.returncode != 0:
        result["error"] = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="dry-run-out", help="working directory (random weights, runs, logs, dry_run.json)")
    p.add_argument("--only", nargs="+", help="run only these jobs (phase2 needs phase1's run, and so on)")
    p.add_argument("--keep", action="store_true", help="keep every run directory and checkpoint (tens of GB)")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    paths = make_inputs(out / "inputs")
    results = {}
    todo = [name for name in jobs(paths, out) if not args.only or name in args.only]
    for i, (name, command) in enumerate((n, c) for n, c in jobs(paths, out).items() if n in todo):
        results[name] = run(name, command, out)
        if not args.keep:
            shutil.rmtree(out / name / "checkpoints", ignore_errors=True)
            for done in todo[: i + 1]:  # runs no later job reads
                if done not in {READS.get(later) for later in todo[i + 1 :]}:
                    shutil.rmtree(out / done, ignore_errors=True)
        r = results[name]
        status = "ok" if r["ok"] else f"FAILED: {r['error']} (log: {out / name}.log)"
        print(f"{name:<10} {r['seconds']:>7.1f} s  peak {r['peak_rss_gb'] or '?':>6} GB  {status}", flush=True)
    (out / "dry_run.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
