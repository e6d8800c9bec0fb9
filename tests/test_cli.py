import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from drorae.cli import build_parser, main

from .conftest import command_of, drorae_argv, randomize, save_tiny_dinov2

COMMANDS = [
    "import-rae",
    "import-rae-dit",
    "import-rae-disc",
    "import-rae-stage1",
    "import-bagel",
    "push",
    "export-rae",
    "info",
    "reconstruct",
    "train",
    "eval",
    "analyze",
    "scaling",
    "ablate",
    "demo",
    "data",
    "stats",
    "cache-latents",
    "train-dit",
    "sample",
    "eval-gen",
    "train-t2i",
    "sample-t2i",
    "eval-geneval",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: drorae " + command in capsys.readouterr().out


def _required(command: str) -> list:
    parser = build_parser()._subparsers._group_actions[0].choices[command]
    return [a for a in parser._actions if a.required]  # options marked required, positionals, sub-commands


def test_only_demo_runs_with_its_defaults():
    assert [c for c in COMMANDS if not _required(c)] == ["demo"]


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "demo"])
def test_every_command_names_what_it_is_missing(command, capsys):
    """Beyond --help: without its arguments a command stops before any work with argparse's usage error, which
    names each required argument its parser declares."""
    required = _required(command)
    with pytest.raises(SystemExit) as exit_info:
        main([command])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"usage: drorae {command}" in err
    named = [a.option_strings[0] if a.option_strings else (a.metavar or a.dest) for a in required]
    assert all(name in err for name in named), (command, named, err)  # argparse lists every missing one


