"""Bagel's MoT checkpoints (ByteDance-Seed/Bagel, arXiv 2505.14683) as drorae text-to-image directories.

A Bagel model directory (as released, e.g. BAGEL-7B-MoT) holds ``llm_config.json`` (a Qwen2 config), the weights
``ema.safetensors`` and the Qwen2 tokenizer files. :func:`import_bagel` maps its generation path onto a
:class:`~drorae.generation.text.MoTGenerator` computing the same velocity (tests/fixtures/bagel_mot: Bagel's own
forward on a tiny random model); what only Bagel's understanding path uses is dropped and counted.

Key map (Bagel -> drorae), per layer ``i`` under ``language_model.model.layers.{i}.``:
``self_attn.{q,k,v,o}_proj``, ``self_attn.{q,k}_norm``, ``mlp``, ``input_layernorm``, ``post_attention_layernorm``
-> ``und.{i}.<same>``; the same names with ``_moe_gen`` -> ``gen.{i}.<name without _moe_gen>``.
``language_model.model.embed_tokens`` -> ``embed_tokens``, ``...norm`` -> ``norm``, ``...norm_moe_gen`` ->
``norm_gen``, ``time_embedder`` -> ``time_embed``, ``vae2llm`` -> ``latent_in``, ``llm2vae`` -> ``latent_out``.
``latent_pos_embed.pos_embed`` (fixed sin-cos) is compared with drorae's and dropped. Dropped as understanding-only:
``language_model.lm_head``, ``vit_model``, ``connector``, ``vit_pos_embed``.

Not in Bagel's files, so given here: the latent patch size (Bagel's released models use 2, hard-coded in its
``app.py``) and the latent grid to generate at (default: the largest the position table holds).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from torch import Tensor

from ..generation.text.mot import MoTConfig, MoTGenerator, llm_config_from_file
from ..serialization import CheckpointKeyError, load_safetensors, load_strict

FIXED_ATOL = 1e-5  # Bagel's position table is numpy float64 cast to float32; drorae's is built in float64 as well
LAYER = "language_model.model.layers."
UNDERSTANDING_ONLY = ("language_model.lm_head.", "vit_model.", "connector.", "vit_pos_embed.")
_LAYER_REST = re.compile(
    r"self_attn\.(q|k|v|o)_proj(_moe_gen)?\.(weight|bias)|self_attn\.(q|k)_norm(_moe_gen)?\.weight"
    r"|mlp(_moe_gen)?\.(gate|up|down)_proj\.weight|(input|post_attention)_layernorm(_moe_gen)?\.weight"
)
_DIRECT = {
    "language_model.model.embed_tokens.weight": "embed_tokens.weight",
    "language_model.model.norm.weight": "norm.weight",
    "language_model.model.norm_moe_gen.weight": "norm_gen.weight",
}
_PREFIXES = {"time_embedder.mlp.": "time_embed.mlp.", "vae2llm.": "latent_in.", "llm2vae.": "latent_out."}


def _rename(key: str) -> str | None:
    if key.startswith(LAYER):
        index, _, rest = key[len(LAYER) :].partition(".")
        if not index.isdigit() or not _LAYER_REST.fullmatch(rest):
            return None
        expert = "gen" if "_moe_gen" in rest else "und"
        return f"{expert}.{index}.{rest.replace('_moe_gen', '')}"
    if key in _DIRECT:
        return _DIRECT[key]
    for old, new in _PREFIXES.items():
        if key.startswith(old) and key.endswith((".weight", ".bias")):
            return new + key[len(old) :]
    return None


def infer_bagel_config(
    state: dict[str, Tensor],
    llm: dict,
    token_ids: dict[str, int],
    latent_patch_size: int = 2,
    latent_size: int | None = None,
    source: object = "checkpoint",
) -> MoTConfig:
    """The :class:`MoTConfig` of a Bagel state dict: Qwen2 shapes from ``llm`` (its ``llm_config.json``; the
    vocabulary from the embedding table, which Bagel may have grown), latent channels from ``vae2llm``, the
    position table's side from ``latent_pos_embed``, QK-norm from the presence of its weights."""
    for key in ("vae2llm.weight", "latent_pos_embed.pos_embed", "language_model.model.embed_tokens.weight"):
        if key not in state:
            raise CheckpointKeyError(f"{source} has no {key!r}: not a Bagel checkpoint with its generation path")
    p = latent_patch_size
    token_dim = state["vae2llm.weight"].shape[1]
    if token_dim % (p * p):
        raise ValueError(f"{source}: vae2llm takes {token_dim} features, not a multiple of patch {p} squared")
    rows = state["latent_pos_embed.pos_embed"].shape[0]
    side = math.isqrt(rows)
    if side * side != rows:
        raise ValueError(f"{source}: latent_pos_embed has {rows} positions, not a square table")
    latent_size = side * p if latent_size is None else latent_size
    llm = {**llm, "vocab_size": state["language_model.model.embed_tokens.weight"].shape[0]}
    return MoTConfig(
        llm=llm,
        qk_norm=f"{LAYER}0.self_attn.q_norm.weight" in state,
        latent_channels=token_dim // (p * p),
        latent_size=latent_size,
        latent_patch_size=p,
        max_latent_size=side,
        token_ids=dict(token_ids),
    ).resolved()


