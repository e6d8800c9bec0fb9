"""Training-run configuration shared by every trainer: YAML files, ``_base_`` inheritance, overrides.

A YAML file may start with ``_base_: other.yaml`` (relative to itself) to inherit and override
another file. The merged result is validated against a dataclass schema by OmegaConf, so an
unknown key or a wrong type fails at start-up with the key's full name; ``key=value`` overrides
from the command line are merged last.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..configuration import ConfigError

T = TypeVar("T")


@dataclass
class DataConfig:
    image_size: int = 256
    random_flip: bool = True
    num_workers: int = 4


@dataclass
class OptimConfig:
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | constant-linear (constant, then linear over the last decay_steps)
    decay_steps: int = 0  # constant-linear only
    min_lr_ratio: float = 0.0  # the decay ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # 0 disables
    ema_decay: float = 0.9978
    ema_warmup: bool = True  # decay min(ema_decay, (1+t)/(10+t)); false: ema_decay from step 0 (RAE)


@dataclass
class LoopConfig:
    batch_size: int = 32  # per rank, per micro-step
    grad_accum: int = 1
    max_steps: int = 1000  # optimizer steps of this run
    seed: int = 0
    precision: str = "auto"  # auto (bf16 on capable GPUs, fp32 otherwise) | bf16 | fp32
    compile: bool = False
    log_every: int = 50
    image_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    device: str = "auto"  # auto | cpu | cuda
    record_indices: bool = False  # write the dataset indices each rank consumed (checks data sharding)


def check(cond: bool, key: str, msg: str) -> None:
    """Raise a :class:`ConfigError` naming ``key`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"invalid config key {key!r}: {msg}")


def validate_run(optim: OptimConfig, loop: LoopConfig, optim_key: str = "optim", loop_key: str = "train") -> None:
    """Checks of the optimiser and loop sections that types alone do not express."""
    check(
        loop.precision in ("auto", "bf16", "fp32"),
        f"{loop_key}.precision",
        f"{loop.precision!r} is not auto, bf16 or fp32",
    )
    check(loop.device in ("auto", "cpu", "cuda"), f"{loop_key}.device", f"{loop.device!r} is not auto, cpu or cuda")
    for name in ("batch_size", "grad_accum", "max_steps"):
        check(getattr(loop, name) >= 1, f"{loop_key}.{name}", "must be >= 1")
    check(len(optim.betas) == 2, f"{optim_key}.betas", "must be two numbers")
    check(
        optim.schedule in ("cosine", "constant-linear"),
        f"{optim_key}.schedule",
        f"{optim.schedule!r} is not cosine or constant-linear",
    )


def _load_yaml_chain(path: Path, seen: tuple = ()) -> Any:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config {path} inherits from itself through _base_")
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        node = OmegaConf.load(path)
    except Exception as err:  # yaml syntax errors
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    base = node.pop("_base_", None) if OmegaConf.is_dict(node) else None
    if base is None:
        return node
    return OmegaConf.merge(_load_yaml_chain(path.parent / str(base), seen + (path,)), node)


def load_yaml_config(schema: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """``schema``'s defaults + YAML file (+ its ``_base_`` chain) + ``key=value`` overrides, typed."""
    try:
        layers = [OmegaConf.structured(schema)]
        if path is not None:
            layers.append(_load_yaml_chain(Path(path)))
        for item in overrides or ():
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like key=value (e.g. train.max_steps=100)")
        if overrides:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(OmegaConf.merge(*layers))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        msg = str(err).splitlines()[0]
        raise ConfigError(f"invalid config key {key!r}: {msg}" if key else f"invalid config: {msg}") from None


def to_yaml(config: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def to_dict(config: Any) -> dict:
    return asdict(config)
