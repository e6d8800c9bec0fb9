"""Hub ids (``org/name[@revision][:subfolder]``) in every loader and CLI flag, model cards, ``push``, and RAE's
collection by ``--variant``.

No network: a Hugging Face cache is built in the test with huggingface_hub's own layout (``models--org--name/
refs/<revision>`` holding a commit, ``snapshots/<commit>/<files>``) under ``HF_HUB_CACHE`` with
``HF_HUB_OFFLINE=1``, and any socket connection fails the test. What an id loads must equal what the same local
directory loads; the reference is always the local directory read by the same loader without the resolver.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from drorae import BackboneConfig, DecoderConfig, DRoRAE, DRoRAEConfig, FusionConfig
from drorae.card import model_kind, push_to_hub, read_model_card, write_model_card
from drorae.cli import main
from drorae.generation import DiT
from drorae.generation.dit import DiTConfig
from drorae.hub import HubId, HubModelNotFoundError, parse_hub_id
from drorae.tokenizer.backbones import RandomBackboneConfig

FIXTURES = Path(__file__).parent / "fixtures"
HEADS = ["--num-heads", "2", "--head-num-heads", "2"]


def cache_repo(cache: Path, repo_id: str, src: Path, revision: str = "main", subfolder: str = "") -> str:
    """Put ``src`` into ``cache`` as huggingface_hub stores a snapshot of ``repo_id`` at ``revision``."""
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    root = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(src, root / "snapshots" / commit / subfolder, dirs_exist_ok=True)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    return commit


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """An empty hub cache, offline, and no socket may connect (a download attempt fails the test)."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return cache


def tiny_tokenizer(out: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = DRoRAEConfig(
        backbone=BackboneConfig(
            random=RandomBackboneConfig(
                hidden_size=16,
                num_hidden_layers=3,
                num_attention_heads=2,
                patch_size=8,
                num_register_tokens=0,
                seed=seed,
            ),
            input_size=32,
        ),
        decoder=DecoderConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, patch_size=8),
        fusion=FusionConfig(expert_hidden=8, beta=0.2),
    )
    DRoRAE.from_config(config).save_pretrained(out)
    return out


def tiny_dit(out: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    cfg = DiTConfig(
        hidden_size=32, depth=1, num_heads=2, head_hidden_size=32, head_depth=1, head_num_heads=2,
        in_channels=16, input_size=4, num_classes=3,
    )  # fmt: skip
    dit = DiT(cfg)
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # zero-initialised outputs would hide a wrong load
    dit.save_pretrained(out, extra={"shift": 1.0})
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "tok": tiny_tokenizer(root / "tok"),
        "tok2": tiny_tokenizer(root / "tok2", seed=1),
        "dit": tiny_dit(root / "dit"),
        "guide": tiny_dit(root / "guide", seed=1),
    }


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- the id's grammar -----------------------------------------------------------------------------------------------
def test_id_forms_and_a_local_path_always_wins(tmp_path, monkeypatch):
    assert parse_hub_id("org/name") == HubId("org/name")
    assert parse_hub_id("org/name@v1.0") == HubId("org/name", "v1.0")
    assert parse_hub_id("org/name@refs/pr/1:tok/a") == HubId("org/name", "refs/pr/1", "tok/a")
    assert parse_hub_id("org/name:tokenizer") == HubId("org/name", None, "tokenizer")
    for path in ("/abs/org/name", "./org/name", "~/org/name", "name", "a/b/c", "org/name.safetensors/x"):
        assert parse_hub_id(path) is None, path
    with pytest.raises(ValueError, match="relative folder"):
        parse_hub_id("org/name:../up")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert parse_hub_id("org/name") is None  # it exists here: a path


# -- loaders --------------------------------------------------------------------------------------------------------
def test_tokenizer_by_id_equals_the_local_directory_and_fetches_only_what_it_reads(models, offline, images):
    cache_repo(offline, "org/tok", models["tok"])
    local = DRoRAE.from_pretrained(models["tok"]).eval()
    hub = DRoRAE.from_pretrained("org/tok").eval()
    assert same_state(local, hub)
    with torch.no_grad():
        x = images[:, :, :32, :32]
        torch.testing.assert_close(hub.decode(hub.encode(x)), local.decode(local.encode(x)), rtol=0, atol=0)


