"""Commands that read or write other projects' formats: RAE tokenizer files, diffusers, RAE stage-2 checkpoints,
Bagel's MoT."""

from __future__ import annotations

import argparse


def _collection_or_file(src: str, variant: str | None, variants: dict, what: str) -> None:
    """Without --variant, a Hub id (or a folder, for the DiT) is RAE's collection and needs one."""
    from ..hub import is_hub_id

    if variant is None and is_hub_id(src):
        raise ValueError(f"{src} is a Hub id: name the {what} in it with --variant ({', '.join(variants)})")


def _cmd_import_rae(args: argparse.Namespace) -> int:
    from ..interop import import_rae
    from ..interop.rae_collection import TOKENIZERS, rae_tokenizer_files

    src, stats, backbone, input_size = args.src, args.stats, args.backbone, args.input_size
    _collection_or_file(src, args.variant, TOKENIZERS, "tokenizer")
    if args.variant is not None:  # RAE's collection: the variant's decoder, statistics, encoder and input size
        src, variant_stats, v = rae_tokenizer_files(args.src, args.variant)
        stats, backbone, input_size = stats or variant_stats, backbone or v.backbone, input_size or v.input_size
    model = import_rae(
        src,
        backbone=backbone,
        stats=stats,
        input_size=input_size or 224,
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
    from ..interop import import_rae_dit, save_rae_dit
    from ..interop.rae_collection import DITS, is_collection, rae_dit_files

    src, stats = args.src, args.stats
    if args.variant is None and is_collection(src):
        raise ValueError(f"{src} is not a checkpoint file: name the generator in RAE's collection with --variant "
                         f"({', '.join(DITS)})")  # fmt: skip
    if args.variant is not None:  # RAE's collection: its checkpoint, and its tokenizer's stat.pt as fingerprint
        src, variant_stats = rae_dit_files(args.src, args.variant)
        stats = stats if stats is not None or args.tokenizer is not None else variant_stats
    model = import_rae_dit(
        src,
        num_heads=args.num_heads,
        head_num_heads=args.head_num_heads,
        head_depth=args.head_depth,
        weights=args.weights,
    )
    save_rae_dit(model, args.dst, stats=stats, tokenizer=args.tokenizer, shift=args.shift)
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
    from ..interop import export_rae
    from ..tokenizer.model import DRoRAE

    model = DRoRAE.from_pretrained(args.model)
    if args.disable_fusion:
        model.fusion_enabled = False
    export_rae(model, args.dst)
    print(f"wrote diffusers AutoencoderRAE directory {args.dst}")
    return 0


def _cmd_import_bagel(args: argparse.Namespace) -> int:
    from ..interop import import_bagel, save_bagel_mot

    model = import_bagel(
        args.src, weights=args.weights, latent_patch_size=args.latent_patch_size, latent_size=args.latent_size
    )
    save_bagel_mot(model, args.src, args.dst, shift=args.shift, max_text_tokens=args.max_text_tokens)
    c = model.config
    dropped = ", ".join(f"{k} ({n} tensors)" for k, n in model.imported_from["dropped"].items()) or "nothing"
    print(
        f"imported {args.src}/{args.weights} -> {args.dst}: MoT {c.llm['hidden_size']}x{c.llm['num_hidden_layers']}, "
        f"{model.parameter_count():,} parameters, latent [{c.latent_channels}, {c.latent_size}, {c.latent_size}] "
        f"patch {c.latent_patch_size}; dropped (understanding only): {dropped}"
    )
    return 0


def _cmd_import_rae_disc(args: argparse.Namespace) -> int:
    from ..interop.rae_collection import is_collection, rae_dino_file
    from ..interop.rae_stage1 import import_rae_disc

    dino = rae_dino_file(args.dino) if is_collection(args.dino) else args.dino  # RAE's collection: its DINO file
    disc = import_rae_disc(
        dino,
        args.dst,
        checkpoint=args.checkpoint,
        seed=args.seed,
        **_disc_options(args),
    )
    heads = sum(p.numel() for p in disc.trainable_parameters())
    source = f"the trained heads of {args.checkpoint}" if args.checkpoint else f"fresh heads (seed {args.seed})"
    print(
        f"imported {dino} + {source} -> {args.dst}: RAE's DinoDisc ({disc.extra_repr()}), {heads:,} head "
        f"parameters; use it as loss.discriminator={args.dst}"
    )
    return 0


def _cmd_import_rae_stage1(args: argparse.Namespace) -> int:
    from ..interop.rae_stage1 import import_rae_stage1

    report = import_rae_stage1(
        args.src,
        args.dst,
        backbone=args.backbone,
        dino=args.dino,
        input_size=args.input_size,
        num_heads=args.num_heads,
        **_disc_options(args),
    )
    print(f"imported {args.src} (epoch {report['epoch']}, step {report['step']}) -> {args.dst}")
    print("carried over:\n" + "\n".join(f"  - {line}" for line in report["carried"]))
    print("not carried over:\n" + "\n".join(f"  - {line}" for line in report["not_carried"]))
    print(
        f"continue it with: drorae train --config configs/tokenizer/rae/dinov2-b-decxl.yaml --phase 1 --data DATA "
        f"--out {args.dst} --resume loss.discriminator={args.dst}/discriminator"
    )
    return 0


def _disc_options(args: argparse.Namespace) -> dict:
    """RAE's DinoDisc settings from the flags `_add_disc_arguments` adds."""
    return {"recipe": args.recipe, "key_depths": args.key_depths, "ks": args.ks, "norm_type": args.norm_type}


def _add_disc_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default="S_8", help="RAE's DINO recipe: S_8 (RAE's default), S_16, B_16")
    p.add_argument(
        "--key-depths", type=int, nargs="+", default=[2, 5, 8, 11], help="0-based DINO blocks tapped (RAE's default)"
    )
    p.add_argument("--ks", type=int, default=9, help="heads' residual kernel (RAE's DINOv2-B_decXL.yaml: 9)")
    p.add_argument("--norm-type", default="bn", choices=["bn", "gn"], help="heads' normalisation (default bn)")


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "import-rae",
        help="convert a diffusers AutoencoderRAE dir or an RAE decoder file into a DRoRAE dir",
        description="Build a fusion-off DRoRAE that encodes/decodes exactly like the source RAE model.",
    )
    p.add_argument(
        "src",
        help="diffusers AutoencoderRAE directory, RAE decoder checkpoint (.pt/.pth/.safetensors), or with --variant "
        "RAE's collection (nyu-visionx/RAE-collections, or a local copy of it)",
    )
    p.add_argument("dst", help="output DRoRAE directory")
    p.add_argument(
        "--variant",
        choices=["dinov2-b", "dinov2-b-512", "mae-b", "siglip2-b"],
        help="an RAE tokenizer in the collection SRC: its decoder and stat.pt (and, by default, its backbone id and "
        "input size)",
    )
    p.add_argument("--backbone", help="backbone path or cached hub id (required for an RAE decoder file)")
    p.add_argument("--stats", help="RAE latent statistics file with 'mean' and 'var'")
    p.add_argument(
        "--input-size", type=int, help="backbone input size for a decoder file (default 224; --variant: its own)"
    )
    p.add_argument("--num-heads", type=int, help="decoder heads, if the decoder width is not an RAE preset")
    p.add_argument("--key", help="entry of a nested checkpoint holding the decoder state dict (e.g. ema)")
    p.add_argument(
        "--reference-backbone", action="store_true", help="reference the backbone by path instead of storing it"
    )
    p.set_defaults(func=_cmd_import_rae)

    p = sub.add_parser(
        "import-rae-disc",
        help="convert RAE's DINO weights (+ an RAE stage-1 checkpoint's trained heads) into a discriminator dir",
        description="Read dino_vit_small_patch8_224.pth as RAE's DinoDisc does (weights_only) and write a drorae "
        "discriminator directory (config.json + model.safetensors) for loss.disc_backbone.",
    )
    p.add_argument(
        "dino",
        help="RAE's DINO weights file, e.g. models/discs/dino_vit_small_patch8_224.pth, or RAE's collection "
        "(nyu-visionx/RAE-collections, or a local copy): its discs/dino_vit_small_patch8_224.pth",
    )
    p.add_argument("dst", help="output discriminator directory")
    p.add_argument("--checkpoint", help="an RAE stage-1 checkpoint (ep-*.pt) whose disc heads to take")
    p.add_argument("--seed", type=int, default=0, help="seed of fresh heads (without --checkpoint)")
    _add_disc_arguments(p)
    p.set_defaults(func=_cmd_import_rae_disc)

    p = sub.add_parser(
        "import-rae-stage1",
        help="turn an RAE stage-1 checkpoint (ep-*.pt) into a phase-1 run that `drorae train --resume` continues",
        description="Decoder, EMA decoder, AdamW moments, discriminator heads and its optimizer, at RAE's step.",
    )
    p.add_argument("src", help="RAE stage-1 checkpoint (train_stage1.py's ep-*.pt)")
    p.add_argument("dst", help="output run directory (checkpoints/, discriminator/, rae_import.json)")
    p.add_argument("--backbone", required=True, help="the frozen backbone it was trained on (path or cached hub id)")
    p.add_argument("--dino", required=True, help="RAE's DINO weights file (dino_vit_small_patch8_224.pth)")
    p.add_argument("--input-size", type=int, default=224, help="backbone input size (default 224)")
    p.add_argument("--num-heads", type=int, help="decoder heads, if the decoder width is not an RAE preset")
    _add_disc_arguments(p)
    p.set_defaults(func=_cmd_import_rae_stage1)

    p = sub.add_parser(
        "import-rae-dit",
        help="convert an RAE stage-2 checkpoint (DiTwDDTHead / LightningDiT) into a drorae DiT dir",
        description="Read RAE's stage-2 checkpoint (torch.save of model/ema/optimizer/scheduler, or a bare state "
        "dict; .pt or .safetensors; tensors only) and write a DiT directory computing the same function.",
    )
    p.add_argument(
        "src",
        help="RAE stage-2 checkpoint (e.g. stage2_model.pt), or with --variant RAE's collection "
        "(nyu-visionx/RAE-collections, or a local copy of it)",
    )
    p.add_argument("dst", help="output DiT directory")
    p.add_argument(
        "--variant",
        choices=["dit-dh-xl", "dit-dh-s", "dit-dh-xl-512", "dit-dh-s-512"],
        help="an RAE generator in the collection SRC: DiT^DH-XL at 256 px, its AutoGuidance guide DiT^DH-S, and the "
        "512 px pair; its tokenizer's stat.pt sets the fingerprint unless --stats / --tokenizer is given",
    )
    p.add_argument("--num-heads", type=int, help="trunk heads (default: the matching preset's; XL 16, S 6)")
    p.add_argument("--head-num-heads", type=int, help="head heads (default: the matching preset's, 16)")
    p.add_argument("--head-depth", type=int, help="head blocks, only needed when trunk and head are equally wide")
    p.add_argument("--weights", default="ema", choices=["ema", "model"], help="checkpoint entry (default ema, RAE's)")
    p.add_argument("--stats", help="RAE's latent statistics (stat.pt) the DiT was trained with: sets the fingerprint")
    p.add_argument("--tokenizer", help="or: the drorae tokenizer directory whose latents the DiT generates")
    p.add_argument("--shift", type=float, help="time shift (default sqrt(C*h*w/4096), RAE's)")
    p.set_defaults(func=_cmd_import_rae_dit)

    p = sub.add_parser(
        "import-bagel",
        help="convert a Bagel MoT model directory (llm_config.json, ema.safetensors) into a drorae MoT dir",
        description="Read Bagel's generation path (both experts, time/position embeddings, vae2llm/llm2vae) and "
        "write a MoT directory computing the same velocity; the understanding-only weights (lm_head, ViT, "
        "connector) are dropped and counted.",
    )
    p.add_argument("src", help="Bagel model directory: llm_config.json, the weights file, its Qwen2 tokenizer")
    p.add_argument("dst", help="output MoT directory")
    p.add_argument("--weights", default="ema.safetensors", help="weights file in src (default ema.safetensors)")
    p.add_argument("--latent-patch-size", type=int, default=2, help="latent patch (default 2, Bagel's released)")
    p.add_argument("--latent-size", type=int, help="latent side to generate at (default: the position table's)")
    p.add_argument("--shift", type=float, default=3.0, help="sampling time shift (default 3.0, Bagel's inference)")
    p.add_argument("--max-text-tokens", type=int, default=128, help="caption length cap (default 128)")
    p.set_defaults(func=_cmd_import_bagel)

    p = sub.add_parser("export-rae", help="write a DRoRAE dir (fusion off) as a diffusers AutoencoderRAE dir")
    p.add_argument("model", help="DRoRAE directory")
    p.add_argument("dst", help="output AutoencoderRAE directory")
    p.add_argument("--disable-fusion", action="store_true", help="export the plain-RAE path of a model that has fusion")
    p.set_defaults(func=_cmd_export_rae)
