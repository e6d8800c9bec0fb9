"""drorae: the Depth-Routed Representation AutoEncoder (DRoRAE) visual tokenizer.

A frozen pretrained ViT, a depth-routed fusion of all its layers (paper eqs. 2-5), and an
RAE-compatible ViT decoder; plus training, evaluation and the offline demo.
"""

__version__ = "0.5.0"

from .configuration import ConfigError  # noqa: E402
from .interop import export_rae, import_rae  # noqa: E402
from .tokenizer.backbones import BackboneConfig, BackboneOutput, FrozenBackbone, build_backbone, load_backbone  # noqa: E402
from .tokenizer.decoder import DECODER_PRESETS, DecoderConfig, RAEDecoder  # noqa: E402
from .tokenizer.fusion import FUSION_PRESETS, DepthRoutedFusion, FusionConfig, FusionOutput  # noqa: E402
from .tokenizer.model import DRoRAE, DRoRAEConfig, DRoRAEOutput  # noqa: E402

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
