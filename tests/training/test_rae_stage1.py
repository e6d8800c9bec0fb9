"""RAE's stage-1 training step, computed by drorae's trainer, against RAE's own (tests/fixtures/rae_stage1: RAE's
model, DinoDisc, DiffAug and the body of train_stage1.py's loop run on tiny random models at the commit in its
meta.json). RAE's checkpoints are imported with `import-rae-stage1` and continued with the trainer's resume: the
step from RAE's checkpoint before step 0 must equal RAE's step 0, and the step from its checkpoint after step 0
(moments, EMA, spectral-norm vectors, both schedules carried over) RAE's step 1."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from drorae.cli import main as cli_main
from drorae.interop.rae_stage1 import import_rae_stage1
from drorae.tokenizer.training import Trainer, load_config
from drorae.tokenizer.training import trainer as trainer_module

FIXTURE = Path(__file__).parents[1] / "fixtures" / "rae_stage1"
META = json.loads((FIXTURE / "meta.json").read_text())


def rae_names() -> dict[str, str]:
    """drorae decoder parameter -> RAE's GeneralDecoder parameter(s), written out by hand from the two layouts."""
    names = {
        "decoder.embed.weight": "decoder_embed.weight",
        "decoder.embed.bias": "decoder_embed.bias",
        "decoder.norm.weight": "decoder_norm.weight",
        "decoder.norm.bias": "decoder_norm.bias",
        "decoder.pred.weight": "decoder_pred.weight",
        "decoder.pred.bias": "decoder_pred.bias",
        "decoder.cls_token": "trainable_cls_token",
        "decoder.pos_embed": "decoder_pos_embed",
    }
    for i in range(META["decoder"]["num_layers"]):
        rae, ours = f"decoder_layers.{i}.", f"decoder.blocks.{i}."
        for kind in ("weight", "bias"):
            names[f"{ours}attn.qkv.{kind}"] = tuple(
                f"{rae}attention.attention.{p}.{kind}" for p in ("query", "key", "value")
            )
            names[f"{ours}attn.proj.{kind}"] = f"{rae}attention.output.dense.{kind}"
            names[f"{ours}norm1.{kind}"] = f"{rae}layernorm_before.{kind}"
            names[f"{ours}norm2.{kind}"] = f"{rae}layernorm_after.{kind}"
            names[f"{ours}mlp.fc1.{kind}"] = f"{rae}intermediate.dense.{kind}"
            names[f"{ours}mlp.fc2.{kind}"] = f"{rae}output.dense.{kind}"
    return names


def rae_value(ref: dict[str, torch.Tensor], prefix: str, name: str) -> torch.Tensor:
    rae = rae_names()[name]
    if isinstance(rae, tuple):
        return torch.cat([ref[prefix + r] for r in rae])
    return ref[prefix + rae]


def rae_config(run: Path):
    d, s = META["decoder"], META["schedule"]
    warmup, total = META["steps_per_epoch"] * s["warmup_epochs"], META["steps_per_epoch"] * s["decay_end_epoch"]
    ratio = s["final_lr"] / s["base_lr"]
    overrides = [
        f"model.backbone.name_or_path={FIXTURE / 'backbone'}",
        f"model.backbone.input_size={META['image_size']}",
        f"model.decoder.hidden_size={d['hidden_size']}",
        f"model.decoder.num_layers={d['num_layers']}",
        f"model.decoder.num_heads={d['num_heads']}",
        f"model.decoder.intermediate_size={d['intermediate_size']}",
        f"model.decoder.patch_size={d['patch_size']}",
        "model.decoder.learned_pos_embed=true",
        f"model.noise_tau={META['noise_tau']}",
        f"data.image_size={META['image_size']}",
        "data.random_flip=false",
        "loss.perceptual=none",
        f"loss.gan_weight={META['loss']['disc_weight']}",
        f"loss.discriminator={run / 'discriminator'}",  # a discriminator directory named directly
        f"loss.disc_lr={s['base_lr']}",
        f"loss.disc_warmup_steps={warmup}",
        f"loss.disc_decay_steps={total}",
        f"loss.disc_min_lr_ratio={ratio}",
        f"optim.lr={s['base_lr']}",
        f"optim.warmup_steps={warmup}",
        f"optim.min_lr_ratio={ratio}",
        "optim.grad_clip=0",
        f"optim.ema_decay={META['loss']['ema_decay']}",
        "optim.ema_warmup=false",
        f"train.max_steps={total}",
        "train.batch_size=2",
        "train.device=cpu",
        "train.precision=fp32",
    ]
    return load_config(None, overrides)


