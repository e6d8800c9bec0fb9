"""The generic training loop that every drorae trainer shares.

:class:`BaseTrainer` owns what does not depend on the model: devices and ``torchrun`` ranks, the
resumable sharded data stream, the learning-rate schedule, the EMA, logging, non-finite-loss
stops, and checkpoints (safetensors + JSON, atomic) that restore model, EMA, optimizers, data
position and every rank's own RNG state, so a killed run resumes to the same weights. A subclass
builds its model, calls :meth:`setup` with what it trains, and implements :meth:`train_step`
and :meth:`export` (the tokenizer's phases in :mod:`drorae.tokenizer.training`; the diffusion stage next).

Host-device syncs happen only at log and checkpoint steps.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data.folders import ResumableSampler, SkipCounter, collate_skipping
from . import checkpoint as ckpt
from .config import DataConfig, LoopConfig, OptimConfig, to_dict, to_yaml
from .distributed import setup_distributed
from .ema import EMA
from .logger import RunLogger
from .schedule import warmup_constant_linear_lr, warmup_cosine_lr

log = logging.getLogger("drorae.train")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the last checkpoint written before it is intact."""


@dataclass
class TrainResult:
    model_dir: Path
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    skipped_files: int = 0


@dataclass
class StepOutput:
    """What :meth:`BaseTrainer.train_step` returns: detached scalar losses (device tensors, no sync),
    and optionally a batch of inputs and outputs ``[B, 3, H, W]`` for the image log."""

    losses: dict[str, Tensor]
    images: Tensor | None = None
    outputs: Tensor | None = None


