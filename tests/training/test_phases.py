"""Each phase trains exactly its parameter groups; frozen groups stay bit-identical."""

import pytest
import torch

from drorae import DRoRAE
from drorae.tokenizer.training import Trainer, load_config

from .conftest import CPU_TINY


def snapshot(model: DRoRAE) -> dict[str, dict[str, torch.Tensor]]:
    parts = {"backbone": model.backbone, "fusion": model.fusion, "decoder": model.decoder}
    return {
        name: {k: v.detach().clone() for k, v in m.state_dict().items()} for name, m in parts.items() if m is not None
    }


def changed(before: dict, after: dict) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "phase,trains,needs_init",
    [
        ("1", {"decoder"}, False),
        ("2", {"fusion"}, True),
        ("joint", {"fusion", "decoder"}, True),
        ("full", {"decoder", "backbone"}, "phase2"),
        ("3", {"decoder"}, "phase2"),
    ],
)
def test_phase_trains_only_its_groups(phase, trains, needs_init, phase1_run, image_dir, tmp_path):
    cfg = load_config(CPU_TINY, ["train.max_steps=3", "train.checkpoint_every=100"])
    init = None
    if needs_init == "phase2":
        Trainer(cfg, "2", tmp_path / "p2", data_dir=image_dir, init=phase1_run, progress=False).run()
        init = tmp_path / "p2"
    elif needs_init:
        init = phase1_run
    trainer = Trainer(cfg, phase, tmp_path / "run", data_dir=image_dir, init=init, progress=False)
    before = snapshot(trainer.model)
    optimised = {id(p) for g in trainer.opt.param_groups for p in g["params"]}
    result = trainer.run()
    after = snapshot(trainer.model)
    for group in before:
        assert changed(before[group], after[group]) == (group in trains), f"phase {phase}: group {group}"
    # frozen groups: no gradients, no optimizer state
    for name, module in (
        ("backbone", trainer.model.backbone),
        ("fusion", trainer.model.fusion),
        ("decoder", trainer.model.decoder),
    ):
        if module is None:
            continue
        for p in module.parameters():
            assert (id(p) in optimised) == (name in trains)
            if name not in trains:
                assert p.grad is None
    # the exported directory loads and holds the EMA weights of the trained groups
    loaded = DRoRAE.from_pretrained(result.model_dir)
    assert loaded.fusion_enabled == (phase != "1")
    ema = dict(zip(trainer.ema.names, trainer.ema.shadow))
    for n, p in loaded.named_parameters():
        if n in ema:
            torch.testing.assert_close(p, ema[n], rtol=0, atol=0)


def test_phase2_without_init_is_refused(tmp_path, image_dir):
    cfg = load_config(CPU_TINY)
    with pytest.raises(ValueError, match="phase 2 starts from the previous phase's output: pass --init"):
        Trainer(cfg, "2", tmp_path, data_dir=image_dir)


def test_phase3_needs_a_fusion_module(tmp_path, image_dir, phase1_run):
    cfg = load_config(CPU_TINY)
    with pytest.raises(ValueError, match="no fusion module: pass a phase-2 output"):
        Trainer(cfg, "3", tmp_path, data_dir=image_dir, init=phase1_run)


def test_the_tokenizer_manual_shows_the_phase_table_the_code_uses():
    from drorae.tokenizer.training.phases import PHASES, phase_table_markdown

    from .conftest import REPO

    assert phase_table_markdown() in (REPO / "docs" / "tokenizer.md").read_text()
    assert [p.name for p in PHASES.values()] == ["1", "2", "3", "joint", "full"]


def test_gradient_accumulation_of_two_equals_one_doubled_batch(image_dir, tmp_path):
    """The tokenizer's trainer weights micro-batches by the engine's rule: 2 x 4 images accumulate to the step of
    one batch of 8 (no decoder noise and no GAN, the two sources of per-call randomness). Compared on the
    decoder's output: the attention key bias has no gradient in theory, so Adam turns its float noise into
    updates that differ bit-wise while leaving the function unchanged."""
    common = ["train.max_steps=2", "train.checkpoint_every=100", "model.noise_tau=0", "loss.discriminator=none"]
    latent = torch.randn(3, 64, 8, 8, generator=torch.Generator().manual_seed(0))
    decoded, start = {}, None
    for name, extra in (("one", ["train.batch_size=8"]), ("two", ["train.batch_size=4", "train.grad_accum=2"])):
        cfg = load_config(CPU_TINY, common + extra)
        trainer = Trainer(cfg, "1", tmp_path / name, data_dir=image_dir, progress=False)
        with torch.no_grad():
            start = trainer.model.decode(latent) if start is None else start
        trainer.run()
        with torch.no_grad():
            decoded[name] = DRoRAE.from_pretrained(tmp_path / name / "model").decode(latent)
    torch.testing.assert_close(decoded["two"], decoded["one"], rtol=0, atol=2e-5)
    assert (decoded["one"] - start).abs().max() > 1e-3  # the two steps did change the decoder