def import_fixture(checkpoint: Path, out: Path) -> dict:
    """import-rae-stage1 with the fixture's sizes (its DINO's width and depth come from the file itself)."""
    return import_rae_stage1(
        checkpoint,
        out,
        backbone=str(FIXTURE / "backbone"),
        dino=FIXTURE / "dino_tiny.pth",
        input_size=META["image_size"],
        num_heads=META["decoder"]["num_heads"],
        recipe="S_16",
        key_depths=META["dino"]["key_depths"],
        ks=META["ks"],
    )


def run_step(step: int, tmp_path: Path, ref: dict[str, torch.Tensor], monkeypatch) -> dict:
    run = tmp_path / "run"
    import_fixture(FIXTURE / f"ep-000000{step}.pt", run)
    batch = ref["batch"]
    dataset = [{"image": x, "index": i} for i, x in enumerate(batch)]
    trainer = Trainer(rae_config(run), "1", run, resume=True, dataset=dataset, progress=False)
    assert trainer.step == step
    got: dict = {}

    def capture(opt, key, named):
        step_fn = opt.step

        def wrapped(*args, **kwargs):
            got[key] = {n: p.grad.clone() for n, p in named if p.grad is not None}
            got[key + "_lr"] = opt.param_groups[0]["lr"]
            return step_fn(*args, **kwargs)

        opt.step = wrapped

    capture(trainer.opt, "grad", trainer.trained)
    capture(trainer.disc_opt, "disc_grad", [(n, p) for n, p in trainer.disc.named_parameters() if p.requires_grad])
    quantize = trainer_module.quantize_fakes
    monkeypatch.setattr(trainer_module, "quantize_fakes", lambda x: got.setdefault("fakes", quantize(x)))
    torch.manual_seed(META["seeds"][f"step{step}"])  # RAE's draws: latent noise, then the three DiffAug calls
    out = trainer.train_step([batch], torch.zeros((), dtype=torch.bool))
    got["losses"] = out.losses
    got["trainer"] = trainer
    return got


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "step.safetensors"))


@pytest.mark.parametrize("step", [0, 1])
def test_a_step_equals_raes(step: int, tmp_path: Path, ref: dict[str, torch.Tensor], monkeypatch) -> None:
    got = run_step(step, tmp_path, ref, monkeypatch)
    r = {k[len(f"step{step}.") :]: v for k, v in ref.items() if k.startswith(f"step{step}.")}
    close = lambda a, b, tol=1e-5: torch.testing.assert_close(  # noqa: E731
        torch.as_tensor(a).float(), b, rtol=1e-4, atol=tol * max(1.0, b.abs().max().item())
    )
    losses = got["losses"]
    # -- the generator step: L1 + 0.75 * lambda * (-mean D(aug(x_hat))), lambda with eps 1e-6
    for ours, theirs in (("l1", "l1"), ("gan_g", "gan_g"), ("adaptive_weight", "adaptive_weight"), ("total", "total")):
        close(losses[ours], r[theirs])
    close(got["grad_lr"], r["lr"])
    assert set(got["grad"]) == set(rae_names())  # decoder_pos_embed trains too, as in RAE
    for name, grad in got["grad"].items():
        close(grad, rae_value(r, "grad.", name))
    # -- the discriminator step: fresh 8-bit fakes, fake and real in two forwards, 0.5 * hinge
    close(got["fakes"] * 2 - 1, r["fakes"])
    close(losses["disc/d_hinge"], r["d_loss"])
    close(losses["disc/logits_real"], r["logits_real"])
    close(losses["disc/logits_fake"], r["logits_fake"])
    close(got["disc_grad_lr"], r["disc_lr"])
    assert set(got["disc_grad"]) == {k[len("disc_grad.") :] for k in r if k.startswith("disc_grad.")}
    for name, grad in got["disc_grad"].items():
        close(grad, r[f"disc_grad.{name}"])
    # -- after the step: decoder, its EMA (0.9978 from the first update), discriminator heads and u, v
    trainer = got["trainer"]
    for name, p in trainer.trained:
        close(p.detach(), rae_value(r, "after.", name))
    for name, shadow in trainer.ema.state_dict().items():
        close(shadow, rae_value(r, "ema.", name))
    for name, value in trainer.disc.heads.state_dict(prefix="heads.").items():
        if re.fullmatch(r"heads\.\d+\.(0|1\.fn)\.0\.bias", name):
            # a conv bias right before the per-sample norm cancels: its gradient is float noise (~1e-9, checked
            # above to 1e-8), which Adam's g / (|g| + eps) turns into a +-lr step of random sign in both codes
            continue
        close(value, r[f"disc_after.{name}"])


