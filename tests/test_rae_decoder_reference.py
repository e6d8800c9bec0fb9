"""``drorae import-rae`` on a decoder file written by RAE's own stage-1 code reproduces RAE's ``decode``.

The fixture (``tests/fixtures/rae_decoder``, made by its ``make_fixture.py`` from bytetriper/RAE's
``GeneralDecoder`` and ``RAE.decode``; commit in its ``meta.json``) holds a tiny decoder's ``model.pt`` exactly as
RAE's ``pretrained_decoder_path`` holds one, its ``stat.pt`` and RAE's reconstruction of a fixed latent.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from drorae import DRoRAE
from drorae.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "rae_decoder"


def test_import_rae_cli_decodes_as_raes_own_decode(dinov2_reg_dir, tmp_path, capsys):
    meta = json.loads((FIXTURE / "meta.json").read_text())
    assert len(meta["rae_commit"]) == 40
    args = ["import-rae", FIXTURE / "model.pt", tmp_path / "tok", "--backbone", dinov2_reg_dir]
    args += ["--stats", FIXTURE / "stat.pt", "--input-size", "32", "--num-heads", "2"]
    assert main([str(a) for a in args]) == 0
    assert "imported" in capsys.readouterr().out
    tok = DRoRAE.from_pretrained(tmp_path / "tok").eval()
    ref = load_file(str(FIXTURE / "outputs.safetensors"))
    assert tok.decoder.config.num_layers == 2 and tok.decoder.config.hidden_size == 32
    with torch.no_grad():
        x = tok.decode(ref["z"])
    assert x.shape == ref["x_rec"].shape == (2, 3, 32, 32)
    torch.testing.assert_close(x, ref["x_rec"], rtol=1e-5, atol=1e-5)
