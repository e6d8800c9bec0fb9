"""A tiny random Qwen2 "LLM" with a word-level tokenizer, saved with ``transformers``' own ``save_pretrained``: what
the CPU demo and the tests train on where no real LLM is at hand (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch

from ...data.captions import SPECIAL_TOKENS
from .mot import LLM_PRESETS


def make_tiny_llm(out_dir: str | Path, words: list[str], preset: str = "tiny", seed: int = 0, **shapes) -> Path:
    """``out_dir`` with ``config.json``, ``model.safetensors`` (a random ``Qwen2Model``) and a word-level tokenizer
    over ``words`` plus Bagel's framing tokens and ``[UNK]``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2Model

    out = Path(out_dir)
    specials = list(SPECIAL_TOKENS.values()) + ["[UNK]"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(words) - set(specials)))}
    llm = {**LLM_PRESETS[preset], **shapes}
    if llm["vocab_size"] < len(vocab):
        raise ValueError(f"vocab_size {llm['vocab_size']} < the {len(vocab)} tokens of the word list")
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token=SPECIAL_TOKENS["pad"])
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS.values())})
    torch.manual_seed(seed)
    theta = llm.pop("rope_theta")
    model = Qwen2Model(Qwen2Config(**llm, rope_parameters={"rope_type": "default", "rope_theta": theta}))
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
