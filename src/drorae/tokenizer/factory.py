"""``load_tokenizer``: the one way every command opens a tokenizer directory.

The directory's ``config.json`` ``_class_name`` decides: ``DRoRAE`` (drorae's own, also RAE and RAEv2 imports) is
:meth:`DRoRAE.from_pretrained <drorae.tokenizer.model.DRoRAE.from_pretrained>` (which also resolves what it
resolves, e.g. a run directory or a hub id); a diffusers VAE class is
:class:`~drorae.tokenizer.vae.DiffusersVAETokenizer`; a diffusers pipeline folder is read through its ``vae/``
sub-folder. Anything else is an error naming the class and the supported ones.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..serialization import read_json
from .model import DRoRAE
from .vae import DEFAULT_IMAGE_SIZE, VAE_CLASSES, DiffusersVAETokenizer

SUPPORTED = ("DRoRAE", *VAE_CLASSES)


def tokenizer_class(path: str | Path) -> tuple[str | None, Path]:
    """``(config.json's _class_name, the directory holding it)`` of a local tokenizer directory, ``(None, path)``
    when there is no local ``config.json`` (left to :meth:`DRoRAE.from_pretrained` to resolve or refuse)."""
    path = Path(path)
    if not (path / "config.json").is_file() and (path / "model_index.json").is_file() and (path / "vae").is_dir():
        path = path / "vae"  # a diffusers pipeline folder: its VAE
    if not (path / "config.json").is_file():
        return None, path
    return read_json(path / "config.json", "a tokenizer config.json").get("_class_name"), path


def load_tokenizer(
    path: str | Path,
    *,
    map_location: str | torch.device = "cpu",
    fusion: bool | None = None,
    sample_posterior: bool = False,
    image_size: int | None = None,
):
    """A :class:`~drorae.tokenizer.interface.Tokenizer` in eval mode.

    ``fusion``: a DRoRAE's fusion switch (``None``: as saved; ``True`` is an error for a VAE, which has none).
    ``sample_posterior``: a VAE's latent is a draw from its posterior instead of its mean (an error for a DRoRAE,
    whose latent is deterministic). ``image_size``: a VAE's input side (default 256; a DRoRAE's is its decoder's).
    """
    name, directory = tokenizer_class(path)
    if name in VAE_CLASSES:
        if fusion:
            raise ValueError(f"{path} is a {name}: it has no fusion to switch on")
        return DiffusersVAETokenizer.from_pretrained(
            directory, map_location, sample_posterior=sample_posterior, image_size=image_size or DEFAULT_IMAGE_SIZE
        ).eval()
    if name is not None and name != "DRoRAE":
        hint = " (import it first: drorae import-rae)" if name == "AutoencoderRAE" else ""
        raise ValueError(
            f"{path}/config.json describes a {name!r}, which is not a tokenizer drorae loads{hint}; supported: "
            f"{', '.join(SUPPORTED)}"
        )
    if sample_posterior:
        raise ValueError(f"{path} is a DRoRAE, whose latent is deterministic: --sample-posterior applies to VAEs")
    model = DRoRAE.from_pretrained(path, map_location=map_location).eval()
    if image_size is not None and image_size != model.image_size:
        raise ValueError(f"{path} decodes {model.image_size} px images; --image-size {image_size} does not apply")
    if fusion is not None:
        model.fusion_enabled = fusion
    return model


__all__ = ["SUPPORTED", "load_tokenizer", "tokenizer_class"]
