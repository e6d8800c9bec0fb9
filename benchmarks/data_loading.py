"""Does data loading keep a GPU fed? Images per second per DataLoader worker, and the workers a run needs.

Writes ``--num`` JPEGs (ImageNet-like: ``--size`` 500 x 375, quality 90, with class folders; photo-like smooth
noise, so the encoder works as hard as on photos) to a temporary folder, then times, in this process (= one
worker):

  pil-decode          PIL decode to RGB (``drorae.data.folders.load_rgb``), nothing else
  tv-decode           ``torchvision.io.decode_jpeg`` on the file bytes (libjpeg-turbo), nothing else
  adm-crop+flip       what ``LabeledImageFolder`` returns per sample for train-dit / stats / cache-latents:
                      PIL decode + ADM centre crop (box halving + bicubic) to ``--crop`` + flip -> float tensor
  tokenizer-item      what ``ImageFolderDataset`` returns per sample for the tokenizer phases (resize + centre crop)
  tv-fast-crop        torchvision decode + antialiased bicubic resize and centre crop on tensors: faster, but not
                      bit-identical to ADM's PIL crop (shown for the arithmetic only; not used by training)

then a DataLoader with ``--workers`` processes (persistent, pinned memory when CUDA is present) over the
``adm-crop+flip`` dataset, and the arithmetic ``workers needed = target img/s / per-worker img/s`` for the
training throughputs given with ``--target`` (default: 1300 img/s, the phase-2 roofline of one H100 in
DESIGN's cost arithmetic, and 5000 img/s).

    python benchmarks/data_loading.py --num 200 --workers 2 --json data.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from drorae.data.folders import ImageFolderDataset, collate_skipping, list_images, load_rgb  # noqa: E402
from drorae.generation.latents import LabeledImageFolder, collate_samples  # noqa: E402


def write_jpegs(root: Path, num: int, size: tuple[int, int], classes: int = 4, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(num):
        folder = root / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 255, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
        noisy = np.clip(np.asarray(image, dtype=np.int16) + rng.integers(-12, 12, (size[1], size[0], 3)), 0, 255)
        Image.fromarray(noisy.astype(np.uint8)).save(folder / f"img_{i:05d}.jpg", quality=90)


def rate(fn, items: list, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        for item in items:
            fn(item)
    return len(items) * repeat / (time.perf_counter() - start)


def tv_fast_crop(path: Path, crop: int) -> torch.Tensor:
    import torchvision.transforms.v2.functional as TF
    from torchvision.io import decode_jpeg, read_file

    x = decode_jpeg(read_file(str(path)))
    h, w = x.shape[-2:]
    scale = crop / min(h, w)
    x = TF.resize(x, [round(h * scale), round(w * scale)], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(x, [crop, crop]).flip(-1).float() / 255


def loader_rate(dataset, workers: int, batch: int, collate) -> float:
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers > 0 else None,
    )
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start, n = time.perf_counter(), 0
    for b in iterator:
        n += b["indices"].numel()
    return n / max(time.perf_counter() - start, 1e-9)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num", type=int, default=200, help="JPEGs to write and read")
    p.add_argument("--size", type=int, nargs=2, default=[500, 375], metavar=("W", "H"))
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--target", type=float, nargs="+", default=[1300.0, 5000.0], help="training img/s to feed")
    p.add_argument("--data", help="time this image folder instead of writing JPEGs")
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # a DataLoader worker uses one thread
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.data else Path(tmp)
        if not args.data:
            write_jpegs(root, args.num, tuple(args.size))
        paths = list_images(root)
        adm = LabeledImageFolder(root, args.crop, random_flip=True)
        tokenizer_items = ImageFolderDataset(root, args.crop, random_flip=True)
        from torchvision.io import decode_jpeg, read_file

        per_worker = {
            "pil-decode": rate(load_rgb, paths),
            "tv-decode": rate(lambda q: decode_jpeg(read_file(str(q))), paths),
            "adm-crop+flip": rate(adm.__getitem__, list(range(len(adm)))),
            "tokenizer-item": rate(tokenizer_items.__getitem__, list(range(len(tokenizer_items)))),
            "tv-fast-crop": rate(lambda q: tv_fast_crop(q, args.crop), paths),
        }
        loader = loader_rate(adm, args.workers, args.batch, collate_samples) if args.workers else None
        loader0 = loader_rate(tokenizer_items, 0, args.batch, collate_skipping)
    base = per_worker["adm-crop+flip"]
    results = {
        "images": len(paths),
        "image_size": args.size,
        "crop": args.crop,
        "cpu_count": os.cpu_count(),
        "per_worker_img_s": per_worker,
        "dataloader_img_s": {f"{args.workers} workers (adm-crop+flip)": loader, "0 workers (tokenizer-item)": loader0},
        "workers_needed": {
            f"{t:g} img/s": {
                "adm-crop+flip": math.ceil(t / base),
                "tv-fast-crop": math.ceil(t / per_worker["tv-fast-crop"]),
            }
            for t in args.target
        },
    }
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
