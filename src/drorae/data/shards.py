"""Tar shards in the WebDataset layout, read with random access so they behave exactly like an image folder.

A shard set is what ``drorae data shard`` writes from an image folder: ``shard-000000.tar``, ``shard-000001.tar``,
... whose members are ``<key>.<ext>`` (the image file's bytes, unchanged), ``<key>.cls`` (the class index as
text, for class sub-folders), ``<key>.json`` (``{"path": the file's path relative to the folder}``) and, when the
image has a caption beside it (``name.txt``), ``<key>.txt`` = the caption: img2dataset's layout, in which CC12M and
LAION are distributed. Shards of drorae <= 0.4 hold the path in ``<key>.txt`` and have no ``.json``; they still
read as image shards, and a caption reader refuses them with that reason. ``classes.json``
(class names, sorted) sits beside the shards. Keys are the images' positions in the folder's sorted listing, so sample
``i`` of the shards is image ``i`` of the folder: same batches under the same seed, the same skip-and-count of
unreadable files, and the same exact resume (the sampler's epoch and position are dataset indices).

Wherever a command takes an image folder (``train``, ``eval``, ``stats``, ``cache-latents``, ``train-dit``), it
also takes shards: a ``.tar`` file, a folder holding only ``.tar`` shards, or a brace pattern
``/data/train/shard-{000000..000127}.tar``. Under ``torchrun`` every rank indexes the shards (member headers
only, no image bytes) and reads the samples its sampler assigns; local or mounted paths only: streaming
``pipe:`` URLs have no random access and are refused with that reason.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .image_files import IMAGE_EXTENSIONS, list_image_files

CLASSES_NAME = "classes.json"
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


@dataclass(frozen=True)
class TarMember:
    """One image inside a tar shard: where its bytes are. Picklable, so DataLoader workers can read it."""

    shard: str
    name: str
    offset: int
    size: int

    def read(self) -> bytes:
        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)

    def open(self) -> io.BytesIO:
        return io.BytesIO(self.read())

    def __str__(self) -> str:  # how skip reports name it
        return f"{self.shard}:{self.name}"


def is_shard_spec(root: str | os.PathLike) -> bool:
    """A ``.tar`` path, a brace pattern of them, a ``pipe:`` URL, or a folder whose only files are ``.tar`` shards."""
    text = str(root)
    if text.startswith("pipe:") or text.endswith(".tar"):
        return True
    path = Path(text)
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
        tars = [p for p in files if p.suffix == ".tar"]
        return bool(tars) and all(p.suffix == ".tar" or p.name == CLASSES_NAME for p in files)
    return False


def expand_shards(spec: str | os.PathLike) -> list[Path]:
    """The shard files of a spec, in order; a missing one is an error naming it."""
    text = str(spec)
    if text.startswith("pipe:"):
        raise ValueError(
            f"{text}: streaming pipe: URLs have no random access, which drorae's resumable samplers need; "
            "copy or mount the shards locally and pass their paths (a folder, a .tar or a {000..009} pattern)"
        )
    path = Path(text)
    if path.is_dir():
        shards = sorted(p for p in path.iterdir() if p.suffix == ".tar")
    else:
        match = _BRACE.search(text)
        if match:
            lo, hi = match.group(1), match.group(2)
            width = len(lo)
            shards = [
                Path(text[: match.start()] + str(i).zfill(width) + text[match.end() :])
                for i in range(int(lo), int(hi) + 1)
            ]
        else:
            shards = [path]
    missing = [str(p) for p in shards if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"shard files not found: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if not shards:
        raise ValueError(f"no .tar shards under {text}")
    return shards


def _key_and_ext(name: str) -> tuple[str, str]:
    base = name.rsplit("/", 1)[-1]
    key, _, ext = base.partition(".")  # WebDataset: the key ends at the first dot of the file name
    return name[: len(name) - len(base)] + key, ext.lower()


def index_shard_keys(spec: str | os.PathLike) -> tuple[list[Path], list[tuple[str, dict[str, TarMember]]]]:
    """``(shard files, [(key, {extension: member})])`` of every sample with an image, in stored order."""
    shards = expand_shards(spec)
    samples: list[tuple[str, dict[str, TarMember]]] = []
    for shard in shards:
        keys: dict[str, dict[str, TarMember]] = {}
        try:
            with tarfile.open(shard, "r:") as tar:
                for info in tar:
                    if info.isfile():
                        key, ext = _key_and_ext(info.name)
                        keys.setdefault(key, {})[ext] = TarMember(str(shard), info.name, info.offset_data, info.size)
        except (tarfile.TarError, OSError) as err:
            raise ValueError(f"shard {shard} is not a readable tar file: {err}") from None
        for key, members in keys.items():  # tar order = the writer's order
            if any("." + ext in IMAGE_EXTENSIONS for ext in members):
                samples.append((key, members))
    if not samples:
        raise ValueError(f"no images ({', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)}) in the shards of {spec}")
    return shards, samples


def image_member(members: dict[str, TarMember]) -> TarMember:
    return next(m for ext, m in members.items() if "." + ext in IMAGE_EXTENSIONS)


def read_small_members(members: list[TarMember]) -> list[bytes]:
    """The bytes of many small members (labels, captions, metadata), opening each shard once."""
    handles: dict[str, object] = {}
    try:
        out = []
        for m in members:
            f = handles.get(m.shard) or handles.setdefault(m.shard, open(m.shard, "rb"))  # noqa: SIM115
            f.seek(m.offset)
            out.append(f.read(m.size))
        return out
    finally:
        for f in handles.values():
            f.close()


def index_shards(spec: str | os.PathLike) -> tuple[list[TarMember], list[int | None], list[str] | None]:
    """``(image members, labels or None per image, class names or None)`` of a shard set, in stored order."""
    shards, samples = index_shard_keys(spec)
    images = [image_member(members) for _, members in samples]
    cls = [members["cls"] for _, members in samples if "cls" in members]
    texts = iter(read_small_members(cls))
    labels: list[int | None] = []
    for _, members in samples:
        label = None
        if "cls" in members:
            try:
                label = int(next(texts).decode().strip())
            except (UnicodeDecodeError, ValueError) as err:
                raise ValueError(f"{members['cls']}: the class label is not an integer ({err})") from None
        labels.append(label)
    names_file = shards[0].parent / CLASSES_NAME
    names = json.loads(names_file.read_text()) if names_file.is_file() else None
    return images, labels, names


def write_shards(src: str | os.PathLike, out: str | os.PathLike, shard_size: int = 1000) -> dict:
    """``drorae data shard``: the images of a folder (in its sorted order) as tar shards of ``shard_size`` images,
    with class labels when the folder has class sub-folders and the captions of the images that have one
    (``name.txt`` beside ``name.jpg``). The bytes are copied, not re-encoded."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    src, out = Path(src), Path(out)
    paths = list_image_files(src)
    relative = [p.relative_to(src) for p in paths]
    with_classes = all(len(r.parts) > 1 for r in relative)
    classes = sorted({r.parts[0] for r in relative}) if with_classes else None
    index = {name: i for i, name in enumerate(classes or [])}
    out.mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(len(paths))))
    count = captions = 0
    for start in range(0, len(paths), shard_size):
        path = out / f"shard-{start // shard_size:06d}.tar"
        tmp = path.with_name(path.name + ".tmp")
        with tarfile.open(tmp, "w") as tar:
            for i in range(start, min(start + shard_size, len(paths))):
                key = str(i).zfill(width)
                ext = paths[i].suffix.lower()
                _add(tar, f"{key}{ext}", paths[i].read_bytes())
                _add(tar, f"{key}.json", json.dumps({"path": relative[i].as_posix()}).encode())
                caption = paths[i].with_suffix(".txt")
                if caption.is_file():
                    _add(tar, f"{key}.txt", caption.read_bytes())
                    captions += 1
                if classes is not None:
                    _add(tar, f"{key}.cls", str(index[relative[i].parts[0]]).encode())
        tmp.replace(path)
        count += 1
    if classes is not None:
        (out / CLASSES_NAME).write_text(json.dumps(classes, indent=2) + "\n")
    return {"images": len(paths), "shards": count, "classes": len(classes) if classes else 0, "captions": captions}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible shards
    tar.addfile(info, io.BytesIO(data))
