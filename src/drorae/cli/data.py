"""The offline demo and the dataset helpers (`drorae data sample`, `drorae data shard`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    if args.t2i:  # its own tokenizers, trained on the shapes
        from ..demo.t2i import T2IDemoPlan, run_t2i_demo

        plan = T2IDemoPlan.quick_plan() if args.quick else T2IDemoPlan()
        return 0 if run_t2i_demo(args.out, plan, seeds=args.seeds, progress=not args.no_progress) else 1
    report = None
    if not args.generation_only:
        report = run_demo(
            args.out,
            quick=args.quick,
            progress=not args.no_progress,
            seeds=args.seeds,
            workers=args.workers,
            pretrain_backbone=args.pretrain_backbone,
        )
    if args.generation or args.generation_only:
        from ..demo.generation import GenerationPlan, run_generation_demo

        plan = GenerationPlan.quick_plan() if args.quick else GenerationPlan()
        report = run_generation_demo(
            args.out, plan, seeds=args.seeds, progress=not args.no_progress, workers=args.workers
        )
    return 0 if report else 1


def _cmd_data_sample(args: argparse.Namespace) -> int:
    from ..demo import write_sample_dataset

    counts = write_sample_dataset(args.dir, crop_size=args.max_size)
    print(
        f"wrote {counts['train']} train and {counts['heldout']} held-out photos "
        f"to {args.dir}/train and {args.dir}/heldout"
    )
    from ..demo import write_eval_crops

    for count, split, folder, seed in (
        (args.eval_crops, "heldout", "heldout-crops", 1),
        (args.train_crops, "train", "train-crops", 2),
    ):
        if count:
            write_eval_crops(Path(args.dir) / folder, args.crop_size, count, seed=seed, split=split)
            print(f"wrote {count} fixed {args.crop_size} px crops of the {split} photos to {args.dir}/{folder}")
    if args.class_crops:
        from ..demo import write_class_crops

        for folder, seed in (("classes", 3), ("classes-ref", 4)):
            counts = write_class_crops(Path(args.dir) / folder, args.crop_size, args.class_crops, seed=seed)
            print(
                f"wrote {args.class_crops} crops of each of {len(counts)} train photos to {args.dir}/{folder}/<photo>/"
            )
    return 0


def _cmd_data_shard(args: argparse.Namespace) -> int:
    from ..data.shards import write_shards

    info = write_shards(args.src, args.out, args.shard_size)
    print(
        f"wrote {info['images']} images of {args.src} into {info['shards']} shards under {args.out}"
        + (f" ({info['classes']} classes, classes.json)" if info["classes"] else "")
    )
    return 0


def _cmd_data_shapes(args: argparse.Namespace) -> int:
    from ..data.shapes import write_shapes

    print(write_shapes(args.out, args.num, args.size, seed=args.seed, prompts_per_tag=args.prompts_per_tag))
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole pipeline offline on CPU at toy scale, with a report",
        description="Pretrain (or reuse) a tiny backbone, probe its layers, train phases 1-3 and the "
        "controls, evaluate on held-out photos, write report.md/report.json and figures.",
    )
    p.add_argument("--out", default="demo-out", help="output directory (default demo-out)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (numbers meaningless)")
    p.add_argument("--seeds", type=int, default=1, help="train and evaluate every stage with K seeds (mean ± std)")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of progress bars")
    p.add_argument(
        "--pretrain-backbone",
        action="store_true",
        help="pretrain the demo backbone (when not cached) instead of copying the one shipped with drorae",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="train independent stages side by side in N processes (default: 2 splitting the cores; 1: in order, "
        "in this process, with progress bars)",
    )
    p.add_argument(
        "--generation",
        action="store_true",
        help="then the toy generation stage: a DiT^DH on RAE vs DRoRAE latents (report in OUT/generation/)",
    )
    p.add_argument(
        "--generation-only",
        action="store_true",
        help="only the generation stage, on the tokenizers of an earlier `drorae demo --out OUT`",
    )
    p.add_argument(
        "--t2i",
        action="store_true",
        help="only the text-to-image comparison: tiny MoTs on RAE vs DRoRAE latents of synthetic shapes, scored by "
        "GenEval's rules (report in OUT/t2i/)",
    )
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("data", help="datasets")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    q = data_sub.add_parser("sample", help="write the offline sample photos (train/ and heldout/) as an image folder")
    q.add_argument("dir", help="output directory")
    q.add_argument("--max-size", type=int, help="downscale so the shorter side is at most this (default: full size)")
    q.add_argument("--eval-crops", type=int, help="also write N fixed crops of the held-out photos to heldout-crops/")
    q.add_argument("--train-crops", type=int, help="also write N fixed crops of the train photos to train-crops/")
    q.add_argument("--crop-size", type=int, default=64, help="size of those crops (default 64, the demo's)")
    q.add_argument(
        "--class-crops",
        type=int,
        help="also write N crops of every train photo as classes/<photo>/ and another N as classes-ref/<photo>/ "
        "(a class-conditional set for the generation stage and its reference)",
    )
    q.set_defaults(func=_cmd_data_sample)

    q = data_sub.add_parser(
        "shard",
        help="write an image folder as WebDataset-layout tar shards (readable wherever a folder is)",
        description="Copy the images of a folder (sorted order; class sub-folders become .cls labels and "
        "classes.json) into shard-XXXXXX.tar files. Sample i of the shards is image i of the folder.",
    )
    q.add_argument("src", help="image folder (flat or with class sub-folders)")
    q.add_argument("out", help="output folder for the shards")
    q.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    q.set_defaults(func=_cmd_data_shard)

    q = data_sub.add_parser(
        "shapes",
        help="write the synthetic compositional set: coloured shapes with captions and GenEval metadata",
        description="name.png + name.txt pairs (circles, squares, triangles; one to four; left/right/above/below) "
        "cycling through GenEval's six categories, metadata.jsonl, and an evaluation prompt set.",
    )
    q.add_argument("out", help="output folder")
    q.add_argument("--num", type=int, default=1800, help="image-caption pairs (default 1800)")
    q.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument(
        "--prompts-per-tag",
        type=int,
        default=8,
        help="evaluation prompts per category, in OUT_evaluation_metadata.jsonl",
    )
    q.set_defaults(func=_cmd_data_shapes)
