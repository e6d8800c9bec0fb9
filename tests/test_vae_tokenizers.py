"""Diffusers VAEs as drorae tokenizers: random tiny configs saved with diffusers' ``save_pretrained``, loaded back
through :func:`drorae.tokenizer.factory.load_tokenizer`; encode / decode equal diffusers' own calls with the scaling
its pipelines apply (written out here from the pipelines' source, not from drorae's code)."""

from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from drorae.tokenizer.factory import load_tokenizer  # noqa: E402
from drorae.tokenizer.interface import Tokenizer  # noqa: E402

SIZE = 32
_KL = dict(
    block_out_channels=(8, 16),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    latent_channels=4,
    norm_num_groups=4,
    layers_per_block=1,
)


def _tiny(kind: str):
    torch.manual_seed(0)
    if kind == "sd":
        return diffusers.AutoencoderKL(**_KL, scaling_factor=0.18215)
    if kind == "sd3":  # SD3 / FLUX.1: shift_factor
        return diffusers.AutoencoderKL(**_KL, scaling_factor=1.5305, shift_factor=0.0609)
    if kind == "sdxl-mean":  # latents_mean / latents_std (SDXL img2img's branch)
        return diffusers.AutoencoderKL(
            **_KL, scaling_factor=0.5, latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 2.0, 0.5, 1.0]
        )
    if kind == "flux2":
        vae = diffusers.AutoencoderKLFlux2(**_KL)
        vae.bn.running_mean.copy_(torch.randn(16) * 0.1)  # non-trivial batch-norm statistics
        vae.bn.running_var.copy_(torch.rand(16) + 0.5)
        return vae
    if kind == "qwen":
        return diffusers.AutoencoderKLQwenImage(
            base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
            latents_mean=[0.1, -0.1, 0.2, 0.0], latents_std=[2.0, 1.5, 0.5, 1.0],
        )  # fmt: skip
    if kind == "dc":
        return diffusers.AutoencoderDC(
            latent_channels=4, encoder_block_out_channels=(8, 16), decoder_block_out_channels=(8, 16),
            encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
            encoder_block_types=("ResBlock", "ResBlock"), decoder_block_types=("ResBlock", "ResBlock"),
            encoder_qkv_multiscales=((), ()), decoder_qkv_multiscales=((), ()), decoder_norm_types="batch_norm",
            decoder_act_fns="silu", scaling_factor=0.41407,
        )  # fmt: skip
    raise KeyError(kind)


def _reference(kind: str, vae, x: torch.Tensor):
    """(latent, decoded image in [0, 1]) the way diffusers' pipelines compute them (posterior mode)."""
    cfg = vae.config
    img = 2.0 * x - 1.0  # VaeImageProcessor.normalize
    with torch.no_grad():
        if kind == "qwen":  # pipeline_qwenimage_img2img: a one-frame video, (z - mean) * (1 / std)
            z = vae.encode(img.unsqueeze(2)).latent_dist.mode()
            mean = torch.tensor(cfg.latents_mean).view(1, 4, 1, 1, 1)
            inv = 1.0 / torch.tensor(cfg.latents_std).view(1, 4, 1, 1, 1)
            latent = ((z - mean) * inv)[:, :, 0]
            out = vae.decode(latent.unsqueeze(2) / inv + mean).sample[:, :, 0]
        elif kind == "flux2":  # pipeline_flux2: patchify 2x2, batch-norm statistics
            z = vae.encode(img).latent_dist.mode()
            z = diffusers.Flux2Pipeline._patchify_latents(z)
            bn_mean = vae.bn.running_mean.view(1, -1, 1, 1)
            bn_std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + cfg.batch_norm_eps)
            latent = (z - bn_mean) / bn_std
            out = vae.decode(diffusers.Flux2Pipeline._unpatchify_latents(latent * bn_std + bn_mean)).sample
        elif kind == "dc":  # pipeline_sana(_sprint_img2img): deterministic .latent * scaling_factor
            latent = vae.encode(img).latent * cfg.scaling_factor
            out = vae.decode(latent / cfg.scaling_factor).sample
        elif kind == "sdxl-mean":
            z = vae.encode(img).latent_dist.mode()
            mean, std = torch.tensor(cfg.latents_mean).view(1, 4, 1, 1), torch.tensor(cfg.latents_std).view(1, 4, 1, 1)
            latent = (z - mean) * cfg.scaling_factor / std
            out = vae.decode(latent * std / cfg.scaling_factor + mean).sample
        elif kind == "sd3":
            z = vae.encode(img).latent_dist.mode()
            latent = (z - cfg.shift_factor) * cfg.scaling_factor
            out = vae.decode(latent / cfg.scaling_factor + cfg.shift_factor).sample
        else:
            latent = vae.encode(img).latent_dist.mode() * cfg.scaling_factor
            out = vae.decode(latent / cfg.scaling_factor).sample
    return latent, out * 0.5 + 0.5  # VaeImageProcessor.denormalize (drorae does not clamp)


@pytest.mark.parametrize("kind", ["sd", "sd3", "sdxl-mean", "flux2", "qwen", "dc"])
def test_encode_decode_equal_diffusers_pipelines(kind, tmp_path):
    vae = _tiny(kind).eval()
    vae.save_pretrained(tmp_path / kind)
    tok = load_tokenizer(tmp_path / kind, image_size=SIZE)
    assert isinstance(tok, Tokenizer)
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    ref_latent, ref_image = _reference(kind, vae, x)
    latent = tok.encode(x)
    assert tuple(latent.shape[1:]) == tok.latent_shape
    torch.testing.assert_close(latent, ref_latent, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tok.decode(ref_latent), ref_image, rtol=1e-5, atol=1e-5)


def test_sample_posterior_draws_from_the_posterior(tmp_path):
    vae = _tiny("sd").eval()
    vae.save_pretrained(tmp_path / "sd")
    tok = load_tokenizer(tmp_path / "sd", image_size=SIZE, sample_posterior=True)
    x = torch.rand(1, 3, SIZE, SIZE)
    tok.generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        ref = vae.encode(2 * x - 1).latent_dist.sample(torch.Generator().manual_seed(5)) * vae.config.scaling_factor
    torch.testing.assert_close(tok.encode(x), ref)
    assert not torch.allclose(tok.encode(x), load_tokenizer(tmp_path / "sd", image_size=SIZE).encode(x))


def test_unsupported_class_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderTiny"}))
    with pytest.raises(ValueError, match="AutoencoderTiny.*AutoencoderKL, AutoencoderKLFlux2"):
        load_tokenizer(tmp_path)
    dc = _tiny("dc")
    dc.save_pretrained(tmp_path / "dc")
    with pytest.raises(ValueError, match="deterministic"):
        load_tokenizer(tmp_path / "dc", sample_posterior=True)


def test_fingerprint_follows_encoder_and_normalisation_not_decoder(tmp_path):
    vae = _tiny("sd")
    vae.save_pretrained(tmp_path / "a")
    with torch.no_grad():
        vae.decoder.conv_out.weight.add_(1.0)  # ft-EMA vs ft-MSE: another decoder, the same latent space
    vae.save_pretrained(tmp_path / "b")
    with torch.no_grad():
        vae.encoder.conv_in.weight.add_(1.0)
    vae.save_pretrained(tmp_path / "c")
    a, b, c = (load_tokenizer(tmp_path / n, image_size=SIZE).fingerprint() for n in "abc")
    assert a == b != c
    tok = load_tokenizer(tmp_path / "a", image_size=SIZE)
    tok.set_latent_stats(torch.zeros(4), torch.ones(4))
    assert tok.fingerprint() != a
