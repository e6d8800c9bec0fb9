"""Stage 2: class-conditional generation in a tokenizer's latent space (paper section 4.2, appendix A).

- :mod:`.dit`: the DiT^DH / DiT network;
- :mod:`.flow`: flow matching (time distribution, shift, loss), ODE/SDE samplers, CFG and AutoGuidance;
- :mod:`.latents`: labelled image folders, exact latent statistics, latent caches;
- :mod:`.trainer`: ``drorae train-dit`` on the shared engine;
- :mod:`.sampling`: ``drorae sample`` (label pools, PNGs, ADM ``.npz``);
- :mod:`.evaluation`: ``drorae eval-gen`` (gFID, precision/recall).
"""

from .dit import DIT_PRESETS, DiT, DiTConfig

__all__ = ["DIT_PRESETS", "DiT", "DiTConfig"]
