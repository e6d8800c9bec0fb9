"""Training the tokenizer: its config, its phases and its trainer (on the shared :mod:`drorae.engine`)."""

from ...configuration import ConfigError
from ...engine import NonFiniteLossError, TrainResult
from .config import LossConfig, TrainConfig, load_config
from .phases import PHASES, Phase, get_phase
from .trainer import Trainer, build_model, prepare_for_phase, set_trainable

__all__ = [
    "ConfigError",
    "LossConfig",
    "TrainConfig",
    "load_config",
    "PHASES",
    "Phase",
    "get_phase",
    "NonFiniteLossError",
    "Trainer",
    "TrainResult",
    "build_model",
    "prepare_for_phase",
    "set_trainable",
]
