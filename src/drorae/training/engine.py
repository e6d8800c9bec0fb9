"""One training engine for every phase of DRoRAE (paper section 3.3, appendix A).

A phase is a choice of trainable parameter groups (and whether the decoder sees latent noise):

    phase   trains               fusion   decoder noise   starts from
    1       decoder              off      yes             scratch (or --init)
    2       fusion               on       no              a phase-1 output (fusion added if absent)
    3       decoder              on       yes             a phase-2 output
    joint   fusion + decoder     on       yes             a phase-1 output or scratch (ablation)
    full    decoder + backbone   on       yes             a phase-2 output (table 4, row 3)

Frozen groups get no gradients and no optimizer state; the frozen backbone runs once per step
under ``torch.no_grad()``. Distributed runs (``torchrun``) shard the data per rank and average
the gradients of the trained parameters with one bucketed all-reduce per optimizer step;
only rank 0 writes. Host-device syncs happen only at log / checkpoint steps.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..backbones import FrozenBackbone, load_backbone
from ..data import ImageFolderDataset, ResumableSampler, SkipCounter, collate_skipping
from ..decoder import DecoderConfig, RAEDecoder, decoder_config_from_preset
from ..fusion import DepthRoutedFusion
from ..tokenizer import DRoRAE, load_strict
from . import checkpoint as ckpt
from .config import PHASES, TrainConfig, to_yaml
from .ema import EMA

log = logging.getLogger("drorae.train")

PHASE_GROUPS = {
    "1": ("decoder",),
    "2": ("fusion",),
    "3": ("decoder",),
    "joint": ("fusion", "decoder"),
    "full": ("decoder", "backbone"),
}
DISCRIMINATOR_FILE = "discriminator.safetensors"
DECODER_NOISE = {"1": True, "2": False, "3": True, "joint": True, "full": True}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the last checkpoint written before it is intact."""


@dataclass
class TrainResult:
    model_dir: Path
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    skipped_files: int = 0


# --------------------------------------------------------------------------------------------
# distributed helpers
# --------------------------------------------------------------------------------------------

def _init_distributed(device_kind: str) -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def _all_reduce_mean(tensors: list[Tensor], world: int, bucket_numel: int = 1 << 25) -> None:
    """Average tensors across ranks in flat buckets (few collectives, bounded extra memory)."""
    bucket: list[Tensor] = []
    size = 0

    def flush() -> None:
        nonlocal bucket, size
        if not bucket:
            return
        flat = torch.cat([t.reshape(-1) for t in bucket])
        dist.all_reduce(flat)
        flat.div_(world)
        offset = 0
        for t in bucket:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
        bucket, size = [], 0

    for t in tensors:
        bucket.append(t)
        size += t.numel()
        if size >= bucket_numel:
            flush()
    flush()


# --------------------------------------------------------------------------------------------
# model construction
# --------------------------------------------------------------------------------------------

def _random_backbone(cfg: TrainConfig) -> FrozenBackbone:
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    rb = cfg.model.random_backbone
    torch.manual_seed(rb.seed)
    hf = Dinov2WithRegistersConfig(hidden_size=rb.hidden_size, num_hidden_layers=rb.num_hidden_layers,
                                   num_attention_heads=rb.num_attention_heads, patch_size=rb.patch_size,
                                   num_register_tokens=rb.num_register_tokens, image_size=cfg.model.input_size)
    return FrozenBackbone(Dinov2WithRegistersModel(hf).eval(), "dinov2", input_size=cfg.model.input_size, name_or_path=None)


def _decoder_config(cfg: TrainConfig, backbone: FrozenBackbone) -> DecoderConfig:
    d = cfg.model.decoder
    common = dict(latent_dim=backbone.hidden_size, patch_size=d.patch_size, num_patches=backbone.num_tokens)
    if d.preset:
        return decoder_config_from_preset(d.preset, **common)
    return DecoderConfig(hidden_size=d.hidden_size, num_layers=d.num_layers, num_heads=d.num_heads,
                         intermediate_size=d.intermediate_size, **common)


def build_fusion(cfg: TrainConfig, backbone: FrozenBackbone) -> DepthRoutedFusion:
    f = cfg.model.fusion
    kwargs = dict(beta=f.beta, routing=f.routing, correction=f.correction, norm_eps=backbone.norm_eps,
                  layers=f.layers, activation=f.activation)
    if f.preset:
        return DepthRoutedFusion.from_preset(f.preset, backbone.num_layers, backbone.hidden_size, **kwargs)
    return DepthRoutedFusion(backbone.num_layers, backbone.hidden_size, f.expert_hidden, **kwargs)


