"""``train-t2i`` / ``sample-t2i`` and caption data: accumulation, frozen LLM, resume after SIGKILL, torchrun, shards =
folder, skipped pairs counted, GenEval's folder layout."""

import json
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from drorae.data.captions import CaptionPairs, CaptionTokenizer, read_prompts
from drorae.data.shards import write_shards
from drorae.engine import checkpoint as ckpt
from drorae.generation.latents import cache_latents
from drorae.generation.text.sampling import T2ISampleSettings, run_t2i_sampling
from drorae.generation.text.tiny_llm import make_tiny_llm
from drorae.generation.text.trainer import T2ITrainer, load_t2i_config

from .conftest import REPO, env
from .test_train_dit import assert_same, weights

CONFIG = REPO / "configs" / "t2i" / "t2i-tiny-cpu.yaml"
FAST = [
    "data.image_size=32", "train.batch_size=4", "train.max_steps=6", "train.log_every=1", "train.checkpoint_every=3",
    "optim.warmup_steps=1", "optim.decay_steps=3", "text.max_text_tokens=8",
]  # fmt: skip
WORDS = "a photo of red blue circle square".split()


def write_pairs(root: Path, n: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(root / f"p{i:02d}.png")
        (root / f"p{i:02d}.txt").write_text(f"a photo of a {WORDS[3 + i % 2]} {WORDS[5 + i % 2]}")
    return root


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return make_tiny_llm(tmp_path_factory.mktemp("llm") / "qwen2", WORDS)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("pairs") / "pairs")


def train(out, tok, llm, data, *overrides, latents=None):
    cfg = load_t2i_config(CONFIG, [*FAST, *overrides])
    trainer = T2ITrainer(cfg, tok, llm, data, out, latents=latents, progress=False)
    try:
        result = trainer.run()
    finally:
        trainer.close()
    return result


def test_captions_from_shards_equal_captions_from_the_folder(pairs, llm_dir, tmp_path):
    stats = write_shards(pairs, tmp_path / "shards", shard_size=5)
    assert stats["captions"] == 12
    with tarfile.open(tmp_path / "shards" / "shard-000000.tar") as tar:
        names = tar.getnames()
        assert {"000000.png", "000000.txt", "000000.json"} <= set(names)
        assert json.loads(tar.extractfile("000000.json").read()) == {"path": "p00.png"}
        assert tar.extractfile("000000.txt").read().decode() == (pairs / "p00.txt").read_text()
    text = CaptionTokenizer(llm_dir, 8)
    folder, shards = CaptionPairs(pairs, 32, text), CaptionPairs(tmp_path / "shards", 32, text)
    assert len(folder) == len(shards) == 12
    for i in range(12):
        a, b = folder[i], shards[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["text_ids"], b["text_ids"])
    # the framing: [<|im_start|>] + words + [<|im_end|>], truncated to 8 with the end kept
    ids = text.ids
    assert folder[0]["text_ids"].tolist()[0] == ids["bos"] and folder[0]["text_ids"].tolist()[-1] == ids["eos"]
    assert len(text.encode("a photo of a red circle a photo of a red circle")) == 8


