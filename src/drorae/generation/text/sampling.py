"""``drorae sample-t2i``: images for prompts, in GenEval's folder layout, with CFG against the empty caption.

* Prompts: one a line, or GenEval's ``evaluation_metadata.jsonl`` (each line's object is copied to the prompt's
  ``metadata.jsonl``, which GenEval's scorer reads).
* Output: ``<out>/<index:05d>/metadata.jsonl`` and ``<out>/<index:05d>/samples/<k:04d>.png``; a PNG is written
  atomically, so an interrupted run continues with the images still missing. Under ``torchrun`` rank ``r`` takes
  prompts ``r, r + W, ...``.
* Image ``k`` of prompt ``p`` is sample ``p * N + k``: its noise (and SDE increments) come from its own generator
  seeded by ``(seed, p * N + k)``, so it does not depend on the batch size, the ranks or a resume.
* CFG (Bagel's text guidance): ``v_u + w (v_c - v_u)`` inside ``[t_min, t_max]``, the conditional velocity outside,
  ``v_u`` from the empty context (no caption tokens at all, as Bagel's caption dropout trains it). The prompt and
  the empty context are encoded once per batch; each step runs only the image block against them.
* CFG renormalisation (Bagel's ``cfg_renorm_min`` / ``cfg_renorm_type``): the guided velocity is scaled by
  ``clamp(|v_c| / (|v_guided| + 1e-8), renorm_min, 1)``, norms per image (``global``) or per latent token
  (``channel``); ``renorm_min = 1`` leaves it off. Bagel's GenEval run: scale 4, renorm min 0 (global), shift 3,
  50 grid points from 1 to 0 (``--grid to-zero --steps 49``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..flow import SamplerConfig, in_interval, sample
from ..sampling import SampleGenerators, check_run_args, to_uint8
from .mot import MoTGenerator, TextContext

RUN_ARGS = "sampling_args.json"


@dataclass
class T2ISampleSettings:
    scale: float = 4.0  # CFG scale (1: no guidance); Bagel's default text scale is 4
    interval: tuple[float, float] = (0.0, 1.0)
    sampler: str = "euler"
    steps: int = 50
    grid: str | None = None
    shift: float | None = None  # None: the model's training shift
    renorm_min: float = 1.0  # Bagel's cfg_renorm_min (its default 0); 1: no renormalisation
    renorm: str = "global"  # Bagel's cfg_renorm_type: global (per image) | channel (per latent token)
    seed: int = 0
    batch_size: int = 16
    precision: str = "auto"


def select(context: TextContext, rows: slice) -> TextContext:
    return TextContext(
        [k[rows] for k in context.keys], [v[rows] for v in context.values], context.lengths[rows], context.hidden[rows]
    )


RENORM_TYPES = ("global", "channel")


def guide(v_c: Tensor, v_u: Tensor, scale: float, renorm_min: float = 1.0, renorm: str = "global", patch: int = 1):
    """``v_u + scale (v_c - v_u)``, then Bagel's CFG renormalisation: scaled by ``clamp(|v_c| / (|v| + 1e-8),
    renorm_min, 1)``, the norms over each image [C, h, w] (``global``) or each latent token's ``patch^2 C`` values
    (``channel``); ``renorm_min >= 1`` is Bagel's "off"."""
    v = v_u + scale * (v_c - v_u)
    if renorm_min >= 1.0:
        return v
    if renorm == "global":  # Bagel norms the whole packed image (it samples one image per call)
        ratio = v_c.flatten(1).norm(dim=1) / (v.flatten(1).norm(dim=1) + 1e-8)
        return v * ratio.clamp(min=renorm_min, max=1.0).view(-1, *([1] * (v.ndim - 1)))
    if renorm == "channel":
        from .mot import patchify, unpatchify

        tokens, tokens_c = patchify(v, patch), patchify(v_c, patch)
        ratio = tokens_c.norm(dim=-1, keepdim=True) / (tokens.norm(dim=-1, keepdim=True) + 1e-8)
        return unpatchify(tokens * ratio.clamp(min=renorm_min, max=1.0), patch, v.shape[1])
    raise ValueError(f"CFG renorm type {renorm!r} is not one of {RENORM_TYPES}")


def cfg_velocity(
    model: MoTGenerator,
    context: TextContext,
    scale: float,
    interval: tuple[float, float],
    renorm_min: float = 1.0,
    renorm: str = "global",
):
    """The velocity a sampler integrates. ``context`` holds ``2B`` rows, ``[captions; empty]``, when ``scale != 1``
    (else ``B`` rows of captions)."""
    b = context.lengths.shape[0] // (2 if scale != 1.0 else 1)
    cond = select(context, slice(0, b))
    patch = model.config.latent_patch_size

    def velocity(x: Tensor, t: Tensor, t_value: float) -> Tensor:
        if scale == 1.0 or not in_interval(t_value, interval):
            return model.forward_image(x, t, cond)
        v_c, v_u = model.forward_image(torch.cat([x, x]), torch.cat([t, t]), context).chunk(2)
        return guide(v_c, v_u, scale, renorm_min, renorm, patch)

    return velocity


