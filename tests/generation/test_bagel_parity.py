"""The MoT against Bagel's own code: tests/fixtures/bagel_mot holds a tiny random Bagel (MoT Qwen2 with QK-norm,
patch-2 latents) and the velocities of Bagel's training forward on a batch Bagel's own packer built (two captions of
different lengths, one caption dropped for CFG). drorae must give the same velocities from the same weights, through
both its training pass and its sampling pass (text cached once), and ``drorae import-bagel`` must read a Bagel model
directory into a MoT directory that does."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from drorae.cli import main
from drorae.data.captions import SPECIAL_TOKENS
from drorae.generation.text import MoTGenerator
from drorae.interop.bagel import convert_bagel_state_dict, import_bagel, infer_bagel_config
from drorae.serialization import CheckpointKeyError, load_safetensors, load_strict

FIXTURE = Path(__file__).parents[1] / "fixtures" / "bagel_mot"
META = json.loads((FIXTURE / "meta.json").read_text())
IO = load_safetensors(FIXTURE / "io.safetensors")
ATOL = 2e-6  # float32, velocity entries up to 1.3 (seen: 4.5e-7); only the op order (flex vs SDPA) differs


def token_ids() -> dict[str, int]:
    t = META["token_ids"]
    # pad: any id; padded positions are masked out (the fixture's vocabulary has no pad token of its own)
    return dict(bos=t["bos_token_id"], eos=t["eos_token_id"], vision_start=t["start_of_image"],
                vision_end=t["end_of_image"], pad=39)  # fmt: skip


def bagel_state() -> dict[str, torch.Tensor]:
    return load_safetensors(FIXTURE / "bagel_ema.safetensors")


def llm() -> dict:
    return {k: v for k, v in META["llm_config"].items() if k not in ("qk_norm", "layer_module")}


def imported(state=None) -> MoTGenerator:
    state = bagel_state() if state is None else state
    cfg = infer_bagel_config(state, llm(), token_ids(), META["latent_patch_size"], META["latent_size"])
    model = MoTGenerator(cfg)
    ours, _ = convert_bagel_state_dict(state, model)
    load_strict(model, ours)
    return model.eval()


def captions() -> tuple[torch.Tensor, torch.Tensor]:
    """Bagel's text split for each sample, ``[bos, caption, eos]`` (none when dropped), right-padded."""
    ids = token_ids()
    rows = []
    for i in range(3):
        body = IO[f"caption_{i}"].tolist()
        rows.append([ids["bos"], *body, ids["eos"]] if i != META["dropped_caption"] else [])
    width = max(len(r) for r in rows)
    text = torch.full((3, width), ids["pad"], dtype=torch.long)
    for i, r in enumerate(rows):
        text[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return text, torch.tensor([len(r) for r in rows])


def test_the_fixture_is_a_bagel_batch_with_every_case():
    """What the comparison covers, read off Bagel's packing: GQA, QK-norm, patch 2 inside a larger position table,
    distinct experts, a dropped caption (its image block alone at RoPE id 0), x_t = (1 - t) x + t eps."""
    packed = META["packed"]
    assert packed["attn_modes"][:5] == ["causal", "noise", "causal", "noise", "noise"]
    assert packed["sample_lens"][:3] == [7 + 11, 11 + 11, 11]
    assert packed["packed_position_ids"][:18] == [*range(7), *[7] * 11]  # one id for the whole image block
    assert META["llm_config"]["num_key_value_heads"] < META["llm_config"]["num_attention_heads"]
    assert META["max_latent_size"] > META["latent_size"] // META["latent_patch_size"]
    state = bagel_state()
    layer = "language_model.model.layers.0."
    assert not torch.equal(state[layer + "mlp.up_proj.weight"], state[layer + "mlp_moe_gen.up_proj.weight"])
    t = IO["t"].view(-1, 1, 1, 1)
    assert torch.allclose(IO["x_t"], (1 - t) * IO["x"] + t * IO["eps"], atol=1e-6)


def test_training_pass_gives_bagels_velocity():
    model = imported()
    text, lengths = captions()
    with torch.no_grad():
        v = model(IO["x_t"], IO["t"], text, lengths)
    torch.testing.assert_close(v, IO["velocity"], atol=ATOL, rtol=0)


def test_sampling_pass_with_cached_text_gives_bagels_velocity():
    model = imported()
    text, lengths = captions()
    with torch.no_grad():
        v = model.forward_image(IO["x_t"], IO["t"], model.encode_text(text, lengths))
    torch.testing.assert_close(v, IO["velocity"], atol=ATOL, rtol=0)


def test_the_comparison_can_fail_swapped_experts():
    """The generation expert's weights on the understanding side (and back) move the velocity far past ATOL."""
    state = bagel_state()
    swapped = {}
    for key, value in state.items():
        if "_moe_gen" in key:
            swapped[key.replace("_moe_gen", "")], swapped[key] = value, state[key.replace("_moe_gen", "")]
        else:
            swapped.setdefault(key, value)
    text, lengths = captions()
    with torch.no_grad():
        v = imported(swapped)(IO["x_t"], IO["t"], text, lengths)
    assert (v - IO["velocity"]).abs().max() > 100 * ATOL


def bagel_dir(root: Path) -> Path:
    """A Bagel model directory as released, at fixture size: llm_config.json, ema.safetensors, the tokenizer."""
    from drorae.generation.text.tiny_llm import make_tiny_llm

    llm_dir = make_tiny_llm(root / "llm", words=["red", "circle"], vocab_size=40, hidden_size=64)
    src = root / "bagel"
    src.mkdir()
    for f in llm_dir.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            shutil.copy(f, src / f.name)
    (src / "llm_config.json").write_text(json.dumps({"model_type": "qwen2", **llm()}))
    shutil.copy(FIXTURE / "bagel_ema.safetensors", src / "ema.safetensors")
    return src


def test_import_bagel_cli_writes_a_mot_dir_with_bagels_velocity(tmp_path, capsys):
    src = bagel_dir(tmp_path)
    code = main(["import-bagel", str(src), str(tmp_path / "mot"), "--latent-size", str(META["latent_size"])])
    out = capsys.readouterr().out
    assert code == 0 and "language_model.lm_head. (1 tensors)" in out
    model = MoTGenerator.from_pretrained(tmp_path / "mot").eval()
    ids = token_ids()
    assert {k: model.config.token_ids[k] for k in ("bos", "eos", "vision_start", "vision_end")} == {
        k: ids[k] for k in ("bos", "eos", "vision_start", "vision_end")
    }
    assert model.config.token_ids["pad"] == 4  # the tokenizer's own <|endoftext|>, as SPECIAL_TOKENS orders them
    assert list(SPECIAL_TOKENS)[4] == "pad"
    text, lengths = captions()
    text[text == ids["pad"]] = model.config.token_ids["pad"]
    with torch.no_grad():
        v = model(IO["x_t"], IO["t"], text, lengths)
    torch.testing.assert_close(v, IO["velocity"], atol=ATOL, rtol=0)
    extra = MoTGenerator.read_extra(tmp_path / "mot")
    assert extra["fingerprint"] is None and extra["shift"] == 3.0 and extra["latent_shape"] == [4, 6, 6]
    assert (tmp_path / "mot" / "text_tokenizer" / "tokenizer.json").is_file()


def test_import_bagel_refuses_unknown_keys_and_a_foreign_position_table():
    state = bagel_state()
    with pytest.raises(CheckpointKeyError, match="language_model.model.layers.0.self_attn.extra.weight"):
        imported({**state, "language_model.model.layers.0.self_attn.extra.weight": torch.zeros(1)})
    bad = dict(state)
    bad["latent_pos_embed.pos_embed"] = state["latent_pos_embed.pos_embed"].flip(0)
    with pytest.raises(ValueError, match="latent_pos_embed"):
        imported(bad)


def test_import_bagel_names_a_missing_weights_file(tmp_path):
    src = bagel_dir(tmp_path)
    (src / "ema.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="ema.safetensors"):
        import_bagel(src)