def test_shards_of_drorae_0_4_are_refused_as_captions_with_the_reason(pairs, llm_dir, tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    with tarfile.open(out / "shard-000000.tar", "w") as tar:  # 0.4's layout: key.txt = the image's path
        for name, data in (("000000.png", (pairs / "p00.png").read_bytes()), ("000000.txt", b"p00.png")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, __import__("io").BytesIO(data))
    with pytest.raises(ValueError, match="drorae <= 0.4"):
        CaptionPairs(out, 32, CaptionTokenizer(llm_dir, 8))


def test_a_corrupt_pair_is_skipped_and_counted_and_an_uncaptioned_image_left_out(
    pairs, llm_dir, tokenizer_dir, tmp_path
):
    data = tmp_path / "data"
    write_pairs(data)
    (data / "p03.png").write_bytes(b"not a png")
    (data / "p05.txt").write_bytes(b"\xff\xfe bad")
    Image.new("RGB", (32, 32)).save(data / "lonely.png")
    result = train(tmp_path / "run", tokenizer_dir, llm_dir, data, "train.max_steps=3")
    assert result.skipped_files == 2
    assert CaptionPairs(data, 32, CaptionTokenizer(llm_dir, 8)).unpaired == 1


def test_training_from_a_caption_cache_equals_encoding_every_step(pairs, llm_dir, tokenizer_dir, tmp_path):
    from drorae.cli import main

    cache = tmp_path / "cache"  # through the CLI: cache-latents --captions, then train-t2i --latents
    assert main(["cache-latents", "--model", str(tokenizer_dir), "--data", str(pairs), "--captions", "--flip",
                 "--batch", "5", "--num-workers", "0", "--device", "cpu", "--out", str(cache)]) == 0  # fmt: skip
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["captions"] and meta["num_latents"] == meta["num_images"] == 12
    train(tmp_path / "a", tokenizer_dir, llm_dir, pairs, "data.random_flip=true")
    assert (
        main(cli(tmp_path / "b", tokenizer_dir, llm_dir, pairs, "data.random_flip=true", "--latents", str(cache))[2:])
        == 0
    )
    assert_same(weights(tmp_path / "a"), weights(tmp_path / "b"), atol=1e-5)


def test_a_caption_cache_keeps_each_latent_with_its_own_caption_after_a_skip(llm_dir, tokenizer_dir, tmp_path):
    from drorae.generation.latents import stats_fingerprint
    from drorae.generation.text.trainer import cached_caption_pairs
    from drorae.tokenizer.model import DRoRAE

    data = write_pairs(tmp_path / "data")
    (data / "p03.png").write_bytes(b"not a png")
    meta = cache_latents(tokenizer_dir, data, tmp_path / "cache", captions=True, num_workers=0, device="cpu",
                         progress=False)  # fmt: skip
    assert (meta["num_latents"], meta["skipped_files"]) == (11, 1)
    tok = DRoRAE.from_pretrained(tokenizer_dir).eval()
    pairs = CaptionPairs(data, 32, CaptionTokenizer(llm_dir, 8))
    cached = cached_caption_pairs(tmp_path / "cache", pairs, stats_fingerprint(tok), False, 0)
    assert len(cached) == 11
    for row in (2, 3, 10):  # row 3 and after come from pair row + 1
        pair = pairs[row + (row >= 3)]
        with torch.no_grad():
            expected = tok.encode(pair["image"][None])[0]
        torch.testing.assert_close(cached[row]["latent"], expected, rtol=0, atol=1e-5)
        assert torch.equal(cached[row]["text_ids"], pair["text_ids"])
    # a cache of something else is refused by name
    with pytest.raises(ValueError, match="no mirrored latents"):
        cached_caption_pairs(tmp_path / "cache", pairs, stats_fingerprint(tok), True, 0)
    with pytest.raises(ValueError, match="fingerprint"):
        cached_caption_pairs(tmp_path / "cache", pairs, "another tokenizer", False, 0)
    with pytest.raises(ValueError, match="holds 13"):
        write_pairs(data, n=13)
        cached_caption_pairs(tmp_path / "cache", CaptionPairs(data, 32, pairs.tokenizer), stats_fingerprint(tok), 0, 0)
    classes = tmp_path / "classes" / "a"
    classes.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(classes / "x.png")
    cache_latents(tokenizer_dir, tmp_path / "classes", tmp_path / "cls", num_workers=0, device="cpu", progress=False)
    with pytest.raises(ValueError, match="cache-latents --captions"):
        cached_caption_pairs(tmp_path / "cls", pairs, stats_fingerprint(tok), False, 0)


def test_gradient_accumulation_of_two_equals_one_doubled_batch(pairs, llm_dir, tokenizer_dir, tmp_path):
    a = train(tmp_path / "a", tokenizer_dir, llm_dir, pairs, "train.batch_size=2", "train.grad_accum=2")
    b = train(tmp_path / "b", tokenizer_dir, llm_dir, pairs, "train.batch_size=4")
    assert a.history[-1]["loss"] == pytest.approx(b.history[-1]["loss"], rel=1e-5)
    assert_same(weights(tmp_path / "a"), weights(tmp_path / "b"), atol=1e-5)


def test_gen_mode_trains_only_the_generation_expert(pairs, llm_dir, tokenizer_dir, tmp_path):
    train(tmp_path / "run", tokenizer_dir, llm_dir, pairs, "text.train_experts=gen")
    out, llm = weights(tmp_path / "run"), load_file(str(llm_dir / "model.safetensors"))
    llm = {k.removeprefix("model."): v for k, v in llm.items()}
    key = "0.self_attn.q_proj.weight"
    assert torch.equal(out[f"und.{key}"], llm[f"layers.{key}"])
    assert torch.equal(out["embed_tokens.weight"], llm["embed_tokens.weight"])
    assert not torch.equal(out[f"gen.{key}"], llm[f"layers.{key}"])  # the generation expert moved away from its copy


def test_sample_t2i_writes_genevals_layout_resumes_and_seeds_per_image(pairs, llm_dir, tokenizer_dir, tmp_path):
    train(tmp_path / "run", tokenizer_dir, llm_dir, pairs, "train.max_steps=2")
    meta = [
        {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}], "prompt": "a red circle"},
        {"tag": "single_object", "include": [{"class": "square", "count": 1}], "prompt": "a photo of a square"},
    ]  # fmt: skip
    prompts = tmp_path / "evaluation_metadata.jsonl"
    prompts.write_text("".join(json.dumps(m) + "\n" for m in meta))
    assert read_prompts(prompts) == meta
    s = T2ISampleSettings(scale=2.0, steps=4, batch_size=3, precision="fp32")
    run_t2i_sampling(tmp_path / "run", tokenizer_dir, prompts, tmp_path / "s", per_prompt=3, settings=s, device="cpu")
    for p in range(2):
        assert json.loads((tmp_path / "s" / f"{p:05d}" / "metadata.jsonl").read_text()) == meta[p]
        assert sorted(x.name for x in (tmp_path / "s" / f"{p:05d}" / "samples").iterdir()) == [
            "0000.png", "0001.png", "0002.png"
        ]  # fmt: skip
    first = np.asarray(Image.open(tmp_path / "s" / "00001" / "samples" / "0002.png"))
    # another batch size gives the same image (per-image seeds), and a deleted image is made again
    (tmp_path / "s" / "00001" / "samples" / "0002.png").unlink()
    s2 = T2ISampleSettings(scale=2.0, steps=4, batch_size=3, precision="fp32")
    run_t2i_sampling(tmp_path / "run", tokenizer_dir, prompts, tmp_path / "s", per_prompt=3, settings=s2, device="cpu")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "s" / "00001" / "samples" / "0002.png")), first)
    s5 = T2ISampleSettings(scale=2.0, steps=4, batch_size=5, precision="fp32")
    run_t2i_sampling(tmp_path / "run", tokenizer_dir, prompts, tmp_path / "b5", per_prompt=3, settings=s5, device="cpu")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b5" / "00001" / "samples" / "0002.png")), first)
    with pytest.raises(ValueError, match="different sampling run"):
        run_t2i_sampling(
            tmp_path / "run", tokenizer_dir, prompts, tmp_path / "s", per_prompt=3,
            settings=T2ISampleSettings(scale=3.0, steps=4), device="cpu",
        )  # fmt: skip