@torch.no_grad()
def generate_t2i(
    model: MoTGenerator,
    tokenizer,
    text,
    captions: list[str],
    indices: list[int],
    settings: T2ISampleSettings,
    shift: float,
    bf16: bool = False,
) -> Tensor:
    """Decoded images [B, 3, H, W] (not clamped) for ``captions`` whose sample indices are ``indices``; ``text`` is
    the :class:`~drorae.data.captions.CaptionTokenizer`."""
    device = next(model.parameters()).device
    cfg = model.config
    gens = SampleGenerators(indices, settings.seed, (cfg.latent_channels, cfg.latent_size, cfg.latent_size), device)
    noise = gens.randn()
    guided = settings.scale != 1.0
    ids, lengths = text.batch(list(captions) + ([""] * len(captions) if guided else []), device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        context = model.encode_text(ids, lengths)
        velocity = cfg_velocity(
            model, context, settings.scale, tuple(settings.interval), settings.renorm_min, settings.renorm
        )
        x = sample(
            lambda x, t, tv: velocity(x, t, tv).float(),
            noise,
            SamplerConfig(settings.sampler, settings.steps, shift, settings.grid),
            step_noise=gens.randn,
        )
        return tokenizer.decode(x).float()


def load_t2i(model_dir: str | Path, tokenizer_dir: str | Path, device: torch.device):
    """The MoT, its caption tokenizer (saved beside it) and the image tokenizer, checked to belong together."""
    from ...data.captions import CaptionTokenizer
    from ...serialization import model_dir as resolve
    from ...tokenizer.factory import load_tokenizer
    from ..latents import stats_fingerprint

    model_dir = resolve(model_dir)
    model = MoTGenerator.from_pretrained(model_dir, map_location=device).eval()
    extra = MoTGenerator.read_extra(model_dir)
    text = CaptionTokenizer(model_dir / "text_tokenizer", extra.get("max_text_tokens", 128))
    tokenizer = load_tokenizer(tokenizer_dir, map_location=device)
    c, h, w = tokenizer.latent_shape
    cfg = model.config
    if [cfg.latent_channels, cfg.latent_size, cfg.latent_size] != [c, h, w]:
        raise ValueError(
            f"{model_dir} generates latents [{cfg.latent_channels}, {cfg.latent_size}, {cfg.latent_size}], but "
            f"{tokenizer_dir} decodes [{c}, {h}, {w}]"
        )
    trained_on = extra.get("fingerprint")
    if trained_on is not None and trained_on != stats_fingerprint(tokenizer):
        raise ValueError(
            f"{model_dir} was trained on latents with fingerprint {trained_on}, but {tokenizer_dir} gives "
            f"{stats_fingerprint(tokenizer)} (another tokenizer, latent statistics or fusion switch)"
        )
    return model, text, tokenizer, float(extra.get("shift", 1.0))


def run_t2i_sampling(
    model_dir: str | Path,
    tokenizer_dir: str | Path,
    prompts_file: str | Path,
    out_dir: str | Path,
    *,
    per_prompt: int = 4,
    settings: T2ISampleSettings | None = None,
    device: str = "auto",
    progress: bool | None = None,
) -> dict[str, Any] | None:
    """``drorae sample-t2i``; returns the summary on rank 0 (``None`` on other ranks)."""
    from PIL import Image

    from ...data.captions import read_prompts
    from ...engine.distributed import setup_distributed

    s = settings or T2ISampleSettings()
    if s.renorm not in RENORM_TYPES:
        raise ValueError(f"--cfg-renorm-type {s.renorm!r} is not one of {RENORM_TYPES}")
    if per_prompt < 1:
        raise ValueError(f"--per-prompt must be >= 1, got {per_prompt}")
    prompts = read_prompts(prompts_file)
    dist = setup_distributed(device)
    dev = dist.device
    model, text, tokenizer, trained_shift = load_t2i(model_dir, tokenizer_dir, dev)
    shift = s.shift if s.shift is not None else trained_shift
    bf16 = s.precision == "bf16" or (s.precision == "auto" and dev.type == "cuda" and torch.cuda.is_bf16_supported())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = {
        "model": str(model_dir),
        "tokenizer": str(tokenizer_dir),
        "prompts": str(prompts_file),
        "num_prompts": len(prompts),
        "per_prompt": per_prompt,
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items() if k != "batch_size"},
        "shift": shift,
        "grid": SamplerConfig(s.sampler, s.steps, shift, s.grid).grid,
    }
    check_run_args(out / RUN_ARGS, run)
    dist.barrier()
    if dist.is_main and not (out / RUN_ARGS).is_file():
        (out / RUN_ARGS).write_text(json.dumps(run, indent=2) + "\n")
    work = []  # (prompt index, image k) still missing, this rank's prompts only
    for p in range(dist.rank, len(prompts), dist.world_size):
        folder = out / f"{p:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        (folder / "metadata.jsonl").write_text(json.dumps(prompts[p]) + "\n")  # GenEval: one JSON object
        work += [(p, k) for k in range(per_prompt) if not (folder / "samples" / f"{k:04d}.png").is_file()]
    chunks = [work[i : i + s.batch_size] for i in range(0, len(work), s.batch_size)]
    show = (sys.stderr.isatty() if progress is None else progress) and dist.is_main
    if show:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="sample-t2i batches", unit="batch")
    for chunk in chunks:
        captions = [prompts[p]["prompt"] for p, _ in chunk]
        indices = [p * per_prompt + k for p, k in chunk]
        images = to_uint8(generate_t2i(model, tokenizer, text, captions, indices, s, shift, bf16=bf16)).cpu().numpy()
        for (p, k), img in zip(chunk, images):
            path = out / f"{p:05d}" / "samples" / f"{k:04d}.png"
            tmp = path.with_name(path.stem + ".tmp.png")
            Image.fromarray(img).save(tmp)
            tmp.replace(path)
    dist.barrier()
    summary = None
    if dist.is_main:
        summary = {**run, "images": len(prompts) * per_prompt, "out": str(out)}
        (out / "sampling.json").write_text(json.dumps(summary, indent=2) + "\n")
    dist.shutdown()
    return summary