class BaseTrainer(ABC):
    """One training run: ``setup`` it, then :meth:`run`.

    Args:
        config: the whole run config (saved as ``train_config.yaml`` and in every checkpoint).
        loop, optim, data: its loop, optimiser and data sections.
        out_dir: the run directory (``checkpoints/``, ``tensorboard/``, ``metrics.jsonl``, exports).
        name: how logs and errors name this run (e.g. ``"phase 2"``).
        resume: continue from the latest checkpoint in ``out_dir`` (a fresh start when there is
            none yet, so that ``torchrun --max-restarts`` can relaunch the same command).
        progress: progress bar (default: when stderr is a terminal).
    """

    def __init__(
        self,
        config: Any,
        loop: LoopConfig,
        optim: OptimConfig,
        data: DataConfig,
        out_dir: str | Path,
        *,
        name: str,
        resume: bool = False,
        progress: bool | None = None,
    ):
        self.config, self.loop, self.optim, self.data = config, loop, optim, data
        self.out, self.name, self.resume = Path(out_dir), name, resume
        self.dist = setup_distributed(loop.device)
        self.device, self.rank, self.world = self.dist.device, self.dist.rank, self.dist.world_size
        self.is_main = self.dist.is_main
        self.progress = (sys.stderr.isatty() if progress is None else progress) and self.is_main
        prec = loop.precision
        self.bf16 = prec == "bf16" or (prec == "auto" and self.device.type == "cuda" and torch.cuda.is_bf16_supported())
        self.step = 0
        self.ckpt_dir = self.out / "checkpoints"
        self.skips = SkipCounter()
        self.record_indices: list[int] = []
        self.trained: list[tuple[str, torch.nn.Parameter]] = []
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.ema: EMA | None = None
        self.history: list[dict] = []
        self.collate_fn = collate_skipping  # a subclass whose data has other fields sets its own

    # -- set-up (called by the subclass once its model exists) ----------------------------------
    def setup(self, trained: list[tuple[str, torch.nn.Parameter]], dataset: Any, extra_optimizers=None) -> None:
        """Register the trained parameters (one AdamW with the schedule, and their EMA), the data
        set, further optimizers by name (e.g. a discriminator's, constant learning rate); then
        seed this rank's training randomness and resume when asked."""
        o = self.optim
        self.trained = trained
        self.opt = torch.optim.AdamW(
            [p for _, p in trained], lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay
        )
        self.optimizers = {"opt": self.opt, **(extra_optimizers or {})}
        self.ema = EMA(trained, o.ema_decay, warmup=o.ema_warmup)
        self.dataset = dataset
        if len(dataset) < self.loop.batch_size * self.world:
            raise ValueError(
                f"the dataset has {len(dataset)} images, fewer than one global batch "
                f"({self.loop.batch_size} x {self.world} ranks)"
            )
        self.sampler = ResumableSampler(len(dataset), rank=self.rank, world_size=self.world, seed=self.loop.seed)
        # Training randomness (latent noise, augmentation) gets its own per-rank seed; on resume
        # the checkpoint's RNG state of this rank replaces it.
        torch.manual_seed(self.loop.seed * 1000 + self.rank + 1)
        if self.resume:
            self._load_checkpoint()

    # -- what a subclass provides ---------------------------------------------------------------
    @abstractmethod
    def train_step(self, micro_batches: list[Any], nonfinite: Tensor) -> StepOutput:
        """One optimizer step over ``grad_accum`` micro-batches (what :meth:`batch_inputs` returns); or
        ``nonfinite`` (a device bool) with "a loss was NaN/inf" without a host sync; advance ``self.step``."""

    @abstractmethod
    def export(self) -> Path:
        """Write the run's result (rank 0) and return its directory."""

    def batch_inputs(self, batch: dict) -> Any:
        """What :meth:`train_step` receives of a collated batch (default: its images)."""
        return batch["images"]

    def batch_size_of(self, inputs: Any) -> int:
        return inputs.shape[0]

    def micro_batch_weights(self, micro_batches: list[Any]) -> list[float]:
        """Every trainer's rule for gradient accumulation: a micro-batch's mean loss is weighted by its share of
        the step's samples, so the step's gradient is that of the mean over all of them, also when a skipped file
        made one micro-batch smaller (with equal micro-batches: 1 / grad_accum each)."""
        counts = [self.batch_size_of(m) for m in micro_batches]
        return [c / sum(counts) for c in counts]

    def log_images(self, logger: RunLogger, out: StepOutput) -> None:
        """The image log at ``loop.image_every`` steps (default: inputs over outputs of the step)."""
        if out.images is not None:
            self._log_images(logger, out.images, out.outputs)

    def checkpoint_extra(self) -> tuple[dict[str, Tensor], dict]:
        """Tensors and JSON state of the subclass's own (beyond model, EMA, optimizers, data, RNG)."""
        return {}, {}

    def load_checkpoint_extra(self, tensors: dict[str, Tensor], state: dict, path: Path) -> None:  # noqa: B027
        """Restore what :meth:`checkpoint_extra` saved (optional hook: nothing by default)."""

    def close(self) -> None:
        """Release the DDP wrappers, then leave the process group this trainer joined. DDP keeps a reference to
        the group: a group destroyed under it stays alive until interpreter exit, and a gloo group torn down
        that late can abort the process ("terminate called without an active exception")."""
        for name, value in list(vars(self).items()):
            if isinstance(value, torch.nn.parallel.DistributedDataParallel):
                setattr(self, name, None)
        gc.collect()
        self.dist.shutdown()

    def describe(self) -> None:  # noqa: B027
        """Print what trains (rank 0, at the start of :meth:`run`; optional hook: nothing by default)."""

    # -- the loop ------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        o = self.optim
        if o.schedule == "constant-linear":
            return warmup_constant_linear_lr(
                step, o.lr, o.warmup_steps, self.loop.max_steps, o.decay_steps, o.min_lr_ratio
            )
        return warmup_cosine_lr(step, o.lr, o.warmup_steps, self.loop.max_steps, o.min_lr_ratio)

    def set_lr(self) -> None:
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)

    def clip_and_step(self) -> Tensor:
        """Clip the trained gradients (``optim.grad_clip``), step, zero, update the EMA; the norm."""
        params = [p for _, p in self.trained]
        clip = self.optim.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(params, clip) if clip > 0 else torch.zeros((), device=self.device)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.update(self.step)
        return norm.detach()

    @contextmanager
    def ema_weights(self):
        """The trained parameters hold their EMA inside the block and their raw values again after it."""
        raw = [p.detach().clone() for _, p in self.trained]
        self.ema.copy_to_params()
        try:
            yield
        finally:
            with torch.no_grad():
                for (_, p), r in zip(self.trained, raw):
                    p.copy_(r)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _batches(self) -> Iterator[dict]:
        """Endless batches; epochs advance the sampler/dataset seeds; resumes mid-epoch."""
        loop = self.loop
        workers = self.data.num_workers
        # One loader for the whole run: its workers persist across epochs (the dataset's epoch reaches them through
        # shared memory, the sampler is re-iterated in this process at every epoch, from its restored position).
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=loop.batch_size,
            sampler=self.sampler,
            num_workers=workers,
            collate_fn=self.collate_fn,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(loop.seed),  # keeps the global RNG untouched
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            drop_last=True,  # every step sees a full batch (an epoch's remainder is left out, as in DiT/timm)
        )
        while True:
            self.sampler.set_epoch(self.sampler.epoch)
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.sampler.epoch)
            for batch in loader:
                self.sampler.advance(batch["num_samples"])
                self.skips.update(batch)
                if loop.record_indices:
                    self.record_indices.extend(batch["indices"].tolist())
                if batch["indices"].numel() > 0:
                    yield batch
            self.sampler.set_epoch(self.sampler.epoch + 1)

    def run(self, max_steps: int | None = None, checkpoint_every: int | None = None) -> TrainResult:
        """Train up to ``loop.max_steps`` (or stop early at ``max_steps``: the schedule still spans
        ``loop.max_steps``), checkpointing every ``checkpoint_every`` steps and at the end; export."""
        loop = self.loop
        stop_at = min(loop.max_steps, max_steps) if max_steps else loop.max_steps
        every = checkpoint_every or loop.checkpoint_every
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.yaml").write_text(to_yaml(self.config))
            self.describe()
        logger = RunLogger(
            self.out,
            enabled=self.is_main,
            progress=self.progress,
            desc=self.name,
            total=stop_at,
            initial=self.step,
            total_label=loop.max_steps,
            purge_step=self.step if self.resume else None,
        )
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        batches = self._batches()
        t_start = t_log = time.perf_counter()
        images_since_log = 0
        while self.step < stop_at:
            micro = [self.batch_inputs(next(batches)) for _ in range(loop.grad_accum)]
            out = self.train_step(micro, nonfinite)
            images_since_log += sum(self.batch_size_of(m) for m in micro)
            is_log = self.step % loop.log_every == 0 or self.step == stop_at
            is_ckpt = self.step % every == 0 or self.step == stop_at
            # The only sync, at log / checkpoint steps; every rank stops together (one rank's NaN
            # must not leave the others waiting in the next collective).
            if (is_log or is_ckpt) and any(self.dist.gather(bool(nonfinite))):
                good = ckpt.latest_checkpoint(self.ckpt_dir)
                raise NonFiniteLossError(
                    f"{self.name}: the loss became NaN/inf at or before step {self.step}; stopping. The last good "
                    f"checkpoint is {good or 'none (no checkpoint was written yet)'}; lower optim.lr or raise "
                    "optim.warmup_steps, then --resume."
                )
            if is_log:
                now = time.perf_counter()
                record = {
                    "step": self.step,
                    "lr": self.opt.param_groups[0]["lr"],
                    **{k: float(v) for k, v in out.losses.items()},
                    "images_per_s": images_since_log * self.world / max(now - t_log, 1e-9),
                }
                t_log, images_since_log = now, 0
                logger.log(record)
            if loop.image_every and self.step % loop.image_every == 0:
                self.log_images(logger, out)
            if is_ckpt:
                self._save_checkpoint()
            logger.advance()
        logger.close()
        self.history = logger.history
        seconds = time.perf_counter() - t_start
        if loop.record_indices:
            (self.out / f"indices_rank{self.rank}.json").write_text(json.dumps(self.record_indices))
        model_dir = self.export()
        skipped = sum(self.dist.gather(self.skips.count))
        if self.is_main:
            summary = self.skips.summary() if self.world == 1 else f"skipped {skipped} unreadable files on all ranks"
            if skipped:
                log.warning("%s", summary)
            print(
                f"{self.name}: {self.step} steps in {seconds:.1f}s; written to {model_dir}"
                + (f"; {summary}" if skipped else ""),
                flush=True,
            )
        return TrainResult(
            model_dir=model_dir, steps=self.step, seconds=seconds, history=self.history, skipped_files=skipped
        )

    def _log_images(self, logger: RunLogger, x: Tensor, y: Tensor) -> None:
        from torchvision.utils import make_grid

        n = min(4, x.shape[0])
        grid = make_grid(torch.cat([x[:n].float().cpu(), y[:n].detach().float().clamp(0, 1).cpu()]), nrow=n)
        logger.image("inputs (top) and outputs (bottom)", grid, self.step)

    # -- checkpoints ---------------------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        rng_states = self.dist.gather(ckpt.capture_rng())  # every rank's own, in rank order
        if not self.is_main:
            self.dist.barrier()
            return
        tensors: dict[str, Tensor] = {f"model.{n}": p.detach() for n, p in self.trained}
        tensors.update({f"ema.{n}": s for n, s in self.ema.state_dict().items()})
        optimizers = {}
        for key, opt in self.optimizers.items():
            opt_tensors, optimizers[key] = ckpt.flatten_optimizer(opt, key)
            tensors.update(opt_tensors)
        rng_tensors, rng_meta = ckpt.rng_to_checkpoint(rng_states)
        tensors.update(rng_tensors)
        extra_tensors, extra_state = self.checkpoint_extra()
        tensors.update(extra_tensors)
        state = {
            "name": self.name,
            "step": self.step,
            "world_size": self.world,
            "sampler": self.sampler.state_dict(),
            "skips": self.skips.state_dict(),
            "optimizers": optimizers,
            "rng": rng_meta,
            "config": to_dict(self.config),
            **extra_state,
        }
        path = ckpt.write_checkpoint(self.ckpt_dir, self.step, tensors, state, keep=self.loop.keep_checkpoints)
        log.info("checkpoint %s", path)
        self.dist.barrier()

    def _load_checkpoint(self) -> None:
        path = ckpt.latest_checkpoint(self.ckpt_dir)
        if path is None:
            if self.is_main:
                print(
                    f"--resume: no checkpoint under {self.ckpt_dir} yet; starting {self.name} from step 0", flush=True
                )
            return
        tensors, state = ckpt.read_checkpoint(path)
        if state.get("name") != self.name:
            raise ValueError(f"--resume: {path} is a checkpoint of {state.get('name')!r}, not of {self.name!r}")
        imported = state.get("imported")  # written by an importer (e.g. import-rae-stage1): weights and optimizers only
        if imported is None and state["world_size"] != self.world:
            raise ValueError(
                f"--resume: {path} was written by {state['world_size']} ranks; this run has {self.world} "
                "(the data position and each rank's RNG state are per rank)"
            )
        with torch.no_grad():
            for n, p in self.trained:
                if f"model.{n}" not in tensors:
                    raise KeyError(f"--resume: {path} has no tensor model.{n}")
                p.copy_(tensors[f"model.{n}"])
        self.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        for key, opt in self.optimizers.items():
            ckpt.unflatten_optimizer(opt, tensors, state["optimizers"][key], key)
        self.load_checkpoint_extra(tensors, state, path)
        self.step = int(state["step"])
        if imported is not None:
            self.sampler.set_epoch(int(imported.get("epoch", 0)))
            if self.is_main:
                lines = "\n".join(f"  - {what}" for what in imported.get("not_carried", []))
                print(f"continuing {imported['source']} at step {self.step}; not carried over:\n{lines}", flush=True)
            return
        self.sampler.load_state_dict(state["sampler"])
        self.skips.load_state_dict(state["skips"])
        ckpt.restore_rng(tensors, state["rng"], self.rank)
        if self.is_main:
            print(f"resumed {self.name} from {path} at step {self.step}", flush=True)
