"""DiT-XL/2 on SD-VAE latents (``configs/generation/dit-xl-2-sdvae.yaml``): the network built for a 32 x 32 x 4 latent
at patch size 2 has the parameter count of the DiT paper's DiT-XL/2, counted by facebookresearch/DiT's own
``models.py`` (``tests/fixtures/dit_xl_2``: the script and the commit). The head built is the velocity head (out
channels = C = 4, DiT's ``learn_sigma=False``): flow matching predicts no variance; the paper's 675,129,632 is the
learned-sigma head (2C outputs), also recorded. DiT's ``pos_embed`` is a frozen ``nn.Parameter``, drorae's a buffer:
trainable parameters are compared."""

import json
from pathlib import Path

import torch

from drorae.generation.dit import DiT
from drorae.generation.trainer import fill_dit_config, load_dit_config

REPO = Path(__file__).resolve().parents[2]
META = json.loads((REPO / "tests" / "fixtures" / "dit_xl_2" / "meta.json").read_text())


def _build(config: str, latent, patch=None):
    cfg = load_dit_config(REPO / "configs" / "generation" / config)
    dit_cfg = fill_dit_config(cfg.dit, latent, 1000)
    with torch.device("meta"):
        return DiT(dit_cfg)


def test_dit_xl_2_on_sd_vae_latents_has_dit_papers_parameter_count():
    net = _build("dit-xl-2-sdvae.yaml", (4, 32, 32))
    assert net.config.patch_size == 2 and net.config.grid_size == 16 and net.config.out_channels == 4
    assert META["commit"] == "ed81ce2229091fd4ecc9a223645f95cf379d582b"
    assert net.parameter_count() == META["velocity_head"]["trainable_parameters"] == 674_816_272
    # the learned-sigma head differs by the final linear's extra rows only: 1152 x (2 * 2 * 4) weights + 16 biases
    assert META["learn_sigma"]["parameters"] == 675_129_632
    extra = 1152 * 2 * 2 * 4 + 2 * 2 * 4
    assert META["learn_sigma"]["trainable_parameters"] - META["velocity_head"]["trainable_parameters"] == extra


def test_lightningdit_on_va_vae_shaped_config_builds_at_patch_1():
    net = _build("lightningdit-xl-1-vavae.yaml", (32, 16, 16))
    assert net.config.arch == "lightning" and net.config.patch_size == 1 and net.config.grid_size == 16
    assert net.config.hidden_size == 1152 and net.config.depth == 28 and not net.config.head_depth
