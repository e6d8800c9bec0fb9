"""Training: one engine for every phase (configs, checkpoints, EMA, distributed)."""

from .config import PHASES, ConfigError, TrainConfig, load_config
from .engine import NonFiniteLossError, Trainer, TrainResult, build_model, set_trainable

__all__ = ["PHASES", "ConfigError", "TrainConfig", "load_config", "NonFiniteLossError", "Trainer", "TrainResult",
           "build_model", "set_trainable"]