def resolve_model_dir(path: str | Path) -> Path:
    """Accept a run directory (``<run>/model``) or a save_pretrained directory."""
    path = Path(path)
    if (path / "model" / "config.json").is_file():
        return path / "model"
    if (path / "config.json").is_file():
        return path
    raise FileNotFoundError(f"--init {path}: neither {path}/config.json nor {path}/model/config.json exists "
                            "(pass the --out directory of the previous phase)")


def build_model(cfg: TrainConfig, phase: str, init: str | Path | None) -> DRoRAE:
    """The model a phase starts from: ``--init``'s output, or a fresh one (phases 1 and joint)."""
    if phase not in PHASES:
        raise ValueError(f"phase {phase!r} is not one of {PHASES}")
    if init is not None:
        return prepare_for_phase(DRoRAE.from_pretrained(resolve_model_dir(init)), cfg, phase)
    if phase in ("2", "3", "full"):
        raise ValueError(f"phase {phase} starts from the previous phase's output: pass --init "
                         f"({'a phase-1' if phase == '2' else 'a phase-2'} --out directory)")
    torch.manual_seed(cfg.train.seed)
    backbone = (load_backbone(cfg.model.backbone, input_size=cfg.model.input_size)
                if cfg.model.backbone else _random_backbone(cfg))
    return prepare_for_phase(DRoRAE(backbone, RAEDecoder(_decoder_config(cfg, backbone))), cfg, phase)


def prepare_for_phase(model: DRoRAE, cfg: TrainConfig, phase: str) -> DRoRAE:
    """Add the fusion module where a phase needs a new one; switch fusion on/off; check sizes."""
    if phase in ("2", "joint") and model.fusion is None:
        torch.manual_seed(cfg.train.seed + 1)
        model.add_fusion(build_fusion(cfg, model.backbone))
    if phase in ("3", "full") and model.fusion is None:
        raise ValueError(f"phase {phase} fine-tunes the decoder on the fused latent, but the --init model has no "
                         "fusion module: pass a phase-2 output")
    model.fusion_enabled = phase != "1"
    expected = model.decoder.config.image_size
    if cfg.data.image_size != expected:
        raise ValueError(f"data.image_size={cfg.data.image_size} but the decoder outputs {expected}px "
                         f"({model.decoder.config.grid_size}x{model.decoder.config.grid_size} tokens x patch "
                         f"{model.decoder.config.patch_size}); set data.image_size={expected}")
    return model


def set_trainable(model: DRoRAE, phase: str) -> dict[str, int]:
    """Freeze everything, then unfreeze the phase's groups. Returns trainable counts per group."""
    model.requires_grad_(False)
    groups = {"backbone": model.backbone, "fusion": model.fusion, "decoder": model.decoder}
    counts = {}
    for name, module in groups.items():
        trainable = name in PHASE_GROUPS[phase]
        if module is not None:
            module.requires_grad_(trainable)
        counts[name] = sum(p.numel() for p in module.parameters()) if module is not None else 0
        counts[name + "_trainable"] = trainable
    return counts


# --------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------

