"""One adapter per external format.

- :mod:`.rae_tokenizer`: RAE's decoder files and diffusers' ``AutoencoderRAE`` <-> :class:`~drorae.DRoRAE`;
- :mod:`.rae_stage2`: RAE's stage-2 checkpoints (``DiTwDDTHead``, ``LightningDiT``) -> :class:`~drorae.generation.DiT`;
- :mod:`.bagel`: Bagel's MoT model directories -> :class:`~drorae.generation.text.MoTGenerator`.
"""

from .bagel import import_bagel, save_bagel_mot
from .rae_stage2 import import_rae_dit, read_rae_stage2_checkpoint, save_rae_dit
from .rae_tokenizer import export_rae, import_rae

__all__ = [
    "export_rae",
    "import_bagel",
    "import_rae",
    "import_rae_dit",
    "read_rae_stage2_checkpoint",
    "save_bagel_mot",
    "save_rae_dit",
]