def test_import_rae_stage1_cli_writes_a_resumable_run(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code = cli_main(
        [
            "import-rae-stage1",
            str(FIXTURE / "ep-0000001.pt"),
            str(out),
            "--backbone",
            str(FIXTURE / "backbone"),
            "--dino",
            str(FIXTURE / "dino_tiny.pth"),
            "--input-size",
            str(META["image_size"]),
            "--num-heads",
            str(META["decoder"]["num_heads"]),
            "--recipe",
            "S_16",
            "--key-depths",
            *map(str, META["dino"]["key_depths"]),
            "--ks",
            str(META["ks"]),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "step 1" in printed and "not carried" in printed and "--resume" in printed
    report = json.loads((out / "rae_import.json").read_text())
    assert report["step"] == 1 and any("RNG" in line for line in report["not_carried"])
    assert (out / "discriminator" / "config.json").is_file()


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((FIXTURE / "ep-0000000.pt").read_bytes()[:5000])
    pickled = tmp_path / "object.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, pickled)  # an object, not tensors
    return {"garbage": garbage, "truncated": truncated, "object": pickled}


@pytest.mark.parametrize("kind", ["garbage", "truncated", "object"])
@pytest.mark.parametrize("command", ["import-rae-stage1", "import-rae-disc"])
def test_the_importers_refuse_foreign_files(command: str, kind: str, tmp_path: Path, capsys) -> None:
    bad = _bad_files(tmp_path)[kind]
    if command == "import-rae-stage1":
        args = [command, str(bad), str(tmp_path / "o"), "--backbone", str(FIXTURE / "backbone"), "--dino"]
        args.append(str(FIXTURE / "dino_tiny.pth"))
    else:
        args = [command, str(bad), str(tmp_path / "o"), "--recipe", "S_16"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err


def test_a_missing_or_extra_entry_is_named(tmp_path: Path) -> None:
    state = torch.load(FIXTURE / "ep-0000000.pt", weights_only=True)
    del state["disc_optimizer"]
    state["extra_entry"] = torch.zeros(1)
    path = tmp_path / "edited.pt"
    torch.save(state, path)
    with pytest.raises(KeyError, match=r"missing entries \['disc_optimizer'\].*unexpected entries \['extra_entry'\]"):
        import_rae_stage1(path, tmp_path / "o", backbone=str(FIXTURE / "backbone"), dino=FIXTURE / "dino_tiny.pth")
    state = torch.load(FIXTURE / "ep-0000000.pt", weights_only=True)
    state["disc"]["heads.9.extra"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(KeyError, match=r"unexpected keys \['heads.9.extra'\]"):
        import_fixture(path, tmp_path / "o")


def test_the_rae_config_has_raes_numbers() -> None:
    """configs/tokenizer/rae/dinov2-b-decxl.yaml against RAE's own DINOv2-B_decXL.yaml (parsed by the fixture
    script), its epoch counts turned into steps of ImageNet-1k at global batch 512, as RAE's loader makes them."""
    rae = META["rae_config"]
    cfg = load_config(Path(__file__).parents[2] / "configs" / "tokenizer" / "rae" / "dinov2-b-decxl.yaml")
    epoch = 1_281_167 // rae["training"]["global_batch_size"]  # DataLoader(drop_last=True) on every rank
    assert epoch == 2502 and cfg.train.batch_size * 8 == rae["training"]["global_batch_size"]
    t, g, d = rae["training"], rae["gan"], rae["gan"]["disc"]
    assert cfg.train.max_steps == t["epochs"] * epoch
    assert cfg.optim.lr == t["optimizer"]["lr"] and cfg.optim.betas == t["optimizer"]["betas"]
    assert cfg.optim.weight_decay == t["optimizer"]["weight_decay"]
    assert cfg.optim.grad_clip == t["clip_grad"] == 0.0
    assert cfg.optim.ema_decay == t["ema_decay"] and cfg.optim.ema_warmup is False
    assert cfg.optim.warmup_steps == t["scheduler"]["warmup_epochs"] * epoch and t["scheduler"]["warmup_from_zero"]
    assert cfg.optim.min_lr_ratio == pytest.approx(t["scheduler"]["final_lr"] / t["scheduler"]["base_lr"])
    assert t["scheduler"]["decay_end_epoch"] == t["epochs"] and t["scheduler"]["type"] == "cosine"
    assert cfg.loss.disc_lr == d["optimizer"]["lr"] and cfg.loss.disc_betas == d["optimizer"]["betas"]
    assert cfg.loss.disc_weight_decay == d["optimizer"]["weight_decay"]
    assert cfg.loss.disc_warmup_steps == d["scheduler"]["warmup_epochs"] * epoch
    assert cfg.loss.disc_decay_steps == d["scheduler"]["decay_end_epoch"] * epoch
    assert cfg.loss.disc_min_lr_ratio == pytest.approx(d["scheduler"]["final_lr"] / d["scheduler"]["base_lr"])
    arch = d["arch"]
    assert (cfg.loss.disc_recipe, cfg.loss.disc_ks, cfg.loss.disc_norm) == (
        arch["recipe"],
        arch["ks"],
        arch["norm_type"],
    )
    assert arch["using_spec_norm"] and cfg.loss.disc_backbone.endswith(Path(arch["dino_ckpt_path"]).name)
    assert cfg.loss.diffaug_prob == d["augment"]["prob"] and cfg.loss.diffaug_cutout == d["augment"]["cutout"]
    loss = g["loss"]
    assert (loss["disc_loss"], loss["gen_loss"], loss["disc_updates"]) == ("hinge", "vanilla", 1)
    assert cfg.loss.gan_weight == loss["disc_weight"] and cfg.loss.perceptual_weight == loss["perceptual_weight"]
    assert cfg.loss.max_adaptive_weight == loss["max_d_weight"] and loss["lpips_start"] == 0
    assert cfg.loss.disc_start_step == loss["disc_start"] * epoch
    assert cfg.loss.disc_update_start_step == loss["disc_upd_start"] * epoch
    s1 = rae["stage_1"]["params"]
    assert cfg.model.noise_tau == s1["noise_tau"] and cfg.model.backbone.input_size == s1["encoder_input_size"]
    assert cfg.model.backbone.name_or_path == s1["encoder_config_path"] and cfg.model.decoder.preset == "ViT-XL"
    assert cfg.model.decoder.learned_pos_embed  # RAE's decoder.requires_grad_(True) trains decoder_pos_embed
    # train_stage1.py's data: Resize(384, bicubic) + RandomCrop(256), no flip, for --image-size 256
    assert (cfg.data.crop, cfg.data.resize, cfg.data.random_flip, cfg.data.image_size) == ("random", 384, False, 256)


def test_import_rae_disc_with_a_checkpoint_takes_its_trained_heads(tmp_path: Path) -> None:
    from drorae.tokenizer.losses import load_discriminator

    args = ["--recipe", "S_16", "--key-depths", *map(str, META["dino"]["key_depths"]), "--ks", str(META["ks"])]
    ckpt = FIXTURE / "ep-0000001.pt"
    assert (
        cli_main(
            ["import-rae-disc", str(FIXTURE / "dino_tiny.pth"), str(tmp_path / "d"), "--checkpoint", str(ckpt), *args]
        )
        == 0
    )
    disc = load_discriminator(tmp_path / "d")
    heads = torch.load(ckpt, weights_only=True)["disc"]
    state = disc.state_dict()
    assert set(heads) == {k for k in state if k.startswith("heads.")}
    assert all(torch.equal(state[k], v) for k, v in heads.items())
    dino = torch.load(FIXTURE / "dino_tiny.pth", weights_only=True)
    assert torch.equal(state["dino.blocks.0.mlp.fc1.weight"], dino["blocks.0.mlp.fc1.weight"])
