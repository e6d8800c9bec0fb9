"""Which files are images, and the one deterministic listing of an image folder (shared by folders and shards)."""

from __future__ import annotations

import os
from pathlib import Path

#: File extensions (lower case) that :func:`list_image_files` picks up, compared case-insensitively.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def list_image_files(root: str | os.PathLike) -> list[Path]:
    """All image files under the folder ``root``, recursively, sorted by their POSIX path relative to ``root``
    (the same order on every machine and rank). Hidden files and folders (``.``-names: macOS ``._*`` forks,
    ``.ipynb_checkpoints``) are skipped; symlinked folders are followed.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: ``root`` is not a folder, or holds no image.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder does not exist: {root}")
    if not root.is_dir():
        raise ValueError(f"expected an image folder, got a file: {root}")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
    if not found:
        exts = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        raise ValueError(f"no images ({exts}) found under {root}")
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())
