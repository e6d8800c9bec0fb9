"""Import RAE models into DRoRAE and export fusion-off DRoRAE models to diffusers.

Sources ``import_rae`` understands:

* a diffusers ``AutoencoderRAE`` directory (``config.json`` + ``diffusion_pytorch_model.safetensors``):
  encoder, decoder, latent statistics and scaling factor all come from it;
* an RAE decoder checkpoint (official ViT-MAE key names, ``.pt``/``.pth``/``.bin``/``.safetensors``)
  plus a backbone (path or cached hub id) and optionally RAE's latent statistics file.

Every key of the source must map onto the model; anything else is an error that names the
unmatched keys (diffusers checkpoints written under transformers 4.x attention names are converted,
never silently re-initialised).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor

from ..embeddings import sincos_pos_embed_2d
from ..serialization import (
    CheckpointKeyError,
    load_safetensors,
    load_strict,
    read_json,
    read_state_dict,
)
from ..tokenizer.backbones import IMAGENET_MEAN, IMAGENET_STD, FrozenBackbone, load_backbone
from ..tokenizer.decoder import RAEDecoder
from ..tokenizer.model import DRoRAE
from .decoder_keys import convert_rae_decoder_state_dict, export_decoder_state_dict, infer_decoder_config

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIFFUSERS_VERSION = "0.42.1"
RAE_STATS_EPS = 1e-5  # RAE: (z - mean) / sqrt(var + 1e-5)
DIFFUSERS_STD_EPS = 1e-5  # diffusers: (z - mean) / (std + 1e-5)

# transformers 4.x -> 5.x attention key names (the encoder of a diffusers file saved under 4.x).
_LEGACY_ENCODER_KEYS = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)
# The final LayerNorm's affine parameters: RAE drops them (its latent is the non-affine LN).
_FINAL_NORM = {"dinov2": "layernorm.", "mae": "layernorm.", "siglip": "vision_model.post_layernorm."}


def _build_diffusers_encoder(cfg: dict) -> tuple[torch.nn.Module, str]:
    """The encoder diffusers builds from an AutoencoderRAE config (head dim 64, default configs)."""
    from transformers import (
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
        SiglipVisionConfig,
        SiglipVisionModel,
        ViTMAEConfig,
        ViTMAEModel,
    )

    etype = cfg.get("encoder_type", "dinov2")
    hidden, patch, layers = (
        cfg.get("encoder_hidden_size", 768),
        cfg.get("encoder_patch_size", 14),
        cfg.get("encoder_num_hidden_layers", 12),
    )
    common = dict(hidden_size=hidden, patch_size=patch, num_attention_heads=hidden // 64, num_hidden_layers=layers)
    if etype == "dinov2":
        return Dinov2WithRegistersModel(Dinov2WithRegistersConfig(image_size=518, **common)), "dinov2"
    if etype == "siglip2":
        return SiglipVisionModel(SiglipVisionConfig(image_size=256, **common)), "siglip"
    if etype == "mae":
        return ViTMAEModel(ViTMAEConfig(image_size=224, mask_ratio=0.0, **common)), "mae"
    raise ValueError(f"unknown AutoencoderRAE encoder_type {etype!r}; expected dinov2, siglip2 or mae")


def _load_encoder_weights(model: torch.nn.Module, family: str, state: dict[str, Tensor], source: Path) -> None:
    expected = model.state_dict()
    final_norm = _FINAL_NORM[family]
    mapped, unmatched = {}, []
    for key, value in state.items():
        k = key
        if k not in expected:
            for old, new in _LEGACY_ENCODER_KEYS:
                k = k.replace(old, new)
        if k in expected:
            mapped[k] = value
        else:
            unmatched.append("encoder." + key)
    missing = sorted(k for k in expected if k not in mapped and not k.startswith(final_norm))
    if unmatched or missing:
        raise CheckpointKeyError(
            f"encoder weights in {source} do not match a {family} encoder: unmatched keys {unmatched[:8]}"
            f"{' ...' if len(unmatched) > 8 else ''}; missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}"
        )
    bad = [k for k, v in mapped.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        raise CheckpointKeyError(f"encoder weights in {source} have wrong shapes for {bad[:8]}")
    model.load_state_dict(mapped, strict=False)


def _import_diffusers(directory: Path) -> DRoRAE:
    cfg = read_json(directory / "config.json", "a diffusers AutoencoderRAE config.json")
    state = load_safetensors(directory / DIFFUSERS_WEIGHTS)
    model, family = _build_diffusers_encoder(cfg)
    enc = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    dec = {k: v for k, v in state.items() if k.startswith("decoder.")}
    rest = {k: v for k, v in state.items() if not k.startswith(("encoder.", "decoder."))}
    unknown = sorted(set(rest) - {"encoder_mean", "encoder_std", "_latents_mean", "_latents_std"})
    if unknown:
        raise CheckpointKeyError(f"{directory / DIFFUSERS_WEIGHTS} has keys that do not map: {unknown}")
    _load_encoder_weights(model, family, enc, directory / DIFFUSERS_WEIGHTS)
    mean = (
        tuple(rest["encoder_mean"].flatten().tolist())
        if "encoder_mean" in rest
        else tuple(cfg.get("encoder_norm_mean") or IMAGENET_MEAN)
    )
    std = (
        tuple(rest["encoder_std"].flatten().tolist())
        if "encoder_std" in rest
        else tuple(cfg.get("encoder_norm_std") or IMAGENET_STD)
    )
    backbone = FrozenBackbone(model, family, input_size=cfg.get("encoder_input_size", 224), mean=mean, std=std)
    dcfg = infer_decoder_config(
        dec,
        latent_dim=backbone.hidden_size,
        num_patches=backbone.num_tokens,
        num_heads=cfg.get("decoder_num_attention_heads", 16),
    )
    dcfg.patch_size = cfg.get("patch_size", dcfg.patch_size)
    dcfg.pos_embed_base_grid = 16  # diffusers scales sin-cos positions to a 16-grid
    decoder = RAEDecoder(dcfg)
    load_strict(decoder, convert_rae_decoder_state_dict(dec, "diffusers"), source=directory / DIFFUSERS_WEIGHTS)
    tok = DRoRAE(backbone, decoder, fusion=None)
    # diffusers always normalises: (z - mean) / (std + 1e-5), with mean 0 / std 1 by default.
    tok.set_latent_stats(
        rest.get("_latents_mean", torch.zeros(1)), rest.get("_latents_std", torch.ones(1)), eps=DIFFUSERS_STD_EPS
    )
    tok.config.scaling_factor = float(cfg.get("scaling_factor", 1.0))
    tok.config.noise_tau = float(cfg.get("noise_tau", 0.0))
    return tok


def read_rae_stats(path: Path) -> tuple[Tensor, Tensor]:
    """RAE's latent statistics: {'mean', 'var'} (or 'std'); returns (mean, sqrt(var + 1e-5))."""
    stats = read_state_dict(path)
    if "mean" not in stats or not ({"var", "std"} & set(stats)):
        raise KeyError(f"latent statistics {path} must hold 'mean' and 'var' (or 'std'); found {sorted(stats)}")
    squeeze = lambda t: t.float().squeeze(0) if t.ndim == 4 else t.float()  # noqa: E731  [1,C,h,w] -> [C,h,w]
    mean = squeeze(stats["mean"])
    std = torch.sqrt(squeeze(stats["var"]) + RAE_STATS_EPS) if "var" in stats else squeeze(stats["std"])
    return mean, std


