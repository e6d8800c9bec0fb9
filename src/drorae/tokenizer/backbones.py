"""Frozen pretrained ViT backbones that expose the output of every block (paper eq. 1).

A backbone call runs ONE forward pass and returns

* ``hidden_states`` [L, B, N, C]: z^(1..L), the outputs of transformer blocks 1..L with the
  prefix tokens (CLS, registers) removed, i.e. before the backbone's final LayerNorm;
* ``z_base`` [B, N, C]: LN_bb(z^(L)), the backbone's final LayerNorm WITHOUT its affine
  parameters (RAE's convention), which is the latent of a plain RAE.

A tokenizer's *base latent* is ``z_base`` by default, or RAEv2's layer mean (arXiv 2605.18324),
:func:`base_latent`, when ``BackboneConfig.latent_layers`` lists several blocks:

    z = (1/K) sum_{l in S} LN_bb(z^(l))  [+ mean_over_tokens(LN_bb(z^(max S))), broadcast to every token]

computed from the same single pass, so tokenizers with different rules share one backbone call.

Images come in on the [0, 1] scale at any size; they are resized to ``input_size`` with
bicubic interpolation (``align_corners=False``, no antialias, only when the size differs),
exactly as RAE and diffusers' ``AutoencoderRAE`` do, so imported RAE models encode identically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..configuration import ConfigError, config_from_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# model_type (transformers) -> our backbone family
_FAMILIES = {
    "dinov2": "dinov2",
    "dinov2_with_registers": "dinov2",
    "dinov3_vit": "dinov3",  # RAEv2's backbone (DINOv3ViTModel: CLS + registers, RoPE)
    "siglip": "siglip",
    "siglip_vision_model": "siglip",
    "siglip2": "siglip",
    "siglip2_vision_model": "siglip",
    "vit_mae": "mae",
}
# SigLIP normalises to [-1, 1]; the others use ImageNet statistics.
_DEFAULT_MEAN_STD = {
    "dinov2": (IMAGENET_MEAN, IMAGENET_STD),
    "dinov3": (IMAGENET_MEAN, IMAGENET_STD),
    "mae": (IMAGENET_MEAN, IMAGENET_STD),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


@dataclass
class RandomBackboneConfig:
    """A randomly initialised DINOv2-with-registers instead of a checkpoint (smoke tests and benchmarks only)."""

    hidden_size: int = 64
    num_hidden_layers: int = 4
    num_attention_heads: int = 2
    patch_size: int = 4
    num_register_tokens: int = 4
    seed: int = 0


@dataclass
class BackboneConfig:
    """Which frozen ViT encodes, at what resolution and with which pixel statistics.

    ``hidden_size`` and ``num_layers`` are recorded from the loaded backbone when a tokenizer is
    saved; when set, loading checks them, so a decoder is never paired with the wrong backbone.
    """

    name_or_path: str | None = None  # local save_pretrained dir or cached hub id (relative: inside a saved model dir)
    input_size: int = 224  # backbone input resolution
    random: RandomBackboneConfig | None = None  # instead of name_or_path, for smoke tests and benchmarks
    pixel_mean: list[float] | None = None  # None: the checkpoint's preprocessor_config.json, else the family's
    pixel_std: list[float] | None = None
    hidden_size: int | None = None  # C
    num_layers: int | None = None  # L
    # the base latent (RAEv2's layer mean, arXiv 2605.18324): 1-based blocks whose LN_bb outputs are averaged
    # (None: the last block only, RAE's latent) and whether the token mean of the deepest one is added
    latent_layers: list[int] | None = None
    latent_global_mean: bool = False

    def latent_rule(self, num_layers: int) -> tuple[list[int], bool]:
        """``(layers, global_mean)`` for a backbone of ``num_layers`` blocks, checked; raises on a bad list."""
        layers = [num_layers] if self.latent_layers is None else self.latent_layers
        if (
            not isinstance(layers, (list, tuple))
            or not layers
            or any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_layers for k in layers)
            or len(set(layers)) != len(layers)
        ):
            raise ConfigError(
                f"backbone.latent_layers={self.latent_layers!r} must be distinct 1-based block indices in "
                f"1..{num_layers}"
            )
        return list(layers), bool(self.latent_global_mean)

    def is_rae_latent(self, num_layers: int) -> bool:
        """Whether the base latent is RAE's ``LN_bb(z^(L))`` (what RAE, diffusers and the paper's eq. 5 assume)."""
        layers, global_mean = self.latent_rule(num_layers)
        return layers == [num_layers] and not global_mean

    @classmethod
    def from_dict(cls, data: dict) -> BackboneConfig:
        data = dict(data)
        if data.get("random") is not None:
            data["random"] = config_from_dict(RandomBackboneConfig, data["random"], "backbone.random")
        return config_from_dict(cls, data, "backbone")


class BackboneNotFoundError(FileNotFoundError):
    """The backbone's files are neither at the given path nor in the local Hugging Face cache."""


