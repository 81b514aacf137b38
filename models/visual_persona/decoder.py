"""Visual Persona's body-partitioned transformer decoder (`BP_Transformer`, checkpoint group `image_proj`).

Read from cvlab-kaist/Visual-Persona at d393d09 (`model/visual_persona/vp_test.py` BP_Transformer,
`transformer.py` TransformerDecoder, `block.py` ConditionBlock); written anew here.

Each part p in 0..4 (full body, face, upper, lower, shoes) has its own 256 learned queries
`new_pos_embed[p]`; the queries of part p attend only to the DINOv2 patch tokens of part p's image
(parts are the batch dimension, weights shared). Per block (LayerNorm eps 1e-6, pre-norm):

    x += CrossAttn(LN1(x), tokens)     nn.MultiheadAttention(bias=False, kdim=vdim=encoder width)
    x += SelfAttn(LN2(x))              nn.MultiheadAttention(bias=False)
    x += MLP(LN3(x))                   Linear(w, 4w) + bias, exact GELU, Linear(4w, w) + bias

and a final LayerNorm. The state dict is the released one, key for key (strict load): `pos_embed`
[1,256,2048] (legacy, never used), `new_pos_embed` [5,256,2048], `transformer.layers.{i}.{norm1,norm2,
norm3}.{weight,bias}`, `...cross_attn.{q,k,v}_proj_weight` + `cross_attn.out_proj.weight`,
`...self_attn.in_proj_weight` + `self_attn.out_proj.weight`, `...mlp.0.{weight,bias}`,
`...mlp.3.{weight,bias}`, `transformer.norm.{weight,bias}`.

Unlike the original (one reference per call, all five parts), `forward` takes any number of
references and any subset of parts in one batch; every (reference, part) row is computed exactly as
the original computes that part.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelFileError
from ..layouts.visual_persona import VISUAL_PERSONA, DecoderConfig, decoder_layout  # noqa: F401 (re-exported)

def config_of_state(state: dict, heads: int = VISUAL_PERSONA.heads) -> DecoderConfig:
    """The configuration a released-layout state dict was made with (heads are not stored: default 8)."""
    parts, tokens, width = state["new_pos_embed"].shape
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("transformer.layers."))
    encoder_width = state["transformer.layers.0.cross_attn.k_proj_weight"].shape[1]
    hidden = state["transformer.layers.0.mlp.0.weight"].shape[0]
    return DecoderConfig(parts, tokens, layers, heads, width, encoder_width, hidden / width)


def strict_load(model: nn.Module, state: dict, what: str) -> None:
    """load_state_dict(strict, assign) with a message that names the kind of file and the first misfits."""
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise ModelFileError(f"[PartID] the {what} weights do not have the released layout: "
                             f"{str(err)[:600]}") from err


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class CrossAttention(nn.Module):
    """nn.MultiheadAttention(bias=False, kdim=vdim=encoder width)'s parameters and arithmetic."""

    def __init__(self, width: int, encoder_width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj_weight = nn.Parameter(torch.empty(width, width))
        self.k_proj_weight = nn.Parameter(torch.empty(width, encoder_width))
        self.v_proj_weight = nn.Parameter(torch.empty(width, encoder_width))
        self.out_proj = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        q = _heads(F.linear(x, self.q_proj_weight), self.heads)
        k = _heads(F.linear(cond, self.k_proj_weight), self.heads)
        v = _heads(F.linear(cond, self.v_proj_weight), self.heads)
        return self.out_proj(_merge(F.scaled_dot_product_attention(q, k, v)))


class SelfAttention(nn.Module):
    """nn.MultiheadAttention(bias=False)'s parameters (packed q/k/v `in_proj_weight`) and arithmetic."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.out_proj = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (_heads(t, self.heads) for t in F.linear(x, self.in_proj_weight).chunk(3, dim=-1))
        return self.out_proj(_merge(F.scaled_dot_product_attention(q, k, v)))


class ConditionBlock(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        w = cfg.width
        self.norm1 = nn.LayerNorm(w, eps=cfg.eps)
        self.cross_attn = CrossAttention(w, cfg.encoder_width, cfg.heads)
        self.norm2 = nn.LayerNorm(w, eps=cfg.eps)
        self.self_attn = SelfAttention(w, cfg.heads)
        self.norm3 = nn.LayerNorm(w, eps=cfg.eps)
        # Indices 0 and 3 as in the checkpoint (the original has dropouts, p=0, at 2 and 4).
        self.mlp = nn.Sequential(nn.Linear(w, cfg.mlp_hidden), nn.GELU(), nn.Identity(), nn.Linear(cfg.mlp_hidden, w))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = x + self.cross_attn(self.norm1(x), cond)
        x = x + self.self_attn(self.norm2(x))
        return x + self.mlp(self.norm3(x))


class TransformerDecoder(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(ConditionBlock(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.eps)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, cond)
        return self.norm(x)


class PartDecoder(nn.Module):
    """`forward(features [R, P, S, E], parts) -> tokens [R, P, tokens, width]`.

    `features[:, j]` are the DINOv2 patch tokens of part `parts[j]`'s image (`parts` defaults to all
    five, in order). A [P, S, E] input (one reference, as the original takes it) gives [P, tokens, width].
    """

    def __init__(self, cfg: DecoderConfig = VISUAL_PERSONA):
        super().__init__()
        self.config = cfg
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.tokens, cfg.width))     # legacy, unused
        self.new_pos_embed = nn.Parameter(torch.zeros(cfg.parts, cfg.tokens, cfg.width))
        self.transformer = TransformerDecoder(cfg)

    def forward(self, features: torch.Tensor, parts: Sequence[int] | None = None) -> torch.Tensor:
        single = features.ndim == 3
        if single:
            features = features.unsqueeze(0)
        refs, n_parts, seq, dim = features.shape
        if dim != self.config.encoder_width:
            raise ValueError(f"the decoder takes {self.config.encoder_width}-d encoder tokens, got {dim}-d "
                             "(Visual Persona's decoder is made for DINOv2 ViT-g/14)")
        parts = list(range(n_parts)) if parts is None else list(parts)
        if len(parts) != n_parts:
            raise ValueError(f"{n_parts} part feature sets but {len(parts)} part indices")
        queries = self.new_pos_embed[parts].to(features.dtype)                 # [P, T, W]
        x = queries.unsqueeze(0).expand(refs, -1, -1, -1).reshape(refs * n_parts, *queries.shape[1:])
        out = self.transformer(x, features.reshape(refs * n_parts, seq, dim))
        out = out.view(refs, n_parts, *out.shape[1:])
        return out[0] if single else out

    @classmethod
    def from_state_dict(cls, state: dict, heads: int = VISUAL_PERSONA.heads, dtype: torch.dtype | None = None,
                        device=None) -> "PartDecoder":
        """Strict load of a released-layout `image_proj` state dict (any width/depth; heads as given)."""
        cfg = config_of_state(state, heads)
        with torch.device("meta"):
            model = cls(cfg)
        strict_load(model, state, "Visual Persona decoder (image_proj)")
        model.to(device=device, dtype=dtype or state["new_pos_embed"].dtype)
        return model.eval().requires_grad_(False)

    @classmethod
    def from_adapter(cls, weights, dtype: torch.dtype | None = None, device=None) -> "PartDecoder":
        """From `model_files.load_adapter(path, 'Visual Persona')`."""
        return cls.from_state_dict(weights.groups["image_proj"], dtype=dtype, device=device)


def select_parts(tokens: torch.Tensor, keys: Sequence[int], parts: Sequence[int] | None = None) -> torch.Tensor:
    """[R, P, T, W] decoder tokens -> [R, len(keys) * T, W]: the parts in `keys` order, concatenated
    (the original's `possible_keys` loop). `parts` names what the P rows are (default 0..P-1)."""
    parts = list(range(tokens.shape[1])) if parts is None else list(parts)
    rows = [parts.index(k) for k in keys]
    return tokens[:, rows].flatten(1, 2)
