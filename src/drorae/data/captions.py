"""Image-caption pairs for text-to-image training: a folder (``name.jpg`` + ``name.txt``) or tar shards in
img2dataset's WebDataset layout (``key.jpg``, ``key.txt`` = the caption, ``key.json`` = metadata), which is how CC12M
and LAION are distributed. Sample ``i`` of ``drorae data shard``'s shards of a folder is pair ``i`` of the folder.

Captions are tokenized by the LLM's own tokenizer (a local ``transformers`` directory) and framed as Bagel frames
them: ``[<|im_start|>] + tokens + [<|im_end|>]``, truncated to ``max_tokens`` in all (the end token kept). An image
that cannot be decoded or a caption that is not UTF-8 is a skipped sample (counted and reported by the trainer); an
image without a caption is left out when the set is indexed, and counted in :attr:`CaptionPairs.unpaired`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .adm import adm_item
from .folders import EpochSeededDataset, sample_generator
from .image_files import list_image_files
from .shards import TarMember, image_member, index_shard_keys, is_shard_spec, read_small_members

SPECIAL_TOKENS = {  # Qwen2.5's tokens, as Bagel frames a caption and an image
    "bos": "<|im_start|>",
    "eos": "<|im_end|>",
    "vision_start": "<|vision_start|>",
    "vision_end": "<|vision_end|>",
    "pad": "<|endoftext|>",
}


def special_token_ids(tokenizer) -> dict[str, int]:
    """The ids of Bagel's framing tokens in the LLM's tokenizer; a missing one is named."""
    vocab = tokenizer.get_vocab()
    missing = [tok for tok in SPECIAL_TOKENS.values() if tok not in vocab]
    if missing:
        raise ValueError(
            f"the LLM's tokenizer has no {missing}: the MoT frames captions and images with Qwen2.5's tokens "
            f"{list(SPECIAL_TOKENS.values())}"
        )
    return {name: int(vocab[tok]) for name, tok in SPECIAL_TOKENS.items()}


class CaptionTokenizer:
    """The LLM's tokenizer and Bagel's framing tokens; picklable (DataLoader workers tokenize)."""

    def __init__(self, tokenizer_dir: str | Path, max_tokens: int = 128):
        from transformers import AutoTokenizer

        path = Path(tokenizer_dir)
        if not (path / "tokenizer_config.json").is_file() and not (path / "tokenizer.json").is_file():
            raise FileNotFoundError(
                f"no tokenizer in {path} (tokenizer.json / tokenizer_config.json): give the local directory of the "
                "LLM (e.g. a download of Qwen/Qwen2.5-0.5B)"
            )
        if max_tokens < 3:
            raise ValueError(f"t2i.max_text_tokens must be >= 3 (start, one token, end), got {max_tokens}")
        self.path, self.max_tokens = path, max_tokens
        declared = {}
        if (path / "tokenizer_config.json").is_file():
            declared = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
        if declared.get("tokenizer_class") in ("TokenizersBackend", "PreTrainedTokenizerFast"):
            from transformers import PreTrainedTokenizerFast

            # a plain tokenizers file: AutoTokenizer would rebuild Qwen2's byte-level tokenizer from config.json
            self.tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.ids = special_token_ids(self.tokenizer)

    def encode(self, caption: str) -> list[int]:
        body = self.tokenizer(caption, add_special_tokens=False)["input_ids"][: self.max_tokens - 2]
        return [self.ids["bos"], *body, self.ids["eos"]]

    def batch(self, captions: list[str], device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """``(ids [B, T] right-padded, lengths [B])``; an empty string is the empty context (length 0), as CFG uses."""
        encoded = [self.encode(c) if c else [] for c in captions]
        return pad_captions(encoded, self.ids["pad"], device)

    def save_pretrained(self, directory: str | Path) -> None:
        self.tokenizer.save_pretrained(str(directory))


def pad_captions(encoded: list[list[int]], pad_id: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    width = max(1, max(len(e) for e in encoded))
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, : len(e)] = torch.tensor(e, dtype=torch.long)
    return ids.to(device), torch.tensor([len(e) for e in encoded], dtype=torch.long, device=device)


def _decode_caption(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None


def index_caption_pairs(root: str | os.PathLike) -> tuple[list[Any], list[Any], int]:
    """``(images, captions, unpaired)``: image paths or tar members, the caption's path or member for each, and the
    number of images without a caption (left out)."""
    if is_shard_spec(root):
        _, samples = index_shard_keys(root)
        paired = [(image_member(m), m["txt"], m.get("json")) for _, m in samples if "txt" in m]
        if paired and not any(meta is not None for _, _, meta in paired):
            sample = read_small_members([paired[0][1]])[0].decode("utf-8", "replace").strip()
            if Path(sample).suffix.lower() in {".jpg", ".jpeg", ".png", ".webp", ".bmp"}:
                raise ValueError(
                    f"{root}: these shards were written by drorae <= 0.4, whose key.txt holds the image's path "
                    f"({sample!r}), not a caption; re-run `drorae data shard` on a folder of name.jpg + name.txt pairs"
                )
        return [p[0] for p in paired], [p[1] for p in paired], len(samples) - len(paired)
    images = list_image_files(root)
    paired = [(p, p.with_suffix(".txt")) for p in images if p.with_suffix(".txt").is_file()]
    return [p[0] for p in paired], [p[1] for p in paired], len(images) - len(paired)


class CaptionPairs(EpochSeededDataset):
    """ADM-centre-cropped images in ``[0, 1]`` with their tokenized captions: items ``{"image", "text_ids",
    "index"}``, or ``{"image": None, "skipped": name}`` for an unreadable image or caption."""

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int,
        tokenizer: CaptionTokenizer,
        random_flip: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        self.root, self.image_size, self.tokenizer = root, image_size, tokenizer
        self.random_flip, self.seed = random_flip, seed
        self.images, self.captions, self.unpaired = index_caption_pairs(root)
        if not self.images:
            raise ValueError(f"{root}: no image has a caption (name.txt beside name.jpg, or key.txt in a shard)")

    def __len__(self) -> int:
        return len(self.images)

    def caption(self, index: int) -> str | None:
        src = self.captions[index]
        raw = src.read() if isinstance(src, TarMember) else Path(src).read_bytes()
        return _decode_caption(raw)

    def text_item(self, pair: int, index: int) -> dict[str, Any]:
        """``{"text_ids"}`` of pair ``pair``'s tokenized caption, or the skip of item ``index`` when the caption is
        not UTF-8 (also what a latent cache's rows use: their index may differ from the pair's)."""
        caption = self.caption(pair)
        if caption is None:
            return {"image": None, "index": index, "skipped": f"{self.captions[pair]} (caption is not UTF-8)"}
        return {"text_ids": torch.tensor(self.tokenizer.encode(caption), dtype=torch.long)}

    def __getitem__(self, index: int) -> dict[str, Any]:
        text = self.text_item(index, index)
        if "skipped" in text:
            return text
        item = adm_item(self.images[index], index, self.image_size)
        if item["image"] is None:
            return item
        x = item["image"].float() / 255.0
        if self.random_flip and torch.rand((), generator=sample_generator(self.seed, self.epoch, index)) < 0.5:
            x = x.flip(-1)
        return {"image": x, **text, "index": index}


class CaptionedImages(EpochSeededDataset):
    """The images of a caption set alone, in :class:`CaptionPairs`' order (item ``i`` is pair ``i``'s image), for
    ``drorae cache-latents --captions``: items ``{"image", "label": 0, "index"}``, or a skip as everywhere."""

    def __init__(self, root: str | os.PathLike, image_size: int):
        super().__init__()
        self.root, self.image_size, self.classes = root, image_size, []
        self.images, _, self.unpaired = index_caption_pairs(root)
        if not self.images:
            raise ValueError(f"{root}: no image has a caption (name.txt beside name.jpg, or key.txt in a shard)")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = adm_item(self.images[index], index, self.image_size)
        if item["image"] is None:
            return item
        return {"image": item["image"].float() / 255.0, "label": 0, "index": index}


def collate_captions(batch: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Stack the readable samples (``image`` -> ``images``; ``latent``, ``noise``, ``u``, ``drop`` ...), their captions
    right-padded with ``pad_id`` into ``text_ids`` [B, T] and ``text_lengths`` [B]; the skipped names and
    ``num_samples`` for the skip accounting and the sampler."""
    good = [s for s in batch if "skipped" not in s]  # items hold an "image", or a cached "latent"
    out: dict[str, Any] = {
        "skipped": [str(s["skipped"]) for s in batch if "skipped" in s],
        "num_samples": len(batch),
        "indices": torch.tensor([int(s["index"]) for s in good], dtype=torch.long),
    }
    if good:
        out["text_ids"], out["text_lengths"] = pad_captions([s["text_ids"].tolist() for s in good], pad_id)
    for key in good[0] if good else ():
        if key not in ("index", "text_ids"):
            values = [s[key] for s in good]
            name = "images" if key == "image" else key
            out[name] = torch.stack(values) if isinstance(values[0], Tensor) else torch.tensor(values)
    return out


def read_prompts(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Prompts for ``sample-t2i``: GenEval's metadata jsonl (one object with ``"prompt"`` a line, kept whole) or a
    text file of one prompt a line (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    prompts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                meta = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n} is not JSON ({err})") from None
            if not isinstance(meta, dict) or not isinstance(meta.get("prompt"), str):
                raise ValueError(f"{path}:{n} has no string field 'prompt' (GenEval's metadata format)")
            prompts.append(meta)
        else:
            prompts.append({"prompt": line.strip()})
    if not prompts:
        raise ValueError(f"{path} holds no prompt")
    return prompts
