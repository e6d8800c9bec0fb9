"""``drorae sample``: class-conditional samples of a trained DiT, decoded by its tokenizer, as PNGs and an ADM npz.

* Labels come from a seeded pool with exactly ``per_class`` labels of every class (ADM / RAE evaluate 50 per
  class for 50k samples), in a seeded random order.
* Sample ``i``'s starting noise (and its SDE increments) come from its own generator seeded by ``(seed, i)``,
  so a sample does not depend on the batch size, the number of ranks or an interruption.
* The work is cut into chunks of ``batch_size`` samples; under ``torchrun`` rank ``r`` takes chunks
  ``r, r + W, ...``. A finished chunk is a file, so an interrupted 50k run resumes where it stopped; rank 0
  merges the chunks in sample order into ``samples.npz`` (``arr_0`` uint8 ``[N, H, W, 3]``, ``arr_1`` labels).
* Guidance: none, CFG (one forward over ``[cond; null]`` inside the interval), AutoGuidance (the main and the
  guide network each run once per sample, both conditional) or free guidance (RAEv2: the DiT's own x-prediction
  head, in the same forward).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data.folders import derive_seed
from ..serialization import load_safetensors, save_safetensors
from .dit import DiT
from .flow import GUIDANCE, SamplerConfig, guided_velocity, sample

NPZ_NAME = "samples.npz"
CHUNK_DIR = "chunks"
RUN_ARGS = "sampling_args.json"


def label_pool(num_classes: int, per_class: int, seed: int) -> Tensor:
    """``num_classes * per_class`` labels, exactly ``per_class`` of each class, in a seeded random order."""
    if num_classes < 1 or per_class < 1:
        raise ValueError(f"need num_classes >= 1 and per_class >= 1, got {num_classes} and {per_class}")
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    order = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(derive_seed(seed, 1)))
    return labels[order]


def resolve_labels(num_classes: int, num: int | None, per_class: int | None, seed: int) -> Tensor:
    """The labels of a run: ``per_class`` per class (``num`` must then be ``num_classes * per_class`` if given),
    or the first ``num`` of a pool with ``ceil(num / num_classes)`` per class."""
    if per_class is not None:
        if num is not None and num != num_classes * per_class:
            raise ValueError(
                f"--num {num} contradicts --per-class {per_class} x {num_classes} classes = {num_classes * per_class}"
            )
        return label_pool(num_classes, per_class, seed)
    if num is None or num < 1:
        raise ValueError(f"give --num N (>= 1) or --per-class K; got num={num}")
    return label_pool(num_classes, math.ceil(num / num_classes), seed)[:num]


def to_uint8(images: Tensor) -> Tensor:
    """[B, 3, H, W] in [0, 1] -> uint8 [B, H, W, 3] by rounding (clamped), as a saved PNG holds it."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


@dataclass
class SampleSettings:
    guidance: str = "none"
    scale: float = 1.0
    interval: tuple[float, float] = (0.0, 1.0)
    sampler: str = "euler"
    steps: int = 50  # RAE's num_steps on the rae grid (steps - 1 Euler steps)
    grid: str | None = None  # None: rae (ODE) / to-zero (sde)
    shift: float | None = None  # None: the DiT's training shift
    seed: int = 0
    batch_size: int = 64
    precision: str = "auto"  # auto (bf16 on capable GPUs) | bf16 | fp32
    write_png: bool = True


class SampleGenerators:
    """One generator per sample of a chunk, seeded by ``(seed, sample index)``; draws ``[B, *shape]`` tensors."""

    def __init__(self, indices: list[int], seed: int, shape: tuple[int, ...], device: torch.device):
        self.shape, self.device = shape, device
        self.generators = [torch.Generator(device=device).manual_seed(derive_seed(seed, 2, i)) for i in indices]

    def randn(self, *_: Any) -> Tensor:
        return torch.stack([torch.randn(self.shape, generator=g, device=self.device) for g in self.generators])