def test_console_script_is_installed_or_module_runs():
    out = subprocess.run([sys.executable, "-m", "drorae.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "import-rae" in out.stdout


def test_import_info_reconstruct(diffusers_rae_dir, tmp_path, capsys):
    assert main(["import-rae", str(diffusers_rae_dir), str(tmp_path / "m")]) == 0
    assert main(["info", str(tmp_path / "m")]) == 0
    text = capsys.readouterr().out
    from drorae import DRoRAE

    counts = DRoRAE.from_pretrained(tmp_path / "m").parameter_counts()
    assert f"backbone  {counts['backbone']:>14,}" in text
    assert f"decoder   {counts['decoder']:>14,}" in text
    assert f"fusion    {0:>14,}" in text and "none (plain RAE)" in text

    g = torch.Generator().manual_seed(0)
    for name in ("a", "b"):
        Image.fromarray((torch.rand(48, 40, 3, generator=g) * 255).byte().numpy()).save(tmp_path / f"{name}.png")
    (tmp_path / "bad.png").write_text("not an image")
    code = main(
        [
            "reconstruct",
            "--model",
            str(tmp_path / "m"),
            str(tmp_path / "a.png"),
            str(tmp_path / "b.png"),
            str(tmp_path / "bad.png"),
            "--out",
            str(tmp_path / "rec"),
        ]
    )
    assert code == 0
    out = Image.open(tmp_path / "rec" / "a_recon.png")
    assert out.size == (2 * 32 + 3 * 2, 32 + 2 * 2)  # original | reconstruction grid, 2 px padding
    # the cells: the input resized to the decoder's 32 px (PIL bicubic), and decode(encode(it)) clamped, as uint8
    grid = torch.from_numpy(np.array(out.convert("RGB"))).permute(2, 0, 1).int()
    small = Image.open(tmp_path / "a.png").convert("RGB").resize((32, 32), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.array(small)).permute(2, 0, 1)[None].float() / 255
    model = DRoRAE.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        rec = model.decode(model.encode(x)).clamp(0, 1)[0]
    assert torch.equal(grid[:, 2:34, 2:34], (x[0] * 255).round().int())
    assert torch.equal(grid[:, 2:34, 36:68], (rec * 255 + 0.5).floor().int())  # save_image's rounding
    assert (grid[:, 2:34, 36:68] - grid[:, 2:34, 2:34]).abs().float().mean() > 1  # a real decoder output, not a copy
    assert not (tmp_path / "rec" / "bad_recon.png").exists()
    assert "skipped" in capsys.readouterr().err


def test_errors_are_one_line_messages(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "drorae info: error:" in err and "config.json not found" in err


def _data_commands() -> list[str]:
    data = build_parser()._subparsers._group_actions[0].choices["data"]
    return [f"data {name}" for name in data._subparsers._group_actions[0].choices]


def test_the_parser_offers_the_listed_commands_each_wired_to_a_function_of_its_own():
    choices = build_parser()._subparsers._group_actions[0].choices
    assert set(choices) == set(COMMANDS)
    handlers = {name: parser.get_default("func") for name, parser in choices.items() if name != "data"}
    assert all(callable(h) for h in handlers.values()) and len(set(handlers.values())) == len(handlers)


def test_the_record_of_cli_runs_sees_main_and_subprocess_command_lines(cli_runs, tmp_path):
    """What `test_every_command_is_run_by_some_test` relies on (tests/conftest.py records every run)."""
    before = len(cli_runs.get("info", []))
    assert main(["info", str(tmp_path / "missing")]) == 2  # parsed, then failed: it ran
    assert cli_runs["info"][before:] == [["info", str(tmp_path / "missing")]]
    with pytest.raises(SystemExit):
        main(["info", "--help"])  # argparse stops before the command: not a run
    assert len(cli_runs["info"]) == before + 1
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "drorae.cli", "train"]
    assert drorae_argv([*torchrun, "--config", "c.yaml"]) == ["train", "--config", "c.yaml"]
    assert drorae_argv(["/venv/bin/drorae", "data", "sample", "d"]) == ["data", "sample", "d"]
    assert drorae_argv([sys.executable, "-m", "drorae.cli", "--help"]) is None
    assert drorae_argv([sys.executable, "-c", "print()"]) is None and drorae_argv("drorae train") is None
    assert command_of(["data", "sample", "d", "--eval-crops", "3"]) == "data sample"
    assert command_of(["eval-gen", "s.npz", "--ref", "r.npz"]) == "eval-gen"


def test_every_command_is_run_by_some_test(cli_runs):
    """Runs after every other test, and only when the whole suite runs (tests/conftest.py): each command, and each
    `data` sub-command, was run by some test, in-process through `main` or as a subprocess; `--help` and usage
    errors do not count."""
    expected = {c for c in COMMANDS if c != "data"} | set(_data_commands())
    missing = sorted(expected - set(cli_runs))
    assert not missing, f"no test runs: {missing}"


def test_train_help_lists_every_phase_from_the_phase_table(capsys):
    from drorae.tokenizer.training import PHASES

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for phase in PHASES.values():
        assert f"  {phase.name:<6} trains {' + '.join(phase.trains)}; {phase.description}" in text
    with pytest.raises(SystemExit):
        main(["train", "--config", "x.yaml", "--phase", "4", "--data", "d", "--out", "o"])
    assert "invalid choice: '4'" in capsys.readouterr().err


# -- commands and flags that no other test runs ---------------------------------------------------------------


def test_export_rae_refuses_fusion_and_disable_fusion_exports_the_plain_rae(diffusers_rae_dir, images, tmp_path):
    from diffusers import AutoencoderRAE

    from drorae import DepthRoutedFusion, DRoRAE, FusionConfig

    assert main(["import-rae", str(diffusers_rae_dir), str(tmp_path / "rae")]) == 0
    model = DRoRAE.from_pretrained(tmp_path / "rae")
    model.add_fusion(randomize(DepthRoutedFusion(FusionConfig(num_layers=2, dim=64, expert_hidden=8)), 2))
    model.save_pretrained(tmp_path / "fused")
    model = DRoRAE.from_pretrained(tmp_path / "fused").eval()
    assert model.fusion_enabled
    assert main(["export-rae", str(tmp_path / "fused"), str(tmp_path / "x")]) == 2  # fusion on: refused
    assert main(["export-rae", str(tmp_path / "fused"), str(tmp_path / "out"), "--disable-fusion"]) == 0
    exported = AutoencoderRAE.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        fused = model.encode(images)
        model.fusion_enabled = False
        plain = model.encode(images)
        torch.testing.assert_close(exported.encode(images).latent, plain, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(exported.decode(plain).sample, model.decode(plain), rtol=1e-5, atol=1e-5)
    assert (fused - plain).abs().max() > 1e-3  # the fusion changed the latent: the flag chose the plain path


def test_import_rae_key_picks_the_entry_of_a_nested_checkpoint(dinov2_reg_dir, images, tmp_path):
    from drorae import DRoRAE
    from drorae.interop.decoder_keys import export_decoder_state_dict
    from drorae.tokenizer.decoder import DecoderConfig, RAEDecoder

    cfg = DecoderConfig(
        latent_dim=64, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, patch_size=4, num_patches=64
    )
    decoders = {key: randomize(RAEDecoder(cfg), seed) for key, seed in (("ema", 3), ("model", 4))}
    nested = {key: export_decoder_state_dict(dec, layout="rae", prefix="") for key, dec in decoders.items()}
    torch.save(nested, tmp_path / "ckpt.pt")
    common = ["--backbone", str(dinov2_reg_dir), "--input-size", "32", "--num-heads", "2"]
    for key in ("ema", "model"):
        assert main(["import-rae", str(tmp_path / "ckpt.pt"), str(tmp_path / key), *common, "--key", key]) == 0
    ema, other = (DRoRAE.from_pretrained(tmp_path / k).eval() for k in ("ema", "model"))
    for name, p in decoders["ema"].state_dict().items():
        torch.testing.assert_close(ema.decoder.state_dict()[name], p, rtol=0, atol=0)
    for name, p in decoders["model"].state_dict().items():
        torch.testing.assert_close(other.decoder.state_dict()[name], p, rtol=0, atol=0)


def test_data_sample_writes_fixed_crops_of_the_heldout_and_of_the_train_photos(tmp_path, capsys):
    from drorae.demo.photos import fixed_eval_crops, load_photos

    args = ["data", "sample", str(tmp_path / "d"), "--max-size", "64", "--crop-size", "16"]
    assert main([*args, "--eval-crops", "3", "--train-crops", "2"]) == 0
    assert "wrote 3 fixed 16 px crops of the heldout photos" in capsys.readouterr().out
    for folder, count, split, seed in (("heldout-crops", 3, "heldout", 1), ("train-crops", 2, "train", 2)):
        files = sorted((tmp_path / "d" / folder).iterdir())
        assert [f.name for f in files] == [f"crop_{i:05d}.png" for i in range(count)]
        expected = fixed_eval_crops(load_photos(split), 16, count, seed=seed)  # full-size photos, the split's own
        for f, crop in zip(files, expected):
            pixels = (crop.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            assert np.array_equal(np.asarray(Image.open(f)), pixels)
    assert main(["data", "sample", str(tmp_path / "e"), "--max-size", "64"]) == 0  # without the flags: no crops
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["heldout", "train"]


def test_demo_t2i_runs_the_text_to_image_demo_alone(monkeypatch, tmp_path):
    import drorae.demo
    import drorae.demo.t2i as t2i

    calls = []

    def fake_t2i(out, plan, seeds, progress):
        calls.append((out, plan, seeds, progress))
        return len(calls) == 1  # the first run succeeds, the second reports failure

    def no_other_demo(*args, **kwargs):
        raise AssertionError("demo --t2i ran another demo stage")

    monkeypatch.setattr(t2i, "run_t2i_demo", fake_t2i)
    monkeypatch.setattr(drorae.demo, "run_demo", no_other_demo)
    monkeypatch.setattr("drorae.demo.generation.run_generation_demo", no_other_demo)
    out = str(tmp_path / "d")
    assert main(["demo", "--t2i", "--quick", "--seeds", "2", "--out", out, "--no-progress", "--generation"]) == 0
    assert calls == [(out, t2i.T2IDemoPlan.quick_plan(), 2, False)]
    assert main(["demo", "--t2i", "--out", out]) == 1  # the demo's verdict is the exit code
    assert calls[1][1:] == (t2i.T2IDemoPlan(), 1, True)


@pytest.fixture(scope="module")
def fused_model_dir(tmp_path_factory):
    from drorae import BackboneConfig, DecoderConfig, DRoRAE, DRoRAEConfig, FusionConfig

    root = tmp_path_factory.mktemp("cli_model")
    save_tiny_dinov2(root / "backbone")
    torch.manual_seed(0)
    config = DRoRAEConfig(
        backbone=BackboneConfig(name_or_path=str(root / "backbone"), input_size=32),
        decoder=DecoderConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, patch_size=4),
        fusion=FusionConfig(expert_hidden=8),
    )
    model = DRoRAE.from_config(config)
    randomize(model.fusion, 5)
    model.save_pretrained(root / "model")
    return root / "model"


def test_eval_num_fusion_and_lpips_vgg(fused_model_dir, tmp_path, monkeypatch):
    from torchvision.models import vgg

    from drorae.data.adm import adm_center_crop
    from drorae.tokenizer.losses import build_perceptual_loss

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no VGG16 found unless --lpips-vgg names it
    g = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(g.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    torch.manual_seed(0)
    features = vgg.make_layers(vgg.cfgs["D"])
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, tmp_path / "vgg16-397923af.pth")
    common = ["--data", str(tmp_path), "--num-workers", "0", "--no-stlpips", "--no-rfid", "--batch", "2"]
    assert main(["eval", "--model", str(fused_model_dir), "--out", str(tmp_path / "default"), *common]) == 0
    default = json.loads((tmp_path / "default" / "report.json").read_text())
    assert default["num_images"] == 5 and default["fusion"] and "lpips-vgg" not in default["metrics"]

    argv = ["eval", "--model", str(fused_model_dir), "--out", str(tmp_path / "e"), *common]
    assert main([*argv, "--num", "3", "--fusion", "off", "--lpips-vgg", str(tmp_path / "vgg16-397923af.pth")]) == 0
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert report["num_images"] == 3 and not report["fusion"]
    with np.load(tmp_path / "e" / "reconstructions.npz") as npz:
        recon = torch.from_numpy(npz["arr_0"]).permute(0, 3, 1, 2).float() / 255
    originals = [adm_center_crop(Image.open(tmp_path / f"{i}.png"), 32) for i in range(3)]
    x = torch.from_numpy(np.stack(originals)).permute(0, 3, 1, 2).float() / 255
    from drorae import DRoRAE

    model = DRoRAE.from_pretrained(fused_model_dir).eval()
    model.fusion_enabled = False
    with torch.no_grad():
        plain = (model.decode(model.encode(x)).clamp(0, 1) * 255).round() / 255
        lpips = build_perceptual_loss("lpips", tmp_path / "vgg16-397923af.pth").distances(recon, x).double().mean()
    assert torch.equal(recon, plain)  # the first 3 images, decoded with fusion off
    assert report["metrics"]["lpips-vgg"] == pytest.approx(float(lpips), rel=1e-5)
