"""Frozen perceptual distances used as reconstruction losses.

Two networks are supported, both computed fully offline:

* ``"lpips"``: standard LPIPS (Zhang et al., 2018) with the VGG16 trunk. The ``lpips`` wheel
  ships the calibrated linear heads, but its constructor downloads the ImageNet VGG16 weights
  (``vgg16-397923af.pth``) through torchvision. We build the network with a random trunk
  instead and load the VGG16 convolution weights from a local file.
* ``"stlpips"``: shift-tolerant LPIPS (Ghildyal & Liu, 2022), VGG variant, from the
  ``stlpips-pytorch`` wheel, which ships the complete network (trunk and heads). It is a
  different metric from LPIPS: values are not comparable and it is logged as ``stlpips-vgg``.

Both modules take two image batches in ``[0, 1]``, return the batch mean as a scalar tensor,
keep their parameters frozen and stay in eval mode whatever ``.train()`` is called on a parent
(the LPIPS heads contain dropout layers that must never be active).
"""

from __future__ import annotations

import contextlib
import importlib.resources
import importlib.util
import os
import re
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ...serialization import load_torch_file

__all__ = [
    "LPIPS_VGG16_FILENAME",
    "PERCEPTUAL_KINDS",
    "PerceptualLoss",
    "LPIPSLoss",
    "STLPIPSLoss",
    "build_perceptual_loss",
    "default_vgg16_search_paths",
]

#: File name torchvision uses for the ImageNet VGG16 weights (the suffix is a sha256 prefix).
LPIPS_VGG16_FILENAME = "vgg16-397923af.pth"

PERCEPTUAL_KINDS = ("lpips", "stlpips", "none")

# Convolution indices inside torchvision's ``vgg16().features``; LPIPS keeps these indices as
# the child names of its five slices, which is what makes the key mapping below possible.
_VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_LPIPS_SLICE_KEY = re.compile(r"^slice\d+\.(\d+)\.(weight|bias)$")


class PerceptualLoss(nn.Module):
    """Base class: a frozen perceptual network that always runs in eval mode.

    Subclasses set ``self.net`` to a module called as ``net(x, y)`` on images in ``[-1, 1]`` that
    returns per-sample distances of shape ``[B, 1, 1, 1]``.
    """

    #: Name used for logging, e.g. ``"lpips-vgg"``.
    name: str = "perceptual"

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.net.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        # Ignore `mode`: a parent's `.train()` must not switch on the heads' dropout.
        return super().train(False)

    def distances(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image perceptual distances ``[B]`` between two batches ``[B, 3, H, W]`` in ``[0, 1]``."""
        if x.shape != y.shape:
            raise ValueError(f"{self.name}: shape mismatch {tuple(x.shape)} vs {tuple(y.shape)}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name}: expected [B, 3, H, W] images, got {tuple(x.shape)}")
        return self.net(x * 2.0 - 1.0, y * 2.0 - 1.0).reshape(x.shape[0])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean perceptual distance between two image batches ``[B, 3, H, W]`` in ``[0, 1]``."""
        return self.distances(x, y).mean()

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


# --------------------------------------------------------------------------------------------
# LPIPS (VGG16) with locally loaded ImageNet weights
# --------------------------------------------------------------------------------------------


def default_vgg16_search_paths() -> list[Path]:
    """Where the VGG16 weights are looked for when no path is given.

    This is the torch hub cache torchvision downloads into (``$TORCH_HOME/hub/checkpoints``,
    ``$TORCH_HOME`` defaulting to ``$XDG_CACHE_HOME/torch`` or ``~/.cache/torch``).
    """
    return [Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_VGG16_FILENAME]


def _resolve_vgg16_path(weights_path: str | os.PathLike[str] | None) -> Path:
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        # A directory is accepted as "the folder holding the torchvision file".
        candidates = [path / LPIPS_VGG16_FILENAME] if path.is_dir() else [path]
    else:
        candidates = default_vgg16_search_paths()
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked_at = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"LPIPS needs the ImageNet VGG16 weights '{LPIPS_VGG16_FILENAME}' (torchvision's file) "
        f"and they were not found; looked at: {looked_at}. Nothing is downloaded at run time: "
        f"copy that file there (or pass its path as the LPIPS weights path), or use the "
        f"offline shift-tolerant metric with `perceptual: stlpips`, or disable the perceptual "
        f"term with `perceptual_weight: 0`."
    )


def _load_vgg16_features(path: Path) -> dict[str, torch.Tensor]:
    """Read the convolution weights of a torchvision VGG16 state dict (``features.*`` keys)."""
    state = load_torch_file(path, "a torchvision VGG16 state dict (vgg16-397923af.pth)")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a VGG16 state dict, got {type(state).__name__}")
    wanted = [f"features.{i}.{kind}" for i in _VGG16_CONV_INDICES for kind in ("weight", "bias")]
    missing = [k for k in wanted if k not in state]
    if missing:
        raise ValueError(
            f"{path} is not a torchvision VGG16 state dict: missing {missing[:4]}{' ...' if len(missing) > 4 else ''}"
        )
    return {k: state[k] for k in wanted}


def _lpips_heads_path() -> Path:
    import lpips

    return Path(lpips.__file__).resolve().parent / "weights" / "v0.1" / "vgg.pth"


