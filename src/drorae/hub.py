"""Hugging Face Hub ids wherever a drorae model directory is read.

``push_to_hub`` and the model card are :mod:`drorae.card`'s.

An id is ``org/name``, optionally ``org/name@revision`` (a branch, tag or commit) and ``org/name:sub/folder``
(a model inside a repository, e.g. ``org/name@v1:tokenizer``). :func:`resolve_model_path` turns it into a local
directory with ``huggingface_hub.snapshot_download`` (only the files the loader reads), so every loader then reads
it exactly as a local directory. Rules:

* a local path always wins: an existing file or directory, and anything starting with ``/``, ``.`` or ``~``, is a
  path, never an id;
* a cached snapshot is used as it is (nothing is downloaded); otherwise it is fetched, unless ``HF_HUB_OFFLINE`` is
  set, where a missing id is one :class:`HubModelNotFoundError` naming what was looked for and how to fetch it;
* the cache is ``HF_HUB_CACHE`` (else ``HF_HOME/hub``, else huggingface_hub's default), read when called, and the
  token is huggingface_hub's own (``HF_TOKEN``, ``hf auth login``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: what a drorae model directory holds that its loaders read (tokenizer: backbone/; MoT: text_tokenizer/)
MODEL_FILES = ("config.json", "model.safetensors", "backbone/*", "text_tokenizer/*")
CARD_NAME = "README.md"

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_ID = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})(?:@(?P<revision>[^:@\s]+))?(?::(?P<subfolder>[^:@\s]+))?$")


class HubModelNotFoundError(FileNotFoundError):
    """A Hub id that is neither a local path nor cached (offline) nor on the Hub."""


@dataclass(frozen=True)
class HubId:
    repo_id: str
    revision: str | None = None
    subfolder: str | None = None

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        sub = f":{self.subfolder}" if self.subfolder else ""
        return f"{self.repo_id}{rev}{sub}"


def parse_hub_id(name: str | os.PathLike) -> HubId | None:
    """The :class:`HubId` that ``name`` spells, or None when it is (or can only be) a local path."""
    text = os.fspath(name)
    if text.startswith(("/", ".", "~")) or "\\" in text or Path(text).exists():
        return None
    found = _ID.match(text)
    if found is None:
        return None
    sub = found["subfolder"]
    if sub is not None:
        sub = sub.strip("/")
        if not sub or ".." in sub.split("/"):
            raise ValueError(f"{text!r}: the subfolder after ':' must be a relative folder inside the repository")
    repo = found["repo"]
    if repo.endswith((".", "-")) or ".." in repo or "--" in repo:
        return None
    return HubId(repo, found["revision"], sub)


def is_hub_id(name: str | os.PathLike | None) -> bool:
    """True when ``name`` is read from the Hub (not a local path)."""
    return name is not None and parse_hub_id(name) is not None


def hub_cache_dir() -> str:
    """The Hub cache as the environment names it now (``HF_HUB_CACHE``, ``HF_HOME/hub``), else the library's."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return flag in {"1", "true", "yes", "on"} or bool(constants.HF_HUB_OFFLINE)


def fetch_command(hub: HubId, files: Sequence[str] = ()) -> str:
    """The ``hf download`` command line that caches ``hub`` (its ``files``, or the whole repository)."""
    parts = ["hf", "download", hub.repo_id, *files]
    if hub.revision:
        parts += ["--revision", hub.revision]
    return " ".join(parts)


def snapshot(
    hub: HubId,
    patterns: Sequence[str],
    what: str = "a drorae model",
    required: Sequence[str] | None = None,
    fetch_files: bool = False,
) -> Path:
    """The local snapshot of ``hub`` holding ``patterns`` (relative to the repository root): the cached one when
    it holds the ``required`` files (default: the patterns without wildcards), else downloaded (never when
    offline). Errors name the id, the cache and the fetch command (of the whole repository, or with
    ``fetch_files`` of the exact ``patterns``, e.g. two files of a large collection)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache = hub_cache_dir()
    kwargs = dict(repo_id=hub.repo_id, revision=hub.revision, allow_patterns=list(patterns), cache_dir=cache)
    at = f" at revision {hub.revision!r}" if hub.revision else ""
    needed = [p for p in patterns if not set("*?[") & set(p)] if required is None else list(required)
    missing = needed
    try:
        cached = Path(snapshot_download(**kwargs, local_files_only=True))
        missing = [p for p in needed if not (cached / p).is_file()]
        if not missing:
            return cached
    except OSError:  # not cached (LocalEntryNotFoundError), or an incomplete snapshot
        cached = None
    fetch = fetch_command(hub, list(patterns) if fetch_files else ())
    if hub_offline():
        if cached is not None:
            raise HubModelNotFoundError(
                f"{hub}: the cached snapshot of {hub.repo_id!r}{at} ({cached}) holds no {', '.join(missing)}, and "
                f"HF_HUB_OFFLINE is set, so nothing is downloaded: fetch it with `{fetch}` where the Hub is reachable"
            )
        raise HubModelNotFoundError(
            f"{hub} is not a local path, and {what} {hub.repo_id!r}{at} is not in the Hugging Face cache {cache} "
            f"(HF_HUB_OFFLINE is set, so nothing is downloaded): fetch it with `{fetch}` where the "
            "Hub is reachable (then copy the cache), or give a local directory"
        )
    try:
        return Path(snapshot_download(**kwargs))
    except RevisionNotFoundError:
        raise HubModelNotFoundError(
            f"{hub}: the Hub repository {hub.repo_id!r} has no revision {hub.revision!r}"
        ) from None
    except (RepositoryNotFoundError, GatedRepoError):
        raise HubModelNotFoundError(
            f"{hub} is not a local path, and the Hub has no {what} {hub.repo_id!r} that this token can read "
            "(a private or gated repository needs `hf auth login` or HF_TOKEN)"
        ) from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise HubModelNotFoundError(
            f"{hub} is not a local path, is not in the Hugging Face cache {cache}, and could not be downloaded "
            f"({type(err).__name__}): fetch it with `{fetch}`, or give a local directory"
        ) from None


def resolve_model_path(
    name: str | os.PathLike,
    files: Sequence[str] = MODEL_FILES,
    what: str = "a drorae model",
    required: Sequence[str] = ("config.json", "model.safetensors"),
) -> Path:
    """A local directory for ``name``: the path itself, or the snapshot of a Hub id with ``files`` (patterns
    relative to the model directory; ``:subfolder`` is prefixed) in it. A cached snapshot without the ``required``
    files is fetched again. What the loader then finds missing, it reports as for a local directory."""
    hub = parse_hub_id(name)
    if hub is None:
        return Path(name)
    prefix = f"{hub.subfolder}/" if hub.subfolder else ""
    root = snapshot(hub, [prefix + f for f in files], what, [prefix + f for f in required])
    directory = root / hub.subfolder if hub.subfolder else root
    if not directory.is_dir():
        raise HubModelNotFoundError(f"{hub}: the repository {hub.repo_id!r} has no folder {hub.subfolder!r}")
    return directory


def resolve_repo_file(hub: HubId, path: str, what: str) -> Path:
    """One file of a Hub repository (``hub.subfolder``, if any, is the folder ``path`` is relative to)."""
    full = f"{hub.subfolder}/{path}" if hub.subfolder else path
    local = snapshot(hub, [full], what, fetch_files=True) / full
    if not local.is_file():
        raise HubModelNotFoundError(f"{hub} holds no {full} ({what}); fetch it with `{fetch_command(hub, [full])}`")
    return local