def _check_pair(dit: DiT, tokenizer, dit_dir: str | Path, tokenizer_dir: str | Path) -> None:
    from .latents import stats_fingerprint

    shape = list(tokenizer.latent_shape)
    cfg = dit.config
    if [cfg.in_channels, cfg.input_size, cfg.input_size] != shape:
        raise ValueError(
            f"{dit_dir} generates latents [{cfg.in_channels}, {cfg.input_size}, {cfg.input_size}], but {tokenizer_dir} "
            f"decodes {shape}"
        )
    trained_on = DiT.read_extra(dit_dir).get("fingerprint")
    if trained_on is not None and trained_on != stats_fingerprint(tokenizer):
        raise ValueError(
            f"{dit_dir} was trained on latents with fingerprint {trained_on}, but {tokenizer_dir} gives "
            f"{stats_fingerprint(tokenizer)} (another tokenizer, other latent statistics or fusion switch)"
        )


@torch.no_grad()
def generate(
    dit: DiT,
    tokenizer,
    labels: Tensor,
    indices: list[int],
    settings: SampleSettings,
    shift: float,
    guide: DiT | None = None,
    bf16: bool = False,
) -> Tensor:
    """Decoded images [B, 3, H, W] (not clamped) for ``labels`` [B] whose sample indices are ``indices``."""
    cfg = dit.config
    device = labels.device
    shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
    gens = SampleGenerators(indices, settings.seed, shape, device)
    noise = gens.randn()
    velocity = guided_velocity(
        dit, labels, settings.guidance, settings.scale, tuple(settings.interval), guide=guide, null_class=dit.null_class
    )
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        x = sample(
            lambda x, t, t_value: velocity(x, t, t_value).float(),
            noise,
            SamplerConfig(settings.sampler, settings.steps, shift, settings.grid),
            step_noise=gens.randn,
        )
        return tokenizer.decode(x).float()


def run_sampling(
    dit_dir: str | Path,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    *,
    num: int | None = None,
    per_class: int | None = None,
    guide_dir: str | Path | None = None,
    settings: SampleSettings | None = None,
    device: str = "auto",
    progress: bool | None = None,
) -> dict[str, Any] | None:
    """``drorae sample``: write ``samples.npz``, ``images/*.png``, ``grid.png`` and ``sampling.json``;
    returns the summary on rank 0 (``None`` on other ranks)."""
    from ..engine.distributed import setup_distributed
    from ..tokenizer.factory import load_tokenizer, tokenizer_class

    s = settings or SampleSettings()
    if s.guidance not in GUIDANCE:
        raise ValueError(f"--guidance {s.guidance!r} is not one of {GUIDANCE}")
    if s.guidance == "autoguidance" and guide_dir is None:
        raise ValueError("--guidance autoguidance needs --guide DIR (a smaller or earlier DiT)")
    dist = setup_distributed(device)
    dev = dist.device
    dit = DiT.from_pretrained(dit_dir, map_location=dev).eval()
    size = (
        DiT.read_extra(dit_dir).get("image_size") if tokenizer_class(tokenizer_dir)[0] not in (None, "DRoRAE") else None
    )
    tokenizer = load_tokenizer(tokenizer_dir, map_location=dev, image_size=size)  # a VAE at the DiT's image size
    _check_pair(dit, tokenizer, dit_dir, tokenizer_dir)
    if s.guidance == "free" and not dit.has_guidance_head:
        raise ValueError(
            f"--guidance free needs a DiT trained with a free-guidance head (dit.guidance_head_block): {dit_dir} "
            "has none"
        )
    guide = None
    if guide_dir is not None and s.guidance == "autoguidance":
        guide = DiT.from_pretrained(guide_dir, map_location=dev).eval()
        _check_pair(guide, tokenizer, guide_dir, tokenizer_dir)
        if guide.config.num_classes != dit.config.num_classes:
            raise ValueError(
                f"the guide has {guide.config.num_classes} classes, the main DiT {dit.config.num_classes}: "
                "AutoGuidance needs the same label space"
            )
    extra = DiT.read_extra(dit_dir)
    shift = s.shift if s.shift is not None else float(extra.get("shift", 1.0))
    labels = resolve_labels(dit.config.num_classes, num, per_class, s.seed)
    n = labels.numel()
    bf16 = s.precision == "bf16" or (s.precision == "auto" and dev.type == "cuda" and torch.cuda.is_bf16_supported())
    out = Path(out_dir)
    (out / CHUNK_DIR).mkdir(parents=True, exist_ok=True)
    if s.write_png:
        (out / "images").mkdir(exist_ok=True)
    run = {
        "dit": str(dit_dir),
        "tokenizer": str(tokenizer_dir),
        "guide": str(guide_dir) if guide is not None else None,
        "num": n,
        "per_class": per_class,
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items() if k != "write_png"},
        "shift": shift,  # the one used (the DiT's training shift unless --shift)
        "grid": SamplerConfig(s.sampler, s.steps, shift, s.grid).grid,  # the one used (validates the settings)
    }
    check_run_args(out / RUN_ARGS, run)
    dist.barrier()
    if dist.is_main and not (out / RUN_ARGS).is_file():
        (out / RUN_ARGS).write_text(json.dumps(run, indent=2) + "\n")
    chunks = math.ceil(n / s.batch_size)
    mine = [k for k in range(dist.rank, chunks, dist.world_size)]
    pending = [k for k in mine if not _chunk_path(out, k).is_file()]
    show = (sys.stderr.isatty() if progress is None else progress) and dist.is_main
    iterator = pending
    if show:
        from tqdm.auto import tqdm

        iterator = tqdm(pending, desc="sample chunks", unit="chunk")
    for k in iterator:
        idx = list(range(k * s.batch_size, min((k + 1) * s.batch_size, n)))
        y = labels[idx].to(dev)
        images = to_uint8(generate(dit, tokenizer, y, idx, s, shift, guide=guide, bf16=bf16)).cpu()
        if s.write_png:
            _write_pngs(out / "images", images, idx, labels[idx])
        save_safetensors({"images": images, "labels": labels[idx], "indices": torch.tensor(idx)}, _chunk_path(out, k))
    dist.barrier()
    summary = None
    if dist.is_main:
        summary = _merge_chunks(out, chunks, n, run)
    dist.barrier()
    dist.shutdown()
    return summary


