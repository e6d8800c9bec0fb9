"""``drorae train-dit``: a class-conditional DiT^DH on a tokenizer's latents, on the shared engine.

The loop, DDP, EMA, exact resume, non-finite stops, TensorBoard and the progress bar are
:class:`~drorae.engine.BaseTrainer`'s; this module adds the model, the flow-matching step and sample grids.

Data: an image folder with class sub-folders (latents encoded on the fly by the frozen tokenizer, one
backbone pass per image) or a ``drorae cache-latents`` folder. Every sample's noise, time and label dropout
come from ``(seed, epoch, index)`` (:class:`~drorae.generation.latents.FlowMatchingSamples`), so gradient
accumulation of 2 x B equals one batch of 2B, and two ranks equal one rank with the doubled batch.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..configuration import ConfigError
from ..engine import BaseTrainer, StepOutput
from ..engine.config import DataConfig, LoopConfig, OptimConfig, check, load_yaml_config, validate_run
from ..engine.logger import RunLogger
from .dit import DIT_PRESETS, DiT, DiTConfig
from .flow import (
    TIME_DISTRIBUTIONS,
    dimension_shift,
    flow_matching_terms,
    time_from_uniform,
)
from .latents import FlowMatchingSamples, LabeledImageFolder, LatentDataset, collate_samples, stats_fingerprint


@dataclass
class FlowConfig:
    time_distribution: str = "logit-normal"  # logit-normal | uniform
    shift: float | None = None  # None: sqrt(C * h * w / 4096) of the tokenizer's latent (RAE)
    label_dropout: float = 0.1
    guidance_head_weight: float = 1.0  # weight of the free-guidance head's x-prediction loss (RAEv2: 1)


@dataclass
class SampleGridConfig:
    """The sample grid written every ``train.image_every`` steps (EMA weights, fixed noise and labels)."""

    num: int = 8
    steps: int = 25
    sampler: str = "euler"
    seed: int = 0


def _default_optim() -> OptimConfig:
    # RAE stage 2: AdamW 2e-4, betas (0.9, 0.95), no weight decay, EMA 0.9995, clip 1.0, constant lr (+ linear decay)
    return OptimConfig(lr=2e-4, betas=[0.9, 0.95], weight_decay=0.0, ema_decay=0.9995, schedule="constant-linear")


@dataclass
class DiTTrainConfig:
    dit: DiTConfig = field(default_factory=DiTConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=_default_optim)
    train: LoopConfig = field(default_factory=LoopConfig)
    samples: SampleGridConfig = field(default_factory=SampleGridConfig)


def load_dit_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DiTTrainConfig:
    cfg = load_yaml_config(DiTTrainConfig, path, overrides)
    validate_run(cfg.optim, cfg.train)
    check(
        cfg.flow.time_distribution in TIME_DISTRIBUTIONS,
        "flow.time_distribution",
        f"{cfg.flow.time_distribution!r} is not one of {TIME_DISTRIBUTIONS}",
    )
    check(0.0 <= cfg.flow.label_dropout < 1.0, "flow.label_dropout", f"{cfg.flow.label_dropout} is not in [0, 1)")
    check(cfg.flow.shift is None or cfg.flow.shift > 0, "flow.shift", f"{cfg.flow.shift} must be > 0")
    if cfg.dit.preset is not None and cfg.dit.preset not in DIT_PRESETS:
        raise ConfigError(f"unknown dit.preset {cfg.dit.preset!r}; available: {sorted(DIT_PRESETS)}")
    return cfg


def fill_dit_config(cfg: DiTConfig, latent_shape: tuple[int, int, int], num_classes: int) -> DiTConfig:
    """``cfg`` with the latent's shape and the class count filled in; a recorded value that differs is an error."""
    from ..tokenizer.model import fill_from_backbone

    cfg = fill_from_backbone(cfg, "dit", "the data's class folders", num_classes=num_classes)
    return fill_from_backbone(
        cfg, "dit", "the tokenizer's latent", in_channels=latent_shape[0], input_size=latent_shape[1]
    )