class LPIPSLoss(PerceptualLoss):
    """Standard LPIPS v0.1 with a VGG16 trunk, built without any download.

    Args:
        weights_path: torchvision's ImageNet VGG16 state dict (``vgg16-397923af.pth``), or a
            directory holding it. ``None`` looks in the torch hub cache
            (:func:`default_vgg16_search_paths`).
    """

    name = "lpips-vgg"

    def __init__(self, weights_path: str | os.PathLike[str] | None = None) -> None:
        # Read the file first so a missing or wrong file fails fast, before building the
        # (138M-parameter, classifier included) VGG16 that lpips constructs.
        vgg_path = _resolve_vgg16_path(weights_path)
        features = _load_vgg16_features(vgg_path)
        import lpips

        with warnings.catch_warnings():
            # lpips passes torchvision's deprecated `pretrained=` flag; with pnet_rand=True it
            # means "random init", i.e. no download.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\..*")
            net = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False)

        # Trunk: LPIPS names each layer of its slices by its index in torchvision's
        # `features`, so `net.sliceK.<i>.weight` <- `features.<i>.weight`.
        trunk_state = {}
        for key in net.net.state_dict():
            match = _LPIPS_SLICE_KEY.match(key)
            if match is None:
                raise RuntimeError(f"unexpected key {key!r} in lpips' VGG16 trunk")
            trunk_state[key] = features[f"features.{match.group(1)}.{match.group(2)}"]
        net.net.load_state_dict(trunk_state, strict=True)

        # Heads: loaded here rather than by lpips, whose loader is non-strict.
        heads = torch.load(_lpips_heads_path(), map_location="cpu", weights_only=True)
        for i, lin in enumerate(net.lins):
            lin.load_state_dict({"model.1.weight": heads[f"lin{i}.model.1.weight"]}, strict=True)

        super().__init__(net)
        self.weights_path = str(vgg_path)


# --------------------------------------------------------------------------------------------
# ST-LPIPS (shift-tolerant, VGG) from the stlpips-pytorch wheel
# --------------------------------------------------------------------------------------------

# stlpips-pytorch 0.0.2 imports these at module import time but never calls them (debugging
# leftovers); they are not declared as dependencies of the wheel.
_STLPIPS_UNUSED_IMPORTS = {"IPython": "embed", "torchsummary": "summary"}


@contextlib.contextmanager
def _placeholder_modules(names: dict[str, str]) -> Iterator[None]:
    """Temporarily provide inert modules for absent, never-called imports of a third-party package.

    Only modules that are not installed are replaced, and they are removed from ``sys.modules``
    afterwards, so a later real ``import IPython`` is unaffected.
    """
    added = []
    for module_name, attribute in names.items():
        if module_name in sys.modules or importlib.util.find_spec(module_name) is not None:
            continue

        def _unavailable(*args: object, _name: str = module_name, **kwargs: object) -> None:
            raise RuntimeError(f"{_name} is not installed (placeholder used to import stlpips)")

        placeholder = types.ModuleType(module_name)
        setattr(placeholder, attribute, _unavailable)
        sys.modules[module_name] = placeholder
        added.append(module_name)
    try:
        yield
    finally:
        for module_name in added:
            sys.modules.pop(module_name, None)


def _import_stlpips() -> types.ModuleType:
    if importlib.util.find_spec("stlpips_pytorch") is None:
        raise ImportError(
            "`perceptual: stlpips` needs the `stlpips-pytorch` package (pip install stlpips-pytorch==0.0.2)"
        )
    with _placeholder_modules(_STLPIPS_UNUSED_IMPORTS):
        from stlpips_pytorch import stlpips
    return stlpips


class STLPIPSLoss(PerceptualLoss):
    """Shift-tolerant LPIPS (VGG variant) with the weights shipped in ``stlpips-pytorch``.

    Not interchangeable with LPIPS: it uses anti-aliased (blur-pooled) VGG features and its
    own calibrated heads, so its values live on a different scale.
    """

    name = "stlpips-vgg"

    def __init__(self) -> None:
        stlpips = _import_stlpips()
        # pretrained=False: we load the shipped file ourselves, strictly, instead of the
        # package's non-strict load. Building the shift-tolerant trunk never downloads.
        net = stlpips.LPIPS(net="vgg", variant="shift_tolerant", pretrained=False, verbose=False)
        weights = importlib.resources.files("stlpips_pytorch").joinpath("weights", "vST0.0", "vgg_shift_tolerant.pth")
        with importlib.resources.as_file(weights) as path:
            state = torch.load(path, map_location="cpu", weights_only=True)
        result = net.load_state_dict(state, strict=False)
        # `lins.*` are aliases of `lin0..lin4`, which the file does fill.
        missing = [k for k in result.missing_keys if not k.startswith("lins.")]
        if missing or result.unexpected_keys:
            raise RuntimeError(
                f"stlpips weights do not match the network: missing {missing}, unexpected {result.unexpected_keys}"
            )
        super().__init__(net)


# --------------------------------------------------------------------------------------------


def build_perceptual_loss(kind: str, weights_path: str | os.PathLike[str] | None = None) -> PerceptualLoss | None:
    """Build a frozen perceptual loss.

    Args:
        kind: ``"lpips"`` (standard LPIPS-VGG, needs local VGG16 weights), ``"stlpips"``
            (shift-tolerant LPIPS-VGG, fully shipped in its wheel) or ``"none"``.
        weights_path: for ``"lpips"`` only: the VGG16 file or its directory (ignored by the
            other kinds, so a config can switch kinds without editing the path).

    Returns:
        The loss module (with a ``name`` attribute for logging), or ``None`` for ``"none"``.
    """
    kind = kind.lower()
    if kind == "lpips":
        return LPIPSLoss(weights_path)
    if kind == "stlpips":
        return STLPIPSLoss()
    if kind == "none":
        return None
    raise ValueError(f"unknown perceptual loss {kind!r}; expected one of {PERCEPTUAL_KINDS}")
