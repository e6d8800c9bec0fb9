"""The tokenizer's trainer: one engine for every phase of DRoRAE (paper section 3.3, appendix A).

A phase (:mod:`drorae.tokenizer.training.phases`) is a choice of trainable parameter groups and of whether
the decoder sees latent noise. Frozen groups get no gradients and no optimizer state; the frozen
backbone runs once per step under ``torch.no_grad()``. Under ``torchrun`` the trained groups (and
the discriminator) train under :class:`~torch.nn.parallel.DistributedDataParallel`; the frozen
backbone stays outside it. The loop, checkpoints, EMA and logging are the shared
:class:`~drorae.engine.BaseTrainer`'s.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...data.folders import ImageFolderDataset
from ...engine import BaseTrainer, StepOutput
from ...engine.schedule import warmup_cosine_lr
from ...serialization import load_safetensors, load_strict, model_dir, save_safetensors
from ..losses.adversarial import quantize_fakes
from ..model import DRoRAE, DRoRAEOutput, fusion_for_backbone
from .config import TrainConfig
from .phases import Phase, get_phase

log = logging.getLogger("drorae.train")

DISCRIMINATOR_FILE = "discriminator.safetensors"  # the patch discriminator's weights in a run directory
DISCRIMINATOR_DIR = "discriminator"  # the DINO discriminator, a load_discriminator directory
GROUPS = ("backbone", "fusion", "decoder")


def resolve_model_dir(path: str | Path) -> Path:
    """Accept a run directory (``<run>/model``) or a save_pretrained directory."""
    resolved = model_dir(path)
    if (resolved / "config.json").is_file():
        return resolved
    raise FileNotFoundError(
        f"--init {path}: neither {path}/config.json nor {path}/model/config.json exists "
        "(pass the --out directory of the previous phase)"
    )


def build_model(cfg: TrainConfig, phase: str | Phase, init: str | Path | None) -> DRoRAE:
    """The model a phase starts from: ``--init``'s output, or a fresh one from ``cfg.model``."""
    phase = get_phase(phase) if isinstance(phase, str) else phase
    if init is not None:
        return prepare_for_phase(DRoRAE.from_pretrained(resolve_model_dir(init)), cfg, phase)
    if phase.needs_init:
        raise ValueError(
            f"phase {phase.name} starts from the previous phase's output: pass --init "
            f"(a phase-{phase.needs_init} --out directory)"
        )
    torch.manual_seed(cfg.train.seed)
    # The fusion module is added by the phases that train it (prepare_for_phase), not here.
    return prepare_for_phase(DRoRAE.from_config(replace(cfg.model, fusion=None)), cfg, phase)


def prepare_for_phase(model: DRoRAE, cfg: TrainConfig, phase: Phase) -> DRoRAE:
    """Add the fusion module where a phase needs a new one; switch fusion on/off; check sizes."""
    if phase.adds_fusion and model.fusion is None:
        if cfg.model.fusion is None:
            raise ValueError(f"phase {phase.name} adds a fusion module: set model.fusion (e.g. model.fusion.preset)")
        torch.manual_seed(cfg.train.seed + 1)
        model.add_fusion(fusion_for_backbone(cfg.model.fusion, model.backbone))
    if phase.fusion_on and model.fusion is None:
        raise ValueError(
            f"phase {phase.name} fine-tunes the decoder on the fused latent, but the --init model has "
            "no fusion module: pass a phase-2 output"
        )
    model.fusion_enabled = phase.fusion_on
    expected = model.decoder.config.image_size
    if cfg.data.image_size != expected:
        d = model.decoder.config
        raise ValueError(
            f"data.image_size={cfg.data.image_size} but the decoder outputs {expected}px ({d.grid_size}x"
            f"{d.grid_size} tokens x patch {d.patch_size}); set data.image_size={expected}"
        )
    return model


def set_trainable(model: DRoRAE, phase: Phase) -> dict[str, Any]:
    """Freeze everything, then unfreeze the phase's groups. Returns parameter counts per group."""
    model.requires_grad_(False)
    counts: dict[str, Any] = {}
    for name in GROUPS:
        module = getattr(model, name)
        trainable = name in phase.trains
        if module is not None:
            module.requires_grad_(trainable)
        counts[name] = sum(p.numel() for p in module.parameters()) if module is not None else 0
        counts[name + "_trainable"] = trainable
    return counts


