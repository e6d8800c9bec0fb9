"""RAE's stage-1 files -> drorae: its DINO discriminator (``import-rae-disc``) and whole training checkpoints
(``import-rae-stage1``), so that a run of RAE's ``train_stage1.py`` continues under ``drorae train --resume``.

RAE's checkpoint (``ep-*.pt``, its ``save_checkpoint``) is ``{step, epoch, model, ema, optimizer, scheduler,
disc, disc_optimizer, disc_scheduler}``. ``model``/``ema`` hold the encoder (dropped: drorae reads the frozen
backbone from ``--backbone``) and ``GeneralDecoder`` (mapped as ``import-rae`` maps it; its
``decoder_pos_embed`` is kept, because RAE's trainer trains it). The decoder's AdamW moments are remapped
onto drorae's parameters (RAE's separate q/k/v moments concatenated, as the weights are); ``disc`` holds the
discriminator heads under the same keys as drorae's :class:`~drorae.tokenizer.losses.DinoDiscriminator`, and
its optimizer's states map index to index. Files are read with ``weights_only=True``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from ..engine import checkpoint as ckpt
from ..serialization import CheckpointKeyError, ForeignFileError, load_strict, load_torch_file
from ..tokenizer.backbones import load_backbone
from ..tokenizer.decoder import RAEDecoder
from ..tokenizer.losses import DinoDiscriminator
from ..tokenizer.model import DRoRAE
from ..tokenizer.training.phases import get_phase
from ..tokenizer.training.trainer import DISCRIMINATOR_DIR, set_trainable
from .decoder_keys import convert_rae_decoder_state_dict, infer_decoder_config

__all__ = ["STAGE1_KEYS", "import_rae_disc", "import_rae_stage1", "read_rae_stage1_checkpoint"]

STAGE1_KEYS = ("step", "epoch", "model", "ema", "optimizer", "scheduler", "disc", "disc_optimizer", "disc_scheduler")
_NEEDED = ("step", "epoch", "model", "ema", "optimizer", "disc", "disc_optimizer")


def read_rae_stage1_checkpoint(path: str | Path) -> dict:
    """RAE's ``ep-*.pt`` as plain containers; a foreign file, or a missing or extra entry, is an error naming it."""
    path = Path(path)
    state = load_torch_file(path, "an RAE stage-1 checkpoint (train_stage1.py's ep-*.pt)")
    if not isinstance(state, dict):
        raise ForeignFileError(f"{path} holds a {type(state).__name__}, not RAE's stage-1 checkpoint dict")
    missing = [k for k in _NEEDED if k not in state]
    extra = sorted(k for k in state if k not in STAGE1_KEYS)
    if missing or extra:
        raise CheckpointKeyError(
            f"{path} is not an RAE stage-1 checkpoint: missing entries {missing}, unexpected entries {extra} "
            f"(expected {list(STAGE1_KEYS)})"
        )
    return state


