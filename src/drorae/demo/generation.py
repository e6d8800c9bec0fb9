"""``drorae demo --generation``: stage 2 at toy scale on CPU, RAE latents vs DRoRAE latents.

The paper's generation claim (section 4.2, table 1) is that a DiT^DH trained on DRoRAE's fused latent generates
better images (gFID 1.74 -> 1.65) than the same DiT on RAE's. At toy scale, with the demo's tokenizers:

* data: class-conditional crops of the demo's training photos (class = source photo, 17 classes), and a second
  draw of crops of the same photos (another seed) as the reference set;
* for each tokenizer (RAE = the phase-1 model, DRoRAE = the phase-3 model, and the control ``rae_matched``: RAE's
  latent with a decoder trained for as many steps as DRoRAE's phases 2+3, so that a better decoder alone cannot
  pass for a better latent space), through the same functions the commands run: ``drorae stats`` (exact latent
  statistics), ``drorae cache-latents``, ``drorae train-dit`` (identical settings and seeds), ``drorae sample``
  (K per class) and ``drorae eval-gen --features backbone``;
* reported: the DiT training-loss curves (the paper's early indicator), sample grids, and the Fréchet distance of
  the samples to the reference crops in the frozen demo backbone's feature space (mean-pooled ``z_base``;
  *not* FID: there is no Inception network in a CPU-only toy run), with precision/recall (k = 3) on the same
  features; the same numbers for the training crops themselves (the floor a perfect generator would reach).

Beside them, RAEv2's layer-mean latents (arXiv 2605.18324; the demo's ``layer_mean``, ``layer_mean_all`` and
``drorae_on_layer_mean`` tokenizers) with identical DiT settings and seeds, and on DRoRAE's latents the three
guidance modes on ONE main network (a DiT^DH trained with RAEv2's free-guidance head): none, AutoGuidance with a
smaller, shorter-trained guide, and free guidance, at matched sampling cost (AutoGuidance gets fewer steps, so
that main + guide forwards cost the FLOPs of the other modes' main forwards; FLOPs counted by
``torch.utils.flop_counter``).

With ``seeds`` K > 1 the DiT training and sampling run once per seed and rows are reported as mean +- std. Every
finished piece (a tokenizer's statistics and cache, a seed's DiT, its samples) is reused by a rerun, so adding
seeds or rows only runs what is new; rows whose latents are identical (``rae`` and ``rae_matched``: same frozen
backbone, no fusion) share one cache and one DiT per seed and differ only in the decoder.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import photos as sample_photos

DIT_CONFIG = Path(__file__).parent / "dit-demo.yaml"
#: generation row -> the demo stage whose tokenizer it uses
TOKENIZERS = {
    "rae": "phase1",
    "rae_matched": "rae_matched",
    "drorae": "phase3",
    "layer_mean": "layer_mean",
    "layer_mean_all": "layer_mean_all",
    "drorae_on_layer_mean": "layer_mean_phase3",
}
#: guidance rows on DRoRAE's latents: row -> guidance mode of the one head-trained main DiT
GUIDED = {"drorae_head": "none", "drorae_head_autoguidance": "autoguidance", "drorae_head_free": "free"}
LABELS = {
    "rae": "RAE latents (phase-1 tokenizer)",
    "rae_matched": "control: RAE latents, decoder trained for the steps of phases 2+3",
    "drorae": "DRoRAE latents (phase-3 tokenizer)",
    "layer_mean": "RAEv2 layer-mean latents (upper half)",
    "layer_mean_all": "RAEv2 layer-mean latents (all blocks but the first)",
    "drorae_on_layer_mean": "DRoRAE on the layer-mean base",
    "drorae_head": "DRoRAE latents, DiT with free-guidance head: unguided",
    "drorae_head_autoguidance": "same DiT + AutoGuidance (small guide), matched FLOPs",
    "drorae_head_free": "same DiT + free guidance (its own head)",
}
#: (row, baseline) pairs whose per-seed margins the report gives
COMPARISONS = (
    ("drorae", "rae"),
    ("drorae", "rae_matched"),
    ("layer_mean", "rae"),
    ("drorae", "layer_mean"),
    ("layer_mean_all", "layer_mean"),
    ("drorae_on_layer_mean", "layer_mean"),
    ("drorae_head_free", "drorae_head"),
    ("drorae_head_autoguidance", "drorae_head"),
    ("drorae_head_free", "drorae_head_autoguidance"),
)


@dataclass
class GenerationPlan:
    crop: int = 64
    train_per_class: int = 64  # 17 training photos x 64 = 1088 training crops
    ref_per_class: int = 32  # 544 reference crops, another draw
    dit_steps: int = 500  # drorae 0.3 ran 1200 with three rows; 500 keeps nine rows x 3 seeds within 45 min
    batch_size: int = 32
    samples_per_class: int = 16
    sample_steps: int = 50
    sampler: str = "euler"
    seed: int = 0
    guidance: bool = True  # the guidance rows on DRoRAE's latents
    head_block: int = 1  # free-guidance head after trunk block 1 of 3 (RAEv2: block 8 of 28)
    free_scale: float = 1.78  # RAEv2's headline scale and interval
    free_interval: tuple[float, float] = (0.1, 1.0)
    autoguidance_scale: float = 1.5  # the paper's AutoGuidance scale
    guide_steps: int = 200  # the guide: a smaller DiT^DH (trunk 32 wide, 2 blocks; head 64) trained 40% as long
    quick: bool = False

    @classmethod
    def quick_plan(cls) -> GenerationPlan:
        return cls(
            train_per_class=2,
            ref_per_class=2,
            dit_steps=3,
            batch_size=4,
            samples_per_class=1,
            sample_steps=6,
            guide_steps=2,
            quick=True,
        )


GUIDE_OVERRIDES = ["dit.preset=null", "dit.hidden_size=32", "dit.depth=2", "dit.num_heads=2",
                   "dit.head_hidden_size=64", "dit.head_depth=1", "dit.head_num_heads=2"]  # fmt: skip


def _dit_overrides(plan: GenerationPlan, seed: int, steps: int | None = None) -> list[str]:
    steps = plan.dit_steps if steps is None else steps
    overrides = [
        f"train.max_steps={steps}",
        f"train.batch_size={plan.batch_size}",
        f"train.seed={seed}",
        f"train.log_every={max(1, steps // 48)}",
        f"optim.decay_steps={max(1, steps // 3)}",  # the last third decays linearly, whatever the budget
    ]
    if plan.quick:
        overrides += ["optim.warmup_steps=1", "optim.decay_steps=1"]
    return overrides


def run_generation_demo(
    demo_out: str | Path = "demo-out",
    plan: GenerationPlan | None = None,
    seeds: int = 1,
    progress: bool = True,
    workers: int | None = None,
) -> dict[str, Any]:
    """Run the toy generation comparison on the tokenizers of a finished ``drorae demo`` at ``demo_out``;
    writes ``<demo_out>/generation/report.md``, ``report.json`` and figures. Latent caches, DiT trainings and
    sampling runs are jobs that run side by side in ``workers`` processes (:mod:`drorae.demo.jobs`)."""

    from ..evaluation.generation import evaluate_generation
    from .jobs import Job, resolve_workers, run_jobs

    plan = plan or GenerationPlan()
    demo_out = Path(demo_out)
    out = demo_out / "generation"
    for stage in TOKENIZERS.values():
        if not (demo_out / stage / "model" / "config.json").is_file():
            raise FileNotFoundError(
                f"{demo_out / stage / 'model'} not found: the generation demo uses the tokenizers of `drorae demo`; "
                f"run `drorae demo --out {demo_out}` first (or `drorae demo --generation`, which runs both)"
            )
    workers, threads = resolve_workers(workers)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    data = out / "data"
    sample_photos.write_class_crops(data / "classes", plan.crop, plan.train_per_class, seed=3)
    sample_photos.write_class_crops(data / "classes-ref", plan.crop, plan.ref_per_class, seed=4)
    seconds["data"] = time.perf_counter() - t

    # 1. exact latent statistics per tokenizer; rows with identical latents (same fingerprint) share a cache and DiTs
    t = time.perf_counter()
    stats_jobs = [
        Job(f"stats/{row}", _stats_job, (demo_out / stage / "model", data, out / row / "tokenizer"))
        for row, stage in TOKENIZERS.items()
    ]
    stats = run_jobs(stats_jobs, workers, threads)
    first_with: dict[str, str] = {}
    shares: dict[str, str] = {}  # row -> the row whose cache and DiT it uses
    for row in TOKENIZERS:
        fingerprint = stats[f"stats/{row}"][0]
        shares[row] = first_with.setdefault(fingerprint, row)
        if shares[row] != row:
            print(f"{row} has the latents of {shares[row]} (fingerprint {fingerprint}): its DiT is reused", flush=True)
    owners = [row for row in TOKENIZERS if shares[row] == row]
    seeds_ = [plan.seed + k for k in range(seeds)]
    jobs = [Job(f"cache/{row}", _cache_job, (out / row / "tokenizer", data, out / row / "latents")) for row in owners]
    # 2. the DiTs: one per latent and seed; on DRoRAE's latents also the head-trained DiT and the small guide
    for seed in seeds_:
        for row in owners:
            tok, lat = out / row / "tokenizer", out / row / "latents"
            run = out / row / f"seed{seed}" / "dit"
            jobs.append(
                Job(f"train/{row}/{seed}", _train_once, (run, tok, lat, plan, seed, False), after=(f"cache/{row}",))
            )
        if plan.guidance:
            tok, lat, base = out / "drorae" / "tokenizer", out / "drorae" / "latents", out / "drorae" / f"seed{seed}"
            head = [f"dit.guidance_head_block={plan.head_block}"]
            head_args = (base / "dit_head", tok, lat, plan, seed, False, head)
            guide_args = (base / "guide", tok, lat, plan, seed, False, GUIDE_OVERRIDES, plan.guide_steps)
            jobs.append(Job(f"train/drorae_head/{seed}", _train_once, head_args, after=("cache/drorae",)))
            jobs.append(Job(f"train/guide/{seed}", _train_once, guide_args, after=("cache/drorae",)))
    trained = run_jobs(jobs, workers, threads)
    seconds["latents_and_training_wall"] = time.perf_counter() - t
    for name, (_, sec) in trained.items():
        key = name.split("/")[0] + "_" + name.split("/")[1]
        seconds[key] = seconds.get(key, 0.0) + sec

    # 3. sampling and scoring: every (row, seed), the guidance rows at matched FLOPs
    t = time.perf_counter()
    costs = _guidance_costs(out / "drorae" / f"seed{plan.seed}", plan) if plan.guidance else None
    jobs = []
    for seed in seeds_:
        for row in TOKENIZERS:
            dit = out / shares[row] / f"seed{seed}" / "dit"
            args = (dit, out / row / "tokenizer", out / row / f"seed{seed}", data, plan, seed)
            jobs.append(Job(f"sample/{row}/{seed}", _sample_job, args))
        for row, mode in GUIDED.items() if plan.guidance else ():
            base = out / "drorae" / f"seed{seed}"
            args = (base / "dit_head", out / "drorae" / "tokenizer", out / row / f"seed{seed}", data, plan, seed)
            jobs.append(Job(f"sample/{row}/{seed}", _sample_job, (*args, mode, base / "guide", costs)))
    sampled = run_jobs(jobs, workers, threads)
    seconds["sample_eval_wall"] = time.perf_counter() - t
    per_seed: list[dict[str, dict]] = []
    histories: dict[str, list] = {}
    for seed in seeds_:
        scores = {}
        for row in [*TOKENIZERS, *(GUIDED if plan.guidance else ())]:
            owner = "drorae_head" if row in GUIDED else shares[row]
            history = trained[f"train/{owner}/{seed}"][0]
            scores[row] = _row_metrics(sampled[f"sample/{row}/{seed}"][0], history)
            if seed == plan.seed and row in (*TOKENIZERS, "drorae_head"):
                histories[row] = history
        per_seed.append(scores)

    # the floor: the training crops themselves against the reference crops, in the same feature space
    crops = _folder_npz(data / "classes", out / "real-train-crops.npz", plan.crop)
    real = evaluate_generation(
        crops, data / "classes-ref", features="backbone", tokenizer=out / "rae" / "tokenizer", out=out / "real"
    )
    mean, std = _aggregate(per_seed)
    figures = _figures(out, histories, plan)
    report = {
        "plan": asdict(plan),
        "num_classes": len(sample_photos.load_photos("train")),
        "seeds": seeds_,
        "rows": mean,
        "rows_std": std,
        "per_seed": per_seed,
        "real_train_crops": _row_metrics(real, None),
        "comparison": _comparison(per_seed),
        "guidance_cost": costs,
        "figures": figures,
        "workers": {"processes": workers, "threads_each": threads},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "fd_note": "fd = Frechet distance of mean-pooled z_base features of the frozen demo backbone (samples vs the "
        "reference crops); not FID (no Inception network). precision/recall: prdc, k = 3, same features.",
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    print("\n" + render_table(report), flush=True)
    print(f"\ngeneration report: {out / 'report.md'}")
    return report


def _stats_job(model_dir: Path, data: Path, tok: Path) -> str:
    """``drorae stats`` into ``tok`` (unless done): the tokenizer with its latent statistics; its fingerprint."""
    from ..generation.latents import compute_latent_stats

    if not (tok / "latent_stats.safetensors").is_file():
        compute_latent_stats(model_dir, data / "classes", out_dir=tok, num_workers=0, device="cpu")
    return json.loads((tok / "latent_stats.json").read_text())["fingerprint"]


def _cache_job(tok: Path, data: Path, latents: Path) -> None:
    from ..generation.latents import cache_latents

    cache_latents(tok, data / "classes", latents, flip=True, num_workers=0, device="cpu")


def _guidance_costs(base: Path, plan: GenerationPlan) -> dict[str, Any]:
    """Matched sampling cost: AutoGuidance gets the number of steps whose main + guide forwards cost the FLOPs of
    the other modes' main forwards (FLOPs of one forward counted by torch.utils.flop_counter)."""
    main_flops, guide_flops = _forward_flops(base / "dit_head"), _forward_flops(base / "guide")
    evaluations = plan.sample_steps - 1  # RAE's grid: steps points, steps - 1 evaluations
    ag_evaluations = max(1, round(evaluations * main_flops / (main_flops + guide_flops)))
    return {
        "main_forward_flops": main_flops,
        "guide_forward_flops": guide_flops,
        "evaluations": {"none": evaluations, "free": evaluations, "autoguidance": ag_evaluations},
        "flops_per_sample": {
            "none": evaluations * main_flops,
            "free": evaluations * main_flops,
            "autoguidance": ag_evaluations * (main_flops + guide_flops),
        },
    }


