"""Decoupled (IP-Adapter style) identity cross-attention: the math, with no ComfyUI import.

A UNet cross-attention computes `to_out(attn(q, k_text, v_text))`. Decoupled identity attention adds
a second attention of the same query over identity tokens projected by the adapter's own
`to_k_ip` / `to_v_ip`: `to_out(attn(q, k_text, v_text) + w * attn(q, k_id, v_id))`. ComfyUI hands a
replace patch the already projected q/k/v and applies `to_out` afterwards, so the patch returns
`text + identity_attention(...)` and this module computes the second term.

Several identity groups can be active at once (ConsistentID face tokens beside Visual Persona body
tokens, or two people each restricted by a mask). Each group is its own softmax over its own
tokens, exactly as stacking two IP-Adapters; outputs add.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

# How far ComfyUI's SD UNets downsample the latent (1, 2, 4, 8; 16-64 allow deeper custom UNets).
_GRID_FACTORS = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class IdentityKeysValues:
    """One identity group, ready for one attention call.

    key / value: [B, Tk, heads*dim_head], batch-aligned with q (see `tokens_for_chunks`).
    weight: the adapter scale w.
    token_scale: optional [Tk] multiplier per identity token (e.g. one value per Visual Persona
      part, expanded by `expand_token_scale`); scales each token's value, so the softmax stays joint
      and a uniform scale s equals weight * s.
    mask: optional [B or 1, Tq] in 0..1 over the query tokens (see `mask_to_token_grid`).
    """

    key: torch.Tensor
    value: torch.Tensor
    weight: float = 1.0
    token_scale: torch.Tensor | None = None
    mask: torch.Tensor | None = None


def project_identity_tokens(tokens: torch.Tensor, to_k_ip: torch.Tensor, to_v_ip: torch.Tensor,
                            device: torch.device | None = None, dtype: torch.dtype | None = None,
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Identity tokens [N, Tk, C] (or [Tk, C]) -> keys, values [N, Tk, inner] (Linear weights, no bias).

    Computed in float32 on the target device, then cast: the result is cached for a whole sampling
    run, so the one-off cost of full precision is negligible.
    """
    device = device or tokens.device
    dtype = dtype or tokens.dtype
    if tokens.ndim == 2:
        tokens = tokens.unsqueeze(0)
    t = tokens.to(device=device, dtype=torch.float32)
    k = t @ to_k_ip.to(device=device, dtype=torch.float32).transpose(0, 1)
    v = t @ to_v_ip.to(device=device, dtype=torch.float32).transpose(0, 1)
    return k.to(dtype), v.to(dtype)


