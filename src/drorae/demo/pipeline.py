"""``drorae demo``: the whole DRoRAE pipeline offline on a laptop CPU, at toy scale.

Stages (each timed, each with a progress bar):

1. ``backbone``  pretrain (or reuse from the cache) a tiny DINOv2-with-registers on the TRAIN
                 photos so that its deep blocks abstract away pixels (drorae.demo.backbone);
2. ``probe``     ridge layer probe per block: held-out PSNR of patch pixels (paper figure 1);
3. ``phase1``    decoder on z_base (the RAE baseline);
4. ``phase2``    fusion only, decoder frozen (the paper's comparison: same decoder as RAE);
5. ``phase2_last_layer``  control: the same fusion and budget, fed only the last block;
6. ``phase3``    decoder fine-tuned on the fused latent;
7. ``rae_matched``  control: the phase-1 decoder trained on without fusion for the steps of 2 + 3;
8. RAEv2's layer-mean latent (arXiv 2605.18324) beside it: ``layer_mean`` (a phase-1 decoder on the mean of the
   LN_bb outputs of RAEv2's layer set scaled to this depth, plus its global term), ``layer_mean_all`` (every block
   but the first), ``layer_mean_matched`` (the ``layer_mean`` decoder trained on for the steps of phases 2 + 3) and
   ``drorae_on_layer_mean`` (phases 2 and 3 on the ``layer_mean`` base);
9. ``eval``      PSNR / SSIM / Frechet distance (backbone features) on held-out crops, the latent shift of every
                 row's latent against RAE's, figures, report.

Everything trains through :class:`drorae.tokenizer.training.Trainer` with the packaged ``demo.yaml``.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..tokenizer.training import Trainer, load_config
from . import photos as sample_photos
from .backbone import BackboneRecipe, cached_backbone, default_cache_dir

DEMO_CONFIG = Path(__file__).parent / "demo.yaml"
ROWS = (
    "rae",
    "phase2",
    "phase3",
    "rae_matched",
    "rae_decoder_matched",
    "phase2_last_layer",
    "layer_mean",
    "layer_mean_all",
    "layer_mean_matched",
    "drorae_on_layer_mean",
)
ROW_LABELS = {
    "rae": "RAE baseline (phase 1)",
    "phase2": "DRoRAE phase 2 (fusion, same decoder)",
    "phase3": "DRoRAE phase 3 (decoder fine-tuned)",
    "rae_matched": "control: RAE decoder + steps of phases 2+3",
    "rae_decoder_matched": "control: RAE decoder + phase 3's decoder steps",
    "phase2_last_layer": "control: phase 2 fed only the last block",
    "layer_mean": "RAEv2 layer mean (upper half, every other block)",
    "layer_mean_all": "RAEv2 layer mean (all blocks but the first)",
    "layer_mean_matched": "RAEv2 layer mean + steps of phases 2+3",
    "drorae_on_layer_mean": "DRoRAE phases 2+3 on the layer-mean base",
}
#: the training stage each row's model comes from
ROW_STAGE = {
    "rae": "phase1",
    "phase2": "phase2",
    "phase3": "phase3",
    "rae_matched": "rae_matched",
    "rae_decoder_matched": "rae_decoder_matched",
    "phase2_last_layer": "phase2_last_layer",
    "layer_mean": "layer_mean",
    "layer_mean_all": "layer_mean_all",
    "layer_mean_matched": "layer_mean_matched",
    "drorae_on_layer_mean": "layer_mean_phase3",
}


@dataclass
class DemoPlan:
    """Budgets of the demo. ``quick`` is for tests (seconds, numbers meaningless)."""

    crop: int = 64
    batch_size: int = 16
    phase1_steps: int = 800
    phase2_steps: int = 300  # a fresh fusion needs ~300 steps to pass the frozen decoder's RAE
    phase3_steps: int = 150
    lr_decoder: float = 5e-4
    lr_fusion: float = 1e-3
    lr_finetune: float = 2e-4  # phase 3 and rae_matched continue a trained decoder: a gentler re-warm-up
    eval_crops: int = 256
    probe_train_crops: int = 512
    seed: int = 0
    quick: bool = False

    @classmethod
    def quick_plan(cls) -> DemoPlan:
        return cls(
            batch_size=8,
            phase1_steps=6,
            phase2_steps=4,
            phase3_steps=4,
            eval_crops=16,
            probe_train_crops=64,
            quick=True,
        )


def _stage_config(plan: DemoPlan, backbone_dir: Path, steps: int, lr: float, extra: list[str] = (), seed: int = 0):
    overrides = [
        f"model.backbone.name_or_path={backbone_dir}",
        f"model.backbone.input_size={plan.crop}",
        f"data.image_size={plan.crop}",
        f"train.batch_size={plan.batch_size}",
        f"train.max_steps={steps}",
        f"optim.lr={lr}",
        f"train.seed={seed}",
        f"train.log_every={max(1, steps // 20)}",
        *extra,
    ]
    if plan.quick:
        overrides += ["model.decoder.num_layers=1", "model.fusion.expert_hidden=32", "optim.warmup_steps=1"]
    return load_config(DEMO_CONFIG, overrides)


@torch.no_grad()
def evaluate_models(
    model_dirs: dict[str, Path], images: torch.Tensor, backbone, batch_size: int = 64
) -> dict[str, dict[str, float]]:
    """PSNR / SSIM (``drorae eval``'s conventions: uint8 levels, torchmetrics SSIM) and the Frechet distance in
    the backbone's feature space (mean-pooled z_base) of every model on ``images``, and ``latent_fd``: the Frechet
    distance between the row's latent tokens (before normalisation) and RAE's ``z_base`` tokens, how far its
    latent moved from RAE's, ``{row: metrics}``.

    All rows share the frozen ``backbone``: it runs once over the originals, and that pass
    feeds every model's encoder and the real side of the FD; each model then adds only its
    decoder and one backbone pass over its reconstructions (their FD features).
    """
    from ..evaluation.metrics import FeatureStats, FrechetFeatureDistance, frechet_distance
    from ..evaluation.reconstruction import image_scores, quantize
    from ..tokenizer.model import DRoRAE

    def pooled(x: torch.Tensor) -> torch.Tensor:
        return backbone(x).z_base.mean(dim=1)

    batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    features = [backbone(x) for x in batches]
    rae_tokens = FeatureStats()
    for feats in features:
        rae_tokens.update(feats.z_base.flatten(0, 1).double())
    results = {}
    for row, model_dir in model_dirs.items():
        model = DRoRAE.from_pretrained(model_dir, backbone=backbone).eval()  # reuse the loaded frozen backbone
        fd = FrechetFeatureDistance(pooled, "fd")
        sums = {"psnr": 0.0, "ssim": 0.0}
        latent_tokens = FeatureStats()
        for x, feats in zip(batches, features):
            tokens = model.tokens_from_features(feats)[0]
            latent_tokens.update(tokens.flatten(0, 1).double())
            reconstruction = quantize(model.decode(model.tokens_to_latent(tokens))).float() / 255
            for key, value in image_scores(x, reconstruction).items():
                sums[key] += float(value.sum())
            fd.update(fake=reconstruction, real_features=feats.z_base.mean(dim=1))
        shift = frechet_distance(rae_tokens.mean, rae_tokens.covariance, latent_tokens.mean, latent_tokens.covariance)
        results[row] = {key: value / len(images) for key, value in sums.items()} | {"fd": fd.compute()}
        results[row]["latent_fd"] = max(float(shift), 0.0)  # 0 up to rounding for RAE's own latent
    return results


@torch.no_grad()
def reconstructions(model_dir: Path, images: torch.Tensor, backbone=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reconstructions and, when fusion is on, the routing weights [B, N, K]."""
    from ..tokenizer.model import DRoRAE

    model = DRoRAE.from_pretrained(model_dir, backbone=backbone).eval()
    out = model(images)
    weights = out.fusion.weights if out.fusion is not None else None
    return out.reconstruction.clamp(0, 1), weights


def train_stage(plan, backbone_dir, name, phase, init, steps, lr, extra, seed, seed_out, progress=False) -> list:
    """One training stage of the demo (a job: it may run in a worker process); its logged history."""
    print(f"== {name}: phase {phase}, {steps} steps" + (f", from {init}" if init else "") + f", seed {seed} ==",
          flush=True)  # fmt: skip
    cfg = _stage_config(plan, backbone_dir, steps, lr, extra, seed=seed)
    train_set = sample_photos.RandomCropDataset(
        sample_photos.load_photos("train"), plan.crop, length=100_000, seed=seed
    )
    trainer = Trainer(
        cfg, phase, seed_out / name, init=seed_out / init if init else None, dataset=train_set, progress=progress
    )
    return trainer.run().history


def run_demo(
    out_dir: str | Path = "demo-out",
    quick: bool = False,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    seeds: int = 1,
    workers: int | None = None,
    pretrain_backbone: bool = False,
) -> dict[str, Any]:
    """The whole demo; with ``seeds`` K > 1 the training stages and their evaluation run once per seed (seeds
    ``plan.seed .. plan.seed + K - 1``, runs under ``<out>/seed<s>/``) and every row is reported as mean +- std.
    Independent stages train side by side in ``workers`` processes (default: 2 splitting the cores, see
    :mod:`drorae.demo.jobs`). The backbone comes from the cache, else from the copy shipped with drorae (made by
    this pretraining), else it is pretrained; ``pretrain_backbone`` skips the shipped copy."""
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = DemoPlan.quick_plan() if quick else DemoPlan()
    recipe = BackboneRecipe.quick() if quick else BackboneRecipe()
    seconds: dict[str, float] = {}
    torch.manual_seed(plan.seed)

    def stage(name: str):
        print(f"\n== {name} ==", flush=True)
        return time.perf_counter()

    # 1. backbone ------------------------------------------------------------------------------
    t = stage("backbone: pretrain a tiny DINOv2-with-registers on the train photos (cached)")
    backbone_dir = cached_backbone(recipe, cache_dir=cache_dir, progress=progress, shipped=not pretrain_backbone)
    pretrain_stats = json.loads((backbone_dir / "pretrain_stats.json").read_text())
    seconds["backbone"] = time.perf_counter() - t
    print(f"backbone: {backbone_dir} ({'reused from cache' if seconds['backbone'] < 5 else 'trained now'})")

    # 2. layer probe ---------------------------------------------------------------------------
    t = stage("layer probe: ridge from each block's tokens to its patch pixels (held-out PSNR)")
    from ..studies.analysis import probe_backbone
    from ..tokenizer.backbones import load_backbone

    backbone = load_backbone(str(backbone_dir), input_size=plan.crop)
    train_photos, heldout_photos = sample_photos.load_photos("train"), sample_photos.load_photos("heldout")
    probe_train = sample_photos.fixed_eval_crops(train_photos, plan.crop, plan.probe_train_crops, seed=plan.seed)
    eval_images = sample_photos.fixed_eval_crops(heldout_photos, plan.crop, plan.eval_crops, seed=plan.seed + 1)
    probe = probe_backbone(backbone, probe_train, eval_images, alpha=1.0, batch_size=64)
    probe_curve = [*probe["blocks"], probe["z_base"]]
    seconds["probe"] = time.perf_counter() - t
    print(
        "probe PSNR (dB): "
        + ", ".join(f"b{i + 1} {v:.2f}" for i, v in enumerate(probe["blocks"]))
        + f", z_base {probe['z_base']:.2f}"
    )

    # 3-8. training stages, once per seed (the backbone and the evaluation crops are shared) -------------
    L = backbone.num_layers
    from ..tokenizer.backbones import rae_v2_layers

    def layer_mean(which: str) -> list[str]:
        layers = ",".join(str(k) for k in rae_v2_layers(L, which))
        return [f"model.backbone.latent_layers=[{layers}]", "model.backbone.latent_global_mean=true"]

    p23 = plan.phase2_steps + plan.phase3_steps
    stages = [
        ("phase1", "1", None, plan.phase1_steps, plan.lr_decoder, []),
        ("phase2", "2", "phase1", plan.phase2_steps, plan.lr_fusion, []),
        ("phase2_last_layer", "2", "phase1", plan.phase2_steps, plan.lr_fusion, [f"model.fusion.layers=[{L}]"]),
        ("phase3", "3", "phase2", plan.phase3_steps, plan.lr_finetune, []),
        ("rae_matched", "1", "phase1", plan.phase2_steps + plan.phase3_steps, plan.lr_finetune, []),
        ("rae_decoder_matched", "1", "phase1", plan.phase3_steps, plan.lr_finetune, []),
        ("layer_mean", "1", None, plan.phase1_steps, plan.lr_decoder, layer_mean("upper")),
        ("layer_mean_all", "1", None, plan.phase1_steps, plan.lr_decoder, layer_mean("all")),
        ("layer_mean_matched", "1", "layer_mean", p23, plan.lr_finetune, []),  # --init keeps the latent rule
        ("layer_mean_phase2", "2", "layer_mean", plan.phase2_steps, plan.lr_fusion, []),
        ("layer_mean_phase3", "3", "layer_mean_phase2", plan.phase3_steps, plan.lr_finetune, []),
    ]
    from .jobs import Job, resolve_workers, run_jobs

    workers, threads = resolve_workers(workers)
    seed_dirs = [out if seeds == 1 else out / f"seed{plan.seed + k}" for k in range(seeds)]
    jobs = [
        Job(
            f"{name}/seed{plan.seed + k}",
            train_stage,
            (plan, backbone_dir, name, phase, init, steps, lr, extra, plan.seed + k, seed_dirs[k]),
            {"progress": progress and workers == 1},
            after=(f"{init}/seed{plan.seed + k}",) if init else (),
        )
        for k in range(seeds)
        for name, phase, init, steps, lr, extra in stages
    ]
    t = stage(f"training: {len(jobs)} stages ({workers} worker process(es) x {threads} thread(s))")
    done = run_jobs(jobs, workers, threads)
    seconds["training_wall"] = time.perf_counter() - t
    histories: dict[str, list] = {}
    for name, *_ in stages:
        histories[name] = done[f"{name}/seed{plan.seed}"][0]
        seconds[name] = sum(done[f"{name}/seed{plan.seed + k}"][1] for k in range(seeds))
    per_seed: list[dict] = []
    for k, seed_out in enumerate(seed_dirs):
        # 8. evaluation of this seed's models
        t = stage(f"evaluation on held-out crops, seed {plan.seed + k}")
        model_dirs = {row: seed_out / ROW_STAGE[row] / "model" for row in ROWS}
        per_seed.append(evaluate_models(model_dirs, eval_images, backbone))
        seconds["eval"] = seconds.get("eval", 0.0) + time.perf_counter() - t

    t = time.perf_counter()
    results, spread = aggregate_seeds(per_seed)
    model_dirs = {row: seed_dirs[0] / ROW_STAGE[row] / "model" for row in ROWS}
    figures = write_figures(out, eval_images, model_dirs, probe_curve, histories, backbone)
    seconds["eval"] += time.perf_counter() - t
    # stages ran side by side: the total is the wall time of the blocks, not the sum of the stages
    stage_names = {name for name, *_ in stages}
    seconds["total"] = sum(v for k, v in seconds.items() if k not in stage_names)

    report = {
        "seeds": [plan.seed + k for k in range(seeds)],
        "phases": results,
        "phases_std": spread,
        "per_seed": per_seed,
        "layer_probe_psnr": probe_curve,
        "layer_probe_labels": [f"block {i + 1}" for i in range(L)] + ["z_base"],
        "backbone": {
            "recipe": asdict(recipe),
            "key": recipe.key(),
            "directory": str(backbone_dir),
            "pretrain": pretrain_stats,
            "cache": str(cache_dir or default_cache_dir()),
        },
        "plan": asdict(plan),
        "claims": claims(per_seed, probe_curve),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "figures": figures,
        "fd_note": "fd = Frechet distance between mean-pooled z_base features of the frozen demo backbone "
        "(originals vs reconstructions); it is not rFID (no Inception network).",
        "latent_fd_note": "latent shift FD = Frechet distance between the row's latent tokens (before per-position "
        "normalisation) and RAE's z_base tokens on the same crops: how far the latent moved from RAE's.",
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(render_markdown(report))
    print("\n" + results_table(report), flush=True)
    print(f"\nreport: {out / 'report.md'} ({seconds['total']:.0f} s)")
    return report


CLAIMS = (
    ("phase 2 beats the RAE baseline with the same frozen decoder", "phase2", "rae"),
    (
        "phase 2 beats the same fusion fed only the last block (the gain is the extra layers)",
        "phase2",
        "phase2_last_layer",
    ),
    ("phase 3 beats the RAE decoder trained for the steps of phases 2+3 (equal compute)", "phase3", "rae_matched"),
    (
        "phase 3 beats the RAE decoder trained for phase 3's decoder steps (more information, same decoder steps)",
        "phase3",
        "rae_decoder_matched",
    ),
    ("RAEv2's layer mean beats RAE's last layer (same decoder steps)", "layer_mean", "rae"),
    ("the layer mean over all blocks beats the upper-half layer set", "layer_mean_all", "layer_mean"),
    (
        "DRoRAE's routed fusion beats RAEv2's layer mean at equal steps (phase 3 vs layer_mean_matched)",
        "phase3",
        "layer_mean_matched",
    ),
    (
        "DRoRAE on the layer-mean base beats the layer mean at equal steps (vs layer_mean_matched)",
        "drorae_on_layer_mean",
        "layer_mean_matched",
    ),
)


def aggregate_seeds(per_seed: list[dict]) -> tuple[dict, dict]:
    """Mean and sample standard deviation (0 for one seed) of every row's metrics over the seeds."""
    mean, std = {}, {}
    for row in per_seed[0]:
        mean[row], std[row] = {}, {}
        for key in per_seed[0][row]:
            values = [r[row][key] for r in per_seed]
            mean[row][key] = statistics.fmean(values)
            std[row][key] = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def claims(per_seed: list[dict], probe_curve: list[float]) -> list[dict]:
    """Each claim's PSNR margin per seed, its mean and spread; it holds when the mean margin is positive, and
    ``exceeds_spread`` says whether the mean is larger than the seeds' standard deviation (else: a tie)."""
    out = []
    for text, a, b in CLAIMS:
        margins = [r[a]["psnr"] - r[b]["psnr"] for r in per_seed]
        mean = statistics.fmean(margins)
        std = statistics.stdev(margins) if len(margins) > 1 else 0.0
        out.append(
            {
                "claim": text,
                "holds": bool(mean > 0),
                "margin_db": round(mean, 3),
                "margin_std_db": round(std, 3),
                "margins_db": [round(m, 3) for m in margins],
                "exceeds_spread": bool(len(margins) > 1 and abs(mean) > std),
                "rows": [a, b],
            }
        )
    shallow, last = max(probe_curve[:-2]), probe_curve[-2]
    out.append(
        {
            "claim": "layer probe: a shallower block keeps more pixel detail than the last block",
            "holds": bool(shallow > last),
            "margin_db": round(shallow - last, 3),
            "rows": ["probe"],
        }
    )
    return out


METRIC_DIGITS = (("psnr", 2), ("ssim", 4), ("fd", 4), ("latent_fd", 2))


def results_table(report: dict) -> str:
    """One row per model; with several seeds each number is ``mean +- std``."""
    several = len(report.get("seeds", [0])) > 1
    header = "held-out PSNR (dB) | SSIM | FD (backbone features) | latent shift FD (vs RAE's latent)"
    lines = [f"| model | {header} |", "|---|---|---|---|---|"]
    for row in ROWS:
        r, sd = report["phases"][row], report.get("phases_std", {}).get(row, {})
        cells = [f"{r[key]:.{d}f}" + (f" ± {sd[key]:.{d}f}" if several else "") for key, d in METRIC_DIGITS]
        lines.append(f"| {ROW_LABELS[row]} (`{row}`) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _claim_line(c: dict) -> str:
    verdict = "HOLDS" if c["holds"] else "DOES NOT HOLD"
    if "margin_std_db" not in c or len(c.get("margins_db", [])) <= 1:
        return f"- {verdict}: {c['claim']} (margin {c['margin_db']:+.2f} dB)"
    spread = "exceeds its spread" if c["exceeds_spread"] else "within its spread: a tie"
    return (
        f"- {verdict}: {c['claim']} (mean margin {c['margin_db']:+.2f} ± {c['margin_std_db']:.2f} dB over "
        f"{len(c['margins_db'])} seeds, {spread}; per seed {', '.join(f'{m:+.2f}' for m in c['margins_db'])})"
    )


def render_markdown(report: dict) -> str:
    s = report["seconds"]
    probe = report["layer_probe_psnr"]
    labels = report["layer_probe_labels"]
    recipe = report["backbone"]["recipe"]
    pre = report["backbone"]["pretrain"]
    parts = [
        "# DRoRAE demo report (toy scale, CPU, offline)",
        "",
        "Everything below was measured by this run. Toy scale: a tiny backbone pretrained for a few minutes on "
        f"{len(sample_photos.load_photos('train'))} photos, tiny decoders far from converged. "
        "The numbers show the paper's "
        "mechanism, not its ImageNet results.",
        "",
        "## Reconstruction on held-out photos",
        "",
        f"{report['plan']['eval_crops']} fixed crops of the held-out photos {', '.join(sample_photos.HELDOUT_PHOTOS)} "
        "(never seen in training, backbone included).",
        "",
        results_table(report),
        "",
        report["fd_note"],
        "",
        report["latent_fd_note"],
        "",
        "## Claims",
        "",
    ]
    for c in report["claims"]:
        parts.append(_claim_line(c))
    parts += [
        "",
        "## Layer probe (held-out PSNR of a ridge regression from tokens to their patch pixels)",
        "",
        "| " + " | ".join(labels) + " |",
        "|" + "---|" * len(labels),
        "| " + " | ".join(f"{v:.2f}" for v in probe) + " |",
        "",
        "![layer probe](layer_probe.png)",
        "",
        "## Figures",
        "",
        "![reconstructions](reconstructions.png)",
        "",
        "![router weights](router_weights.png)",
        "",
        "![loss curves](loss_curves.png)",
        "",
        "## Backbone recipe",
        "",
        f"Tiny DINOv2-with-registers (width {recipe['hidden_size']}, {recipe['num_layers']} blocks, patch "
        f"{recipe['patch_size']}, {recipe['num_register_tokens']} registers), trained {recipe['steps']} steps "
        f"(batch {recipe['batch_size']}, AdamW lr {recipe['lr']}) to classify which training photo a crop comes from "
        f"under strong augmentation; cache key `{report['backbone']['key']}`. Pretraining stats: "
        + ", ".join(f"{k}={v}" for k, v in pre.items() if not isinstance(v, (dict, list)))
        + ".",
        "",
        "## Time per stage (seconds)",
        "",
        "| " + " | ".join(s) + " |",
        "|" + "---|" * len(s),
        "| " + " | ".join(f"{v:.1f}" for v in s.values()) + " |",
        "",
    ]
    return "\n".join(parts)


def write_figures(out: Path, eval_images, model_dirs, probe_curve, histories, backbone) -> dict[str, str]:
    import matplotlib

    from ..studies.analysis import plot_layer_probe, plot_router_weights, router_weight_maps

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figures = {}
    # reconstruction grid with a zoomed detail
    n = min(4, len(eval_images))
    x = eval_images[:n]
    columns = [("original", x)]
    weights = None
    for row, title in (("rae", "RAE (phase 1)"), ("phase2", "phase 2"), ("phase3", "phase 3")):
        rec, w = reconstructions(model_dirs[row], x, backbone)
        columns.append((title, rec))
        if row == "phase2":
            weights = w
    size = x.shape[-1]
    z0, z1 = size // 4, size // 4 + size // 3  # the zoomed window
    fig, axes = plt.subplots(n, 2 * len(columns), figsize=(2.0 * 2 * len(columns), 2.0 * n), squeeze=False)
    for i in range(n):
        for j, (title, imgs) in enumerate(columns):
            img = imgs[i].permute(1, 2, 0).numpy()
            axes[i, 2 * j].imshow(img)
            axes[i, 2 * j + 1].imshow(img[z0:z1, z0:z1], interpolation="nearest")
            if i == 0:
                axes[i, 2 * j].set_title(title, fontsize=9)
                axes[i, 2 * j + 1].set_title(f"{title} (zoom)", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "reconstructions.png", dpi=100)
    plt.close(fig)
    figures["reconstructions"] = "reconstructions.png"

    plot_layer_probe(
        {"pretrained demo backbone": probe_curve},
        out / "layer_probe.png",
        labels=[f"b{i + 1}" for i in range(len(probe_curve) - 1)] + ["z_base"],
    )
    figures["layer_probe"] = "layer_probe.png"

    if weights is not None:
        maps = router_weight_maps(weights[:1], (backbone.grid_size, backbone.grid_size))[0]
        plot_router_weights(
            maps,
            out / "router_weights.png",
            layer_names=[f"block {i + 1}" for i in range(maps.shape[0])],
            title="phase-2 routing weights w_k per token (one held-out crop)",
        )
        figures["router_weights"] = "router_weights.png"

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, hist in histories.items():
        if hist:
            ax.plot([h["step"] for h in hist], [h["l1"] for h in hist], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("train L1")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("training loss per stage")
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=100)
    plt.close(fig)
    figures["loss_curves"] = "loss_curves.png"
    return figures