class Trainer:
    """Runs one phase. ``dataset`` may replace the image folder (e.g. the demo's random crops) and
    ``model`` an in-memory model (benchmarks); otherwise the model comes from ``init`` or the config."""

    def __init__(self, cfg: TrainConfig, phase: str, out_dir: str | Path, *, data_dir: str | Path | None = None,
                 init: str | Path | None = None, resume: bool = False, dataset: Any = None,
                 progress: bool | None = None, loss_hook: Callable[[dict, int], dict] | None = None,
                 model: DRoRAE | None = None):
        self.cfg, self.phase, self.out = cfg, str(phase), Path(out_dir)
        self.resume, self.loss_hook = resume, loss_hook
        device_kind = "cuda" if (cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())) else "cpu"
        self.rank, self.world, local_rank = _init_distributed(device_kind)
        self.device = torch.device(f"cuda:{local_rank}" if device_kind == "cuda" else "cpu")
        if device_kind == "cuda":
            torch.cuda.set_device(self.device)
        self.is_main = self.rank == 0
        self.progress = (sys.stderr.isatty() if progress is None else progress) and self.is_main
        prec = cfg.train.precision
        self.bf16 = prec == "bf16" or (prec == "auto" and device_kind == "cuda" and torch.cuda.is_bf16_supported())

        # -- model and trainable groups
        self.model = (prepare_for_phase(model, cfg, self.phase) if model is not None
                      else build_model(cfg, self.phase, init)).to(self.device)
        self.groups = set_trainable(self.model, self.phase)
        self.noise_tau = cfg.model.noise_tau if DECODER_NOISE[self.phase] else 0.0
        self.trained = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if self.world > 1:  # identical start on every rank
            for _, p in self.trained:
                dist.broadcast(p.data, 0)

        # -- losses
        self.loss_fn = self._build_loss().to(self.device)
        self.disc = self.loss_fn.discriminator
        self.disc_params = [p for p in self.disc.parameters() if p.requires_grad] if self.disc is not None else []
        self._init_discriminator(init)

        # -- optimisers, EMA
        o = cfg.optim
        self.opt = torch.optim.AdamW([p for _, p in self.trained], lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        self.disc_opt = (torch.optim.AdamW(self.disc_params, lr=cfg.loss.disc_lr, betas=tuple(o.betas))
                         if self.disc_params else None)
        self.ema = EMA(self.trained, o.ema_decay)
        if cfg.train.compile:
            self.model.decoder.compile()
            if self.model.fusion is not None:
                self.model.fusion.compile()

        # -- data
        self.dataset = dataset if dataset is not None else ImageFolderDataset(
            data_dir, cfg.data.image_size, random_flip=cfg.data.random_flip, seed=cfg.train.seed)
        if len(self.dataset) < cfg.train.batch_size * self.world:
            raise ValueError(f"the dataset has {len(self.dataset)} images, fewer than one global batch "
                             f"({cfg.train.batch_size} x {self.world} ranks)")
        self.sampler = ResumableSampler(len(self.dataset), rank=self.rank, world_size=self.world, seed=cfg.train.seed)
        self.skips = SkipCounter()
        self.step = 0
        self.history: list[dict] = []
        self.ckpt_dir = self.out / "checkpoints"
        self.record_indices: list[int] = []
        # Training randomness (latent noise, DiffAugment) gets its own per-rank seed; on resume the
        # checkpoint's RNG state replaces it.
        torch.manual_seed(cfg.train.seed * 1000 + self.rank + 1)
        if resume:
            self._load_checkpoint()

    # ---------------------------------------------------------------------------------------
    def _build_loss(self):
        from ..losses import ReconstructionLoss, build_discriminator, build_perceptual_loss

        c = self.cfg.loss
        perceptual = None
        if c.perceptual != "none" and c.perceptual_weight > 0:
            perceptual = build_perceptual_loss(c.perceptual, c.lpips_vgg_path)
        disc = None
        if c.discriminator != "none" and c.gan_weight > 0:
            if c.discriminator == "dino":
                if not c.disc_backbone:
                    raise ValueError("loss.discriminator=dino needs loss.disc_backbone (a local DINO ViT directory); "
                                     "or use loss.discriminator=patch")
                disc = build_discriminator("dino", backbone_path=c.disc_backbone)
            else:
                disc = build_discriminator("patch", base_channels=c.disc_channels)
        return ReconstructionLoss(
            l1_weight=c.l1_weight, mse_weight=c.mse_weight, perceptual=perceptual, perceptual_weight=c.perceptual_weight,
            gan_weight=c.gan_weight, discriminator=disc, diffaug_policy=c.diffaug_policy,
            disc_start=c.disc_start_step, disc_update_start=c.disc_update_start_step,
            max_adaptive_weight=c.max_adaptive_weight)

    def _init_discriminator(self, init: str | Path | None) -> None:
        """Carry the previous phase's discriminator over (its run dir holds discriminator.safetensors)."""
        if self.disc is None or init is None:
            return
        path = Path(init) / DISCRIMINATOR_FILE
        if not path.is_file():
            return
        from ..tokenizer import load_safetensors

        state = load_safetensors(path)
        if set(state) != set(self._disc_state()):
            log.warning("not reusing %s: it belongs to a different discriminator", path)
            return
        load_strict(self.disc, state, source=path)
        if self.is_main:
            print(f"discriminator initialised from {path}", flush=True)

    def _adaptive_anchor(self, reconstruction: Tensor) -> Tensor:
        """Where the adaptive GAN weight compares gradient norms.

        The decoder's last layer when the decoder trains (Esser et al.). In phase 2 the decoder is
        frozen and the last *trained* layer sits before it, so each gradient norm would cost a full
        backward through the decoder; the decoder output is used instead (same ratio, measured
        one step later in the graph, at the cost of the loss networks only).
        """
        if self.model.decoder.pred.weight.requires_grad:
            return self.model.decoder.pred.weight
        return reconstruction

    def lr_at(self, step: int) -> float:
        o, total = self.cfg.optim, self.cfg.train.max_steps
        if step < o.warmup_steps:
            return o.lr * (step + 1) / o.warmup_steps
        progress = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
        return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    def _batches(self) -> Iterator[dict]:
        """Endless batches; epochs advance the sampler/dataset seeds; resumes mid-epoch."""
        c = self.cfg
        while True:
            self.sampler.set_epoch(self.sampler.epoch)
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.sampler.epoch)
            loader = torch.utils.data.DataLoader(
                self.dataset, batch_size=c.train.batch_size, sampler=self.sampler, num_workers=c.data.num_workers,
                collate_fn=collate_skipping, pin_memory=self.device.type == "cuda",
                generator=torch.Generator().manual_seed(c.train.seed),  # keeps the global RNG untouched
                persistent_workers=False)
            for batch in loader:
                self.sampler.advance(batch["num_samples"])
                self.skips.update(batch)
                if c.train.record_indices:
                    self.record_indices.extend(batch["indices"].tolist())
                if batch["images"].shape[0] > 0:
                    yield batch
            self.sampler.set_epoch(self.sampler.epoch + 1)

    # ---------------------------------------------------------------------------------------
    def run(self, max_steps: int | None = None, checkpoint_every: int | None = None) -> TrainResult:
        c = self.cfg
        total = c.train.max_steps
        stop_at = min(total, max_steps) if max_steps else total
        every = checkpoint_every or c.train.checkpoint_every
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.yaml").write_text(to_yaml(c))
            self._describe()
        writer = self._tensorboard()
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=stop_at, initial=self.step, desc=f"phase {self.phase}", unit="step", dynamic_ncols=True)
        self.model.train()
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        batches = self._batches()
        t_start = t_log = time.perf_counter()
        images_since_log = 0
        last: dict[str, Tensor] = {}
        while self.step < stop_at:
            micro = [next(batches)["images"] for _ in range(c.train.grad_accum)]
            last, x, rec = self.train_step(micro, nonfinite)
            images_since_log += sum(m.shape[0] for m in micro)
            lr = self.opt.param_groups[0]["lr"]

            is_log = self.step % c.train.log_every == 0 or self.step == stop_at
            is_ckpt = self.step % every == 0 or self.step == stop_at
            if is_log or is_ckpt:
                if bool(nonfinite):  # the only sync: at log / checkpoint steps
                    good = ckpt.latest_checkpoint(self.ckpt_dir)
                    raise NonFiniteLossError(
                        f"phase {self.phase}: the loss became NaN/inf at or before step {self.step}; stopping. "
                        f"The last good checkpoint is {good or 'none (no checkpoint was written yet)'}; lower "
                        f"optim.lr or raise optim.warmup_steps, then --resume.")
            if is_log:
                now = time.perf_counter()
                record = {"step": self.step, "lr": lr, **{k: float(v) for k, v in last.items()},
                          "images_per_s": images_since_log * self.world / max(now - t_log, 1e-9)}
                t_log, images_since_log = now, 0
                self._log(record, writer, bar)
            if c.train.image_every and self.step % c.train.image_every == 0 and self.is_main and writer is not None:
                self._log_images(writer, x, rec)
            if is_ckpt:
                self._save_checkpoint()
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t_start
        if c.train.record_indices:
            with open(self.out / f"indices_rank{self.rank}.json", "w") as fh:
                json.dump(self.record_indices, fh)
        model_dir = self._export()
        skipped = self._total_skipped()
        if self.is_main:
            if skipped:
                log.warning("%s", self.skips.summary())
            print(f"phase {self.phase}: {self.step} steps in {seconds:.1f}s; model written to {model_dir}"
                  + (f"; {self.skips.summary()}" if skipped else ""), flush=True)
        if writer is not None:
            writer.close()
        return TrainResult(model_dir=model_dir, steps=self.step, seconds=seconds, history=self.history, skipped_files=skipped)

    # ---------------------------------------------------------------------------------------
    def train_step(self, micro_batches: list[Tensor], nonfinite: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """One optimizer step over ``grad_accum`` micro-batches (+ the discriminator's step).

        Returns detached losses, the last micro-batch and its reconstruction. ``nonfinite`` (a
        device bool) is or-ed with "the loss was NaN/inf" without a host sync.
        """
        c = self.cfg
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(self.step)
        # -- generator / tokenizer step (gradient accumulation over micro-batches)
        for p in self.disc_params:
            p.requires_grad_(False)  # D is a fixed critic in the G step; input grads still flow
        for x in micro_batches:
            x = x.to(self.device, non_blocking=True)
            with autocast:
                out = self.model(x, noise_tau=self.noise_tau)
                losses = self.loss_fn(x, out.reconstruction, self._adaptive_anchor(out.reconstruction), self.step)
            if self.loss_hook is not None:
                losses = self.loss_hook(losses, self.step)
            (losses["total"] / len(micro_batches)).backward()
            nonfinite |= ~torch.isfinite(losses["total"].detach())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for _, p in self.trained]
        if self.world > 1:
            _all_reduce_mean(grads, self.world)
        for (_, p), g in zip(self.trained, grads):
            p.grad = g
        grad_norm = (torch.nn.utils.clip_grad_norm_([p for _, p in self.trained], c.optim.grad_clip)
                     if c.optim.grad_clip > 0 else torch.zeros((), device=self.device))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.update(self.step)
        # -- discriminator step
        for p in self.disc_params:
            p.requires_grad_(True)
        if self.disc_params and self.loss_fn.discriminator_active(self.step):
            with autocast:
                d_losses = self.loss_fn.discriminator_loss(x, out.reconstruction.detach())
            self.disc_opt.zero_grad(set_to_none=True)
            d_losses["total"].backward()
            if self.world > 1:
                _all_reduce_mean([p.grad for p in self.disc_params if p.grad is not None], self.world)
            self.disc_opt.step()
            losses = {**losses, **{f"disc/{k}": v for k, v in d_losses.items() if k != "total"}}
        self.step += 1
        last = {k: v.detach() for k, v in losses.items()}
        last["grad_norm"] = grad_norm.detach()
        return last, x, out.reconstruction.detach()

    def _describe(self) -> None:
        g = self.groups
        lines = [f"phase {self.phase}: trainable parameter groups"]
        for name in ("backbone", "fusion", "decoder"):
            state = "trainable" if g[name + "_trainable"] else "frozen"
            lines.append(f"  {name:<9} {g[name]:>13,} parameters  {state}")
        lines.append(f"  total trainable {sum(p.numel() for _, p in self.trained):,}; decoder noise_tau={self.noise_tau}; "
                     f"precision={'bf16' if self.bf16 else 'fp32'}; world_size={self.world}")
        if self.disc is not None:
            lines.append(f"  discriminator {type(self.disc).__name__}: {sum(p.numel() for p in self.disc_params):,} trainable")
        text = "\n".join(lines)
        print(text, flush=True)
        (self.out / "trainable_groups.json").write_text(json.dumps(self.groups, indent=2))

    def _tensorboard(self):
        if not self.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: logs still go to metrics.jsonl
            return None
        return SummaryWriter(str(self.out / "tensorboard"), purge_step=self.step if self.resume else None)

    def _log(self, record: dict, writer, bar) -> None:
        if not self.is_main:
            return
        self.history.append(record)
        with open(self.out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if writer is not None:
            for k, v in record.items():
                if k != "step":
                    writer.add_scalar(f"train/{k}" if "/" not in k else k, v, record["step"])
        main_keys = [k for k in record if k not in ("step", "lr", "images_per_s") and not k.startswith("disc/")][:4]
        text = " ".join(f"{k}={record[k]:.4g}" for k in main_keys)
        if bar is not None:
            bar.set_postfix_str(f"{text} {record['images_per_s']:.1f} img/s")
        else:
            print(f"phase {self.phase} step {record['step']}/{self.cfg.train.max_steps} lr={record['lr']:.3g} {text} "
                  f"{record['images_per_s']:.1f} img/s", flush=True)

    def _log_images(self, writer, x: Tensor, rec: Tensor) -> None:
        from torchvision.utils import make_grid

        n = min(4, x.shape[0])
        grid = make_grid(torch.cat([x[:n], rec[:n].detach().float().clamp(0, 1)]), nrow=n)
        writer.add_image("reconstruction (top: input, bottom: output)", grid, self.step)

    def _total_skipped(self) -> int:
        count = torch.tensor(self.skips.count)
        if self.world > 1:
            dist.all_reduce(count)
        return int(count)

    # -- checkpoints --------------------------------------------------------------------------
    def _disc_state(self) -> dict[str, Tensor]:
        frozen = {n for n, p in self.disc.named_parameters() if not p.requires_grad} if self.disc is not None else set()
        return {k: v for k, v in self.disc.state_dict().items() if k not in frozen} if self.disc is not None else {}

    def _save_checkpoint(self) -> None:
        if not self.is_main:
            if self.world > 1:
                dist.barrier()
            return
        tensors: dict[str, Tensor] = {}
        for n, p in self.trained:
            tensors[f"model.{n}"] = p.detach()
        for n, s in self.ema.state_dict().items():
            tensors[f"ema.{n}"] = s
        opt_t, opt_meta = ckpt.flatten_optimizer(self.opt, "opt")
        tensors.update(opt_t)
        state = {"phase": self.phase, "step": self.step, "sampler": self.sampler.state_dict(),
                 "skips": self.skips.state_dict(), "optimizer": opt_meta, "config": self.cfg.to_dict(),
                 "world_size": self.world}
        if self.disc is not None:
            tensors.update({f"disc.{k}": v for k, v in self._disc_state().items()})
            if self.disc_opt is not None:
                d_t, d_meta = ckpt.flatten_optimizer(self.disc_opt, "disc_opt")
                tensors.update(d_t)
                state["disc_optimizer"] = d_meta
        rng_t, rng_meta = ckpt.capture_rng()
        tensors.update(rng_t)
        state["rng"] = rng_meta
        if self.model.fusion is not None and self.phase in ("2", "joint"):
            state["fusion_config"] = self.model.fusion.config()
        path = ckpt.write_checkpoint(self.ckpt_dir, self.step, tensors, state, keep=self.cfg.train.keep_checkpoints)
        log.info("checkpoint %s", path)
        if self.world > 1:
            dist.barrier()

    def _load_checkpoint(self) -> None:
        path = ckpt.latest_checkpoint(self.ckpt_dir)
        if path is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint under {self.ckpt_dir}")
        tensors, state = ckpt.read_checkpoint(path)
        if state["phase"] != self.phase:
            raise ValueError(f"--resume: {path} is a phase-{state['phase']} checkpoint, not phase {self.phase}")
        if state.get("world_size", 1) != self.world:
            raise ValueError(f"--resume: {path} was written by {state.get('world_size')} ranks; this run has {self.world}")
        with torch.no_grad():
            for n, p in self.trained:
                key = f"model.{n}"
                if key not in tensors:
                    raise KeyError(f"--resume: {path} has no tensor {key}")
                p.copy_(tensors[key])
        self.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        ckpt.unflatten_optimizer(self.opt, tensors, state["optimizer"], "opt")
        if self.disc is not None:
            disc_state = {k[5:]: v for k, v in tensors.items() if k.startswith("disc.")}
            load_strict(self.disc, disc_state, source=path)  # heads + spectral-norm buffers
            if self.disc_opt is not None:
                ckpt.unflatten_optimizer(self.disc_opt, tensors, state["disc_optimizer"], "disc_opt")
        self.sampler.load_state_dict(state["sampler"])
        self.skips.load_state_dict(state["skips"])
        self.step = int(state["step"])
        ckpt.restore_rng({k: v for k, v in tensors.items() if k.startswith("rng.")}, state["rng"])
        if self.is_main:
            print(f"resumed phase {self.phase} from {path} at step {self.step}", flush=True)

    def _export(self) -> Path:
        """Write the EMA weights as a save_pretrained directory (raw weights stay in the checkpoint)."""
        model_dir = self.out / "model"
        if self.is_main:
            raw = [p.detach().clone() for _, p in self.trained]
            self.ema.copy_to_params()
            self.model.save_pretrained(model_dir, save_backbone=True)
            (model_dir / "training.json").write_text(json.dumps(
                {"phase": self.phase, "steps": self.step, "weights": "ema", "ema_decay": self.cfg.optim.ema_decay}, indent=2))
            with torch.no_grad():
                for (_, p), r in zip(self.trained, raw):
                    p.copy_(r)
            if self.disc is not None:  # lets the next phase start with a trained critic
                from safetensors.torch import save_file

                save_file({k: v.detach().contiguous().cpu() for k, v in self._disc_state().items()},
                          str(self.out / DISCRIMINATOR_FILE))
        if self.world > 1:
            dist.barrier()
        return model_dir
