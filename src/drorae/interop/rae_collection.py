"""RAE's released models by name: where each variant's files sit in RAE's collection.

The collection is the Hub repository ``nyu-visionx/RAE-collections`` (fetched file by file, only the files a
variant needs, unless cached) or a local copy with its folder layout (``hf download nyu-visionx/RAE-collections
--local-dir models``). The paths are those of RAE's configs (bytetriper/RAE ``configs/stage1/pretrained/*.yaml``,
``configs/stage2/sampling/*/*.yaml`` and ``configs/stage1/training/DINOv2-B_decXL.yaml``, less their ``models/``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..hub import parse_hub_id, resolve_repo_file

COLLECTION = "nyu-visionx/RAE-collections"
DINO_DISC = "discs/dino_vit_small_patch8_224.pth"  # RAE's DINO discriminator weights


@dataclass(frozen=True)
class RAETokenizerVariant:
    decoder: str  # ViT-XL decoder, in the collection
    stats: str  # latent statistics {'mean', 'var'}
    backbone: str  # the frozen encoder's hub id
    input_size: int  # the encoder's input side


@dataclass(frozen=True)
class RAEDiTVariant:
    checkpoint: str  # stage2_model.pt
    tokenizer: str  # the tokenizer variant whose latents it generates (its stat.pt is the fingerprint)
    role: str


TOKENIZERS = {
    "dinov2-b": RAETokenizerVariant(
        "decoders/dinov2/wReg_base/ViTXL_n08/model.pt",
        "stats/dinov2/wReg_base/imagenet1k/stat.pt",
        "facebook/dinov2-with-registers-base",
        224,
    ),
    "dinov2-b-512": RAETokenizerVariant(
        "decoders/dinov2/wReg_base/ViTXL_n08_i512/model.pt",
        "stats/dinov2/wReg_base/imagenet1k_512/stat.pt",
        "facebook/dinov2-with-registers-base",
        448,
    ),
    "mae-b": RAETokenizerVariant(
        "decoders/mae/base_p16/ViTXL_n08/model.pt",
        "stats/mae/base_p16/ImageNet1k/stat.pt",
        "facebook/vit-mae-base",
        256,
    ),
    "siglip2-b": RAETokenizerVariant(
        "decoders/siglip2/base_p16_i256/ViTXL_n08/model.pt",
        "stats/siglip2/base_p16_i256/ImageNet1k/stat.pt",
        "google/siglip2-base-patch16-256",
        256,
    ),
}
DITS = {
    "dit-dh-xl": RAEDiTVariant(
        "DiTs/Dinov2/wReg_base/ImageNet256/DiTDH-XL/stage2_model.pt", "dinov2-b", "DiT^DH-XL, 256 px"
    ),
    "dit-dh-s": RAEDiTVariant(
        "DiTs/Dinov2/wReg_base/ImageNet256/DiTDH-S_ep14/stage2_model.pt", "dinov2-b", "its AutoGuidance guide"
    ),
    "dit-dh-xl-512": RAEDiTVariant(
        "DiTs/Dinov2/wReg_base/ImageNet512/DiTDH-XL_ep400/stage2_model.pt", "dinov2-b-512", "DiT^DH-XL, 512 px"
    ),
    "dit-dh-s-512": RAEDiTVariant(
        "DiTs/Dinov2/wReg_base/ImageNet512/DiTDH-S_ep20/stage2_model.pt", "dinov2-b-512", "its 512 px guide"
    ),
}


def is_collection(source: str | os.PathLike) -> bool:
    """A local folder or a Hub id (as opposed to one checkpoint file)."""
    return Path(source).is_dir() or parse_hub_id(source) is not None


def collection_file(source: str | os.PathLike, path: str, what: str) -> Path:
    """``path`` inside RAE's collection ``source`` (a local copy of its folder layout, or a Hub id)."""
    hub = parse_hub_id(source)
    if hub is not None:
        return resolve_repo_file(hub, path, what)
    local = Path(source) / path
    if not local.is_file():
        raise FileNotFoundError(
            f"{local} not found: {source} is not a copy of RAE's collection with {what} (fetch it with "
            f"`hf download {COLLECTION} {path} --local-dir {source}`)"
        )
    return local


def _variant(table: dict, variant: str, what: str):
    if variant not in table:
        raise ValueError(f"--variant {variant!r} is not one of RAE's {what}: {', '.join(table)}")
    return table[variant]


def rae_tokenizer_files(source: str | os.PathLike, variant: str) -> tuple[Path, Path, RAETokenizerVariant]:
    """``(decoder file, stat.pt, variant)`` of an RAE tokenizer variant in the collection ``source``."""
    v = _variant(TOKENIZERS, variant, "tokenizers")
    decoder = collection_file(source, v.decoder, f"the {variant} decoder")
    return decoder, collection_file(source, v.stats, f"the {variant} latent statistics"), v


def rae_dit_files(source: str | os.PathLike, variant: str) -> tuple[Path, Path]:
    """``(stage2_model.pt, the stat.pt of its tokenizer)`` of an RAE generator variant in ``source``."""
    v = _variant(DITS, variant, "generators")
    checkpoint = collection_file(source, v.checkpoint, f"the {variant} generator ({v.role})")
    stats = TOKENIZERS[v.tokenizer].stats
    return checkpoint, collection_file(source, stats, f"the {v.tokenizer} latent statistics")


def rae_dino_file(source: str | os.PathLike) -> Path:
    """RAE's DINO discriminator weights in the collection ``source``."""
    return collection_file(source, DINO_DISC, "RAE's DINO discriminator weights")


__all__ = [
    "COLLECTION",
    "DINO_DISC",
    "DITS",
    "TOKENIZERS",
    "collection_file",
    "is_collection",
    "rae_dino_file",
    "rae_dit_files",
    "rae_tokenizer_files",
]
