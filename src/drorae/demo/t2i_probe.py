"""Where along the sampling path a toy text-to-image generator loses the shapes (``python -m drorae.demo.t2i_probe``).

The held-out shapes' latents are noised to ``t0`` with the flow's own interpolation, ``x_t0 = (1 - t0) x + t0 eps``,
then integrated to ``t = 0`` by ``sample-t2i``'s Euler steps (the same CFG velocity, the grid points of the full run
below ``t0``), decoded and scored by the shapes scorer against each image's own caption. ``t0 = 0`` scores the
tokenizer's reconstructions (the ceiling); ``t0 = 1`` is plain ``sample-t2i`` (starting noise from the same
per-sample generators, so the same images). In between, the score says from how much noise the generator still
finds its way back to the caption's objects: a model that fails only from ``t0 ~ 1`` lacks the global layout, one
that fails from ``t0 = 0.5`` cannot yet denoise what it is shown.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ..evaluation.shapes import score_shapes
from ..generation.flow import SamplerConfig, time_grid
from ..generation.sampling import SampleGenerators, to_uint8
from ..generation.text.sampling import cfg_velocity, load_t2i

DEFAULT_T0 = (0.0, 0.5, 0.7, 0.85, 0.95, 1.0)


@torch.no_grad()
def renoise_probe(
    model_dir: str | Path,
    tokenizer_dir: str | Path,
    images_dir: str | Path,
    t0s=DEFAULT_T0,
    num: int = 96,
    scale: float = 2.0,
    steps: int = 25,
    seed: int = 0,
    grid_png: str | Path | None = None,
) -> dict:
    """``{t0: {"accuracy", "latent_mse", "pixels"}}`` over the first ``num`` images of a ``drorae data shapes``
    folder (``pixels``: the decoded images as uint8 ``[N, H, W, 3]``, as ``sample-t2i`` saves them)."""
    from PIL import Image

    folder = Path(images_dir)
    meta = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()][:num]
    images = torch.stack([
        torch.from_numpy(np.array(Image.open(folder / f"{i:06d}.png").convert("RGB"))).permute(2, 0, 1)
        for i in range(len(meta))
    ]).float() / 255  # fmt: skip
    model, text, tokenizer, shift = load_t2i(model_dir, tokenizer_dir, torch.device("cpu"))
    x0 = tokenizer.encode(images).float()
    eps = SampleGenerators(list(range(len(meta))), seed, tuple(x0.shape[1:]), x0.device).randn()
    ids, lengths = text.batch([m["prompt"] for m in meta] + ([""] * len(meta) if scale != 1.0 else []))
    velocity = cfg_velocity(model, model.encode_text(ids, lengths), scale, (0.0, 1.0))
    full = time_grid(steps, shift, SamplerConfig("euler", steps, shift).grid).tolist()
    out, rows = {}, [images[:12]]
    for t0 in t0s:
        path = [t0] + [t for t in full if t < t0] if t0 > 0 else [0.0]
        x = (1 - t0) * x0 + t0 * eps
        for t, t_next in zip(path[:-1], path[1:]):
            x = x + (t_next - t) * velocity(x, torch.full((len(x),), float(t)), t)
        decoded = tokenizer.decode(x).float().clamp(0, 1)
        pixels = to_uint8(decoded).numpy()
        accuracy = float(np.mean([score_shapes(p, m)[0] for p, m in zip(pixels, meta)]))
        out[t0] = {"accuracy": accuracy, "latent_mse": float((x - x0).pow(2).mean()), "pixels": pixels}
        rows.append(decoded[:12])
    if grid_png is not None:
        from torchvision.utils import save_image

        save_image(torch.cat(rows), grid_png, nrow=min(12, len(meta)), padding=1, pad_value=1.0)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m drorae.demo.t2i_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a train-t2i run (or its model/ directory)")
    p.add_argument("--tokenizer", required=True, help="the DRoRAE directory the MoT was trained on")
    p.add_argument("--images", required=True, help="a `drorae data shapes` folder (images + metadata.jsonl)")
    p.add_argument("--t0", type=float, nargs="+", default=list(DEFAULT_T0), help="noise levels to start from")
    p.add_argument("--num", type=int, default=96, help="images (the folder's first N)")
    p.add_argument("--scale", type=float, default=2.0, help="CFG scale")
    p.add_argument("--steps", type=int, default=25, help="grid points of the full run (sample-t2i's --steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", help="PNG: the first 12 images, then one row per t0")
    a = p.parse_args(argv)
    if any(not 0.0 <= t <= 1.0 for t in a.t0):
        p.error(f"--t0 values must lie in [0, 1], got {a.t0}")
    result = renoise_probe(a.model, a.tokenizer, a.images, a.t0, a.num, a.scale, a.steps, a.seed, a.grid)
    for t0, row in result.items():
        print(f"t0={t0:.2f}  scorer accuracy {row['accuracy']:.3f}  latent MSE {row['latent_mse']:.4f}")


if __name__ == "__main__":
    main()
