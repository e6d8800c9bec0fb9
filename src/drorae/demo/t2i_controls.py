"""Unconditional controls of the toy text-to-image MoT (``python -m drorae.demo.t2i_controls``).

Why does the demo's MoT draw scattered blocks where a plain DiT of its size draws blobs? Each control trains the
demo's MoT on the demo's RAE latents with the captions dropped (``flow.text_dropout=0.999``: a caption is seen once
in a thousand steps), changing one thing through config overrides, for several seeds; then the re-noising probe
(:mod:`drorae.demo.t2i_probe`, CFG 1) scores how often it brings the held-out shapes back from ``t0`` of noise, and
a grid of its samples from pure noise is saved. Example (the time-scale lead, 2 seeds, 2,000 steps)::

    python -m drorae.demo.t2i_controls --out runs/t2i-controls --control bagel --control time1000=mot.time_scale=1000 \\
        --seeds 0 1 --steps 2000

The set-up (shapes, the RAE tokenizer, its latent cache, the tiny Qwen2) is the demo's and is made once in ``--out``.
Results: ``<out>/controls.json`` (per control and seed: final loss, probe accuracy per ``t0``, train seconds).

``--captions``: the controls train with captions (the demo's caption dropout) and are scored as the demo scores: the
evaluation prompts sampled at the demo's settings (CFG 2, 25 Euler steps, 4 images a prompt), GenEval's rules by the
shapes scorer, and the floor (the same images against the next prompt's rules: drawing without reading the text).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

PROBE_T0 = (0.7, 0.85, 0.95, 1.0)
# Every control starts from Bagel's MoT at the demo's first settings (lr 1e-3), whatever the demo config now holds
# (since 2026-12-06 the toy options and lr 3e-3), so that a control changes one thing from Bagel's network.
BAGEL_BASE = ("mot.time_scale=1", "mot.gen_adaln=false", "mot.latent_rope=bagel", "optim.lr=1e-3")


def setup(out: Path, quick: bool = False) -> dict[str, Path]:
    """The demo's shapes, RAE tokenizer, latent cache and tiny LLM (made once, reused); ``quick``: the demo's
    smoke-test sizes."""
    from ..data.shapes import vocabulary, write_shapes
    from ..generation.latents import cache_latents
    from ..generation.text.tiny_llm import make_tiny_llm
    from .backbone import BackboneRecipe, cached_backbone
    from .t2i import T2IDemoPlan, _tokenizer

    plan = T2IDemoPlan.quick_plan() if quick else T2IDemoPlan()
    paths = {"shapes": out / "shapes", "held": out / "shapes-heldout", "llm": out / "tiny-qwen2"}
    paths["tokenizer"], paths["latents"] = out / "tokenizer" / "model", out / "latents"
    if not (paths["shapes"] / "metadata.jsonl").is_file():
        write_shapes(paths["shapes"], plan.pairs, plan.size, seed=0, prompts_per_tag=plan.prompts_per_tag)
        write_shapes(paths["held"], plan.ceiling_images, plan.size, seed=1)
    if not (paths["tokenizer"] / "config.json").is_file():
        recipe = BackboneRecipe.quick() if quick else BackboneRecipe()
        _tokenizer(plan, cached_backbone(recipe), paths["shapes"], out / "tokenizer", 1, None)
    if not (paths["latents"] / "meta.json").is_file():
        cache_latents(paths["tokenizer"], paths["shapes"], paths["latents"], captions=True, num_workers=0, device="cpu")
    if not (paths["llm"] / "config.json").is_file():
        make_tiny_llm(paths["llm"], vocabulary(), hidden_size=plan.llm_hidden, intermediate_size=plan.llm_intermediate,
                      num_hidden_layers=plan.llm_layers)  # fmt: skip
    return paths


def run_control(
    paths: dict[str, Path], run: Path, overrides: list[str], seed: int, steps: int, captions: bool = False,
    quick: bool = False, curve_at: list[int] | None = None,
) -> dict:  # fmt: skip
    from ..generation.text.trainer import T2ITrainer, load_t2i_config
    from .t2i import T2I_CONFIG
    from .t2i_probe import renoise_probe

    uncond = [] if captions else ["flow.text_dropout=0.999"]
    cfg = load_t2i_config(
        T2I_CONFIG,
        [f"train.seed={seed}", f"train.max_steps={steps}", f"optim.decay_steps={max(1, steps // 5)}",
         *uncond, f"train.log_every={max(1, steps // 20)}", *BAGEL_BASE, *overrides],
    )  # fmt: skip
    start = time.perf_counter()
    trainer = T2ITrainer(cfg, paths["tokenizer"], paths["llm"], paths["shapes"], run, latents=paths["latents"])
    curve = {}
    try:
        for stop in sorted({*(curve_at or []), steps}):  # the schedule spans `steps`; the EMA model scored at each stop
            history = trainer.run(max_steps=stop).history
            seconds = time.perf_counter() - start
            if stop < steps:
                t = time.perf_counter()
                curve[str(stop)] = {"final_loss": statistics.mean(h["loss"] for h in history[-3:]),
                                    "train_seconds": round(seconds, 1),
                                    **score_prompts(paths, run, seed, quick, f"-{stop}")}  # fmt: skip
                start += time.perf_counter() - t  # scoring is not training time
    finally:
        trainer.close()
    loss = statistics.mean(h["loss"] for h in history[-3:])
    if captions:
        scored = score_prompts(paths, run, seed, quick)
        return {"final_loss": loss, **scored, "train_seconds": round(seconds, 1), **({"curve": curve} if curve else {})}
    probe = renoise_probe(run, paths["tokenizer"], paths["held"], PROBE_T0, scale=1.0, seed=seed,
                          grid_png=run / "probe.png")  # fmt: skip
    return {
        "final_loss": loss,
        "probe": {str(t0): row["accuracy"] for t0, row in probe.items()},
        "train_seconds": round(seconds, 1),
    }


def score_prompts(paths: dict[str, Path], run: Path, seed: int, quick: bool = False, suffix: str = "") -> dict:
    """The demo's scoring of one trained MoT: the evaluation prompts sampled (``run/samples-eval``, grid
    ``run/grid.png``), GenEval's rules per category and overall, and the shuffled-caption floor."""
    from ..evaluation.shapes import run_shapes_eval
    from ..generation.text.sampling import T2ISampleSettings, run_t2i_sampling
    from .t2i import T2IDemoPlan, _grid, _shuffled_floor

    plan = T2IDemoPlan.quick_plan() if quick else T2IDemoPlan()
    meta_path = paths["shapes"].parent / "shapes_evaluation_metadata.jsonl"
    meta = [json.loads(line) for line in meta_path.read_text().splitlines()]
    samples = run / f"samples-eval{suffix}"
    settings = T2ISampleSettings(scale=plan.cfg_scale, steps=plan.sample_steps, seed=seed, precision="fp32")
    run_t2i_sampling(run, paths["tokenizer"], meta_path, samples, per_prompt=plan.per_prompt, settings=settings,
                     device="cpu", progress=False)  # fmt: skip
    _grid(samples, meta, run / f"grid{suffix}.png")
    summary = run_shapes_eval(samples, metadata=meta_path)
    return {
        "scores": {**summary["categories"], "overall": summary["overall"]},
        "floor": _shuffled_floor(samples, meta)["overall"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m drorae.demo.t2i_controls", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="working folder (set-up made once; one run folder per control)")
    p.add_argument(
        "--control",
        action="append",
        required=True,
        help="NAME or NAME=key=value[,key=value...]: config overrides of train-t2i (bagel: none)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--captions", action="store_true", help="train with captions; score the evaluation prompts")
    p.add_argument(
        "--curve", type=int, nargs="*", default=[], help="with --captions: also score the EMA model at these steps"
    )
    p.add_argument("--quick", action="store_true", help="the demo's smoke-test sizes (tests)")
    args = p.parse_args(argv)
    if args.curve and not args.captions:
        p.error("--curve scores the evaluation prompts: give --captions too")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = setup(out, args.quick)
    results_path = out / "controls.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for seed in args.seeds:  # seed-major: every control's first seed before any second seed (paired early)
        for spec in args.control:
            name, _, rest = spec.partition("=")
            overrides = [o for o in rest.split(",") if o]
            key = f"{name}/seed{seed}/{args.steps}" + ("/captions" if args.captions else "")
            if key in results:  # resumable: a finished control is not run again
                continue
            run = out / name / (f"seed{seed}-{args.steps}" + ("-captions" if args.captions else ""))
            result = run_control(paths, run, overrides, seed, args.steps, args.captions, args.quick, args.curve)
            results[key] = {"overrides": overrides, **result}
            results_path.write_text(json.dumps(results, indent=2) + "\n")
            r = results[key]
            shown = f"overall {r['scores']['overall']:.3f}, floor {r['floor']:.3f}" if args.captions else r["probe"]
            print(f"{key}: loss {r['final_loss']:.4f}, {shown}, {r['train_seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