class DiTTrainer(BaseTrainer):
    """One ``train-dit`` run. ``data_dir`` (class folders, encoded on the fly) or ``latents_dir`` (a cache)."""

    def __init__(
        self,
        cfg: DiTTrainConfig,
        tokenizer_dir: str | Path,
        out_dir: str | Path,
        *,
        data_dir: str | Path | None = None,
        latents_dir: str | Path | None = None,
        resume: bool = False,
        progress: bool | None = None,
        sample_posterior: bool = False,
        image_size: int | None = None,
    ):
        from ..tokenizer.factory import load_tokenizer, tokenizer_class

        if (data_dir is None) == (latents_dir is None):
            raise ValueError("train-dit needs exactly one of --data (class folders) or --latents (a cache-latents dir)")
        super().__init__(
            cfg, cfg.train, cfg.optim, cfg.data, out_dir, name="train-dit", resume=resume, progress=progress
        )
        self.collate_fn = collate_samples
        self.tokenizer_dir = Path(tokenizer_dir)
        if latents_dir is not None and image_size is None and tokenizer_class(tokenizer_dir)[0] not in (None, "DRoRAE"):
            meta = LatentDataset(latents_dir).meta  # a VAE takes the cache's image size
            image_size = meta.get("image_size")
        self.tokenizer = load_tokenizer(
            tokenizer_dir, map_location=self.device, sample_posterior=sample_posterior, image_size=image_size
        )
        self.tokenizer.requires_grad_(False)
        self.latent_shape = tuple(self.tokenizer.latent_shape)
        self.fingerprint = stats_fingerprint(self.tokenizer)
        info = self.tokenizer.latent_info()
        if info["kind"] == "DRoRAE" and not info["latent_norm"] and self.is_main:
            print(
                f"note: {tokenizer_dir} has no latent statistics; run `drorae stats` first for RAE's per-position "
                "normalisation (training continues on un-normalised latents)",
                flush=True,
            )
        seed = cfg.train.seed
        if latents_dir is not None:
            base = LatentDataset(latents_dir, random_flip=cfg.data.random_flip, seed=seed)
            if base.meta.get("captions"):
                raise ValueError(f"{latents_dir} caches a caption set (for train-t2i); train-dit needs class folders")
            if base.meta["fingerprint"] != self.fingerprint:
                raise ValueError(
                    f"{latents_dir} was cached from latents with fingerprint {base.meta['fingerprint']} "
                    f"({base.meta['tokenizer']}), but {tokenizer_dir} gives {self.fingerprint} (another tokenizer, "
                    "other latent statistics or fusion switch): re-run cache-latents"
                )
            self.encode_on_the_fly = False
        else:
            size = self.tokenizer.image_size
            base = LabeledImageFolder(data_dir, size, random_flip=cfg.data.random_flip, seed=seed)
            self.encode_on_the_fly = True
        self.classes = list(base.classes)
        dit_cfg = fill_dit_config(cfg.dit, self.latent_shape, len(self.classes))
        self.config = replace(cfg, dit=dit_cfg)
        self.shift = cfg.flow.shift or dimension_shift(int(torch.tensor(self.latent_shape).prod()))
        torch.manual_seed(seed)
        self.dit = DiT(dit_cfg).to(self.device)
        if cfg.train.compile:
            self.dit.compile()
        self.parallel = self.dist.wrap(self.dit)
        dataset = FlowMatchingSamples(base, self.latent_shape, cfg.flow.label_dropout, seed)
        self.setup(list(self.dit.named_parameters()), dataset)

    # -- a step ------------------------------------------------------------------------------------------------
    def batch_inputs(self, batch: dict) -> dict:
        return batch

    def batch_size_of(self, inputs: dict) -> int:
        return int(inputs["labels"].shape[0])

    @torch.no_grad()
    def latents_of(self, batch: dict) -> Tensor:
        if not self.encode_on_the_fly:
            return batch["latents"].to(self.device, non_blocking=True)
        images = batch["images"].to(self.device, non_blocking=True)
        with self.autocast():
            return self.tokenizer.encode(images).float()

    def train_step(self, micro_batches: list[dict], nonfinite: Tensor) -> StepOutput:
        self.set_lr()
        last = len(micro_batches) - 1
        total = torch.zeros((), device=self.device)
        head_total = torch.zeros((), device=self.device)
        head, head_weight = self.dit.has_guidance_head, self.config.flow.guidance_head_weight
        weights = self.micro_batch_weights(micro_batches)  # the engine's rule: each by its share of the samples
        for i, batch in enumerate(micro_batches):
            x = self.latents_of(batch)
            noise = batch["noise"].to(self.device, non_blocking=True)
            t = time_from_uniform(batch["u"].to(self.device).double(), self.config.flow.time_distribution, self.shift)
            y = torch.where(batch["drop"], self.dit.null_class, batch["labels"]).to(self.device)
            no_sync = self.parallel.no_sync() if self.dist.enabled and i < last else nullcontext()
            with no_sync:
                with self.autocast():
                    terms = flow_matching_terms(self.parallel, x, noise, t.float(), y, head)
                loss = terms["flow"] + head_weight * terms["guidance_head"] if head else terms["flow"]
                (loss * weights[i]).backward()
            total += loss.detach() * weights[i]
            if head:
                head_total += terms["guidance_head"].detach() * weights[i]
            nonfinite |= ~torch.isfinite(loss.detach())
        grad_norm = self.clip_and_step()
        self.step += 1
        losses = {"loss": total, "grad_norm": grad_norm}
        return StepOutput(losses=losses | ({"guidance_head_loss": head_total} if head else {}))

    # -- sample grids --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_grid(self) -> Tensor:
        """Images [n, 3, H, W] in [0, 1] from the EMA weights: labels 0, 1, ... (cycling), the noise of samples
        0..n-1 of ``drorae sample --seed samples.seed`` (the same generation code)."""
        from .sampling import SampleSettings, generate

        s = self.config.samples
        labels = (torch.arange(s.num) % len(self.classes)).to(self.device)
        settings = SampleSettings(sampler=s.sampler, steps=s.steps, seed=s.seed)
        self.dit.eval()
        try:
            with self.ema_weights():
                images = generate(
                    self.dit, self.tokenizer, labels, list(range(s.num)), settings, self.shift, bf16=self.bf16
                )
        finally:
            self.dit.train()
        return images.clamp(0, 1).cpu()

    def log_images(self, logger: RunLogger, out: StepOutput) -> None:
        if not self.is_main or self.config.samples.num <= 0:
            return
        from torchvision.utils import make_grid, save_image

        grid = make_grid(self.sample_grid(), nrow=min(8, self.config.samples.num))
        logger.image("samples (EMA weights, classes 0, 1, ...)", grid, self.step)
        (self.out / "samples").mkdir(parents=True, exist_ok=True)
        save_image(grid, self.out / "samples" / f"step_{self.step:08d}.png")

    # -- reporting and export ------------------------------------------------------------------------------------
    def describe(self) -> None:
        d = self.dit.config
        kind = f"DiT^DH (head {d.head_hidden_size}x{d.head_depth})" if d.head_depth else "DiT"
        print(
            f"train-dit: {kind} trunk {d.hidden_size}x{d.depth}, {self.dit.parameter_count():,} parameters; latent "
            f"{list(self.latent_shape)} ({'encoded on the fly' if self.encode_on_the_fly else 'cached'}); "
            f"{len(self.classes)} classes; patch {d.patch_size}; shift {self.shift:.3f}; "
            f"precision={'bf16' if self.bf16 else 'fp32'}; "
            f"world_size={self.world}",
            flush=True,
        )
        (self.out / "classes.json").write_text(json.dumps(self.classes, indent=2) + "\n")

    def training_info(self) -> dict[str, Any]:
        return {
            "classes": self.classes,
            "tokenizer": str(self.tokenizer_dir),
            "tokenizer_kind": self.tokenizer.latent_info()["kind"],
            "fingerprint": self.fingerprint,
            "latent_shape": list(self.latent_shape),
            "image_size": self.tokenizer.image_size,
            "shift": self.shift,
            "time_distribution": self.config.flow.time_distribution,
            "steps": self.step,
            "weights": "ema",
            "ema_decay": self.optim.ema_decay,
        }

    def export(self) -> Path:
        """The EMA weights as a DiT directory (``<out>/model``); raw weights stay in the checkpoint."""
        model_dir = self.out / "model"
        if self.is_main:
            with self.ema_weights():
                self.dit.save_pretrained(model_dir, extra=self.training_info())
        self.dist.barrier()
        return model_dir
