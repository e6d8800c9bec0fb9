"""Learning-rate schedules shared by every trainer: linear warm-up, then a cosine decay (the tokenizer) or a
constant rate with a final linear decay (RAE's stage 2)."""

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


def warmup_constant_linear_lr(
    step: int, base_lr: float, warmup_steps: int, total_steps: int, decay_steps: int, min_lr_ratio: float = 0.0
) -> float:
    """Linear warm-up, ``base_lr`` held, then a linear decay to ``base_lr * min_lr_ratio`` over the last
    ``decay_steps`` of ``total_steps`` (``decay_steps = 0``: constant to the end)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    start = total_steps - decay_steps
    if decay_steps <= 0 or step < start:
        return base_lr
    progress = min(1.0, (step - start) / decay_steps)
    return base_lr * (1 - (1 - min_lr_ratio) * progress)
