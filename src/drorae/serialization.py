"""Reading and writing weights: safetensors, strict loading, and the checkpoint key maps.

* :func:`load_safetensors` / :func:`save_safetensors`: a corrupt file is a clear error; writes are atomic.
* :func:`load_strict`: every key must match in name and shape, or the error names each mismatch.
* :func:`read_state_dict`: a flat tensor state dict from ``.safetensors`` or a ``torch.save`` file,
  the latter read with ``weights_only=True`` (never unpickling arbitrary objects).
* :func:`load_torch_file`, :func:`load_npz`, :func:`read_json`: outside files read safely (tensors and plain
  containers only, no pickle), a foreign or corrupt file being one :class:`ForeignFileError` naming it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn


class CheckpointKeyError(KeyError):
    """A checkpoint's keys do not map one-to-one onto the model (never load random weights quietly)."""

    def __str__(self) -> str:  # KeyError repr-quotes its message; keep it readable
        return str(self.args[0])


class ForeignFileError(ValueError):
    """An outside file (checkpoint, npz, JSON, image) is corrupt, truncated or not of the expected kind."""


def load_safetensors(path: str | Path) -> dict[str, Tensor]:
    """Read a safetensors file, turning a corrupt or truncated file into a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ForeignFileError(
            f"weights file {path} is corrupt or truncated, or not safetensors ({path.stat().st_size} bytes): {err}"
        ) from None


def read_json(path: str | Path, what: str = "JSON file") -> dict:
    """A JSON object from ``path``; a missing, unreadable or non-JSON file is one clear error naming it."""
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ForeignFileError(f"{path} is not {what} (not valid UTF-8 JSON: {err})") from None
    if not isinstance(data, dict):
        raise ForeignFileError(f"{path} is not {what}: it holds a JSON {type(data).__name__}, not an object")
    return data


def model_dir(directory: str | Path, files: tuple[str, ...] | None = None) -> Path:
    """A ``save_pretrained`` directory as given, or a training run's (``<run>/model``, what every trainer exports),
    or a Hub id (``org/name[@revision][:subfolder]``, :mod:`drorae.hub`) resolved to its cached snapshot holding
    ``files`` (default: every file a drorae loader reads)."""
    from .hub import MODEL_FILES, resolve_model_path

    directory = resolve_model_path(directory, files or MODEL_FILES)
    if not (directory / "config.json").is_file() and (directory / "model" / "config.json").is_file():
        return directory / "model"
    return directory


def save_safetensors(tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (moved to CPU, made contiguous) atomically: a crash never leaves a partial file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
        str(tmp),
        metadata={"format": "pt", **(metadata or {})},
    )
    tmp.replace(path)


def load_strict(
    model: nn.Module, state: dict[str, Tensor], ignore_prefix: str = "", source: object = "checkpoint"
) -> None:
    """Load ``state`` requiring every key to match in name and shape; name every mismatch."""
    expected = {k: v for k, v in model.state_dict().items() if not (ignore_prefix and k.startswith(ignore_prefix))}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if wrong:
            parts.append(
                "shape mismatches "
                + ", ".join(
                    f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in wrong[:8]
                )
            )
        raise CheckpointKeyError(f"{source} does not match the model: " + "; ".join(parts))
    model.load_state_dict(state, strict=False)


def load_torch_file(path: str | Path, what: str = "a torch.save checkpoint") -> object:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never arbitrary objects.

    A garbage, truncated or object-holding file is one :class:`ForeignFileError` naming the file and what was
    expected; torch's own message is not repeated (it advises ``weights_only=False``, i.e. running the file's code).
    """
    import pickle
    import warnings
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    size = path.stat().st_size
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses anyway
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:
            raise ForeignFileError(
                f"{path} is not {what}: it holds a {found.group(1)} object, and drorae reads only tensors and plain "
                "containers from checkpoints (it never runs code stored in a file)"
            ) from None
        raise ForeignFileError(f"{path} is not {what}: not a torch.save file ({size} bytes)") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, UnicodeDecodeError):
        raise ForeignFileError(f"{path} is not {what}: corrupt or truncated ({size} bytes)") from None


def npz_files(path: str | Path, what: str = "an .npz file") -> list[str]:
    """The member names of an ``.npz`` without reading its arrays (an early check of a file read later)."""
    return _read_npz(path, what, lambda data: list(data.files))


def npz_array_header(path: str | Path, name: str, what: str = "an .npz file") -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` of member ``name`` of an ``.npz``, read from its header alone (no data, no pickle)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError):
        raise ForeignFileError(f"{path} is not {what}: its {name} is missing or unreadable") from None
    return tuple(shape), dtype


def load_npz(
    path: str | Path, what: str = "an .npz file", keys: tuple[str, ...] | None = None
) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (only ``keys`` when given, those present), read without pickle."""
    return _read_npz(path, what, lambda data: {k: data[k] for k in data.files if keys is None or k in keys})


def _read_npz(path: str | Path, what: str, read):
    """``read(NpzFile)`` with ``allow_pickle=False``; a missing, foreign or corrupt file is one clear error."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    size = path.stat().st_size
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ForeignFileError(f"{path} is not {what}: it is a single .npy array, not an .npz archive")
            return read(data)
    except ForeignFileError:
        raise
    except ValueError:  # pickled data (numpy would suggest allow_pickle=True: drorae never does)
        raise ForeignFileError(f"{path} is not {what}: it is not an .npz of plain arrays ({size} bytes)") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError):
        raise ForeignFileError(f"{path} is not {what}: corrupt, truncated or not an .npz file ({size} bytes)") from None


def read_state_dict(path: Path, key: str | None = None) -> dict[str, Tensor]:
    """A flat tensor state dict from a safetensors or ``torch.save`` file (``key``: a nested entry)."""
    if path.suffix == ".safetensors":
        state = load_safetensors(path)
    else:
        state = load_torch_file(path, "a checkpoint of tensors")
        if not isinstance(state, dict):
            raise ForeignFileError(f"{path} holds a {type(state).__name__}, not a state dict")
    if key is not None:
        if key not in state:
            raise KeyError(f"checkpoint {path} has no entry {key!r}; top-level keys: {sorted(state)[:10]}")
        state = state[key]
    non_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if non_tensors:
        raise ValueError(
            f"checkpoint {path} is not a flat state dict (entries {non_tensors[:5]} are not tensors); "
            f"pass key= to pick the nested state dict"
        )
    return state
