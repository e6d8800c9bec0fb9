"""Bagel's Mixture-of-Transformers (MoT, arXiv 2505.14683) as a text-to-image generator in a tokenizer's latent space.

Every Qwen2 decoder layer holds two experts with the same shapes: the *understanding* expert (the LLM's own weights)
processes text tokens and the image markers, the *generation* expert (a copy of them at initialisation) processes the
latent tokens. One self-attention runs over the whole sequence, each token projecting with its own expert's weights:

    h_und = text tokens [bos, caption, eos] + markers [<|vision_start|>, <|vision_end|>]   (und expert)
    h_gen = W_in patchify(x_t) + TimeEmbed(t) + PosEmbed2D                                  (gen expert)
    q, k, v = [expert(h).q, .k, .v for each token]      -> RMSNorm per head (QK-norm) -> RoPE
    attention: text causal over text; the image block (markers + latents) sees all text and itself
    RoPE positions: text 0 .. T-1, every token of the image block T (Bagel: one id for the whole image)
    v_theta(x_t, t, caption) = W_out Norm_gen(h_gen after the last layer)                   (W_out zero-initialised)

The flow convention is drorae's (and Bagel's): ``x_t = (1 - t) x + t eps``, target ``eps - x``, t = 1 is noise. Text
never sees image tokens, so its keys and values do not depend on ``x_t``: sampling encodes a prompt once
(:meth:`MoTGenerator.encode_text`) and every step runs only the image block against that cache.

Layers are ``transformers``' own ``Qwen2DecoderLayer`` (projections, MLP, RMSNorm, rotary), two per depth; the
attention itself is one SDPA call with a boolean mask (no packed-sequence kernel that needs a GPU-only library).
Kept from Bagel: the two experts and their copy-initialisation, QK-norm (on by default, as in Bagel; its weights
start at 1), the sequence layout, the rotary ids, the timestep and 2-D position embeddings added to the latent
tokens, the zero-initialised output projection, caption dropout to an empty context for CFG. Dropped: the
understanding (next-token) loss and ``lm_head``, ViT image inputs, packing several samples into one sequence,
interleaved multi-image contexts and their KV-cache management. Options for toy sizes, off in Bagel:
``time_scale`` (the embedder reads 1000 t), ``latent_rope: 2d`` (latent tokens rotated by row and column),
``gen_adaln`` (DiT's adaLN-Zero on the generation expert).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data.captions import SPECIAL_TOKENS
from ...embeddings import sincos_pos_embed_2d
from ...serialization import load_safetensors, load_strict, model_dir, read_json, save_safetensors

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
# The LLM's shapes (``transformers.Qwen2Config`` fields). Qwen2.5-0.5B's are the paper's (section 4.1).
LLM_PRESETS: dict[str, dict] = {
    "qwen2.5-0.5b": dict(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=32768,
    ),
    "tiny": dict(
        vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-6, max_position_embeddings=512,
    ),
}  # fmt: skip
LLM_FIELDS = tuple(LLM_PRESETS["tiny"])


@dataclass
class MoTConfig:
    """The generator's shapes. ``llm``: the Qwen2 shapes (a preset name in ``preset``, or filled from ``--llm``);
    ``latent_*``: the tokenizer's latent (filled from ``--tokenizer``); ``token_ids``: the special tokens' ids in the
    LLM's vocabulary (filled from its tokenizer)."""

    preset: str | None = None  # qwen2.5-0.5b | tiny: the llm shapes
    llm: dict = field(default_factory=dict)
    qk_norm: bool = True  # Bagel adds per-head RMSNorm on q and k to Qwen2
    latent_channels: int | None = None
    latent_size: int | None = None  # the latent grid side
    latent_patch_size: int = 1  # 1: one token per latent position (the paper: only the channel width adapts)
    max_latent_size: int | None = None  # the 2-D position table's side (default: the latent grid / patch)
    timestep_frequency_size: int = 256
    # the timestep embedder reads time_scale * t. Bagel: 1 (t in [0, 1] on sinusoids built for a period of 10,000,
    # a weak signal a small network barely sees); DiT-family embedders take 1000 t. Not a Bagel setting when != 1.
    time_scale: float = 1.0
    # Two toy-scale options, both off in Bagel (the demo's 2-layer MoT learns the layout of an image far more slowly
    # than a DiT of its size: docs/text-to-image.md). latent_rope "2d": the latent tokens' queries and keys rotate by
    # (row, column) on interleaved RoPE frequencies (text tokens, whose row = column = position, keep Qwen2's 1-D
    # rotation exactly); "bagel": one RoPE id for the whole image block. gen_adaln: DiT's adaLN-Zero on the
    # generation expert (every layer's normed inputs shifted/scaled and its outputs gated from the timestep).
    latent_rope: str = "bagel"
    gen_adaln: bool = False
    token_ids: dict = field(default_factory=dict)  # bos, eos, vision_start, vision_end, pad
    gradient_checkpointing: bool = False

    def resolved(self) -> MoTConfig:
        cfg = MoTConfig(**{**asdict(self), "llm": dict(self.llm), "token_ids": dict(self.token_ids)})
        if cfg.preset is not None:
            if cfg.preset not in LLM_PRESETS:
                raise ValueError(f"unknown mot.preset {cfg.preset!r}; available: {sorted(LLM_PRESETS)}")
            cfg.llm = {**LLM_PRESETS[cfg.preset], **cfg.llm}
        missing = [k for k in LLM_FIELDS if k not in cfg.llm]
        if missing:
            raise ValueError(f"mot.llm lacks {missing}: give mot.preset or --llm DIR (a local Qwen2 checkpoint)")
        if cfg.latent_channels is None or cfg.latent_size is None:
            raise ValueError("mot.latent_channels / mot.latent_size are unset: they come from --tokenizer DIR")
        p = cfg.latent_patch_size
        if p < 1 or cfg.latent_size % p:
            raise ValueError(f"mot.latent_patch_size {p} does not divide the latent grid {cfg.latent_size}")
        if cfg.latent_rope not in ("bagel", "2d"):
            raise ValueError(f"mot.latent_rope {cfg.latent_rope!r} is not one of ('bagel', '2d')")
        if cfg.max_latent_size is None:
            cfg.max_latent_size = cfg.latent_size // p
        if cfg.max_latent_size < cfg.latent_size // p:
            raise ValueError(f"mot.max_latent_size {cfg.max_latent_size} < the token grid {cfg.latent_size // p}")
        missing = [k for k in SPECIAL_TOKENS if k not in cfg.token_ids]
        if missing:
            raise ValueError(f"mot.token_ids lacks {missing}: they come from the LLM's tokenizer")
        return cfg

    def qwen2_config(self):
        from transformers import Qwen2Config

        llm = dict(self.llm)
        rope_theta = llm.pop("rope_theta")
        return Qwen2Config(**llm, rope_parameters={"rope_type": "default", "rope_theta": rope_theta})

    @property
    def grid(self) -> int:
        return self.latent_size // self.latent_patch_size

    @property
    def token_dim(self) -> int:
        return self.latent_patch_size**2 * self.latent_channels