def test_revision_and_subfolder_pick_their_model(models, offline):
    cache_repo(offline, "org/tok", models["tok"])
    cache_repo(offline, "org/tok", models["tok2"], revision="v2")
    commit = cache_repo(offline, "org/bundle", models["tok2"], subfolder="tokenizer")
    tok, tok2 = DRoRAE.from_pretrained(models["tok"]), DRoRAE.from_pretrained(models["tok2"])
    assert not same_state(tok, tok2)
    assert same_state(DRoRAE.from_pretrained("org/tok"), tok)
    assert same_state(DRoRAE.from_pretrained("org/tok@v2"), tok2)
    assert same_state(DRoRAE.from_pretrained("org/bundle:tokenizer"), tok2)
    assert same_state(DRoRAE.from_pretrained(f"org/bundle@{commit}:tokenizer"), tok2)  # a commit hash
    with pytest.raises(HubModelNotFoundError, match=r"org/tok@v9.*revision 'v9'.*hf download org/tok.*--revision v9"):
        DRoRAE.from_pretrained("org/tok@v9")
    with pytest.raises(
        HubModelNotFoundError,
        match=r"org/bundle:dit: the cached snapshot of 'org/bundle'.*holds no dit/config.json, dit/model.safetensors",
    ):
        DRoRAE.from_pretrained("org/bundle:dit")