def _sample_job(dit, tok, run, data, plan, seed, mode="none", guide=None, costs=None) -> dict:
    """``drorae sample`` (K per class) and ``drorae eval-gen --features backbone`` for one row and seed."""
    from ..evaluation.generation import evaluate_generation
    from ..generation.sampling import SampleSettings, run_sampling

    steps = plan.sample_steps if mode == "none" or costs is None else costs["evaluations"][mode] + 1
    settings = SampleSettings(
        guidance=mode,
        scale={"none": 1.0, "free": plan.free_scale, "autoguidance": plan.autoguidance_scale}[mode],
        interval=tuple(plan.free_interval) if mode == "free" else (0.0, 1.0),
        sampler=plan.sampler,
        steps=steps,
        seed=seed,
        batch_size=64,
        write_png=False,
    )
    run_sampling(dit, tok, run / "samples", per_class=plan.samples_per_class, settings=settings, device="cpu",
                 guide_dir=guide if mode == "autoguidance" else None, progress=False)  # fmt: skip
    return evaluate_generation(run / "samples" / "samples.npz", data / "classes-ref", features="backbone",
                               tokenizer=tok, out=run)  # fmt: skip


def _forward_flops(dit_dir: Path) -> int:
    """FLOPs of one forward of the DiT on one sample (with its guidance head when it has one)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..generation.dit import DiT

    dit = DiT.from_pretrained(dit_dir).eval()
    c, side = dit.config.in_channels, dit.config.input_size
    x, t, y = torch.zeros(1, c, side, side), torch.full((1,), 0.5), torch.zeros(1, dtype=torch.long)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        dit(x, t, y, return_guidance=dit.has_guidance_head)
    return int(counter.get_total_flops())


def _train_once(
    run: Path,
    tok: Path,
    latents: Path,
    plan: GenerationPlan,
    seed: int,
    progress: bool,
    extra: list[str] = (),
    steps: int | None = None,
) -> list[dict]:
    """``train-dit`` into ``run`` unless a finished run with these settings is there; its logged history."""
    from ..generation.trainer import DiTTrainer, load_dit_config

    steps = plan.dit_steps if steps is None else steps
    cfg = load_dit_config(DIT_CONFIG, [*_dit_overrides(plan, seed, steps), *extra])
    done = run / "model" / "config.json"
    if done.is_file() and json.loads(done.read_text())["_extra"]["steps"] == steps:
        print(f"reusing {run / 'model'}", flush=True)
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trainer = DiTTrainer(cfg, tok, run, latents_dir=latents, progress=progress)
    try:
        return trainer.run().history
    finally:
        trainer.close()


def _row_metrics(report: dict, history: list[dict] | None) -> dict[str, float]:
    m = report["metrics"]
    row = {"fd": m["fd_backbone"], "precision": m["precision"], "recall": m["recall"]}
    if history:  # the mean logged loss over the last fifth of the steps (one record per step)
        by_step = {h["step"]: h["loss"] for h in history}
        last = max(by_step)
        row["final_loss"] = statistics.fmean(v for k, v in by_step.items() if k > 0.8 * last)
    return row


def _folder_npz(folder: Path, path: Path, size: int) -> Path:
    from ..evaluation.generation import load_reference

    images, _, _ = load_reference(folder, size)
    np.savez(path, arr_0=images)
    return path


def _aggregate(per_seed: list[dict]) -> tuple[dict, dict]:
    mean, std = {}, {}
    for row in per_seed[0]:
        mean[row], std[row] = {}, {}
        for key in per_seed[0][row]:
            values = [s[row][key] for s in per_seed]
            mean[row][key] = statistics.fmean(values)
            std[row][key] = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def _comparison(per_seed: list[dict]) -> dict[str, Any]:
    """For each (row, baseline) of :data:`COMPARISONS`: row minus baseline per seed (fd and loss: lower is better),
    the mean and the spread; ``exceeds_spread`` says whether the mean margin is larger than the seeds' standard
    deviation (one seed: no spread, so never more than a hint)."""
    out: dict[str, Any] = {}
    for row, base in COMPARISONS:
        if row not in per_seed[0] or base not in per_seed[0]:
            continue
        pair = out[f"{row}_vs_{base}"] = {"_rows": [row, base]}
        for key, better in (("fd", "lower"), ("final_loss", "lower"), ("precision", "higher"), ("recall", "higher")):
            margins = [s[row][key] - s[base][key] for s in per_seed]
            mean = statistics.fmean(margins)
            spread = statistics.stdev(margins) if len(margins) > 1 else None
            pair[key] = {
                "margins": margins,
                "mean": mean,
                "std": spread,
                "better": better,
                "favours_row": mean < 0 if better == "lower" else mean > 0,
                "exceeds_spread": spread is not None and abs(mean) > spread,
            }
    return out


def _figures(out: Path, histories: dict[str, list], plan: GenerationPlan) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from PIL import Image

    figures = {}
    fig, ax = plt.subplots(figsize=(7, 4))
    for row, hist in histories.items():
        if hist:
            ax.plot([h["step"] for h in hist], [h["loss"] for h in hist], label=LABELS[row])
    ax.set_xlabel("DiT step")
    ax.set_ylabel("flow-matching loss")
    ax.legend()
    ax.set_title("DiT^DH training loss on each tokenizer's normalised latents")
    fig.tight_layout()
    fig.savefig(out / "dit_loss.png", dpi=100)
    plt.close(fig)
    figures["loss"] = "dit_loss.png"

    rows = [*TOKENIZERS, *(GUIDED if plan.guidance else ())]
    grids = [(row, out / row / f"seed{plan.seed}" / "samples" / "grid.png") for row in rows]
    columns = 3
    fig, axes = plt.subplots(-(-len(grids) // columns), columns, figsize=(6 * columns, 6.4 * -(-len(grids) // columns)),
                             squeeze=False)  # fmt: skip
    for ax in axes.flat:
        ax.axis("off")
    for ax, (row, path) in zip(axes.flat, grids):
        ax.imshow(np.asarray(Image.open(path)))
        ax.set_title(f"{LABELS[row]}\n(a row per class, first 8 classes)", fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "samples.png", dpi=72)
    plt.close(fig)
    figures["samples"] = "samples.png"
    return figures


def render_table(report: dict) -> str:
    rows, std = report["rows"], report["rows_std"]
    lines = [
        "| latents | FD-backbone (lower is better) | precision | recall | final DiT loss |",
        "|---|---|---|---|---|",
    ]
    for row in [*TOKENIZERS, *GUIDED]:
        if row not in rows:
            continue
        r, s = rows[row], std[row]
        lines.append(
            f"| {LABELS[row]} | {r['fd']:.4f} ± {s['fd']:.4f} | {r['precision']:.3f} ± {s['precision']:.3f} | "
            f"{r['recall']:.3f} ± {s['recall']:.3f} | {r['final_loss']:.4f} ± {s['final_loss']:.4f} |"
        )
    real = report["real_train_crops"]
    floor = f"{real['fd']:.4f} | {real['precision']:.3f} | {real['recall']:.3f}"
    lines.append(f"| floor: the training crops themselves | {floor} | |")
    return "\n".join(lines)


def render_markdown(report: dict) -> str:
    plan = report["plan"]
    n = len(report["seeds"])
    lines = [
        "# Toy generation: a DiT^DH on RAE, DRoRAE and RAEv2 layer-mean latents; three guidance modes (CPU, offline)",
        "",
        f"{plan['train_per_class']} training crops per class ({report.get('num_classes', '?')} classes = the demo's "
        "training photos), "
        f"{plan['ref_per_class']} reference crops per class (another draw); DiT^DH-tiny, {plan['dit_steps']} steps "
        f"at batch {plan['batch_size']}, identical settings for every tokenizer; {plan['samples_per_class']} samples "
        f"per class, {plan['sampler']} ODE, {plan['sample_steps']} grid points; {n} seed(s), mean ± std.",
        "",
        *(
            [
                "Guidance rows (DRoRAE latents): one DiT^DH trained with RAEv2's free-guidance head after trunk block "
                f"{plan['head_block']} (its logged loss includes the head's term), sampled unguided, with AutoGuidance "
                f"(scale {plan['autoguidance_scale']}, a smaller guide trained {plan['guide_steps']} steps) and with "
                f"free guidance (scale {plan['free_scale']} on {list(plan['free_interval'])}); AutoGuidance takes "
                f"{report['guidance_cost']['evaluations']['autoguidance']} evaluations instead of "
                f"{report['guidance_cost']['evaluations']['none']} so that its FLOPs per sample match "
                f"({report['guidance_cost']['flops_per_sample']['autoguidance'] / 1e9:.2f} vs "
                f"{report['guidance_cost']['flops_per_sample']['none'] / 1e9:.2f} GFLOP).",
                "",
            ]
            if report.get("guidance_cost")
            else []
        ),
        render_table(report),
        "",
        report["fd_note"],
        "",
        "Margins per seed (row minus baseline), their mean and standard deviation over the seeds:",
        "",
    ]
    for keys in report["comparison"].values():
        row, base = keys["_rows"]
        for key, c in keys.items():
            if key == "_rows":
                continue
            spread = "n/a (one seed)" if c["std"] is None else f"{c['std']:.4f}"
            verdict = (f"favours {row}" if c["favours_row"] else f"favours {base}") + (
                " beyond the seed spread" if c["exceeds_spread"] else " (within the spread: a tie)"
            )
            lines.append(
                f"- {row} vs {base}, {key} ({c['better']} is better): margins "
                f"{', '.join(f'{m:+.4f}' for m in c['margins'])}; mean {c['mean']:+.4f}, std {spread}: {verdict}"
            )
    lines += [
        "",
        "The DiT losses are on each tokenizer's own normalised latent (unit variance per position), so they compare "
        "how hard each latent is to model, not image quality. Toy scale: the numbers say whether the pipeline "
        "behaves, not what the paper's ImageNet run gives.",
        "",
        f"![DiT training loss]({report['figures']['loss']})",
        "",
        f"![samples]({report['figures']['samples']})",
        "",
        "seconds: " + ", ".join(f"{k} {v}" for k, v in report["seconds"].items()),
        "",
    ]
    return "\n".join(lines)
