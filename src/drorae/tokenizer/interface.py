"""What the commands need from a tokenizer, and the fingerprint that ties a latent cache or a DiT to one.

``eval``, ``stats``, ``cache-latents``, ``train-dit``, ``sample``, ``eval-gen``, ``train-t2i`` and ``sample-t2i``
use a tokenizer through this interface only (:class:`Tokenizer`); :class:`~drorae.tokenizer.model.DRoRAE` and
:class:`~drorae.tokenizer.vae.DiffusersVAETokenizer` implement it, and
:func:`~drorae.tokenizer.factory.load_tokenizer` picks one from a directory's ``config.json``.

A *fingerprint* is a short hash of how a tokenizer turns images into the latent a generator models (the latent
rule, the fusion switch, the normalisation; for a VAE also its encoder weights). A latent cache and a trained DiT
record it, and a command given another tokenizer refuses to mix them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Tokenizer(Protocol):
    """Images in ``[0, 1]`` ``[B, 3, S, S]`` <-> latents ``[B, C, h, w]`` (normalised as a generator sees them)."""

    @property
    def image_size(self) -> int:
        """The side ``S`` of the (ADM-centre-cropped) images it encodes."""

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of one image's latent."""

    def encode(self, images: Tensor) -> Tensor:
        """``[B, 3, S, S]`` in ``[0, 1]`` -> normalised latent ``[B, C, h, w]``."""

    def decode(self, latent: Tensor) -> Tensor:
        """Normalised latent -> images ``[B, 3, S, S]`` on the ``[0, 1]`` scale (not clamped)."""

    def raw_latents(self, images: Tensor) -> Tensor:
        """The latent *before* its normalisation (what ``drorae stats`` measures)."""

    def fingerprint(self) -> str:
        """:func:`latent_fingerprint`-style hash of the image -> latent map."""

    def latent_info(self) -> dict:
        """JSON-able facts a latent cache records (kind, normalisation, fusion switch, ...)."""


def latent_fingerprint(
    fusion_enabled: bool,
    std_eps: float,
    scaling_factor: float,
    stats: tuple[Tensor, Tensor] | None,
    latent_rule: tuple[list[int], bool] | None = None,
) -> str:
    """A DRoRAE's fingerprint from its parts (``stats``: the (mean, std) buffers, ``None`` without normalisation;
    ``latent_rule``: a layer-mean base latent's ``(layers, global_mean)``, ``None`` for RAE's, which keeps the
    fingerprints of earlier versions), also for a DiT whose tokenizer is not at hand (``drorae import-rae-dit
    --stats``)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([fusion_enabled, stats is not None, std_eps, scaling_factor]).encode())
    if latent_rule is not None:
        digest.update(json.dumps({"latent_layers": list(latent_rule[0]), "global_mean": latent_rule[1]}).encode())
    for value in stats or ():
        digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def tensor_digest(digest, tensors: dict[str, Tensor]) -> None:
    """Feed ``tensors`` (name, dtype, shape and bytes, in name order) into a hashlib ``digest``."""
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous()
        digest.update(json.dumps([name, str(value.dtype), list(value.shape)]).encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())


__all__ = ["Tokenizer", "latent_fingerprint", "tensor_digest"]