def import_rae(
    src: str | Path,
    *,
    backbone: str | FrozenBackbone | None = None,
    stats: str | Path | None = None,
    input_size: int = 224,
    num_heads: int | None = None,
    key: str | None = None,
) -> DRoRAE:
    """Build a fusion-off DRoRAE from an RAE model whose encode/decode it reproduces.

    Args:
        src: a diffusers ``AutoencoderRAE`` directory, or an RAE decoder checkpoint file.
        backbone: for a decoder file, the frozen backbone (path, cached hub id, or a loaded one).
        stats: for a decoder file, RAE's latent statistics file ({'mean', 'var'}), if the model used them.
        input_size: backbone input size for a decoder file (RAE: 224 for DINOv2-B).
        num_heads: decoder heads, when the decoder width is not one of RAE's presets.
        key: entry of a nested checkpoint that holds the decoder state dict (e.g. "ema").
    """
    src = Path(src)
    if src.is_dir():
        cfg_path = src / "config.json"
        cfg = read_json(cfg_path, "a diffusers config.json") if cfg_path.is_file() else {}
        if cfg.get("_class_name") != "AutoencoderRAE":
            raise ValueError(
                f"{src} is not a diffusers AutoencoderRAE directory (config.json _class_name is "
                f"{cfg.get('_class_name')!r}); for an RAE decoder file pass the file itself"
            )
        return _import_diffusers(src)
    if backbone is None:
        raise ValueError(f"importing the RAE decoder file {src} needs the backbone it was trained on: pass backbone=")
    state = read_state_dict(src, key)  # before the backbone: a foreign file fails fast
    stats_pair = read_rae_stats(Path(stats)) if stats is not None else None
    bb = backbone if isinstance(backbone, FrozenBackbone) else load_backbone(str(backbone), input_size=input_size)
    dcfg = infer_decoder_config(state, latent_dim=bb.hidden_size, num_patches=bb.num_tokens, num_heads=num_heads)
    if dcfg.num_patches != bb.num_tokens:
        raise ValueError(
            f"decoder {src} was trained on {dcfg.num_patches} tokens; the backbone gives {bb.num_tokens} "
            f"at input_size={bb.input_size}"
        )
    # RAE's stage-1 trainer trains decoder_pos_embed: a table that moved from its sin-cos start is kept as learned
    table = next((v for k, v in state.items() if k.endswith("decoder_pos_embed")), None)
    sincos = sincos_pos_embed_2d(dcfg.hidden_size, math.isqrt(dcfg.num_patches))
    dcfg.learned_pos_embed = table is not None and not torch.allclose(
        table.float().reshape(sincos.shape), sincos, atol=1e-5
    )
    decoder = RAEDecoder(dcfg)
    load_strict(decoder, convert_rae_decoder_state_dict(state, "rae", dcfg.learned_pos_embed), source=src)
    tok = DRoRAE(bb, decoder, fusion=None)
    if stats_pair is not None:
        tok.set_latent_stats(*stats_pair, eps=0.0)
    return tok


