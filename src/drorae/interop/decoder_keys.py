"""Decoder checkpoint key maps: drorae's :class:`~drorae.tokenizer.decoder.RAEDecoder` <-> RAE's official decoder
(ViT-MAE names) and diffusers' ``AutoencoderRAE`` decoder (``to_q``/``to_k``/``to_v``/``to_out.0``), plus
:func:`infer_decoder_config` (a decoder's sizes from its tensor shapes)."""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from ..serialization import CheckpointKeyError
from ..tokenizer.decoder import DECODER_PRESETS, DecoderConfig, RAEDecoder

# ---------------------------------------------------------------------------------------------
# Checkpoint key maps: RAE's official decoder (ViT-MAE names) and diffusers' AutoencoderRAE.
# ---------------------------------------------------------------------------------------------

_BLOCK_MAPS = {
    "rae": {
        "attention.attention.query": ("attn.qkv", 0),
        "attention.attention.key": ("attn.qkv", 1),
        "attention.attention.value": ("attn.qkv", 2),
        "attention.output.dense": ("attn.proj", None),
    },
    "diffusers": {
        "attention.to_q": ("attn.qkv", 0),
        "attention.to_k": ("attn.qkv", 1),
        "attention.to_v": ("attn.qkv", 2),
        "attention.to_out.0": ("attn.proj", None),
    },
}
_COMMON_BLOCK_MAP = {
    "layernorm_before": ("norm1", None),
    "layernorm_after": ("norm2", None),
    "intermediate.dense": ("mlp.fc1", None),
    "output.dense": ("mlp.fc2", None),
}
_TOP_MAP = {
    "decoder_embed": "embed",
    "decoder_norm": "norm",
    "decoder_pred": "pred",
}


def convert_rae_decoder_state_dict(
    state: dict[str, Tensor], layout: str = "rae", keep_pos_embed: bool = False
) -> dict[str, Tensor]:
    """Map an RAE (``layout="rae"``) or diffusers (``"diffusers"``) decoder state dict to ours.

    Keys may carry a ``decoder.`` prefix. ``decoder_pos_embed`` is dropped (drorae recomputes the fixed sin-cos
    table), or with ``keep_pos_embed`` kept as ``pos_embed`` (a decoder with ``learned_pos_embed``: RAE's
    stage-1 trainer trains it). Raises ``CheckpointKeyError`` naming every key that does not map.
    """
    if layout not in _BLOCK_MAPS:
        raise ValueError(f"layout={layout!r} must be 'rae' or 'diffusers'")
    block_map = {**_BLOCK_MAPS[layout], **_COMMON_BLOCK_MAP}
    out: dict[str, Tensor] = {}
    qkv_parts: dict[str, dict[int, Tensor]] = {}
    unmatched = []
    for key, value in state.items():
        k = key[len("decoder.") :] if key.startswith("decoder.") else key
        if k == "decoder_pos_embed":
            if keep_pos_embed:
                out["pos_embed"] = value
            continue  # else fixed sin-cos, recomputed (diffusers does not even save it)
        if k == "trainable_cls_token":
            out["cls_token"] = value
            continue
        m = re.fullmatch(r"(decoder_embed|decoder_norm|decoder_pred)\.(weight|bias)", k)
        if m:
            out[f"{_TOP_MAP[m.group(1)]}.{m.group(2)}"] = value
            continue
        m = re.fullmatch(r"decoder_layers\.(\d+)\.(.+)\.(weight|bias)", k)
        if m and m.group(2) in block_map:
            target, slot = block_map[m.group(2)]
            name = f"blocks.{m.group(1)}.{target}.{m.group(3)}"
            if slot is None:
                out[name] = value
            else:
                qkv_parts.setdefault(name, {})[slot] = value
            continue
        unmatched.append(key)
    if unmatched:
        raise CheckpointKeyError(
            f"{len(unmatched)} decoder checkpoint keys do not map onto the {layout} decoder layout: "
            f"{unmatched[:10]}{' ...' if len(unmatched) > 10 else ''}"
        )
    for name, parts in qkv_parts.items():
        if sorted(parts) != [0, 1, 2]:
            raise CheckpointKeyError(f"incomplete q/k/v for {name}: found parts {sorted(parts)}")
        out[name] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    return out