def cli(out, tok, llm, data, *overrides):
    return ["-m", "drorae.cli", "train-t2i", "--tokenizer", str(tok), "--llm", str(llm), "--data", str(data),
            "--config", str(CONFIG), "--out", str(out), *FAST, *overrides]  # fmt: skip


def test_sigkill_then_resume_equals_the_uninterrupted_run(pairs, llm_dir, tokenizer_dir, tmp_path):
    steps = ["train.max_steps=30", "train.checkpoint_every=2"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    args = (tokenizer_dir, llm_dir, pairs)
    subprocess.run([sys.executable, *cli(full, *args, *steps)], check=True, env=env(), capture_output=True)
    proc = subprocess.Popen(
        [sys.executable, *cli(killed, *args, *steps)], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        latest = ckpt.latest_checkpoint(killed / "checkpoints")
        if latest is not None and latest.name >= "step_00000004":
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = ckpt.latest_checkpoint(killed / "checkpoints")
    assert killed_at is not None and killed_at.name < "step_00000030" and not (killed / "model").exists()
    done = subprocess.run(
        [sys.executable, *cli(killed, *args, *steps, "--resume")], env=env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed train-t2i from {killed_at}" in done.stdout
    assert_same(weights(full), weights(killed), atol=1e-6)


def test_two_torchrun_processes_equal_one_process_with_the_doubled_batch(pairs, llm_dir, tokenizer_dir, tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = (tokenizer_dir, llm_dir, pairs)
    proc = subprocess.run(
        [*launcher, *cli(tmp_path / "two", *args, "train.batch_size=2")],
        env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size=2" in proc.stdout
    proc = subprocess.run(
        [sys.executable, *cli(tmp_path / "one", *args, "train.batch_size=4")], env=env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same(weights(tmp_path / "one"), weights(tmp_path / "two"), atol=1e-5)
