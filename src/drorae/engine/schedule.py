"""Learning-rate schedule shared by every trainer: linear warm-up, then cosine decay."""

from __future__ import annotations

import math


def warmup_cosine_lr(
    step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> float:
    """The learning rate at optimizer step ``step`` (0-based).

    Linear warm-up ``base_lr * (step + 1) / warmup_steps`` for ``step < warmup_steps``, then a
    cosine from ``base_lr`` down to ``base_lr * min_lr_ratio`` at ``total_steps`` (held there after).
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return base_lr * (min_lr_ratio + (1 - min_lr_ratio) * cosine)
