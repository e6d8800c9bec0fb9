import subprocess
import sys

import pytest
import torch
from PIL import Image

from drorae.cli import build_parser, main

COMMANDS = [
    "import-rae",
    "import-rae-dit",
    "import-bagel",
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


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_names_what_it_is_missing(command, capsys):
    """Beyond --help: without its arguments a command stops before any work with argparse's usage error, which
    names each required argument its parser declares."""
    parser = build_parser()._subparsers._group_actions[0].choices[command]
    required = [a for a in parser._actions if a.required]  # options marked required, positionals, sub-commands
    if not required:
        pytest.skip(f"{command} runs with its defaults (nothing is required)")
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
    assert not (tmp_path / "rec" / "bad_recon.png").exists()
    assert "skipped" in capsys.readouterr().err


def test_errors_are_one_line_messages(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "drorae info: error:" in err and "config.json not found" in err


def test_every_command_is_tested_and_runs_a_library_function():
    """The parser offers exactly the commands above, and each is wired to a function of its own."""
    choices = build_parser()._subparsers._group_actions[0].choices
    assert set(choices) == set(COMMANDS)
    handlers = {name: parser.get_default("func") for name, parser in choices.items() if name != "data"}
    assert all(callable(h) for h in handlers.values()) and len(set(handlers.values())) == len(handlers)


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
