"""Sweeps under the phase-2 protocol: the scaling study (paper section 4.5, appendix C) and the ablations (tables 3-4).

Every point of a sweep trains phase 2 (or the joint ablation) from the same phase-1 decoder with one set of config
overrides, in its own run directory under ``<out>/points/``, then evaluates it on an image folder with
:func:`drorae.evaluation.reconstruction.evaluate`. A finished point (its ``point.json``) is skipped when the sweep
runs again, and
an unfinished one resumes from its checkpoint, so a sweep survives being killed.

The metric is rFID when the Inception weights are available, else held-out PSNR, and it is named as such.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..tokenizer.fusion import paper_param_count

POINT_FILE = "point.json"


@dataclass
class SweepSettings:
    """What every point of a sweep shares."""

    config: str | Path  # training YAML (phase-2 settings)
    init: str | Path  # the phase-1 run (or model) directory every point starts from
    data: str | Path  # training image folder
    eval_data: str | Path  # evaluation image folder
    out: str | Path
    overrides: tuple[str, ...] = ()  # applied to every point, before the point's own
    metric: str = "auto"  # auto (rfid if the Inception weights exist, else psnr) | rfid | psnr
    eval_num: int | None = None
    eval_batch: int = 32


def run_point(
    settings: SweepSettings, name: str, overrides: list[str], phase: str = "2", init: str | Path | None = None
) -> dict[str, Any]:
    """Train one point (or reuse it) and evaluate it; returns its ``point.json`` record. ``init`` defaults to the
    sweep's phase-1 model (phases 3 and "full" start from a phase-2 point's run directory instead)."""
    from ..evaluation.reconstruction import evaluate
    from ..tokenizer.training import Trainer, load_config

    run = Path(settings.out) / "points" / name
    record_path = run / POINT_FILE
    if record_path.is_file():
        return json.loads(record_path.read_text())
    cfg = load_config(settings.config, [*settings.overrides, *overrides])
    trainer = Trainer(cfg, phase, run, data_dir=settings.data, init=init or settings.init, resume=True, progress=False)
    result = trainer.run()
    fusion = trainer.model.fusion
    rfid = settings.metric in ("auto", "rfid")
    report = evaluate(
        result.model_dir,
        settings.eval_data,
        run / "eval",
        num=settings.eval_num,
        batch_size=settings.eval_batch,
        rfid=rfid,
        stlpips=False,
        num_workers=0,
        progress=False,
    )
    metric_name = "rfid" if report["metrics"]["rfid"] is not None else "psnr"
    if settings.metric == "rfid" and metric_name != "rfid":
        raise FileNotFoundError(f"metric=rfid but no Inception weights: {report['notes'].get('rfid')}")
    fusion_params = sum(p.numel() for p in fusion.parameters()) if fusion is not None else 0
    model = trainer.model
    record = {
        "name": name,
        "phase": phase,
        "overrides": overrides,
        "metric_name": metric_name,
        "metric": report["metrics"][metric_name],
        "metrics": report["metrics"],
        "num_images": report["num_images"],
        "fusion_params": fusion_params,
        "expert_hidden": fusion.expert_hidden if fusion is not None else None,
        "num_fused_layers": len(fusion.layers) if fusion is not None else 0,
        "latent_layers": model.latent_layers,
        "latent_global_mean": model.latent_global_mean,
        "dim": model.backbone.hidden_size,
        "steps": result.steps,
        "latent_shift_fd": latent_shift(result.model_dir, settings.eval_data, settings.eval_num),
    }
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


@torch.no_grad()
def latent_shift(model_dir: str | Path, eval_data: str | Path, num: int | None = None, batch_size: int = 32) -> float:
    """Fréchet distance between the token distributions of the model's latent ``z_final`` and RAE's latent
    ``LN_bb(z^(L))`` on ``eval_data``: how far fusion (or a layer-mean base) moves the latent a diffusion model
    would have to learn (a cheap stand-in for "DiT loss at epoch 12")."""
    from ..evaluation.metrics import FeatureStats, frechet_distance
    from ..evaluation.reconstruction import EvalImages
    from ..tokenizer.model import DRoRAE

    model = DRoRAE.from_pretrained(model_dir).eval()
    data = EvalImages(eval_data, model.decoder.config.image_size, num)
    base, final = FeatureStats(), FeatureStats()
    for start in range(0, len(data), batch_size):
        items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
        images = [it["image"] for it in items if it["image"] is not None]
        if not images:
            continue
        feats = model.backbone(torch.stack(images).float() / 255)
        z_final = model.tokens_from_features(feats)[0]
        base.update(feats.z_base.flatten(0, 1))  # RAE's latent, whatever base the model's fusion corrects
        final.update(z_final.flatten(0, 1))
    return frechet_distance(base.mean, base.covariance, final.mean, final.covariance)


# -- scaling (appendix C) -------------------------------------------------------------------------------------


def fit_log_linear(params: list[float], metric: list[float]) -> dict[str, float]:
    """Least-squares ``metric = a * log10(params) + b`` and its R^2."""
    if len(params) < 2 or len(set(params)) < 2:
        raise ValueError(f"a fit needs at least 2 distinct parameter counts, got {params}")
    x, y = np.log10(np.asarray(params, dtype=np.float64)), np.asarray(metric, dtype=np.float64)
    a, b = np.polyfit(x, y, 1)
    residual = float(((y - (a * x + b)) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - residual / total if total > 0 else 1.0
    return {"a": float(a), "b": float(b), "r2": r2, "points": len(params)}


def expected_fusion_params(dim: int, num_layers: int, expert_hidden: int) -> int:
    """Appendix C's count plus what its formula leaves out of our expert: the LayerNorm's affine weight and the
    second layer's bias are ``h + C`` more per expert than the formula's ``2 h`` (it counts ``h`` for each bias)."""
    return paper_param_count(dim, num_layers, expert_hidden) + num_layers * (expert_hidden + dim)


def layer_mean_set(num_layers: int, k: int) -> list[int]:
    """The K blocks (1-based) of a layer-mean point: every other block ending at the last while that fits (RAEv2's
    "k7" on 24 blocks: 12, 14, ..., 24), else the deepest K (its "k23": all but the first)."""
    if not 1 <= k <= num_layers:
        raise ValueError(f"--latent-layers {k} is not in 1..{num_layers} (the backbone's blocks)")
    if 2 * k - 1 <= num_layers:
        return list(range(num_layers - 2 * (k - 1), num_layers + 1, 2))
    return list(range(num_layers - k + 1, num_layers + 1))


def run_layer_mean_point(settings: SweepSettings, k: int, total_blocks: int) -> dict[str, Any]:
    """RAEv2's K axis under the same protocol as a fusion point: the sweep's phase-1 decoder continues for the same
    steps (phase 1) on the layer mean of :func:`layer_mean_set` (with RAEv2's global term); no fusion parameters."""
    from ..tokenizer.model import DRoRAE
    from ..tokenizer.training.trainer import resolve_model_dir

    name = f"mean_k{k}"
    start = Path(settings.out) / "points" / name / "start"
    if not (start / "config.json").is_file():
        source = resolve_model_dir(settings.init)
        model = DRoRAE.from_pretrained(source)
        model.set_latent_rule(layer_mean_set(total_blocks, k), global_mean=k > 1)
        backbone = model.config.backbone.name_or_path
        if backbone and (source / backbone).is_dir():  # the phase-1 model's own copy: reference it, don't copy it
            model.config.backbone.name_or_path = str((source / backbone).resolve())
        model.save_pretrained(start, save_backbone=model.config.backbone.name_or_path is None)
    return run_point(settings, name, [], phase="1", init=start)


def run_scaling(
    settings: SweepSettings, expert_hidden: list[int], layers: list[int], latent_layers: list[int] = ()
) -> dict[str, Any]:
    """Every (h, N) point of the grid (N = the deepest N blocks), the fits per axis and jointly, the layer-mean
    points of ``latent_layers`` (K values), and the figure."""
    total_blocks = _backbone_blocks(settings.init)
    points = []
    for n in layers:
        if not 1 <= n <= total_blocks:
            raise ValueError(f"--layers {n} is not in 1..{total_blocks} (the backbone's blocks)")
        fused = list(range(total_blocks - n + 1, total_blocks + 1))
        for h in expert_hidden:
            overrides = [
                "model.fusion.preset=null",
                f"model.fusion.expert_hidden={h}",
                f"model.fusion.layers=[{','.join(map(str, fused))}]",
            ]
            record = run_point(settings, f"h{h}_n{n}", overrides)
            expected = expected_fusion_params(record["dim"], n, h)
            if record["fusion_params"] != expected:
                raise AssertionError(
                    f"point h={h}, N={n}: the model has {record['fusion_params']} fusion parameters, "
                    f"appendix C's formula (+ LN affine and second bias) gives {expected}"
                )
            record["paper_formula_params"] = paper_param_count(record["dim"], n, h)
            points.append(record)
    means = [run_layer_mean_point(settings, k, total_blocks) for k in latent_layers]
    metric_name = points[0]["metric_name"]
    fits: dict[str, Any] = {"expert_axis": {}, "layer_axis": {}}
    for n in layers:
        row = [p for p in points if p["num_fused_layers"] == n]
        if len({p["expert_hidden"] for p in row}) >= 2:
            fits["expert_axis"][f"N={n}"] = fit_log_linear(
                [p["fusion_params"] for p in row], [p["metric"] for p in row]
            )
    for h in expert_hidden:
        col = [p for p in points if p["expert_hidden"] == h]
        if len({p["num_fused_layers"] for p in col}) >= 2:
            fits["layer_axis"][f"h={h}"] = fit_log_linear([p["fusion_params"] for p in col], [p["metric"] for p in col])
    if len({p["fusion_params"] for p in points}) >= 2:
        fits["joint"] = fit_log_linear([p["fusion_params"] for p in points], [p["metric"] for p in points])
    report = {
        "metric": metric_name,
        "points": points,
        "layer_mean_points": means,
        "fits": fits,
        "expert_hidden": expert_hidden,
        "layers": layers,
        "latent_layers": list(latent_layers),
    }
    out = Path(settings.out)
    report["figure"] = plot_scaling(report, out / "scaling.png").name
    (out / "scaling.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _backbone_blocks(init: str | Path) -> int:
    """L, the block count of the backbone the sweep's phase-1 model was trained on."""
    from ..tokenizer.model import upgrade_legacy_config
    from ..tokenizer.training.trainer import resolve_model_dir

    config = json.loads((resolve_model_dir(init) / "config.json").read_text())
    return int(upgrade_legacy_config(config)["backbone"]["num_layers"])


def plot_scaling(report: dict[str, Any], path: Path) -> Path:
    """The paper's figure-5 panels: the metric against fusion parameters (log axis), per expert width and per
    layer count, each series with its log-linear fit."""
    from .analysis.figures import new_figure, save_figure

    points, metric = report["points"], report["metric"]
    means = report.get("layer_mean_points") or []
    fig = new_figure((15.0 if means else 10.0, 4.0), layout="constrained")
    axes = fig.subplots(1, 3 if means else 2)
    for ax, key, fixed, label in (
        (axes[0], "num_fused_layers", "expert_axis", "N"),
        (axes[1], "expert_hidden", "layer_axis", "h"),
    ):
        for value in sorted({p[key] for p in points}):
            series = sorted((p for p in points if p[key] == value), key=lambda p: p["fusion_params"])
            xs, ys = [p["fusion_params"] for p in series], [p["metric"] for p in series]
            line = ax.plot(xs, ys, "o", label=f"{label}={value}")[0]
            fit = report["fits"][fixed].get(f"{label}={value}")
            if fit is not None:
                grid = np.geomspace(min(xs), max(xs), 50)
                ax.plot(
                    grid,
                    fit["a"] * np.log10(grid) + fit["b"],
                    "-",
                    color=line.get_color(),
                    label=f"fit R^2={fit['r2']:.2f}",
                )
        ax.set_xscale("log")
        ax.set_xlabel("fusion parameters")
        ax.set_ylabel(metric + (" (held-out, dB)" if metric == "psnr" else ""))
        ax.set_title("expert width varies" if label == "N" else "fused layers vary", fontsize=10)
        ax.legend(fontsize=7)
    if means:  # RAEv2's axis: no parameters, so against K, with the fusion points' range for reference
        ks = [len(p["latent_layers"]) for p in means]
        axes[2].plot(ks, [p["metric"] for p in means], "o-", color="C3", label="layer mean (RAEv2)")
        values = [p["metric"] for p in points]
        axes[2].axhspan(min(values), max(values), color="C0", alpha=0.15, label="fusion points' range")
        axes[2].set_xlabel("K, layers averaged (0 parameters)")
        axes[2].set_ylabel(metric + (" (held-out, dB)" if metric == "psnr" else ""))
        axes[2].set_title("layer mean: layer set varies", fontsize=10)
        axes[2].legend(fontsize=7)
    joint = report["fits"].get("joint")
    if joint:
        fig.suptitle(f"{metric} = {joint['a']:.3g} log10(params) + {joint['b']:.3g}, joint R^2 = {joint['r2']:.2f}")
    return save_figure(fig, path)


def parse_int_list(text: str) -> list[int]:
    """``"128,512"`` -> ``[128, 512]``, naming the bad entry."""
    out = []
    for item in text.split(","):
        try:
            out.append(int(item))
        except ValueError:
            raise ValueError(f"{item!r} in {text!r} is not an integer") from None
    if not out or any(v <= 0 for v in out):
        raise ValueError(f"{text!r} must list positive integers")
    return out


# -- ablations (tables 3-4 and what the paper left open) ---------------------------------------------------------

ABLATION_GROUPS = ("design", "beta", "energy_norm", "strategy")
BETAS = (0.05, 0.1, 0.2, 0.5, 1.0)
DEFAULT_CELL = "energy_incremental"  # the paper's module: energy routing, incremental correction, beta 0.2


def ablation_cells(groups: tuple[str, ...], max_steps: int) -> list[dict[str, Any]]:
    """The cells of the requested groups, in table order: ``{group, label, point, phase, overrides, init_point}``.

    Cells that are the same run (the default module appears in every group) share one point.
    """
    from ..tokenizer.fusion import CORRECTIONS, ROUTINGS

    cells = []

    def cell(group, label, point, overrides=(), phase="2", init_point=None):
        cells.append(
            {
                "group": group,
                "label": label,
                "point": point,
                "phase": phase,
                "overrides": list(overrides),
                "init_point": init_point,
            }
        )

    for group in groups:
        if group not in ABLATION_GROUPS:
            raise ValueError(f"ablation group {group!r} is not one of {ABLATION_GROUPS}")
        if group == "design":  # table 3
            for routing in ROUTINGS:
                for correction in CORRECTIONS:
                    cell(
                        group,
                        f"{routing} routing, {correction}",
                        f"{routing}_{correction}",
                        [f"model.fusion.routing={routing}", f"model.fusion.correction={correction}"],
                    )
        elif group == "beta":
            for beta in BETAS:
                point = DEFAULT_CELL if beta == 0.2 else f"beta_{beta}"
                cell(group, f"beta = {beta}", point, [f"model.fusion.beta={beta}"])
        elif group == "energy_norm":  # eq. 4's l2 division, which the LayerNorm after it cancels up to eps
            cell(group, "energy normalisation on (eq. 4)", DEFAULT_CELL)
            cell(group, "energy normalisation off", "energy_norm_off", ["model.fusion.energy_norm=false"])
        else:  # table 4 (fusion only / + decoder / + backbone) and the joint training the paper leaves open
            cell(group, "fusion only (phase 2)", DEFAULT_CELL)
            cell(group, "three-phase: + decoder (phase 3)", "three_phase", phase="3", init_point=DEFAULT_CELL)
            cell(group, "+ decoder and backbone (phase full)", "full", phase="full", init_point=DEFAULT_CELL)
            cell(
                group,
                f"joint fusion + decoder, {2 * max_steps} steps",
                "joint",
                [f"train.max_steps={2 * max_steps}"],
                phase="joint",
            )
    return cells


def run_ablation(settings: SweepSettings, groups: tuple[str, ...] = ABLATION_GROUPS) -> dict[str, Any]:
    """Every cell of ``groups`` (one resumable point each, shared where cells coincide); ``ablation.json`` and
    ``ablation.md`` with the reconstruction metric and the latent-shift FD per cell."""
    from ..tokenizer.training import load_config

    max_steps = load_config(settings.config, list(settings.overrides)).train.max_steps
    cells = ablation_cells(tuple(groups), max_steps)
    records: dict[str, dict[str, Any]] = {}
    for c in cells:
        if c["point"] not in records:
            init = Path(settings.out) / "points" / c["init_point"] if c["init_point"] else None
            if c["init_point"] and c["init_point"] not in records:
                records[c["init_point"]] = run_point(settings, c["init_point"], [])
            records[c["point"]] = run_point(settings, c["point"], c["overrides"], phase=c["phase"], init=init)
        record = records[c["point"]]
        c.update(
            metric=record["metric"],
            metric_name=record["metric_name"],
            psnr=record["metrics"]["psnr"],
            latent_shift_fd=record["latent_shift_fd"],
        )
    report = {"cells": cells, "points": records, "metric": cells[0]["metric_name"] if cells else None}
    out = Path(settings.out)
    report["figure"] = plot_ablation(report, out / "ablation.png").name
    (out / "ablation.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "ablation.md").write_text(ablation_markdown(report))
    return report


def plot_ablation(report: dict[str, Any], path: Path) -> Path:
    """One bar per cell: the reconstruction metric (left) and the latent-shift FD (right, log scale)."""
    from .analysis.figures import new_figure, save_figure

    cells = report["cells"]
    labels = [f"{c['group']}: {c['label']}" for c in cells]
    fig = new_figure((11.0, 0.32 * len(cells) + 1.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    colors = {g: f"C{i}" for i, g in enumerate(ABLATION_GROUPS)}
    ys = list(range(len(cells)))[::-1]
    values = [c["metric"] for c in cells]
    axes[0].barh(ys, values, color=[colors[c["group"]] for c in cells])
    axes[0].set_xlim(
        min(values) - 0.1 * (max(values) - min(values) + 1e-9), max(values) + 0.05 * (max(values) - min(values) + 1e-9)
    )
    axes[0].set_yticks(ys, labels, fontsize=7)
    axes[0].set_xlabel(report["metric"] + (" (held-out, dB)" if report["metric"] == "psnr" else ""))
    axes[1].barh(ys, [c["latent_shift_fd"] for c in cells], color=[colors[c["group"]] for c in cells])
    axes[1].set_xscale("log")
    axes[1].set_xlabel("latent shift FD (z_final vs z_base)")
    return save_figure(fig, path)


def ablation_markdown(report: dict[str, Any]) -> str:
    metric = report["metric"]
    better = " (held-out, dB; higher is better)" if metric == "psnr" else " (lower is better)"
    lines = [
        "# Ablations under the phase-2 protocol",
        "",
        f"Metric: {metric}{better}. Latent shift: Fréchet distance between the token distributions of z_final "
        "and z_base (how far fusion moves the latent a diffusion model must learn; lower is closer to RAE's).",
        "",
    ]
    for group in ABLATION_GROUPS:
        rows = [c for c in report["cells"] if c["group"] == group]
        if not rows:
            continue
        lines += [f"## {group}", "", f"| cell | run | {metric} | latent shift FD |", "|---|---|---|---|"]
        lines += [f"| {c['label']} | `{c['point']}` | {c['metric']:.4f} | {c['latent_shift_fd']:.4f} |" for c in rows]
        lines.append("")
    if report.get("figure"):
        lines += [f"![metric and latent shift per cell]({report['figure']})", ""]
    return "\n".join(lines)


__all__ = [
    "SweepSettings",
    "run_point",
    "latent_shift",
    "fit_log_linear",
    "expected_fusion_params",
    "run_scaling",
    "layer_mean_set",
    "run_layer_mean_point",
    "plot_scaling",
    "parse_int_list",
    "ABLATION_GROUPS",
    "ablation_cells",
    "run_ablation",
    "ablation_markdown",
    "plot_ablation",
]
