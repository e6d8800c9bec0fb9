"""What every model config shares: strict dict round trips and presets that never win silently.

Each model part has ONE typed config (``BackboneConfig``, ``FusionConfig``, ``DecoderConfig``,
``DRoRAEConfig``): the module's constructor takes it, ``save_pretrained`` writes it as JSON and
the training YAML's ``model:`` section is it. A preset (``preset: ViT-XL``) fills the fields a
config leaves unset (``None``); a field that is set and disagrees with its preset is an error
naming both, so ``preset: ViT-XL`` with ``hidden_size: 512`` never trains a ViT-XL quietly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or contradicts another."""


def apply_preset(config: Any, section: str, presets: Mapping[str, Mapping[str, Any]]) -> None:
    """Fill ``config``'s unset fields from ``presets[config.preset]``; reject contradictions.

    ``section`` names the config in messages (e.g. ``"decoder"``: ``decoder.hidden_size``).
    """
    name = config.preset
    if name is None:
        return
    if name not in presets:
        raise ConfigError(f"unknown {section}.preset {name!r}; available: {sorted(presets)}")
    for key, value in presets[name].items():
        current = getattr(config, key)
        if current is None:
            setattr(config, key, value)
        elif current != value:
            raise ConfigError(
                f"{section}.preset={name!r} sets {section}.{key}={value!r}, but {section}.{key}={current!r} was given; "
                f"remove one of them (or set {section}.preset=null to use explicit sizes)"
            )


def require(config: Any, section: str, keys: tuple[str, ...], hint: str) -> None:
    """Raise naming every field of ``keys`` that is still unset."""
    missing = [f"{section}.{k}" for k in keys if getattr(config, k) is None]
    if missing:
        raise ConfigError(f"{', '.join(missing)} not set: {hint}")


def config_from_dict(cls: type[T], data: Mapping[str, Any], section: str) -> T:
    """``cls(**data)`` that names unknown keys instead of raising a bare TypeError.

    Keys starting with ``_`` (``_class_name``, ``_drorae_version``) are metadata and ignored.
    """
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {section} config keys {unknown}; known: {sorted(known)}")
    return cls(**data)
