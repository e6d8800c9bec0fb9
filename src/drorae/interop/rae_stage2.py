"""RAE's stage-2 checkpoints (``DiTwDDTHead`` and ``LightningDiT``, bytetriper/RAE) as drorae :class:`DiT` directories.

RAE's ``train.py`` writes ``torch.save({"step", "epoch", "model", "ema", "optimizer", "scheduler"})``; its sampler
loads ``ema`` when present, and so does :func:`import_rae_dit` (``weights="model"`` takes the raw weights). A bare
state dict (``.pt`` or ``.safetensors``) is read as it is. Files are read with ``torch.load(weights_only=True)``:
tensors and plain containers only.

Every size comes from the tensor shapes: trunk and head widths and depths from RAE's single ``blocks`` list (trunk
blocks first, at the ``s_embedder`` width; head blocks at the ``x_embedder`` width), latent channels and patch from
the patch embeddings, the latent side from ``pos_embed``, classes from the label table (its last row is the null
class). Head counts are not in the shapes: they come from the preset whose sizes match (DiTDH-XL: 16 / 16,
DiTDH-S: 6 / 16) or from ``num_heads`` / ``head_num_heads``. RAE's fixed tensors (``pos_embed`` and the RoPE
tables) are compared with drorae's and then dropped; every other key maps one-to-one, or the import fails
naming the keys left over.

Key map (RAE -> drorae), DiT^DH: ``s_embedder`` -> ``x_embedder`` (the trunk's), ``x_embedder`` -> ``head_embedder``,
``blocks.{i}`` -> ``blocks.{i}`` (i < depth) or ``head_blocks.{i - depth}``, ``y_embedder.embedding_table`` ->
``y_embedder``, ``final_layer.norm_final`` -> ``final_layer.norm``; all other names are the same.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import Tensor

from ..generation.dit import DIT_PRESETS, DiT, DiTConfig
from ..serialization import CheckpointKeyError, ForeignFileError, load_safetensors, load_strict, load_torch_file

FIXED_ATOL = 1e-5  # RAE builds its RoPE tables in float32, drorae in float64 (then float32)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / torch.compile wrappers around the same module


def read_rae_stage2_checkpoint(path: str | Path, weights: str = "ema") -> tuple[dict[str, Tensor], str]:
    """``(state dict, where it came from)`` of an RAE stage-2 file: its ``ema`` (or ``model``) entry, or a bare
    state dict."""
    path = Path(path)
    if weights not in ("ema", "model"):
        raise ValueError(f"weights={weights!r} is not 'ema' or 'model'")
    if path.suffix == ".safetensors":
        return load_safetensors(path), "state dict"
    obj = load_torch_file(path, "an RAE stage-2 checkpoint")
    if not isinstance(obj, dict):
        raise ForeignFileError(f"{path} holds a {type(obj).__name__}, not an RAE checkpoint dict or state dict")
    source = "state dict"
    if isinstance(obj.get("ema"), dict) or isinstance(obj.get("model"), dict):
        entry = weights if isinstance(obj.get(weights), dict) else ("model" if weights == "ema" else None)
        if entry is None:
            raise ForeignFileError(f"{path} has no {weights!r} entry (top-level keys: {sorted(obj)})")
        obj, source = obj[entry], entry
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise ForeignFileError(
            f"{path}: {source} is not a tensor state dict (entries {sorted(bad)[:5]} are not tensors)"
        )
    for prefix in _WRAPPER_PREFIXES:
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return obj, source


def _blocks(state: dict[str, Tensor]) -> list[int]:
    """Width of each block ``blocks.{i}`` (its first RMSNorm), in order."""
    found = {
        int(m.group(1)): v.shape[0] for k, v in state.items() if (m := re.fullmatch(r"blocks\.(\d+)\.norm1\.weight", k))
    }
    if not found or sorted(found) != list(range(len(found))):
        raise CheckpointKeyError(
            f"no contiguous blocks.<i>.norm1.weight keys (found blocks {sorted(found)}): not an RAE DiT with RMSNorm"
        )
    return [found[i] for i in range(len(found))]


def _need(state: dict[str, Tensor], key: str, source: object) -> Tensor:
    if key not in state:
        raise CheckpointKeyError(f"{source} has no {key!r}: not an RAE DiTwDDTHead / LightningDiT state dict")
    return state[key]


def infer_rae_dit_config(
    state: dict[str, Tensor],
    num_heads: int | None = None,
    head_num_heads: int | None = None,
    head_depth: int | None = None,
    source: object = "checkpoint",
) -> DiTConfig:
    """The :class:`DiTConfig` of an RAE state dict (sizes from shapes, head counts from a preset or the flags)."""
    widths = _blocks(state)
    ddt = "s_embedder.proj.weight" in state
    trunk_embed = _need(state, "s_embedder.proj.weight" if ddt else "x_embedder.proj.weight", source)
    width, channels, patch = trunk_embed.shape[0], trunk_embed.shape[1], trunk_embed.shape[2]
    if ddt:
        head_width = _need(state, "x_embedder.proj.weight", source).shape[0]
        if head_depth is None:
            if head_width == width:
                raise ValueError(
                    f"{source}: trunk and head are both {width} wide, so the blocks list does not say where the head "
                    "starts: pass --head-depth"
                )
            head_depth = sum(1 for w in widths if w == head_width)
        depth = len(widths) - head_depth
        if depth < 1 or head_depth < 1 or widths != [width] * depth + [head_width] * head_depth:
            raise ValueError(
                f"{source}: block widths {widths} are not {depth} trunk blocks of {width} then {head_depth} head "
                f"blocks of {head_width}"
            )
    else:
        head_width, head_depth, depth = 0, 0, len(widths)
        if widths != [width] * depth:
            raise ValueError(f"{source}: block widths {widths} are not all the trunk width {width}")
    tokens = _need(state, "pos_embed", source).shape[1]
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise ValueError(f"{source}: pos_embed has {tokens} positions, not a square grid")
    swiglu = _need(state, "blocks.0.mlp.w3.weight", source).shape[1]
    mlp_ratio = 4.0
    if swiglu != int(2 / 3 * mlp_ratio * width):
        raise ValueError(
            f"{source}: SwiGLU hidden width {swiglu} is not int(2/3 * 4 * {width}) (mlp_ratio 4, RAE's configs)"
        )
    sizes = dict(hidden_size=width, depth=depth, head_hidden_size=head_width, head_depth=head_depth)
    presets = [name for name, p in DIT_PRESETS.items() if all(p[k] == v for k, v in sizes.items())]
    preset_heads = DIT_PRESETS[presets[0]] if presets else {}
    num_heads = num_heads or preset_heads.get("num_heads")
    head_num_heads = head_num_heads or (preset_heads.get("head_num_heads") if head_depth else 0)
    if not num_heads or (head_depth and not head_num_heads):
        raise ValueError(
            f"{source}: trunk {width} x {depth}"
            + (f", head {head_width} x {head_depth}" if head_depth else "")
            + " matches no preset (DiTDH-S/B/L/XL, DiT-S/B/L/XL): pass --num-heads N"
            + (" and --head-num-heads M" if head_depth else "")
        )
    return DiTConfig(
        **sizes,
        num_heads=num_heads,
        head_num_heads=head_num_heads,
        in_channels=channels,
        input_size=grid * patch,
        patch_size=patch,
        num_classes=_need(state, "y_embedder.embedding_table.weight", source).shape[0] - 1,
        mlp_ratio=mlp_ratio,
        frequency_size=_need(state, "t_embedder.W", source).shape[0],
    ).resolved()


def convert_rae_dit_state_dict(
    state: dict[str, Tensor], model: DiT, source: object = "checkpoint"
) -> dict[str, Tensor]:
    """RAE names -> drorae names (module docstring); RAE's fixed tensors are checked against ``model``'s and
    dropped. Raises :class:`CheckpointKeyError` naming any key that does not map."""
    cfg = model.config
    ddt = bool(cfg.head_depth)
    fixed = {"pos_embed": model.pos_embed}
    ropes = (
        {"enc_feat_rope": model.rope, "dec_feat_rope": getattr(model, "head_rope", None)}
        if ddt
        else {"feat_rope": model.rope}
    )
    for name, rope in ropes.items():
        fixed[f"{name}.freqs_cos"], fixed[f"{name}.freqs_sin"] = rope.cos, rope.sin
    out, leftover = {}, []
    for key, value in state.items():
        if key in fixed:
            ours = fixed[key].reshape(value.shape) if fixed[key].numel() == value.numel() else None
            gap = float((value.float() - ours.float()).abs().max()) if ours is not None else float("inf")
            if gap > FIXED_ATOL:
                raise ValueError(
                    f"{source}: its fixed {key} {tuple(value.shape)} differs from the one drorae builds for this size "
                    f"(max difference {gap:.3g})"
                )
            continue
        new = _rename(key, ddt, cfg.depth)
        if new is None:
            leftover.append(key)
        else:
            out[new] = value
    if leftover:
        raise CheckpointKeyError(f"{source} has keys with no place in a drorae DiT: {sorted(leftover)[:12]}")
    return out


def _rename(key: str, ddt: bool, depth: int) -> str | None:
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if m:
        i, rest = int(m.group(1)), m.group(2)
        if not re.fullmatch(
            r"norm[12]\.weight|attn\.(qkv|proj)\.(weight|bias)|mlp\.(w12|w3)\.(weight|bias)"
            r"|adaLN_modulation\.1\.(weight|bias)",
            rest,
        ):
            return None
        return f"blocks.{i}.{rest}" if i < depth else f"head_blocks.{i - depth}.{rest}"
    direct = {
        "y_embedder.embedding_table.weight": "y_embedder.weight",
        "final_layer.norm_final.weight": "final_layer.norm.weight",
        "t_embedder.W": "t_embedder.W",
    }
    if key in direct:
        return direct[key]
    m = re.fullmatch(
        r"(s_embedder|x_embedder|s_projector|t_embedder\.mlp\.[02]|final_layer\.(linear|adaLN_modulation\.1))"
        r"(\.proj)?\.(weight|bias)",
        key,
    )
    if not m:
        return None
    if ddt and key.startswith("s_embedder."):
        return "x_embedder." + key[len("s_embedder.") :]
    if ddt and key.startswith("x_embedder."):
        return "head_embedder." + key[len("x_embedder.") :]
    if not ddt and key.startswith("s_"):
        return None
    return key


def import_rae_dit(
    src: str | Path,
    *,
    num_heads: int | None = None,
    head_num_heads: int | None = None,
    head_depth: int | None = None,
    weights: str = "ema",
) -> DiT:
    """A drorae :class:`DiT` computing exactly the network of RAE's checkpoint ``src`` (see the module docstring)."""
    state, entry = read_rae_stage2_checkpoint(src, weights)
    source = f"{src} ({entry})" if entry == "state dict" else f"{src} (its {entry!r} weights)"
    cfg = infer_rae_dit_config(state, num_heads, head_num_heads, head_depth, source=source)
    model = DiT(cfg)
    load_strict(model, convert_rae_dit_state_dict(state, model, source), source=source)
    model.imported_from = {"file": str(src), "entry": entry}  # recorded by save_rae_dit
    return model.eval()


