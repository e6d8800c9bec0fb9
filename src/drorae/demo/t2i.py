"""``drorae demo --t2i``: text-to-image with RAE vs DRoRAE latents on a synthetic compositional set, on CPU.

1. the shapes set (:mod:`drorae.data.shapes`): image-caption pairs in GenEval's six categories, and an evaluation
   prompt set drawn from another seed;
2. two tokenizers on the demo backbone, trained on the shapes so that they can reconstruct them: RAE (phase 1, a
   decoder on ``LN(z^L)``) and DRoRAE (phase 2 from RAE's decoder: fusion + decoder);
3. the ceiling: the scorer (:mod:`drorae.evaluation.shapes`) on held-out ground-truth images, and on their
   reconstructions through each tokenizer (a generator cannot score above what its tokenizer can draw);
4. per seed, one tiny MoT per tokenizer with identical settings and seeds (a tiny random Qwen2 whose experts both
   train), ``sample-t2i`` on the evaluation prompts, GenEval's rules on every image: per-category scores, mean +- std
   over seeds and paired per-seed margins, and a sample grid per prompt.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.shapes import TAGS, vocabulary, write_shapes
from ..evaluation.shapes import run_shapes_eval, score_shapes

T2I_CONFIG = Path(__file__).parent / "t2i-demo.yaml"
ROWS = ["rae", "drorae"]


@dataclass
class T2IDemoPlan:
    size: int = 64
    pairs: int = 1800
    ceiling_images: int = 240
    prompts_per_tag: int = 8
    per_prompt: int = 4
    tokenizer_batch: int = 16
    phase1_steps: int = 500
    phase2_steps: int = 250
    # the tiny Qwen2's width: at least the latent's 128 channels (RAE's rule, arXiv 2510.11690: a narrower network
    # cannot fit the latent; on this set the 64-wide MoT's final loss was 0.65, the 128-wide one's 0.16)
    llm_hidden: int = 128
    llm_intermediate: int = 352
    llm_layers: int = 2
    mot_steps: int = 1500  # the toy scores above its shuffled-caption floor from ~1,500 steps (docs/text-to-image.md)
    mot_batch: int = 32
    sample_steps: int = 25
    cfg_scale: float = 2.0
    quick: bool = False

    @classmethod
    def quick_plan(cls) -> T2IDemoPlan:
        return cls(pairs=48, ceiling_images=12, prompts_per_tag=1, per_prompt=1, tokenizer_batch=8, phase1_steps=4,
                   phase2_steps=3, mot_steps=3, mot_batch=8, sample_steps=3, quick=True)  # fmt: skip


def _tokenizer(plan: T2IDemoPlan, backbone: Path, shapes: Path, out: Path, phase: int, init: Path | None) -> Path:
    from ..data.folders import ImageFolderDataset
    from ..tokenizer.training import Trainer
    from .pipeline import DemoPlan, _stage_config

    demo = DemoPlan.quick_plan() if plan.quick else DemoPlan()
    demo.batch_size = plan.tokenizer_batch
    steps, lr = (plan.phase1_steps, demo.lr_decoder) if phase == 1 else (plan.phase2_steps, demo.lr_fusion)
    cfg = _stage_config(demo, backbone, steps, lr, ["data.random_flip=false"])
    dataset = ImageFolderDataset(shapes, plan.size, random_flip=False)
    Trainer(cfg, phase, out, init=init, dataset=dataset, progress=False).run()
    return out / "model"


def _categories(scored: list[tuple[str, bool]]) -> dict[str, float]:
    cats = {
        t: float(np.mean([ok for tag, ok in scored if tag == t])) for t in TAGS if any(tag == t for tag, _ in scored)
    }
    return {**cats, "overall": float(np.mean(list(cats.values())))}


@torch.no_grad()
def _ceiling(shapes: Path, metadata: list[dict], tokenizers: dict[str, Path]) -> dict[str, dict[str, float]]:
    from PIL import Image

    from ..tokenizer.model import DRoRAE

    images = torch.stack([
        torch.from_numpy(np.array(Image.open(shapes / f"{i:06d}.png").convert("RGB"))).permute(2, 0, 1)
        for i in range(len(metadata))
    ]).float() / 255  # fmt: skip
    rows = {"ground truth": images}
    for name, path in tokenizers.items():
        model = DRoRAE.from_pretrained(path).eval()
        rows[name] = torch.cat(
            [model.decode(model.encode(images[i : i + 32])).clamp(0, 1) for i in range(0, len(images), 32)]
        )
    out = {}
    for name, batch in rows.items():
        pixels = (batch * 255).round().byte().permute(0, 2, 3, 1).numpy()
        out[name] = _categories([(m["tag"], score_shapes(p, m)[0]) for p, m in zip(pixels, metadata)])
    return out


def _grid(folder: Path, metadata: list[dict], out: Path) -> None:
    from PIL import Image
    from torchvision.utils import save_image

    tiles = []
    for i in range(len(metadata)):
        for png in sorted((folder / f"{i:05d}" / "samples").glob("*.png")):
            tiles.append(torch.from_numpy(np.array(Image.open(png).convert("RGB"))).permute(2, 0, 1).float() / 255)
    if tiles:
        per_row = max(1, len(tiles) // len(metadata))
        save_image(torch.stack(tiles), out, nrow=per_row, padding=1, pad_value=1.0)


def run_t2i_demo(
    out_dir: str | Path = "demo-out", plan: T2IDemoPlan | None = None, seeds: int = 3, cache_dir=None, progress=False
) -> dict[str, Any]:
    from ..generation.latents import cache_latents
    from ..generation.text.sampling import T2ISampleSettings, run_t2i_sampling
    from ..generation.text.tiny_llm import make_tiny_llm
    from ..generation.text.trainer import T2ITrainer, load_t2i_config
    from .backbone import BackboneRecipe, cached_backbone

    plan = plan or T2IDemoPlan()
    out = Path(out_dir) / "t2i"
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    shapes = out / "shapes"
    write_shapes(shapes, plan.pairs, plan.size, seed=0, prompts_per_tag=plan.prompts_per_tag)
    held = out / "shapes-heldout"
    write_shapes(held, plan.ceiling_images, plan.size, seed=1)
    eval_meta_path = out / "shapes_evaluation_metadata.jsonl"
    eval_meta = [json.loads(line) for line in eval_meta_path.read_text().splitlines()]
    backbone = cached_backbone(BackboneRecipe.quick() if plan.quick else BackboneRecipe(), cache_dir=cache_dir)
    print(f"== t2i demo: {plan.pairs} shape pairs, {len(eval_meta)} evaluation prompts ==", flush=True)
    rae = _tokenizer(plan, backbone, shapes, out / "tokenizers" / "rae", 1, None)
    drorae = _tokenizer(plan, backbone, shapes, out / "tokenizers" / "drorae", 2, out / "tokenizers" / "rae")
    tokenizers = {"rae": rae, "drorae": drorae}
    caches = {name: out / "latents" / name for name in tokenizers}
    for name, tok in tokenizers.items():  # each pair's latent encoded once: the MoTs' steps run no backbone
        cache_latents(tok, shapes, caches[name], captions=True, num_workers=0, device="cpu", progress=False)
    seconds["tokenizers"] = time.perf_counter() - t
    llm = make_tiny_llm(
        out / "tiny-qwen2",
        vocabulary(),
        hidden_size=plan.llm_hidden,
        intermediate_size=plan.llm_intermediate,
        num_hidden_layers=plan.llm_layers,
    )
    losses: dict[str, list[float]] = {r: [] for r in ROWS}
    t = time.perf_counter()
    for seed in range(seeds):
        for name, tok in tokenizers.items():
            run = out / f"seed{seed}" / name
            overrides = [
                f"train.seed={seed}", f"train.max_steps={plan.mot_steps}", f"train.batch_size={plan.mot_batch}",
                f"data.image_size={plan.size}", f"train.log_every={max(1, plan.mot_steps // 10)}",
            ]  # fmt: skip
            if plan.quick:
                overrides += ["optim.warmup_steps=1", "optim.decay_steps=1"]
            cfg = load_t2i_config(T2I_CONFIG, overrides)
            trainer = T2ITrainer(cfg, tok, llm, shapes, run, latents=caches[name], progress=progress)
            try:
                result = trainer.run()
            finally:
                trainer.close()
            losses[name].append(statistics.mean(h["loss"] for h in result.history[-3:]))
            settings = T2ISampleSettings(scale=plan.cfg_scale, steps=plan.sample_steps, seed=seed, precision="fp32")
            samples = run / "samples-eval"
            run_t2i_sampling(run, tok, eval_meta_path, samples, per_prompt=plan.per_prompt, settings=settings,
                             device="cpu", progress=False)  # fmt: skip
            _grid(samples, eval_meta, out / f"grid_{name}_seed{seed}.png")
    seconds["generators"] = time.perf_counter() - t
    return score_t2i_demo(out, plan, seeds, losses, seconds)


def _shuffled_floor(samples: Path, metadata: list[dict]) -> dict[str, float]:
    """The same images scored against another prompt's rules (prompt ``i``'s images against prompt ``i + 1``'s): what
    the generator scores with its captions shuffled across prompts, the score of drawing without reading the text."""
    from PIL import Image

    n, scored = len(metadata), []
    for i in range(n):
        other = metadata[(i + 1) % n]
        for png in sorted((samples / f"{i:05d}" / "samples").glob("*.png")):
            scored.append((other["tag"], score_shapes(np.array(Image.open(png).convert("RGB")), other)[0]))
    return _categories(scored)


def score_t2i_demo(out: Path, plan: T2IDemoPlan, seeds: int, losses: dict, seconds: dict) -> dict[str, Any]:
    """The ceiling and every seed's scores from what a run left in ``out`` (tokenizers, sample folders), and the
    report; also rescores a finished run (``score_t2i_demo(out, ...)`` with its ``report.json``'s fields)."""
    t = time.perf_counter()
    tokenizers = {name: out / "tokenizers" / name / "model" for name in ROWS}
    held = out / "shapes-heldout"
    held_meta = [json.loads(line) for line in (held / "metadata.jsonl").read_text().splitlines()]
    ceiling = _ceiling(held, held_meta, tokenizers)
    print("ceiling (scorer on ground truth / reconstructions):", json.dumps(ceiling), flush=True)
    eval_meta_path = out / "shapes_evaluation_metadata.jsonl"
    eval_meta = [json.loads(line) for line in eval_meta_path.read_text().splitlines()]
    per_seed, floor = [], {name: [] for name in ROWS}
    for seed in range(seeds):
        row_scores = {}
        for name in ROWS:  # `drorae eval-geneval SAMPLES --shapes`: GenEval's results jsonl in each sample folder
            samples = out / f"seed{seed}" / name / "samples-eval"
            summary = run_shapes_eval(samples, metadata=eval_meta_path)
            row_scores[name] = {**{t: summary["categories"][t] for t in TAGS if t in summary["categories"]},
                                "overall": summary["overall"]}  # fmt: skip
            floor[name].append(_shuffled_floor(samples, eval_meta)["overall"])
        print(f"seed {seed}: {json.dumps(row_scores)}", flush=True)
        per_seed.append(row_scores)
    # how far each generator is above its own floor, paired per seed (a generator that reads its captions is above it)
    above = {name: _mean_std([s[name]["overall"] - f for s, f in zip(per_seed, floor[name])]) for name in ROWS}
    floor = {name: _mean_std(values) for name, values in floor.items()}
    print("floor (captions shuffled across prompts):", json.dumps(floor), flush=True)
    seconds = {**seconds, "scoring": time.perf_counter() - t}
    report = {"plan": asdict(plan), "seeds": seeds, "ceiling": ceiling, "per_seed": per_seed, "floor": floor,
              "above_floor": above, "final_loss": losses, "seconds": seconds, **_aggregate(per_seed)}  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    print(f"t2i demo report: {out / 'report.md'}", flush=True)
    return report


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _aggregate(per_seed: list[dict]) -> dict[str, Any]:
    keys = [*TAGS, "overall"]
    summary = {
        r: {k: _mean_std([s[r][k] for s in per_seed if k in s[r]]) for k in keys if k in per_seed[0][r]} for r in ROWS
    }
    margins = {k: _mean_std([s["drorae"][k] - s["rae"][k] for s in per_seed]) for k in keys if k in per_seed[0]["rae"]}
    return {"summary": summary, "margins": margins}


def render_markdown(report: dict) -> str:
    keys = [k for k in [*TAGS, "overall"] if k in report["summary"]["rae"]]
    lines = [
        "# Text-to-image demo: RAE vs DRoRAE latents on synthetic shapes (toy scale, CPU)",
        "",
        f"{report['seeds']} seeds; a tiny MoT per tokenizer and seed with identical settings; GenEval's rules applied",
        "by a network-free scorer (colour segmentation + connected components). Toy numbers: they check the pipeline",
        "and compare two tokenizers under identical settings; they are not GenEval scores of real models.",
        "",
        "## Ceiling: the scorer on held-out ground truth and on its reconstructions",
        "",
        "| images | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for name, row in report["ceiling"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row.get(k, float('nan')):.3f}" for k in keys) + " |")
    lines += ["", "## Generated images (mean ± std over seeds)", "", "| latent | " + " | ".join(keys) + " |",
              "|---|" + "---|" * len(keys)]  # fmt: skip
    for name in ROWS:
        row = report["summary"][name]
        lines.append(f"| {name} | " + " | ".join(f"{row[k][0]:.3f} ± {row[k][1]:.3f}" for k in keys) + " |")
    m = report["margins"]
    lines.append("| DRoRAE - RAE (paired) | " + " | ".join(f"{m[k][0]:+.3f} ± {m[k][1]:.3f}" for k in keys) + " |")
    if "floor" in report:  # older reports have no floor
        floor = ", ".join(f"{name} {v[0]:.3f} ± {v[1]:.3f}" for name, v in report["floor"].items())
        lines += ["", "Floor, the same images scored against another prompt's rules (captions shuffled across "
                  f"prompts), overall: {floor}."]  # fmt: skip
    if "above_floor" in report:
        above = ", ".join(f"{name} {v[0]:+.3f} ± {v[1]:.3f}" for name, v in report["above_floor"].items())
        lines += ["", f"Overall minus the floor, paired per seed (how much the captions are read): {above}."]
    lines += ["", f"Wall time (s): {json.dumps({k: round(v) for k, v in report['seconds'].items()})}", ""]
    return "\n".join(lines)
