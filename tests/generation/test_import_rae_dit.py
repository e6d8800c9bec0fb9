"""``drorae import-rae-dit`` and RAE's published-generator chain on CPU: RAE-format tokenizer files, RAE stage-2
checkpoints (the fixture made by RAE's code), sampling with AutoGuidance and eval-gen, all through the CLI."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from drorae.cli import main
from drorae.generation import DiT

FIXTURE = Path(__file__).parents[1] / "fixtures" / "rae_stage2"
HEADS = ["--num-heads", "2", "--head-num-heads", "2"]


@pytest.fixture(scope="module")
def rae_files(tmp_path_factory):
    """What an RAE user holds, at toy size: a backbone, RAE's decoder checkpoint and ``stat.pt`` for the
    fixture DiTs' [8, 4, 4] latent (hidden 8, patch 8 at 32 px)."""
    from drorae.interop.decoder_keys import export_decoder_state_dict
    from drorae.tokenizer.decoder import DecoderConfig, RAEDecoder
    from tests.conftest import randomize, save_tiny_dinov2

    root = tmp_path_factory.mktemp("rae_files")
    save_tiny_dinov2(root / "backbone", registers=4, hidden=8, layers=2, heads=2, patch=8)
    cfg = DecoderConfig(
        latent_dim=8, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, patch_size=8, num_patches=16
    )
    torch.save(export_decoder_state_dict(randomize(RAEDecoder(cfg), 3), layout="rae", prefix=""), root / "decoder.pt")
    g = torch.Generator().manual_seed(0)
    torch.save(
        {"mean": torch.randn(1, 8, 4, 4, generator=g) * 0.1, "var": torch.rand(1, 8, 4, 4, generator=g) + 0.5},
        root / "stat.pt",
    )
    return root


def _run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_import_rae_dit_writes_a_dit_that_loads_and_matches_the_checkpoint(tmp_path, capsys):
    code, out, _ = _run(["import-rae-dit", FIXTURE / "ddt.pt", tmp_path / "dit", *HEADS], capsys)
    assert code == 0 and "'ema' weights" in out and "105,596 trainable parameters" in out
    dit = DiT.from_pretrained(tmp_path / "dit")
    from safetensors.torch import load_file

    ref = load_file(str(FIXTURE / "outputs.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(dit(ref["x"], ref["t"], ref["y"]), ref["forward_ddt"], rtol=0, atol=2e-5)
    extra = DiT.read_extra(tmp_path / "dit")
    assert extra["latent_shape"] == [8, 4, 4] and abs(extra["shift"] - (8 * 16 / 4096) ** 0.5) < 1e-12
    assert extra["imported_from"]["entry"] == "ema" and extra["fingerprint"] is None


def test_safetensors_input_and_raw_weights(tmp_path, capsys):
    from safetensors.torch import save_file

    state = torch.load(FIXTURE / "ddt.pt", weights_only=True)
    save_file(state["model"], str(tmp_path / "raw.safetensors"))
    assert _run(["import-rae-dit", tmp_path / "raw.safetensors", tmp_path / "a", *HEADS], capsys)[0] == 0
    assert _run(["import-rae-dit", FIXTURE / "ddt.pt", tmp_path / "b", *HEADS, "--weights", "model"], capsys)[0] == 0
    a, b = DiT.from_pretrained(tmp_path / "a"), DiT.from_pretrained(tmp_path / "b")
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def _bad_checkpoint(tmp_path, edit) -> Path:
    state = torch.load(FIXTURE / "ddt.pt", weights_only=True)
    edit(state["ema"])
    torch.save(state, tmp_path / "bad.pt")
    return tmp_path / "bad.pt"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("blocks.1.attn.proj.bias"), r"missing keys \['blocks.1.attn.proj.bias'\]"),
        (lambda s: s.__setitem__("blocks.0.attn.q_norm.weight", torch.ones(16)), r"blocks.0.attn.q_norm.weight"),
        (lambda s: s.__setitem__("extra_head.weight", torch.ones(2)), r"extra_head.weight"),
        (lambda s: s["pos_embed"].mul_(-1), r"fixed pos_embed \(1, 16, 32\) differs"),
        (lambda s: s["enc_feat_rope.freqs_sin"].add_(0.1), r"fixed enc_feat_rope.freqs_sin"),
    ],
)
def test_keys_that_do_not_map_are_named(tmp_path, capsys, edit, message):
    code, _, err = _run(["import-rae-dit", _bad_checkpoint(tmp_path, edit), tmp_path / "out", *HEADS], capsys)
    assert code == 2
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_sizes_no_preset_explains_need_the_head_flags(tmp_path, capsys):
    code, _, err = _run(["import-rae-dit", FIXTURE / "ddt.pt", tmp_path / "out"], capsys)
    assert code == 2 and "trunk 32 x 2, head 48 x 1 matches no preset" in err and "--num-heads" in err