def patchify(x: Tensor, p: int) -> Tensor:
    """[B, C, h, w] -> [B, (h/p)(w/p), p*p*C]: tokens row-major, features ordered (row, column, channel) as Bagel's."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: Tensor, p: int, channels: int) -> Tensor:
    b, n, _ = tokens.shape
    g = math.isqrt(n)
    x = tokens.reshape(b, g, g, p, p, channels)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(b, channels, g * p, g * p)


class TimestepEmbedder(nn.Module):
    """Bagel's (DiT's) embedding of a continuous t in [0, 1]: [cos, sin] of 256 frequencies, then an MLP."""

    def __init__(self, dim: int, frequency_size: int = 256, max_period: float = 10000.0):
        super().__init__()
        self.frequency_size, self.max_period = frequency_size, max_period
        self.mlp = nn.Sequential(nn.Linear(frequency_size, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        half = self.frequency_size // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(self.mlp[0].weight.dtype))


@dataclass
class TextContext:
    """A caption batch after the understanding expert: per layer the text's keys and values (after QK-norm and
    RoPE) ``[B, kv_heads, T, head_dim]``, its lengths ``[B]`` (0: the empty context of CFG), the final hidden
    states ``[B, T, H]`` (und expert's final norm)."""

    keys: list[Tensor]
    values: list[Tensor]
    lengths: Tensor
    hidden: Tensor

    @property
    def max_len(self) -> int:
        return self.hidden.shape[1]


class MoTGenerator(nn.Module):
    def __init__(self, config: MoTConfig):
        super().__init__()
        from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RMSNorm, Qwen2RotaryEmbedding

        self.config = config = config.resolved()
        qcfg = config.qwen2_config()
        self.hidden_size = h = qcfg.hidden_size
        self.num_heads, self.num_kv_heads = qcfg.num_attention_heads, qcfg.num_key_value_heads
        self.head_dim = h // self.num_heads
        eps = qcfg.rms_norm_eps
        self.embed_tokens = nn.Embedding(qcfg.vocab_size, h)
        self.und = nn.ModuleList([Qwen2DecoderLayer(qcfg, i) for i in range(qcfg.num_hidden_layers)])
        self.gen = nn.ModuleList([Qwen2DecoderLayer(qcfg, i) for i in range(qcfg.num_hidden_layers)])
        for layer in [*self.und, *self.gen]:  # Bagel's QK-norm: RMSNorm over head_dim, before RoPE
            attn = layer.self_attn
            attn.q_norm = Qwen2RMSNorm(self.head_dim, eps=eps) if config.qk_norm else nn.Identity()
            attn.k_norm = Qwen2RMSNorm(self.head_dim, eps=eps) if config.qk_norm else nn.Identity()
        self.norm, self.norm_gen = Qwen2RMSNorm(h, eps=eps), Qwen2RMSNorm(h, eps=eps)
        self.rotary = Qwen2RotaryEmbedding(qcfg)
        self.latent_in = nn.Linear(config.token_dim, h)  # Bagel's vae2llm
        self.time_embed = TimestepEmbedder(h, config.timestep_frequency_size)
        self.register_buffer(
            "pos_embed", sincos_pos_embed_2d(h, config.max_latent_size, cls_token=False), persistent=False
        )
        g, m = config.grid, config.max_latent_size
        rows, cols = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
        self.register_buffer("pos_ids", (rows * m + cols).flatten(), persistent=False)  # Bagel's h * max_size + w
        # latent_rope "2d": (row, column) offsets of the image block [markers (0, 0), latents]; a device buffer
        zeros = torch.zeros(2, dtype=torch.long)
        rc = torch.stack([torch.cat([zeros, rows.flatten()]), torch.cat([zeros, cols.flatten()])])
        self.register_buffer("image_rc", rc, persistent=False)
        self.latent_out = nn.Linear(h, config.token_dim)  # Bagel's llm2vae, zero-initialised
        if config.gen_adaln:  # per layer: shift, scale, gate for attention and MLP; then shift, scale of the output
            self.gen_modulation = nn.ModuleList([nn.Linear(h, 6 * h) for _ in self.gen])
            self.final_modulation = nn.Linear(h, 2 * h)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        std = 0.02  # Qwen2's initializer_range, for the experts of a model built without an LLM checkpoint
        for module in [self.embed_tokens, *self.und, *self.gen]:
            for sub in module.modules():
                if isinstance(sub, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(sub.weight, std=std)
                    if getattr(sub, "bias", None) is not None:
                        nn.init.zeros_(sub.bias)
        # Bagel's own modules keep PyTorch's default init (Bagel.__init__ re-initialises only llm2vae, to zero)
        for sub in [self.latent_in, *self.time_embed.mlp]:
            if isinstance(sub, nn.Linear):
                sub.reset_parameters()
        nn.init.zeros_(self.latent_out.weight)
        nn.init.zeros_(self.latent_out.bias)
        if self.config.gen_adaln:  # adaLN-Zero: every generation layer starts as the identity on the latent tokens
            for lin in [*self.gen_modulation, self.final_modulation]:
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    # -- from an LLM checkpoint ----------------------------------------------------------------------------------
    def load_llm_state(self, state: dict[str, Tensor]) -> None:
        """Both experts from a Qwen2 state dict (``model.layers.i.*`` or ``layers.i.*``): the generation expert is a
        copy of the understanding expert (Bagel's ``init_moe``); the QK-norms stay at 1 (Qwen2 has none)."""
        state = {k.removeprefix("model."): v for k, v in state.items() if not k.startswith("lm_head.")}
        ours = {"embed_tokens.weight": state.pop("embed_tokens.weight")}
        norm = state.pop("norm.weight")
        ours["norm.weight"], ours["norm_gen.weight"] = norm, norm.clone()
        for key, value in state.items():
            if not key.startswith("layers."):
                raise KeyError(f"unexpected tensor {key!r} in the LLM checkpoint (not a Qwen2 decoder)")
            rest = key.removeprefix("layers.")
            ours[f"und.{rest}"], ours[f"gen.{rest}"] = value, value.clone()
        own = self.state_dict()
        needed = {k for k in own if k.startswith(("und.", "gen.", "embed_tokens.", "norm"))}
        needed -= {k for k in needed if ".q_norm." in k or ".k_norm." in k}
        missing = sorted(needed - set(ours))
        if missing:
            raise KeyError(f"the LLM checkpoint lacks {missing[:4]}{' ...' if len(missing) > 4 else ''}")
        for key, value in ours.items():
            if own[key].shape != value.shape:
                raise ValueError(
                    f"{key}: the LLM checkpoint has {tuple(value.shape)}, this MoT {tuple(own[key].shape)}"
                )
        self.load_state_dict(ours, strict=False)

    # -- one layer -------------------------------------------------------------------------------------------------
    @staticmethod
    def _modulate(x: Tensor, shift: Tensor | None, scale: Tensor | None) -> Tensor:
        return x if shift is None else x * (1 + scale[:, None]) + shift[:, None]

    def _qkv(
        self, layer, x: Tensor, shift: Tensor | None = None, scale: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        b, s, _ = x.shape
        attn = layer.self_attn
        x = self._modulate(layer.input_layernorm(x), shift, scale)
        q = attn.q_proj(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        return attn.q_norm(q), attn.k_norm(k), v

    def _layer(
        self, i: int, h_und: Tensor, h_gen: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor,
        past: tuple[Tensor, Tensor] | None = None, cond: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
        """One MoT layer over the sequence ``[h_und; h_gen]`` (keys ``[past; sequence]``); returns the new states and
        the sequence's keys and values (what a text cache stores). ``cond``: SiLU(TimeEmbed(t)) under gen_adaln."""
        from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

        und, gen = self.und[i], self.gen[i]
        n_und = h_und.shape[1]
        mod = [None] * 6 if cond is None else self.gen_modulation[i](cond).chunk(6, dim=-1)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mod
        parts = [self._qkv(und, h_und)] + ([self._qkv(gen, h_gen, shift_a, scale_a)] if h_gen.shape[1] else [])
        q, k, v = (torch.cat([p[j] for p in parts], dim=2) for j in range(3))
        q, k = apply_rotary_pos_emb(q, k, *rope)
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
        groups = self.num_heads // self.num_kv_heads  # grouped-query attention: each kv head serves `groups` heads
        out = F.scaled_dot_product_attention(
            q, keys.repeat_interleave(groups, 1), values.repeat_interleave(groups, 1), attn_mask=mask
        )
        out = out.transpose(1, 2).flatten(2)
        h_und = h_und + und.self_attn.o_proj(out[:, :n_und])
        h_und = h_und + und.mlp(und.post_attention_layernorm(h_und))
        if h_gen.shape[1]:
            attn_out = gen.self_attn.o_proj(out[:, n_und:])
            h_gen = h_gen + (attn_out if gate_a is None else gate_a[:, None] * attn_out)
            mlp_out = gen.mlp(self._modulate(gen.post_attention_layernorm(h_gen), shift_m, scale_m))
            h_gen = h_gen + (mlp_out if gate_m is None else gate_m[:, None] * mlp_out)
        return h_und, h_gen, k, v

    def _run_layer(self, i, h_und, h_gen, rope, mask, past=None, cond=None):
        if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(self._layer, i, h_und, h_gen, rope, mask, past, cond, use_reentrant=False)
        return self._layer(i, h_und, h_gen, rope, mask, past, cond)

    # -- inputs ------------------------------------------------------------------------------------------------------
    def _rope(self, positions: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        return self.rotary(like, positions)

    def _image_rope(self, lengths: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """cos, sin [B, 2 + N, head_dim] of the image block ``[markers, latents]`` after captions of ``lengths``.
        Bagel: every token at the one id T. latent_rope "2d" (interleaved multimodal RoPE, as Qwen3-VL's): even
        frequencies rotate by a row id, odd ones by a column id; markers at (T, T), latent (r, c) at (T + r, T + c),
        so a token whose row and column ids are equal is rotated exactly as Qwen2's 1-D RoPE rotates that position."""
        b, n = lengths.shape[0], 2 + self.config.grid**2
        if self.config.latent_rope == "bagel":
            return self._rope(lengths[:, None].expand(b, n), like)
        cos_r, sin_r = self._rope(lengths[:, None] + self.image_rc[0][None], like)  # transformers' rotary per axis
        cos_c, sin_c = self._rope(lengths[:, None] + self.image_rc[1][None], like)
        half = self.head_dim // 2  # rotate_half layout: dimension j and j + head_dim / 2 share frequency j
        even = torch.arange(self.head_dim, device=like.device) % half % 2 == 0
        return torch.where(even, cos_r, cos_c), torch.where(even, sin_r, sin_c)

    def latent_tokens(self, x_t: Tensor, t: Tensor) -> Tensor:
        """``W_in patchify(x_t) + TimeEmbed(t) + PosEmbed2D``: [B, N, H] (Bagel's packed_latent)."""
        return self._latent_inputs(x_t, t)[0]

    def _latent_inputs(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor | None]:
        """The latent tokens and, under gen_adaln, the modulation's input SiLU(TimeEmbed(t)) [B, H] (DiT's c)."""
        cfg = self.config
        tokens = self.latent_in(patchify(x_t, cfg.latent_patch_size).to(self.latent_in.weight.dtype))
        pos = self.pos_embed[self.pos_ids]  # device buffers: no host-to-device copy per sampling step
        temb = self.time_embed(t * cfg.time_scale)
        cond = F.silu(temb) if cfg.gen_adaln else None
        return tokens + temb[:, None] + pos.to(tokens.dtype)[None], cond

    def _output(self, h_gen: Tensor, cond: Tensor | None) -> Tensor:
        """``W_out Norm_gen(h_gen)`` (under gen_adaln the norm's output shifted and scaled, as DiT's final layer)."""
        h = self.norm_gen(h_gen)
        if cond is not None:
            h = self._modulate(h, *self.final_modulation(cond).chunk(2, dim=-1))
        out = self.latent_out(h)
        return unpatchify(out, self.config.latent_patch_size, self.config.latent_channels)

    def markers(self, batch: int, device: torch.device) -> Tensor:
        ids = torch.tensor([self.config.token_ids["vision_start"], self.config.token_ids["vision_end"]], device=device)
        return self.embed_tokens(ids)[None].expand(batch, -1, -1)

    @staticmethod
    def text_mask(lengths: Tensor, max_len: int) -> Tensor:
        """[B, T] True at a caption's real tokens."""
        return torch.arange(max_len, device=lengths.device)[None] < lengths[:, None]

    # -- the two passes ------------------------------------------------------------------------------------------------
    def encode_text(self, text_ids: Tensor, lengths: Tensor) -> TextContext:
        """The understanding expert over captions ``[B, T]`` (right-padded; ``lengths`` [B], 0 for the empty
        context): causal attention over each caption's own tokens, RoPE positions 0 .. T-1."""
        b, t_max = text_ids.shape
        device = text_ids.device
        h = self.embed_tokens(text_ids)
        valid = self.text_mask(lengths, t_max)
        causal = torch.ones(t_max, t_max, dtype=torch.bool, device=device).tril()
        eye = torch.eye(t_max, dtype=torch.bool, device=device)
        # a padding query sees only itself (a row with no key would be NaN); its output is never read
        mask = ((causal[None] & valid[:, None, :]) | (eye[None] & ~valid[:, :, None]))[:, None]
        rope = self._rope(torch.arange(t_max, device=device)[None].expand(b, -1), h)
        empty = h[:, :0]
        keys, values = [], []
        for i in range(len(self.und)):
            h, _, k, v = self._run_layer(i, h, empty, rope, mask)
            keys.append(k)
            values.append(v)
        return TextContext(keys, values, lengths, self.norm(h))

    def forward_image(self, x_t: Tensor, t: Tensor, context: TextContext) -> Tensor:
        """The velocity [B, C, h, w] at ``(x_t, t)`` given an encoded caption batch: the image block
        ``[<|vision_start|>, <|vision_end|>, latents]`` attends to the caption's keys and to itself."""
        b = x_t.shape[0]
        h_gen, cond = self._latent_inputs(x_t, t)
        h_und = self.markers(b, x_t.device).to(h_gen.dtype)
        n_img = h_und.shape[1] + h_gen.shape[1]
        valid = self.text_mask(context.lengths, context.max_len)
        mask = torch.cat([valid, valid.new_ones(b, n_img)], 1)[:, None, None, :]  # [B, 1, 1, T + n_img]
        rope = self._image_rope(context.lengths, h_gen)
        for i in range(len(self.gen)):
            past = (context.keys[i].to(h_gen.dtype), context.values[i].to(h_gen.dtype))
            h_und, h_gen, _, _ = self._run_layer(i, h_und, h_gen, rope, mask, past, cond)
        return self._output(h_gen, cond)

    def forward(self, x_t: Tensor, t: Tensor, text_ids: Tensor, lengths: Tensor) -> Tensor:
        """Training's joint pass: one self-attention over ``[caption; markers; latents]`` per layer (text causal,
        the image block full over the caption and itself), the velocity [B, C, h, w]."""
        b, t_max = text_ids.shape
        device = x_t.device
        h_gen, cond = self._latent_inputs(x_t, t)
        h_und = torch.cat([self.embed_tokens(text_ids).to(h_gen.dtype), self.markers(b, device).to(h_gen.dtype)], 1)
        mask = self.joint_mask(lengths, t_max, 2 + h_gen.shape[1])
        text_rope = self._rope(torch.arange(t_max, device=device)[None].expand(b, -1), h_gen)
        rope = tuple(torch.cat(pair, 1) for pair in zip(text_rope, self._image_rope(lengths, h_gen)))
        for i in range(len(self.gen)):
            h_und, h_gen, _, _ = self._run_layer(i, h_und, h_gen, rope, mask, None, cond)
        return self._output(h_gen, cond)

    @classmethod
    def joint_mask(cls, lengths: Tensor, t_max: int, n_img: int) -> Tensor:
        """[B, 1, S, S] (True = may attend) over ``[caption (T) ; image block (n_img)]``: a caption token sees the
        caption's real tokens up to itself and no image token; an image-block token sees the real caption and the
        whole block; a padding token sees only itself."""
        b, s = lengths.shape[0], t_max + n_img
        device = lengths.device
        valid = torch.cat([cls.text_mask(lengths, t_max), lengths.new_ones(b, n_img, dtype=torch.bool)], 1)
        is_text = torch.arange(s, device=device) < t_max
        causal = torch.ones(s, s, dtype=torch.bool, device=device).tril()
        rule = torch.where(is_text[:, None], causal & is_text[None, :], torch.ones_like(causal))
        eye = torch.eye(s, dtype=torch.bool, device=device)
        return ((rule[None] & valid[:, None, :]) | (eye[None] & ~valid[:, :, None]))[:, None]

    # -- what trains ----------------------------------------------------------------------------------------------
    def trainable(self, experts: str) -> list[tuple[str, nn.Parameter]]:
        """``gen``: the generation expert, its final norm and the latent projections/embeddings (the LLM stays as it
        is, Bagel's ``freeze_und=True``); ``all`` (Bagel's default): the understanding expert and the embeddings too,
        except what the flow loss cannot reach without Bagel's next-token loss (the text's last-layer output path and
        final norm)."""
        if experts not in ("gen", "all"):
            raise ValueError(f"t2i.train_experts {experts!r} is not one of ('gen', 'all')")
        last = len(self.und) - 1
        unreachable = ("norm.", f"und.{last}.self_attn.o_proj.", f"und.{last}.mlp.", f"und.{last}.post_attention")
        und = ("und.", "embed_tokens.", "norm.")
        if experts == "gen":
            return [(n, p) for n, p in self.named_parameters() if not n.startswith(und)]
        return [(n, p) for n, p in self.named_parameters() if not n.startswith(unreachable)]

    def train_only(self, experts: str) -> list[tuple[str, nn.Parameter]]:
        """Freeze everything but :meth:`trainable` ``(experts)``; returns those parameters (what the optimiser gets)."""
        trained = self.trainable(experts)
        names = {n for n, _ in trained}
        for n, p in self.named_parameters():
            p.requires_grad_(n in names)
        return trained

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- files -----------------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        import json

        body = {"format": "drorae-mot", "format_version": FORMAT_VERSION, "config": asdict(self.config)}
        (directory / CONFIG_NAME).write_text(json.dumps({**body, **(extra or {})}, indent=2) + "\n")
        save_safetensors({k: v.detach().contiguous() for k, v in self.state_dict().items()}, directory / WEIGHTS_NAME)
        from ...card import write_model_card

        write_model_card(directory, parameters={"total": self.parameter_count()})

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> MoTGenerator:
        """A MoT directory, a train-t2i run directory (its ``model/``) or a Hub id (``org/name[@rev][:sub]``)."""
        directory = model_dir(directory, (CONFIG_NAME, WEIGHTS_NAME, "text_tokenizer/*"))
        meta = read_json(directory / CONFIG_NAME, "a drorae MoT config")
        if meta.get("format") != "drorae-mot":
            raise ValueError(
                f"{directory} is not a drorae text-to-image model (config.json format {meta.get('format')!r})"
            )
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{directory} has MoT format {meta['format_version']}; this drorae reads <= {FORMAT_VERSION}"
            )
        model = cls(MoTConfig(**meta["config"]))
        load_strict(model, load_safetensors(directory / WEIGHTS_NAME), source=directory / WEIGHTS_NAME)
        return model.to(map_location)

    @staticmethod
    def read_extra(directory: str | Path) -> dict:
        return read_json(model_dir(directory) / CONFIG_NAME, "a drorae MoT config")


def llm_config_from_dir(llm_dir: str | Path) -> dict:
    """The Qwen2 shapes of a local ``transformers`` checkpoint; another architecture is an error naming it."""
    return llm_config_from_file(Path(llm_dir) / "config.json")


def llm_config_from_file(path: str | Path) -> dict:
    """The Qwen2 shapes in a ``transformers`` config file (``config.json``, or Bagel's ``llm_config.json``)."""
    path = Path(path)
    data = read_json(path, "an LLM's config")
    if data.get("model_type") != "qwen2":
        raise ValueError(
            f"{path}: model_type {data.get('model_type')!r}; the MoT is built on Qwen2 (model_type 'qwen2')"
        )
    rope = data.get("rope_parameters") or {}
    out = {k: data[k] for k in LLM_FIELDS if k in data and k != "rope_theta"}
    out["rope_theta"] = float(data.get("rope_theta", rope.get("rope_theta", 10000.0)))
    missing = [k for k in LLM_FIELDS if k not in out]
    if missing:
        raise ValueError(f"{path} lacks {missing}")
    return out


def load_llm_state_dict(llm_dir: str | Path) -> dict[str, Tensor]:
    """The LLM's tensors from ``model.safetensors`` or its sharded index (no pickle)."""
    path = Path(llm_dir)
    single = path / "model.safetensors"
    if single.is_file():
        return load_safetensors(single)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(read_json(index, "a safetensors index")["weight_map"].values()))
        state: dict[str, Tensor] = {}
        for name in files:
            state.update(load_safetensors(path / name))
        return state
    raise FileNotFoundError(
        f"{path} has no model.safetensors (or model.safetensors.index.json): give a local transformers Qwen2 "
        "checkpoint saved with safetensors (e.g. a download of Qwen/Qwen2.5-0.5B)"
    )