def _chunk_path(out: Path, k: int) -> Path:
    return out / CHUNK_DIR / f"chunk_{k:05d}.safetensors"


def check_run_args(path: Path, run: dict) -> None:
    """A rerun into the same folder must ask for the same samples (what it finished is reused)."""
    out = path.parent
    if path.is_file():
        before = json.loads(path.read_text())
        changed = {k: (before.get(k), v) for k, v in run.items() if before.get(k) != v}
        if changed:
            raise ValueError(
                f"{out} holds chunks of a different sampling run (before, now: {changed}); use another --out "
                f"or delete {out}"
            )


def _write_pngs(folder: Path, images: Tensor, indices: list[int], labels: Tensor) -> None:
    from PIL import Image

    for img, i, y in zip(images.numpy(), indices, labels.tolist()):
        Image.fromarray(img).save(folder / f"{i:06d}_class{y:04d}.png")


def _merge_chunks(out: Path, chunks: int, n: int, run: dict) -> dict[str, Any]:
    from torchvision.utils import save_image

    parts = [load_safetensors(_chunk_path(out, k)) for k in range(chunks)]
    images = torch.cat([p["images"] for p in parts])
    labels = torch.cat([p["labels"] for p in parts])
    indices = torch.cat([p["indices"] for p in parts])
    if not torch.equal(indices, torch.arange(n)):
        raise RuntimeError(f"chunks under {out / CHUNK_DIR} do not cover samples 0..{n - 1} in order")
    np.savez(out / NPZ_NAME, arr_0=images.numpy(), arr_1=labels.numpy())
    save_image(class_grid(images, labels), out / "grid.png", nrow=8, padding=2)
    summary = {**run, "npz": str(out / NPZ_NAME), "shape": list(images.shape), "dtype": str(images.dtype)}
    (out / "sampling.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def class_grid(images: Tensor, labels: Tensor, classes: int = 8, per_row: int = 8) -> Tensor:
    """A row per class (the first ``classes`` labels present), up to ``per_row`` samples each, blank where fewer:
    [rows * per_row, 3, H, W] floats in [0, 1] for ``save_image(..., nrow=per_row)``."""
    rows = []
    for c in labels.unique(sorted=True)[:classes].tolist():
        row = images[labels == c][:per_row].permute(0, 3, 1, 2).float() / 255
        pad = torch.ones((per_row - row.shape[0], *row.shape[1:]))
        rows.append(torch.cat([row, pad]))
    return torch.cat(rows)
