"""``drorae train-t2i``: the MoT generator on a tokenizer's latents and caption data, on the shared engine.

The loop, DDP, EMA, exact resume, gradient accumulation, non-finite stops, TensorBoard and the progress bar are
:class:`~drorae.engine.BaseTrainer`'s. Latents are encoded on the fly by the frozen tokenizer (one backbone pass
per image), or read from a ``drorae cache-latents --captions`` folder of the same caption set (``--latents``: no
backbone pass at all; the captions still come from ``--data``). Every sample's noise, time and caption dropout
come from ``(seed, epoch, index)``, so accumulation of 2 x B equals one batch of 2B and two ranks equal one with
the doubled batch.

Loss: flow matching in drorae's convention, ``|v_theta(x_t, t, caption) - (eps - x)|^2`` averaged over latent
channels and tokens (Bagel's MSE), times ``t`` logit-normal and shifted by the latent's dimension (as ``train-dit``).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from ...data.captions import CaptionPairs, CaptionTokenizer, collate_captions
from ...data.folders import EpochSeededDataset
from ...engine import BaseTrainer, StepOutput
from ...engine.config import DataConfig, LoopConfig, OptimConfig, check, load_yaml_config, validate_run
from ...engine.logger import RunLogger
from ..flow import TIME_DISTRIBUTIONS, dimension_shift, interpolate, time_from_uniform
from ..latents import FlowMatchingSamples, LatentDataset
from .mot import MoTConfig, MoTGenerator, llm_config_from_dir, load_llm_state_dict


@dataclass
class T2IFlowConfig:
    time_distribution: str = "logit-normal"
    shift: float | None = None  # None: sqrt(C * h * w / 4096) of the tokenizer's latent, as train-dit
    text_dropout: float = 0.1  # Bagel's text_cond_dropout_prob: the caption becomes the empty context


@dataclass
class T2ITextConfig:
    max_text_tokens: int = 128  # caption tokens including the start and end tokens
    train_experts: str = "gen"  # gen: generation expert only (the LLM frozen) | all: both experts and embeddings


@dataclass
class T2IGridConfig:
    """The sample grid written every ``train.image_every`` steps (EMA weights, fixed prompts and noise)."""

    prompts: list[str] = field(default_factory=lambda: ["a photo of a cat", "a red car"])
    per_prompt: int = 2
    steps: int = 25
    scale: float = 4.0
    seed: int = 0


def _default_optim() -> OptimConfig:
    # Bagel's pre-training: AdamW 1e-4, betas (0.9, 0.95), no weight decay, 2000 warm-up steps, then constant;
    # clip 1.0, EMA 0.9999
    return OptimConfig(
        lr=1e-4, betas=[0.9, 0.95], weight_decay=0.0, warmup_steps=2000, ema_decay=0.9999, schedule="constant-linear"
    )


@dataclass
class T2ITrainConfig:
    mot: MoTConfig = field(default_factory=MoTConfig)
    flow: T2IFlowConfig = field(default_factory=T2IFlowConfig)
    text: T2ITextConfig = field(default_factory=T2ITextConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=_default_optim)
    train: LoopConfig = field(default_factory=LoopConfig)
    samples: T2IGridConfig = field(default_factory=T2IGridConfig)


def load_t2i_config(path: str | Path | None = None, overrides: list[str] | None = None) -> T2ITrainConfig:
    cfg = load_yaml_config(T2ITrainConfig, path, overrides)
    validate_run(cfg.optim, cfg.train)
    check(
        cfg.flow.time_distribution in TIME_DISTRIBUTIONS,
        "flow.time_distribution",
        f"{cfg.flow.time_distribution!r} is not one of {TIME_DISTRIBUTIONS}",
    )
    check(0.0 <= cfg.flow.text_dropout < 1.0, "flow.text_dropout", f"{cfg.flow.text_dropout} is not in [0, 1)")
    check(cfg.flow.shift is None or cfg.flow.shift > 0, "flow.shift", f"{cfg.flow.shift} must be > 0")
    check(
        cfg.text.train_experts in ("gen", "all"),
        "text.train_experts",
        f"{cfg.text.train_experts!r} is not one of ('gen', 'all')",
    )
    check(cfg.text.max_text_tokens >= 3, "text.max_text_tokens", f"{cfg.text.max_text_tokens} must be >= 3")
    return cfg


def t2i_flow_loss(model, x: Tensor, noise: Tensor, t: Tensor, text_ids: Tensor, lengths: Tensor) -> Tensor:
    """``mean |v_theta(x_t, t, caption) - (eps - x)|^2`` over channels, tokens and the batch (Bagel's MSE)."""
    x_t, target = interpolate(x, noise, t)
    return (model(x_t, t, text_ids, lengths).float() - target.float()).pow(2).mean()


class CachedCaptionPairs(EpochSeededDataset):
    """A caption cache's latents with their captions: items ``{"latent", "text_ids", "index"}``; row ``i``'s caption
    is that of the pair it was encoded from (:meth:`LatentDataset.source_index`)."""

    def __init__(self, latents: LatentDataset, pairs: CaptionPairs):
        super().__init__()
        self.latents, self.pairs = latents, pairs

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.latents.set_epoch(epoch)  # its flip draws

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> dict:
        text = self.pairs.text_item(self.latents.source_index(index), index)
        if "skipped" in text:
            return text
        return {"latent": self.latents[index]["latent"], **text, "index": index}


def cached_caption_pairs(latents_dir: str | Path, pairs: CaptionPairs, fingerprint: str, flip: bool, seed: int):
    """``--latents``'s dataset, refused by name when the cache is not of ``pairs`` through this tokenizer."""
    cache = LatentDataset(latents_dir, random_flip=flip, seed=seed)
    meta = cache.meta
    if not meta.get("captions"):
        raise ValueError(f"{latents_dir} caches class folders: run `drorae cache-latents --captions` on {pairs.root}")
    if meta["fingerprint"] != fingerprint:
        raise ValueError(
            f"{latents_dir} was cached from latents with fingerprint {meta['fingerprint']} ({meta['tokenizer']}), "
            f"but --tokenizer gives {fingerprint} (another tokenizer, latent statistics or fusion switch)"
        )
    if flip and not meta["flip"]:
        raise ValueError(
            f"data.random_flip is on but {latents_dir} holds no mirrored latents: cache with --flip, or set "
            "data.random_flip=false"
        )
    if meta["num_images"] != len(pairs):
        raise ValueError(
            f"{latents_dir} caches {meta['num_images']} pairs of {meta['data']}, but --data {pairs.root} holds "
            f"{len(pairs)}: cache the same caption set"
        )
    return CachedCaptionPairs(cache, pairs)


class T2ITrainer(BaseTrainer):
    """One ``train-t2i`` run: ``tokenizer_dir`` (a drorae tokenizer), ``llm_dir`` (a local Qwen2 checkpoint with its
    tokenizer), ``data`` (a folder of image + caption pairs, or caption shards), ``latents`` (optional: a
    ``cache-latents --captions`` folder of ``data`` through this tokenizer)."""

    def __init__(
        self,
        cfg: T2ITrainConfig,
        tokenizer_dir: str | Path,
        llm_dir: str | Path,
        data: str | Path,
        out_dir: str | Path,
        *,
        latents: str | Path | None = None,
        resume: bool = False,
        progress: bool | None = None,
    ):
        from ...tokenizer.factory import load_tokenizer
        from ..latents import stats_fingerprint

        super().__init__(
            cfg, cfg.train, cfg.optim, cfg.data, out_dir, name="train-t2i", resume=resume, progress=progress
        )
        self.tokenizer_dir, self.llm_dir = Path(tokenizer_dir), Path(llm_dir)
        self.tokenizer = load_tokenizer(tokenizer_dir, map_location=self.device)
        self.tokenizer.requires_grad_(False)
        self.latent_shape = tuple(self.tokenizer.latent_shape)
        self.fingerprint = stats_fingerprint(self.tokenizer)
        self.text = CaptionTokenizer(llm_dir, cfg.text.max_text_tokens)
        llm = llm_config_from_dir(llm_dir)
        if cfg.mot.preset is not None:
            from .mot import LLM_PRESETS

            wrong = {k: (v, llm[k]) for k, v in LLM_PRESETS[cfg.mot.preset].items() if llm.get(k) != v}
            if wrong:
                raise ValueError(f"mot.preset {cfg.mot.preset!r} differs from {llm_dir} (preset, LLM): {wrong}")
        mot_cfg = replace(
            cfg.mot, preset=None, llm=llm, token_ids=self.text.ids,
            latent_channels=self.latent_shape[0], latent_size=self.latent_shape[1],
        )  # fmt: skip
        self.config = replace(cfg, mot=mot_cfg)
        self.shift = cfg.flow.shift or dimension_shift(int(torch.tensor(self.latent_shape).prod()))
        torch.manual_seed(cfg.train.seed)
        self.mot = MoTGenerator(mot_cfg)
        self.mot.load_llm_state(load_llm_state_dict(llm_dir))
        self.mot.to(self.device)
        trained = self.mot.train_only(cfg.text.train_experts)
        if cfg.train.compile:
            self.mot.compile()
        self.parallel = self.dist.wrap(self.mot)
        base = CaptionPairs(data, self.tokenizer.image_size, self.text, cfg.data.random_flip, cfg.train.seed)
        self.unpaired = base.unpaired
        self.latents_dir = latents
        if latents is not None:
            base = cached_caption_pairs(latents, base, self.fingerprint, cfg.data.random_flip, cfg.train.seed)
        self.collate_fn = partial(collate_captions, pad_id=self.text.ids["pad"])
        # every pair's noise, time and caption dropout from (seed, epoch, index), as train-dit's labels
        self.setup(trained, FlowMatchingSamples(base, self.latent_shape, cfg.flow.text_dropout, cfg.train.seed))

    def batch_inputs(self, batch: dict) -> dict:
        return batch

    def batch_size_of(self, inputs: dict) -> int:
        return int(inputs["indices"].shape[0])

    def train_step(self, micro_batches: list[dict], nonfinite: Tensor) -> StepOutput:
        self.set_lr()
        last = len(micro_batches) - 1
        total = torch.zeros((), device=self.device)
        weights = self.micro_batch_weights(micro_batches)
        for i, batch in enumerate(micro_batches):
            if "latent" in batch:
                x = batch["latent"].to(self.device, non_blocking=True).float()
            else:
                with torch.no_grad(), self.autocast():
                    x = self.tokenizer.encode(batch["images"].to(self.device, non_blocking=True)).float()
            noise = batch["noise"].to(self.device, non_blocking=True)
            t = time_from_uniform(batch["u"].to(self.device).double(), self.config.flow.time_distribution, self.shift)
            t = t.float()
            ids = batch["text_ids"].to(self.device)
            lengths = torch.where(batch["drop"], 0, batch["text_lengths"]).to(self.device)  # the empty context
            no_sync = self.parallel.no_sync() if self.dist.enabled and i < last else nullcontext()
            with no_sync:
                with self.autocast():
                    loss = t2i_flow_loss(self.parallel, x, noise, t, ids, lengths)
                (loss * weights[i]).backward()
            total += loss.detach() * weights[i]
            nonfinite |= ~torch.isfinite(loss.detach())
        grad_norm = self.clip_and_step()
        self.step += 1
        return StepOutput(losses={"loss": total, "grad_norm": grad_norm})

    @torch.no_grad()
    def sample_grid(self) -> Tensor:
        from .sampling import T2ISampleSettings, generate_t2i

        s = self.config.samples
        captions = [p for p in s.prompts for _ in range(s.per_prompt)]
        settings = T2ISampleSettings(scale=s.scale, steps=s.steps, seed=s.seed)
        self.mot.eval()
        try:
            with self.ema_weights():
                images = generate_t2i(
                    self.mot, self.tokenizer, self.text, captions, list(range(len(captions))), settings, self.shift,
                    bf16=self.bf16,
                )  # fmt: skip
        finally:
            self.mot.train()
        return images.clamp(0, 1).cpu()

    def log_images(self, logger: RunLogger, out: StepOutput) -> None:
        s = self.config.samples
        if not self.is_main or not s.prompts or s.per_prompt <= 0:
            return
        from torchvision.utils import make_grid, save_image

        grid = make_grid(self.sample_grid(), nrow=s.per_prompt)
        logger.image("samples (EMA weights, a row per prompt)", grid, self.step)
        (self.out / "samples").mkdir(parents=True, exist_ok=True)
        save_image(grid, self.out / "samples" / f"step_{self.step:08d}.png")

    def describe(self) -> None:
        m = self.mot
        trained = sum(p.numel() for _, p in self.trained)
        print(
            f"train-t2i: MoT on Qwen2 {m.hidden_size}x{len(m.und)} ({m.parameter_count():,} parameters, {trained:,} "
            f"trained: {self.config.text.train_experts}); latent {list(self.latent_shape)}; "
            f"{len(self.dataset)} caption pairs ({self.unpaired} images without a caption left out; latents "
            f"{'from ' + str(self.latents_dir) if self.latents_dir else 'encoded every step'}); "
            f"shift {self.shift:.3f}; "
            f"precision={'bf16' if self.bf16 else 'fp32'}; world_size={self.world}",
            flush=True,
        )

    def export(self) -> Path:
        """The EMA weights (the frozen ones as they are) as a MoT directory ``<out>/model``, with the caption
        tokenizer in ``model/text_tokenizer``."""
        model_dir = self.out / "model"
        if self.is_main:
            info = {
                "tokenizer": str(self.tokenizer_dir),
                "llm": str(self.llm_dir),
                "fingerprint": self.fingerprint,
                "latent_shape": list(self.latent_shape),
                "shift": self.shift,
                "max_text_tokens": self.config.text.max_text_tokens,
                "train_experts": self.config.text.train_experts,
                "steps": self.step,
                "weights": "ema",
            }
            with self.ema_weights():
                self.mot.save_pretrained(model_dir, extra=info)
            self.text.save_pretrained(model_dir / "text_tokenizer")
        self.dist.barrier()
        return model_dir
