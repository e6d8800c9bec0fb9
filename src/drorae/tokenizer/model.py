"""DRoRAE: frozen backbone + depth-routed fusion + ViT decoder, with save/load.

    encode:  images [0,1] -> backbone (one pass) -> z^(1..L) -> base latent (RAE's z_base, or RAEv2's layer
             mean) -> fusion -> z_final [B,N,C]
             -> [B,C,h,w] -> (z - mean) / (std + eps) -> * scaling_factor            = latent
    decode:  latent -> / scaling_factor -> * (std + eps) + mean -> tokens -> decoder -> patches
             -> unpatchify -> * pixel_std + pixel_mean                                 = images [0,1]-scale

With ``fusion_enabled=False`` (or no fusion module) this is exactly RAE. Decoded images are not
clamped (as in RAE and diffusers); clamp them for display.

On disk (``save_pretrained``): ``config.json`` (JSON, no pickles), ``model.safetensors`` (fusion,
decoder, latent statistics) and, by default, ``backbone/`` (the frozen backbone's own
``save_pretrained`` directory) so a tokenizer directory is self-contained and loads offline.
With ``save_backbone=False`` the config references the backbone by path or hub id instead.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor, nn

from .._version import __version__
from ..configuration import ConfigError, config_from_dict
from ..serialization import load_safetensors, load_strict, model_dir, read_json, save_safetensors
from .backbones import BackboneConfig, BackboneOutput, FrozenBackbone, base_latent, build_backbone, check_backbone
from .decoder import DecoderConfig, RAEDecoder
from .fusion import DepthRoutedFusion, FusionConfig, FusionOutput
from .interface import latent_fingerprint

T = TypeVar("T")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
BACKBONE_DIR = "backbone"


@dataclass
class DRoRAEConfig:
    """A whole tokenizer: its three parts' configs plus the latent's conventions.

    This is what ``config.json`` holds and what a training YAML's ``model:`` section is.
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    fusion: FusionConfig | None = None  # None = plain RAE
    fusion_enabled: bool = True
    latent_norm: bool = False  # per-position mean/std normalisation of the latent
    latent_stats_shape: list[int] | None = None  # shape of the stored mean/std (broadcast to [C, h, w])
    latent_std_eps: float = 1e-5
    scaling_factor: float = 1.0
    noise_tau: float = 0.0  # decoder noise augmentation while training, sigma ~ U(0, noise_tau) (RAE)

    def to_dict(self) -> dict:
        return {"_class_name": "DRoRAE", "_drorae_version": __version__, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> DRoRAEConfig:
        """Read a ``config.json`` dict, including drorae 0.1's flat format (converted here, once)."""
        data = upgrade_legacy_config(data)
        parts = {
            "backbone": BackboneConfig.from_dict(data.get("backbone", {})),
            "decoder": DecoderConfig.from_dict(data.get("decoder", {})),
            "fusion": FusionConfig.from_dict(data["fusion"]) if data.get("fusion") is not None else None,
        }
        rest = {k: v for k, v in data.items() if k not in parts}
        return config_from_dict(cls, {**rest, **parts}, "DRoRAE")


def upgrade_legacy_config(data: dict) -> dict:
    """drorae 0.1 wrote the backbone as flat fields (``backbone`` a string, ``input_size``, ``hidden_size``,
    ``num_layers``, ``pixel_mean``, ``pixel_std``); today they form the ``backbone`` section."""
    if not isinstance(data.get("backbone"), str):
        return dict(data)
    data = dict(data)
    data["backbone"] = {
        "name_or_path": data.pop("backbone") or None,
        "input_size": data.pop("input_size"),
        "hidden_size": data.pop("hidden_size", None),
        "num_layers": data.pop("num_layers", None),
        "pixel_mean": data.pop("pixel_mean", None),
        "pixel_std": data.pop("pixel_std", None),
    }
    return data


@dataclass
class DRoRAEOutput:
    reconstruction: Tensor  # [B, 3, H, W], [0, 1] scale (not clamped)
    latent: Tensor  # [B, C, h, w], normalised and scaled
    z_base: Tensor  # [B, N, C], the base latent before fusion (RAE's, or the layer mean)
    fusion: FusionOutput | None  # fused latent and routing weights, when fusion ran
    tokens: Tensor | None = None  # [B, N, C], the decoder's input before latent noise
    features: BackboneOutput | None = None  # the frozen backbone's pass, for a second decode without re-running it


class DRoRAE(nn.Module):
    def __init__(
        self,
        backbone: FrozenBackbone,
        decoder: RAEDecoder,
        fusion: DepthRoutedFusion | None = None,
        config: DRoRAEConfig | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.fusion = fusion
        self.decoder = decoder
        c = backbone.hidden_size
        if decoder.config.latent_dim != c:
            raise ValueError(f"decoder expects latent width {decoder.config.latent_dim}, but the backbone width is {c}")
        if fusion is not None and (fusion.dim != c or fusion.num_layers != backbone.num_layers):
            raise ValueError(
                f"fusion module is built for C={fusion.dim}, L={fusion.num_layers}; the backbone has "
                f"C={c}, L={backbone.num_layers}"
            )
        # The parts' sections always describe the modules (the backbone's latent rule comes from ``config``).
        config = config or DRoRAEConfig()
        rule = {
            "latent_layers": config.backbone.latent_layers,
            "latent_global_mean": config.backbone.latent_global_mean,
        }
        self.latent_layers, self.latent_global_mean = replace(backbone.config(), **rule).latent_rule(
            backbone.num_layers
        )
        self.config = replace(
            config,
            backbone=replace(backbone.config(), **rule),
            decoder=decoder.config,
            fusion=fusion.config if fusion is not None else None,
        )
        self.config.fusion_enabled = bool(self.config.fusion_enabled and fusion is not None)
        self.register_buffer("pixel_mean", backbone.mean.detach().clone().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", backbone.std.detach().clone().view(1, 3, 1, 1), persistent=False)
        if self.config.latent_norm:
            shape = self.config.latent_stats_shape or [c, backbone.grid_size, backbone.grid_size]
            self.register_buffer("latent_mean", torch.zeros(shape))
            self.register_buffer("latent_std", torch.ones(shape))

    # -- switches ----------------------------------------------------------------------------
    @property
    def fusion_enabled(self) -> bool:
        return self.config.fusion_enabled

    @fusion_enabled.setter
    def fusion_enabled(self, value: bool) -> None:
        if value and self.fusion is None:
            raise ValueError("this DRoRAE has no fusion module; add one with model.add_fusion(...)")
        self.config.fusion_enabled = bool(value)

    def add_fusion(self, fusion: DepthRoutedFusion) -> None:
        """Attach a (new) fusion module, e.g. before phase 2, and switch fusion on."""
        if fusion.dim != self.backbone.hidden_size or fusion.num_layers != self.backbone.num_layers:
            raise ValueError(
                f"fusion module (C={fusion.dim}, L={fusion.num_layers}) does not fit the backbone "
                f"(C={self.backbone.hidden_size}, L={self.backbone.num_layers})"
            )
        self.fusion = fusion.to(self.pixel_mean.device)
        self.config.fusion = fusion.config
        self.config.fusion_enabled = True

    def set_latent_rule(self, layers: list[int] | None, global_mean: bool = False) -> None:
        """Switch the base latent to RAEv2's layer mean over ``layers`` (1-based; ``None``: the last block, RAE),
        e.g. to continue a decoder on another latent. Latent statistics describe the old latent, so they are
        dropped (``drorae stats`` computes the new ones)."""
        cfg = replace(self.config.backbone, latent_layers=None if layers is None else list(layers),
                      latent_global_mean=bool(global_mean))  # fmt: skip
        self.latent_layers, self.latent_global_mean = cfg.latent_rule(self.backbone.num_layers)
        self.config.backbone = cfg
        if self.config.latent_norm:
            for name in ("latent_mean", "latent_std"):
                self._buffers.pop(name, None)
            self.config.latent_norm, self.config.latent_stats_shape = False, None

    def set_latent_stats(self, mean: Tensor, std: Tensor, eps: float = 1e-5) -> None:
        """Enable latent normalisation (z - mean) / (std + eps) with stats broadcastable to [C, h, w]."""
        c, g = self.backbone.hidden_size, self.backbone.grid_size
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        try:
            torch.broadcast_shapes(mean.shape, std.shape, (c, g, g))
        except RuntimeError:
            raise ValueError(
                f"latent stats of shapes {tuple(mean.shape)} / {tuple(std.shape)} do not broadcast to "
                f"[C={c}, h={g}, w={g}]"
            ) from None
        mean, std = torch.broadcast_tensors(mean, std)
        device = self.pixel_mean.device
        for name, value in (("latent_mean", mean), ("latent_std", std)):
            if hasattr(self, name) and name in self._buffers:
                del self._buffers[name]
            self.register_buffer(name, value.clone().to(device))
        self.config.latent_norm = True
        self.config.latent_stats_shape = list(mean.shape)
        self.config.latent_std_eps = float(eps)

    # -- encode / decode ---------------------------------------------------------------------
    def train(self, mode: bool = True) -> DRoRAE:
        super().train(mode)
        self.backbone.train(mode)  # stays in eval mode while frozen
        return self

    def _run_backbone(self, images: Tensor, layers: list[int] | None = None) -> BackboneOutput:
        """The frozen backbone's pass: every block (``layers=None``) or only the 1-based blocks ``layers``."""
        if any(p.requires_grad for p in self.backbone.parameters()):
            return self.backbone(images, layers)
        with torch.no_grad():  # frozen: no graph, one pass
            return self.backbone(images, layers)

    @property
    def needed_layers(self) -> list[int] | None:
        """The blocks encoding reads: all of them for the fusion (None), else the base latent's (RAE: the last)."""
        return None if self.fusion_enabled else list(self.latent_layers)

    def encode_tokens(self, images: Tensor) -> tuple[Tensor, Tensor, FusionOutput | None]:
        """images -> (z_final [B,N,C], z_base [B,N,C], fusion output or None), before normalisation."""
        return self.tokens_from_features(self._run_backbone(images, self.needed_layers))

    @property
    def rae_latent(self) -> bool:
        """Whether the base latent is RAE's ``LN_bb(z^(L))`` (not RAEv2's layer mean)."""
        return self.latent_layers == [self.backbone.num_layers] and not self.latent_global_mean

    def base_tokens(self, feats: BackboneOutput) -> Tensor:
        """The base latent [B, N, C] that the decoder reads without fusion and that eq. 5 corrects."""
        eps, depth = self.backbone.norm_eps, self.backbone.num_layers
        return base_latent(feats, None, self.latent_layers, self.latent_global_mean, eps, num_layers=depth)

    def tokens_from_features(self, feats: BackboneOutput) -> tuple[Tensor, Tensor, FusionOutput | None]:
        """:meth:`encode_tokens` from an already computed backbone output, so that several
        tokenizers on the same frozen backbone (e.g. the rows of an evaluation) share one pass."""
        base = self.base_tokens(feats)
        if self.fusion_enabled:
            if feats.layers is not None:
                raise ValueError(f"the fusion reads every block; this backbone output holds blocks {feats.layers}")
            fused = self.fusion(feats.hidden_states, base, base_normalized=self.rae_latent)
            return fused.latent, base, fused
        return base, base, None

    def tokens_to_latent(self, tokens: Tensor) -> Tensor:
        b, n, c = tokens.shape
        side = math.isqrt(n)
        z = tokens.transpose(1, 2).reshape(b, c, side, side)
        if self.config.latent_norm:
            z = (z - self.latent_mean.to(z.dtype)) / (self.latent_std.to(z.dtype) + self.config.latent_std_eps)
        return z * self.config.scaling_factor if self.config.scaling_factor != 1.0 else z

    def latent_to_tokens(self, latent: Tensor) -> Tensor:
        if latent.ndim != 4 or latent.shape[1] != self.backbone.hidden_size:
            raise ValueError(f"latent must be [B, C={self.backbone.hidden_size}, h, w], got {tuple(latent.shape)}")
        z = latent / self.config.scaling_factor if self.config.scaling_factor != 1.0 else latent
        if self.config.latent_norm:
            z = z * (self.latent_std.to(z.dtype) + self.config.latent_std_eps) + self.latent_mean.to(z.dtype)
        return z.flatten(2).transpose(1, 2)

    # -- the tokenizer interface (drorae.tokenizer.interface.Tokenizer) --------------------------
    @property
    def image_size(self) -> int:
        return self.decoder.config.image_size

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        g = self.backbone.grid_size
        return (self.backbone.hidden_size, g, g)

    def raw_latents(self, images: Tensor) -> Tensor:
        """The latent ``[B, C, h, w]`` *before* normalisation (fusion as configured)."""
        tokens = self.encode_tokens(images)[0]
        b, n, c = tokens.shape
        side = math.isqrt(n)
        return tokens.transpose(1, 2).reshape(b, c, side, side)

    def fingerprint(self) -> str:
        """Base-latent rule, fusion switch and normalisation buffers, hashed (the backbone is not: it is frozen)."""
        cfg = self.config
        stats = (self.latent_mean, self.latent_std) if cfg.latent_norm else None
        rule = None if self.rae_latent else (self.latent_layers, self.latent_global_mean)
        return latent_fingerprint(cfg.fusion_enabled, cfg.latent_std_eps, cfg.scaling_factor, stats, rule)

    def latent_info(self) -> dict:
        return {"kind": "DRoRAE", "fusion_enabled": self.fusion_enabled, "latent_norm": self.config.latent_norm}

    def add_latent_noise(self, tokens: Tensor, noise_tau: float, generator: torch.Generator | None = None) -> Tensor:
        """RAE's decoder noise augmentation: z + sigma * eps, sigma ~ U(0, noise_tau) per sample."""
        sigma = noise_tau * torch.rand(
            (tokens.shape[0], 1, 1), device=tokens.device, dtype=tokens.dtype, generator=generator
        )
        return tokens + sigma * torch.randn(tokens.shape, device=tokens.device, dtype=tokens.dtype, generator=generator)

    def encode(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] images in [0, 1] -> latent [B, C, h, w]."""
        return self.tokens_to_latent(self.encode_tokens(images)[0])

    def decode_tokens(self, tokens: Tensor) -> Tensor:
        x = self.decoder.unpatchify(self.decoder(tokens))
        return x * self.pixel_std.to(x.dtype) + self.pixel_mean.to(x.dtype)

    def decode(self, latent: Tensor) -> Tensor:
        """latent [B, C, h, w] -> images [B, 3, H, W] on the [0, 1] scale (not clamped)."""
        if not isinstance(latent, Tensor) or not latent.is_floating_point():
            raise TypeError(f"latent must be a floating-point tensor, got {getattr(latent, 'dtype', type(latent))}")
        return self.decode_tokens(self.latent_to_tokens(latent))

    def forward(
        self, images: Tensor, noise_tau: float | None = None, generator: torch.Generator | None = None
    ) -> DRoRAEOutput:
        """Reconstruct; in training mode the latent gets noise (``noise_tau``, default the config's)."""
        feats = self._run_backbone(images, self.needed_layers)
        clean, z_base, fused = self.tokens_from_features(feats)
        latent = self.tokens_to_latent(clean)
        tau = self.config.noise_tau if noise_tau is None else noise_tau
        tokens = self.add_latent_noise(clean, tau, generator) if self.training and tau > 0 else clean
        # Decode from the tokens directly: normalise/denormalise is an exact round trip mathematically,
        # and skipping it avoids float drift between encode() and the training path.
        return DRoRAEOutput(
            reconstruction=self.decode_tokens(tokens),
            latent=latent,
            z_base=z_base,
            fusion=fused,
            tokens=clean,
            features=feats,
        )

    # -- parameter groups (used by `drorae info` and the trainer) -----------------------------
    def parameter_counts(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
        parts = {"backbone": count(self.backbone), "fusion": count(self.fusion), "decoder": count(self.decoder)}
        parts["total"] = sum(parts.values())
        return parts

    # -- save / load -------------------------------------------------------------------------
    @classmethod
    def from_config(
        cls, config: DRoRAEConfig, backbone: FrozenBackbone | None = None, base_dir: str | Path | None = None
    ) -> DRoRAE:
        """Build a tokenizer with fresh decoder / fusion weights from ``config``.

        The backbone is ``backbone`` or the one ``config.backbone`` names (relative paths inside
        ``base_dir``); the decoder and fusion sizes that depend on it (C, L, N, LN_bb's eps) are
        taken from it, and a recorded value that disagrees is an error. Modules are created in the
        order backbone, decoder, fusion (so a seed gives the same weights as earlier versions).
        """
        bb = backbone if backbone is not None else build_backbone(config.backbone, base_dir)
        check_backbone(bb, config.backbone)
        decoder_cfg = fill_from_backbone(
            config.decoder, "decoder", latent_dim=bb.hidden_size, num_patches=bb.num_tokens
        )
        decoder = RAEDecoder(decoder_cfg)
        fusion = fusion_for_backbone(config.fusion, bb) if config.fusion is not None else None
        return cls(bb, decoder, fusion, config)

    def save_pretrained(self, directory: str | Path, save_backbone: bool = True) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = DRoRAEConfig.from_dict(self.config.to_dict())
        if save_backbone:
            self.backbone.model.save_pretrained(directory / BACKBONE_DIR, safe_serialization=True)
            config.backbone.name_or_path, config.backbone.random = BACKBONE_DIR, None
        elif not config.backbone.name_or_path:
            raise ValueError("the backbone has no path or hub id to reference: use save_backbone=True")
        from ..card import write_model_card
        from ..hub import is_hub_id

        tensors = {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}
        save_safetensors(tensors, directory / WEIGHTS_NAME, metadata={"drorae_version": __version__})
        data = config.to_dict()
        name = self.backbone.name_or_path
        hub_id = name if is_hub_id(name) else getattr(self, "backbone_id", None)
        if hub_id:
            data["_backbone_id"] = hub_id  # metadata (ignored on load): the model card's base_model
        (directory / CONFIG_NAME).write_text(json.dumps(data, indent=2) + "\n")
        write_model_card(directory, parameters=self.parameter_counts())

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        backbone: str | FrozenBackbone | None = None,
        map_location: str | torch.device = "cpu",
    ) -> DRoRAE:
        """Load a ``save_pretrained`` directory, a run directory (its ``model/``) or a Hub id
        (``org/name[@revision][:subfolder]``, fetched unless cached). ``backbone`` overrides the stored/referenced
        one."""
        directory = model_dir(directory, (CONFIG_NAME, WEIGHTS_NAME, f"{BACKBONE_DIR}/*"))
        cfg_path = directory / CONFIG_NAME
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path} not found: {directory} is not a DRoRAE save_pretrained directory")
        raw = read_json(cfg_path, "a DRoRAE config.json")
        if raw.get("_class_name") != "DRoRAE":
            raise ValueError(
                f"{cfg_path} describes a {raw.get('_class_name')!r}, not a DRoRAE "
                "(import RAE / diffusers models with drorae.import_rae)"
            )
        config = DRoRAEConfig.from_dict(raw)
        if isinstance(backbone, str):
            config.backbone.name_or_path = backbone
        model = cls.from_config(config, backbone if isinstance(backbone, FrozenBackbone) else None, base_dir=directory)
        state = load_safetensors(directory / WEIGHTS_NAME)
        load_strict(model, state, ignore_prefix="backbone.", source=directory / WEIGHTS_NAME)
        model.backbone_id = raw.get("_backbone_id")  # the backbone's hub id, kept for the next save's model card
        return model.to(map_location)


def fusion_for_backbone(config: FusionConfig, backbone: FrozenBackbone) -> DepthRoutedFusion:
    """A fresh fusion module for ``backbone``: C, L and LN_bb's eps come from it."""
    cfg = fill_from_backbone(config, "fusion", num_layers=backbone.num_layers, dim=backbone.hidden_size)
    return DepthRoutedFusion(replace(cfg, norm_eps=backbone.norm_eps))


def fill_from_backbone(config: T, section: str, source: str = "the backbone", **values: int) -> T:
    """A copy of ``config`` with sizes given by ``source`` (the backbone) filled in; a recorded size that differs
    is an error."""
    for key, value in values.items():
        recorded = getattr(config, key)
        if recorded is not None and recorded != value:
            raise ConfigError(f"{section}.{key}={recorded} does not match {source}, which gives {value}")
    return replace(config, **values)
