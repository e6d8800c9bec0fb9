"""Each phase trains exactly its parameter groups; frozen groups stay bit-identical."""

import json

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


@pytest.mark.slow
def test_the_three_phases_chain_with_the_dino_discriminator(tmp_path, image_dir):
    """Phase 1 -> 2 -> 3 through the CLI with RAE's DINO discriminator (a tiny random DINO file in RAE's layout):
    each phase starts from the previous one's model and trained discriminator, the D step runs in every phase, and
    the exported discriminator directory loads back equal to the trainer's."""
    from drorae.cli import main
    from drorae.tokenizer.losses import DinoViT, DinoViTConfig, load_discriminator

    dino = tmp_path / "dino.pth"
    torch.manual_seed(0)
    cfg = DinoViTConfig(embed_dim=48, depth=2, num_heads=6, patch_size=16, key_depths=[0])
    torch.save({k: 0.05 * torch.randn_like(v) for k, v in DinoViT(cfg).state_dict().items()}, dino)
    common = [
        "train.max_steps=2",
        "train.checkpoint_every=100",
        "loss.discriminator=dino",
        f"loss.disc_backbone={dino}",
        "loss.disc_recipe=S_16",
        "loss.disc_key_depths=[0]",
        "loss.disc_ks=3",
        "loss.disc_start_step=0",
        "loss.disc_update_start_step=0",
    ]
    previous = None
    heads = None
    for phase in ("1", "2", "3"):
        out = tmp_path / f"p{phase}"
        init = ["--init", str(previous)] if previous else []
        args = ["train", "--config", str(CPU_TINY), "--phase", phase, "--data", str(image_dir), "--out", str(out)]
        # another seed each phase: fresh heads would differ from the previous phase's
        assert main([*args, *init, *common, f"train.seed={phase}"]) == 0
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert any("disc/d_hinge" in m for m in metrics), phase  # the discriminator step ran
        disc = load_discriminator(out / "discriminator")
        if heads is not None:  # carried over from the previous phase, then trained further
            now = disc.heads.state_dict()
            assert now.keys() == heads.keys() and any(not torch.equal(now[k], heads[k]) for k in now)
            # two Adam steps at lr <= 2e-4 move a weight by < 1e-3; fresh heads would differ by O(0.1)
            assert max((now[k] - heads[k]).abs().max().item() for k in now if "weight_orig" in k) < 1e-3
        heads = {k: v.clone() for k, v in disc.heads.state_dict().items()}
        previous = out