def expand_token_scale(scale: torch.Tensor | Sequence[float], n_tokens: int) -> torch.Tensor:
    """A scale per token group (G values, G dividing Tk: equal-sized groups in order) -> [Tk]."""
    scale = torch.as_tensor(scale, dtype=torch.float32).flatten()
    if scale.numel() == n_tokens:
        return scale
    if scale.numel() == 0 or n_tokens % scale.numel():
        raise ValueError(f"token scale of {scale.numel()} values does not split {n_tokens} identity tokens "
                         "into equal groups")
    return scale.repeat_interleave(n_tokens // scale.numel())


def token_grid(n_tokens: int, activations_shape: Sequence[int] | None = None,
               original_shape: Sequence[int] | None = None) -> tuple[int, int]:
    """(h, w) of a block's query tokens.

    Recent ComfyUI passes the block's own [B, C, h, w] as `activations_shape`; older versions only
    the latent's `original_shape`, from which the block grid follows: each UNet downsample is a
    stride-2 convolution with padding 1, i.e. ceil(size / 2).
    """
    if activations_shape is not None and len(activations_shape) >= 4:
        h, w = int(activations_shape[-2]), int(activations_shape[-1])
        if h * w == n_tokens:
            return h, w
    if original_shape is not None and len(original_shape) >= 4:
        H, W = int(original_shape[-2]), int(original_shape[-1])
        for f in _GRID_FACTORS:
            h, w = math.ceil(H / f), math.ceil(W / f)
            if h * w == n_tokens:
                return h, w
    raise ValueError(f"cannot place {n_tokens} query tokens on a grid (activations_shape={activations_shape}, "
                     f"original_shape={original_shape})")


def mask_to_token_grid(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A MASK [M, H, W] (or [H, W]) at any resolution -> [M, h*w] on the block's token grid.

    Bilinear: a mask edge becomes a soft ramp one token wide rather than a hard, aliased step.
    """
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    m = mask.unsqueeze(1).to(torch.float32)
    if tuple(m.shape[-2:]) != tuple(grid):
        m = F.interpolate(m, size=grid, mode="bilinear", align_corners=False)
    return m.flatten(1).clamp_(0.0, 1.0)


def crop_to_area(mask: torch.Tensor, area: tuple[int, int, int, int], latent_hw: tuple[int, int]) -> torch.Tensor:
    """The part of a whole-image MASK [M, H, W] (any resolution) under a conditioning area (h, w, y, x) of a
    latent of size latent_hw, ComfyUI's area units: what the model sees when it runs on that crop."""
    h, w, y, x = area
    rows, cols = mask.shape[-2] / latent_hw[0], mask.shape[-1] / latent_hw[1]
    top, left = min(int(y * rows), mask.shape[-2] - 1), min(int(x * cols), mask.shape[-1] - 1)
    bottom = max(top + 1, min(mask.shape[-2], math.ceil((y + h) * rows)))
    right = max(left + 1, min(mask.shape[-1], math.ceil((x + w) * cols)))
    return mask[..., top:bottom, left:right]


def batch_for_chunks(t: torch.Tensor, chunks: int, per_chunk: int, what: str = "tensor") -> torch.Tensor:
    """Fit a per-sample tensor [M, ...] to a batch of `chunks` x `per_chunk` samples.

    M == 1 is shared by every sample; M == per_chunk follows the latent batch in every chunk (cond
    and uncond alike). Nothing else: a batch of chunks x latent batch would pair its entries with
    chunks in ComfyUI's (unfixed) chunk order.
    """
    m, total = t.shape[0], chunks * per_chunk
    if m == 1:
        return t.expand(total, *t.shape[1:])
    if m == per_chunk:
        return t.repeat(chunks, *([1] * (t.ndim - 1))) if chunks > 1 else t
    raise ValueError(f"{what} has batch {m}; the latent batch is {per_chunk} (x{chunks} cond/uncond chunks)")


def tokens_for_chunks(by_index: Mapping[int, torch.Tensor], cond_or_uncond: Sequence[int] | None,
                      batch: int, fallback_index: int = 0) -> torch.Tensor:
    """Assemble [batch, Tk, D] from per-conditioning tensors [N, Tk, D].

    ComfyUI batches cond and uncond in no fixed order (uncond usually first), with one entry of
    `cond_or_uncond` per chunk: 1 (cfg 1), 2, or more (dual-CFG guiders, area conds). Each chunk gets
    the tensor of its own index; an index with none gets `fallback_index`'s. When the list is
    missing or does not divide the batch, every sample is treated as `fallback_index`.
    """
    order = list(cond_or_uncond) if cond_or_uncond else []
    if not order or batch % len(order):
        order = [fallback_index]
    per_chunk = batch // len(order)
    parts = []
    for index in order:
        t = by_index.get(index, by_index[fallback_index])
        parts.append(batch_for_chunks(t, 1, per_chunk, "identity tokens"))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, inner = x.shape
    return x.view(b, t, heads, inner // heads).transpose(1, 2)


def identity_attention(q: torch.Tensor, groups: Sequence[IdentityKeysValues], heads: int) -> torch.Tensor | None:
    """Sum over groups of weight * mask * softmax(q k_id^T / sqrt(d)) v_id; [B, Tq, H*D], or None.

    None when no group contributes, so the caller can keep the text attention bit-for-bit.
    """
    out = None
    b, tq, inner = q.shape
    qh = _heads(q, heads)
    for g in groups:
        if g.weight == 0:
            continue
        k = g.key.to(q.dtype)
        v = g.value.to(q.dtype)
        if k.shape[0] != b:
            k, v = k.expand(b, -1, -1), v.expand(b, -1, -1)
        if g.token_scale is not None:
            v = v * g.token_scale.to(device=v.device, dtype=v.dtype).view(1, -1, 1)
        o = F.scaled_dot_product_attention(qh, _heads(k.contiguous(), heads), _heads(v.contiguous(), heads))
        o = o.transpose(1, 2).reshape(b, tq, inner) * g.weight
        if g.mask is not None:
            o = o * g.mask.to(device=o.device, dtype=o.dtype).unsqueeze(-1)
        out = o if out is None else out + o
    return out
