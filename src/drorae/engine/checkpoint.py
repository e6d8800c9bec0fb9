"""Training checkpoints: safetensors for tensors, JSON for everything else, written atomically.

Layout of ``<run>/checkpoints/step_XXXXXXXX/``::

    tensors.safetensors   model / EMA / optimizer / discriminator / per-rank RNG tensors, name-spaced
    state.json            step, sampler position, scheduler, optimizer hyper-parameters,
                          Python/NumPy RNG states, skipped-file accounting, config

A checkpoint directory is complete before it becomes visible: it is written under a temporary
name and renamed, then ``latest`` (a one-line text file) is replaced atomically. A run killed at
any moment leaves ``latest`` pointing at a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

from ..serialization import load_safetensors

TENSORS = "tensors.safetensors"
STATE = "state.json"
LATEST = "latest"


def flatten_optimizer(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, Tensor], dict]:
    """Optimizer state -> (tensors keyed '{prefix}.{param_index}.{name}', JSON-able rest)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if isinstance(value, Tensor):
                tensors[f"{prefix}.{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars, "num_states": len(sd["state"])}


def unflatten_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict, prefix: str) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            idx, name = key[len(prefix) + 1 :].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    if len(state) != meta["num_states"]:
        raise ValueError(
            f"optimizer {prefix}: checkpoint holds {len(state)} parameter states, expected {meta['num_states']}"
        )
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def capture_rng() -> dict:
    """This process's RNG states (torch CPU, the current CUDA device, Python, NumPy), picklable."""
    py = random.getstate()
    np_state = np.random.get_state()
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def rng_to_checkpoint(states: list[dict]) -> tuple[dict[str, Tensor], list[dict]]:
    """Every rank's :func:`capture_rng` (in rank order) -> tensors ``rng.{rank}.*`` and JSON-able rest."""
    tensors: dict[str, Tensor] = {}
    meta = []
    for rank, state in enumerate(states):
        tensors[f"rng.{rank}.torch"] = state["torch"]
        if state["cuda"] is not None:
            tensors[f"rng.{rank}.cuda"] = state["cuda"]
        meta.append({"python": state["python"], "numpy": state["numpy"]})
    return tensors, meta


def restore_rng(tensors: dict[str, Tensor], meta: list[dict], rank: int) -> None:
    """Restore rank ``rank``'s own RNG states from a checkpoint written by :func:`rng_to_checkpoint`."""
    if rank >= len(meta):
        raise ValueError(f"the checkpoint holds RNG states of {len(meta)} ranks; this is rank {rank}")
    torch.set_rng_state(tensors[f"rng.{rank}.torch"])
    if f"rng.{rank}.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[f"rng.{rank}.cuda"])
    v, internal, gauss = meta[rank]["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta[rank]["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def write_checkpoint(root: Path, step: int, tensors: dict[str, Tensor], state: dict, keep: int = 2) -> Path:
    """Atomically write ``root/step_{step}``, point ``root/latest`` at it, prune old ones."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final, tmp = root / name, root / f".tmp-{name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / TENSORS))
    (tmp / STATE).write_text(json.dumps(state))
    for f in (tmp / TENSORS, tmp / STATE):
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = root / f".{LATEST}.tmp"
    latest_tmp.write_text(name + "\n")
    os.replace(latest_tmp, root / LATEST)
    if keep > 0:
        for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / STATE).is_file() and (path / TENSORS).is_file() else None


def read_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict]:
    return load_safetensors(path / TENSORS), json.loads((path / STATE).read_text())
