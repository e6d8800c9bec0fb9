"""A diffusers VAE directory as a tokenizer: encode and decode through diffusers itself, latents scaled as its
pipelines scale them (or by drorae's exact per-channel statistics once ``drorae stats`` has measured them).

Supported ``config.json`` ``_class_name`` values and the pipeline whose latent convention each follows (read from
diffusers' ``pipelines/`` source; ``z`` is the posterior mean, or a draw with ``sample_posterior``):

* ``AutoencoderKL`` (SD-VAE, SDXL, SD3.x, FLUX.1): with ``latents_mean``/``latents_std`` in the config (SDXL's
  img2img) ``(z - mean) * scaling_factor / std``; else with ``shift_factor`` (SD3, FLUX.1) ``(z - shift) *
  scaling_factor``; else (SD) ``z * scaling_factor``;
* ``AutoencoderKLFlux2`` (FLUX.2): ``z`` patchified 2 x 2 (``[B, 4C, h/2, w/2]``), then ``(z - bn.running_mean) /
  sqrt(bn.running_var + batch_norm_eps)``;
* ``AutoencoderKLQwenImage`` (Qwen-Image): the image as a one-frame video ``[B, 3, 1, H, W]``, ``z`` its frame,
  ``(z - latents_mean) * (1 / latents_std)``;
* ``AutoencoderDC`` (Sana): a deterministic latent, ``z * scaling_factor``.

Images go in as ``2 x - 1`` and come out as ``y / 2 + 1/2`` (diffusers' ``VaeImageProcessor``), not clamped.

``drorae stats`` on a VAE directory writes ``latent_stats.safetensors`` (per-channel mean and variance of ``z``
pooled over positions and images); while that file is there the latent is ``(z - mean) / sqrt(var + 1e-5)``
instead of the pipeline's scaling (delete it to go back). The fingerprint hashes the class, the normalisation and
the encoder side's weights (not the decoder: SD-VAE's ft-EMA and ft-MSE decoders share one latent space).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor, nn

from ..serialization import ForeignFileError, load_safetensors, read_json, save_safetensors
from .interface import tensor_digest

VAE_CLASSES = ("AutoencoderKL", "AutoencoderKLFlux2", "AutoencoderKLQwenImage", "AutoencoderDC")
STATS_NAME = "latent_stats.safetensors"
STATS_EPS = 1e-5
DEFAULT_IMAGE_SIZE = 256
_DECODER_SIDE = ("decoder.", "post_quant_conv.")


def _diffusers_class(name: str):
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ValueError(f"this diffusers ({diffusers.__version__}) has no {name}; upgrade diffusers to load it")
    return cls


def patchify_2x2(z: Tensor) -> Tensor:
    """FLUX.2's ``_patchify_latents``: ``[B, C, h, w] -> [B, 4C, h/2, w/2]``."""
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)


def unpatchify_2x2(z: Tensor) -> Tensor:
    """FLUX.2's ``_unpatchify_latents``, the inverse of :func:`patchify_2x2`."""
    b, c, h, w = z.shape
    return z.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, h * 2, w * 2)