def rae_stats_fingerprint(stats: str | Path) -> str:
    """The latent fingerprint of a tokenizer made by ``drorae import-rae DECODER --stats stats`` (fusion off,
    RAE's normalisation ``(z - mean) / sqrt(var + 1e-5)``, scaling 1), without building that tokenizer."""
    from ..generation.latents import latent_fingerprint
    from ..tokenizer.model import DRoRAEConfig
    from .rae_tokenizer import read_rae_stats

    mean, std = torch.broadcast_tensors(*read_rae_stats(Path(stats)))
    return latent_fingerprint(False, 0.0, DRoRAEConfig().scaling_factor, (mean, std))


def save_rae_dit(
    model: DiT,
    out: str | Path,
    *,
    stats: str | Path | None = None,
    tokenizer: str | Path | None = None,
    shift: float | None = None,
) -> Path:
    """Write ``model`` as a DiT directory whose ``config.json`` carries what ``drorae sample`` reads: the time
    shift (default RAE's ``sqrt(C h w / 4096)``) and, given RAE's ``stats`` file or a drorae ``tokenizer``
    directory, the latent fingerprint that the tokenizer it goes with must match."""
    from ..generation.flow import dimension_shift
    from ..generation.latents import stats_fingerprint

    if stats is not None and tokenizer is not None:
        raise ValueError("give --stats or --tokenizer, not both (either one fixes the latent fingerprint)")
    cfg = model.config
    shape = [cfg.in_channels, cfg.input_size, cfg.input_size]
    fingerprint = None
    if stats is not None:
        fingerprint = rae_stats_fingerprint(stats)
    elif tokenizer is not None:
        from ..tokenizer.model import DRoRAE

        fingerprint = stats_fingerprint(DRoRAE.from_pretrained(tokenizer))
    extra = {
        "imported_from": getattr(model, "imported_from", None),
        "fingerprint": fingerprint,
        "latent_shape": shape,
        "shift": float(shift) if shift is not None else dimension_shift(shape[0] * shape[1] * shape[2]),
    }
    model.save_pretrained(out, extra=extra)
    return Path(out)


__all__ = [
    "convert_rae_dit_state_dict",
    "import_rae_dit",
    "infer_rae_dit_config",
    "rae_stats_fingerprint",
    "read_rae_stage2_checkpoint",
    "save_rae_dit",
]
