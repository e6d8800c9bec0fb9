"""The training engine every drorae trainer shares: config loading, devices and DDP, the loop,
checkpoints, EMA, schedule and logging. It knows nothing about tokenizers or diffusion."""

from .config import DataConfig, LoopConfig, OptimConfig, load_yaml_config
from .distributed import Distributed, setup_distributed
from .ema import EMA
from .schedule import warmup_cosine_lr
from .trainer import BaseTrainer, NonFiniteLossError, StepOutput, TrainResult

__all__ = [
    "DataConfig",
    "LoopConfig",
    "OptimConfig",
    "load_yaml_config",
    "Distributed",
    "setup_distributed",
    "EMA",
    "warmup_cosine_lr",
    "BaseTrainer",
    "NonFiniteLossError",
    "StepOutput",
    "TrainResult",
]