class DiffusersVAETokenizer(nn.Module):
    """One of :data:`VAE_CLASSES` behind the :class:`~drorae.tokenizer.interface.Tokenizer` interface."""

    def __init__(
        self,
        vae: nn.Module,
        image_size: int = DEFAULT_IMAGE_SIZE,
        sample_posterior: bool = False,
        stats: tuple[Tensor, Tensor] | None = None,
        source: str | None = None,
    ):
        super().__init__()
        self.kind = type(vae).__name__
        if self.kind not in VAE_CLASSES:
            raise ValueError(f"{self.kind} is not a supported VAE; supported: {', '.join(VAE_CLASSES)}")
        if sample_posterior and self.kind == "AutoencoderDC":
            raise ValueError("AutoencoderDC's latent is deterministic: --sample-posterior does not apply to it")
        self.vae = vae.eval().requires_grad_(False)
        self.sample_posterior = bool(sample_posterior)
        self.source = source
        self.generator: torch.Generator | None = None  # posterior draws (set one for reproducible caches)
        factor = self.downsample_factor
        if image_size % factor:
            raise ValueError(f"image size {image_size} is not a multiple of {self.kind}'s downsampling {factor}")
        self._image_size = int(image_size)
        self._fingerprint: str | None = None
        self.stats_mean: Tensor | None = None
        self.stats_std: Tensor | None = None
        if stats is not None:
            self.set_latent_stats(*stats)

    # -- shape ---------------------------------------------------------------------------------------------------
    @property
    def downsample_factor(self) -> int:
        """Pixels per latent position, computed as the pipelines compute ``vae_scale_factor`` (x2 for FLUX.2's
        2 x 2 patchified latent)."""
        cfg = self.vae.config
        if self.kind == "AutoencoderKLQwenImage":
            return 2 ** len(cfg.temperal_downsample)
        if self.kind == "AutoencoderDC":
            return 2 ** (len(cfg.encoder_block_out_channels) - 1)
        factor = 2 ** (len(cfg.block_out_channels) - 1)
        return factor * 2 if self.kind == "AutoencoderKLFlux2" else factor

    @property
    def latent_channels(self) -> int:
        cfg = self.vae.config
        if self.kind == "AutoencoderKLQwenImage":
            return cfg.z_dim
        return cfg.latent_channels * (4 if self.kind == "AutoencoderKLFlux2" else 1)

    @property
    def image_size(self) -> int:
        return self._image_size

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self._image_size // self.downsample_factor
        return (self.latent_channels, side, side)

    # -- normalisation -------------------------------------------------------------------------------------------
    @property
    def normalisation(self) -> str:
        """``"stats"`` (drorae's per-channel statistics) or ``"pipeline"`` (the VAE's own scaling)."""
        return "stats" if self.stats_mean is not None else "pipeline"

    def set_latent_stats(self, mean: Tensor, std: Tensor) -> None:
        """Normalise by per-channel ``(z - mean) / std`` (``[C]`` each) instead of the pipeline's scaling."""
        c = self.latent_channels
        mean, std = torch.as_tensor(mean).float().reshape(-1), torch.as_tensor(std).float().reshape(-1)
        if mean.numel() != c or std.numel() != c:
            raise ValueError(f"latent statistics of {mean.numel()} / {std.numel()} channels; {self.kind} has {c}")
        self.stats_mean, self.stats_std = mean, std
        self._fingerprint = None

    def _channels(self, values, like: Tensor) -> Tensor:
        return torch.as_tensor(values, dtype=torch.float32).view(1, -1, 1, 1).to(like.device, like.dtype)

    def _sdxl_style(self) -> bool:
        cfg = self.vae.config
        return self.kind == "AutoencoderKL" and None not in (getattr(cfg, "latents_mean", None),
                                                             getattr(cfg, "latents_std", None))  # fmt: skip

    def normalize(self, z: Tensor) -> Tensor:
        if self.stats_mean is not None:
            return (z - self._channels(self.stats_mean, z)) / self._channels(self.stats_std, z)
        cfg = self.vae.config
        if self.kind == "AutoencoderKLFlux2":
            bn = self.vae.bn
            std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + cfg.batch_norm_eps).to(z.device, z.dtype)
            return (z - bn.running_mean.view(1, -1, 1, 1).to(z.device, z.dtype)) / std
        if self.kind == "AutoencoderKLQwenImage":
            inv_std = 1.0 / self._channels(cfg.latents_std, z)
            return (z - self._channels(cfg.latents_mean, z)) * inv_std
        if self._sdxl_style():
            mean, std = self._channels(cfg.latents_mean, z), self._channels(cfg.latents_std, z)
            return (z - mean) * cfg.scaling_factor / std
        if self.kind == "AutoencoderKL" and getattr(cfg, "shift_factor", None) is not None:
            return (z - cfg.shift_factor) * cfg.scaling_factor
        return z * cfg.scaling_factor

    def denormalize(self, latent: Tensor) -> Tensor:
        if self.stats_mean is not None:
            return latent * self._channels(self.stats_std, latent) + self._channels(self.stats_mean, latent)
        cfg = self.vae.config
        if self.kind == "AutoencoderKLFlux2":
            bn = self.vae.bn
            std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + cfg.batch_norm_eps).to(latent.device, latent.dtype)
            return latent * std + bn.running_mean.view(1, -1, 1, 1).to(latent.device, latent.dtype)
        if self.kind == "AutoencoderKLQwenImage":
            inv_std = 1.0 / self._channels(cfg.latents_std, latent)
            return latent / inv_std + self._channels(cfg.latents_mean, latent)
        if self._sdxl_style():
            std = self._channels(cfg.latents_std, latent)
            return latent * std / cfg.scaling_factor + self._channels(cfg.latents_mean, latent)
        if self.kind == "AutoencoderKL" and getattr(cfg, "shift_factor", None) is not None:
            return latent / cfg.scaling_factor + cfg.shift_factor
        return latent / cfg.scaling_factor

    # -- encode / decode -----------------------------------------------------------------------------------------
    def _check_images(self, images: Tensor) -> None:
        s = self._image_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (s, s):
            raise ValueError(f"images must be [B, 3, {s}, {s}] in [0, 1] for this tokenizer, got {tuple(images.shape)}")

    def raw_latents(self, images: Tensor) -> Tensor:
        """``z`` ``[B, C, h, w]``: the posterior mean (or a draw), FLUX.2's patchified, Qwen-Image's first frame."""
        self._check_images(images)
        x = images.to(self.vae.dtype) * 2.0 - 1.0
        if self.kind == "AutoencoderKLQwenImage":
            x = x.unsqueeze(2)
        with torch.no_grad():
            out = self.vae.encode(x)
        if self.kind == "AutoencoderDC":
            z = out.latent
        else:
            dist = out.latent_dist
            z = dist.sample(self.generator) if self.sample_posterior else dist.mode()
        if self.kind == "AutoencoderKLQwenImage":
            z = z[:, :, 0]
        elif self.kind == "AutoencoderKLFlux2":
            z = patchify_2x2(z)
        return z.float()

    def encode(self, images: Tensor) -> Tensor:
        """``[B, 3, S, S]`` in ``[0, 1]`` -> the normalised latent ``[B, C, h, w]``."""
        return self.normalize(self.raw_latents(images))

    def decode(self, latent: Tensor) -> Tensor:
        """Normalised latent -> images on the ``[0, 1]`` scale (not clamped)."""
        if not isinstance(latent, Tensor) or not latent.is_floating_point():
            raise TypeError(f"latent must be a floating-point tensor, got {getattr(latent, 'dtype', type(latent))}")
        if latent.ndim != 4 or latent.shape[1] != self.latent_channels:
            raise ValueError(f"latent must be [B, C={self.latent_channels}, h, w], got {tuple(latent.shape)}")
        z = self.denormalize(latent.float()).to(self.vae.dtype)
        if self.kind == "AutoencoderKLFlux2":
            z = unpatchify_2x2(z)
        elif self.kind == "AutoencoderKLQwenImage":
            z = z.unsqueeze(2)
        with torch.no_grad():
            y = self.vae.decode(z).sample
        if self.kind == "AutoencoderKLQwenImage":
            y = y[:, :, 0]
        return y.float() * 0.5 + 0.5

    # -- identity ------------------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Class, normalisation and the encoder side's weights, hashed (cached: weights are frozen)."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            cfg = self.vae.config
            keys = ("scaling_factor", "shift_factor", "latents_mean", "latents_std", "batch_norm_eps")
            conv = {k: getattr(cfg, k, None) for k in keys}
            digest.update(json.dumps([self.kind, self.normalisation, conv], sort_keys=True, default=list).encode())
            if self.stats_mean is not None:
                tensor_digest(digest, {"mean": self.stats_mean, "std": self.stats_std})
            encoder = {
                k: v
                for k, v in self.vae.state_dict().items()
                if not k.startswith(_DECODER_SIDE) and not k.endswith("num_batches_tracked")
            }
            tensor_digest(digest, encoder)
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def latent_info(self) -> dict:
        return {
            "kind": self.kind,
            "normalisation": self.normalisation,
            "sample_posterior": self.sample_posterior,
            "fusion_enabled": False,
            "latent_norm": self.normalisation == "stats",
        }

    def parameter_counts(self) -> dict[str, int]:
        enc = sum(p.numel() for k, p in self.vae.named_parameters() if not k.startswith(_DECODER_SIDE))
        total = sum(p.numel() for p in self.vae.parameters())
        return {"encoder": enc, "decoder": total - enc, "total": total}

    # -- files ---------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        map_location: str | torch.device = "cpu",
        sample_posterior: bool = False,
        image_size: int = DEFAULT_IMAGE_SIZE,
    ) -> DiffusersVAETokenizer:
        """Load a diffusers VAE directory (``config.json`` + weights) with diffusers, plus drorae's
        ``latent_stats.safetensors`` when ``drorae stats`` wrote one there."""
        directory = Path(directory)
        name = read_json(directory / "config.json", "a diffusers config.json").get("_class_name")
        if name not in VAE_CLASSES:
            raise ValueError(f"{directory}: {name!r} is not a supported VAE class; supported: {', '.join(VAE_CLASSES)}")
        vae = _diffusers_class(name).from_pretrained(str(directory), local_files_only=True, low_cpu_mem_usage=False)
        stats = read_vae_stats(directory / STATS_NAME) if (directory / STATS_NAME).is_file() else None
        tok = cls(vae, image_size=image_size, sample_posterior=sample_posterior, stats=stats, source=str(directory))
        return tok.to(map_location)

    def store_latent_stats(self, mean: Tensor, var: Tensor, count: int, model_dir: Path, out_dir) -> dict:
        """``drorae stats``: reduce per-position moments (``[C, h, w]``, over ``count`` latents) to exact
        per-channel ones, switch to them and write ``latent_stats.safetensors`` in ``model_dir`` (or in a copy of
        the VAE at ``out_dir``)."""
        mean, var = mean.double(), var.double()
        channel_mean = mean.mean(dim=(1, 2))
        channel_var = (var + mean.pow(2)).mean(dim=(1, 2)) - channel_mean.pow(2)  # pooled over positions, exact
        target = Path(model_dir)
        if out_dir is not None and Path(out_dir).resolve() != target.resolve():
            target = Path(out_dir)
            self.vae.save_pretrained(str(target), safe_serialization=True)
        std = torch.sqrt(channel_var + STATS_EPS)
        self.set_latent_stats(channel_mean.float(), std.float())
        save_safetensors(
            {"mean": channel_mean.float(), "var": channel_var.float(), "count": torch.tensor(count)},
            target / STATS_NAME,
            metadata={"eps": str(STATS_EPS), "per": "channel", "class": self.kind},
        )
        return {
            "model": str(target),
            "count": count,
            "shape": [self.latent_channels],
            "mean_of_mean": float(channel_mean.mean()),
            "mean_of_var": float(channel_var.mean()),
            "fusion_enabled": False,
            "fingerprint": self.fingerprint(),
        }


def read_vae_stats(path: Path) -> tuple[Tensor, Tensor]:
    """``(mean, std)`` per channel from a ``latent_stats.safetensors`` that ``drorae stats`` wrote for a VAE."""
    tensors = load_safetensors(path)
    if "mean" not in tensors or "var" not in tensors or tensors["mean"].ndim != 1:
        raise ForeignFileError(f"{path} is not drorae's per-channel VAE statistics (mean [C], var [C])")
    return tensors["mean"], torch.sqrt(tensors["var"].float() + STATS_EPS)


__all__ = ["DiffusersVAETokenizer", "VAE_CLASSES", "patchify_2x2", "read_vae_stats", "unpatchify_2x2"]
