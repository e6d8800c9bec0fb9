"""One adapter per external format.

- :mod:`.rae_tokenizer`: RAE's decoder files and diffusers' ``AutoencoderRAE`` <-> :class:`~drorae.DRoRAE`;
- :mod:`.rae_stage2`: RAE's stage-2 checkpoints (``DiTwDDTHead``, ``LightningDiT``) -> :class:`~drorae.generation.DiT`.
"""

from .rae_stage2 import import_rae_dit, read_rae_stage2_checkpoint, save_rae_dit
from .rae_tokenizer import export_rae, import_rae

__all__ = ["export_rae", "import_rae", "import_rae_dit", "read_rae_stage2_checkpoint", "save_rae_dit"]
