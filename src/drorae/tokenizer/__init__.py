"""Stage 1, the tokenizer: a frozen ViT, the latent built from its layers, and the pixel decoder.

- :mod:`.backbones`: frozen Hugging Face ViTs -> hidden states of every block and ``z_base`` (eq. 1);
- :mod:`.fusion`: the depth-routed fusion (eqs. 2-5) and its ablation variants;
- :mod:`.decoder`: RAE's ViT-MAE pixel decoder;
- :mod:`.model`: :class:`DRoRAE`: encode / decode, latent normalisation, ``save_pretrained`` / ``from_pretrained``;
- :mod:`.losses`, :mod:`.training`: the losses and the three-phase trainer (``drorae train``).

The sweeps and analyses (``drorae scaling`` / ``ablate`` / ``analyze``) live in :mod:`drorae.studies`: they
evaluate, and :mod:`drorae.evaluation` imports this package.

Importing this package loads the model code only (not the trainer, the engine or the demo).
"""

from .backbones import BackboneConfig, BackboneOutput, FrozenBackbone, build_backbone, load_backbone
from .decoder import DECODER_PRESETS, DecoderConfig, RAEDecoder
from .fusion import FUSION_PRESETS, DepthRoutedFusion, FusionConfig, FusionOutput
from .model import DRoRAE, DRoRAEConfig, DRoRAEOutput, fusion_for_backbone

__all__ = [
    "BackboneConfig",
    "BackboneOutput",
    "DECODER_PRESETS",
    "DRoRAE",
    "DRoRAEConfig",
    "DRoRAEOutput",
    "DecoderConfig",
    "DepthRoutedFusion",
    "FUSION_PRESETS",
    "FrozenBackbone",
    "FusionConfig",
    "FusionOutput",
    "RAEDecoder",
    "build_backbone",
    "fusion_for_backbone",
    "load_backbone",
]