def test_a_missing_id_offline_is_one_line_naming_it_the_cache_and_the_fetch_command(offline, capsys):
    with pytest.raises(HubModelNotFoundError) as err:
        DiT.from_pretrained("org/missing")
    text = str(err.value)
    assert "org/missing" in text and str(offline) in text and "`hf download org/missing`" in text
    assert "HF_HUB_OFFLINE" in text and "\n" not in text
    assert main(["reconstruct", "x.png", "--model", "org/missing", "--out", "o"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "hf download org/missing" in lines[0]


def test_dit_and_mot_by_id_equal_their_local_directories(models, offline, tmp_path):
    from drorae.generation.text.mot import MoTConfig, MoTGenerator

    cache_repo(offline, "org/dit", models["dit"])
    assert same_state(DiT.from_pretrained("org/dit"), DiT.from_pretrained(models["dit"]))
    assert DiT.read_extra("org/dit") == DiT.read_extra(models["dit"])
    torch.manual_seed(0)
    mot = MoTGenerator(MoTConfig(preset="tiny", latent_channels=8, latent_size=4, token_ids=dict(bos=1, eos=2,
                       vision_start=3, vision_end=4, pad=0)))  # fmt: skip
    mot.save_pretrained(tmp_path / "mot", extra={"shift": 2.0})
    cache_repo(offline, "org/mot", tmp_path / "mot")
    assert same_state(MoTGenerator.from_pretrained("org/mot"), MoTGenerator.from_pretrained(tmp_path / "mot"))
    assert MoTGenerator.read_extra("org/mot")["shift"] == 2.0


def test_init_of_a_training_phase_resolves_an_id(models, offline):
    from drorae.tokenizer.training.trainer import resolve_model_dir

    cache_repo(offline, "org/tok", models["tok"])
    resolved = resolve_model_dir("org/tok")
    assert resolved.is_relative_to(offline) and same_state(
        DRoRAE.from_pretrained(resolved), DRoRAE.from_pretrained(models["tok"])
    )


# -- CLI flags ------------------------------------------------------------------------------------------------------
def test_reconstruct_model_flag_takes_an_id(models, offline, tmp_path, capsys):
    cache_repo(offline, "org/tok", models["tok"])
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(img)
    assert main(["reconstruct", str(img), "--model", "org/tok", "--out", str(tmp_path / "hub")]) == 0
    assert main(["reconstruct", str(img), "--model", str(models["tok"]), "--out", str(tmp_path / "local")]) == 0
    a, b = (np.asarray(Image.open(tmp_path / d / "a_recon.png")) for d in ("hub", "local"))
    assert np.array_equal(a, b)


def test_sample_dit_tokenizer_and_guide_flags_take_ids(models, offline, tmp_path, capsys):
    for name in ("tok", "dit", "guide"):
        cache_repo(offline, f"org/{name}", models[name])
    common = ["--guidance", "autoguidance", "--scale", "1.5", "--num", "3", "--steps", "3", "--batch", "2",
              "--precision", "fp32", "--no-png", "--device", "cpu"]  # fmt: skip
    assert main(["sample", "--dit", "org/dit", "--tokenizer", "org/tok", "--guide", "org/guide", "--out",
                 str(tmp_path / "hub"), *common]) == 0  # fmt: skip
    assert main(["sample", "--dit", str(models["dit"]), "--tokenizer", str(models["tok"]), "--guide",
                 str(models["guide"]), "--out", str(tmp_path / "local"), *common]) == 0  # fmt: skip
    a, b = (np.load(tmp_path / d / "samples.npz")["arr_0"] for d in ("hub", "local"))
    assert a.shape == (3, 32, 32, 3) and np.array_equal(a, b)


def test_sample_t2i_model_and_tokenizer_flags_take_ids(models, offline, tmp_path, capsys):
    from drorae.data.captions import CaptionTokenizer
    from drorae.generation.text.mot import MoTConfig, MoTGenerator, llm_config_from_dir
    from drorae.generation.text.tiny_llm import make_tiny_llm

    llm = make_tiny_llm(tmp_path / "llm", "a red blue circle square".split())
    text = CaptionTokenizer(llm, 8)
    torch.manual_seed(0)
    mot = MoTGenerator(MoTConfig(llm=llm_config_from_dir(llm), latent_channels=16, latent_size=4, token_ids=text.ids))
    torch.nn.init.normal_(mot.latent_out.weight, std=0.5)
    mot.save_pretrained(tmp_path / "mot", extra={"shift": 1.0, "max_text_tokens": 8})
    text.save_pretrained(tmp_path / "mot" / "text_tokenizer")
    cache_repo(offline, "org/mot", tmp_path / "mot")
    cache_repo(offline, "org/tok", models["tok"])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    common = ["--prompts", str(prompts), "--per-prompt", "1", "--steps", "3", "--scale", "2", "--precision", "fp32",
              "--device", "cpu"]  # fmt: skip
    assert (
        main(["sample-t2i", "--model", "org/mot", "--tokenizer", "org/tok", "--out", str(tmp_path / "h"), *common]) == 0
    )
    assert main(["sample-t2i", "--model", str(tmp_path / "mot"), "--tokenizer", str(models["tok"]), "--out",
                 str(tmp_path / "l"), *common]) == 0  # fmt: skip
    a, b = (np.asarray(Image.open(tmp_path / d / "00000" / "samples" / "0000.png")) for d in ("h", "l"))
    assert np.array_equal(a, b)


def test_stats_on_an_id_needs_out_and_import_rae_dit_tokenizer_takes_an_id(models, offline, tmp_path, capsys):
    from drorae.generation.latents import stats_fingerprint

    cache_repo(offline, "org/tok", models["tok"])
    data = tmp_path / "imgs"
    data.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(data / f"{i}.png")
    assert main(["stats", "--model", "org/tok", "--data", str(data), "--device", "cpu"]) == 2
    assert "org/tok is a Hub id" in capsys.readouterr().err and "--out" in capsys.readouterr().err + "--out"
    args = ["--data", str(data), "--device", "cpu", "--num-workers", "0"]
    assert main(["stats", "--model", "org/tok", "--out", str(tmp_path / "h"), *args]) == 0
    assert main(["stats", "--model", str(models["tok"]), "--out", str(tmp_path / "l"), *args]) == 0
    assert (
        load_file(str(tmp_path / "h" / "model.safetensors")).keys()
        == load_file(str(tmp_path / "l" / "model.safetensors")).keys()
    )
    assert same_state(DRoRAE.from_pretrained(tmp_path / "h"), DRoRAE.from_pretrained(tmp_path / "l"))
    src = str(FIXTURES / "rae_stage2" / "ddt.pt")
    assert main(["import-rae-dit", src, str(tmp_path / "dit"), *HEADS, "--tokenizer", "org/tok"]) == 0
    assert DiT.read_extra(tmp_path / "dit")["fingerprint"] == stats_fingerprint(DRoRAE.from_pretrained(models["tok"]))


def test_info_of_an_id_prints_the_cards_summary_from_card_and_config_only(models, offline, tmp_path, capsys):
    only = tmp_path / "only"
    only.mkdir()
    for name in ("README.md", "config.json"):  # what info fetches: no weights in this repository at all
        shutil.copy(models["dit"] / name, only / name)
    cache_repo(offline, "org/dit", only)
    assert main(["info", "org/dit"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dit org/dit") and "DiT^DH, trunk width 32 x 1 blocks" in out and "pipeline_tag" in out
    assert main(["info", "org/dit", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["card"] == read_model_card(models["dit"] / "README.md")[0] and data["kind"] == "dit"
    assert main(["info", str(models["dit"])]) == 0  # a local DiT: its card too
    assert "DiT^DH" in capsys.readouterr().out


# -- the model card -------------------------------------------------------------------------------------------------
def _run_with_reports(root: Path, models) -> tuple[Path, dict, dict]:
    run = root / "run"
    tok = DRoRAE.from_pretrained(models["tok"])
    tok.backbone.name_or_path = "facebook/dinov2-with-registers-base"  # as if loaded by its hub id
    tok.save_pretrained(run / "model")
    (run / "model" / "training.json").write_text(json.dumps({"phase": "2", "steps": 1234, "weights": "ema"}))
    (run / "train_config.yaml").write_text("train:\n  max_steps: 1234\n  batch_size: 8\n")
    recon = {"model": str(run / "model"), "data": "val", "num_images": 50, "fusion": True,
             "metrics": {"psnr": 21.123456789012, "ssim": 0.5, "rfid": 12.75, "st_lpips": None}}  # fmt: skip
    gen = {"samples": "s.npz", "reference": "ref.npz", "num_samples": 100, "features": "inception",
           "metrics": {"gfid": 33.3, "precision": 0.61, "recall": 0.42, "inception_score": None}}  # fmt: skip
    (run / "eval").mkdir()
    (run / "eval" / "report.json").write_text(json.dumps(recon))
    (run / "samples").mkdir()
    (run / "samples" / "eval_gen.json").write_text(json.dumps(gen))
    return run, recon, gen


def test_card_front_matter_parses_and_its_numbers_equal_the_reports_beside_the_model(models, tmp_path):
    run, recon, gen = _run_with_reports(tmp_path, models)
    write_model_card(run / "model")
    meta, body = read_model_card(run / "model" / "README.md")
    assert meta["library_name"] == "drorae" and meta["pipeline_tag"] == "image-to-image"
    assert meta["base_model"] == "facebook/dinov2-with-registers-base" and meta["license"] == "apache-2.0"
    assert "drorae" in meta["tags"] and yaml.safe_load(yaml.safe_dump(meta)) == meta
    rows = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("metric",) and not cells[0].startswith("---"):
            rows[(cells[0], cells[2].split("`")[1])] = float(cells[1])
    expected = {(k, "eval/report.json"): v for k, v in recon["metrics"].items() if v is not None}
    expected |= {(k, "samples/eval_gen.json"): v for k, v in gen["metrics"].items() if v is not None}
    assert rows == expected
    assert "- steps: 1234" in body and "max_steps: 1234" in body and "arXiv 2605.10780" in body
    assert 'DRoRAE.from_pretrained("' in body
    # the id survives a load and a save elsewhere (it is metadata in config.json, ignored by the loader)
    DRoRAE.from_pretrained(run / "model").save_pretrained(tmp_path / "again")
    assert read_model_card(tmp_path / "again" / "README.md")[0]["base_model"] == "facebook/dinov2-with-registers-base"


def test_a_users_own_readme_is_kept(models, tmp_path):
    shutil.copytree(models["dit"], tmp_path / "d")
    (tmp_path / "d" / "README.md").write_text("# mine\n")
    assert write_model_card(tmp_path / "d") is None
    assert (tmp_path / "d" / "README.md").read_text() == "# mine\n"


# -- push -----------------------------------------------------------------------------------------------------------
@pytest.fixture
def hub_calls(monkeypatch):
    """huggingface_hub's own HfApi with its network calls replaced by records of what they were given."""
    from huggingface_hub import HfApi

    calls = []

    def record(name):
        def fake(self, *args, **kwargs):
            calls.append((name, args, kwargs))
            if name == "upload_folder":
                folder = Path(kwargs["folder_path"])
                kwargs["files"] = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
                return type("CommitInfo", (), {"commit_url": "https://huggingface.co/org/x/commit/abc"})()
            return None

        return fake

    for name in ("create_repo", "create_branch", "upload_folder", "create_commit"):
        monkeypatch.setattr(HfApi, name, record(name))
    return calls


def test_push_uploads_the_directory_as_it_is_with_its_card(models, tmp_path, hub_calls, capsys):
    run, recon, _ = _run_with_reports(tmp_path, models)
    before = sorted(str(p.relative_to(run / "model")) for p in (run / "model").rglob("*") if p.is_file())
    assert main(["push", str(run), "org/tok", "--private", "--revision", "exp"]) == 0
    assert "pushed" in capsys.readouterr().out
    assert [c[0] for c in hub_calls] == ["create_repo", "create_branch", "upload_folder"]
    assert hub_calls[0][1] == ("org/tok",) and hub_calls[0][2]["private"] is True
    assert hub_calls[1][2]["branch"] == "exp"
    up = hub_calls[2][2]
    assert Path(up["folder_path"]) == run / "model" and up["repo_id"] == "org/tok" and up["revision"] == "exp"
    assert up["commit_message"] == "Upload drorae tokenizer model"
    assert up["files"] == before  # the directory as it is: the same files, README.md refreshed in place
    assert "README.md" in before and "model.safetensors" in before and "backbone/config.json" in before
    body = read_model_card(run / "model" / "README.md")[1]
    assert 'DRoRAE.from_pretrained("org/tok")' in body and f"| rfid | {recon['metrics']['rfid']!r} |" in body
    push_to_hub(models["dit"], "org/dit", commit_message="first")
    assert [c[0] for c in hub_calls[3:]] == ["create_repo", "upload_folder"]  # main: no branch to create
    assert hub_calls[-1][2]["commit_message"] == "first"


def test_push_refuses_what_is_not_a_drorae_model(tmp_path, capsys, hub_calls):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    assert main(["push", str(tmp_path / "x"), "org/x"]) == 2
    err = capsys.readouterr().err
    assert "not a drorae model directory" in err and len(err.strip().splitlines()) == 1
    assert main(["push", str(tmp_path / "nope"), "org/x"]) == 2
    assert "not a local directory" in capsys.readouterr().err
    assert model_kind(tmp_path / "x") is None and hub_calls == []


# -- RAE's collection by variant --------------------------------------------------------------------------------------
COLLECTION = "nyu-visionx/RAE-collections"
# the paths of RAE's README and configs (configs/stage1/pretrained/DINOv2-B.yaml, configs/stage2/sampling/
# ImageNet256/DiTDHXL-DINOv2-B_AG.yaml, configs/stage1/training/DINOv2-B_decXL.yaml), less their models/ prefix
RAE_FILES = {
    "decoders/dinov2/wReg_base/ViTXL_n08/model.pt": FIXTURES / "rae_decoder" / "model.pt",
    "stats/dinov2/wReg_base/imagenet1k/stat.pt": FIXTURES / "rae_decoder" / "stat.pt",
    "DiTs/Dinov2/wReg_base/ImageNet256/DiTDH-XL/stage2_model.pt": FIXTURES / "rae_stage2" / "ddt.pt",
    "DiTs/Dinov2/wReg_base/ImageNet256/DiTDH-S_ep14/stage2_model.pt": FIXTURES / "rae_stage2" / "guide.pt",
    "discs/dino_vit_small_patch8_224.pth": FIXTURES / "rae_stage1" / "dino_tiny.pth",
}


@pytest.fixture(scope="module")
def rae_tree(tmp_path_factory):
    """A tiny `hf download nyu-visionx/RAE-collections --local-dir models`: RAE-format files at RAE's paths."""
    root = tmp_path_factory.mktemp("rae") / "models"
    for rel, src in RAE_FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / rel)
    return root


@pytest.mark.parametrize("where", ["local", "hub"])
def test_import_rae_variant_decodes_as_raes_own_decode(where, rae_tree, offline, dinov2_reg_dir, tmp_path, capsys):
    if where == "hub":
        cache_repo(offline, COLLECTION, rae_tree)
    src = COLLECTION if where == "hub" else str(rae_tree)
    args = ["import-rae", src, str(tmp_path / "tok"), "--variant", "dinov2-b", "--backbone", str(dinov2_reg_dir)]
    assert main([*args, "--input-size", "32", "--num-heads", "2"]) == 0
    tok = DRoRAE.from_pretrained(tmp_path / "tok").eval()
    ref = load_file(str(FIXTURES / "rae_decoder" / "outputs.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(tok.decode(ref["z"]), ref["x_rec"], rtol=1e-5, atol=1e-5)  # stat.pt applied too


@pytest.mark.parametrize("where", ["local", "hub"])
def test_import_rae_dit_and_disc_variants_equal_their_files(where, rae_tree, offline, tmp_path, capsys):
    from drorae.interop.rae_stage2 import rae_stats_fingerprint

    if where == "hub":
        cache_repo(offline, COLLECTION, rae_tree)
    src = COLLECTION if where == "hub" else str(rae_tree)
    ref = load_file(str(FIXTURES / "rae_stage2" / "outputs.safetensors"))
    for variant, key in (("dit-dh-xl", "forward_ddt"), ("dit-dh-s", "forward_guide")):
        assert main(["import-rae-dit", src, str(tmp_path / variant), "--variant", variant, *HEADS]) == 0
        dit = DiT.from_pretrained(tmp_path / variant)
        with torch.no_grad():
            torch.testing.assert_close(dit(ref["x"], ref["t"], ref["y"]), ref[key], rtol=0, atol=2e-5)
        fingerprint = DiT.read_extra(tmp_path / variant)["fingerprint"]
        assert fingerprint == rae_stats_fingerprint(FIXTURES / "rae_decoder" / "stat.pt")  # its tokenizer's stat.pt
    disc = ["--recipe", "S_16", "--key-depths", "0", "1"]
    assert main(["import-rae-disc", src, str(tmp_path / "d1"), *disc]) == 0
    assert main(["import-rae-disc", str(FIXTURES / "rae_stage1" / "dino_tiny.pth"), str(tmp_path / "d2"), *disc]) == 0
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("d1", "d2"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_variant_missing_from_the_collection_names_the_file_and_how_to_fetch_it(rae_tree, offline, tmp_path, capsys):
    assert main(["import-rae", COLLECTION, str(tmp_path / "t"), "--variant", "mae-b", "--backbone", "x"]) == 2
    err = capsys.readouterr().err
    assert f"hf download {COLLECTION} decoders/mae/base_p16/ViTXL_n08/model.pt" in err
    assert main(["import-rae-dit", str(rae_tree), str(tmp_path / "d"), "--variant", "dit-dh-xl-512"]) == 2
    err = capsys.readouterr().err
    assert "DiTs/Dinov2/wReg_base/ImageNet512/DiTDH-XL_ep400/stage2_model.pt not found" in err
    assert main(["import-rae", COLLECTION, str(tmp_path / "t")]) == 2  # a collection without --variant
    assert "--variant (dinov2-b, dinov2-b-512, mae-b, siglip2-b)" in capsys.readouterr().err


def test_variant_choices_are_the_collections_tables():
    from drorae.cli import build_parser
    from drorae.interop.rae_collection import DITS, TOKENIZERS

    choices = build_parser()._subparsers._group_actions[0].choices
    flag = {c: next(a for a in choices[c]._actions if a.dest == "variant") for c in ("import-rae", "import-rae-dit")}
    assert flag["import-rae"].choices == list(TOKENIZERS) and flag["import-rae-dit"].choices == list(DITS)
    assert {v.decoder for v in TOKENIZERS.values()} >= {k for k in RAE_FILES if k.startswith("decoders/")}


def test_each_loader_asks_only_for_the_files_it_reads_and_a_partial_snapshot_is_not_taken(
    models, offline, tmp_path, monkeypatch, capsys
):
    import huggingface_hub

    from drorae.generation.text.mot import MoTGenerator

    asked = []
    real = huggingface_hub.snapshot_download

    def recording(*args, **kwargs):
        asked.append((kwargs["repo_id"], sorted(kwargs["allow_patterns"])))
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", recording)
    for name in ("tok", "dit"):
        cache_repo(offline, f"org/{name}", models[name])
    DRoRAE.from_pretrained("org/tok")
    DiT.from_pretrained("org/dit")
    with pytest.raises(HubModelNotFoundError):
        MoTGenerator.from_pretrained("org/mot:sub")
    main(["info", "org/dit"])
    assert asked == [
        ("org/tok", ["backbone/*", "config.json", "model.safetensors"]),
        ("org/dit", ["config.json", "model.safetensors"]),
        ("org/mot", ["sub/config.json", "sub/model.safetensors", "sub/text_tokenizer/*"]),
        ("org/dit", ["README.md", "config.json"]),
    ]
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(models["dit"] / "config.json", only / "config.json")
    cache_repo(offline, "org/half", only)  # what `info` leaves: the config without the weights
    with pytest.raises(HubModelNotFoundError, match=r"org/half: the cached snapshot .* holds no model.safetensors"):
        DiT.from_pretrained("org/half")
