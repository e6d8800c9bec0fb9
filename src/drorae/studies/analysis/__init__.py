"""Analyses of a tokenizer: layer probes (figure 1), spectra and router maps (section 4.6, appendix E)."""

from .figures import plot_layer_probe, plot_router_weights, router_weight_maps
from .latents import fused_vs_base, pca_rgb
from .probe import RidgeAccumulator, fit_ridge, layer_probe, patchify, predict, probe_backbone, unpatchify
from .report import analyze
from .spectra import log_magnitude_spectrum, radial_power_spectrum, spectral_difference, spectral_mad

__all__ = [
    "plot_layer_probe",
    "plot_router_weights",
    "router_weight_maps",
    "fused_vs_base",
    "pca_rgb",
    "RidgeAccumulator",
    "fit_ridge",
    "layer_probe",
    "patchify",
    "predict",
    "probe_backbone",
    "unpatchify",
    "analyze",
    "log_magnitude_spectrum",
    "radial_power_spectrum",
    "spectral_difference",
    "spectral_mad",
]