class NotATensor:
    pass


def test_a_pickle_of_other_objects_is_refused_without_unpickling(tmp_path, capsys):
    state = torch.load(FIXTURE / "ddt.pt", weights_only=True)
    state["config"] = NotATensor()
    torch.save(state, tmp_path / "obj.pt")
    code, _, err = _run(["import-rae-dit", tmp_path / "obj.pt", tmp_path / "out", *HEADS], capsys)
    assert code == 2 and "NotATensor object" in err and "weights_only" not in err and len(err.splitlines()) == 1


def test_rae_generators_end_to_end_on_cpu(rae_files, tmp_path, capsys):
    """README's chain: import-rae (decoder + stat.pt), import-rae-dit (generator + guide, fingerprint from stat.pt),
    sample with AutoGuidance 1.42 on RAE's grid, eval-gen."""
    r = rae_files
    steps = [
        [
            "import-rae",
            r / "decoder.pt",
            tmp_path / "tok",
            "--backbone",
            r / "backbone",
            "--stats",
            r / "stat.pt",
            "--input-size",
            "32",
            "--num-heads",
            "2",
        ],
        ["import-rae-dit", FIXTURE / "ddt.pt", tmp_path / "dit", *HEADS, "--stats", r / "stat.pt"],
        ["import-rae-dit", FIXTURE / "guide.pt", tmp_path / "guide", *HEADS, "--stats", r / "stat.pt"],
        [
            "sample",
            "--dit",
            tmp_path / "dit",
            "--tokenizer",
            tmp_path / "tok",
            "--guide",
            tmp_path / "guide",
            "--guidance",
            "autoguidance",
            "--scale",
            "1.42",
            "--per-class",
            "2",
            "--steps",
            "6",
            "--no-png",
            "--out",
            tmp_path / "samples",
            "--device",
            "cpu",
        ],
    ]
    for args in steps:
        code, _, err = _run(args, capsys)
        assert code == 0, (args[0], err)
    from drorae import DRoRAE
    from drorae.generation.latents import stats_fingerprint

    assert DiT.read_extra(tmp_path / "dit")["fingerprint"] == stats_fingerprint(
        DRoRAE.from_pretrained(tmp_path / "tok")
    )
    with np.load(tmp_path / "samples" / "samples.npz") as npz:
        assert npz["arr_0"].shape == (20, 32, 32, 3) and npz["arr_0"].dtype == np.uint8
        assert sorted(np.bincount(npz["arr_1"]).tolist()) == [2] * 10
    run = json.loads((tmp_path / "samples" / "sampling.json").read_text())
    assert run["grid"] == "rae" and run["guidance"] == "autoguidance"
    code, out, err = _run(
        [
            "eval-gen",
            tmp_path / "samples" / "samples.npz",
            "--ref",
            tmp_path / "samples" / "samples.npz",
            "--features",
            "backbone",
            "--tokenizer",
            tmp_path / "tok",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    report = json.loads((tmp_path / "samples" / "eval_gen.json").read_text())
    assert abs(report["metrics"]["fd_backbone"]) < 1e-3  # a set against itself

    # a generator imported against other statistics is refused by sample
    shutil.copy(r / "stat.pt", tmp_path / "other.pt")
    other = torch.load(tmp_path / "other.pt", weights_only=True)
    other["mean"] += 1
    torch.save(other, tmp_path / "other.pt")
    assert (
        _run(
            ["import-rae-dit", FIXTURE / "ddt.pt", tmp_path / "dit2", *HEADS, "--stats", tmp_path / "other.pt"], capsys
        )[0]
        == 0
    )
    code, _, err = _run(
        [
            "sample",
            "--dit",
            tmp_path / "dit2",
            "--tokenizer",
            tmp_path / "tok",
            "--per-class",
            "1",
            "--steps",
            "3",
            "--no-png",
            "--out",
            tmp_path / "s2",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 2 and "fingerprint" in err
