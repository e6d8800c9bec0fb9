"""Text-to-image in a tokenizer's latent space: Bagel's Mixture-of-Transformers on a Qwen2 LLM (paper section 4.3).

- :mod:`.mot`: the generator (two experts per Qwen2 layer, one attention over caption and image);
- :mod:`.trainer`: ``drorae train-t2i`` on the shared engine;
- :mod:`.sampling`: ``drorae sample-t2i`` (CFG with the empty caption, GenEval's folder layout).
"""

from .mot import MoTConfig, MoTGenerator, TextContext

__all__ = ["MoTConfig", "MoTGenerator", "TextContext"]