@dataclass
class BackboneOutput:
    hidden_states: Tensor  # [K, B, N, C]  outputs of blocks `layers` (all: 1..L), prefix tokens dropped
    z_base: Tensor | None  # [B, N, C]     LN_bb(z^(L)), non-affine (None when block L was not asked for)
    layers: list[int] | None = None  # the 1-based blocks in hidden_states, ascending; None: every block 1..L

    def blocks(self, layers: list[int]) -> Tensor:
        """The outputs of 1-based blocks ``layers`` [K, B, N, C], from whatever subset this output holds."""
        held = self.layers if self.layers is not None else range(1, self.hidden_states.shape[0] + 1)
        position = {k: i for i, k in enumerate(held)}
        missing = [k for k in layers if k not in position]
        if missing:
            raise ValueError(f"blocks {missing} were not computed (this backbone output holds blocks {list(held)})")
        index = torch.tensor([position[k] for k in layers], device=self.hidden_states.device)
        return self.hidden_states.index_select(0, index)


def check_images(images: Tensor, name: str = "images") -> None:
    """Raise a clear error for inputs that are not float RGB batches in [0, 1]-scale."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(
            f"{name} must have shape [B, 3, H, W], got rank {images.ndim} with shape {tuple(images.shape)}"
        )
    if images.shape[1] != 3:
        raise ValueError(
            f"{name} must have 3 channels (RGB) in dim 1, got {images.shape[1]} (shape {tuple(images.shape)})"
        )
    if not images.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor in [0, 1], got dtype {images.dtype}; "
            "convert uint8 images with images.float() / 255"
        )
    if not torch.isfinite(images).all():
        bad = (~torch.isfinite(images)).sum().item()
        raise ValueError(f"{name} contain {bad} non-finite values (NaN or inf)")


class FrozenBackbone(nn.Module):
    """A frozen ``transformers`` ViT that returns every block's tokens and RAE's ``z_base``."""

    def __init__(
        self,
        model: nn.Module,
        family: str,
        *,
        input_size: int,
        name_or_path: str | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
    ):
        super().__init__()
        if family not in _DEFAULT_MEAN_STD:
            raise ValueError(f"unknown backbone family {family!r}; expected one of {sorted(_DEFAULT_MEAN_STD)}")
        self.model = model
        self.family = family
        self.name_or_path = name_or_path
        cfg = model.config
        self.hidden_size: int = cfg.hidden_size
        self.num_layers: int = cfg.num_hidden_layers
        self.patch_size: int = cfg.patch_size
        self.norm_eps: float = float(cfg.layer_norm_eps)
        self.num_prefix_tokens: int = {
            "dinov2": 1 + int(getattr(cfg, "num_register_tokens", 0) or 0),
            "dinov3": 1 + int(getattr(cfg, "num_register_tokens", 0) or 0),
            "mae": 1,
            "siglip": 0,
        }[family]
        if input_size % self.patch_size != 0:
            raise ValueError(f"input_size={input_size} must be a multiple of the backbone patch size {self.patch_size}")
        self.input_size = int(input_size)
        d_mean, d_std = _DEFAULT_MEAN_STD[family]
        self.register_buffer(
            "mean", torch.tensor(mean or d_mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(std or d_std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def config(self) -> BackboneConfig:
        """This backbone as a :class:`BackboneConfig` (what a saved tokenizer records)."""
        return BackboneConfig(
            name_or_path=self.name_or_path,
            input_size=self.input_size,
            pixel_mean=self.mean.flatten().tolist(),
            pixel_std=self.std.flatten().tolist(),
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
        )

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    def train(self, mode: bool = True) -> FrozenBackbone:
        # A frozen backbone stays in eval mode (no dropout / drop-path) even inside model.train(),
        # unless someone unfroze it on purpose (the paper's "full" ablation).
        trainable = any(p.requires_grad for p in self.parameters())
        return super().train(mode and trainable)

    def preprocess(self, images: Tensor) -> Tensor:
        """[0, 1] images of any size -> normalised ``input_size`` pixels (RAE/diffusers resize)."""
        check_images(images)
        if images.shape[-2:] != (self.input_size, self.input_size):
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bicubic", align_corners=False)
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def _block_list(self) -> nn.ModuleList:
        """The model's transformer blocks (``encoder.layer``, ``encoder.layers``, ``layer``... by family)."""
        if not hasattr(self, "_blocks_cache"):
            lists = [(n, m) for n, m in self.model.named_modules() if isinstance(m, nn.ModuleList)]
            found = [m for n, m in lists if len(m) == self.num_layers and n.split(".")[-1] in ("layer", "layers")]
            if len(found) != 1:
                raise RuntimeError(f"cannot find the {self.num_layers} blocks of {type(self.model).__name__}")
            self.__dict__["_blocks_cache"] = found[0]  # not a submodule: already registered inside the model
        return self._blocks_cache

    def forward(self, images: Tensor, layers: list[int] | None = None) -> BackboneOutput:
        """Every block's output (``layers=None``, what the fusion reads), or only blocks ``layers`` (1-based): RAE's
        latent asks for the last block alone, a layer mean for the blocks it averages. Those are read by forward
        hooks, without ``output_hidden_states`` and the [L, B, N, C] stack."""
        pixels = self.preprocess(images)
        kwargs = {"output_hidden_states": layers is None}
        if self.family == "mae":
            # ViT-MAE shuffles tokens by argsort(noise); increasing noise keeps the natural order,
            # and mask_ratio=0 keeps every token.
            b, n = pixels.shape[0], self.num_tokens
            kwargs["noise"] = torch.arange(n, device=pixels.device, dtype=pixels.dtype).expand(b, n)
            kwargs["interpolate_pos_encoding"] = True
        elif self.family == "siglip":
            kwargs["interpolate_pos_encoding"] = True
        if layers is not None:
            return self._selected_blocks(pixels, sorted(set(layers)), kwargs)
        out = self.model(pixel_values=pixels, **kwargs)
        # hidden_states[0] is the embedding output; [k] is the output of block k (eq. 1).
        blocks = out.hidden_states[1:]
        if len(blocks) != self.num_layers:
            raise RuntimeError(f"backbone returned {len(blocks)} block outputs, expected {self.num_layers}")
        hidden = torch.stack(blocks, dim=0)[:, :, self.num_prefix_tokens :]
        z_base = F.layer_norm(hidden[-1], (self.hidden_size,), eps=self.norm_eps)
        return BackboneOutput(hidden_states=hidden, z_base=z_base)

    def _selected_blocks(self, pixels: Tensor, layers: list[int], kwargs: dict) -> BackboneOutput:
        if not layers or layers[0] < 1 or layers[-1] > self.num_layers:
            raise ValueError(f"layers {layers} must lie in 1..{self.num_layers}")
        blocks, captured = self._block_list(), {}

        def keep(k: int):
            return lambda module, args, out: captured.__setitem__(k, out[0] if isinstance(out, tuple) else out)

        handles = [blocks[k - 1].register_forward_hook(keep(k)) for k in layers]
        try:
            self.model(pixel_values=pixels, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
        p = self.num_prefix_tokens
        hidden = (
            captured[layers[0]][None, :, p:]
            if len(layers) == 1
            else torch.stack([captured[k] for k in layers])[:, :, p:]
        )
        z_base = (
            F.layer_norm(hidden[-1], (self.hidden_size,), eps=self.norm_eps) if layers[-1] == self.num_layers else None
        )
        return BackboneOutput(hidden_states=hidden, z_base=z_base, layers=layers)


def base_latent(
    hidden_states: Tensor | BackboneOutput,
    z_base: Tensor | None,
    layers: list[int],
    global_mean: bool,
    eps: float,
    num_layers: int | None = None,
) -> Tensor:
    """The base latent [B, N, C] from one backbone output: ``z_base`` (RAE) when ``layers`` is the last block only
    and there is no global term, else RAEv2's layer mean of ``LN_bb`` outputs (a mean, not a sum, as RAEv2's
    code computes it), plus the token mean of the deepest listed block's ``LN_bb`` output when ``global_mean``.
    ``hidden_states``: the [L, B, N, C] stack of every block, or a :class:`BackboneOutput` (then ``num_layers``,
    the backbone's depth, says which block is the last)."""
    feats = hidden_states if isinstance(hidden_states, BackboneOutput) else BackboneOutput(hidden_states, z_base)
    last = num_layers if num_layers is not None else feats.hidden_states.shape[0]
    if layers == [last] and not global_mean:
        return feats.z_base
    normed = F.layer_norm(feats.blocks(layers), (feats.hidden_states.shape[-1],), eps=eps)  # [K, B, N, C], one LN
    z = normed.mean(dim=0)
    if global_mean:
        z = z + normed[layers.index(max(layers))].mean(dim=1, keepdim=True)  # RAEv2's second term
    return z


def rae_v2_layers(num_layers: int, which: str = "upper") -> list[int]:
    """RAEv2's layer sets scaled to a backbone of ``num_layers`` blocks (1-based): ``upper`` is every other block
    of the upper half ending at the last (its "k7" on DINOv3-L's 24 blocks: 12, 14, ..., 24; on 12 blocks 6, 8,
    10, 12), ``all`` is every block but the first (its "k23")."""
    if which == "upper":
        return list(range(num_layers, num_layers // 2 - 1, -2))[::-1]
    if which == "all":
        return list(range(2, num_layers + 1))
    raise ValueError(f"layer set {which!r} is not 'upper' or 'all'")


def _resolve_local(name_or_path: str, download: bool) -> str:
    """A local directory for ``name_or_path`` (a path, or a hub id in the local HF cache)."""
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BackboneNotFoundError(
                f"backbone directory {path} has no config.json (expected a save_pretrained directory)"
            )
        return str(path)
    if path.exists() or str(name_or_path).startswith((".", "/", "~")):
        raise BackboneNotFoundError(f"backbone path {path} does not exist or is not a directory")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(str(name_or_path), local_files_only=True)
    except Exception as local_err:  # not in the cache
        if not download:
            raise BackboneNotFoundError(
                f"backbone {name_or_path!r} is not a local directory and is not in the local Hugging Face cache "
                f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}). Provide it with "
                f"`huggingface-cli download {name_or_path}` on a machine with network access (then copy the cache), "
                f"or pass a local save_pretrained directory, or pass download=True to fetch it now."
            ) from local_err
    try:
        return snapshot_download(str(name_or_path))
    except Exception as err:
        raise BackboneNotFoundError(f"could not download backbone {name_or_path!r}: {err}") from None


def _read_norm_stats(directory: str) -> tuple[tuple | None, tuple | None]:
    """image_mean / image_std from a preprocessor_config.json, if the checkpoint has one."""
    pp = Path(directory) / "preprocessor_config.json"
    if not pp.is_file():
        return None, None
    from ..serialization import read_json

    cfg = read_json(pp, "a preprocessor_config.json")
    mean, std = cfg.get("image_mean"), cfg.get("image_std")
    return (tuple(mean) if mean else None), (tuple(std) if std else None)


def load_backbone(
    name_or_path: str,
    input_size: int = 224,
    *,
    download: bool = False,
    dtype: torch.dtype | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> FrozenBackbone:
    """Load a frozen backbone from a local ``save_pretrained`` directory or a cached hub id.

    Supported: DINOv2, DINOv2-with-registers, DINOv3 ViTs (``DINOv3ViTModel``), SigLIP/SigLIP2 vision towers
    (fixed resolution), ViT-MAE. Nothing is downloaded unless ``download=True``.
    """
    from transformers import AutoConfig, AutoModel

    directory = _resolve_local(name_or_path, download)
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    model_type = config.model_type
    family = _FAMILIES.get(model_type)
    if family is None:
        raise ValueError(f"backbone {name_or_path!r} has model_type {model_type!r}; supported: {sorted(_FAMILIES)}")
    if model_type.startswith("siglip2"):
        raise ValueError(
            f"backbone {name_or_path!r} is a NaFlex SigLIP2 checkpoint (Siglip2VisionModel), which takes patch "
            "sequences, not images; use a fixed-resolution SigLIP2 checkpoint such as google/siglip2-base-patch16-256"
        )
    kwargs = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if family == "siglip":
        from transformers import SiglipVisionModel

        # Works for vision-only and for full (text + vision) SigLIP checkpoints: keeps the tower.
        model = SiglipVisionModel.from_pretrained(directory, **kwargs)
    else:
        if family == "mae":
            config.mask_ratio = 0.0  # keep every token
        model = AutoModel.from_pretrained(directory, config=config, **kwargs)
    f_mean, f_std = _read_norm_stats(directory)
    return FrozenBackbone(
        model, family, input_size=input_size, name_or_path=str(name_or_path), mean=mean or f_mean, std=std or f_std
    )


def random_backbone(config: RandomBackboneConfig, input_size: int) -> FrozenBackbone:
    """A seeded random DINOv2-with-registers (smoke tests and benchmarks: it has learnt nothing)."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(config.seed)
    hf = Dinov2WithRegistersConfig(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        patch_size=config.patch_size,
        num_register_tokens=config.num_register_tokens,
        image_size=input_size,
    )
    return FrozenBackbone(Dinov2WithRegistersModel(hf).eval(), "dinov2", input_size=input_size, name_or_path=None)


def build_backbone(config: BackboneConfig, base_dir: str | Path | None = None) -> FrozenBackbone:
    """The frozen backbone a :class:`BackboneConfig` describes.

    A relative ``name_or_path`` that names a directory inside ``base_dir`` (a saved tokenizer's
    ``backbone/``) is read from there. Recorded ``hidden_size`` / ``num_layers`` are checked.
    """
    if config.name_or_path:
        local = Path(base_dir) / config.name_or_path if base_dir is not None else None
        source = str(local) if local is not None and local.is_dir() else config.name_or_path
        mean = tuple(config.pixel_mean) if config.pixel_mean else None
        std = tuple(config.pixel_std) if config.pixel_std else None
        backbone = load_backbone(source, input_size=config.input_size, mean=mean, std=std)
    elif config.random is not None:
        backbone = random_backbone(config.random, config.input_size)
    else:
        raise ConfigError(
            "backbone.name_or_path not set: give a local save_pretrained directory or a cached hub id "
            "(or backbone.random for a smoke test)"
        )
    check_backbone(backbone, config)
    return backbone


def check_backbone(backbone: FrozenBackbone, config: BackboneConfig) -> None:
    """Raise if ``backbone`` does not have the width / depth that ``config`` recorded."""
    for key, actual in (("hidden_size", backbone.hidden_size), ("num_layers", backbone.num_layers)):
        expected = getattr(config, key)
        if expected is not None and expected != actual:
            raise ConfigError(
                f"backbone {backbone.name_or_path!r} has {key}={actual}, but backbone.{key}={expected} was recorded "
                f"(the tokenizer was trained on width {config.hidden_size} with {config.num_layers} blocks)"
            )
