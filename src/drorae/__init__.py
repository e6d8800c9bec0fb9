"""drorae: the Depth-Routed Representation AutoEncoder (DRoRAE) visual tokenizer.

A frozen pretrained ViT, a depth-routed fusion of all its layers (paper eqs. 2-5), and an
RAE-compatible ViT decoder; plus training, evaluation and the offline demo.
"""

from ._version import __version__ as __version__
from .configuration import ConfigError
from .interop import export_rae, import_rae
from .tokenizer.backbones import BackboneConfig, BackboneOutput, FrozenBackbone, build_backbone, load_backbone
from .tokenizer.decoder import DECODER_PRESETS, DecoderConfig, RAEDecoder
from .tokenizer.fusion import FUSION_PRESETS, DepthRoutedFusion, FusionConfig, FusionOutput
from .tokenizer.model import DRoRAE, DRoRAEConfig, DRoRAEOutput

__all__ = [
    "ConfigError",
    "BackboneConfig",
    "BackboneOutput",
    "FrozenBackbone",
    "build_backbone",
    "load_backbone",
    "DECODER_PRESETS",
    "DecoderConfig",
    "RAEDecoder",
    "FUSION_PRESETS",
    "DepthRoutedFusion",
    "FusionConfig",
    "FusionOutput",
    "DRoRAE",
    "DRoRAEConfig",
    "DRoRAEOutput",
    "export_rae",
    "import_rae",
]
