"""Text-to-image commands: train-t2i, sample-t2i, eval-geneval."""

from __future__ import annotations

import argparse
import json


def _cmd_train_t2i(args: argparse.Namespace) -> int:
    import logging

    from ..generation.text.trainer import T2ITrainer, load_t2i_config

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_t2i_config(args.config, args.overrides)
    trainer = T2ITrainer(cfg, args.tokenizer, args.llm, args.data, args.out, latents=args.latents, resume=args.resume)
    try:
        trainer.run(max_steps=args.max_steps, checkpoint_every=args.checkpoint_every)
    finally:
        trainer.close()
    return 0


def _cmd_sample_t2i(args: argparse.Namespace) -> int:
    from ..generation.text.sampling import T2ISampleSettings, run_t2i_sampling

    settings = T2ISampleSettings(
        scale=args.scale,
        interval=tuple(args.interval),
        sampler=args.sampler,
        steps=args.steps,
        shift=args.shift,
        grid=args.grid,
        renorm_min=args.cfg_renorm_min,
        renorm=args.cfg_renorm_type,
        seed=args.seed,
        batch_size=args.batch,
        precision=args.precision,
    )
    summary = run_t2i_sampling(
        args.model, args.tokenizer, args.prompts, args.out, per_prompt=args.per_prompt, settings=settings,
        device=args.device,
    )  # fmt: skip
    if summary is not None:
        print(f"sample-t2i: {summary['images']} images of {summary['num_prompts']} prompts under {summary['out']}")
    return 0


def _cmd_eval_geneval(args: argparse.Namespace) -> int:
    from ..evaluation.geneval import run_geneval

    if args.shapes:
        from ..evaluation.shapes import run_shapes_eval

        summary = run_shapes_eval(args.samples, out=args.out, metadata=args.metadata)
    elif not (args.detector and args.clip):
        missing = [f for f, v in (("--detector", args.detector), ("--clip", args.clip)) if not v]
        raise ValueError(f"{' and '.join(missing)} required (local transformers directories), or --shapes")
    else:
        summary = run_geneval(
            args.samples, args.detector, args.clip, out=args.out, metadata=args.metadata, device=args.device,
            batch_size=args.batch,
        )  # fmt: skip
    print(json.dumps({k: summary[k] for k in ("overall", "categories", "images")}, indent=2))
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "train-t2i",
        help="train the text-to-image MoT (Bagel, on a local Qwen2 LLM) on a tokenizer's latents (torchrun)",
        description="Train Bagel's Mixture-of-Transformers generator on image-caption pairs (a folder of name.jpg + "
        "name.txt, or img2dataset tar shards); latents encoded on the fly. Extra key=value arguments override the "
        "config.",
    )
    p.add_argument("--tokenizer", required=True, help="DRoRAE directory whose latent space the generator models")
    p.add_argument("--llm", required=True, help="local transformers Qwen2 directory (weights + tokenizer)")
    p.add_argument("--data", required=True, help="caption pairs: a folder or tar shards (key.jpg, key.txt)")
    p.add_argument(
        "--latents", help="a `cache-latents --captions` folder of --data through --tokenizer (no backbone pass)"
    )
    p.add_argument("--config", required=True, help="YAML config (configs/t2i/*.yaml)")
    p.add_argument("--out", required=True, help="run directory: checkpoints/, tensorboard/, samples/, model/")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (the schedule spans train.max_steps)")
    p.add_argument("--checkpoint-every", type=int, help="checkpoint interval in steps")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=_cmd_train_t2i)

    p = sub.add_parser(
        "sample-t2i",
        help="images for prompts in GenEval's folder layout (CFG with the empty caption; resumable, torchrun)",
    )
    p.add_argument("--model", required=True, help="train-t2i output (its model/ directory or the run directory)")
    p.add_argument("--tokenizer", required=True, help="the DRoRAE directory the model was trained on")
    p.add_argument("--prompts", required=True, help="one prompt a line, or GenEval's evaluation_metadata.jsonl")
    p.add_argument("--out", required=True, help="output folder: <index>/samples/<k>.png + <index>/metadata.jsonl")
    p.add_argument("--per-prompt", type=int, default=4, help="images per prompt (GenEval: 4)")
    p.add_argument("--scale", type=float, default=4.0, help="CFG scale (default 4, Bagel's; 1: no guidance)")
    p.add_argument("--interval", type=float, nargs=2, default=[0.0, 1.0], metavar=("T_MIN", "T_MAX"))
    p.add_argument("--sampler", default="euler", choices=["euler", "heun", "sde"])
    p.add_argument("--steps", type=int, default=50, help="grid points (RAE's num_steps; default 50)")
    p.add_argument("--shift", type=float, help="time shift (default: the model's training shift; Bagel samples at 3)")
    p.add_argument(
        "--grid",
        choices=["rae", "to-zero"],
        help="time grid: rae (RAE's, the ODE default) or to-zero (Bagel's: --steps 49 = its 50 points from 1 to 0)",
    )
    p.add_argument(
        "--cfg-renorm-min",
        type=float,
        default=1.0,
        help="Bagel's CFG renormalisation: scale the guided velocity to at most the conditional one's norm, at least "
        "this fraction (Bagel: 0; default 1 = off)",
    )
    p.add_argument("--cfg-renorm-type", default="global", choices=["global", "channel"], help="norm per image or token")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=16, help="images per batch")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.set_defaults(func=_cmd_sample_t2i)

    p = sub.add_parser(
        "eval-geneval",
        help="GenEval's scores of a sample-t2i folder (Mask2Former + CLIP ViT-L/14 from local directories)",
        description="Apply GenEval's rules (object presence and counts from instance masks, colour by CLIP on the "
        "masked object, relative position from box centres) and report the six categories and their mean.",
    )
    p.add_argument("samples", help="folder of <index>/samples/<k>.png with <index>/metadata.jsonl")
    p.add_argument("--detector", help="local transformers Mask2Former COCO instance directory")
    p.add_argument("--clip", help="local transformers CLIP directory (openai/clip-vit-large-patch14)")
    p.add_argument(
        "--shapes", action="store_true", help="prompts of `drorae data shapes`: the network-free shapes scorer instead"
    )
    p.add_argument("--metadata", help="GenEval's evaluation_metadata.jsonl (default: each folder's metadata.jsonl)")
    p.add_argument("--out", help="results jsonl (default: SAMPLES/geneval_results.jsonl)")
    p.add_argument("--batch", type=int, default=8, help="images per detector batch")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.set_defaults(func=_cmd_eval_geneval)