def export_decoder_state_dict(
    decoder: RAEDecoder, layout: str = "diffusers", prefix: str = "decoder."
) -> dict[str, Tensor]:
    """Our decoder's weights under RAE (``"rae"``) or diffusers (``"diffusers"``) key names."""
    if layout not in _BLOCK_MAPS:
        raise ValueError(f"layout={layout!r} must be 'rae' or 'diffusers'")
    inverse = {v: k for k, v in {**_BLOCK_MAPS[layout], **_COMMON_BLOCK_MAP}.items()}
    top_inverse = {v: k for k, v in _TOP_MAP.items()}
    out: dict[str, Tensor] = {}
    for name, value in decoder.state_dict().items():
        value = value.detach().contiguous()
        if name == "pos_embed":  # a learned table (RAE's stage 1 trains it)
            out[prefix + "decoder_pos_embed"] = value
            continue
        if name == "cls_token":
            out[prefix + "trainable_cls_token"] = value
            continue
        m = re.fullmatch(r"(embed|norm|pred)\.(weight|bias)", name)
        if m:
            out[f"{prefix}{top_inverse[m.group(1)]}.{m.group(2)}"] = value
            continue
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", name)
        i, target, kind = m.group(1), m.group(2), m.group(3)
        if target == "attn.qkv":
            for slot, chunk in enumerate(value.chunk(3, dim=0)):
                out[f"{prefix}decoder_layers.{i}.{inverse[(target, slot)]}.{kind}"] = chunk.contiguous()
        else:
            out[f"{prefix}decoder_layers.{i}.{inverse[(target, None)]}.{kind}"] = value
    return out


def infer_decoder_config(
    state: dict[str, Tensor],
    latent_dim: int | None = None,
    num_patches: int | None = None,
    num_heads: int | None = None,
) -> DecoderConfig:
    """Read a DecoderConfig off an RAE/diffusers decoder state dict (heads come from the presets)."""

    def get(suffix: str) -> Tensor:
        for k, v in state.items():
            if k.endswith(suffix):
                return v
        raise CheckpointKeyError(f"decoder checkpoint has no key ending in {suffix!r}")

    embed = get("decoder_embed.weight")
    hidden, c = embed.shape
    if latent_dim is not None and latent_dim != c:
        raise ValueError(f"decoder checkpoint expects latent width {c}, but the backbone width is {latent_dim}")
    depth = 1 + max(int(m.group(1)) for k in state for m in [re.search(r"decoder_layers\.(\d+)\.", k)] if m)
    inter = next(v for k, v in state.items() if re.search(r"decoder_layers\.0\.intermediate\.dense\.weight$", k)).shape[
        0
    ]
    pred_out = get("decoder_pred.weight").shape[0]
    patch = math.isqrt(pred_out // 3)
    pos = next((v for k, v in state.items() if k.endswith("decoder_pos_embed")), None)
    if pos is not None:
        num_patches = pos.shape[-2] - 1
    if num_patches is None:
        raise ValueError("decoder checkpoint has no decoder_pos_embed: pass num_patches (the backbone token count)")
    if num_heads is None:
        matches = [p["num_heads"] for p in DECODER_PRESETS.values() if p["hidden_size"] == hidden]
        if not matches:
            raise ValueError(f"cannot infer the head count of a decoder with width {hidden}: pass num_heads")
        num_heads = matches[0]
    return DecoderConfig(
        latent_dim=c,
        hidden_size=hidden,
        num_layers=depth,
        num_heads=num_heads,
        intermediate_size=inter,
        patch_size=patch,
        num_patches=num_patches,
    )