def convert_bagel_state_dict(
    state: dict[str, Tensor], model: MoTGenerator, source: object = "checkpoint"
) -> tuple[dict[str, Tensor], dict[str, int]]:
    """``(drorae state dict, {dropped prefix: tensors})``; a key with no place is a :class:`CheckpointKeyError`."""
    out, leftover = {}, []
    dropped = dict.fromkeys(UNDERSTANDING_ONLY, 0)
    for key, value in state.items():
        if key == "latent_pos_embed.pos_embed":
            ours = model.pos_embed
            gap = float((value.float() - ours.float()).abs().max()) if ours.shape == value.shape else float("inf")
            if gap > FIXED_ATOL:
                raise ValueError(
                    f"{source}: its fixed latent_pos_embed {tuple(value.shape)} differs from drorae's "
                    f"{tuple(ours.shape)} (max difference {gap:.3g})"
                )
            continue
        prefix = next((p for p in UNDERSTANDING_ONLY if key.startswith(p)), None)
        if prefix is not None:
            dropped[prefix] += 1
            continue
        new = _rename(key)
        if new is None:
            leftover.append(key)
        else:
            out[new] = value
    if leftover:
        raise CheckpointKeyError(f"{source} has keys with no place in a drorae MoT: {sorted(leftover)[:12]}")
    return out, {k: v for k, v in dropped.items() if v}


def import_bagel(
    src: str | Path,
    *,
    weights: str = "ema.safetensors",
    latent_patch_size: int = 2,
    latent_size: int | None = None,
    token_ids: dict[str, int] | None = None,
) -> MoTGenerator:
    """A :class:`MoTGenerator` computing the generation path of the Bagel model directory ``src``. ``token_ids``
    (Bagel's framing tokens) default to those of the tokenizer in ``src``."""
    src = Path(src)
    path = src / weights
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: give a Bagel model directory (llm_config.json, {weights})")
    llm = llm_config_from_file(src / "llm_config.json")
    if token_ids is None:
        from ..data.captions import CaptionTokenizer

        token_ids = CaptionTokenizer(src).ids
    state = load_safetensors(path)
    cfg = infer_bagel_config(state, llm, token_ids, latent_patch_size, latent_size, source=path)
    model = MoTGenerator(cfg)
    ours, dropped = convert_bagel_state_dict(state, model, source=path)
    load_strict(model, ours, source=path)
    model.imported_from = {"dir": str(src), "weights": weights, "dropped": dropped}
    return model.eval()


def save_bagel_mot(model: MoTGenerator, src: str | Path, out: str | Path, *, shift: float = 3.0,
                   max_text_tokens: int = 128) -> Path:  # fmt: skip
    """Write an imported Bagel as a MoT directory ``sample-t2i`` reads: its tokenizer in ``text_tokenizer``, the
    time shift (Bagel's inference default 3.0), no latent fingerprint (Bagel's VAE is not a drorae tokenizer)."""
    from ..data.captions import CaptionTokenizer

    out = Path(out)
    cfg = model.config
    extra = {
        "imported_from": getattr(model, "imported_from", None),
        "fingerprint": None,
        "latent_shape": [cfg.latent_channels, cfg.latent_size, cfg.latent_size],
        "shift": float(shift),
        "max_text_tokens": int(max_text_tokens),
        "weights": "ema",
    }
    model.save_pretrained(out, extra=extra)
    CaptionTokenizer(src, max_text_tokens).save_pretrained(out / "text_tokenizer")
    return out


__all__ = ["convert_bagel_state_dict", "import_bagel", "infer_bagel_config", "save_bagel_mot"]