def export_rae(model: DRoRAE, directory: str | Path) -> Path:
    """Write a fusion-off DRoRAE as a diffusers ``AutoencoderRAE`` directory (identical encode/decode)."""
    if model.fusion_enabled:
        raise ValueError(
            "cannot export a DRoRAE with fusion enabled to AutoencoderRAE: diffusers reads only the "
            "backbone's last layer. Set model.fusion_enabled = False to export the plain-RAE tokenizer."
        )
    if not model.rae_latent:
        raise ValueError(
            f"cannot export a DRoRAE whose base latent is a layer mean (backbone.latent_layers="
            f"{model.latent_layers}, latent_global_mean={model.latent_global_mean}) to AutoencoderRAE: diffusers "
            "reads only the backbone's last layer, so its latent would differ from the one this decoder was trained on"
        )
    bb, dec = model.backbone, model.decoder
    if bb.family not in ("dinov2", "siglip", "mae"):
        raise ValueError(f"AutoencoderRAE has no {bb.family} encoder (it builds DINOv2, SigLIP2 and MAE)")
    hf = bb.model.config
    etype = {"dinov2": "dinov2", "siglip": "siglip2", "mae": "mae"}[bb.family]
    problems = []
    if bb.family == "dinov2" and bb.num_prefix_tokens != 5:
        problems.append(f"AutoencoderRAE's DINOv2 has 4 register tokens; this backbone has {bb.num_prefix_tokens - 1}")
    if hf.num_attention_heads != bb.hidden_size // 64:
        problems.append(
            f"AutoencoderRAE builds {bb.hidden_size // 64} heads (width/64); the backbone has {hf.num_attention_heads}"
        )
    rebuilt, _ = _build_diffusers_encoder(
        {
            "encoder_type": etype,
            "encoder_hidden_size": bb.hidden_size,
            "encoder_patch_size": bb.patch_size,
            "encoder_num_hidden_layers": bb.num_layers,
        }
    )
    for name in (
        "mlp_ratio",
        "intermediate_size",
        "layer_norm_eps",
        "hidden_act",
        "qkv_bias",
        "use_swiglu_ffn",
        "num_register_tokens",
    ):
        if hasattr(hf, name) and getattr(hf, name) != getattr(rebuilt.config, name, None):
            problems.append(
                f"backbone {name}={getattr(hf, name)!r}, "
                f"AutoencoderRAE would build {getattr(rebuilt.config, name, None)!r}"
            )
    dc = dec.config
    if dc.num_patches != bb.num_tokens:
        problems.append(f"decoder grid {dc.num_patches} tokens != backbone {bb.num_tokens} tokens")
    if dc.grid_size != 16 and dc.pos_embed_base_grid != 16:
        problems.append(
            f"decoder position embedding: diffusers scales positions to a 16-grid; "
            f"this {dc.grid_size}-grid decoder does not"
        )
    if dc.layer_norm_eps != 1e-12:
        problems.append(f"decoder layer_norm_eps={dc.layer_norm_eps}, AutoencoderRAE uses 1e-12")
    if problems:
        raise ValueError("this DRoRAE cannot be written as an AutoencoderRAE: " + "; ".join(problems))

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final_norm = _FINAL_NORM[bb.family]
    state = {f"encoder.{k}": v for k, v in bb.model.state_dict().items() if not k.startswith(final_norm)}
    state.update(export_decoder_state_dict(dec, "diffusers"))
    state["encoder_mean"] = bb.mean.reshape(1, 3, 1, 1).clone()
    state["encoder_std"] = bb.std.reshape(1, 3, 1, 1).clone()
    if model.config.latent_norm:
        lat_mean = model.latent_mean.clone()
        lat_std = model.latent_std + model.config.latent_std_eps - DIFFUSERS_STD_EPS
    else:  # diffusers always divides by (std + 1e-5): make that an exact identity
        lat_mean, lat_std = torch.zeros(1), torch.full((1,), 1.0 - DIFFUSERS_STD_EPS)
    state["_latents_mean"], state["_latents_std"] = lat_mean.float(), lat_std.float()
    config = {
        "_class_name": "AutoencoderRAE",
        "_diffusers_version": DIFFUSERS_VERSION,
        "encoder_type": etype,
        "encoder_hidden_size": bb.hidden_size,
        "encoder_patch_size": bb.patch_size,
        "encoder_num_hidden_layers": bb.num_layers,
        "decoder_hidden_size": dc.hidden_size,
        "decoder_num_hidden_layers": dc.num_layers,
        "decoder_num_attention_heads": dc.num_heads,
        "decoder_intermediate_size": dc.intermediate_size,
        "patch_size": dc.patch_size,
        "encoder_input_size": bb.input_size,
        "image_size": dc.image_size,
        "num_channels": dc.num_channels,
        "encoder_norm_mean": bb.mean.flatten().tolist(),
        "encoder_norm_std": bb.std.flatten().tolist(),
        "latents_mean": lat_mean.tolist(),
        "latents_std": lat_std.tolist(),
        "noise_tau": model.config.noise_tau,
        "reshape_to_2d": True,
        "use_encoder_loss": False,
        "scaling_factor": model.config.scaling_factor,
    }
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(directory / DIFFUSERS_WEIGHTS))
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return directory
