"""Fixed position embeddings shared by the tokenizer's decoder and the stage-2 DiT."""

from __future__ import annotations

import torch
from torch import Tensor


def sincos_pos_embed_2d(dim: int, grid: int, cls_token: bool = True, base_grid: int | None = None) -> Tensor:
    """MAE's fixed 2-D sin-cos embedding [grid*grid (+1), dim]; the cls position is all zeros.

    Half the channels encode the column (x) coordinate and half the row (y), column FIRST (MAE's
    ``meshgrid(grid_w, grid_h)``, which RAE's decoder and its DiT^DH both use), each as
    [sin(pos * omega), cos(pos * omega)] with omega_i = 10000^(-i / (dim/4)).
    ``base_grid`` rescales positions to a grid the embedding was trained at (RAE's decoder at other sizes).
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim % 4 == 0, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(grid, dtype=torch.float64)
    if base_grid is not None:
        pos = pos * (base_grid / grid)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")

    def embed_1d(pos: Tensor) -> Tensor:
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    emb = torch.cat([embed_1d(cols), embed_1d(rows)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()