def _decoder_part(state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    part = {k: v for k, v in state.items() if k.startswith("decoder.")}
    if not part:
        raise CheckpointKeyError(f"{source} holds no decoder.* weights (keys start {sorted(state)[:4]})")
    return part


def _discriminator(state: dict, dino: str | Path, recipe: str, key_depths, ks: int, norm_type: str, source: str):
    disc = DinoDiscriminator.from_dino_file(dino, recipe, list(key_depths), ks, norm_type)
    heads = state["disc"]
    if not isinstance(heads, dict):
        raise ForeignFileError(f"{source}: its disc entry is a {type(heads).__name__}, not a state dict")
    load_strict(disc, {**disc.dino.state_dict(prefix="dino."), **heads}, source=f"{source} [disc]")
    return disc


def import_rae_disc(
    dino: str | Path,
    out: str | Path,
    *,
    checkpoint: str | Path | None = None,
    recipe: str = "S_8",
    key_depths=(2, 5, 8, 11),
    ks: int = 9,
    norm_type: str = "bn",
    seed: int = 0,
) -> DinoDiscriminator:
    """RAE's DINO weights file (+ the trained heads of an RAE stage-1 checkpoint's ``disc``) -> a discriminator
    directory that :func:`~drorae.tokenizer.losses.load_discriminator` and ``loss.disc_backbone`` read."""
    if checkpoint is not None:
        disc = _discriminator(
            read_rae_stage1_checkpoint(checkpoint), dino, recipe, key_depths, ks, norm_type, str(checkpoint)
        )
    else:
        disc = DinoDiscriminator.from_dino_file(dino, recipe, list(key_depths), ks, norm_type, seed=seed)
    disc.save_pretrained(out)
    return disc


def _remap_adam(opt_state: dict, rae_names: list[str], trained: list[tuple[str, torch.nn.Parameter]], source: str):
    """RAE's decoder AdamW state (indexed over ``decoder.parameters()``) -> per drorae parameter name."""
    groups = opt_state.get("param_groups") or []
    if len(groups) != 1 or len(groups[0]["params"]) != len(rae_names):
        raise CheckpointKeyError(
            f"{source}: its optimizer covers {sum(len(g['params']) for g in groups)} parameters in "
            f"{len(groups)} groups; the decoder has {len(rae_names)}"
        )
    by_name = {rae_names[i]: s for i, s in opt_state["state"].items()}
    out: dict[str, dict] = {}
    for moment in ("exp_avg", "exp_avg_sq"):
        mapped = convert_rae_decoder_state_dict({n: s[moment] for n, s in by_name.items()}, "rae", keep_pos_embed=True)
        for name, value in mapped.items():
            out.setdefault(f"decoder.{name}", {})[moment] = value
    steps = convert_rae_decoder_state_dict(
        {n: torch.as_tensor(s["step"], dtype=torch.float32).reshape(1) for n, s in by_name.items()},
        "rae",
        keep_pos_embed=True,
    )
    for name, step in steps.items():  # q, k and v were stepped together: their concatenation has one count
        out[f"decoder.{name}"]["step"] = step[:1].reshape(())
    unknown = sorted(set(out) - {n for n, _ in trained})
    if unknown:
        raise CheckpointKeyError(f"{source}: optimizer states for parameters drorae does not train: {unknown[:5]}")
    return out, groups[0]


def _optimizer_tensors(params, states: list[dict | None], group: dict, prefix: str) -> tuple[dict, dict]:
    """A drorae-shaped AdamW holding ``states`` (one per parameter, or None), flattened as checkpoints store it."""
    opt = torch.optim.AdamW(
        params, lr=group["lr"], betas=tuple(group["betas"]), eps=group["eps"], weight_decay=group["weight_decay"]
    )
    for p, s in zip(params, states):
        if s is not None:
            opt.state[p] = {k: v.clone() for k, v in s.items()}
    return ckpt.flatten_optimizer(opt, prefix)


def import_rae_stage1(
    src: str | Path,
    out: str | Path,
    *,
    backbone: str,
    dino: str | Path,
    input_size: int = 224,
    num_heads: int | None = None,
    recipe: str = "S_8",
    key_depths=(2, 5, 8, 11),
    ks: int = 9,
    norm_type: str = "bn",
) -> dict:
    """Write RAE's stage-1 checkpoint as a drorae phase-1 run directory that ``drorae train --resume`` continues.

    Returns a report: the step and epoch, what was carried, and what could not be (data order, RNG states).
    """
    src, out = Path(src), Path(out)
    state = read_rae_stage1_checkpoint(src)
    bb = load_backbone(backbone, input_size=input_size)
    decoder_sd = _decoder_part(state["model"], f"{src} [model]")
    dcfg = infer_decoder_config(decoder_sd, latent_dim=bb.hidden_size, num_patches=bb.num_tokens, num_heads=num_heads)
    dcfg.learned_pos_embed = True  # RAE's trainer trains decoder_pos_embed
    model = DRoRAE(bb, RAEDecoder(dcfg), fusion=None)
    load_strict(model.decoder, convert_rae_decoder_state_dict(decoder_sd, "rae", keep_pos_embed=True), source=src)
    set_trainable(model, get_phase("1"))
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ema = convert_rae_decoder_state_dict(_decoder_part(state["ema"], f"{src} [ema]"), "rae", keep_pos_embed=True)
    rae_names = list(decoder_sd)  # GeneralDecoder has no buffers: its state-dict order is its parameters' order
    moments, group = _remap_adam(state["optimizer"], rae_names, trained, str(src))
    tensors = {f"model.{n}": p.detach() for n, p in trained}
    tensors.update({f"ema.{n}": ema[n[len("decoder.") :]].float() for n, _ in trained})
    opt_tensors, opt_meta = _optimizer_tensors(
        [p for _, p in trained], [moments.get(n) for n, _ in trained], group, "opt"
    )
    tensors.update(opt_tensors)

    disc = _discriminator(state, dino, recipe, key_depths, ks, norm_type, str(src))
    disc_params = [p for p in disc.parameters() if p.requires_grad]
    d_opt = state["disc_optimizer"]
    d_states = d_opt.get("state", {})
    if len(d_opt["param_groups"][0]["params"]) != len(disc_params):
        raise CheckpointKeyError(
            f"{src}: disc_optimizer covers {len(d_opt['param_groups'][0]['params'])} parameters; the discriminator "
            f"heads have {len(disc_params)}"
        )
    for i, p in enumerate(disc_params):
        if i in d_states and d_states[i]["exp_avg"].shape != p.shape:
            raise CheckpointKeyError(f"{src}: disc_optimizer state {i} has shape {tuple(d_states[i]['exp_avg'].shape)}")
    d_tensors, d_meta = _optimizer_tensors(
        disc_params, [d_states.get(i) for i in range(len(disc_params))], d_opt["param_groups"][0], "disc_opt"
    )
    tensors.update(d_tensors)
    frozen = {n for n, p in disc.named_parameters() if not p.requires_grad}
    tensors.update({f"disc.{k}": v for k, v in disc.state_dict().items() if k not in frozen})

    step, epoch = int(state["step"]), int(state["epoch"])
    report = {
        "source": str(src),
        "step": step,
        "epoch": epoch,
        "carried": [
            "decoder (decoder_pos_embed kept as a trained table)",
            "EMA decoder",
            "decoder AdamW moments",
            "discriminator heads and spectral-norm vectors",
            "discriminator AdamW moments",
            "both schedules (drorae computes them from the step; set the config to RAE's)",
        ],
        "not_carried": [
            f"encoder weights ({sum(not k.startswith('decoder.') for k in state['model'])} tensors): the frozen "
            "backbone comes from the config",
            "data order (RAE's DistributedSampler): drorae starts its own order at this step",
            "RNG states (RAE saves none): latent noise and DiffAug draws differ from RAE's continuation",
        ],
    }
    run_state = {
        "name": get_phase("1").label,
        "step": step,
        "imported": report,
        "optimizers": {"opt": opt_meta, "disc_opt": d_meta},
        "phase": "1",
    }
    ckpt.write_checkpoint(out / "checkpoints", step, tensors, run_state)
    disc.save_pretrained(out / DISCRIMINATOR_DIR)
    (out / "rae_import.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
