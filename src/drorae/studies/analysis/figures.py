"""Figures of the analyses: router weight maps (diverging, centred at 0), layer-probe curves, spectra, PCA images.

Figures are drawn on off-screen Agg canvases (no pyplot state), so they are safe in training loops and headless jobs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import Tensor


def router_weight_maps(weights: Tensor, grid_hw: tuple[int, int]) -> Tensor:
    """Reshape per-token router weights ``[B, N, L]`` into spatial maps ``[B, L, h, w]``."""
    b, n, num_layers = weights.shape
    h, w = grid_hw
    if n != h * w:
        raise ValueError(f"{n} tokens do not fit a {h}x{w} grid")
    return weights.detach().transpose(1, 2).reshape(b, num_layers, h, w)


def new_figure(figsize: tuple[float, float], layout: str | None = None):
    # Object-oriented Agg canvas: renders off-screen without touching pyplot's global backend
    # or figure registry, so it is safe in training loops and headless jobs.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def plot_router_weights(
    maps: Tensor,
    path: str | Path,
    layer_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Plot router weight maps, one panel per layer, with a diverging colormap centred at 0.

    The router has no softmax, so weights can be negative; a symmetric colour range
    (``RdBu_r``, ``[-m, m]`` with ``m = max |w|``, shared by all panels) keeps the sign readable
    and the panels comparable.

    Args:
        maps: ``[L, h, w]`` for one image or ``[B, L, h, w]`` (one row per image), e.g. from
            :func:`router_weight_maps`.
        path: Output image file (PNG recommended); parent directories are created.
        layer_names: Panel titles, default ``"block 1" ... "block L"``.
        title: Optional figure title.

    Returns:
        The written path.
    """
    from matplotlib.colors import Normalize

    if maps.ndim == 3:
        maps = maps.unsqueeze(0)
    if maps.ndim != 4:
        raise ValueError(f"maps must be [L, h, w] or [B, L, h, w], got {tuple(maps.shape)}")
    maps = maps.detach().float().cpu()
    rows, cols = maps.shape[:2]
    if layer_names is None:
        layer_names = [f"block {k + 1}" for k in range(cols)]
    if len(layer_names) != cols:
        raise ValueError(f"{len(layer_names)} layer names for {cols} layers")

    limit = maps.abs().max().item() or 1.0  # all-zero maps still need a valid range
    norm = Normalize(vmin=-limit, vmax=limit)
    # Constrained layout keeps the shared colourbar from squeezing or spreading the panels.
    fig = new_figure((1.6 * cols + 1.0, 1.6 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            image = ax.imshow(maps[r, c].numpy(), cmap="RdBu_r", norm=norm, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(layer_names[c], fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.9, label="router weight")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_layer_probe(
    psnrs: Sequence[float] | Mapping[str, Sequence[float]],
    path: str | Path,
    labels: Sequence[str] | None = None,
    title: str = "Linear pixel probe (held-out)",
) -> Path:
    """Line plot of layer-probe PSNR (dB) against depth.

    Args:
        psnrs: One curve (a sequence of PSNRs) or several, as ``{legend label: PSNRs}``
            (e.g. random-init vs pretrained backbone); all curves share the x axis.
        path: Output image file; parent directories are created.
        labels: x tick labels, e.g. ``["b1", ..., "b6", "z_base"]``; default ``1..n``.
        title: Axes title.

    Returns:
        The written path.
    """
    curves = dict(psnrs) if isinstance(psnrs, Mapping) else {"": list(psnrs)}
    length = max(len(v) for v in curves.values())
    if labels is None:
        labels = [str(i + 1) for i in range(length)]
    if len(labels) != length:
        raise ValueError(f"{len(labels)} labels for curves of length {length}")

    fig = new_figure((max(4.0, 0.6 * length + 2.0), 3.2))
    ax = fig.add_subplot(1, 1, 1)
    for name, values in curves.items():
        ax.plot(range(len(values)), list(values), marker="o", label=name or None)
    ax.set_xticks(range(length))
    ax.set_xticklabels(labels)
    ax.set_xlabel("layer")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if any(curves):
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path