class TrainedGroups(nn.Module):
    """The groups a phase trains, registered as one module for DDP; ``forward`` runs the whole
    tokenizer. Frozen groups are not registered, so DDP neither broadcasts nor hooks them."""

    def __init__(self, model: DRoRAE, groups: tuple[str, ...]):
        super().__init__()
        for name in groups:
            self.add_module(name, getattr(model, name))
        self.__dict__["tokenizer"] = model  # used, not registered

    def forward(self, images: Tensor, noise_tau: float) -> DRoRAEOutput:
        return self.tokenizer(images, noise_tau=noise_tau)


class DiscriminatorStep(nn.Module):
    """The discriminator's loss as a module, so that DDP averages the discriminator's gradients."""

    def __init__(self, loss_fn: nn.Module):
        super().__init__()
        self.discriminator = loss_fn.discriminator
        self.__dict__["loss_fn"] = loss_fn

    def forward(self, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        return self.loss_fn.discriminator_loss(real, fake)


class Trainer(BaseTrainer):
    """Runs one phase. ``dataset`` may replace the image folder (e.g. the demo's random crops) and
    ``model`` an in-memory model (benchmarks); otherwise the model comes from ``init`` or the config."""

    def __init__(
        self,
        cfg: TrainConfig,
        phase: str,
        out_dir: str | Path,
        *,
        data_dir: str | Path | None = None,
        init: str | Path | None = None,
        resume: bool = False,
        dataset: Any = None,
        progress: bool | None = None,
        model: DRoRAE | None = None,
    ):
        self.phase_spec = get_phase(phase)
        self.phase = self.phase_spec.name
        self.init = init
        super().__init__(
            cfg, cfg.train, cfg.optim, cfg.data, out_dir, name=self.phase_spec.label, resume=resume, progress=progress
        )
        # -- model and trainable groups
        model = (
            prepare_for_phase(model, cfg, self.phase_spec)
            if model is not None
            else build_model(cfg, self.phase_spec, init)
        )
        self.model = model.to(self.device)
        self.groups = set_trainable(self.model, self.phase_spec)
        self.noise_tau = cfg.model.noise_tau if self.phase_spec.decoder_noise else 0.0
        trained = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        # -- losses and the discriminator (carried over from the previous phase when it matches)
        self.loss_fn = self._build_loss().to(self.device)
        self.disc = self.loss_fn.discriminator
        self.disc_params = [p for p in self.disc.parameters() if p.requires_grad] if self.disc is not None else []
        self._init_discriminator(init)
        c = cfg.loss
        self.disc_opt = (
            torch.optim.AdamW(
                self.disc_params, lr=c.disc_lr, betas=tuple(c.disc_betas), weight_decay=c.disc_weight_decay
            )
            if self.disc_params
            else None
        )
        if cfg.train.compile:
            self.model.decoder.compile()
            if self.model.fusion is not None:
                self.model.fusion.compile()
        # -- data parallelism: the unfrozen backbone of phase "full" has parameters without
        # gradients (its affine final LayerNorm, the mask token), which DDP must be told about.
        self.parallel_model = self.dist.wrap(
            TrainedGroups(self.model, self.phase_spec.trains),
            find_unused_parameters="backbone" in self.phase_spec.trains,
        )
        self.parallel_disc = self.dist.wrap(DiscriminatorStep(self.loss_fn)) if self.disc_params else None
        # -- data, optimizers, EMA, resume
        if dataset is None:
            d = cfg.data
            dataset = ImageFolderDataset(
                data_dir, d.image_size, random_flip=d.random_flip, seed=cfg.train.seed, crop=d.crop, resize=d.resize
            )
        self.setup(trained, dataset, extra_optimizers={"disc_opt": self.disc_opt} if self.disc_opt else None)

    # -- losses -------------------------------------------------------------------------------
    def _build_loss(self):
        from ..losses import ReconstructionLoss, build_discriminator, build_perceptual_loss

        c = self.config.loss
        perceptual = None
        if c.perceptual != "none" and c.perceptual_weight > 0:
            perceptual = build_perceptual_loss(c.perceptual, c.lpips_vgg_path)
        disc = None
        if c.discriminator != "none" and c.gan_weight > 0:
            if c.discriminator == "patch":
                disc = build_discriminator("patch", base_channels=c.disc_channels)
            else:  # "dino", or a discriminator directory named directly
                disc = self._dino_discriminator()
        return ReconstructionLoss(
            l1_weight=c.l1_weight,
            mse_weight=c.mse_weight,
            perceptual=perceptual,
            perceptual_weight=c.perceptual_weight,
            gan_weight=c.gan_weight,
            discriminator=disc,
            diffaug_policy=c.diffaug_policy,
            diffaug_prob=c.diffaug_prob,
            diffaug_cutout=c.diffaug_cutout,
            disc_start=c.disc_start_step,
            disc_update_start=c.disc_update_start_step,
            max_adaptive_weight=c.max_adaptive_weight,
        )

    def _dino_discriminator(self):
        """The previous phase's trained discriminator when ``--init`` holds one, else ``loss.disc_backbone``."""
        from ..losses import build_discriminator, load_discriminator

        c = self.config.loss
        carried = Path(self.init) / DISCRIMINATOR_DIR if self.init is not None else None
        if carried is not None and (carried / "config.json").is_file():
            if self.is_main:
                print(f"discriminator initialised from {carried}", flush=True)
            return load_discriminator(carried)
        if c.discriminator != "dino":  # a discriminator directory (validated to exist)
            return build_discriminator("dino", path=Path(c.discriminator).expanduser())
        if not c.disc_backbone:
            raise ValueError(
                "loss.discriminator=dino needs loss.disc_backbone: RAE's dino_vit_small_patch8_224.pth (or another "
                "DINO .pth of its layout), or a discriminator directory from `drorae import-rae-disc`; or use "
                "loss.discriminator=patch"
            )
        path = Path(c.disc_backbone).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"loss.disc_backbone={c.disc_backbone}: no such file or directory")
        if path.is_dir():
            return build_discriminator("dino", path=path)
        torch.manual_seed(self.config.train.seed + 2)  # the heads' initialisation
        return build_discriminator(
            "dino",
            path=path,
            recipe=c.disc_recipe,
            key_depths=list(c.disc_key_depths),
            ks=c.disc_ks,
            norm_type=c.disc_norm,
        )

    def _disc_state(self) -> dict[str, Tensor]:
        """The discriminator's trained state (heads, spectral-norm buffers), not its frozen feature network."""
        if self.disc is None:
            return {}
        frozen = {n for n, p in self.disc.named_parameters() if not p.requires_grad}
        return {k: v for k, v in self.disc.state_dict().items() if k not in frozen}

    def _init_discriminator(self, init: str | Path | None) -> None:
        """Carry the previous phase's patch discriminator over (its run dir holds discriminator.safetensors)."""
        if self.disc is None or init is None or not (Path(init) / DISCRIMINATOR_FILE).is_file():
            return
        path = Path(init) / DISCRIMINATOR_FILE
        state = load_safetensors(path)
        if set(state) != set(self._disc_state()):
            log.warning("not reusing %s: it belongs to a different discriminator", path)
            return
        load_strict(self.disc, state, source=path)
        if self.is_main:
            print(f"discriminator initialised from {path}", flush=True)

    def disc_lr_at(self, step: int) -> float:
        """The discriminator's rate at trainer step ``step``: its own schedule, counted in its updates."""
        c = self.config.loss
        updates = step - c.disc_update_start_step
        total = c.disc_decay_steps or self.loop.max_steps
        return warmup_cosine_lr(updates, c.disc_lr, c.disc_warmup_steps, total, c.disc_min_lr_ratio)

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

    def generator_losses(self, images: Tensor, out: DRoRAEOutput) -> dict[str, Tensor]:
        """The tokenizer's loss terms for one micro-batch (``"total"`` is backpropagated)."""
        return self.loss_fn(images, out.reconstruction, self._adaptive_anchor(out.reconstruction), self.step)

    @torch.no_grad()
    def fresh_reconstruction(self, images: Tensor, out: DRoRAEOutput) -> Tensor:
        """The reconstruction by the just-updated weights, in eval mode (no latent noise): RAE's D-step input.

        The frozen backbone's pass of the generator step is reused (RAE runs the encoder again; its output is
        the same); only what the phase trains runs again.
        """
        model = self.model
        was_training = model.training
        model.eval()
        try:
            if "backbone" in self.phase_spec.trains or out.features is None:
                return model(images, noise_tau=0.0).reconstruction
            tokens = model.tokens_from_features(out.features)[0] if "fusion" in self.phase_spec.trains else out.tokens
            return model.decode_tokens(tokens)
        finally:
            model.train(was_training)

    # -- one optimizer step ---------------------------------------------------------------------
    def train_step(self, micro_batches: list[Tensor], nonfinite: Tensor) -> StepOutput:
        """One optimizer step over ``grad_accum`` micro-batches (+ the discriminator's step).

        Returns detached losses, the last micro-batch and its reconstruction. ``nonfinite`` (a
        device bool) is or-ed with "the loss was NaN/inf" without a host sync.
        """
        self.set_lr()
        for p in self.disc_params:
            p.requires_grad_(False)  # D is a fixed critic in the G step; input grads still flow
        last = len(micro_batches) - 1
        weights = self.micro_batch_weights(micro_batches)
        for i, x in enumerate(micro_batches):
            x = x.to(self.device, non_blocking=True)
            # DDP averages gradients once, in the last micro-batch's backward
            no_sync = self.parallel_model.no_sync() if self.dist.enabled and i < last else nullcontext()
            with no_sync:
                with self.autocast():
                    out = self.parallel_model(x, self.noise_tau)
                    losses = self.generator_losses(x, out)
                (losses["total"] * weights[i]).backward()
            nonfinite |= ~torch.isfinite(losses["total"].detach())
        grad_norm = self.clip_and_step()
        # -- discriminator step (RAE's): on the updated decoder's reconstruction, without latent noise, 8-bit
        for p in self.disc_params:
            p.requires_grad_(True)
        if self.parallel_disc is not None and self.loss_fn.discriminator_active(self.step):
            with self.autocast():
                fakes = quantize_fakes(self.fresh_reconstruction(x, out))
            for group in self.disc_opt.param_groups:
                group["lr"] = self.disc_lr_at(self.step)
            self.disc_opt.zero_grad(set_to_none=True)
            with self.autocast():
                d_losses = self.parallel_disc(x, fakes)
            d_losses["total"].backward()
            self.disc_opt.step()
            losses = {**losses, **{f"disc/{k}": v for k, v in d_losses.items() if k != "total"}}
        self.step += 1
        detached = {k: v.detach() for k, v in losses.items()}
        detached["grad_norm"] = grad_norm
        return StepOutput(losses=detached, images=x, outputs=out.reconstruction.detach())

    # -- reporting, checkpoints, export -----------------------------------------------------------
    def describe(self) -> None:
        g = self.groups
        lines = [f"phase {self.phase}: trainable parameter groups"]
        for name in GROUPS:
            lines.append(
                f"  {name:<9} {g[name]:>13,} parameters  {'trainable' if g[name + '_trainable'] else 'frozen'}"
            )
        lines.append(
            f"  total trainable {sum(p.numel() for _, p in self.trained):,}; decoder noise_tau={self.noise_tau}; "
            f"precision={'bf16' if self.bf16 else 'fp32'}; world_size={self.world}"
        )
        if self.disc is not None:
            lines.append(
                f"  discriminator {type(self.disc).__name__}: {sum(p.numel() for p in self.disc_params):,} trainable"
            )
        print("\n".join(lines), flush=True)
        (self.out / "trainable_groups.json").write_text(json.dumps(self.groups, indent=2))

    def checkpoint_extra(self) -> tuple[dict[str, Tensor], dict]:
        return {f"disc.{k}": v for k, v in self._disc_state().items()}, {"phase": self.phase}

    def load_checkpoint_extra(self, tensors: dict[str, Tensor], state: dict, path: Path) -> None:
        if self.disc is not None:  # the checkpoint holds the trained part; the frozen feature network is the config's
            trained = self._disc_state()
            state = {k: v for k, v in self.disc.state_dict().items() if k not in trained}
            state.update({k[5:]: v for k, v in tensors.items() if k.startswith("disc.")})
            load_strict(self.disc, state, source=path)

    def export(self) -> Path:
        """Write the EMA weights as a save_pretrained directory (raw weights stay in the checkpoint)."""
        model_dir = self.out / "model"
        if self.is_main:
            with self.ema_weights():
                self.model.save_pretrained(model_dir, save_backbone=True)
            (model_dir / "training.json").write_text(
                json.dumps(
                    {"phase": self.phase, "steps": self.step, "weights": "ema", "ema_decay": self.optim.ema_decay},
                    indent=2,
                )
            )
            from ...card import write_model_card

            write_model_card(model_dir)  # again: the card's training section reads training.json
            if self.disc is not None:  # lets the next phase start with a trained critic
                if hasattr(self.disc, "save_pretrained"):
                    self.disc.save_pretrained(self.out / DISCRIMINATOR_DIR)
                else:
                    save_safetensors(self._disc_state(), self.out / DISCRIMINATOR_FILE)
        self.dist.barrier()
        return model_dir
