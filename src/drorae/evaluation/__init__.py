"""Measuring both stages.

- :mod:`.metrics`: PSNR, Fréchet distances in any feature space, the offline TF-Inception FID network;
- :mod:`.reconstruction`: ``drorae eval`` (rFID, PSNR, SSIM, LPIPS in RAE's conventions, resumable shards);
- :mod:`.generation`: ``drorae eval-gen`` (gFID, precision/recall, IS and KID through torch-fidelity).
"""

from ..data.adm import adm_center_crop
from .generation import evaluate_generation
from .reconstruction import evaluate

__all__ = ["adm_center_crop", "evaluate", "evaluate_generation"]
